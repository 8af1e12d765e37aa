"""Run the real daemon in a thread against a tmp home, and look at what it recorded."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.inference.steps import DecodeStep, Result, Step
from storage.db import make_engine, session_scope
from storage.tables import File, Prediction
from watcher.config import load_config
from watcher.daemon import Daemon


class CountingStep(Step):
    """Decodes like the default step and counts calls per file content, to prove nothing runs twice."""

    def __init__(self, max_pixels: int = 89_478_485):
        self.inner = DecodeStep(max_pixels)
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            for it in items:
                self.calls[it.sha256] = self.calls.get(it.sha256, 0) + 1
        return self.inner(items)

    def close(self):
        self.inner.close()


class CountingNoop(CountingStep):
    def __call__(self, items):
        with self.lock:
            for it in items:
                self.calls[it.sha256] = self.calls.get(it.sha256, 0) + 1
        return [Result() for _ in items]


def configure(home: Path, **sections) -> None:
    """Append YAML overrides to the home's config (later keys win... so rewrite whole sections)."""
    import yaml

    path = home / "coverwatch.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))


@contextmanager
def running(home: Path, step=None, **kw):
    d = Daemon(load_config(home / "coverwatch.yaml"), step=step or CountingStep(), **kw)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: d.observer is not None, 30)
        yield d
    finally:
        d.stop.set()
        t.join(30)
        assert not t.is_alive()


def wait_for(pred, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {pred}")
        time.sleep(interval)


_URLS: dict[Path, str] = {}


def home_engine(home: Path):
    # Remembered: a test may break the config on purpose (reload tests) and still read the rows.
    if home not in _URLS:
        _URLS[home] = load_config(home / "coverwatch.yaml").database_url
    return make_engine(_URLS[home])


def rows(home: Path) -> list[File]:
    engine = home_engine(home)
    try:
        with session_scope(engine) as s:
            return list(s.scalars(select(File).order_by(File.id)))
    finally:
        engine.dispose()


def predictions(home: Path) -> list[Prediction]:
    engine = home_engine(home)
    try:
        with session_scope(engine) as s:
            return list(s.scalars(select(Prediction).order_by(Prediction.id)))
    finally:
        engine.dispose()


def final_rows(home: Path, n: int, timeout: float = 30.0) -> list[File]:
    """Wait until n rows are final (processed or quarantined, and moved), then return all rows."""

    def done():
        rs = rows(home)
        finished = [r for r in rs if r.state in ("processed", "quarantined") and r.moved_at is not None]
        return rs if len(finished) >= n else None

    return wait_for(done, timeout, 0.1)


@pytest.fixture
def files_in(home):
    return lambda *parts: sorted(p.relative_to(home.joinpath(*parts)).as_posix()
                                 for p in (home.joinpath(*parts)).rglob("*") if not p.is_dir())
