"""`python -m tests.watcher.daemon_proc HOME CALL_LOG`: the real daemon in its own process, with a step that
appends one line per inference call to CALL_LOG (so a test can count calls across kill -9)."""

import os
import sys
import time
from pathlib import Path

from pipeline.inference.steps import DecodeStep
from watcher.config import load_config
from watcher.daemon import Daemon
from watcher.logs import setup_logging


class LoggedStep(DecodeStep):
    def __init__(self, max_pixels: int, log_path: Path):
        super().__init__(max_pixels)
        self.fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, items):
        os.write(self.fd, "".join(f"{it.sha256}\n" for it in items).encode())
        time.sleep(float(os.environ.get("SLOW_STEP_SECONDS", "0")))  # a slow model, for shutdown tests
        return super().__call__(items)


if __name__ == "__main__":
    setup_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    cfg = load_config(Path(sys.argv[1]) / "coverwatch.yaml")
    Daemon(cfg, step=LoggedStep(cfg.watch.max_pixels, Path(sys.argv[2]))).run()
