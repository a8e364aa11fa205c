"""The sanity table: per model, the checks that tell a broken or masked attack from real robustness, pass or fail.

Carlini et al. (2019, "On Evaluating Adversarial Robustness", arXiv:1902.06705) and AutoAttack's own checks (Croce &
Hein, ICML 2020) list what a sound evaluation shows. Each check is computed from the results CSV alone, on the mean
over WT, TC and ET of each subject's Dice, averaged over subjects; a check whose rows the evaluation did not produce is
``not run``, and a failure is shown with its numbers, never hidden:

1. **iterative <= single-step**: at each epsilon with both, every untargeted iterative white-box attack's final Dice
   is at most FGSM's (+ ``tolerance``); more steps that hurt less mean a broken step size or a masked gradient.
2. **non-increasing in epsilon**: the white-box FGSM Dice never rises by more than ``tolerance`` from one epsilon to
   the next larger one.
3. **unbounded epsilon breaks the model**: some white-box or worst-case row at epsilon >= 1 has mean Dice <= 0.05;
   an attack that cannot break the model without a bound is not attacking it.
4. **white-box <= transfer**: at each (untargeted attack, epsilon) with both, the white-box Dice is at most the Dice
   of the inputs transferred from another model (+ ``tolerance``); otherwise the model's own gradient is masked. A
   targeted attack (ti-FGSM) aims at its target, not at a low Dice, and is left out.
5. **random noise hurts less**: uniform random-sign noise at epsilon leaves a higher Dice than the attack (+ no
   tolerance); needs rows of attack ``random-sign``, which the evaluation does not compute yet (``not run``).
6. **gradient not masked**: the mean share of exactly-zero input gradients over the white-box rows is below 0.5.
7. **attacks converged**: at every epsilon of the model's ``worst-case`` rows, neither the last 20 % of the gradient
   passes nor the last restart lowered the worst-case Dice by more than 0.01 (:mod:`common.report.convergence`);
   ``not run`` without worst-case rows or without an iterative member.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.report.convergence import Convergence, convergence
from common.report.labels import defence_sort_key, format_eps, model_label
from common.report.schema import Record, mean_dice
from common.report.selection import model_identities, same_epsilon
from common.report.table import Table
from common.utils.enums import Net, Threat

__all__ = ["CHECKS", "PASS", "NOT_RUN", "build_sanity", "sanity_checks"]

CHECKS: tuple[str, ...] = (
    "iterative <= single-step",
    "non-increasing in epsilon",
    "unbounded epsilon breaks it",
    "white-box <= transfer",
    "random noise hurts less",
    "gradient not masked",
    "attacks converged",
)
"""The checks, in the table's column order."""

PASS = "pass"
NOT_RUN = "not run"
UNBOUNDED_DICE = 0.05
ZERO_GRAD_LIMIT = 0.5
_UNTARGETED_ITERATIVE = ("i-FGSM", "PGD", "APGD")
_UNTARGETED = ("FGSM", *_UNTARGETED_ITERATIVE)


def _mean_dice(rows: Sequence[Record]) -> float:
    """The mean over rows of each row's mean Dice over WT, TC and ET."""
    return float(np.mean([mean_dice(r) for r in rows]))


def _final(records: Sequence[Record], model: str, threat: str) -> list[Record]:
    return [r for r in records if r["model"] == model and r["threat"] == threat and r["iteration"] == r["steps"]]


def _by_attack_eps(rows: Sequence[Record]) -> dict[tuple[str, float], list[Record]]:
    groups: dict[tuple[str, float], list[Record]] = {}
    for r in rows:
        groups.setdefault((str(r["attack"]), float(r["epsilon"])), []).append(r)  # type: ignore[arg-type]
    return groups


def _fail(detail: str) -> str:
    return f"FAIL: {detail}"


def sanity_checks(
    records: Sequence[Record], model: str, tolerance: float = 0.01, searches: Sequence[Convergence] | None = None
) -> dict[str, str]:
    """The checks of :data:`CHECKS` for one model: check -> ``"pass"``, ``"FAIL: <numbers>"`` or ``"not run"``.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        model: the model.
        tolerance: the Dice noise allowed in checks 1, 2 and 4.
        searches: :func:`~common.report.convergence.convergence` of ``records``, if already computed.
    """
    white = _final(records, model, Threat.WHITE_BOX)
    groups = _by_attack_eps(white)
    out: dict[str, str] = {}

    failures, compared = [], 0
    for (attack, eps), rows in groups.items():
        if attack not in _UNTARGETED_ITERATIVE:
            continue
        single = next((g for (a, e), g in groups.items() if a == "FGSM" and same_epsilon(e, eps)), None)
        if single is None:
            continue
        compared += 1
        iterative, fgsm = _mean_dice(rows), _mean_dice(single)
        if iterative > fgsm + tolerance:
            failures.append(f"{attack} {iterative:.3f} > FGSM {fgsm:.3f} at ε = {format_eps(eps)}")
    out[CHECKS[0]] = NOT_RUN if not compared else _fail("; ".join(failures)) if failures else PASS

    sweep = sorted((eps, _mean_dice(rows)) for (attack, eps), rows in groups.items() if attack == "FGSM")
    rises = [f"{b:.3f} at ε = {format_eps(e1)} > {a:.3f} at ε = {format_eps(e0)}"
             for (e0, a), (e1, b) in zip(sweep, sweep[1:]) if b > a + tolerance]  # fmt: skip
    out[CHECKS[1]] = NOT_RUN if len(sweep) < 2 else _fail("; ".join(rises)) if rises else PASS

    unbounded = [r for r in records if r["model"] == model and float(r["epsilon"]) >= 1  # type: ignore[arg-type]
                 and r["threat"] in (Threat.WHITE_BOX, Threat.WORST_CASE) and r["iteration"] == r["steps"]]  # fmt: skip
    if not unbounded:
        out[CHECKS[2]] = NOT_RUN
    else:
        best = min(_mean_dice([r]) for r in unbounded)
        out[CHECKS[2]] = PASS if best <= UNBOUNDED_DICE else _fail(f"lowest Dice {best:.3f} > {UNBOUNDED_DICE}")

    transfer = _by_attack_eps(_final(records, model, Threat.TRANSFER))
    failures, compared = [], 0
    for (attack, eps), rows in transfer.items():
        if attack not in _UNTARGETED:  # a targeted attack does not aim at a low Dice
            continue
        own = next((g for (a, e), g in groups.items() if a == attack and same_epsilon(e, eps)), None)
        if own is None:
            continue
        compared += 1
        white_dice, transfer_dice = _mean_dice(own), _mean_dice(rows)
        if white_dice > transfer_dice + tolerance:
            failures.append(f"{attack} white-box {white_dice:.3f} > transfer {transfer_dice:.3f} at ε = "
                            f"{format_eps(eps)}")  # fmt: skip
    out[CHECKS[3]] = NOT_RUN if not compared else _fail("; ".join(failures)) if failures else PASS

    noise = [(eps, _mean_dice(rows)) for (attack, eps), rows in groups.items() if attack == "random-sign"]
    if not noise:
        out[CHECKS[4]] = NOT_RUN
    else:
        failures = []
        for eps, noise_dice in noise:
            attacked = [g for (a, e), g in groups.items() if a != "random-sign" and same_epsilon(e, eps)]
            worst = min((_mean_dice(g) for g in attacked), default=None)
            if worst is not None and noise_dice <= worst:
                failures.append(f"noise {noise_dice:.3f} <= attack {worst:.3f} at ε = {format_eps(eps)}")
        out[CHECKS[4]] = _fail("; ".join(failures)) if failures else PASS

    fractions = [float(r["zero_grad_fraction"]) for r in white if r["zero_grad_fraction"] is not None]  # type: ignore[arg-type]
    if not fractions:
        out[CHECKS[5]] = NOT_RUN
    else:
        mean = float(np.mean(fractions))
        out[CHECKS[5]] = PASS if mean < ZERO_GRAD_LIMIT else _fail(f"{100 * mean:.1f} % of input gradients are 0")

    searches = [c for c in (convergence(records) if searches is None else searches)
                if c.model == model and c.converged is not None]  # fmt: skip
    if not searches:
        out[CHECKS[6]] = NOT_RUN
    else:
        failures = [f"ε = {format_eps(c.epsilon)}: {c.verdict}" for c in searches if not c.converged]
        out[CHECKS[6]] = _fail("; ".join(failures)) if failures else PASS
    return out


def build_sanity(records: Sequence[Record], net: str, tolerance: float = 0.01) -> Table | None:
    """The sanity table of one net's attacked models, or ``None`` when the net has no white-box rows.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        tolerance: see :func:`sanity_checks`.

    Returns:
        The table (name ``sanity_<net>``): one row per model, one column per check.
    """
    info = model_identities(records, net)
    models = sorted({str(r["model"]) for r in records if r["model"] in info and r["threat"] == Threat.WHITE_BOX},
                    key=lambda m: defence_sort_key(info[m][1], info[m][2], m))  # fmt: skip
    if not models:
        return None
    unique = len({model_label(m, info) for m in models}) == len(models)
    rows, csv_rows = [], []
    searches = convergence(records)
    for m in models:
        checks = sanity_checks(records, m, tolerance, searches)
        rows.append([model_label(m, info, unique), *(checks[c] for c in CHECKS)])
        csv_rows += [[m, c, checks[c]] for c in CHECKS]
    failed = sum(v.startswith("FAIL") for row in rows for v in row[1:])
    caption = (
        f"{Net(net).title}: the checks of Carlini et al. (2019) and AutoAttack, from the CSV (mean Dice over WT, TC, "
        f"ET per subject, averaged over subjects; Dice noise allowed: {tolerance:g}). A failure means the attack, "
        f"not the model, is suspect; 'not run': the evaluation did not compute the rows the check needs. "
        f"{failed} failure(s)."
    )
    return Table(f"sanity_{net}", f"Sanity checks ({Net(net).title})", caption, ["Model", *CHECKS], rows,
                 csv_header=["model", "check", "result"], csv_rows=csv_rows)  # fmt: skip
