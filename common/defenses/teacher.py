"""Load a trained bundle's network as a frozen distillation teacher (Liu et al. 2021, "Defenses": the network F)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from common.bundles import find_bundle, training_overrides
from common.engines import load_weights
from common.errors import RobustsegError
from common.utils.validation import is_integer

__all__ = ["load_teacher"]

logger = logging.getLogger(__name__)


def _train_command(root: Path, config_files: Sequence[str]) -> str:
    train = [str(root / ("configs/train.json" if Path(f).name == "inference.json" else f)) for f in config_files]
    files = train[0] if len(train) == 1 else "[" + ",".join(f"'{f}'" for f in train) + "]"
    return f'python -m monai.bundle run training --config_file "{files}"'


def _declared_out_channels(network: nn.Module) -> int | None:
    """``out_channels`` of the network, looking through wrappers that hold a single module (e.g. SliceWise)."""
    module: nn.Module | None = network
    while module is not None:
        value = getattr(module, "out_channels", None)
        if is_integer(value):
            return value
        children = list(module.children())
        module = children[0] if len(children) == 1 else None
    return None


def _probed_out_channels(network: nn.Module, device: torch.device) -> int | None:
    """Output channels from a forward pass on a small zero volume, when the input channels can be found."""
    in_channels = next(
        (m.in_channels for m in network.modules() if isinstance(getattr(m, "in_channels", None), int)), None
    )
    if in_channels is None:
        return None
    try:
        with torch.no_grad():
            out = network(torch.zeros(1, in_channels, 32, 32, 32, device=device))
    except Exception as exc:  # the network may need other input sizes; DistillationStep checks at the first batch
        logger.debug("teacher output channels not probed (%s: %s)", type(exc).__name__, exc)
        return None
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim >= 2 else None


def load_teacher(
    bundle: str | Path,
    config_files: Sequence[str] = ("configs/inference.json",),
    weights: str = "models/model.pt",
    device: str | torch.device = "cpu",
    out_channels: int = 4,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The trained network of a bundle, frozen and in eval mode: the teacher F of defensive distillation.

    Builds the bundle's ``network_def`` with MONAI's :class:`~monai.bundle.ConfigParser` from ``config_files``
    (merged in order, later files overriding earlier keys, like ``--config_file "['a','b']"``; only ``network_def``
    and what it refers to are evaluated, with ``bundle_root`` set to the teacher's folder), loads ``weights`` with
    :func:`~common.engines.load_weights` (``weights_only=True``), turns off its gradients and puts it in eval mode.
    Call it once (e.g. as a config item referenced by the training step), not per iteration.

    Args:
        bundle: the teacher bundle's folder, or its name (looked up with :func:`common.bundles.find_bundle`: the
            current folder, ``./bundles/<name>``, the repository's ``bundles/<name>``).
        config_files: config files, relative to the bundle folder (or absolute), that define ``network_def``; e.g.
            ``["configs/inference.json", "configs/quick.json"]`` for a teacher trained with the quick overlay.
        weights: the trained weights, relative to the bundle folder (or absolute).
        device: where the teacher runs.
        out_channels: the number of output channels the student has (one per BraTS label); the teacher must match.
        overrides: config values to override after the files, as ``--key value`` would when the teacher was trained
            with command-line overrides (e.g. ``{"base_filters": 32}``).

    Returns:
        The teacher network on ``device``, with ``requires_grad`` off for every parameter and in eval mode.

    Raises:
        RobustsegError: the bundle or a config file is not found, the configs have no ``network_def`` or it cannot
            be built, the weights are missing ("train the teacher first: ...") or do not fit the network, or the
            teacher's number of output channels is not ``out_channels``.

    Example::

        "teacher": {"_target_": "common.defenses.load_teacher", "bundle": "brats_unet3d_baseline", "device": "@device"}
    """
    root = find_bundle(bundle, what="teacher bundle", require_metadata=False)
    if isinstance(config_files, (str, Path)):
        config_files = [str(config_files)]
    paths = [root / f for f in config_files]
    for path in paths:
        if not path.is_file():
            raise RobustsegError(f"{path}: teacher config file not found (config_files of bundle {root}).")

    parser = ConfigParser()
    try:
        parser.read_config([str(p) for p in paths])
    except Exception as exc:
        raise RobustsegError(f"{paths[-1]}: cannot read the teacher configs ({type(exc).__name__}: {exc}).") from exc
    if "network_def" not in parser:
        raise RobustsegError(f"teacher configs {[str(p) for p in paths]} define no 'network_def'.")
    parser["bundle_root"] = str(root)
    # what the teacher was trained with (grid, width, ...: models/training_settings.json), then explicit overrides
    parser.update({**training_overrides(root), **dict(overrides or {})})
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except RobustsegError:
        raise
    except Exception as exc:
        raise RobustsegError(
            f"cannot build the teacher's network_def from {[str(p) for p in paths]} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]})."
        ) from exc
    if not isinstance(network, nn.Module):
        raise RobustsegError(f"the teacher's network_def must build a torch.nn.Module, got {type(network).__name__}.")

    device = torch.device(device)
    network = network.to(device)
    weights_path = Path(weights) if Path(weights).is_absolute() else root / weights
    if not weights_path.is_file():
        raise RobustsegError(
            f"{weights_path}: teacher weights not found; train the teacher first: {_train_command(root, config_files)}"
        )
    try:
        load_weights(network, weights_path, map_location=device)
    except RobustsegError as exc:
        raise RobustsegError(f"teacher: {exc}") from exc
    network.requires_grad_(False)
    network.eval()

    channels = _declared_out_channels(network)
    if channels is None:
        channels = _probed_out_channels(network, device)
    if channels is not None and channels != out_channels:
        raise RobustsegError(
            f"teacher {root.name}: network has {channels} output channels, expected {out_channels} (one per label, "
            "as the student)."
        )
    return network

