"""``precision: auto``: bf16 autocast only where a short measurement on this device shows it faster and faithful.

Which precision is fastest depends on the machine: on a Xeon with AMX a 3D UNet's forward and backward pass ran 3.5x
faster under ``torch.autocast("cpu", dtype=torch.bfloat16)``, on an AMD EPYC with AVX512-BF16 in 0.33-0.69 of the
fp32 time, and on a 2-core EPYC without either 2-3x slower. So robustseg measures instead of assuming:
:func:`choose_precision` times a few forward and backward passes of the actual network at the actual input shape in
fp32 and under autocast, compares the signs of the two input gradients (what a gradient-sign attack steps along), and
picks the reduced precision only when it is at least ``min_speedup`` times faster and the signs agree on at least
``min_agreement`` of the voxels. fp32 stays the reference and the fallback; ``fp32``, ``bf16`` and ``fp16`` (CUDA
only) can be forced. The choice and its measurement (:meth:`PrecisionChoice.as_dict`) go into the training record,
``settings.json`` and the report.

The measurement is cached per process (device, thread count, network class and size, input shape), so the bundles
of one demo run measure once. On a CPU whose flags (``/proc/cpuinfo``) show neither ``avx512_bf16`` nor
``amx_bf16``, bf16 runs emulated (a 3D UNet's forward and backward pass took 45x the fp32 time on a 2-core EPYC
without them), so ``auto`` keeps fp32 without measuring; and a measurement stops after the first autocast pass when
that pass alone took more than :data:`GIVE_UP` times the fp32 pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from common.attacks.gradient import input_gradient
from common.data.labels import logits_to_labels
from common.errors import RobustsegError
from common.losses.by_output import ByOutput
from common.losses.regions import region_soft_dice
from common.losses.soft_dice import SoftDiceLoss
from common.networks.modes import eval_mode
from common.utils.validation import check_int, check_number, look_up_option

__all__ = [
    "GIVE_UP",
    "MIN_AGREEMENT",
    "MIN_SPEEDUP",
    "PRECISIONS",
    "PrecisionChoice",
    "choose_precision",
    "clear_cache",
    "cpu_has_bf16",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Accepted ``precision`` settings."""

MIN_AGREEMENT = 0.97
"""``auto`` keeps fp32 unless the reduced-precision input gradient has the fp32 sign in at least this fraction of
voxels (the bf16 i-FGSM of ``benchmarks/bench_attacks.py`` agreed on 97.4-98.6 %)."""

MIN_SPEEDUP = 1.1
"""``auto`` keeps fp32 unless autocast runs a forward and backward pass at least this many times faster (a margin over
timing noise)."""

GIVE_UP = 10.0
"""Stop measuring autocast when its first pass takes more than this many fp32 passes (it cannot win)."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_CACHE: dict[tuple[Any, ...], PrecisionChoice] = {}


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a workflow runs at, and why.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        requested: the setting it came from (``"auto"`` or the forced precision).
        device: the device type measured (``"cpu"``, ``"cuda"``).
        reason: one sentence: measured and chosen, forced, or why autocast was not tried.
        fp32_seconds: the median time of one fp32 forward and backward pass (``None`` when not measured).
        amp_seconds: the same under autocast (``None`` when not measured).
        sign_agreement: fraction of input voxels whose autocast gradient has the fp32 gradient's sign (``None`` when
            not measured).
    """

    precision: str
    requested: str
    device: str
    reason: str
    fp32_seconds: float | None = None
    amp_seconds: float | None = None
    sign_agreement: float | None = None

    @property
    def amp(self) -> bool:
        """Whether to run under autocast."""
        return self.precision != "fp32"

    @property
    def dtype(self) -> str:
        """The autocast dtype's name for :class:`~common.engines.inferers.AutocastInferer` (``"bfloat16"`` in fp32,
        where it is unused)."""
        return "float16" if self.precision == "fp16" else "bfloat16"

    def as_dict(self) -> dict[str, Any]:
        """The choice and its measurement, JSON-ready (for records, ``settings.json`` and the report)."""
        return asdict(self)


def clear_cache() -> None:
    """Forget the measurements of this process (tests; a changed machine state)."""
    _CACHE.clear()


def _fwd_bwd(network: Callable[..., Tensor], images: Tensor, labels: Tensor, dtype: torch.dtype | None) -> Tensor:
    x = images.detach().requires_grad_(True)
    with torch.autocast(device_type=images.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = network(x)
    # the attacks' "soft_dice": softmax logits (4 channels) or sigmoid region logits (3, WT/TC/ET) alike
    loss = ByOutput(SoftDiceLoss(), region_soft_dice)(logits.float(), labels)
    return input_gradient(loss, x, fp16=dtype == torch.float16)


def cpu_has_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``); ``None``
    where the flags cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = {word for line in handle if line.startswith("flags") for word in line.split(":", 1)[1].split()}
    except OSError:
        return None
    return any(flag in flags for flag in _BF16_FLAGS) if flags else None


def _timed(
    run: Callable[[], Tensor], repeats: int, device: torch.device, give_up: float = math.inf
) -> tuple[float, Tensor]:
    """The median time of ``repeats`` runs after a warm-up run, and the last result; after the warm-up alone when
    it took longer than ``give_up`` seconds (its time is returned then)."""
    start = time.perf_counter()
    grad = run()  # warm-up: kernel selection, oneDNN primitive creation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first = time.perf_counter() - start
    if first > give_up:
        return first, grad
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        grad = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], grad


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise RobustsegError(f"shape must be a sequence of integers (B, C, *spatial), got {shape!r}.") from None
    if len(dims) < 3 or any(d < 1 for d in dims):
        raise RobustsegError(f"shape must be (B, C, *spatial) with every size >= 1, got {shape!r}.")
    return dims


def choose_precision(
    precision: str,
    network: nn.Module,
    shape: Sequence[int],
    device: str | torch.device | None = None,
    *,
    repeats: int = 2,
    min_speedup: float = MIN_SPEEDUP,
    min_agreement: float = MIN_AGREEMENT,
    seed: int = 0,
) -> PrecisionChoice:
    """Resolve a ``precision`` setting for ``network`` on inputs of ``shape``; measure when it is ``"auto"``.

    ``auto`` keeps fp32 without measuring on a CPU whose flags show no native bf16 (:func:`cpu_has_bf16`). Otherwise
    it tries bf16 (on CUDA without bf16 support, fp16): it runs ``1 + repeats`` forward and backward passes of
    the soft-Dice loss (the paper's attack loss) on a seeded random input of ``shape`` against the network's own fp32
    prediction, in fp32 and under autocast, in eval mode (the network's train/eval flags are restored and its
    parameters get no gradient). It chooses autocast when ``fp32_seconds >= min_speedup * amp_seconds`` and the
    input-gradient signs agree on ``>= min_agreement`` of the voxels; fp32 otherwise.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
        network: the segmentation network: softmax logits ``(B, 4, *spatial)``, one channel per BraTS label, or
            sigmoid region logits ``(B, 3, *spatial)`` (:mod:`common.data.labels`).
        shape: the input shape to measure at, ``(B, C, *spatial)``: the workflow's batch and patch.
        device: the device to measure on (default: the network's).
        repeats: timed passes per precision after one warm-up, >= 1.
        min_speedup: the speed-up autocast must show, > 0.
        min_agreement: the gradient-sign agreement autocast must keep, in [0, 1].
        seed: seed of the random input.

    Returns:
        The choice, with its measurement when one was made.

    Raises:
        RobustsegError: for an unknown ``precision``, ``fp16`` without CUDA, or a bad ``shape``/setting.
    """
    precision = look_up_option("precision", precision, PRECISIONS)
    shape = _check_shape(shape)
    repeats = check_int("repeats", repeats, 1)
    min_speedup = check_number("min_speedup", min_speedup, 0, min_inclusive=False)
    min_agreement = check_number("min_agreement", min_agreement, 0, 1)
    if device is None:
        parameter = next(network.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise RobustsegError(f"precision 'fp16' needs a CUDA device (autocast fp16), got device {device}.")
    if precision != "auto":
        return PrecisionChoice(precision, precision, device.type, f"{precision} set explicitly")
    if device.type == "cuda":
        amp_name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif device.type == "cpu":
        amp_name = "bf16"
        if cpu_has_bf16() is False:
            reason = f"this CPU has neither of {list(_BF16_FLAGS)}: bf16 would run emulated, far slower; fp32"
            return PrecisionChoice("fp32", "auto", "cpu", reason)
    else:
        return PrecisionChoice("fp32", "auto", device.type, f"autocast is not measured on {device.type}")
    size = sum(p.numel() for p in network.parameters())
    key = (str(device), torch.get_num_threads(), type(network).__qualname__, size, shape, min_speedup, min_agreement)
    if key in _CACHE:
        return _CACHE[key]
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(shape, generator=generator).to(device)
    flags = [(p, p.requires_grad) for p in network.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with eval_mode(network), torch.enable_grad():
            with torch.no_grad():
                labels = logits_to_labels(network(images))
            fp32_s, fp32_grad = _timed(lambda: _fwd_bwd(network, images, labels, None), repeats, device)
            amp_s, amp_grad = _timed(
                lambda: _fwd_bwd(network, images, labels, _DTYPES[amp_name]), repeats, device, GIVE_UP * fp32_s
            )
    finally:
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)
    agreement = float((torch.sign(amp_grad) == torch.sign(fp32_grad)).float().mean())
    speedup = fp32_s / amp_s if amp_s > 0 else float("inf")
    chosen = amp_name if speedup >= min_speedup and agreement >= min_agreement else "fp32"
    reason = (
        f"measured {amp_name} at {speedup:.2f}x the fp32 speed with {100 * agreement:.1f} % gradient-sign agreement "
        f"(needs >= {min_speedup:g}x and >= {100 * min_agreement:g} %): {chosen}"
    )
    choice = PrecisionChoice(chosen, "auto", device.type, reason, fp32_s, amp_s, agreement)
    _CACHE[key] = choice
    return choice
