"""The model registry: one folder per trained version, its figures in the database, and which one is champion.

    models/v0007/
      weights/best.pt, weights/last.pt     what Ultralytics saved
      args.yaml, results.csv, *.png        Ultralytics' own record of the run
      train.log                            the training process's output
      manifest.json                        dataset snapshot hash, classes, parameters, attempts, metrics, decision

States of a ModelVersion: candidate (being decided) -> champion | rejected; a champion replaced by a promotion
becomes retired, one replaced by a rollback becomes rolled_back (so a second rollback goes further back instead
of returning to it). The classifier asks `champion_weights` before every batch, so a promotion hot-swaps.

Example:
    >>> promote_version(engine, "v0003").version
    'v0003'
    >>> champion_weights(engine, home)
    ('v0003', PosixPath('/srv/cw/models/v0003/weights/best.pt'))
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from pipeline.errors import TrainingError
from storage.db import session_scope
from storage.files import write_atomically
from storage.queries import as_utc, champion, training_outcome
from storage.tables import ModelMetric, ModelVersion, TrainingRun
from storage.tables import ModelConfusion

log = logging.getLogger(__name__)

SCORE = {"detect": "map50_95", "classify": "top1"}
METRIC_FIELDS = ("images", "instances", "precision", "recall", "map50", "map50_95", "top1", "top5")


@dataclass
class Evaluation:
    """Figures of one model on one validation split: `overall`, one dict per class (with `class_name`), the
    confusion matrix ({"classes": [...], "matrix": [[...]]}, rows true, columns predicted; detect ends with
    "background") and, for classify, the calibration fitted on the split ({temperature, ece_before, ece_after})."""

    overall: dict
    per_class: list[dict] = field(default_factory=list)
    confusion: dict | None = None
    calibration: dict | None = None

    def score(self, task: str) -> float:
        return float(self.overall.get(SCORE[task]) or 0.0)


def version_name(run_id: int, kind: str = "train") -> str:
    """models/v0007 for a training run; models/audit-0008 for an audit (its folds' models and log)."""
    return f"v{run_id:04d}" if kind == "train" else f"{kind}-{run_id:04d}"


def weights_of(home: Path, mv: ModelVersion) -> Path:
    return Path(home) / mv.path / "weights" / "best.pt"


def champion_weights(engine, home: Path) -> tuple[str, Path] | None:
    """(version, best.pt) of the champion, or None: the `model_source` of `pipeline.inference.classify.ClassifyStep`."""
    with session_scope(engine) as s:
        mv = champion(s)
        return None if mv is None else (mv.version, weights_of(home, mv))


def decide(task: str, candidate: Evaluation, current: Evaluation | None, *, min_delta: float,
           max_class_drop: float, gate_min_images: int) -> tuple[bool, str]:
    """Promote when there is no comparable champion, or when both hold on the same split:

    - the candidate's score (mAP50-95 for detect, top-1 for classify) beats the champion's by at least
      `min_delta` (training.promote_min_delta; strictly, when it is 0);
    - no class with at least `gate_min_images` validation images loses more than `max_class_drop` of recall
      (`class_drops`), so a better average cannot hide a small class the new model stopped recognising.
    """
    key, new = SCORE[task], candidate.score(task)
    if current is None:
        return True, f"no comparable champion; {key} {new:.4f}"
    old = current.score(task)
    gain = new - old
    better = gain > 0 and gain >= min_delta
    overall = f"{key} {new:.4f} vs champion {old:.4f} ({gain:+.4f}, needs +{min_delta:g})"
    drops = class_drops(candidate, current, max_drop=max_class_drop, min_images=gate_min_images)
    if better and not drops:
        return True, f"promoted: {overall}"
    return False, "rejected: " + "; ".join([overall, *drops] if not better else [*drops, f"overall {overall}"])


def class_drops(candidate: Evaluation, current: Evaluation, *, max_drop: float, min_images: int) -> list[str]:
    """One line per class that lost more than `max_drop` recall against the champion on the same split, e.g.
    "Poetry-Drama recall 0.61 -> 0.42 (-0.19, more than training.max_class_drop 0.05)". Not gated: a class with
    fewer than `min_images` validation images (too few to tell a drop from chance), or one that either model
    has no recall for (a class new to the champion has nothing to protect)."""
    before = {r.get("class_name"): r for r in current.per_class}
    out = []
    for row in candidate.per_class:
        old = before.get(row.get("class_name"), {}).get("recall")
        new, images = row.get("recall"), row.get("images")
        if old is None or new is None or (images or 0) < min_images:
            continue
        drop = float(old) - float(new)
        if drop > max_drop + 1e-9:  # a drop of exactly max_drop is allowed, float noise included
            # As few digits as show the drop is over the limit: never "-0.05, more than 0.05".
            digits = next((d for d in range(2, 7) if round(drop, d) > max_drop), 6)
            out.append(f"{row['class_name']} recall {old:.{digits}f} -> {new:.{digits}f} ({-drop:+.{digits}f}, "
                       f"more than training.max_class_drop {max_drop:g})")
    return out


def record_version(s, *, version: str, task: str, folder: str, classes: list[str], fingerprint: str,
                   evaluation: Evaluation, champion_eval: Evaluation | None, min_delta: float,
                   max_class_drop: float, gate_min_images: int) -> ModelVersion:
    """Add the version with its figures (and the champion's on the same split), then promote or reject it."""
    promote, why = decide(task, evaluation, champion_eval, min_delta=min_delta, max_class_drop=max_class_drop,
                          gate_min_images=gate_min_images)
    calibration = evaluation.calibration or {}
    mv = ModelVersion(version=version, task=task, path=folder, state="candidate", classes=classes,
                      metrics=evaluation.overall, dataset_fingerprint=fingerprint, decision=why,
                      temperature=calibration.get("temperature"), ece_before=calibration.get("ece_before"),
                      ece_after=calibration.get("ece_after"))
    s.add(mv)
    s.flush()
    _add_metrics(s, mv.id, fingerprint, evaluation)
    current = champion(s)
    if current is not None and champion_eval is not None:
        _add_metrics(s, current.id, fingerprint, champion_eval)
    if promote:
        _make_champion(s, mv, demoted_state="retired")
    else:
        mv.state = "rejected"
    log.info("model %s: %s", version, why)
    return mv


def promote_version(engine, version: str) -> ModelVersion:
    """Make `version` the champion by hand (whatever its figures); the current champion is retired."""
    with session_scope(engine, write=True) as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.version == version))
        if mv is None:
            raise TrainingError("unknown_version", f"no model version {version!r} (see `coverwatch models list`)")
        if mv.state != "champion":
            _make_champion(s, mv, demoted_state="retired")
            mv.decision = f"{mv.decision or ''}; promoted by hand".lstrip("; ")
        return mv


def rollback(engine) -> tuple[str, str]:
    """Give the champion role back to the previous champion; returns (from, to) versions."""
    with session_scope(engine, write=True) as s:
        current = champion(s)
        if current is None:
            raise TrainingError("no_previous", "there is no champion to roll back from")
        previous = s.scalar(select(ModelVersion).where(ModelVersion.state == "retired",
                                                       ModelVersion.promoted_at.is_not(None))
                            .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc()).limit(1))
        if previous is None:
            raise TrainingError("no_previous", f"{current.version} is the only model that was ever champion")
        current.state = "rolled_back"
        s.flush()  # one champion at a time, also inside this transaction (a unique index says so)
        previous.state = "champion"
        log.info("rolled back from %s to %s", current.version, previous.version)
        return current.version, previous.version


def list_models(engine) -> list[dict]:
    """Every version, newest first, with its state, score, decision, calibration, and its latest per-class
    figures and confusion matrix (for `coverwatch models list`); a run that failed is listed too, as state
    `failed` with its error, since it made no model."""
    with session_scope(engine) as s:
        runs = {r.model_version_id: r.id for r in s.scalars(select(TrainingRun).where(
            TrainingRun.model_version_id.is_not(None)))}
        per_class, confusions = latest_class_figures(s), latest_confusions(s)
        rows = [{"version": m.version, "run": runs.get(m.id), "state": m.state, "task": m.task,
                 "score_name": SCORE.get(m.task), "score": (m.metrics or {}).get(SCORE.get(m.task, "")),
                 "classes": len(m.classes or []), "created_at": as_utc(m.created_at),
                 "promoted_at": as_utc(m.promoted_at), "decision": m.decision, "error": None,
                 "temperature": m.temperature, "ece_before": m.ece_before, "ece_after": m.ece_after,
                 "per_class": per_class.get(m.id, []), "confusion": confusions.get(m.id)}
                for m in s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()))]
        for r in s.scalars(select(TrainingRun).where(TrainingRun.state == "failed", TrainingRun.kind == "train")):
            params = r.params or {}
            rows.append({"version": r.version or f"run {r.id}", "run": r.id, "state": "failed",
                         "task": params.get("task"), "score_name": SCORE.get(params.get("task")), "score": None,
                         "classes": len(params.get("classes") or []),
                         "created_at": as_utc(r.finished_at or r.started_at or r.requested_at), "promoted_at": None,
                         "decision": None, "error": training_outcome(r, None)["error"], "temperature": None,
                         "ece_before": None, "ece_after": None, "per_class": [], "confusion": None})
    # Newest first; sorted() is stable, so versions made in one instant keep their id order.
    return sorted(rows, key=lambda m: m["created_at"], reverse=True)


def latest_class_figures(s) -> dict[int, list[dict]]:
    """Model version id -> one dict per class (class_name, images, precision, recall, map50, ...): the figures
    of its latest evaluation (a champion is evaluated again on each new split), in the order recorded."""
    latest = {mv_id: fp for mv_id, fp in s.execute(select(ModelMetric.model_version_id, ModelMetric.dataset_fingerprint)
                                                   .order_by(ModelMetric.id))}
    out: dict[int, dict[str, dict]] = {}
    for m in s.scalars(select(ModelMetric).where(ModelMetric.class_name.is_not(None)).order_by(ModelMetric.id)):
        if m.dataset_fingerprint == latest.get(m.model_version_id):
            figures = {k: getattr(m, k) for k in METRIC_FIELDS if getattr(m, k) is not None}
            out.setdefault(m.model_version_id, {})[m.class_name] = {"class_name": m.class_name, **figures}
    return {k: list(v.values()) for k, v in out.items()}


def latest_confusions(s) -> dict[int, dict]:
    """Model version id -> {"classes", "matrix"} (rows true, columns predicted) of its latest evaluation."""
    return {c.model_version_id: {"classes": c.classes, "matrix": c.matrix}
            for c in s.scalars(select(ModelConfusion).order_by(ModelConfusion.id))}


def write_manifest(folder: Path, manifest: dict) -> Path:
    """models/vNNNN/manifest.json, replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    write_atomically(path, json.dumps(manifest, ensure_ascii=False, indent=2, default=str))
    return path


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _make_champion(s, mv: ModelVersion, *, demoted_state: str) -> None:
    current = champion(s)
    if current is not None and current.id != mv.id:
        current.state = demoted_state
        s.flush()
    mv.state = "champion"
    mv.promoted_at = datetime.now(timezone.utc)
    s.flush()


def _add_metrics(s, model_version_id: int, fingerprint: str, ev: Evaluation) -> None:
    for row in [{"class_name": None, **ev.overall}, *ev.per_class]:
        s.add(ModelMetric(model_version_id=model_version_id, dataset_fingerprint=fingerprint,
                          class_name=row.get("class_name"), **{k: row.get(k) for k in METRIC_FIELDS}))
    if ev.confusion:
        s.add(ModelConfusion(model_version_id=model_version_id, dataset_fingerprint=fingerprint,
                             classes=list(ev.confusion["classes"]), matrix=ev.confusion["matrix"]))
