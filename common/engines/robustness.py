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
  applied to every other model (final iterates; computed once per subject and reused for every target);
* **certified** (with ``certification``): for each model it names, randomized-smoothing certificates (SegCertify)
  of the clean input at several L2 radii and the smoothed segmenter under L2 attacks at the same radii, rows of
  threats ``certified`` and ``smoothed`` (:class:`common.engines.certification.Certifier`).

Each row's Dice (WT, TC, ET) is that of the argmax of the model's logits (eval mode, the bundle's ``amp``), its input
quality (PSNR, SSIM, RMSE, L-inf and L2 norms) is measured against the clean preprocessed input, ``seconds`` is the
attack's wall time up to that iterate per subject (the batch's time divided by its number of subjects) and
``zero_grad_fraction`` the subject's share of exactly-zero input gradients at the first step. The columns are those of
:mod:`common.report.schema`.

The attacks run as the jobs of :mod:`common.engines.attack_jobs`. The work runs in an ignite
:class:`~ignite.engine.Engine`, one batch of ``batch_size`` subjects per iteration
(:mod:`common.engines.subject_batch`), with a progress bar: each unit (clean predictions, one attack job under one
threat) runs on the whole batch, and since an attack treats every sample on its own, each subject gets the rows it gets
alone (to the float rounding of batched convolutions; ``benchmarks/bench_evaluation.py``). Each batch's rows are
appended and flushed when the batch is done, one per subject and grouped by subject as a batch of one writes them, and a
rerun skips every (model, subject, attack, threat, source, epsilon, iteration, loss) already in the CSV, so an
interrupted evaluation resumes; in a batch whose subjects are partly done, a unit runs only on the subjects that miss
rows of it. Under ``torchrun`` (``WORLD_SIZE > 1``) the subjects are sharded across ranks (by subject, then batched),
each rank appends to its own part file, and rank 0 merges them into ``results.csv`` after a barrier
(:mod:`common.engines.results_io`). Every setting, model and data file is checked before anything is written.
One evaluation writes into an output folder at a time: :meth:`RobustnessEvaluation.run` holds a lock on it
(:mod:`common.utils.lock`; under ``torchrun``, rank 0 for all ranks), and a second one is refused with one line. A
rerun resumes an evaluation or adds to it (more models, attacks, epsilons, corruptions); one that would drop or change
rows already there is refused, so ``results.csv`` holds the rows of one run with the last run's settings.

Outputs in ``output_dir``: ``results.csv``, ``settings.json`` (models with their training settings, attacks, data,
package versions), ``examples/<subject>/`` (NIfTI volumes of one subject and ``index.json``, for the report's figure
panels; :class:`common.report.examples.ExampleWriter`) and ``tables/`` (:func:`common.report.tables.write_tables`).
The example subject's volumes are its clean input, each model's clean prediction, the final Table 1 inputs and
predictions of every attack job, and, when corruptions are scored, each corruption's input at one severity
(:func:`~common.report.examples.example_severity`: 3 if evaluated) with every model's prediction on it. The index is
written last, once the subject's rows are; a rerun whose example index lacks this run's corruption entries (an
earlier run without corruptions) scores the subject's corruptions again and rewrites just those entries.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine
from torch import Tensor
from torch.nn.modules.conv import _ConvNd

from common.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    check_corruption_names,
    check_severities,
    corrupt,
    corruption_seed,
)
from common.data.labels import logits_to_labels
from common.data.task import BRATS
from common.engines.attack_jobs import (
    DEFAULT_ATTACKS,
    DEFAULT_SWEEP_EPSILONS,
    Adversarial,
    AttackJob,
    _spec,
    build_jobs,
    reusable_predictions,
)
from common.engines.certification import CERTIFIER_SETTINGS, Certifier
from common.engines.inferers import AutocastInferer, PairedForward, PairedForwardInferer
from common.engines.model_bundle import ModelBundle, check_same_preprocessing, load_model_bundle
from common.engines.precision import PRECISIONS, PrecisionChoice, choose_precision
from common.engines.progress import ProgressBarHandler
from common.engines.results_io import (
    RESULTS_NAME,
    SETTINGS_NAME,
    Key,
    _earlier_rows,
    _part_file,
    _row_key,
    _RowWriter,
    add_worst_case_rows,
    merge_results,
    package_versions,
    shard_subjects,
)
from common.engines.subject_batch import SubjectBatch, Unit, batches_of, load_subjects, subject_id, test_entries
from common.errors import RobustsegError
from common.metrics.dice import region_dice
from common.report.examples import INDEX_NAME, ExampleWriter, example_severity
from common.report.schema import format_trace
from common.utils.enums import Threat
from common.utils.files import write_atomic
from common.utils.lock import FolderLock
from common.utils.validation import check_device, check_int, check_number, look_up_option

__all__ = ["RobustnessEvaluation"]

logger = logging.getLogger(__name__)

EXAMPLES_DIR = "examples"
TABLES_DIR = "tables"
DEFAULT_BATCH_SIZE = 4
"""Subjects per batch: the fastest of 1, 2 and 4 for the demo's settings on a 2-core CPU (48^3 grid, UNet3D base 8, 4
channels): 0.56 of the time of batches of one, 2 at 0.63 (``python benchmarks/bench_evaluation.py --steps 5 --repeats
2``, 2 threads). Memory grows with it: at the paper's 128^3 grid with base 16, one subject's forward and backward pass
takes about 4 GiB on a CPU."""


EPSILON_SPACE = (
    "epsilon perturbs the network's input after each bundle's own preprocessing, relative to each subject's maximum "
    "absolute input intensity (relative=True): on [0, 1]-scaled inputs it is epsilon itself; on z-scored inputs "
    "(NormalizeIntensityd) it is epsilon times the subject's largest absolute z-score; the linf column holds the "
    "perturbation in input units"
)
"""Where epsilon lives, for ``settings.json`` and the report."""


# ------------------------------------------------------------------------------------------------------ helpers
def _bundle_item(item: Any) -> tuple[str, dict[str, Any] | None]:
    """A ``model_bundles`` item: a folder or name, or a mapping with ``bundle`` and a third-party bundle's options."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item), None
    if isinstance(item, Mapping) and isinstance(item.get("bundle"), (str, os.PathLike)):
        options = {k: v for k, v in item.items() if k != "bundle"}
        return os.fspath(item["bundle"]), options or None
    raise RobustsegError(
        f"model_bundles: item {item!r:.200} is neither a bundle folder or name nor a mapping with 'bundle' (and "
        "options such as input_channels, output_channels, output_activation)."
    )


def _repeated_iterates(flat: Sequence[Adversarial], counts: Sequence[int]) -> list[int | None]:
    """Per input of ``flat`` (``counts[i]`` consecutive inputs per subject), the index of the one before it when the
    two are the same subject's equal iterates, else ``None``: a sample that a stop criterion stopped keeps its iterate,
    and each later row scores it again without another forward pass."""
    same: list[int | None] = [None] * len(flat)
    start = 0
    for count in counts:
        for k in range(start + 1, start + count):
            if torch.equal(flat[k].image, flat[k - 1].image):
                same[k] = k - 1
        start += count
    return same


def _target_attainment(adversarial: Adversarial, prediction: Tensor, label: Tensor, brain: Tensor) -> float | None:
    """A targeted attack's success: the fraction of brain voxels predicted as the target label (``None`` for an
    untargeted attack, or an empty brain mask).

    Args:
        adversarial: the scored input and the attack that made it (targeted when it has a ``target``).
        prediction: its BraTS label map ``(1, *spatial)``.
        label: the subject's ground truth ``(1, *spatial)`` (the shape of the target map).
        brain: the subject's brain mask ``(*spatial)``: voxels where any channel of the clean input is non-zero.
    """
    if getattr(adversarial.attack, "target", None) is None or not bool(brain.any()):
        return None
    target = adversarial.attack.loss_labels(label[None])[0]  # the map the attack aimed at
    return float(((prediction == target)[0] & brain).sum() / brain.sum())


def _check_corruptions(
    corruptions: Sequence[str] | str | None, severities: Sequence[int]
) -> tuple[list[str], list[int]]:
    """The corruption names (``"all"``: every one) and the sorted severities, checked."""
    if corruptions is None or corruptions == []:
        return [], []
    return list(check_corruption_names(corruptions)), list(check_severities(severities))


def _corruption_config(name: str, severity: int) -> str:
    """The ``attack_config`` of a corruption row: its name, severity and parameter set."""
    params = ", ".join(f"{k}={v!r}" for k, v in CORRUPTIONS[name].params(severity).items())
    return f"{name}(severity={severity}, {params})"


# -------------------------------------------------------------------------------------------------- evaluation
class RobustnessEvaluation:
    """Attack trained model bundles on a test set and write the robustness CSV, settings, examples and tables.

    Everything is loaded and checked when the object is built (model bundles and weights, identical preprocessing,
    attack specs and epsilons, the datalist and its files, an earlier run's CSV in ``output_dir``); nothing is
    written before :meth:`run`.

    Args:
        model_bundles: model bundle folders or names (see :func:`common.engines.model_bundle.find_model_bundle`); an
            item may also be a mapping ``{"bundle": folder, ...}`` with a third-party bundle's options
            (:data:`common.engines.zoo_bundle.ZOO_OPTIONS`: ``input_channels``, ``output_channels``,
            ``output_activation``). Third-party (Model Zoo layout) bundles run on their own preprocessing, inferer and
            outputs (:mod:`common.engines.zoo_bundle`); every model of one evaluation must preprocess identically.
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
        attack_precision: the attacks' forward/backward precision: ``"fp32"`` (default, the reference), ``"bf16"``,
            ``"fp16"`` (CUDA) or ``"auto"`` (:func:`common.engines.precision.choose_precision` measures on the first
            model at the batch's shape; fp32 under ``torchrun``, where ranks could measure differently). The choice
            and its measurement go into ``settings.json``.
        adaptive: also run the adaptive attacks (logits / T) on models with a distillation temperature.
        worst_case_epsilons: the epsilons of the ``worst-case`` rows (:mod:`common.engines.worst_case`: per model,
            subject and epsilon, the lowest mean Dice over every adversarial input scored there, attack
            ``ensemble``, the member in ``winner``); ``None`` (default): the epsilons of the attack specs (not the
            sweep's); ``[]``: none.
        corruptions: MR artifacts scored on every model (:mod:`common.corruptions`): names of
            :data:`~common.corruptions.CORRUPTIONS`, ``"all"``, or ``None``/``[]`` (default: none). Each subject's
            preprocessed input is corrupted once per (corruption, severity), seeded by
            :func:`~common.corruptions.corruption_seed`, and predicted by every model: rows of threat
            ``corruption`` with the corruption's name as ``attack`` and its ``severity``; not in the worst case.
        severities: the corruption severities to score (1-5; default all five).
        certification: certify models by randomized smoothing (:class:`~common.engines.certification.Certifier`):
            ``None`` (default): none; else a mapping with ``models`` (names of this run's models; absent or ``None``:
            every model) and any of the certifier's settings (``sigma``, ``n``, ``n0``, ``alpha``, ``tau``,
            ``radii``, ``correction``, ``non_certified``, ``batch_size``, ``seed``, ``attacks``, ``eot_samples``).
        transfer_source: the model whose white-box adversarial inputs are applied to every other model: a model
            name, ``"auto"`` (the first undefended model, if there are two models or more) or ``None`` (no transfer).
        example_subject: the subject whose volumes are saved for the figure panels; ``None``: the first test
            subject; ``False`` or ``""``: none. Its corruptions are saved at one severity,
            :func:`~common.report.examples.example_severity` of ``severities``.
        device: where the models run; ``None``: ``cuda:<local rank>`` if CUDA is available, else the CPU.
        batch_size: test subjects attacked and scored together (each unit of the plan runs on the whole batch);
            the default, :data:`DEFAULT_BATCH_SIZE`, was the fastest on a CPU at the demo's settings.
        score_batch_size: adversarial inputs per batched no-grad forward pass when scoring.
        progress: show a progress bar (rank 0).
        tables: write ``tables/`` and print Table 1 at the end.

    Raises:
        RobustsegError: for any invalid setting, model bundle, datalist, or an ``output_dir`` holding results of
            other weights or attack settings, or results this run would not write (a model, attack, epsilon or
            corruption of the earlier run that this one drops).

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
        attack_precision: str = "fp32",
        adaptive: bool = True,
        worst_case_epsilons: Sequence[float] | None = None,
        corruptions: Sequence[str] | str | None = None,
        severities: Sequence[int] = SEVERITIES,
        certification: Mapping[str, Any] | None = None,
        transfer_source: str | None = "auto",
        example_subject: str | bool | None = None,
        device: str | torch.device | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
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
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        check_int("score_batch_size", score_batch_size, minimum=1)
        if isinstance(model_config_files, (str, os.PathLike)):
            model_config_files = [os.fspath(model_config_files)]
        self.output_dir = Path(output_dir)
        radius = "the Table 1 attacks' radius"
        self.epsilon = check_number("epsilon", epsilon, minimum=0, min_inclusive=False, hint=radius)
        self.score_batch_size = score_batch_size
        self.options = {
            "model_config_files": list(model_config_files),
            "model_overrides": dict(model_overrides or {}),
            "epsilon": epsilon,
            "sweep": sweep,
            "sweep_epsilons": list(sweep_epsilons) if sweep is not None else [],
            "loss": loss,
            "attack_precision": attack_precision,
            "adaptive": adaptive,
            "worst_case_epsilons": worst_case_epsilons,
            "corruptions": corruptions,
            "severities": list(severities),
            "certification": dict(certification) if isinstance(certification, Mapping) else certification,
            "batch_size": self.batch_size,
            "score_batch_size": score_batch_size,
        }
        self.progress = bool(progress)
        self.tables = bool(tables)
        self.device = self._device(device)

        # attacks first: a typo there should not wait for the models to load (built again below at the precision)
        look_up_option("attack_precision", attack_precision, PRECISIONS)
        self.white_box_jobs = build_jobs(attacks, sweep, sweep_epsilons, epsilon, loss)
        self.attack_specs = [_spec(a, "attacks") for a in attacks]
        self.corruptions, self.severities = _check_corruptions(corruptions, severities)
        self.example_severity = example_severity(self.severities) if self.corruptions else None

        self.models: list[ModelBundle] = []
        for item in model_bundles:
            bundle, options = _bundle_item(item)
            self.models.append(load_model_bundle(bundle, model_config_files, self.device, model_overrides, options))
        generic = [m.name for m in self.models if m.task is not BRATS]
        if generic:
            raise RobustsegError(f"model_bundles: {generic} segment a task that is not BraTS (their output channels "
                                 "name other classes); evaluate them with `robustseg attack`, which scores a generic "
                                 "task per class.")  # fmt: skip
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RobustsegError(f"model_bundles: {duplicates} given more than once; each model must appear once.")
        check_same_preprocessing(self.models)
        self.datalist = str(Path(datalist if datalist is not None else self.models[0].datalist()).resolve())
        self.entries = test_entries(self.datalist)
        self.subjects = [subject_id(e) for e in self.entries]
        self.precision = self._attack_precision(attack_precision)
        amp = self.precision.precision
        if self.precision.amp:
            self.white_box_jobs = build_jobs(attacks, sweep, sweep_epsilons, epsilon, loss, amp)

        self.adaptive_jobs: dict[int, list[AttackJob]] = {}
        if adaptive:
            for index, model in enumerate(self.models):
                if model.temperature is not None:
                    self.adaptive_jobs[index] = build_jobs(
                        attacks, sweep, sweep_epsilons, epsilon, loss, amp, temperature=model.temperature
                    )
        self.source = self._transfer_source(transfer_source)
        self.certifiers = self._certifiers(certification)
        if worst_case_epsilons is None:
            self.worst_case_epsilons = sorted({
                eps for job in self.white_box_jobs
                for eps in (job.table_epsilons if job.sweep else [a.epsilon for a in job.attacks])
            })  # fmt: skip
        elif isinstance(worst_case_epsilons, (str, bytes)) or not isinstance(worst_case_epsilons, Sequence):
            raise RobustsegError(f"worst_case_epsilons must be a list of numbers or None, got {worst_case_epsilons!r}.")
        else:
            self.worst_case_epsilons = sorted(
                {check_number("worst_case_epsilons: epsilon", e, minimum=0) for e in worst_case_epsilons}
            )

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
        device = torch.device(check_device("device", device) if isinstance(device, str) else device)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{self.local_rank}")
        return device

    def _attack_precision(self, requested: str) -> PrecisionChoice:
        """Resolve ``attack_precision`` on the first model at the shape of a batch of subjects."""
        if requested == "auto" and self.world_size > 1:
            reason = "auto is not measured under torchrun (ranks could choose differently): fp32"
            return PrecisionChoice("fp32", "auto", self.device.type, reason)
        network = self.models[0].network
        spatial = self.models[0].spatial_size
        if not spatial:  # a third-party bundle's grid is that of its preprocessed inputs
            spatial = list(self.models[0].preprocessing(dict(self.entries[0]))["image"].shape[1:])
        convolutions = [m for m in network.modules() if isinstance(m, _ConvNd)]
        channels = convolutions[0].in_channels if convolutions else 4
        shape = [self.batch_size, channels, *spatial]
        return choose_precision(requested, network, shape, self.device)

    def _certifiers(self, certification: Mapping[str, Any] | None) -> dict[int, Certifier]:
        """model index -> its certifier, for the models ``certification`` names."""
        if certification is None:
            return {}
        if not isinstance(certification, Mapping):
            raise RobustsegError(
                f"certification must be null or a mapping of settings (models, sigma, n, radii, ...), "
                f"got {certification!r}."
            )
        settings = dict(certification)
        names = [m.name for m in self.models]
        wanted = settings.pop("models", None)
        wanted = names if wanted is None else [wanted] if isinstance(wanted, str) else list(wanted)
        unknown = [m for m in wanted if m not in names]
        if unknown:
            raise RobustsegError(f"certification: models {unknown} are not evaluated in this run; expected some of "
                                 f"{names}.")  # fmt: skip
        extra = sorted(k for k in settings if k not in CERTIFIER_SETTINGS)
        if extra:
            expected = ["models", *CERTIFIER_SETTINGS]
            raise RobustsegError(f"certification: unknown setting(s) {extra}; expected some of {expected}.")
        return {names.index(m): Certifier(self.models[names.index(m)], **settings) for m in wanted}

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

    def _plan(self) -> list[Unit]:
        """Every unit of rows per subject; the transfer source's first so its adversarial inputs can be reused."""
        order = list(range(len(self.models)))
        if self.source is not None:
            order.remove(self.source)
            order.insert(0, self.source)
        units = []
        for index in order:
            units.append(Unit(index, "clean", None, None))
            if self.corruptions:
                units.append(Unit(index, Threat.CORRUPTION, None, None))
            units += [Unit(index, "white-box", index, job) for job in self.white_box_jobs]
            # a control without gradient (random noise) is white-box only: see Attack.uses_gradient
            units += [Unit(index, "adaptive", index, job) for job in self.adaptive_jobs.get(index, [])
                      if job.uses_gradient]  # fmt: skip
        if self.source is not None:
            for index in order[1:]:
                units += [Unit(index, "transfer", self.source, job) for job in self.white_box_jobs if job.uses_gradient]
        units += [Unit(index, Threat.CERTIFIED, None, None) for index in order if index in self.certifiers]
        return units

    def _keys(self, unit: Unit, subject: str) -> list[tuple[Key, str]]:
        """The row keys of a unit for a subject, each with the attack config the row must carry."""
        model = self.models[unit.model].name

        def key(attack: str, source: str, epsilon: float, iteration: int, loss: str, severity: object = "") -> Key:
            return _row_key({"model": model, "subject": subject, "attack": attack, "threat": unit.threat,
                             "source_model": source, "epsilon": epsilon, "iteration": iteration, "loss": loss,
                             "severity": severity})  # fmt: skip

        if unit.threat == Threat.CORRUPTION:
            return [(key(name, "", 0.0, 0, "", severity), _corruption_config(name, severity))
                    for name in self.corruptions for severity in self.severities]  # fmt: skip
        if unit.threat == Threat.CERTIFIED:
            return self.certifiers[unit.model].keys(subject)
        if unit.job is None:
            return [(key("none", "", 0.0, 0, ""), "")]
        source = self.models[unit.source].name if unit.source is not None else ""
        return [
            (key(unit.job.name, source, eps, iteration, unit.job.loss), repr(attack))
            for attack, eps, iteration in unit.job.slots(final_only=unit.transfer)
        ]

    def _check_earlier_run(self) -> dict[Key, str]:
        """Rows of an earlier run in ``output_dir``; stop if they came from other weights, data or attack settings,
        or if this run would not write some of them (it may add to an evaluation, not drop part of it)."""
        planned = (pair for unit in self.units for subject in self.subjects for pair in self._keys(unit, subject))
        names = ("attack_specs", "sweep", "sweep_epsilons", "epsilon", "loss", "adaptive", "corruptions", "severities")
        options = {name: self.options.get(name, getattr(self, name, None)) for name in names}
        options["transfer_source"] = self.models[self.source].name if self.source is not None else None
        options["models"] = [m.name for m in self.models]
        return _earlier_rows(self.output_dir, self.models, self.datalist, planned, options)

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
                "example_severity": self.example_severity,
                "device": str(self.device),
                "world_size": self.world_size,
                "torch_threads": torch.get_num_threads(),
                "attack_precision_choice": self.precision.as_dict(),
                "certification": {self.models[i].name: c.settings() for i, c in self.certifiers.items()},
                "worst_case": {
                    "epsilons": self.worst_case_epsilons,
                    "definition": "per model, subject and epsilon: the lowest mean Dice (WT, TC, ET) over every "
                    "adversarial input scored (every iterate, threat and attack), attack 'ensemble'",
                },
                "prediction": "argmax of the logits (sigmoid region outputs: the Model Zoo rule, ET -> 4, else TC -> "
                "1, else WT -> 2), model in eval mode, autocast where the bundle's amp is on",
                "epsilon_space": EPSILON_SPACE,
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
            "versions": package_versions(),
        }

    def _write_settings(self) -> None:
        write_atomic(self.output_dir / SETTINGS_NAME, json.dumps(self.settings(), indent=2) + "\n")

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

        The output folder is locked for the run (:class:`~common.utils.lock.FolderLock` on ``output_dir/.lock``), and
        the rows already there are read again once the lock is held.

        Returns:
            The path of ``results.csv``.

        Raises:
            RobustsegError: another evaluation (or ``robustseg certify``) is writing into ``output_dir``; or rows
                written there since this object was built do not fit this run (see the class).
        """
        created = self._init_distributed()
        distributed = self.world_size > 1 and dist.is_initialized()
        lock = FolderLock(self.output_dir, "evaluation", "output_dir")
        try:
            self._take_lock(lock, distributed)
            self.done = self._check_earlier_run()  # again: another run may have written rows since __init__
            if self.rank == 0:
                self._write_settings()
            if distributed:
                dist.barrier()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            target = _part_file(self.output_dir, self.rank) if distributed else self.output_dir / RESULTS_NAME
            self._writer = _RowWriter(target)
            try:
                shard = shard_subjects(self.entries, self.rank, self.world_size) if distributed else list(self.entries)
                if shard:
                    engine = Engine(self._iteration)
                    if self.progress and self.rank == 0:
                        ProgressBarHandler(
                            output_transform=lambda output: {"rows": output["rows"]}, desc="robustness ", persist=True
                        ).attach(engine)
                    engine.run(batches_of(shard, self.batch_size), max_epochs=1)
            finally:
                self._writer.close()
            if distributed:
                dist.barrier()
            results = self.output_dir / RESULTS_NAME
            if self.rank == 0:
                merge_results(self.output_dir, self.subjects)  # also the parts an earlier multi-process run left
                add_worst_case_rows(results, self.worst_case_epsilons)
                if self.tables:
                    self._write_tables(results)
            if distributed:
                dist.barrier()
            return results
        finally:
            lock.release()
            if created:
                dist.destroy_process_group()

    def _take_lock(self, lock: FolderLock, distributed: bool) -> None:
        """Lock ``output_dir`` for this evaluation, or stop every rank with the one line of the refusal.

        Under ``torchrun`` the ranks of one evaluation share the folder (each appends to its own part file, rank 0
        merges them): rank 0 alone holds the lock, from before any rank writes until after the merge, and tells the
        other ranks whether it got it, so that a second evaluation's ranks all stop before writing anything.
        """
        refusal: BaseException | None = None
        if self.rank == 0:
            try:
                lock.acquire()
            except Exception as err:  # passed on to the other ranks, raised below
                refusal = err
        if distributed:
            message = [None if refusal is None else str(refusal)]
            dist.broadcast_object_list(message, src=0)
            if refusal is None and message[0] is not None:
                raise RobustsegError(message[0])
        if refusal is not None:
            raise refusal

    def _write_tables(self, results: Path) -> None:
        from common.report.tables import write_tables

        fgsm = {eps for job in self.white_box_jobs if job.sweep for eps in (a.epsilon for a in job.attacks)}
        columns = (0.0, *sorted(e for e in {self.epsilon, 0.1} if any(math.isclose(e, f) for f in fgsm)))
        try:
            written = write_tables(results, self.output_dir / TABLES_DIR, epsilon=self.epsilon, epsilons=columns)
        except RobustsegError as err:
            if isinstance(err.__cause__, OSError):  # a full or read-only disk is the run's failure, not a note
                raise
            logger.warning("tables not written: %s", err)
            return
        tables = [Path(p) for p in written if Path(p).name.startswith("table1_") and p.endswith(".md")]
        for path in tables:
            print(path.read_text(encoding="utf-8"))
        print(f"results: {results}; tables: {self.output_dir / TABLES_DIR}", file=sys.stderr)

    def _iteration(self, engine: Engine, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        rows = self.evaluate_batch(entries)
        return {"subjects": [subject_id(e) for e in entries], "rows": rows}

    def _missing(self, unit: Unit, subject: str) -> bool:
        return any(key not in self.done for key, _ in self._keys(unit, subject))

    def evaluate_subject(self, entry: Mapping[str, Any]) -> int:
        """Compute and append every missing row of one test subject (and its examples); return the rows written."""
        return self.evaluate_batch([entry])

    def evaluate_batch(self, entries: Sequence[Mapping[str, Any]]) -> int:
        """Compute and append every missing row of a batch of test subjects (and examples); return the rows written.

        Each unit of the plan runs once on the subjects of the batch that miss rows of it (or whose examples are not
        written yet); the rows are written per subject, only those not already in the CSV.
        """
        subjects = [subject_id(e) for e in entries]
        examples = {s: state for s in subjects if (state := self._example_state(s)) is not None}

        def needed(unit: Unit, subject: str) -> bool:
            if self._missing(unit, subject):
                return True
            state = examples.get(subject)
            corruptions = state == "corruptions" and unit.threat == Threat.CORRUPTION
            return unit.has_examples and (state == "new" or corruptions)

        plan = {s: {k for k, u in enumerate(self.units) if needed(u, s)} for s in subjects}
        todo = [e for e, s in zip(entries, subjects, strict=True) if plan[s]]
        written = 0
        if todo:
            for batch in load_subjects(todo, self.models[0].preprocessing, self.device):
                written += self._evaluate(batch, plan, examples)
        logger.info("subjects %s: %d rows", ", ".join(subjects), written)
        return written

    def _examples_dir(self, subject: str) -> Path:
        return self.output_dir / EXAMPLES_DIR / subject

    def _example_state(self, subject: str) -> str | None:
        """What to save of a subject's examples: ``"new"`` (no index yet: everything), ``"corruptions"`` (an index
        without an entry of some model and corruption of this run at :attr:`example_severity`) or ``None``."""
        if subject != self.example_subject:
            return None
        index = self._examples_dir(subject) / INDEX_NAME
        if not index.is_file():
            return "new"
        if not self.corruptions:
            return None
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))["entries"]
            present = {(e["model"], e["attack"], e.get("severity")) for e in entries
                       if e["threat"] == Threat.CORRUPTION}  # fmt: skip
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None  # not ours to repair: the report names what is wrong with it
        wanted = {(m.name, name, self.example_severity) for m in self.models for name in self.corruptions}
        return None if wanted <= present else "corruptions"

    def _evaluate(self, batch: SubjectBatch, plan: Mapping[str, set[int]], examples: Mapping[str, str]) -> int:
        savers = {}
        for i, subject in enumerate(batch.subjects):
            folder = self._examples_dir(subject)
            if examples.get(subject) == "new":
                image, label = batch.images[i : i + 1], batch.labels[i : i + 1]
                savers[subject] = ExampleWriter(folder, subject, image, label, batch.affines[i])
            elif examples.get(subject) == "corruptions":
                savers[subject] = ExampleWriter.reopen(folder, subject, drop_threat=Threat.CORRUPTION)
        # (white-box job index, subject) -> the source model's final adversarial inputs of that subject (transfer)
        source_cache: dict[tuple[int, str], list[Adversarial]] = {}
        # (subject, corruption) -> the corrupted inputs, their quality and times, shared by the models
        corrupted: dict[tuple[str, str], tuple[Tensor, dict[str, Tensor], list[float]]] = {}
        pending: list[dict[str, Any]] = []
        for k, unit in enumerate(self.units):
            rows = [i for i, s in enumerate(batch.subjects) if k in plan[s]]
            if not rows:
                continue
            part = batch.select(rows)
            model = self.models[unit.model]
            if unit.threat == Threat.CORRUPTION:
                records = self._corruption_records(unit, model, part, corrupted, savers)
            elif unit.threat == Threat.CERTIFIED:
                records = []
                for i, subject in enumerate(part.subjects):
                    missing = {key for key, _ in self._keys(unit, subject) if key not in self.done}
                    images, labels = part.images[i : i + 1], part.labels[i : i + 1]
                    records += self.certifiers[unit.model].rows(subject, images, labels, missing)
            elif unit.job is None:
                predictions = self._predict(model, part.images)
                records = []
                for i, subject in enumerate(part.subjects):
                    prediction, label = predictions[i : i + 1], part.labels[i : i + 1]
                    records.append(self._record(unit, subject, None, prediction, label, None))
                    if subject in savers:
                        savers[subject].add(model.name, "none", "clean", 0.0, None, predictions[i], source=None)
            else:
                if unit.transfer:
                    per_subject = self._transfer_inputs(unit, part, source_cache)
                else:
                    adversarials = unit.job.run(PairedForward(model.network), part.images, part.labels)
                    per_subject = [[a.sample(i) for a in adversarials] for i in range(len(part))]
                    if unit.threat == "white-box" and unit.model == self.source:
                        key = self.white_box_jobs.index(unit.job)
                        for subject, own in zip(part.subjects, per_subject, strict=True):
                            # the source's predictions are not the target's
                            finals = [a for a in own if a.iteration == unit.job.final_iteration]
                            source_cache[(key, subject)] = [replace(a, predictions=None) for a in finals]
                records = self._score(unit, model, part, per_subject, savers)
            pending.extend(r for r in records if _row_key(r) not in self.done)
        # one subject's rows together, in plan order, as a batch of one writes them (and a torchrun merge expects)
        order = {subject: i for i, subject in enumerate(batch.subjects)}
        pending.sort(key=lambda record: order[record["subject"]])
        self._writer.write(pending)
        for record in pending:
            self.done[_row_key(record)] = str(record["attack_config"] or "")
        for saver in savers.values():
            saver.finish()
        return len(pending)

    def _quality(self, part: SubjectBatch, index: int, images: Tensor) -> dict[str, Tensor]:
        """Input quality (PSNR, SSIM, RMSE, norms) of ``images`` against subject ``index`` of ``part``, per image.

        In chunks of ``score_batch_size``: the float64 SSIM maps of ten 128^3 iterates would take gigabytes at once.
        """
        chunks = [part.qualities[index](chunk) for chunk in images.split(self.score_batch_size)]
        return {column: torch.cat([chunk[column] for chunk in chunks]) for column in chunks[0]}

    def _corruption_records(
        self,
        unit: Unit,
        model: ModelBundle,
        part: SubjectBatch,
        corrupted: dict[tuple[str, str], tuple[Tensor, dict[str, Tensor], list[float]]],
        savers: Mapping[str, ExampleWriter],
    ) -> list[dict[str, Any]]:
        """The corruption rows of one model for the subjects of ``part`` (and the example subject's volumes).

        Each input is corrupted, and its quality against the clean input measured, once for every model:
        ``corrupted`` maps (subject, corruption) to the inputs ``(severities, C, *spatial)``, their quality columns
        and the seconds each took. A subject in ``savers`` gets, per corruption, the input at
        :attr:`example_severity` (one file, shared by the models) and this model's prediction on it.
        """
        records = []
        for name in self.corruptions:
            for i, subject in enumerate(part.subjects):
                if (subject, name) not in corrupted:
                    images, seconds = [], []
                    for severity in self.severities:
                        start = time.perf_counter()
                        seed = corruption_seed(subject, name, severity)
                        images.append(corrupt(part.images[i], name, severity, seed=seed))
                        seconds.append(time.perf_counter() - start)
                    stacked = torch.stack(images)
                    corrupted[(subject, name)] = (stacked, self._quality(part, i, stacked), seconds)
                images, quality, seconds = corrupted[(subject, name)]
                predictions = self._predict(model, images)
                label = part.labels[i : i + 1].expand(len(images), *part.labels.shape[1:])
                dice = region_dice(predictions, label)
                if subject in savers:
                    n = self.severities.index(self.example_severity)
                    savers[subject].add(model.name, name, unit.threat, 0.0, images[n : n + 1], predictions[n],
                                        source=None, severity=self.example_severity)  # fmt: skip
                for n, severity in enumerate(self.severities):
                    record = self._record(unit, subject, None, predictions[n : n + 1], label[:1], None, dice[n])
                    records.append({
                        **record,
                        "attack": name, "threat": unit.threat, "attack_config": _corruption_config(name, severity),
                        "epsilon": 0.0, "steps": 0, "iteration": 0, "severity": severity,
                        **{column: float(values[n]) for column, values in quality.items()},
                        "seconds": seconds[n],
                    })  # fmt: skip
        return records

    def _transfer_inputs(
        self, unit: Unit, part: SubjectBatch, source_cache: dict[tuple[int, str], list[Adversarial]]
    ) -> list[list[Adversarial]]:
        """The source model's final white-box inputs of each subject: from this batch's source run, else computed."""
        assert unit.job is not None and unit.source is not None
        key = self.white_box_jobs.index(unit.job)
        missing = [i for i, s in enumerate(part.subjects) if (key, s) not in source_cache]
        if missing:
            rest = part.select(missing)
            source = PairedForward(self.models[unit.source].network)
            finals = unit.job.run(source, rest.images, rest.labels, final_only=True)
            for i, subject in enumerate(rest.subjects):
                source_cache[(key, subject)] = [replace(a.sample(i), predictions=None) for a in finals]
        return [source_cache[(key, s)] for s in part.subjects]

    def _predict(self, model: ModelBundle, images: Tensor) -> Tensor:
        """BraTS label maps (B, 1, *spatial) of the model for a batch, in no-grad batches of ``score_batch_size``."""
        inferer = AutocastInferer(PairedForwardInferer(), enabled=model.amp, dtype=model.amp_dtype)
        out = []
        with torch.no_grad():
            for chunk in images.split(self.score_batch_size):
                out.append(logits_to_labels(inferer(chunk, model.network)))
        return torch.cat(out)

    def _score(
        self,
        unit: Unit,
        model: ModelBundle,
        part: SubjectBatch,
        per_subject: list[list[Adversarial]],
        savers: Mapping[str, ExampleWriter],
    ) -> list[dict[str, Any]]:
        """The rows of a unit's adversarial inputs (``per_subject[i]``: those of subject ``i`` of ``part``)."""
        job = unit.job
        assert job is not None
        flat = [a for own in per_subject for a in own]
        counts = [len(own) for own in per_subject]
        known = [None] * len(flat) if unit.transfer else reusable_predictions(flat, model.amp, model.amp_dtype)
        same = _repeated_iterates(flat, counts)
        unknown = [k for k, p in enumerate(known) if p is None and same[k] is None]
        if unknown:
            computed = self._predict(model, torch.cat([flat[k].image for k in unknown]))
            for n, k in enumerate(unknown):
                known[k] = computed[n : n + 1]
        for k, earlier in enumerate(same):  # in order: ``earlier`` has its prediction already
            if earlier is not None:
                known[k] = known[earlier]
        predictions = torch.cat(known)  # type: ignore[arg-type]
        labels = torch.cat([part.labels[i : i + 1].expand(n, *part.labels.shape[1:]) for i, n in enumerate(counts)])
        dice = region_dice(predictions, labels)
        brains = part.images.abs().amax(dim=1) > 0  # (n, *spatial): voxels where any clean channel is non-zero
        records, offset = [], 0
        for i, (subject, own) in enumerate(zip(part.subjects, per_subject, strict=True)):
            columns = self._quality(part, i, torch.cat([a.image for a in own]))
            for n, adversarial in enumerate(own):
                k = offset + n
                values = {name: column[n] for name, column in columns.items()}
                attainment = _target_attainment(adversarial, predictions[k], part.labels[i], brains[i])
                records.append(self._record(unit, subject, adversarial, predictions[k : k + 1], labels[k : k + 1],
                                            values, dice[k], attainment))  # fmt: skip
                final = adversarial.iteration == adversarial.attack.steps
                table = any(math.isclose(adversarial.epsilon, e) for e in job.table_epsilons)
                if subject in savers and final and table:
                    source = self.models[unit.source].name if unit.transfer and unit.source is not None else None
                    savers[subject].add(model.name, job.name, unit.threat, adversarial.epsilon, adversarial.image,
                                        predictions[k], source=source)  # fmt: skip
            offset += len(own)
        return records

    def _record(
        self,
        unit: Unit,
        subject: str,
        adversarial: Adversarial | None,
        prediction: Tensor,
        label: Tensor,
        quality: Mapping[str, Tensor] | None,
        dice: Tensor | None = None,
        target_attainment: float | None = None,
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
                    "rmse": None, "linf": 0.0, "l2": 0.0, "zero_grad_fraction": None, "seconds": None,
                    "winner": None, "target_attainment": None, "dice_trace": None, "severity": None}  # fmt: skip
        assert quality is not None and unit.source is not None
        zero = adversarial.zero_grad_fraction
        return {
            **record,
            "attack": type(adversarial.attack).name,
            "threat": unit.threat,
            "source_model": self.models[unit.source].name,
            "attack_config": repr(adversarial.attack),
            "loss": adversarial.loss,
            "epsilon": adversarial.epsilon,
            "steps": adversarial.attack.steps,
            "iteration": adversarial.iteration,
            **{name: float(value) for name, value in quality.items()},
            # none for transfer inputs and for the noise control, which takes no gradient (NaN)
            "zero_grad_fraction": None if unit.transfer or math.isnan(zero) else zero,
            "seconds": adversarial.seconds,
            "winner": None,
            "target_attainment": target_attainment,
            # a transfer input's trace is its search on the source model, not a score of this one
            "dice_trace": None if unit.transfer or adversarial.trace is None
            else format_trace(adversarial.trace[0].tolist()),
            "severity": None,
        }
