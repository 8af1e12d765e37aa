"""`python -m tests.watcher.daemon_proc HOME CALL_LOG`: the real daemon in its own process, with a step that
appends one line per item of each inference call to CALL_LOG (so a test can count calls across kill -9)."""

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

    def stream(self, items):
        """With STREAM_PART=n, the outcomes n at a time, each part logged as it is computed: the intake then
        commits and moves part k while part k+1 is computed, as it does for the classifier."""
        part = int(os.environ.get("STREAM_PART", "0")) or len(items) or 1
        for i in range(0, len(items), part):
            yield self(items[i:i + part])


if __name__ == "__main__":
    if os.environ.get("INGEST_BATCH"):  # small bookkeeping batches: many of them chained in one burst
        from watcher import drops

        drops.INGEST_BATCH = int(os.environ["INGEST_BATCH"])
    setup_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    cfg = load_config(Path(sys.argv[1]) / "coverwatch.yaml")
    Daemon(cfg, step=LoggedStep(cfg.watch.max_pixels, Path(sys.argv[2]))).run()
