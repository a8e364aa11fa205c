"""Builders of hand-made robustness CSVs for the report tests."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from common.report.schema import COLUMN_NAMES, format_record


def _row(
    model: str,
    subject: str,
    dice: Sequence[float],
    *,
    net: str = "3d",
    defense: str = "none",
    defense_param: str | None = None,
    attack: str = "none",
    threat: str = "clean",
    epsilon: float = 0.0,
    steps: int = 0,
    iteration: int = 0,
    quality: Sequence[float] | None = None,
    loss: str | None = "soft_dice",
    source_model: str | None = None,
    attack_config: str | None = None,
) -> dict:
    """One result row; ``dice`` is (WT, TC, ET), ``quality`` (PSNR, SSIM, RMSE) for attacked rows."""
    clean = threat == "clean"
    if attack_config is None and not clean:
        attack_config = f"{attack}(epsilon={epsilon}, steps={steps}, loss={loss})"
    return {
        "model": model,
        "net": net,
        "defense": defense,
        "defense_param": defense_param,
        "subject": subject,
        "attack": attack,
        "threat": threat,
        "source_model": None if clean else (source_model or model),
        "attack_config": None if clean else attack_config,
        "loss": None if clean else loss,
        "epsilon": epsilon,
        "steps": steps,
        "iteration": iteration,
        "dice_wt": float(dice[0]),
        "dice_tc": float(dice[1]),
        "dice_et": float(dice[2]),
        "psnr": None if quality is None else float(quality[0]),
        "ssim": None if quality is None else float(quality[1]),
        "rmse": None if quality is None else float(quality[2]),
        "linf": epsilon,
        "l2": 10 * epsilon,
        "zero_grad_fraction": None if clean else 0.0,
        "seconds": 0.5,
    }


def _write(path: Path, rows: Sequence[dict], header: Sequence[str] = COLUMN_NAMES) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(format_record(row))
    return path


@pytest.fixture
def make_row() -> Callable[..., dict]:
    """``make_row(model, subject, (wt, tc, et), **columns)`` -> a full result row."""
    return _row


@pytest.fixture
def write_csv() -> Callable[..., Path]:
    """``write_csv(path, rows)`` writes rows with the schema header and returns the path."""
    return _write


# ------------------------------------------------------------------------------------------------ MR artifacts
CORRUPTION_MODELS = (
    ("base", "none", None),
    ("aug", "noise_augmentation", "r=0.01"),
    ("at", "adversarial_training", "eps=0.05"),
)


def _corruption_rows(
    subjects: int = 8,
    models: Sequence[tuple[str, str, str | None]] = CORRUPTION_MODELS,
    corruptions: Sequence[str] = ("gibbs", "missing_flair"),
    severities: Sequence[int] = (1, 3, 5),
    seed: int = 0,
) -> list[dict]:
    """Clean and ``corruption`` rows: per model and subject a random clean Dice, falling with severity plus noise
    (the later models lose less), so every score differs from subject to subject and model to model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for k, (model, defense, param) in enumerate(models):
        kw = {"defense": defense, "defense_param": param}
        for i in range(subjects):
            subject = f"s{i}"
            clean = rng.uniform(0.75, 0.95, 3)
            rows.append(_row(model, subject, clean, **kw))
            for c, name in enumerate(corruptions):
                for severity in severities:
                    loss = (0.02 + 0.03 * c) * severity / (1 + 0.5 * k)
                    dice = np.clip(clean - loss + rng.normal(0, 0.02, 3), 0, 1)
                    quality = (30 - 3 * severity, 0.9 - 0.1 * severity, 0.01)
                    config = f"{name}(severity={severity})"
                    row = _row(model, subject, dice, attack=name, threat="corruption", quality=quality,
                               attack_config=config, **kw)  # fmt: skip
                    row.update(severity=severity, loss=None, source_model=None, zero_grad_fraction=None)
                    rows.append(row)
    return rows


@pytest.fixture
def make_corruption_rows() -> Callable[..., list[dict]]:
    """``make_corruption_rows(subjects=8, models=..., corruptions=..., severities=(1, 3, 5), seed=0)`` -> rows."""
    return _corruption_rows


# ------------------------------------------------------------------------------------ a realistic synthetic study
MODELS = {  # model -> (defense, defense_param, FGSM sensitivity white-box, adaptive sensitivity or None, zero-grad)
    "brats_unet3d_baseline": ("none", None, 6.0, None, 0.01),
    "brats_unet3d_distill_t5000": ("distillation", "T=5000", 1.5, 6.5, 0.6),  # gradient masking
    "brats_unet3d_advtrain_eps0.05": ("adversarial_training", "eps=0.05", 3.0, None, 0.01),
    "brats_unet3d_noiseaug": ("noise_augmentation", "r=0.01", 4.5, None, 0.01),
}
BASELINE = "brats_unet3d_baseline"
FGSM_EPSILONS = tuple(round(0.01 * k, 2) for k in range(1, 11))
REGION_SENSITIVITY = (1.0, 1.2, 1.4)  # WT, TC, ET: smaller regions break first
ITERATIVE = {"i-FGSM": 1.0, "ti-FGSM": 0.6}  # relative strength


def _study_rows(subjects: Sequence[str], seed: int, iterative: bool, adaptive: bool, zero_grad: bool) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    clean = {s: np.array([0.0, -0.08, -0.2]) + rng.uniform(0.78, 0.93) for s in subjects}
    rows = []

    def quality(eps: float, fraction: float = 1.0) -> tuple[float, float, float]:
        rmse = 0.8 * eps * fraction * rng.uniform(0.97, 1.03)
        return 20 * np.log10(1 / rmse), float(np.clip(1 - 6 * rmse + rng.normal(0, 0.01), 0, 1)), rmse

    for model, (defense, param, k_wb, k_ad, zero) in MODELS.items():
        kw = {"defense": defense, "defense_param": param}
        for s in subjects:
            rows.append(_row(model, s, np.clip(clean[s] + rng.normal(0, 0.015, 3), 0, 1), **kw))
            threats = [("white-box", k_wb)] + ([("adaptive", k_ad)] if adaptive and k_ad else [])
            for threat, k in threats:
                for eps in FGSM_EPSILONS:
                    dice = clean[s] * np.exp(-k * eps * np.array(REGION_SENSITIVITY)) + rng.normal(0, 0.02, 3)
                    row = _row(
                        model, s, np.clip(dice, 0, 1), attack="FGSM", threat=threat, epsilon=eps, steps=1, iteration=1,
                        quality=quality(eps),
                        attack_config=f"FGSM(epsilon={eps}, loss=soft_dice, relative=True)", **kw,
                    )  # fmt: skip
                    row["zero_grad_fraction"] = (zero if threat == "white-box" else 0.02) if zero_grad else None
                    rows.append(row)
            if iterative and model == BASELINE:
                for attack, strength in ITERATIVE.items():
                    for it in range(1, 11):
                        factor = strength * (0.6 + 0.1 * it)
                        dice = clean[s] * np.exp(-k_wb * 0.05 * factor * np.array(REGION_SENSITIVITY))
                        config = f"{attack.replace('-', '')}(epsilon=0.05, steps=10, alpha=0.005, loss=soft_dice)"
                        row = _row(
                            model, s, np.clip(dice + rng.normal(0, 0.02, 3), 0, 1), attack=attack,
                            threat="white-box", epsilon=0.05, steps=10, iteration=it,
                            quality=quality(0.05, min(1.0, 0.1 * it * (1.0 if attack == "i-FGSM" else 0.8))),
                            attack_config=config, **kw,
                        )  # fmt: skip
                        row["zero_grad_fraction"] = zero if zero_grad else None
                        rows.append(row)
    return rows


def _volumes(rng, n: int):
    """A 4-channel ellipsoidal 'brain' with a tumour (oedema 2, necrotic core 1, enhancing rim 4) on an n^3 grid."""
    import numpy as np

    grid = np.stack(np.meshgrid(*(np.arange(n) - n / 2 + 0.5,) * 3, indexing="ij"))
    brain = ((grid / np.array([0.42, 0.46, 0.38])[:, None, None, None] / n) ** 2).sum(0) <= 1
    centre = np.array([4.0, -3.0, 2.0])[:, None, None, None]
    radius = np.sqrt(((grid - centre) ** 2).sum(0))
    label = np.zeros((n,) * 3, dtype=np.int16)
    label[(radius <= 9) & brain] = 2
    label[radius <= 5.5] = 4
    label[radius <= 3.5] = 1
    base = np.array([0.45, 0.4, 0.5, 0.45])[:, None, None, None] * brain
    image = base + rng.normal(0, 0.03, (4, n, n, n)) * brain
    image[1][label == 4] += 0.45  # T1Gd: bright enhancing rim
    image[2][label == 2] += 0.3  # T2 / FLAIR: oedema
    image[3][label == 2] += 0.35
    image[1][label == 1] -= 0.15
    return np.clip(image, 0, 1).astype(np.float32), label


def _damage(label, rng, severity: float):
    """A plausible prediction: the label, shifted a little, with tumour voxels lost and false positives added."""
    import numpy as np
    from scipy.ndimage import binary_dilation

    pred = np.roll(label, 1, axis=0).copy()
    lost = rng.random(label.shape) < severity
    pred[lost & (pred > 0)] = 0
    blobs = binary_dilation(rng.random(label.shape) < severity * 0.01, iterations=1) & (label == 0)
    pred[blobs] = rng.choice(np.array([1, 2, 4], dtype=np.int16), size=int(blobs.sum()))
    return pred


def _write_examples(root: Path, subject: str, seed: int, n: int = 32) -> None:
    """Example volumes as the evaluation writes them (channel-first image, LPS-like affine) for ``subject``."""
    import json

    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "examples" / subject
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-like storage: the report must reorient to RAS
    image, label = _volumes(rng, n)
    nib.save(nib.Nifti1Image(image, affine), folder / "image.nii.gz")  # channel-first, as the format note says
    nib.save(nib.Nifti1Image(label, affine), folder / "label.nii.gz")
    settings = [(BASELINE, "FGSM", "white-box", 0.05, 0.5), (BASELINE, "i-FGSM", "white-box", 0.05, 0.75)]
    settings += [(BASELINE, "ti-FGSM", "white-box", 0.05, 0.6)]
    settings += [(m, "FGSM", "white-box", 0.05, 0.1 * MODELS[m][2]) for m in MODELS if m != BASELINE]
    settings += [("brats_unet3d_distill_t5000", "FGSM", "adaptive", 0.05, 0.5)]
    entries = []
    for model in MODELS:
        name = f"{model}__none__eps0_pred.nii.gz"
        nib.save(nib.Nifti1Image(_damage(label, rng, 0.05), affine), folder / name)
        entries.append({"model": model, "attack": "none", "threat": "clean", "epsilon": 0.0, "adversarial": None,
                        "prediction": name})  # fmt: skip
    for model, attack, threat, eps, severity in settings:
        stem = f"{model}__{attack}__{threat}__eps{eps}"
        adversarial = np.clip(image + eps * np.sign(rng.normal(size=image.shape)), 0, 1).astype(np.float32)
        nib.save(nib.Nifti1Image(adversarial, affine), folder / f"{stem}_adv.nii.gz")
        nib.save(nib.Nifti1Image(_damage(label, rng, severity), affine), folder / f"{stem}_pred.nii.gz")
        entries.append({"model": model, "attack": attack, "threat": threat, "epsilon": eps,
                        "adversarial": f"{stem}_adv.nii.gz", "prediction": f"{stem}_pred.nii.gz"})  # fmt: skip
    index = {"subject": subject, "image": "image.nii.gz", "label": "label.nii.gz", "entries": entries}
    (folder / "index.json").write_text(json.dumps(index, indent=1))


def write_study(
    root: Path,
    subjects: int = 8,
    seed: int = 0,
    iterative: bool = True,
    adaptive: bool = True,
    zero_grad: bool = True,
    examples: bool = True,
    settings: dict | None = None,
    prefix: str = "synth_",
) -> Path:
    """A plausible robustness study under ``root``: ``results.csv`` (baseline, distillation T=5000 with adaptive rows
    that reveal gradient masking, adversarial training, noise augmentation; FGSM at eps 0.01..0.1, i-FGSM and ti-FGSM
    with 10 iterates on the baseline), ``examples/<first subject>/`` with 32^3 volumes, and optionally
    ``settings.json``. Returns the CSV path."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{i:03d}" for i in range(subjects)]
    path = _write(root / "results.csv", _study_rows(names, seed, iterative, adaptive, zero_grad))
    if examples:
        _write_examples(root, names[0], seed)
    if settings is not None:
        (root / "settings.json").write_text(json.dumps(settings))
    return path


@pytest.fixture
def make_study() -> Callable[..., Path]:
    """``make_study(root, **options)`` -> the results CSV of a realistic study (see :func:`write_study`)."""
    return write_study


@pytest.fixture(scope="session")
def full_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One realistic study with every kind of row and examples, shared by the report tests (read-only)."""
    settings = {
        "data": {"source": "embedded synthetic BraTS-like data", "subjects": 12, "shape": 32},
        "models": {m: {"defense": d, "param": p} for m, (d, p, *_) in MODELS.items()},
        "attacks": ["FGSM", "i-FGSM", "ti-FGSM"],
        "versions": {"robustseg": "test"},
    }
    return write_study(tmp_path_factory.mktemp("study"), subjects=12, settings=settings)


@pytest.fixture
def make_examples() -> Callable[..., Path]:
    """``make_examples(root, subject, seed=0, n=32)`` writes ``root/examples/<subject>/`` and returns that folder."""

    def make(root: Path, subject: str, seed: int = 0, n: int = 32) -> Path:
        _write_examples(root, subject, seed, n)
        return root / "examples" / subject

    return make
