"""Inferers that add mixed precision on any device (MONAI's engines autocast only on CUDA)."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.utils import look_up_option
from torch import Tensor

from common.errors import RobustsegError

__all__ = ["AutocastInferer"]

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
