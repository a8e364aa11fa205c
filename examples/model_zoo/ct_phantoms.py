"""Write synthetic abdominal CT phantoms in the Medical Segmentation Decathlon's Task09 (spleen) layout.

A generic (non-BraTS) Model Zoo bundle such as ``spleen_ct_segmentation`` reads ``imagesTr``/``labelsTr`` of a
``dataset_dir`` in its own ``train.json`` (the last 9 cases validate). No CT data can be downloaded here, so this
writes phantoms: air at -1000 HU, an elliptic body of soft tissue (about 30 HU) with a fat rim (-100 HU), a spine
(700 HU), and one spleen (95-125 HU, label 1) of random size and position on the body's left, with Gaussian noise;
sizes are fractions of the field of view.
The voxels are anisotropic (0.9 x 0.9 x 3.0 mm by default), so the bundle's ``Spacingd`` resamples them, as it does
real scans. Held-out labelled cases go to ``imagesTs``/``labelsTs`` and ``datalist.json`` lists them as ``testing``
(what ``robustseg attack --data`` evaluates).

Usage::

    python examples/model_zoo/ct_phantoms.py runs/ct [--train 16] [--test 4] [--shape 128,128,40] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator) -> tuple:
    """One CT volume (HU, float32) and its spleen mask (uint8)."""
    mm = [np.arange(n) * s - (n - 1) * s / 2 for n, s in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*mm, indexing="ij")
    half = np.array([0.42, 0.34]) * np.array(shape[:2]) * np.array(spacing[:2])  # the body's half-axes, mm
    depth = shape[2] * spacing[2] / 2
    body = (x / half[0]) ** 2 + (y / half[1]) ** 2 <= 1
    inner = (x / (0.88 * half[0])) ** 2 + (y / (0.88 * half[1])) ** 2 <= 1
    image = np.full(shape, -1000.0)
    image[body] = -100.0  # subcutaneous fat
    image[inner] = 30.0  # soft tissue
    image[(x**2 + (y + 0.7 * half[1]) ** 2) <= (0.12 * half[1]) ** 2] = 700.0  # spine
    centre = np.array([0.45 * half[0], -0.1 * half[1], 0]) + rng.uniform(-0.08, 0.08, 3) * np.array([*half, depth])
    radii = rng.uniform([0.18, 0.2, 0.4], [0.3, 0.32, 0.7]) * np.array([*half, depth])
    spleen = (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
              + ((z - centre[2]) / radii[2]) ** 2) <= 1  # fmt: skip
    spleen &= inner
    image[spleen] = rng.uniform(95, 125)
    image += rng.normal(0, 12, shape)
    return image.astype(np.float32), spleen.astype(np.uint8)


def write_phantoms(out: Path, train: int, test: int, shape: tuple[int, int, int], seed: int) -> Path:
    """Write the cases and ``datalist.json``; return the datalist's path."""
    spacing = (0.9, 0.9, 3.0)
    affine = np.diag([*spacing, 1.0])
    rng = np.random.default_rng(seed)
    testing = []
    for k in range(train + test):
        held_out = k >= train
        images, labels = ("imagesTs", "labelsTs") if held_out else ("imagesTr", "labelsTr")
        (out / images).mkdir(parents=True, exist_ok=True)
        (out / labels).mkdir(parents=True, exist_ok=True)
        image, label = phantom(shape, spacing, rng)
        name = f"spleen_{k:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), out / images / name)
        nib.save(nib.Nifti1Image(label, affine), out / labels / name)
        if held_out:
            testing.append({"image": str((out / images / name).resolve()),
                            "label": str((out / labels / name).resolve())})  # fmt: skip
    path = out / "datalist.json"
    path.write_text(json.dumps({"testing": testing}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=16, help="cases in imagesTr (the bundle validates on 9)")
    parser.add_argument("--test", type=int, default=4, help="held-out labelled cases in imagesTs, listed as testing")
    parser.add_argument("--shape", default="128,128,40", help="voxels per axis, e.g. 128,128,40")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 16:
        print(f"--shape {args.shape!r}: expected three integers >= 16, e.g. 128,128,40", file=sys.stderr)
        return 2
    if args.train < 1 or args.test < 1:
        print(f"--train {args.train} / --test {args.test}: expected at least one case each", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out}: exists and is not empty; expected a new folder", file=sys.stderr)
        return 2
    print(write_phantoms(args.out, args.train, args.test, shape, args.seed))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
