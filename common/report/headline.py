"""The headline table: per model, clean Dice, the paper's FGSM, and the worst case over every attack at each epsilon.

One table per net whose CSV holds ``worst-case`` rows (:mod:`common.engines.worst_case`). The paper's protocol (one
loss, fixed steps, no restarts) overstates robustness; the reliable number is the per-subject worst case over an
ensemble of attacks (Croce, Singh & Hein, ECCV 2024). Per model, with the mean over WT, TC and ET of each subject
(then mean ± sd over subjects):

* clean Dice; the paper's FGSM (white-box) at the report's epsilon;
* the worst-case Dice at each epsilon of the worst-case rows;
* the normalised area under the worst-case Dice-vs-epsilon curve from 0 (the clean Dice) to the largest epsilon
  (trapezoids, divided by that epsilon: 1 = unhurt, 0 = lost from the smallest radius);
* the paired Wilcoxon test of each defended model's area against the undefended model's, Bonferroni-corrected over
  the defended models of the table (``*``: below ``alpha``);
* the attack that won most often at the largest epsilon (``winner``);
* whether the worst-case search levelled off (:mod:`common.report.convergence`): ``yes``, ``NO`` with the epsilons
  where the last 20 % of the passes or the last restart still lowered the Dice by more than 0.01 (then the worst case
  overstates robustness), or ``not checked``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from common.errors import RobustsegError
from common.metrics.stats import bonferroni, mean_sd, wilcoxon_p
from common.report.convergence import Convergence, convergence
from common.report.labels import defence_sort_key, format_eps, model_label
from common.report.options import ReportOptions
from common.report.schema import Record, mean_dice
from common.report.selection import by_subject, choose_loss, clean_rows, final_attack_rows, model_identities
from common.report.table import Table, format_mean_sd, format_p
from common.utils.enums import Defense, Net, Threat

__all__ = ["build_headline"]


def _cell(rows: Sequence[Record], what: str, source: str) -> dict[str, float]:
    return {s: mean_dice(r) for s, r in by_subject(rows, what, source).items()}


def _converged(searches: Sequence[Convergence]) -> str:
    """The headline's convergence cell of one model's searches (one per epsilon)."""
    failed = [format_eps(c.epsilon) for c in searches if c.converged is False]
    if failed:
        return "NO (ε = " + ", ".join(failed) + "; see the sanity table)"
    return "yes" if any(c.converged for c in searches) else "not checked"


def _auc(epsilons: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under (epsilon, Dice) from 0 to the last epsilon, divided by it."""
    return float(np.trapezoid(values, epsilons) / epsilons[-1])


def build_headline(
    records: Sequence[Record], net: str, options: ReportOptions | None = None, source: str = "results", **values: object
) -> Table | None:
    """The headline table of one net, or ``None`` when its models have no ``worst-case`` rows.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        options: the FGSM column's epsilon (``epsilon``), its loss, the reference model and ``alpha``
            (:class:`~common.report.options.ReportOptions`); ``None``: the defaults.
        source: name of the CSV, for error messages.
        values: option fields given as keywords instead, over ``options``.

    Returns:
        The table (name ``headline_<net>``).

    Raises:
        RobustsegError: if a model with worst-case rows has no clean rows, a subject has several rows in a cell, or
            the worst-case subjects of a model differ from its clean subjects.
    """
    options = ReportOptions.resolve(options, **values)
    info = model_identities(records, net)
    worst_rows = [r for r in records if r["threat"] == Threat.WORST_CASE and r["model"] in info]
    if not worst_rows:
        return None
    epsilons = sorted({float(r["epsilon"]) for r in worst_rows})  # type: ignore[arg-type]
    models = sorted({str(r["model"]) for r in worst_rows}, key=lambda m: defence_sort_key(info[m][1], info[m][2], m))
    undefended = [m for m in models if info[m][1] == Defense.NONE]
    chosen = [b for b in options.baselines if b in models]
    baseline = chosen[0] if chosen else (undefended[0] if len(undefended) == 1 else None)
    unique = len({model_label(m, info) for m in models}) == len(models)
    fgsm = [r for m in models for r in final_attack_rows(records, m, Threat.WHITE_BOX, options.epsilon, "FGSM")]
    loss = choose_loss(fgsm, options.loss, "the headline table's FGSM column", source) if fgsm else ""

    cells: dict[str, dict[str, dict[str, float]]] = {}
    for m in models:
        clean = _cell(clean_rows(records, m), f"model {m} clean", source)
        if not clean:
            raise RobustsegError(f"{source}: model {m} has worst-case rows but no clean rows (threat 'clean').")
        cells[m] = {"clean": clean}
        attacked = [r for r in final_attack_rows(records, m, Threat.WHITE_BOX, options.epsilon, "FGSM")
                    if (r["loss"] or "") == loss]  # fmt: skip
        cells[m]["fgsm"] = _cell(attacked, f"model {m} FGSM white-box at epsilon {options.epsilon:g}", source)
        for eps in epsilons:
            rows = [r for r in worst_rows if r["model"] == m and float(r["epsilon"]) == eps]  # type: ignore[arg-type]
            cell = _cell(rows, f"model {m} worst-case at epsilon {eps:g}", source)
            if cell and set(cell) != set(clean):
                raise RobustsegError(
                    f"{source}: the worst-case subjects of model {m} at epsilon {eps:g} differ from its clean "
                    f"subjects ({len(cell)} vs {len(clean)}); expected the same subjects."
                )
            cells[m][f"worst {eps}"] = cell
        subjects = sorted(clean)
        if all(len(cells[m][f"worst {eps}"]) == len(subjects) for eps in epsilons):
            xs = [0.0, *epsilons]
            cells[m]["auc"] = {s: _auc(xs, [clean[s], *(cells[m][f"worst {e}"][s] for e in epsilons)])
                               for s in subjects}  # fmt: skip
        else:
            cells[m]["auc"] = {}

    compared = [m for m in models if m != baseline and baseline is not None and cells[m]["auc"]
                and cells[baseline]["auc"] and set(cells[m]["auc"]) == set(cells[baseline]["auc"])]  # fmt: skip
    raw = []
    for m in compared:
        subjects = sorted(cells[m]["auc"])
        raw.append(wilcoxon_p([cells[m]["auc"][s] for s in subjects], [cells[baseline]["auc"][s] for s in subjects]))
    corrected = dict(zip(compared, bonferroni(raw), strict=True)) if compared else {}

    top = epsilons[-1]
    header = ["Model", "Clean", f"FGSM ε = {format_eps(options.epsilon)}",
              *(f"Worst case ε = {format_eps(e)}" for e in epsilons), f"Area 0-{format_eps(top)}",
              "p vs baseline (Bonferroni)", f"Most frequent winner (ε = {format_eps(top)})",
              "Search converged"]  # fmt: skip
    searches = convergence(records)
    rows, csv_rows = [], []
    for m in models:
        label = model_label(m, info, unique) + (" (baseline)" if m == baseline else "")
        cells_text = []
        for key in ["clean", "fgsm", *(f"worst {e}" for e in epsilons), "auc"]:
            cell = cells[m][key]
            if cell:
                mean, sd = mean_sd(list(cell.values()))
                cells_text.append(format_mean_sd(mean, sd, 3))
                csv_rows.append([m, key, mean, sd, len(cell), None])
            else:
                cells_text.append("-")
        if m in corrected:
            p = float(corrected[m])
            cells_text.append(format_p(p) + ("\\*" if p < options.alpha else ""))
            csv_rows.append([m, "auc p (Bonferroni)", None, None, len(cells[m]["auc"]), p])
        else:
            cells_text.append("-")
        winners = Counter(str(r["winner"] or "") for r in worst_rows if r["model"] == m and float(r["epsilon"]) == top)  # type: ignore[arg-type]
        name, count = winners.most_common(1)[0] if winners else ("-", 0)
        cells_text.append(f"{name} ({count}/{sum(winners.values())})" if winners else "-")
        cells_text.append(_converged([c for c in searches if c.model == m]))
        rows.append([label, *cells_text])
    example = next(r for r in worst_rows if float(r["epsilon"]) == top)  # type: ignore[arg-type]
    n = len(next(iter(cells.values()))["clean"])
    caption = (
        f"{Net(net).title}: mean Dice over WT, TC and ET per subject, mean ± sd over {n} test subjects. "
        "Worst case: per subject and epsilon, the lowest mean Dice over every adversarial input the evaluation "
        "scored at that epsilon (every attack, iterate and threat); FGSM is the paper's single-step attack "
        f"(white-box, loss {loss or '-'}). Area: trapezoids of the worst-case Dice from epsilon 0 (clean) to "
        f"{format_eps(top)}, divided by {format_eps(top)}; p: paired Wilcoxon signed-rank test of each model's area "
        f"against the baseline's, Bonferroni-corrected over {len(compared)} comparison(s); \\* p < {options.alpha:g}."
    )
    notes = [f"Worst-case members at ε = {format_eps(top)} (first subject of {example['model']}): "
             f"`{example['attack_config']}`."]  # fmt: skip
    return Table(f"headline_{net}", f"Headline ({Net(net).title}): worst case over all attacks", caption, header,
                 rows, notes, csv_header=["model", "column", "mean", "sd", "n", "p"], csv_rows=csv_rows)  # fmt: skip
