"""What every gradient attack shares: settings, the loss, the threat model, the iteration and the model's state.

An attack is a callable object, ``adv = attack(model, images, labels)``, so one attack object serves every model of an
evaluation sweep. A subclass holds only its update rule (:meth:`Attack.step`) and, where it needs one, its loss target
(:meth:`Attack.loss_labels`) or its start and restarts (:meth:`Attack.run`). The threat model (an L-inf or L2 ball
intersected with the valid range, :class:`ThreatModel`) owns the projection and the random start, so that no update
rule hard-codes the L-inf clamp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from common.attacks.gradient import input_gradient
from common.attacks.windows import windowed_logits
from common.data.labels import labels_to_indices, logits_to_labels
from common.data.task import BRATS, SegmentationTask, check_task
from common.errors import RobustsegError
from common.losses.by_output import ByOutput
from common.losses.regions import (
    RegionSegPGDLoss,
    region_balanced_cross_entropy,
    region_cospgd_loss,
    region_cross_entropy,
    region_jensen_shannon,
    region_masked_cross_entropy,
    region_soft_dice,
)
from common.losses.segmentation import (
    SegPGDLoss,
    balanced_cross_entropy,
    cospgd_loss,
    jensen_shannon,
    masked_cross_entropy,
)
from common.losses.soft_dice import SoftDiceLoss
from common.metrics.dice import region_dice
from common.networks.modes import eval_mode
from common.utils.validation import check_bool, check_int, check_number, look_up_option

__all__ = [
    "Attack",
    "AttackProbe",
    "AttackStep",
    "LOSSES",
    "NORMS",
    "STOP_CRITERIA",
    "StopCriterion",
    "ThreatModel",
    "ascent_direction",
    "better_iterate",
    "hard_dice",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _brats_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Voxel-averaged cross-entropy of softmax ``logits`` (B, 4, *spatial) against BraTS ``labels`` (B, 1, *spatial)
    (region logits get :func:`~common.losses.regions.region_cross_entropy` through :data:`LOSSES`)."""
    return F.cross_entropy(logits.float(), labels_to_indices(labels)[:, 0])


LOSSES: dict[str, Callable[[], LossFn]] = {
    "soft_dice": lambda: ByOutput(SoftDiceLoss(), region_soft_dice),
    "ce": lambda: ByOutput(_brats_cross_entropy, region_cross_entropy),
    "masked_ce": lambda: ByOutput(masked_cross_entropy, region_masked_cross_entropy),
    "balanced_ce": lambda: ByOutput(balanced_cross_entropy, region_balanced_cross_entropy),
    "js": lambda: ByOutput(jensen_shannon, region_jensen_shannon),
    "segpgd": lambda: ByOutput(SegPGDLoss(), RegionSegPGDLoss()),
    "cospgd": lambda: ByOutput(cospgd_loss, region_cospgd_loss),
}
"""Loss names an attack accepts: the paper's soft Dice (eq. 5, background ignored), cross-entropy, and the
segmentation attack losses of :mod:`common.losses.segmentation` (SEA's masked CE, class-balanced CE and
Jensen-Shannon; SegPGD; CosPGD). Each name builds a fresh :class:`~common.losses.by_output.ByOutput` per attack
(SegPGD's losses hold their step): softmax logits (4 channels) get the loss above, exactly as before; sigmoid region
logits (3 channels, WT, TC, ET; :mod:`common.data.labels`) get its counterpart of :mod:`common.losses.regions`; any
other channel count is refused in one line."""


def hard_dice(logits: Tensor, labels: Tensor) -> Tensor:
    """The scored Dice of each sample ``(B,)``: the mean over WT, TC and ET of :func:`common.metrics.dice.region_dice`
    of the predicted label map (:func:`~common.data.labels.logits_to_labels`: the argmax of softmax logits, the Model
    Zoo's rule for sigmoid region logits) against ``labels`` (what an evaluation reports, unlike the soft Dice an
    attack ascends).
    """
    return region_dice(logits_to_labels(logits), labels).mean(1)


def better_iterate(dice: Tensor, loss: Tensor, best_dice: Tensor, best_loss: Tensor) -> Tensor:
    """Per sample, whether an iterate scoring ``(dice, loss)`` beats the best so far: a lower hard Dice, or the same
    Dice and a higher attack loss (a NaN loss, of a sample not computed, never wins a tie)."""
    return (dice < best_dice) | ((dice == best_dice) & (loss > best_loss))


@dataclass(frozen=True)
class AttackStep:
    """What an attack reports after each step (paper Figs. 3-4 score every iterate of i-FGSM and ti-FGSM).

    The per-sample fields are what a batched evaluation writes per subject; :attr:`loss` and
    :attr:`zero_grad_fraction` are their batch means (what this record held before it became per-sample, kept so that
    a caller of a one-sample attack reads a number).

    Attributes:
        step: 1-based step number.
        adversarial: the iterate after this step, detached (the attack's return value after the last step).
        losses: per-sample attack loss ``(B,)`` at the iterate the gradient was taken at (the clean input for step 1;
            for a targeted attack, the loss towards the target), from the forward pass of that gradient.
        zero_grad_fractions: per-sample fraction ``(B,)`` of input voxels whose loss gradient is exactly 0. Close to 1
            means the step moves almost nothing: the gradient-masking signature of a saturated softmax
            (defensive distillation).
        restart: 0-based restart number (PGD with ``restarts > 1``); 0 otherwise.
        active: ``(B,)`` booleans, False for a sample that a stop criterion took out of the batch (its iterate, loss,
            zero-gradient fraction and prediction are carried forward unchanged); ``None`` when every sample was
            computed.
        predictions: BraTS label maps ``(B, 1, *spatial)``, the prediction
            (:func:`~common.data.labels.logits_to_labels`) of the logits of the same pass as
            :attr:`losses` (so at the iterate the gradient was taken at: the previous step's :attr:`adversarial`, the
            clean input for step 1); ``None`` without a callback, or while a sample left out of the whole run has
            none. A robustness evaluation scores iterate ``k`` with the predictions of record ``k + 1`` instead of one
            more forward pass.
        best_dices: attacks that return their best iterate (PGD, APGD): per sample ``(B,)``, the lowest scored hard
            Dice (:func:`hard_dice`) among the iterates scored so far, over this and the earlier restarts -- what the
            attack has found after this many gradient passes, the curve that shows whether it converged; ``None`` for
            the other attacks (their every iterate is scored).
    """

    step: int
    adversarial: Tensor
    losses: Tensor
    zero_grad_fractions: Tensor
    restart: int = 0
    active: Tensor | None = None
    predictions: Tensor | None = None
    best_dices: Tensor | None = None

    @property
    def loss(self) -> float:
        """The batch mean of :attr:`losses` (the soft-Dice and cross-entropy losses of the whole batch)."""
        return float(self.losses.mean())

    @property
    def zero_grad_fraction(self) -> float:
        """The batch mean of :attr:`zero_grad_fractions` (every sample has the same number of voxels)."""
        return float(self.zero_grad_fractions.mean())


@dataclass(frozen=True)
class AttackProbe:
    """The samples still in the batch at the iterate a gradient was just taken at: what a stop criterion sees.

    Attributes:
        step: 1-based step number about to be taken.
        restart: 0-based restart number.
        images: the iterate ``(n, C, *spatial)`` of the ``n`` samples still in the batch.
        logits: their logits as the loss saw them (divided by ``temperature``), detached.
        labels: the labels the loss aims at (the ground truth; a targeted attack's target map).
        losses: their attack losses ``(n,)``.
        zero_grad_fractions: their fractions ``(n,)`` of exactly-zero input gradients.
        task: the attack's task (:mod:`common.data.task`): how the logits are predicted and scored.
    """

    step: int
    restart: int
    images: Tensor
    logits: Tensor
    labels: Tensor
    losses: Tensor
    zero_grad_fractions: Tensor
    task: SegmentationTask = BRATS


StopCriterion = Callable[[AttackProbe], Tensor]
"""``criterion(probe) -> (n,) bool``: True for a sample whose attack is over (see :class:`Attack`, ``stop``)."""


def _gradient_vanished(probe: AttackProbe) -> Tensor:
    """A sample whose input gradient is exactly 0 in every voxel: a step along it (sign or normalised) leaves it where
    it is, so every later iterate of this run equals this one."""
    return probe.zero_grad_fractions == 1.0


def _dice_zero(probe: AttackProbe) -> Tensor:
    """A sample whose prediction (the task's, :meth:`~common.data.task.SegmentationTask.predict`, of the logits) has
    Dice 0 against ``probe.labels`` in every scored region or class."""
    return (probe.task.dice(probe.task.predict(probe.logits), probe.labels) == 0).all(dim=1)


STOP_CRITERIA: dict[str, StopCriterion] = {"gradient_vanished": _gradient_vanished, "dice_zero": _dice_zero}
"""Stop criteria by name (``stop="..."``): ``gradient_vanished`` (exact for attacks without restarts: the remaining
iterates are identical) and ``dice_zero`` (every region already lost against the labels the loss aims at; for the
worst-case ensembles, it changes the iterates reported after the stop)."""


def check_linf_radius(value: float, relative: bool, name: str = "epsilon") -> float:
    """Check the radius of an L-inf ball (an attack's epsilon, a noise radius); return it as a float.

    Raises:
        RobustsegError: if it is not a finite number, is negative, or exceeds 1 when relative to the image maximum.
    """
    value = check_number(name, value)
    if value < 0:
        raise RobustsegError(f"{name} must be >= 0, got {value}.")
    if relative and value > 1:
        raise RobustsegError(
            f"{name} must be <= 1 with relative=True (a fraction of each image's maximum intensity), got {value}."
        )
    return value


def check_radius(value: float, relative: bool, norm: str, name: str = "epsilon") -> float:
    """Check the radius of an attack's ball in the threat model ``norm``; return it as a float.

    An L-inf radius relative to the image maximum is at most 1 (:func:`check_linf_radius`). An L2 radius has no such
    bound: it measures the whole perturbation, over all ``C x D x H x W`` values, and the largest L2 distance within
    an image's range grows with the square root of their number.

    Raises:
        RobustsegError: if it is not a finite number, is negative, or (L-inf only) exceeds 1 when relative.
    """
    if norm == "linf":
        return check_linf_radius(value, relative, name)
    value = check_number(name, value)
    if value < 0:
        raise RobustsegError(f"{name} must be >= 0, got {value}.")
    return value


def _check_epsilon(epsilon: float, relative: bool) -> float:
    return check_linf_radius(epsilon, relative, "epsilon")


NORMS = ("linf", "l2")
"""The threat models an attack can be set to (``norm=``): ``"linf"``, every voxel within epsilon of its clean value
(the paper's, and the default), and ``"l2"``, the Euclidean norm of the whole perturbation within epsilon (the threat
model of randomized-smoothing certificates, Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via
randomized smoothing", ICML). :attr:`Attack.norms` says which of them an attack supports."""


def _per_sample_l2(values: Tensor) -> Tensor:
    """The L2 norm of each sample of ``values`` ``(B, ...)`` over all its non-batch dimensions, as ``(B, 1, ...)``."""
    return torch.linalg.vector_norm(values.flatten(1), dim=1).view(-1, *[1] * (values.ndim - 1))


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit ``norm`` for the gradient ``grad``, per sample.

    ``sign(grad)`` for L-inf (the maximiser of ``<grad, d>`` over ``||d||_inf <= 1``, the gradient-sign step of FGSM);
    ``grad / ||grad||_2`` for L2, the norm taken over all non-batch dimensions of each sample (the L2 step of Madry et
    al. 2018 and of AutoAttack's APGD-L2, Croce & Hein 2020). A sample whose gradient is 0 everywhere gets 0: it does
    not move. The L2 norm is taken of the gradient divided by its largest magnitude, so that neither tiny gradients
    (a saturated softmax; their squares underflow in float32) nor huge ones give a wrong length.

    Args:
        grad: the loss gradient ``(B, C, *spatial)``.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        The direction, same shape as ``grad``.
    """
    if norm == "linf":
        return grad.sign()
    largest = grad.abs().amax(dim=tuple(range(1, grad.ndim)), keepdim=True)
    scaled = grad / torch.where(largest > 0, largest, torch.ones_like(largest))
    length = _per_sample_l2(scaled)
    return scaled / torch.where(length > 0, length, torch.ones_like(length))


@dataclass(frozen=True)
class ThreatModel:
    """Where an attack's iterates may lie, per sample: the ball of ``radius`` around ``clean`` in the norm ``norm``,
    within the valid intensity range. It owns the projection and the random start, so an update rule need not know
    the norm.

    For ``"linf"`` the ball intersected with the range is the box ``[lower, upper]`` and :meth:`project` is one clamp
    (bit for bit what the attacks did before ``norm`` existed). For ``"l2"``, ``lower`` and ``upper`` are the valid
    range only, and :meth:`project` maps onto the L2 ball, then clamps to the range.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        clean: the clean inputs ``(B, C, *spatial)``, the centres of the balls.
        radius: the radius in intensity units: a number, or one per sample ``(B, 1, ..., 1)`` (a relative epsilon).
        lower: lower bound, per voxel (L-inf: the box) or per sample or a number (L2: the range); ``None`` for none.
        upper: upper bound, the same way.
    """

    norm: str
    clean: Tensor
    radius: Tensor | float
    lower: Tensor | float | None
    upper: Tensor | float | None

    def project(self, images: Tensor) -> Tensor:
        """``images`` moved into the threat model: per sample, onto the ball around its clean input, then into range.

        L-inf: the clamp to the box, the exact Euclidean projection onto ball and range. L2: the projection onto the
        ball, ``x0 + delta * min(1, radius / ||delta||_2)`` with ``delta = images - x0`` (the norm over all non-batch
        dimensions), then the clamp to the range, as AutoAttack's APGD-L2 does (Croce & Hein 2020,
        ``fra31/auto-attack``, ``autopgd_base.py``). Not the exact projection onto the intersection of ball and range
        (that needs a search over a Lagrange multiplier), but a point of it.

        Args:
            images: iterates ``(B, C, *spatial)`` (or the rows of :meth:`rows`).

        Returns:
            The projected iterates, same shape.
        """
        if self.norm == "linf":
            return torch.clamp(images, self.lower, self.upper)
        delta = images - self.clean
        length = _per_sample_l2(delta)
        outside = length > self.radius
        # a sample inside the ball is kept as it is (x0 + (x - x0) can differ from x in the last bit); a length of 0
        # is never outside, and the guard only keeps the unused branch free of 0 / 0
        shrink = self.radius / torch.where(outside, length, torch.ones_like(length))
        projected = torch.where(outside, self.clean + delta * shrink, images)
        if self.lower is None and self.upper is None:
            return projected
        # the clamp moves a coordinate only towards its clean value when the clean input lies in the range (always
        # with clip="sample"), so |x_i - x0_i| shrinks and the L2 constraint still holds after it; a clean voxel outside
        # an absolute range (lo, hi) is moved into it, and there, as for L-inf, the range wins over the ball
        return torch.clamp(projected, self.lower, self.upper)

    def random_point(self, generator: torch.Generator) -> Tensor:
        """A random point of the threat model, from one draw shared by every sample of the batch (each scaled to its
        own ball), so that a sample's point does not depend on the rest of the batch.

        L-inf: uniform in the box ``[lower, upper]``. L2: uniform in the ball, then clamped to the range: a direction
        ``n / ||n||_2`` from a standard Gaussian ``n`` and a radius ``radius * u^(1/d)`` with ``u`` uniform on
        ``[0, 1]`` and ``d`` the number of values per sample (the exact uniform draw, Muller 1959, "A note on a method
        for generating points uniformly on n-dimensional spheres", Commun. ACM 2(4)). For a BraTS volume
        (``d = 4 x 128^3``, about 8.4e6) ``u^(1/d) = exp(ln(u) / d)`` is within 1e-5 of 1 unless ``u < e^-80``:
        practically the start on the sphere of AutoAttack's APGD-L2 (Croce & Hein 2020) and of Madry et al.'s
        ``robustness`` library.

        Args:
            generator: the attack's own generator (on the inputs' device).

        Returns:
            The point, shaped like :attr:`clean`.
        """
        clean = self.clean
        if self.norm == "linf":
            assert isinstance(self.lower, Tensor) and isinstance(self.upper, Tensor)
            noise = torch.rand((1, *clean.shape[1:]), generator=generator, device=clean.device, dtype=clean.dtype)
            return self.lower + (self.upper - self.lower) * noise
        gaussian = torch.randn((1, *clean.shape[1:]), generator=generator, device=clean.device, dtype=clean.dtype)
        uniform = torch.rand((1,), generator=generator, device=clean.device, dtype=clean.dtype)
        length = _per_sample_l2(gaussian)
        direction = gaussian / torch.where(length > 0, length, torch.ones_like(length))
        depth = uniform ** (1.0 / gaussian.numel())
        return self.project(clean + self.radius * depth * direction)

    def rows(self, index: Tensor | None) -> ThreatModel:
        """The threat model of the samples ``index`` (``None``: all, this object itself)."""
        if index is None:
            return self
        return ThreatModel(
            self.norm, self.clean[index], _rows(self.radius, index), _rows(self.lower, index), _rows(self.upper, index)
        )


def _check_clip(clip: str | tuple[float, float] | None) -> str | tuple[float, float] | None:
    if clip is None or clip == "sample":
        return clip
    if isinstance(clip, str):
        raise RobustsegError(f"clip must be 'sample', None or a pair (lo, hi) of numbers, got {clip!r}.")
    try:
        lo, hi = (float(v) for v in clip)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise RobustsegError(f"clip must be 'sample', None or a pair (lo, hi) of numbers, got {clip!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise RobustsegError(f"clip must be a pair (lo, hi) of finite numbers with lo < hi, got {clip!r}.")
    return (lo, hi)


_AMP = {False: (False, torch.bfloat16), "fp32": (False, torch.bfloat16), True: (True, torch.bfloat16),
        "bf16": (True, torch.bfloat16), "fp16": (True, torch.float16)}  # fmt: skip


def _check_amp(amp: bool | str) -> tuple[bool, torch.dtype]:
    """``amp`` as (autocast on, autocast dtype)."""
    if isinstance(amp, (bool, str)) and amp in _AMP:
        return _AMP[amp]
    raise RobustsegError(f"amp must be False, True, 'fp32', 'bf16' or 'fp16', got {amp!r}.")


def _check_inputs(images: Tensor, labels: Tensor, task: SegmentationTask = BRATS) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim < 3:
        what = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images)
        raise RobustsegError(f"images must be a floating-point tensor (B, C, *spatial), got a {what}.")
    expected = (images.shape[0], 1, *images.shape[2:])
    if not isinstance(labels, Tensor) or tuple(labels.shape) != expected:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels)
        raise RobustsegError(f"labels: shape {shape} does not fit images {tuple(images.shape)}, expected {expected}.")
    task.check_labels(labels)  # raises if a value is not a label of the task (BraTS: {0, 1, 2, 4})


def _rows(value: Tensor | float | None, index: Tensor) -> Tensor | float | None:
    """The rows ``index`` of a per-sample tensor; a number (or a 0-dim tensor, or ``None``) as it is."""
    return value[index] if isinstance(value, Tensor) and value.ndim else value


def _check_norm(norm: str, cls: type[Attack]) -> str:
    """``norm`` checked against :data:`NORMS`, then against the threat models that ``cls`` supports."""
    norm = look_up_option("norm", norm, NORMS, hint="the threat model")
    if norm not in cls.norms:
        raise RobustsegError(
            f"norm must be one of {list(cls.norms)} for {cls.name} (it attacks the L-inf ball only; PGD and APGD "
            f"take 'l2'), got {norm!r}."
        )
    return norm


def _check_stop(stop: str | StopCriterion | None) -> StopCriterion | None:
    if stop is None or (callable(stop) and not isinstance(stop, str)):
        return stop
    if isinstance(stop, str) and stop in STOP_CRITERIA:
        return STOP_CRITERIA[stop]
    raise RobustsegError(
        f"stop must be None, one of {sorted(STOP_CRITERIA)} or a callable (AttackProbe) -> (n,) bool, got {stop!r}."
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, str) or obj is None:
        return repr(obj)
    name = getattr(obj, "__name__", type(obj).__name__)
    roi = getattr(obj, "roi_size", None)
    return f"{name}(roi_size={tuple(roi)})" if roi is not None else name


def _slides_windows(inferer: Any) -> bool:
    """Whether ``inferer`` is, or wraps (through ``.inferer`` attributes, as our inferers do), a MONAI sliding-window
    inferer, which calls the network once per window."""
    from monai.inferers import SlidingWindowInferer

    seen: set[int] = set()
    while inferer is not None and id(inferer) not in seen:
        if isinstance(inferer, SlidingWindowInferer):
            return True
        seen.add(id(inferer))
        inferer = getattr(inferer, "inferer", None)
    return False


def _recomputed(model: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``model`` under activation checkpointing: only its input is kept for the backward pass, which runs the forward
    again (one more forward per window; the same gradient, the recomputation is deterministic in eval mode)."""
    from torch.utils.checkpoint import checkpoint

    def forward(x: Tensor) -> Tensor:
        return checkpoint(model, x, use_reentrant=False)

    return forward


class Attack:
    """Base class of the gradient attacks on segmentation networks, in the L-inf (default) or L2 threat model.

    Owns what every attack shares: the loss, the threat model (an L-inf or L2 ball of radius ``epsilon``, relative to
    each sample's maximum absolute intensity by default, intersected with the valid intensity range:
    :class:`ThreatModel`), the iteration ``x_{k+1} = P(step(x_k, grad loss(x_k)))`` with ``P`` the threat model's
    projection, a per-step record, and leaving the model exactly as found: it
    runs the model in eval mode and restores each submodule's own mode afterwards, takes the input gradient with
    ``torch.autograd.grad`` on a detached copy (parameters, their ``.grad`` and ``requires_grad`` flags are never
    touched), re-enables gradients when called under ``torch.no_grad()`` (MONAI evaluators run iterations so) and
    never modifies ``images`` or ``labels`` in place.

    Adaptive attack on logit-rescaling defences: a student trained by defensive distillation at temperature ``T``
    and deployed at ``T = 1`` has logits ``T`` times larger than it learned; its softmax saturates, the loss
    gradient underflows to exactly 0 in most voxels and a naive attack barely moves (gradient masking, not
    robustness: Carlini & Wagner 2016, "Defensive distillation is not robust to adversarial examples",
    arXiv:1607.04311; Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false sense of security",
    ICML). ``temperature=T`` (equivalently ``logit_scale=1/T``) makes the attack differentiate the loss of
    ``logits / T`` instead; the model's output, and so what is scored, is unchanged.
    :attr:`AttackStep.zero_grad_fraction` shows whether an attack is being masked.

    Mixed precision: ``amp=True`` (or ``"bf16"``) runs the forward and backward passes under
    ``torch.autocast(device_type, dtype=torch.bfloat16)`` (the loss stays fp32); ``amp="fp16"`` uses float16 (CUDA).
    :func:`common.engines.precision.choose_precision` decides per device whether autocast pays off. Measured by
    ``python benchmarks/bench_attacks.py`` on a ``UNet3D(base_filters=8)`` trained for 40 steps on synthetic tumours
    (two 48^3 test volumes, two runs): the sign of the bf16 input gradient agreed with fp32 in 97.4-98.6 % of the
    voxels (99.9 % of the half with the larger fp32 gradient; the disagreements are near-zero gradients), i-FGSM(10)
    at epsilon 0.05 reached the same soft-Dice loss to within 0.001, and ran in about 0.6 of the fp32 time on CPU.
    The default stays fp32, the reference for numbers in papers.

    Batches: every sample is attacked on its own. The loss is taken per sample (``loss`` applied to each sample's
    logits) and the gradient of their sum is each sample's own gradient, so a sample's result does not depend on the
    other samples in its batch: attacking a batch equals attacking each sample alone, up to the float rounding of
    batched convolutions (``tests/attacks/test_batching.py``). The per-step records hold per-sample losses and
    zero-gradient fractions, from the same forward and backward pass as the step.

    Threat models (``norm``): ``"linf"`` bounds every voxel's change by epsilon (the paper's); ``"l2"`` bounds the
    Euclidean norm of the whole perturbation of a sample, over all its ``C x D x H x W`` values, by epsilon (the threat
    model of randomized-smoothing certificates, which issue 17 compares with the empirical worst case). With
    ``relative=True`` an L2 epsilon is, as an L-inf one, a multiple of each sample's maximum absolute intensity; on the
    evaluation's [0, 1]-normalised inputs (maximum 1) it is in input units over all 4 x D x H x W values (an L2 radius
    of 1 spread evenly over a 4 x 128^3 volume is 1/2896 per value). An attack lists the threat models it supports in
    :attr:`norms`: PGD and APGD take both; the paper's FGSM, i-FGSM and ti-FGSM (Liu et al. 2021, eqs. 1-3) and the
    random-sign control are sign attacks of the L-inf ball and refuse ``"l2"`` (PGD with ``norm="l2"`` is the L2
    i-FGSM with a random start).

    Early stopping (opt-in, as in the cascades of AutoAttack and ROG): with ``stop``, a criterion is evaluated per
    sample at each iterate, on the loss, gradient and logits of that step's own pass (:class:`AttackProbe`). A
    sample for which it holds keeps that iterate as its result and leaves the batch: its later steps (and PGD's later
    restarts) are not computed, and the records carry its iterate forward. ``"gradient_vanished"`` (a gradient that is
    exactly 0 everywhere) changes nothing for attacks without restarts: a step along a zero gradient (sign or
    normalised) does not move the iterate, so every later iterate would be the same. The default is no stopping.

    Args:
        epsilon: radius of the ball, >= 0; a fraction of each sample's maximum absolute intensity (over all
            channels) when ``relative`` (so <= 1 for L-inf), else in intensity units. The paper uses 0.05 (L-inf) on
            [0, 1] images.
        steps: number of gradient steps, >= 1.
        alpha: step size, > 0, on the same scale as ``epsilon``; default ``epsilon / steps`` (the paper's
            ``alpha * N = epsilon``) unless a subclass says otherwise.
        loss: ``"soft_dice"`` (the paper's eq. 5 on softmax, background ignored), ``"ce"`` (cross-entropy over the
            BraTS classes), a segmentation attack loss (``"masked_ce"``, ``"balanced_ce"``, ``"js"``, ``"segpgd"``,
            ``"cospgd"``: :mod:`common.losses.segmentation`) or any callable ``(logits, labels) -> scalar`` where
            labels carry BraTS values; a callable with a ``set_step(step, steps)`` method is told each step. A name
            works for sigmoid region outputs too: it then means its counterpart of :mod:`common.losses.regions`
            (:data:`LOSSES`); a callable gets the logits as the model gives them.
        relative: whether ``epsilon`` and ``alpha`` are relative to each sample's maximum absolute intensity.
        norm: the threat model, ``"linf"`` (default) or ``"l2"`` (see above), one of :attr:`norms`; listed in
            ``repr`` only when ``"l2"``, so the ``attack_config`` of the L-inf rows written before it existed still
            matches.
        clip: the valid intensity range the result is clipped to: ``"sample"`` (default) keeps each sample in its
            clean ``[min, max]`` over all channels and voxels; ``(lo, hi)`` gives absolute bounds; ``None`` does not
            clip. Where a clean voxel lies outside ``(lo, hi)``, the range wins over the ball. For L2 the clip follows
            the projection onto the ball (:meth:`ThreatModel.project`).
        temperature: divide the logits by this before the loss (adaptive attack on distilled models); > 0.
        logit_scale: multiply the logits by this instead (``1 / temperature``); give at most one of the two.
        inferer: e.g. a MONAI ``SlidingWindowInferer``; when given, logits are ``inferer(images, model)``, so the
            gradient flows through the window stitching and volumes larger than the network's patch can be attacked.
        amp: run forward and backward under autocast (see above): ``False``/``"fp32"`` (default), ``True``/``"bf16"``
            or ``"fp16"``.
        stop: per-sample early stopping (see above): ``None`` (default), a name of :data:`STOP_CRITERIA` or a
            callable ``(AttackProbe) -> (n,) bool``. Listed in ``repr`` only when set.
        task: the segmentation task (:mod:`common.data.task`): ``None`` (default) is BraTS; a
            :class:`~common.data.task.ClassTask` (a third-party bundle's generic task, labels = channel indices)
            builds the named loss for its classes, checks labels against them, and predicts and scores iterates
            (best iterate, ``dice_zero``) by its per-class Dice. Listed in ``repr`` only when not BraTS.

    Raises:
        RobustsegError: for a bad setting (each names the parameter; ``norm="l2"`` for an attack that supports only
            L-inf), and when called with images that are not a floating-point (B, C, *spatial) tensor, labels not of
            shape (B, 1, *spatial) or with values outside the task's labels (BraTS: {0, 1, 2, 4}), or under
            ``torch.inference_mode()``.

    Example::

        class MyFGSM(Attack):        # a new attack is its update rule
            name = "my-FGSM"

            def step(self, images, grad, step_size):
                return images + step_size * grad.sign()

        adv = MyFGSM(epsilon=0.05, loss="ce")(model, images, labels)   # labels: (B, 1, *spatial) BraTS values
    """

    name: ClassVar[str] = "Attack"
    """Display name used in tables and figures."""

    uses_gradient: ClassVar[bool] = True
    """False for a control that takes no gradient (random noise): an evaluation runs it neither as an adaptive attack
    (a temperature changes nothing) nor as a transfer attack (noise drawn for one model is noise for any model)."""

    returns_best_iterate: ClassVar[bool] = False
    """Whether the result is the best iterate (lowest scored Dice) rather than the last: then the per-step records
    are the search path, not the result, and an evaluation scores only the result."""

    norms: ClassVar[tuple[str, ...]] = ("linf",)
    """The threat models (:data:`NORMS`) this attack supports: ``norm=`` must be one of them."""

    def __init__(
        self,
        epsilon: float,
        steps: int = 1,
        alpha: float | None = None,
        *,
        loss: str | LossFn = "soft_dice",
        relative: bool = True,
        norm: str = "linf",
        clip: str | tuple[float, float] | None = "sample",
        temperature: float | None = None,
        logit_scale: float | None = None,
        inferer: Callable[..., Tensor] | None = None,
        amp: bool | str = False,
        stop: str | StopCriterion | None = None,
        task: SegmentationTask | None = None,
    ) -> None:
        self.task = check_task(task)
        self.relative = check_bool("relative", relative)
        self.norm = _check_norm(norm, type(self))
        self.epsilon = check_radius(epsilon, self.relative, self.norm)
        self.steps = steps = check_int("steps", steps, 1)
        if alpha is not None:
            alpha = check_number("alpha", alpha, 0, min_inclusive=False)
        self.alpha = alpha if alpha is not None else self.default_alpha(self.epsilon, steps)
        if isinstance(loss, str) and loss in LOSSES:
            self.loss_fn: LossFn = self.task.loss(loss)
        elif callable(loss):
            self.loss_fn = loss
        else:
            raise RobustsegError(
                f"loss must be one of {sorted(LOSSES)} or a callable (logits, labels) -> scalar, got {loss!r}."
            )
        self.loss = loss
        self.clip = _check_clip(clip)
        if temperature is not None and logit_scale is not None:
            raise RobustsegError(f"give temperature or logit_scale, not both (got {temperature} and {logit_scale}).")
        for option, value in (("temperature", temperature), ("logit_scale", logit_scale)):
            if value is not None:
                check_number(option, value, 0, min_inclusive=False)
        self.temperature = float(temperature) if temperature is not None else 1.0
        if logit_scale is not None:
            self.temperature = 1.0 / float(logit_scale)
        if inferer is not None and not callable(inferer):
            raise RobustsegError(f"inferer must be None or a MONAI inferer (a callable), got {inferer!r}.")
        self.inferer = inferer
        self.amp, self.amp_dtype = _check_amp(amp)
        self.stop = stop
        self.stop_criterion = _check_stop(stop)

    def default_alpha(self, epsilon: float, steps: int) -> float:
        """Step size when ``alpha`` is not given: ``epsilon / steps`` (the paper's ``alpha * N = epsilon``)."""
        return epsilon / steps

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor settings, as listed by ``repr`` (and so in the CSV rows of an evaluation).

        ``norm`` (only when ``"l2"``), ``stop`` (and ``amp_dtype``, for fp16) are listed only when set, so the
        ``attack_config`` of rows written before they existed still matches.
        """
        settings: dict[str, Any] = {"epsilon": self.epsilon}
        if self.norm != "linf":
            settings["norm"] = self.norm  # the threat model beside its radius, as RobustBench stores it
        settings |= {
            "steps": self.steps,
            "alpha": self.alpha,
            "loss": self.loss,
            "relative": self.relative,
            "clip": self.clip,
            "temperature": self.temperature,
            "inferer": self.inferer,
            "amp": self.amp,
        }
        if self.amp_dtype == torch.float16:
            settings["amp_dtype"] = "fp16"
        if self.stop is not None:
            settings["stop"] = self.stop
        return settings if self.task is BRATS else {**settings, "task": self.task}

    def __repr__(self) -> str:
        described = ("loss", "inferer", "stop")
        items = ", ".join(
            f"{key}={_describe(value) if key in described else repr(value)}" for key, value in self.settings.items()
        )
        return f"{type(self).__name__}({items})"

    # -- the parts a subclass provides ---------------------------------------------------------------------------

    def step(self, images: Tensor, grad: Tensor, step_size: Tensor | float) -> Tensor:
        """One update before projection: the attack's rule (e.g. ``images + step_size * self.direction(grad)``).

        Args:
            images: the current iterate.
            grad: the loss gradient at ``images``.
            step_size: ``alpha`` in intensity units, per sample ``(B, 1, ..., 1)`` when ``relative``.
        """
        raise NotImplementedError

    def loss_labels(self, labels: Tensor) -> Tensor:
        """The label map the loss is computed against: the ground truth here, a target map for targeted attacks."""
        return labels

    def run(
        self,
        model: Callable[..., Tensor],
        clean: Tensor,
        labels: Tensor,
        threat: ThreatModel,
        step_size: Tensor | float,
        callback: Callable[[AttackStep], None] | None,
    ) -> Tensor:
        """The whole attack on a prepared batch: by default :meth:`iterate` from the clean images."""
        return self.iterate(model, clean, labels, threat, step_size, callback)

    def direction(self, grad: Tensor) -> Tensor:
        """The unit steepest-ascent direction of this attack's threat model (:func:`ascent_direction`): ``sign(grad)``
        for L-inf, ``grad / ||grad||_2`` per sample for L2."""
        return ascent_direction(grad, self.norm)

    # -- shared machinery ----------------------------------------------------------------------------------------

    def __call__(
        self,
        model: Callable[..., Tensor],
        images: Tensor,
        labels: Tensor,
        callback: Callable[[AttackStep], None] | None = None,
    ) -> Tensor:
        """Adversarial images for ``model``.

        Args:
            model: a segmentation network (or any callable) mapping images to logits (B, 4, *spatial), one softmax
                channel per BraTS label, or (B, 3, *spatial), one sigmoid channel per region WT, TC, ET (see
                :mod:`common.data.labels`); with an ``inferer``, whatever the inferer accepts as its network.
            images: clean images (B, C, *spatial), floating point; not modified.
            labels: ground truth (B, 1, *spatial) with BraTS values {0, 1, 2, 4}; not modified.
            callback: called after each step with an :class:`AttackStep`.

        Returns:
            The adversarial images, detached, same shape, dtype and device as ``images``.
        """
        clean, labels, scale = self._prepare(images, labels)
        threat = self.threat_model(clean, self.epsilon * scale)
        with eval_mode(model), torch.enable_grad():
            return self.run(model, clean, labels, threat, self.alpha * scale, callback)

    def iterate(
        self,
        model: Callable[..., Tensor],
        start: Tensor,
        labels: Tensor,
        threat: ThreatModel,
        step_size: Tensor | float,
        callback: Callable[[AttackStep], None] | None = None,
        restart: int = 0,
        active: Tensor | None = None,
        observe: Callable[[Tensor | None, Tensor, Tensor, Tensor], None] | None = None,
    ) -> Tensor:
        """``steps`` updates from ``start``, each projected onto ``threat`` (ball and range).

        Before the gradient of step ``t`` the loss's ``set_step(t, steps)`` is called, if it has one (SegPGD).

        Args:
            active: ``(B,)`` booleans, the samples still in the batch (``None``: all); a sample not active keeps its
                ``start``. The samples that the stop criterion stops are set to False in this tensor.
            observe: called after each gradient pass with ``(index, images, logits, losses)``: the rows of the batch
                computed (``None``: all), their iterate, its logits (detached) and per-sample losses. PGD keeps its
                best iterate with it, from the passes the attack makes anyway.
        """
        if active is not None and not bool(active.any()):
            return start  # every sample was stopped before this run (a later restart): nothing to compute or report
        adversarial = start
        batch = len(start)
        records = callback is not None or self.stop_criterion is not None
        if active is None and self.stop_criterion is not None:
            active = torch.ones(batch, dtype=torch.bool, device=start.device)
        losses = zero = predictions = None
        for step in range(1, self.steps + 1):
            index = None if active is None or bool(active.all()) else active.nonzero()[:, 0]
            images, target, size = (
                (adversarial, labels, step_size)
                if index is None
                else (_rows(t, index) for t in (adversarial, labels, step_size))
            )
            if len(images):
                self.set_loss_step(step, self.steps)
                loss, grad, logits = self._loss_and_gradient(model, images, target)
                if observe is not None:
                    observe(index, images, logits, loss)
                moved = threat.rows(index).project(self.step(images, grad, size))
                fraction = (grad == 0).flatten(1).float().mean(1) if records else loss  # unread without records
                if self.stop_criterion is not None:
                    stopped = self._stopped(
                        AttackProbe(step, restart, images, logits, target, loss, fraction, self.task)
                    )
                    moved = torch.where(stopped.view(-1, *[1] * (moved.ndim - 1)), images, moved)
                    assert active is not None
                    active[stopped if index is None else index[stopped]] = False
                predicted = self.task.predict(logits) if callback is not None else None
                if index is None:
                    adversarial, losses, zero, predictions = moved, loss, fraction, predicted
                else:
                    if losses is None or zero is None:  # samples left out of this whole run: not computed here
                        losses, zero = loss.new_full((batch,), math.nan), fraction.new_full((batch,), math.nan)
                    adversarial = adversarial.index_copy(0, index, moved)
                    losses, zero = losses.index_copy(0, index, loss), zero.index_copy(0, index, fraction)
                    # unknown (None) while a sample left out of this whole run has no prediction here
                    if predictions is not None and predicted is not None:
                        predictions = predictions.index_copy(0, index, predicted)
            if callback is not None:
                assert losses is not None and zero is not None
                mask = None if active is None or bool(active.all()) else active.clone()
                callback(AttackStep(step, adversarial, losses, zero, restart, mask, predictions))
        return adversarial

    def set_loss_step(self, step: int, steps: int) -> None:
        """Tell a step-dependent loss (one with a ``set_step`` method, e.g. SegPGD's) that step ``step`` of ``steps``
        comes next; other losses are left alone."""
        set_step = getattr(self.loss_fn, "set_step", None)
        if callable(set_step):
            set_step(step, steps)

    def _stopped(self, probe: AttackProbe) -> Tensor:
        """The stop criterion's verdict for the samples of ``probe``, checked: a boolean tensor ``(n,)``."""
        assert self.stop_criterion is not None
        n = len(probe.images)
        stopped = self.stop_criterion(probe)
        if not isinstance(stopped, Tensor) or stopped.dtype != torch.bool or tuple(stopped.shape) != (n,):
            got = f"{stopped.dtype} tensor of shape {tuple(stopped.shape)}" if isinstance(stopped, Tensor) else stopped
            raise RobustsegError(
                f"stop: the criterion must return a boolean tensor of shape ({n},), one per sample, got {got!r}."
            )
        return stopped.to(probe.images.device)

    def logits(self, model: Callable[..., Tensor], images: Tensor) -> Tensor:
        """The logits the loss sees: the model's (through the inferer, if any), divided by ``temperature``.

        Through a sliding-window inferer with gradients on, autograd would hold every window's activations at once
        (about 100 MB per 48^3 window of the quick 3D UNet: 20 GB for a 240 x 240 x 155 BraTS volume): a MONAI
        ``SlidingWindowInferer`` is differentiated window by window (:func:`common.attacks.windows.windowed_logits`),
        and any other inferer that slides windows recomputes each window's forward pass in the backward pass
        (:func:`_recomputed`) instead of keeping it.
        """
        with torch.autocast(device_type=images.device.type, dtype=self.amp_dtype, enabled=self.amp):
            if self.inferer is None:
                logits = model(images)
            elif not (torch.is_grad_enabled() and images.requires_grad):
                logits = self.inferer(images, model)
            else:
                logits = windowed_logits(images, self.inferer, model)
                if logits is None:
                    logits = self.inferer(images, _recomputed(model) if _slides_windows(self.inferer) else model)
        logits = logits.float()
        return logits if self.temperature == 1.0 else logits / self.temperature

    def sample_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The attack loss of each sample ``(B,)``: the loss function applied to each sample's logits on its own.

        The samples come from one ``split`` (one autograd node, whose backward concatenates their gradients) rather
        than ``B`` slices, whose backward passes would each fill a zero tensor of the whole batch's size and add them
        up: the same values, about 1 % less time per step of the quick 3D UNet at batch 4.
        """
        pairs = zip(logits.split(1), labels.split(1), strict=True)
        return torch.stack([self.loss_fn(sample, label) for sample, label in pairs])

    def gradient(self, model: Callable[..., Tensor], images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The per-sample attack losses ``(B,)`` at ``images`` (detached) and each sample's own loss gradient."""
        loss, grad, _ = self._loss_and_gradient(model, images, labels)
        return loss, grad

    def _loss_and_gradient(
        self, model: Callable[..., Tensor], images: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        images = images.detach().requires_grad_(True)
        logits = self.logits(model, images)
        losses = self.sample_losses(logits, labels)
        # the gradient of the sum is each sample's own: the batch mean would scale it by 1/B
        grad = input_gradient(losses.sum(), images, fp16=self.amp and self.amp_dtype == torch.float16)
        return losses.detach(), grad, logits.detach()

    def _prepare(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | float]:
        """Check the inputs; return the detached images, the loss labels and the per-sample intensity scale."""
        if torch.is_inference_mode_enabled():
            raise RobustsegError(
                f"{type(self).__name__} needs input gradients: call it outside torch.inference_mode() "
                "(torch.no_grad() is fine)."
            )
        _check_inputs(images, labels, self.task)
        # a tensor made under inference mode cannot join autograd; a copy can
        clean = images.clone() if images.is_inference() else images.detach()
        return clean, self.loss_labels(labels.detach()), self._scale(clean)

    def _scale(self, clean: Tensor) -> Tensor | float:
        """What ``epsilon`` and ``alpha`` are multiplied by: each sample's maximum absolute intensity when
        ``relative``, else 1."""
        if not self.relative:
            return 1.0
        return clean.abs().amax(dim=tuple(range(1, clean.ndim)), keepdim=True)

    def threat_model(self, clean: Tensor, radius: Tensor | float) -> ThreatModel:
        """The threat model of a batch: the ball of ``radius`` (intensity units, per sample or one number) around
        ``clean`` in this attack's norm, within the valid range of ``clip``."""
        dims = tuple(range(1, clean.ndim))
        if self.norm == "linf":
            lower, upper = clean - radius, clean + radius
            if self.clip == "sample":
                lower = torch.maximum(lower, clean.amin(dim=dims, keepdim=True))
                upper = torch.minimum(upper, clean.amax(dim=dims, keepdim=True))
            elif self.clip is not None:
                lower, upper = lower.clamp(min=self.clip[0]), upper.clamp(max=self.clip[1])
            return ThreatModel(self.norm, clean, radius, lower, upper)
        low: Tensor | float | None = None
        high: Tensor | float | None = None
        if self.clip == "sample":
            low, high = clean.amin(dim=dims, keepdim=True), clean.amax(dim=dims, keepdim=True)
        elif self.clip is not None:
            low, high = self.clip
        return ThreatModel(self.norm, clean, radius, low, high)
