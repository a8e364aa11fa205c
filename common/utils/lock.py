"""One writer per output folder: an exclusive lock on ``<folder>/.lock`` held for a whole run.

Two evaluations (or a certification, or two trainings of one bundle) writing into one folder at once would append
interleaved and duplicated rows to one ``results.csv``, or overwrite each other's checkpoints. A run therefore takes
:class:`FolderLock` on its output folder first; a second run is refused at once with one line that names the holder
(``output_dir /x: another evaluation (pid 4242, started 2026-01-31 12:00:00 on host) is writing here; wait for it
or use another folder.``) instead of waiting behind it unseen.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the open lock file. The kernel drops a flock when the last
descriptor of the open file goes, so a run killed with ``kill -9`` never leaves a stale lock: the file may stay, the
lock does not, and the next run takes it. Processes forked while it is held (data-loader workers) close their copy of
the descriptor at once, so the lock does not outlive its holder in them. A released lock removes the lock file, and a
taker checks that the file it locked is still the one at the path (another holder may have removed it in between),
so the folder is left as the run left it. Taking the lock also removes the temporary files that the atomic writes
of a killed holder left (:func:`~common.utils.files.remove_temporaries`). Within one process the lock is re-entrant: a
retry in the same Python session after an error takes the lock the first try left behind.

Where ``fcntl`` is missing (Windows) the lock is a no-op.

Example::

    with FolderLock(output_dir, "evaluation", "output_dir"):
        ...  # append rows
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from common.errors import RobustsegError
from common.utils.files import remove_temporaries

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "FolderLock", "locks_folder"]

LOCK_NAME = ".lock"
"""The lock file in a locked folder (present while a run holds it, or left by a killed one)."""

F = TypeVar("F", bound=Callable[..., Any])


class _Held:
    """A lock this process holds: its descriptor, how many times it was taken, the folders it created."""

    def __init__(self, fd: int, created: list[Path]) -> None:
        self.fd = fd
        self.count = 1
        self.created = created


_HELD: dict[Path, _Held] = {}
"""The locks of this process, by lock-file path."""


def _forget_in_child() -> None:
    # a forked child shares the parent's open lock file: close its copy (without unlocking, which would unlock the
    # parent's) so that the lock goes with the parent, not with the last of its data-loader workers
    for held in _HELD.values():
        try:
            os.close(held.fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first (what ``mkdir(parents=True)`` creates)."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file (it may be writing it right now)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"{record['owner']} (pid {record['pid']}, started {record['started']} on {record['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "run (pid unknown)"


class FolderLock:
    """An exclusive lock on an output folder, held from :meth:`acquire` to :meth:`release` (or a ``with`` block).

    Args:
        folder: the output folder (created if missing; folders it created are removed again on release if they are
            still empty, so a run refused for another reason leaves nothing behind).
        owner: what holds it, for the message another run gets: ``"evaluation"``, ``"training"``...
        parameter: the name of the setting that gave ``folder``, for the messages (``"output_dir"``).

    Raises:
        RobustsegError: (:meth:`acquire`) another process holds the lock.

    Example::

        lock = FolderLock("models", "training", "ckpt_dir").acquire()
        try:
            ...
        finally:
            lock.release()
    """

    def __init__(self, folder: str | os.PathLike, owner: str, parameter: str = "output folder") -> None:
        if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder):
            raise RobustsegError(f"{parameter} must be a folder path, got {folder!r}.")
        self.folder = Path(folder)
        self.owner = owner
        self.parameter = parameter
        self._path = self.folder.resolve() / LOCK_NAME
        self._taken = 0  # times this object took the lock (release undoes one each)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._taken > 0

    def acquire(self) -> FolderLock:
        """Take the lock, or stop with one line naming the run that holds it.

        Returns:
            This lock (so ``lock = FolderLock(...).acquire()`` reads well).

        Raises:
            RobustsegError: another process holds the lock.
            OSError: the folder cannot be created or written (named in the error).
        """
        if fcntl is None:
            self._taken += 1
            return self
        held = _HELD.get(self._path)
        if held is not None:
            held.count += 1
            self._taken += 1
            return self
        folder = self._path.parent
        created = _missing_parents(folder)
        for _ in range(10):
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # a releasing holder removed the folder it had created: make it again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RobustsegError(
                    f"{self.parameter} {self.folder}: another {holder} is writing here; wait for it or use another "
                    "folder."
                ) from None
            try:
                current = os.stat(self._path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)  # its holder removed the file between our open and our lock: lock the one there now
        else:
            raise RobustsegError(f"{self._path}: could not be locked in 10 tries; is another run starting here?")
        record = {"owner": self.owner, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "host": socket.gethostname()}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        _HELD[self._path] = _Held(fd, created)
        remove_temporaries(folder)  # what the writes of a killed holder left: the folder is ours now
        self._taken += 1
        return self

    def release(self) -> None:
        """Give the lock back (a no-op if this object does not hold it); the last release removes the lock file."""
        if not self._taken:
            return
        self._taken -= 1
        held = _HELD.get(self._path)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[self._path]
        try:
            # removed while still locked: a run that opened it meanwhile sees it is gone once it gets the lock
            if os.path.samestat(os.fstat(held.fd), os.stat(self._path)):
                self._path.unlink()
        except OSError:
            pass
        os.close(held.fd)
        for folder in held.created:
            try:
                folder.rmdir()  # only if the run left it empty
            except OSError:
                break

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FolderLock({os.fspath(self.folder)!r}, owner={self.owner!r}, held={self.held})"


def locks_folder(parameter: str, owner: str) -> Callable[[F], F]:
    """Decorate a function so that it holds the :class:`FolderLock` of its argument ``parameter`` while it runs.

    Args:
        parameter: the name of the function's output-folder argument.
        owner: what holds the lock (see :class:`FolderLock`).

    Example::

        @locks_folder("out", "robustseg certify")
        def run_certification(bundle, data, out, ...): ...
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return function(*args, **kwargs)  # Python's own message for a wrong call
            bound.apply_defaults()
            with FolderLock(bound.arguments[parameter], owner, parameter):
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
