"""The HTML report of a generic task's evaluation (:mod:`common.engines.class_evaluation`): tables and a Dice-vs-epsilon
figure per model, the task, the bundles and where epsilon lives.

Example::

    write_class_report("runs/spleen/results", "runs/spleen/report")
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.data.task import ClassTask, score_columns
from common.engines.class_evaluation import class_tables
from common.errors import RobustsegError
from common.report.html import _CSS, _table_html
from common.utils.files import write_atomic

__all__ = ["write_class_report"]


def _figure(rows: Sequence[Mapping[str, Any]], model: str) -> bytes:
    """Mean Dice over the subjects vs epsilon, one line per attack and loss and one for the worst case (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = [float(r["dice_mean"]) for r in rows if r["model"] == model and r["threat"] == "clean"]
    lines: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if row["model"] != model or row["threat"] == "clean":
            continue
        name = "worst case" if row["threat"] == "worst-case" else f"{row['attack']} ({row['loss']})"
        lines.setdefault(name, {}).setdefault(float(row["epsilon"]), []).append(float(row["dice_mean"]))
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=100)
    base = sum(clean) / len(clean) if clean else None
    for name, points in lines.items():
        eps = sorted(points)
        means = [sum(points[e]) / len(points[e]) for e in eps]
        if base is not None:
            eps, means = [0.0, *eps], [base, *means]
        style = {"color": "black", "linewidth": 2.2} if name == "worst case" else {"linewidth": 1.2}
        ax.plot(eps, means, marker="o", markersize=3, label=name, **style)
    ax.set_xlabel("epsilon (relative L-inf radius)")
    ax.set_ylabel("mean Dice over classes")
    ax.set_ylim(0, 1.02)
    ax.set_title(model, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_class_report(results_dir: str | os.PathLike, report_dir: str | os.PathLike) -> Path:
    """Write ``report.html`` (and each figure as PNG) for the evaluation in ``results_dir``.

    Args:
        results_dir: the evaluation's folder (``results.csv``, ``settings.json``).
        report_dir: where ``report.html`` goes.

    Returns:
        The path of ``report.html``.

    Raises:
        RobustsegError: ``results.csv`` or ``settings.json`` missing or unreadable, or holding no rows.
    """
    results_dir, report_dir = Path(results_dir), Path(report_dir)
    try:
        settings = json.loads((results_dir / "settings.json").read_text())
        rows = list(csv.DictReader(io.StringIO((results_dir / "results.csv").read_text())))
        task = ClassTask(tuple(settings["task"]["classes"]), settings["task"]["background"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RobustsegError(f"{results_dir}: no readable results.csv and settings.json of a generic task's "
                             f"evaluation ({type(exc).__name__}: {exc}).") from None  # fmt: skip
    if not rows:
        raise RobustsegError(f"{results_dir / 'results.csv'}: no rows to report.")
    models = list(dict.fromkeys(r["model"] for r in rows))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>robustseg: robustness of a segmentation bundle</title>", f"<style>{_CSS}</style>", "</head><body>",
        "<h1>Robustness of " + html.escape(", ".join(models)) + "</h1>",
        "<p>Task: classes " + html.escape(", ".join(task.names)) + "; scored per class (Dice, both masks empty = 1): "
        + html.escape(", ".join(task.score_names)) + ". Test subjects from <code>"
        + html.escape(str(settings.get("datalist", ""))) + "</code>.</p>",
        "<p>Where ε lives: " + html.escape(str(settings.get("evaluation", {}).get("epsilon_space", ""))) + ". The "
        "<code>linf</code> column of <code>results.csv</code> holds each perturbation in the input's own units.</p>",
    ]  # fmt: skip
    for model in settings.get("models", []):
        adapter = model.get("adapter") or {}
        inferer = (adapter.get("inferer") or {}).get("class", "none")
        parts.append(f"<p>Model <code>{html.escape(str(model.get('model')))}</code>: third-party bundle, its own "
                     f"preprocessing and inferer ({html.escape(str(inferer))}); weights SHA-256 "
                     f"<code>{html.escape(str(model.get('weights_sha256', ''))[:16])}</code>…; its configs ran code "
                     "when parsed (evaluate only bundles you trust).</p>")  # fmt: skip
    report_dir.mkdir(parents=True, exist_ok=True)
    for table in class_tables(rows, score_columns(task), task):
        parts.append(_table_html(table))
    for k, model in enumerate(models):
        png = _figure(rows, model)
        write_atomic(report_dir / f"dice_vs_epsilon_{k}.png", png)
        parts.append(f'<figure><img alt="Dice vs epsilon, {html.escape(model)}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     f"<figcaption>Mean Dice over the classes and subjects vs epsilon, {html.escape(model)}: each "
                     "attack, and the per-subject worst case over them (black).</figcaption></figure>")  # fmt: skip
    parts.append("</body></html>")
    return write_atomic(report_dir / "report.html", "\n".join(parts))
