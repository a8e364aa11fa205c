"""Atomic file writing: a file that exists is complete, whatever interrupted the process that wrote it.

Every writer of the project goes through here: the content goes to a temporary file in the destination's folder
(same file system, so the final ``os.replace`` is atomic), is flushed to disk (``fsync``), then replaces the
destination; on any error the temporary file is removed and the destination is left as it was. A write error
that names no file (a full disk raises ``OSError(ENOSPC)`` without one) is raised again naming the destination
(:func:`naming`), so the one-line error of :mod:`common.errors` says which output could not be written.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "naming", "remove_temporaries", "write_atomic"]


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (``mkstemp`` would give 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unnamed_os_error(exc: BaseException) -> OSError | None:
    """The first ``OSError`` with an ``errno`` and no file name in ``exc``'s cause/context chain (a failed write:
    ``write(2)`` knows no path; torch's C++ writer wraps it in a ``RuntimeError``), or ``None``."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError):
            return link if link.errno is not None and link.filename is None else None
        link = link.__cause__ or link.__context__
    return None


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Raise a file-system error that names no file, raised inside the block, again as an ``OSError`` naming ``path``.

    A full disk fails a ``write`` with ``OSError(ENOSPC)`` and no file name, possibly wrapped by a library (torch's
    serializer, a MONAI transform); the error that leaves this block names the output that could not be written,
    with the original as its cause. Errors that name a file already, and all other errors, pass unchanged.

    Example::

        with naming("results.csv"):
            handle.write(row)     # OSError(28, "No space left on device", "results.csv") when the disk is full
    """
    try:
        yield
    except Exception as exc:
        unnamed = _unnamed_os_error(exc)
        if unnamed is None:
            raise
        raise OSError(unnamed.errno, unnamed.strerror, os.fspath(path)) from exc


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp", parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; it replaces ``path`` when the block ends without error.

    Use it for writers that want a file name of their own (``nibabel.save``, ``zipfile``, ``csv``)::

        with atomic_write("seg.nii.gz", suffix=".tmp.nii.gz") as tmp:
            nibabel.save(image, tmp)

    Args:
        path: the destination.
        suffix: the temporary file's suffix (``nibabel`` picks the format from it: give ``".tmp.nii.gz"``).
        parents: create the destination's missing parent folders first.

    Yields:
        The temporary path (an empty file with the mode of a new file already exists there).

    Raises:
        OSError: the folder cannot be created or written, or the replace fails; the destination is then untouched.
            A write error without a file name (a full disk) names ``path``.
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        with naming(path):
            try:
                # the destination gets the mode a plain open() would give it: results and reports are for sharing
                os.fchmod(fd, _new_file_mode())
            finally:
                os.close(fd)
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(
    path: str | os.PathLike, content: str | bytes, encoding: str = "utf-8", parents: bool = False
) -> Path:
    """Write ``content`` (text or bytes) to ``path`` atomically (see :func:`atomic_write`).

    Text is written as given (no newline translation), so CSV and JSON come out byte for byte the same everywhere.

    Args:
        path: the destination.
        content: the whole file.
        encoding: the encoding of text content.
        parents: create the destination's missing parent folders first.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    data = content.encode(encoding) if isinstance(content, str) else content
    with atomic_write(path, parents=parents) as tmp:
        tmp.write_bytes(data)
    return Path(path)


_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")
"""The name :func:`atomic_write` gives a temporary file: ``.<destination>.<8 random characters><suffix>``, the
suffix ``.tmp`` or ``.tmp.nii.gz``."""


def remove_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temporary files that writers killed inside :func:`atomic_write` left in ``folder``.

    A process killed (SIGKILL, power cut) after creating its temporary file and before renaming it leaves
    ``.<name>.<random>.tmp`` beside a destination that stays as it was. Only a run that has the folder to itself
    may call this (:class:`~common.utils.lock.FolderLock` does when it is taken): a writer still at work would lose
    its temporary file.

    Args:
        folder: the folder to clear (missing: nothing to do).
        recursive: also its subfolders.

    Returns:
        The files removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in root.rglob(".*") if recursive else root.glob(".*"):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

