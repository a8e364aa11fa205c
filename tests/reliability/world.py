"""A tiny world for the reliability tests: 24^3 BraTS-named subjects, a datalist and a model bundle with random
weights whose training record makes ``robustseg segment``, ``robustseg certify`` and the evaluation run in seconds.

The subjects and bundles are those of the evaluation tests (``tests/engines/conftest.py``); the bundle additionally
gets ``models/training_settings.json`` (what training records), so the commands that read it -- and only it, like
``robustseg segment`` -- build the same 16^3, base-2 network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engines.conftest import OVERRIDES, QUICK, _write_subject, make_bundle

TRAINED_WITH = {**OVERRIDES, "precision": "fp32"}
"""The tiny bundle's training record: the tests' 16^3 grid and base-2 UNet, fp32 (no start-up measurement)."""


@dataclass(frozen=True)
class World:
    """Where the tiny world lives: ``data`` (subjects and ``datalist.json``), ``bundles`` (``tiny_baseline``)."""

    root: Path
    data: Path
    datalist: Path
    bundle: Path
    subjects: tuple[str, ...]

    @property
    def subject_dir(self) -> Path:
        """The first subject's folder (four modalities and a segmentation)."""
        return self.data / self.subjects[0]


def make_world(root: Path, subjects: int = 2) -> World:
    """Write the tiny world under ``root`` (every subject in ``testing`` and ``training``)."""
    data = root / "data"
    rng = np.random.default_rng(0)
    ids = tuple(f"tiny_{i:03d}" for i in range(subjects))
    entries = [_write_subject(data, subject, rng) for subject in ids]
    datalist = data / "datalist.json"
    datalist.write_text(json.dumps({"training": entries, "testing": entries}))
    bundle = make_bundle(root / "bundles", "tiny_baseline", seed=0)
    (bundle / "models" / "training_settings.json").write_text(json.dumps(TRAINED_WITH))
    return World(root, data, datalist, bundle, ids)


__all__ = ["QUICK", "TRAINED_WITH", "World", "make_world"]
