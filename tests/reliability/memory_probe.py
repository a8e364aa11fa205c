"""The peak resident memory of ``robustseg segment`` and of one i-FGSM attack through a bundle's sliding-window
inferer, each in a process of its own (run as a script; prints ``PEAK_RSS_MIB <n> SECONDS <t>``).

``python memory_probe.py segment BUNDLE SUBJECT_DIR OUT.nii.gz``
    the command line, in this process.
``python memory_probe.py attack BUNDLE SUBJECT_DIR STEPS SW_BATCH_SIZE``
    the bundle's network and its ``infer#inferer`` from ``inference.json`` (with the training record: the quick
    overlay's 48^3 window), the subject's four contrasts at their native grid, min-max normalised per channel, and
    ``IterativeFGSM(0.05, steps=STEPS)`` through that inferer with ``SW_BATCH_SIZE`` windows per pass.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set size (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def segment(bundle: str, subject: str, out: str) -> None:
    from common.__main__ import main

    main(["segment", "--bundle", bundle, "--input", subject, "--output", out])


def attack(bundle: str, subject: str, steps: int, sw_batch_size: int) -> None:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    from common.attacks import IterativeFGSM
    from common.bundles import training_overrides
    from common.data.labels import MODALITIES
    from common.engines.model_bundle import load_model_bundle

    model = load_model_bundle(bundle, ["configs/inference.json"], "cpu")
    parser = ConfigParser()
    parser.read_config(str(Path(bundle) / "configs" / "inference.json"))
    parser.update({**training_overrides(bundle), "bundle_root": bundle,
                   "infer#inferer#inferer#inferer#sw_batch_size": sw_batch_size})  # fmt: skip
    inferer = parser.get_parsed_content("infer#inferer")
    folder = Path(subject)
    volumes = []
    for modality in MODALITIES:
        data = np.asarray(nib.load(folder / f"{folder.name}_{modality}.nii.gz").dataobj, dtype=np.float32)
        volumes.append((data - data.min()) / max(float(data.max() - data.min()), 1e-8))
    images = torch.from_numpy(np.stack(volumes))[None]
    labels = torch.from_numpy(np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj).astype(np.int64))
    adversarial = IterativeFGSM(0.05, steps=steps, inferer=inferer)(model.network, images, labels[None, None])
    assert adversarial.shape == images.shape and bool(torch.isfinite(adversarial).all())


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    if sys.argv[1] == "segment":
        segment(*sys.argv[2:5])
    else:
        attack(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    print(f"PEAK_RSS_MIB {peak_rss_mib():.0f} SECONDS {time.perf_counter() - start:.1f}")
