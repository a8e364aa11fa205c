"""Small shared helpers with no torch or MONAI import: argument checks, atomic file writing, folder locks,
enumerations.

Mirrors ``monai.utils``: :mod:`~common.utils.validation` is our ``look_up_option`` and friends (messages that name
the argument, the bad value and what was expected, with a "did you mean" suggestion), :mod:`~common.utils.files`
writes files atomically, :mod:`~common.utils.lock` gives a run its output folder alone, and
:mod:`~common.utils.enums` holds the project's vocabularies (``Defense``, ``Net``, ``Threat``) as string enumerations,
and :mod:`~common.utils.allocator` makes glibc keep freed tensor memory for reuse (without it, page faults took up to
a third of a short run of 3D network passes on a CPU).
"""

from __future__ import annotations

from common.utils.allocator import keep_freed_memory
from common.utils.enums import Defense, Net, StrEnum, Threat
from common.utils.files import atomic_write, write_atomic
from common.utils.lock import FolderLock, locks_folder
from common.utils.validation import (
    check_bool,
    check_int,
    check_number,
    check_optional_int,
    is_integer,
    is_number,
    look_up_option,
)

__all__ = [
    "Defense",
    "FolderLock",
    "Net",
    "StrEnum",
    "Threat",
    "atomic_write",
    "check_bool",
    "check_int",
    "check_number",
    "check_optional_int",
    "is_integer",
    "is_number",
    "keep_freed_memory",
    "look_up_option",
    "locks_folder",
    "write_atomic",
]
