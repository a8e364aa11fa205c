"""Determinism across processes (issue 16): the same seed gives bit-identical synthetic data, attack outputs and (on
the CPU, one thread) a quick training, in two separate Python processes -- a fresh one and the test's own, warm with
whatever the suite ran before (a cached template, used generators, loaded modules).

Both run :mod:`.determinism_probe` and compare SHA-256 digests: the adversarial images of i-FGSM, PGD with a random
start and APGD on a seeded UNet3D; slow: every file ``robustseg data synth`` wrote (bytes, so the gzip headers too)
and the weights after one epoch of the 3D baseline on tiny synthetic data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.bundles import bundle_specs

from . import determinism_probe
from .cli import logging_restored  # noqa: F401 -- an autouse fixture

REPO = Path(__file__).resolve().parents[2]


def _fresh_and_warm(tmp_path: Path, what: str, *extra: str, timeout: int = 300) -> tuple[dict, dict]:
    """The probe's digests in a fresh process and, meanwhile, in this one (one torch thread in both)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    fresh_out, warm_out = tmp_path / "fresh", tmp_path / "warm"
    fresh_out.mkdir()
    warm_out.mkdir()
    proc = subprocess.Popen([sys.executable, determinism_probe.__file__, str(fresh_out), what, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            warm = determinism_probe.digests(warm_out, what, *extra)
        finally:
            torch.set_num_threads(threads)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    line = next(line for line in stdout.splitlines() if line.startswith("DIGESTS "))
    return json.loads(line.removeprefix("DIGESTS ")), warm


def _differing(first: dict, second: dict) -> list[str]:
    return sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))


def test_attacks_are_bit_identical_across_processes(tmp_path, reliability):
    fresh, warm = _fresh_and_warm(tmp_path, "attacks")
    reliability.fault("a second process, same seeds (i-FGSM, PGD, APGD)")
    assert len([k for k in fresh if "PGD" in k or "FGSM" in k]) == 3
    assert not _differing(fresh, warm), f"not bit-identical across processes: {_differing(fresh, warm)}"


@pytest.mark.slow
def test_synthetic_data_is_bit_identical_across_processes(tmp_path, reliability):
    """Every file of ``robustseg data synth`` (its in-process determinism: ``tests/data/test_synthetic.py``)."""
    fresh, warm = _fresh_and_warm(tmp_path, "synth")
    reliability.fault("a second process, same seed (robustseg data synth)")
    assert len([k for k in fresh if k.endswith(".nii.gz")]) == 10 and "synthetic/datalist.json" in fresh
    assert not _differing(fresh, warm), f"not bit-identical across processes: {_differing(fresh, warm)}"


@pytest.mark.slow
def test_quick_training_is_bit_identical_across_processes(tmp_path, reliability):
    """One epoch of the 3D baseline on four 24^3 synthetic subjects (32^3 grid, base 4, fp32, CPU, one thread)."""
    from common.data import write_synthetic_dataset

    from ..bundles.conftest import copy_bundle, tiny_overrides

    datalist = str(write_synthetic_dataset(tmp_path / "data", subjects=4, seed=0, shape=24, workers=1))
    name = next(spec.name for spec in bundle_specs() if spec.net == "3d" and spec.family == "baseline")
    root = copy_bundle(name, tmp_path / "bundles")
    overrides = {**tiny_overrides(datalist, root), "amp": False, "precision": "fp32"}
    fresh, warm = _fresh_and_warm(tmp_path, "training", str(root), json.dumps(overrides), timeout=900)
    reliability.fault("a second process, same seed (quick training)")
    assert any(k.startswith("model.pt:") for k in fresh)
    assert not _differing(fresh, warm), f"trained weights differ across processes: {_differing(fresh, warm)[:5]}"
