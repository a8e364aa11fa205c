"""The robustness CSV on disk: reading rows back, appending them, the key that identifies a row, and the ranks' part
files merged into one ``results.csv``.

A row is identified by :data:`KEY_COLUMNS` (model, subject, attack, threat, source model, epsilon, iteration, loss,
severity, sigma, radius):
a rerun of :class:`~common.engines.robustness.RobustnessEvaluation` skips every key already in the CSV, so an
interrupted evaluation resumes. Under ``torchrun`` each rank appends to its own part file
(``results.part<rank>.csv``) and rank 0 merges them (:func:`merge_results`) after the ranks' subjects were split by
:func:`shard_subjects`. The columns are those of :mod:`common.report.schema`.

The underscored helpers (row reading and writing, part-file names, the earlier-run check) serve
:mod:`common.engines.robustness` only; :func:`package_versions` is what ``settings.json`` records beside the rows.

Example::

    shard = shard_subjects(entries, rank, world_size)
    ...  # each rank appends the rows of its shard to its part file
    merge_results(output_dir, subjects)   # rank 0, after a barrier
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.data import partition_dataset

from common.engines.worst_case import with_worst_case_rows
from common.errors import RobustsegError
from common.report.schema import ADDED_LATER, COLUMN_NAMES, format_record
from common.utils.enums import Threat
from common.utils.files import atomic_write, naming

if TYPE_CHECKING:
    from common.engines.model_bundle import ModelBundle

__all__ = [
    "KEY_COLUMNS",
    "RESULTS_NAME",
    "SETTINGS_NAME",
    "Key",
    "add_worst_case_rows",
    "merge_results",
    "package_versions",
    "shard_subjects",
]

KEY_COLUMNS: tuple[str, ...] = (
    "model", "subject", "attack", "threat", "source_model", "epsilon", "iteration", "loss", "severity", "sigma",
    "radius",
)  # fmt: skip
"""The columns that identify a row; a rerun skips rows whose key is already in the CSV."""
RESULTS_NAME = "results.csv"
"""The evaluation's results file in its output folder."""
SETTINGS_NAME = "settings.json"
"""The evaluation's settings file beside :data:`RESULTS_NAME` (what produced the rows; checked when resuming)."""
_PART_PREFIX = "results.part"

Key = tuple[str, str, str, str, str, float, int, str, str, str, str]
"""A row's :data:`KEY_COLUMNS` values (empty strings for a clean row's source model and loss, for the severity of
every row but a corruption's, and for the sigma and radius of every row but a certified one's; those two as the
``repr`` of the float, so a record and its CSV cells give one key)."""


def package_versions() -> dict[str, str]:
    """The versions that produced a run's rows (``settings.json``'s ``versions``): packages, Python, platform."""
    import ignite
    import monai
    import nibabel
    import numpy as np
    import torch

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
    if tuple(header) != COLUMN_NAMES and not _older_header(header):
        raise RobustsegError(
            f"{path}: its columns differ from this version's ({list(COLUMN_NAMES)}); choose another output_dir or "
            "move the file away."
        )
    empty = dict.fromkeys((c for c in COLUMN_NAMES if c not in header), "")  # an earlier release's file
    return [{**empty, **dict(zip(header, fields))} for fields in reader if len(fields) == len(header)]


def _header(path: Path) -> tuple[str, ...]:
    with open(path, newline="", encoding="utf-8") as handle:
        return tuple(next(csv.reader(handle), ()))


def _older_header(header: Sequence[str]) -> bool:
    """Whether ``header`` is this version's columns less some of :data:`ADDED_LATER` (a file of an earlier release,
    which :class:`_RowWriter` upgrades in place, its rows unchanged and the new columns empty)."""
    missing = set(COLUMN_NAMES) - set(header)
    return bool(missing) and missing <= set(ADDED_LATER) and list(header) == [c for c in COLUMN_NAMES if c in header]


def _row_key(row: Mapping[str, Any]) -> Key:
    return (
        str(row["model"]), str(row["subject"]), str(row["attack"]), str(row["threat"]), str(row["source_model"] or ""),
        float(row["epsilon"]), int(row["iteration"]), str(row["loss"] or ""), str(row.get("severity") or ""),
        _float_cell(row.get("sigma")), _float_cell(row.get("radius")),
    )  # fmt: skip


def _float_cell(value: Any) -> str:
    """A key's text of an optional float column: ``""`` when empty, else the float's ``repr`` (``"0.0"`` for 0)."""
    return "" if value is None or value == "" else repr(float(value))


def _part_file(output_dir: Path, rank: int) -> Path:
    """The part file that rank ``rank`` appends to under ``torchrun``."""
    return output_dir / f"{_PART_PREFIX}{rank}.csv"


def _part_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob(f"{_PART_PREFIX}*.csv"))


def _write_rows_atomic(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    """Replace ``path`` with the header and ``rows`` (raw string cells, as :func:`_read_rows` returns them)."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMN_NAMES)
        for row in rows:
            writer.writerow([row[c] for c in COLUMN_NAMES])


def add_worst_case_rows(path: Path, epsilons: Sequence[float]) -> int:
    """Recompute the ``worst-case`` rows of a results CSV from its other rows (:mod:`common.engines.worst_case`).

    Earlier worst-case rows are replaced; the file is rewritten atomically, and only when it changes.

    Args:
        path: ``results.csv``.
        epsilons: the epsilons of the worst-case rows; empty: remove them.

    Returns:
        The number of worst-case rows in the file.
    """
    rows = _read_rows(path)
    updated = with_worst_case_rows(rows, epsilons)
    if updated != rows:
        _write_rows_atomic(path, updated)
    return sum(1 for row in updated if row["threat"] == Threat.WORST_CASE)


def _earlier_rows(
    output_dir: Path,
    models: Sequence[ModelBundle],
    datalist: str,
    planned: Iterable[tuple[Key, str]],
    options: Mapping[str, Any] | None = None,
) -> dict[Key, str]:
    """The rows an earlier run left in ``output_dir`` (key -> attack config), checked against this run.

    A rerun may resume an evaluation and add to it (other models, attacks, epsilons, corruptions: new rows), so that
    the file always holds the rows one run with the last run's settings writes; it may not change or drop what is
    there, which would leave rows that no ``settings.json`` describes.

    Args:
        output_dir: the evaluation's output folder (``results.csv``, part files, ``settings.json``).
        models: this run's model bundles.
        datalist: this run's datalist (resolved path).
        planned: every (key, attack config) of a row this run would write; read only if there are earlier rows.
        options: this run's settings that decide its rows (``settings.json``'s ``evaluation`` entries, plus
            ``models``: the model names), to name what differs from the earlier run's when rows would be dropped.

    Returns:
        The earlier rows' keys, each with its ``attack_config`` cell.

    Raises:
        RobustsegError: if the earlier rows came from other weights, other data or preprocessing, other attack
            settings for the same key, or settings that this run drops (rows of a model, attack, epsilon, iteration,
            corruption or subject it would not write); or if ``settings.json`` is missing or unreadable beside them.
    """
    files = [output_dir / RESULTS_NAME, *_part_files(output_dir)]
    rows = [row for path in files for row in _read_rows(path)]
    done = {_row_key(row): row["attack_config"] for row in rows}
    if not done:
        return done
    results = output_dir / RESULTS_NAME
    settings_path = output_dir / SETTINGS_NAME
    try:
        earlier = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict):
        raise RobustsegError(
            f"{results}: holds rows, but {settings_path.name} beside it is missing or unreadable, so the weights and "
            "settings that made them cannot be checked; restore it, use another output_dir or delete the old results."
        )
    earlier_models = {m.get("model"): m for m in earlier.get("models", []) if isinstance(m, dict)}
    for model in models:
        before = earlier_models.get(model.name)
        if before is not None and before.get("weights_sha256") != model.weights_sha256:
            raise RobustsegError(
                f"{results}: holds rows of model {model.name} computed with other weights "
                f"({before.get('weights')}); use another output_dir or delete the old results."
            )
    data = earlier.get("data", {})
    preprocessing = models[0].preprocessing_hash
    if data and (data.get("datalist") != datalist or data.get("preprocessing_hash") != preprocessing):
        raise RobustsegError(
            f"{results}: holds rows computed on other data or preprocessing "
            f"({data.get('datalist')}); use another output_dir or delete the old results."
        )
    keys = set()
    for key, config in planned:
        keys.add(key)
        if key in done and done[key] != config:
            raise RobustsegError(
                f"{results}: holds {key[2]} {key[3]} rows of {key[0]} at epsilon {key[5]} made by {done[key]}, but "
                f"this run configures {config}; use another output_dir or delete the old results."
            )
    dropped = [row for row in rows if row["threat"] in _EVALUATED and _row_key(row) not in keys]
    if dropped:
        first = dropped[0]
        where = f" iteration {first['iteration']}" if first["iteration"] not in ("", "0", "1") else ""
        severity = f" severity {first['severity']}" if first.get("severity") else ""
        differs = _differences(earlier, options or {})
        raise RobustsegError(
            f"{results}: holds {len({_row_key(r) for r in dropped})} rows this run would not write (e.g. "
            f"{first['attack']} {first['threat']} of {first['model']} on {first['subject']} at epsilon "
            f"{first['epsilon']}{where}{severity}){'; ' + differs if differs else ''}; a rerun may add models, "
            "attacks, epsilons or corruptions but not drop any: rerun with the earlier settings (plus yours), use "
            "another output_dir or delete the old results."
        )
    return done


_EVALUATED = frozenset(
    t.value for t in (Threat.CLEAN, Threat.WHITE_BOX, Threat.ADAPTIVE, Threat.TRANSFER, Threat.CORRUPTION)
)
"""The threats whose rows an evaluation writes itself (``worst-case`` rows are derived from them, ``certified`` rows
come from ``robustseg certify``)."""


def _differences(earlier: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    """``"the earlier run set sweep_epsilons=[0.02, 0.1], this one [0.1]"`` for each of ``options`` that differs
    from the earlier run's ``settings.json`` (its ``evaluation`` entries; ``models``: its model names)."""
    before = dict(earlier.get("evaluation", {}))
    before["models"] = [m.get("model") for m in earlier.get("models", []) if isinstance(m, dict)]
    changed = []
    for name, value in options.items():
        now = json.loads(json.dumps(value, default=str))
        if name in before and before[name] != now:
            changed.append(f"{name}={json.dumps(before[name])}, this one {json.dumps(now)}")
    return "the earlier run set " + "; ".join(changed) if changed else ""


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
    """Append rows to a results file, the header with the first ones; each batch of rows lands whole or not at all.

    A batch is formatted first and appended with one unbuffered write (repeated for what a short write left), then
    synced to disk. If the write fails (a full disk, an interrupt), the file is cut back to its length before the
    batch -- removed, if this batch would have created it: a full disk leaves the complete rows written before it,
    no torn row and no results file without rows, and the error names the file. A process killed mid-write can still
    leave a torn last line, which :func:`_read_rows` drops and the next writer rewrites away.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file() and path.stat().st_size > 0 and (
            not path.read_bytes().endswith(b"\n") or _header(path) != COLUMN_NAMES
        ):
            # a line cut short by an interruption, or an earlier release's columns: rewrite before appending
            _write_rows_atomic(path, _read_rows(path))
        self.handle: io.FileIO | None = None

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        rows = [format_record(record) for record in records]
        created = False
        if self.handle is None:
            created = not self.path.exists()
            with naming(self.path):
                self.handle = open(self.path, "ab", buffering=0)
        fd = self.handle.fileno()
        size = os.fstat(fd).st_size
        text = io.StringIO()
        csv.writer(text).writerows([COLUMN_NAMES, *rows] if size == 0 else rows)
        data = memoryview(text.getvalue().encode("utf-8"))
        try:
            with naming(self.path):
                while data:
                    data = data[self.handle.write(data) :]
                os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)  # no torn row: the file ends with the last complete batch
            if created:
                self.close()
                self.path.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
