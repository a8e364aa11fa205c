"""Tables like the paper's Tables 1-3 (Markdown to paste, CSV to compute with), from the robustness CSV only.

* **Table 1** (Liu et al. 2021, Table 1), one per undefended model (``defense == none``): rows "No attack" and each
  white-box attack present at ``epsilon`` (final iterate); Dice TC, ET, WT as mean +- sd with ``*`` where the
  Wilcoxon signed-rank test against "No attack" (paired by subject) is significant after Bonferroni correction over
  all Dice comparisons of the table; input PSNR, SSIM, RMSE as mean +- sd; then a table of raw and corrected p.
* **Table 2** (3D-UNet) and **Table 3** (2D-UNet), as the paper's: for each region (WT, TC, ET) and each model
  ("No defence" first, then distillation by T, adversarial training by eps, noise augmentation by radius), Dice
  mean +- sd under ``attack`` at each of ``epsilons`` (0 = the clean rows) and the uncorrected p of the paired
  Wilcoxon test of the model's Dice vs the undefended model's on the same subjects at the same epsilon, with ``*``
  where significant after Bonferroni correction over the table's comparisons. The same table is added for the
  ``adaptive`` threat and for each ``transfer`` source when such rows exist. A defence whose gain over the
  undefended model is significant under the white-box attack but vanishes under the adaptive attack (not
  significant there, or less than half the white-box gain) is marked with a dagger in both tables: the white-box
  number reflects gradient masking, not robustness.

Every table states its threat model (threat, attack, loss, epsilon, steps, number of subjects) in its caption and
lists the exact attack configurations (``attack_config``) in a note, as RobustBench stores its threat models.
Numbers follow the paper: Dice, SSIM and RMSE with 3 decimals, PSNR with 2, p with 4 decimals or, below 1e-3, 4
significant digits in scientific notation (``6.628e-4``). Statistics conventions (sample sd, ``zero_method``,
Bonferroni) are those of :mod:`common.metrics.stats`. The CSV beside each Markdown file holds the same numbers at
full precision in long format (one line per cell).

Nothing is written unless every table could be built: all checks run first, then the files are written to
temporary names and renamed.

Example::

    from common.report.schema import load_results
    from common.report.tables import build_tables
    tables = build_tables(load_results("results.csv"), source="results.csv")
    print(tables[0].to_markdown())
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.errors import RobustsegError
from common.metrics.stats import bonferroni, mean_sd, wilcoxon_p
from common.report.schema import DEFENSES, Record, load_results

__all__ = ["Table", "build_table1", "build_defence_tables", "build_tables", "table_files", "write_tables"]

REGION_NAMES: dict[str, str] = {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}
DICE_COLUMNS: dict[str, str] = {"WT": "dice_wt", "TC": "dice_tc", "ET": "dice_et"}
TABLE1_REGIONS: tuple[str, ...] = ("TC", "ET", "WT")  # the paper's Table 1 column order
DEFENCE_TABLE_REGIONS: tuple[str, ...] = ("WT", "TC", "ET")  # the paper's Tables 2-3 row-group order
KNOWN_ATTACK_ORDER: tuple[str, ...] = ("FGSM", "i-FGSM", "ti-FGSM", "PGD")
DEFENCE_NAMES: dict[str, str] = {
    "none": "No defence",
    "distillation": "Distillation",
    "adversarial_training": "Adversarial training",
    "noise_augmentation": "Noise augmentation",
}
NET_NAMES: dict[str, str] = {"3d": "3D-UNet", "2d": "2D-UNet"}
NET_TABLE_NUMBERS: dict[str, int] = {"3d": 2, "2d": 3}
DAGGER = "†"
DAGGER_NOTE = (
    f"{DAGGER} gain over the undefended model is significant under the white-box attack but vanishes under the "
    "adaptive attack (not significant, or less than half the white-box gain): gradient masking, not robustness."
)


# ----------------------------------------------------------------------------------------------------------- format
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


def _format_eps(eps: float) -> str:
    return f"{eps:g}"


# ------------------------------------------------------------------------------------------------------------ table
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


# -------------------------------------------------------------------------------------------------------- selection
def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _by_subject(rows: Sequence[Record], what: str, source: str) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for row in rows:
        subject = str(row["subject"])
        if subject in out:
            raise RobustsegError(
                f"{source}: subject {subject} has several rows for {what}; expected one row per subject "
                "(a resumed run appended duplicates?)."
            )
        out[subject] = row
    return out


def _check_paired(cell: dict[str, Record], subjects: Sequence[str], what: str, reference: str, source: str) -> None:
    if set(cell) != set(subjects):
        missing = sorted(set(subjects) - set(cell))
        extra = sorted(set(cell) - set(subjects))
        raise RobustsegError(
            f"{source}: subjects of {what} do not pair with {reference}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, extra {extra[:5]}{'...' if len(extra) > 5 else ''}; "
            "expected the same subjects."
        )


def _values(cell: dict[str, Record], subjects: Sequence[str], column: str) -> np.ndarray:
    return np.array([cell[s][column] for s in subjects], dtype=np.float64)


def _final_attack_rows(
    records: Sequence[Record], model: str, threat: str, epsilon: float, attack: str | None = None
) -> list[Record]:
    return [
        r
        for r in records
        if r["model"] == model
        and r["threat"] == threat
        and (attack is None or r["attack"] == attack)
        and r["iteration"] == r["steps"]
        and _close(float(r["epsilon"]), epsilon)
    ]


def _config_key(row: Record) -> tuple[str, str, int, str]:
    return (str(row["attack"]), str(row["loss"] or ""), int(row["steps"]), str(row["attack_config"] or ""))


def _attack_order(name: str) -> int:
    return KNOWN_ATTACK_ORDER.index(name) if name in KNOWN_ATTACK_ORDER else len(KNOWN_ATTACK_ORDER)


def _steps_text(steps: Iterable[int]) -> str:
    values = sorted(set(steps))
    return "/".join(str(s) for s in values) + (" step" if values == [1] else " steps")


# ---------------------------------------------------------------------------------------------------------- table 1
def build_table1(
    records: Sequence[Record],
    model: str,
    epsilon: float = 0.05,
    loss: str | None = None,
    alpha: float = 0.05,
    source: str = "results",
) -> Table:
    """The paper's Table 1 for one (undefended) model: clean vs each white-box attack at ``epsilon``.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        model: the model to tabulate.
        epsilon: the attacks' L-inf radius (the paper's 0.05).
        loss: keep only attacks with this loss; ``None`` keeps all (an attack with several losses gets a row each).
        alpha: significance level after Bonferroni correction.
        source: name of the CSV, for error messages.

    Returns:
        The table (Dice TC/ET/WT, input PSNR/SSIM/RMSE, and raw/corrected p-values).

    Raises:
        RobustsegError: if the model has no clean rows, an attack's subjects do not pair with the clean ones, or a
            subject has duplicate rows.
    """
    clean_rows = [r for r in records if r["model"] == model and r["threat"] == "clean"]
    if not clean_rows:
        raise RobustsegError(
            f"{source}: model {model} has no clean rows (threat 'clean') to compare the attacks against."
        )
    clean = _by_subject(clean_rows, f"model {model} clean", source)
    subjects = sorted(clean)
    net = str(clean_rows[0]["net"])

    groups: dict[tuple[str, str, int, str], list[Record]] = {}
    for row in _final_attack_rows(records, model, "white-box", epsilon):
        if loss is None or row["loss"] == loss:
            groups.setdefault(_config_key(row), []).append(row)
    keys = sorted(groups, key=lambda k: _attack_order(k[0]))  # stable: first appearance within an attack name
    names = [k[0] for k in keys]
    # Label by attack name; when a name has several configurations, add loss and steps, and if that is still
    # ambiguous, use the full attack_config.
    labels = [k[0] if names.count(k[0]) == 1 else f"{k[0]} ({k[1]}, {_steps_text([k[2]])})" for k in keys]
    labels = [(k[3] or label) if labels.count(label) > 1 else label for k, label in zip(keys, labels)]

    cells = []
    for key, label in zip(keys, labels):
        cell = _by_subject(groups[key], f"model {model} {label} at epsilon {_format_eps(epsilon)}", source)
        _check_paired(
            cell, subjects, f"model {model} {label} at epsilon {_format_eps(epsilon)}", "its clean rows", source
        )
        cells.append(cell)

    raw = [
        wilcoxon_p(_values(clean, subjects, DICE_COLUMNS[region]), _values(cell, subjects, DICE_COLUMNS[region]))
        for cell in cells
        for region in TABLE1_REGIONS
    ]
    corrected = bonferroni(raw)
    m = len(raw)

    header = [
        "Attack type",
        *(f"Dice — {REGION_NAMES[r]}" for r in TABLE1_REGIONS),
        "Input PSNR (dB)",
        "Input SSIM",
        "Input RMSE",
    ]
    csv_header = ["attack", "attack_config", "loss", "steps", "metric", "n", "mean", "sd", "p", "p_bonferroni"] + [
        "significant"
    ]
    rows = [["No attack"]]
    csv_rows: list[list[object]] = []
    for region in TABLE1_REGIONS:
        mean, sd = mean_sd(_values(clean, subjects, DICE_COLUMNS[region]))
        rows[0].append(format_mean_sd(mean, sd, 3))
        csv_rows.append(["No attack", "", "", 0, DICE_COLUMNS[region], len(subjects), mean, sd, None, None, None])
    rows[0] += ["-", "-", "-"]

    p_rows = []
    for i, (key, label, cell) in enumerate(zip(keys, labels, cells)):
        row = [label]
        p_row = [label]
        for j, region in enumerate(TABLE1_REGIONS):
            k = i * len(TABLE1_REGIONS) + j
            mean, sd = mean_sd(_values(cell, subjects, DICE_COLUMNS[region]))
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

    attacks_text = "; ".join(
        f"{label} (loss {key[1] or 'n/a'}, {_steps_text([key[2]])})" for key, label in zip(keys, labels)
    )
    caption = (
        f"Segmentation results of `{model}` ({NET_NAMES[net]}) for white-box attacks at ε = {_format_eps(epsilon)} "
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
    return Table(
        name=_file_stem(f"table1_{net}_{model}"),
        title=f"Table 1 ({NET_NAMES[net]}, {model})",
        caption=caption,
        header=header,
        rows=rows,
        notes=notes,
        extra=extra,
        csv_header=csv_header,
        csv_rows=csv_rows,
    )


# ------------------------------------------------------------------------------------------------------ tables 2, 3
@dataclass
class _Entry:
    mean: float
    sd: float
    n: int
    p: float | None = None
    p_corrected: float | None = None
    significant: bool = False


@dataclass
class _DefenceData:
    """The numbers of one defence table before rendering (so daggers can compare two tables)."""

    net: str
    threat: str
    transfer_source: str | None
    attack: str
    loss: str
    epsilons: tuple[float, ...]
    baseline: str
    models: list[str]
    labels: dict[str, str]
    params: dict[str, tuple[str, str]]
    n_subjects: int
    entries: dict[tuple[str, str, int], _Entry]
    configs: dict[int, list[str]]
    steps: set[int]
    m: int
    baseline_fallback: bool


def _param_number(param: str) -> float:
    match = re.search(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", param)
    return float(match.group()) if match else math.inf


def _defence_sort_key(defense: str, param: str, model: str) -> tuple:
    return (DEFENSES.index(defense), _param_number(param), param, model)


def _defence_label(defense: str, param: str) -> str:
    name = DEFENCE_NAMES[defense]
    return f"{name} ({param})" if param and defense != "none" else name


def _model_info(records: Sequence[Record], net: str) -> dict[str, tuple[str, str]]:
    info: dict[str, tuple[str, str]] = {}
    for r in records:
        if r["net"] == net:
            info.setdefault(str(r["model"]), (str(r["defense"]), str(r["defense_param"] or "")))
    return info


def _resolve_baseline(info: dict[str, tuple[str, str]], net: str, baseline: Sequence[str], source: str) -> str:
    chosen = [b for b in baseline if b in info]
    if len(chosen) == 1:
        return chosen[0]
    if len(chosen) > 1:
        raise RobustsegError(f"baseline: several models of net {net} given ({chosen}); expected one per net.")
    undefended = sorted(m for m, (defense, _) in info.items() if defense == "none")
    if not undefended:
        raise RobustsegError(
            f"{source}: net {net} has no undefended model (defense 'none') to compare the defences against."
        )
    if len(undefended) > 1:
        raise RobustsegError(
            f"{source}: net {net} has several undefended models {undefended}; pass baseline=<model> to choose one."
        )
    return undefended[0]


def _choose_loss(rows: Sequence[Record], loss: str | None, what: str, source: str) -> str:
    """The attack loss of a defence table ("" for rows without a loss name)."""
    if loss is not None:
        return loss
    losses = sorted({str(r["loss"] or "") for r in rows})
    if len(losses) <= 1:
        return losses[0] if losses else ""
    if "soft_dice" in losses:  # the paper's attack loss
        return "soft_dice"
    raise RobustsegError(f"{source}: {what} uses several losses {losses}; pass loss=<name> to choose one.")


def _defence_data(
    records: Sequence[Record],
    net: str,
    threat: str,
    attack: str,
    epsilons: tuple[float, ...],
    baseline: str,
    loss: str | None,
    alpha: float,
    source: str,
    transfer_source: str | None = None,
) -> _DefenceData | None:
    info = _model_info(records, net)

    def attack_rows(model: str, eps: float, row_threat: str) -> list[Record]:
        rows = _final_attack_rows(records, model, row_threat, eps, attack)
        if row_threat == "transfer":
            rows = [r for r in rows if r["source_model"] == transfer_source]
        return rows

    attacked_eps = [k for k, e in enumerate(epsilons) if not _close(e, 0.0)]
    # A defended model belongs in an adaptive/transfer table only if it has rows under that threat; the undefended
    # model's white-box attack is its adaptive attack (there is nothing to adapt to), and its white-box rows are its
    # "transfer" rows when the perturbations were crafted on it.
    candidates = {m: [r for k in attacked_eps for r in attack_rows(m, epsilons[k], threat)] for m in info}
    if threat == "white-box":
        models = sorted(info)
    else:
        models = sorted({baseline} | {m for m, rows in candidates.items() if rows and m != baseline})
        if len(models) == 1:
            return None
    fallback = False
    if threat != "white-box" and not candidates[baseline]:
        if threat == "adaptive" or transfer_source == baseline:
            fallback = True
        else:
            raise RobustsegError(
                f"{source}: the undefended model {baseline} has no {attack} transfer rows from {transfer_source} "
                "to compare against; expected them in the CSV."
            )
    baseline_threat = "white-box" if fallback else threat
    what = f"{attack} {threat} on net {net}"
    pool = [r for m in models for r in candidates[m]]
    if fallback:
        pool += [r for k in attacked_eps for r in attack_rows(baseline, epsilons[k], "white-box")]
    if threat == "white-box" and not pool:
        return None
    chosen_loss = _choose_loss(pool, loss, what, source)
    if not any((r["loss"] or "") == chosen_loss for r in pool):
        found = sorted({str(r["loss"]) for r in pool})
        raise RobustsegError(f"loss: {source} has no {what} rows with loss {chosen_loss!r}; found losses {found}.")

    clean_rows = [r for r in records if r["model"] == baseline and r["threat"] == "clean"]
    if not clean_rows:
        raise RobustsegError(
            f"{source}: the undefended model {baseline} has no clean rows (threat 'clean') to compare against."
        )
    subjects = sorted(_by_subject(clean_rows, f"model {baseline} clean", source))

    cells: dict[tuple[str, int], dict[str, Record]] = {}
    configs: dict[int, list[str]] = {k: [] for k in range(len(epsilons))}
    steps: set[int] = set()
    for model in [baseline, *(m for m in models if m != baseline)]:  # the reference first: others pair with it
        for k, eps in enumerate(epsilons):
            if k not in attacked_eps:
                rows = [r for r in records if r["model"] == model and r["threat"] == "clean"]
                what_cell = f"model {model} clean"
            else:
                row_threat = baseline_threat if model == baseline else threat
                rows = [r for r in attack_rows(model, eps, row_threat) if (r["loss"] or "") == chosen_loss]
                what_cell = f"model {model} {attack} {row_threat} at epsilon {_format_eps(eps)}"
                distinct = sorted({str(r["attack_config"] or "") for r in rows})
                if len(distinct) > 1:
                    raise RobustsegError(
                        f"{source}: {what_cell} has several attack configs {distinct}; expected one per epsilon."
                    )
                for config in distinct:
                    if config and config not in configs[k]:
                        configs[k].append(config)
                steps |= {int(r["steps"]) for r in rows}
            if not rows:
                continue
            if model != baseline and (baseline, k) not in cells:
                raise RobustsegError(
                    f"{source}: the undefended model {baseline} has no rows at epsilon {_format_eps(eps)} "
                    f"({attack} {baseline_threat}) to compare {what_cell} against."
                )
            cell = _by_subject(rows, what_cell, source)
            _check_paired(cell, subjects, what_cell, f"model {baseline} clean", source)
            cells[(model, k)] = cell

    entries: dict[tuple[str, str, int], _Entry] = {}
    comparisons: list[tuple[str, str, int]] = []
    for region in DEFENCE_TABLE_REGIONS:
        column = DICE_COLUMNS[region]
        for model in models:
            for k in range(len(epsilons)):
                cell = cells.get((model, k))
                if cell is None:
                    continue
                values = _values(cell, subjects, column)
                mean, sd = mean_sd(values)
                entry = _Entry(mean, sd, len(subjects))
                if model != baseline:
                    entry.p = wilcoxon_p(values, _values(cells[(baseline, k)], subjects, column))
                    comparisons.append((region, model, k))
                entries[(region, model, k)] = entry
    corrected = bonferroni([entries[key].p for key in comparisons])
    for key, p_corrected in zip(comparisons, corrected):
        entries[key].p_corrected = float(p_corrected)
        entries[key].significant = bool(p_corrected <= alpha)

    order = sorted(models, key=lambda m: (m != baseline, _defence_sort_key(*info[m], m)))
    labels = {m: _defence_label(*info[m]) for m in order}
    if len(set(labels.values())) < len(labels):  # two models with the same defence: name them
        labels = {m: f"{label} [{m}]" for m, label in labels.items()}
    return _DefenceData(
        net=net,
        threat=threat,
        transfer_source=transfer_source,
        attack=attack,
        loss=chosen_loss,
        epsilons=epsilons,
        baseline=baseline,
        models=order,
        labels=labels,
        params=info,
        n_subjects=len(subjects),
        entries=entries,
        configs=configs,
        steps=steps,
        m=len(comparisons),
        baseline_fallback=fallback,
    )


def _vanishing_gains(white_box: _DefenceData, adaptive: _DefenceData) -> set[tuple[str, str, int]]:
    """Cells whose significant white-box gain is lost (not significant, or < half) under the adaptive attack."""
    marked = set()
    for (region, model, k), entry in adaptive.entries.items():
        if model == adaptive.baseline or _close(adaptive.epsilons[k], 0.0):
            continue
        wb = white_box.entries.get((region, model, k))
        wb_ref = white_box.entries.get((region, white_box.baseline, k))
        ad_ref = adaptive.entries.get((region, adaptive.baseline, k))
        if wb is None or wb_ref is None or ad_ref is None or not wb.significant:
            continue
        gain_white_box = wb.mean - wb_ref.mean
        gain_adaptive = entry.mean - ad_ref.mean
        if gain_white_box > 0 and (not entry.significant or gain_adaptive < 0.5 * gain_white_box):
            marked.add((region, model, k))
    return marked


def _render_defence_table(data: _DefenceData, daggers: set[tuple[str, str, int]], alpha: float) -> Table:
    number = NET_TABLE_NUMBERS[data.net]
    eps_text = [_format_eps(e) for e in data.epsilons]
    threat_text = data.threat if data.threat != "transfer" else f"transfer from {data.transfer_source}"
    header = ["Region", "Defence", *(f"Dice ε = {e}" for e in eps_text), *(f"p ε = {e}" for e in eps_text)]
    rows: list[list[str]] = []
    csv_rows: list[list[object]] = []
    for region in DEFENCE_TABLE_REGIONS:
        for i, model in enumerate(data.models):
            dice_cells, p_cells = [], []
            for k, eps in enumerate(data.epsilons):
                entry = data.entries.get((region, model, k))
                if entry is None:
                    dice_cells.append("n/a")
                    p_cells.append("n/a" if model != data.baseline else "-")
                    continue
                marks = ("*" if entry.significant else "") + (DAGGER if (region, model, k) in daggers else "")
                dice_cells.append(format_mean_sd(entry.mean, entry.sd, 3) + marks)
                p_cells.append("-" if entry.p is None else format_p(entry.p))
                defense, param = data.params[model]
                csv_rows.append(
                    [region, model, defense, param, data.labels[model], data.threat, data.transfer_source or ""]
                    + [data.attack, data.loss or "", eps, entry.n, entry.mean, entry.sd, entry.p, entry.p_corrected]
                    + [entry.significant if entry.p is not None else None, (region, model, k) in daggers]
                )
            region_cell = REGION_NAMES[region].capitalize() if i == 0 else ""
            rows.append([region_cell, data.labels[model], *dice_cells, *p_cells])

    attacked = [e for e in eps_text if e != "0"]
    threat_model = (
        f"{data.attack} ({threat_text}; loss {data.loss or 'n/a'}; "
        f"{_steps_text(data.steps) if data.steps else 'no attack rows'}; L∞ ε = {', '.join(attacked) or 'none'})"
    )
    caption = (
        f"Dice coefficient (mean ± sample sd, n = {data.n_subjects} subjects) of the {NET_NAMES[data.net]} models "
        f"attacked by {threat_model}; ε = 0 is the clean input. p: two-sided Wilcoxon signed-rank test of the "
        f"model's Dice vs the undefended model `{data.baseline}` on the same subjects at the same ε (uncorrected)."
    )
    notes = [
        f"\\* p ≤ {alpha:g} after Bonferroni correction over the table's m = {data.m} comparisons "
        "(corrected p in the CSV)."
    ]
    if daggers:
        notes.append(DAGGER_NOTE)
    if data.baseline_fallback:
        source = "white-box attack (its adaptive attack)" if data.threat == "adaptive" else "white-box attack"
        notes.append(f"No defence: `{data.baseline}` under the {source}.")
    for k, configs in data.configs.items():
        for config in configs:
            notes.append(f"ε = {eps_text[k]}: `{config}`")
    suffix = data.threat if data.threat != "transfer" else f"transfer_from_{data.transfer_source}"
    return Table(
        name=_file_stem(f"table{number}_{data.net}_{suffix}"),
        title=f"Table {number} ({NET_NAMES[data.net]}, {threat_text})",
        caption=caption,
        header=header,
        rows=rows,
        notes=notes,
        csv_header=[
            "region",
            "model",
            "defense",
            "defense_param",
            "label",
            "threat",
            "source_model",
            "attack",
            "loss",
            "epsilon",
            "n",
            "mean",
            "sd",
            "p",
            "p_bonferroni",
            "significant",
            "gain_vanishes_under_adaptive",
        ],
        csv_rows=csv_rows,
    )


def build_defence_tables(
    records: Sequence[Record],
    net: str,
    attack: str = "FGSM",
    epsilons: Sequence[float] = (0.0, 0.05, 0.1),
    baseline: Sequence[str] = (),
    loss: str | None = None,
    alpha: float = 0.05,
    source: str = "results",
) -> list[Table]:
    """The paper's Table 2 (``net="3d"``) or Table 3 (``"2d"``), plus its adaptive and transfer variants.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        attack: the attack's display name (the paper's FGSM).
        epsilons: the columns; 0 means the clean rows.
        baseline: model names; the one of this net is the reference. Empty: the net's only undefended model.
        loss: the attack loss to tabulate; ``None``: the only one present, else ``soft_dice`` (the paper's).
        alpha: significance level after Bonferroni correction.
        source: name of the CSV, for error messages.

    Returns:
        The white-box table, then one per extra threat present (adaptive, transfer per source model); an empty list
        if the net has no rows of ``attack`` at any attacked epsilon.

    Raises:
        RobustsegError: if there is no (or no unique) undefended model, it has no clean rows or no rows at an
            epsilon where another model has some, subjects do not pair, or rows are duplicated or ambiguous.
    """
    info = _model_info(records, net)
    if not info:
        return []
    reference = _resolve_baseline(info, net, baseline, source)
    eps = tuple(float(e) for e in epsilons)
    white_box = _defence_data(records, net, "white-box", attack, eps, reference, loss, alpha, source)
    if white_box is None:
        return []
    adaptive = _defence_data(records, net, "adaptive", attack, eps, reference, loss, alpha, source)
    sources = sorted(
        {
            str(r["source_model"])
            for r in records
            if r["net"] == net and r["threat"] == "transfer" and r["attack"] == attack
        }
    )
    transfers = [
        t
        for s in sources
        if (t := _defence_data(records, net, "transfer", attack, eps, reference, loss, alpha, source, s)) is not None
    ]
    daggers = _vanishing_gains(white_box, adaptive) if adaptive is not None else set()
    tables = [_render_defence_table(white_box, daggers, alpha)]
    if adaptive is not None:
        tables.append(_render_defence_table(adaptive, daggers, alpha))
    tables += [_render_defence_table(t, set(), alpha) for t in transfers]
    return tables


# -------------------------------------------------------------------------------------------------------------- all
def _check_options(epsilon: float, epsilons: Sequence[float], attack: str, alpha: float) -> None:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise RobustsegError(f"epsilon must be a finite number > 0 (Table 1's attack radius), got {epsilon}.")
    if len(epsilons) == 0 or any(not (e >= 0 and math.isfinite(e)) for e in epsilons):
        raise RobustsegError(f"epsilons must be a non-empty list of finite numbers >= 0, got {list(epsilons)}.")
    if not attack:
        raise RobustsegError("attack must name an attack (e.g. 'FGSM'), got an empty string.")
    if not 0 < alpha < 1:
        raise RobustsegError(f"alpha must lie in (0, 1), got {alpha}.")


def build_tables(
    records: Sequence[Record],
    epsilon: float = 0.05,
    epsilons: Sequence[float] = (0.0, 0.05, 0.1),
    attack: str = "FGSM",
    loss: str | None = None,
    baseline: str | Sequence[str] | None = None,
    alpha: float = 0.05,
    source: str = "results",
) -> list[Table]:
    """Every table of the report: Table 1 per undefended model and net, then Table 2 (3D) and Table 3 (2D).

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        epsilon: Table 1's attack radius.
        epsilons: the epsilon columns of Tables 2 and 3 (0 = clean).
        attack: the attack of Tables 2 and 3.
        loss: restrict to this attack loss (see :func:`build_defence_tables`).
        baseline: the undefended reference model(s), one per net; ``None``: the net's only undefended model.
        alpha: significance level after Bonferroni correction.
        source: name of the CSV, for error messages.

    Returns:
        The tables, in report order.

    Raises:
        RobustsegError: for invalid options or any problem listed in :func:`build_table1` and
            :func:`build_defence_tables`.
    """
    _check_options(epsilon, epsilons, attack, alpha)
    baselines = [baseline] if isinstance(baseline, str) else list(baseline or ())
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
    tables = []
    for net in ("3d", "2d"):
        undefended = sorted({str(r["model"]) for r in records if r["net"] == net and r["defense"] == "none"})
        tables += [build_table1(records, m, epsilon, loss, alpha, source) for m in undefended]
    for net in ("3d", "2d"):
        tables += build_defence_tables(records, net, attack, epsilons, baselines, loss, alpha, source)
    return tables


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_tables(
    csv: str | os.PathLike,  # the CLI's argument name; shadows the csv module inside this function only
    out: str | os.PathLike,
    epsilon: float = 0.05,
    epsilons: Sequence[float] = (0.0, 0.05, 0.1),
    attack: str = "FGSM",
    loss: str | None = None,
    baseline: str | Sequence[str] | None = None,
    alpha: float = 0.05,
) -> list[str]:
    """Write every table as Markdown and CSV under ``out``, plus ``tables.md`` with all of them in order.

    ``robustseg stats results.csv --out DIR`` calls this. All tables are built (and every check run) before
    anything is written; files are written under temporary names and renamed, so a failure leaves no partial output.

    Args:
        csv: the results CSV (see :mod:`common.report.schema`).
        out: output folder (created).
        epsilon: Table 1's attack radius (the paper's 0.05).
        epsilons: the epsilon columns of Tables 2 and 3 (0 = clean).
        attack: the attack of Tables 2 and 3 (the paper's FGSM).
        loss: restrict to this attack loss; ``None``: all in Table 1, the only one or ``soft_dice`` in Tables 2-3.
        baseline: the undefended reference model(s) of Tables 2-3, one per net; ``None``: each net's only one.
        alpha: significance level after Bonferroni correction.

    Returns:
        The paths written, ``tables.md`` first.

    Raises:
        RobustsegError: if the CSV is missing, lacks columns, has no rows or invalid ones, or a table cannot be
            built (no clean rows to compare against, unpaired subjects, ...).
    """
    source = os.fspath(csv)
    records = load_results(source)
    tables = build_tables(records, epsilon, epsilons, attack, loss, baseline, alpha, source)
    return _write_atomically(os.fspath(out), table_files(tables))


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


def _write_atomically(out: str, files: dict[str, str]) -> list[str]:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise RobustsegError(f"out: cannot create the output folder {out} ({exc.strerror}).") from None
    temporary = {name: os.path.join(out, f".{name}.{os.getpid()}.tmp") for name in files}
    try:
        for name, text in files.items():
            with open(temporary[name], "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        for name, tmp in temporary.items():
            os.replace(tmp, os.path.join(out, name))
    except OSError as exc:
        for tmp in temporary.values():
            if os.path.exists(tmp):
                os.remove(tmp)
        raise RobustsegError(f"out: cannot write the tables into {out} ({exc}).") from None
    return [os.path.join(out, name) for name in files]
