"""The MR-artifact figures: a heat map of the Dice drop and Dice-vs-severity curves, per net with ``corruption`` rows.

* **Dice drop heat map** (``corruption_heatmap_<net>``): one panel per model, corruption (rows) x severity
  (columns), the mean over subjects of each subject's clean minus corrupted mean Dice (WT, TC, ET), the value written
  in each cell, one diverging colour scale centred on 0 shared by all panels (orange: Dice lost; purple: gained).
* **Dice vs severity** (``corruption_curves_<net>``): one small panel per corruption, one line per model (the
  undefended reference in black), the mean over subjects of the mean Dice at severity 0 (the clean input) and at each
  severity present; a shared y axis.

The figure data (:data:`~common.report.figure.DATA_COLUMNS`) hold the plotted numbers: for the heat map, panel =
model, series = corruption, x = severity, mean = the mean drop with its sample sd and n; for the curves, panel =
corruption, series = model, x = severity (0 = clean), mean = the mean Dice with its sample sd (not drawn) and n.

Example::

    from matplotlib import rc_context
    with rc_context(STYLE):
        figures = corruption_figures(load_results("results.csv"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.corruptions import corruption_order
from common.metrics.stats import mean_sd
from common.report.figure import (
    MODEL_COLOURS,
    MODEL_MARKERS,
    OKABE_ITO,
    ReportFigure,
    data_point,
    new_figure,
)
from common.report.labels import NET_NAMES, file_stem, model_label
from common.report.rood import CorruptionScores, corruption_models, corruption_scores
from common.report.schema import Record
from common.report.selection import model_identities
from common.utils.enums import Defense, Net

__all__ = ["HEATMAP_COLOURMAP", "corruption_curves", "corruption_figures", "corruption_heatmap"]

HEATMAP_COLOURMAP = "PuOr_r"
"""A diverging ColorBrewer map that colour-blind readers can read: orange for a Dice drop, purple for a gain."""


def _summary(values: Sequence[float]) -> tuple[float, float, int]:
    mean, sd = mean_sd(values)
    return mean, sd if math.isfinite(sd) else 0.0, len(values)


@dataclass(frozen=True)
class _Panel:
    """What both figures draw from: the net's models with corruption rows (defence order), their per-subject
    mean-Dice scores, identities and labels, and the corruptions present (registry order)."""

    models: list[str]
    scores: dict[str, CorruptionScores]
    info: dict[str, tuple[str, str, str]]
    labels: dict[str, str]
    names: list[str]


def _panel(records: Sequence[Record], net: str, source: str) -> _Panel | None:
    models = corruption_models(records, net, source)
    if not models:
        return None
    scores = {m: corruption_scores(records, m, "mean", source) for m in models}
    info = model_identities(records, net)
    names = corruption_order(name for s in scores.values() for name, _ in s.cells)
    return _Panel(models, scores, info, _labels(models, info), names)


def _labels(models: Sequence[str], info: dict[str, tuple[str, str, str]]) -> dict[str, str]:
    unique = len({model_label(m, info) for m in models}) == len(models)
    return {m: model_label(m, info, unique) for m in models}


def corruption_heatmap(records: Sequence[Record], net: str, source: str = "results") -> ReportFigure | None:
    """The heat map of the mean Dice drop per corruption and severity, one panel per model of ``net``.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        source: name of the CSV, for error messages.

    Returns:
        The figure ``corruption_heatmap_<net>``, or ``None`` when the net has no corruption rows.

    Raises:
        RobustsegError: if a subject has several rows in one cell.
    """
    from matplotlib.colors import Normalize

    panel = _panel(records, net, source)
    if panel is None:
        return None
    models, scores, labels, names = panel.models, panel.scores, panel.labels, panel.names
    severities = sorted({s for sc in scores.values() for _, s in sc.cells})
    grids, data, counts = {}, [], []
    for m in models:
        grid = np.full((len(names), len(severities)), np.nan)
        for i, name in enumerate(names):
            for j, severity in enumerate(severities):
                cell = scores[m].cells.get((name, severity), {})
                drops = [scores[m].clean[k] - v for k, v in cell.items()]
                if drops:
                    mean, sd, n = _summary(drops)
                    grid[i, j] = mean
                    counts.append(n)
                    data.append(data_point(labels[m], name, severity, mean, sd, "sd", n))
        grids[m] = grid
    limit = max(0.01, float(np.nanmax([np.nanmax(np.abs(g)) for g in grids.values()])))
    norm = Normalize(-limit, limit)

    columns = min(4, len(models))
    rows = math.ceil(len(models) / columns)
    figure = new_figure(1.1 * len(severities) * columns + 2.6 + 0.8 * columns, 0.36 * len(names) * rows + 1.4)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False, sharey=True)).ravel()
    image = None
    for ax, m in zip(axes, models, strict=False):
        image = ax.imshow(grids[m], cmap=HEATMAP_COLOURMAP, norm=norm, aspect="auto")
        for i in range(len(names)):
            for j in range(len(severities)):
                value = grids[m][i, j]
                if not np.isnan(value):
                    dark = abs(norm(value) - 0.5) > 0.3  # the map's ends are dark: white text there
                    text = f"{value:.2f}".replace("-0.00", "0.00")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8.5, color="white" if dark else "black")
        ax.set_xticks(range(len(severities)), [str(s) for s in severities])
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("severity")
        ax.set_title(labels[m], fontsize=11)
        ax.grid(False)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    figure.colorbar(image, ax=axes[: len(models)].tolist(), label="Dice drop (clean − corrupted)", shrink=0.8)
    n = max(counts) if counts else 0
    caption = (
        f"Mean Dice drop of the {NET_NAMES[net]} models under each MR artifact and severity: per subject, the clean "
        f"minus the corrupted mean Dice over WT, TC and ET, averaged over {n} subjects (sd and n per cell in the "
        "figure data). Orange: Dice lost; purple: Dice gained; one colour scale for all panels "
        f"(± {limit:.2f}). Severities present: {', '.join(map(str, severities))}."
    )
    title = f"Dice drop under MR artifacts ({NET_NAMES[net]})"
    return ReportFigure.draw(file_stem(f"corruption_heatmap_{net}"), title, caption, figure, data=tuple(data))


def corruption_curves(records: Sequence[Record], net: str, source: str = "results") -> ReportFigure | None:
    """Mean Dice vs severity (0 = clean), one small panel per corruption, one line per model of ``net``.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        source: name of the CSV, for error messages.

    Returns:
        The figure ``corruption_curves_<net>``, or ``None`` when the net has no corruption rows.

    Raises:
        RobustsegError: if a subject has several rows in one cell.
    """
    panel = _panel(records, net, source)
    if panel is None:
        return None
    models, scores, info, labels, names = panel.models, panel.scores, panel.info, panel.labels, panel.names
    undefended = [m for m in models if info[m][1] == Defense.NONE]
    reference_model = undefended[0] if len(undefended) == 1 else None  # drawn in black, as in Figs. 5-8
    others = [m for m in models if m != reference_model]
    columns = min(5, len(names))
    rows = math.ceil(len(names) / columns)
    figure = new_figure(2.9 * columns + 0.4, 2.5 * rows + 0.9)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)).ravel()
    data, counts, lows = [], [], []
    for ax, name in zip(axes, names, strict=False):
        for m in models:
            own = scores[m]
            points = [(0, list(own.clean.values()))]
            points += [(s, list(own.cells[(name, s)].values())) for s in own.severities(name)]
            stats = [(x, *_summary(values)) for x, values in points]
            data += [data_point(name, labels[m], x, mean, sd, "sd", n) for x, mean, sd, n in stats]
            counts += [n for *_, n in stats]
            lows.append(min(mean for _, mean, _, _ in stats))
            reference = m == reference_model
            index = others.index(m) if m in others else 0
            colour = OKABE_ITO["black"] if reference else MODEL_COLOURS[index % len(MODEL_COLOURS)]
            marker = "o" if reference else MODEL_MARKERS[index % len(MODEL_MARKERS)]
            ax.plot([x for x, *_ in stats], [mean for _, mean, _, _ in stats], color=colour, marker=marker,
                    markersize=4.5, linewidth=1.6, label=labels[m])  # fmt: skip
        ax.set_title(name, fontsize=10.5)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    severities = sorted({s for sc in scores.values() for _, s in sc.cells})
    axes[0].set_xticks([0, *severities])
    axes[0].set_ylim(max(0.0, math.floor(10 * min(lows)) / 10 - 0.02), 1.0)
    for ax in axes[::columns]:
        ax.set_ylabel("mean Dice")
    for ax in axes[len(names) - columns : len(names)]:  # the lowest panel of each column
        ax.set_xlabel("severity (0 = clean)")
        ax.xaxis.set_tick_params(labelbottom=True)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, legend_labels, loc="outside lower center", ncol=min(len(models), 4), frameon=False)
    n = max(counts) if counts else 0
    caption = (
        f"Mean Dice (WT, TC, ET per subject, mean over {n} subjects) of the {NET_NAMES[net]} models vs the severity "
        f"of each MR artifact; severity 0 is the clean input, then the severities present "
        f"({', '.join(map(str, severities))}). One y axis for all panels; the sample sd per point is in the figure "
        "data." + (f" Black: the undefended model `{reference_model}`." if reference_model else "")
    )
    title = f"Dice vs MR-artifact severity ({NET_NAMES[net]})"
    return ReportFigure.draw(file_stem(f"corruption_curves_{net}"), title, caption, figure, data=tuple(data))


def corruption_figures(records: Sequence[Record], source: str = "results") -> list[ReportFigure]:
    """The heat map and the curves of every net with ``corruption`` rows, in :class:`Net` order.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        source: name of the CSV, for error messages.

    Returns:
        The figures (none without corruption rows).
    """
    figures = []
    for net in Net:
        for build in (corruption_heatmap, corruption_curves):
            drawn = build(records, net, source)
            if drawn is not None:
                figures.append(drawn)
    return figures
