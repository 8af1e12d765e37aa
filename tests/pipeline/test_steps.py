"""Steps that hand their outcomes over in parts, and the intake that commits each part while the next is computed."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest
from PIL import Image
from sqlalchemy import select

from pipeline.inference.steps import Item, NoopStep, Result, Step, StreamAhead
from pipeline.intake.core import Layout
from pipeline.intake.ingest import ingest_batch
from storage.db import session_scope
from storage.tables import File


class PartsStep(Step):
    """Outcomes `part` at a time; `before(k)` runs before part k is computed (in the step's thread)."""

    def __init__(self, part: int, before=None, fail_at: int | None = None):
        self.part, self.before, self.fail_at = part, before or (lambda k: None), fail_at

    def __call__(self, items):
        return [o for p in self.stream(items) for o in p]

    def stream(self, items):
        for k, i in enumerate(range(0, len(items), self.part)):
            self.before(k)
            if k == self.fail_at:
                raise RuntimeError(f"part {k} failed")
            yield [Result(width=1, height=1) for _ in items[i:i + self.part]]


def items(n: int) -> list[Item]:
    return [Item(i, None, "") for i in range(n)]


def stream_ahead(step: Step, items: list[Item]):
    """One batch through StreamAhead: its parts, the step's exception raised in order."""
    with closing(StreamAhead(step)) as feed:
        feed.add(items)
        feed.end()
        for _, part in feed:
            if isinstance(part, BaseException):
                raise part
            if part is not None:
                yield part


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "step-stream"]


def test_a_plain_step_streams_its_outcomes_in_one_part():
    assert list(NoopStep().stream(items(3))) == [[Result()] * 3]


def test_the_next_part_is_computed_while_the_caller_holds_this_one():
    caller_has_part_0 = threading.Event()

    def before(k):  # part 1 is only computed once the caller holds part 0: serial, this would deadlock
        if k == 1:
            assert caller_has_part_0.wait(10), "part 1 waited for the caller to finish part 0"

    step, got = PartsStep(2, before), []
    for part in stream_ahead(step, items(5)):
        got.append(len(part))
        caller_has_part_0.set()
    assert got == [2, 2, 1] and not stream_threads()


def test_a_failing_part_comes_out_after_the_parts_before_it():
    got = []
    with pytest.raises(RuntimeError, match="part 1 failed"):
        for part in stream_ahead(PartsStep(2, fail_at=1), items(6)):
            got.append(len(part))
    assert got == [2] and not stream_threads()


def test_leaving_early_ends_the_thread():
    for _ in stream_ahead(PartsStep(1), items(50)):
        break
    assert not stream_threads()


def pngs(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i:02d}.png")
        paths.append(folder / f"{i:02d}.png")
    return paths


def processed(engine) -> int:
    with session_scope(engine) as s:
        return len(s.scalars(select(File).where(File.state == "processed", File.moved_at.is_not(None))).all())


def test_ingest_commits_and_moves_each_part_while_the_step_computes_the_next(home, engine):
    paths = pngs(home / "inbox", 6)

    def before(k):  # part 2 is computed only once part 0 is committed and moved: one commit at the end would hang
        if k == 2:
            deadline = time.monotonic() + 10
            while processed(engine) < 2:
                assert time.monotonic() < deadline, "part 0 was not committed while the step went on"
                time.sleep(0.01)

    layout = Layout(home, home / "archive", home / "quarantine")
    report = ingest_batch(engine, layout, "inbox", home / "inbox", paths, PartsStep(2, before), max_bytes=10_000_000)
    assert report.processed == 6 and processed(engine) == 6
    assert sorted(p.name for p in (home / "archive" / "inbox").iterdir()) == [p.name for p in paths]


def test_a_part_that_fails_leaves_the_parts_before_it_done_and_its_files_for_a_retry(home, engine):
    paths = pngs(home / "inbox", 6)
    layout = Layout(home, home / "archive", home / "quarantine")
    report = ingest_batch(engine, layout, "inbox", home / "inbox", paths, PartsStep(2, fail_at=1),
                          max_bytes=10_000_000)
    assert report.processed == 2 and sorted(p.name for p in report.retry) == [p.name for p in paths[2:]]
    assert processed(engine) == 2 and sorted(p.name for p in (home / "inbox").iterdir()) == [p.name for p in paths[2:]]
    again = ingest_batch(engine, layout, "inbox", home / "inbox", paths[2:], PartsStep(2), max_bytes=10_000_000)
    assert again.processed == 4 and processed(engine) == 6
    with session_scope(engine) as s:
        assert len(s.scalars(select(File)).all()) == 6  # the retried files kept their rows


class CallsStep(Step):
    """Outcomes `part` at a time; `before(call, k)` runs in the step's thread before part k of call `call`,
    and `fail` (call, part) raises there."""

    def __init__(self, part: int, before=None, fail: tuple[int, int] | None = None):
        self.part, self.before, self.fail, self.calls = part, before or (lambda c, k: None), fail, []

    def stream(self, items):
        call = len(self.calls)
        self.calls.append(len(items))
        for k, i in enumerate(range(0, len(items), self.part)):
            self.before(call, k)
            if (call, k) == self.fail:
                raise RuntimeError(f"call {call} part {k} failed")
            yield [Result(width=1, height=1) for _ in items[i:i + self.part]]


def registered(engine) -> int:
    with session_scope(engine) as s:
        return len(s.scalars(select(File)).all())


def batches_of(*groups):
    """`more` for ingest_batch: each group of paths once, then nothing."""
    left, asked = list(groups), []

    def more():
        asked.append(len(left))
        return left.pop(0) if left else []

    return more, asked


def test_the_next_batch_is_registered_while_the_step_computes_this_ones_last_images(home, engine):
    """The step goes from one batch to the next without waiting for the next one's hashing and registering
    (~0.13 s per 256 coco photos, with one core idle)."""
    paths = pngs(home / "inbox", 10)

    def before(call, k):  # the last part of batch 0 waits for batch 1's rows: serial, this would time out
        if (call, k) == (0, 2):
            deadline = time.monotonic() + 10
            while registered(engine) < 10:
                assert time.monotonic() < deadline, "batch 1 was not registered while batch 0 was computed"
                time.sleep(0.01)

    step = CallsStep(2, before)
    more, asked = batches_of(paths[6:])
    layout = Layout(home, home / "archive", home / "quarantine")
    report = ingest_batch(engine, layout, "inbox", home / "inbox", paths[:6], step, max_bytes=10_000_000, more=more)
    assert step.calls == [6, 4], "one step call per batch, one after the other"
    assert asked == [1, 0] and report.processed == 10 and processed(engine) == 10 and not report.retry
    assert sorted(p.name for p in (home / "archive" / "inbox").iterdir()) == [p.name for p in paths]
    assert not stream_threads()


def test_a_copy_in_the_next_batch_ends_as_its_first_copy_in_this_one(home, engine):
    paths = pngs(home / "inbox", 4)
    copy = home / "inbox" / "copy.png"
    copy.write_bytes(paths[3].read_bytes())
    step = CallsStep(2)
    layout = Layout(home, home / "archive", home / "quarantine")
    report = ingest_batch(engine, layout, "inbox", home / "inbox", paths, step, max_bytes=10_000_000,
                          more=batches_of([copy])[0])
    assert step.calls == [4, 0] or step.calls == [4], "the copy is no work for the step"
    assert report.processed == 5 and report.duplicates == 1 and processed(engine) == 5
    with session_scope(engine) as s:
        row = s.scalars(select(File).where(File.original_name == "copy.png")).one()
        first = s.scalars(select(File).where(File.original_name == paths[3].name)).one()
        assert row.duplicate_of == first.id and row.state == "processed"


def test_a_step_that_fails_in_one_batch_leaves_the_next_batch_done(home, engine):
    paths = pngs(home / "inbox", 8)
    step = CallsStep(2, fail=(0, 1))
    layout = Layout(home, home / "archive", home / "quarantine")
    report = ingest_batch(engine, layout, "inbox", home / "inbox", paths[:4], step, max_bytes=10_000_000,
                          more=batches_of(paths[4:])[0])
    assert report.processed == 6 and sorted(p.name for p in report.retry) == [p.name for p in paths[2:4]]
    assert processed(engine) == 6 and not stream_threads()


def test_a_commit_that_fails_leaves_every_uncommitted_file_of_both_batches_for_a_retry(home, engine, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from pipeline.intake import ingest

    paths = pngs(home / "inbox", 8)
    real, commits = ingest._commit, []

    def commit(*a, **kw):
        commits.append(1)
        if len(commits) == 2:
            raise OperationalError("COMMIT", {}, Exception("database is locked"))
        return real(*a, **kw)

    monkeypatch.setattr(ingest, "_commit", commit)
    layout = Layout(home, home / "archive", home / "quarantine")
    report = ingest_batch(engine, layout, "inbox", home / "inbox", paths[:4], CallsStep(2), max_bytes=10_000_000,
                          more=batches_of(paths[4:])[0])
    assert report.processed == 2 and processed(engine) == 2
    assert sorted(p.name for p in report.retry) == [p.name for p in paths[2:]] and not stream_threads()
    assert sorted(p.name for p in (home / "inbox").iterdir()) == [p.name for p in paths[2:]]
