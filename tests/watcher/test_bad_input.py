"""Every bad input ends in quarantine with its reason code, and the daemon keeps going."""

import os
import shutil
import struct
import zlib

import pytest
from PIL import Image

from tests.conftest import coco_images, copy_images, run_cli
from tests.watcher.conftest import configure, final_rows, running


def png_declaring(path, width, height):
    """A tiny, valid-looking PNG whose header declares width x height (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def make_bad(inbox, name, tmp_path):
    jpg = coco_images(1)[0]
    target = inbox / name
    match name:
        case "empty.jpg":
            target.write_bytes(b"")
        case "truncated.jpg":
            target.write_bytes(jpg.read_bytes()[:4000])
        case "truncated.png":
            img = tmp_path / "full.png"
            Image.open(jpg).save(img)
            target.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
        case "notes.jpg":
            target.write_text("these are my notes, not a picture\n")
        case "random.png":
            target.write_bytes(os.urandom(5000))
        case "bomb.png":
            png_declaring(target, 50_000, 50_000)
        case "huge.jpg":
            target.write_bytes(jpg.read_bytes() + b"\0" * 3_000_000)
        case "cover.heic" | "cover.svg" | "README":
            target.write_bytes(b"some bytes")
        case "model.pt" | "weights.pth" | "data.pkl" | "net.onnx":
            target.write_bytes(b"\x80\x04K\x01.")  # a pickle: must never be loaded
        case "link.jpg":
            outside = tmp_path / "outside.jpg"
            shutil.copy(jpg, outside)
            target.symlink_to(outside)
        case "pipe.jpg":
            os.mkfifo(target)
    return target


CASES = [
    ("empty.jpg", "zero_bytes"),
    ("truncated.jpg", "truncated_image"),
    ("truncated.png", "truncated_image"),
    ("notes.jpg", "not_an_image"),
    ("random.png", "not_an_image"),
    ("bomb.png", "decompression_bomb"),
    ("huge.jpg", "too_large"),
    ("cover.heic", "unsupported_format"),
    ("cover.svg", "unsupported_format"),
    ("README", "unsupported_format"),
    ("model.pt", "forbidden_type"),
    ("weights.pth", "forbidden_type"),
    ("data.pkl", "forbidden_type"),
    ("net.onnx", "forbidden_type"),
    ("link.jpg", "symlink"),
    ("pipe.jpg", "not_regular_file"),
]


def test_every_bad_input_is_quarantined_with_its_reason(home, tmp_path, files_in):
    configure(home, watch={"max_bytes": 2_000_000, "max_pixels": 40_000_000})
    inbox = home / "inbox"
    with running(home) as d:
        for name, _ in CASES:
            make_bad(inbox, name, tmp_path)
        good = inbox / "good.jpg"
        shutil.copy(coco_images(2)[1], good)
        rs = final_rows(home, len(CASES) + 1)
        assert d.step.calls and all(n == 1 for n in d.step.calls.values())
    by_name = {r.original_name: r for r in rs}
    assert {n: by_name[n].reason for n, _ in CASES} == dict(CASES)
    assert all(by_name[n].state == "quarantined" for n, _ in CASES)
    assert by_name["good.jpg"].state == "processed"
    assert files_in("quarantine", "inbox") == sorted(n for n, _ in CASES)
    assert files_in("inbox") == []
    # The symlink was moved as a link: its target is untouched and still where it was.
    assert (home / "quarantine/inbox/link.jpg").is_symlink()
    assert (tmp_path / "outside.jpg").read_bytes() == coco_images(1)[0].read_bytes()
    # Forbidden files were never opened for decoding: the step never saw them.
    assert len(d.step.calls) == 1 + sum(1 for _, reason in CASES if reason in (
        "truncated_image", "not_an_image", "decompression_bomb"))


def test_unreadable_file_is_quarantined(home, monkeypatch):
    """Root reads everything, so the permission error is injected where the file is opened."""
    import pipeline.images.decode as decode

    real_open = os.open

    def deny(path, flags, *a, **k):
        if str(path).endswith("secret.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(decode.os, "open", deny)
    with running(home):
        shutil.copy(coco_images(1)[0], home / "inbox" / "secret.jpg")
        [row] = final_rows(home, 1)
    assert (row.state, row.reason) == ("quarantined", "unreadable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_permissions_for_real(home):
    with running(home):
        p = home / "inbox" / "locked.jpg"
        shutil.copy(coco_images(1)[0], p)
        p.chmod(0)
        [row] = final_rows(home, 1)
    assert (row.state, row.reason) == ("quarantined", "unreadable")


def test_process_refuses_overlapping_folders(home):
    """`archive: inbox` once archived every image back into the inbox, nesting deeper, forever."""
    configure(home, paths={"archive": "inbox"})
    copy_images(home / "inbox", 3)
    before = sorted(p.relative_to(home).as_posix() for p in home.rglob("*"))
    r = run_cli("-c", str(home / "coverwatch.yaml"), "process", timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "paths.archive (inbox) is the same folder as paths.inbox (inbox): the folders must not overlap"), r.stderr
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == before  # no database, no moves


# -- issue 14 item 8: a memory bomb below max_pixels ---------------------------------------------------------


def test_extreme_aspect_ratios_are_quarantined_and_the_boundary_is_not(home):
    """A 1x80000 PNG is a few hundred bytes; classify resizes the short side to imgsz (96 x 7,680,000 at 96)."""
    inbox = home / "inbox"
    with running(home):
        for name, size in {"tall.png": (1, 80_000), "wide21.png": (21, 1), "edge20.png": (20, 1),
                           "edge1x20.png": (1, 20)}.items():
            Image.new("RGB", size, (200, 30, 30)).save(inbox / name, optimize=True)
        rs = final_rows(home, 4)
    got = {r.original_name: (r.state, r.reason) for r in rs}
    assert got == {"tall.png": ("quarantined", "extreme_aspect"), "wide21.png": ("quarantined", "extreme_aspect"),
                   "edge20.png": ("processed", None), "edge1x20.png": ("processed", None)}
    assert "1x80000" in {r.original_name: r for r in rs}["tall.png"].detail


def test_max_aspect_reaches_the_classifier(home):
    from storage.db import make_engine
    from watcher.config import load_config
    from watcher.daemon import build_step

    configure(home, watch={"max_aspect": 30})
    cfg = load_config(home / "coverwatch.yaml")
    engine = make_engine(cfg.database_url)
    try:
        step = build_step(cfg, engine)
        try:
            assert (cfg.watch.max_aspect, step.max_aspect) == (30, 30)
        finally:
            step.close()
    finally:
        engine.dispose()


def test_classify_preprocess_allocates_about_the_model_input_whatever_the_aspect(tmp_path):
    """center_crop on a 1x80000 image (no aspect check on this path) at imgsz 64: resizing the whole image
    first made it 64 x 5,120,000 x 3 bytes (about 1 GB); only the crop is resized now. Peak RSS, in a fresh
    process so that nothing else this session allocated counts."""
    import subprocess
    import sys

    code = """if True:
        import resource
        from PIL import Image
        from pipeline.images.preprocess import center_crop
        img = Image.new("RGB", (1, 80_000), (1, 2, 3))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        x = center_crop(img, 64)
        x = center_crop(img.transpose(Image.Transpose.TRANSPOSE), 64)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(x.shape, grew)
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shape, grew_kib = r.stdout.rsplit(" ", 1)
    assert shape == "(64, 64, 3)"
    assert int(grew_kib) < 50 * 1024, f"center_crop grew the peak RSS by {int(grew_kib) // 1024} MiB"
