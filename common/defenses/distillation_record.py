"""What defensive distillation did to the logit scale: the student's logit norm relative to its teacher's.

The mechanism of defensive distillation (Papernot et al. 2016; Liu et al. 2021, "Defenses", eqs. 4 and 7): a student
trained at temperature ``T`` to match its teacher's soft labels ``softmax(z_teacher / tau)`` learns
``z_student / T ~ z_teacher / tau``, i.e. logits about ``T / tau`` times its teacher's, and is then deployed on its
raw logits, where its softmax saturates. With the paper's recipe (teacher trained at ``T``, ``tau = T``) student and
teacher share the scale, both about ``T`` times an undefended network's; with this project's quick approximation
(teacher trained at ``T = 1``, ``tau = 1``) the student's logits are about ``T`` times the teacher's. The record
written here lets a reader check that on the trained model.

``T / tau`` is the ratio at which the student's soft labels equal the teacher's. Papernot et al. match them with
cross-entropy, which is minimised there; the soft Dice of eq. 7 is not (Dice rewards outputs sharper than the
target), so a long distillation may carry the ratio past ``T / tau``: on the tiny network of
``tests/defenses/test_distillation_record.py`` (T = 10, tau = 1, SGD) the ratio went from 1 to 22 after 140 epochs at
lr 1 and to 98 after 440 (the script is in the commit message that added this module).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import Tensor, nn

from common.bundles import DISTILLATION_RECORD, find_bundle, training_overrides
from common.defenses.training_step import unwrap_network
from common.engines.checkpoint import load_weights
from common.errors import RobustsegError
from common.utils.files import write_atomic
from common.utils.validation import check_int, check_number

__all__ = ["DistillationRecord", "centred_logit_norm", "distillation_recipe", "measure_logit_norms"]

logger = logging.getLogger(__name__)

Inferer = Callable[[Tensor, nn.Module], Tensor]


def centred_logit_norm(logits: Tensor) -> Tensor:
    """Per-voxel L2 norm over the classes of ``logits`` (B, C, *spatial) minus their class mean: (B, *spatial).

    The softmax ignores a shift common to all classes, so only the centred logits carry the scale that distillation
    changes; a network may drift in the common shift freely.
    """
    if logits.ndim < 2:
        raise RobustsegError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}.")
    logits = logits.float()
    return torch.linalg.vector_norm(logits - logits.mean(dim=1, keepdim=True), dim=1)


def distillation_recipe(temperature: float, teacher_temperature: float, teacher_train_temperature: float) -> str:
    """Name the recipe: ``"paper"``, ``"approximation"`` or ``"other"``.

    ``"paper"``: the teacher was trained at ``T`` and softened at ``T`` (Papernot et al. 2016; Liu et al. 2021).
    ``"approximation"``: a teacher trained at ``T = 1`` (the undefended baseline) softened at 1, the student still
    trained at ``T``. ``"other"``: anything else, e.g. a ``T = 1`` teacher softened at ``T`` (nearly uniform labels).
    """
    if teacher_train_temperature == temperature and teacher_temperature == temperature:
        return "paper"
    if teacher_train_temperature == 1 and teacher_temperature == 1:
        return "approximation"
    return "other"


def _images(batch: Any) -> Tensor:
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise RobustsegError(f"a batch has no 'image' key (keys: {sorted(batch)}); expected MONAI dictionaries.")
        batch = batch["image"]
    if not isinstance(batch, Tensor):
        raise RobustsegError(f"a batch holds a {type(batch).__name__}, expected an image tensor or a dictionary.")
    return batch


def measure_logit_norms(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[Any],
    inferer: Inferer | None = None,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
) -> dict[str, float | int]:
    """Mean per-voxel centred logit norm of ``student`` and ``teacher`` on the same inputs, and their ratio.

    Both networks run in eval mode without gradients (their modes are restored afterwards); each voxel of each batch
    counts once (:func:`centred_logit_norm`).

    Args:
        student: the distilled network.
        teacher: its teacher.
        batches: image tensors (B, C_in, *spatial) or MONAI dictionaries with an ``image`` key, e.g. a validation
            ``DataLoader``.
        inferer: ``inferer(images, network) -> logits`` (a MONAI inferer: sliding window, autocast); ``None`` calls
            the network.
        device: where the images go (``None``: the student's device).
        max_batches: stop after this many batches (``None``: all).

    Returns:
        ``{"student_logit_norm", "teacher_logit_norm", "logit_norm_ratio", "batches", "voxels"}``.

    Raises:
        RobustsegError: if ``batches`` is empty, a batch holds no image, ``max_batches`` < 1, the logits differ in
            shape, or the teacher's norm is 0.
    """
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, 1)
    if device is None:
        parameter = next(student.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    run = inferer if inferer is not None else (lambda images, network: network(images))
    modes = [(m, m.training) for net in (student, teacher) for m in net.modules()]
    sums = {"student": 0.0, "teacher": 0.0}
    voxels = batches_seen = 0
    try:
        student.eval()
        teacher.eval()
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and batches_seen >= max_batches:
                    break
                images = _images(batch).to(device)
                student_logits, teacher_logits = run(images, student), run(images, teacher)
                if student_logits.shape != teacher_logits.shape:
                    raise RobustsegError(
                        f"student logits of shape {tuple(student_logits.shape)} do not match teacher logits of shape "
                        f"{tuple(teacher_logits.shape)}."
                    )
                student_norm, teacher_norm = centred_logit_norm(student_logits), centred_logit_norm(teacher_logits)
                sums["student"] += float(student_norm.sum())
                sums["teacher"] += float(teacher_norm.sum())
                voxels += student_norm.numel()
                batches_seen += 1
    finally:
        for module, training in modes:
            module.train(training)
    if not batches_seen:
        raise RobustsegError("batches: no batch to measure the logit norms on.")
    student_mean, teacher_mean = sums["student"] / voxels, sums["teacher"] / voxels
    if teacher_mean == 0:
        raise RobustsegError("the teacher's logits are the same for every class on every voxel (norm 0).")
    return {
        "student_logit_norm": student_mean,
        "teacher_logit_norm": teacher_mean,
        "logit_norm_ratio": student_mean / teacher_mean,
        "batches": batches_seen,
        "voxels": voxels,
    }


class DistillationRecord:
    """Ignite handler: when distillation training completes, write the recipe and the logit scale beside the weights.

    At ``Events.COMPLETED`` (after the final validation, so ``model.pt`` is the deployed, best-validated student) it
    measures :func:`measure_logit_norms` of that student and the teacher on ``data_loader`` and writes
    ``<ckpt_dir>/distillation_record.json``: the recipe (:func:`distillation_recipe`), ``temperature`` T,
    ``teacher_temperature`` tau, the temperature the teacher was trained at (``train_temperature`` in the teacher
    bundle's ``models/training_settings.json``; 1 when absent, an ordinary baseline), the two norms, their ratio
    and ``T / tau``, the ratio at which the student's soft labels equal the teacher's (Papernot et al. 2016; Liu et
    al. 2021, eqs. 4 and 7; the module docstring says why eq. 7 may overshoot it).

    A teacher softened at another temperature than it was trained at gets a warning at construction: a ``T = 1``
    teacher softened at a large ``T`` gives nearly uniform soft labels, and training collapses.

    Args:
        ckpt_dir: the bundle's ``models/`` folder.
        teacher: the frozen teacher network (``load_teacher``).
        teacher_bundle: the teacher's bundle folder or name, to read the temperature it was trained at.
        temperature: the distillation temperature T > 0.
        teacher_temperature: the temperature tau > 0 of the teacher's soft labels.
        data_loader: the data to measure on, e.g. ``validate#dataloader``.
        inferer: ``inferer(images, network)``, e.g. ``validate#inferer``; ``None`` calls the network.
        max_batches: measure on at most this many batches (``None``: all).
        weights: the student's weights file in ``ckpt_dir``; if missing, the network as training left it.

    Raises:
        RobustsegError: if an argument is invalid or the teacher bundle is not found (at construction).

    Example::

        "+train#handlers": [{"_target_": "common.defenses.DistillationRecord", "ckpt_dir": "@ckpt_dir",
            "teacher": "@teacher", "teacher_bundle": "@teacher_bundle", "temperature": "@temperature",
            "teacher_temperature": "@teacher_temperature", "data_loader": "@validate#dataloader",
            "inferer": "@validate#inferer"}]

    (inline in the handler list: MONAI's ``check_properties`` reads each handler as a dictionary).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        teacher: nn.Module,
        teacher_bundle: str | os.PathLike,
        temperature: float,
        teacher_temperature: float,
        data_loader: Iterable[Any],
        inferer: Inferer | None = None,
        max_batches: int | None = None,
        weights: str = "model.pt",
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise RobustsegError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}.")
        self.ckpt_dir = Path(ckpt_dir)
        self.teacher = teacher
        self.teacher_root = find_bundle(teacher_bundle, what="teacher bundle", require_metadata=False)
        self.temperature = check_number("temperature", temperature, 0, min_inclusive=False)
        self.teacher_temperature = check_number("teacher_temperature", teacher_temperature, 0, min_inclusive=False)
        trained_at = training_overrides(self.teacher_root).get("train_temperature", 1.0)
        self.teacher_train_temperature = check_number(
            "train_temperature", trained_at, 0, min_inclusive=False, hint=f"in {self.teacher_root.name}'s record"
        )
        self.data_loader = data_loader
        self.inferer = inferer
        self.max_batches = None if max_batches is None else check_int("max_batches", max_batches, 1)
        self.weights = weights
        self.recipe = distillation_recipe(self.temperature, self.teacher_temperature, self.teacher_train_temperature)
        if self.teacher_temperature != self.teacher_train_temperature:
            logger.warning(
                "distillation: the teacher %s was trained at T = %g but its soft labels are taken at "
                "teacher_temperature = %g; set teacher_temperature to %g (the paper's recipe when the teacher was "
                "trained at T).",
                self.teacher_root.name,
                self.teacher_train_temperature,
                self.teacher_temperature,
                self.teacher_train_temperature,
            )

    def attach(self, engine: Engine) -> None:
        """Run at the end of ``engine``'s training (MONAI handler protocol)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def record(self, student: nn.Module) -> dict[str, Any]:
        """Measure ``student`` against the teacher: the record's content (nothing is written)."""
        weights = self.ckpt_dir / self.weights
        measured_on = str(weights) if weights.is_file() else "the network at the end of training"
        if weights.is_file():
            student = load_weights(copy.deepcopy(student), weights, map_location=next(student.parameters()).device)
        norms = measure_logit_norms(student, self.teacher, self.data_loader, self.inferer, None, self.max_batches)
        return {
            "recipe": self.recipe,
            "temperature": self.temperature,
            "teacher_temperature": self.teacher_temperature,
            "teacher_train_temperature": self.teacher_train_temperature,
            "teacher_bundle": str(self.teacher_root),
            "student_weights": measured_on,
            **norms,
            "matching_logit_norm_ratio": self.temperature / self.teacher_temperature,
            "definition": "logit norm: mean over voxels of the L2 norm over classes of the logits minus their class "
            "mean. matching ratio: T / teacher_temperature, where the student's soft labels at T equal the "
            "teacher's (Papernot et al. 2016); eq. 7's soft Dice rewards sharper outputs and may carry the ratio "
            "past it",
        }

    def __call__(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        record = self.record(unwrap_network(engine.network))
        path = self.ckpt_dir / DISTILLATION_RECORD
        write_atomic(path, json.dumps(record, indent=2) + "\n", parents=True)
        logger.info(
            "distillation (%s): student/teacher logit norm %.3g (soft labels match at %.3g); written to %s",
            self.recipe,
            record["logit_norm_ratio"],
            record["matching_logit_norm_ratio"],
            path,
        )
