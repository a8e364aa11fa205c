"""Tables 2 (3D-UNet) and 3 (2D-UNet) of Liu et al. 2021: each defence's Dice vs the undefended model's, per epsilon.

For each region (WT, TC, ET) and each model ("No defence" first, then distillation by T, adversarial training by eps,
noise augmentation by radius), Dice mean +- sd under ``attack`` at each of ``epsilons`` (0 = the clean rows) and the
uncorrected p of the paired Wilcoxon test of the model's Dice vs the undefended model's on the same subjects at the
same epsilon, with ``*`` where significant after Bonferroni correction over the table's comparisons. The same table
is added for the ``adaptive`` threat and for each ``transfer`` source when such rows exist. A defence whose gain over
the undefended model is significant under the white-box attack but vanishes under the adaptive attack (not
significant there, or less than half the white-box gain) is marked with a dagger in both tables: the white-box number
reflects gradient masking, not robustness.

Example::

    from common.report.schema import load_results
    white_box, *others = build_defence_tables(load_results("results.csv"), "3d", attack="FGSM")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import RobustsegError
from common.metrics.stats import bonferroni, mean_sd, wilcoxon_p
from common.report.labels import (
    DICE_COLUMNS,
    NET_NAMES,
    REGION_NAMES,
    defence_label,
    defence_sort_key,
    file_stem,
    format_eps,
    steps_text,
)
from common.report.options import ReportOptions
from common.report.schema import Record
from common.report.selection import (
    by_subject,
    check_paired,
    choose_loss,
    clean_rows,
    column_values,
    final_attack_rows,
    model_identities,
    same_epsilon,
)
from common.report.table import Table, format_mean_sd, format_p
from common.utils.enums import Defense, Net, Threat

__all__ = [
    "DAGGER",
    "DAGGER_NOTE",
    "DEFENCE_CSV_COLUMNS",
    "DEFENCE_TABLE_REGIONS",
    "NET_TABLE_NUMBERS",
    "build_defence_tables",
]

DEFENCE_TABLE_REGIONS: tuple[str, ...] = ("WT", "TC", "ET")  # the paper's Tables 2-3 row-group order
DEFENCE_CSV_COLUMNS: tuple[str, ...] = (
    "region", "model", "defense", "defense_param", "label", "threat", "source_model", "attack", "loss", "epsilon",
    "n", "mean", "sd", "p", "p_bonferroni", "significant", "gain_vanishes_under_adaptive",
)  # fmt: skip
"""Columns of a defence table's long-format CSV: one line per region, model and epsilon."""
NET_TABLE_NUMBERS: dict[str, int] = {Net.UNET3D: 2, Net.UNET2D: 3}
DAGGER = "†"
DAGGER_NOTE = (
    f"{DAGGER} gain over the undefended model is significant under the white-box attack but vanishes under the "
    "adaptive attack (not significant, or less than half the white-box gain): gradient masking, not robustness."
)


@dataclass
class _Entry:
    """One cell: Dice over ``n`` subjects and, for a defended model, the paired test against the reference."""

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


def _defences(records: Sequence[Record], net: str) -> dict[str, tuple[str, str]]:
    """model -> (defense, defense_param) for the models of ``net``."""
    return {model: (defense, param) for model, (_, defense, param) in model_identities(records, net).items()}


def _resolve_baseline(info: dict[str, tuple[str, str]], net: str, baseline: Sequence[str], source: str) -> str:
    chosen = [b for b in baseline if b in info]
    if len(chosen) == 1:
        return chosen[0]
    if len(chosen) > 1:
        raise RobustsegError(f"baseline: several models of net {net} given ({chosen}); expected one per net.")
    undefended = sorted(m for m, (defense, _) in info.items() if defense == Defense.NONE)
    if not undefended:
        raise RobustsegError(
            f"{source}: net {net} has no undefended model (defense 'none') to compare the defences against."
        )
    if len(undefended) > 1:
        raise RobustsegError(
            f"{source}: net {net} has several undefended models {undefended}; pass baseline=<model> to choose one."
        )
    return undefended[0]


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
    info = _defences(records, net)

    def attack_rows(model: str, eps: float, row_threat: str) -> list[Record]:
        rows = final_attack_rows(records, model, row_threat, eps, attack)
        if row_threat == Threat.TRANSFER:
            rows = [r for r in rows if r["source_model"] == transfer_source]
        return rows

    attacked_eps = [k for k, e in enumerate(epsilons) if not same_epsilon(e, 0.0)]
    # A defended model belongs in an adaptive/transfer table only if it has rows under that threat; the undefended
    # model's white-box attack is its adaptive attack (there is nothing to adapt to), and its white-box rows are its
    # "transfer" rows when the perturbations were crafted on it.
    candidates = {m: [r for k in attacked_eps for r in attack_rows(m, epsilons[k], threat)] for m in info}
    if threat == Threat.WHITE_BOX:
        models = sorted(info)
    else:
        models = sorted({baseline} | {m for m, rows in candidates.items() if rows and m != baseline})
        if len(models) == 1:
            return None
    fallback = False
    if threat != Threat.WHITE_BOX and not candidates[baseline]:
        if threat == Threat.ADAPTIVE or transfer_source == baseline:
            fallback = True
        else:
            raise RobustsegError(
                f"{source}: the undefended model {baseline} has no {attack} transfer rows from {transfer_source} "
                "to compare against; expected them in the CSV."
            )
    baseline_threat = Threat.WHITE_BOX if fallback else threat
    what = f"{attack} {threat} on net {net}"
    pool = [r for m in models for r in candidates[m]]
    if fallback:
        pool += [r for k in attacked_eps for r in attack_rows(baseline, epsilons[k], Threat.WHITE_BOX)]
    if threat == Threat.WHITE_BOX and not pool:
        return None
    chosen_loss = choose_loss(pool, loss, what, source)
    if not any((r["loss"] or "") == chosen_loss for r in pool):
        found = sorted({str(r["loss"]) for r in pool})
        raise RobustsegError(f"loss: {source} has no {what} rows with loss {chosen_loss!r}; found losses {found}.")

    reference_clean = clean_rows(records, baseline)
    if not reference_clean:
        raise RobustsegError(
            f"{source}: the undefended model {baseline} has no clean rows (threat 'clean') to compare against."
        )
    subjects = sorted(by_subject(reference_clean, f"model {baseline} clean", source))

    cells: dict[tuple[str, int], dict[str, Record]] = {}
    configs: dict[int, list[str]] = {k: [] for k in range(len(epsilons))}
    steps: set[int] = set()
    for model in [baseline, *(m for m in models if m != baseline)]:  # the reference first: others pair with it
        for k, eps in enumerate(epsilons):
            if k not in attacked_eps:
                rows = clean_rows(records, model)
                what_cell = f"model {model} clean"
            else:
                row_threat = baseline_threat if model == baseline else threat
                rows = [r for r in attack_rows(model, eps, row_threat) if (r["loss"] or "") == chosen_loss]
                what_cell = f"model {model} {attack} {row_threat} at epsilon {format_eps(eps)}"
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
                    f"{source}: the undefended model {baseline} has no rows at epsilon {format_eps(eps)} "
                    f"({attack} {baseline_threat}) to compare {what_cell} against."
                )
            cell = by_subject(rows, what_cell, source)
            check_paired(cell, subjects, what_cell, f"model {baseline} clean", source)
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
                values = column_values(cell, subjects, column)
                mean, sd = mean_sd(values)
                entry = _Entry(mean, sd, len(subjects))
                if model != baseline:
                    entry.p = wilcoxon_p(values, column_values(cells[(baseline, k)], subjects, column))
                    comparisons.append((region, model, k))
                entries[(region, model, k)] = entry
    corrected = bonferroni([entries[key].p for key in comparisons])
    for key, p_corrected in zip(comparisons, corrected):
        entries[key].p_corrected = float(p_corrected)
        entries[key].significant = bool(p_corrected <= alpha)

    order = sorted(models, key=lambda m: (m != baseline, defence_sort_key(*info[m], m)))
    labels = {m: defence_label(*info[m]) for m in order}
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
        if model == adaptive.baseline or same_epsilon(adaptive.epsilons[k], 0.0):
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
    eps_text = [format_eps(e) for e in data.epsilons]
    threat_text = data.threat if data.threat != Threat.TRANSFER else f"transfer from {data.transfer_source}"
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
        f"{steps_text(data.steps) if data.steps else 'no attack rows'}; L∞ ε = {', '.join(attacked) or 'none'})"
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
        source = "white-box attack (its adaptive attack)" if data.threat == Threat.ADAPTIVE else "white-box attack"
        notes.append(f"No defence: `{data.baseline}` under the {source}.")
    for k, configs in data.configs.items():
        for config in configs:
            notes.append(f"ε = {eps_text[k]}: `{config}`")
    suffix = data.threat if data.threat != Threat.TRANSFER else f"transfer_from_{data.transfer_source}"
    name = file_stem(f"table{number}_{data.net}_{suffix}")
    title = f"Table {number} ({NET_NAMES[data.net]}, {threat_text})"
    return Table(name, title, caption, header, rows, notes, csv_header=list(DEFENCE_CSV_COLUMNS), csv_rows=csv_rows)


def build_defence_tables(
    records: Sequence[Record],
    net: str,
    options: ReportOptions | None = None,
    source: str = "results",
    **values: Any,
) -> list[Table]:
    """The paper's Table 2 (``net="3d"``) or Table 3 (``"2d"``), plus its adaptive and transfer variants.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        options: what to show (:class:`~common.report.options.ReportOptions`): its ``attack`` (display name, the
            paper's FGSM), ``epsilons`` (the columns; 0 means the clean rows), ``baseline`` (model names; the one of
            this net is the reference; none: the net's only undefended model), ``loss`` (``None``: the only one
            present, else ``soft_dice``, the paper's) and ``alpha`` (significance level after Bonferroni correction).
        source: name of the CSV, for error messages.
        values: option fields to set instead of (or on top of) ``options``, e.g. ``loss="ce"``.

    Returns:
        The white-box table, then one per extra threat present (adaptive, transfer per source model); an empty list
        if the net has no rows of ``attack`` at any attacked epsilon.

    Raises:
        RobustsegError: if there is no (or no unique) undefended model, it has no clean rows or no rows at an
            epsilon where another model has some, subjects do not pair, or rows are duplicated or ambiguous.
    """
    options = ReportOptions.resolve(options, **values)
    attack, loss, alpha, baseline = options.attack, options.loss, options.alpha, options.baselines
    info = _defences(records, net)
    if not info or not any(r["net"] == net and r["threat"] == Threat.WHITE_BOX for r in records):
        return []  # e.g. a CSV of certificates or corruptions only: nothing to compare the defences under attack
    reference = _resolve_baseline(info, net, baseline, source)
    eps = options.epsilons

    def data(threat: str, transfer_source: str | None = None) -> _DefenceData | None:
        return _defence_data(records, net, threat, attack, eps, reference, loss, alpha, source, transfer_source)

    white_box = data(Threat.WHITE_BOX)
    if white_box is None:
        return []
    adaptive = data(Threat.ADAPTIVE)
    sources = sorted(
        {
            str(r["source_model"])
            for r in records
            if r["net"] == net and r["threat"] == Threat.TRANSFER and r["attack"] == attack
        }
    )
    transfers = [t for s in sources if (t := data(Threat.TRANSFER, s)) is not None]
    daggers = _vanishing_gains(white_box, adaptive) if adaptive is not None else set()
    tables = [_render_defence_table(white_box, daggers, alpha)]
    if adaptive is not None:
        tables.append(_render_defence_table(adaptive, daggers, alpha))
    tables += [_render_defence_table(t, set(), alpha) for t in transfers]
    return tables
