"""The life of a file through the real daemon: complete files only, once each, never lost."""

import errno
import os
import shutil
import sqlite3
import threading
import time
import unicodedata

import pytest
from PIL import Image

from tests.conftest import USE_POSTGRES, coco_images, run_cli
from tests.watcher.conftest import CountingStep, configure, final_rows, predictions, rows, running, wait_for


def unique_png(path, i: int, size=(40, 30)):
    Image.new("RGB", size, ((i * 37) % 256, (i * 11) % 256, i % 256)).save(path, format="PNG")
    return path


@pytest.mark.parametrize("name", [
    "with space.jpg",
    unicodedata.normalize("NFC", "만화 표지.jpg"),
    unicodedata.normalize("NFD", "만화 표지 (nfd).jpg"),
    "what?.jpg",
    "time 12:30.jpg",
    "it's \"quoted\".jpg",
    ("긴" * 60) + "-" + ("x" * 60) + ".jpg",  # 245 bytes: close to the 255-byte limit
])
def test_awkward_names_end_to_end(home, name, files_in):
    with running(home):
        shutil.copy(coco_images(1)[0], home / "inbox" / name)
        [row] = final_rows(home, 1)
    assert (row.state, row.original_name, row.source_path) == ("processed", name, name)
    assert files_in("archive", "inbox") == [name]
    [pred] = predictions(home)
    with Image.open(coco_images(1)[0]) as img:
        assert (pred.width, pred.height) == img.size


def test_name_clash_in_archive_never_overwrites(home, files_in):
    """Different content under the same name is kept apart, even when the archived name is near 255 bytes."""
    long = "표" * 80 + ".png"  # 244 bytes; "-1" must cut the stem, not overflow NAME_MAX
    with running(home):
        for i in range(3):
            unique_png(home / "inbox" / "cover.png", i)
            unique_png(home / "inbox" / long, 100 + i)
            final_rows(home, 2 * (i + 1))
    rs = rows(home)
    assert [r.state for r in rs] == ["processed"] * 6 and all(r.duplicate_of is None for r in rs)
    archived = files_in("archive", "inbox")
    assert len(archived) == 6 and "cover.png" in archived and "cover-1.png" in archived and "cover-2.png" in archived
    assert all(len(n.encode()) <= 255 for n in archived)
    assert {r.original_name for r in rs} == {"cover.png", long}


def test_a_name_the_database_still_holds_is_not_reused_after_archive_was_emptied(home, files_in):
    """Someone empties archive/: cover.png and cover-1.png are free on disk but still the final paths of two
    rows. A third cover.png must get a name no row holds (it once hit the UNIQUE constraint on final_path)."""
    with running(home):
        for i in range(2):
            unique_png(home / "inbox" / "cover.png", i)
            final_rows(home, i + 1)
    shutil.rmtree(home / "archive" / "inbox")
    with running(home):
        unique_png(home / "inbox" / "cover.png", 2)
        rs = final_rows(home, 3)
    assert [r.state for r in rs] == ["processed"] * 3
    assert len({r.final_path for r in rs}) == 3
    assert files_in("archive", "inbox") == ["cover-2.png"]


def test_same_content_twice_is_a_duplicate_not_a_second_inference(home, files_in):
    src = coco_images(1)[0]
    with running(home) as d:
        shutil.copy(src, home / "inbox" / "first.jpg")
        final_rows(home, 1)
        shutil.copy(src, home / "inbox" / "again.jpg")
        shutil.copy(src, home / "inbox" / "sub" / "first.jpg") if (home / "inbox" / "sub").mkdir() is None else None
        rs = final_rows(home, 3)
        assert list(d.step.calls.values()) == [1]
    first, again, sub = rs
    assert (again.duplicate_of, sub.duplicate_of) == (first.id, first.id)
    assert all(r.state == "processed" for r in rs)
    assert len(predictions(home)) == 1
    assert files_in("archive", "inbox") == ["again.jpg", "first.jpg", "sub/first.jpg"]


def test_an_inbox_photo_of_a_labelled_image_is_classified_not_a_duplicate_of_the_label(home, files_in):
    """The users' own case: covers they labelled dropped into the inbox too. The labelled row has no prediction
    to end as; the inbox copy once ended `processed` as a "duplicate" of it with no prediction, and was missing
    from the report's Predictions sheet. Copies within the inbox still share one inference."""
    from tests.labelimg import coco_drop, coco_names, labelled_images

    [image] = labelled_images(0, 1)
    with running(home) as d:
        coco_drop(home / "labeled" / "drop", [image], coco_names())
        final_rows(home, 3)  # classes.txt, the label, the image
        shutil.copy(image, home / "inbox" / "cover.jpg")
        shutil.copy(image, home / "inbox" / "again.jpg")
        rs = final_rows(home, 5)
    inbox = sorted((r for r in rs if r.folder == "inbox"), key=lambda r: r.id)
    assert [r.state for r in inbox] == ["processed", "processed"]
    assert inbox[0].duplicate_of is None and inbox[1].duplicate_of == inbox[0].id
    assert [p.file_id for p in predictions(home)] == [inbox[0].id]
    assert list(d.step.calls.values()) == [1]
    assert files_in("archive", "inbox") == ["again.jpg", "cover.jpg"]


def test_slow_writer_that_pauses_is_not_processed_half_written(home):
    data = coco_images(1)[0].read_bytes()
    with running(home) as d:
        with open(home / "inbox" / "slow.jpg", "wb") as f:
            f.write(data[: len(data) // 3])
            f.flush()
            time.sleep(d.cfg.watch.settle_seconds * 5)  # longer than the settle time, file still open
            assert rows(home) == []
            f.write(data[len(data) // 3:])
        [row] = final_rows(home, 1)
    assert (row.state, row.size) == ("processed", len(data))


def test_temp_name_is_ignored_until_renamed(home):
    with running(home) as d:
        part = home / "inbox" / "upload.jpg.part"
        dot = home / "inbox" / ".upload2.jpg"
        shutil.copy(coco_images(1)[0], part)
        shutil.copy(coco_images(2)[1], dot)
        for name in ("a.tmp", "b.crdownload", "c.jpg~"):
            unique_png(home / "inbox" / name, 1)
        time.sleep(d.cfg.watch.settle_seconds * 4)
        d.rescan.run(d.clock())  # a rescan must not pick them up either
        time.sleep(d.cfg.watch.settle_seconds * 3)
        assert rows(home) == []
        part.rename(home / "inbox" / "upload.jpg")
        dot.rename(home / "inbox" / "upload2.jpg")
        rs = final_rows(home, 2)
    assert sorted(r.original_name for r in rs) == ["upload.jpg", "upload2.jpg"]


def test_copied_with_old_mtime_and_moved_in(home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    old = unique_png(outside / "old.png", 7)
    os.utime(old, (1_000_000_000, 1_000_000_000))
    folder = outside / "batch"
    folder.mkdir()
    for i in range(3):
        unique_png(folder / f"{i}.png", 20 + i)
    with running(home):
        shutil.copy2(old, home / "inbox" / "cp-p.png")  # cp -p: old mtime preserved
        os.rename(old, home / "inbox" / "mv.png")  # mv: one rename event, no writes
        os.rename(folder, home / "inbox" / "batch")  # a whole folder moved in: no per-file events
        rs = final_rows(home, 5)
    assert sorted(r.source_path for r in rs) == ["batch/0.png", "batch/1.png", "batch/2.png", "cp-p.png", "mv.png"]
    assert {r.state for r in rs} == {"processed"}
    same = {r.source_path: r for r in rs if r.source_path in ("mv.png", "cp-p.png")}
    assert sorted(r.duplicate_of is None for r in same.values()) == [False, True]  # same bytes: one is a duplicate


def test_files_dropped_while_down_are_found_at_start(home):
    for i in range(5):
        unique_png(home / "inbox" / f"{i}.png", i)
    with running(home):
        rs = final_rows(home, 5)
    assert {r.state for r in rs} == {"processed"}


def test_polling_mode(home, files_in):
    configure(home, watch={"polling": True, "poll_interval_seconds": 0.2, "rescan_seconds": 3600})
    with running(home) as d:
        assert d.polling and type(d.observer).__name__ == "PollingObserver"
        time.sleep(0.3)
        for i in range(20):
            unique_png(home / "inbox" / f"{i}.png", i)
        os.makedirs(home / "inbox" / "deep" / "er")
        unique_png(home / "inbox" / "deep" / "er" / "x.png", 99)
        shutil.copy(coco_images(1)[0], home / "inbox" / "photo.jpg.part")
        os.rename(home / "inbox" / "photo.jpg.part", home / "inbox" / "photo.jpg")
        rs = final_rows(home, 22)
    assert {r.state for r in rs} == {"processed"} and len(rs) == 22
    assert "deep/er/x.png" in files_in("archive", "inbox")


def test_events_lost_are_caught_by_the_periodic_rescan(home):
    configure(home, watch={"rescan_seconds": 0.5})
    with running(home) as d:
        d.observer.stop()  # no more events: as on a network share, or after an inotify overflow
        d.observer.join()
        d.observer = None
        for i in range(3):
            unique_png(home / "inbox" / f"{i}.png", i)
        rs = final_rows(home, 3)
    assert {r.state for r in rs} == {"processed"}


def test_dead_observer_is_restarted(home):
    configure(home, watch={"rescan_seconds": 3600})
    with running(home) as d:
        first = d.observer
        first.stop()
        first.join()
        wait_for(lambda: d.observer is not first and d.observer.is_alive())
        unique_png(home / "inbox" / "after.png", 1)
        [row] = final_rows(home, 1)
    assert row.state == "processed"


@pytest.mark.skipif(USE_POSTGRES, reason="SQLite's database-level lock; PostgreSQL locks rows")
def test_database_locked_file_waits_and_is_retried(home):
    from storage.db import make_engine
    from watcher.config import load_config

    cfg = load_config(home / "coverwatch.yaml")
    engine = make_engine(cfg.database_url, busy_timeout_ms=100)
    with running(home, engine=engine):
        lock = sqlite3.connect(home / "coverwatch.db", timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            shutil.copy(coco_images(1)[0], home / "inbox" / "a.jpg")
            time.sleep(1.5)  # several failed attempts while locked
            assert (home / "inbox" / "a.jpg").exists()
        finally:
            lock.rollback()
            lock.close()
        [row] = final_rows(home, 1)
    assert row.state == "processed" and not (home / "inbox" / "a.jpg").exists()


def test_disk_full_during_the_move_leaves_the_file_and_retries(home, monkeypatch, files_in):
    import storage.files as files

    real = files._place
    failures = {"n": 0}

    def full(src, dst):
        if failures["n"] < 3:
            failures["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files, "_place", full)
    configure(home, watch={"rescan_seconds": 0.3})
    with running(home):
        shutil.copy(coco_images(1)[0], home / "inbox" / "a.jpg")
        wait_for(lambda: failures["n"] >= 1)
        assert (home / "inbox" / "a.jpg").exists()  # still where the user put it
        [row] = final_rows(home, 1)
    assert row.state == "processed" and files_in("archive", "inbox") == ["a.jpg"] and files_in("inbox") == []
    assert len(predictions(home)) == 1


def test_disk_full_at_commit_rolls_back_and_retries(home, monkeypatch):
    import pipeline.intake.ingest as ingest

    real = ingest._commit
    failures = {"n": 0}

    def full(*a, **k):
        if failures["n"] < 2:
            failures["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(ingest, "_commit", full)
    with running(home) as d:
        shutil.copy(coco_images(1)[0], home / "inbox" / "a.jpg")
        [row] = final_rows(home, 1)
        # The step ran once per attempt (its result was not committed), but only one result was recorded.
        assert list(d.step.calls.values()) == [3]
    assert row.state == "processed" and len(predictions(home)) == 1


def test_requeue_sends_quarantined_files_back(home, files_in):
    configure(home, watch={"max_bytes": 1000})
    cfg = str(home / "coverwatch.yaml")
    with running(home):
        shutil.copy(coco_images(1)[0], home / "inbox" / "big.jpg")
        [row] = final_rows(home, 1)
    assert row.reason == "too_large"
    r = run_cli("-c", cfg, "requeue", "999")
    assert r.returncode == 2 and "not in quarantine: 999" in r.stderr
    configure(home, watch={"max_bytes": 50_000_000})
    r = run_cli("-c", cfg, "requeue", "--all")
    assert r.returncode == 0, r.stderr
    assert f"requeued {row.id} big.jpg (was too_large)" in r.stdout
    assert files_in("inbox") == ["big.jpg"] and files_in("quarantine") == []
    r = run_cli("-c", cfg, "process")
    assert r.returncode == 0, r.stderr
    old, new = rows(home)
    # Offline with no model trained yet, the real classifier leaves it waiting for one, in the inbox.
    assert (old.state, new.state, new.duplicate_of) == ("requeued", "awaiting_model", None)
    assert files_in("inbox") == ["big.jpg"]


def test_process_command_does_one_pass_and_exits(home):
    """Offline and before any training, images wait for a model; bad files are quarantined all the same."""
    for i in range(10):
        unique_png(home / "inbox" / f"{i}.png", i)
    (home / "inbox" / "bad.jpg").write_text("nope")
    (home / "inbox" / "empty.jpg").write_bytes(b"")
    r = run_cli("-c", str(home / "coverwatch.yaml"), "process")
    assert r.returncode == 0, r.stderr
    assert "processed 12 files" in r.stdout
    states = {x.original_name: (x.state, x.reason) for x in rows(home)}
    assert states.pop("empty.jpg") == ("quarantined", "zero_bytes")
    # Content is only decoded with a model at hand: bad.jpg waits too, and is quarantined once one exists.
    assert set(states.values()) == {("awaiting_model", None)} and len(states) == 11
    assert "model.weights: yolo11n.pt" in r.stderr  # the one clear line about why



class WarmingStep(CountingStep):
    """Records when the daemon asks it to get ready, and whether inbox files were still waiting then."""

    def __init__(self, home, ready: bool = True):
        super().__init__()
        self.home, self.ready, self.warmed = home, ready, []

    def model_ready(self):
        return self.ready

    def warm_up(self):
        self.warmed.append(sorted(p.name for p in (self.home / "inbox").iterdir()))


@pytest.mark.parametrize("files, ready, warmed", [
    (2, True, [["0.png", "1.png"]]),  # before the first batch: the load runs beside its bookkeeping
    (0, True, []),  # nothing to classify: a `process` of labelled files alone does not load a model
    (2, False, []),  # no weights on disk yet (a pretrained name to download): the first image asks for them
], ids=["inbox-files", "empty-inbox", "no-model-yet"])
def test_process_warms_the_model_up_before_its_first_batch_when_the_inbox_has_work(home, files, ready, warmed):
    from watcher.config import load_config
    from watcher.daemon import Daemon

    for i in range(files):
        unique_png(home / "inbox" / f"{i}.png", i)
    step = WarmingStep(home, ready)
    assert Daemon(load_config(home / "coverwatch.yaml"), step=step).process_pending() == files
    assert step.warmed == warmed


def test_a_service_warms_its_model_up_at_start_even_with_an_empty_inbox(home):
    step = WarmingStep(home)
    with running(home, step=step):
        wait_for(lambda: step.warmed == [[]], timeout=20)

def test_handler_never_raises(home):
    from watcher.events import EnqueueHandler

    class Broken:
        def put(self, _):
            raise RuntimeError("queue gone")

    class Event:
        event_type, is_directory, src_path, dest_path = "created", False, "/x", ""

    EnqueueHandler(Broken()).on_any_event(Event())  # logged, not raised


def test_counting_step_counts(home):
    step = CountingStep()
    assert step([]) == []
    step.close()
    assert threading.active_count() >= 1
