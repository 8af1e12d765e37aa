"""Hostile label drops (issue 14, items 1 and 2): class names that are paths, label files with a million boxes.

A class name is data: it never becomes a folder outside its root, whatever classes.txt, a VOC <name> or a class
folder says. One label file is bounded: too many boxes is `too_many_boxes`, found without parsing the rest, and
the overlap check of the dataset build is not quadratic.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import unicodedata
from itertools import combinations
from pathlib import Path

import pytest
import yaml
from PIL import Image

import pipeline.labels.formats as labels
from pipeline.labels.dataset import _current
from pipeline.errors import REASONS, Rejected, TrainingError
from pipeline.labels.formats import Box, class_name, parse_classes, parse_label
from pipeline.labels.quality import LabelledImage, assess_labels, same_object, same_objects
from pipeline.training.trainer import _data_for
from tests.conftest import run_cli
from tests.labelimg import labelled_images, voc_xml, write_classes, yolo_text
from tests.watcher.conftest import configure, rows
from watcher.config import load_config
from watcher.errors import ConfigError


def tree(root: Path, skip: Path) -> set[str]:
    """Every path below root, except those below `skip` (the home)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == skip:
            dirnames.clear()
            continue
        out.update(str(here / n) for n in dirnames + filenames)
    return out


def labelled_states(home) -> dict[str, tuple[str, str | None]]:
    return {r.source_path: (r.state, r.reason) for r in rows(home) if r.folder == "labeled"}


# -- item 1: class names are data, never paths --------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "../../../../../../../../../../some/where/ESCAPED", "/srv/ABSOLUTE", "a/b", "a\\b", "..", ".", "nul\0byte",
    "esc\x1b[31mred", "new\nline", "tab\tbed", "line\u2028sep", "x" * 101,
])
def test_a_class_name_that_could_be_a_path_is_bad_class_name(name):
    with pytest.raises(Rejected) as exc:
        class_name(name)
    assert exc.value.code == "bad_class_name"
    assert "bad_class_name" in REASONS


def test_good_class_names_pass_and_nfd_becomes_nfc():
    for name in ("만화", "normal", "picture book", "vol.2", "...and more", "x" * 100, "동화 (옛날)"):
        assert class_name(name) == name
    nfd = unicodedata.normalize("NFD", "만화")
    assert nfd != "만화" and class_name(f" {nfd} ") == "만화"
    assert parse_classes(f"{nfd}\n동화\n".encode()) == ["만화", "동화"]


def test_classes_txt_and_voc_name_are_validated_where_they_enter():
    with pytest.raises(Rejected) as exc:
        parse_classes(b"normal\n../../../ESCAPED\n")
    assert exc.value.code == "bad_class_name" and "line 2" in str(exc.value)
    with pytest.raises(Rejected) as exc:
        parse_label(voc_xml("a.jpg", 100, 100, [("/srv/ABSOLUTE", 10, 10, 50, 50)]), "voc", image_size=(100, 100))
    assert exc.value.code == "bad_class_name" and "object 1" in str(exc.value)


def test_class_names_from_a_drop_never_become_folders_outside_the_home(home, tmp_path):
    """The issue's reproduction: classes.txt with a traversal and an absolute path, 18 YOLO-labelled images (the carried set holds 24),
    `process` twice, then the classify view training reads (trainer._data_for): nothing outside the home."""
    configure(home, task="classify", watch={"pair_timeout_seconds": 0})
    lab = home / "labeled"
    # Lands in tmp_path, next to the home, from models/scratch/.classify-data/train/<name> (5 levels up).
    escaped, absolute = "../" * 5 + "ESCAPED", str(tmp_path / "ABSOLUTE")
    write_classes(lab / "trav", [escaped, absolute, "normal"])
    images = labelled_images(0, 24)
    for k, src in enumerate(images[:18]):
        shutil.copy(src, lab / "trav" / src.name)
        (lab / "trav" / f"{src.stem}.txt").write_text(yolo_text([(k % 3, 0.5, 0.5, 0.4, 0.4)]))
    write_classes(lab / "good", ["normal", "other"])  # a good drop: a dataset is built either way
    for k, src in enumerate(images[18:]):
        shutil.copy(src, lab / "good" / src.name)
        (lab / "good" / f"{src.stem}.txt").write_text(yolo_text([(k % 2, 0.5, 0.5, 0.4, 0.4)]))
    before = tree(tmp_path, home)
    cfg = str(home / "coverwatch.yaml")
    for _ in range(2):
        done = run_cli("-c", cfg, "process")
        assert done.returncode == 0, done.stderr
    data = _current(home / "dataset") / "data.yaml"  # the snapshot's, as training reads it
    assert data.exists()
    try:
        _data_for("classify", data, home / "models" / "scratch")
    except TrainingError as exc:
        assert exc.code == "bad_class_name"
    assert tree(tmp_path, home) == before, "something was created outside the home"
    states = labelled_states(home)
    assert states["trav/classes.txt"] == ("quarantined", "bad_class_name")
    assert {states[f"trav/{src.name}"][0] for src in images[:18]} == {"quarantined"}
    assert {v for k, v in states.items() if k.startswith("good/")} == {("processed", None)}
    names = yaml.safe_load(data.read_text(encoding="utf-8"))["names"]
    assert list(names.values()) == ["normal", "other"]
    assert (home / "quarantine" / "labeled" / "trav" / "classes.txt").exists()


def test_a_class_folder_whose_name_is_no_class_name_is_quarantined(home):
    configure(home, task="classify")
    lab = home / "labeled"
    bad, good = "back\\slash", "만화"
    for folder, src in zip((bad, good), labelled_images(0, 2)):
        (lab / folder).mkdir(parents=True)
        shutil.copy(src, lab / folder / src.name)
    done = run_cli("-c", str(home / "coverwatch.yaml"), "process")
    assert done.returncode == 0, done.stderr
    states = labelled_states(home)
    assert {k.split("/")[0]: v for k, v in states.items()} == {bad: ("quarantined", "bad_class_name"),
                                                               good: ("processed", None)}


def snapshot_with(root: Path, names: list[str], n_per_class: int = 2) -> Path:
    """A minimal dataset snapshot (images/labels per split, data.yaml) whose class names are `names`."""
    srcs = iter(labelled_images(0, 2 * len(names) * n_per_class))
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for cid in range(len(names)):
            for _ in range(n_per_class):
                src = next(srcs)
                shutil.copy(src, root / "images" / split / src.name)
                (root / "labels" / split / f"{src.stem}.txt").write_text(f"{cid} 0.5 0.5 1 1\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                    "names": dict(enumerate(names))}, allow_unicode=True))
    return root / "data.yaml"


def test_the_classify_view_refuses_a_name_that_leaves_its_root(tmp_path):
    """A database from before validation may still hold such a name: the view stays inside its scratch folder."""
    home = tmp_path / "home"
    data = snapshot_with(home / "dataset" / "v000001", ["normal", "../../../ESCAPED", str(tmp_path / "ABSOLUTE")])
    before = tree(tmp_path, home)
    with pytest.raises(TrainingError) as exc:
        _data_for("classify", data, home / "models" / "scratch")
    assert exc.value.code == "bad_class_name"
    assert tree(tmp_path, home) == before


def test_the_classify_view_keeps_real_names_and_oversampling_links(tmp_path):
    data = snapshot_with(tmp_path / "snap", ["만화", "동화"])
    first = sorted((tmp_path / "snap" / "images" / "train").iterdir())[0]
    (tmp_path / "snap" / "train.txt").write_text(f"./images/train/{first.name}\n" * 3)
    view = _data_for("classify", data, tmp_path / "scratch")
    assert sorted(p.name for p in (view / "train").iterdir()) == ["동화", "만화"]
    assert (view / "train" / "만화" / f"{first.stem}.rep2{first.suffix}").is_symlink()


@pytest.mark.slow
def test_a_real_classify_training_names_its_classes_by_the_class_names(tmp_path):
    """Ultralytics takes a classify model's names from the view's folder names: they are the class names."""
    from pipeline.training.backoff import AttemptSpec
    from pipeline.training.trainer import UltralyticsTrainer

    data = snapshot_with(tmp_path / "snap", ["만화", "동화"], n_per_class=3)
    out = tmp_path / "models" / "v0001"
    UltralyticsTrainer(nice=0).train(AttemptSpec("yolo11n-cls.yaml", "yolo11n-cls.yaml", imgsz=32, batch=4),
                                     task="classify", data=data, out_dir=out, epochs=1, patience=1,
                                     device="cpu", workers=0, on_epoch=lambda p: None, should_stop=lambda: False)
    from ultralytics import YOLO

    assert sorted(YOLO(str(out / "weights" / "last.pt")).names.values()) == ["동화", "만화"]


# -- item 2: one label file is bounded ----------------------------------------------------------------------


def test_max_boxes_is_a_config_key_with_a_default(home):
    assert load_config(home / "coverwatch.yaml").watch.max_boxes == 1000
    configure(home, watch={"max_boxes": 0})
    with pytest.raises(ConfigError, match="watch.max_boxes"):
        load_config(home / "coverwatch.yaml")


def test_a_yolo_file_over_max_boxes_is_too_many_boxes():
    line = "0 0.5 0.5 0.2 0.2\n"
    assert len(parse_label((line * 5).encode(), "yolo", names=["a"], max_boxes=5).boxes) == 1  # 4 duplicates
    with pytest.raises(Rejected) as exc:
        parse_label((line * 6).encode(), "yolo", names=["a"], max_boxes=5)
    assert exc.value.code == "too_many_boxes" and "line 6" in str(exc.value)
    assert "too_many_boxes" in REASONS


def test_a_voc_file_over_max_boxes_is_too_many_boxes():
    objs = [("a", 1 + i, 1, 20 + i, 20) for i in range(6)]
    assert len(parse_label(voc_xml("a.jpg", 100, 100, objs[:5]), "voc", image_size=(100, 100), max_boxes=5).boxes) == 5
    with pytest.raises(Rejected) as exc:
        parse_label(voc_xml("a.jpg", 100, 100, objs), "voc", image_size=(100, 100), max_boxes=5)
    assert exc.value.code == "too_many_boxes"


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **k):
        self.calls += 1
        return self.fn(*a, **k)


def test_a_million_line_yolo_file_stops_at_the_limit(monkeypatch):
    """Not all of it is parsed: the number parser runs for the first max_boxes + 1 lines only."""
    data = "".join(f"0 0.5 0.5 0.{1 + k % 8} 0.2\n" for k in range(1_000_000)).encode()
    count = Counting(labels._number)
    monkeypatch.setattr(labels, "_number", count)
    monkeypatch.setattr(labels, "LABEL_SLACK_BYTES", len(data))  # past the byte bound: the line count decides
    with pytest.raises(Rejected) as exc:
        parse_label(data, "yolo", names=["a"], max_boxes=1000)
    assert exc.value.code == "too_many_boxes"
    assert count.calls <= 1000 * 5 + 1


def test_a_huge_voc_file_stops_at_the_limit(monkeypatch):
    data = voc_xml("a.jpg", 1000, 1000, [("a", 1 + i % 900, 1, 50 + i % 900, 50) for i in range(20_000)])
    count = Counting(labels._add_box)
    monkeypatch.setattr(labels, "_add_box", count)
    monkeypatch.setattr(labels, "LABEL_SLACK_BYTES", len(data))
    with pytest.raises(Rejected) as exc:
        parse_label(data, "voc", image_size=(1000, 1000), max_boxes=100)
    assert exc.value.code == "too_many_boxes" and count.calls == 0


def test_a_label_file_too_big_for_max_boxes_is_not_even_decoded(monkeypatch):
    data = b"0 0.5 0.5 0.2 0.2\n" * 10
    count = Counting(labels._text)
    monkeypatch.setattr(labels, "_text", count)
    monkeypatch.setattr(labels, "LABEL_SLACK_BYTES", 0)
    monkeypatch.setattr(labels, "BYTES_PER_BOX", 10)
    with pytest.raises(Rejected) as exc:
        parse_label(data, "yolo", names=["a"], max_boxes=5)
    assert exc.value.code == "too_many_boxes" and count.calls == 0


def test_too_many_boxes_in_a_drop_is_quarantined(home):
    configure(home, watch={"max_boxes": 3, "pair_timeout_seconds": 0})
    drop = home / "labeled" / "drop"
    write_classes(drop, ["a", "b"])
    few, many = labelled_images(0, 2)
    for src in (few, many):
        shutil.copy(src, drop / src.name)
    with Image.open(many) as im:
        mw = im.size
    (drop / f"{few.stem}.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.1 * k, 0.1) for k in (1, 2, 3)]))
    (drop / f"{many.stem}.xml").write_bytes(voc_xml(many.name, *mw, [("a", 1 + k, 1, 20 + k, 20) for k in range(4)]))
    done = run_cli("-c", str(home / "coverwatch.yaml"), "process")
    assert done.returncode == 0, done.stderr
    states = labelled_states(home)
    assert states[f"drop/{few.stem}.txt"] == ("processed", None)
    assert states[f"drop/{many.stem}.xml"] == ("quarantined", "too_many_boxes")
    assert states[f"drop/{many.name}"] == ("quarantined", "label_rejected")


def brute_force(boxes, threshold):
    """The reference: every pair, as assess_labels compared them before."""
    return [(i, j, v) for (i, a), (j, b) in combinations(enumerate(boxes), 2)
            if (v := same_object(a, b, threshold)) is not None]


def random_boxes(rng: random.Random, n: int, classes: list[str] | None = None) -> list[Box]:
    """Uniform boxes of every size, and clusters of near-copies (the overlaps the check is for)."""
    classes = classes or ["만화", "동화", "상상화"][:rng.randint(1, 3)]
    out: list[Box] = []
    for _ in range(n):
        if out and rng.random() < 0.5:
            b = rng.choice(out)
            out.append(Box(rng.choice(classes), b.cx + rng.uniform(-0.03, 0.03), b.cy + rng.uniform(-0.03, 0.03),
                           b.w * rng.uniform(0.7, 1.4), b.h * rng.uniform(0.7, 1.4)))
        else:
            out.append(Box(rng.choice(classes), rng.random(), rng.random(), 10 ** rng.uniform(-4, 0),
                           10 ** rng.uniform(-4, 0)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_grid_finds_exactly_what_all_pairs_find(seed):
    rng = random.Random(seed)
    for _ in range(20):
        boxes = random_boxes(rng, rng.randint(0, 150))
        for t in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
            expected = brute_force(boxes, t)
            assert same_objects(boxes, t) == expected
            split = rng.randint(0, len(boxes))
            assert same_objects(boxes, t, split=split) == [p for p in expected if p[0] < split <= p[1]]


def test_assess_labels_reports_the_same_overlaps_as_all_pairs():
    rng = random.Random(14)
    boxes = tuple(random_boxes(rng, 400, ["만화", "동화", "상상화"]))
    expected = brute_force(boxes, 0.7)
    assert expected, "the random set has overlaps to find"
    q = assess_labels([LabelledImage("sha", 1, "a.jpg", boxes)], names=["만화", "동화", "상상화"], iou_threshold=0.7,
                      warn_ratio=5.0)
    assert [(o["classes"], o["iou"]) for o in q.overlaps] == [
        (sorted((boxes[i].class_name, boxes[j].class_name)), round(v, 3)) for i, j, v in expected]


def test_the_grid_compares_far_fewer_pairs_than_all_pairs(monkeypatch):
    """Sub-quadratic by construction: 3,000 boxes, counted IoU computations instead of timed ones."""
    import pipeline.labels.quality as quality

    count = Counting(quality.same_object)
    monkeypatch.setattr(quality, "same_object", count)
    rng = random.Random(3)
    boxes = [Box("a", rng.random(), rng.random(), rng.uniform(0.01, 0.1), rng.uniform(0.01, 0.1))
             for _ in range(3000)]
    same_objects(boxes, 0.7)
    assert count.calls < math.comb(3000, 2) / 50


def test_a_big_labelled_drop_does_not_hold_the_inbox_back(home, monkeypatch):
    """One loop pass takes every ready inbox file but at most LABELLED_PER_PASS labelled ones; the rest follow
    in the next passes."""
    import time

    import watcher.daemon as daemon
    import watcher.drops
    from tests.conftest import copy_images
    from tests.watcher.conftest import CountingStep

    monkeypatch.setattr(watcher.drops, "LABELLED_PER_PASS", 4)
    configure(home, task="classify")
    for k, src in enumerate(labelled_images(0, 12)):
        (home / "labeled" / "만화").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, home / "labeled" / "만화" / f"{k}.jpg")
    copy_images(home / "inbox", 3)
    d = daemon.Daemon(load_config(home / "coverwatch.yaml"), step=CountingStep())
    d.initialize(observe=False)
    try:
        time.sleep(0.5)  # settle_seconds 0.2: everything is ready at once
        d.loop_once()
        first = rows(home)
        assert sum(r.folder == "inbox" for r in first) == 3
        assert sum(r.folder == "labeled" for r in first) == 4
        for _ in range(40):
            if sum(r.folder == "labeled" and r.state == "processed" for r in rows(home)) == 12:
                break
            time.sleep(0.1)
            d.loop_once()
    finally:
        d.shutdown()
    assert sum(r.folder == "labeled" and r.state == "processed" for r in rows(home)) == 12
