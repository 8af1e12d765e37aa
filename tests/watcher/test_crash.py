"""Bursts and kill -9: at the end every file is in exactly one final state and none was recorded twice."""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, coco_images
from tests.watcher.conftest import CountingNoop, configure, predictions, rows, running, wait_for


def write_pngs(folder, start, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.new("RGB", (16, 12), (i % 256, (i // 256) % 256, 7)).save(folder / f"{i:05d}.png", format="PNG")


def test_burst_of_5000_files_all_accounted(home):
    configure(home, watch={"settle_seconds": 0.3})
    with running(home, step=CountingNoop()) as d:
        write_pngs(home / "inbox" / "a", 0, 2500)
        write_pngs(home / "inbox" / "b", 2500, 2500)
        wait_for(lambda: not any((home / "inbox").rglob("*.png")) and len(d.settler) == 0, timeout=180, interval=0.5)
        assert len(d.step.calls) == 5000 and set(d.step.calls.values()) == {1}
    rs = rows(home)
    assert len(rs) == 5000 and {r.state for r in rs} == {"processed"} and all(r.moved_at for r in rs)
    assert len(list((home / "archive" / "inbox").rglob("*.png"))) == 5000


def write_jpegs(folder, start, n):
    """Real photos, made unique by a trailer after the JPEG end marker (decoders ignore it)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = coco_images()
    for i in range(start, start + n):
        (folder / f"{i:05d}.jpg").write_bytes(images[i % len(images)].read_bytes() + f"#{i}".encode())


def start(procs, home, log, **env):
    with open(log.with_suffix(".stderr"), "ab") as err:
        return procs.popen([sys.executable, "-m", "tests.watcher.daemon_proc", str(home), str(log)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **env})


def stderr_of(worker, lines: int = 30) -> str:
    """The last lines a worker made by `start` wrote to stderr (the file beside its call log, its last argument)."""
    path = Path(worker.args[-1]).with_suffix(".stderr")
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no stderr)"


def alive(home, pid):
    from storage.db import session_scope
    from storage.queries import live_workers

    from tests.watcher.conftest import home_engine

    engine = home_engine(home)
    try:
        with session_scope(engine) as s:
            return any(w.pid == pid for w in live_workers(s))
    except Exception:  # noqa: BLE001 - the database may not exist yet
        return False
    finally:
        engine.dispose()


@pytest.mark.parametrize("part, batch", [(0, 0), (16, 0), (8, 32)],
                         ids=["whole-batch", "parts-of-16", "chained-batches-of-32"])
def test_kill_9_during_a_burst_loses_nothing_and_records_nothing_twice(part, batch, home, tmp_path, procs):
    """parts-of-16: the step hands its outcomes over 16 at a time and the intake commits and moves each part
    while the step computes the next (pipeline.inference.steps.StreamAhead): a kill lands between the commits
    of one batch, during a move, or while a part is computed, and still nothing is lost or repeated.
    chained-batches-of-32: the next batch is registered while the step computes the last parts of the one
    before it, so a kill also lands with two batches in flight, one of them registered and not computed."""
    env = {"STREAM_PART": str(part), **({"INGEST_BATCH": str(batch)} if batch else {})}
    configure(home, watch={"settle_seconds": 0.1, "rescan_seconds": 2})
    log = tmp_path / "calls.log"
    rng = random.Random(7)
    total, kills = 0, 0
    for round_ in range(5):
        write_jpegs(home / "inbox" / f"r{round_}", total, 200)
        total += 200
        proc = start(procs, home, log, **env)
        time.sleep(rng.uniform(1.5, 3.5))  # start-up takes about a second: kill at any point after
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
    proc = start(procs, home, log, **env)
    try:
        wait_for(lambda: alive(home, proc.pid), timeout=60, interval=0.2)

        def settled():
            rs = rows(home)
            done = [r for r in rs if r.state == "processed" and r.moved_at is not None]
            return len(done) == total and not any((home / "inbox").rglob("*.jpg"))

        wait_for(settled, timeout=180, interval=0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, log.with_suffix(".stderr").read_text()

    rs = rows(home)
    assert len(rs) == total, "one row per dropped file"
    assert Counter(r.source_path for r in rs).most_common(1)[0][1] == 1
    assert {r.state for r in rs} == {"processed"} and all(r.location == r.final_path for r in rs)
    archived = sorted(p.relative_to(home / "archive" / "inbox").as_posix()
                      for p in (home / "archive" / "inbox").rglob("*.jpg"))
    assert archived == sorted(r.source_path for r in rs)
    preds = predictions(home)
    assert len(preds) == total and len({p.file_id for p in preds}) == total, "one recorded result per file"
    # The step may run again only for the batch a kill interrupted before its commit.
    calls = Counter(log.read_text().split())
    print(f"calls: {sum(calls.values())} for {total} files, {kills} kills")
    assert set(calls) == {r.sha256 for r in rs}
    assert sum(calls.values()) - total <= kills * 256
    assert max(calls.values()) <= kills + 1
