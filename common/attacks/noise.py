"""Random-sign noise at the attack's epsilon: the baseline every attack must beat (Carlini et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from common.attacks.base import Attack, AttackStep, ThreatModel
from common.utils.validation import check_int

__all__ = ["RandomSign"]


class RandomSign(Attack):
    """Uniform random-sign noise on the L-inf sphere: ``X_noise = clip(X + epsilon * s)``, ``s`` uniform in {-1, 1}.

    Not an attack but its control: "On Evaluating Adversarial Robustness" (Carlini et al. 2019, arXiv:1902.06705,
    Sec. 5) asks that an attack hurt more than random noise of the same size; if it does not, its gradient is
    useless (masked, or the attack is broken). The noise is the corner of the epsilon-ball that FGSM would take with a
    random gradient sign, so it is as large as FGSM's perturbation in every voxel; it is then clipped to the valid
    intensity range like every attack's result.

    No gradient is taken. ``callback`` gets one record (step 1) with the loss and predictions of the clean input and
    a zero-gradient fraction of NaN (there is no gradient). The signs come from a ``torch.Generator`` seeded with
    ``seed`` at every call, one draw shared by the samples of the batch, so a sample gets the noise it gets alone and
    the same seed gives the same noise.

    Args:
        epsilon: radius of the L-inf ball (relative to each sample's maximum absolute intensity by default).
        seed: seed of the random signs.
        kwargs: the common settings of :class:`~common.attacks.base.Attack` (``loss`` only sets what the record's
            loss measures).

    Raises:
        RobustsegError: if ``seed`` is not an integer, or for a bad common setting.

    Example::

        noisy = RandomSign(epsilon=0.05, seed=0)(model, images, labels)
    """

    name = "random-sign"
    uses_gradient = False

    def __init__(self, epsilon: float, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(epsilon, steps=1, alpha=None, **kwargs)
        self.seed = check_int("seed", seed)

    @property
    def settings(self) -> dict[str, Any]:
        settings = {k: v for k, v in super().settings.items() if k not in ("steps", "alpha")}
        return {**settings, "seed": self.seed}

    def run(
        self,
        model: Callable[..., Tensor],
        clean: Tensor,
        labels: Tensor,
        threat: ThreatModel,
        step_size: Tensor | float,
        callback: Callable[[AttackStep], None] | None,
    ) -> Tensor:
        generator = torch.Generator(device=clean.device).manual_seed(self.seed)
        signs = torch.randint(0, 2, (1, *clean.shape[1:]), generator=generator, device=clean.device)
        signs = signs.to(clean.dtype) * 2 - 1
        # step_size is epsilon in intensity units (alpha = epsilon / 1 step): the corner of the ball, then the range
        noisy = threat.project(clean + step_size * signs)
        if callback is not None:
            with torch.no_grad():
                logits = self.logits(model, clean)
                losses = self.sample_losses(logits, labels)
            nan = torch.full((len(clean),), float("nan"), device=clean.device)
            callback(AttackStep(1, noisy, losses, nan, 0, None, self.task.predict(logits)))
        return noisy
