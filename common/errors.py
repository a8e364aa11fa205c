"""User-facing errors and the one-line error contract.

A bad input (a missing or corrupt NIfTI, mismatched modalities, NaN voxels, labels outside {0, 1, 2, 4}, a
checkpoint that does not fit, a negative epsilon) must stop the program with *one* line naming the file or
parameter, what is wrong and what was expected, and a non-zero exit status -- never a traceback.

Every such check raises :class:`RobustsegError` (a ``ValueError``, so library users can catch it as usual). The
CLI prints its message; for ``python -m monai.bundle run ...`` the hook installed by :func:`install_excepthook`
(done when :mod:`common` is imported, which every bundle config does first) finds a ``RobustsegError`` anywhere
in the exception chain (MONAI wraps errors raised while instantiating config items) and prints only its message.
Set ``ROBUSTSEG_TRACEBACK=1`` to see the full traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
from types import TracebackType

__all__ = ["RobustsegError", "end_progress_bars", "find_user_error", "install_excepthook", "format_user_error"]


class RobustsegError(ValueError):
    """A problem with the user's input or settings, reported as one line (file or parameter, problem, expectation)."""


_FILESYSTEM_ERRNOS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
    errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP,
})  # fmt: skip
"""``OSError`` numbers that describe the user's files or disk (a path that is not a folder, a read-only or full
disk), not a bug: reported as one line like a :class:`RobustsegError`."""


def _filesystem_error(exc: OSError) -> RobustsegError | None:
    if exc.errno not in _FILESYSTEM_ERRNOS:
        return None
    what = (exc.strerror or str(exc)).rstrip(".").lower()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{exc.filename}: " if exc.filename else ""
        return RobustsegError(f"{where}{what}; expected free space for the output (nothing was kept of it).")
    if not exc.filename:
        return None
    also = f" -> {exc.filename2}" if exc.filename2 else ""
    return RobustsegError(f"{exc.filename}{also}: {what}; expected a writable/readable path of the right kind.")


def find_user_error(exc: BaseException | None) -> RobustsegError | None:
    """Return the first :class:`RobustsegError` in ``exc``'s cause/context chain, or ``None``.

    Without one, a file-system ``OSError`` in the chain (a path that is not a folder, permission denied, a
    read-only or full disk; :data:`_FILESYSTEM_ERRNOS`) is the user's error too, turned into one.

    Args:
        exc: the exception raised to the top level.

    Returns:
        The user-facing error that caused ``exc``, if any.
    """
    chain: list[BaseException] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RobustsegError):
            return exc
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for link in chain:
        if isinstance(link, OSError):
            found = _filesystem_error(link)
            if found is not None:
                return found
    return None


def format_user_error(err: BaseException) -> str:
    """One line for the terminal: ``error: <message>`` with newlines folded."""
    return "error: " + " ".join(str(err).split())


def end_progress_bars() -> None:
    """Close the tqdm progress bars a failed run left open, so that an error line printed next starts a line of its own
    (an open bar leaves the cursor after its last redraw). tqdm is not imported here: without it, no bar is open."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 -- a bar that cannot close must not hide the error
            pass


_previous_hook = sys.excepthook


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    user_error = find_user_error(exc)
    if user_error is None or os.environ.get("ROBUSTSEG_TRACEBACK"):
        _previous_hook(exc_type, exc, tb)
        return
    end_progress_bars()
    print(format_user_error(user_error), file=sys.stderr)


def install_excepthook() -> None:
    """Print uncaught :class:`RobustsegError` (also when wrapped by MONAI) as one line instead of a traceback.

    Other exceptions keep the default traceback; the interpreter still exits with status 1.
    """
    if sys.excepthook is not _hook:
        sys.excepthook = _hook
