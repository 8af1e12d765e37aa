"""Files that cannot be moved, that vanish or are renamed mid-way, or are rewritten while pending (issue 14,
items 4, 5 and 11): the daemon stays up, and the records match the folders."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.watcher.conftest import CountingStep, predictions, rows
from watcher.config import load_config
from watcher.daemon import Daemon


def write_pngs(folder: Path, n: int, size=(16, 12)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{i:03d}.png"
        Image.new("RGB", size, (i, 2 * i % 256, 7)).save(p, format="PNG")
        out.append(p)
    return out


def process(home: Path, step=None) -> Daemon:
    """One `coverwatch process` run (a fresh Daemon: what a restart sees)."""
    d = Daemon(load_config(home / "coverwatch.yaml"), step=step or CountingStep())
    d.process_pending()
    return d


def snapshot(home: Path) -> list[tuple]:
    return [(r.id, r.state, r.reason, r.location, r.final_path, r.duplicate_of, r.moved_at is not None)
            for r in rows(home)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- item 4: a file the daemon cannot move ------------------------------------------------------------------


def deny_unlink(monkeypatch, path: Path, code: int = errno.EPERM) -> None:
    """What `chattr +i` or a read-only mount does to the one file: it can be read and copied, never removed."""
    real = os.unlink

    def unlink(p, *a, **k):
        if str(p) == str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(p, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)


def check_one_stuck(home: Path) -> None:
    by_name = {r.original_name: r for r in rows(home)}
    one = by_name["one.png"]
    assert (one.state, one.reason, one.location, one.moved_at) == ("processed", "cannot_move", "inbox/one.png", None)
    assert "cannot move" in one.detail
    assert (home / "inbox/one.png").exists() and not (home / "archive/inbox/one.png").exists()
    others = [r for n, r in by_name.items() if n != "one.png"]
    assert len(others) == 19 and all(r.state == "processed" and r.location == r.final_path for r in others)
    assert sorted(p.name for p in (home / "inbox").iterdir()) == ["one.png"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES, errno.EROFS])
def test_a_file_that_cannot_be_moved_stays_and_the_daemon_keeps_going(home, monkeypatch, code):
    write_pngs(home / "inbox", 19)
    Image.new("RGB", (20, 20), "red").save(home / "inbox/one.png")
    deny_unlink(monkeypatch, home / "inbox/one.png", code)
    process(home)
    check_one_stuck(home)
    process(home)  # a restart: recovery tries the move once more and does not exit on it
    check_one_stuck(home)
    monkeypatch.undo()  # the cause is fixed: the next try moves it
    process(home)
    one = next(r for r in rows(home) if r.original_name == "one.png")
    assert (one.state, one.reason, one.location) == ("processed", None, one.final_path)
    assert not (home / "inbox/one.png").exists() and (home / "archive/inbox/one.png").exists()
    assert len(predictions(home)) == 20


def test_a_quarantined_file_that_cannot_be_moved_keeps_its_reason(home, monkeypatch):
    (home / "inbox/one.png").write_text("not a picture")
    deny_unlink(monkeypatch, home / "inbox/one.png")
    process(home)
    [row] = rows(home)
    assert (row.state, row.reason, row.moved_at) == ("quarantined", "not_an_image", None)
    assert "cannot move" in row.detail and (home / "inbox/one.png").exists()
    assert not (home / "quarantine/inbox/one.png").exists()


def test_a_move_that_cannot_be_done_is_retried_with_back_off(home, monkeypatch):
    from storage.db import session_scope
    from storage.files import MoveBackoff, finish_moves, unfinished_moves
    from tests.watcher.conftest import home_engine

    Image.new("RGB", (20, 20), "red").save(home / "inbox/one.png")
    deny_unlink(monkeypatch, home / "inbox/one.png")
    process(home)
    tries = {"n": 0}
    real_link = os.link

    def link(*a, **k):
        tries["n"] += 1
        return real_link(*a, **k)

    monkeypatch.setattr(os, "link", link)
    clock = {"t": 0.0}
    backoff = MoveBackoff(first=10.0, most=40.0, clock=lambda: clock["t"])
    engine = home_engine(home)

    def attempt(at: float) -> None:
        clock["t"] = at
        with session_scope(engine) as s:
            finish_moves(s, home, unfinished_moves(s), backoff)

    try:
        for at in (0, 1, 9, 10, 11, 29, 30, 69, 70, 109, 110):
            attempt(at)
    finally:
        engine.dispose()
    # Tried at 0, then 10 s later, 20 s, 40 s and 40 s again (the most); never in between.
    assert tries["n"] == 5
    [row] = rows(home)
    assert row.reason == "cannot_move" and (home / "inbox/one.png").exists()


def test_disk_full_during_a_move_is_not_cannot_move(home, monkeypatch):
    import storage.files as files

    Image.new("RGB", (20, 20), "red").save(home / "inbox/one.png")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_place", full)
    process(home)
    [row] = rows(home)
    assert (row.state, row.reason, row.moved_at) == ("processed", None, None)
    assert (home / "inbox/one.png").exists()


def _chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
def test_an_immutable_file_for_real(home):
    write_pngs(home / "inbox", 19)
    one = home / "inbox/one.png"
    Image.new("RGB", (20, 20), "red").save(one)
    if not _chattr("+i", one):
        pytest.skip(f"chattr +i is not supported on the file system of {home}")
    try:
        process(home)
        check_one_stuck(home)
        process(home)  # every restart used to exit 1 in recovery
        check_one_stuck(home)
    finally:
        _chattr("-i", one)
    process(home)
    assert not one.exists() and (home / "archive/inbox/one.png").exists()


# -- item 5: files renamed or deleted mid-way ---------------------------------------------------------------


class RenamingStep(CountingStep):
    """Renames `src` to `dst` on its first call: before it reads the files, or after (before the commit)."""

    def __init__(self, src: Path, dst: Path, *, before: bool):
        super().__init__()
        self.src, self.dst, self.before, self.done = src, dst, before, False

    def __call__(self, items):
        if self.done:
            return super().__call__(items)
        self.done = True
        if self.before:
            os.rename(self.src, self.dst)
            return super().__call__(items)
        out = super().__call__(items)
        os.rename(self.src, self.dst)
        return out


def test_a_folder_renamed_while_its_files_are_pending(home):
    write_pngs(home / "inbox/e1", 20)
    process(home, RenamingStep(home / "inbox/e1", home / "inbox/e2", before=True))
    step = CountingStep()
    process(home, step)  # the next pass
    rs = rows(home)
    old = [r for r in rs if r.source_path.startswith("e1/")]
    new = [r for r in rs if r.source_path.startswith("e2/")]
    assert len(old) == 20 and all((r.state, r.reason, r.location) == ("quarantined", "vanished", None) for r in old)
    assert len(new) == 20 and all(r.state == "processed" and r.duplicate_of is None for r in new)
    assert all(r.location == r.final_path for r in new) and not any((home / "inbox").rglob("*.png"))
    assert len(step.calls) == 20  # taken as new: classified, not settled as copies of the vanished rows
    assert {p.file_id for p in predictions(home)} == {r.id for r in new}
    before = snapshot(home)
    process(home)  # a restart changes nothing further
    assert snapshot(home) == before


def test_a_file_renamed_between_step_and_commit(home):
    write_pngs(home / "inbox", 1)
    process(home, RenamingStep(home / "inbox/000.png", home / "inbox/renamed.png", before=False))
    step = CountingStep()
    process(home, step)
    by_name = {r.original_name: r for r in rows(home)}
    assert (by_name["000.png"].state, by_name["000.png"].reason) == ("quarantined", "vanished")
    new = by_name["renamed.png"]
    assert (new.state, new.duplicate_of, new.location) == ("processed", None, "archive/inbox/renamed.png")
    assert len(step.calls) == 1 and [p.file_id for p in predictions(home)] == [new.id]
    before = snapshot(home)
    process(home)
    assert snapshot(home) == before


def test_pending_rows_left_for_vanished_files_are_resolved_at_start(home):
    """What an older version (or a crash, then a rename while down) left: pending rows for files that are gone,
    and the renamed files waiting as their duplicates."""
    from storage.db import session_scope, upgrade_database
    from storage.tables import File
    from tests.watcher.conftest import home_engine

    paths = write_pngs(home / "inbox/e2", 3)
    engine = home_engine(home)
    try:
        upgrade_database(engine)
        with session_scope(engine) as s:
            stale = [File(folder="inbox", source_path=f"e1/{p.name}", original_name=p.name, size=p.stat().st_size,
                          sha256=sha(p), location=f"inbox/e1/{p.name}", state="pending") for p in paths]
            s.add_all(stale)
            s.flush()
            # Two of the real files were registered already, as copies of the stale rows.
            s.add_all(File(folder="inbox", source_path=f"e2/{p.name}", original_name=p.name, size=p.stat().st_size,
                           sha256=sha(p), location=f"inbox/e2/{p.name}", state="pending", duplicate_of=old.id)
                      for p, old in list(zip(paths, stale))[:2])
            s.add(File(folder="inbox", source_path="deleted.png", original_name="deleted.png", size=1, sha256="0" * 64,
                       location="inbox/deleted.png", state="awaiting_model"))  # its content never comes back
    finally:
        engine.dispose()
    assert len([r for r in rows(home) if r.state in ("pending", "awaiting_model")]) == 6
    assert not (home / "inbox/e1").exists()
    process(home)
    rs = rows(home)
    assert sorted((r.source_path, r.state, r.reason) for r in rs) == sorted(
        [(f"e1/{p.name}", "quarantined", "vanished") for p in paths]
        + [(f"e2/{p.name}", "processed", None) for p in paths] + [("deleted.png", "quarantined", "vanished")])
    assert all(r.duplicate_of is None for r in rs) and len(predictions(home)) == 3
    assert not any((home / "inbox").rglob("*.png"))


# -- item 11: a file rewritten in place while pending ---------------------------------------------------


class RewritingStep(CountingStep):
    """Rewrites the file with another valid image on its first call, after computing its result."""

    def __init__(self, path: Path, image: Image.Image):
        super().__init__()
        self.path, self.image, self.done = path, image, False

    def __call__(self, items):
        out = super().__call__(items)
        if not self.done:
            self.done = True
            self.image.save(self.path, format="PNG")
        return out


def test_a_file_rewritten_while_pending_is_classified_as_it_is_archived(home):
    p = home / "inbox/cover.png"
    Image.new("RGB", (16, 12), "red").save(p)
    process(home, RewritingStep(p, Image.new("RGB", (48, 40), "blue")))
    done = [r for r in rows(home) if r.state == "processed"]
    assert len(done) == 1
    [row] = done
    archived = home / row.final_path
    assert row.location == row.final_path and sha(archived) == row.sha256
    with Image.open(archived) as im:
        assert im.size == (48, 40)
    [pred] = [x for x in predictions(home) if x.file_id == row.id]
    assert (pred.width, pred.height) == (48, 40)  # the result is the new content's
    assert len(predictions(home)) == 1
    [old] = [r for r in rows(home) if r.id != row.id]  # the content that was classified first is gone
    assert (old.state, old.reason, old.location) == ("quarantined", "replaced", None)


def test_a_labelled_file_that_cannot_be_moved_stays_and_the_rest_goes_on(home, monkeypatch):
    """The labelled path moves through the same finish_moves: a stuck image stays, its label and the other
    pairs are archived, and a restart does not exit on it."""
    from tests.labelimg import coco_drop, coco_names, labelled_images

    images = labelled_images(0, 3)
    drop = home / "labeled/drop"
    coco_drop(drop, images, coco_names())
    stuck = drop / images[0].name
    deny_unlink(monkeypatch, stuck)
    for _ in range(2):
        process(home)
        by_path = {r.source_path: r for r in rows(home)}
        row = by_path[f"drop/{stuck.name}"]
        assert (row.state, row.reason, row.moved_at) == ("processed", "cannot_move", None) and stuck.exists()
        assert sorted(p.name for p in drop.iterdir()) == [stuck.name]
        assert all(r.moved_at is not None for p, r in by_path.items() if p != f"drop/{stuck.name}")


def test_a_copy_that_fails_half_way_leaves_no_temp_file(home, monkeypatch):
    """Across devices the move copies: a copy cut short (disk full) must not leave its half behind."""
    import shutil

    Image.new("RGB", (20, 20), "red").save(home / "inbox/one.png")

    def cross_device(*a, **k):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def half_copy(src, dst, **k):
        Path(dst).write_bytes(Path(src).read_bytes()[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.setattr(shutil, "copy2", half_copy)
    process(home)
    assert [p.name for p in (home / "archive").rglob("*") if p.is_file()] == []
    [row] = rows(home)
    assert (row.state, row.reason, row.moved_at) == ("processed", None, None)  # disk full: retried, not stuck


def test_a_locked_database_during_the_start_up_recovery_does_not_stop_the_start(home, monkeypatch, caplog):
    """Another worker writes while this one starts: the recovery of interrupted moves gets 'database is locked'.
    The start goes on, and the next rescan finishes those moves instead."""
    from sqlalchemy.exc import OperationalError

    import watcher.daemon as daemon_module

    write_pngs(home / "inbox", 3)
    process(home)
    real = daemon_module.unfinished_moves
    calls = []

    def locked_once(s):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return real(s)

    monkeypatch.setattr(daemon_module, "unfinished_moves", locked_once)
    d = Daemon(load_config(home / "coverwatch.yaml"), step=CountingStep())
    try:
        d.initialize(observe=False)
    finally:
        d.shutdown()
    assert calls and "interrupted moves could not be looked at" in caplog.text
