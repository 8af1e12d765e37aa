"""The managed dataset: split by content, atomic snapshots, oversampling, export that Ultralytics accepts."""

import hashlib
import os
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image
from sqlalchemy import select

import pipeline.labels.dataset as dataset
from pipeline.labels.classes import export_classes
from pipeline.labels.dataset import build_dataset, export_dataset, split_of
from pipeline.errors import DatasetError
from pipeline.intake.core import Layout
from pipeline.intake.labelled import ingest_labelled
from storage.db import make_engine, session_scope
from storage.tables import DatasetVersion, Label, LabelEvent, Sample
from tests.labelimg import (coco_drop, coco_names, expected_boxes, labelled_images, same_boxes, voc_xml,
                            write_classes, yolo_text)
from tests.conftest import coco_images
from tests.pipeline.training_fakes import options_for

KOREAN = ["만화", "동화", "상상화"]


def ingest(cfg, engine, folder: str):
    root = cfg.path("labeled")
    paths = sorted(p for p in (root / folder).rglob("*") if p.is_file())
    layout = Layout(cfg.home, cfg.path("archive"), cfg.path("quarantine"))
    return ingest_labelled(engine, layout, root, paths, max_bytes=50_000_000, max_pixels=89_478_485, pair_timeout=30)


def build(cfg, engine, *, retain_seconds: float = 86400.0, keep: int = 3, **training):
    training.setdefault("val_fraction", 0.25)
    return build_dataset(engine, cfg.home, cfg.path("dataset"), options_for(**training),
                         retain_seconds=retain_seconds, keep=keep)


def synthetic_drop(cfg, folder: str, names: list[str], per_class: dict[str, int], seed: int = 0) -> None:
    """Small distinct PNG covers, each labelled with one box of its class, in labelImg's YOLO format."""
    d = cfg.path("labeled") / folder
    write_classes(d, names)
    i = seed
    for cls, n in per_class.items():
        for _ in range(n):
            i += 1
            Image.new("RGB", (64, 48), (i * 7 % 256, i * 13 % 256, i * 29 % 256)).save(d / f"cover{i}.png")
            (d / f"cover{i}.txt").write_text(yolo_text([(names.index(cls), 0.5, 0.5, 0.8, 0.9)]))


def snapshot_labels(snapshot: Path) -> dict[str, list]:
    """image stem -> sorted [(class name, cx, cy, w, h)] read back through the snapshot's own data.yaml."""
    names = yaml.safe_load((snapshot / "data.yaml").read_text(encoding="utf-8"))["names"]
    out = {}
    for txt in snapshot.glob("labels/*/*.txt"):
        rows = [line.split() for line in txt.read_text().splitlines()]
        out[txt.stem] = sorted((names[int(c)], *(float(v) for v in xywh)) for c, *xywh in rows)
    return out


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sha, fraction, expected", [
    ("0" * 64, 0.2, "val"),
    ("3" * 64, 0.2, "val"),  # 0.2 of the hash range ends at 0x333...
    ("34" + "0" * 62, 0.2, "train"),
    ("f" * 64, 0.2, "train"),
    ("f" * 64, 0.999, "train"),
])
def test_split_is_a_function_of_the_content_hash(sha, fraction, expected):
    assert split_of(sha, fraction) == expected


def test_split_fraction_is_about_right():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    share = sum(split_of(s, 0.2) == "val" for s in shas) / len(shas)
    assert 0.18 < share < 0.22


def test_dataset_from_a_coco_drop_says_what_the_labels_said(cfg, engine):
    images = labelled_images(0, 10)
    coco_drop(cfg.path("labeled") / "drop", images, coco_names())
    assert ingest(cfg, engine, "drop").processed == 21
    b = build(cfg, engine)
    vals = sum(split_of(hashlib.sha256(p.read_bytes()).hexdigest(), 0.25) == "val" for p in images)
    assert b.path == cfg.path("dataset") / "v000001" and (b.train_images, b.val_images) == (10 - vals, vals)
    data = yaml.safe_load((cfg.path("dataset") / "data.yaml").read_text())
    assert data == {"path": str(b.path), "train": "images/train", "val": "images/val", "nc": 80,
                    "names": dict(enumerate(coco_names()))}
    assert (cfg.path("dataset") / "current").resolve() == b.path
    got = snapshot_labels(b.path)
    got = {stem.rsplit("_", 1)[0]: boxes for stem, boxes in got.items()}
    assert sorted(got) == sorted(p.stem for p in images)
    assert all(same_boxes(got[p.stem], expected_boxes(p)) for p in images)
    with session_scope(engine) as s:
        splits = {x.image_sha256: x.split for x in s.scalars(select(Sample))}
    for split in ("train", "val"):
        for img in (b.path / "images" / split).iterdir():
            sha = hashlib.sha256(img.read_bytes()).hexdigest()
            assert splits[sha] == split == split_of(sha, 0.25)
            assert img.stat().st_nlink >= 2  # a hard link into archive/, not a copy


def test_an_image_another_worker_moved_after_the_rows_were_read_is_still_in_the_snapshot(cfg, engine, monkeypatch):
    """Several workers: the build read an image row while it was still in labeled/, and another worker archived
    the file before the build linked it. The image is taken from its committed destination, not lost (seen:
    'cannot prepare the dataset: [Errno 2] No such file or directory: .../labeled/d03/00045.jpg')."""
    from sqlalchemy.orm.attributes import set_committed_value

    images = labelled_images(0, 4)
    coco_drop(cfg.path("labeled") / "drop", images, coco_names())
    ingest(cfg, engine, "drop")
    read = dataset._drops

    def read_before_the_move(s):
        rows = read(s)
        for _im, _sample, image in rows:  # what the rows said a moment before the move; nothing is written
            set_committed_value(image, "location", f"labeled/drop/{image.original_name}")
        return rows

    monkeypatch.setattr(dataset, "_drops", read_before_the_move)
    b = build(cfg, engine)
    assert b.train_images + b.val_images == 4
    assert sorted(p.name.rsplit("_", 1)[0] for p in b.path.glob("images/*/*")) == sorted(p.stem for p in images)


def test_unchanged_labels_do_not_make_a_new_snapshot(cfg, engine):
    synthetic_drop(cfg, "syn", KOREAN, {"만화": 3, "동화": 2})
    ingest(cfg, engine, "syn")
    assert build(cfg, engine).version == 1
    assert build(cfg, engine) is None
    assert build(cfg, engine, balance="oversample").version == 2  # a different training list is a change


def test_relabelled_image_replaces_its_labels_keeps_its_split_and_is_recorded(cfg, engine):
    images = labelled_images(0, 6)
    coco_drop(cfg.path("labeled") / "first", images, coco_names())
    ingest(cfg, engine, "first")
    first = build(cfg, engine)
    where = {p.name.rsplit("_", 1)[1]: p.parent.name for p in first.path.glob("images/*/*")}
    # The same picture dropped again, under another name, as a VOC file with one 만화 box.
    again = cfg.path("labeled") / "second"
    again.mkdir()
    (again / "renamed.jpg").write_bytes(images[2].read_bytes())
    with Image.open(images[2]) as im:
        w, h = im.size
    (again / "renamed.xml").write_bytes(voc_xml("renamed.jpg", w, h, [("만화", 1, 1, w, h)]))
    assert ingest(cfg, engine, "second").processed == 2
    engine.dispose()
    engine = make_engine(cfg.database_url)  # a restart: nothing but the database carries over
    sha = hashlib.sha256(images[2].read_bytes()).hexdigest()
    excluded = build(cfg, engine)  # training.conflicts: exclude, the default
    assert excluded.excluded == [sha] and len(snapshot_labels(excluded.path)) == 5
    second = build(cfg, engine, conflicts="latest")
    labels = snapshot_labels(second.path)
    assert len(labels) == 6 and "000000000030_" not in "".join(labels)  # images[2] appears once, renamed
    [renamed] = [k for k in labels if k.startswith("renamed_")]
    assert same_boxes(labels[renamed], [("만화", (1 + w) / 2 / w, (1 + h) / 2 / h, (w - 1) / w, (h - 1) / h)])
    moved = {p.name.rsplit("_", 1)[1]: p.parent.name for p in second.path.glob("images/*/*")}
    assert moved == where  # every content keeps its split, including the re-labelled one
    with session_scope(engine) as s:
        sha = hashlib.sha256(images[2].read_bytes()).hexdigest()
        old, new = s.scalars(select(Sample).where(Sample.image_sha256 == sha).order_by(Sample.id)).all()
        assert old.replaced_at is not None and new.replaced_at is None and old.split == new.split
        assert all(x.replaced_at is not None for x in s.scalars(select(Label).where(Label.file_id == old.image_file_id)))
        [event] = s.scalars(select(LabelEvent).where(LabelEvent.kind == "relabelled")).all()
        assert event.data["after"] == ["만화"] and event.data["changed"] and "만화" not in event.data["before"]
    assert second.quality.conflicts[0]["classes_by_drop"][str(new.id)] == ["만화"]
    engine.dispose()


def test_build_is_atomic_and_old_snapshots_stay_whole(cfg, engine, monkeypatch):
    synthetic_drop(cfg, "a", KOREAN, {"만화": 3, "동화": 3})
    ingest(cfg, engine, "a")
    v1 = build(cfg, engine).path
    before = files_under(v1)
    synthetic_drop(cfg, "b", KOREAN, {"상상화": 3}, seed=100)
    ingest(cfg, engine, "b")
    real_link, calls = dataset._link, []

    def fail_midway(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        real_link(src, dst)

    monkeypatch.setattr(dataset, "_link", fail_midway)
    with pytest.raises(OSError):
        build(cfg, engine)
    assert dataset._current(cfg.path("dataset")) == v1 and files_under(v1) == before
    assert sorted(p.name for p in cfg.path("dataset").iterdir()) == ["current", "data.yaml", "v000001"]
    monkeypatch.setattr(dataset, "_link", real_link)
    v2 = build(cfg, engine).path
    assert dataset._current(cfg.path("dataset")) == v2 and v2.name == "v000002"
    assert files_under(v1) == {**before, ".retired": b""}  # retired, still whole for a run reading it
    synthetic_drop(cfg, "c", KOREAN, {"동화": 1}, seed=200)
    ingest(cfg, engine, "c")
    os.utime(v1 / ".retired", (0, 0))  # retired long ago
    v3 = build(cfg, engine, keep=1, retain_seconds=3600).path
    assert sorted(p.name for p in cfg.path("dataset").glob("v*")) == ["v000002", "v000003"] and v3.is_dir()


def test_oversampling_repeats_rare_classes_in_the_training_list(cfg, engine):
    synthetic_drop(cfg, "syn", KOREAN, {"만화": 6, "동화": 1, "상상화": 3})
    ingest(cfg, engine, "syn")
    b = build(cfg, engine, val_fraction=1e-9, balance="oversample", max_repeat=4)  # everything in train
    assert (b.train_images, b.train_entries) == (10, 16)
    lines = (b.path / "train.txt").read_text().splitlines()
    assert len(lines) == 16 and all(line.startswith("./images/train/") for line in lines)
    by_class = {}
    for line in set(lines):
        label = (b.path / "labels/train" / (Path(line).stem + ".txt")).read_text()
        by_class.setdefault(KOREAN[int(label.split()[0])], []).append(lines.count(line))
    assert by_class == {"만화": [1] * 6, "동화": [4], "상상화": [2] * 3}  # toward 6; 동화 capped at 4
    assert yaml.safe_load((cfg.path("dataset") / "data.yaml").read_text())["train"] == "train.txt"
    with session_scope(engine) as s:
        stats = s.scalars(select(DatasetVersion)).one().stats
    assert stats["balance"] == {"method": "oversample", "target": 6.0, "max_repeat": 4,
                                "repeats": stats["balance"]["repeats"],
                                "factors": {"동화": 4.0, "만화": 1.0, "상상화": 2.0},
                                "before": {"동화": 1, "만화": 6, "상상화": 3}, "after": {"동화": 4, "만화": 6, "상상화": 6}}
    assert stats["quality"]["ratio"] == 6.0 and "imbalance" in stats["quality"]["warning"]


def test_without_oversampling_the_counts_are_recorded_unchanged(cfg, engine):
    synthetic_drop(cfg, "syn", KOREAN, {"만화": 6, "동화": 1})
    ingest(cfg, engine, "syn")
    b = build(cfg, engine, val_fraction=1e-9)
    assert (b.train_entries, b.balance) == (7, None) and not (b.path / "train.txt").exists()
    with session_scope(engine) as s:
        balance = s.scalars(select(DatasetVersion)).one().stats["balance"]
    assert balance["method"] == "none" and balance["before"] == balance["after"] == {"동화": 1, "만화": 6}


def class_folder_counts(view: Path) -> dict[str, int]:
    """Images per class folder as Ultralytics' classification dataset (torchvision's ImageFolder) lists them."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(view))
    return {c: sum(1 for _, k in folder.samples if k == i) for c, i in folder.class_to_idx.items()}


@pytest.mark.parametrize("balance", ["none", "oversample"])
def test_oversampling_a_dominant_class_set_raises_the_minority_share_for_both_tasks(cfg, engine, tmp_path, caplog,
                                                                                    balance):
    """40 vs 8 vs 8: detect reads train.txt, classify reads the class folders pipeline.training.trainer links."""
    from pipeline.training.trainer import _data_for

    synthetic_drop(cfg, "syn", KOREAN, {"만화": 40, "동화": 8, "상상화": 8})
    ingest(cfg, engine, "syn")
    with caplog.at_level("INFO", logger="pipeline.labels.dataset"):
        b = build(cfg, engine, val_fraction=1e-9, balance=balance, max_repeat=4)
    data = b.path / "data.yaml"
    if balance == "none":
        entries = sorted((b.path / "images/train").iterdir())
    else:
        entries = [b.path / line for line in (b.path / "train.txt").read_text().splitlines()]
        assert "oversample (at most 4x): 만화 40 -> 40, 동화 8 -> 32, 상상화 8 -> 32" in caplog.text
    detect = {}
    for e in entries:
        cls = KOREAN[int((b.path / "labels/train" / f"{e.stem}.txt").read_text().split()[0])]
        detect[cls] = detect.get(cls, 0) + 1
    classify = class_folder_counts(_data_for("classify", data, tmp_path / "run") / "train")
    expected = {"만화": 40, "동화": 8, "상상화": 8} if balance == "none" else {"만화": 40, "동화": 32, "상상화": 32}
    assert detect == classify == expected
    assert len({p.name for p in (tmp_path / "run/.classify-data/train").rglob("*")}) == sum(expected.values()) + 3
    assert _data_for("detect", data, tmp_path / "run") == data


def test_export_is_self_contained_and_ultralytics_accepts_it(cfg, engine, tmp_path, monkeypatch):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    with pytest.raises(DatasetError, match="no dataset built yet"):
        export_dataset(cfg.path("dataset"), tmp_path / "none")
    coco_drop(cfg.path("labeled") / "coco", labelled_images(0, 8), coco_names())
    (cfg.path("labeled") / "coco" / "empty-shelf.jpg").write_bytes(labelled_images(9, 1)[0].read_bytes())
    (cfg.path("labeled") / "coco" / "empty-shelf.txt").write_bytes(b"")  # a background image
    synthetic_drop(cfg, "books", KOREAN, {"만화": 3, "동화": 1})
    ingest(cfg, engine, "coco")
    ingest(cfg, engine, "books")
    b = build(cfg, engine, balance="oversample")
    out = export_dataset(cfg.path("dataset"), tmp_path / "export")
    assert not any(p.is_symlink() for p in out.rglob("*")) and "path" not in yaml.safe_load(
        (out / "data.yaml").read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)  # relative paths must resolve against data.yaml, not the working directory
    data = check_det_dataset(str(out / "data.yaml"), autodownload=False)
    assert data["nc"] == 83 and [data["names"][i] for i in (80, 81, 82)] == KOREAN
    assert data["train"] == str(out / "train.txt") and data["val"] == str(out / "images/val")
    train = build_yolo_dataset(get_cfg(overrides={"imgsz": 64}), data["train"], 4, data, mode="train")
    assert len(train.im_files) == b.train_entries and all(f.startswith(str(out)) for f in train.im_files)
    assert sum(len(x["cls"]) == 0 for x in train.labels) == int(split_of(
        hashlib.sha256(labelled_images(9, 1)[0].read_bytes()).hexdigest(), 0.25) == "train")
    with pytest.raises(DatasetError, match="not an empty folder"):
        export_dataset(cfg.path("dataset"), out)


def test_korean_class_names_round_trip(cfg, engine, tmp_path):
    synthetic_drop(cfg, "drop1", KOREAN, {"만화": 2, "동화": 1, "상상화": 1})
    nfd = [unicodedata.normalize("NFD", n) for n in ["상상화", "만화", "동화"]]  # another order, macOS bytes
    synthetic_drop(cfg, "drop2", nfd, {nfd[0]: 1, nfd[2]: 1}, seed=50)
    ingest(cfg, engine, "drop1")
    ingest(cfg, engine, "drop2")
    build(cfg, engine)
    data = yaml.safe_load((cfg.path("dataset") / "data.yaml").read_text(encoding="utf-8"))
    assert data["names"] == {0: "만화", 1: "동화", 2: "상상화"}
    assert "만화" in (cfg.path("dataset") / "data.yaml").read_text(encoding="utf-8")  # not \\uXXXX escapes
    assert export_classes(engine, tmp_path / "predefined_classes.txt") == KOREAN
    assert (tmp_path / "predefined_classes.txt").read_bytes() == "만화\n동화\n상상화\n".encode()
    labels = snapshot_labels(dataset._current(cfg.path("dataset")))
    assert sorted(n for boxes in labels.values() for n, *_ in boxes) == ["동화", "동화", "만화", "만화", "상상화", "상상화"]


def drop_cover(cfg, engine, folder: str, cls: str, kind: str, cover: bytes) -> None:
    """The same cover, labelled `cls`: in a class folder (labeled/<drop>/<class>/x.png) or as labelImg YOLO."""
    d = cfg.path("labeled") / folder
    if kind == "folder":
        (d / cls).mkdir(parents=True)
        (d / cls / "x.png").write_bytes(cover)
    else:
        write_classes(d, KOREAN)
        (d / "x.png").write_bytes(cover)
        (d / "x.txt").write_text(yolo_text([(KOREAN.index(cls), 0.5, 0.5, 0.8, 0.9)]))
    assert ingest(cfg, engine, folder).processed >= 1


def cover_classes(snapshot: Path) -> list[str] | None:
    """The classes the cover x.png trains with in `snapshot`, None when it is left out."""
    found = [boxes for stem, boxes in snapshot_labels(snapshot).items() if stem.startswith("x_")]
    return sorted({n for n, *_ in found[0]}) if found else None


@pytest.mark.parametrize("kind", ["folder", "labelimg"])
def test_one_cover_given_different_classes_in_different_drops(cfg, engine, tmp_path, kind):
    """exclude (the default) leaves it out until a drop repeats one of its classes; latest trains the last one.
    Either way the report lists it with every class it was given."""
    from pipeline.report.workbook import write_report

    synthetic_drop(cfg, "base", KOREAN, {"만화": 2, "동화": 1})  # registers the classes: class folders count at once
    ingest(cfg, engine, "base")
    buf = tmp_path / "x.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf)
    cover = buf.read_bytes()
    drop_cover(cfg, engine, "d1", "만화", kind, cover)
    assert cover_classes(build(cfg, engine).path) == ["만화"]
    drop_cover(cfg, engine, "d2", "동화", kind, cover)  # another person's opinion of the same cover
    b = build(cfg, engine)
    assert cover_classes(b.path) is None and b.excluded == [hashlib.sha256(cover).hexdigest()]
    assert [c["classes"] for c in b.quality.conflicts] == [["동화", "만화"]]
    for conflicts, fate in (("exclude", "left out of training"), ("latest", "trained as 동화")):
        report = write_report(engine, tmp_path / f"{conflicts}.xlsx", home=cfg.home,
                              labels=options_for(conflicts=conflicts))
        issues = pd.read_excel(report, sheet_name="Label issues", usecols="A:D").dropna(how="all")
        [row] = issues[issues["kind"] == "conflicting_labels"].to_dict("records")
        assert row["original_name"] == "x.png" and "labelled 동화, 만화 in different drops" in row["detail"]
        assert fate in row["detail"]
    assert cover_classes(build(cfg, engine, conflicts="latest").path) == ["동화"]
    drop_cover(cfg, engine, "d3", "만화", kind, cover)  # a third drop sides with the first: settled
    b = build(cfg, engine)
    assert cover_classes(b.path) == ["만화"] and b.excluded == [] and b.quality.conflicts[0]["settled"]


def test_the_configs_balance_settings_reach_the_training_runs_dataset(cfg, engine):
    """training.balance, max_repeat and conflicts from the YAML, through TrainingSettings.dataset, into
    prepare_dataset."""
    from pipeline.training.supervisor import prepare_dataset
    from watcher.config import load_config, training_settings

    synthetic_drop(cfg, "syn", KOREAN, {"만화": 30, "동화": 3})
    ingest(cfg, engine, "syn")
    raw = yaml.safe_load(cfg.config_path.read_text(encoding="utf-8")) or {}
    raw.setdefault("training", {}).update(balance="oversample", max_repeat=2, conflicts="latest", val_fraction=0.25)
    cfg.config_path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    settings = training_settings(load_config(cfg.config_path))
    assert (settings.dataset.balance, settings.dataset.max_repeat, settings.dataset.conflicts) == (
        "oversample", 2, "latest")
    prepare_dataset(engine, settings)
    with session_scope(engine) as s:
        balance = s.scalars(select(DatasetVersion)).one().stats["balance"]
    assert balance["max_repeat"] == 2 and balance["factors"]["동화"] == 2.0


def _class_folder_drop(cfg, engine, folder: str, covers: dict[str, tuple[str, bytes]]) -> None:
    """labeled/<folder>/<class>/<name>: images alone, each with its folder's (registered) class."""
    for name, (cls, data) in covers.items():
        (cfg.path("labeled") / folder / cls).mkdir(parents=True, exist_ok=True)
        (cfg.path("labeled") / folder / cls / name).write_bytes(data)
    assert ingest(cfg, engine, folder).processed == len(covers)


def _half_size(path: Path) -> bytes:
    import io

    img = Image.open(path).convert("RGB")
    out = io.BytesIO()
    img.resize((img.width // 2, img.height // 2), Image.LANCZOS).save(out, "JPEG", quality=90)
    return out.getvalue()


def _splits(engine) -> dict[str, str]:
    from storage.tables import File

    with session_scope(engine) as s:
        return dict(s.execute(select(File.original_name, Sample.split).join(File, File.id == Sample.image_file_id)
                              .where(Sample.replaced_at.is_(None), Sample.split.is_not(None))).all())


@pytest.mark.parametrize("near_bits", [6, 0])
def test_near_duplicates_never_straddle_the_split(cfg, engine, near_bits):
    """Each coco photo and its half-size copy, both 만화: one split with near-duplicates on; by content alone
    (0: off) some pairs land apart."""
    synthetic_drop(cfg, "base", KOREAN, {"만화": 1, "동화": 1})  # flat covers: they register the classes
    ingest(cfg, engine, "base")
    photos = coco_images(12)
    _class_folder_drop(cfg, engine, "first", {p.name: ("만화", p.read_bytes()) for p in photos})
    _class_folder_drop(cfg, engine, "again", {f"small {p.name}": ("만화", _half_size(p)) for p in photos})
    build(cfg, engine, val_fraction=0.5, near_duplicate_bits=near_bits)
    split = _splits(engine)
    apart = [p.name for p in photos if split[p.name] != split[f"small {p.name}"]]
    if near_bits:
        assert apart == [] and {split[p.name] for p in photos} == {"train", "val"}
    else:
        assert apart  # content hashes alone scatter the copies


def test_near_duplicates_labelled_differently_are_a_conflict(cfg, engine, tmp_path):
    """The same cover photographed twice, one photo filed under 만화, the other under 동화: a conflict the
    report lists ("near-duplicate of ..."), left out of training under conflicts: exclude."""
    from pipeline.report.workbook import write_report

    synthetic_drop(cfg, "base", KOREAN, {"만화": 1, "동화": 1})
    ingest(cfg, engine, "base")
    photo, other = coco_images(2)
    _class_folder_drop(cfg, engine, "d1", {"cover.jpg": ("만화", photo.read_bytes()), "other.jpg": ("동화", other.read_bytes())})
    _class_folder_drop(cfg, engine, "d2", {"cover small.jpg": ("동화", _half_size(photo))})
    b = build(cfg, engine)
    [c] = [c for c in b.quality.conflicts if "near_duplicate_of" in c]
    assert (c["name"], c["near_duplicate_of"], c["classes"]) == ("cover small.jpg", "cover.jpg", ["동화", "만화"])
    assert len(b.excluded) == 2 and b.train_images + b.val_images == 3  # the two flat covers and other.jpg
    report = write_report(engine, tmp_path / "r.xlsx", home=cfg.home, labels=options_for())
    issues = pd.read_excel(report, sheet_name="Label issues", usecols="A:D").dropna(how="all")
    [row] = issues[issues["kind"] == "conflicting_labels"].to_dict("records")
    assert row["original_name"] == "cover small.jpg"
    assert row["detail"].startswith("near-duplicate of cover.jpg (") and "labelled 동화 here, 만화 there" in row["detail"]
    off = build(cfg, engine, near_duplicate_bits=0)
    assert off is not None and off.excluded == [] and off.train_images + off.val_images == 5
