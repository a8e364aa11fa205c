"""``robustseg certify``: SegCertify certificates (:mod:`common.certify`) of a trained model bundle on the test split,
as rows of the robustness CSV.

Per test subject, the bundle's preprocessing (the evaluation's: the same grid and [0, 1] intensities), one
certificate of the Gaussian-smoothed network (``n0`` selection and ``n`` estimation samples, family-wise error
``alpha`` over the subject's voxels, threshold ``tau``), and one row per radius: ``threat`` ``certified``, ``attack``
``smoothing``, the certified Dice of WT, TC and ET in ``dice_wt``/``dice_tc``/``dice_et``
(:func:`~common.certify.certified_dice`), and ``sigma``, ``radius``, ``n_samples``, ``alpha`` and
``abstain_fraction``. The rows score the clean input's certificate, so ``epsilon``, ``steps``, ``iteration``,
``linf`` and ``l2`` are 0. ``seconds`` is the subject's certification time (shared by its rows).

Radii and ``sigma`` are L2 norms in the network's input units: every channel is min-max normalised to [0, 1], so
``sigma = 0.25`` is a quarter of the intensity range and a radius of 0.5 is a perturbation whose L2 norm over all
``4 x D x H x W`` input values is half a channel's range.

Cost: ``n0 + n`` forward passes per subject, in batches of ``batch_size``; the statistics add well under a second.
The demo's UNet3D (base 8) at 48^3 takes about 20-25 s per subject at ``n0 = 10``, ``n = 100`` on one CPU thread
(``benchmarks/bench_certify.py``).

Rows are appended to ``<out>/results.csv`` as each subject finishes; a rerun skips the subjects whose rows are there
(same settings; other settings stop with an error), so an interrupted run resumes. ``<out>/certify_settings.json``
records the model, its weights' hash and the settings.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.certify import NON_CERTIFIED, GaussianSmoothing, certified_dice, certify
from common.certify.segcertify import _check_settings
from common.engines.inferers import AutocastInferer
from common.engines.model_bundle import load_model_bundle
from common.engines.results_io import RESULTS_NAME, _read_rows, _row_key, _RowWriter, package_versions
from common.engines.subject_batch import load_subjects, subject_id, test_entries
from common.errors import RobustsegError
from common.utils.enums import Threat
from common.utils.files import write_atomic
from common.utils.validation import check_device, check_int, check_number, look_up_option

__all__ = ["DEFAULT_RADII", "SETTINGS_FILE", "run_certification"]

DEFAULT_RADII: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5)
"""L2 radii (input units) of the certified-Dice rows."""
SETTINGS_FILE = "certify_settings.json"
ATTACK = "smoothing"


class _Autocast(nn.Module):
    """The network under the bundle's autocast (a module, so the smoothing can switch and restore its mode)."""

    def __init__(self, network: nn.Module, dtype: str) -> None:
        super().__init__()
        self.network = network
        self.inferer = AutocastInferer(dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.inferer(x, self.network)


def _radii(radii: Sequence[float] | float) -> list[float]:
    values = [radii] if isinstance(radii, (int, float)) and not isinstance(radii, bool) else radii
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise RobustsegError(f"radii must be a non-empty list of numbers >= 0, got {radii!r}.")
    return sorted({check_number("radii: radius", r, minimum=0, hint="an L2 radius in input units") for r in values})


def _datalist(data: str | os.PathLike) -> Path:
    path = Path(data)
    if path.is_dir():
        path = path / "datalist.json"
    if not path.is_file():
        raise RobustsegError(
            f"data: {path} not found; expected a datalist JSON or a folder holding datalist.json "
            "(`robustseg data datalist` or `robustseg data synth` write one)."
        )
    return path.resolve()


def subject_seed(seed: int, subject: str) -> int:
    """The noise seed of one subject: ``seed`` mixed with the subject id, so a subject's certificate does not depend
    on which subjects ran before it (a resumed run gives the rows a full run gives)."""
    return (seed * 1_000_003 + zlib.crc32(subject.encode())) % 2**63


def run_certification(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    sigma: float = 0.25,
    n: int = 100,
    n0: int = 10,
    alpha: float = 0.001,
    tau: float = 0.75,
    radii: Sequence[float] | float = DEFAULT_RADII,
    correction: str = "holm",
    non_certified: str = "worst_case",
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    config_files: Sequence[str] = ("configs/inference.json",),
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Path, dict[float, list[float]]]:
    """Certify a model bundle on the test split of a datalist and append the certified-Dice rows.

    Args:
        bundle: the trained model bundle (folder or name).
        data: the datalist JSON, or a folder holding ``datalist.json``; its ``testing`` subjects are certified.
        out: the output folder (``results.csv``, ``certify_settings.json``).
        sigma: the smoothing noise level, > 0, in input units (see the module).
        n: estimation samples per subject.
        n0: selection samples per subject.
        alpha: family-wise error per subject, in (0, 1).
        tau: the certification threshold in [0.5, 1).
        radii: the L2 radii of the rows (input units), each >= 0.
        correction: ``"holm"`` (SegCertify's) or ``"bonferroni"``.
        non_certified: how certified Dice scores a voxel not certified at the radius: ``"worst_case"`` or
            ``"abstain"`` (:mod:`common.certify.certified_dice`).
        batch_size: noisy copies per forward pass.
        seed: the noise seed (mixed with each subject's id, :func:`subject_seed`).
        device: where the network runs, e.g. ``"cpu"`` or ``"cuda"``.
        config_files: the bundle's config files (add ``configs/quick.json`` for a quick-trained bundle).
        overrides: config ids -> values set last (as :func:`~common.engines.model_bundle.load_model_bundle`).

    Returns:
        The results CSV and, per radius, the mean certified Dice (WT, TC, ET) over the subjects of this run's rows.

    Raises:
        RobustsegError: for a bad setting, bundle or datalist (before anything is written), or an ``out`` holding
            rows of other settings.
    """
    smoothing_checks = GaussianSmoothing(nn.Identity(), sigma, batch_size)  # checks sigma and batch_size now
    n0, n, alpha, tau, correction = _check_settings(n0, n, alpha, tau, correction)
    radii = _radii(radii)
    non_certified = look_up_option("non_certified", non_certified, NON_CERTIFIED)
    seed = check_int("seed", seed)
    device = check_device("device", device)
    datalist = _datalist(data)
    entries = test_entries(datalist)
    model = load_model_bundle(bundle, config_files, device, overrides)
    network: nn.Module = _Autocast(model.network, model.amp_dtype) if model.amp else model.network
    smoothing = GaussianSmoothing(network, smoothing_checks.sigma, smoothing_checks.batch_size)
    config = (
        f"SegCertify(sigma={smoothing.sigma!r}, n0={n0}, n={n}, alpha={alpha!r}, tau={tau!r}, "
        f"correction={correction!r}, non_certified={non_certified!r}, seed={seed})"
    )

    out = Path(out)
    results = out / RESULTS_NAME
    done: dict[tuple, str] = {}
    for row in _read_rows(results):
        done[_row_key(row)] = row["attack_config"]
    settings = {
        "command": "certify",
        "model": model.settings(),
        "data": {"datalist": str(datalist), "preprocessing_hash": model.preprocessing_hash},
        "certify": {"sigma": smoothing.sigma, "n0": n0, "n": n, "alpha": alpha, "tau": tau, "radii": radii,
                    "correction": correction, "non_certified": non_certified, "batch_size": smoothing.batch_size,
                    "seed": seed, "device": str(device), "attack_config": config},
        "versions": package_versions(),
    }  # fmt: skip

    def key(subject: str, radius: float) -> tuple:
        return _row_key({"model": model.name, "subject": subject, "attack": ATTACK, "threat": Threat.CERTIFIED,
                         "source_model": "", "epsilon": 0.0, "iteration": 0, "loss": "", "severity": "",
                         "sigma": smoothing.sigma, "radius": radius})  # fmt: skip

    for entry in entries:
        for radius in radii:
            earlier = done.get(key(subject_id(entry), radius))
            if earlier is not None and earlier != config:
                raise RobustsegError(
                    f"{results}: holds certified rows of {model.name} made by {earlier}, but this run configures "
                    f"{config}; use another out folder or delete the old results."
                )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=2))
    means: dict[float, list[list[float]]] = {r: [] for r in radii}
    writer = _RowWriter(results)
    try:
        for entry in entries:
            subject = subject_id(entry)
            if all(key(subject, r) in done for r in radii):
                continue
            (batch,) = load_subjects([entry], model.preprocessing, torch.device(device))
            start = time.perf_counter()
            certificate = certify(smoothing, batch.images, n0, n, alpha, tau, correction, subject_seed(seed, subject))
            rows = []
            for radius in radii:
                dice = certified_dice(certificate, batch.labels, radius, non_certified=non_certified)[0].tolist()
                means[radius].append(dice)
                rows.append({
                    **model.identity, "subject": subject, "attack": ATTACK, "threat": str(Threat.CERTIFIED),
                    "source_model": None, "attack_config": config, "loss": None, "epsilon": 0.0, "steps": 0,
                    "iteration": 0, "dice_wt": dice[0], "dice_tc": dice[1], "dice_et": dice[2], "psnr": None,
                    "ssim": None, "rmse": None, "linf": 0.0, "l2": 0.0, "zero_grad_fraction": None, "seconds": 0.0,
                    "sigma": smoothing.sigma, "radius": radius, "n_samples": n, "alpha": alpha,
                    "abstain_fraction": float(certificate.abstain_fraction(radius)[0]),
                })  # fmt: skip
            seconds = time.perf_counter() - start
            for row in rows:
                row["seconds"] = seconds
            writer.write(rows)
    finally:
        writer.close()
    summary = {r: [sum(col) / len(col) for col in zip(*v)] if v else [math.nan] * 3 for r, v in means.items()}
    return results, summary
