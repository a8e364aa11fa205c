"""Table 1 of Liu et al. 2021 for one undefended model: the clean input vs each white-box attack at one epsilon.

Rows "No attack" and each white-box attack present at ``epsilon`` (final iterate); Dice TC, ET, WT as mean +- sd with
``*`` where the Wilcoxon signed-rank test against "No attack" (paired by subject) is significant after Bonferroni
correction over all Dice comparisons of the table; input PSNR, SSIM, RMSE as mean +- sd; then a table of raw and
corrected p. The caption states the threat model and a note lists the exact attack configurations.

Example::

    from common.report.schema import load_results
    table = build_table1(load_results("results.csv"), "brats_unet3d_baseline", epsilon=0.05)
    print(table.to_markdown())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import RobustsegError
from common.metrics.stats import bonferroni, mean_sd, wilcoxon_p
from common.report.labels import DICE_COLUMNS, NET_NAMES, REGION_NAMES, file_stem, format_eps, steps_text
from common.report.options import ReportOptions
from common.report.schema import Record
from common.report.selection import (
    attack_order,
    by_subject,
    check_paired,
    clean_rows,
    column_values,
    config_key,
    final_attack_rows,
)
from common.report.table import Table, format_mean_sd, format_p
from common.utils.enums import Threat

__all__ = ["TABLE1_CSV_COLUMNS", "TABLE1_REGIONS", "build_table1"]

TABLE1_REGIONS: tuple[str, ...] = ("TC", "ET", "WT")  # the paper's Table 1 column order
TABLE1_CSV_COLUMNS: tuple[str, ...] = (
    "attack", "attack_config", "loss", "steps", "metric", "n", "mean", "sd", "p", "p_bonferroni", "significant"
)  # fmt: skip
"""Columns of Table 1's long-format CSV: one line per attack and metric."""


def build_table1(
    records: Sequence[Record],
    model: str,
    options: ReportOptions | None = None,
    source: str = "results",
    **values: Any,
) -> Table:
    """The paper's Table 1 for one (undefended) model: clean vs each white-box attack at ``epsilon``.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        model: the model to tabulate.
        options: what to show (:class:`~common.report.options.ReportOptions`): its ``epsilon`` (the attacks' L-inf
            radius, the paper's 0.05), ``loss`` (keep only attacks with this loss; ``None`` keeps all, an attack with
            several losses gets a row each) and ``alpha`` (significance level after Bonferroni correction).
        source: name of the CSV, for error messages.
        values: option fields to set instead of (or on top of) ``options``, e.g. ``epsilon=0.1``.

    Returns:
        The table (Dice TC/ET/WT, input PSNR/SSIM/RMSE, and raw/corrected p-values).

    Raises:
        RobustsegError: if the model has no clean rows, an attack's subjects do not pair with the clean ones, or a
            subject has duplicate rows.
    """
    options = ReportOptions.resolve(options, **values)
    epsilon, loss, alpha = options.epsilon, options.loss, options.alpha
    model_clean_rows = clean_rows(records, model)
    if not model_clean_rows:
        raise RobustsegError(
            f"{source}: model {model} has no clean rows (threat 'clean') to compare the attacks against."
        )
    clean = by_subject(model_clean_rows, f"model {model} clean", source)
    subjects = sorted(clean)
    net = str(model_clean_rows[0]["net"])

    groups: dict[tuple[str, str, int, str], list[Record]] = {}
    for row in final_attack_rows(records, model, Threat.WHITE_BOX, epsilon):
        if loss is None or row["loss"] == loss:
            groups.setdefault(config_key(row), []).append(row)
    keys = sorted(groups, key=lambda k: attack_order(k[0]))  # stable: first appearance within an attack name
    names = [k[0] for k in keys]
    # Label by attack name; when a name has several configurations, add loss and steps, and if that is still
    # ambiguous, use the full attack_config.
    labels = [k[0] if names.count(k[0]) == 1 else f"{k[0]} ({k[1]}, {steps_text([k[2]])})" for k in keys]
    labels = [(k[3] or label) if labels.count(label) > 1 else label for k, label in zip(keys, labels)]

    cells = []
    for key, label in zip(keys, labels):
        what = f"model {model} {label} at epsilon {format_eps(epsilon)}"
        cell = by_subject(groups[key], what, source)
        check_paired(cell, subjects, what, "its clean rows", source)
        cells.append(cell)

    def dice(cell: dict[str, Record], region: str) -> np.ndarray:
        return column_values(cell, subjects, DICE_COLUMNS[region])

    raw = [wilcoxon_p(dice(clean, region), dice(cell, region)) for cell in cells for region in TABLE1_REGIONS]
    corrected = bonferroni(raw)
    m = len(raw)

    header = [
        "Attack type",
        *(f"Dice — {REGION_NAMES[r]}" for r in TABLE1_REGIONS),
        "Input PSNR (dB)",
        "Input SSIM",
        "Input RMSE",
    ]
    rows = [["No attack"]]
    csv_rows: list[list[object]] = []
    for region in TABLE1_REGIONS:
        mean, sd = mean_sd(dice(clean, region))
        rows[0].append(format_mean_sd(mean, sd, 3))
        csv_rows.append(["No attack", "", "", 0, DICE_COLUMNS[region], len(subjects), mean, sd, None, None, None])
    rows[0] += ["-", "-", "-"]

    p_rows = []
    for i, (key, label, cell) in enumerate(zip(keys, labels, cells)):
        row = [label]
        p_row = [label]
        for j, region in enumerate(TABLE1_REGIONS):
            k = i * len(TABLE1_REGIONS) + j
            mean, sd = mean_sd(dice(cell, region))
            significant = bool(corrected[k] <= alpha)
            row.append(format_mean_sd(mean, sd, 3) + ("*" if significant else ""))
            p_row += [format_p(raw[k]), format_p(float(corrected[k]))]
            csv_rows.append(
                [label, key[3], key[1], key[2], DICE_COLUMNS[region], len(subjects), mean, sd, raw[k]]
                + [float(corrected[k]), significant]
            )
        for column, decimals in (("psnr", 2), ("ssim", 3), ("rmse", 3)):
            values = [cell[s][column] for s in subjects]
            if any(v is None or math.isnan(v) for v in values):  # not measured (e.g. a transfer run)
                row.append("n/a")
                csv_rows.append([label, key[3], key[1], key[2], column, len(subjects), None, None, None, None, None])
                continue
            mean, sd = mean_sd(values)
            row.append(format_mean_sd(mean, sd, decimals))
            csv_rows.append([label, key[3], key[1], key[2], column, len(subjects), mean, sd, None, None, None])
        rows.append(row)
        p_rows.append(p_row)

    # a label that already names its loss and steps (an attack name used with several) is not repeated
    attacks_text = "; ".join(
        f"{label} (loss {key[1] or 'n/a'}, {steps_text([key[2]])})" if label == key[0] else label
        for key, label in zip(keys, labels)
    )
    caption = (
        f"Segmentation results of `{model}` ({NET_NAMES[net]}) for white-box attacks at ε = {format_eps(epsilon)} "
        f"(L∞; final iterate), n = {len(subjects)} subjects; attacks: {attacks_text or 'none found'}. Dice of the "
        "output segmentation and PSNR, SSIM, RMSE of the perturbed input images vs the clean ones, as mean ± sd "
        "(sample sd)."
    )
    notes = [
        f'\\* p ≤ {alpha:g} vs "No attack" (two-sided Wilcoxon signed-rank test paired by subject, '
        f"Bonferroni-corrected over the table's m = {m} Dice comparisons)."
    ]
    notes += [f"{label}: `{key[3]}`" for key, label in zip(keys, labels) if key[3]]
    p_header = ["Attack type"]
    for region in TABLE1_REGIONS:
        p_header += [f"p {region}", f"p {region} (Bonferroni)"]
    extra = [(f'p-values vs "No attack" (raw and Bonferroni-corrected, m = {m}):', p_header, p_rows)] if p_rows else []
    name, title = file_stem(f"table1_{net}_{model}"), f"Table 1 ({NET_NAMES[net]}, {model})"
    return Table(name, title, caption, header, rows, notes, extra, list(TABLE1_CSV_COLUMNS), csv_rows)
