"""Review workbooks for tests: archived images with predictions, a person's filled cells saved the way
LibreOffice saves them, and the bad workbooks a drop folder may get."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from storage.db import session_scope
from storage.tables import ClassName, File, Prediction

CLASSES = ["만화", "동화", "상상화"]


def archive_images(engine, home: Path, images: list[Path], confidences: list[float], *, classes=CLASSES,
                   predicted: str = "만화") -> list[File]:
    """Inbox images as a classify run leaves them: in archive/inbox/, processed, with their latest prediction."""
    now = datetime.now(timezone.utc)
    (home / "archive" / "inbox").mkdir(parents=True, exist_ok=True)
    out = []
    with session_scope(engine) as s:
        if not s.query(ClassName).count():
            s.add_all(ClassName(name=n, position=i) for i, n in enumerate(classes))
        for src, conf in zip(images, confidences):
            rel = f"archive/inbox/{src.name}"
            shutil.copy(src, home / rel)
            f = File(folder="inbox", source_path=src.name, original_name=src.name, size=src.stat().st_size,
                     sha256=hashlib.sha256(src.read_bytes()).hexdigest(), state="processed", location=rel,
                     final_path=rel, moved_at=now, processed_at=now)
            s.add(f)
            s.flush()
            rest = [c for c in classes if c != predicted]
            top5 = [[predicted, conf], *[[c, conf / (i + 2)] for i, c in enumerate(rest)]]
            s.add(Prediction(file_id=f.id, model_version="v1", predicted_class=predicted, confidence=conf,
                             top5=top5, width=640, height=480))
            out.append(f)
        s.flush()
        s.expunge_all()
    return out


def fill(book: Path, choices: dict[str, str], out: Path) -> Path:
    """Type `choices` (row id -> correct class) into the workbook's cells with openpyxl, and save to `out`."""
    import openpyxl

    wb = openpyxl.load_workbook(book)
    ws = wb["Review"]
    header = [c.value for c in ws[3]]
    id_col, class_col = header.index("id") + 1, header.index("correct class") + 1
    for r in range(4, ws.max_row + 1):
        rid = ws.cell(r, id_col).value
        if rid in choices:
            ws.cell(r, class_col).value = choices[rid]
    wb.save(out)
    return out


def soffice() -> str:
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    if exe is None:
        pytest.skip("LibreOffice (soffice) not found: `make test` installs libreoffice-calc where apt works")
    return exe


def libreoffice(path: Path, to: str, outdir: Path) -> Path:
    """`soffice --headless --convert-to` with its own profile: what LibreOffice writes (xlsx) or prints (pdf)."""
    profile = outdir.parent / f"lo-profile-{outdir.name}"
    outdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([soffice(), f"-env:UserInstallation={profile.as_uri()}", "--headless", "--norestore",
                           "--convert-to", to, "--outdir", str(outdir), str(path)],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(outdir)})
    out = outdir / f"{path.stem}.{to.split(':')[0]}"
    assert proc.returncode == 0 and out.is_file(), proc.stdout + proc.stderr
    return out


def zip_parts(path: Path, parts: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    return path


MINIMAL = {"[Content_Types].xml": b'<?xml version="1.0"?><Types/>', "xl/workbook.xml": b"<workbook/>"}


def zip_bomb(path: Path) -> Path:
    """A workbook-shaped zip whose sheet unpacks 8 MiB of zeros from a few KiB."""
    return zip_parts(path, {**MINIMAL, "xl/worksheets/sheet1.xml": b"\0" * (8 << 20)})


def xml_bomb(path: Path) -> Path:
    lol = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
           b"<sst>&lol2;</sst>")
    return zip_parts(path, {**MINIMAL, "xl/sharedStrings.xml": lol})


def with_macros(src: Path, path: Path) -> Path:
    """`src` with a vbaProject.bin added, under an .xlsx name."""
    with zipfile.ZipFile(src) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    return zip_parts(path, {**parts, "xl/vbaProject.bin": b"\xd0\xcf\x11\xe0 not really"})
