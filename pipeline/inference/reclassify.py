"""After a promotion: classify recently archived inbox images again with the new champion, keeping both results.

The old Prediction rows stay; each file gets a new one naming the new model (the report shows the newest).
Which files: inbox files processed in the `days` before the champion's promotion that have no prediction from
it yet. That is decided from the database alone, so the work survives restarts and is never done twice; it goes
in small batches from the daemon's loop so new drops are not held up.

Example:
    >>> reclassify_recent(engine, home, step, days=7, limit=64)
    64
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import exists, select

from pipeline.inference.steps import Item, Result, store_results
from storage.db import session_scope
from storage.queries import as_utc, champion
from storage.tables import File, FileState, Prediction

log = logging.getLogger(__name__)


def reclassify_recent(engine, home: Path, step, *, days: int, limit: int = 64, skip: set[int] | None = None) -> int:
    """Re-classify up to `limit` files with the champion; returns how many got a new prediction."""
    skip = set() if skip is None else skip
    with session_scope(engine) as s:
        champ = champion(s)
        if champ is None or champ.promoted_at is None:
            return 0
        version, promoted = champ.version, as_utc(champ.promoted_at)
        seen = exists().where(Prediction.file_id == File.id, Prediction.model_version == version)
        rows = s.execute(select(File.id, File.final_path, File.sha256).where(
            File.folder == "inbox", File.state == FileState.processed.value, File.final_path.is_not(None),
            File.processed_at >= promoted - timedelta(days=days), File.processed_at < promoted, ~seen,
            File.id.not_in(skip) if skip else True).order_by(File.id).limit(limit)).all()
    items = [Item(fid, Path(home) / path, sha or "") for fid, path, sha in rows]
    if not items:
        return 0
    results = step(items)
    fresh = []
    for item, r in zip(items, results):
        if not isinstance(r, Result) or r.model_version != version:
            skip.add(item.file_id)  # unreadable now, or the step is not on the new model yet: not again
            continue
        fresh.append((item.file_id, r))
    with session_scope(engine) as s:
        store_results(s, fresh)
    if fresh:
        log.info("re-classified %d archived images with %s", len(fresh), version)
    return len(fresh)
