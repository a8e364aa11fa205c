"""FGSM (Goodfellow et al. 2015; Liu et al. 2021, eq. 1) and its one-gradient epsilon sweep."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from common.attacks.base import Attack, AttackProbe, AttackStep, _check_epsilon
from common.networks.modes import eval_mode

__all__ = ["FGSM"]


class FGSM(Attack):
    """Fast gradient sign method, the paper's eq. 1: ``X_adv = X + epsilon * sign(grad_X loss(X, Y))``.

    One signed-gradient step of size ``epsilon``, clipped to the valid intensity range. The zero-gradient fraction
    of its one gradient (a gradient-masking indicator) comes with the ``callback`` record of step 1. L-inf only:
    the one-step L2 attack is :class:`~common.attacks.pgd.PGD` with ``norm="l2"``, ``steps=1``.

    Args:
        epsilon: perturbation size (relative to each sample's maximum absolute intensity by default).
        kwargs: the common settings of :class:`~common.attacks.base.Attack` (``loss``, ``relative``, ``clip``,
            ``temperature``/``logit_scale``, ``inferer``, ``amp``).

    Example::

        attack = FGSM(epsilon=0.05)
        adv = attack(model, images, labels)
        advs = attack.sweep(model, images, labels, [0.0, 0.001, 0.002])   # one gradient for the whole sweep
    """

    name = "FGSM"

    def __init__(self, epsilon: float, **kwargs: Any) -> None:
        super().__init__(epsilon, steps=1, alpha=None, **kwargs)

    @property
    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in super().settings.items() if k not in ("steps", "alpha")}

    def step(self, images: Tensor, grad: Tensor, step_size: Tensor | float) -> Tensor:
        return images + step_size * grad.sign()

    def sweep(
        self,
        model: Callable[..., Tensor],
        images: Tensor,
        labels: Tensor,
        epsilons: Sequence[float],
        callback: Callable[[AttackStep], None] | None = None,
    ) -> list[Tensor]:
        """FGSM at every epsilon of a sweep from ONE forward and backward pass.

        The gradient sign does not depend on epsilon, so entry ``i`` equals ``FGSM(epsilons[i], **same settings)``
        applied to the same inputs (this object's own ``epsilon`` is not used).

        Args:
            model: as for ``__call__``.
            images: clean images (B, C, *spatial).
            labels: BraTS labels (B, 1, *spatial).
            epsilons: perturbation sizes, each checked like ``epsilon``.
            callback: called once per epsilon, in order, with the step-1 record of that epsilon's adversarial batch
                (the per-sample losses and zero-gradient fractions are those of the shared gradient).

        Returns:
            One adversarial batch per epsilon.
        """
        epsilons = [_check_epsilon(epsilon, self.relative) for epsilon in epsilons]
        clean, labels, scale = self._prepare(images, labels)
        with eval_mode(model), torch.enable_grad():
            self.set_loss_step(1, 1)
            losses, grad, logits = self._loss_and_gradient(model, clean, labels)
        records = callback is not None or self.stop_criterion is not None
        zero = (grad == 0).flatten(1).float().mean(1) if records else losses
        stopped, active = None, None
        if self.stop_criterion is not None:
            # as in __call__: a sample the criterion stops at the clean input keeps it, at every epsilon
            stopped = self._stopped(AttackProbe(1, 0, clean, logits, labels, losses, zero))
            stopped = stopped.view(-1, *[1] * (clean.ndim - 1))
            active = None if not bool(stopped.any()) else ~stopped.flatten()
        predictions = self.task.predict(logits) if callback is not None else None
        adversarials = []
        for epsilon in epsilons:
            threat = self.threat_model(clean, epsilon * scale)
            # the same expressions as __call__ (where alpha = epsilon), so each result is bit-identical to FGSM(epsilon)
            adversarial = threat.project(self.step(clean, grad, epsilon * scale))
            if stopped is not None:
                adversarial = torch.where(stopped, clean, adversarial)
            adversarials.append(adversarial)
            if callback is not None:
                callback(AttackStep(1, adversarial, losses, zero, 0, active, predictions))
        return adversarials
