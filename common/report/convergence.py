"""Proof of convergence of the worst case: its Dice vs attack iterations and restarts, per model, and the verdict.

A worst-case Dice is only an upper bound on the model's robustness; the evidence that the ensemble found (nearly) the
worst it can is that more of the same search no longer helps (Croce & Hein 2020; SEA, Croce, Singh & Hein 2024;
Carlini et al. 2019, "On Evaluating Adversarial Robustness", Sec. 4.3). From the CSV alone, per model, epsilon and
subject:

* each **member** of the ensemble (one attack job: attack, threat, source model, loss; the rows the ``worst-case``
  rows are taken over, :data:`common.report.schema.MEMBER_THREATS`) gives a curve ``b(n)``, the lowest mean
  Dice (WT, TC, ET) it had found after ``n`` gradient passes: from the ``dice_trace`` of PGD and APGD (``restarts x
  steps`` values; the last point also scores the last iterate, through the row's own Dice), from the running minimum
  over the per-iterate rows of i-FGSM and ti-FGSM, and a constant for FGSM, the noise control and transfer inputs;
* the **worst-case curve** ``W(n)`` is the mean over subjects of the minimum over members of ``b(min(n, N_member))``:
  what the ensemble had found when every member had spent at most ``n`` passes. ``W(N)`` at the longest member's
  budget ``N`` is the mean Dice of the ``worst-case`` rows;
* after ``r`` restarts, ``V(r)`` takes each member with restarts at the end of its restart ``r`` (or its last).

A model is **not converged** at an epsilon when the last 20 % of the passes (``W(floor(0.8 N)) - W(N)``) or the last
restart (``V(R - 1) - V(R)``) lowered the worst-case Dice by more than :data:`CONVERGENCE_TOLERANCE` (0.01): then more
iterations or restarts would likely lower it further, and the reported number overstates robustness. With one
restart the restart check cannot be made and is reported as such.

Example::

    for c in convergence(load_results("results.csv")):
        print(c.model, c.epsilon, c.verdict)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.report.figure import OKABE_ITO, ReportFigure, data_point, new_figure
from common.report.labels import defence_sort_key, file_stem, format_eps, model_label
from common.report.schema import MEMBER_THREATS, Record, mean_dice, parse_trace
from common.report.selection import model_identities
from common.utils.enums import Net, Threat

__all__ = ["CONVERGENCE_TOLERANCE", "LAST_FRACTION", "Convergence", "convergence", "convergence_figures"]

CONVERGENCE_TOLERANCE = 0.01
"""The largest drop of the worst-case mean Dice in the last 20 % of the passes or the last restart of a converged
search."""
LAST_FRACTION = 0.2
"""The share of the passes at the end whose gain is checked."""


@dataclass(frozen=True)
class Convergence:
    """The worst-case search of one model at one epsilon: its curves and whether it levelled off.

    Attributes:
        model: the model.
        epsilon: the radius.
        subjects: the number of subjects averaged.
        steps: the steps per restart of the longest member (the restart length on :attr:`curve`'s axis).
        curve: ``W(n)`` for ``n = 1..N`` gradient passes (mean over subjects of the worst case over members).
        restart_curve: ``V(r)`` for ``r = 1..R`` restarts.
    """

    model: str
    epsilon: float
    subjects: int
    steps: int
    curve: tuple[float, ...]
    restart_curve: tuple[float, ...]

    @property
    def passes(self) -> int:
        """``N``, the longest member's gradient passes (restarts x steps)."""
        return len(self.curve)

    @property
    def iteration_gain(self) -> float | None:
        """``W(floor(0.8 N)) - W(N)``: what the last 20 % of the passes won; ``None`` with fewer than 5 passes."""
        if self.passes < 5:
            return None
        return self.curve[math.floor((1 - LAST_FRACTION) * self.passes) - 1] - self.curve[-1]

    @property
    def restart_gain(self) -> float | None:
        """``V(R - 1) - V(R)``: what the last restart won; ``None`` with one restart."""
        return None if len(self.restart_curve) < 2 else self.restart_curve[-2] - self.restart_curve[-1]

    @property
    def converged(self) -> bool | None:
        """``False`` if a check's gain exceeds the tolerance, ``True`` if some check was made and none did,
        ``None`` if neither check could be made (no member with 5 passes or more)."""
        gains = [g for g in (self.iteration_gain, self.restart_gain) if g is not None]
        if not gains:
            return None
        return all(g <= CONVERGENCE_TOLERANCE for g in gains)

    @property
    def verdict(self) -> str:
        """One line: ``converged (...)``, ``NOT CONVERGED: ...`` or ``not checked (...)``."""
        parts = []
        if self.iteration_gain is not None:
            parts.append(f"last {100 * LAST_FRACTION:.0f} % of {self.passes} passes: -{self.iteration_gain:.3f}")
        if self.restart_gain is not None:
            parts.append(f"restart {len(self.restart_curve)}: -{self.restart_gain:.3f}")
        else:
            parts.append("one restart, restarts not checked")
        detail = "; ".join(parts)
        if self.converged is None:
            return f"not checked ({detail})"
        return f"converged ({detail})" if self.converged else f"NOT CONVERGED: {detail}"


_COLOURS = [OKABE_ITO[name] for name in ("blue", "vermillion", "bluish green", "orange", "reddish purple")]


def _member_curve(rows: Sequence[Record]) -> tuple[list[float], int]:
    """One member's ``b(1..N)`` for one subject, and its steps per restart."""
    traced = [r for r in rows if parse_trace(r.get("dice_trace"))]
    if traced:
        row = traced[0]
        values = parse_trace(row["dice_trace"])
        values[-1] = min(values[-1], mean_dice(row))  # the row also scores the last iterate
        steps = int(row["steps"])  # type: ignore[arg-type]
    elif len(rows) > 1:  # one row per iterate
        by_iteration = {int(r["iteration"]): mean_dice(r) for r in rows}  # type: ignore[arg-type]
        last = max(by_iteration)
        values, current = [], math.inf
        for k in range(1, last + 1):
            current = min(current, by_iteration.get(k, math.inf))
            values.append(current)
        steps = last
    else:
        values, steps = [mean_dice(rows[0])], 1
    return list(np.minimum.accumulate(values)), max(1, steps)


def _value(curve: list[float], n: int) -> float:
    return curve[min(n, len(curve)) - 1]


def convergence(records: Sequence[Record]) -> list[Convergence]:
    """The convergence of every model's worst case at every epsilon of its ``worst-case`` rows.

    Args:
        records: rows from :func:`common.report.schema.load_results`.

    Returns:
        One :class:`Convergence` per (model, epsilon) with worst-case rows, in the order of those rows.
    """
    wanted: dict[tuple[str, float], None] = {}
    for r in records:
        if r["threat"] == Threat.WORST_CASE:
            wanted.setdefault((str(r["model"]), float(r["epsilon"])), None)  # type: ignore[arg-type]
    members: dict[tuple[str, float], dict[str, dict[tuple, list[Record]]]] = {key: {} for key in wanted}
    for r in records:
        key = (str(r["model"]), float(r["epsilon"]))  # type: ignore[arg-type]
        if r["threat"] in MEMBER_THREATS and key in members:
            job = (r["attack"], r["threat"], r["source_model"], r["loss"])
            members[key].setdefault(str(r["subject"]), {}).setdefault(job, []).append(r)
    out = []
    for (model, epsilon), subjects in members.items():
        if not subjects:
            continue
        curves = {s: [_member_curve(rows) for rows in jobs.values()] for s, jobs in subjects.items()}
        passes = max(len(c) for per in curves.values() for c, _ in per)
        # the restart length shown on the curve: that of the member with the most restarts (then the most passes)
        longest = max((c for per in curves.values() for c in per), key=lambda c: (len(c[0]) // c[1], len(c[0])))
        restarts = max(len(c) // s for per in curves.values() for c, s in per)
        curve = [float(np.mean([min(_value(c, n) for c, _ in per) for per in curves.values()]))
                 for n in range(1, passes + 1)]  # fmt: skip
        restart_curve = [float(np.mean([min(_value(c, min(r, len(c) // s) * s) for c, s in per)
                                        for per in curves.values()]))
                         for r in range(1, restarts + 1)]  # fmt: skip
        out.append(Convergence(model, epsilon, len(curves), longest[1], tuple(curve), tuple(restart_curve)))
    return out


def convergence_figures(records: Sequence[Record]) -> list[ReportFigure]:
    """One figure per net with worst-case rows: per model, the worst-case mean Dice vs gradient passes (log scale),
    one line per epsilon, restarts marked, and the verdict in the panel title.

    Args:
        records: rows from :func:`common.report.schema.load_results`.

    Returns:
        The figures (none when no model has worst-case rows with an iterative member).
    """
    results = [c for c in convergence(records) if c.passes > 1]
    if not results:
        return []
    info = model_identities(records)
    figures = []
    for net in Net:
        mine = [c for c in results if info.get(c.model, ("",))[0] == net]
        if not mine:
            continue
        models = sorted({c.model for c in mine}, key=lambda m: defence_sort_key(info[m][1], info[m][2], m))
        columns = min(2, len(models))
        rows = math.ceil(len(models) / columns)
        figure = new_figure(6.0 * columns, 3.6 * rows + 0.4)
        axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
        labels = [model_label(m, info) for m in models]
        unique = len(set(labels)) == len(labels)
        data, failed = [], []
        for ax, model in zip(axes, models, strict=False):
            panel = model_label(model, info, unique)
            ours = sorted((c for c in mine if c.model == model), key=lambda c: c.epsilon)
            for k, c in enumerate(ours):
                colour = _COLOURS[k % len(_COLOURS)]
                x = np.arange(1, c.passes + 1)
                ax.plot(x, c.curve, color=colour, label=f"ε = {format_eps(c.epsilon)}")
                ends = [r * c.steps for r in range(1, len(c.restart_curve) + 1) if r * c.steps <= c.passes]
                ax.plot(ends, [c.curve[e - 1] for e in ends], "o", color=colour, markersize=4)
                data += [data_point(panel, f"eps={format_eps(c.epsilon)}", int(n), v, 0.0, "none", c.subjects)
                         for n, v in zip(x, c.curve, strict=True)]  # fmt: skip
                if c.converged is False:
                    failed.append(f"{panel} at ε = {format_eps(c.epsilon)}")
            verdicts = {c.converged for c in ours}
            status = "NOT CONVERGED" if False in verdicts else "converged" if True in verdicts else "not checked"
            ax.set_title(f"{panel}: {status}", fontsize=11)
            ax.set_xscale("log")
            ax.set_xlabel("gradient passes per member (log)")
            ax.set_ylabel("worst-case mean Dice")
            ax.set_ylim(bottom=0)
            ax.legend(frameon=False, fontsize=9)
        for ax in axes[len(models) :]:
            ax.set_visible(False)
        n = max(c.subjects for c in mine)
        caption = (
            "Worst-case mean Dice (WT, TC, ET) over the attack ensemble vs the gradient passes each member may spend "
            f"(log scale; mean over {n} subjects), per model and ε; dots mark the end of each restart. FGSM, the "
            "noise control and inputs transferred from another model count from the first pass; a member with a "
            "radius schedule (APGD with SEA's, attacking from a larger ball first) only from the pass where its "
            "iterates are back inside the ε-ball, so the curve can drop sharply there. A model is "
            f"flagged NOT CONVERGED when the last {100 * LAST_FRACTION:.0f} % of the passes or the last restart "
            f"lowered it by more than {CONVERGENCE_TOLERANCE}: its worst case then overstates robustness. "
            + (f"Not converged: {', '.join(failed)}." if failed else "Every checked search levelled off.")
        )
        title = f"Convergence of the worst case ({Net(net).title})"
        figures.append(ReportFigure.draw(file_stem(f"convergence_{net}"), title, caption, figure, data=tuple(data)))
    return figures
