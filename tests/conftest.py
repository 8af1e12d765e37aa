"""Shared fixtures: a home folder per test, engines closed afterwards, the carried coco images copied in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.procs import procs, pytest_sessionfinish  # noqa: F401 - the `procs` fixture and the leftover guard

# Ultralytics must never download or pip-install from a test (set before anything imports it).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))

ROOT = Path(__file__).resolve().parents[1]
# The suite carries its own data (24 coco128 images with labels; see tests/data/coco24/LICENSE.md): a fresh clone
# has nothing beside it.
COCO = ROOT / "tests" / "data" / "coco24"
COCO_IMAGES = COCO / "images" / "train2017"
COCO_LABELS = COCO / "labels" / "train2017"


def coco_images(n: int | None = None) -> list[Path]:
    """The first `n` carried images (all by default); asking for more than are carried is the test's bug."""
    images = sorted(COCO_IMAGES.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"the carried test images are missing: {COCO_IMAGES}")
    if n is not None and n > len(images):
        raise ValueError(f"{n} images asked for, {len(images)} carried in {COCO_IMAGES}")
    return images[:n] if n else images


# COVERWATCH_TEST_DB=postgres runs the same tests against a throwaway PostgreSQL server (see tests/postgres.py).
USE_POSTGRES = os.environ.get("COVERWATCH_TEST_DB", "sqlite") == "postgres"


@pytest.fixture(scope="session")
def postgres_server():
    from tests.postgres import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    yield server
    server.stop()


@pytest.fixture
def db_url(request, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database when COVERWATCH_TEST_DB=postgres."""
    if USE_POSTGRES:
        return request.getfixturevalue("postgres_server").new_database()
    return f"sqlite:///{tmp_path / 'cw.db'}"


@pytest.fixture
def home(tmp_path: Path, db_url: str) -> Path:
    """A fresh home made by `coverwatch init`, with a fast settle time."""
    from watcher.home import init_home

    h = tmp_path / "home"
    cfg = init_home(h)
    text = cfg.read_text().replace("settle_seconds: 1.0", "settle_seconds: 0.2")
    if USE_POSTGRES:
        text = text.replace("database: sqlite:///coverwatch.db", f"database: {db_url}")
    cfg.write_text(text)
    return h


@pytest.fixture
def cfg(home: Path):
    from watcher.config import load_config

    return load_config(home / "coverwatch.yaml")


@pytest.fixture
def engine(cfg):
    from storage.db import make_engine, upgrade_database

    e = make_engine(cfg.database_url)
    upgrade_database(e)
    yield e
    e.dispose()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    """The real console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "watcher", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def copy_images(dest: Path, n: int, names: list[str] | None = None) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(coco_images(n)):
        target = dest / (names[i] if names else src.name)
        shutil.copy(src, target)
        out.append(target)
    return out
