"""The mixed-precision (AMP) path on a GPU: training, attacks and ``precision: auto``, against fp32 on the same run.

What issue 12 asks of a GPU run: that the AMP path works. On one CUDA device, in one process, this script

1. times a forward and backward pass of the demo's ``UNet3D(base_filters=8)`` (48^3, batch 1-8) and of the full-size
   ``UNet3D(base_filters=16)`` (128^3, batch 1-2) in fp32, bf16 and fp16 autocast, with the share of input-gradient
   signs that agree with fp32 (what an FGSM-type attack steps along), and prints each ratio to fp32;
2. resolves ``precision: auto`` (:func:`common.engines.choose_precision`) at the bundles' shape and prints the
   measurement it recorded;
3. trains the baseline bundle with the quick overlay through ``monai.bundle.run`` (the demo's own call) once per
   forced precision (``fp32``, ``bf16``, ``fp16``: MONAI's ``SupervisedTrainer`` with autocast, and a
   ``GradScaler`` for fp16) and scores each on the test split;
4. evaluates the given trained bundles (the demo's paper attacks, the noise control, the adaptive and transfer
   threats and a short FGSM sweep) with ``attack_precision`` = ``fp32``, ``bf16``, ``fp16`` and ``auto``, and prints
   each run's time and the largest per-subject difference of clean and attacked Dice from the fp32 run.

Everything goes to ``--out`` (``summary.json``; each run's CSV and training record). ``--device cpu --smoke`` runs
the same steps in fp32 with tiny settings, to check the script before a device session.

Usage (device machine, trained demo bundles and the demo's data copied beside the repo)::

    python benchmarks/bench_gpu_amp.py --data DATA/datalist.json --bundles B/brats_unet3d_baseline \
        B/brats_unet3d_advtrain_eps0.05 --out OUT
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.attacks.gradient import input_gradient
from common.data.labels import logits_to_labels
from common.losses import SoftDiceLoss
from common.networks import UNet3D

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_network(net: nn.Module, shape: Sequence[int], device: torch.device, repeats: int) -> dict[str, Any]:
    """Median seconds of a forward+backward pass per precision, and input-gradient sign agreement with fp32."""
    torch.manual_seed(0)
    x = torch.rand(*shape, device=device)
    with torch.no_grad():
        target = logits_to_labels(net(x))
    loss_fn = SoftDiceLoss()
    result: dict[str, Any] = {"shape": list(shape)}
    reference = None
    for name, dtype in PRECISIONS.items():
        if device.type == "cpu" and name != "fp32":
            continue  # the smoke check of this script; CPU autocast is measured by bench_networks.py
        times, grad = [], None
        for _ in range(1 + repeats):
            xi = x.clone().requires_grad_(True)
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = net(xi)
            loss = loss_fn(logits.float(), target)
            grad = input_gradient(loss, xi, fp16=dtype == torch.float16)
            _sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times[1:])
        if reference is None:
            reference = grad.sign()
        agreement = float((grad.sign() == reference).float().mean())
        result[name] = {"seconds": seconds, "sign_agreement": agreement}
    for name in result:
        if name in PRECISIONS and name != "fp32":
            result[name]["ratio_to_fp32"] = result[name]["seconds"] / result["fp32"]["seconds"]
    return result


def _copy_bundle(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "configs", dst / "configs")
    return dst


def train_runs(baseline: Path, datalist: str, out: Path, device: str, precisions: Sequence[str],
               overrides: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Quick-overlay training of a copy of ``baseline`` per forced precision; seconds, record and test Dice."""
    from common.demo import _run_bundle

    runs = {}
    for precision in precisions:
        bundle = _copy_bundle(baseline, out / f"train_{precision}" / baseline.name)
        settings = {"datalist": datalist, "device": f"$torch.device('{device}')", "precision": precision,
                    "cache_dir": str(out / "cache"), **overrides}  # fmt: skip
        start = time.perf_counter()
        try:
            _run_bundle("training", bundle, ["train.json", "quick.json"], settings)
            seconds = time.perf_counter() - start
            _run_bundle("evaluating", bundle, ["evaluate.json", "quick.json"], settings)
        except Exception as error:  # noqa: BLE001 - a failing precision is a result of this check
            runs[precision] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            continue
        record = json.loads((bundle / "models" / "training_settings.json").read_text())
        summary = json.loads((bundle / "eval" / "test_dice_summary.json").read_text())
        runs[precision] = {
            "seconds": seconds,
            "precision_choice": record.get("precision_choice"),
            "amp": record.get("amp"),
            "test_dice": {r: summary[f"dice_{r}_mean"] for r in ("wt", "tc", "et")},
        }
    return runs


def _rows(path: Path) -> dict[tuple, dict[str, str]]:
    keys = ("model", "subject", "attack", "threat", "source_model", "epsilon", "iteration", "loss")
    with open(path, newline="") as f:
        return {tuple(r[k] for k in keys): r for r in csv.DictReader(f)}


def eval_runs(bundles: Sequence[Path], datalist: str, out: Path, device: str, precisions: Sequence[str],
              steps: int) -> dict[str, Any]:  # fmt: skip
    """The evaluation per ``attack_precision``; seconds, the precision chosen and the Dice differences from fp32."""
    from common.engines import RobustnessEvaluation

    attacks = [{"name": "FGSM"}, {"name": "i-FGSM", "steps": steps}, {"name": "ti-FGSM", "steps": steps, "target": 1},
               {"name": "random-sign"}]  # fmt: skip
    runs: dict[str, Any] = {}
    for precision in precisions:
        folder = out / f"eval_{precision}"
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        try:
            RobustnessEvaluation(
                [str(b) for b in bundles], folder, datalist=datalist, attacks=attacks, sweep_epsilons=[0.02, 0.05],
                attack_precision=precision, device=device, progress=False, tables=False,
            ).run()  # fmt: skip
        except Exception as error:  # noqa: BLE001 - a failing precision is a result of this check
            runs[precision] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            continue
        settings = json.loads((folder / "settings.json").read_text())
        runs[precision] = {"seconds": time.perf_counter() - start,
                           "chosen": settings["evaluation"].get("attack_precision_choice")}  # fmt: skip
    if "fp32" in runs and "error" not in runs["fp32"]:
        reference = _rows(out / "eval_fp32" / "results.csv")
        for precision, run in runs.items():
            if precision == "fp32" or "error" in run:
                continue
            rows = _rows(out / f"eval_{precision}" / "results.csv")
            clean, attacked, means = 0.0, 0.0, []
            for key in rows.keys() & reference.keys():
                for region in ("dice_wt", "dice_tc", "dice_et"):
                    a, b = float(rows[key][region]), float(reference[key][region])
                    if rows[key]["threat"] == "clean":
                        clean = max(clean, abs(a - b))
                    else:
                        attacked = max(attacked, abs(a - b))
                        means.append(a - b)
            run.update(rows_compared=len(rows.keys() & reference.keys()), max_clean_dice_diff=clean,
                       max_attacked_dice_diff=attacked,
                       mean_attacked_dice_diff=statistics.fmean(means) if means else None)  # fmt: skip
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the demo's datalist.json")
    parser.add_argument("--bundles", nargs="+", required=True, type=Path, help="trained bundles; the first is trained")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny settings (a CPU check of this script)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["network", "train", "eval"])
    args = parser.parse_args()

    from common.engines import choose_precision

    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
        summary["bf16_supported"] = torch.cuda.is_bf16_supported()
    precisions = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"]

    def dump() -> None:
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    if "network" not in args.skip:
        small = UNet3D(4, 4, base_filters=8).to(device).eval()
        batches = [1, 2] if args.smoke else [1, 2, 4, 8]
        summary["network_48"] = [time_network(small, (b, 4, 48, 48, 48), device, 1 if args.smoke else 5)
                                 for b in batches]  # fmt: skip
        if not args.smoke:
            full = UNet3D(4, 4, base_filters=16).to(device).eval()
            summary["network_128"] = [time_network(full, (b, 4, 128, 128, 128), device, 3) for b in (1, 2)]
        summary["auto"] = choose_precision("auto", small, [4, 4, 48, 48, 48], device).as_dict()
        print(json.dumps({k: summary[k] for k in ("network_48", "auto")}, indent=1), flush=True)
        dump()
    overrides = {"epochs": 1, "val_interval": 1} if args.smoke else {}
    if "train" not in args.skip:
        summary["training"] = train_runs(args.bundles[0].resolve(), args.data, args.out, args.device, precisions,
                                         overrides)  # fmt: skip
        print(json.dumps(summary["training"], indent=1), flush=True)
        dump()
    if "eval" not in args.skip:
        bundles = [b.resolve() for b in args.bundles]
        summary["evaluation"] = eval_runs(bundles, args.data, args.out, args.device, [*precisions, "auto"],
                                          2 if args.smoke else 10)  # fmt: skip
        print(json.dumps(summary["evaluation"], indent=1), flush=True)
        dump()


if __name__ == "__main__":
    main()
