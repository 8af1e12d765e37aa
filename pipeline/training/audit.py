"""The label audit: out-of-sample class probabilities for every labelled image, by K-fold cross-validation.

A `training_runs` row of kind "audit" (queued by `coverwatch audit`, or after each training run when
`training.audit_folds` is set), served by the same supervisor and job process as training. For each fold k of
K it trains a short run (`training.audit_epochs`, from `training.base`, never from the champion: the champion
saw every image) on the other folds, and predicts the held-out fold with that fold's last.pt (not best.pt, and
no early stopping: either would pick the epoch by the held-out labels). One image content is in exactly one
fold (`pipeline.labels.folds.assign_folds`). Then cleanlab judges the labels (`pipeline.labels.health`), the
findings go to the database (`label_audits`, `audit_images`, `class_overlaps`) and the flagged images to
review/audit-NNNN/ with their current label, ready for labelImg.

    models/audit-0008/
      train.log                 the job's output
      fold1/data/               the fold's data: the other folds train, this one is "val" (symlinks)
      fold1/weights/last.pt     the fold's model
      fold1/predictions.json    its held-out images' probabilities: a fold done before a stop is not redone

Progress is `fold`/`folds` and `epoch`/`epochs` on the run (`coverwatch status`). SIGTERM stops it at the next
batch (exit 75); the next start keeps the folds already done and starts the interrupted one over. Out of memory
steps down the same ladder as training (`pipeline.training.backoff`); the next fold starts where it ended.
Classify only for now: a detect audit would need per-box predictions matched to the labels
(cleanlab.object_detection); it fails with one line saying so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select

from pipeline.errors import AuditError
from pipeline.images.phash import from_db
from pipeline.labels.folds import AuditItem, assign_folds, snapshot_items, snapshot_names, write_fold
from pipeline.labels.quality import LabelledImage, near_groups
from pipeline.settings import TrainingSettings
from pipeline.training.backoff import AttemptSpec, TrainingInterrupted
from pipeline.training.job import _close_run, train_with_backoff
from pipeline.training.supervisor import EXIT_INTERRUPTED
from storage.db import session_scope
from storage.files import write_atomically
from storage.tables import File, TrainingRun

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 3  # `coverwatch audit` when training.audit_folds is 0


@dataclass(frozen=True)
class AuditPlan:
    settings: TrainingSettings  # epochs: the folds' epochs
    folder: Path  # models/audit-NNNN
    items: list[AuditItem]
    folds: list[int]  # per item, 0-based
    k: int
    names: list[str]
    dataset_version_id: int | None


def run_audit(engine, run_id: int, *, trainer, should_stop) -> int:
    """Every fold, then the findings; returns 0 (done), 1 (failed) or EXIT_INTERRUPTED."""
    from pipeline.training.audit_record import record_audit

    try:
        plan = plan_audit(engine, run_id)
        probs = _run_folds(engine, run_id, trainer, plan, should_stop)
        record_audit(engine, run_id, plan, probs)
        return 0
    except TrainingInterrupted:
        log.info("audit run %d interrupted; the folds done are kept, the rest run on the next start", run_id)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - whatever happened, the run says so in the database
        known = isinstance(exc, AuditError)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        log.error("audit run %d failed: %s", run_id, message, exc_info=not known)
        _close_run(engine, run_id, state="failed", error=message.splitlines()[0][:2000] if message else "failed")
        return 1


def plan_audit(engine, run_id: int) -> AuditPlan:
    """The run's snapshot, its labelled images and their folds; AuditError when there is nothing to audit."""
    with session_scope(engine, write=True) as s:
        run = s.get(TrainingRun, run_id)
        params, version = dict(run.params or {}), run.version
        k = run.folds or params.get("audit_folds") or DEFAULT_FOLDS
        epochs = run.epochs or params.get("audit_epochs") or 1
        run.folds, run.epochs = k, epochs
    settings = TrainingSettings.from_params(params)
    if settings.task != "classify":
        raise AuditError("classify_only", "the label audit covers task: classify only for now (detect would need "
                                          "per-box predictions matched to the labels)")
    snapshot = Path(params["data"]).parent
    items, names = snapshot_items(snapshot), snapshot_names(snapshot)
    if len({i.class_id for i in items}) < 2 or len(items) < 2 * k:
        raise AuditError("too_few_images", f"{len(items)} labelled images in {len({i.class_id for i in items})} "
                                           f"classes: a {k}-fold audit needs two classes and {2 * k} images")
    # patience 0: no early stopping, which would choose the epoch by the held-out fold's labels
    settings = replace(settings, epochs=epochs, patience=0)
    anchor = _near_anchors(engine, items, settings.dataset.near_duplicate_bits)
    folds = assign_folds(items, k, group_key=lambda item: anchor.get(item.sha256, item.sha256))
    return AuditPlan(settings, settings.models_dir / version, items, folds, k, names,
                     params.get("dataset_version_id"))


def _near_anchors(engine, items: list[AuditItem], near_bits: int) -> dict[str, str]:
    """Each item's near-duplicate group (`quality.near_groups`, as the dataset's split uses), so that one cover
    photographed twice is held out in one fold: a fold model that trained on its twin would vouch for its label."""
    shas = sorted({i.sha256 for i in items})
    if near_bits <= 0 or not shas:
        return {}
    with session_scope(engine) as s:
        rows = s.execute(select(File.sha256, File.phash).where(File.sha256.in_(shas), File.phash.is_not(None))).all()
    hashes = {sha: from_db(ph) for sha, ph in rows}
    return near_groups([LabelledImage(sha, n, "", (), phash=hashes.get(sha)) for n, sha in enumerate(shas)], near_bits)


def _run_folds(engine, run_id: int, trainer, plan: AuditPlan, should_stop) -> dict[str, dict[str, float]]:
    """sha256 -> class name -> probability, from the model of the one fold that did not see the image."""
    out: dict[str, dict[str, float]] = {}
    batch = -1 if plan.settings.batch == "auto" else int(plan.settings.batch)
    spec = AttemptSpec(model=plan.settings.base, arch=plan.settings.base, imgsz=plan.settings.imgsz, batch=batch)
    for k in range(plan.k):
        done = plan.folder / f"fold{k + 1}" / "predictions.json"
        if not done.exists():
            if should_stop():
                raise TrainingInterrupted()
            spec = _run_fold(engine, run_id, trainer, plan, k, spec, should_stop)
        out.update(json.loads(done.read_text(encoding="utf-8")))
    return out


def _run_fold(engine, run_id, trainer, plan: AuditPlan, k: int, spec: AttemptSpec, should_stop) -> AttemptSpec:
    folder = plan.folder / f"fold{k + 1}"
    with session_scope(engine, write=True) as s:
        run = s.get(TrainingRun, run_id)
        run.fold, run.epoch = k + 1, 0
    log.info("audit run %d: fold %d/%d", run_id, k + 1, plan.k)
    data = write_fold(folder / "data", plan.items, plan.folds, held_out=k, names=plan.names)
    manifest = {"fold": k + 1, "attempts": []}
    spec = train_with_backoff(engine, run_id, trainer, replace(spec, resume=False), plan.settings,
                              {"data": str(data)}, folder, manifest, should_stop)
    held = [item for item, fold in zip(plan.items, plan.folds) if fold == k]
    probs = trainer.predict_probs(folder / "weights" / "last.pt", [i.image for i in held], imgsz=spec.imgsz,
                                  device=plan.settings.device)
    result = {item.sha256: p for item, p in zip(held, probs)}
    write_atomically(folder / "predictions.json", json.dumps(result, ensure_ascii=False))
    return spec
