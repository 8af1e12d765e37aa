"""ClassifyStep's own logic on pipeline.inference.model_io.FakeModel: batching, thread choice, review copies, hot swap and
the detect rows, fast and exact. tests/pipeline/test_classify.py runs the same step on real Ultralytics models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.inference import classify
from pipeline.inference.classify import ClassifyStep
from pipeline.errors import ModelUnavailable, Rejected
from pipeline.inference.model_io import FakeModel
from pipeline.inference.steps import Item, Result

def brightness(x: np.ndarray) -> list[float]:
    """light/dark probabilities from the mean of the model input: 230 gray is 90% light, 115 gray a toss-up."""
    m = float(x.mean())
    return [m, 1 - m]


def gray(path: Path, value: int, size: tuple[int, int] = (48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value,) * 3).save(path)
    return path


def items(paths: list[Path]) -> list[Item]:
    return [Item(i, p, "0" * 64) for i, p in enumerate(paths, 1)]


@pytest.fixture
def make_step(tmp_path):
    """A ClassifyStep whose `open_model` hands out fakes: `models` maps weights (str) to a FakeModel."""
    steps = []

    def make(models: dict[str, FakeModel], **kw) -> tuple[ClassifyStep, list]:
        opened = []

        def open_model(weights):
            opened.append(str(weights))
            if str(weights) not in models:
                raise ModelUnavailable(f"model.weights: {weights} is not on disk")
            return models[str(weights)]

        args = dict(task="classify", weights="w1", imgsz=32, batch=4, conf=0.25, review_dir=None,
                    review_below=0.0, max_pixels=10_000_000, allowed_roots=[tmp_path], open_model=open_model)
        args.update(kw)
        step = ClassifyStep(**args)
        steps.append(step)
        return step, opened

    yield make
    for s in steps:
        s.close()


def test_the_boundary_imports_neither_torch_nor_ultralytics():
    code = ("import sys, pipeline.inference.model_io, pipeline.inference.classify; "
            "print(sorted(m for m in ('torch', 'ultralytics', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_images_run_in_chunks_of_batch_and_each_gets_its_own_answer(make_step, tmp_path):
    model = FakeModel(names=["light", "dark"], answer=brightness, version="fake@1")
    step, _ = make_step({"w1": model}, batch=4)
    values = [230, 25, 230, 25, 230, 230, 25, 25, 230, 25]
    paths = [gray(tmp_path / "inbox" / f"{i}.png", v) for i, v in enumerate(values)]
    out = step(items(paths))
    assert [n for n, _ in model.calls] == [classify.FIRST_CHUNK, 4, 4] and classify.FIRST_CHUNK == 2
    assert {s for s in model.shapes} == {(4, 3, 32, 32), (2, 3, 32, 32)}
    assert [r.predicted_class for r in out] == ["light" if v == 230 else "dark" for v in values]
    for r, v in zip(out, values):
        assert r.confidence == pytest.approx(0.9, abs=0.01) and r.top5[0] == [r.predicted_class, r.confidence]
        assert [n for n, _ in r.top5] == (["light", "dark"] if v == 230 else ["dark", "light"])
        assert (r.width, r.height, r.imgsz, r.detections) == (48, 40, 32, [])
        assert (r.model_version, r.backend) == ("fake@1", "fake")
        assert r.decode_ms > 0 and r.infer_ms >= 0


def test_a_broken_file_is_rejected_and_the_rest_of_its_chunk_classified(make_step, tmp_path, monkeypatch):
    monkeypatch.setattr(classify, "FIRST_CHUNK", 3)  # the three in one chunk
    model = FakeModel(names=["light", "dark"], answer=brightness)
    step, _ = make_step({"w1": model}, batch=3)
    paths = [gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(3)]
    paths[1].write_bytes(paths[1].read_bytes()[:60])
    out = step(items(paths))
    assert isinstance(out[1], Rejected) and out[1].code == "truncated_image"
    assert all(isinstance(out[i], Result) for i in (0, 2)) and model.calls == [(2, 0)]


def test_a_failing_forward_fails_its_chunk_only(make_step, tmp_path):
    def answer(x):
        if x.mean() < 0.5:
            raise RuntimeError("out of memory")
        return [0.9, 0.1]

    step, _ = make_step({"w1": FakeModel(names=["light", "dark"], answer=answer)}, batch=2)
    paths = [gray(tmp_path / "inbox" / f"{i}.png", v) for i, v in enumerate([230, 230, 25, 230])]
    out = step(items(paths))
    assert [type(o).__name__ for o in out] == ["Result", "Result", "RuntimeError", "RuntimeError"]


# -- thread choice ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "expected"), [
    ({1: 0.1}, [2] * 5 + [1] + [2] * 4),  # 1 thread far slower on its first chunk: not tried further
    ({2: 0.1}, [2] * 5 + [1] * 5),  # 1 thread faster: kept after its trial
])
def test_the_thread_count_the_chooser_measures_fastest_runs_the_stream(make_step, tmp_path, seconds, expected):
    """The first chunk of a call runs on every core unmeasured, then pipeline.inference.threads tries 4 chunks of each."""
    model = FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2), seconds=seconds)
    step, _ = make_step({"w1": model}, batch=1)
    out = step(items([gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(10)]))
    assert [t for _, t in model.calls] == expected
    assert {r.predicted_class for r in out} == {"light"}


def test_a_model_that_runs_side_by_side_gets_two_runs_at_once_when_that_is_faster(make_step, tmp_path):
    """ONNX Runtime on the CPU (lanes=2): one run on 2 threads (20 ms per image), one on 1 (30 ms), or two runs
    at once on 1 thread each (15 ms per image between chunk ends): the chooser keeps the two runs, and the
    outcomes still come in order."""
    model = FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2), lanes=2,
                      seconds={2: 0.020, 1: 0.030})
    step, _ = make_step({"w1": model}, batch=2)
    values = [230 if i % 3 else 25 for i in range(2 * 22)]
    out = step(items([gray(tmp_path / "inbox" / f"{i}.png", v) for i, v in enumerate(values)]))
    assert [r.predicted_class for r in out] == ["light" if v == 230 else "dark" for v in values]
    assert model.most_at_once == 2
    best = step._active.plans.best
    assert (best.threads, best.lanes) == (1, 2) and str(best) == "2 runs side by side on 1 thread each"
    assert [t for _, t in model.calls[-4:]] == [1, 1, 1, 1]


def test_the_next_step_on_the_same_model_starts_with_the_plan_the_last_one_measured(make_step, tmp_path):
    """A `coverwatch process` of 128 phone photos was all trial: the plan decided is kept beside the model
    (its `plan_file`), and the next step, in a new process say, runs every chunk on it from the first."""
    def model():
        return FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2), lanes=2,
                         seconds={2: 0.020, 1: 0.030}, plan_file=tmp_path / "w1.plan.json")

    paths = [gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(2 * 22)]
    first = model()
    make_step({"w1": first}, batch=2)[0](items(paths))
    assert (tmp_path / "w1.plan.json").is_file()
    second = model()
    make_step({"w1": second}, batch=2)[0](items(paths[:12]))
    assert second.calls[0][1] == 2  # the first chunk on every core: its rows come soonest
    assert {t for _, t in second.calls[1:]} == {1} and second.most_at_once == 2


def test_a_model_that_cannot_run_side_by_side_never_does(make_step, tmp_path):
    model = FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2), seconds={2: 0.002, 1: 0.003})
    step, _ = make_step({"w1": model}, batch=1)
    step(items([gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(12)]))
    assert model.most_at_once == 1


def test_the_first_chunk_of_a_call_is_small_so_its_rows_come_early(make_step, tmp_path):
    model = FakeModel(names=["light", "dark"], answer=brightness)
    step, _ = make_step({"w1": model}, batch=16)
    parts = list(step.stream(items([gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(37)])))
    assert [len(p) for p in parts] == [2, 16, 16, 3] and classify.FIRST_CHUNK == 2


def test_the_last_chunk_is_cut_in_pieces_when_two_runs_can_share_the_cores(make_step, tmp_path):
    """With two forward passes side by side, the call's last chunk started while the one before it still ran,
    and then ran alone on one core (a detect chunk of 16 phone photos: ~1 s of an idle core). In quarters,
    both runs are busy to the end."""
    paths = [gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(classify.FIRST_CHUNK + 3 * 16)]
    sides = FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2), lanes=2)
    step, _ = make_step({"w1": sides}, batch=16)
    assert [len(p) for p in step.stream(items(paths))] == [2, 16, 16, 4, 4, 4, 4]
    one = FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2))
    step, _ = make_step({"w1": one}, batch=16)
    assert [len(p) for p in step.stream(items(paths))] == [2, 16, 16, 16]
    step, _ = make_step({"w1": sides}, batch=16)
    assert [len(p) for p in step.stream(items(paths[:18]))] == [2, 16]  # nothing before it to overlap with


def test_a_free_run_takes_the_next_chunk_while_an_older_one_still_runs(make_step, tmp_path):
    """Outcomes go out in order, but a run that is free starts the next chunk at once: the quarters of the
    last chunk waited for the older whole chunk beside them to end, one core idle meanwhile."""
    model = FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2), lanes=2, seconds={1: 0.020},
                      plan_file=tmp_path / "w1.plan.json")
    (tmp_path / "w1.plan.json").write_text(json.dumps({"cpus": os.cpu_count(), "plan": [1, 2]}))
    step, _ = make_step({"w1": model}, batch=16)
    paths = [gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(classify.FIRST_CHUNK + 2 * 16)]
    assert [len(p) for p in step.stream(items(paths))] == [2, 16, 4, 4, 4, 4]
    # The chunk of 16 (320 ms), beside the quarters; spans are in the order they started, and the first quarter
    # may start before it.
    whole_end = next(end for images, _, end in model.spans if images == 16)
    assert sum(start < whole_end for images, start, _ in model.spans if images == 4) >= 3


def test_the_first_chunk_runs_on_every_core_alone_whatever_the_plan(make_step, tmp_path):
    """With two one-thread runs remembered as the plan, a cold `process` ran its first chunk on one thread,
    beside the next: the first committed row of detect on phone photos came 0.3 s later (1.2 -> 1.6 s)."""
    model = FakeModel(names=["light", "dark"], answer=brightness, threads=(1, 2), lanes=2,
                      seconds={1: 0.010, 2: 0.010}, plan_file=tmp_path / "w1.plan.json")
    (tmp_path / "w1.plan.json").write_text(json.dumps({"cpus": os.cpu_count(), "plan": [1, 2]}))
    step, _ = make_step({"w1": model}, batch=16)
    step(items([gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(classify.FIRST_CHUNK + 32)]))
    assert [t for _, t in model.calls][:3] == [2, 1, 1]
    first, second = model.spans[0], model.spans[1]
    assert second[1] >= first[2]  # nothing beside it


def test_a_chunk_that_ended_before_the_one_ahead_of_it_counts_at_no_extra_time():
    """Two runs side by side in step end together, in either order: the later of each pair in hand-over
    order ended first half the time, was left out of the chooser's trial, and two runs looked as slow as one
    (the bench's detect then ran on two threads: 18.7 img/s against ~24)."""
    from concurrent.futures import Future

    from pipeline.inference.threads import Plan, ThreadChooser

    chooser = ThreadChooser([Plan(2), Plan(1, 2)], trial=2)
    active = classify._Active((None, "w"), "v", None, chooser)
    a, b = Future(), Future()
    a.set_result(["a"])
    b.set_result(["b"])
    clock = {"ended": 10.0, "done": 1, "ends": {a: 11.0, b: 10.9}}  # b, handed over second, ended first
    assert classify.ClassifyStep._finished(active, (Plan(2), 16, a), clock) == ["a"]
    assert classify.ClassifyStep._finished(active, (Plan(2), 16, b), clock) == ["b"]
    assert chooser._samples[Plan(2)] == [pytest.approx(1 / 16), 0.0] and clock["ended"] == 11.0


def test_the_first_rows_are_handed_over_before_the_next_chunk_is_decoded(make_step, tmp_path, monkeypatch):
    """The first chunk's outcomes waited for the decode of the chunk after it (16 phone photos, ~0.2 s of a
    cold `process` on 2 cores) before they went out: the first committed row came that much later."""
    import threading

    real, second_chunk = classify.decode_for_model, threading.Event()

    def held(data, **kw):
        if data.startswith(b"HOLD"):  # the images of the second chunk wait until the first rows are out
            if not second_chunk.wait(5):
                second_chunk.set()  # the others of the chunk need not wait too
                raise AssertionError("the first rows never came")
            data = data[4:]
        return real(data, **kw)

    monkeypatch.setattr(classify, "decode_for_model", held)
    step, _ = make_step({"w1": FakeModel(names=["light", "dark"], answer=brightness)}, batch=16)
    paths = [gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(classify.FIRST_CHUNK + 16)]
    for p in paths[classify.FIRST_CHUNK:]:
        p.write_bytes(b"HOLD" + p.read_bytes())
    stream = step.stream(items(paths))
    first = next(stream)  # held until the wait above gives up, when the first rows wait for the next decode
    second_chunk.set()
    rest = list(stream)
    assert [len(first)] + [len(p) for p in rest] == [classify.FIRST_CHUNK, 16]
    assert all(isinstance(o, Result) for o in first + rest[0])


# -- review copies ---------------------------------------------------------------------------------------


def test_images_under_review_below_are_copied_to_review_with_their_label(make_step, tmp_path):
    review = tmp_path / "review"
    step, _ = make_step({"w1": FakeModel(names=["light", "dark"], answer=brightness)}, review_dir=review,
                        review_below=0.6)
    sure, unsure = gray(tmp_path / "inbox" / "sure.png", 25), gray(tmp_path / "inbox" / "unsure.png", 115)
    out = step(items([sure, unsure]))
    assert out[0].confidence > 0.6 > out[1].confidence and out[1].predicted_class == "dark"
    assert sorted(p.name for p in review.iterdir()) == ["classes.txt", "unsure.png", "unsure.txt"]
    assert (review / "classes.txt").read_text() == "light\ndark\n"
    assert (review / "unsure.txt").read_text() == "1 0.500000 0.500000 1.000000 1.000000\n"  # the whole image
    assert (review / "unsure.png").read_bytes() == unsure.read_bytes() and unsure.exists()
    step.reconfigure(conf=0.25, review_below=0.0)
    step(items([gray(tmp_path / "inbox" / "again.png", 115)]))
    assert not (review / "again.png").exists()


def test_review_copies_survive_the_archiving_of_their_part_and_never_hold_it_back(make_step, tmp_path, monkeypatch):
    """The caller archives a part's files as soon as it has the part. A review copy still being written (a phone
    photo turned upright takes ~0.2 s) once found its source gone ("No such file or directory"); waiting for the
    copies then held every part back, the first row included. Now each copy opens its source before the part is
    handed over and writes beside the next part's work: the first part comes before its copies are written, a
    part comes only once the copies of the part before it are written (a backlog of one part), and every copy
    is whole."""
    import time as _time

    real = classify.write_review
    written: list[str] = []

    def slow(*a, **kw):
        _time.sleep(0.2)
        out = real(*a, **kw)
        written.append(out.name)
        return out

    monkeypatch.setattr(classify, "write_review", slow)
    review = tmp_path / "review"
    step, _ = make_step({"w1": FakeModel(names=["light", "dark"], answer=brightness)}, review_dir=review,
                        review_below=1.0, batch=2)
    originals = {}
    for i in range(9):
        p = gray(tmp_path / "inbox" / f"{i}.png", 20 * i)
        originals[p.name] = p.read_bytes()
    paths = sorted((tmp_path / "inbox").iterdir(), key=lambda p: int(p.stem))
    done, before = 0, []
    for k, part in enumerate(step.stream(items(paths))):
        mine = [p.name for p in paths[done:done + len(part)]]
        if k == 0:
            assert not written, "the first part waited for its review copies"
        assert set(before) <= set(written), "a part came before the copies of the part before it were written"
        for p in paths[done:done + len(part)]:
            p.rename(tmp_path / f"archived-{p.name}")  # what the ingest's move does next
        done, before = done + len(part), mine
    step.close()
    assert done == 9 and sorted(written) == sorted(originals)
    assert {n: (review / n).read_bytes() for n in originals} == originals


def test_review_below_one_reviews_every_image_even_a_certain_one(make_step, tmp_path):
    review = tmp_path / "review"
    step, _ = make_step({"w1": FakeModel(names=["light", "dark"], answer=[1.0, 0.0])}, review_dir=review,
                        review_below=1.0)
    (r,) = step(items([gray(tmp_path / "inbox" / "a.png", 230)]))
    assert r.confidence == 1.0 and (review / "a.txt").read_text() == "0 0.500000 0.500000 1.000000 1.000000\n"


# -- which model -----------------------------------------------------------------------------------------


def test_a_new_champion_replaces_the_model_between_calls(make_step, tmp_path):
    v1 = FakeModel(names=["light", "dark"], answer=[0.8, 0.2])
    v2 = FakeModel(names=["cat", "dog", "bird"], answer=[0.1, 0.2, 0.7])
    champions = iter([None, ("v1", "m1"), ("v1", "m1"), ("v2", "m2")])
    step, opened = make_step({"w1": FakeModel(names=["x"], answer=[1.0], version="base@0"), "m1": v1, "m2": v2},
                             model_source=lambda: next(champions))
    paths = [gray(tmp_path / "inbox" / f"{i}.png", 230) for i in range(5)]
    calls = [step(items(paths[:2])), step(items(paths[2:3])), step(items(paths[3:4])), step(items(paths[4:]))]
    assert [[r.model_version for r in c] for c in calls] == [["base@0"] * 2, ["v1"], ["v1"], ["v2"]]
    assert [r.predicted_class for r in calls[3]] == ["bird"] and len(calls[3][0].top5) == 3
    assert opened == ["w1", "m1", "m2"]  # each loaded once, on the call that first wanted it
    assert [n for n, _ in v1.calls] == [1, 1] and [n for n, _ in v2.calls] == [1]
    assert step.model_version == "v2"


def test_a_champion_that_cannot_load_leaves_the_working_model_and_is_retried_later(make_step, tmp_path):
    now = [0.0]
    champions = {"want": ("v1", "m1")}
    step, opened = make_step({"m1": FakeModel(names=["light", "dark"], answer=[0.8, 0.2])},
                             model_source=lambda: champions["want"], clock=lambda: now[0])
    path = gray(tmp_path / "inbox" / "a.png", 230)
    assert step(items([path]))[0].model_version == "v1"
    champions["want"] = ("v2", "broken")
    assert step(items([path]))[0].model_version == "v1"
    now[0] = classify.RETRY_SECONDS - 1
    assert step(items([path]))[0].model_version == "v1" and opened == ["m1", "broken"]  # not on every call
    now[0] = classify.RETRY_SECONDS + 1
    assert step(items([path]))[0].model_version == "v1" and opened == ["m1", "broken", "broken"]


# -- calibrated confidence -------------------------------------------------------------------------------


def test_the_step_applies_the_models_temperature_to_every_confidence(make_step, tmp_path):
    review = tmp_path / "review"
    raw = FakeModel(names=["light", "dark", "gray"], answer=[0.9, 0.06, 0.04])
    hot = FakeModel(names=["light", "dark", "gray"], answer=[0.9, 0.06, 0.04], temperature=2.0)
    path = gray(tmp_path / "inbox" / "a.png", 230)
    plain = make_step({"w1": raw}, review_dir=tmp_path / "raw-review", review_below=0.7)[0](items([path]))[0]
    assert (plain.predicted_class, plain.confidence) == ("light", pytest.approx(0.9))
    assert [p for _, p in plain.top5] == pytest.approx([0.9, 0.06, 0.04])  # T = 1 changes nothing
    assert not (tmp_path / "raw-review" / "a.png").exists()
    calibrated = make_step({"w1": hot}, review_dir=review, review_below=0.7)[0](items([path]))[0]
    expected = np.sqrt([0.9, 0.06, 0.04]) / np.sqrt([0.9, 0.06, 0.04]).sum()  # softmax(log p / 2)
    assert calibrated.predicted_class == "light" and calibrated.confidence == pytest.approx(expected[0], abs=1e-6)
    assert [p for _, p in calibrated.top5] == pytest.approx(list(expected), abs=1e-6)
    assert calibrated.confidence < 0.7 and (review / "a.png").exists(), "review_below judges the calibrated value"


def test_the_temperature_follows_a_hot_swap_to_a_new_champion(make_step, tmp_path):
    v1 = FakeModel(names=["light", "dark"], answer=[0.8, 0.2], temperature=1.0)
    v2 = FakeModel(names=["light", "dark"], answer=[0.8, 0.2], temperature=3.0)
    champions = iter([("v1", "m1"), ("v2", "m2")])
    step, _ = make_step({"m1": v1, "m2": v2}, model_source=lambda: next(champions))
    path = gray(tmp_path / "inbox" / "a.png", 230)
    first, second = step(items([path]))[0], step(items([path]))[0]
    assert (first.model_version, first.confidence) == ("v1", pytest.approx(0.8))
    assert (second.model_version, second.confidence) == ("v2", pytest.approx(4 ** (1 / 3) / (4 ** (1 / 3) + 1)))


def test_without_any_model_every_item_is_awaiting_model(make_step, tmp_path):
    step, _ = make_step({}, model_source=lambda: None)
    out = step(items([gray(tmp_path / "inbox" / "a.png", 230)] * 2))
    assert [o.code for o in out] == ["awaiting_model"] * 2 and not step.model_ready()


def test_close_closes_the_model(make_step, tmp_path):
    model = FakeModel(names=["light", "dark"], answer=[0.8, 0.2])
    step, _ = make_step({"w1": model})
    assert step.load() == "fake@000000000000"
    step.close()
    assert model.closed


def test_warm_up_loads_the_model_in_the_background_and_the_first_call_uses_it(make_step, tmp_path):
    """A cold `coverwatch process` loads its model beside the start and the first batch's bookkeeping, not
    after them (the first committed row comes ~0.1 s sooner on 12 MP photos)."""
    release = threading.Event()
    model = FakeModel(names=["light", "dark"], answer=[0.8, 0.2])

    def slow_open(weights):
        assert release.wait(10)
        return model

    step, _ = make_step({}, open_model=slow_open)
    step.warm_up()  # returns at once: the load runs on another thread
    assert step.model_version is None
    release.set()
    out = step(items([gray(tmp_path / "inbox" / "a.png", 230)]))
    assert out[0].predicted_class == "light" and step.model_version == "fake@000000000000"


def test_a_call_during_the_warm_up_waits_for_it_and_the_model_loads_once(make_step, tmp_path):
    started, release = threading.Event(), threading.Event()
    opened = []

    def slow_open(weights):
        opened.append(str(weights))
        started.set()
        assert release.wait(10)
        return FakeModel(names=["light", "dark"], answer=[0.8, 0.2])

    step, _ = make_step({}, open_model=slow_open)
    step.warm_up()
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    out = step(items([gray(tmp_path / "inbox" / "a.png", 230)]))
    step.warm_up()  # loaded already: nothing more
    assert out[0].predicted_class == "light" and opened == ["w1"]


def test_a_warm_up_that_cannot_load_leaves_the_files_awaiting_the_model_with_one_warning(make_step, tmp_path, caplog):
    step, opened = make_step({})
    with caplog.at_level("WARNING", logger="pipeline.inference.classify"):
        step.warm_up()
        out = step(items([gray(tmp_path / "inbox" / "a.png", 230)]))
    assert [o.code for o in out] == ["awaiting_model"] and opened == ["w1"]
    assert [r.getMessage() for r in caplog.records] == ["model.weights: w1 is not on disk"]


def test_close_during_the_warm_up_waits_for_it_and_closes_the_model(make_step, tmp_path):
    model = FakeModel(names=["light", "dark"], answer=[0.8, 0.2])

    def slow_open(weights):
        time.sleep(0.2)
        return model

    step, _ = make_step({}, open_model=slow_open)
    step.warm_up()
    step.close()
    assert model.closed


# -- detect rows -----------------------------------------------------------------------------------------


def raw_detect(x: np.ndarray) -> np.ndarray:
    """Ultralytics' raw head for one image: (4 + 3 classes, 4 anchors) of xywh in input pixels, class scores."""
    _, h, w = x.shape
    boxes = [((w / 2, h / 2, w / 2, h / 2), 1, 0.9),  # the middle half of the input
             ((w / 2 + 1, h / 2, w / 2, h / 2), 1, 0.8),  # the same object again: NMS drops it
             ((10, 10, 4, 4), 0, 0.5),  # another object
             ((40, 20, 8, 8), 2, 0.1)]  # under conf
    out = np.zeros((4 + 3, len(boxes)), np.float32)
    for a, (xywh, cls, score) in enumerate(boxes):
        out[:4, a], out[4 + cls, a] = xywh, score
    return out


def test_detect_rows_go_through_nms_and_back_to_the_original_image(make_step, tmp_path, monkeypatch):
    monkeypatch.setattr(classify, "FIRST_CHUNK", 3)  # the three in one chunk, one model run per shape
    model = FakeModel(names=["a", "b", "c"], task="detect", answer=raw_detect)
    review = tmp_path / "review"
    step, _ = make_step({"w1": model}, task="detect", imgsz=64, review_dir=review, review_below=1.0)
    wide = gray(tmp_path / "inbox" / "wide.png", 128, (200, 100))
    tall = gray(tmp_path / "inbox" / "tall.png", 128, (100, 200))
    out = step(items([wide, tall, wide]))
    assert sorted(model.shapes) == [(1, 3, 64, 32), (2, 3, 32, 64)]  # letterboxed to a multiple of the stride
    r = out[0]
    assert [(c, round(s, 4), *(round(v, 4) for v in box)) for c, s, *box in r.detections] == [
        ("b", 0.9, 0.25, 0.25, 0.75, 0.75),
        ("a", 0.5, 8 / 0.32 / 200, 8 / 0.32 / 100, 12 / 0.32 / 200, 12 / 0.32 / 100)]
    assert (r.predicted_class, r.confidence) == ("b", pytest.approx(0.9))
    assert [n for n, _ in r.top5] == ["b", "a"] and (r.width, r.height) == (200, 100)
    assert out[1].detections[0][2:] == pytest.approx((0.25, 0.25, 0.75, 0.75))
    assert (review / "wide.txt").read_text().splitlines() == ["1 0.500000 0.500000 0.500000 0.500000",
                                                             "0 0.156250 0.312500 0.062500 0.125000"]
    step.reconfigure(conf=0.6, review_below=0.0)
    assert [d[0] for d in step(items([wide]))[0].detections] == ["b"]


def test_an_image_without_boxes_has_no_answer_and_is_reviewed(make_step, tmp_path):
    model = FakeModel(names=["a"], task="detect", answer=lambda x: np.zeros((5, 8), np.float32))
    step, _ = make_step({"w1": model}, task="detect", imgsz=64, review_dir=tmp_path / "review", review_below=0.4)
    (r,) = step(items([gray(tmp_path / "inbox" / "empty.png", 128)]))
    assert (r.predicted_class, r.confidence, r.top5, r.detections) == (None, None, [], [])
    assert (tmp_path / "review" / "empty.txt").read_text() == ""


def test_end2end_rows_are_kept_above_conf_without_nms(make_step, tmp_path):
    rows = np.array([[16, 8, 48, 24, 0.9, 1], [16, 8, 48, 24, 0.85, 1], [0, 0, 4, 4, 0.1, 0]], np.float32)
    model = FakeModel(names=["a", "b"], task="detect", answer=rows, end2end=True)
    step, _ = make_step({"w1": model}, task="detect", imgsz=64)
    (r,) = step(items([gray(tmp_path / "inbox" / "wide.png", 128, (200, 100))]))
    assert [(c, round(s, 2), *(round(v, 4) for v in box)) for c, s, *box in r.detections] == [
        ("b", 0.9, 0.25, 0.25, 0.75, 0.75), ("b", 0.85, 0.25, 0.25, 0.75, 0.75)]
