"""Per-subject Dice for the BraTS regions, written as CSV by an evaluation engine."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from common.data.labels import REGIONS
from common.metrics.dice import region_dice
from common.utils.files import write_atomic

__all__ = ["SubjectDiceWriter"]


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _subjects(batch: Any, n: int, offset: int) -> list[str]:
    if isinstance(batch, dict) and "subject" in batch:
        return [str(s) for s in _items(batch["subject"])]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict) and "subject" in batch[0]:
        return [str(b["subject"]) for b in batch]
    return [f"case_{offset + i:04d}" for i in range(n)]


class SubjectDiceWriter:
    """Collect the Dice of each subject for WT/TC/ET and write ``<output_dir>/dice_per_subject.csv`` and a summary.

    Attach to a MONAI ``SupervisedEvaluator`` whose post-processing turns ``pred`` into a BraTS label map (e.g.
    :class:`~common.data.label_transforms.LabelsFromLogitsd`); ``label`` is the ground truth map. Dice follows
    :func:`common.metrics.dice` (both masks empty = 1). At the end of the run it writes, atomically, one row
    per subject (``subject, dice_wt, dice_tc, dice_et``) and ``dice_summary.json`` with the mean and sample sd
    (ddof=1) per region.

    Args:
        output_dir: folder of the CSV and summary.
        regions: region names, default WT, TC, ET.
        prefix: file name prefix (e.g. ``"test_"``).
    """

    def __init__(self, output_dir: str, regions: Sequence[str] = tuple(REGIONS), prefix: str = "") -> None:
        self.output_dir = Path(output_dir)
        self.regions = tuple(regions)
        self.prefix = prefix
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        outputs = _items(engine.state.output)
        preds = torch.stack([torch.as_tensor(o["pred"]) for o in outputs])
        labels = torch.stack([torch.as_tensor(o["label"]) for o in outputs])
        scores = region_dice(preds, labels, self.regions)
        subjects = _subjects(engine.state.batch, len(outputs), len(self.rows))
        for subject, row in zip(subjects, scores.tolist()):
            self.rows.append({"subject": subject, **{f"dice_{r.lower()}": v for r, v in zip(self.regions, row)}})

    def summary(self) -> dict[str, Any]:
        """Mean and sample sd (ddof=1) per region over the collected subjects."""
        out: dict[str, Any] = {"subjects": len(self.rows)}
        for region in self.regions:
            values = np.array([row[f"dice_{region.lower()}"] for row in self.rows], dtype=float)
            out[f"dice_{region.lower()}_mean"] = float(values.mean()) if values.size else float("nan")
            out[f"dice_{region.lower()}_sd"] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
        return out

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fields = ["subject"] + [f"dice_{r.lower()}" for r in self.regions]
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.output_dir / f"{self.prefix}dice_per_subject.csv", table.getvalue())
        write_atomic(self.output_dir / f"{self.prefix}dice_summary.json", json.dumps(self.summary(), indent=2))
