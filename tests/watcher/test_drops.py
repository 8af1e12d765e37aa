"""The inbox chain of watcher.drops: the next batch the intake registers while the step computes the last one."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

from watcher.drops import _Chain


class Settler:
    def __init__(self, *rounds: list[str]):
        self.rounds, self.back, self.settle = list(rounds), [], 0.5

    def ready(self, now, limit=None):
        return self.rounds.pop(0) if self.rounds else []

    def retry_later(self, path, delay, now):
        self.back.append(path)


def intake(settler: Settler, root: Path):
    d = SimpleNamespace(stop=threading.Event(), clock=lambda: 1.0, settler=settler,
                        notifier=SimpleNamespace(ping=lambda now: None), database=SimpleNamespace(check=lambda: None))
    roots = {"inbox": root / "inbox", "labeled": root / "labeled"}
    return SimpleNamespace(d=d, _held=[], folder_of=lambda p: next((n for n, r in roots.items() if p.is_relative_to(r)), None))


def test_the_chain_takes_inbox_files_and_ends_when_labelled_files_wait(tmp_path):
    i, s = tmp_path / "inbox", tmp_path / "labeled"
    settler = Settler([str(i / "b.jpg"), str(s / "cat" / "x.jpg")], [str(i / "c.jpg")])
    drops = intake(settler, tmp_path)
    chain = _Chain(drops, "inbox", [i / "a.jpg"])
    assert chain.next() == [i / "b.jpg"] and drops._held == [str(s / "cat" / "x.jpg")]
    assert chain.next() == [], "the labelled file's turn comes before more of the inbox"
    assert chain.taken == [i / "a.jpg", i / "b.jpg"] and settler.rounds == [[str(i / "c.jpg")]]


def test_a_file_taken_earlier_in_the_chain_and_ready_again_goes_back_to_the_settle_tracker(tmp_path):
    i = tmp_path / "inbox"
    settler = Settler([str(i / "a.jpg"), str(i / "b.jpg")])
    chain = _Chain(intake(settler, tmp_path), "inbox", [i / "a.jpg"])
    assert chain.next() == [i / "b.jpg"] and settler.back == [str(i / "a.jpg")]
    assert chain.taken == [i / "a.jpg", i / "b.jpg"]


def test_a_stopping_daemon_takes_no_next_batch(tmp_path):
    settler = Settler([str(tmp_path / "inbox" / "b.jpg")])
    drops = intake(settler, tmp_path)
    drops.d.stop.set()
    assert _Chain(drops, "inbox", []).next() == [] and settler.rounds
