"""The report's curve and bar figures, from the robustness CSV only (never re-run).

* **Dice vs attack iteration** (Liu et al. 2021, Fig. 3), per undefended model: one panel per iterative white-box
  attack configuration (i-FGSM, ti-FGSM, PGD, ...), mean Dice per region (WT, TC, ET) at each iterate with sample-sd
  error bars; iteration 0 is the clean input.
* **Input PSNR (and SSIM) vs attack iteration** (Fig. 4), for the same attacks, mean +- sd.
* **Dice vs epsilon per defence family** (Figs. 5-8), per net: distillation by T, and adversarial training by eps
  with noise augmentation as the starred curve (the paper's Fig. 7), each with the undefended model as reference;
  one panel per region, the white-box ``attack`` (FGSM) solid with a shaded 95 % confidence interval of the mean
  (t distribution), the ``adaptive`` attack of the same model dashed when the CSV has it. A defence that only looks
  robust against the naive attack shows as a solid curve above the reference and a dashed one back on it.
* **Zero-gradient fraction** per model and threat: the share of input voxels whose loss gradient is exactly 0 at
  the first attack step (a gradient-masking indicator), mean +- sd over subjects.

Each builder returns what it drew and, for what it could not draw, a :class:`~common.report.figure.SkippedFigure`
with the reason; :func:`common.report.figures.build_figures` calls them in the paper's order.

Example::

    from matplotlib import rc_context
    with rc_context(STYLE):
        figures, skipped = iteration_figures(load_results("results.csv"), "brats_unet3d_baseline", "results.csv")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from common.metrics.stats import mean_sd
from common.report.figure import (
    MODEL_COLOURS,
    MODEL_MARKERS,
    OKABE_ITO,
    REGION_STYLES,
    THREAT_COLOURS,
    ReportFigure,
    SkippedFigure,
    data_point,
    new_figure,
)
from common.report.labels import (
    DICE_COLUMNS,
    NET_NAMES,
    REGION_NAMES,
    REGIONS,
    defence_sort_key,
    file_stem,
    format_eps,
    model_label,
)
from common.report.schema import Record
from common.report.selection import attack_order, by_subject, choose_loss, clean_rows, model_identities, same_epsilon
from common.utils.enums import Defense, Net, Threat

__all__ = ["DEFENCE_FAMILIES", "epsilon_figures", "iteration_figures", "zero_gradient_figure"]


# ------------------------------------------------------------------------------------------------------- helpers
def _summary(cell: dict[str, Record], column: str) -> tuple[float, float, int]:
    """Mean, sample sd (0 for one subject) and n of a column over a cell's subjects, ignoring empty/NaN fields."""
    values = [float(r[column]) for r in cell.values() if r[column] is not None and not math.isnan(float(r[column]))]
    if not values:
        return math.nan, math.nan, 0
    mean, sd = mean_sd(values)
    return mean, (sd if math.isfinite(sd) else 0.0), len(values)


def _ci95(sd: float, n: int) -> float:
    """Half-width of the 95 % t confidence interval of a mean (0 for one subject)."""
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else 0.0


def _n_text(counts: Iterable[int]) -> str:
    values = sorted(set(counts))
    if not values:
        return "n = 0"
    return f"n = {values[0]} subjects" if len(values) == 1 else f"n = {values[0]}-{values[-1]} subjects"


def _epsilon_unit(rows: Sequence[Record]) -> str:
    configs = [str(r["attack_config"] or "") for r in rows]
    if configs and all("relative=False" in c for c in configs):
        return "normalised intensity units"
    return "fraction of max |intensity|"


def _legend_below(figure, ax, max_columns: int) -> None:
    """The legend of the curves of ``ax`` (the same in every panel), centred below the panels."""
    handles, labels = ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), max_columns), frameon=False)


# --------------------------------------------------------------------------------------- Figs. 3, 4: iterations
def _iterative_groups(records: Sequence[Record], model: str) -> dict[tuple, list[Record]]:
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        if r["model"] == model and r["threat"] == Threat.WHITE_BOX and int(r["steps"]) > 1:
            key = (str(r["attack"]), float(r["epsilon"]), str(r["loss"] or ""), int(r["steps"]), r["attack_config"])
            groups.setdefault(key, []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (attack_order(kv[0][0]), kv[0][0], kv[0][1], kv[0][2])))


def _group_title(key: tuple, several_losses: bool) -> str:
    attack, epsilon, loss, steps, _ = key
    title = f"{attack}, ε = {format_eps(epsilon)}"
    return f"{title} ({loss})" if several_losses and loss else title


def _iterates(rows: Sequence[Record], what: str, source: str) -> dict[int, dict[str, Record]]:
    by_iteration: dict[int, list[Record]] = {}
    for r in rows:
        by_iteration.setdefault(int(r["iteration"]), []).append(r)
    return {it: by_subject(by_iteration[it], f"{what} iteration {it}", source) for it in sorted(by_iteration)}


def iteration_figures(
    records: Sequence[Record], model: str, source: str
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """Dice (Fig. 3) and input PSNR/SSIM (Fig. 4) vs the iterate of each iterative white-box attack on ``model``.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        model: the (undefended) model.
        source: name of the CSV, for error messages.

    Returns:
        ``(figures, skipped)``: nothing is drawn without an attack of several steps, or with its final iterate only.

    Raises:
        RobustsegError: if a plotted iterate has duplicate subject rows.
    """
    net = str(next(r["net"] for r in records if r["model"] == model))
    where = f"{NET_NAMES[net]}, {model}"
    groups = _iterative_groups(records, model)
    if not groups:
        reason = "no iterative white-box attack (steps > 1) on this model in the CSV"
        return [], [SkippedFigure(f"Dice and PSNR vs attack iteration ({where})", reason)]
    clean = by_subject(clean_rows(records, model), f"model {model} clean", source)
    several_losses = len({k[2] for k in groups}) > 1
    curves, skipped = {}, []
    for key, rows in groups.items():
        iterates = _iterates(rows, f"model {model} {_group_title(key, True)}", source)
        if len(iterates) < 2:
            skipped.append(
                SkippedFigure(
                    f"Dice vs attack iteration ({where}, {_group_title(key, several_losses)})",
                    f"only iterate(s) {sorted(iterates)} of {key[3]} are in the CSV; the evaluation must write a row "
                    "per iterate",
                )
            )
            continue
        curves[key] = iterates
    if not curves:
        return [], skipped

    figures = [_dice_iteration_figure(model, where, net, curves, clean, several_losses)]
    quality = _quality_iteration_figure(model, where, net, curves, several_losses)
    if quality is None:
        skipped.append(SkippedFigure(f"Input PSNR vs attack iteration ({where})", "no PSNR values in the CSV rows"))
    else:
        figures.append(quality)
    return figures, skipped


def _dice_iteration_figure(model, where, net, curves, clean, several_losses) -> ReportFigure:
    from matplotlib.ticker import MaxNLocator

    panels = len(curves)
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure = new_figure(4.6 * columns + 0.4, 3.9 * rows + 0.7)
    axes = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    counts: list[int] = []
    attack_texts = []
    data: list[dict] = []
    for ax, (key, iterates) in zip(axes, curves.items()):
        for region in REGIONS:
            colour, marker = REGION_STYLES[region]
            column = DICE_COLUMNS[region]
            x, means, sds = [], [], []
            for iteration, cell in ([(0, clean)] if clean else []) + list(iterates.items()):
                mean, sd, n = _summary(cell, column)
                x.append(iteration), means.append(mean), sds.append(sd)
                counts.append(n)
                data.append(data_point(_group_title(key, several_losses), region, iteration, mean, sd, "sd", n))
            ax.errorbar(
                x, means, yerr=sds, color=colour, marker=marker, capsize=3, elinewidth=1.2,
                label=f"{REGION_NAMES[region]} ({region})",
            )  # fmt: skip
        ax.set_title(_group_title(key, several_losses))
        ax.set_xlabel("attack iteration (0 = clean input)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
        attack_texts.append(f"{key[0]}: {key[3]} steps, loss {key[2] or 'n/a'}")
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("Dice coefficient")
    _legend_below(figure, axes[0], 3)
    caption = (
        f"Mean Dice per region of `{model}` ({NET_NAMES[net]}) vs the iteration of white-box iterative attacks "
        f"({'; '.join(attack_texts)}); iteration 0 is the clean input. Error bars: ± 1 sample sd across subjects "
        f"({_n_text(counts)}). Each iterate is scored from its own CSV row (the attack's state after that step)."
    )
    name = file_stem(f"fig3_dice_vs_iterations_{net}_{model}")
    return ReportFigure.draw(name, f"Dice vs attack iteration ({where})", caption, figure, "Fig. 3", tuple(data))


def _quality_iteration_figure(model, where, net, curves, several_losses) -> ReportFigure | None:
    from matplotlib.ticker import MaxNLocator

    metrics = [
        (column, label)
        for column, label in (("psnr", "input PSNR (dB)"), ("ssim", "input SSIM"))
        if any(_summary(cell, column)[2] for iterates in curves.values() for cell in iterates.values())
    ]
    if not metrics or metrics[0][0] != "psnr":
        return None
    figure = new_figure(5.2 * len(metrics) + 0.4, 4.4)
    axes = np.atleast_1d(figure.subplots(1, len(metrics), squeeze=False)).ravel()
    counts: list[int] = []
    data: list[dict] = []
    for ax, (column, label) in zip(axes, metrics):
        for k, (key, iterates) in enumerate(curves.items()):
            x, means, sds = [], [], []
            for iteration, cell in iterates.items():
                mean, sd, n = _summary(cell, column)
                if n:
                    x.append(iteration), means.append(mean), sds.append(sd)
                    counts.append(n)
                    data.append(data_point(column, _group_title(key, several_losses), iteration, mean, sd, "sd", n))
            ax.errorbar(
                x, means, yerr=sds, color=MODEL_COLOURS[k % len(MODEL_COLOURS)],
                marker=MODEL_MARKERS[k % len(MODEL_MARKERS)], capsize=3, elinewidth=1.2,
                label=_group_title(key, several_losses),
            )  # fmt: skip
        ax.set_xlabel("attack iteration")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_below(figure, axes[0], 4)
    caption = (
        f"Input quality of the adversarial inputs of `{model}` ({NET_NAMES[net]}) vs attack iteration: PSNR (dB; "
        "data range = clean max − clean min per subject)"
        + (" and SSIM" if len(metrics) > 1 else "")
        + f" of the perturbed vs the clean input, mean ± 1 sample sd across subjects ({_n_text(counts)})."
    )
    name = file_stem(f"fig4_psnr_vs_iterations_{net}_{model}")
    return ReportFigure.draw(name, f"Input PSNR vs attack iteration ({where})", caption, figure, "Fig. 4", tuple(data))


# ------------------------------------------------------------------------------------- Figs. 5-8: dice vs eps
DEFENCE_FAMILIES: dict[Defense, tuple[tuple[Defense, ...], str, dict[Net, str]]] = {
    Defense.DISTILLATION: (
        (Defense.DISTILLATION,),
        "distillation",
        {Net.UNET3D: "Fig. 5", Net.UNET2D: "Fig. 6"},
    ),
    Defense.ADVERSARIAL_TRAINING: (
        (Defense.ADVERSARIAL_TRAINING, Defense.NOISE_AUGMENTATION, Defense.ARTIFACT_AUGMENTATION,
         Defense.GAUSSIAN_AUGMENTATION),
        "adversarial training and augmentation",  # uniform noise (the paper's), MR-artifact and Gaussian augmentation
        {Net.UNET3D: "Fig. 7", Net.UNET2D: "Fig. 8"},
    ),
}
"""One Dice-vs-epsilon figure per family: its defences, the words for them, and the paper's figure per net."""


def _epsilon_series(
    records: Sequence[Record], model: str, threat: str, attack: str, loss: str, source: str
) -> tuple[dict[float, dict[str, Record]], list[Record]]:
    rows = [
        r
        for r in records
        if r["model"] == model
        and r["threat"] == threat
        and r["attack"] == attack
        and r["iteration"] == r["steps"]
        and (r["loss"] or "") == loss
        and not same_epsilon(float(r["epsilon"]), 0.0)
    ]
    by_eps: dict[float, list[Record]] = {}
    for r in rows:
        eps = next((e for e in by_eps if same_epsilon(e, float(r["epsilon"]))), float(r["epsilon"]))
        by_eps.setdefault(eps, []).append(r)
    what = f"model {model} {attack} {threat} at epsilon"
    series = {e: by_subject(by_eps[e], f"{what} {format_eps(e)}", source) for e in sorted(by_eps)}
    return series, rows


def _family_figure(
    records: Sequence[Record],
    net: str,
    family: str,
    references: Sequence[str],
    attack: str,
    loss: str | None,
    source: str,
) -> tuple[ReportFigure | None, SkippedFigure | None]:
    defenses, family_text, numbers = DEFENCE_FAMILIES[family]
    info = model_identities(records)
    members = sorted(
        (m for m, (n, d, _) in info.items() if n == net and d in defenses),
        key=lambda m: defence_sort_key(info[m][1], info[m][2], m),
    )
    title = f"Dice vs {attack} ε: {family_text} ({NET_NAMES[net]})"
    if not members:
        return None, SkippedFigure(title, f"no {family_text} models of the {NET_NAMES[net]} in the CSV")
    models = [*references, *members]
    pool = [
        r
        for r in records
        if r["model"] in models and r["attack"] == attack and r["threat"] in (Threat.WHITE_BOX, Threat.ADAPTIVE)
        and r["iteration"] == r["steps"] and not same_epsilon(float(r["epsilon"]), 0.0)
    ]  # fmt: skip
    if not pool:
        return None, SkippedFigure(title, f"no {attack} white-box rows at ε > 0 for these models")
    chosen = choose_loss(pool, loss, f"{attack} on net {net}", source)

    labels = [model_label(m, info) for m in models]
    unique = len(set(labels)) == len(labels)
    series = []  # (label, colour, marker, white-box, adaptive, clean)
    all_rows: list[Record] = []
    counts: list[int] = []
    any_adaptive = False
    for k, model in enumerate(models):
        white_box, rows = _epsilon_series(records, model, Threat.WHITE_BOX, attack, chosen, source)
        adaptive, adaptive_rows = _epsilon_series(records, model, Threat.ADAPTIVE, attack, chosen, source)
        all_rows += rows + adaptive_rows
        any_adaptive |= bool(adaptive)
        clean = by_subject(clean_rows(records, model), f"model {model} clean", source)
        if model in references:
            colour, marker = OKABE_ITO["black"], "o"
        else:
            index = k - len(references)
            colour = MODEL_COLOURS[index % len(MODEL_COLOURS)]
            # The paper marks the noise-augmentation curve with stars (Fig. 7).
            marker = "*" if info[model][1] == Defense.NOISE_AUGMENTATION else MODEL_MARKERS[index % len(MODEL_MARKERS)]
        label = model_label(model, info, unique)
        if model in references and info[model][1] == Defense.NONE and family == Defense.DISTILLATION:
            label += " (T = 1)"
        series.append((label, colour, marker, white_box, adaptive, clean))

    figure = new_figure(14.5, 5.0)
    axes = figure.subplots(1, 3, sharey=True)
    data: list[dict] = []
    for ax, region in zip(axes, REGIONS):
        column = DICE_COLUMNS[region]
        for label, colour, marker, white_box, adaptive, clean in series:
            for cells, dashed in ((white_box, False), (adaptive, True)):
                if not cells:
                    continue
                points = ([(0.0, clean)] if clean else []) + list(cells.items())
                stats = [(eps, *_summary(cell, column)) for eps, cell in points]
                x = np.array([s[0] for s in stats])
                mean = np.array([s[1] for s in stats])
                half = np.array([_ci95(s[2], s[3]) for s in stats])
                counts += [s[3] for s in stats]
                series_name = f"{label}, adaptive" if dashed else label
                data += [
                    data_point(region, series_name, s[0], s[1], float(h), "ci95", s[3]) for s, h in zip(stats, half)
                ]
                ax.plot(
                    x, mean, color=colour, marker=marker, linestyle="--" if dashed else "-",
                    markersize=11 if marker == "*" else 6.5, markerfacecolor="white" if dashed else colour,
                    label=f"{label}, adaptive" if dashed else label,
                )  # fmt: skip
                ax.fill_between(x, mean - half, mean + half, color=colour, alpha=0.08 if dashed else 0.15, linewidth=0)
        ax.set_title(f"{REGION_NAMES[region].capitalize()} ({region})")
        ax.set_xlabel(f"{attack} ε (L∞, {_epsilon_unit(all_rows)})")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("Dice coefficient")
    _legend_below(figure, axes[0], 4)
    reference_text = ", ".join(f"`{m}`" for m in references)
    caption = (
        f"Dice per region of the {NET_NAMES[net]} {family_text} models vs the radius ε of a white-box {attack} attack "
        f"(loss {chosen or 'n/a'}, final iterate; ε = 0 is the clean input), with the undefended model "
        f"{reference_text} in black as reference. Lines: mean across subjects ({_n_text(counts)}); shaded bands: "
        "95 % confidence interval of the mean (t distribution; the paired tests are in Tables 2-3)."
    )
    if family == Defense.ADVERSARIAL_TRAINING and any(info[m][1] == Defense.NOISE_AUGMENTATION for m in members):
        caption += " Stars: uniform-noise augmentation (the paper's starred curve)."
    if any_adaptive:
        caption += (
            f" Dashed, open markers: the adaptive {attack} attack on the same model (e.g. on logits/T for "
            "distillation). A solid curve above the reference whose dashed curve falls back onto it shows gradient "
            "masking, not robustness."
        )
    name = file_stem(f"{numbers[net].replace('Fig. ', 'fig')}_dice_vs_epsilon_{net}_{family}")
    return ReportFigure.draw(name, title, caption, figure, numbers[net], tuple(data)), None


def epsilon_figures(
    records: Sequence[Record], net: str, references: Sequence[str], attack: str, loss: str | None, source: str
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """Dice vs the epsilon of ``attack`` for each defence family of ``net`` (Figs. 5-8), beside the reference.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        references: the undefended model(s) drawn in black as reference.
        attack: the attack (the paper's FGSM); its ``adaptive`` rows are drawn dashed.
        loss: the attack loss; ``None``: the only one, else ``soft_dice``.
        source: name of the CSV, for error messages.

    Returns:
        ``(figures, skipped)``, one of either per family in :data:`DEFENCE_FAMILIES`.

    Raises:
        RobustsegError: if a plotted cell has duplicate subject rows or several losses make the choice ambiguous.
    """
    if not references:
        return [], [SkippedFigure(f"Dice vs ε ({NET_NAMES[net]})", "no undefended model as reference")]
    figures, skipped = [], []
    for family in DEFENCE_FAMILIES:
        drawn, missed = _family_figure(records, net, family, references, attack, loss, source)
        figures += [drawn] if drawn else []
        skipped += [missed] if missed else []
    return figures, skipped


# ----------------------------------------------------------------------------------- zero-gradient fraction bars
def zero_gradient_figure(records: Sequence[Record]) -> ReportFigure | None:
    """Bars of the share of input voxels with an exactly-zero loss gradient at the first step, per model and threat.

    Returns:
        The figure, or ``None`` when no white-box or adaptive row has a ``zero_grad_fraction``.
    """
    rows = [
        r
        for r in records
        if r["threat"] in THREAT_COLOURS
        and r["zero_grad_fraction"] is not None
        and not math.isnan(float(r["zero_grad_fraction"]))
        and int(r["iteration"]) == 1
    ]
    if not rows:
        return None
    info = model_identities(records)
    models = sorted(
        {str(r["model"]) for r in rows},
        key=lambda m: (Net.values().index(info[m][0]), defence_sort_key(*info[m][1:], m)),
    )
    threats = [t for t in THREAT_COLOURS if any(r["threat"] == t for r in rows)]
    nets = {info[m][0] for m in models}
    labels = [model_label(m, info) for m in models]
    unique = len(set(labels)) == len(labels)
    labels = [(f"{NET_NAMES[info[m][0]]}: " if len(nets) > 1 else "") + model_label(m, info, unique) for m in models]

    figure = new_figure(max(7.0, 1.3 * len(models) + 2.5), 5.2)
    ax = figure.subplots()
    width = 0.8 / len(threats)
    counts = []
    data: list[dict] = []
    for j, threat in enumerate(threats):
        x, means, sds = [], [], []
        for i, model in enumerate(models):
            per_subject: dict[str, list[float]] = {}
            for r in rows:
                if r["model"] == model and r["threat"] == threat:
                    per_subject.setdefault(str(r["subject"]), []).append(100 * float(r["zero_grad_fraction"]))
            if not per_subject:
                continue
            mean, sd = mean_sd([float(np.mean(v)) for v in per_subject.values()])
            x.append(i + (j - (len(threats) - 1) / 2) * width)
            means.append(mean)
            sds.append(sd if math.isfinite(sd) else 0.0)
            counts.append(len(per_subject))
            data.append(data_point("zero_grad_fraction (%)", threat, model, mean, sds[-1], "sd", len(per_subject)))
        bars = ax.bar(
            x, means, width=width * 0.95, yerr=sds, capsize=3, color=THREAT_COLOURS[threat],
            hatch="//" if threat == Threat.ADAPTIVE else None, edgecolor="black", linewidth=0.6,
            label=f"{threat} attacks",
        )  # fmt: skip
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], padding=2, fontsize=10)
    ax.set_xticks(range(len(models)), labels, rotation=25, ha="right")
    ax.set_ylabel("input voxels with zero gradient (%)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="x", visible=False)
    ax.legend(frameon=False)
    caption = (
        "Share of input voxels whose attack-loss gradient is exactly 0 at the first attack step, per model and threat "
        f"(mean ± 1 sample sd across subjects, {_n_text(counts)}; each subject's value averaged over its attacks and "
        "ε). A large share under the white-box attack that vanishes under the adaptive one points to gradient "
        "masking (e.g. saturated softmax at a high distillation temperature): the white-box numbers then overstate "
        "robustness."
    )
    title = "Zero-gradient fraction at the first attack step (gradient masking)"
    return ReportFigure.draw("zero_gradient_fraction", title, caption, figure, data=tuple(data))
