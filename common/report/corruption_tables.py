"""The corruption tables: Dice per model, MR artifact and severity, and the artifacts' calibration (PSNR, SSIM).

From the ``corruption`` rows of the results CSV (:mod:`common.corruptions`; ``attack`` is the corruption's name,
``severity`` its level), one pair of tables per net:

* **Dice under MR artifacts**: per model and corruption, the mean over subjects of each subject's mean Dice over WT,
  TC and ET at each severity, the clean Dice beside it, and the mean drop over the severities (the clean Dice minus
  the mean of the corrupted ones; ROOD-MRI's "degradation" without its severity weights). A note lists every
  corruption whose Dice rises by more than 0.01 from one severity to the next: a calibration to look at.
* **Calibration**: per corruption and severity, the mean ± sd over subjects of the corrupted input's PSNR and SSIM
  against the clean input (the first model's rows: every model sees the same inputs). PSNR must fall with severity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.corruptions import corruption_order
from common.metrics.stats import mean_sd
from common.report.labels import defence_sort_key, model_label
from common.report.schema import Record, mean_dice
from common.report.selection import model_identities
from common.report.table import Table, format_mean_sd
from common.utils.enums import Net, Threat

__all__ = ["MONOTONE_TOLERANCE", "build_corruption_tables"]

MONOTONE_TOLERANCE = 0.01
"""The Dice rise between successive severities that the Dice table's note reports."""


def build_corruption_tables(records: Sequence[Record], net: str) -> list[Table]:
    """The Dice and calibration tables of one net's corruption rows (none without such rows).

    Args:
        records: rows from :func:`common.report.schema.load_results`.
        net: ``"3d"`` or ``"2d"``.

    Returns:
        ``[dice table, calibration table]`` (names ``corruptions_<net>`` and ``corruption_calibration_<net>``), or
        ``[]``.
    """
    rows = [r for r in records if r["threat"] == Threat.CORRUPTION and r["net"] == net]
    if not rows:
        return []
    info = model_identities(records, net)
    models = sorted({str(r["model"]) for r in rows}, key=lambda m: defence_sort_key(info[m][1], info[m][2], m))
    names = corruption_order({str(r["attack"]) for r in rows})
    severities = sorted({int(r["severity"]) for r in rows})  # type: ignore[arg-type]
    cell: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        cell.setdefault((str(r["model"]), str(r["attack"]), int(r["severity"])), []).append(mean_dice(r))  # type: ignore[arg-type]
    clean = {m: [mean_dice(r) for r in records if r["model"] == m and r["threat"] == Threat.CLEAN] for m in models}
    unique = len({model_label(m, info) for m in models}) == len(models)

    header = ["Model", "Corruption", "Clean", *(f"Severity {s}" for s in severities), "Mean drop"]
    table_rows, csv_rows, rises = [], [], []
    for m in models:
        clean_mean = float(np.mean(clean[m])) if clean[m] else float("nan")
        for name in names:
            means = [float(np.mean(cell[(m, name, s)])) if (m, name, s) in cell else float("nan") for s in severities]
            drop = clean_mean - float(np.nanmean(means))
            table_rows.append([model_label(m, info, unique), name, f"{clean_mean:.3f}", *(f"{v:.3f}" for v in means),
                               f"{drop:.3f}"])  # fmt: skip
            csv_rows += [[m, name, s, v, len(cell.get((m, name, s), []))]
                         for s, v in zip(severities, means, strict=True)]  # fmt: skip
            rises += [f"{model_label(m, info, unique)}, {name}: {a:.3f} at severity {s0} < {b:.3f} at {s1}"
                      for (s0, a), (s1, b) in zip(zip(severities, means), zip(severities[1:], means[1:]))
                      if b > a + MONOTONE_TOLERANCE]  # fmt: skip
    n = max(len(v) for v in cell.values())
    caption = (
        f"{Net(net).title}: mean Dice over WT, TC and ET per subject, mean over {n} test subjects, on the preprocessed "
        "input corrupted by each MR artifact at each severity (1 mild - 5 severe; parameters in "
        "common.corruptions.registry, seeded per subject); clean: the same model on the clean input; mean drop: "
        "clean minus the mean over the severities. Not adversarial: no gradient, no worst case."
    )
    if rises:
        notes = [f"Dice rises with severity (by more than {MONOTONE_TOLERANCE}): " + "; ".join(rises) + "."]
    else:
        notes = [f"Every model's Dice falls (within {MONOTONE_TOLERANCE}) with severity for every corruption."]
    dice = Table(f"corruptions_{net}", f"Dice under MR artifacts ({Net(net).title})", caption, header, table_rows,
                 notes, csv_header=["model", "corruption", "severity", "mean_dice", "n"],
                 csv_rows=csv_rows)  # fmt: skip

    first = [r for r in rows if r["model"] == models[0]]
    cal_rows, cal_csv = [], []
    for name in names:
        cells = []
        for s in severities:
            own = [r for r in first if r["attack"] == name and r["severity"] == s]
            psnr = [float(r["psnr"]) for r in own if r["psnr"] is not None]  # type: ignore[arg-type]
            ssim = [float(r["ssim"]) for r in own if r["ssim"] is not None]  # type: ignore[arg-type]
            if not psnr:
                cells.append("-")
                continue
            (pm, ps), (sm, _) = mean_sd(psnr), mean_sd(ssim) if ssim else (float("nan"), 0.0)
            cells.append(f"{format_mean_sd(pm, ps if np.isfinite(ps) else 0.0, 1)} dB / {sm:.3f}")
            cal_csv.append([name, s, pm, ps, sm, len(psnr)])
        cal_rows.append([name, *cells])
    calibration = Table(
        f"corruption_calibration_{net}", f"MR artifact calibration ({Net(net).title})",
        f"{Net(net).title}: PSNR (mean ± sd over subjects) / mean SSIM of each corrupted input against the clean "
        "input, per corruption and severity; PSNR should fall with severity.",
        ["Corruption", *(f"Severity {s}" for s in severities)], cal_rows,
        csv_header=["corruption", "severity", "psnr_mean", "psnr_sd", "ssim_mean", "n"], csv_rows=cal_csv,
    )  # fmt: skip
    return [dice, calibration]
