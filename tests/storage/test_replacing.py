"""storage.files.replacing / write_atomically: the one "temp file, then os.replace" of the tree."""

import os

import pytest

from storage.files import replacing, write_atomically


def test_write_atomically_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "classes.txt"
    target.write_text("old\n")
    write_atomically(target, "고양이\ndog\n", durable=True)
    assert target.read_bytes() == "고양이\ndog\n".encode()
    assert os.listdir(tmp_path) == ["classes.txt"]


def test_an_error_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_the_temp_is_hidden_beside_the_target(tmp_path):
    with replacing(tmp_path / "latest.xlsx") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".latest.xlsx.")
        tmp.write_bytes(b"x")
    assert (tmp_path / "latest.xlsx").read_bytes() == b"x"
