"""Every table of the report, like the paper's Tables 1-3 (Markdown to paste, CSV to compute with), from the CSV only.

* **Headline** (:mod:`common.report.headline`), one per net with ``worst-case`` rows: clean Dice, the paper's FGSM
  and the worst case over every attack at each epsilon, its area, and each defence against the baseline.
* **MR artifacts** (:mod:`common.report.corruption_tables`), per net with ``corruption`` rows: Dice per model,
  corruption and severity, and the corruptions' PSNR/SSIM calibration; then ROOD-MRI's severity-weighted overall
  and degradation scores per model (:mod:`common.report.rood`, Boone et al. 2023) with a paired Wilcoxon test of
  each model's per-subject overall score against the undefended model's.
* **Sanity checks** (:mod:`common.report.sanity`), one per net, last: pass, fail or not run per model and check.
* **Table 1** (:mod:`common.report.table1`), one per undefended model: the clean input vs each white-box attack at
  one epsilon, with Wilcoxon tests against "No attack" and the input PSNR, SSIM, RMSE.
* **Table 2** (3D-UNet) and **Table 3** (2D-UNet) (:mod:`common.report.defence_tables`): each defence's Dice vs the
  undefended model's at each epsilon, for the white-box attack, the adaptive attack and each transfer source, with a
  dagger where a white-box gain vanishes under the adaptive attack.

Every table states its threat model (threat, attack, loss, epsilon, steps, number of subjects) in its caption and
lists the exact attack configurations (``attack_config``) in a note, as RobustBench stores its threat models.
Numbers follow the paper (:mod:`common.report.table`). Statistics conventions (sample sd, ``zero_method``,
Bonferroni) are those of :mod:`common.metrics.stats`. The CSV beside each Markdown file holds the same numbers at
full precision in long format (one line per cell).

Nothing is written unless every table could be built: all checks run first, then the files are written all or
nothing (:func:`common.report.writing.write_files`).

Example::

    from common.report.schema import load_results
    from common.report.tables import build_tables
    tables = build_tables(load_results("results.csv"), source="results.csv")
    print(tables[0].to_markdown())
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from common.errors import RobustsegError
from common.report.certification import build_certification_table
from common.report.corruption_tables import build_corruption_tables
from common.report.defence_tables import build_defence_tables
from common.report.headline import build_headline
from common.report.options import ReportOptions
from common.report.rood import build_rood_table
from common.report.sanity import build_sanity
from common.report.schema import Record, load_results
from common.report.table import Table
from common.report.table1 import build_table1
from common.report.writing import write_files
from common.utils.enums import Defense, Net

__all__ = ["build_tables", "table_files", "write_tables"]


def build_tables(
    records: Sequence[Record], options: ReportOptions | None = None, source: str = "results", **values: object
) -> list[Table]:
    """Every table of the report: the headline per net, Table 1 per undefended model and net, Tables 2-3, the MR
    artifacts (Dice, calibration, ROOD-MRI scores) per net, sanity.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        options: Table 1's epsilon, the epsilons and attack of Tables 2-3, the loss, the reference model(s) and the
            significance level (see :class:`~common.report.options.ReportOptions`); ``None``: the defaults.
        source: name of the CSV, for error messages.
        values: option fields given as keywords instead (``epsilon=0.1``), over ``options``.

    Returns:
        The tables, in report order.

    Raises:
        RobustsegError: for invalid options, a reference model not in the CSV, a model with several identities, or
            any problem listed in :func:`~common.report.table1.build_table1` and
            :func:`~common.report.defence_tables.build_defence_tables`.
    """
    options = ReportOptions.resolve(options, **values)
    baselines = options.baselines
    known = {str(r["model"]) for r in records}
    unknown = [b for b in baselines if b not in known]
    if unknown:
        raise RobustsegError(f"baseline: model(s) {unknown} not in {source}; expected some of {sorted(known)}.")
    identity: dict[str, tuple] = {}
    for r in records:
        key = (r["net"], r["defense"], r["defense_param"] or "")
        if identity.setdefault(str(r["model"]), key) != key:
            raise RobustsegError(
                f"{source}: model {r['model']} appears as {identity[str(r['model'])]} and as {key} "
                "(net, defense, defense_param); expected one identity per model."
            )
    tables = [t for net in Net if (t := build_headline(records, net, options, source)) is not None]
    for net in Net:
        undefended = sorted({str(r["model"]) for r in records if r["net"] == net and r["defense"] == Defense.NONE})
        tables += [build_table1(records, m, options, source) for m in undefended]
    for net in Net:
        tables += build_defence_tables(records, net, options, source)
    for net in Net:
        tables += build_corruption_tables(records, net)
        if (rood := build_rood_table(records, net, options, source)) is not None:
            tables.append(rood)
    tables += [t for net in Net if (t := build_certification_table(records, net, source)) is not None]
    tables += [t for net in Net if (t := build_sanity(records, net)) is not None]
    return tables


def table_files(tables: Sequence[Table]) -> dict[str, str]:
    """The files of :func:`write_tables`, name -> text: ``tables.md`` first, then Markdown and CSV per table.

    Args:
        tables: tables from :func:`build_tables`.

    Returns:
        An ordered mapping from file name to its text.
    """
    files = {"tables.md": "\n".join(t.to_markdown() for t in tables)}
    for table in tables:
        files[f"{table.name}.md"] = table.to_markdown()
        files[f"{table.name}.csv"] = table.to_csv()
    return files


def write_tables(
    csv: str | os.PathLike, out: str | os.PathLike, options: ReportOptions | None = None, **values: object
) -> list[str]:
    """Write every table as Markdown and CSV under ``out``, plus ``tables.md`` with all of them in order.

    ``robustseg stats results.csv --out DIR`` calls this. All tables are built (and every check run) before
    anything is written, and the files are written all or nothing, so a failure leaves no partial output.

    Args:
        csv: the results CSV (see :mod:`common.report.schema`).
        out: output folder (created).
        options: what to tabulate (see :class:`~common.report.options.ReportOptions`); ``None``: the paper's
            settings (Table 1 at eps 0.05; Tables 2-3 with FGSM at eps 0, 0.05, 0.1; alpha 0.05).
        values: option fields given as keywords instead (``epsilon=0.1, epsilons=(0, 0.1)``), over ``options``.

    Returns:
        The paths written, ``tables.md`` first.

    Raises:
        RobustsegError: for invalid options; if the CSV is missing, lacks columns, has no rows or invalid ones; a
            table cannot be built (no clean rows to compare against, unpaired subjects, ...); or ``out`` cannot be
            created or written.
    """
    options = ReportOptions.resolve(options, **values)
    source = os.fspath(csv)
    tables = build_tables(load_results(source), options, source)
    return write_files(out, table_files(tables), "tables")
