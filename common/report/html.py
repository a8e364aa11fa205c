"""The robustness report: tables, figures and one self-contained HTML page, from the results CSV only.

``robustseg report results.csv --out DIR`` calls :func:`write_report`, which writes into ``DIR``:

* the tables of :mod:`common.report.tables` (``tables.md`` and Markdown + CSV per table, as ``robustseg stats``);
* the figures of :mod:`common.report.figures` as ``figures/<name>.png``;
* ``report.html``: one page with everything embedded (figures as base64 PNG, CSS inline; no external URL, font or
  script), so it can be mailed, archived or printed as it is. It holds a title, a prominent warning when the data
  are synthetic, the tables (with their ``*`` and dagger marks and footnotes), the paper's Table 1 for comparison
  (clearly labelled: BraTS 2017, different data), the figures with captions, the list of figures that were not
  drawn and why, and the settings that produced the numbers.

Settings come from an optional ``settings`` mapping or JSON file, else from ``settings.json`` and/or
``run_info.json`` beside the CSV (written by the evaluation, e.g. models and how each was trained, attacks,
epsilons, data, package versions); they are shown as given, next to a summary derived from the CSV itself (models,
attack configurations, epsilons, subjects) and the package versions that rendered the report.

The data count as synthetic when a subject id starts with ``synth_`` (the embedded dataset's ids) or the settings
say so (a true ``synthetic`` key at the top or under ``data``/``dataset``, or a ``data``/``dataset`` text that
mentions "synthetic").

Nothing is written unless everything could be built: the options, the CSV, the settings and every example index are
checked and all tables and figures are made in memory first; the files are then written all or nothing
(:func:`common.report.writing.write_files`).

Example::

    from common.report import write_report
    page = write_report("runs/eval/results.csv", "runs/eval/report")   # .../report/report.html
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import platform
import re
import struct
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from common.errors import RobustsegError
from common.report.examples import load_examples
from common.report.figure import FIGURE_DPI, ReportFigure, SkippedFigure
from common.report.figures import build_figures
from common.report.labels import NET_NAMES, defence_label, format_eps
from common.report.options import ReportOptions
from common.report.schema import Record, load_results
from common.report.table import Table
from common.report.tables import build_tables, table_files
from common.report.writing import write_files
from common.utils.enums import Threat

__all__ = ["PAPER_TABLE1", "SETTINGS_FILES", "is_synthetic", "load_settings", "render_report", "write_report"]

SETTINGS_FILES: tuple[str, ...] = ("settings.json", "run_info.json")
"""Files beside the CSV whose settings the report shows when no ``settings`` argument is given."""

PAPER_TABLE1: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("No attack", "0.821 ± 0.042", "0.668 ± 0.253", "0.748 ± 0.043", "-", "-", "-"),
    ("FGSM", "0.561 ± 0.077*", "0.370 ± 0.239*", "0.549 ± 0.078*", "27.69 ± 0.28", "0.646 ± 0.043", "0.041 ± 0.001"),
    ("i-FGSM", "0.342 ± 0.087*", "0.230 ± 0.162*", "0.393 ± 0.090*", "27.93 ± 0.13", "0.470 ± 0.015", "0.040 ± 0.001"),
    ("ti-FGSM", "0.461 ± 0.085*", "0.365 ± 0.225*", "0.486 ± 0.082*", "29.48 ± 0.34", "0.735 ± 0.064", "0.034 ± 0.001"),
)
"""Liu et al. 2021, Table 1 (3D-UNet, BraTS 2017, eps = 0.05; i-FGSM 10 iterates): attack, Dice TC, ET, WT (mean
+- sd, * significant vs no attack after Bonferroni), input PSNR (dB), SSIM, RMSE."""
_PAPER_TABLE1_HEADER = (
    "Attack type",
    "Dice — tumour core",
    "Dice — enhancing tumour",
    "Dice — whole tumour",
    "Input PSNR (dB)",
    "Input SSIM",
    "Input RMSE",
)
_ENVIRONMENT_PACKAGES = ("robustseg", "numpy", "scipy", "matplotlib", "nibabel", "torch", "monai")

_CSS = """
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 0 auto; max-width: 1250px;
       padding: 1.5em 2em 4em; color: #1a1a1a; line-height: 1.45; font-size: 15px; }
h1 { font-size: 1.9em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #0072B2; padding-bottom: 0.2em; margin-top: 2.2em; }
h3 { margin-bottom: 0.3em; }
.meta { color: #444; margin-top: 0; }
.warning { border: 3px solid #D55E00; background: #fff1e6; padding: 0.9em 1.2em; margin: 1.2em 0;
           font-size: 1.1em; }
.info { border-left: 5px solid #0072B2; background: #eef6fb; padding: 0.6em 1em; margin: 1em 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.55em; text-align: left; vertical-align: top; }
td:first-child, th:first-child { white-space: nowrap; }
th { background: #e8eef3; }
tbody tr:nth-child(even) { background: #f6f8fa; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.caption { margin: 0.3em 0 0.4em; }
.note { margin: 0.15em 0; font-size: 0.9em; color: #333; }
code { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 0.88em; background: #f0f0f0;
       padding: 0 0.2em; overflow-wrap: anywhere; }
figure { margin: 1.5em 0 2.2em; page-break-inside: avoid; break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { margin-top: 0.4em; max-width: 1100px; }
table.kv th { width: 14em; }
table.kv table.kv { margin: 0; }
nav ul { columns: 2; }
@media print { body { max-width: none; padding: 0; font-size: 11pt; } h2 { page-break-before: auto; }
               .table-block { page-break-inside: avoid; break-inside: avoid; } }
"""


# ------------------------------------------------------------------------------------------------------ settings
def _read_settings_file(path: Path) -> Mapping:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RobustsegError(f"settings file {path}: cannot be read as JSON ({exc}).") from None
    if not isinstance(data, Mapping):
        raise RobustsegError(f"settings file {path}: holds a JSON {type(data).__name__}; expected a JSON object.")
    return data


def load_settings(settings: Mapping | str | os.PathLike | None, csv: str | os.PathLike) -> list[tuple[str, Mapping]]:
    """The settings to show in the report, as (source name, mapping) pairs.

    Args:
        settings: a mapping, a JSON file, or ``None`` to read :data:`SETTINGS_FILES` beside ``csv`` if present.
        csv: the results CSV.

    Returns:
        The sections; empty when nothing is given and no file is found.

    Raises:
        RobustsegError: if a given settings file does not exist, a settings file is not valid JSON or not a JSON
            object, or ``settings`` is of another type.
    """
    if settings is None:
        folder = Path(csv).parent
        return [(name, _read_settings_file(folder / name)) for name in SETTINGS_FILES if (folder / name).is_file()]
    if isinstance(settings, Mapping):
        return [("settings", settings)]
    if isinstance(settings, (str, os.PathLike)):
        path = Path(settings)
        if not path.is_file():
            raise RobustsegError(f"settings: file {path} does not exist; expected a JSON file with the run settings.")
        return [(path.name, _read_settings_file(path))]
    raise RobustsegError(f"settings must be a mapping, a JSON file path or None, got {type(settings).__name__}.")


def _declares_synthetic(data: Mapping) -> bool:
    if data.get("synthetic") is True:
        return True
    for key in ("data", "dataset"):
        value = data.get(key)
        if isinstance(value, Mapping) and _declares_synthetic(value):
            return True
        if isinstance(value, str) and "synthetic" in value.lower():
            return True
    return False


def is_synthetic(records: Sequence[Record], settings: Sequence[tuple[str, Mapping]] = ()) -> bool:
    """Whether the numbers come from synthetic data (subject ids ``synth_*`` or settings that say so)."""
    return any(str(r["subject"]).startswith("synth_") for r in records) or any(
        _declares_synthetic(data) for _, data in settings
    )


# ------------------------------------------------------------------------------------------------------ rendering
def _inline(text: str) -> str:
    """The tables' Markdown inline marks as HTML: escaped text, ``code`` spans, ``\\*`` as ``*``."""
    escaped = html.escape(text, quote=False).replace("\\*", "*")
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], name: str) -> list[str]:
    lines = [f'<table data-table="{html.escape(name)}">', "<thead><tr>"]
    lines += [f"<th>{html.escape(cell)}</th>" for cell in header]
    lines += ["</tr></thead>", "<tbody>"]
    for row in rows:
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if re.match(r"^[-\d.]", c) else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        lines.append(f"<tr>{cells}</tr>")
    lines += ["</tbody>", "</table>"]
    return lines


def _table_html(table: Table) -> str:
    lines = [
        f'<div class="table-block" id="{html.escape(table.name)}">',
        f"<h3>{html.escape(table.title)}</h3>",
        f'<p class="caption">{_inline(table.caption)}</p>',
        *_grid(table.header, table.rows, table.name),
        *(f'<p class="note">{_inline(note)}</p>' for note in table.notes),
    ]
    for k, (heading, header, rows) in enumerate(table.extra):
        lines += [f'<p class="caption">{_inline(heading)}</p>', *_grid(header, rows, f"{table.name}--extra{k}")]
    lines.append(f'<p class="note">Files: <code>{html.escape(table.name)}.md</code>, '
                 f"<code>{html.escape(table.name)}.csv</code> (full precision).</p>")  # fmt: skip
    lines.append("</div>")
    return "\n".join(lines)


def _value_html(value: object) -> str:
    if isinstance(value, Mapping):
        if not value:
            return "<em>empty</em>"
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value_html(v)}</td></tr>" for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            return html.escape(", ".join("null" if v is None else str(v) for v in value)) or "<em>none</em>"
        return "<ol>" + "".join(f"<li>{_value_html(v)}</li>" for v in value) + "</ol>"
    if value is None:
        return "<em>null</em>"
    return html.escape(str(value))


def _csv_summary(records: Sequence[Record]) -> str:
    models: dict[str, dict] = {}
    for r in records:
        entry = models.setdefault(
            str(r["model"]),
            {"net": r["net"], "defense": r["defense"], "param": r["defense_param"] or "", "subjects": set(), "rows": 0},
        )
        entry["subjects"].add(r["subject"])
        entry["rows"] += 1
    model_rows = [
        [m, NET_NAMES.get(str(e["net"]), str(e["net"])), defence_label(str(e["defense"]), str(e["param"])),
         str(len(e["subjects"])), str(e["rows"])]
        for m, e in models.items()
    ]  # fmt: skip
    attacks: dict[tuple, dict] = {}
    for r in records:
        if r["threat"] == Threat.CLEAN:
            continue
        key = (str(r["attack"]), str(r["threat"]), str(r["loss"] or ""), int(r["steps"]))
        entry = attacks.setdefault(key, {"eps": set(), "models": set(), "configs": []})
        entry["eps"].add(float(r["epsilon"]))
        entry["models"].add(str(r["model"]))
        # One line per configuration up to epsilon, whose values the epsilon column lists.
        config = re.sub(r"\b(epsilon|eps)=[-+\d.eE]+", r"\1=ε", str(r["attack_config"] or ""))
        if config and config not in entry["configs"]:
            entry["configs"].append(config)
    lines = ["<h3>Models in the CSV</h3>"]
    lines += _grid(["model", "net", "defence", "subjects", "rows"], model_rows, "settings-models")
    lines.append("<h3>Attacks in the CSV</h3>")
    lines.append('<table data-table="settings-attacks"><thead><tr>')
    lines += [f"<th>{h}</th>" for h in ("attack", "threat", "loss", "steps", "ε", "models", "attack configurations")]
    lines.append("</tr></thead><tbody>")
    for (attack, threat, loss, steps), e in attacks.items():
        eps = ", ".join(format_eps(v) for v in sorted(e["eps"]))
        configs = "<br>".join(f"<code>{html.escape(c)}</code>" for c in e["configs"][:12])
        if len(e["configs"]) > 12:
            configs += f"<br>... and {len(e['configs']) - 12} more"
        cells = [html.escape(attack), html.escape(threat), html.escape(loss or "n/a"), str(steps), eps]
        cells.append(html.escape(", ".join(sorted(e["models"]))))
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{configs}</td></tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


_RECIPES = {
    "paper": "the paper's: teacher trained at T, soft labels at T",
    "approximation": "approximation, not the paper's recipe: the baseline (trained at T = 1) as teacher, soft labels "
    "at T = 1",
    "other": "other: the teacher softened at another temperature than it was trained at",
}


def _distillation_html(settings: Sequence[tuple[str, Mapping]]) -> str:
    """One line per distilled model of the settings' ``models``: recipe, temperatures, logit-norm ratio (or "")."""
    rows = []
    for _, data in settings:
        models = data.get("models")
        for model in models if isinstance(models, list) else []:
            if not isinstance(model, Mapping) or model.get("defense") != "distillation":
                continue
            record = model.get("distillation")
            if not isinstance(record, Mapping):
                rows.append([str(model.get("model", "?")), "not recorded (no models/distillation_record.json)"] +
                            ["-"] * 4)  # fmt: skip
                continue

            def number(key: str, record: Mapping = record) -> str:
                value = record.get(key)
                return f"{value:.3g}" if isinstance(value, (int, float)) else "-"

            rows.append([
                str(model.get("model", "?")), _RECIPES.get(str(record.get("recipe")), str(record.get("recipe"))),
                number("temperature"), f"{number('teacher_train_temperature')} / {number('teacher_temperature')}",
                number("logit_norm_ratio"), number("matching_logit_norm_ratio"),
            ])  # fmt: skip
    if not rows:
        return ""
    header = ["model", "distillation recipe", "T", "teacher trained at / softened at", "student / teacher logit norm",
              "ratio where soft labels match (T / softened at)"]  # fmt: skip
    return "\n".join([
        '<h3 id="distillation">Distilled models: recipe and logit scale</h3>',
        '<p class="caption">From each model\'s <code>models/distillation_record.json</code> (via the settings): the '
        "mean per-voxel norm of the class-centred logits of the student over its teacher's on the validation data. "
        "Defensive distillation works by the student's logits being about T times an undefended network's "
        "(Papernot et al. 2016); eq. 7's soft Dice rewards sharp outputs, so the ratio can pass the matching "
        "value.</p>",
        *_grid(header, rows, "distillation"),
    ])  # fmt: skip


def _environment() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _ENVIRONMENT_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _paper_table() -> str:
    lines = [
        '<div class="table-block" id="paper-table1">',
        "<h3>Liu et al. 2021, Table 1 (the paper's numbers, for comparison only)</h3>",
        '<p class="caption"><strong>From the paper, not from this run:</strong> 3D-UNet on BraTS 2017 (283 subjects, '
        "20 % test), white-box attacks at ε = 0.05 (5 % of the maximum intensity; i-FGSM and ti-FGSM 10 iterates), "
        "Dice as mean ± sd. Different data, preprocessing and training: the numbers are a reference point for the "
        "size of the effects, not values this run should reproduce.</p>",
        *_grid(_PAPER_TABLE1_HEADER, PAPER_TABLE1, "paper-table1"),
        '<p class="note">* p ≤ 0.05 vs "No attack" (Wilcoxon signed-rank, Bonferroni-corrected), as in the paper.</p>',
        "</div>",
    ]
    return "\n".join(lines)


def _display_width(png: bytes) -> int | None:
    """CSS pixels that show a figure at its physical size (96 CSS px per inch), so fonts match across figures."""
    if len(png) < 24 or png[12:16] != b"IHDR":  # the IHDR chunk follows the 8-byte signature
        return None
    return round(struct.unpack(">I", png[16:20])[0] * 96 / FIGURE_DPI)


def render_report(
    records: Sequence[Record],
    tables: Sequence[Table],
    figures: Sequence[ReportFigure],
    skipped: Sequence[SkippedFigure] = (),
    settings: Sequence[tuple[str, Mapping]] = (),
    source: str = "results.csv",
    options: Mapping[str, object] | None = None,
) -> str:
    """The report as one self-contained HTML page (figures as base64 PNG data URIs, inline CSS, no external URL).

    Args:
        records: the CSV rows (for the synthetic-data check and the summary of models and attacks).
        tables: from :func:`common.report.tables.build_tables`.
        figures: from :func:`common.report.figures.build_figures`.
        skipped: the figures not drawn, with reasons.
        settings: (source name, mapping) sections from :func:`load_settings`.
        source: the CSV's path, as shown in the page.
        options: the report options (epsilon, attack, ...), shown with the settings.

    Returns:
        The HTML text.
    """
    synthetic = is_synthetic(records, settings)
    subjects = sorted({str(r["subject"]) for r in records})
    models = sorted({str(r["model"]) for r in records})
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Robustness report</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>Robustness of brain-tumour segmentation to adversarial attacks</h1>",
        f'<p class="meta">From <code>{html.escape(source)}</code>: {len(records)} rows, {len(subjects)} subjects, '
        f"{len(models)} models. Generated {generated} by robustseg (tables and figures computed from the CSV and "
        "the saved example volumes only; no model was re-run).</p>",
    ]
    if synthetic:
        out.append(
            '<div class="warning" role="note" id="synthetic-warning"><strong>Synthetic data: these are not BraTS '
            "numbers.</strong> The subjects come from the embedded synthetic BraTS-like dataset (generated from the "
            "MNI ICBM152 template). The numbers test the pipeline and show the direction of the effects; they must "
            "not be compared with, or reported as, results on BraTS or any patient data.</div>"
        )
    else:
        out.append(
            '<div class="info" role="note">Data: no synthetic subject ids and no synthetic flag in the settings; see '
            '<a href="#settings">Settings</a> for the data that produced these numbers.</div>'
        )
    out += _input_space_notes(settings)
    contents = [("tables", "Tables"), ("paper", "The paper's Table 1 (comparison)"), ("figures", "Figures")]
    contents += [("skipped", "Figures not drawn")] if skipped else []
    contents += [("settings", "Settings")]
    out.append("<nav><ul>" + "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in contents) + "</ul></nav>")

    out.append('<h2 id="tables">Tables</h2>')
    out.append(
        '<p class="caption">Like the paper\'s Tables 1-3; the Markdown and full-precision CSV files of each table '
        "are beside this page.</p>"
    )
    if not tables:
        out.append("<p>No table could be made from this CSV.</p>")
    out += [_table_html(t) for t in tables]
    distillation = _distillation_html(settings)
    if distillation:
        out.append(distillation)

    out.append('<h2 id="paper">The paper\'s Table 1 (comparison)</h2>')
    if synthetic:
        out.append(
            '<p class="note"><strong>This run used synthetic data</strong>: compare the direction and rough size of '
            "the effects, never the values.</p>"
        )
    out.append(_paper_table())

    out.append('<h2 id="figures">Figures</h2>')
    if not figures:
        out.append("<p>No figure could be drawn from this CSV (see below).</p>")
    for k, figure in enumerate(figures, start=1):
        data = base64.b64encode(figure.png).decode("ascii")
        width = _display_width(figure.png)
        width_attribute = f' width="{width}"' if width else ""
        paper = f" (cf. the paper's {figure.paper_figure})" if figure.paper_figure else ""
        out += [
            f'<figure id="{html.escape(figure.name)}">',
            f'<img alt="{html.escape(figure.title)}"{width_attribute} src="data:image/png;base64,{data}">',
            f"<figcaption><strong>Figure {k}. {html.escape(figure.title)}{paper}.</strong> "
            f'{_inline(figure.caption)} <span class="note">File: <code>figures/{html.escape(figure.name)}.png</code>'
            + (f" (plotted numbers: <code>figures/{html.escape(figure.name)}.csv</code>)" if figure.data else "")
            + ".</span></figcaption>",
            "</figure>",
        ]
    if skipped:
        out.append('<h2 id="skipped">Figures not drawn</h2>')
        out.append("<ul>")
        out += [f"<li><strong>{html.escape(s.title)}</strong>: {_inline(s.reason)}.</li>" for s in skipped]
        out.append("</ul>")

    out.append('<h2 id="settings">Settings</h2>')
    if options:
        out.append("<h3>Report options</h3>")
        out.append(_value_html(dict(options)))
    for name, data in settings:
        out.append(f"<h3>Run settings (<code>{html.escape(name)}</code>)</h3>")
        out.append(_value_html(data))
    if not settings:
        out.append(
            '<p class="note">No <code>settings.json</code> or <code>run_info.json</code> beside the CSV: the run '
            "settings below are those recorded in the CSV itself.</p>"
        )
    out.append(_csv_summary(records))
    out.append("<h3>Report rendered with</h3>")
    out.append(_value_html(_environment()))
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _input_space_notes(settings: Sequence[tuple[str, Mapping]]) -> list[str]:
    """Where epsilon lives, and how each third-party model was adapted, from the run settings (if recorded)."""
    out = []
    for _, data in settings:
        evaluation = data.get("evaluation") if isinstance(data.get("evaluation"), Mapping) else {}
        space = evaluation.get("epsilon_space")
        if isinstance(space, str):
            out.append(f'<p class="note" id="epsilon-space">Where ε lives: {html.escape(space)}.</p>')
        models = data.get("models") if isinstance(data.get("models"), list) else []
        for model in models:
            adapter = model.get("adapter") if isinstance(model, Mapping) else None
            if not isinstance(adapter, Mapping):
                continue
            output = adapter.get("output") if isinstance(adapter.get("output"), Mapping) else {}
            inferer = adapter.get("inferer") if isinstance(adapter.get("inferer"), Mapping) else {}
            out.append(
                f'<p class="note">Third-party bundle <code>{html.escape(str(model.get("model")))}</code>: inputs in '
                f"the order {html.escape(', '.join(map(str, adapter.get('input_channels', []))))}, "
                f"{html.escape(str(output.get('activation')))} outputs "
                f"{html.escape(', '.join(map(str, output.get('channels', []))))}, inferer "
                f"{html.escape(str(inferer.get('class', 'none')))}; attacked and scored on its own preprocessing.</p>"
            )
    return out


# -------------------------------------------------------------------------------------------------------- writing
def _options_shown(options: ReportOptions, examples: str | os.PathLike | None) -> dict[str, object]:
    """The report options as the settings section shows them."""
    return {
        "Table 1 ε": format_eps(options.epsilon),
        "Tables 2-3 ε": ", ".join(format_eps(e) for e in options.epsilons),
        "Tables 2-3 and Dice-vs-ε attack": options.attack,
        "attack loss": options.loss or "the only one in the CSV, else soft_dice",
        "reference model": options.baseline or "each net's undefended model",
        "significance level α (after Bonferroni)": f"{options.alpha:g}",
        "example volumes": os.fspath(examples) if examples is not None else "examples/ beside the CSV",
    }


def write_report(
    csv: str | os.PathLike,
    out: str | os.PathLike,
    settings: Mapping | str | os.PathLike | None = None,
    examples: str | os.PathLike | None = None,
    options: ReportOptions | None = None,
    **values: object,
) -> Path:
    """Write the robustness report (tables, figures, ``report.html``) for a results CSV into ``out``.

    ``robustseg report results.csv --out DIR`` calls this. Everything is checked and built in memory first, then
    written all or nothing, so an error leaves ``out`` as it was.

    Args:
        csv: the results CSV of ``brats_robustness_eval`` (see :mod:`common.report.schema`).
        out: output folder (created with its parents; files of an earlier report that this one does not produce
            are left in place).
        settings: run settings to show: a mapping or JSON file; ``None`` reads ``settings.json`` /
            ``run_info.json`` beside the CSV if present.
        examples: the example-volume folder; ``None``: ``examples/`` beside the CSV if present.
        options: what to tabulate and plot (see :class:`~common.report.options.ReportOptions`): Table 1's epsilon,
            also preferred for the slice panels; the epsilons and attack of Tables 2-3 and of the Dice-vs-epsilon
            figures; the loss; the reference model(s); the significance level. ``None``: the paper's settings.
        values: option fields given as keywords instead (``epsilon=0.1``), over ``options``.

    Returns:
        The path of ``report.html``.

    Raises:
        RobustsegError: for invalid options; if the CSV is missing, lacks columns, has no rows or invalid ones; a
            table cannot be built; a settings file or an example index is invalid or names a missing or unreadable
            file; ``out`` is a file or cannot be written.
    """
    options = ReportOptions.resolve(options, **values)
    source = os.fspath(csv)
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise RobustsegError(f"out: {out_path} is a file; expected a folder for the report.")
    records = load_results(source)
    sections = load_settings(settings, source)
    if examples is not None and not Path(examples).is_dir():
        raise RobustsegError(f"examples: {examples} is not a folder; expected the examples/ folder of the evaluation.")
    example_subjects = load_examples(Path(source).parent / "examples" if examples is None else examples)
    tables = build_tables(records, options, source)
    figures, skipped = build_figures(records, example_subjects, options, source=source)
    page = render_report(records, tables, figures, skipped, sections, source, _options_shown(options, examples))

    files: dict[str, str | bytes] = dict(table_files(tables))
    for figure in figures:
        files[f"figures/{figure.name}.png"] = figure.png
        if figure.data:
            files[f"figures/{figure.name}.csv"] = figure.to_csv()
    files["report.html"] = page
    write_files(out_path, files, "report")
    return out_path / "report.html"
