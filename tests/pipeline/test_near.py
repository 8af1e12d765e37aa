"""Near-duplicates in the inbox (pipeline.intake.near): a copy of a cover seen before is reported as looking like
the first, with the bits between them; it is still classified and archived like any file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import insert, select, text

from pipeline.images.phash import bands, to_db
from pipeline.inference.classify import ClassifyStep
from pipeline.inference.model_io import FakeModel
from pipeline.intake.core import Layout
from pipeline.intake.ingest import ingest_batch
from pipeline.intake.near import nearest
from storage.db import session_scope
from storage.tables import File, Prediction
from tests.conftest import USE_POSTGRES, coco_images


@pytest.fixture
def step(tmp_path):
    model = FakeModel(names=["light", "dark"], answer=lambda x: [float(x.mean()), 1 - float(x.mean())])
    s = ClassifyStep(task="classify", weights="w", imgsz=32, batch=4, conf=0.25, review_dir=None, review_below=0.0,
                     max_pixels=10_000_000, allowed_roots=[tmp_path], open_model=lambda weights: model)
    yield s
    s.close()


def _ingest(engine, home: Path, step, paths: list[Path], near_bits: int = 6):
    layout = Layout(home, home / "archive", home / "quarantine")
    return ingest_batch(engine, layout, "inbox", home / "inbox", paths, step, max_bytes=10_000_000,
                        near_bits=near_bits)


def _resized(src: Path, dest: Path) -> Path:
    img = Image.open(src).convert("RGB")
    img.resize((img.width // 2, img.height // 2), Image.LANCZOS).save(dest, quality=90)
    return dest


def _rows(engine) -> dict[str, File]:
    with session_scope(engine) as s:
        rows = {r.original_name: r for r in s.scalars(select(File))}
        s.expunge_all()
    return rows


def _originals(home: Path, n: int) -> list[Path]:
    (home / "inbox").mkdir(exist_ok=True)
    return [Path(shutil.copy(p, home / "inbox" / p.name)) for p in coco_images(n)]


@pytest.mark.parametrize("same_batch", [False, True])
def test_a_resized_copy_is_reported_as_looking_like_the_first(engine, home, step, same_batch):
    originals = _originals(home, 3)
    copy = _resized(coco_images(1)[0], home / "inbox" / "copy of first.jpg")
    if same_batch:
        report = _ingest(engine, home, step, [*originals, copy])
    else:
        _ingest(engine, home, step, originals)
        report = _ingest(engine, home, step, [copy])
    rows = _rows(engine)
    first, again = rows[originals[0].name], rows["copy of first.jpg"]
    assert (again.looks_like, again.state) == (first.id, "processed")
    assert 0 <= again.looks_like_bits <= 2
    assert first.looks_like is None and all(rows[p.name].looks_like is None for p in originals)
    assert again.final_path == "archive/inbox/copy of first.jpg" and (home / again.final_path).is_file()
    assert report.near_duplicates == 1 and report.duplicates == 0
    with session_scope(engine) as s:  # classified anyway: its own prediction, by the model in force now
        assert s.scalar(select(Prediction.file_id).where(Prediction.file_id == again.id)) == again.id


def test_distinct_photos_do_not_look_alike(engine, home, step):
    report = _ingest(engine, home, step, _originals(home, 8))
    rows = _rows(engine)
    assert report.processed == 8 and report.near_duplicates == 0
    assert all(r.looks_like is None and r.phash is not None for r in rows.values())


def test_threshold_0_turns_it_off(engine, home, step):
    originals = _originals(home, 2)
    copy = _resized(coco_images(1)[0], home / "inbox" / "copy.jpg")
    report = _ingest(engine, home, step, [*originals, copy], near_bits=0)
    assert report.processed == 3 and report.near_duplicates == 0
    assert _rows(engine)["copy.jpg"].looks_like is None


def test_an_undecodable_image_still_quarantines_as_before(engine, home, step):
    originals = _originals(home, 1)
    data = originals[0].read_bytes()
    (home / "inbox" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (home / "inbox" / "not an image.jpg").write_bytes(b"hello " * 100)
    _ingest(engine, home, step, [*originals, home / "inbox" / "truncated.jpg", home / "inbox" / "not an image.jpg"])
    rows = _rows(engine)
    assert [(rows[n].state, rows[n].reason, rows[n].phash, rows[n].looks_like) for n in
            ("truncated.jpg", "not an image.jpg")] == [("quarantined", "truncated_image", None, None),
                                                       ("quarantined", "not_an_image", None, None)]


def _seed(engine, hashes: list[int]) -> list[int]:
    with session_scope(engine) as s:
        s.execute(insert(File), [
            {"folder": "inbox", "source_path": f"{i}.jpg", "original_name": f"{i}.jpg", "size": 1, "state": "processed",
             "sha256": f"{i:064x}", "phash": to_db(h), **{f"phash_b{k}": b for k, b in enumerate(bands(h))}}
            for i, h in enumerate(hashes)])
        return list(s.scalars(select(File.id).order_by(File.id)))


def _flip(h: int, *bits: int) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def test_nearest_is_the_closest_earlier_file_within_the_threshold(engine):
    h = 0x0123_4567_89AB_CDEF
    ids = _seed(engine, [
        _flip(h, 63, 62, 47, 46, 31, 15),  # 6 bits, spread over every band (none equal): found through a probe
        _flip(h, 0, 1, 2, 3),  # 4 bits, all in the last band: the closest
        _flip(h, 63, 47, 31, 15, 14, 13, 12),  # 7 bits: beyond 6
        h,  # identical, but later than `before`
    ])
    with session_scope(engine) as s:
        assert nearest(s, "inbox", h, 6, before=ids[3]) == (ids[1], 4)
        assert nearest(s, "inbox", h, 6) == (ids[3], 0)
        assert nearest(s, "inbox", h, 3, before=ids[3]) is None
        assert nearest(s, "labeled", h, 6) is None
        assert nearest(s, "inbox", h, 0) is None


@pytest.mark.skipif(USE_POSTGRES, reason="SQLite's query plan")
def test_the_lookup_reads_the_band_indexes_not_every_hash(engine):
    from pipeline.intake.near import _candidates

    with engine.connect() as conn:
        stmt = _candidates([0x0123_4567_89AB_CDEF, 0x0F0F_0F0F_0F0F_0F0F], 6)
        compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
        plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert all(f"ix_files_phash_b{k}" in plan for k in range(4)), plan
    assert "SCAN files" not in plan.replace("SCAN files USING", ""), plan
