"""The robustness evaluation (Liu et al. 2021, "Measuring Robustness", Table 1, Figs. 3-5): attack trained model
bundles on the test subjects and write one CSV row per subject x model x attack x threat x epsilon x iteration.

What is run, per test subject (the paper's settings are the defaults):

* **clean**: each model on the preprocessed input (``attack none``, ``threat clean``, epsilon 0, iteration 0);
* **white-box**: each model attacked through its own gradient: the FGSM epsilon sweep (one gradient per subject and
  model for all epsilons, :meth:`common.attacks.FGSM.sweep`) and the Table 1 attacks at ``epsilon`` (FGSM,
  i-FGSM with 10 steps of ``epsilon / 10``, ti-FGSM with 10 steps towards label 1 everywhere), every iterate of an
  iterative attack scored from one run (paper Figs. 3-4); an FGSM of the attack list with the sweep's settings is
  one more epsilon of the sweep;
* **adaptive**: for each model whose metadata has a distillation ``temperature`` T, the same attacks on the logits
  divided by T (``temperature=T``; Carlini & Wagner 2016): a distilled student at T = 1 saturates its softmax and
  masks the gradient, which the zero-gradient fraction of the white-box rows shows;
* **transfer**: the white-box adversarial inputs crafted on ``transfer_source`` (default: the first undefended model)
  applied to every other model (final iterates; computed once per subject and reused for every target).

Each row's Dice (WT, TC, ET) is that of the argmax of the model's logits (eval mode, the bundle's ``amp``), its input
quality (PSNR, SSIM, RMSE, L-inf and L2 norms) is measured against the clean preprocessed input, ``seconds`` is the
attack's wall time up to that iterate and ``zero_grad_fraction`` the share of exactly-zero input gradients at the
first step. The columns are those of :mod:`common.report.schema`.

The work runs in an ignite :class:`~ignite.engine.Engine`, one subject per iteration, with a progress bar; rows are
appended and flushed as they are computed, and a rerun skips every (model, subject, attack, threat, source, epsilon,
iteration, loss) already in the CSV, so an interrupted evaluation resumes. Under ``torchrun`` (``WORLD_SIZE > 1``)
the subjects are sharded across ranks, each rank appends to its own part file, and rank 0 merges them into
``results.csv`` after a barrier. Every setting, model and data file is checked before anything is written.

Outputs in ``output_dir``: ``results.csv``, ``settings.json`` (models with their training settings, attacks, data,
package versions), ``examples/<subject>/`` (NIfTI volumes of one subject and ``index.json``, for the report's figure
panels) and ``tables/`` (:func:`common.report.tables.write_tables`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.data import MetaTensor, partition_dataset
from torch import Tensor

from common.attacks.base import Attack, AttackStep
from common.attacks.fgsm import FGSM
from common.attacks.registry import make_attack
from common.data.labels import logits_to_labels
from common.data.splits import load_split
from common.engines.inferers import AutocastInferer
from common.engines.model_bundle import ModelBundle, check_same_preprocessing, load_model_bundle
from common.engines.progress import ProgressBarHandler
from common.engines.quality import InputQuality
from common.errors import RobustsegError
from common.metrics.dice import region_dice
from common.report.schema import COLUMN_NAMES, format_record

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_SWEEP_EPSILONS",
    "KEY_COLUMNS",
    "AttackJob",
    "RobustnessEvaluation",
    "merge_results",
    "shard_subjects",
]

logger = logging.getLogger(__name__)

DEFAULT_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "FGSM"},
    {"name": "i-FGSM", "steps": 10},
    {"name": "ti-FGSM", "steps": 10, "target": 1},
)
"""The paper's Table 1 attacks (each takes ``epsilon`` and ``loss`` from the evaluation unless given)."""
DEFAULT_SWEEP_EPSILONS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1)
"""FGSM sweep of the defence figures and Tables 2-3 (0.05 and 0.1 included; epsilon 0 is the clean rows)."""
KEY_COLUMNS: tuple[str, ...] = ("model", "subject", "attack", "threat", "source_model", "epsilon", "iteration", "loss")
"""The columns that identify a row; a rerun skips rows whose key is already in the CSV."""
RESULTS_NAME = "results.csv"
SETTINGS_NAME = "settings.json"
EXAMPLES_DIR = "examples"
TABLES_DIR = "tables"
_PART_PREFIX = "results.part"

Key = tuple[str, str, str, str, str, float, int, str]


# ---------------------------------------------------------------------------------------------------- attack jobs
@dataclass(frozen=True)
class Adversarial:
    """One scored adversarial input: which attack made it, at which epsilon and iterate, in how much time."""

    attack: Attack
    epsilon: float
    iteration: int
    image: Tensor
    seconds: float
    zero_grad_fraction: float


def _loss_name(attack: Attack) -> str:
    loss = attack.loss
    return loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)


@dataclass(frozen=True)
class AttackJob:
    """One attack run on one input, scored at one or more adversarial inputs.

    A *sweep* job is FGSM at several epsilons from one gradient (:meth:`FGSM.sweep`); an *iterative* job is one
    attack whose every iterate is scored (the final one only for PGD with restarts, whose result is the best
    restart rather than the last iterate).

    Attributes:
        attacks: a sweep's FGSM attacks, one per epsilon in ascending order (identical settings otherwise), or the
            one attack of an iterative job.
        sweep: whether this is a sweep.
        table_epsilons: epsilons at which this job is a Table 1 attack (its examples are saved there).
    """

    attacks: tuple[Attack, ...]
    sweep: bool
    table_epsilons: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        return type(self.attacks[0]).name

    @property
    def loss(self) -> str:
        return _loss_name(self.attacks[0])

    @property
    def steps(self) -> int:
        return self.attacks[0].steps

    @property
    def final_iteration(self) -> int:
        """The iteration of the rows that score the attack's result (1 for a sweep)."""
        return 1 if self.sweep else self.steps

    @property
    def per_iteration(self) -> bool:
        """Whether every iterate gets a row (iterative attacks without restarts)."""
        return not self.sweep and getattr(self.attacks[0], "restarts", 1) == 1

    def slots(self, final_only: bool = False) -> list[tuple[Attack, float, int]]:
        """The (attack, epsilon, iteration) of each row this job produces (``final_only`` for transfer rows)."""
        if self.sweep:
            return [(a, a.epsilon, 1) for a in self.attacks]
        attack = self.attacks[0]
        if self.per_iteration and not final_only:
            return [(attack, attack.epsilon, k) for k in range(1, attack.steps + 1)]
        return [(attack, attack.epsilon, attack.steps)]

    def run(
        self, model: Callable[..., Tensor], image: Tensor, label: Tensor, final_only: bool = False
    ) -> list[Adversarial]:
        """Run the attack on one input and return the adversarial inputs of :meth:`slots`, in that order.

        Args:
            model: the network attacked.
            image: clean input (1, C, *spatial).
            label: BraTS labels (1, 1, *spatial).
            final_only: keep only the final iterate (transfer).

        Returns:
            One :class:`Adversarial` per slot, with the attack time up to it.
        """
        records: list[AttackStep] = []
        times: list[float] = []
        start = time.perf_counter()

        def record(step: AttackStep) -> None:  # kept trivial: its time counts in the attack's
            times.append(time.perf_counter() - start)
            records.append(step)

        if self.sweep:
            epsilons = [a.epsilon for a in self.attacks]
            sweep = self.attacks[0].sweep  # type: ignore[attr-defined]
            adversarials = sweep(model, image, label, epsilons, callback=record)
            zero = records[0].zero_grad_fraction
            return [
                Adversarial(a, a.epsilon, 1, adv, t, zero)
                for a, adv, t in zip(self.attacks, adversarials, times, strict=True)
            ]
        attack = self.attacks[0]
        final = attack(model, image, label, callback=record)
        total = time.perf_counter() - start
        zero = records[0].zero_grad_fraction
        if self.per_iteration and not final_only:
            return [
                Adversarial(attack, attack.epsilon, r.step, r.adversarial, t, zero)
                for r, t in zip(records, times, strict=True)
            ]
        return [Adversarial(attack, attack.epsilon, attack.steps, final, total, zero)]


def _spec(item: Any, what: str) -> dict[str, Any]:
    if isinstance(item, str):
        return {"name": item}
    if isinstance(item, Mapping):
        return dict(item)
    raise RobustsegError(f"{what}: each attack must be a spec {{'name': ..., settings}} or a name, got {item!r}.")


def _fgsm_group(attack: Attack) -> str:
    """An FGSM's settings without epsilon: FGSMs that agree on it share one gradient (one sweep)."""
    return repr({k: v for k, v in attack.settings.items() if k != "epsilon"})


def _check_epsilons(epsilons: Any, what: str) -> list[float]:
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Iterable):
        raise RobustsegError(f"{what} must be a list of numbers, got {epsilons!r}.")
    values = []
    for eps in epsilons:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
            raise RobustsegError(f"{what}: epsilon must be a finite number, got {eps!r}.")
        values.append(float(eps))
    return values


def build_jobs(
    attacks: Sequence[Mapping[str, Any] | str],
    sweep: Mapping[str, Any] | str | None,
    sweep_epsilons: Sequence[float],
    epsilon: float,
    loss: str,
    attack_amp: bool = False,
    temperature: float | None = None,
) -> list[AttackJob]:
    """The attack jobs of one threat: FGSMs grouped into sweeps, then the iterative attacks, in the given order.

    Args:
        attacks: the Table 1 attack specs (``epsilon``, ``loss`` and ``amp`` default to the arguments).
        sweep: the FGSM spec of the epsilon sweep, or ``None`` for no sweep.
        sweep_epsilons: the sweep's epsilons.
        epsilon: the default epsilon of the attack specs.
        loss: the default attack loss.
        attack_amp: the default ``amp`` of the attacks (bf16 forward/backward).
        temperature: divide the logits by this in every attack (the adaptive threat); ``None`` for white-box.

    Returns:
        The jobs.

    Raises:
        RobustsegError: for an unknown attack name or setting, a bad epsilon, a sweep that is not FGSM, or two
            attacks that would write rows with the same key (name, loss, epsilon).
    """
    overrides = {} if temperature is None else {"temperature": temperature}
    defaults = {"epsilon": epsilon, "loss": loss, "amp": attack_amp}
    groups: dict[str, tuple[list[Attack], set[float]]] = {}
    order: list[Any] = []
    if sweep is not None:
        spec = {**defaults, **_spec(sweep, "sweep")}
        epsilons = _check_epsilons(sweep_epsilons, "sweep_epsilons")
        if epsilons:
            for eps in epsilons:
                attack = make_attack({**spec, "epsilon": eps}, **overrides)
                if not isinstance(attack, FGSM):
                    raise RobustsegError(f"sweep must be an FGSM spec (one gradient for all epsilons), got {sweep!r}.")
                group = groups.setdefault(_fgsm_group(attack), ([], set()))
                if group not in order:
                    order.append(group)
                group[0].append(attack)
    for item in attacks:
        attack = make_attack({**defaults, **_spec(item, "attacks")}, **overrides)
        if isinstance(attack, FGSM):
            group = groups.setdefault(_fgsm_group(attack), ([], set()))
            if group not in order:
                order.append(group)
            group[0].append(attack)
            group[1].add(attack.epsilon)
        else:
            order.append(attack)
    jobs: list[AttackJob] = []
    for entry in order:
        if isinstance(entry, Attack):
            jobs.append(AttackJob((entry,), sweep=False, table_epsilons=(entry.epsilon,)))
            continue
        members, table = entry
        unique = {a.epsilon: a for a in members}  # the Table 1 FGSM at a sweep epsilon is that sweep point
        ordered = tuple(unique[e] for e in sorted(unique))
        jobs.append(AttackJob(ordered, sweep=True, table_epsilons=tuple(sorted(table))))
    seen: dict[tuple[str, str, float], str] = {}
    for job in jobs:
        for attack, eps, _ in job.slots():
            key = (job.name, job.loss, eps)
            if key in seen and seen[key] != repr(attack):
                raise RobustsegError(
                    f"attacks: {job.name} with loss {job.loss} at epsilon {eps} is configured twice ({seen[key]} and "
                    f"{attack!r}); their CSV rows could not be told apart."
                )
            seen[key] = repr(attack)
    return jobs


# ----------------------------------------------------------------------------------------------- results files
def _read_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a results file (a line cut short by an interruption is dropped)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        text = handle.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        return []
    if tuple(header) != COLUMN_NAMES:
        raise RobustsegError(
            f"{path}: its columns differ from this version's ({list(COLUMN_NAMES)}); choose another output_dir or "
            "move the file away."
        )
    return [dict(zip(header, fields)) for fields in reader if len(fields) == len(header)]


def _row_key(row: Mapping[str, Any]) -> Key:
    return (
        str(row["model"]), str(row["subject"]), str(row["attack"]), str(row["threat"]), str(row["source_model"] or ""),
        float(row["epsilon"]), int(row["iteration"]), str(row["loss"] or ""),
    )  # fmt: skip


def _part_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob(f"{_PART_PREFIX}*.csv"))


def _write_rows_atomic(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMN_NAMES)
            for row in rows:
                writer.writerow([row[c] for c in COLUMN_NAMES])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def merge_results(output_dir: str | os.PathLike, subjects: Sequence[str] | None = None) -> Path:
    """Merge the ranks' part files into ``results.csv`` (rank 0, after all ranks finished) and remove them.

    Rows already in ``results.csv`` come first; a key present twice keeps its first row. With ``subjects``, rows are
    ordered by subject in that order (stable otherwise), so the merged file does not depend on the number of ranks.

    Args:
        output_dir: the evaluation's output folder.
        subjects: the test subjects in datalist order.

    Returns:
        The path of ``results.csv``.
    """
    output_dir = Path(output_dir)
    parts = _part_files(output_dir)
    target = output_dir / RESULTS_NAME
    if not parts:
        return target
    rows: dict[Key, dict[str, str]] = {}
    for path in [target, *parts]:
        for row in _read_rows(path):
            rows.setdefault(_row_key(row), row)
    ordered = list(rows.values())
    if subjects is not None:
        rank = {s: i for i, s in enumerate(subjects)}
        ordered.sort(key=lambda r: rank.get(r["subject"], len(rank)))
    _write_rows_atomic(target, ordered)
    for path in parts:
        path.unlink()
    return target


def shard_subjects(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """The subjects of one rank: every ``world_size``-th from ``rank`` on (no padding, so none is scored twice).

    This is :func:`monai.data.partition_dataset` with ``shuffle=False, even_divisible=False``, which refuses fewer
    items than ranks; here a rank may then get none.

    Args:
        items: all subjects, in order.
        rank: this process's rank.
        world_size: the number of processes.

    Returns:
        This rank's subjects, in order.
    """
    if not 0 <= rank < world_size:
        raise RobustsegError(f"rank must be in [0, {world_size}), got {rank}.")
    if len(items) < world_size:
        return list(items[rank::world_size])
    return list(partition_dataset(list(items), num_partitions=world_size, shuffle=False, even_divisible=False)[rank])


class _RowWriter:
    """Append rows to a results file, header first, flushing after each batch of rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n"):
            # a line cut short by an interruption: drop it before appending after it
            _write_rows_atomic(path, _read_rows(path))
        self.handle = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle)
        if path.stat().st_size == 0:
            self.writer.writerow(COLUMN_NAMES)
            self.handle.flush()

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        for record in records:
            self.writer.writerow(format_record(record))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


# ------------------------------------------------------------------------------------------------------ helpers
def _subject_id(entry: Mapping[str, Any]) -> str:
    subject = entry.get("subject")
    if isinstance(subject, str) and subject:
        return subject
    image = entry.get("image")
    first = image[0] if isinstance(image, (list, tuple)) and image else image
    if isinstance(first, str):
        name = Path(first).name
        for suffix in (".nii.gz", ".nii"):
            name = name.removesuffix(suffix)
        return name
    raise RobustsegError(f"datalist entry {entry!r}: no 'subject' id and no image path to name it by.")


def _files_of(entry: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("image", "label"):
        value = entry.get(key)
        out += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str)]
    return out


def _versions() -> dict[str, str]:
    import ignite
    import monai
    import nibabel

    import common

    return {
        "robustseg": common.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "pytorch-ignite": ignite.__version__,
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
        "platform": platform.platform(),
    }


def _plain_tensor(value: Any) -> Tensor:
    """A plain tensor (a MetaTensor's metadata would follow every attack step at a cost)."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def _eps_text(epsilon: float) -> str:
    return f"{epsilon:g}"


@dataclass(frozen=True)
class _Unit:
    """The rows of one model under one threat for one attack job (``job`` is ``None`` for the clean rows)."""

    model: int
    threat: str
    source: int | None
    job: AttackJob | None

    @property
    def transfer(self) -> bool:
        return self.threat == "transfer"


# -------------------------------------------------------------------------------------------------- evaluation
class RobustnessEvaluation:
    """Attack trained model bundles on a test set and write the robustness CSV, settings, examples and tables.

    Everything is loaded and checked when the object is built (model bundles and weights, identical preprocessing,
    attack specs and epsilons, the datalist and its files, an earlier run's CSV in ``output_dir``); nothing is
    written before :meth:`run`.

    Args:
        model_bundles: model bundle folders or names (see :func:`common.engines.model_bundle.find_model_bundle`).
        output_dir: where ``results.csv``, ``settings.json``, ``examples/`` and ``tables/`` go.
        model_config_files: config files of every model bundle, merged in order (add ``configs/quick.json`` for
            bundles trained with their quick overlay).
        model_overrides: config ids -> values set in every model bundle's configs (e.g. ``{"spatial_size": [...]}``).
        datalist: the datalist whose ``testing`` split is evaluated; ``None``: the first model bundle's ``datalist``.
        attacks: the Table 1 attack specs (:func:`common.attacks.make_attack`; ``epsilon``, ``loss`` default below).
        epsilon: the paper's epsilon (0.05): default of the attack specs, Table 1's and the examples' epsilon.
        sweep: the FGSM spec of the epsilon sweep (``None``: no sweep).
        sweep_epsilons: the sweep's epsilons.
        loss: the attack loss of the specs that do not name one (the paper's ``soft_dice``).
        attack_amp: run the attacks' forward/backward passes under bf16 autocast (default fp32, as the paper).
        adaptive: also run the adaptive attacks (logits / T) on models with a distillation temperature.
        transfer_source: the model whose white-box adversarial inputs are applied to every other model: a model
            name, ``"auto"`` (the first undefended model, if there are two models or more) or ``None`` (no transfer).
        example_subject: the subject whose volumes are saved for the figure panels; ``None``: the first test
            subject; ``False`` or ``""``: none.
        device: where the models run; ``None``: ``cuda:<local rank>`` if CUDA is available, else the CPU.
        score_batch_size: adversarial inputs per batched no-grad forward pass when scoring.
        progress: show a progress bar (rank 0).
        tables: write ``tables/`` and print Table 1 at the end.

    Raises:
        RobustsegError: for any invalid setting, model bundle, datalist, or an ``output_dir`` holding results of
            other weights or attack settings.

    Example::

        evaluation = RobustnessEvaluation(["bundles/brats_unet3d_baseline"], "results",
                                          model_config_files=["configs/inference.json", "configs/quick.json"])
        evaluation.run()
    """

    def __init__(
        self,
        model_bundles: Sequence[str] | str,
        output_dir: str | os.PathLike,
        model_config_files: Sequence[str] = ("configs/inference.json",),
        model_overrides: Mapping[str, Any] | None = None,
        datalist: str | os.PathLike | None = None,
        attacks: Sequence[Mapping[str, Any] | str] = DEFAULT_ATTACKS,
        epsilon: float = 0.05,
        sweep: Mapping[str, Any] | str | None = "FGSM",
        sweep_epsilons: Sequence[float] = DEFAULT_SWEEP_EPSILONS,
        loss: str = "soft_dice",
        attack_amp: bool = False,
        adaptive: bool = True,
        transfer_source: str | None = "auto",
        example_subject: str | bool | None = None,
        device: str | torch.device | None = None,
        score_batch_size: int = 4,
        progress: bool = True,
        tables: bool = True,
    ) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if isinstance(model_bundles, (str, os.PathLike)):
            model_bundles = [os.fspath(model_bundles)]
        if not model_bundles:
            raise RobustsegError("model_bundles is empty; expected at least one model bundle folder or name.")
        if isinstance(score_batch_size, bool) or not isinstance(score_batch_size, int) or score_batch_size < 1:
            raise RobustsegError(f"score_batch_size must be an integer >= 1, got {score_batch_size!r}.")
        if isinstance(model_config_files, (str, os.PathLike)):
            model_config_files = [os.fspath(model_config_files)]
        self.output_dir = Path(output_dir)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < math.inf:
            raise RobustsegError(f"epsilon must be a finite number > 0 (the Table 1 attacks' radius), got {epsilon!r}.")
        self.epsilon = float(epsilon)
        self.score_batch_size = score_batch_size
        self.options = {
            "model_config_files": list(model_config_files),
            "model_overrides": dict(model_overrides or {}),
            "epsilon": epsilon,
            "sweep": sweep,
            "sweep_epsilons": list(sweep_epsilons) if sweep is not None else [],
            "loss": loss,
            "attack_amp": attack_amp,
            "adaptive": adaptive,
            "score_batch_size": score_batch_size,
        }
        self.progress = bool(progress)
        self.tables = bool(tables)
        self.device = self._device(device)

        # attacks first: a typo there should not wait for the models to load
        self.white_box_jobs = build_jobs(attacks, sweep, sweep_epsilons, epsilon, loss, attack_amp)
        self.attack_specs = [_spec(a, "attacks") for a in attacks]

        self.models: list[ModelBundle] = []
        for bundle in model_bundles:
            self.models.append(load_model_bundle(bundle, model_config_files, self.device, model_overrides))
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RobustsegError(f"model_bundles: {duplicates} given more than once; each model must appear once.")
        check_same_preprocessing(self.models)

        self.adaptive_jobs: dict[int, list[AttackJob]] = {}
        if adaptive:
            for index, model in enumerate(self.models):
                if model.temperature is not None:
                    self.adaptive_jobs[index] = build_jobs(
                        attacks, sweep, sweep_epsilons, epsilon, loss, attack_amp, temperature=model.temperature
                    )
        self.source = self._transfer_source(transfer_source)

        self.datalist = str(Path(datalist if datalist is not None else self.models[0].datalist()).resolve())
        self.entries = load_split(self.datalist, "testing")
        self.subjects = [_subject_id(e) for e in self.entries]
        duplicate_subjects = sorted({s for s in self.subjects if self.subjects.count(s) > 1})
        if duplicate_subjects:
            raise RobustsegError(f"{self.datalist}: subject id(s) {duplicate_subjects} appear twice in 'testing'.")
        for entry in self.entries:
            missing = [f for f in _files_of(entry) if not os.path.isfile(f)]
            if missing:
                raise RobustsegError(f"{missing[0]}: file of test subject {_subject_id(entry)} not found.")
            if entry.get("label") is None:
                raise RobustsegError(f"{self.datalist}: test subject {_subject_id(entry)} has no label to score with.")
        if example_subject is None:
            self.example_subject: str | None = self.subjects[0]
        elif example_subject is False or example_subject == "":
            self.example_subject = None
        elif example_subject in self.subjects:
            self.example_subject = str(example_subject)
        else:
            raise RobustsegError(
                f"example_subject {example_subject!r} is not a test subject of {self.datalist} "
                f"(first ones: {self.subjects[:5]})."
            )
        self.units = self._plan()
        self.done = self._check_earlier_run()

    # -- set-up --------------------------------------------------------------------------------------------------
    def _device(self, device: str | torch.device | None) -> torch.device:
        if device is None:
            return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{self.local_rank}")
        return device

    def _transfer_source(self, transfer_source: str | None) -> int | None:
        names = [m.name for m in self.models]
        if transfer_source is None or transfer_source is False or transfer_source == "":
            return None
        if transfer_source == "auto":
            undefended = [i for i, m in enumerate(self.models) if m.defense == "none"]
            return undefended[0] if undefended and len(self.models) > 1 else None
        if transfer_source not in names:
            raise RobustsegError(f"transfer_source {transfer_source!r} is not one of the models {names} (or 'auto').")
        return names.index(transfer_source)

    def _plan(self) -> list[_Unit]:
        """Every unit of rows per subject; the transfer source's first so its adversarial inputs can be reused."""
        order = list(range(len(self.models)))
        if self.source is not None:
            order.remove(self.source)
            order.insert(0, self.source)
        units = []
        for index in order:
            units.append(_Unit(index, "clean", None, None))
            units += [_Unit(index, "white-box", index, job) for job in self.white_box_jobs]
            units += [_Unit(index, "adaptive", index, job) for job in self.adaptive_jobs.get(index, [])]
        if self.source is not None:
            for index in order[1:]:
                units += [_Unit(index, "transfer", self.source, job) for job in self.white_box_jobs]
        return units

    def _keys(self, unit: _Unit, subject: str) -> list[tuple[Key, str]]:
        """The row keys of a unit for a subject, each with the attack config the row must carry."""
        model = self.models[unit.model].name
        if unit.job is None:
            return [((model, subject, "none", "clean", "", 0.0, 0, ""), "")]
        source = self.models[unit.source].name if unit.source is not None else ""
        return [
            ((model, subject, unit.job.name, unit.threat, source, eps, iteration, unit.job.loss), repr(attack))
            for attack, eps, iteration in unit.job.slots(final_only=unit.transfer)
        ]

    def _check_earlier_run(self) -> dict[Key, str]:
        """Rows of an earlier run in ``output_dir``; stop if they came from other weights, data or attack settings."""
        files = [self.output_dir / RESULTS_NAME, *_part_files(self.output_dir)]
        rows = [row for path in files for row in _read_rows(path)]
        done = {_row_key(row): row["attack_config"] for row in rows}
        if not done:
            return done
        settings_path = self.output_dir / SETTINGS_NAME
        try:
            earlier = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        except ValueError:
            earlier = {}
        earlier_models = {m.get("model"): m for m in earlier.get("models", []) if isinstance(m, dict)}
        for model in self.models:
            before = earlier_models.get(model.name)
            if before is not None and before.get("weights_sha256") != model.weights_sha256:
                raise RobustsegError(
                    f"{self.output_dir / RESULTS_NAME}: holds rows of model {model.name} computed with other weights "
                    f"({before.get('weights')}); use another output_dir or delete the old results."
                )
        data = earlier.get("data", {})
        preprocessing = self.models[0].preprocessing_hash
        if data and (data.get("datalist") != self.datalist or data.get("preprocessing_hash") != preprocessing):
            raise RobustsegError(
                f"{self.output_dir / RESULTS_NAME}: holds rows computed on other data or preprocessing "
                f"({data.get('datalist')}); use another output_dir or delete the old results."
            )
        for unit in self.units:
            for subject in self.subjects:
                for key, config in self._keys(unit, subject):
                    if key in done and done[key] != config:
                        raise RobustsegError(
                            f"{self.output_dir / RESULTS_NAME}: holds {key[2]} {key[3]} rows of {key[0]} at epsilon "
                            f"{key[5]} made by {done[key]}, but this run configures {config}; use another output_dir "
                            "or delete the old results."
                        )
        return done

    # -- settings --------------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything the report shows about this run: models, attacks, data, versions (``settings.json``)."""
        threats = {"white-box": self.white_box_jobs, **{f"adaptive ({self.models[i].name})": jobs
                                                       for i, jobs in self.adaptive_jobs.items()}}  # fmt: skip
        attacks = []
        for threat, jobs in threats.items():
            for job in jobs:
                attacks.append({
                    "threat": threat,
                    "attack": job.name,
                    "loss": job.loss,
                    "kind": "sweep (one gradient)" if job.sweep else "iterative",
                    "epsilons": [a.epsilon for a in job.attacks],
                    "steps": job.steps,
                    "rows_per_iterate": job.per_iteration,
                    "table1_epsilons": list(job.table_epsilons),
                    "attack_config": [repr(a) for a in job.attacks],
                })  # fmt: skip
        datalist = Path(self.datalist)
        return {
            "evaluation": {
                "output_dir": str(self.output_dir.resolve()),
                **self.options,
                "attack_specs": self.attack_specs,
                "threats": sorted({u.threat for u in self.units}),
                "transfer_source": self.models[self.source].name if self.source is not None else None,
                "example_subject": self.example_subject,
                "device": str(self.device),
                "world_size": self.world_size,
                "torch_threads": torch.get_num_threads(),
                "prediction": "argmax of the logits, model in eval mode, bf16 autocast where the bundle's amp is on",
            },
            "models": [m.settings() for m in self.models],
            "attacks": attacks,
            "data": {
                "datalist": self.datalist,
                "test_subjects": len(self.subjects),
                "subjects": self.subjects,
                "synthetic": (datalist.parent / "synthetic.json").is_file(),
                "preprocessing": self.models[0].preprocessing_settings,
                "preprocessing_hash": self.models[0].preprocessing_hash,
            },
            "versions": _versions(),
        }

    def _write_settings(self) -> None:
        path = self.output_dir / SETTINGS_NAME
        fd, tmp = tempfile.mkstemp(dir=self.output_dir, prefix=f".{SETTINGS_NAME}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self.settings(), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)

    # -- running ---------------------------------------------------------------------------------------------------
    def _init_distributed(self) -> bool:
        """Join the process group under torchrun; return whether this call created it."""
        if self.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
            return False
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        # ranks finish their shards at different times; the final barrier must outwait the slowest one
        dist.init_process_group(backend=backend, timeout=timedelta(hours=24))
        return True

    def run(self) -> Path:
        """Evaluate every test subject of this rank, then (rank 0) merge, write the tables and print Table 1.

        Returns:
            The path of ``results.csv``.
        """
        created = self._init_distributed()
        distributed = self.world_size > 1 and dist.is_initialized()
        try:
            if self.rank == 0:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                self._write_settings()
            if distributed:
                dist.barrier()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            target = self.output_dir / (RESULTS_NAME if not distributed else f"{_PART_PREFIX}{self.rank}.csv")
            self._writer = _RowWriter(target)
            try:
                shard = shard_subjects(self.entries, self.rank, self.world_size) if distributed else list(self.entries)
                if shard:
                    engine = Engine(self._iteration)
                    if self.progress and self.rank == 0:
                        ProgressBarHandler(
                            output_transform=lambda output: {"rows": output["rows"]}, desc="robustness ", persist=True
                        ).attach(engine)
                    engine.run(shard, max_epochs=1)
            finally:
                self._writer.close()
            if distributed:
                dist.barrier()
            results = self.output_dir / RESULTS_NAME
            if self.rank == 0:
                merge_results(self.output_dir, self.subjects)  # also the parts an earlier multi-process run left
                if self.tables:
                    self._write_tables(results)
            if distributed:
                dist.barrier()
            return results
        finally:
            if created:
                dist.destroy_process_group()

    def _write_tables(self, results: Path) -> None:
        from common.report.tables import write_tables

        fgsm = {eps for job in self.white_box_jobs if job.sweep for eps in (a.epsilon for a in job.attacks)}
        columns = (0.0, *sorted(e for e in {self.epsilon, 0.1} if any(math.isclose(e, f) for f in fgsm)))
        try:
            written = write_tables(results, self.output_dir / TABLES_DIR, epsilon=self.epsilon, epsilons=columns)
        except RobustsegError as err:
            logger.warning("tables not written: %s", err)
            return
        tables = [Path(p) for p in written if Path(p).name.startswith("table1_") and p.endswith(".md")]
        for path in tables:
            print(path.read_text(encoding="utf-8"))
        print(f"results: {results}; tables: {self.output_dir / TABLES_DIR}", file=sys.stderr)

    def _iteration(self, engine: Engine, entry: Mapping[str, Any]) -> dict[str, Any]:
        subject = _subject_id(entry)
        rows = self.evaluate_subject(entry)
        return {"subject": subject, "rows": rows}

    def _missing(self, unit: _Unit, subject: str) -> bool:
        return any(key not in self.done for key, _ in self._keys(unit, subject))

    def evaluate_subject(self, entry: Mapping[str, Any]) -> int:
        """Compute and append every missing row of one test subject (and its examples); return the rows written."""
        subject = _subject_id(entry)
        folder = self.output_dir / EXAMPLES_DIR / subject
        examples = self.example_subject == subject and not (folder / "index.json").is_file()
        units = [u for u in self.units if self._missing(u, subject) or (examples and self._has_examples(u))]
        if not units:
            return 0
        item = self.models[0].preprocessing(dict(entry))
        image_meta, label_meta = item["image"], item["label"]
        image = _plain_tensor(image_meta).float()[None].to(self.device)
        label = _plain_tensor(label_meta)[None].to(self.device)
        quality = InputQuality(image)
        saver = _ExampleSaver(folder, subject, image, label, image_meta) if examples else None
        source_cache: dict[int, list[Adversarial]] = {}
        written = 0
        for unit in units:
            model = self.models[unit.model]
            if unit.job is None:
                prediction = self._predict(model, image)
                records = [self._record(unit, subject, None, prediction[:1], label, None)]
                if saver is not None:
                    saver.add(model.name, "none", "clean", 0.0, None, prediction[0], source=None)
            else:
                if unit.transfer:
                    key = self.white_box_jobs.index(unit.job)
                    if key not in source_cache:
                        source = self.models[unit.source].network
                        source_cache[key] = unit.job.run(source, image, label, final_only=True)
                    adversarials = source_cache[key]
                else:
                    adversarials = unit.job.run(model.network, image, label)
                    if unit.threat == "white-box" and unit.model == self.source:
                        key = self.white_box_jobs.index(unit.job)
                        source_cache[key] = [a for a in adversarials if a.iteration == unit.job.final_iteration]
                records = self._score(unit, subject, model, adversarials, image, label, quality, saver)
            new = [r for r in records if _row_key(r) not in self.done]
            self._writer.write(new)
            for record in new:
                self.done[_row_key(record)] = str(record["attack_config"] or "")
            written += len(new)
        if saver is not None:
            saver.finish()
        logger.info("subject %s: %d rows", subject, written)
        return written

    def _has_examples(self, unit: _Unit) -> bool:
        return unit.job is None or bool(unit.job.table_epsilons)

    def _predict(self, model: ModelBundle, images: Tensor) -> Tensor:
        """BraTS label maps (B, 1, *spatial) of the model for a batch, in no-grad batches of ``score_batch_size``."""
        inferer = AutocastInferer(enabled=model.amp)
        out = []
        with torch.no_grad():
            for chunk in images.split(self.score_batch_size):
                out.append(logits_to_labels(inferer(chunk, model.network)))
        return torch.cat(out)

    def _score(
        self,
        unit: _Unit,
        subject: str,
        model: ModelBundle,
        adversarials: list[Adversarial],
        image: Tensor,
        label: Tensor,
        quality: InputQuality,
        saver: _ExampleSaver | None,
    ) -> list[dict[str, Any]]:
        batch = torch.cat([a.image for a in adversarials])
        predictions = self._predict(model, batch)
        dice = region_dice(predictions, label.expand_as(predictions))
        # in chunks: the float64 SSIM maps of ten 128^3 iterates would take gigabytes at once
        chunks = [quality(chunk) for chunk in batch.split(self.score_batch_size)]
        columns = {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}
        records = []
        for k, adversarial in enumerate(adversarials):
            values = {name: column[k] for name, column in columns.items()}
            records.append(self._record(unit, subject, adversarial, predictions[k : k + 1], label, values, dice[k]))
            job = unit.job
            assert job is not None
            final = adversarial.iteration == adversarial.attack.steps
            if saver is not None and final and any(math.isclose(adversarial.epsilon, e) for e in job.table_epsilons):
                source = self.models[unit.source].name if unit.transfer and unit.source is not None else None
                saver.add(model.name, job.name, unit.threat, adversarial.epsilon, adversarial.image, predictions[k],
                          source=source)  # fmt: skip
        return records

    def _record(
        self,
        unit: _Unit,
        subject: str,
        adversarial: Adversarial | None,
        prediction: Tensor,
        label: Tensor,
        quality: Mapping[str, Tensor] | None,
        dice: Tensor | None = None,
    ) -> dict[str, Any]:
        model = self.models[unit.model]
        if dice is None:
            dice = region_dice(prediction, label)[0]
        record: dict[str, Any] = {
            **model.identity,
            "subject": subject,
            "dice_wt": float(dice[0]),
            "dice_tc": float(dice[1]),
            "dice_et": float(dice[2]),
        }
        if adversarial is None:
            return {**record, "attack": "none", "threat": "clean", "source_model": None, "attack_config": None,
                    "loss": None, "epsilon": 0.0, "steps": 0, "iteration": 0, "psnr": None, "ssim": None,
                    "rmse": None, "linf": 0.0, "l2": 0.0, "zero_grad_fraction": None, "seconds": None}  # fmt: skip
        assert quality is not None and unit.source is not None
        return {
            **record,
            "attack": type(adversarial.attack).name,
            "threat": unit.threat,
            "source_model": self.models[unit.source].name,
            "attack_config": repr(adversarial.attack),
            "loss": _loss_name(adversarial.attack),
            "epsilon": adversarial.epsilon,
            "steps": adversarial.attack.steps,
            "iteration": adversarial.iteration,
            **{name: float(value) for name, value in quality.items()},
            "zero_grad_fraction": None if unit.transfer else adversarial.zero_grad_fraction,
            "seconds": adversarial.seconds,
        }


# ----------------------------------------------------------------------------------------------------- examples
class _ExampleSaver:
    """Write one subject's example volumes as NIfTI and, last, ``index.json`` (see ``results_schema``)."""

    def __init__(self, folder: Path, subject: str, image: Tensor, label: Tensor, meta: Any) -> None:
        self.folder = folder
        self.subject = subject
        affine = getattr(meta, "affine", None)
        self.affine = np.asarray(affine, dtype=np.float64) if affine is not None else np.eye(4)
        self.entries: list[dict[str, Any]] = []
        self.written: set[str] = set()
        folder.mkdir(parents=True, exist_ok=True)
        self._save("image.nii.gz", image[0], np.float32)
        self._save("label.nii.gz", label[0, 0], np.uint8)

    def _save(self, name: str, volume: Tensor, dtype: Any) -> str:
        import nibabel as nib

        if name not in self.written:
            array = volume.detach().cpu().numpy().astype(dtype)
            path = self.folder / name
            tmp = self.folder / f".{name}.tmp.nii.gz"
            nib.save(nib.Nifti1Image(array, self.affine), str(tmp))
            os.replace(tmp, path)
            self.written.add(name)
        return name

    def add(
        self,
        model: str,
        attack: str,
        threat: str,
        epsilon: float,
        adversarial: Tensor | None,
        prediction: Tensor,
        source: str | None,
    ) -> None:
        """Save one entry: the adversarial input (``None`` for clean) and the model's prediction on it."""
        eps = _eps_text(epsilon)
        tag = {"white-box": "", "adaptive": "adaptive__", "clean": ""}.get(threat, f"transfer-from-{source}__")
        adv_name = None
        if adversarial is not None:
            # a transfer input is the source's white-box input: one file serves both entries
            crafted_on = source if threat == "transfer" else model
            adv_tag = "adaptive__" if threat == "adaptive" else ""
            adv_name = self._save(f"{crafted_on}__{attack}__{adv_tag}eps{eps}_adv.nii.gz", adversarial[0], np.float32)
        pred_name = self._save(f"{model}__{attack}__{tag}eps{eps}_pred.nii.gz", prediction[0], np.uint8)
        self.entries.append({"model": model, "attack": attack, "threat": threat, "epsilon": float(epsilon),
                             "adversarial": adv_name, "prediction": pred_name})  # fmt: skip

    def finish(self) -> None:
        index = {"subject": self.subject, "image": "image.nii.gz", "label": "label.nii.gz", "entries": self.entries}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".index.json.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(index, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, self.folder / "index.json")
