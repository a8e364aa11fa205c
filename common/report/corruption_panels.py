"""Slice panels of the MR artifacts (issue 15): one figure per net, one row per corruption at one severity.

From the example volumes of the evaluation (``corruption`` entries of ``examples/<subject>/index.json``, one severity:
:func:`~common.report.examples.example_severity`) and the CSV's Dice (never re-run). For the first example subject
with corruption entries of the net's models, on the axial slice with the largest whole-tumour area of the label (as in
Figs. 2 and 9), each corruption's row shows:

* the corrupted input on one channel (:func:`shown_channel`): the channel the corruption alters when it alters one
  (``missing_t2`` -> T2), else T1Gd, the channel of the paper's panels (every other artifact alters all four);
* the corrupted − clean difference on that channel, on a diverging scale of its own (the artifacts differ by orders
  of magnitude; the scale is in the panel's title);
* the prediction of each model on the corrupted input over it, with the subject's Dice (WT, TC, ET) from the CSV in
  the title; with more than :data:`MAX_CORRUPTION_MODELS` models, the reference models only;
* the ground truth over the clean input.

Example::

    from matplotlib import rc_context
    with rc_context(STYLE):
        figures, skipped = corruption_example_figures(records, load_examples("examples"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from common.corruptions import CORRUPTIONS, corruption_order
from common.data.labels import MODALITIES
from common.report.examples import ExampleEntry, ExampleSubject, ExampleVolumes, example_severity, load_example_volumes
from common.report.figure import ReportFigure, SkippedFigure, data_point, new_figure
from common.report.labels import DICE_COLUMNS, NET_NAMES, REGIONS, defence_sort_key, file_stem, model_label
from common.report.panels import _blank, _clean_axis, _label_legend, _segmentation, _show
from common.report.schema import Record
from common.report.selection import model_identities
from common.utils.enums import Defense, Threat

__all__ = ["MAX_CORRUPTION_MODELS", "corruption_example_figures", "shown_channel"]

MAX_CORRUPTION_MODELS = 4
"""Prediction columns of a figure: with more models, only the reference (undefended) ones are shown."""
_DEFAULT_CHANNEL = "t1ce"  # T1Gd, the channel of the paper's slice panels
_CHANNEL_NAMES = {"t1": "T1", "t1ce": "T1Gd", "t2": "T2", "flair": "FLAIR"}
_TITLE = "MR artifact examples"


def shown_channel(corruption: str, severity: int) -> str:
    """The input channel a corruption's row shows (a name of :data:`~common.data.labels.MODALITIES`).

    The channel the corruption alters if its parameters name one (``missing_<modality>``: that modality), else T1Gd:
    the other corruptions alter every channel, and T1Gd is the channel of the paper's panels (Figs. 2, 9).

    Args:
        corruption: the corruption's name (the CSV's ``attack``); an unknown name shows T1Gd.
        severity: its severity, 1-5.
    """
    known = CORRUPTIONS.get(corruption)
    channel = known.params(severity).get("channel") if known is not None else None
    return MODALITIES[channel] if isinstance(channel, int) and 0 <= channel < len(MODALITIES) else _DEFAULT_CHANNEL


def _dice_row(records: Sequence[Record], subject: str, entry: ExampleEntry) -> Record | None | str:
    """The entry's CSV row, or a reason why there is not exactly one."""
    rows = [
        r
        for r in records
        if r["threat"] == Threat.CORRUPTION
        and r["model"] == entry.model
        and r["subject"] == subject
        and r["attack"] == entry.attack
        and r["severity"] == entry.severity
    ]
    if len(rows) != 1:
        return "Dice: no CSV row" if not rows else "Dice: several CSV rows"
    return rows[0]


def _shown_models(models: list[str], info: dict[str, tuple[str, str, str]], baselines: Sequence[str]) -> list[str]:
    """Every model when there are few; else the reference models (given, else undefended, else the first)."""
    if len(models) <= MAX_CORRUPTION_MODELS:
        return models
    references = [m for m in models if m in baselines] or [m for m in models if info[m][1] == Defense.NONE]
    return (references or models[:1])[:MAX_CORRUPTION_MODELS]


def _window(grey: np.ndarray) -> tuple[float, float]:
    low, high = float(np.percentile(grey, 1)), float(np.percentile(grey, 99))
    return (low, high) if high > low else (float(grey.min()), float(grey.max()) + 1e-6)


def _figure(
    records: Sequence[Record],
    volumes: ExampleVolumes,
    net: str,
    severity: int,
    rows: dict[str, dict[str, ExampleEntry]],
    models: list[str],
    omitted: list[str],
    info: dict[str, tuple[str, str, str]],
) -> ReportFigure:
    z = volumes.axial_slice
    subject = volumes.subject.subject
    truth = volumes.label[:, :, z]
    labels = [model_label(m, info) for m in models]
    unique = len(set(labels)) == len(labels)  # else the model names are added
    n_rows, n_cols = len(rows), len(models) + 3
    figure = new_figure(1.95 * n_cols + 0.8, 2.15 * n_rows + 0.9)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    data = []
    t1gd = volumes.channel(volumes.image, _DEFAULT_CHANNEL)[:, :, z]
    for r, (name, by_model) in enumerate(rows.items()):
        channel = shown_channel(name, severity)
        clean = volumes.channel(volumes.image, channel)[:, :, z]
        window = _window(clean)
        corrupted = volumes.channel(volumes.adversarial(next(iter(by_model.values()))), channel)[:, :, z]
        axis = axes[r]
        _show(axis[0], corrupted, cmap="gray", vmin=window[0], vmax=window[1])
        _clean_axis(axis[0])
        axis[0].set_ylabel(f"{name}\n({_CHANNEL_NAMES[channel]})")
        if r == 0:
            axis[0].set_title("corrupted input", fontsize=10)
        difference = corrupted - clean
        scale = float(np.abs(difference).max())
        if scale > 0:
            _show(axis[1], difference, cmap="RdBu_r", vmin=-scale, vmax=scale)
            _clean_axis(axis[1])
            axis[1].set_title(f"corrupted − clean\n(± {scale:.3g})", fontsize=10)
        else:
            _blank(axis[1], "no change\non this slice")
        for c, model in enumerate(models, start=2):
            entry = by_model.get(model)
            # the model heads its column once; every row carries its own Dice
            label = model_label(model, info, unique).replace(" (", "\n(", 1) + "\n" if r == 0 else ""
            if entry is None:
                _blank(axis[c], "no example")
                axis[c].set_title(label, fontsize=10)
                continue
            _segmentation(axis[c], corrupted, window, volumes.prediction(entry)[:, :, z], truth)
            row = _dice_row(records, subject, entry)
            if isinstance(row, str):
                dice_text = row
            else:
                dice_text = " ".join(f"{region} {row[DICE_COLUMNS[region]]:.2f}" for region in REGIONS)
                for region in REGIONS:
                    data.append(data_point(name, model, region, float(row[DICE_COLUMNS[region]]), math.nan, "", 1))
            axis[c].set_title(f"{label}{dice_text}", fontsize=10)
        _segmentation(axis[-1], t1gd, _window(t1gd), truth, truth)
        if r == 0:
            axis[-1].set_title("ground truth\n(clean T1Gd)", fontsize=10)
    _label_legend(figure, ncol=4 if n_cols >= 6 else 2)  # one line of four needs about 12 inches
    shown = ", ".join(f"`{m}`" for m in models)
    omitted_text = f" Not shown (more than {MAX_CORRUPTION_MODELS} models): {', '.join(omitted)}." if omitted else ""
    caption = (
        f"Each MR artifact at severity {severity} on subject `{subject}` (the evaluation saves one severity: 3 if it "
        f"was evaluated, else the middle one), axial slice {z} of {volumes.label.shape[2]} (largest whole-tumour "
        "area of the ground truth), neurological orientation. Per row: the corrupted input on the channel the "
        "corruption alters (a missing modality: that modality; every other artifact alters all four, and T1Gd is "
        "shown), in the grey window of the clean channel (1st-99th percentile of the slice); corrupted − clean on "
        "that channel, on its own symmetric scale (in the title; a missing modality zeroes whole slices, so a row "
        "may show no change on this one); the prediction of "
        f"{shown} over the corrupted input, with that subject's whole-volume Dice (WT, TC, ET) from the CSV; the "
        "ground truth over the clean T1Gd. Labels: BraTS 1 (necrotic/non-enhancing core), 2 (oedema), 4 (enhancing "
        f"tumour); white line = ground-truth whole-tumour outline.{omitted_text}"
    )
    return ReportFigure.draw(
        file_stem(f"corruption_examples_{net}"),
        f"MR artifacts at severity {severity} ({NET_NAMES.get(net, net)}, {subject})",
        caption,
        figure,
        "",
        tuple(data),
    )


def corruption_example_figures(
    records: Sequence[Record], examples: Sequence[ExampleSubject], baselines: Sequence[str] = ()
) -> tuple[list[ReportFigure], list[SkippedFigure]]:
    """One figure per net of the corruption examples (``corruption_examples_<net>``), or why there is none.

    Args:
        records: rows from :func:`common.report.schema.load_results` (nets, defences, the Dice in the titles).
        examples: checked example indices from :func:`common.report.examples.load_examples`; each net's figure uses
            the first subject with corruption entries of its models.
        baselines: the reference model(s), shown when a net has more than :data:`MAX_CORRUPTION_MODELS` models
            (empty: its undefended models).

    Returns:
        ``(figures, skipped)``; nothing at all when neither the CSV nor the examples hold corruptions.

    Raises:
        RobustsegError: if an example volume cannot be read.
    """
    info = model_identities(records)
    scored = sorted({str(r["net"]) for r in records if r["threat"] == Threat.CORRUPTION})
    saved = {e.model for s in examples for e in s.entries if e.threat == Threat.CORRUPTION}
    nets = sorted(set(scored) | {info[m][0] for m in saved if m in info})
    figures, skipped = [], []
    for net in nets:
        models = sorted(
            (m for m in saved if m in info and info[m][0] == net),
            key=lambda m: defence_sort_key(info[m][1], info[m][2], m),
        )
        subject = next((s for s in examples if any(e.model in models for e in s.entries if e.severity)), None)
        if subject is None:
            reason = (
                "the CSV has corruption rows but examples/<subject>/index.json has no corruption entries of its "
                "models (an evaluation run without an example subject, or before corruption examples were saved)"
            )
            skipped.append(SkippedFigure(f"{_TITLE} ({NET_NAMES.get(net, net)})", reason))
            continue
        entries = [e for e in subject.entries if e.threat == Threat.CORRUPTION and e.model in models]
        severity = example_severity([e.severity for e in entries if e.severity is not None])
        entries = [e for e in entries if e.severity == severity]
        shown = _shown_models([m for m in models if any(e.model == m for e in entries)], info, baselines)
        rows: dict[str, dict[str, ExampleEntry]] = {}
        for name in corruption_order({e.attack for e in entries if e.model in shown}):
            rows[name] = {e.model: e for e in entries if e.attack == name and e.model in shown}
        omitted = [m for m in models if m not in shown]
        volumes = load_example_volumes(subject)
        figures.append(_figure(records, volumes, net, severity, rows, shown, omitted, info))
    return figures, skipped
