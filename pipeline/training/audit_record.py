"""The end of a label audit: cleanlab's findings recorded, the flagged images copied to review/ for labelImg.

    review/audit-0008/
      classes.txt             the audited snapshot's classes (labelImg's list)
      cover_3fa2b1c09d1e.jpg  a flagged image, with its current label: correct it, drop the pair into labeled/
      cover_3fa2b1c09d1e.txt
"""

from __future__ import annotations

import logging
import os

from PIL import Image
from sqlalchemy import select

from pipeline.inference.review import write_review
from pipeline.labels.health import Health, assess_health, weak_models
from storage.clock import as_utc, utcnow
from storage.db import session_scope
from storage.tables import AuditImage, ClassOverlap, File, LabelAudit, Sample, TrainingRun

log = logging.getLogger(__name__)


def record_audit(engine, run_id: int, plan, probs: dict[str, dict[str, float]]) -> int:
    """Judge the labels by `probs` (sha256 -> class -> probability), copy the flagged, record it all; the
    audit's id."""
    rows = [[probs[i.sha256].get(n, 0.0) for n in plan.names] for i in plan.items]
    health = assess_health(given=[i.class_id for i in plan.items], probs=rows, classes=plan.names)
    with session_scope(engine) as s:
        version = s.get(TrainingRun, run_id).version
        files = dict(s.execute(select(Sample.image_sha256, Sample.image_file_id)
                               .where(Sample.replaced_at.is_(None))).all())
    review = plan.settings.review_dir / version
    copies = {h.index: _review_copy(review, plan, h.index, version) for h in health.flagged}
    with session_scope(engine, write=True) as s:
        run = s.get(TrainingRun, run_id)
        audit = LabelAudit(run_id=run_id, dataset_version_id=plan.dataset_version_id, task=plan.settings.task,
                           folds=plan.k, epochs=plan.settings.epochs, images=len(plan.items),
                           flagged=len(health.flagged), classes=health.classes, health_score=health.score,
                           accuracy=health.accuracy, majority_share=health.majority_share,
                           class_ranking=health.ranking, review_folder=_rel(review, plan) if copies else None,
                           seconds=round((utcnow() - as_utc(run.started_at)).total_seconds(), 1)
                           if run.started_at else None)
        s.add(audit)
        s.flush()
        _add_rows(s, audit.id, plan, rows, health, files, copies)
        run.state, run.finished_at, run.pid, run.eta_seconds = "done", utcnow(), None, 0.0
        run.metrics = {"label_health": round(health.score, 4), "flagged": len(health.flagged),
                       "images": len(plan.items)}
        audit_id = audit.id
    top = health.pairs[0] if health.pairs else None
    log.info("audit run %d: label health %.2f, %d of %d images flagged%s%s", run_id, health.score,
             len(health.flagged), len(plan.items), f" (copied to {review})" if copies else "",
             f"; most overlapping: {top.class_a} / {top.class_b} ({top.recommendation})" if top else "")
    return audit_id


def _add_rows(s, audit_id: int, plan, rows, health: Health, files: dict, copies: dict) -> None:
    for h in health.images:
        item = plan.items[h.index]
        s.add(AuditImage(audit_id=audit_id, image_sha256=item.sha256, file_id=files.get(item.sha256),
                         fold=plan.folds[h.index] + 1, given_class=h.given, suggested_class=h.suggested,
                         quality=h.quality, flagged=h.flagged, probabilities=rows[h.index],
                         review_path=copies.get(h.index)))
    for p in health.pairs:
        s.add(ClassOverlap(audit_id=audit_id, rank=p.rank, class_a=p.class_a, class_b=p.class_b, confused=p.confused,
                           overlapping=p.overlapping, overlap=p.overlap, share=p.share,
                           recommendation=p.recommendation))


def _review_copy(review, plan, index: int, version: str) -> str | None:
    """The image and its current label (a whole-image box of its given class) in review/audit-NNNN/."""
    item = plan.items[index]
    try:
        with Image.open(item.image) as im:
            orientation = im.getexif().get(0x0112, 1)
    except OSError:
        orientation = 1
    copy = write_review(review, item.image, names=plan.names, boxes=[(item.class_id, 0.0, 0.0, 1.0, 1.0)],
                        orientation=orientation, version=version)
    return None if copy is None else _rel(copy, plan)


def _rel(path, plan) -> str:
    return os.path.relpath(path, plan.settings.home)


def audit_outcome(engine, run_id: int, *, shown: int = 10) -> dict | None:
    """The audit a run recorded, as plain values for `coverwatch audit --wait`; None when it recorded none."""
    with session_scope(engine) as s:
        audit = s.scalar(select(LabelAudit).where(LabelAudit.run_id == run_id).order_by(LabelAudit.id.desc()))
        if audit is None:
            return None
        flagged = s.execute(select(AuditImage, File.original_name).outerjoin(File, File.id == AuditImage.file_id)
                            .where(AuditImage.audit_id == audit.id, AuditImage.flagged)
                            .order_by(AuditImage.quality).limit(shown)).all()
        pairs = s.scalars(select(ClassOverlap).where(ClassOverlap.audit_id == audit.id)
                          .order_by(ClassOverlap.rank).limit(shown)).all()
        return {"folds": audit.folds, "epochs": audit.epochs, "images": audit.images, "flagged": audit.flagged,
                "accuracy": audit.accuracy, "majority_share": audit.majority_share,
                "weak": weak_models(audit.accuracy, audit.majority_share),
                "health_score": audit.health_score, "review_folder": audit.review_folder,
                "worst_classes": (audit.class_ranking or [])[:3],
                "flagged_images": [{"name": name or a.image_sha256[:12], "given": a.given_class,
                                    "suggested": a.suggested_class, "quality": a.quality} for a, name in flagged],
                "pairs": [{"a": p.class_a, "b": p.class_b, "overlapping": p.overlapping, "share": p.share,
                           "recommendation": p.recommendation} for p in pairs]}

