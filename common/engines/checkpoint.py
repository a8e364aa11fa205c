"""Checkpoints: atomic saving, resuming from the latest one, and loading weights with one-line errors."""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver
from torch import nn

from common.errors import RobustsegError
from common.utils.files import remove_temporaries, write_atomic

__all__ = ["AtomicCheckpointSaver", "ResumeFromLatest", "WeightsLoader", "latest_checkpoint", "load_weights"]

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


class _CheckpointFile(DiskSaver):
    """ignite's :class:`~ignite.handlers.DiskSaver` as the bundles need it: atomic, durable, and a checkpoint that a
    new one replaces removed only after the new one is saved.

    ignite's ``Checkpoint`` removes the file it is about to replace *before* saving the new one: with ``n_saved=1`` a
    run killed during the save was left with no interval checkpoint at all (all its epochs lost), or no ``model.pt``,
    whose removal a resumed run then retried and failed on. Here :meth:`remove` only notes the file, and
    :meth:`__call__` removes it once the new file is in place. Files are serialised in memory and written by
    :func:`common.utils.files.write_atomic` (a temporary file in the same folder, fsynced, then renamed, removed on
    any error: ignite's atomic mode does not fsync, so a power cut could leave an empty checkpoint under the final
    name, and leaves its temporary file behind when closing it fails on a full disk).
    ``filename`` fixes the name as MONAI's ``CheckpointSaver`` does for ``model.pt``.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._replaced: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        replaced, self._replaced = self._replaced, []
        if idist.get_rank() == self.save_on_rank:
            for name in replaced:
                if name != filename:
                    (self.dirname / name).unlink(missing_ok=True)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        # serialised in memory first (a checkpoint of the paper's networks is tens of MB): torch's C++ writer turns
        # a full disk's OSError into a RuntimeError without a file name; a plain write names ``path``, and
        # write_atomic removes its temporary file on any error
        buffer = io.BytesIO()
        func(checkpoint, buffer, **self.kwargs)
        write_atomic(path, buffer.getbuffer())

    def remove(self, filename: str) -> None:
        self._replaced.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver`, writing every file atomically and never removing the
    checkpoint a new one replaces before the new one is saved.

    MONAI 1.6 creates its ignite ``DiskSaver`` with ``atomic=False``, so a run killed while saving can leave a
    truncated ``model.pt`` that a later resume or evaluation would load; and ignite removes the previous checkpoint
    before writing the next, so a kill during the save of epoch N left no checkpoint to resume from. Here every save
    is serialised in memory and written to a temporary file in the same folder, flushed to disk and renamed over the
    target (keeping group/other read permission; the temporary file is removed on any error, a full disk or a
    read-only folder), and only then is the checkpoint it replaces removed: whenever the run is killed or the disk
    fills, the newest complete checkpoint is on disk. Arguments are those of :class:`~monai.handlers.CheckpointSaver`.

    :attr:`best_record` exposes the key-metric bookkeeping (ignite's ``Checkpoint``, which has ``state_dict`` /
    ``load_state_dict``): put it in the interval checkpoint so that a resumed run keeps the best score so far and
    does not overwrite ``model.pt`` with a worse model at its first validation.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = _CheckpointFile(self.save_dir, getattr(ckpt.save_handler, "filename", None))

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

    With ``settings``, put this handler itself into the saver's ``save_dict`` under :attr:`SETTINGS_KEY`: every
    checkpoint then records the settings the training was started with, and a rerun whose settings differ (another
    learning rate, batch size, data, ε...) is refused with one line naming them, instead of continuing the earlier
    run's weights and optimizer under the new settings (the optimizer's state would even bring back the old learning
    rate). Only ``max_epochs`` may change, to train longer; a setting that only one of the two runs has is not compared
    (a checkpoint of an earlier release has none).

    Call it on the trainer before ``trainer.run()`` (the bundles do it in ``initialize``, holding the folder's
    :class:`~common.utils.lock.FolderLock`), so that a checkpoint that cannot be used stops with one line instead of
    inside the engine; ``attach`` loads at ``Events.STARTED`` instead. It first removes the temporary file that a run
    killed while saving left (:func:`~common.utils.files.remove_temporaries`, on rank 0 only, which writes the
    checkpoints; the bundles' folder lock does it too).

    Args:
        ckpt_dir: folder of the interval checkpoints.
        load_dict: the objects to restore, e.g. ``{"network": net, "optimizer": opt, "trainer": trainer}``.
        map_location: passed to ``torch.load``.
        enabled: set False to always start from scratch.
        settings: the settings that define this training (JSON values: numbers, strings, lists), e.g.
            ``{"learning_rate": 1e-4, "batch_size": 1, "datalist": "..."}``; ``None``: not checked.

    Example::

        resume = ResumeFromLatest("models", objects, settings={"learning_rate": 1e-4})
        AtomicCheckpointSaver(save_dir="models", save_dict={**objects, ResumeFromLatest.SETTINGS_KEY: resume},
                              save_interval=1, n_saved=1).attach(trainer)
        resume(trainer)
    """

    SETTINGS_KEY = "resume_settings"
    """The ``save_dict`` key under which a checkpoint records :attr:`settings`."""

    def __init__(
        self,
        ckpt_dir: str,
        load_dict: dict,
        map_location: Any = None,
        enabled: bool = True,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, Mapping):
            raise RobustsegError(f"settings must be a mapping of setting names to values or None, got {settings!r}.")
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.map_location = map_location
        self.enabled = enabled
        # as JSON gives them back: tuples become lists, paths and devices strings, so a rerun compares equal
        self.settings = None if settings is None else json.loads(json.dumps(dict(settings), default=str))

    def state_dict(self) -> dict[str, Any]:
        """The settings, as the checkpoint records them (``{}`` without settings)."""
        return dict(self.settings or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() == 0:  # the rank that writes here (another would delete what rank 0 is writing)
            remove_temporaries(self.ckpt_dir, recursive=False)  # the unfinished saves of a killed run
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
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
            if not isinstance(checkpoint, dict):
                raise TypeError(f"expected a dict of states, got {type(checkpoint).__name__}")
        except Exception as exc:
            raise RobustsegError(
                f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                "delete it to start from the previous one or from scratch."
            ) from exc
        self._check_settings(path, checkpoint.get(self.SETTINGS_KEY))
        if len(self.load_dict) == 1:
            (name,) = self.load_dict
            if name not in checkpoint:
                checkpoint = {name: checkpoint}  # ignite saves a single object's state dict bare
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint)
        except Exception as exc:
            raise RobustsegError(
                f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
                "delete it to start from the previous one or from scratch."
            ) from exc
        engine.state.max_epochs = max_epochs  # the trainer's state from the checkpoint brought the earlier run's
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
        if max_epochs is not None and epoch == max_epochs:
            # ignite restarts a finished run from epoch 0 (new state): stop it at once instead
            engine.add_event_handler(Events.STARTED, _already_complete, epoch)

    def _check_settings(self, path: Path, earlier: Any) -> None:
        """Stop if the checkpoint was written by a training with other settings than :attr:`settings`."""
        if self.settings is None or not isinstance(earlier, dict):
            return
        differs = [name for name, value in self.settings.items() if name in earlier and earlier[name] != value]
        if differs:
            before = ", ".join(f"{name}={json.dumps(earlier[name])}" for name in differs)
            now = ", ".join(f"{name}={json.dumps(self.settings[name])}" for name in differs)
            raise RobustsegError(
                f"{path}: this training was started with {before}, but this run sets {now}; rerun with the earlier "
                f"values to resume it, or move {self.ckpt_dir} away to train anew."
            )


def _already_complete(engine: Engine, epoch: int) -> None:
    logger.info("training already completed %d epochs; nothing to do", epoch)
    engine.terminate()


STATE_DICT_KEYS = ("model", "state_dict", "network", "net")
"""Keys under which a checkpoint dict may hold the network's state dict (MONAI's ``CheckpointSaver`` writes
``model``; other tools write ``state_dict``)."""


def _tensors(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _state_dict(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RobustsegError(f"{path}: checkpoint not found (train the bundle first, or pass the right path).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None:
            raise RobustsegError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}).") from exc
        raise RobustsegError(
            f"{path}: holds a pickled object ({refused.group(1)}) that weights_only=True refuses to load; expected "
            "a state dict of tensors."
        ) from exc
    except Exception as exc:
        raise RobustsegError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}).") from exc
    if isinstance(ckpt, dict) and len(ckpt) == 1 and isinstance(next(iter(ckpt.values())), dict):
        ckpt = next(iter(ckpt.values()))  # {"model": state_dict} as MONAI's CheckpointSaver writes it
    elif isinstance(ckpt, dict) and not _tensors(ckpt):
        held = [ckpt[k] for k in STATE_DICT_KEYS if _tensors(ckpt.get(k))]
        ckpt = held[0] if held else ckpt  # e.g. {"state_dict": ..., "epoch": ..., "optimizer": ...}
    if not _tensors(ckpt):
        raise RobustsegError(
            f"{path}: is not a network state dict (nor a dict holding one under {list(STATE_DICT_KEYS)})."
        )
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
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
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
