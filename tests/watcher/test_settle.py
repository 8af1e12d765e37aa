"""The settle rules and the observer choice, without any watcher: a fake clock and a fake stat."""

import os
import stat as statmod
from collections import namedtuple
from pathlib import Path

import pytest

from watcher.events import NameFilter, mount_fstype, wants_polling
from watcher.settle import Settler


class FakeFS:
    def __init__(self):
        self.files: dict[str, tuple[int, int, int]] = {}

    def write(self, path, size, mtime):
        self.files[path] = (size, mtime, statmod.S_IFREG | 0o644)

    def stat(self, path):
        if path not in self.files:
            raise FileNotFoundError(path)
        size, mtime, mode = self.files[path]
        return os.stat_result((mode, 0, 0, 1, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, 0, mtime, mtime, mtime))


@pytest.fixture
def fs():
    return FakeFS()


def test_ready_after_settle_when_unchanged(fs):
    s = Settler(1.0, stat=fs.stat)
    fs.write("a", 10, 1)
    s.hint("a", "scan", now=0.0)
    assert s.ready(now=0.9) == []
    assert s.ready(now=1.0) == ["a"]
    assert s.ready(now=5.0) == []  # handed out once


def test_a_change_restarts_the_clock(fs):
    s = Settler(1.0, stat=fs.stat)
    fs.write("a", 10, 1)
    s.hint("a", "created", now=0.0)
    fs.write("a", 20, 2)  # grew, no event seen (polling)
    assert s.ready(now=1.0) == []
    assert s.ready(now=1.9) == []
    assert s.ready(now=2.0) == ["a"]


def test_open_writer_holds_the_file_until_close(fs):
    s = Settler(1.0, stat=fs.stat, close_grace=100)
    fs.write("a", 10, 1)
    s.hint("a", "created", now=0.0)
    s.hint("a", "opened", now=0.0)
    assert s.ready(now=10.0) == []  # paused writer: stable, but still open
    s.hint("a", "closed", now=10.5)
    assert s.ready(now=10.5) == ["a"]


def test_reader_open_close_does_not_hold(fs):
    s = Settler(1.0, stat=fs.stat, close_grace=100)
    fs.write("a", 10, 1)
    s.hint("a", "created", now=0.0)
    s.hint("a", "opened", now=0.0)
    s.hint("a", "closed", now=0.1)
    s.hint("a", "opened", now=0.2)  # a thumbnailer reads it
    s.hint("a", "closed_no_write", now=0.3)
    assert s.ready(now=1.0) == ["a"]


def test_opens_of_untracked_files_are_ignored(fs):
    s = Settler(1.0, stat=fs.stat)
    fs.write("a", 10, 1)
    s.hint("a", "opened", now=0.0)
    s.hint("a", "closed_no_write", now=0.0)
    assert len(s) == 0


def test_lost_close_event_gives_up_waiting_after_grace(fs):
    s = Settler(1.0, stat=fs.stat, close_grace=5.0)
    fs.write("a", 10, 1)
    s.hint("a", "created", now=0.0)
    s.hint("a", "opened", now=0.0)
    assert s.ready(now=4.0) == []
    assert s.ready(now=6.0) == ["a"]


def test_deleted_and_vanished_files_are_dropped(fs):
    s = Settler(1.0, stat=fs.stat)
    fs.write("a", 1, 1)
    fs.write("b", 1, 1)
    s.hint("a", "created", now=0.0)
    s.hint("b", "created", now=0.0)
    s.hint("a", "deleted", now=0.5)
    del fs.files["b"]
    assert s.ready(now=2.0) == [] and len(s) == 0


def test_retry_later_backs_off(fs):
    s = Settler(1.0, stat=fs.stat)
    fs.write("a", 1, 1)
    s.retry_later("a", 8.0, now=0.0)
    assert s.ready(now=7.9) == []
    assert s.ready(now=8.0) == ["a"]


def test_limit_and_order(fs):
    s = Settler(0.5, stat=fs.stat)
    for i, name in enumerate("cab"):
        fs.write(name, 1, 1)
        s.hint(name, "scan", now=float(i))
    assert s.ready(now=10, limit=2) == ["c", "a"]
    assert s.ready(now=10) == ["b"]


@pytest.mark.parametrize(("name", "counts"), [
    ("cover.jpg", True), ("만화.png", True), ("a.part", False), (".hidden.jpg", False), ("x.TMP", False),
    ("y.crdownload", False), ("z.jpg~", False), ("partial.jpg", True),
])
def test_name_filter(name, counts):
    assert NameFilter()(name) is counts


Part = namedtuple("Part", "device mountpoint fstype opts")  # the fields of psutil.disk_partitions()' tuples
PARTITIONS = [
    Part("/dev/sda1", "/", "ext4", "rw,relatime"),
    Part("server:/export", "/mnt/share", "nfs4", "rw,relatime"),
    Part("//host/share", "/mnt/smb drive", "cifs", "rw"),  # psutil decodes the \040 of /proc/self/mounts
    Part("/dev/sdb1", "/mnt/share/local", "ext4", "rw"),
]


@pytest.mark.parametrize(("path", "fstype"), [
    ("/home/x/inbox", "ext4"), ("/mnt/share/inbox", "nfs4"), ("/mnt/smb drive/in", "cifs"),
    ("/mnt/share/local/in", "ext4"), ("/mnt/shared", "ext4"),
])
def test_mount_type_of_a_path(path, fstype):
    assert mount_fstype(Path(path), PARTITIONS) == fstype


def test_auto_polls_on_network_file_systems():
    kinds = {"/a": "ext4", "/b": "nfs4", "/c": "fuse.sshfs"}
    fstype = lambda p: kinds[str(p)]  # noqa: E731
    assert wants_polling("auto", [Path("/a")], fstype) is False
    assert wants_polling("auto", [Path("/a"), Path("/b")], fstype) is True
    assert wants_polling("auto", [Path("/c")], fstype) is True
    assert wants_polling(True, [Path("/a")], fstype) is True
    assert wants_polling(False, [Path("/b")], fstype) is False


def test_mount_type_here_is_known():
    assert mount_fstype(Path("/")) is not None
