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
from datetime import timedelta, timezone
from pathlib import Path

from sqlalchemy import exists, select

from pipeline.steps import Item, Result
from storage.db import session_scope
from storage.queries import champion
from storage.tables import Detection, File, FileState, Prediction

log = logging.getLogger(__name__)


def reclassify_recent(engine, home: Path, step, *, days: int, limit: int = 64, skip: set[int] | None = None) -> int:
    """Re-classify up to `limit` files with the champion; returns how many got a new prediction."""
    skip = set() if skip is None else skip
    with session_scope(engine) as s:
        champ = champion(s)
        if champ is None or champ.promoted_at is None:
            return 0
        version, promoted = champ.version, _aware(champ.promoted_at)
        seen = exists().where(Prediction.file_id == File.id, Prediction.model_version == version)
        rows = s.execute(select(File.id, File.final_path, File.sha256).where(
            File.folder == "inbox", File.state == FileState.processed.value, File.final_path.is_not(None),
            File.processed_at >= promoted - timedelta(days=days), File.processed_at < promoted, ~seen,
            File.id.not_in(skip) if skip else True).order_by(File.id).limit(limit)).all()
    items = [Item(fid, Path(home) / path, sha or "") for fid, path, sha in rows]
    if not items:
        return 0
    results = step(items)
    done = 0
    with session_scope(engine) as s:
        for item, r in zip(items, results):
            if not isinstance(r, Result) or r.model_version != version:
                skip.add(item.file_id)  # unreadable now, or the step is not on the new model yet: not again
                continue
            _add_prediction(s, item.file_id, r)
            done += 1
    if done:
        log.info("re-classified %d archived images with %s", done, version)
    return done


def _add_prediction(s, file_id: int, r: Result) -> None:
    pred = Prediction(file_id=file_id, model_version=r.model_version, backend=r.backend, imgsz=r.imgsz,
                      predicted_class=r.predicted_class, confidence=r.confidence, top5=r.top5, width=r.width,
                      height=r.height, decode_ms=r.decode_ms, infer_ms=r.infer_ms)
    s.add(pred)
    s.flush()
    s.add_all(Detection(prediction_id=pred.id, class_name=c, confidence=p, x1=a, y1=b, x2=x, y2=y)
              for c, p, a, b, x, y in r.detections)


def _aware(dt):
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
