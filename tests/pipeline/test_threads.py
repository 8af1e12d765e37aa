"""pipeline.inference.threads.ThreadChooser: the thread count that moves images fastest, measured while working."""

from __future__ import annotations

import logging
import os

import pytest

from pipeline.inference.threads import Plan, PlanMemory, ThreadChooser


def run(chooser: ThreadChooser, chunks: int, per_image: dict[int, float]) -> list[int]:
    used = []
    for _ in range(chunks):
        t = chooser.pick()
        used.append(t)
        chooser.record(t, per_image[t] * 16, 16)
    return used


def test_widest_first_then_each_option_is_tried_and_the_fastest_kept(caplog):
    chooser = ThreadChooser([1, 2], trial=3, every=10)
    assert chooser.best == 2  # before any measurement: every core
    with caplog.at_level(logging.INFO, logger="pipeline.inference.threads"):
        used = run(chooser, 3 + 3 + 10, {2: 0.0071, 1: 0.0056})
    assert used == [2, 2, 2, 1, 1, 1] + [1] * 10
    assert chooser.best == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert line == "model on 1 thread: 5.6 ms per image from chunk to chunk (2 threads: 7.1 ms)"


def test_the_trial_is_repeated_and_follows_a_change_in_the_work():
    chooser = ThreadChooser([1, 2], trial=2, every=4)
    assert run(chooser, 8, {2: 0.007, 1: 0.005})[-4:] == [1, 1, 1, 1]
    # Photos got bigger relative to the model, or the machine got busier: every core wins again.
    assert run(chooser, 8, {2: 0.004, 1: 0.005}) == [2, 2, 1, 1, 2, 2, 2, 2]


def test_one_slow_chunk_does_not_decide():
    chooser = ThreadChooser([1, 2], trial=3, every=100)
    for t, s in [(2, 0.007), (2, 0.5), (2, 0.007), (1, 0.006), (1, 0.006), (1, 0.006)]:
        assert chooser.pick() == t
        chooser.record(t, s * 16, 16)
    assert chooser.best == 1  # the median, not the mean: 2 threads' one stalled chunk is not its speed
    chooser = ThreadChooser([1, 2], trial=3, every=100)
    for t, s in [(2, 0.005), (2, 0.5), (2, 0.005), (1, 0.006), (1, 0.006), (1, 0.006)]:
        chooser.record(chooser.pick(), s * 16, 16)
    assert chooser.best == 2


def test_a_single_option_is_never_tried():
    chooser = ThreadChooser([4], trial=3, every=10)
    assert run(chooser, 5, {4: 0.01}) == [4] * 5 and chooser.best == 4


def test_an_option_far_slower_on_its_first_chunk_is_not_tried_further():
    """yolo11n at 640 on 1 thread of 2 is ~1.5x slower: three more chunks of it would only cost time."""
    chooser = ThreadChooser([1, 2], trial=4, every=10, give_up=1.3)
    used = run(chooser, 4 + 1 + 3, {2: 0.050, 1: 0.075})
    assert used == [2, 2, 2, 2, 1, 2, 2, 2] and chooser.best == 2


def test_an_option_close_on_its_first_chunk_gets_its_whole_trial():
    chooser = ThreadChooser([1, 2], trial=4, every=10, give_up=1.3)
    assert run(chooser, 8, {2: 0.050, 1: 0.060}) == [2, 2, 2, 2, 1, 1, 1, 1]


# -- remembered: a new process starts with what the last one measured ------------------------------------


def test_a_decision_is_remembered_and_the_next_chooser_starts_with_it(tmp_path):
    """A `coverwatch process` of 128 phone photos was all trial (4 chunks of each of 3 plans): the next one
    starts on the plan the last one measured, and tries the others again only after `every` chunks."""
    memory = PlanMemory(tmp_path / "best.abc.640.plan.json")
    first = ThreadChooser([1, 2], trial=3, every=10, memory=memory)
    run(first, 6, {2: 0.0071, 1: 0.0056})
    assert first.best == 1
    second = ThreadChooser([1, 2], trial=3, every=10, memory=memory)
    assert second.best == 1
    assert run(second, 10 + 6, {2: 0.0071, 1: 0.0056}) == [1] * 10 + [2, 2, 2, 1, 1, 1]


def test_plans_are_remembered_as_plans(tmp_path):
    memory = PlanMemory(tmp_path / "m.plan.json")
    options = [Plan(2), Plan(1), Plan(1, 2)]
    first = ThreadChooser(options, trial=1, every=10, memory=memory)
    run(first, 3, {Plan(2): 0.05, Plan(1): 0.08, Plan(1, 2): 0.04})
    assert ThreadChooser(options, trial=1, every=10, memory=memory).pick() == Plan(1, 2)


@pytest.mark.parametrize("text", [
    '{"cpus": 999, "plan": 1}',  # measured on another machine
    '{"cpus": CPUS, "plan": 3}',  # an option this model does not offer
    '{"cpus": CPUS, "plan": [1, 2]}',  # a plan where the options are thread counts
    "{not json",
    '["cpus"]',
])
def test_a_memory_that_does_not_fit_is_not_used(tmp_path, text):
    path = tmp_path / "m.plan.json"
    path.write_text(text.replace("CPUS", str(os.cpu_count())))
    chooser = ThreadChooser([1, 2], trial=2, every=10, memory=PlanMemory(path))
    assert run(chooser, 4, {2: 0.007, 1: 0.005}) == [2, 2, 1, 1]


def test_a_memory_that_cannot_be_written_costs_nothing_but_the_memory(tmp_path, caplog):
    blocker = tmp_path / "weights"
    blocker.write_text("a file where the folder would be")  # a read-only models folder, even for root
    chooser = ThreadChooser([1, 2], trial=2, every=10, memory=PlanMemory(blocker / "m.plan.json"))
    with caplog.at_level(logging.WARNING, logger="pipeline.inference.threads"):
        run(chooser, 4, {2: 0.007, 1: 0.005})
    assert chooser.best == 1 and not caplog.records


def test_two_runs_side_by_side_are_not_judged_on_their_first_chunk():
    """Two runs side by side start one after the other: the first chunk's end comes a whole one-thread chunk
    after the last end before it (detect at 640: ~1.5x a two-thread chunk), and the plan was given up on that
    alone, though it then moves an image in 0.64 of the time."""
    chooser = ThreadChooser([Plan(2), Plan(1, 2)], trial=4, every=100, give_up=1.3)
    for seconds in [0.050] * 4 + [0.075, 0.032, 0.032, 0.032]:
        chooser.record(chooser.pick(), seconds * 16, 16)
    assert chooser.best == Plan(1, 2)
