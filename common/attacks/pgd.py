"""PGD with random start and restarts (Madry et al. 2018)."""

from __future__ import annotations

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
    ``seed`` at every call, so the same seed gives the same result and the global RNG is left alone.

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
        best, best_loss = clean, None
        for restart in range(self.restarts):
            noise = torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
            start = lower + (upper - lower) * noise
            adversarial = self.iterate(model, start, labels, lower, upper, step_size, callback, restart)
            if self.restarts == 1:
                return adversarial
            loss = self.sample_losses(model, adversarial, labels)
            if best_loss is None:
                best, best_loss = adversarial, loss
                continue
            better = loss > best_loss
            best = torch.where(better.view(-1, *[1] * (clean.ndim - 1)), adversarial, best)
            best_loss = torch.where(better, loss, best_loss)
        return best

    def sample_losses(self, model: Callable[..., Tensor], images: Tensor, labels: Tensor) -> Tensor:
        """The attack loss of each sample of the batch (B,), from one forward pass without gradients."""
        with torch.no_grad():
            logits = self.logits(model, images)
            return torch.stack([self.loss_fn(logits[i : i + 1], labels[i : i + 1]) for i in range(len(logits))])
