"""Report: the results CSV schema and loader, tables like the paper's Tables 1-3 (Markdown, CSV), figures like its
Figs. 2-9 (PNG), and the self-contained HTML report (``robustseg report``)."""

from __future__ import annotations

from common.report.examples import ExampleEntry, ExampleSubject, ExampleVolumes, load_example_volumes, load_examples
from common.report.figures import LABEL_COLOURS, OKABE_ITO, ReportFigure, SkippedFigure, build_figures
from common.report.html import PAPER_TABLE1, SETTINGS_FILES, is_synthetic, load_settings, render_report, write_report
from common.report.schema import COLUMN_NAMES, COLUMNS, DEFENSES, NETS, THREATS, Column, format_record, load_results
from common.report.tables import (
    Table,
    build_defence_tables,
    build_table1,
    build_tables,
    table_files,
    write_tables,
)

__all__ = [
    "Column",
    "COLUMNS",
    "COLUMN_NAMES",
    "NETS",
    "DEFENSES",
    "THREATS",
    "format_record",
    "load_results",
    "Table",
    "build_table1",
    "build_defence_tables",
    "build_tables",
    "table_files",
    "write_tables",
    "ExampleEntry",
    "ExampleSubject",
    "ExampleVolumes",
    "load_examples",
    "load_example_volumes",
    "ReportFigure",
    "SkippedFigure",
    "build_figures",
    "OKABE_ITO",
    "LABEL_COLOURS",
    "PAPER_TABLE1",
    "SETTINGS_FILES",
    "is_synthetic",
    "load_settings",
    "render_report",
    "write_report",
]
