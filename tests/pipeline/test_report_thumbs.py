"""Thumbnails beside the newest rows of Predictions and Quarantine: made once, cached by sha256, never from a file
that is not a decodable image, and placed where the rows really are."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from PIL import Image

import pipeline.images.thumbs as thumbs_module
from pipeline.errors import Rejected
from pipeline.images.thumbs import CACHE_DIR, THUMB_PX, make_thumbnail
from pipeline.report.thumbs import ROW_PT, SHOWN_PX
from pipeline.report.workbook import write_report
from pipeline.settings import ThumbnailOptions
from storage.db import session_scope
from storage.tables import File, Prediction
from tests.conftest import coco_images
from tests.pipeline.training_fakes import options_for

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


def _options(newest: int = 2000, **kw) -> ThumbnailOptions:
    return ThumbnailOptions(**{"newest": newest, "max_bytes": 50 << 20, "max_pixels": 89_478_485,
                               "max_aspect": 20.0, **kw})


def _archive(s, home: Path, name: str, data: bytes, state: str = "processed", **kw) -> File:
    folder = "archive" if state == "processed" else "quarantine"
    rel = f"{folder}/inbox/{name}"
    (home / rel).parent.mkdir(parents=True, exist_ok=True)
    (home / rel).write_bytes(data)
    f = File(folder="inbox", source_path=name, original_name=name, size=len(data), state=state, final_path=rel,
             sha256=hashlib.sha256(data).hexdigest(), created_at=T0, processed_at=T0, **kw)
    s.add(f)
    s.flush()
    return f


@pytest.fixture
def photos(engine, home: Path) -> Path:
    """Five classified photos (coco24), the newest last; in quarantine a photo, a truncated JPEG and a text file."""
    images = coco_images(6)
    with session_scope(engine) as s:
        for i, src in enumerate(images[:5]):
            f = _archive(s, home, f"p{i}.jpg", src.read_bytes())
            s.add(Prediction(file_id=f.id, model_version="v1", predicted_class="a", confidence=0.9,
                             created_at=T0 + timedelta(minutes=i)))
        _archive(s, home, "dup.jpg", images[5].read_bytes(), "quarantined", reason="duplicate")
        _archive(s, home, "broken.jpg", images[0].read_bytes()[:2000], "quarantined", reason="truncated_image")
        _archive(s, home, "notes.txt", b"not an image", "quarantined", reason="unsupported_format")
        _archive(s, home, "fake.jpg", b"plain text in a .jpg", "quarantined", reason="not_an_image")
    return home


def _write(engine, home: Path, newest: int = 2000, name: str = "r.xlsx") -> Path:
    return write_report(engine, home / "reports" / name, home=home, tz=timezone.utc, labels=options_for(),
                        thumbnails=_options(newest) if newest is not None else None)


def _anchors(path: Path, sheet: str) -> list[tuple[int, int]]:
    """(from row, to row), 0-based, of every picture on `sheet`, from the drawing XML itself."""
    wb = openpyxl.load_workbook(path)
    return sorted((im.anchor._from.row, im.anchor.to.row) for im in wb[sheet]._images)


def test_only_the_newest_rows_get_a_thumbnail_inside_their_own_tall_row(engine, photos):
    path = _write(engine, photos, newest=3)
    assert _anchors(path, "Predictions") == [(3, 3), (4, 4), (5, 5)]  # rows 4-6: p2, p3, p4
    ws = openpyxl.load_workbook(path)["Predictions"]
    assert ws.sheet_format.defaultRowHeight == ROW_PT and ws.sheet_format.customHeight
    assert [ws.row_dimensions[r].height for r in range(1, 7)] == [15, 15, 15, None, None, None]  # None: the default
    preds = pd.read_excel(path, sheet_name="Predictions")
    assert preds.columns[-1] == "thumbnail" and preds["thumbnail"].isna().all()
    assert preds["original_name"].tolist() == [f"p{i}.jpg" for i in range(5)]
    # The cached thumbnail (THUMB_PX on its long side) shown in a SHOWN_PX square, centred.
    with zipfile.ZipFile(path) as z:
        media = [n for n in z.namelist() if n.startswith("xl/media/")]
        assert len(media) == 3  # the newest 3 in quarantine are the ones that do not decode
        with z.open(media[0]) as fh, Image.open(fh) as im:
            assert max(im.size) == THUMB_PX
    anchor = openpyxl.load_workbook(path)["Predictions"]._images[0].anchor  # within one cell: offsets in EMU
    width, height = anchor.to.colOff - anchor._from.colOff, anchor.to.rowOff - anchor._from.rowOff
    assert max(width, height) == SHOWN_PX * 9525 and min(width, height) > 0


def test_quarantine_shows_a_thumbnail_only_where_the_file_decodes_and_says_nothing_of_the_others(engine, photos):
    path = _write(engine, photos)
    assert _anchors(path, "Quarantine") == [(1, 1)]  # dup.jpg; broken.jpg, notes.txt, fake.jpg: none, no error
    quarantine = pd.read_excel(path, sheet_name="Quarantine")
    assert quarantine["original_name"].tolist() == ["dup.jpg", "broken.jpg", "notes.txt", "fake.jpg"]
    notes = sorted(p.read_text().strip() for p in (photos / CACHE_DIR).glob("*/*.skip"))
    assert notes == ["not_an_image", "truncated_image", "unsupported_format"]


def test_the_second_report_takes_every_thumbnail_from_the_cache(engine, photos, monkeypatch):
    opened = []
    real = thumbs_module.open_checked
    monkeypatch.setattr(thumbs_module, "open_checked", lambda *a, **k: opened.append(1) or real(*a, **k))
    first = _write(engine, photos, name="first.xlsx")
    assert len(opened) == 5 + 3  # every photo, the truncated JPEG and the fake (notes.txt fails on its name)
    cached = {p: p.stat().st_mtime_ns for p in (photos / CACHE_DIR).glob("*/*")}
    assert len(cached) == 5 + 1 + 3
    opened.clear()
    second = _write(engine, photos, name="second.xlsx")
    assert opened == []  # not one decode, nor a retry of the files that gave none
    assert {p: p.stat().st_mtime_ns for p in (photos / CACHE_DIR).glob("*/*")} == cached
    assert _anchors(second, "Predictions") == _anchors(first, "Predictions")


def test_thumbnails_0_means_no_pictures_no_column_and_no_cache(engine, photos):
    for newest in (0, None):
        path = _write(engine, photos, newest=newest)
        assert _anchors(path, "Predictions") == [] and _anchors(path, "Quarantine") == []
        assert "thumbnail" not in pd.read_excel(path, sheet_name="Predictions").columns
        assert openpyxl.load_workbook(path)["Predictions"].sheet_format.defaultRowHeight == 15
    assert not (photos / CACHE_DIR).exists()


def test_a_large_jpeg_is_decoded_small_and_the_inbox_limits_hold(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(big, quality=80)
    sizes = []
    real = thumbs_module.to_rgb
    monkeypatch.setattr(thumbs_module, "to_rgb", lambda img: sizes.append(img.size) or real(img))
    data = make_thumbnail(big, max_pixels=89_478_485)
    assert sizes == [(500, 375)]  # JPEG draft at 1/8: 12 MP never decoded whole
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (THUMB_PX, THUMB_PX * 3 // 4) and im.getpixel((THUMB_PX // 2, 10))[0] > 150
    for limits, code in (({"max_bytes": 1000}, "too_large"), ({"max_pixels": 1000}, "decompression_bomb")):
        with pytest.raises(Rejected) as err:
            make_thumbnail(big, **{"max_pixels": 89_478_485, **limits})
        assert err.value.code == code
    tall = tmp_path / "tall.png"
    Image.new("L", (1, 3000)).save(tall)
    link = tmp_path / "link.jpg"
    link.symlink_to(big)
    for path, code in ((tall, "extreme_aspect"), (link, "symlink")):
        with pytest.raises(Rejected) as err:
            make_thumbnail(path, max_pixels=89_478_485)
        assert err.value.code == code
    assert ROW_PT * 4 / 3 >= SHOWN_PX + 4  # the row holds the picture and its offset
