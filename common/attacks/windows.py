"""Input gradients through a sliding-window inferer in the memory of one window, in the time of one more forward pass.

Through MONAI's ``sliding_window_inference``, autograd keeps every window's activations for the backward pass (about
100 MB per 48^3 window of the quick 3D UNet: 20 GB for the 196 windows of a 240 x 240 x 155 BraTS volume), and the
backward of each window's slicing and stitching handles a tensor of the whole volume (a full-size zero gradient per
window extracted, a full-size copy per window added): time and transient memory grow as windows x volume.

The stitched output is linear in the window outputs: ``S = sum_w P_w(m * f(x_w)) / C``, with ``P_w`` placing window
``w``, ``m`` the importance map and ``C = sum_w P_w(m)`` the count map. So the input gradient is
``sum_w E_w^T J_f(x_w)^T (m * E_w(g / C))`` for the output gradient ``g``, ``E_w`` taking window ``w``.
:func:`windowed_logits` runs MONAI's own sliding window without gradients, recording each window's place and the
importance map it used (``with_coord`` and ``process_fn``); its backward pass runs the network again on one batch of
windows at a time, with that window's share of ``g / C`` as the cotangent, and adds each window's input gradient into
place. ``tests/attacks/test_windows.py`` checks the result against autograd through MONAI's inferer.

Used by :meth:`common.attacks.Attack.logits` for a ``SlidingWindowInferer`` (alone, or inside our
``AutocastInferer`` and ``PairedForwardInferer``, as the bundles' ``inference.json`` configures it) on volumes at least
one window large.

Example::

    logits = windowed_logits(images.requires_grad_(), SlidingWindowInferer((48, 48, 48), overlap=0.25), network)
    grad = torch.autograd.grad(loss(logits, labels), images)[0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.utils import fall_back_tuple
from torch import Tensor

__all__ = ["windowed_logits"]


def _unwrap(inferer: Any, images: Tensor) -> tuple[SlidingWindowInferer, Any, torch.dtype | None] | None:
    """The MONAI ``SlidingWindowInferer`` inside ``inferer`` that :func:`windowed_logits` can differentiate, with the
    wrapper its windows go through and the autocast dtype around it; ``None`` when there is none.

    Our inferers wrap it as the bundles configure them: ``AutocastInferer(PairedForwardInferer(SlidingWindowInferer))``
    -- an autocast around everything, a speed-only batch of two copies for one small window. The sliding window must
    be exactly MONAI's class (a subclass may change the windows), write no buffers, pass no coordinates of its own,
    stitch on the images' device, and need no padding (every spatial size of ``images`` at least the window's).
    """
    from common.engines.inferers import AutocastInferer, PairedForward, PairedForwardInferer  # engines import us

    dtype = None
    if type(inferer) is AutocastInferer:
        dtype = inferer.dtype if inferer.enabled else None
        inferer = inferer.inferer
    wrap: Any = None
    if type(inferer) is PairedForwardInferer:
        max_voxels = inferer.max_voxels
        wrap = lambda network: PairedForward(network, max_voxels)  # noqa: E731
        inferer = inferer.inferer
    if type(inferer) is not SlidingWindowInferer or inferer.buffer_steps or inferer.with_coord:
        return None
    if inferer.device is not None or inferer.sw_device is not None:  # stitching elsewhere than the images
        return None
    spatial = tuple(images.shape[2:])
    roi = fall_back_tuple(inferer.roi_size, spatial)
    return (inferer, wrap, dtype) if all(r <= s for r, s in zip(roi, spatial)) else None


class _WindowedLogits(torch.autograd.Function):
    """See the module: MONAI's sliding window forward, a window-by-window backward."""

    @staticmethod
    def forward(ctx: Any, images: Tensor, inferer: SlidingWindowInferer, network: Callable[..., Tensor]) -> Tensor:
        places: list[list[tuple[slice, ...]]] = []
        weights: list[Tensor] = []

        def predictor(window: Tensor, coordinates: list[list[slice]]) -> Tensor:
            places.append([tuple(c) for c in coordinates])
            return network(window)

        def record_weight(outputs: tuple[Tensor, ...], window: Tensor, weight: Tensor) -> tuple[tuple, Tensor]:
            weights.append(weight)
            return outputs, weight

        logits = sliding_window_inference(
            images, inferer.roi_size, inferer.sw_batch_size, predictor, inferer.overlap, inferer.mode,
            inferer.sigma_scale, inferer.padding_mode, inferer.cval, inferer.sw_device, inferer.device, False,
            inferer.roi_weight_map, record_weight, None, -1, True,
        )  # fmt: skip
        if tuple(logits.shape[2:]) != tuple(images.shape[2:]):
            raise ValueError(f"windowed_logits needs outputs on the input grid, got {tuple(logits.shape)}.")
        ctx.save_for_backward(images)
        ctx.places, ctx.weights, ctx.network = places, weights, network
        ctx.autocast = (images.device.type, torch.is_autocast_enabled(images.device.type),
                        torch.get_autocast_dtype(images.device.type))  # fmt: skip
        return logits

    @staticmethod
    def backward(ctx: Any, grad_logits: Tensor) -> tuple[Tensor, None, None]:
        (images,) = ctx.saved_tensors
        count = torch.zeros((1, 1, *images.shape[2:]), dtype=grad_logits.dtype, device=grad_logits.device)
        seen: set[tuple] = set()
        for places, weight in zip(ctx.places, ctx.weights):
            for place in places:
                spatial = place[2:]
                key = tuple((s.start, s.stop) for s in spatial)
                if key not in seen:  # the count map is one image's: every window once, whichever batch row
                    seen.add(key)
                    count[(slice(None), slice(None), *spatial)] += weight.to(count.dtype)
        share = grad_logits / count
        grad = torch.zeros_like(images)
        device_type, enabled, dtype = ctx.autocast
        for places, weight in zip(ctx.places, ctx.weights):
            window = torch.cat([images[place] for place in places]).detach().requires_grad_(True)
            cotangent = torch.cat([share[place] for place in places]) * weight.to(share.dtype)
            with torch.enable_grad():
                with torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled):
                    outputs = ctx.network(window)
                (window_grad,) = torch.autograd.grad(outputs.to(cotangent.dtype), window, cotangent)
            for row, place in enumerate(places):
                grad[place] += window_grad[row : row + 1]
        return grad, None, None


def windowed_logits(images: Tensor, inferer: Any, network: Callable[..., Tensor]) -> Tensor | None:
    """``inferer(images, network)``, differentiable in ``images`` with the memory of one batch of windows; ``None``
    when ``inferer`` is not a sliding window this can differentiate (see :func:`_unwrap`).

    Args:
        images: ``(B, C, *spatial)``.
        inferer: a MONAI ``SlidingWindowInferer``, possibly inside our ``AutocastInferer`` and
            ``PairedForwardInferer``.
        network: the network (or any callable) each window batch goes through; run once more per window batch in
            the backward pass, so it must be deterministic (eval mode).

    Returns:
        The stitched logits, equal to ``inferer(images, network)`` (float32 under an autocast), or ``None``.
    """
    found = _unwrap(inferer, images)
    if found is None:
        return None
    window, wrap, dtype = found
    network = wrap(network) if wrap is not None else network
    with torch.autocast(device_type=images.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = _WindowedLogits.apply(images, window, network)
    return logits.float() if dtype is not None else logits
