"""Every figure of the report, like the paper's Figs. 2-9, from the robustness CSV and the saved example volumes only.

:func:`build_figures` draws, in the paper's order, the curves of :mod:`common.report.curves` (Dice and input PSNR vs
attack iteration, Figs. 3-4; Dice vs epsilon per defence family, Figs. 5-8; the zero-gradient fraction), the
convergence of the worst case (:mod:`common.report.convergence`), the MR-artifact figures of
:mod:`common.report.corruption_figures` (per net with ``corruption`` rows: a heat map of the Dice drop per corruption
and severity, one panel per model, and Dice-vs-severity curves, one panel per corruption), the slice panels of
:mod:`common.report.panels` (Figs. 2 and 9) and the MR-artifact example panel of :mod:`common.report.corruption_panels`
(one row per corruption at the example severity: corrupted input, its change, each model's prediction, the ground
truth). Every figure is drawn only when its data exist; what was not drawn is
returned with the reason (the MR-artifact figures are simply absent from a CSV without ``corruption`` rows). The
figure type and the house style are in :mod:`common.report.figure`.

Example::

    from common.report import build_figures, load_examples, load_results
    figures, skipped = build_figures(load_results("results.csv"), load_examples("examples"))
    open(figures[0].name + ".png", "wb").write(figures[0].png)
"""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import RobustsegError
from common.report.certification import certification_figures
from common.report.convergence import convergence_figures
from common.report.corruption_figures import corruption_figures
from common.report.corruption_panels import corruption_example_figures
from common.report.curves import epsilon_figures, iteration_figures, zero_gradient_figure
from common.report.examples import ExampleSubject
from common.report.figure import (
    DATA_COLUMNS,
    FIGURE_DPI,
    LABEL_COLOURS,
    OKABE_ITO,
    STYLE,
    ReportFigure,
    SkippedFigure,
)
from common.report.options import ReportOptions
from common.report.panels import slice_figures
from common.report.schema import Record
from common.report.selection import model_identities
from common.utils.enums import Defense, Net, Threat

__all__ = ["ReportFigure", "SkippedFigure", "build_figures", "DATA_COLUMNS", "FIGURE_DPI", "OKABE_ITO", "LABEL_COLOURS"]

MAX_EXAMPLE_SUBJECTS = 2
"""Slice panels are drawn for this many example subjects by default."""


def build_figures(
    records: Sequence[Record],
    examples: Sequence[ExampleSubject] = (),
    options: ReportOptions | None = None,
    max_example_subjects: int = MAX_EXAMPLE_SUBJECTS,
    source: str = "results",
    **values: object,
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """Every figure whose data exist, in the paper's order (Figs. 2-9, then extras), and the ones skipped with why.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        examples: checked example indices from :func:`common.report.examples.load_examples`.
        options: the report options (see :class:`~common.report.options.ReportOptions`): ``attack`` and ``loss``
            of the Dice-vs-epsilon figures (``None`` loss: the only one, else ``soft_dice``), the ``epsilon``
            preferred for the slice panels, the reference model(s) ``baseline`` (``None``: every undefended model
            of the net); ``None``: the defaults.
        max_example_subjects: draw slice panels for at most this many example subjects (sorted).
        source: name of the CSV, for error messages.
        values: option fields given as keywords instead (``attack="PGD"``), over ``options``.

    Returns:
        ``(figures, skipped)``.

    Raises:
        RobustsegError: if a plotted cell (corruption cells included) has duplicate subject rows, several losses
            make the choice ambiguous, or an example volume cannot be read.
    """
    from matplotlib import rc_context

    options = ReportOptions.resolve(options, **values)
    if max_example_subjects < 0:
        raise RobustsegError(f"max_example_subjects must be >= 0, got {max_example_subjects}.")
    info = model_identities(records)
    figures: list[ReportFigure] = []
    skipped: list[SkippedFigure] = []
    with rc_context(STYLE):
        nets = [n for n in Net if any(i[0] == n for i in info.values())]
        undefended = {n: sorted(m for m, (net, d, _) in info.items() if net == n and d == Defense.NONE) for n in nets}
        for net in nets:
            for model in undefended[net]:
                drawn, missed = iteration_figures(records, model, source)
                figures += drawn
                skipped += missed
        for net in nets:
            references = [m for m in undefended[net] if m in options.baselines] or undefended[net]
            drawn, missed = epsilon_figures(records, net, references, options.attack, options.loss, source)
            figures += drawn
            skipped += missed
        zero = zero_gradient_figure(records)
        if zero is None:
            skipped.append(
                SkippedFigure("Zero-gradient fraction", "no zero_grad_fraction values in white-box/adaptive rows")
            )
        else:
            figures.append(zero)
        convergence = convergence_figures(records)
        if convergence:
            figures += convergence
        elif any(r["threat"] == Threat.WORST_CASE for r in records):
            skipped.append(SkippedFigure("Convergence of the worst case", "no iterative attack among the members"))
        figures += corruption_figures(records, source)
        figures += certification_figures(records, source)
        drawn, missed = slice_figures(records, examples, options.attack, options.epsilon, max_example_subjects)
        figures += drawn
        skipped += missed
        drawn, missed = corruption_example_figures(records, examples, options.baselines)
        figures += drawn
        skipped += missed
    # The paper's order (Figs. 2-9), then the figures it does not have; the sort is stable within a number.
    figures.sort(key=lambda f: int(f.paper_figure.split()[-1]) if f.paper_figure else 100)
    return figures, skipped
