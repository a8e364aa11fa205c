"""One rendered table (:class:`Table`) and the paper's number formats (``0.561 ± 0.077``, ``6.628e-4``).

Numbers follow the paper (Liu et al. 2021, Tables 1-3): Dice, SSIM and RMSE with 3 decimals, PSNR with 2, p with 4
decimals or, below 1e-3, 4 significant digits in scientific notation. A table keeps its cells as formatted strings
for Markdown and HTML, and its numbers at full precision in long format for CSV.

Example::

    table = Table("table1_3d_m", "Table 1 (3D-UNet, m)", "Dice ...", ["Attack type", "Dice"], [["FGSM", "0.561"]])
    print(table.to_markdown())
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Table", "format_mean_sd", "format_p"]


def format_mean_sd(mean: float, sd: float, decimals: int) -> str:
    """``mean ± sd`` with ``decimals`` decimals; an undefined sd (one subject) shows as ``n/a``."""
    sd_text = f"{sd:.{decimals}f}" if math.isfinite(sd) else "n/a"
    return f"{mean:.{decimals}f} ± {sd_text}"


def format_p(p: float) -> str:
    """A p-value as the paper prints it: ``0.2287``, ``0.0013``, or ``6.628e-4`` below 1e-3."""
    if p == 0:
        return "0"
    if p < 1e-3:
        mantissa, exponent = f"{p:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{p:.4f}"


@dataclass
class Table:
    """One rendered table: what the Markdown and CSV files hold, kept as data so a report can reuse it.

    Attributes:
        name: file stem, e.g. ``table2_3d_white-box``.
        title: e.g. ``Table 2 (3D-UNet, white-box)``.
        caption: one paragraph stating what is shown and the threat model.
        header: column headings of the main table.
        rows: cells of the main table, as formatted strings.
        notes: footnote lines (significance marks, attack configurations).
        extra: further (heading, header, rows) blocks, e.g. Table 1's p-values.
        csv_header: columns of the long-format CSV.
        csv_rows: its rows, numbers at full precision (``None`` for empty).
    """

    name: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    extra: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    csv_header: list[str] = field(default_factory=list)
    csv_rows: list[list[object]] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown: bold title and caption, table, notes, extra blocks."""
        lines = [f"**{self.title}.** {self.caption}", "", *_markdown_grid(self.header, self.rows), ""]
        lines += [f"{note}  " for note in self.notes]
        for heading, header, rows in self.extra:
            lines += ["", heading, "", *_markdown_grid(header, rows)]
        return "\n".join(lines).rstrip() + "\n"

    def to_csv(self) -> str:
        """The long-format CSV text (floats as ``repr``, ``None`` as empty)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.csv_header)
        for row in self.csv_rows:
            writer.writerow(["" if v is None else repr(float(v)) if isinstance(v, float) else v for v in row])
        return buffer.getvalue()


def _markdown_grid(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), line("---" for _ in header), *(line(row) for row in rows)]
