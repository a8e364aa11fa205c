"""The certification section: certified Dice (a lower bound) against the attacked Dice (an upper bound) of each
Gaussian-smoothed model, per L2 radius.

For one model, smoothing level ``sigma`` and radius ``r`` (rows of :mod:`common.engines.certification`):

* **certified** -- the ``certified`` rows: per subject, the Dice of WT, TC and ET that the SegCertify certificate
  guarantees, with probability ``1 - alpha``, under every L2 perturbation of norm ``<= r`` of the smoothed segmenter's
  input (non-certified voxels scored as wrong), and the fraction of voxels not certified;
* **attacked** -- the ``smoothed`` rows: per subject, the lowest mean Dice (WT, TC, ET) of the smoothed segmenter's
  prediction over the L2 attacks with a radius ``<= r`` and the clean input (which lies in every ball): the
  per-subject worst case, an upper bound that a stronger attack may lower.

What lies between the two is unknown: the smoothed segmenter's true robust Dice is somewhere in the band. The table
gives both per region (mean +- sd over subjects), the abstained fraction, the gap between them in mean Dice, and the
number of subjects whose attacked Dice fell below the certified one: up to ``alpha`` of the certificates may be wrong,
and the majority vote that scores an attacked input is itself a Monte Carlo estimate, so a rare small violation near a
decision boundary is expected; many would point to a bug. The figure draws both curves per region.

Example::

    from common.report import load_results
    table = build_certification_table(load_results("results.csv"), "3d")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.errors import RobustsegError
from common.metrics.stats import mean_sd
from common.report.figure import OKABE_ITO, REGION_STYLES, ReportFigure, data_point, new_figure
from common.report.labels import NET_NAMES, defence_sort_key, file_stem, format_eps, model_label
from common.report.schema import DICE_COLUMNS, Record
from common.report.selection import model_identities
from common.report.table import Table, format_mean_sd
from common.utils.enums import Net, Threat

__all__ = ["CertificationCurve", "build_certification_table", "certification_curves", "certification_figures"]

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


@dataclass
class CertificationCurve:
    """The certified and attacked Dice of one model at one smoothing level.

    Attributes:
        model: the model bundle.
        sigma: the smoothing noise level.
        certified: radius -> subject -> certified Dice ``[WT, TC, ET]``.
        abstained: radius -> subject -> fraction of voxels not certified.
        smoothed: subject -> ``(radius, [WT, TC, ET], attack)`` of every ``smoothed`` row (the clean one at radius 0).
        settings: ``n_samples`` and ``alpha`` of the certificates (the values present, sorted).
    """

    model: str
    sigma: float
    certified: dict[float, dict[str, list[float]]] = field(default_factory=dict)
    abstained: dict[float, dict[str, float]] = field(default_factory=dict)
    smoothed: dict[str, list[tuple[float, list[float], str]]] = field(default_factory=dict)
    settings: dict[str, list] = field(default_factory=dict)

    @property
    def radii(self) -> list[float]:
        """Every radius with a certified or a smoothed row."""
        return sorted(set(self.certified) | {r for rows in self.smoothed.values() for r, _, _ in rows})

    def attacked(self, radius: float) -> dict[str, tuple[list[float], str]]:
        """subject -> (its lowest-mean-Dice smoothed scores at a radius <= ``radius``, the attack that gave them)."""
        out = {}
        for subject, rows in self.smoothed.items():
            inside = [(dice, attack) for r, dice, attack in rows if r <= radius]
            if inside:
                out[subject] = min(inside, key=lambda item: sum(item[0]) / 3)  # min keeps the first of equal values
        return out


def _dice(row: Record) -> list[float]:
    return [float(row[c]) for c in DICE_COLUMNS]  # type: ignore[arg-type]


def certification_curves(records: Sequence[Record], net: str, source: str = "results") -> list[CertificationCurve]:
    """The curves of every (model, sigma) of ``net`` with ``certified`` or ``smoothed`` rows, in defence order.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        source: name of the CSV, for error messages.

    Returns:
        The curves.

    Raises:
        RobustsegError: if a subject has two certified rows at one (model, sigma, radius) or two smoothed rows of one
            attack there.
    """
    info = model_identities(records, net)
    curves: dict[tuple[str, float], CertificationCurve] = {}
    seen: set[tuple] = set()
    for row in records:
        if row["model"] not in info or row["threat"] not in (Threat.CERTIFIED, Threat.SMOOTHED):
            continue
        model, sigma, radius = str(row["model"]), float(row["sigma"]), float(row["radius"])  # type: ignore[arg-type]
        subject = str(row["subject"])
        cell = (model, sigma, radius, subject, row["threat"], row["attack"], row["loss"])
        if cell in seen:
            raise RobustsegError(
                f"{source}: subject {subject} has several {row['threat']} rows of {model} {row['attack']} at sigma "
                f"{sigma:g}, radius {radius:g}; expected one (runs with other settings mixed in one CSV?)."
            )
        seen.add(cell)
        curve = curves.setdefault((model, sigma), CertificationCurve(model, sigma))
        if row["threat"] == Threat.CERTIFIED:
            curve.certified.setdefault(radius, {})[subject] = _dice(row)
            curve.abstained.setdefault(radius, {})[subject] = float(row["abstain_fraction"])  # type: ignore[arg-type]
            for name in ("n_samples", "alpha"):
                values = curve.settings.setdefault(name, [])
                if row[name] not in values:
                    values.append(row[name])
                    values.sort()
        else:
            attack = str(row["attack"]) + (f" ({row['loss']})" if row["loss"] else "")
            curve.smoothed.setdefault(subject, []).append((radius, _dice(row), attack))
    return sorted(curves.values(), key=lambda c: (defence_sort_key(*info[c.model][1:], c.model), c.sigma))


def _summary(values: Sequence[float]) -> tuple[float, float]:
    mean, sd = mean_sd(values)
    return mean, sd if math.isfinite(sd) else 0.0


def _cells(per_subject: dict[str, list[float]]) -> list[str]:
    columns = list(zip(*per_subject.values()))
    return [format_mean_sd(*_summary(c), 3) for c in columns] if columns else ["–"] * 3


def build_certification_table(records: Sequence[Record], net: str, source: str = "results") -> Table | None:
    """The certification table of ``net``: per model, sigma and radius, certified vs attacked Dice.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.
        source: name of the CSV, for error messages.

    Returns:
        The table ``certification_<net>``, or ``None`` when the net has no certification rows.

    Raises:
        RobustsegError: see :func:`certification_curves`.
    """
    curves = certification_curves(records, net, source)
    if not curves:
        return None
    info = model_identities(records, net)
    unique = len({model_label(c.model, info) for c in curves}) == len({c.model for c in curves})
    header = ["Model", "σ", "L2 radius", *(f"certified {r}" for r in REGIONS), "abstained",
              *(f"attacked {r}" for r in REGIONS), "gap (mean Dice)", "n"]  # fmt: skip
    csv_header = ["model", "sigma", "radius", "region", "certified_mean", "certified_sd", "abstain_fraction",
                  "attacked_mean", "attacked_sd", "n_certified", "n_attacked"]  # fmt: skip
    rows: list[list[str]] = []
    csv_rows: list[list[object]] = []
    violations: list[str] = []
    for curve in curves:
        for radius in curve.radii:
            certified = curve.certified.get(radius, {})
            attacked = {s: dice for s, (dice, _) in curve.attacked(radius).items()}
            abstained = list(curve.abstained.get(radius, {}).values())
            both = sorted(set(certified) & set(attacked))
            gap = "–"
            if both:
                gaps = [sum(attacked[s]) / 3 - sum(certified[s]) / 3 for s in both]
                gap = f"{float(np.mean(gaps)):+.3f}"
                below = [s for s, g in zip(both, gaps, strict=True) if g < -1e-9]
                if below:
                    violations.append(f"{curve.model} σ = {curve.sigma:g}, r = {radius:g}: {', '.join(below)}")
            n = max(len(certified), len(attacked))
            rows.append([model_label(curve.model, info, unique), f"{curve.sigma:g}", format_eps(radius),
                         *_cells(certified), f"{100 * float(np.mean(abstained)):.1f} %" if abstained else "–",
                         *_cells(attacked), gap, str(n)])  # fmt: skip
            for k, region in enumerate(REGIONS):
                c = [d[k] for d in certified.values()]
                a = [d[k] for d in attacked.values()]
                cm, cs = _summary(c) if c else (None, None)
                am, asd = _summary(a) if a else (None, None)
                share = float(np.mean(abstained)) if abstained else None
                csv_rows.append([curve.model, curve.sigma, radius, region, cm, cs, share, am, asd, len(c), len(a)])
    settings = "; ".join(
        f"{c.model} σ = {c.sigma:g}: n = {', '.join(map(str, c.settings.get('n_samples', [])))}, "
        f"α = {', '.join(f'{a:g}' for a in c.settings.get('alpha', []))}"
        for c in curves if c.certified
    )  # fmt: skip
    caption = (
        f"Certified vs attacked Dice of the Gaussian-smoothed {NET_NAMES[net]} models (randomized smoothing, "
        "SegCertify; mean ± sd over subjects). *Certified*: the Dice the per-voxel certificate guarantees, with "
        "probability 1 − α per subject, under every input perturbation of L2 norm ≤ the radius (input units over "
        "all 4 × D × H × W values; voxels not certified count as wrong). *Attacked*: the smoothed segmenter's Dice "
        "on the per-subject worst of the L2 attacks on it (SmoothAdv surrogate) with radius ≤ r and the clean "
        "input, an upper bound. The true robust Dice lies between; *gap* is attacked − certified in mean Dice "
        f"(WT, TC, ET). Certificates: {settings or 'none'}."
    )
    notes = []
    if violations:
        notes.append(
            "Attacked below certified (expected only rarely: α of the certificates may be wrong and the attacked "
            "prediction is a Monte Carlo majority vote): " + "; ".join(violations) + "."
        )
    title = f"Certified vs attacked Dice ({NET_NAMES[net]}, randomized smoothing)"
    return Table(file_stem(f"certification_{net}"), title, caption, header, rows, notes, csv_header=csv_header,
                 csv_rows=csv_rows)  # fmt: skip


def _certification_figure(records: Sequence[Record], net: str, source: str) -> ReportFigure | None:
    curves = certification_curves(records, net, source)
    if not curves:
        return None
    info = model_identities(records, net)
    unique = len({model_label(c.model, info) for c in curves}) == len({c.model for c in curves})
    figure = new_figure(3.3 * len(REGIONS) + 0.4, 2.7 * len(curves) + 0.9)
    axes = np.atleast_2d(figure.subplots(len(curves), len(REGIONS), squeeze=False, sharex="row", sharey=True))
    data: list[dict] = []
    for row_axes, curve in zip(axes, curves, strict=True):
        label = model_label(curve.model, info, unique)
        if f"{curve.sigma:g}" not in label:  # the gaussaug label names its training sigma, not always this one
            label += f", smoothed at σ = {curve.sigma:g}"
        certified_radii = sorted(curve.certified)
        attacked_radii = [r for r in curve.radii if curve.attacked(r)]
        for k, (ax, region) in enumerate(zip(row_axes, REGIONS, strict=True)):
            colour, marker = REGION_STYLES[region]
            lower = [_summary([d[k] for d in curve.certified[r].values()]) for r in certified_radii]
            upper = [_summary([d[k] for d, _ in curve.attacked(r).values()]) for r in attacked_radii]
            # between measured radii each bound is a step: a certificate at r covers every smaller radius (the
            # lower bound on (r_i, r_i+1] is the value at r_i+1), an attack inside r_i is inside every larger ball
            # (the upper bound on [r_i, r_i+1) is the value at r_i)
            if lower:
                ax.plot(certified_radii, [m for m, _ in lower], color=colour, marker=marker, linewidth=1.8,
                        drawstyle="steps-pre", label="certified (lower bound)")  # fmt: skip
            if upper:
                ax.plot(attacked_radii, [m for m, _ in upper], color=OKABE_ITO["black"], marker="x", linestyle="--",
                        linewidth=1.4, drawstyle="steps-post", label="attacked (upper bound)")  # fmt: skip
            if lower and upper:
                start, stop = max(certified_radii[0], attacked_radii[0]), min(certified_radii[-1], attacked_radii[-1])
                grid = np.linspace(start, stop, 400)
                below = np.array([m for m, _ in lower])[np.searchsorted(certified_radii, grid, side="left")]
                above = np.array([m for m, _ in upper])[np.searchsorted(attacked_radii, grid, side="right") - 1]
                ax.fill_between(grid, below, above, color=colour, alpha=0.15, linewidth=0, label="unknown")
            panel = f"{label} / {region}"
            n_c = {r: len(curve.certified[r]) for r in certified_radii}
            data += [data_point(panel, "certified", r, m, s, "sd", n_c[r])
                     for r, (m, s) in zip(certified_radii, lower, strict=True)]  # fmt: skip
            data += [data_point(panel, "attacked", r, m, s, "sd", len(curve.attacked(r)))
                     for r, (m, s) in zip(attacked_radii, upper, strict=True)]  # fmt: skip
            ax.set_title(region, fontsize=11, loc="left")
            ax.set_xlabel("L2 radius (input units)")
            ax.set_ylim(-0.02, 1.02)
        if len(curves) == 1:
            row_axes[0].set_ylabel("Dice")
            figure.suptitle(label, fontsize=12)
        else:  # one row per model and sigma: the row's model beside it
            row_axes[0].set_ylabel(f"{label}\nDice", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    caption = (
        f"Certified Dice (coloured, a lower bound holding with probability 1 − α) and attacked Dice (black dashed, "
        f"the per-subject worst of the L2 attacks on the smoothed segmenter and the clean input, an upper bound) of "
        f"the Gaussian-smoothed {NET_NAMES[net]} models vs the L2 radius, mean over subjects per region; the shaded "
        "band is what neither the certificate nor the attacks settle. Between the measured radii both are drawn as the "
        "steps they prove (a certificate at r covers every smaller radius; an attack inside r lies in every larger "
        "ball). The sample sd per point is in the figure data."
    )
    title = f"Certified vs attacked Dice vs L2 radius ({NET_NAMES[net]})"
    return ReportFigure.draw(file_stem(f"certification_{net}"), title, caption, figure, data=tuple(data))


def certification_figures(records: Sequence[Record], source: str = "results") -> list[ReportFigure]:
    """The certified-vs-attacked figure of every net with certification rows.

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        source: name of the CSV, for error messages.

    Returns:
        The figures ``certification_<net>``.
    """
    return [f for net in Net if (f := _certification_figure(records, net, source)) is not None]

