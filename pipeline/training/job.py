"""The training process: `python -m pipeline.training.job --run ID` (started by pipeline.training.supervisor).

It runs the attempts of one run (the out-of-memory ladder of pipeline.training.backoff), writes progress and every
attempt to the database, evaluates the result against the champion on the same validation split, and records the new
version as champion or rejected. SIGTERM (or the daemon dying) stops it at the next batch with exit code 75; the
row stays `running` and the next start resumes from `last.pt`. On CPU it lowers its own priority (os.nice) so
the daemon's inference keeps going.

A run of kind "audit" goes to pipeline.training.audit instead: K short fold runs, the same ladder and stop.

The trainer is a parameter: `pipeline.training.trainer.UltralyticsTrainer` by default, a scripted fake in tests.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from pipeline.training import registry
from pipeline.training.backoff import AttemptSpec, TrainingInterrupted, is_out_of_memory, next_attempt
from pipeline.errors import TrainingError
from pipeline.settings import TrainingSettings
from pipeline.training.supervisor import DB_ENV, EXIT_INTERRUPTED
from storage.clock import utcnow
from storage.db import make_engine, session_scope
from storage.queries import champion
from storage.tables import TrainingAttempt, TrainingRun

log = logging.getLogger(__name__)

DEFAULT_TRAINER = "pipeline.training.trainer:UltralyticsTrainer"


def run_job(engine, run_id: int, *, trainer, stop=None, should_stop=None) -> int:
    """Train, evaluate and register one run; returns 0 (done), 1 (failed) or EXIT_INTERRUPTED."""
    stop = stop or threading.Event()
    should_stop = should_stop or stop.is_set
    with session_scope(engine) as s:
        kind = s.get(TrainingRun, run_id).kind
    if kind == "audit":
        from pipeline.training.audit import run_audit

        return run_audit(engine, run_id, trainer=trainer, should_stop=should_stop)
    with session_scope(engine) as s:
        run = s.get(TrainingRun, run_id)
        params, version, done = dict(run.params or {}), run.version, (run.epoch or 0) >= (run.epochs or 1)
    settings = TrainingSettings.from_params(params)
    folder = settings.models_dir / version
    manifest = registry.read_manifest(folder) or _new_manifest(run_id, version, params, settings)
    try:
        spec, note = _first_spec(engine, settings, params, manifest, folder)
        manifest.setdefault("start", note)
        spec = train_with_backoff(engine, run_id, trainer, spec, settings, params, folder, manifest, should_stop,
                      skip=done and spec.resume)
        _finish(engine, run_id, trainer, spec, settings, params, folder, manifest)
        return 0
    except TrainingInterrupted:
        log.info("training run %d interrupted; it resumes from %s on the next start", run_id,
                 folder / "weights" / "last.pt")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - whatever happened, the run says so in the database
        message = str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
        log.error("training run %d failed: %s", run_id, message, exc_info=not isinstance(exc, TrainingError))
        _close_run(engine, run_id, state="failed", error=message.splitlines()[0][:2000] if message else "failed")
        manifest.update(state="failed", error=message)
        registry.write_manifest(folder, manifest)
        return 1


def _first_spec(engine, settings, params, manifest, folder) -> tuple[AttemptSpec, str]:
    """Resume the last attempt when there is one (from last.pt when it exists), else start fresh."""
    tried = manifest.get("attempts") or []
    if tried:
        last = AttemptSpec(**tried[-1]["spec"])
        if tried[-1].get("outcome") == "oom":  # stopped between an out-of-memory attempt and the next one
            last = next_attempt(last, batch_used=None, imgsz_steps=settings.oom_imgsz_steps) or last
        resumable = (folder / "weights" / "last.pt").exists()
        model = str(folder / "weights" / "last.pt") if resumable else last.model
        return AttemptSpec(model=model, arch=last.arch, imgsz=last.imgsz, batch=last.batch, resume=resumable), ""
    batch = -1 if settings.batch == "auto" else int(settings.batch)
    with session_scope(engine) as s:
        champ = champion(s)
        if champ is not None and champ.task == settings.task and list(champ.classes or []) == params.get("classes"):
            weights = registry.weights_of(settings.home, champ)
            if weights.exists():
                arch = registry.read_manifest(weights.parent.parent).get("arch") or settings.base
                return (AttemptSpec(model=str(weights), arch=arch, imgsz=settings.imgsz, batch=batch),
                        f"champion {champ.version} (classes unchanged)")
    return AttemptSpec(model=settings.base, arch=settings.base, imgsz=settings.imgsz, batch=batch), "training.base"


def train_with_backoff(engine, run_id, trainer, spec, settings, params, folder, manifest, should_stop, skip=False
                       ) -> AttemptSpec:
    """Run attempts down the out-of-memory ladder until one finishes; returns the one that did (the audit's
    folds train through here too, each into its own `folder`)."""
    if skip:  # interrupted after its last epoch was saved: nothing left to train
        return spec
    while True:
        n = _start_attempt(engine, run_id, spec, manifest, folder)
        if not spec.resume:
            _clean(folder)
        used: dict = {}
        try:
            trainer.train(spec, task=settings.task, data=Path(params["data"]), out_dir=folder,
                          epochs=settings.epochs, patience=settings.patience, device=settings.device,
                          workers=settings.workers, should_stop=should_stop,
                          on_epoch=lambda p: _progress(engine, run_id, n, p, used))
        except TrainingInterrupted:
            _end_attempt(engine, run_id, n, manifest, folder, "interrupted", "stopped on request")
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                _end_attempt(engine, run_id, n, manifest, folder, "failed", f"{type(exc).__name__}: {exc}")
                raise
            following = next_attempt(spec, batch_used=used.get("batch"), imgsz_steps=settings.oom_imgsz_steps)
            why = f"out of memory with {spec.describe()}: " + (
                f"retrying with {following.describe()}" if following else "nothing smaller is left")
            log.warning("training run %d: %s", run_id, why)
            _end_attempt(engine, run_id, n, manifest, folder, "oom", f"{why} ({str(exc).splitlines()[0][:300]})")
            if following is None:
                raise TrainingError("nothing_fits", f"out of GPU memory even with {spec.describe()}; train on a "
                                    f"bigger GPU, or set training.device: cpu") from None
            spec = following
            continue
        _end_attempt(engine, run_id, n, manifest, folder, "ok", None)
        return spec


def _finish(engine, run_id, trainer, spec, settings, params, folder, manifest) -> None:
    data, task = Path(params["data"]), settings.task
    best = folder / "weights" / "best.pt"
    evaluation = trainer.evaluate(best, task=task, data=data, device=settings.device)
    champ_eval, champ_version = _evaluate_champion(engine, trainer, settings, params)
    # Before the version is recorded: the classifier may load it the moment it is champion, and reads its
    # temperature from this manifest (pipeline.inference.model_loader).
    manifest.update(arch=spec.arch, calibration=evaluation.calibration)
    registry.write_manifest(folder, manifest)
    with session_scope(engine, write=True) as s:
        mv = registry.record_version(s, version=folder.name, task=task, folder=os.path.relpath(folder, settings.home),
                                     classes=params["classes"], fingerprint=params["fingerprint"],
                                     evaluation=evaluation, champion_eval=champ_eval,
                                     min_delta=settings.promote_min_delta, max_class_drop=settings.max_class_drop,
                                     gate_min_images=settings.gate_min_images)
        run = s.get(TrainingRun, run_id)
        run.model_version_id, run.metrics = mv.id, evaluation.overall
        run.state, run.finished_at, run.pid, run.eta_seconds = "done", utcnow(), None, 0.0
        state, decision = mv.state, mv.decision
    manifest.update(state=state, decision=decision, metrics=asdict(evaluation),
                    champion={"version": champ_version, "metrics": asdict(champ_eval) if champ_eval else None})
    registry.write_manifest(folder, manifest)


def _evaluate_champion(engine, trainer, settings, params) -> tuple[registry.Evaluation | None, str | None]:
    with session_scope(engine) as s:
        champ = champion(s)
        if champ is None or champ.task != settings.task or list(champ.classes or []) != params["classes"]:
            return None, champ.version if champ else None  # another class list: not comparable
        version, weights = champ.version, registry.weights_of(settings.home, champ)
    if not weights.exists():
        log.warning("the champion %s has no weights at %s; not compared", version, weights)
        return None, version
    return trainer.evaluate(weights, task=settings.task, data=Path(params["data"]), device=settings.device), version


# -- bookkeeping --------------------------------------------------------------------------------------------


def _start_attempt(engine, run_id, spec: AttemptSpec, manifest, folder) -> int:
    with session_scope(engine, write=True) as s:
        run = s.get(TrainingRun, run_id)
        n = len(run.attempts) + 1
        s.add(TrainingAttempt(run_id=run_id, n=n, model=spec.model if not spec.resume else f"resume {spec.model}",
                              imgsz=spec.imgsz, batch=spec.batch, resume=spec.resume))
        if spec.resume:
            run.resume_path = spec.model
    manifest.setdefault("attempts", []).append({"n": n, "spec": asdict(spec), "outcome": "running"})
    registry.write_manifest(folder, manifest)
    log.info("training run %d, attempt %d: %s", run_id, n, spec.describe())
    return n


def _end_attempt(engine, run_id, n, manifest, folder, outcome: str, reason: str | None) -> None:
    with session_scope(engine, write=True) as s:
        a = s.query(TrainingAttempt).filter_by(run_id=run_id, n=n).one()
        a.outcome, a.reason, a.finished_at = outcome, reason, utcnow()
    manifest["attempts"][-1].update(outcome=outcome, reason=reason)
    registry.write_manifest(folder, manifest)


def _progress(engine, run_id, n, p: dict, used: dict) -> None:
    """Called by the trainer after each epoch: {epoch, epochs, losses, eta_seconds, batch}."""
    used["batch"] = p.get("batch")
    with session_scope(engine, write=True) as s:
        run = s.get(TrainingRun, run_id)
        run.epoch, run.epochs, run.losses = p["epoch"], p["epochs"], p.get("losses")
        run.eta_seconds, run.updated_at = p.get("eta_seconds"), utcnow()
        if p.get("batch"):
            s.query(TrainingAttempt).filter_by(run_id=run_id, n=n).update({"batch": p["batch"]})


def _close_run(engine, run_id, *, state: str, error: str | None) -> None:
    with session_scope(engine, write=True) as s:
        run = s.get(TrainingRun, run_id)
        run.state, run.error, run.finished_at, run.pid = state, error, utcnow(), None


def _clean(folder: Path) -> None:
    """A fresh attempt must not resume or report what an out-of-memory attempt left behind."""
    shutil.rmtree(folder / "weights", ignore_errors=True)
    (folder / "results.csv").unlink(missing_ok=True)


def _new_manifest(run_id, version, params, settings: TrainingSettings) -> dict:
    keys = ("task", "base", "epochs", "imgsz", "batch", "patience", "device", "balance", "max_repeat", "conflicts",
            "val_fraction", "promote_min_delta", "max_class_drop", "gate_min_images", "oom_imgsz_steps")
    return {"version": version, "run_id": run_id, "created_at": utcnow().isoformat(),
            "dataset": {k: params.get(k) for k in ("fingerprint", "data", "dataset_version_id")},
            "classes": params.get("classes"), "parameters": {k: params.get(k) for k in keys}, "attempts": []}


# -- the process entry point --------------------------------------------------------------------------------


def load_trainer(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.job")
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--trainer", default=DEFAULT_TRAINER, help="module:factory of the trainer (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()
    engine = make_engine(os.environ[DB_ENV])
    try:
        trainer = load_trainer(args.trainer)
        # The daemon gone (kill -9) is a stop too: nobody would be left to watch this process.
        return run_job(engine, args.run, trainer=trainer, stop=stop,
                       should_stop=lambda: stop.is_set() or os.getppid() != parent)
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
