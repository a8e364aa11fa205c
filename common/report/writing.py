"""Writing the report's files all or nothing: a failure leaves no partial table set or report behind.

Every file is first written in full to a temporary file beside its destination (:func:`common.utils.files.
atomic_write`); only when all of them are written do they replace their destinations, in order. On an error the
temporary files are removed, and so are the folders this call created; files of an earlier report that the new one
does not produce are left in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import ExitStack

from common.errors import RobustsegError
from common.utils.files import atomic_write

__all__ = ["write_files"]


def _make_folder(path: str) -> bool:
    """Create ``path`` with its parents; return whether ``path`` itself is new."""
    new = not os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    return new


def write_files(out: str | os.PathLike, files: Mapping[str, str | bytes], what: str) -> list[str]:
    """Write ``files`` under the folder ``out``, all or nothing.

    Args:
        out: the output folder (created with its parents).
        files: relative path (``"tables.md"``, ``"figures/fig3.png"``) -> content; text is written as UTF-8, without
            newline translation.
        what: what the files are (``"tables"``, ``"report"``), for the error message.

    Returns:
        The paths written (``os.path.join(out, name)``), in the order of ``files``.

    Raises:
        RobustsegError: ``"out: cannot create the output folder ..."`` or ``"out: cannot write the <what> into ..."``
            (the latter caused by the ``OSError``, so a caller can tell a full or read-only disk from bad input).
    """
    folder = os.fspath(out)
    try:
        created = [folder] if _make_folder(folder) else []
    except OSError as exc:
        raise RobustsegError(f"out: cannot create the output folder {folder} ({exc.strerror}).") from None
    try:
        for sub in sorted({os.path.dirname(name) for name in files} - {""}):
            path = os.path.join(folder, sub)
            created += [path] if _make_folder(path) else []
        with ExitStack() as stack:
            # Entered last to first, so that on leaving the files replace their destinations first to last (a failed
            # replace hands its error to the files not yet replaced, which then only remove their temporary files).
            for name in reversed(list(files)):
                tmp = stack.enter_context(atomic_write(os.path.join(folder, name)))
                content = files[name]
                tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    except OSError as exc:
        for path in reversed(created):
            try:
                os.rmdir(path)
            except OSError:  # not empty: it holds files of an earlier report
                pass
        raise RobustsegError(f"out: cannot write the {what} into {folder} ({exc}).") from exc
    return [os.path.join(folder, name) for name in files]
