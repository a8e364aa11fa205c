"""A report figure (:class:`ReportFigure`), a figure not drawn (:class:`SkippedFigure`), and how every figure looks.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (the Agg renderer, no pyplot state) inside
``matplotlib.rc_context(STYLE)``: print-sized fonts, the Okabe-Ito palette that colour-blind readers can tell apart,
DejaVu Sans (ships with matplotlib, so the same CSV gives the same PNG bytes everywhere). A figure keeps the numbers
it plots (:data:`DATA_COLUMNS`) so they can be re-plotted or checked against the CSV.

Example::

    figure = new_figure(6, 4)
    figure.subplots().plot([0, 0.05, 0.1], [0.8, 0.6, 0.4])
    drawn = ReportFigure.draw("dice", "Dice vs ε", "Mean Dice ...", figure)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from common.utils.enums import Threat

__all__ = [
    "DATA_COLUMNS",
    "FIGURE_DPI",
    "LABEL_COLOURS",
    "MODEL_COLOURS",
    "MODEL_MARKERS",
    "OKABE_ITO",
    "REGION_STYLES",
    "STYLE",
    "THREAT_COLOURS",
    "ReportFigure",
    "SkippedFigure",
    "data_point",
    "new_figure",
]

OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
"""Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008)."""

# The BraTS figure convention (ITK-SNAP: 1 red, 2 green, 4 yellow) in Okabe-Ito shades, distinguishable with
# deuteranopia and protanopia.
LABEL_COLOURS: dict[int, tuple[str, str]] = {
    1: ("necrotic / non-enhancing core (1)", OKABE_ITO["vermillion"]),
    2: ("oedema (2)", OKABE_ITO["bluish green"]),
    4: ("enhancing tumour (4)", OKABE_ITO["yellow"]),
}
REGION_STYLES: dict[str, tuple[str, str]] = {
    "WT": (OKABE_ITO["blue"], "o"),
    "TC": (OKABE_ITO["vermillion"], "s"),
    "ET": (OKABE_ITO["bluish green"], "^"),
}
MODEL_COLOURS: tuple[str, ...] = tuple(OKABE_ITO[c] for c in ("orange", "sky blue", "bluish green", "vermillion"))
MODEL_COLOURS += tuple(OKABE_ITO[c] for c in ("reddish purple", "blue", "yellow"))
MODEL_MARKERS: tuple[str, ...] = ("s", "D", "^", "v", "P", "X", "<", ">")
THREAT_COLOURS: dict[str, str] = {Threat.WHITE_BOX: OKABE_ITO["blue"], Threat.ADAPTIVE: OKABE_ITO["orange"]}
STYLE: dict[str, object] = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12.5,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "lines.linewidth": 2.0,
    "lines.markersize": 6.5,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.family": "DejaVu Sans",  # ships with matplotlib: identical output everywhere, has ε and ±
}
"""matplotlib rc parameters of every report figure."""
FIGURE_DPI = 150
DATA_COLUMNS: tuple[str, ...] = ("panel", "series", "x", "mean", "error", "error_kind", "n")
"""Columns of a figure's data: panel, curve, x, mean, error-bar half-width and its kind (``sd`` or ``ci95``), n."""


def new_figure(width: float, height: float):
    """A matplotlib figure of ``width`` x ``height`` inches with the constrained layout (no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # No software/date metadata: the same CSV gives the same bytes.
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None}, facecolor="white")
    return buffer.getvalue()


def data_point(panel: str, series: str, x: object, mean: float, error: float, kind: str, n: int) -> dict:
    """One plotted point as a row of :data:`DATA_COLUMNS`."""
    return {"panel": panel, "series": series, "x": x, "mean": mean, "error": error, "error_kind": kind, "n": n}


@dataclass(frozen=True)
class ReportFigure:
    """One drawn figure.

    Attributes:
        name: file stem, e.g. ``fig3_dice_vs_iterations_3d_brats_unet3d_baseline``.
        title: one line, e.g. ``Dice vs attack iteration (3D-UNet, brats_unet3d_baseline)``.
        caption: what is shown, the threat model, n, and what error bars and bands mean.
        png: the PNG image.
        paper_figure: the paper's figure it corresponds to (``"Fig. 3"``), or ``""``.
        data: the plotted numbers, one dict per point with keys :data:`DATA_COLUMNS` (empty for slice panels).
    """

    name: str
    title: str
    caption: str
    png: bytes
    paper_figure: str = ""
    data: tuple[dict, ...] = ()

    @classmethod
    def draw(
        cls, name: str, title: str, caption: str, figure, paper_figure: str = "", data: tuple[dict, ...] = ()
    ) -> ReportFigure:
        """The report figure of a drawn matplotlib ``figure``, encoded as PNG at :data:`FIGURE_DPI`."""
        return cls(name, title, caption, _png(figure), paper_figure, data)

    def to_csv(self) -> str:
        """The plotted numbers as CSV (:data:`DATA_COLUMNS`; floats at full precision), for re-plotting."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, DATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in self.data)
        return buffer.getvalue()


@dataclass(frozen=True)
class SkippedFigure:
    """A figure that was not drawn and why (shown in the report)."""

    title: str
    reason: str
