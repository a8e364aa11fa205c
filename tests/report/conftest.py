"""Builders of hand-made robustness CSVs for the report tests."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from common.report.schema import COLUMN_NAMES, format_record


def _row(
    model: str,
    subject: str,
    dice: Sequence[float],
    *,
    net: str = "3d",
    defense: str = "none",
    defense_param: str | None = None,
    attack: str = "none",
    threat: str = "clean",
    epsilon: float = 0.0,
    steps: int = 0,
    iteration: int = 0,
    quality: Sequence[float] | None = None,
    loss: str | None = "soft_dice",
    source_model: str | None = None,
    attack_config: str | None = None,
) -> dict:
    """One result row; ``dice`` is (WT, TC, ET), ``quality`` (PSNR, SSIM, RMSE) for attacked rows."""
    clean = threat == "clean"
    if attack_config is None and not clean:
        attack_config = f"{attack}(epsilon={epsilon}, steps={steps}, loss={loss})"
    return {
        "model": model,
        "net": net,
        "defense": defense,
        "defense_param": defense_param,
        "subject": subject,
        "attack": attack,
        "threat": threat,
        "source_model": None if clean else (source_model or model),
        "attack_config": None if clean else attack_config,
        "loss": None if clean else loss,
        "epsilon": epsilon,
        "steps": steps,
        "iteration": iteration,
        "dice_wt": float(dice[0]),
        "dice_tc": float(dice[1]),
        "dice_et": float(dice[2]),
        "psnr": None if quality is None else float(quality[0]),
        "ssim": None if quality is None else float(quality[1]),
        "rmse": None if quality is None else float(quality[2]),
        "linf": epsilon,
        "l2": 10 * epsilon,
        "zero_grad_fraction": None if clean else 0.0,
        "seconds": 0.5,
    }


def _write(path: Path, rows: Sequence[dict], header: Sequence[str] = COLUMN_NAMES) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(format_record(row))
    return path


@pytest.fixture
def make_row() -> Callable[..., dict]:
    """``make_row(model, subject, (wt, tc, et), **columns)`` -> a full result row."""
    return _row


@pytest.fixture
def write_csv() -> Callable[..., Path]:
    """``write_csv(path, rows)`` writes rows with the schema header and returns the path."""
    return _write
