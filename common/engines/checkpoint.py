"""Checkpoints: atomic saving, resuming from the latest one, and loading weights with one-line errors."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch import nn

from common.errors import RobustsegError
from common.utils.files import write_atomic

__all__ = ["AtomicCheckpointSaver", "ResumeFromLatest", "WeightsLoader", "latest_checkpoint", "load_weights"]

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def _save_atomically(checkpoint: Any, path: Path, func: Callable[[Any, Any], None]) -> None:
    """ignite ``DiskSaver._save_func`` replacement: serialise in memory, then :func:`~common.utils.files.write_atomic`.

    ignite's own atomic mode leaves its temporary file behind when closing it fails (a full disk surfaces at the
    final flush), does not ``fsync`` before the rename, and torch's C++ writer turns the ``OSError`` of a full disk
    into a ``RuntimeError`` without a file name. Serialising to memory first (a checkpoint of the paper's networks
    is tens of MB) makes the disk write a plain Python one: the error names ``path`` and nothing is left behind.
    """
    buffer = io.BytesIO()
    func(checkpoint, buffer)
    write_atomic(path, buffer.getbuffer())


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver`, writing every file atomically.

    MONAI 1.6 creates its ignite ``DiskSaver`` with ``atomic=False``, so a run killed while saving can leave a
    truncated ``model.pt`` that a later resume or evaluation would load. Here every save is serialised in memory and
    written by :func:`~common.utils.files.write_atomic`: a temporary file in the same folder, synced, renamed over the
    target, removed on any error (a full disk, a read-only folder), so a checkpoint that exists is complete and a
    failed save leaves the previous checkpoints as they were. Arguments are those of
    :class:`~monai.handlers.CheckpointSaver`.

    :attr:`best_record` exposes the key-metric bookkeeping (ignite's ``Checkpoint``, which has ``state_dict`` /
    ``load_state_dict``): put it in the interval checkpoint so that a resumed run keeps the best score so far and
    does not overwrite ``model.pt`` with a worse model at its first validation.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler._save_func = _save_atomically  # ignite DiskSaver's one writing method

    @property
    def best_record(self) -> Any:
        """The key-metric ``Checkpoint`` (scores and file of the best model so far), or ``None``."""
        return self._key_metric_checkpoint


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """Return the interval checkpoint with the highest epoch (``*checkpoint_epoch=N.pt``) in ``ckpt_dir``, if any."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH.search(p.name))]
    return max(found)[1] if found else None


class ResumeFromLatest:
    """Resume training from the newest interval checkpoint in ``ckpt_dir`` (no-op when there is none).

    Pair it with an :class:`AtomicCheckpointSaver` that has ``save_interval=1`` and whose ``save_dict`` holds the
    network, optimizer and trainer: killing a run mid-epoch and rerunning the same command then continues from the
    last completed epoch and stops at ``max_epochs``. The checkpoint is loaded with ``weights_only=True``.

    Call it on the trainer before ``trainer.run()`` (the bundles do it in ``initialize``), so that a checkpoint that
    cannot be used stops with one line instead of inside the engine; ``attach`` loads at ``Events.STARTED`` instead.

    Args:
        ckpt_dir: folder of the interval checkpoints.
        load_dict: the objects to restore, e.g. ``{"network": net, "optimizer": opt, "trainer": trainer}``.
        map_location: passed to ``torch.load``.
        enabled: set False to always start from scratch.
    """

    def __init__(self, ckpt_dir: str, load_dict: dict, map_location: Any = None, enabled: bool = True) -> None:
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.map_location = map_location
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.ckpt_dir) if self.enabled else None
        if path is None:
            return
        epoch = int(_EPOCH.search(path.name).group(1))
        max_epochs = engine.state.max_epochs
        if max_epochs is not None and epoch > max_epochs:
            raise RobustsegError(
                f"{path}: this training already ran {epoch} epochs, more than epochs={max_epochs}; raise --epochs to "
                "continue it, or pass --resume False to train anew."
            )
        try:
            CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location=self.map_location)(engine)
        except Exception as exc:
            raise RobustsegError(
                f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                "delete it to start from the previous one or from scratch."
            ) from exc
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
        if max_epochs is not None and epoch == max_epochs:
            # ignite restarts a finished run from epoch 0 (new state): stop it at once instead
            engine.add_event_handler(Events.STARTED, _already_complete, epoch)


def _already_complete(engine: Engine, epoch: int) -> None:
    logger.info("training already completed %d epochs; nothing to do", epoch)
    engine.terminate()


def _state_dict(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RobustsegError(f"{path}: checkpoint not found (train the bundle first, or pass the right path).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RobustsegError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}).") from exc
    if isinstance(ckpt, dict) and len(ckpt) == 1 and isinstance(next(iter(ckpt.values())), dict):
        ckpt = next(iter(ckpt.values()))  # {"model": state_dict} as MONAI's CheckpointSaver writes it
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise RobustsegError(f"{path}: is not a network state dict.")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}  # DistributedDataParallel prefixes "module."


def load_weights(network: nn.Module, path: str | Path, map_location: Any = "cpu") -> nn.Module:
    """Load a trained state dict into ``network`` (strictly, ``weights_only=True``) with one-line errors.

    Args:
        network: the network built from the bundle's ``network_def`` (a DDP wrapper is unwrapped).
        path: a ``model.pt`` written by training (a bare state dict or ``{"model": state_dict}``).
        map_location: passed to ``torch.load``.

    Returns:
        ``network``, with the weights loaded.

    Raises:
        RobustsegError: the file is missing, unreadable, or does not fit the network (missing/unexpected keys or
            shape mismatches, listed briefly).
    """
    path = Path(path)
    state = _state_dict(path, map_location)
    target = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and
                  state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches (first: {mismatched[0]})")
        if missing:
            details.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise RobustsegError(
            f"{path}: does not fit the network {type(target).__name__}: {'; '.join(details)} "
            "(was it trained with the same network_def?)."
        )
    target.load_state_dict(state)
    return network


class WeightsLoader:
    """Ignite handler that loads trained weights into a network when the engine starts (see :func:`load_weights`).

    Used by the bundles' ``evaluate.json`` and ``inference.json`` instead of MONAI's ``CheckpointLoader`` so that a
    missing, corrupt or mismatched checkpoint stops with one clear line.

    Args:
        load_path: the checkpoint file.
        network: the network to fill.
        map_location: passed to ``torch.load``.
    """

    def __init__(self, load_path: str, network: nn.Module, map_location: Any = "cpu") -> None:
        self.load_path = load_path
        self.network = network
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_weights(self.network, self.load_path, self.map_location)
