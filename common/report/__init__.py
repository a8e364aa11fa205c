"""Report: the results CSV schema and loader, and tables like the paper's Tables 1-3 (Markdown, CSV)."""

from __future__ import annotations

from common.report.schema import COLUMN_NAMES, COLUMNS, DEFENSES, NETS, THREATS, Column, format_record, load_results
from common.report.tables import Table, build_defence_tables, build_table1, build_tables, write_tables

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
    "write_tables",
]
