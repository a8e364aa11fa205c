"""What a segmentation task means to the attacks and the scoring: its labels, its prediction, its Dice and its losses.

robustseg's own task is BraTS (:data:`BRATS`): labels {0, 1, 2, 4}, softmax or sigmoid-region outputs
(:mod:`common.data.labels`), scored by the nested regions WT, TC, ET. A third-party MONAI bundle may segment
something else: a spleen in CT, a prostate's zones in MR. :class:`ClassTask` is such a generic task: the network's
``K`` softmax output channels score the classes ``0 .. K-1`` (the labels are those indices, as in the Medical
Segmentation Decathlon), the prediction is the argmax, and every class but the background is scored by its own Dice
and named by the bundle's ``channel_def``.

An attack (:class:`common.attacks.Attack`, ``task=``) asks its task to check the labels, to build its loss by name
(:meth:`SegmentationTask.loss`: the same loss names for every task), to predict label maps and to score an iterate
(:meth:`SegmentationTask.hard_dice`: PGD's and APGD's best-iterate choice, the ``dice_zero`` stop).

Example::

    task = ClassTask(("background", "spleen"))
    attack = PGD(0.05, steps=20, loss="masked_ce", task=task)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from common.data.labels import BRATS_LABELS, REGION_CHANNELS, channel_argmax, labels_to_indices, logits_to_labels
from common.errors import RobustsegError

__all__ = ["BRATS", "BratsTask", "ClassTask", "SegmentationTask", "check_task", "is_background", "name_key",
           "score_columns"]

LossFn = Callable[[Tensor, Tensor], Tensor]

_BACKGROUND = ("background", "bg", "bkg", "backgr", "other", "none")


def name_key(name: str) -> str:
    """A ``channel_def`` name normalised for matching: lower case, ASCII letters and digits only (``T1-Gd`` ->
    ``t1gd``)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def is_background(name: str) -> bool:
    """Whether a ``channel_def`` name denotes the background (``background``, ``bg``, ...; case and spacing ignored)."""
    return name_key(name) in _BACKGROUND


class SegmentationTask:
    """The interface of a task (:data:`BRATS`, :class:`ClassTask`); see the module docstring."""

    name: str = "task"
    values: tuple[int, ...] = ()
    """The label value of each output channel."""
    score_names: tuple[str, ...] = ()
    """The names of the Dice columns of :meth:`dice`, in order."""

    def check_labels(self, labels: Tensor) -> None:
        """Raise :class:`~common.errors.RobustsegError` if ``labels`` hold a value that is not a label of the task."""
        raise NotImplementedError

    def predict(self, logits: Tensor) -> Tensor:
        """The predicted label map ``(B, 1, *spatial)`` of network outputs ``(B, C, *spatial)``."""
        raise NotImplementedError

    def dice(self, prediction: Tensor, labels: Tensor) -> Tensor:
        """Dice ``(B, len(score_names))`` of predicted label maps against the ground truth."""
        raise NotImplementedError

    def loss(self, name: str) -> LossFn:
        """A fresh attack loss of this task by name (:data:`common.attacks.base.LOSSES`' names)."""
        raise NotImplementedError

    def hard_dice(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The scored Dice of each sample ``(B,)``: the mean of :meth:`dice` over its columns for the prediction."""
        return self.dice(self.predict(logits), labels).mean(1)


class BratsTask(SegmentationTask):
    """BraTS (robustseg's own task and the Model Zoo's ``brats_mri_segmentation``): BraTS labels, WT/TC/ET Dice, the
    losses of :data:`common.attacks.base.LOSSES` (softmax or region counterpart by the output's channel count)."""

    name = "brats"
    values = BRATS_LABELS
    score_names = REGION_CHANNELS

    def check_labels(self, labels: Tensor) -> None:
        labels_to_indices(labels)

    def predict(self, logits: Tensor) -> Tensor:
        return logits_to_labels(logits)

    def dice(self, prediction: Tensor, labels: Tensor) -> Tensor:
        from common.metrics.dice import region_dice

        return region_dice(prediction, labels)

    def loss(self, name: str) -> LossFn:
        from common.attacks.base import LOSSES

        return LOSSES[name]()

    def __repr__(self) -> str:
        return "BratsTask()"


BRATS = BratsTask()
"""The BraTS task, every attack's default."""


@dataclass(frozen=True, repr=False)
class ClassTask(SegmentationTask):
    """A generic segmentation task: softmax logits over ``len(names)`` classes whose labels are the channel indices.

    Args:
        names: the name of each output channel (the bundle's ``outputs.pred.channel_def``), in channel order; at least
            two. Channel ``i`` scores label ``i``.
        background: the channel not scored (``None``: every class is scored); the default ``-1`` picks the channel
            whose name is a background name (:func:`is_background`), else channel 0 (MONAI's convention).

    Raises:
        RobustsegError: fewer than two names, repeated names, or a background index out of range.
    """

    names: tuple[str, ...]
    background: int | None = -1

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if len(names) < 2:
            raise RobustsegError(f"names: {list(names)} names {len(names)} class(es); a task needs at least two "
                                 "(the background and one class).")  # fmt: skip
        if len(set(names)) != len(names):
            raise RobustsegError(f"names: {list(names)} repeats a class name; each output channel needs its own.")
        background = self.background
        if background == -1:
            found = [i for i, n in enumerate(names) if is_background(n)]
            background = found[0] if found else 0
        if background is not None and not 0 <= background < len(names):
            raise RobustsegError(f"background: {background} is not a channel of {list(names)}.")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "background", background)

    name = "classes"

    @property
    def values(self) -> tuple[int, ...]:  # type: ignore[override]
        """The label value of each channel: its index."""
        return tuple(range(len(self.names)))

    @property
    def scored(self) -> tuple[int, ...]:
        """The channels scored by :meth:`dice`: all but the background."""
        return tuple(i for i in self.values if i != self.background)

    @property
    def score_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.names[i] for i in self.scored)

    def _check_logits(self, logits: Tensor) -> None:
        if logits.ndim < 3 or logits.shape[1] != len(self.names):
            raise RobustsegError(f"logits: shape {tuple(logits.shape)}, expected (B, {len(self.names)}, *spatial): "
                                 f"one channel per class {list(self.names)}.")  # fmt: skip

    def check_labels(self, labels: Tensor) -> None:
        labels_to_indices(labels, self.values)

    def predict(self, logits: Tensor) -> Tensor:
        self._check_logits(logits)
        return channel_argmax(logits)

    def dice(self, prediction: Tensor, labels: Tensor) -> Tensor:
        from common.metrics.dice import class_dice

        return class_dice(prediction, labels, len(self.names), self.scored)

    def loss(self, name: str) -> LossFn:
        from common.losses import segmentation as seg
        from common.losses.soft_dice import SoftDiceLoss

        values = self.values
        losses: dict[str, Callable[[], LossFn]] = {
            "soft_dice": lambda: SoftDiceLoss(labels=values, include_background=self.background is None),
            "ce": lambda: partial(seg.cross_entropy, values=values),
            "masked_ce": lambda: partial(seg.masked_cross_entropy, values=values),
            "balanced_ce": lambda: partial(seg.balanced_cross_entropy, values=values),
            "js": lambda: partial(seg.jensen_shannon, values=values),
            "segpgd": lambda: seg.SegPGDLoss(values=values),
            "cospgd": lambda: partial(seg.cospgd_loss, values=values),
        }
        if name not in losses:
            raise RobustsegError(f"loss must be one of {sorted(losses)}, got {name!r}.")
        return losses[name]()

    def describe(self) -> dict[str, object]:
        """A JSON-ready description for ``settings.json``."""
        return {"kind": "classes", "classes": list(self.names), "background": self.background,
                "scored": list(self.score_names)}  # fmt: skip

    def __repr__(self) -> str:
        return f"ClassTask(names={self.names!r}, background={self.background!r})"


def check_task(task: object) -> SegmentationTask:
    """``task`` if it is a :class:`SegmentationTask`, :data:`BRATS` for ``None``; else one error line."""
    if task is None:
        return BRATS
    if not isinstance(task, SegmentationTask):
        raise RobustsegError(f"task must be None (BraTS) or a SegmentationTask, got {task!r}.")
    return task


def score_columns(task: SegmentationTask) -> list[str]:
    """The CSV column of each Dice of ``task``: ``dice_<name>`` with the name in lower case, letters and digits."""
    columns = ["dice_" + "".join(ch if ch.isalnum() else "_" for ch in n.lower()).strip("_") for n in task.score_names]
    if len(set(columns)) != len(columns):
        raise RobustsegError(f"class names {list(task.score_names)} give the same column name twice: {columns}.")
    return columns

