"""What the determinism tests compare across processes: SHA-256 digests of synthetic data, attack outputs and trained
weights, made with fixed seeds on the CPU with one thread.

Run as a script in a fresh process (``python determinism_probe.py OUT synth,attacks``; it prints ``DIGESTS {json}``)
and imported by the test in its own process: two processes, one of them warm with everything the suite ran before.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def synthetic_digests(out: Path) -> dict[str, str]:
    """``robustseg data synth`` (2 subjects, 16^3, seed 3) into ``out``: every file's bytes (the datalist names its
    folder: that part is masked)."""
    from common.__main__ import main

    main(["data", "synth", "--out", str(out / "synthetic"), "--subjects", "2", "--shape", "16", "--seed", "3"])
    digests = {}
    for path in sorted((out / "synthetic").rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            content = path.read_bytes().replace(str(out).encode(), b"<out>")
            digests[str(path.relative_to(out))] = hashlib.sha256(content).hexdigest()
    return digests


def attack_digests() -> dict[str, str]:
    """i-FGSM, PGD (random start, two restarts) and APGD on a seeded UNet3D and seeded inputs."""
    from common.attacks import APGD, PGD, IterativeFGSM
    from common.networks import UNet3D

    torch.manual_seed(0)
    network = UNet3D(in_channels=4, out_channels=4, base_filters=4, levels=3, segmentation_levels=2)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 4, 16, 16, 16, generator=generator)
    labels = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (2, 1, 16, 16, 16), generator=generator)]
    attacks = (IterativeFGSM(0.05, steps=3), PGD(0.05, steps=3, restarts=2, seed=7), APGD(0.05, steps=4, seed=7))
    return {repr(attack): _digest(attack(network, images, labels)) for attack in attacks}


def training_digests(out: Path, bundle: Path, overrides: dict[str, Any]) -> dict[str, str]:
    """A quick training of ``bundle`` (its ``train.json`` with ``overrides``), outputs under ``out``: the weights."""
    from monai.bundle import run

    configs = bundle / "configs"
    run("training", config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"), **{**overrides, "bundle_root": str(bundle),
        "ckpt_dir": str(out / "models"), "log_dir": str(out / "logs"), "output_dir": str(out / "eval")})  # fmt: skip
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    state = state.get("model", state)
    return {f"model.pt:{key}": _digest(value) for key, value in sorted(state.items())}


def digests(out: Path, what: str, bundle: str = "", overrides: str = "{}") -> dict[str, str]:
    """The digests of the comma-separated parts ``what`` (``synth``, ``attacks``, ``training``)."""
    parts = what.split(",")
    found: dict[str, str] = {}
    if "synth" in parts:
        found.update(synthetic_digests(out))
    if "attacks" in parts:
        found.update(attack_digests())
    if "training" in parts:
        found.update(training_digests(out, Path(bundle), json.loads(overrides)))
    return found


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("DIGESTS " + json.dumps(digests(Path(sys.argv[1]), *sys.argv[2:])))
