"""Iterative FGSM (Kurakin et al. 2017; Liu et al. 2021, eq. 2)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from common.attacks.base import Attack

__all__ = ["IterativeFGSM"]


class IterativeFGSM(Attack):
    """i-FGSM, the paper's eq. 2: ``X_{k+1} = X_k + alpha * sign(grad_X loss(X_k, Y))``, ``X_0 = X``.

    ``steps`` signed-gradient steps of size ``alpha``, each projected onto the epsilon-ball around ``X`` and the
    valid intensity range (the basic iterative method, BIM, of torchattacks). The paper uses ``epsilon = 0.05``,
    10 steps and ``alpha * N = epsilon``, the default here. L-inf only (``norm="linf"``): the L2 iteration is
    :class:`~common.attacks.pgd.PGD` with ``norm="l2"``.

    Args:
        epsilon: radius of the L-inf ball (relative to each sample's maximum absolute intensity by default).
        steps: number of steps.
        alpha: step size; default ``epsilon / steps``.
        kwargs: the common settings of :class:`~common.attacks.base.Attack` (``loss``, ``relative``, ``clip``,
            ``temperature``/``logit_scale``, ``inferer``, ``amp``).

    Example::

        attack = IterativeFGSM(epsilon=0.05, steps=10)
        adv = attack(model, images, labels, callback=lambda record: print(record.step, record.loss))
    """

    name = "i-FGSM"

    def __init__(self, epsilon: float, steps: int = 10, alpha: float | None = None, **kwargs: Any) -> None:
        super().__init__(epsilon, steps=steps, alpha=alpha, **kwargs)

    def step(self, images: Tensor, grad: Tensor, step_size: Tensor | float) -> Tensor:
        # sign(grad) in the L-inf ball; PGD inherits this rule and steps along grad / ||grad||_2 in the L2 ball
        return images + step_size * self.direction(grad)
