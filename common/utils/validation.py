"""Argument checks with one-line messages that name the argument, the bad value and what was expected.

The house rule (``../STYLE.md``): constructors check their arguments at once and raise
:class:`~common.errors.RobustsegError` (a ``ValueError``) saying which one is wrong and why, never a late shape
error. Booleans are refused where numbers are expected (``True`` is an ``int`` to Python, never a sensible epsilon
or step count). :func:`look_up_option` is MONAI's ``monai.utils.look_up_option`` with our error type and a
"did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from enum import Enum
from typing import Any, TypeVar

from common.errors import RobustsegError

__all__ = [
    "check_bool",
    "check_device",
    "check_int",
    "check_number",
    "check_optional_int",
    "is_integer",
    "is_number",
    "look_up_option",
]

T = TypeVar("T")


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy) and not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (int, float, NumPy scalar) and not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_text(minimum: float | None, maximum: float | None, min_inclusive: bool, max_inclusive: bool) -> str:
    low = "" if minimum is None else f"{'>=' if min_inclusive else '>'} {minimum:g}"
    high = "" if maximum is None else f"{'<=' if max_inclusive else '<'} {maximum:g}"
    if low and high:
        if min_inclusive and max_inclusive:
            return f" in [{minimum:g}, {maximum:g}]"
        return f" in {'[' if min_inclusive else '('}{minimum:g}, {maximum:g}{']' if max_inclusive else ')'}"
    return f" {low or high}" if low or high else ""


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """Check that ``value`` is an integer within ``[minimum, maximum]``; return it as an ``int``.

    Args:
        name: the argument's name, as the user wrote it.
        value: the value given.
        minimum: the smallest allowed value (``None``: no bound).
        maximum: the largest allowed value (``None``: no bound).
        hint: a few words on what the argument is, added to the message in parentheses.

    Returns:
        ``int(value)``.

    Raises:
        RobustsegError: ``"<name> must be an integer >= <minimum>[ (<hint>)], got <value>."``.
    """
    ok = is_integer(value)
    if ok and minimum is not None and value < minimum:  # type: ignore[operator]
        ok = False
    if ok and maximum is not None and value > maximum:  # type: ignore[operator]
        ok = False
    if not ok:
        note = f" ({hint})" if hint else ""
        raise RobustsegError(
            f"{name} must be an integer{_range_text(minimum, maximum, True, True)}{note}, got {value!r}."
        )
    return int(value)  # type: ignore[arg-type]


def check_optional_int(name: str, value: object, minimum: int | None = None) -> int | None:
    """:func:`check_int` that also accepts ``None`` (and returns it)."""
    if value is None:
        return None
    try:
        return check_int(name, value, minimum)
    except RobustsegError:
        bound = "" if minimum is None else f" >= {minimum}"
        raise RobustsegError(f"{name} must be None or an integer{bound}, got {value!r}.") from None


def check_number(
    name: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    hint: str = "",
) -> float:
    """Check that ``value`` is a finite real number within the given bounds; return it as a ``float``.

    Args:
        name: the argument's name, as the user wrote it.
        value: the value given.
        minimum: the lower bound (``None``: none).
        maximum: the upper bound (``None``: none).
        min_inclusive: whether ``minimum`` itself is allowed.
        max_inclusive: whether ``maximum`` itself is allowed.
        hint: a few words on what the argument is, added to the message in parentheses.

    Returns:
        ``float(value)``.

    Raises:
        RobustsegError: ``"<name> must be a finite number <range>[ (<hint>)], got <value>."``.
    """
    ok = is_number(value) and math.isfinite(value)  # type: ignore[arg-type]
    if ok and minimum is not None:
        ok = value >= minimum if min_inclusive else value > minimum  # type: ignore[operator]
    if ok and maximum is not None:
        ok = value <= maximum if max_inclusive else value < maximum  # type: ignore[operator]
    if not ok:
        note = f" ({hint})" if hint else ""
        bounds = _range_text(minimum, maximum, min_inclusive, max_inclusive)
        raise RobustsegError(f"{name} must be a finite number{bounds}{note}, got {value!r}.")
    return float(value)  # type: ignore[arg-type]


def check_bool(name: str, value: object) -> bool:
    """Check that ``value`` is a boolean (MONAI's bundle CLI turns ``--flag false`` into the truthy ``"false"``).

    Raises:
        RobustsegError: for anything but ``True`` or ``False``, with the Python literals to use.
    """
    if not isinstance(value, bool):
        raise RobustsegError(f"{name} must be True or False (Python literals on the bundle CLI), got {value!r}.")
    return value


def check_device(name: str, value: object) -> str:
    """Check that ``value`` names a CPU or CUDA device this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``); return
    its canonical text, safe to put into a config expression (``"$torch.device('cuda:1')"``).

    Raises:
        RobustsegError: for anything but such a string, or a CUDA device this machine does not have.
    """
    import torch  # here, not at the top: this module is imported by commands that never load torch

    text = value if isinstance(value, str) else None
    try:
        device = torch.device(text) if text is not None and text.isprintable() else None
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise RobustsegError(f"{name} must be a torch device: 'cpu', 'cuda' or 'cuda:<index>', got {value!r}.")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise RobustsegError(f"{name}: {value!r} is not available on this machine ({count} CUDA device(s)).")
    return str(device)


def look_up_option(name: str, value: Any, supported: Iterable[T] | type[Enum], hint: str = "") -> T:
    """Return the supported option equal to ``value``, or stop naming the options and the closest one.

    Like ``monai.utils.look_up_option``; an :class:`~enum.Enum` class is accepted as the set of options, and a
    string equal to a member's value finds the member.

    Args:
        name: the argument's name, as the user wrote it.
        value: the value given.
        supported: the allowed values (a sequence, a mapping's keys, or an enum class).
        hint: a few words on what the argument is, added to the message in parentheses.

    Returns:
        The matching option (the enum member for an enum class).

    Raises:
        RobustsegError: ``"<name> must be one of [...][ (<hint>)], got <value> (did you mean '<closest>'?)."``.
    """
    options = list(supported)
    for option in options:
        if value is option or (type(value) is not bool and value == option):
            return option
    shown = [o.value if isinstance(o, Enum) else o for o in options]
    texts = [o for o in shown if isinstance(o, str)]
    close = difflib.get_close_matches(value, texts, n=1) if isinstance(value, str) else []
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    note = f" ({hint})" if hint else ""
    raise RobustsegError(f"{name} must be one of {shown}{note}, got {value!r}{suggestion}.")
