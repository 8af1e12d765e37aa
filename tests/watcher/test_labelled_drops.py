"""Labelled drops through the real daemon, in labelImg's own file formats, ending in one consistent dataset."""

import hashlib
import random
import shutil
import time

import pytest
import yaml
from PIL import Image
from sqlalchemy import select

import watcher.jobs.upkeep as upkeep
from pipeline.labels.dataset import _current
from storage.db import session_scope
from storage.tables import ClassName, LabelEvent, Sample
from tests.conftest import run_cli
from tests.labelimg import (coco_drop, coco_names, coco_boxes, expected_boxes, labelled_images, same_boxes, voc_xml,
                            write_classes, yolo_text)
from tests.watcher.conftest import configure, final_rows, home_engine, rows, running, wait_for

KOREAN = ["만화", "동화", "상상화"]


@pytest.fixture(autouse=True)
def quick_rebuilds(monkeypatch):
    monkeypatch.setattr(upkeep, "DATASET_REBUILD_SECONDS", 0.2)


def waiting(home) -> int:
    return sum(r.state == "awaiting_partner" for r in rows(home))


def dataset_with(home, n: int, timeout: float = 30.0):
    """Wait for a current snapshot holding n images; return it."""
    def ready():
        snap = _current(home / "dataset")
        return snap if snap and len(list(snap.glob("images/*/*"))) == n else None
    return wait_for(ready, timeout, 0.1)


def db_table(home, table):
    engine = home_engine(home)
    try:
        with session_scope(engine) as s:
            return list(s.scalars(select(table).order_by(table.id)))
    finally:
        engine.dispose()


def read_snapshot(snap):
    """{image stem: sorted boxes by class name} and {content sha: split}."""
    names = yaml.safe_load((snap / "data.yaml").read_text(encoding="utf-8"))["names"]
    labels, splits = {}, {}
    for img in snap.glob("images/*/*"):
        txt = snap / "labels" / img.parent.name / f"{img.stem}.txt"
        labels[img.stem.rsplit("_", 1)[0]] = sorted(
            (names[int(c)], *map(float, xywh)) for c, *xywh in (ln.split() for ln in txt.read_text().splitlines()))
        sha = hashlib.sha256(img.read_bytes()).hexdigest()
        assert sha not in splits, "the same image content twice in the dataset"
        splits[sha] = img.parent.name
    return labels, splits


def test_two_drops_with_different_class_orders_make_one_dataset(home, tmp_path, files_in):
    from ultralytics.data.utils import check_det_dataset

    names = coco_names()
    shuffled = random.Random(5).sample(names, len(names))  # bob's labelImg had another class order
    alice, bob = labelled_images(0, 5), labelled_images(5, 5)
    lab = home / "labeled"
    with running(home):
        coco_drop(lab / "alice", alice, names, what=("classes", "labels"))  # labels first...
        wait_for(lambda: waiting(home) == 5, 30)
        coco_drop(lab / "alice", alice, names, what=("images",))  # ...then their images
        final_rows(home, 11)
        coco_drop(lab / "bob", bob, shuffled, what=("images",))  # images first...
        wait_for(lambda: waiting(home) == 5, 30)
        coco_drop(lab / "bob", bob, shuffled, what=("classes", "labels"))  # ...then labels and classes.txt
        rs = final_rows(home, 22)
        snap = dataset_with(home, 10)
    assert all(r.state == "processed" for r in rs), [(r.source_path, r.reason) for r in rs if r.state != "processed"]
    assert files_in("labeled") == [] and len(files_in("archive", "labeled")) == 22
    assert [c.name for c in db_table(home, ClassName)] == names  # the registry: the first classes.txt's order
    data = yaml.safe_load((home / "dataset/data.yaml").read_text(encoding="utf-8"))
    assert data["names"] == dict(enumerate(names)) and data["path"] == str(snap)
    labels, _ = read_snapshot(snap)
    assert sorted(labels) == sorted(p.stem for p in alice + bob)
    assert all(same_boxes(labels[p.stem], expected_boxes(p)) for p in alice + bob)
    # The CLI: labelImg's class list, and a copy of the dataset that Ultralytics accepts as is.
    cfg = str(home / "coverwatch.yaml")
    done = run_cli("-c", cfg, "classes", "export", str(tmp_path / "predefined_classes.txt"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "predefined_classes.txt").read_text(encoding="utf-8").splitlines() == names
    done = run_cli("-c", cfg, "dataset", "export", str(tmp_path / "export"))
    assert done.returncode == 0, done.stderr
    checked = check_det_dataset(str(tmp_path / "export" / "data.yaml"), autodownload=False)
    assert checked["names"] == dict(enumerate(names)) and checked["val"] == str(tmp_path / "export/images/val")
    again = run_cli("-c", cfg, "dataset", "export", str(tmp_path / "export"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "not an empty folder" in again.stderr


def test_partners_that_never_come_go_to_quarantine(home, files_in):
    configure(home, watch={"pair_timeout_seconds": 1})
    lab = home / "labeled"
    img = labelled_images(0, 4)
    with running(home):
        write_classes(lab / "drop", KOREAN)
        shutil.copy(img[0], lab / "drop" / "lonely.jpg")
        (lab / "drop" / "orphan.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.2, 0.2)]))
        (lab / "no-classes").mkdir()
        shutil.copy(img[1], lab / "no-classes" / "a.jpg")
        (lab / "no-classes" / "a.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.2, 0.2)]))
        (lab / "만화").mkdir()  # a class folder of a class the registry knows: taken at once
        shutil.copy(img[2], lab / "만화" / "cover.jpg")
        (lab / "역사").mkdir()  # a new class folder: taken once no label turned up in time
        shutil.copy(img[3], lab / "역사" / "cover.jpg")
        rs = final_rows(home, 7)
    got = {r.source_path: (r.state, r.reason) for r in rs}
    assert got == {
        "drop/classes.txt": ("processed", None),
        "drop/lonely.jpg": ("quarantined", "missing_label"),
        "drop/orphan.txt": ("quarantined", "orphan_label"),
        "no-classes/a.jpg": ("quarantined", "missing_classes"),
        "no-classes/a.txt": ("quarantined", "missing_classes"),
        "만화/cover.jpg": ("processed", None),
        "역사/cover.jpg": ("processed", None),
    }
    assert files_in("quarantine", "labeled") == ["drop/lonely.jpg", "drop/orphan.txt", "no-classes/a.jpg",
                                                 "no-classes/a.txt"]
    assert [c.name for c in db_table(home, ClassName)] == KOREAN + ["역사"]
    assert sorted(s.source_format for s in db_table(home, Sample)) == ["folder", "folder"]


def bad_drop(lab, images):
    """One labelImg YOLO folder and one VOC folder full of mistakes; returns {file: (state, reason)}."""
    d, voc = lab / "bad", lab / "voc"
    write_classes(d, KOREAN)
    voc.mkdir()
    it = iter(images)
    expected = {"bad/classes.txt": ("processed", None)}
    yolo_cases = [
        ("fields", b"0 0.5 0.5 0.2\n", "wrong_field_count"),
        ("word", b"manhwa 0.5 0.5 0.2 0.2\n", "non_numeric"),
        ("nan", b"0 nan 0.500000 0.200000 0.200000\n", "not_finite"),
        ("inf", b"0 0.500000 0.500000 inf 0.200000\n", "not_finite"),
        ("unknown-id", yolo_text([(0, 0.5, 0.5, 0.2, 0.2), (3, 0.5, 0.5, 0.2, 0.2)]).encode(), "class_out_of_range"),
        ("outside", yolo_text([(1, 1.5, 0.5, 0.2, 0.2)]).encode(), "coordinate_out_of_range"),
        ("flat", yolo_text([(1, 0.5, 0.5, 0.2, 0.0)]).encode(), "zero_size_box"),
        ("past-edge", yolo_text([(2, 0.95, 0.5, 0.2, 0.2)]).encode(), "box_outside_image"),
        ("cp949", "0 0.5 0.5 0.2 0.2 # 만화\n".encode("cp949"), "bad_encoding"),
    ]
    for stem, text, code in yolo_cases:
        shutil.copy(next(it), d / f"{stem}.jpg")
        (d / f"{stem}.txt").write_bytes(text)
        expected |= {f"bad/{stem}.txt": ("quarantined", code), f"bad/{stem}.jpg": ("quarantined", "label_rejected")}
    for stem, broken in [("truncated", lambda p: p.write_bytes(next(it).read_bytes()[:3000])),
                         ("not-a-picture", lambda p: p.write_text("a shopping list, not a cover"))]:
        broken(d / f"{stem}.jpg")
        (d / f"{stem}.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.2, 0.2)]))
        code = "truncated_image" if stem == "truncated" else "not_an_image"
        expected |= {f"bad/{stem}.jpg": ("quarantined", code), f"bad/{stem}.txt": ("quarantined", "image_rejected")}
    (d / "no-image.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.2, 0.2)]))
    expected["bad/no-image.txt"] = ("quarantined", "orphan_label")
    shutil.copy(next(it), d / "dups.jpg")  # kept, one copy of each line
    (d / "dups.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.2, 0.2)] * 3 + [(1, 0.3, 0.3, 0.1, 0.1)]))
    shutil.copy(next(it), d / "background.jpg")  # kept: an empty label means "nothing here"
    (d / "background.txt").write_bytes(b"")
    expected |= {f"bad/{n}": ("processed", None) for n in ("dups.jpg", "dups.txt", "background.jpg", "background.txt")}
    for stem, size, box, code in [("voc-past-edge", None, (10, 10, 900, 100), "box_outside_image"),
                                  ("voc-resized", (1280, 960), (10, 10, 100, 100), "size_mismatch")]:
        src = next(it)
        shutil.copy(src, voc / f"{stem}.jpg")
        with Image.open(src) as im:
            w, h = size or im.size
        (voc / f"{stem}.xml").write_bytes(voc_xml(f"{stem}.jpg", w, h, [("만화", *box)]))
        expected |= {f"voc/{stem}.xml": ("quarantined", code), f"voc/{stem}.jpg": ("quarantined", "label_rejected")}
    shutil.copy(next(it), voc / "broken.jpg")
    (voc / "broken.xml").write_bytes(voc_xml("broken.jpg", 640, 480, [("만화", 1, 1, 9, 9)])[:-40])
    expected |= {"voc/broken.xml": ("quarantined", "bad_xml"), "voc/broken.jpg": ("quarantined", "label_rejected")}
    windows = lab / "windows"  # classes.txt as labelImg writes it on Korean Windows: cp949
    windows.mkdir()
    (windows / "classes.txt").write_bytes("만화\n동화\n".encode("cp949"))
    shutil.copy(next(it), windows / "a.jpg")
    (windows / "a.txt").write_text(yolo_text([(1, 0.5, 0.5, 0.2, 0.2)]))
    expected |= {"windows/classes.txt": ("quarantined", "bad_encoding"),
                 "windows/a.jpg": ("quarantined", "missing_classes"), "windows/a.txt": ("quarantined", "missing_classes")}
    return expected


def test_every_bad_label_ends_in_quarantine_with_its_reason(home, files_in):
    configure(home, watch={"pair_timeout_seconds": 1})
    with running(home):
        expected = bad_drop(home / "labeled", labelled_images(0, 20))
        rs = final_rows(home, len(expected), timeout=60)
    assert {r.source_path: (r.state, r.reason) for r in rs} == expected
    assert files_in("labeled") == []
    assert sorted(files_in("quarantine", "labeled")) == sorted(k for k, v in expected.items() if v[0] == "quarantined")
    by_name = {r.source_path: r for r in rs}
    assert "line 1" in by_name["bad/fields.txt"].detail and "cp949" in by_name["windows/classes.txt"].detail
    [dups] = [e for e in db_table(home, LabelEvent) if e.kind == "duplicate_lines"]
    assert dups.data == {"dropped": 2}
    assert sorted(s.boxes for s in db_table(home, Sample)) == [0, 2]  # background, and dups without its copies


def test_split_is_stable_across_restarts_and_re_drops(home):
    configure(home, training={"conflicts": "latest"})  # the re-labelled pictures train with their new labels
    first, new = labelled_images(0, 8), labelled_images(8, 2)
    lab = home / "labeled"
    with running(home):
        coco_drop(lab / "first", first, coco_names())
        final_rows(home, 17)
        _, before = read_snapshot(dataset_with(home, 8))
    with running(home):  # a restart; the same pictures come back, re-labelled, beside new ones
        again = lab / "again"
        again.mkdir()
        for i, src in enumerate(first[:3]):
            shutil.copy(src, again / f"re-{i}.jpg")
            with Image.open(src) as im:
                (again / f"re-{i}.xml").write_bytes(voc_xml(f"re-{i}.jpg", *im.size, [("만화", 1, 1, *im.size)]))
        coco_drop(lab / "new", new, coco_names())
        final_rows(home, 17 + 6 + 5)
        labels, after = read_snapshot(dataset_with(home, 10))
        wait_for(lambda: all(x.split for x in db_table(home, Sample) if x.replaced_at is None), 30)
    assert {sha: after[sha] for sha in before} == before  # every old picture kept its split
    assert [labels[f"re-{i}"][0][0] for i in range(3)] == ["만화"] * 3
    assert not {p.stem for p in first[:3]} & set(labels)  # the old labels of those pictures are gone
    samples = db_table(home, Sample)
    assert sum(x.replaced_at is not None for x in samples) == 3
    assert all(x.split == after[x.image_sha256] for x in samples if x.replaced_at is None)
    events = [e for e in db_table(home, LabelEvent) if e.kind == "relabelled"]
    assert len(events) == 3 and all(e.data["after"] == ["만화"] for e in events)
    names = coco_names()
    assert sorted(e.data["before"] for e in events) == sorted(
        sorted(names[c] for c, *_ in coco_boxes(p)) for p in first[:3])  # what each picture was labelled before


def labelled_states(home) -> dict[str, tuple[str, str | None]]:
    return {r.source_path: (r.state, r.reason) for r in rows(home) if r.folder == "labeled"}


def test_process_runs_apply_the_pair_timeout(home, files_in):
    """Batch mode: a later `process` run decides for files whose partner did not come in time."""
    configure(home, watch={"pair_timeout_seconds": 3})
    lab = home / "labeled"
    write_classes(lab / "drop", KOREAN)
    (lab / "drop" / "orphan.txt").write_text(yolo_text([(0, 0.5, 0.5, 0.2, 0.2)]))
    (lab / "역사").mkdir()  # detect home, a class the registry does not know: it waits, as in the daemon
    shutil.copy(labelled_images(0, 1)[0], lab / "역사" / "cover.jpg")
    cfg = str(home / "coverwatch.yaml")
    first = run_cli("-c", cfg, "process")
    assert first.returncode == 0, first.stderr
    assert labelled_states(home) == {"drop/classes.txt": ("processed", None),
                                     "drop/orphan.txt": ("awaiting_partner", None),
                                     "역사/cover.jpg": ("awaiting_partner", None)}
    assert "2 labelled files wait for a partner" in first.stdout
    time.sleep(3.5)
    second = run_cli("-c", cfg, "process")
    assert second.returncode == 0, second.stderr
    assert labelled_states(home) == {"drop/classes.txt": ("processed", None),
                                     "drop/orphan.txt": ("quarantined", "orphan_label"),
                                     "역사/cover.jpg": ("processed", None)}
    assert files_in("quarantine", "labeled") == ["drop/orphan.txt"] and files_in("labeled") == []
    assert [s.source_format for s in db_table(home, Sample)] == ["folder"]
    assert "wait for a partner" not in second.stdout


def test_class_folders_in_a_classify_home_are_taken_in_one_process_run(home):
    """No label files anywhere: in a classify home the folders are the classes, at once, and a dataset follows."""
    configure(home, task="classify")
    lab = home / "labeled"
    images = labelled_images(0, 11)
    for g, genre in enumerate(KOREAN):
        (lab / genre).mkdir()
        for src in images[g * 3:g * 3 + 3]:
            shutil.copy(src, lab / genre / src.name)
    (lab / "만화" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # what a Mac leaves in every folder
    coco_drop(lab / "boxes", images[9:11], coco_names())  # a labelImg drop in the same home still pairs
    cfg = str(home / "coverwatch.yaml")
    done = run_cli("-c", cfg, "process")
    assert done.returncode == 0, done.stderr
    states = labelled_states(home)
    assert set(states.values()) == {("processed", None)} and len(states) == 9 + 2 * 2 + 1, states
    assert sorted(s.source_format for s in db_table(home, Sample)) == ["folder"] * 9 + ["yolo"] * 2
    status = run_cli("-c", cfg, "status")
    assert "files: 14 processed, 0 quarantined, 0 pending, 0 awaiting a model, 0 awaiting a label partner" \
        in status.stdout, status.stdout
    snap = _current(home / "dataset")
    assert snap is not None and len(list(snap.glob("images/*/*"))) == 11


def test_a_labelimg_drop_copied_images_first_still_pairs_in_a_classify_home(home, files_in):
    """The race: images complete before their .txt files exist. Class-folder images are taken only once
    their folder has been quiet for settle_seconds, so labels arriving right after still pair."""
    configure(home, task="classify", watch={"settle_seconds": 1.0})
    lab = home / "labeled"
    images = labelled_images(0, 4)
    with running(home):
        coco_drop(lab / "drop", images, coco_names(), what=("images",))
        wait_for(lambda: waiting(home) == 4, 30)
        coco_drop(lab / "drop", images, coco_names(), what=("classes", "labels"))
        rs = final_rows(home, 9)
        dataset_with(home, 4)
    assert {(r.state, r.reason) for r in rs} == {("processed", None)}
    assert [s.source_format for s in db_table(home, Sample)] == ["yolo"] * 4
    assert "drop" not in [c.name for c in db_table(home, ClassName)]


def test_a_class_folder_in_a_classify_home_is_taken_without_the_pair_timeout(home):
    configure(home, task="classify", watch={"pair_timeout_seconds": 600})
    lab = home / "labeled"
    (lab / "역사").mkdir()
    with running(home):
        for src in labelled_images(0, 3):
            shutil.copy(src, lab / "역사" / src.name)
        rs = final_rows(home, 3)
    assert {(r.state, r.reason) for r in rs} == {("processed", None)}
    assert [c.name for c in db_table(home, ClassName)] == ["역사"]
