"""Slice panels like the paper's Figs. 2 and 9, from the saved example volumes and the CSV's Dice (never re-run).

For each example subject (``examples/<subject>/index.json``): the axial slice with the largest whole-tumour area of
the label; the clean T1Gd input, the perturbation on a diverging colour scale (amplified, with its scale stated), the
adversarial input, and predictions vs the ground truth in BraTS label colours (1 red, 2 green, 4 yellow, in
Okabe-Ito shades that colour-blind readers can tell apart). Fig. 2 shows the attacks on each undefended model, Fig. 9
one attack at one epsilon across models when several models have entries.

Example::

    from matplotlib import rc_context
    with rc_context(STYLE):
        figures, skipped = slice_figures(records, load_examples("examples"), "FGSM", 0.05, max_subjects=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.report.examples import ExampleEntry, ExampleSubject, ExampleVolumes, load_example_volumes
from common.report.figure import LABEL_COLOURS, ReportFigure, SkippedFigure, new_figure
from common.report.labels import DICE_COLUMNS, NET_NAMES, REGIONS, defence_sort_key, file_stem, format_eps, model_label
from common.report.schema import Record
from common.report.selection import attack_order, final_attack_rows, model_identities, same_epsilon
from common.utils.enums import Defense, Net, Threat

__all__ = ["slice_figures"]

_T1GD = "t1ce"


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
    rows = final_attack_rows(records, entry.model, entry.threat, entry.epsilon, entry.attack)
    rows = [r for r in rows if r["subject"] == subject]
    if len(rows) != 1:
        return "Dice: no CSV row" if not rows else "Dice: several CSV rows"
    row = rows[0]
    return "  ".join(f"{region} {row[DICE_COLUMNS[region]]:.2f}" for region in REGIONS)


def _label_legend(figure, ncol: int = 4) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, edgecolor="0.3", label=name) for name, colour in LABEL_COLOURS.values()]
    handles.append(Line2D([], [], color="0.25", linewidth=1.5, label="ground-truth whole-tumour outline (white)"))
    figure.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)


def _slice_figure(
    records: Sequence[Record],
    volumes: ExampleVolumes,
    panels: Sequence[_Panel],
    name: str,
    title: str,
    caption_head: str,
    paper_figure: str,
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
    clean_of = {e.model: e for e in volumes.subject.entries if e.threat == Threat.CLEAN}
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
    figure = new_figure(2.3 * n_cols + 1.2, 2.5 * n_rows + 0.6)
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
    return ReportFigure.draw(name, title, caption, figure, paper_figure)


def _entry_title(entry: ExampleEntry, show_threat: bool) -> str:
    if entry.threat == Threat.CLEAN:
        return "clean input"
    text = f"{entry.attack}, ε = {format_eps(entry.epsilon)}"
    return f"{text}\n({entry.threat})" if show_threat else text


def _attack_panels(
    records: Sequence[Record], volumes: ExampleVolumes, info: dict[str, tuple[str, str, str]], epsilon: float
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """Fig. 2 of one subject: the attacks on each undefended model, at Table 1's epsilon when present."""
    subject = volumes.subject
    entries = subject.entries
    figures, skipped = [], []
    undefended = [m for m in dict.fromkeys(e.model for e in entries) if m in info and info[m][1] == Defense.NONE]
    for model in undefended:
        attacked = [e for e in entries if e.model == model and e.threat == Threat.WHITE_BOX]
        if not attacked:
            skipped.append(SkippedFigure(f"Attacks on {model} ({subject.subject})", "no attacked entries"))
            continue
        at_eps = [e for e in attacked if same_epsilon(e.epsilon, epsilon)]
        if not at_eps:
            common = max({e.epsilon for e in attacked}, key=lambda v: sum(same_epsilon(v, e.epsilon) for e in attacked))
            at_eps = [e for e in attacked if same_epsilon(e.epsilon, common)]
        at_eps.sort(key=lambda e: (attack_order(e.attack), e.attack))
        clean = [e for e in entries if e.model == model and e.threat == Threat.CLEAN]
        panels = [_Panel("clean input", e) for e in clean[:1]] + [_Panel(_entry_title(e, False), e) for e in at_eps]
        net = info.get(model, (Net.UNET3D,))[0]
        figures.append(
            _slice_figure(
                records,
                volumes,
                panels,
                file_stem(f"fig2_slices_attacks_{model}_{subject.subject}"),
                f"Adversarial examples on {model} ({subject.subject})",
                f"Attacks on the undefended `{model}` ({NET_NAMES.get(net, net)}) at ε = "
                f"{format_eps(at_eps[0].epsilon)}: inputs (top), perturbation (middle), predictions (bottom).",
                "Fig. 2",
                across_models=False,
            )  # fmt: skip
        )
    if not undefended:
        skipped.append(SkippedFigure(f"Attacks on the undefended model ({subject.subject})", "no entries of one"))
    return figures, skipped


def _model_panels(
    records: Sequence[Record],
    volumes: ExampleVolumes,
    info: dict[str, tuple[str, str, str]],
    attack: str,
    epsilon: float,
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """Fig. 9 of one subject: the attack and epsilon with the most attacked models (``attack`` and ``epsilon`` first)
    on every model that has entries for them."""
    subject = volumes.subject
    by_setting: dict[tuple[str, float], list[ExampleEntry]] = {}
    for e in subject.entries:
        if e.threat in (Threat.WHITE_BOX, Threat.ADAPTIVE):
            key = next(
                (k for k in by_setting if k[0] == e.attack and same_epsilon(k[1], e.epsilon)), (e.attack, e.epsilon)
            )
            by_setting.setdefault(key, []).append(e)
    ranked = sorted(
        by_setting.items(),
        key=lambda kv: (
            -len({e.model for e in kv[1] if e.threat == Threat.WHITE_BOX}), kv[0][0] != attack,
            abs(kv[0][1] - epsilon),
        ),
    )  # fmt: skip
    if not ranked or len({e.model for e in ranked[0][1] if e.threat == Threat.WHITE_BOX}) < 2:
        reason = "fewer than two models have white-box entries for one attack at one ε"
        return [], [SkippedFigure(f"Adversarial examples across models ({subject.subject})", reason)]
    (setting_attack, setting_eps), chosen_entries = ranked[0]

    def order(e: ExampleEntry) -> tuple:
        net, defense, param = info.get(e.model, (Net.UNET3D, Defense.NONE, ""))
        return (e.threat != Threat.WHITE_BOX, defence_sort_key(defense, param, e.model))

    chosen_entries = sorted(chosen_entries, key=order)
    adaptive_text = "; adaptive where marked" if any(e.threat == Threat.ADAPTIVE for e in chosen_entries) else ""
    labels = [model_label(e.model, info) for e in chosen_entries if e.threat == Threat.WHITE_BOX]
    unique = len(set(labels)) == len(labels)
    panels = [
        _Panel(
            model_label(e.model, info, unique).replace(" (", "\n(", 1)
            + ("\nadaptive attack" if e.threat == Threat.ADAPTIVE else ""),
            e,
        )
        for e in chosen_entries
    ]
    figure = _slice_figure(
        records,
        volumes,
        panels,
        file_stem(f"fig9_slices_models_{setting_attack}_eps{format_eps(setting_eps)}_{subject.subject}"),
        f"{setting_attack} at ε = {format_eps(setting_eps)} across models ({subject.subject})",
        f"{setting_attack} (white-box{adaptive_text}) "
        f"at ε = {format_eps(setting_eps)} on each model: prediction on the clean input (top), adversarial "
        "input and perturbation (middle), prediction on the adversarial input (bottom).",
        "Fig. 9",
        across_models=True,
    )  # fmt: skip
    return [figure], []


def slice_figures(
    records: Sequence[Record], examples: Sequence[ExampleSubject], attack: str, epsilon: float, max_subjects: int
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """Fig. 2 (the attacks on each undefended model) and Fig. 9 (one attack across models) per example subject.

    Args:
        records: rows from :func:`common.report.schema.load_results` (for the Dice under each panel).
        examples: checked example indices from :func:`common.report.examples.load_examples`.
        attack: the attack preferred for Fig. 9 (the paper's FGSM).
        epsilon: the epsilon preferred for both (Table 1's 0.05); else the one most entries share.
        max_subjects: draw panels for at most this many subjects (the first ones).

    Returns:
        ``(figures, skipped)``.

    Raises:
        RobustsegError: if an example volume cannot be read.
    """
    if not examples:
        reason = "no examples/<subject>/index.json beside the CSV"
        return [], [SkippedFigure("Slice panels (Figs. 2 and 9)", reason)]
    figures, skipped = [], []
    info = model_identities(records)
    if len(examples) > max_subjects:
        rest = ", ".join(e.subject for e in examples[max_subjects:])
        reason = f"slice panels are drawn for {max_subjects} subject(s); not drawn: {rest}"
        skipped.append(SkippedFigure("Slice panels of further subjects", reason))
    for subject in list(examples)[:max_subjects]:
        volumes = load_example_volumes(subject)
        for drawn, missed in (
            _attack_panels(records, volumes, info, epsilon),
            _model_panels(records, volumes, info, attack, epsilon),
        ):
            figures += drawn
            skipped += missed
    return figures, skipped
