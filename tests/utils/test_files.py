"""Tests for :mod:`common.utils.files`: a destination is either its old self or the complete new content."""

from __future__ import annotations

import os

import pytest

from common.utils.files import atomic_write, write_atomic


@pytest.mark.parametrize("content", ["text é\r\nline\n", b"\x00bytes\xff"])
def test_write_atomic_writes_exactly(tmp_path, content):
    path = write_atomic(tmp_path / "out.txt", content)
    expected = content.encode("utf-8") if isinstance(content, str) else content
    assert path.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_atomic_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    with pytest.raises(FileNotFoundError):
        write_atomic(target, "{}")
    write_atomic(target, "{}", parents=True)
    write_atomic(target, "[1]")
    assert target.read_text() == "[1]"


def test_error_leaves_destination_and_no_temporary(tmp_path):
    target = tmp_path / "seg.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target, suffix=".tmp.nii.gz") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.nii.gz") and tmp.name.startswith(".seg.nii.gz.")
            tmp.write_text("partial")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


def test_fsync_before_replace(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))
    write_atomic(tmp_path / "x", "y")
    assert calls == ["fsync", "replace"]


def test_new_file_mode_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "shared.csv", "a\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
