"""pipeline.inference.threads.ThreadChooser: the thread count that moves images fastest, measured while working."""

from __future__ import annotations

import logging

from pipeline.inference.threads import ThreadChooser


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
