"""Certified and attacked Dice of the Gaussian-smoothed segmenter, as rows of the robustness CSV: ``robustseg
certify`` and the ``certified`` threat of ``brats_robustness_eval``.

Per test subject (the bundle's preprocessing: the evaluation's grid and [0, 1] intensities) and model,
:class:`Certifier` writes

* one SegCertify certificate (:mod:`common.certify`) of the smoothed network (``n0`` selection and ``n`` estimation
  samples, family-wise error ``alpha`` over the subject's voxels, threshold ``tau``) and one row per radius:
  ``threat`` ``certified``, ``attack`` ``smoothing``, the certified Dice of WT, TC and ET in
  ``dice_wt``/``dice_tc``/``dice_et`` (:func:`~common.certify.certified_dice`), and ``sigma``, ``radius``,
  ``n_samples``, ``alpha`` and ``abstain_fraction``; ``epsilon``, ``steps``, ``iteration``, ``linf`` and ``l2`` are 0
  (the certificate is of the clean input);
* the empirical side (unless ``attacks`` is empty): ``threat`` ``smoothed`` rows, the smoothed segmenter's own
  prediction (a majority vote over ``n`` fresh noise samples, :func:`~common.certify.adaptive.smoothed_prediction`)
  scored on the clean input (``attack`` ``clean``, radius 0) and, at every radius > 0, on the result of each L2 attack
  of ``attacks`` (PGD/APGD with ``norm="l2"``, ``epsilon`` = the radius in absolute input units) run on
  :class:`~common.certify.adaptive.SmoothedLogits`, the differentiable Monte Carlo surrogate of the smoothed soft
  classifier (SmoothAdv, Salman et al. 2019), with ``eot_samples`` noise draws per step. ``epsilon`` and ``radius``
  hold the radius, ``linf``/``l2`` the perturbation's norms.

The certified Dice at radius ``r`` is a lower bound (probability ``1 - alpha``) on the smoothed segmenter's Dice under
every L2 perturbation of norm ``<= r``; the worst ``smoothed`` row at ``r`` (over the attacks and the clean input,
which lies in every ball) is an upper bound that a stronger attack may lower. The report shows both curves
(:mod:`common.report.certification`); what lies between them is unknown. Both sides use ``"worst_case"`` scoring of
non-certified voxels by default, the one under which the lower bound is a bound; a Monte Carlo majority vote near a
voxel's decision boundary can still put a single attacked Dice marginally below it.

Radii and ``sigma`` are L2 norms in the network's input units: every channel is min-max normalised to [0, 1], so
``sigma = 0.25`` is a quarter of the intensity range and a radius of 0.5 is a perturbation whose L2 norm over all
``4 x D x H x W`` input values is half a channel's range (an L-inf ball of 0.05 around a 4 x 48^3 input reaches an L2
norm of 33).

Cost per subject: ``n0 + n`` forward passes for the certificate, ``n`` more per scored input, and per attack and
radius ``steps x eot_samples`` forward and backward passes. The demo's UNet3D (base 8) at 48^3 takes about 20-25 s
per subject for the certificate at ``n0 = 10``, ``n = 100`` on one CPU thread (``benchmarks/bench_certify.py``).

``robustseg certify`` (:func:`run_certification`) appends the rows to ``<out>/results.csv`` as each subject finishes;
a rerun skips the subjects whose rows are there (same settings; other settings stop with an error), so an interrupted
run resumes. ``<out>/certify_settings.json`` records the model, its weights' hash and the settings.
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
from tqdm.auto import tqdm

from common.attacks import make_attack
from common.certify import NON_CERTIFIED, GaussianSmoothing, certified_dice, certify
from common.certify.adaptive import SmoothedLogits, smoothed_prediction
from common.certify.segcertify import _check_settings
from common.engines.attack_jobs import _loss_name
from common.engines.inferers import AutocastInferer
from common.engines.model_bundle import ModelBundle, load_model_bundle
from common.engines.results_io import RESULTS_NAME, Key, _read_rows, _row_key, _RowWriter, package_versions
from common.engines.subject_batch import load_subjects, subject_id, test_entries
from common.errors import RobustsegError
from common.metrics import region_dice
from common.utils.enums import Threat
from common.utils.files import write_atomic
from common.utils.lock import locks_folder
from common.utils.validation import check_device, check_int, check_number, look_up_option

__all__ = [
    "CERTIFIER_SETTINGS",
    "DEFAULT_RADII",
    "DEFAULT_SMOOTHED_ATTACKS",
    "SETTINGS_FILE",
    "Certifier",
    "run_certification",
    "subject_seed",
]

DEFAULT_RADII: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5)
"""L2 radii (input units) of the certified-Dice rows."""
DEFAULT_SMOOTHED_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "APGD", "loss": "soft_dice", "steps": 10},
    {"name": "PGD", "loss": "masked_ce", "steps": 10},
)
"""The L2 attacks on the smoothed segmenter at each radius > 0 (``norm``, ``epsilon`` and ``relative`` are set)."""
SETTINGS_FILE = "certify_settings.json"
CERTIFIER_SETTINGS: tuple[str, ...] = (
    "sigma", "n", "n0", "alpha", "tau", "radii", "correction", "non_certified", "batch_size", "seed", "attacks",
    "eot_samples",
)  # fmt: skip
"""The settings of :class:`Certifier` besides the model (the evaluation's ``certification`` mapping takes these)."""
ATTACK = "smoothing"
CLEAN_ATTACK = "clean"
"""The ``attack`` of the ``smoothed`` row that scores the clean input."""


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


def _attack_specs(attacks: Sequence[Mapping[str, Any] | str] | None) -> list[dict[str, Any]]:
    if attacks is None:
        return []
    if isinstance(attacks, (str, bytes, Mapping)) or not isinstance(attacks, Sequence):
        raise RobustsegError(
            f"attacks must be a list of L2 attack specs, e.g. [{{'name': 'APGD', 'loss': 'soft_dice'}}], "
            f"got {attacks!r}."
        )
    specs = []
    for spec in attacks:
        spec = {"name": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, Mapping):
            raise RobustsegError(f"attacks: each attack must be a spec {{'name': ..., settings}}, got {spec!r}.")
        fixed = sorted(k for k in ("epsilon", "norm", "relative") if k in spec)
        if fixed:
            raise RobustsegError(
                f"attacks: {dict(spec)} sets {fixed}; the smoothed attacks are L2 attacks at each radius in absolute "
                "input units, so these are set for you."
            )
        specs.append(dict(spec))
    names = [(s["name"].lower() if isinstance(s.get("name"), str) else s.get("name"), s.get("loss", "soft_dice"))
             for s in specs]  # fmt: skip
    if len(set(names)) != len(names):
        raise RobustsegError(f"attacks: two attacks with the same name and loss would write the same rows: {names}.")
    return specs


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


class Certifier:
    """Certified Dice and attacked Dice of one model's Gaussian-smoothed segmenter, one subject at a time.

    Args:
        model: the loaded model bundle.
        sigma: the smoothing noise level, > 0, in input units (see the module).
        n: estimation samples per subject (and per scored input of the ``smoothed`` rows).
        n0: selection samples per subject.
        alpha: family-wise error per subject, in (0, 1).
        tau: the certification threshold in [0.5, 1).
        radii: the L2 radii of the rows (input units), each >= 0.
        correction: ``"holm"`` (SegCertify's) or ``"bonferroni"``.
        non_certified: how certified Dice scores a voxel not certified at the radius: ``"worst_case"`` or
            ``"abstain"`` (:mod:`common.certify.certified_dice`).
        batch_size: noisy copies per forward pass of the smoothing.
        seed: the noise seed (mixed with each subject's id, :func:`subject_seed`).
        attacks: the L2 attacks on the smoothed segmenter (:func:`~common.attacks.make_attack` specs without
            ``epsilon``, ``norm`` and ``relative``); ``None`` or ``[]``: certificates only.
        eot_samples: noise draws per attack step (:class:`~common.certify.adaptive.SmoothedLogits`).

    Raises:
        RobustsegError: for a bad setting (before anything runs).
    """

    def __init__(
        self,
        model: ModelBundle,
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
        attacks: Sequence[Mapping[str, Any] | str] | None = DEFAULT_SMOOTHED_ATTACKS,
        eot_samples: int = 4,
    ) -> None:
        self.model = model
        network: nn.Module = _Autocast(model.network, model.amp_dtype) if model.amp else model.network
        self.smoothing = GaussianSmoothing(network, sigma, batch_size)
        self.n0, self.n, self.alpha, self.tau, self.correction = _check_settings(n0, n, alpha, tau, correction)
        self.radii = _radii(radii)
        self.non_certified = look_up_option("non_certified", non_certified, NON_CERTIFIED)
        self.seed = check_int("seed", seed)
        self.eot_samples = check_int("eot_samples", eot_samples, minimum=1, hint="noise draws per attack step")
        self.attack_specs = _attack_specs(attacks)
        # every attack at every radius > 0, built now so a bad spec stops before any work
        self.attacks = {
            (k, r): make_attack(spec, epsilon=r, norm="l2", relative=False)
            for k, spec in enumerate(self.attack_specs) for r in self.radii if r > 0
        }  # fmt: skip
        self.config = (
            f"SegCertify(sigma={self.sigma!r}, n0={self.n0}, n={self.n}, alpha={self.alpha!r}, tau={self.tau!r}, "
            f"correction={self.correction!r}, non_certified={self.non_certified!r}, seed={self.seed})"
        )

    @property
    def sigma(self) -> float:
        return self.smoothing.sigma

    def _smoothed_config(self, attack: object | None) -> str:
        scored = f"smoothed prediction (n={self.n}, sigma={self.sigma!r}, seed={self.seed})"
        if attack is None:
            return scored
        return f"{attack!r} on SmoothedLogits(sigma={self.sigma!r}, samples={self.eot_samples}); {scored}"

    def settings(self) -> dict[str, Any]:
        """The settings as JSON (``certify_settings.json``, the evaluation's ``settings.json``)."""
        return {
            "sigma": self.sigma, "n0": self.n0, "n": self.n, "alpha": self.alpha, "tau": self.tau,
            "radii": self.radii, "correction": self.correction, "non_certified": self.non_certified,
            "batch_size": self.smoothing.batch_size, "seed": self.seed, "attack_config": self.config,
            "smoothed_attacks": self.attack_specs, "eot_samples": self.eot_samples,
            "smoothed_attack_configs": [self._smoothed_config(a) for a in self.attacks.values()],
        }  # fmt: skip

    def _key(self, subject: str, threat: str, radius: float, attack: Any = None) -> Key:
        """The row key of the certificate (``threat`` certified), the clean smoothed row (``attack`` None) or an
        attack's smoothed row at ``radius``."""
        name = ATTACK if threat == Threat.CERTIFIED else CLEAN_ATTACK if attack is None else type(attack).name
        return _row_key({"model": self.model.name, "subject": subject, "attack": name, "threat": threat,
                         "source_model": "" if attack is None else self.model.name,
                         "epsilon": radius if threat == Threat.SMOOTHED else 0.0,
                         "iteration": 0 if attack is None else attack.steps,
                         "loss": "" if attack is None else _loss_name(attack), "severity": "", "sigma": self.sigma,
                         "radius": radius})  # fmt: skip

    def keys(self, subject: str) -> list[tuple[Key, str]]:
        """The row keys one subject gets, each with the ``attack_config`` its row carries."""
        pairs = [(self._key(subject, Threat.CERTIFIED, r), self.config) for r in self.radii]
        if self.attacks:
            pairs.append((self._key(subject, Threat.SMOOTHED, 0.0), self._smoothed_config(None)))
        for (_, radius), attack in self.attacks.items():
            pairs.append((self._key(subject, Threat.SMOOTHED, radius, attack), self._smoothed_config(attack)))
        return pairs

    def rows(self, subject: str, images: Tensor, labels: Tensor, missing: set[Key] | None = None) -> list[dict]:
        """The rows of one subject (those whose key is in ``missing``; ``None``: all).

        Args:
            subject: the subject id (seeds the noise).
            images: its preprocessed input ``(1, C_in, *spatial)``.
            labels: its ground truth ``(1, 1, *spatial)``, BraTS values.
            missing: the keys to compute.

        Returns:
            The rows, as records for the results CSV.
        """
        wanted = {key for key, _ in self.keys(subject)} if missing is None else set(missing)
        base = {**self.model.identity, "subject": subject, "sigma": self.sigma, "psnr": None, "ssim": None,
                "rmse": None, "zero_grad_fraction": None}  # fmt: skip
        rows: list[dict] = []
        if any(self._key(subject, Threat.CERTIFIED, r) in wanted for r in self.radii):
            start = time.perf_counter()
            certificate = certify(self.smoothing, images, self.n0, self.n, self.alpha, self.tau, self.correction,
                                  subject_seed(self.seed, subject))  # fmt: skip
            seconds = time.perf_counter() - start
            for radius in self.radii:
                dice = certified_dice(certificate, labels, radius, non_certified=self.non_certified)[0].tolist()
                rows.append({
                    **base, "attack": ATTACK, "threat": str(Threat.CERTIFIED), "source_model": None,
                    "attack_config": self.config, "loss": None, "epsilon": 0.0, "steps": 0, "iteration": 0,
                    "dice_wt": dice[0], "dice_tc": dice[1], "dice_et": dice[2], "linf": 0.0, "l2": 0.0,
                    "seconds": seconds, "radius": radius, "n_samples": self.n, "alpha": self.alpha,
                    "abstain_fraction": float(certificate.abstain_fraction(radius)[0]),
                })  # fmt: skip
        if self.attacks and self._key(subject, Threat.SMOOTHED, 0.0) in wanted:
            rows.append(self._smoothed_row(base, subject, None, images, images, labels, 0.0, 0.0))
        for (index, radius), attack in self.attacks.items():
            if self._key(subject, Threat.SMOOTHED, radius, attack) not in wanted:
                continue
            start = time.perf_counter()
            surrogate = SmoothedLogits(self.smoothing.network, self.sigma, self.eot_samples,  # type: ignore[arg-type]
                                       subject_seed(self.seed, f"{subject}/attack {index}/radius {radius!r}"))
            adversarial = attack(surrogate, images, labels)
            seconds = time.perf_counter() - start
            rows.append(self._smoothed_row(base, subject, attack, images, adversarial, labels, radius, seconds))
        return rows

    def _smoothed_row(
        self, base: dict, subject: str, attack: Any, clean: Tensor, images: Tensor, labels: Tensor, radius: float,
        seconds: float,
    ) -> dict:  # fmt: skip
        prediction = smoothed_prediction(self.smoothing, images, self.n, subject_seed(self.seed, f"{subject}/score"))
        dice = region_dice(prediction, labels)[0].tolist()
        delta = (images - clean).flatten(1)[0]
        return {
            **base, "attack": type(attack).name if attack is not None else CLEAN_ATTACK,
            "threat": str(Threat.SMOOTHED), "source_model": self.model.name if attack is not None else None,
            "attack_config": self._smoothed_config(attack), "loss": _loss_name(attack) if attack is not None else None,
            "epsilon": radius, "steps": attack.steps if attack is not None else 0,
            "iteration": attack.steps if attack is not None else 0, "dice_wt": dice[0], "dice_tc": dice[1],
            "dice_et": dice[2], "linf": float(delta.abs().max()), "l2": float(delta.norm()), "seconds": seconds,
            "radius": radius, "n_samples": self.n, "alpha": None, "abstain_fraction": None,
        }  # fmt: skip


@locks_folder("out", "robustseg certify")  # one writer of out/results.csv at a time (common.utils.lock)
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
    attacks: Sequence[Mapping[str, Any] | str] | None = DEFAULT_SMOOTHED_ATTACKS,
    eot_samples: int = 4,
    progress: bool = True,
) -> tuple[Path, dict[str, dict[float, list[float]]]]:
    """Certify a model bundle on the test split of a datalist, attack its smoothed segmenter, append the rows.

    Args:
        bundle: the trained model bundle (folder or name).
        data: the datalist JSON, or a folder holding ``datalist.json``; its ``testing`` subjects are certified.
        out: the output folder (``results.csv``, ``certify_settings.json``).
        sigma, n, n0, alpha, tau, radii, correction, non_certified, batch_size, seed, attacks, eot_samples: see
            :class:`Certifier`.
        device: where the network runs, e.g. ``"cpu"`` or ``"cuda"``.
        config_files: the bundle's config files (add ``configs/quick.json`` for a quick-trained bundle).
        overrides: config ids -> values set last (as :func:`~common.engines.model_bundle.load_model_bundle`).
        progress: show a progress bar over the subjects (on stderr; a subject takes minutes).

    Returns:
        The results CSV and the means over this run's subjects: ``"certified"`` maps each radius to the mean certified
        Dice (WT, TC, ET); ``"attacked"`` (when there are attacks) maps each radius to the mean over subjects of
        each subject's worst smoothed Dice at that radius (the attacks and the clean input; the worst by mean Dice
        over the regions).

    Raises:
        RobustsegError: for a bad setting, bundle or datalist (before anything is written), or an ``out`` holding
            rows of other settings.
    """
    GaussianSmoothing(nn.Identity(), sigma, batch_size)  # checks sigma and batch_size before the model loads
    _check_settings(n0, n, alpha, tau, correction)
    radii = _radii(radii)
    specs = _attack_specs(attacks)
    device = check_device("device", device)
    datalist = _datalist(data)
    entries = test_entries(datalist)
    model = load_model_bundle(bundle, config_files, device, overrides)
    certifier = Certifier(model, sigma, n, n0, alpha, tau, radii, correction, non_certified, batch_size, seed, specs,
                          eot_samples)  # fmt: skip

    out = Path(out)
    results = out / RESULTS_NAME
    done = {_row_key(row): row["attack_config"] for row in _read_rows(results)}
    for entry in entries:
        for key, config in certifier.keys(subject_id(entry)):
            earlier = done.get(key)
            if earlier is not None and earlier != config:
                raise RobustsegError(
                    f"{results}: holds {key[3]} rows of {model.name} made by {earlier}, but this run configures "
                    f"{config}; use another out folder or delete the old results."
                )
    settings = {
        "command": "certify",
        "model": model.settings(),
        "data": {"datalist": str(datalist), "preprocessing_hash": model.preprocessing_hash},
        "certify": {**certifier.settings(), "device": str(device)},
        "versions": package_versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=2))
    rows_of_run: list[dict] = []
    writer = _RowWriter(results)
    try:
        for entry in tqdm(entries, desc="certify", unit="subject", disable=None if progress else True):
            subject = subject_id(entry)
            missing = {key for key, _ in certifier.keys(subject) if key not in done}
            if not missing:
                continue
            (batch,) = load_subjects([entry], model.preprocessing, torch.device(device))
            rows = certifier.rows(subject, batch.images, batch.labels, missing)
            writer.write(rows)
            rows_of_run += rows
    finally:
        writer.close()
    return results, summarize(rows_of_run)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[float, list[float]]]:
    """Mean certified Dice and mean worst attacked Dice per radius of certification rows (records or CSV cells).

    Args:
        rows: ``certified`` and ``smoothed`` rows of one model.

    Returns:
        ``{"certified": {radius: [WT, TC, ET]}, "attacked": {radius: [WT, TC, ET]}}``: per radius, the mean over
        subjects of the certified Dice, and of each subject's worst smoothed row with a radius at most this one (the
        clean input lies in every ball), the worst by mean Dice over the regions. ``"attacked"`` is empty without
        ``smoothed`` rows.
    """
    certified: dict[float, list[list[float]]] = {}
    smoothed: dict[str, list[tuple[float, list[float]]]] = {}
    for row in rows:
        dice = [float(row[c]) for c in ("dice_wt", "dice_tc", "dice_et")]
        if row["threat"] == Threat.CERTIFIED:
            certified.setdefault(float(row["radius"]), []).append(dice)
        elif row["threat"] == Threat.SMOOTHED:
            smoothed.setdefault(str(row["subject"]), []).append((float(row["radius"]), dice))
    radii = sorted({r for v in smoothed.values() for r, _ in v} | set(certified))
    attacked: dict[float, list[list[float]]] = {}
    for scored in smoothed.values():
        for radius in radii:
            inside = [dice for r, dice in scored if r <= radius]
            if inside:
                attacked.setdefault(radius, []).append(min(inside, key=lambda d: sum(d) / 3))

    def means(groups: dict[float, list[list[float]]]) -> dict[float, list[float]]:
        return {r: [sum(col) / len(col) for col in zip(*v)] if v else [math.nan] * 3 for r, v in sorted(groups.items())}

    return {"certified": means(certified), "attacked": means(attacked)}
