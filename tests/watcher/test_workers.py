"""Several daemons on one drop folder and one database: every file processed exactly once, even when one dies."""

import signal
from collections import Counter

from sqlalchemy import select

from tests.watcher.conftest import configure, predictions, rows, wait_for
from tests.watcher.test_crash import alive, start, stderr_of, write_jpegs


def kill_one_midway(home, workers, drop, *, folder: str, pattern: str, n: int, registered: int):
    """Three live workers; `drop()` the files, kill -9 the first once `registered` rows exist (claims in hand),
    wait until all `n` files are moved and `folder` is empty, stop the survivors. Every file once, processed:
    the rows are returned for the caller's own checks."""
    try:
        for p in workers:
            wait_for(lambda p=p: alive(home, p.pid), timeout=90, interval=0.2)
        drop()
        wait_for(lambda: len(rows(home)) > registered, timeout=120, interval=0.2)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)

        def settled():
            moved = len([r for r in rows(home) if r.moved_at is not None])
            return moved == n and not any((home / folder).rglob(pattern))

        wait_for(settled, timeout=240, interval=0.5)
    finally:
        for p in workers[1:]:
            p.send_signal(signal.SIGTERM)
        for p in workers[1:]:
            p.wait(30)
    failed = [i for i, p in enumerate(workers) if i and p.returncode != 0]
    assert not failed, "\n".join(f"worker {i} ended with {workers[i].returncode}:\n{stderr_of(workers[i])}"
                                  for i in failed)
    rs = rows(home)
    assert len(rs) == n and {r.state for r in rs} == {"processed"}
    assert Counter(r.source_path for r in rs).most_common(1)[0][1] == 1
    return rs


def test_three_workers_one_killed_every_file_once(home, tmp_path, procs):
    configure(home, watch={"settle_seconds": 0.2, "rescan_seconds": 2, "claim_seconds": 4})
    n = 2000
    logs = [tmp_path / f"calls-{i}.log" for i in range(3)]
    workers = [start(procs, home, log) for log in logs]

    def drop():
        write_jpegs(home / "inbox" / "a", 0, n // 2)
        write_jpegs(home / "inbox" / "b", n // 2, n // 2)

    rs = kill_one_midway(home, workers, drop, folder="inbox", pattern="*.jpg", n=n, registered=n // 4)
    preds = predictions(home)
    assert len(preds) == n and len({p.file_id for p in preds}) == n
    calls = Counter()
    for log in logs:
        if log.exists():
            calls.update(log.read_text().split())
    assert set(calls) == {r.sha256 for r in rs}
    per_worker = [len(log.read_text().split()) if log.exists() else 0 for log in logs]
    assert sum(1 for c in per_worker[1:] if c > 0) == 2, f"both survivors took work: {per_worker}"
    print(f"calls per worker {per_worker}; repeated {sum(calls.values()) - n}")


def write_labelled(folder, start, n):
    """A labelImg YOLO drop of n unique images (a trailer after the JPEG end marker), with classes.txt."""
    from tests.labelimg import coco_boxes, coco_names, labelled_images, write_classes, yolo_text

    write_classes(folder, coco_names())
    images = labelled_images(0, 24)  # all the carried ones; cycled below, made unique by a trailer
    boxes = 0
    for i in range(start, start + n):
        image = images[i % len(images)]
        (folder / f"{i:05d}.txt").write_text(yolo_text(coco_boxes(image)), encoding="utf-8")
        (folder / f"{i:05d}.jpg").write_bytes(image.read_bytes() + f"#{i}".encode())
        boxes += len(coco_boxes(image))
    return boxes


def test_three_workers_one_killed_every_labelled_file_once(home, tmp_path, procs):
    from storage.tables import Label, LabelEvent, Sample
    from tests.watcher.test_labelled_drops import db_table

    configure(home, watch={"settle_seconds": 0.2, "rescan_seconds": 2, "claim_seconds": 4})
    folders, per = 12, 15
    workers = [start(procs, home, tmp_path / f"calls-{i}.log") for i in range(3)]
    boxes = []

    def drop():
        boxes.append(sum(write_labelled(home / "labeled" / f"d{k:02d}", k * per, per) for k in range(folders)))

    n = folders * (2 * per + 1)  # an image and a label per sample, and each folder's classes.txt
    kill_one_midway(home, workers, drop, folder="labeled", pattern="*.*", n=n, registered=folders * per // 2)
    boxes = boxes[0]
    samples = db_table(home, Sample)
    assert len(samples) == folders * per and len({x.image_sha256 for x in samples}) == folders * per
    assert all(x.replaced_at is None for x in samples)
    labels = db_table(home, Label)
    assert len(labels) == boxes and all(x.replaced_at is None for x in labels)
    assert not [e for e in db_table(home, LabelEvent) if e.kind == "relabelled"]


def test_two_workers_deciding_one_labelled_pair_write_it_once(cfg, engine, monkeypatch):
    """Worker 1 has read the rows of a pair and is writing its Sample when worker 2 decides the same pair:
    worker 2 waits for worker 1's rows (or retries later) and leaves them; no second Sample, no error."""
    import threading

    import pipeline.intake.samples as samples
    from pipeline.intake.core import Claim, Layout
    from pipeline.intake.labelled import ingest_labelled
    from storage.db import session_scope
    from storage.tables import Sample

    layout = Layout(cfg.home, cfg.path("archive"), cfg.path("quarantine"))
    options = dict(max_bytes=50_000_000, max_pixels=89_478_485, pair_timeout=30)
    earlier = cfg.home / "labeled" / "earlier"  # its classes are known before the race
    write_labelled(earlier, 0, 1)
    ingest_labelled(engine, layout, cfg.home / "labeled", sorted(earlier.iterdir()), **options)
    folder = cfg.home / "labeled" / "d"
    write_labelled(folder, 1, 1)
    paths = sorted(folder.iterdir())
    in_record, second_done, real = threading.Event(), threading.Event(), samples._record_sample

    def slow_record(*args):
        if threading.current_thread().name == "worker-1":
            in_record.set()
            second_done.wait(3)  # worker 2 decides meanwhile (or is held back by our locks)
        return real(*args)

    monkeypatch.setattr(samples, "_record_sample", slow_record)
    errors = []

    def work(i):
        try:
            ingest_labelled(engine, layout, cfg.home / "labeled", paths, **options, claim=Claim(i, 60))
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(exc)
        finally:
            if i == 2:
                second_done.set()

    first = threading.Thread(target=work, args=(1,), name="worker-1")
    first.start()
    assert in_record.wait(30)
    work(2)
    first.join(30)
    assert not errors, errors
    with session_scope(engine) as s:
        assert len(s.scalars(select(Sample)).all()) == 2
