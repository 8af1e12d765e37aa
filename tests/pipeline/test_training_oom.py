"""The out-of-memory back-off: the exact ladder, and every attempt recorded with its reason."""

from __future__ import annotations

import pytest

from pipeline.training.backoff import AttemptSpec, is_out_of_memory, next_attempt, smaller_variant
from pipeline.training.job import run_job
from pipeline.training.queue import request_training
from storage.db import session_scope
from storage.tables import TrainingRun
from tests.pipeline.training_fakes import FakeTrainer, fake_prepare, out_of_memory, runs, settings_for


def ladder(spec: AttemptSpec, steps=(512, 416, 320), batch_used=None) -> list[str]:
    out = [spec.describe()]
    while (spec := next_attempt(spec, batch_used=batch_used, imgsz_steps=steps)) is not None:
        out.append(spec.describe())
    return out


def test_the_ladder_halves_the_batch_then_shrinks_the_image_then_the_model():
    start = AttemptSpec("yolo11s.yaml", "yolo11s.yaml", imgsz=640, batch=16)
    assert ladder(start) == [
        "yolo11s.yaml imgsz 640 batch 16", "yolo11s.yaml imgsz 640 batch 8", "yolo11s.yaml imgsz 640 batch 4",
        "yolo11s.yaml imgsz 640 batch 2", "yolo11s.yaml imgsz 640 batch 1", "yolo11s.yaml imgsz 512 batch 1",
        "yolo11s.yaml imgsz 416 batch 1", "yolo11s.yaml imgsz 320 batch 1", "yolo11n.yaml imgsz 320 batch 1",
    ]


def test_auto_batch_halves_what_auto_batch_chose_or_sixteen():
    start = AttemptSpec("yolo11n.yaml", "yolo11n.yaml", imgsz=320, batch=-1)
    assert next_attempt(start, batch_used=12, imgsz_steps=()).batch == 6
    assert next_attempt(start, batch_used=None, imgsz_steps=()).batch == 8


def test_a_champion_steps_down_from_the_variant_it_was_trained_as():
    start = AttemptSpec("models/v0003/weights/best.pt", "yolo11m.yaml", imgsz=320, batch=1)
    assert next_attempt(start, batch_used=None, imgsz_steps=(512,)) == AttemptSpec("yolo11s.yaml", "yolo11s.yaml",
                                                                                   imgsz=320, batch=1)


@pytest.mark.parametrize("name, smaller", [
    ("yolo11x.yaml", "yolo11l.yaml"), ("yolo11l.yaml", "yolo11m.yaml"), ("yolo11m.pt", "yolo11s.pt"),
    ("yolo11s-cls.yaml", "yolo11n-cls.yaml"), ("yolov8l.pt", "yolov8m.pt"), ("yolo11n.yaml", None),
    ("models/v0001/weights/best.pt", None), ("my-net.yaml", None),
])
def test_smaller_variant(name, smaller):
    assert smaller_variant(name) == smaller


@pytest.mark.parametrize("exc, expected", [
    (out_of_memory(), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("Expected all tensors to be on the same device"), False),
    (ValueError("out of memory"), False),
])
def test_what_counts_as_out_of_memory(exc, expected):
    assert is_out_of_memory(exc) is expected


def _start_run(engine, home, **settings):
    from pipeline.training.supervisor import TrainingSupervisor

    run_id, _ = request_training(engine, "manual")
    sup = TrainingSupervisor(engine, settings_for(home, **settings), prepare=fake_prepare(),
                             spawn=lambda rid, log: None)
    sup._start_next()  # claim and prepare only: the test runs the job itself
    return run_id


@pytest.mark.parametrize("wrapped", [False, True])
def test_out_of_memory_steps_down_exactly_and_records_every_attempt(engine, cfg, wrapped):
    run_id = _start_run(engine, cfg.home, batch=8, imgsz=640, oom_imgsz_steps=(512, 416, 320))
    trainer = FakeTrainer(oom=lambda spec: spec.batch > 2 or spec.imgsz > 416, wrapped=wrapped)

    assert run_job(engine, run_id, trainer=trainer) == 0

    [run] = runs(engine)
    assert run.state == "done"
    got = [(a.n, a.imgsz, a.batch, a.outcome) for a in run.attempts]
    assert got == [(1, 640, 8, "oom"), (2, 640, 4, "oom"), (3, 640, 2, "oom"), (4, 640, 1, "oom"),
                   (5, 512, 1, "oom"), (6, 416, 1, "ok")]
    assert all("out of memory with yolo11n.yaml imgsz" in a.reason for a in run.attempts[:-1])
    assert "retrying with yolo11n.yaml imgsz 416 batch 1" in run.attempts[4].reason
    assert [s.describe() for s in trainer.calls][-1] == "yolo11n.yaml imgsz 416 batch 1"


def test_when_nothing_fits_the_run_fails_with_a_clear_message(engine, cfg):
    run_id = _start_run(engine, cfg.home, base="yolo11s.yaml", batch=2, imgsz=416, oom_imgsz_steps=(320,))
    assert run_job(engine, run_id, trainer=FakeTrainer(oom=lambda spec: True)) == 1

    [run] = runs(engine)
    assert run.state == "failed"
    assert run.error == ("out of GPU memory even with yolo11n.yaml imgsz 320 batch 1; train on a bigger GPU, "
                         "or set training.device: cpu")
    assert [(a.model, a.imgsz, a.batch, a.outcome) for a in run.attempts] == [
        ("yolo11s.yaml", 416, 2, "oom"), ("yolo11s.yaml", 416, 1, "oom"), ("yolo11s.yaml", 320, 1, "oom"),
        ("yolo11n.yaml", 320, 1, "oom")]
    assert "nothing smaller is left" in run.attempts[-1].reason


def test_another_error_fails_the_run_without_retrying(engine, cfg):
    run_id = _start_run(engine, cfg.home)
    trainer = FakeTrainer(fail=RuntimeError("Expected all tensors to be on the same device"))
    assert run_job(engine, run_id, trainer=trainer) == 1
    [run] = runs(engine)
    assert (run.state, len(run.attempts), run.attempts[0].outcome) == ("failed", 1, "failed")
    assert "same device" in run.error
    with session_scope(engine) as s:
        assert s.get(TrainingRun, run_id).finished_at is not None
