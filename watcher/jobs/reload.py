"""SIGHUP: re-read the config. Watch paths, intervals and thresholds change without a restart; the keys the
loaded model and its decoding were made from keep their running values until one."""

from __future__ import annotations

import threading

from watcher.config import Config, load_config
from watcher.errors import ConfigError
from watcher.home import ensure_folders
from watcher.jobs.base import Job

# Keys a running daemon cannot change on SIGHUP (the loaded model and its decoding were made from them).
RESTART_KEYS = {"task": (), "model": ("weights", "imgsz", "batch", "backend", "device"),
                "watch": ("max_pixels", "max_aspect"), "metrics": ("port",)}
TASK_TRAINING_KEYS = ("base", "imgsz")  # follow `task` when unset: kept with it when a task change waits


class Reload(Job):
    """Due once SIGHUP set its flag (a signal handler may only set a flag); runs Daemon.reload."""

    next_at = None  # a flag, seen at the next pass

    def __init__(self, daemon):
        super().__init__(daemon)
        self.requested = threading.Event()

    def due(self, now: float) -> bool:
        return self.requested.is_set()

    def run(self, now: float) -> None:
        self.requested.clear()
        self.d.reload()


def reread(running: Config) -> tuple[Config, dict[str, object]]:
    """The config file as it is now, with the running values of the keys only a restart changes; and those
    that differed. Raises CoverwatchError (ConfigError) for a config the daemon must not switch to."""
    new = load_config(running.config_path)
    if new.database_url != running.database_url:
        raise ConfigError("database: changing the database needs a restart")
    ensure_folders(new)
    return keep_restart_keys(running, new)


def keep_restart_keys(old: Config, new: Config) -> tuple[Config, dict[str, object]]:
    """`new`, with the running values of the keys that only a restart changes; and those that differed."""
    kept: dict[str, object] = {}
    update: dict[str, object] = {}
    for section, keys in RESTART_KEYS.items():
        if not keys:
            if getattr(old, section) != getattr(new, section):
                kept[section], update[section] = getattr(old, section), getattr(old, section)
            continue
        was, now = getattr(old, section), getattr(new, section)
        differ = {k: getattr(was, k) for k in keys if getattr(was, k) != getattr(now, k)}
        if differ:
            kept.update({f"{section}.{k}": v for k, v in differ.items()})
            update[section] = now.model_copy(update=differ)
    if "task" in kept:  # the training keys that follow the task stay with the task still in use
        was, now = old.training, new.training
        differ = {k: getattr(was, k) for k in TASK_TRAINING_KEYS if getattr(was, k) != getattr(now, k)}
        if differ:
            kept.update({f"training.{k}": v for k, v in differ.items()})
            update["training"] = now.model_copy(update=differ)
    return (new.model_copy(update=update) if update else new), kept
