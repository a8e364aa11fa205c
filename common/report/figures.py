"""Figures like the paper's Figs. 2-9, from the robustness CSV and the saved example volumes only (never re-run).

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
* **Slice panels** (Figs. 2 and 9) from ``examples/<subject>/index.json``: the axial slice with the largest
  whole-tumour area of the label; clean T1Gd input, the perturbation on a diverging colour scale (amplified, with
  its scale stated), the adversarial input, and predictions vs the ground truth in BraTS label colours (1 red,
  2 green, 4 yellow, in Okabe-Ito shades that colour-blind readers can tell apart); Fig. 2 for the attacks on the
  undefended model, Fig. 9 across models at one epsilon when several models have entries.

Every figure is drawn only when its data exist; :func:`build_figures` returns what it drew and, for each figure
it did not draw, the reason. Figures are drawn on :class:`matplotlib.figure.Figure` objects (the Agg renderer, no
pyplot state) with print-sized fonts and the Okabe-Ito palette, and returned as PNG bytes.

Example::

    from common.report import build_figures, load_examples, load_results
    figures, skipped = build_figures(load_results("results.csv"), load_examples("examples"))
    open(figures[0].name + ".png", "wb").write(figures[0].png)
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import RobustsegError
from common.metrics.stats import mean_sd
from common.report.examples import ExampleEntry, ExampleSubject, ExampleVolumes, load_example_volumes
from common.report.schema import Record
from common.report.tables import (
    DICE_COLUMNS,
    NET_NAMES,
    REGION_NAMES,
    _attack_order,
    _by_subject,
    _choose_loss,
    _close,
    _defence_label,
    _defence_sort_key,
    _format_eps,
)

__all__ = ["ReportFigure", "SkippedFigure", "build_figures", "DATA_COLUMNS", "FIGURE_DPI", "OKABE_ITO", "LABEL_COLOURS"]

OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
"""Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008)."""

# The BraTS figure convention (ITK-SNAP: 1 red, 2 green, 4 yellow) in Okabe-Ito shades, distinguishable with
# deuteranopia and protanopia.
LABEL_COLOURS: dict[int, tuple[str, str]] = {
    1: ("necrotic / non-enhancing core (1)", OKABE_ITO["vermillion"]),
    2: ("oedema (2)", OKABE_ITO["bluish green"]),
    4: ("enhancing tumour (4)", OKABE_ITO["yellow"]),
}
REGION_STYLES: dict[str, tuple[str, str]] = {
    "WT": (OKABE_ITO["blue"], "o"),
    "TC": (OKABE_ITO["vermillion"], "s"),
    "ET": (OKABE_ITO["bluish green"], "^"),
}
MODEL_COLOURS: tuple[str, ...] = tuple(OKABE_ITO[c] for c in ("orange", "sky blue", "bluish green", "vermillion"))
MODEL_COLOURS += tuple(OKABE_ITO[c] for c in ("reddish purple", "blue", "yellow"))
MODEL_MARKERS: tuple[str, ...] = ("s", "D", "^", "v", "P", "X", "<", ">")
THREAT_COLOURS: dict[str, str] = {"white-box": OKABE_ITO["blue"], "adaptive": OKABE_ITO["orange"]}
_REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
_T1GD = "t1ce"
_MAX_EXAMPLE_SUBJECTS = 2
_STYLE = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12.5,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "lines.linewidth": 2.0,
    "lines.markersize": 6.5,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.family": "DejaVu Sans",  # ships with matplotlib: identical output everywhere, has ε and ±
}
FIGURE_DPI = 150
DATA_COLUMNS: tuple[str, ...] = ("panel", "series", "x", "mean", "error", "error_kind", "n")
"""Columns of a figure's data: panel, curve, x, mean, error-bar half-width and its kind (``sd`` or ``ci95``), n."""


@dataclass(frozen=True)
class ReportFigure:
    """One drawn figure.

    Attributes:
        name: file stem, e.g. ``fig3_dice_vs_iterations_3d_brats_unet3d_baseline``.
        title: one line, e.g. ``Dice vs attack iteration (3D-UNet, brats_unet3d_baseline)``.
        caption: what is shown, the threat model, n, and what error bars and bands mean.
        png: the PNG image.
        paper_figure: the paper's figure it corresponds to (``"Fig. 3"``), or ``""``.
        data: the plotted numbers, one dict per point with keys :data:`DATA_COLUMNS` (empty for slice panels).
    """

    name: str
    title: str
    caption: str
    png: bytes
    paper_figure: str = ""
    data: tuple[dict, ...] = ()

    def to_csv(self) -> str:
        """The plotted numbers as CSV (:data:`DATA_COLUMNS`; floats at full precision), for re-plotting."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, DATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in self.data)
        return buffer.getvalue()


@dataclass(frozen=True)
class SkippedFigure:
    """A figure that was not drawn and why (shown in the report)."""

    title: str
    reason: str


# ------------------------------------------------------------------------------------------------------- helpers
def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # No software/date metadata: the same CSV gives the same bytes.
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None}, facecolor="white")
    return buffer.getvalue()


def _summary(cell: dict[str, Record], column: str) -> tuple[float, float, int]:
    """Mean, sample sd (0 for one subject) and n of a column over a cell's subjects, ignoring empty/NaN fields."""
    values = [float(r[column]) for r in cell.values() if r[column] is not None and not math.isnan(float(r[column]))]
    if not values:
        return math.nan, math.nan, 0
    mean, sd = mean_sd(values)
    return mean, (sd if math.isfinite(sd) else 0.0), len(values)


def _point(panel: str, series: str, x: object, mean: float, error: float, kind: str, n: int) -> dict:
    return {"panel": panel, "series": series, "x": x, "mean": mean, "error": error, "error_kind": kind, "n": n}


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


def _model_info(records: Sequence[Record]) -> dict[str, tuple[str, str, str]]:
    """model -> (net, defense, defense_param)."""
    info: dict[str, tuple[str, str, str]] = {}
    for r in records:
        info.setdefault(str(r["model"]), (str(r["net"]), str(r["defense"]), str(r["defense_param"] or "")))
    return info


def _model_label(model: str, info: dict[str, tuple[str, str, str]], unique: bool = True) -> str:
    if model not in info:
        return model
    net, defense, param = info[model]
    label = _defence_label(defense, param)
    return label if unique else f"{label} [{model}]"


# --------------------------------------------------------------------------------------- Figs. 3, 4: iterations
def _iterative_groups(records: Sequence[Record], model: str) -> dict[tuple, list[Record]]:
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        if r["model"] == model and r["threat"] == "white-box" and int(r["steps"]) > 1:
            key = (str(r["attack"]), float(r["epsilon"]), str(r["loss"] or ""), int(r["steps"]), r["attack_config"])
            groups.setdefault(key, []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (_attack_order(kv[0][0]), kv[0][0], kv[0][1], kv[0][2])))


def _group_title(key: tuple, several_losses: bool) -> str:
    attack, epsilon, loss, steps, _ = key
    title = f"{attack}, ε = {_format_eps(epsilon)}"
    return f"{title} ({loss})" if several_losses and loss else title


def _iterates(rows: Sequence[Record], what: str, source: str) -> dict[int, dict[str, Record]]:
    by_iteration: dict[int, list[Record]] = {}
    for r in rows:
        by_iteration.setdefault(int(r["iteration"]), []).append(r)
    return {it: _by_subject(by_iteration[it], f"{what} iteration {it}", source) for it in sorted(by_iteration)}


def _iteration_figures(
    records: Sequence[Record], model: str, source: str
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    net = str(next(r["net"] for r in records if r["model"] == model))
    where = f"{NET_NAMES[net]}, {model}"
    groups = _iterative_groups(records, model)
    if not groups:
        reason = "no iterative white-box attack (steps > 1) on this model in the CSV"
        return [], [SkippedFigure(f"Dice and PSNR vs attack iteration ({where})", reason)]
    clean_rows = (r for r in records if r["model"] == model and r["threat"] == "clean")
    clean = _by_subject(clean_rows, f"model {model} clean", source)
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
    figure = _new_figure(4.6 * columns + 0.4, 3.9 * rows + 0.7)
    axes = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    counts: list[int] = []
    steps_text = []
    data: list[dict] = []
    for ax, (key, iterates) in zip(axes, curves.items()):
        for region in _REGIONS:
            colour, marker = REGION_STYLES[region]
            column = DICE_COLUMNS[region]
            x, means, sds = [], [], []
            for iteration, cell in ([(0, clean)] if clean else []) + list(iterates.items()):
                mean, sd, n = _summary(cell, column)
                x.append(iteration), means.append(mean), sds.append(sd)
                counts.append(n)
                data.append(_point(_group_title(key, several_losses), region, iteration, mean, sd, "sd", n))
            ax.errorbar(
                x, means, yerr=sds, color=colour, marker=marker, capsize=3, elinewidth=1.2,
                label=f"{REGION_NAMES[region]} ({region})",
            )  # fmt: skip
        ax.set_title(_group_title(key, several_losses))
        ax.set_xlabel("attack iteration (0 = clean input)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
        steps_text.append(f"{key[0]}: {key[3]} steps, loss {key[2] or 'n/a'}")
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("Dice coefficient")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    caption = (
        f"Mean Dice per region of `{model}` ({NET_NAMES[net]}) vs the iteration of white-box iterative attacks "
        f"({'; '.join(steps_text)}); iteration 0 is the clean input. Error bars: ± 1 sample sd across subjects "
        f"({_n_text(counts)}). Each iterate is scored from its own CSV row (the attack's state after that step)."
    )
    return ReportFigure(
        name=_file_stem(f"fig3_dice_vs_iterations_{net}_{model}"),
        title=f"Dice vs attack iteration ({where})",
        caption=caption,
        png=_png(figure),
        paper_figure="Fig. 3",
        data=tuple(data),
    )


def _quality_iteration_figure(model, where, net, curves, several_losses) -> ReportFigure | None:
    from matplotlib.ticker import MaxNLocator

    metrics = [
        (column, label)
        for column, label in (("psnr", "input PSNR (dB)"), ("ssim", "input SSIM"))
        if any(_summary(cell, column)[2] for iterates in curves.values() for cell in iterates.values())
    ]
    if not metrics or metrics[0][0] != "psnr":
        return None
    figure = _new_figure(5.2 * len(metrics) + 0.4, 4.4)
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
                    data.append(_point(column, _group_title(key, several_losses), iteration, mean, sd, "sd", n))
            ax.errorbar(
                x, means, yerr=sds, color=MODEL_COLOURS[k % len(MODEL_COLOURS)],
                marker=MODEL_MARKERS[k % len(MODEL_MARKERS)], capsize=3, elinewidth=1.2,
                label=_group_title(key, several_losses),
            )  # fmt: skip
        ax.set_xlabel("attack iteration")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    caption = (
        f"Input quality of the adversarial inputs of `{model}` ({NET_NAMES[net]}) vs attack iteration: PSNR (dB; "
        "data range = clean max − clean min per subject)"
        + (" and SSIM" if len(metrics) > 1 else "")
        + f" of the perturbed vs the clean input, mean ± 1 sample sd across subjects ({_n_text(counts)})."
    )
    return ReportFigure(
        name=_file_stem(f"fig4_psnr_vs_iterations_{net}_{model}"),
        title=f"Input PSNR vs attack iteration ({where})",
        caption=caption,
        png=_png(figure),
        paper_figure="Fig. 4",
        data=tuple(data),
    )


# ------------------------------------------------------------------------------------- Figs. 5-8: dice vs eps
_FAMILIES: dict[str, tuple[tuple[str, ...], str, dict[str, str]]] = {
    "distillation": (("distillation",), "distillation", {"3d": "Fig. 5", "2d": "Fig. 6"}),
    "adversarial_training": (
        ("adversarial_training", "noise_augmentation"),
        "adversarial training and noise augmentation",
        {"3d": "Fig. 7", "2d": "Fig. 8"},
    ),
}


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
        and not _close(float(r["epsilon"]), 0.0)
    ]
    by_eps: dict[float, list[Record]] = {}
    for r in rows:
        eps = next((e for e in by_eps if _close(e, float(r["epsilon"]))), float(r["epsilon"]))
        by_eps.setdefault(eps, []).append(r)
    what = f"model {model} {attack} {threat} at epsilon"
    series = {e: _by_subject(by_eps[e], f"{what} {_format_eps(e)}", source) for e in sorted(by_eps)}
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
    defenses, family_text, numbers = _FAMILIES[family]
    info = _model_info(records)
    members = sorted(
        (m for m, (n, d, _) in info.items() if n == net and d in defenses),
        key=lambda m: _defence_sort_key(info[m][1], info[m][2], m),
    )
    title = f"Dice vs {attack} ε: {family_text} ({NET_NAMES[net]})"
    if not members:
        return None, SkippedFigure(title, f"no {family_text} models of the {NET_NAMES[net]} in the CSV")
    models = [*references, *members]
    pool = [
        r
        for r in records
        if r["model"] in models and r["attack"] == attack and r["threat"] in ("white-box", "adaptive")
        and r["iteration"] == r["steps"] and not _close(float(r["epsilon"]), 0.0)
    ]  # fmt: skip
    if not pool:
        return None, SkippedFigure(title, f"no {attack} white-box rows at ε > 0 for these models")
    chosen = _choose_loss(pool, loss, f"{attack} on net {net}", source)

    labels = [_model_label(m, info) for m in models]
    unique = len(set(labels)) == len(labels)
    series = []  # (label, colour, marker, white-box, adaptive, clean)
    all_rows: list[Record] = []
    counts: list[int] = []
    any_adaptive = False
    for k, model in enumerate(models):
        white_box, rows = _epsilon_series(records, model, "white-box", attack, chosen, source)
        adaptive, adaptive_rows = _epsilon_series(records, model, "adaptive", attack, chosen, source)
        all_rows += rows + adaptive_rows
        any_adaptive |= bool(adaptive)
        clean = _by_subject(
            (r for r in records if r["model"] == model and r["threat"] == "clean"), f"model {model} clean", source
        )
        if model in references:
            colour, marker = OKABE_ITO["black"], "o"
        else:
            index = k - len(references)
            colour = MODEL_COLOURS[index % len(MODEL_COLOURS)]
            # The paper marks the noise-augmentation curve with stars (Fig. 7).
            marker = "*" if info[model][1] == "noise_augmentation" else MODEL_MARKERS[index % len(MODEL_MARKERS)]
        label = _model_label(model, info, unique)
        if model in references and info[model][1] == "none" and family == "distillation":
            label += " (T = 1)"
        series.append((label, colour, marker, white_box, adaptive, clean))

    figure = _new_figure(14.5, 5.0)
    axes = figure.subplots(1, 3, sharey=True)
    data: list[dict] = []
    for ax, region in zip(axes, _REGIONS):
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
                data += [_point(region, series_name, s[0], s[1], float(h), "ci95", s[3]) for s, h in zip(stats, half)]
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
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    reference_text = ", ".join(f"`{m}`" for m in references)
    caption = (
        f"Dice per region of the {NET_NAMES[net]} {family_text} models vs the radius ε of a white-box {attack} attack "
        f"(loss {chosen or 'n/a'}, final iterate; ε = 0 is the clean input), with the undefended model "
        f"{reference_text} in black as reference. Lines: mean across subjects ({_n_text(counts)}); shaded bands: "
        "95 % confidence interval of the mean (t distribution; the paired tests are in Tables 2-3)."
    )
    if family == "adversarial_training" and any(info[m][1] == "noise_augmentation" for m in members):
        caption += " Stars: uniform-noise augmentation (the paper's starred curve)."
    if any_adaptive:
        caption += (
            f" Dashed, open markers: the adaptive {attack} attack on the same model (e.g. on logits/T for "
            "distillation). A solid curve above the reference whose dashed curve falls back onto it shows gradient "
            "masking, not robustness."
        )
    name = _file_stem(f"{numbers[net].replace('Fig. ', 'fig')}_dice_vs_epsilon_{net}_{family}")
    return ReportFigure(name, title, caption, _png(figure), numbers[net], tuple(data)), None


# ----------------------------------------------------------------------------------- zero-gradient fraction bars
def _zero_gradient_figure(records: Sequence[Record]) -> ReportFigure | None:
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
    info = _model_info(records)
    models = sorted(
        {str(r["model"]) for r in rows},
        key=lambda m: (("3d", "2d").index(info[m][0]), _defence_sort_key(*info[m][1:], m)),
    )
    threats = [t for t in THREAT_COLOURS if any(r["threat"] == t for r in rows)]
    nets = {info[m][0] for m in models}
    labels = [_model_label(m, info) for m in models]
    unique = len(set(labels)) == len(labels)
    labels = [(f"{NET_NAMES[info[m][0]]}: " if len(nets) > 1 else "") + _model_label(m, info, unique) for m in models]

    figure = _new_figure(max(7.0, 1.3 * len(models) + 2.5), 5.2)
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
            data.append(_point("zero_grad_fraction (%)", threat, model, mean, sds[-1], "sd", len(per_subject)))
        bars = ax.bar(
            x, means, width=width * 0.95, yerr=sds, capsize=3, color=THREAT_COLOURS[threat],
            hatch="//" if threat == "adaptive" else None, edgecolor="black", linewidth=0.6, label=f"{threat} attacks",
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
    return ReportFigure(
        "zero_gradient_fraction", "Zero-gradient fraction at the first attack step (gradient masking)", caption,
        _png(figure), data=tuple(data),
    )  # fmt: skip


# -------------------------------------------------------------------------------------------- Figs. 2, 9: slices
@dataclass
class _Panel:
    title: str
    entry: ExampleEntry


def _label_rgba(label_slice: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*label_slice.shape, 4), dtype=np.float32)
    for value, (_, colour) in LABEL_COLOURS.items():
        rgba[label_slice == value] = to_rgba(colour, alpha)
    return rgba


def _show(ax, image: np.ndarray, **kwargs):
    # RAS array: axis 0 runs left -> right, axis 1 posterior -> anterior; transposed with origin "lower" the
    # patient's right is on the viewer's right (neurological convention) and anterior is up.
    return ax.imshow(np.swapaxes(image, 0, 1), origin="lower", interpolation="nearest", **kwargs)


def _clean_axis(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _blank(ax, text: str = "") -> None:
    """An empty cell that can still carry a row label (``set_ylabel``), unlike ``set_axis_off``."""
    _clean_axis(ax)
    ax.patch.set_visible(False)
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35")


def _segmentation(ax, grey: np.ndarray, window: tuple[float, float], labels: np.ndarray, truth: np.ndarray) -> None:
    _show(ax, grey, cmap="gray", vmin=window[0], vmax=window[1])
    _show(ax, _label_rgba(labels))
    if (truth > 0).any():
        # The ground-truth whole-tumour outline on every prediction: the errors are where colour and outline differ.
        ax.contour((truth > 0).T.astype(float), levels=[0.5], colors="white", linewidths=1.2, origin="lower")
    _clean_axis(ax)


def _dice_text(records: Sequence[Record], subject: str, entry: ExampleEntry | None) -> str:
    if entry is None:
        return ""
    rows = [
        r
        for r in records
        if r["subject"] == subject and r["model"] == entry.model and r["threat"] == entry.threat
        and r["attack"] == entry.attack and _close(float(r["epsilon"]), entry.epsilon) and r["iteration"] == r["steps"]
    ]  # fmt: skip
    if len(rows) != 1:
        return "Dice: no CSV row" if not rows else "Dice: several CSV rows"
    row = rows[0]
    return "  ".join(f"{region} {row[DICE_COLUMNS[region]]:.2f}" for region in _REGIONS)


def _label_legend(figure) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, edgecolor="0.3", label=name) for name, colour in LABEL_COLOURS.values()]
    handles.append(Line2D([], [], color="0.25", linewidth=1.5, label="ground-truth whole-tumour outline (white)"))
    figure.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)


def _slice_figure(
    records: Sequence[Record],
    volumes: ExampleVolumes,
    panels: Sequence[_Panel],
    name: str,
    title: str,
    caption_head: str,
    paper_figure: str,
    info: dict[str, tuple[str, str, str]],
    across_models: bool,
) -> ReportFigure:
    """Rows: [clean prediction,] input, perturbation, prediction; column 0 is the ground truth and the legends."""
    z = volumes.axial_slice
    subject = volumes.subject.subject
    clean_grey = volumes.channel(volumes.image, _T1GD)[:, :, z]
    window = (float(np.percentile(clean_grey, 1)), float(np.percentile(clean_grey, 99)))
    if window[1] <= window[0]:
        window = (float(clean_grey.min()), float(clean_grey.max()) + 1e-6)
    truth = volumes.label[:, :, z]
    clean_of = {e.model: e for e in volumes.subject.entries if e.threat == "clean"}
    deltas = {}
    for k, panel in enumerate(panels):
        if panel.entry is not None and panel.entry.adversarial is not None:
            deltas[k] = volumes.channel(volumes.adversarial(panel.entry), _T1GD)[:, :, z] - clean_grey
    scale = max((float(np.abs(d).max()) for d in deltas.values()), default=0.0) or 1e-6

    row_names = ["input (T1Gd)", "perturbation δ (T1Gd)", "prediction"]
    if across_models:
        row_names = ["prediction (clean input)", "adversarial input (T1Gd)", "perturbation δ (T1Gd)"]
        row_names.append("prediction (adversarial)")
    n_rows, n_cols = len(row_names), len(panels) + 1
    figure = _new_figure(2.3 * n_cols + 1.2, 2.5 * n_rows + 0.6)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    offset = 1 if across_models else 0  # row of the inputs
    # Column 0: the ground truth, the clean input (Fig. 9, beside the adversarial ones) and the label legend.
    if across_models:
        _segmentation(axes[0, 0], clean_grey, window, truth, truth)
        axes[0, 0].set_title("ground truth")
        _show(axes[1, 0], clean_grey, cmap="gray", vmin=window[0], vmax=window[1])
        _clean_axis(axes[1, 0])
        axes[1, 0].set_title("clean input")
    _blank(axes[0 if not across_models else 2, 0], f"subject\n{subject}\n\naxial slice {z}")
    if not across_models:
        _blank(axes[1, 0])
    _segmentation(axes[offset + 2, 0], clean_grey, window, truth, truth)
    axes[offset + 2, 0].set_title("ground truth")
    delta_image = None
    for k, panel in enumerate(panels, start=1):
        entry = panel.entry
        column = axes[:, k]
        column[0].set_title(panel.title, fontsize=11.5)
        if across_models:
            clean_entry = clean_of.get(entry.model)
            if clean_entry is None:
                _blank(column[0], "no clean\nentry")
            else:
                _segmentation(column[0], clean_grey, window, volumes.prediction(clean_entry)[:, :, z], truth)
                column[0].set_xlabel(_dice_text(records, subject, clean_entry), fontsize=10)
        grey = volumes.channel(volumes.adversarial(entry), _T1GD)[:, :, z]
        _show(column[offset], grey, cmap="gray", vmin=window[0], vmax=window[1])
        _clean_axis(column[offset])
        if k - 1 in deltas:
            delta_image = _show(column[offset + 1], deltas[k - 1], cmap="RdBu_r", vmin=-scale, vmax=scale)
            _clean_axis(column[offset + 1])
        else:
            _blank(column[offset + 1], "no perturbation\n(clean input)")
        _segmentation(column[offset + 2], grey, window, volumes.prediction(entry)[:, :, z], truth)
        column[offset + 2].set_xlabel(_dice_text(records, subject, entry), fontsize=10)
    for r, text in enumerate(row_names):
        axes[r, 0].set_ylabel(text)
    if delta_image is not None:
        bar = figure.colorbar(delta_image, ax=list(axes[offset + 1, 1:]), shrink=0.9, pad=0.01)
        bar.set_label("δ = adversarial − clean")
    _label_legend(figure)
    span = window[1] - window[0]
    caption = (
        f"{caption_head} Subject `{subject}`, axial slice {z} (of {volumes.label.shape[2]}; the slice with the "
        "largest whole-tumour area in the ground truth), neurological orientation (patient's right on the right, "
        f"anterior up). Grey: T1Gd, window [{window[0]:.3g}, {window[1]:.3g}] (1st-99th percentile of the clean "
        f"slice) for every input. Perturbation: δ = adversarial − clean on the T1Gd channel, colour scale ± "
        f"{scale:.3g} ({100 * scale / span:.1f} % of the grey window, i.e. amplified {span / (2 * scale):.0f}× "
        "relative to the inputs). Predictions: BraTS labels 1 (necrotic/non-enhancing core), 2 (oedema), 4 "
        "(enhancing tumour) over the input, white line = ground-truth whole-tumour outline; numbers below a panel "
        "are that subject's whole-volume Dice (WT, TC, ET) from the CSV."
    )
    return ReportFigure(name, title, caption, _png(figure), paper_figure)


def _entry_title(entry: ExampleEntry, show_threat: bool) -> str:
    if entry.threat == "clean":
        return "clean input"
    text = f"{entry.attack}, ε = {_format_eps(entry.epsilon)}"
    return f"{text}\n({entry.threat})" if show_threat else text


def _slice_figures(
    records: Sequence[Record], examples: Sequence[ExampleSubject], attack: str, epsilon: float, max_subjects: int
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    if not examples:
        reason = "no examples/<subject>/index.json beside the CSV"
        return [], [SkippedFigure("Slice panels (Figs. 2 and 9)", reason)]
    figures, skipped = [], []
    info = _model_info(records)
    chosen = list(examples)[:max_subjects]
    if len(examples) > max_subjects:
        rest = ", ".join(e.subject for e in examples[max_subjects:])
        reason = f"slice panels are drawn for {max_subjects} subject(s); not drawn: {rest}"
        skipped.append(SkippedFigure("Slice panels of further subjects", reason))
    for subject in chosen:
        volumes = load_example_volumes(subject)
        entries = subject.entries
        undefended = [m for m in dict.fromkeys(e.model for e in entries) if m in info and info[m][1] == "none"]
        # Fig. 2: the attacks on each undefended model, at Table 1's epsilon when present.
        for model in undefended:
            attacked = [e for e in entries if e.model == model and e.threat == "white-box"]
            if not attacked:
                skipped.append(SkippedFigure(f"Attacks on {model} ({subject.subject})", "no attacked entries"))
                continue
            at_eps = [e for e in attacked if _close(e.epsilon, epsilon)]
            if not at_eps:
                common = max({e.epsilon for e in attacked}, key=lambda v: sum(_close(v, e.epsilon) for e in attacked))
                at_eps = [e for e in attacked if _close(e.epsilon, common)]
            at_eps.sort(key=lambda e: (_attack_order(e.attack), e.attack))
            clean = [e for e in entries if e.model == model and e.threat == "clean"]
            panels = [_Panel("clean input", e) for e in clean[:1]] + [_Panel(_entry_title(e, False), e) for e in at_eps]
            net = info.get(model, ("3d",))[0]
            figures.append(
                _slice_figure(
                    records,
                    volumes,
                    panels,
                    _file_stem(f"fig2_slices_attacks_{model}_{subject.subject}"),
                    f"Adversarial examples on {model} ({subject.subject})",
                    f"Attacks on the undefended `{model}` ({NET_NAMES.get(net, net)}) at ε = "
                    f"{_format_eps(at_eps[0].epsilon)}: inputs (top), perturbation (middle), predictions (bottom).",
                    "Fig. 2",
                    info,
                    across_models=False,
                )  # fmt: skip
            )
        if not undefended:
            skipped.append(SkippedFigure(f"Attacks on the undefended model ({subject.subject})", "no entries of one"))
        # Fig. 9: one attack at one epsilon across models.
        candidates = [e for e in entries if e.threat in ("white-box", "adaptive")]
        by_setting: dict[tuple[str, float], list[ExampleEntry]] = {}
        for e in candidates:
            key = next((k for k in by_setting if k[0] == e.attack and _close(k[1], e.epsilon)), (e.attack, e.epsilon))
            by_setting.setdefault(key, []).append(e)
        ranked = sorted(
            by_setting.items(),
            key=lambda kv: (
                -len({e.model for e in kv[1] if e.threat == "white-box"}), kv[0][0] != attack,
                abs(kv[0][1] - epsilon),
            ),
        )  # fmt: skip
        if not ranked or len({e.model for e in ranked[0][1] if e.threat == "white-box"}) < 2:
            skipped.append(
                SkippedFigure(
                    f"Adversarial examples across models ({subject.subject})",
                    "fewer than two models have white-box entries for one attack at one ε",
                )
            )
            continue
        (setting_attack, setting_eps), chosen_entries = ranked[0]

        def order(e: ExampleEntry) -> tuple:
            net, defense, param = info.get(e.model, ("3d", "none", ""))
            return (e.threat != "white-box", _defence_sort_key(defense, param, e.model))

        chosen_entries = sorted(chosen_entries, key=order)
        adaptive_text = "; adaptive where marked" if any(e.threat == "adaptive" for e in chosen_entries) else ""
        labels = [_model_label(e.model, info) for e in chosen_entries if e.threat == "white-box"]
        unique = len(set(labels)) == len(labels)
        panels = [
            _Panel(
                _model_label(e.model, info, unique).replace(" (", "\n(", 1)
                + ("\nadaptive attack" if e.threat == "adaptive" else ""),
                e,
            )
            for e in chosen_entries
        ]
        figures.append(
            _slice_figure(
                records,
                volumes,
                panels,
                _file_stem(f"fig9_slices_models_{setting_attack}_eps{_format_eps(setting_eps)}_{subject.subject}"),
                f"{setting_attack} at ε = {_format_eps(setting_eps)} across models ({subject.subject})",
                f"{setting_attack} (white-box{adaptive_text}) "
                f"at ε = {_format_eps(setting_eps)} on each model: prediction on the clean input (top), adversarial "
                "input and perturbation (middle), prediction on the adversarial input (bottom).",
                "Fig. 9",
                info,
                across_models=True,
            )  # fmt: skip
        )
    return figures, skipped


# ------------------------------------------------------------------------------------------------------------ all
def build_figures(
    records: Sequence[Record],
    examples: Sequence[ExampleSubject] = (),
    attack: str = "FGSM",
    epsilon: float = 0.05,
    loss: str | None = None,
    baseline: str | Sequence[str] | None = None,
    max_example_subjects: int = _MAX_EXAMPLE_SUBJECTS,
    source: str = "results",
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """Every figure whose data exist, in the paper's order (Figs. 2-9, then extras), and the ones skipped with why.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        examples: checked example indices from :func:`common.report.examples.load_examples`.
        attack: the attack of the Dice-vs-epsilon figures (the paper's FGSM).
        epsilon: the epsilon preferred for the slice panels (Table 1's 0.05).
        loss: the attack loss of the Dice-vs-epsilon figures; ``None``: the only one, else ``soft_dice``.
        baseline: the undefended reference model(s); ``None``: every undefended model of the net.
        max_example_subjects: draw slice panels for at most this many example subjects (sorted).
        source: name of the CSV, for error messages.

    Returns:
        ``(figures, skipped)``.

    Raises:
        RobustsegError: if a plotted cell has duplicate subject rows, several losses make the choice ambiguous, or
            an example volume cannot be read.
    """
    from matplotlib import rc_context

    if max_example_subjects < 0:
        raise RobustsegError(f"max_example_subjects must be >= 0, got {max_example_subjects}.")
    baselines = [baseline] if isinstance(baseline, str) else list(baseline or ())
    info = _model_info(records)
    figures: list[ReportFigure] = []
    skipped: list[SkippedFigure] = []
    with rc_context(_STYLE):
        nets = [n for n in ("3d", "2d") if any(i[0] == n for i in info.values())]
        for net in nets:
            undefended = sorted(m for m, (n, d, _) in info.items() if n == net and d == "none")
            references = [m for m in undefended if m in baselines] or undefended
            for model in undefended:
                drawn, missed = _iteration_figures(records, model, source)
                figures += drawn
                skipped += missed
        for net in nets:
            undefended = sorted(m for m, (n, d, _) in info.items() if n == net and d == "none")
            references = [m for m in undefended if m in baselines] or undefended
            if not references:
                skipped.append(SkippedFigure(f"Dice vs ε ({NET_NAMES[net]})", "no undefended model as reference"))
                continue
            for family in _FAMILIES:
                drawn, missed = _family_figure(records, net, family, references, attack, loss, source)
                figures += [drawn] if drawn else []
                skipped += [missed] if missed else []
        zero = _zero_gradient_figure(records)
        if zero is None:
            skipped.append(
                SkippedFigure("Zero-gradient fraction", "no zero_grad_fraction values in white-box/adaptive rows")
            )
        else:
            figures.append(zero)
        drawn, missed = _slice_figures(records, examples, attack, epsilon, max_example_subjects)
        figures += drawn
        skipped += missed
    # The paper's order (Figs. 2-9), then the figures it does not have; the sort is stable within a number.
    figures.sort(key=lambda f: int(f.paper_figure.split()[-1]) if f.paper_figure else 100)
    return figures, skipped
