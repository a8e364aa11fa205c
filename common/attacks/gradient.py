"""The input gradient of an attack loss, with loss scaling where the backward pass runs in float16.

Under fp16 autocast the backward pass carries float16 activation gradients, and the small per-voxel gradients of a
segmentation loss underflow to zero: measured on an H200 (``benchmarks/bench_gpu_amp.py``), unscaled fp16 i-FGSM and
ti-FGSM left the demo models' attacked Dice up to 0.31 higher than fp32 (0.012 on average), an attack made weaker by
its arithmetic. The remedy is the one ``torch.amp.GradScaler`` applies to weights (Micikevicius et al., "Mixed
Precision Training", ICLR 2018): multiply the loss by a large power of two before the backward pass and divide the
gradient after it, halving the factor and retrying (on the same graph) while the result is not finite. The sign and
direction of the gradient, which the attacks step along, are unchanged; bf16 has fp32's exponent range and fp32
needs no scaling.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FP16_LOSS_SCALE", "input_gradient"]

FP16_LOSS_SCALE = 2.0**16
"""The first loss scale tried under fp16 (``torch.amp.GradScaler``'s default ``init_scale``)."""

_MIN_SCALE = 1.0


def input_gradient(loss: Tensor, inputs: Tensor, fp16: bool = False) -> Tensor:
    """``d loss / d inputs``; with ``fp16``, computed through a scaled loss (see the module docstring).

    Args:
        loss: a scalar that depends on ``inputs``.
        inputs: the leaf tensor that requires gradient.
        fp16: whether the graph's backward runs in float16 (fp16 autocast).

    Returns:
        The gradient, float32 where ``inputs`` is; under ``fp16`` non-finite entries remain only if even a scale of 1
        overflows.
    """
    if not fp16:
        (grad,) = torch.autograd.grad(loss, inputs)
        return grad
    scale = FP16_LOSS_SCALE
    while True:
        last = scale <= _MIN_SCALE
        (grad,) = torch.autograd.grad(loss * scale, inputs, retain_graph=not last)
        if last or bool(torch.isfinite(grad).all()):
            return grad / scale
        scale /= 2.0
