"""Several daemons on one inbox and one database: every file processed exactly once, even when one dies."""

import signal
from collections import Counter

from tests.watcher.conftest import configure, predictions, rows, wait_for
from tests.watcher.test_crash import alive, start, write_jpegs


def test_three_workers_one_killed_every_file_once(home, tmp_path, procs):
    configure(home, watch={"settle_seconds": 0.2, "rescan_seconds": 2, "claim_seconds": 4})
    n = 2000
    logs = [tmp_path / f"calls-{i}.log" for i in range(3)]
    workers = [start(procs, home, log) for log in logs]
    try:
        for p in workers:
            wait_for(lambda p=p: alive(home, p.pid), timeout=90, interval=0.2)
        write_jpegs(home / "inbox" / "a", 0, n // 2)
        write_jpegs(home / "inbox" / "b", n // 2, n // 2)
        wait_for(lambda: len(rows(home)) > n // 4, timeout=120, interval=0.2)
        workers[0].send_signal(signal.SIGKILL)  # midway, claims in hand
        workers[0].wait(10)

        def settled():
            rs = rows(home)
            return len([r for r in rs if r.moved_at is not None]) == n and not any((home / "inbox").rglob("*.jpg"))

        wait_for(settled, timeout=240, interval=0.5)
    finally:
        for p in workers[1:]:
            p.send_signal(signal.SIGTERM)
        for p in workers[1:]:
            p.wait(30)
    assert all(p.returncode == 0 for p in workers[1:])
    rs = rows(home)
    assert len(rs) == n and {r.state for r in rs} == {"processed"}
    assert Counter(r.source_path for r in rs).most_common(1)[0][1] == 1
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
    images = labelled_images(0, 100)
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
    try:
        for p in workers:
            wait_for(lambda p=p: alive(home, p.pid), timeout=90, interval=0.2)
        boxes = sum(write_labelled(home / "labeled" / f"d{k:02d}", k * per, per) for k in range(folders))
        wait_for(lambda: len(rows(home)) > folders * per // 2, timeout=120, interval=0.2)
        workers[0].send_signal(signal.SIGKILL)  # midway, claims in hand
        workers[0].wait(10)
        n = folders * (2 * per + 1)

        def settled():
            rs = rows(home)
            return len([r for r in rs if r.moved_at is not None]) == n and not any((home / "labeled").rglob("*.*"))

        wait_for(settled, timeout=240, interval=0.5)
    finally:
        for p in workers[1:]:
            p.send_signal(signal.SIGTERM)
        for p in workers[1:]:
            p.wait(30)
    assert all(p.returncode == 0 for p in workers[1:])
    rs = rows(home)
    assert len(rs) == n and {r.state for r in rs} == {"processed"}
    assert Counter(r.source_path for r in rs).most_common(1)[0][1] == 1
    samples = db_table(home, Sample)
    assert len(samples) == folders * per and len({x.image_sha256 for x in samples}) == folders * per
    assert all(x.replaced_at is None for x in samples)
    labels = db_table(home, Label)
    assert len(labels) == boxes and all(x.replaced_at is None for x in labels)
    assert not [e for e in db_table(home, LabelEvent) if e.kind == "relabelled"]
