"""The robustness results CSV: its columns (the single source of truth), a row formatter and a validating loader.

The ``brats_robustness_eval`` bundle writes one row per subject x model x attack x epsilon x iteration, appended and
flushed as computed; ``robustseg stats`` / ``robustseg report`` read it and compute every table and figure from it
(never re-running an attack). Columns, in this order (:data:`COLUMNS`):

=====================  =====  ==========================================================================================
column                 type   meaning
=====================  =====  ==========================================================================================
model                  str    model bundle name, e.g. ``brats_unet3d_baseline``, ``brats_unet3d_distill_t5000``
net                    str    ``3d`` or ``2d``
defense                str    ``none``, ``distillation``, ``adversarial_training``, ``noise_augmentation``,
                              ``artifact_augmentation``, ``gaussian_augmentation``
defense_param          str    e.g. ``T=5000``, ``eps=0.05``, ``r=0.01``, ``p=0.5``, ``sigma=0.25``; empty for none
subject                str    subject id
attack                 str    ``none`` (clean input), ``FGSM``, ``i-FGSM``, ``ti-FGSM``, ``PGD``, ... (display name)
threat                 str    ``clean``, ``white-box`` (the paper's attack on the model itself), ``adaptive`` (attack on
                              logits/T for distillation), ``transfer`` (adversarial input crafted on another model),
                              ``worst-case`` (per subject and epsilon, the lowest mean Dice of all the others;
                              :mod:`common.engines.worst_case`, attack ``ensemble``), ``corruption`` (an MR artifact
                              at a ``severity``, :mod:`common.corruptions`; not adversarial), ``certified``
                              (randomized-smoothing certificate of the clean input at an L2 ``radius``,
                              :mod:`common.certify`, attack ``smoothing``: the Dice columns hold the certified Dice,
                              epsilon, steps, iteration, linf and l2 are 0), ``smoothed`` (the smoothed segmenter's
                              prediction on the clean input, attack ``clean``, or on an L2 attack on it at
                              ``epsilon`` = ``radius``; :mod:`common.engines.certification`)
source_model           str    model the perturbation was computed on (the model itself for white-box/adaptive; empty
                              for clean)
attack_config          str    the attack's repr, e.g. ``IterativeFGSM(epsilon=0.05, steps=10, alpha=0.005, ...)``
loss                   str    attack loss name: ``soft_dice``, ``ce``, or a callable's name; empty for clean
epsilon                float  L-inf radius (relative to each sample's max abs intensity unless the config says
                              otherwise); 0 for clean
steps                  int    configured number of steps (1 for FGSM, 0 for clean)
iteration              int    which iterate this row scores: 1..steps (every iterate of an iterative attack has a
                              row); 0 for clean
dice_wt/_tc/_et        float  Dice of the prediction vs ground truth per BraTS region (both masks empty -> 1.0)
psnr                   float  PSNR (dB) of the adversarial vs the clean input, data range = clean max - clean min per
                              sample; empty for clean
ssim                   float  SSIM of the adversarial vs the clean input; empty for clean
rmse                   float  RMSE of the adversarial vs the clean input (normalised intensity units); empty for clean
linf                   float  L-inf norm of the perturbation (0 for clean)
l2                     float  L2 norm of the perturbation (0 for clean)
zero_grad_fraction     float  fraction of input voxels whose loss gradient was exactly 0 at the first step (gradient
                              masking indicator); empty for clean/transfer
seconds                float  wall time to produce this row's adversarial input (attack time up to this iterate; a
                              batch's time divided by its subjects)
winner                 str    ``worst-case`` rows only: the member whose adversarial input gave the lowest mean Dice,
                              e.g. ``APGD (white-box, js, iteration 100/100)``; empty elsewhere
target_attainment      float  targeted attacks (ti-FGSM) only: the fraction of brain voxels (any clean input channel
                              non-zero) predicted as the target label -- whether the target was reached; empty elsewhere
dice_trace             str    attacks that return their best iterate (PGD, APGD) only: the best mean Dice (WT, TC, ET)
                              the attack had found after each gradient pass, over the restarts so far, space-separated
                              (``restarts x steps`` values; the row's own Dice, which also scores the last iterate, is
                              at most the last one); the convergence figure's data; empty elsewhere
severity               int    ``corruption`` rows only: the corruption's severity, 1 (mild) to 5 (severe)
                              (:mod:`common.corruptions`; ``attack`` is the corruption's name); empty elsewhere
sigma                  float  ``certified`` and ``smoothed`` rows only: the noise level of the Gaussian smoothing (input
                              units: a fraction of the [0, 1] intensity range); empty elsewhere
radius                 float  ``certified`` rows: the L2 radius (input units) at which the row's Dice is certified;
                              ``smoothed`` rows: the L2 radius of the attack (0 for the clean input); empty elsewhere
n_samples              int    ``certified`` rows: the estimation samples per subject (SegCertify's ``n``);
                              ``smoothed`` rows: the noise samples of the majority vote; empty elsewhere
alpha                  float  ``certified`` rows only: the family-wise error of the subject's certificate; empty
                              elsewhere
abstain_fraction       float  ``certified`` rows only: the fraction of voxels not certified at ``radius``; empty
                              elsewhere
=====================  =====  ==========================================================================================

Missing values are empty fields; floats are written with full precision (``repr``, so ``nan``/``inf`` round-trip).
Columns that may be empty have ``required=False`` in :data:`COLUMNS`. Extra columns are allowed and ignored by the
loader, so the format can grow without breaking old readers.

Example volumes for the figure panels live beside the CSV in ``<output_dir>/examples/<subject>/index.json`` (clean
image, label, and per model/attack/epsilon the adversarial input and prediction as NIfTI; the perturbation is
``adversarial - image``); see ``docs`` of the evaluation bundle.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from common.errors import RobustsegError
from common.utils.enums import Defense, Net, Threat

__all__ = [
    "Column",
    "COLUMNS",
    "COLUMN_NAMES",
    "DICE_COLUMNS",
    "MEMBER_THREATS",
    "mean_dice",
    "format_trace",
    "parse_trace",
    "ADDED_LATER",
    "NETS",
    "DEFENSES",
    "THREATS",
    "Record",
    "format_record",
    "load_results",
]

Record = dict[str, "str | int | float | None"]
"""One CSV row as loaded: column name -> typed value (``None`` for an empty optional field)."""


class Column(NamedTuple):
    """One column of the results CSV."""

    name: str
    dtype: type
    required: bool
    description: str


COLUMNS: tuple[Column, ...] = (
    Column("model", str, True, "model bundle name"),
    Column("net", str, True, "3d or 2d"),
    Column("defense", str, True, "none, distillation, adversarial_training, noise_augmentation, "
           "artifact_augmentation or gaussian_augmentation"),
    Column("defense_param", str, False,
           "defence parameter, e.g. T=5000, eps=0.05, r=0.01, p=0.5, sigma=0.25; empty for none"),
    Column("subject", str, True, "subject id"),
    Column("attack", str, True, "attack display name; none for the clean input"),
    Column("threat", str, True, "clean, white-box, adaptive, transfer, worst-case, corruption, certified or smoothed"),
    Column("source_model", str, False, "model the perturbation was computed on; empty for clean"),
    Column("attack_config", str, False, "the attack's repr"),
    Column("loss", str, False, "attack loss name; empty for clean"),
    Column("epsilon", float, True, "L-inf radius; 0 for clean"),
    Column("steps", int, True, "configured number of steps; 0 for clean"),
    Column("iteration", int, True, "iterate scored by this row, 1..steps; 0 for clean"),
    Column("dice_wt", float, True, "Dice of the whole tumour (labels 1, 2, 4)"),
    Column("dice_tc", float, True, "Dice of the tumour core (labels 1, 4)"),
    Column("dice_et", float, True, "Dice of the enhancing tumour (label 4)"),
    Column("psnr", float, False, "PSNR (dB) of the adversarial vs clean input; empty for clean"),
    Column("ssim", float, False, "SSIM of the adversarial vs clean input; empty for clean"),
    Column("rmse", float, False, "RMSE of the adversarial vs clean input; empty for clean"),
    Column("linf", float, True, "L-inf norm of the perturbation; 0 for clean"),
    Column("l2", float, True, "L2 norm of the perturbation; 0 for clean"),
    Column("zero_grad_fraction", float, False, "fraction of exactly-zero input gradients at the first step"),
    Column("seconds", float, False, "wall time to produce this row's adversarial input"),
    Column("winner", str, False, "worst-case rows: the attack input that gave the minimum; empty elsewhere"),
    Column("target_attainment", float, False, "targeted attacks: fraction of brain voxels predicted as the target"),
    Column("dice_trace", str, False, "PGD/APGD: best mean Dice after each gradient pass, space-separated"),
    Column("severity", int, False, "corruption rows: severity 1-5; empty elsewhere"),
    Column("sigma", float, False, "certified/smoothed rows: the smoothing noise level; empty elsewhere"),
    Column("radius", float, False, "certified/smoothed rows: the L2 radius of the row's Dice; empty elsewhere"),
    Column("n_samples", int, False, "certified/smoothed rows: noise samples per subject; empty elsewhere"),
    Column("alpha", float, False, "certified rows: the certificate's family-wise error; empty elsewhere"),
    Column("abstain_fraction", float, False, "certified rows: fraction of voxels not certified at radius"),
)
"""The columns of the results CSV, in file order."""

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)
NETS: tuple[str, ...] = Net.values()
"""The values of the ``net`` column (:class:`~common.utils.enums.Net`)."""
DEFENSES: tuple[str, ...] = Defense.values()
"""The values of the ``defense`` column (:class:`~common.utils.enums.Defense`), in the tables' order."""
THREATS: tuple[str, ...] = Threat.values()
"""The values of the ``threat`` column (:class:`~common.utils.enums.Threat`)."""

ADDED_LATER: tuple[str, ...] = (
    "winner", "target_attainment", "dice_trace", "severity", "sigma", "radius", "n_samples", "alpha",
    "abstain_fraction",
)  # fmt: skip
"""Optional columns added after the first release: a CSV (or a record) without them still loads (empty values)."""
_ALLOWED: dict[str, tuple[str, ...]] = {"net": NETS, "defense": DEFENSES, "threat": THREATS}


MEMBER_THREATS: tuple[str, ...] = (Threat.WHITE_BOX, Threat.ADAPTIVE, Threat.TRANSFER)
"""The threats whose rows are adversarial inputs of the worst case (:mod:`common.engines.worst_case`): not the clean
rows, the derived worst-case rows or the corruptions."""

DICE_COLUMNS: tuple[str, ...] = ("dice_wt", "dice_tc", "dice_et")
"""The Dice columns, one per BraTS region (WT, TC, ET)."""


def mean_dice(row: Mapping[str, object]) -> float:
    """A row's mean Dice over WT, TC and ET: the score the worst case minimises and the headline and sanity tables
    average. Takes loaded records and raw CSV cells (strings) alike."""
    return sum(float(row[name]) for name in DICE_COLUMNS) / len(DICE_COLUMNS)  # type: ignore[arg-type]


def format_trace(values: Sequence[float]) -> str:
    """The ``dice_trace`` cell of a sequence of Dice values (4 decimals: the tables show 3)."""
    return " ".join(f"{float(v):.4f}" for v in values)


def parse_trace(cell: object) -> list[float]:
    """The Dice values of a ``dice_trace`` cell (``[]`` for an empty or missing one).

    Raises:
        RobustsegError: if the cell holds something that is not a number.
    """
    if cell is None or cell == "":
        return []
    try:
        return [float(v) for v in str(cell).split()]
    except ValueError:
        raise RobustsegError(f"dice_trace: expected space-separated numbers, got {str(cell)[:60]!r}.") from None


def _format_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        raise TypeError(f"booleans are not a results CSV type, got {value!r}")
    if isinstance(value, float):
        return repr(float(value))  # np.float64 is a float whose repr is "np.float64(...)" under numpy 2
    if hasattr(value, "item"):  # numpy / torch scalars
        return _format_value(value.item())
    return str(value)


def format_record(record: Mapping[str, object]) -> list[str]:
    """The CSV fields of one result row, in :data:`COLUMN_NAMES` order (floats as ``repr``, ``None`` as empty).

    Args:
        record: column name -> value; every column of :data:`COLUMN_NAMES` must be present (``None`` for empty),
            except those of :data:`ADDED_LATER` (empty when absent).

    Returns:
        The row's fields as strings, ready for :func:`csv.writer`.

    Raises:
        RobustsegError: if a column is missing or an unknown key is given.
    """
    missing = [name for name in COLUMN_NAMES if name not in record and name not in ADDED_LATER]
    unknown = [name for name in record if name not in COLUMN_NAMES]
    if missing or unknown:
        raise RobustsegError(
            f"record: missing column(s) {missing}, unknown column(s) {unknown}; expected {COLUMN_NAMES}."
        )
    return [_format_value(record.get(name)) for name in COLUMN_NAMES]


def _parse(column: Column, text: str, where: str) -> str | int | float | None:
    if text == "":
        if column.required:
            raise RobustsegError(f"{where}: column {column.name} is empty; expected a value ({column.description}).")
        return None
    if column.dtype is str:
        return text
    try:
        return int(text) if column.dtype is int else float(text)
    except ValueError:
        expected = "an integer" if column.dtype is int else "a number"
        raise RobustsegError(f"{where}: column {column.name} holds {text!r}; expected {expected}.") from None


def _check_record(record: Record, where: str) -> None:
    for name, allowed in _ALLOWED.items():
        if record[name] not in allowed:
            raise RobustsegError(f"{where}: column {name} holds {record[name]!r}; expected one of {list(allowed)}.")
    if (record["threat"] == Threat.CLEAN) != (record["attack"] == "none"):
        raise RobustsegError(
            f"{where}: attack {record['attack']!r} with threat {record['threat']!r}; "
            "expected attack 'none' exactly when threat is 'clean'."
        )
    for name in ("dice_wt", "dice_tc", "dice_et"):
        if not 0.0 <= record[name] <= 1.0:  # also rejects NaN
            raise RobustsegError(f"{where}: column {name} holds {record[name]!r}; expected a Dice in [0, 1].")
    if not record["epsilon"] >= 0 or math.isinf(record["epsilon"]):
        raise RobustsegError(f"{where}: column epsilon holds {record['epsilon']!r}; expected a finite number >= 0.")
    if not 0 <= record["iteration"] <= record["steps"]:
        raise RobustsegError(
            f"{where}: iteration {record['iteration']} with steps {record['steps']}; expected 0 <= iteration <= steps."
        )


def load_results(path: str | os.PathLike) -> list[Record]:
    """Read and validate a results CSV.

    Every row is checked before anything is returned: the header holds all of :data:`COLUMN_NAMES` (extra columns
    are ignored), required fields are present, numbers parse, ``net``/``defense``/``threat`` take allowed values,
    ``attack == "none"`` exactly for ``threat == "clean"``, Dice lies in [0, 1], ``epsilon >= 0`` and
    ``0 <= iteration <= steps``.

    Args:
        path: the CSV file written by the robustness evaluation.

    Returns:
        The rows in file order, as dicts with the typed values of :data:`COLUMNS` (``None`` for empty fields).

    Raises:
        RobustsegError: if the file is missing or unreadable, lacks columns (all named), has no rows, or a field
            is invalid (the line and column are named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RobustsegError(f"results CSV {path} does not exist; expected the CSV written by brats_robustness_eval.")
    records: list[Record] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise RobustsegError(f"{path}: the file is empty; expected a header line with {list(COLUMN_NAMES)}.")
            missing = [name for name in COLUMN_NAMES if name not in header and name not in ADDED_LATER]
            if missing:
                raise RobustsegError(f"{path}: missing column(s) {missing}; expected all of {list(COLUMN_NAMES)}.")
            index = {name: header.index(name) for name in COLUMN_NAMES if name in header}
            for fields in reader:
                where = f"{path} line {reader.line_num}"
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise RobustsegError(f"{where}: {len(fields)} fields; expected {len(header)} as in the header.")
                record = {col.name: _parse(col, fields[index[col.name]] if col.name in index else "", where)
                          for col in COLUMNS}  # fmt: skip
                _check_record(record, where)
                records.append(record)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RobustsegError(f"{path}: cannot be read as a CSV ({exc}).") from None
    if not records:
        raise RobustsegError(f"{path}: no result rows; expected at least one row below the header.")
    return records
