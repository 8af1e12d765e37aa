"""The label audit on real Ultralytics fold runs: a planted flip among coco24 crops is flagged."""

from __future__ import annotations

import pytest
from PIL import Image
from sqlalchemy import select

from pipeline.training.job import run_job
from pipeline.training.queue import request_training, run_summary
from pipeline.training.supervisor import TrainingSupervisor
from pipeline.training.trainer import UltralyticsTrainer
from storage.db import session_scope
from storage.tables import AuditImage, File
from tests.pipeline.audit_fakes import snapshot_of, snapshot_prepare
from tests.pipeline.conftest import make_crops
from tests.pipeline.test_audit import _settings
from tests.pipeline.training_fakes import InlineJob

CLASSES = ["person", "red"]


@pytest.mark.ultralytics
def test_a_flipped_label_is_flagged_by_real_fold_models(engine, cfg, tmp_path):
    """Person crops, and person crops under a strong red wash ("red": visually distinct, so a tiny model at 32 px
    learns it in 20 short epochs: 3 steps each); one red crop is labelled person, one person crop red."""
    crops = sorted((make_crops(tmp_path / "crops", per_class=40) / "train" / "person").glob("*.jpg")) + sorted(
        (tmp_path / "crops" / "val" / "person").glob("*.jpg"))
    pictures = []
    for n, path in enumerate(crops[:40]):
        with Image.open(path) as im:
            im = im.convert("RGB").resize((32, 32))
        red = n % 2 == 1
        if red:
            im = Image.blend(im, Image.new("RGB", im.size, (255, 0, 0)), 0.6)
        given = {1: "person", 6: "red"}.get(n, "red" if red else "person")
        pictures.append((im, given))
    data = snapshot_of(engine, cfg.home, pictures, CLASSES)
    settings = _settings(cfg.home, "classify", imgsz=32, batch=16, audit_epochs=20, device="cpu")
    trainer = UltralyticsTrainer(nice=0)
    sup = TrainingSupervisor(engine, settings, prepare=snapshot_prepare(data, CLASSES), poll_seconds=0,
                             spawn=lambda rid, log: InlineJob(run_job(engine, rid, trainer=trainer)))
    run_id, _ = request_training(engine, "manual", kind="audit", folds=2)
    sup.tick(0.0)
    summary = run_summary(engine, run_id)
    assert summary["state"] == "done", summary["error"]
    with session_scope(engine) as s:
        rows = {r.image_sha256: r for r in s.scalars(select(AuditImage))}
        by_name = {f"cover{n:03d}.png": n for n in range(len(pictures))}
        names = dict(s.execute(select(File.sha256, File.original_name)).all())
        flagged = {by_name[names[sha]]: (r.given_class, r.suggested_class) for sha, r in rows.items() if r.flagged}
    assert len(rows) == 40
    probs = sorted((by_name[names[sha]], [round(p, 2) for p in r.probabilities]) for sha, r in rows.items())
    assert flagged.get(1) == ("person", "red"), (flagged, probs)
    assert len(flagged) <= 6, flagged  # the flips, not the whole dataset
