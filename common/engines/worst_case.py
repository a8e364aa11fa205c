"""The ``worst-case`` threat: per model, subject and epsilon, the lowest mean Dice over every attack that ran.

Single-loss, fixed-step attacks overstate robustness, and different models are vulnerable to different attacks
(Croce, Singh & Hein, ECCV 2024, "Towards Reliable Evaluation and Fast Training of Robust Semantic Segmentation
Models" (SEA); Halmosi et al., ECCV 2024). The reliable number is the per-sample worst case over an ensemble of strong
attacks, as AutoAttack takes it per image (Croce & Hein, ICML 2020). A ``worst-case`` row is derived from the rows of
one model and subject at one epsilon: every adversarial input scored there (each iterate of an iterative attack, the
result of PGD/APGD, FGSM, the targeted ti-FGSM, the adaptive attacks on logits / T and on the raw logits, transfer
inputs from other models) is a perturbation inside the same epsilon-ball, so the attacker may pick the one with the
lowest mean Dice over WT, TC and ET. The row copies that input's scores and perturbation norms and names it in the
``winner`` column; ``attack`` is ``ensemble``, ``seconds`` is the summed time of the members (the cost of the
ensemble), and ``attack_config`` lists the members.

The rows are derived, never computed by an attack: :func:`with_worst_case_rows` recomputes them from the member rows
each time an evaluation finishes (replacing those of an earlier run) and puts them at the end of the CSV, so they
always agree with the rows they are taken over.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from common.report.schema import MEMBER_THREATS, mean_dice
from common.utils.enums import Threat

__all__ = ["ENSEMBLE", "MEMBER_THREATS", "with_worst_case_rows", "worst_case_rows"]

ENSEMBLE = "ensemble"
"""The ``attack`` of a worst-case row."""


def _describe(row: Mapping[str, str]) -> str:
    source = f" from {row['source_model']}" if row["threat"] == Threat.TRANSFER else ""
    loss = f", {row['loss']}" if row["loss"] else ""
    return f"{row['attack']} ({row['threat']}{source}{loss}, iteration {row['iteration']}/{row['steps']})"


def worst_case_rows(rows: Iterable[Mapping[str, str]], epsilons: Collection[float]) -> list[dict[str, str]]:
    """The worst-case rows of ``rows`` at ``epsilons``: one per (model, subject, epsilon) with member rows.

    Args:
        rows: results rows as CSV strings (column -> cell), in file order; rows of other threats (clean,
            worst-case) are ignored.
        epsilons: the epsilons to take the worst case at (matched as floats).

    Returns:
        The worst-case rows, as CSV strings, ordered by the first appearance of their (model, subject) and then by
        epsilon. Ties go to the member that comes first in ``rows``.
    """
    wanted = {float(e) for e in epsilons}
    groups: dict[tuple[str, str, float], list[Mapping[str, str]]] = {}
    for row in rows:
        if row["threat"] not in MEMBER_THREATS:
            continue
        epsilon = float(row["epsilon"])
        if epsilon in wanted:
            groups.setdefault((row["model"], row["subject"], epsilon), []).append(row)
    order: dict[tuple[str, str], int] = {}
    for model, subject, _ in groups:
        order.setdefault((model, subject), len(order))
    out = []
    for key in sorted(groups, key=lambda k: (order[k[:2]], k[2])):
        members = groups[key]
        winner = min(members, key=mean_dice)  # min keeps the first of equal values
        # a member job's cost is its last row's time (an iterative attack's time up to its last iterate)
        jobs: dict[tuple[str, str, str, str], float] = {}
        for row in members:
            job = (row["attack"], row["threat"], row["source_model"], row["loss"])
            jobs[job] = max(jobs.get(job, 0.0), float(row["seconds"] or 0.0))
        names = sorted({f"{a} {t}" + (f" from {s}" if t == Threat.TRANSFER else "") + (f" ({loss})" if loss else "")
                        for a, t, s, loss in jobs})  # fmt: skip
        out.append({
            **winner,
            "attack": ENSEMBLE,
            "threat": str(Threat.WORST_CASE),
            "attack_config": f"worst case over {len(members)} adversarial inputs of {len(jobs)} attacks: "
            + "; ".join(names),
            "seconds": repr(sum(jobs.values())),
            "winner": _describe(winner),
            "target_attainment": "",  # the ensemble has no target, even when a targeted input won
            "dice_trace": "",  # the ensemble's convergence is computed from its members' (common.report.convergence)
        })  # fmt: skip
    return out


def with_worst_case_rows(rows: Sequence[Mapping[str, str]], epsilons: Collection[float]) -> list[dict[str, Any]]:
    """``rows`` without earlier worst-case rows, followed by fresh ones.

    The other rows keep their order (so the rows an interrupted run wrote stay a prefix of the file); the
    worst-case rows come last, in the order of :func:`worst_case_rows`.

    Args:
        rows: results rows as CSV strings.
        epsilons: see :func:`worst_case_rows`; empty: no worst-case rows.

    Returns:
        The rows to write.
    """
    kept = [dict(r) for r in rows if r["threat"] != Threat.WORST_CASE]
    return kept + worst_case_rows(kept, epsilons)
