"""PGD with random start and restarts (Madry et al. 2018), L-inf or L2, keeping each sample's best iterate by Dice."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from common.attacks.base import Attack, AttackStep, ThreatModel, better_iterate
from common.attacks.ifgsm import IterativeFGSM
from common.utils.validation import check_int

__all__ = ["PGD"]


class PGD(IterativeFGSM):
    """Projected gradient descent (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks").

    i-FGSM started from a uniformly random point of the threat model (the epsilon-ball intersected with the valid
    intensity range), repeated ``restarts`` times. The default step size is ``2.5 * epsilon / steps`` (Madry et al.'s
    choice): large enough that ``steps`` steps can cross the ball from any start, unlike the paper's
    ``epsilon / steps``. The random start uses its own ``torch.Generator`` seeded with ``seed`` at every call, so the
    same seed gives the same result and the global RNG is left alone. Each restart draws one noise volume, shared by
    the samples of the batch (each scaled to its own ball): a sample's start does not depend on the other samples or
    its position in the batch, so a batch gives what each sample gives alone.

    Threat models: ``norm="linf"`` (default) steps ``alpha * sign(grad)`` and starts uniformly in the box;
    ``norm="l2"`` steps ``alpha * grad / ||grad||_2`` (per sample, over all its values; a sample whose gradient is 0
    does not move), projects onto the L2 ball then clamps to the range, as the ``L2Step`` of Madry et al.'s
    ``robustness`` library (``MadryLab/robustness``, ``attack_steps.py``), and starts uniformly in the L2 ball, then
    clamped to the range (:meth:`~common.attacks.base.ThreatModel.random_point`; for a BraTS volume within 1e-5 of
    the sphere, where that library and AutoAttack start).

    Best iterate: the result is, per sample, the iterate of all restarts (random starts included) with the lowest
    scored hard Dice (the mean over WT, TC and ET of the region Dice of the argmax prediction,
    :func:`~common.attacks.base.hard_dice`), ties broken by the highest attack loss. What is reported is the hard
    Dice, and the ascent of a surrogate loss is not monotone in it, so the last iterate (and the restart with the
    highest loss) can be worse than one before it (Croce & Hein 2020; SEA, Croce et al. 2024). The scores come from
    the forward passes the attack makes for its gradients, plus one forward pass (without gradient) per restart for
    the last iterate. Each callback record carries, in ``best_dices``, the best Dice found so far: the convergence
    curve of the attack (after ``n`` gradient passes, iterates ``0..n-1`` of the current restart have been scored).

    Early stopping (``stop``, off by default): a sample that the criterion stops keeps, as its result, the best of the
    iterates it went through up to the one it stopped at, and skips the later restarts. ``dice_zero`` is exact here
    (an iterate with Dice 0 in every region cannot be beaten); ``gradient_vanished`` is not (another random start has
    another gradient). It is there for the worst-case ensembles, which keep per sample the attack that hurt most and
    can stop a sample that is already lost.

    Args:
        epsilon: radius of the L-inf ball, or of the L2 ball with ``norm="l2"`` (relative to each sample's maximum
            absolute intensity by default).
        steps: number of steps per restart.
        alpha: step size; default ``2.5 * epsilon / steps``.
        restarts: number of random starts, >= 1.
        seed: seed of the random starts.
        kwargs: the common settings of :class:`~common.attacks.base.Attack` (``norm`` among them).

    Raises:
        RobustsegError: if ``restarts`` < 1 or ``seed`` is not an integer.

    Example::

        attack = PGD(epsilon=0.05, steps=10, restarts=3, seed=0)
        adv = attack(model, images, labels)
        adv_l2 = PGD(epsilon=0.5, norm="l2", steps=10)(model, images, labels)   # ||adv_l2 - images||_2 <= 0.5 * max
    """

    name = "PGD"
    returns_best_iterate = True
    norms = ("linf", "l2")

    def __init__(
        self,
        epsilon: float,
        steps: int = 10,
        alpha: float | None = None,
        restarts: int = 1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(epsilon, steps=steps, alpha=alpha, **kwargs)
        self.restarts = check_int("restarts", restarts, 1)
        self.seed = check_int("seed", seed)

    def default_alpha(self, epsilon: float, steps: int) -> float:
        return 2.5 * epsilon / steps

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "restarts": self.restarts, "seed": self.seed}

    def run(
        self,
        model: Callable[..., Tensor],
        clean: Tensor,
        labels: Tensor,
        threat: ThreatModel,
        step_size: Tensor | float,
        callback: Callable[[AttackStep], None] | None,
    ) -> Tensor:
        generator, active, tracker = _start_search(self, clean, labels)
        callback = _traced(callback, tracker)
        for restart in range(self.restarts):
            start = _random_start(generator, threat, active, tracker)
            last = self.iterate(
                model, start, labels, threat, step_size, callback, restart, active, observe=tracker.observe
            )
            # the last iterate has had no forward pass yet; a stopped sample's last iterate is the one it stopped at,
            # already scored
            rows = None if active is None else active.nonzero()[:, 0]
            with torch.no_grad():
                images = last if rows is None else last[rows]
                if len(images):
                    logits = self.logits(model, images)
                    target = labels if rows is None else labels[rows]
                    tracker.observe(rows, images, logits, self.sample_losses(logits, target))
        return tracker.best


def _start_search(attack: Attack, clean: Tensor, labels: Tensor) -> tuple[torch.Generator, Tensor | None, _BestIterate]:
    """What a random-restart search (PGD, APGD) starts with: its seeded generator, the samples still searching (``None``
    without a stop criterion) and the per-sample best-iterate tracker."""
    generator = torch.Generator(device=clean.device).manual_seed(attack.seed)  # type: ignore[attr-defined]
    active = None
    if attack.stop_criterion is not None:
        active = torch.ones(len(clean), dtype=torch.bool, device=clean.device)
    return generator, active, _BestIterate(clean, labels, attack.task.hard_dice)


def _traced(
    callback: Callable[[AttackStep], None] | None, tracker: _BestIterate
) -> Callable[[AttackStep], None] | None:
    """``callback`` with each record's :attr:`~common.attacks.base.AttackStep.best_dices` filled in from ``tracker``."""
    if callback is None:
        return None

    def traced(record: AttackStep) -> None:
        callback(replace(record, best_dices=tracker.dice.clone()))

    return traced


def _random_start(
    generator: torch.Generator, threat: ThreatModel, active: Tensor | None, tracker: _BestIterate
) -> Tensor:
    """A random point of the threat model for the next restart (:meth:`~common.attacks.base.ThreatModel.random_point`:
    uniform in the L-inf box, or in the L2 ball then clamped to the range).

    One draw per restart, shared by every sample (scaled to its own ball): a sample's start is the one it gets when
    attacked alone, whatever else is in the batch. A sample that a stop criterion stopped keeps its best iterate so
    far (and skips the restart).
    """
    start = threat.random_point(generator)
    if active is None:
        return start
    return torch.where(_column(active, start.ndim), start, tracker.best)


def _column(mask: Tensor, ndim: int) -> Tensor:
    """A per-sample boolean ``(B,)`` shaped ``(B, 1, ..., 1)`` to select whole samples of an ``ndim`` tensor."""
    return mask.view(-1, *[1] * (ndim - 1))


class _BestIterate:
    """Per sample, the iterate with the lowest hard Dice so far (ties: the highest loss), from observed passes."""

    def __init__(self, clean: Tensor, labels: Tensor, score: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.best, self.labels, self.score = clean, labels, score
        self.dice = torch.full((len(clean),), math.inf, device=clean.device)
        self.loss = torch.full((len(clean),), -math.inf, device=clean.device)

    def observe(self, index: Tensor | None, images: Tensor, logits: Tensor, losses: Tensor) -> None:
        labels = self.labels if index is None else self.labels[index]
        dice = self.score(logits, labels).to(self.dice.dtype)
        losses = losses.to(self.loss.dtype)
        if index is None:
            better = better_iterate(dice, losses, self.dice, self.loss)
            self.best = torch.where(_column(better, images.ndim), images, self.best)
            self.dice, self.loss = torch.where(better, dice, self.dice), torch.where(better, losses, self.loss)
            return
        better = better_iterate(dice, losses, self.dice[index], self.loss[index])
        rows = index[better]
        self.best = self.best.index_copy(0, rows, images[better])
        self.dice = self.dice.index_copy(0, rows, dice[better])
        self.loss = self.loss.index_copy(0, rows, losses[better])
