"""PGD with random start and restarts (Madry et al. 2018)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from common.attacks.base import AttackStep
from common.attacks.ifgsm import IterativeFGSM
from common.utils.validation import check_int

__all__ = ["PGD"]


class PGD(IterativeFGSM):
    """Projected gradient descent (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks").

    i-FGSM started from a uniformly random point of the threat model (the epsilon-ball intersected with the valid
    intensity range), repeated ``restarts`` times; per sample, the restart whose final iterate has the highest loss
    is kept (scoring a restart costs one extra forward pass, only when ``restarts > 1``). The default step size is
    ``2.5 * epsilon / steps`` (Madry et al.'s choice): large enough that ``steps`` steps can cross the ball from any
    start, unlike the paper's ``epsilon / steps``. The random start uses its own ``torch.Generator`` seeded with
    ``seed`` at every call, so the same seed gives the same result and the global RNG is left alone. Each restart
    draws one uniform noise volume, shared by the samples of the batch (each scaled to its own box): a sample's start
    does not depend on the other samples or its position in the batch, so a batch gives what each sample gives alone.

    Early stopping (``stop``, off by default): a sample that the criterion stops keeps the iterate it stopped at as
    its result and skips the later restarts. No criterion is safe for PGD with restarts: the kept restart is the one
    with the highest loss, and a later restart may reach a higher loss even after an iterate with Dice 0 in every
    region (a higher soft-Dice loss does not mean a lower hard Dice, nor the reverse), or after a vanished gradient
    (another random start has another gradient). It is there for the worst-case ensembles, which keep per sample
    the attack that hurt most and can stop a sample that is already lost.

    Args:
        epsilon: radius of the L-inf ball (relative to each sample's maximum absolute intensity by default).
        steps: number of steps per restart.
        alpha: step size; default ``2.5 * epsilon / steps``.
        restarts: number of random starts, >= 1.
        seed: seed of the random starts.
        kwargs: the common settings of :class:`~common.attacks.base.Attack`.

    Raises:
        RobustsegError: if ``restarts`` < 1 or ``seed`` is not an integer.

    Example::

        attack = PGD(epsilon=0.05, steps=10, restarts=3, seed=0)
        adv = attack(model, images, labels)
    """

    name = "PGD"

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
        lower: Tensor,
        upper: Tensor,
        step_size: Tensor | float,
        callback: Callable[[AttackStep], None] | None,
    ) -> Tensor:
        generator = torch.Generator(device=clean.device).manual_seed(self.seed)
        # a sample that a stop criterion stopped keeps that iterate and skips the later restarts
        active = None
        if self.stop_criterion is not None:
            active = torch.ones(len(clean), dtype=torch.bool, device=clean.device)
        best, best_loss = clean, None
        for restart in range(self.restarts):
            # one draw per restart, shared by every sample (scaled to its own box): a sample's start is the one it
            # gets when attacked alone, whatever else is in the batch
            noise = torch.rand((1, *clean.shape[1:]), generator=generator, device=clean.device, dtype=clean.dtype)
            running = None if active is None else active.clone()
            start = lower + (upper - lower) * noise
            if running is not None:
                start = torch.where(running.view(-1, *[1] * (clean.ndim - 1)), start, best)
            adversarial = self.iterate(model, start, labels, lower, upper, step_size, callback, restart, active)
            if self.restarts == 1:
                return adversarial
            stopped = None if running is None or active is None else running & ~active
            loss = self.restart_losses(model, adversarial, labels, running)
            if best_loss is None:
                best, best_loss = adversarial, loss
                continue
            better = loss > best_loss
            if stopped is not None:
                better = better | stopped
            best = torch.where(better.view(-1, *[1] * (clean.ndim - 1)), adversarial, best)
            best_loss = torch.where(better, loss, best_loss)
        return best

    def restart_losses(
        self, model: Callable[..., Tensor], images: Tensor, labels: Tensor, rows: Tensor | None = None
    ) -> Tensor:
        """The attack loss of each sample ``(B,)`` from one forward pass without gradients (``rows``: only those
        samples are computed; the others get -inf, so a restart never replaces their best)."""
        with torch.no_grad():
            if rows is None or bool(rows.all()):
                return self.sample_losses(self.logits(model, images), labels)
            out = torch.full((len(images),), -math.inf, device=images.device)
            index = rows.nonzero()[:, 0]
            if len(index):
                out[index] = self.sample_losses(self.logits(model, images[index]), labels[index]).to(out.dtype)
            return out
