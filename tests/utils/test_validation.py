"""Tests for :mod:`common.utils.validation`: every check accepts what it should and names the bad value otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import RobustsegError
from common.utils.enums import Defense
from common.utils.validation import (
    check_bool,
    check_device,
    check_int,
    check_number,
    check_optional_int,
    is_integer,
    is_number,
    look_up_option,
)


@pytest.mark.parametrize(
    "value, expected",
    [(3, True), (np.int64(3), True), (True, False), (3.0, False), ("3", False), (None, False)],
)
def test_is_integer(value, expected):
    assert is_integer(value) is expected


@pytest.mark.parametrize(
    "value, expected",
    [(3, True), (2.5, True), (np.float32(0.5), True), (False, False), ("1", False), (None, False)],
)
def test_is_number(value, expected):
    assert is_number(value) is expected


@pytest.mark.parametrize(
    "value, minimum, maximum", [(1, 1, None), (5, None, 5), (np.int32(7), 0, 10), (-4, None, None)]
)
def test_check_int_accepts(value, minimum, maximum):
    result = check_int("steps", value, minimum, maximum)
    assert result == value and type(result) is int


@pytest.mark.parametrize(
    "value, minimum, maximum, message",
    [
        (0, 1, None, r"^steps must be an integer >= 1, got 0\.$"),
        (True, 1, None, r"^steps must be an integer >= 1, got True\.$"),
        (2.0, 1, None, r"^steps must be an integer >= 1, got 2\.0\.$"),
        (11, 0, 10, r"^steps must be an integer in \[0, 10\], got 11\.$"),
        ("3", None, None, r"^steps must be an integer, got '3'\.$"),
    ],
)
def test_check_int_refuses(value, minimum, maximum, message):
    with pytest.raises(RobustsegError, match=message):
        check_int("steps", value, minimum, maximum)


def test_check_int_hint():
    with pytest.raises(RobustsegError, match=r"^workers must be an integer >= 1 \(processes\), got 0\.$"):
        check_int("workers", 0, 1, hint="processes")


@pytest.mark.parametrize("value, expected", [(None, None), (4, 4)])
def test_check_optional_int(value, expected):
    assert check_optional_int("seed", value, 0) == expected


@pytest.mark.parametrize("value", [-1, True, 1.5])
def test_check_optional_int_refuses(value):
    with pytest.raises(RobustsegError, match=rf"^seed must be None or an integer >= 0, got {value!r}\.$"):
        check_optional_int("seed", value, 0)


@pytest.mark.parametrize(
    "value, kwargs",
    [(0.5, {"minimum": 0, "maximum": 1}), (0, {"minimum": 0}), (1, {"maximum": 1}), (-3.5, {}), (np.float64(2), {})],
)
def test_check_number_accepts(value, kwargs):
    result = check_number("beta", value, **kwargs)
    assert result == value and type(result) is float


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (float("nan"), {}, r"^beta must be a finite number, got nan\.$"),
        (float("inf"), {}, r"^beta must be a finite number, got inf\.$"),
        (True, {}, r"^beta must be a finite number, got True\.$"),
        ("0.5", {}, r"^beta must be a finite number, got '0.5'\.$"),
        (1.5, {"minimum": 0, "maximum": 1}, r"^beta must be a finite number in \[0, 1\], got 1\.5\.$"),
        (0, {"minimum": 0, "min_inclusive": False}, r"^beta must be a finite number > 0, got 0\.$"),
        (1, {"minimum": 0, "maximum": 1, "max_inclusive": False}, r"in \[0, 1\), got 1\.$"),
        (-1, {"minimum": 0, "hint": "a weight"}, r"^beta must be a finite number >= 0 \(a weight\), got -1\.$"),
    ],
)
def test_check_number_refuses(value, kwargs, message):
    with pytest.raises(RobustsegError, match=message):
        check_number("beta", value, **kwargs)


@pytest.mark.parametrize("value", [True, False])
def test_check_bool_accepts(value):
    assert check_bool("adaptive", value) is value


@pytest.mark.parametrize("value", ["false", 0, None])
def test_check_bool_refuses(value):
    with pytest.raises(RobustsegError, match=r"^adaptive must be True or False .*, got"):
        check_bool("adaptive", value)


@pytest.mark.parametrize(("value", "expected"), [("cpu", "cpu"), ("cpu:0", "cpu:0")])
def test_check_device_accepts(value, expected):
    assert check_device("device", value) == expected


@pytest.mark.parametrize("value", ["gpu", "cpu')", "cuda:-1", "meta", "", 0, None, ["cpu"], "cp\nu"])
def test_check_device_refuses(value):
    with pytest.raises(RobustsegError, match=r"^device must be a torch device: 'cpu', 'cuda' or 'cuda:<index>', got"):
        check_device("device", value)


def test_check_device_refuses_a_cuda_device_this_machine_lacks():
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(RobustsegError, match=rf"^device: 'cuda:{count}' is not available on this machine"):
        check_device("device", f"cuda:{count}")


def test_look_up_option_returns_the_option():
    assert look_up_option("loss", "ce", ("soft_dice", "ce")) == "ce"
    assert look_up_option("spatial_dims", 3, (2, 3)) == 3
    member = look_up_option("defense", "distillation", Defense)
    assert member is Defense.DISTILLATION


@pytest.mark.parametrize(
    "value, options, message",
    [
        (
            "soft_dise",
            ("soft_dice", "ce"),
            r"^loss must be one of \['soft_dice', 'ce'\], got 'soft_dise' \(did you mean 'soft_dice'\?\)\.$",
        ),
        ("xyz", ("soft_dice", "ce"), r"^loss must be one of \['soft_dice', 'ce'\], got 'xyz'\.$"),
        (True, (1, 2), r"^loss must be one of \[1, 2\], got True\.$"),
        ("distilation", Defense, r"got 'distilation' \(did you mean 'distillation'\?\)"),
    ],
)
def test_look_up_option_refuses(value, options, message):
    with pytest.raises(RobustsegError, match=message):
        look_up_option("loss", value, options)
