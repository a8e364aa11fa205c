"""Simulated file-system faults for the reliability tests: a disk that fills up, a folder that is read-only.

Both patch, for the duration of a ``with`` block, the Python entry points through which the project writes files:
``open`` (``builtins.open`` and ``io.open``, which ``pathlib``, ``tempfile``, ``gzip`` -- so nibabel's ``.nii.gz``
writer --, ``zipfile``, ``csv`` users and our atomic writer all go through) and the ``os`` calls that create, rename
and remove paths. Only paths below ``root`` are affected, so the Python installation and the inputs elsewhere behave
as usual.

:class:`FullDisk` gives ``root`` a budget of free bytes: every byte written to a file below it counts, and the write
that crosses the budget writes what still fits (as the kernel does) and raises ``OSError(ENOSPC)`` without a file
name, exactly what ``write(2)`` reports. A budget of ``None`` fails nothing and only counts, so a test can measure
what a command writes and then fill the disk at chosen points of it.

:class:`ReadOnly` makes ``root`` behave like a read-only mount: opening a file for writing, creating a folder or a
file, renaming, removing or changing modes below it raises ``OSError(EROFS)`` naming the path.

Example::

    with FullDisk(tmp_path / "out", free=10_000) as disk:
        main(["segment", ...])
    disk.failed   # True when the budget ran out
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

_WRITE_MODES = set("wax+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _below(path: Any, root: str) -> str | None:
    """``path`` made absolute if it lies below ``root``, else ``None`` (file descriptors: their ``/proc`` link)."""
    if isinstance(path, int):
        try:
            path = os.readlink(f"/proc/self/fd/{path}")
        except OSError:
            return None
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    text = os.fsdecode(os.fspath(path))
    full = os.path.abspath(text)
    return full if full == root or full.startswith(root + os.sep) else None


class _Metered:
    """A file object whose writes draw on a :class:`FullDisk`'s budget; everything else is the real file's."""

    def __init__(self, handle: Any, disk: FullDisk, path: str) -> None:
        self._handle = handle
        self._disk = disk
        self._path = path

    def write(self, data: Any) -> int:
        size = len(data.encode("utf-8")) if isinstance(data, str) else memoryview(data).nbytes
        allowed = self._disk._take(size, self._path)
        if allowed < size:
            if allowed:  # what still fits lands on the disk, as with a real short write
                part = data.encode("utf-8")[:allowed] if isinstance(data, str) else bytes(memoryview(data)[:allowed])
                handle = self._handle
                if isinstance(handle, io.TextIOBase):
                    handle.flush()
                    handle = handle.buffer
                handle.write(part)
                handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> _Metered:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._handle.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self._handle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class _Patched:
    """Base of the two faults: install the patches on enter, remove them on exit."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._patch = pytest.MonkeyPatch()
        self._open = io.open

    def _patches(self) -> dict[tuple[Any, str], Any]:
        raise NotImplementedError

    def __enter__(self) -> _Patched:
        for (owner, name), value in self._patches().items():
            self._patch.setattr(owner, name, value)
        return self

    def __exit__(self, *exc: object) -> None:
        self._patch.undo()


class FullDisk(_Patched):
    """The disk under ``root`` has ``free`` bytes left (``None``: unlimited, only counted), or fills up at the
    ``fail_at``-th non-empty write call below ``root`` (1-based; that write gets half of its bytes onto the disk),
    whichever comes first; once full it stays full. Counting write calls places a fault at the same point of a
    command whose output sizes vary from run to run (wall times in a CSV).

    Attributes:
        written: bytes written below ``root`` so far.
        writes: write calls of at least one byte below ``root`` so far.
        failed: whether a write ran out of space.
        log: ``(path, bytes)`` of every write call below ``root``, in order (what fitted, for the failed one).
    """

    def __init__(self, root: str | os.PathLike, free: int | None = None, fail_at: int | None = None) -> None:
        super().__init__(root)
        self.free = free
        self.fail_at = fail_at
        self.written = 0
        self.writes = 0
        self.failed = False
        self.log: list[tuple[str, int]] = []

    def _take(self, size: int, path: str) -> int:
        if size == 0:  # an empty write never fails, and does not count
            return 0
        self.writes += 1
        if self.writes == self.fail_at:
            self.free = min(self.free if self.free is not None else math.inf, self.written + size // 2)
        allowed = size if self.free is None else int(max(0, min(size, self.free - self.written)))
        self.written += allowed
        self.log.append((path, allowed))
        if allowed < size:
            self.failed = True
        return allowed

    def _patches(self) -> dict[tuple[Any, str], Any]:
        real = self._open

        def metered_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real(file, mode, *args, **kwargs)
            path = _below(file, self.root) if _WRITE_MODES & set(mode) else None
            return _Metered(handle, self, path) if path is not None else handle

        return {(builtins, "open"): metered_open, (io, "open"): metered_open}


class ReadOnly(_Patched):
    """``root`` behaves like a read-only mount (``EROFS`` for every change below it)."""

    def _refuse(self, path: Any) -> None:
        below = _below(path, self.root)
        if below is not None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), below)

    def _patches(self) -> dict[tuple[Any, str], Any]:
        real_open, real_os_open = self._open, os.open
        patches: dict[tuple[Any, str], Any] = {}

        def ro_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if _WRITE_MODES & set(mode):
                self._refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def ro_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & _WRITE_FLAGS and kwargs.get("dir_fd") is None:
                self._refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        patches[(builtins, "open")] = patches[(io, "open")] = ro_open
        patches[(os, "open")] = ro_os_open
        real_mkdir = os.mkdir

        def ro_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("dir_fd") is None and not os.path.lexists(path):  # an existing path: EEXIST, as the kernel
                self._refuse(path)
            return real_mkdir(path, *args, **kwargs)

        patches[(os, "mkdir")] = ro_mkdir
        for name in ("rmdir", "unlink", "remove", "chmod", "utime", "truncate"):
            patches[(os, name)] = self._guard_first(getattr(os, name))
        for name in ("rename", "replace", "link", "symlink"):
            patches[(os, name)] = self._guard_two(getattr(os, name))
        return patches

    def _guard_first(self, func: Any) -> Any:
        def guarded(path: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("dir_fd") is None:
                self._refuse(path)
            return func(path, *args, **kwargs)

        return guarded

    def _guard_two(self, func: Any) -> Any:
        def guarded(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            self._refuse(src)
            self._refuse(dst)
            return func(src, dst, *args, **kwargs)

        return guarded


def tree_hashes(root: str | os.PathLike) -> dict[str, str]:
    """``relative path -> sha256`` of every file below ``root`` (symbolic links followed), to prove inputs untouched."""
    root = Path(root)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def leftovers(root: str | os.PathLike) -> list[str]:
    """Temporary or torn files below ``root``: atomic writers' ``.<name>.*.tmp*``, ``*.tmp``, ignite's ``tmp*``, and
    the ``.robustseg-*`` staging folders of ``robustseg segment``."""
    found = []
    for path in Path(root).rglob("*"):
        name = path.name
        if ".tmp" in name or name.startswith(("tmp", ".robustseg-")):
            found.append(str(path.relative_to(root)))
    return sorted(found)
