"""Which rows of the results CSV a table cell or a plotted point is computed from.

The tables and the figures select rows the same way: a model's clean rows, the final iterate of an attack at one
epsilon (compared with a tolerance), one row per subject (a second row means a resumed run appended duplicates), the
same subjects in every compared cell (the paired Wilcoxon tests need them), one attack loss per table or figure.

Example::

    clean = by_subject(clean_rows(records, "brats_unet3d_baseline"), "model brats_unet3d_baseline clean", "results")
    subjects = sorted(clean)
    dice_wt = column_values(clean, subjects, "dice_wt")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from common.errors import RobustsegError
from common.report.schema import Record
from common.utils.enums import Threat

__all__ = [
    "KNOWN_ATTACK_ORDER",
    "attack_order",
    "by_subject",
    "check_paired",
    "choose_loss",
    "clean_rows",
    "column_values",
    "config_key",
    "final_attack_rows",
    "model_identities",
    "same_epsilon",
]

KNOWN_ATTACK_ORDER: tuple[str, ...] = ("FGSM", "i-FGSM", "ti-FGSM", "PGD", "APGD")
"""The paper's attacks in its order, then PGD and APGD; other attacks follow them."""


def same_epsilon(a: float, b: float) -> bool:
    """Whether two epsilons are the same radius (CSV round trips and ``0.1 * k`` differ in the last bits)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def attack_order(name: str) -> int:
    """Sort key of an attack name: the paper's attacks first (:data:`KNOWN_ATTACK_ORDER`), then the others."""
    return KNOWN_ATTACK_ORDER.index(name) if name in KNOWN_ATTACK_ORDER else len(KNOWN_ATTACK_ORDER)


def config_key(row: Record) -> tuple[str, str, int, str]:
    """What tells one attack configuration from another: (attack, loss, steps, attack_config)."""
    return (str(row["attack"]), str(row["loss"] or ""), int(row["steps"]), str(row["attack_config"] or ""))


def model_identities(records: Iterable[Record], net: str | None = None) -> dict[str, tuple[str, str, str]]:
    """model -> (net, defense, defense_param), from each model's first row, in order of first appearance.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: keep only the rows of this net; ``None``: all rows.
    """
    info: dict[str, tuple[str, str, str]] = {}
    for r in records:
        if net is None or r["net"] == net:
            info.setdefault(str(r["model"]), (str(r["net"]), str(r["defense"]), str(r["defense_param"] or "")))
    return info


def clean_rows(records: Iterable[Record], model: str) -> list[Record]:
    """The rows of ``model`` on the clean input (threat ``clean``)."""
    return [r for r in records if r["model"] == model and r["threat"] == Threat.CLEAN]


def final_attack_rows(
    records: Iterable[Record], model: str, threat: str, epsilon: float, attack: str | None = None
) -> list[Record]:
    """The rows of ``model`` under ``threat`` at ``epsilon`` that score an attack's final iterate.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        model: the attacked model.
        threat: ``white-box``, ``adaptive`` or ``transfer``.
        epsilon: the radius (compared with :func:`same_epsilon`).
        attack: keep only this attack; ``None``: every attack.
    """
    return [
        r
        for r in records
        if r["model"] == model
        and r["threat"] == threat
        and (attack is None or r["attack"] == attack)
        and r["iteration"] == r["steps"]
        and same_epsilon(float(r["epsilon"]), epsilon)
    ]


def by_subject(rows: Iterable[Record], what: str, source: str) -> dict[str, Record]:
    """The rows of one cell keyed by subject.

    Args:
        rows: the cell's rows.
        what: the cell, for the error message (``"model m FGSM white-box at epsilon 0.05"``).
        source: name of the CSV, for the error message.

    Raises:
        RobustsegError: if a subject has several rows.
    """
    out: dict[str, Record] = {}
    for row in rows:
        subject = str(row["subject"])
        if subject in out:
            raise RobustsegError(
                f"{source}: subject {subject} has several rows for {what}; expected one row per subject "
                "(a resumed run appended duplicates?)."
            )
        out[subject] = row
    return out


def check_paired(cell: dict[str, Record], subjects: Sequence[str], what: str, reference: str, source: str) -> None:
    """Check that a cell holds exactly ``subjects``, the subjects of the ``reference`` it is tested against.

    Raises:
        RobustsegError: naming up to five missing and five extra subjects.
    """
    if set(cell) != set(subjects):
        missing = sorted(set(subjects) - set(cell))
        extra = sorted(set(cell) - set(subjects))
        raise RobustsegError(
            f"{source}: subjects of {what} do not pair with {reference}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, extra {extra[:5]}{'...' if len(extra) > 5 else ''}; "
            "expected the same subjects."
        )


def column_values(cell: dict[str, Record], subjects: Sequence[str], column: str) -> np.ndarray:
    """One column of a cell in ``subjects`` order, as float64 (paired with another cell's in the same order)."""
    return np.array([cell[s][column] for s in subjects], dtype=np.float64)


def choose_loss(rows: Sequence[Record], loss: str | None, what: str, source: str) -> str:
    """The attack loss of a table or figure (``""`` for rows without a loss name).

    Args:
        rows: the attack rows it could show.
        loss: the user's choice; ``None``: the only loss of ``rows``, else ``soft_dice`` (the paper's).
        what: the table or figure, for the error message.
        source: name of the CSV, for the error message.

    Raises:
        RobustsegError: if ``loss`` is ``None`` and ``rows`` hold several losses but not ``soft_dice``.
    """
    if loss is not None:
        return loss
    losses = sorted({str(r["loss"] or "") for r in rows})
    if len(losses) <= 1:
        return losses[0] if losses else ""
    if "soft_dice" in losses:  # the paper's attack loss
        return "soft_dice"
    raise RobustsegError(f"{source}: {what} uses several losses {losses}; pass loss=<name> to choose one.")
