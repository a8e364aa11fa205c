"""Time network work with glibc's default allocator against :func:`common.utils.keep_freed_memory`.

glibc gives large freed blocks back to the kernel, so every forward and backward pass of a 3D network touches fresh
pages that the kernel must zero (:mod:`common.utils.allocator`). Each workload runs in two fresh processes, one with
``ROBUSTSEG_KEEP_FREED_MEMORY=0`` (glibc's defaults) and one calling :func:`~common.utils.keep_freed_memory` first,
alternating ``--repeats`` times; printed are the median seconds, the minor page faults per run and the ratio
kept / default (target: < 1, lower is better). Workloads, on the quick 3D UNet (``--batch`` volumes of ``--size``^3):

* ``apgd``: APGD with the soft Dice, ``--steps`` steps, fp32 (the evaluation's attack work);
* ``apgd-bf16``: the same under bf16 autocast (only on a CPU with ``avx512_bf16`` or ``amx_bf16``);
* ``train``: ``--steps`` Adam steps of the soft Dice + cross-entropy loss (the training work);
* ``forward``: ``--steps`` no-grad forward passes (the scoring work).

Usage::

    python benchmarks/bench_allocator.py                  # batch 4, 48^3, 20 steps, 3 repeats (~4 minutes)
    python benchmarks/bench_allocator.py --workloads apgd --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import torch
from common.utils import keep_freed_memory
settings = json.loads(sys.argv[1])
kept = keep_freed_memory() if settings["keep"] else False
sys.path.insert(0, settings["benchmarks"])
from bench_attacks import build_net, synthetic_tumours
from common.attacks import APGD
from common.losses import SoftDiceLoss
torch.manual_seed(0)
net, _ = build_net(8)
images, labels = synthetic_tumours(settings["batch"], settings["size"], seed=0)
workload, steps = settings["workload"], settings["steps"]
if workload == "train":
    net.train()
    loss_fn = SoftDiceLoss(ce_weight=1.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    def run():
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(net(images), labels).backward()
            optimizer.step()
elif workload == "forward":
    net.eval()
    def run():
        with torch.no_grad():
            for _ in range(steps):
                net(images)
else:
    net.eval()
    attack = APGD(0.05, steps=steps, amp=workload == "apgd-bf16")
    def run():
        attack(net, images, labels)
run()  # warm-up: oneDNN picks its kernels, the heap grows to its peak
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
start = time.perf_counter()
run()
seconds = time.perf_counter() - start
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"seconds": seconds, "faults": faults, "kept": kept}))
"""


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_child(workload: str, keep: bool, args: argparse.Namespace) -> dict[str, float]:
    """One timed run of ``workload`` in a fresh process, with or without :func:`keep_freed_memory`."""
    settings = {
        "workload": workload,
        "keep": keep,
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "benchmarks": str(Path(__file__).resolve().parent),
    }
    env = {**os.environ, "ROBUSTSEG_KEEP_FREED_MEMORY": "1" if keep else "0"}
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(settings)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="volumes per batch (default 4, the evaluation's)")
    parser.add_argument("--size", type=int, default=48, help="edge of the cubic input (default 48)")
    parser.add_argument("--steps", type=int, default=20, help="attack steps, training steps or forward passes")
    parser.add_argument("--repeats", type=int, default=3, help="process pairs per workload; medians are shown")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the children (0: torch's default)")
    parser.add_argument(
        "--workloads", nargs="+", default=["apgd", "apgd-bf16", "train", "forward"], help="which workloads to time"
    )
    args = parser.parse_args()
    workloads = [w for w in args.workloads if w != "apgd-bf16" or _cpu_has_bf16()]
    print(f"quick 3D UNet, batch {args.batch}, {args.size}^3, {args.steps} steps, median of {args.repeats} processes")
    print(
        f"{'workload':<10} {'default (s)':>11} {'kept (s)':>9} {'ratio':>6} {'faults default':>15} {'faults kept':>12}"
    )
    for workload in workloads:
        results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for keep in (False, True) if repeat % 2 == 0 else (True, False):
                results[keep].append(run_child(workload, keep, args))
        if not all(r["kept"] for r in results[True]):
            print(f"{workload:<10} keep_freed_memory() did nothing here (not glibc, or refused): no comparison")
            continue
        seconds = {keep: statistics.median(r["seconds"] for r in runs) for keep, runs in results.items()}
        faults = {keep: statistics.median(r["faults"] for r in runs) for keep, runs in results.items()}
        print(
            f"{workload:<10} {seconds[False]:11.3f} {seconds[True]:9.3f} {seconds[True] / seconds[False]:6.3f} "
            f"{faults[False]:15.0f} {faults[True]:12.0f}"
        )


if __name__ == "__main__":
    main()
