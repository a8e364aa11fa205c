"""Targeted iterative FGSM (Kurakin et al. 2017; Liu et al. 2021, eq. 3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from common.attacks.ifgsm import IterativeFGSM
from common.data.labels import BRATS_LABELS
from common.errors import RobustsegError
from common.utils.validation import look_up_option

__all__ = ["TargetedIterativeFGSM"]


class TargetedIterativeFGSM(IterativeFGSM):
    """ti-FGSM, the paper's eq. 3: i-FGSM that descends the loss towards a target label map.

    ``X_{k+1} = X_k - alpha * sign(grad_X loss(X_k, Y_target))``, projected like i-FGSM. The paper prints eq. 3 with
    a plus sign but describes it as "iteratively minimizing the loss between the output label and the target
    label"; minimising is what makes the attack targeted, so the step descends. The paper's target sets every voxel
    to label 1 (necrotic and non-enhancing tumour core), the default here. The loss in the per-step records is the
    loss towards the target (it should fall). L-inf only, as the paper's attack.

    Args:
        epsilon: radius of the L-inf ball (relative to each sample's maximum absolute intensity by default).
        steps: number of steps.
        alpha: step size; default ``epsilon / steps``.
        target: a BraTS label value given to every voxel, or a label map of shape (B or 1, 1, *spatial) with
            BraTS values.
        kwargs: the common settings of :class:`~common.attacks.base.Attack`.

    Raises:
        RobustsegError: if ``target`` is not a BraTS label or label map, or does not fit the labels' shape.

    Example::

        attack = TargetedIterativeFGSM(epsilon=0.05, steps=10, target=1)
        adv = attack(model, images, labels)
    """

    name = "ti-FGSM"

    def __init__(
        self,
        epsilon: float,
        steps: int = 10,
        alpha: float | None = None,
        target: int | Tensor = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(epsilon, steps=steps, alpha=alpha, **kwargs)
        if isinstance(target, Tensor):
            if target.ndim < 3 or target.shape[1] != 1:
                raise RobustsegError(
                    f"target: a label map must have shape (B, 1, *spatial), got {tuple(target.shape)}."
                )
            self.task.check_labels(target)  # raises if a value is not a label of the task (BraTS: {0, 1, 2, 4})
            target = target.detach().clone()
        else:
            values = self.task.values
            hint = f"a {'BraTS' if values == BRATS_LABELS else 'class'} label, or a (B, 1, *spatial) label map"
            target = look_up_option("target", target, values, hint=hint)
        self.target = target

    @property
    def settings(self) -> dict[str, Any]:
        target = self.target if not isinstance(self.target, Tensor) else f"map{tuple(self.target.shape)}"
        return {**super().settings, "target": target}

    def loss_labels(self, labels: Tensor) -> Tensor:
        if not isinstance(self.target, Tensor):
            return torch.full_like(labels, self.target)
        target = self.target.to(device=labels.device, dtype=labels.dtype)
        if target.shape[0] not in (1, labels.shape[0]) or target.shape[1:] != labels.shape[1:]:
            raise RobustsegError(
                f"target: label map of shape {tuple(target.shape)} does not fit labels {tuple(labels.shape)}."
            )
        return target.expand_as(labels)

    def step(self, images: Tensor, grad: Tensor, step_size: Tensor | float) -> Tensor:
        return images - step_size * grad.sign()
