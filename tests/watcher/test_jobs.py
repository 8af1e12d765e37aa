"""The daemon's loop over its jobs: it sleeps until the earliest is due, and never spins."""

from __future__ import annotations

import time

from pipeline.inference.steps import NoopStep
from watcher.config import load_config
from watcher.daemon import MAX_SLEEP, Daemon


def test_a_training_role_sleeps_between_passes_instead_of_spinning(home):
    """It has no rescan: a rescan timer left at 0 made every wait 0 s (a busy loop)."""
    d = Daemon(load_config(home / "coverwatch.yaml"), step=NoopStep(), role="training")
    d.initialize(observe=False)
    try:
        d.loop_once()
        t0 = time.monotonic()
        d._wait()
        assert time.monotonic() - t0 >= MAX_SLEEP * 0.8
    finally:
        d.shutdown()


def test_the_wait_ends_when_the_earliest_job_is_due(home):
    d = Daemon(load_config(home / "coverwatch.yaml"), step=NoopStep())
    d.initialize(observe=False)
    try:
        d.loop_once()
        d.heartbeat.next_at = d.clock() + 0.1
        t0 = time.monotonic()
        d._wait()
        assert 0.05 <= time.monotonic() - t0 < MAX_SLEEP * 0.8
        assert d.heartbeat.due(d.clock())
    finally:
        d.shutdown()
