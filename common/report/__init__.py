"""Report: the results CSV schema and loader, tables like the paper's Tables 1-3 (Markdown, CSV), figures like its
Figs. 2-9 (PNG), and the self-contained HTML report (``robustseg report``).

Modules, one concept each: :mod:`~common.report.schema` (the CSV), :mod:`~common.report.options` (what the report
shows), :mod:`~common.report.selection` (which rows a number comes from), :mod:`~common.report.labels` (how things
are named), :mod:`~common.report.table` / :mod:`~common.report.table1` / :mod:`~common.report.defence_tables` /
:mod:`~common.report.tables` (the tables), :mod:`~common.report.figure` / :mod:`~common.report.curves` /
:mod:`~common.report.panels` / :mod:`~common.report.figures` (the figures), :mod:`~common.report.examples` (the
saved example volumes), :mod:`~common.report.html` (the page) and :mod:`~common.report.writing` (all-or-nothing
output). Names are imported on first use (PEP 562): the command line reads :class:`ReportOptions` without loading
numpy, scipy or matplotlib.
"""

from __future__ import annotations

from common._lazy import lazy_exports

_EXPORTS = {
    "curves": [],
    "defence_tables": ["build_defence_tables"],
    "examples": [
        "ExampleEntry",
        "ExampleSubject",
        "ExampleVolumes",
        "ExampleWriter",
        "load_example_volumes",
        "load_examples",
    ],
    "figure": ["LABEL_COLOURS", "OKABE_ITO", "ReportFigure", "SkippedFigure"],
    "figures": ["build_figures"],
    "html": ["PAPER_TABLE1", "SETTINGS_FILES", "is_synthetic", "load_settings", "render_report", "write_report"],
    "labels": [],
    "options": ["ReportOptions"],
    "panels": [],
    "schema": ["COLUMNS", "COLUMN_NAMES", "Column", "DEFENSES", "NETS", "THREATS", "format_record", "load_results"],
    "selection": [],
    "table": ["Table"],
    "table1": ["build_table1"],
    "tables": ["build_tables", "table_files", "write_tables"],
    "writing": [],
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
