"""Inferers that add mixed precision on any device (MONAI's engines autocast only on CUDA) and pick a fast CPU kernel
for a single small volume."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.utils import look_up_option
from torch import Tensor, nn

from common.errors import RobustsegError
from common.utils.validation import check_int

__all__ = ["AutocastInferer", "PairedForward", "PairedForwardInferer", "SMALL_CPU_VOLUME"]

SMALL_CPU_VOLUME = 48**3
"""Up to this many voxels per channel, :class:`PairedForward` runs a CPU batch of one as a batch of two."""

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AutocastInferer(Inferer):
    """Run another MONAI inferer under ``torch.autocast`` on the inputs' device type (CPU included).

    MONAI's ``SupervisedTrainer(amp=True)`` autocasts only on CUDA; this inferer puts the autocast around the
    network call instead, so the same config gets bf16 on a CPU with AMX (about 3.5x faster for a 3D UNet
    forward+backward on the development machine) and on a GPU. The output is returned in float32 so losses and
    metrics are computed in full precision; the backward pass follows the autocast graph.

    Args:
        inferer: the inferer to wrap (default :class:`~monai.inferers.SimpleInferer`).
        enabled: turn autocast off to get plain float32 (then this is a pass-through).
        dtype: "bfloat16" (default; no loss scaling needed) or "float16" (CUDA).

    Example::

        inferer = AutocastInferer(SlidingWindowInferer(roi_size=(128, 128, 128)))
        logits = inferer(images, network)
    """

    def __init__(self, inferer: Inferer | None = None, enabled: bool = True, dtype: str = "bfloat16") -> None:
        super().__init__()
        if inferer is not None and not callable(inferer):
            raise RobustsegError(f"inferer must be a MONAI inferer, got {type(inferer).__name__}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.enabled = bool(enabled)
        self.dtype = look_up_option(dtype, _DTYPES)

    def __call__(self, inputs: Tensor, network: Any, *args: Any, **kwargs: Any) -> Tensor:
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype):
            out = self.inferer(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, Tensor) else out


class PairedForward(nn.Module):
    """A network whose CPU batch of ONE small volume runs as a batch of two copies: a faster convolution kernel.

    PyTorch's CPU convolution uses oneDNN only above batch and size thresholds (``ConvParams::use_mkldnn``): a batch
    of one 48^3 volume with 8 filters falls to the slow native kernel. Computing two copies and keeping the first is
    about twice as fast (``python benchmarks/bench_single_volume.py``: UNet3D base 8, 48^3, one thread, forward and
    backward 0.49 s vs 1.17 s on the development machine; ``torch.backends.mkldnn`` off and ``channels_last_3d``
    were slower). The networks' normalisations are per sample (instance norm; batch norm in eval mode), so the first
    copy is the single-volume result and the input gradient reaches the input through it (relative error of the
    input gradient against fp64: that of oneDNN's batched kernel, the one every batch of two or more uses).
    Batches of two or more, GPU inputs and volumes above ``max_voxels`` pass through unchanged.

    The wrapper holds the network as a submodule, so an attack's eval-mode switch reaches it and restores it.

    Args:
        network: the segmentation network.
        max_voxels: the largest volume (voxels per channel) that is doubled; above it oneDNN is chosen anyway for the
            first layers and the copy would cost more than it saves.

    Example::

        logits = PairedForward(network)(image)   # image (1, C, 48, 48, 48) on the CPU
    """

    def __init__(self, network: nn.Module, max_voxels: int = SMALL_CPU_VOLUME) -> None:
        super().__init__()
        if not callable(network):
            raise RobustsegError(f"network must be a callable network, got {type(network).__name__}.")
        self.network = network
        self.max_voxels = check_int("max_voxels", max_voxels, 0)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 1 and x.device.type == "cpu" and x[0, 0].numel() <= self.max_voxels:
            return self.network(torch.cat([x, x]))[:1]
        return self.network(x)


class PairedForwardInferer(Inferer):
    """Run another MONAI inferer with the network wrapped in :class:`PairedForward` (a fast kernel for one volume).

    For workflows that must run one volume at a time on a CPU: a bundle's validation and ``robustseg segment``
    (batch size 1 in their data loaders; sliding windows of one). The result equals the inner inferer's up to the
    float rounding of the other kernel.

    Args:
        inferer: the inferer to wrap (default :class:`~monai.inferers.SimpleInferer`).
        max_voxels: see :class:`PairedForward`.

    Example::

        "inferer": {"_target_": "common.engines.AutocastInferer", "enabled": "@amp",
                    "inferer": {"_target_": "common.engines.PairedForwardInferer"}}
    """

    def __init__(self, inferer: Inferer | None = None, max_voxels: int = SMALL_CPU_VOLUME) -> None:
        super().__init__()
        if inferer is not None and not callable(inferer):
            raise RobustsegError(f"inferer must be a MONAI inferer, got {type(inferer).__name__}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.max_voxels = check_int("max_voxels", max_voxels, 0)

    def __call__(self, inputs: Tensor, network: Any, *args: Any, **kwargs: Any) -> Tensor:
        return self.inferer(inputs, PairedForward(network, self.max_voxels), *args, **kwargs)
