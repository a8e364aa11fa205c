"""``precision: auto`` (common/engines/precision.py): forced settings, the measured choice and its guards."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from common.engines import precision as precision_module
from common.engines.precision import PrecisionChoice, choose_precision, clear_cache
from common.errors import RobustsegError

SHAPE = (2, 4, 8, 8, 8)


def _net(channels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(4, 6, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Conv3d(6, channels, 1))


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    """A clean cache, and a CPU that is worth measuring (the flag check has its own test)."""
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: None)
    clear_cache()
    yield
    clear_cache()


def _fake_timing(monkeypatch, fp32_s: float, amp_s: float, flip: float = 0.0) -> list[int]:
    """Time fp32 and autocast passes as given; flip the sign of the first ``flip`` fraction of the autocast
    gradient's voxels. Returns a list that counts the timed calls."""
    calls = []

    def timed(run, repeats, device, give_up=math.inf):
        grad = run()
        amp = len(calls) == 1
        calls.append(repeats)
        if amp and flip:
            flat = grad.flatten().clone()
            n = int(flip * flat.numel())
            flat[:n] = -flat[:n]
            grad = flat.view_as(grad)
        return (amp_s if amp else fp32_s), grad

    monkeypatch.setattr(precision_module, "_timed", timed)
    return calls


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_forced_precision_is_not_measured(forced, monkeypatch):
    monkeypatch.setattr(precision_module, "_timed", lambda *a: pytest.fail("measured a forced precision"))
    choice = choose_precision(forced, _net(), SHAPE, "cpu")
    assert (choice.precision, choice.requested, choice.amp) == (forced, forced, forced != "fp32")
    assert choice.fp32_seconds is None and "explicitly" in choice.reason


@pytest.mark.parametrize(
    ("fp32_s", "amp_s", "flip", "expected"),
    [
        (1.0, 0.5, 0.0, "bf16"),  # twice as fast, same signs
        (1.0, 0.95, 0.0, "fp32"),  # faster, but within the timing margin
        (1.0, 2.5, 0.0, "fp32"),  # slower (a CPU without AMX or AVX512-BF16)
        (1.0, 0.5, 0.05, "fp32"),  # fast, but 5 % of the gradient signs differ
    ],
)
def test_auto_chooses_autocast_only_when_faster_and_faithful(fp32_s, amp_s, flip, expected, monkeypatch):
    _fake_timing(monkeypatch, fp32_s, amp_s, flip)
    choice = choose_precision("auto", _net(), SHAPE, "cpu")
    assert choice.precision == expected
    assert choice.requested == "auto" and choice.device == "cpu"
    assert choice.fp32_seconds == fp32_s and choice.amp_seconds == amp_s
    assert choice.sign_agreement == pytest.approx(1 - flip, abs=0.01)
    assert expected in choice.reason and "bf16" in choice.reason
    assert choice.as_dict()["precision"] == expected


def test_real_measurement_leaves_the_network_as_found():
    net = _net()
    net.train()
    net[2].eval()
    net[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    choice = choose_precision("auto", net, SHAPE, "cpu", repeats=1)
    assert choice.precision in ("fp32", "bf16")
    assert choice.fp32_seconds > 0 and choice.amp_seconds > 0 and 0 <= choice.sign_agreement <= 1
    assert net.training and net[0].training and not net[2].training
    assert not net[0].weight.requires_grad and net[3].weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_sigmoid_region_outputs_are_measured_with_the_region_soft_dice(monkeypatch):
    """A 3-channel network (sigmoid logits of WT, TC, ET, a Model Zoo bundle) is measured like a softmax one; the
    gradient is that of the attacks' soft Dice for region outputs."""
    seen = []
    real = precision_module._fwd_bwd
    monkeypatch.setattr(precision_module, "_fwd_bwd", lambda *a: seen.append(real(*a)) or seen[-1])
    _fake_timing(monkeypatch, 1.0, 0.5)
    choice = choose_precision("auto", _net(3), SHAPE, "cpu")
    assert choice.precision == "bf16" and choice.sign_agreement is not None
    assert seen and all(torch.isfinite(g).all() and (g != 0).any() for g in seen)


def test_an_output_of_neither_convention_is_refused(monkeypatch):
    _fake_timing(monkeypatch, 1.0, 0.5)
    with pytest.raises(RobustsegError, match=r"^logits: 5 output channels, expected 4 .* or 3 ") as info:
        choose_precision("auto", _net(5), SHAPE, "cpu")
    assert "\n" not in str(info.value)


def test_measurement_is_cached_per_network_and_shape(monkeypatch):
    calls = _fake_timing(monkeypatch, 1.0, 0.5)
    net = _net()
    first = choose_precision("auto", net, SHAPE, "cpu")
    assert choose_precision("auto", net, SHAPE, "cpu") is first
    assert len(calls) == 2
    choose_precision("auto", net, (1, 4, 8, 8, 8), "cpu")
    assert len(calls) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp64"}, r"precision.*'fp64'"),
        ({"precision": "fp16"}, r"precision 'fp16' needs a CUDA device.*cpu"),
        ({"shape": (4, 8)}, r"shape must be \(B, C, \*spatial\) with every size >= 1, got \(4, 8\)"),
        ({"shape": (1, 4, 0, 8)}, r"shape must be .* got \(1, 4, 0, 8\)"),
        ({"shape": "abc"}, r"shape must be a sequence of integers"),
        ({"repeats": 0}, r"repeats"),
        ({"min_agreement": 1.5}, r"min_agreement"),
        ({"min_speedup": 0}, r"min_speedup"),
    ],
)
def test_bad_settings_raise_one_clear_error(kwargs, match):
    settings = {"precision": "auto", "shape": SHAPE, **kwargs}
    precision, shape = settings.pop("precision"), settings.pop("shape")
    with pytest.raises(RobustsegError, match=match):
        choose_precision(precision, _net(), shape, "cpu", **settings)


def test_choice_properties():
    assert PrecisionChoice("fp16", "fp16", "cuda", "x").dtype == "float16"
    assert PrecisionChoice("bf16", "auto", "cpu", "x").dtype == "bfloat16"
    assert not PrecisionChoice("fp32", "auto", "cpu", "x").amp


def test_cpu_without_native_bf16_keeps_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(precision_module, "_timed", lambda *a: pytest.fail("measured on a CPU without bf16"))
    choice = choose_precision("auto", _net(), SHAPE, "cpu")
    assert choice.precision == "fp32" and "avx512_bf16" in choice.reason and choice.fp32_seconds is None


@pytest.mark.parametrize(("flags", "expected"), [("fpu avx2 avx512f", False), ("fpu avx512_bf16", True),
                                                  ("fpu amx_bf16 amx_tile", True), ("", None)])  # fmt: skip
def test_cpu_flags_are_read_from_cpuinfo(flags, expected, monkeypatch, tmp_path):
    monkeypatch.undo()  # the real function
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n" if flags else "processor\t: 0\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))  # fmt: skip
    assert precision_module.cpu_has_bf16() is expected


def test_a_hopeless_first_pass_ends_the_measurement():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)
        return torch.zeros(1)

    seconds, _ = precision_module._timed(slow, 3, torch.device("cpu"), give_up=0.001)
    assert len(calls) == 1 and seconds >= 0.02
    precision_module._timed(slow, 3, torch.device("cpu"))
    assert len(calls) == 1 + 4
