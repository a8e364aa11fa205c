"""The paper's soft Dice loss (Liu et al. 2021, eq. 5) on BraTS label maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from common.data.labels import BRATS_LABELS, labels_to_indices
from common.errors import RobustsegError

__all__ = ["SoftDiceLoss"]


class SoftDiceLoss(nn.Module):
    """Soft Dice loss of Liu et al. (2021), eq. 5, computed by MONAI's :class:`~monai.losses.DiceLoss`.

    For each sample and each foreground class ``i`` (background, channel 0, is ignored as in the paper)::

        D_i = (2 * sum(p_i * y_i) + smooth) / (sum(p_i) + sum(y_i) + smooth)

    where ``p = softmax(logits / temperature)`` and ``y`` is the one-hot ground truth; the loss is
    ``1 - mean_i D_i``, averaged over the batch. MONAI's ``DiceLoss(include_background=False, to_onehot_y=True,
    smooth_nr=smooth, smooth_dr=smooth, batch=False)`` on softmax probabilities is exactly this
    (``tests/losses/test_soft_dice.py`` checks it against a hand computation). The paper writes the class average as
    ``1/N sum_{i=1}^{N-1}``; with that normalisation a perfect prediction would score ``(N-1)/N`` rather than 1, so we
    average over the ``N-1`` foreground classes -- a constant factor that changes neither the minimiser nor the
    sign of an input gradient (and hence no FGSM step).

    Training with soft Dice alone converges slowly from scratch; ``ce_weight > 0`` adds ``ce_weight`` times the
    cross-entropy of the logits (Dice+CE, as in nnU-Net), which the quick bundle overlays use.

    Args:
        smooth: the smoothing term gamma of eq. 5, added to numerator and denominator.
        include_background: also score channel 0 (the paper does not).
        temperature: divide the logits by this before the softmax (eq. 4); 1 is the ordinary softmax.
        ce_weight: weight of an added cross-entropy term; 0 gives the paper's loss.
        labels: the label value scored by each network output channel: the BraTS labels (default) or ``range(K)``
            for a ``K``-class task whose labels are the channel indices (channel 0 is then the background).

    Raises:
        RobustsegError: if ``smooth`` < 0, ``temperature`` <= 0 or ``ce_weight`` < 0; when called, for logits
            without one channel per value of ``labels`` or labels holding another value.

    Example::

        loss = SoftDiceLoss()
        value = loss(net(images), labels)   # labels: (B, 1, *spatial) holding {0, 1, 2, 4}
    """

    def __init__(
        self,
        smooth: float = 1e-5,
        include_background: bool = False,
        temperature: float = 1.0,
        ce_weight: float = 0.0,
        labels: tuple[int, ...] = BRATS_LABELS,
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise RobustsegError(f"smooth must be >= 0, got {smooth}.")
        if temperature <= 0:
            raise RobustsegError(f"temperature must be > 0, got {temperature}.")
        if ce_weight < 0:
            raise RobustsegError(f"ce_weight must be >= 0, got {ce_weight}.")
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)
        self.labels = tuple(labels)
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=False,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=False,
            reduction="mean",
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Loss of ``logits`` (B, len(self.labels), *spatial) against ``labels`` (B, 1, *spatial) holding values of
        ``self.labels``; returns a scalar."""
        if logits.shape[1] != len(self.labels):
            raise RobustsegError(
                f"logits: {logits.shape[1]} channels, expected {len(self.labels)} (one per label {list(self.labels)})."
            )
        indices = labels_to_indices(labels, self.labels)
        probs = torch.softmax(logits.float() / self.temperature, dim=1)
        loss = self.dice(probs, indices)
        if self.ce_weight > 0:
            loss = loss + self.ce_weight * F.cross_entropy(logits.float(), indices[:, 0])
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, ce_weight={self.ce_weight}, labels={self.labels}"
