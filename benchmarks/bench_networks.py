"""Time the paper's networks on CPU, fp32 against bf16 autocast, and check bf16 input-gradient signs.

Prints wall-clock seconds (and process CPU seconds, less sensitive to other processes on a shared machine) per
sample for a training step (forward, soft-Dice loss, backward; batch 1, train mode) of
:class:`~common.networks.UNet3D` at several sizes and widths, the 128^3 paper setting forward only (eval mode,
``torch.no_grad()``), and :class:`~common.networks.UNet2D` on a batch of 2D slices. The reference is fp32; the
``bf16/fp32`` column is the time under ``torch.autocast("cpu", dtype=torch.bfloat16)`` divided by the fp32 time.

Attacks step along ``sign(grad)`` of the input, so the script also reports the fraction of input voxels whose
gradient sign under bf16 autocast agrees with fp32 (eval mode, same weights and input), over all voxels and over
the half with the largest fp32 gradient magnitude. The networks are randomly initialised: sign agreement of a
trained network may differ.

Usage::

    python benchmarks/bench_networks.py                 # full table (a few minutes on 2 cores)
    python benchmarks/bench_networks.py --repeats 1 --no-128
    python benchmarks/bench_networks.py --threads 1     # on a busy machine: "cpu" then is the compute cost
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from common.losses import SoftDiceLoss
from common.networks import UNet2D, UNet3D


def _autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _tumour_labels(shape: tuple[int, ...]) -> Tensor:
    """BraTS labels (1, 1, *shape): a centred ball, necrotic core 1 in enhancing rim 4 in oedema 2."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = torch.stack(grids).square().sum(0).sqrt()
    labels = torch.zeros(shape, dtype=torch.long)
    labels[radius < 0.6] = 2
    labels[radius < 0.4] = 4
    labels[radius < 0.25] = 1
    return labels[None, None]


def _median_seconds(steps: list[Callable[[], None]], repeats: int) -> list[tuple[float, float]]:
    """Median (wall, process CPU) seconds of each step; the steps alternate so that outside load hits them alike."""
    for step in steps:
        step()  # warm-up: oneDNN picks its kernels on the first call
    times: list[list[tuple[float, float]]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            record.append((time.perf_counter() - wall, time.process_time() - cpu))
    return [(statistics.median(t[0] for t in record), statistics.median(t[1] for t in record)) for record in times]


def _train_step(net: nn.Module, images: Tensor, labels: Tensor, bf16: bool) -> Callable[[], None]:
    loss_fn = SoftDiceLoss()

    def step() -> None:
        net.zero_grad(set_to_none=True)
        with _autocast(bf16):
            logits = net(images)
        loss_fn(logits.float(), labels).backward()

    return step


def _forward_step(net: nn.Module, images: Tensor, bf16: bool) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), _autocast(bf16):
            net(images)

    return step


def _input_gradient(net: nn.Module, images: Tensor, labels: Tensor, bf16: bool) -> Tensor:
    images = images.detach().clone().requires_grad_(True)
    with _autocast(bf16):
        logits = net(images)
    (grad,) = torch.autograd.grad(SoftDiceLoss()(logits.float(), labels), images)
    return grad


def _sign_agreement(net: nn.Module, images: Tensor, labels: Tensor) -> tuple[float, float, float]:
    """Sign agreement with fp32 of a second fp32 run (all voxels), and of bf16 (all voxels, largest half)."""
    net.eval()
    reference = _input_gradient(net, images, labels, bf16=False)
    rerun = _input_gradient(net, images, labels, bf16=False)
    low_precision = _input_gradient(net, images, labels, bf16=True)
    agree = reference.sign() == low_precision.sign()
    large = reference.abs() >= reference.abs().median()
    fp32_agree = (reference.sign() == rerun.sign()).float().mean().item()
    return fp32_agree, agree.float().mean().item(), agree[large].float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per setting (median reported)")
    parser.add_argument("--no-128", action="store_true", help="skip the 128^3 forward-only row")
    parser.add_argument("--slices", type=int, default=64, help="2D batch size (slices of 128^2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, median of {args.repeats} (fp32/bf16 alternating)")
    header = (
        f"{'network':<8} {'base':>4} {'input':>10} {'step':<10} {'fp32 s':>8} {'fp32 cpu':>8} {'bf16 s':>8}"
        f" {'bf16 cpu':>8} {'bf16/fp32':>9}"
    )
    print(header)
    print("-" * len(header))

    def row(name: str, base: int, size: str, what: str, make_step: Callable[[bool], Callable[[], None]]) -> None:
        (fp32, fp32_cpu), (bf16, bf16_cpu) = _median_seconds([make_step(False), make_step(True)], args.repeats)
        print(
            f"{name:<8} {base:>4} {size:>10} {what:<10} {fp32:>8.3f} {fp32_cpu:>8.3f} {bf16:>8.3f} {bf16_cpu:>8.3f}"
            f" {bf16 / fp32:>9.2f}",
            flush=True,
        )

    for base in (8, 16):
        for size in (32, 48, 64):
            net = UNet3D(base_filters=base).train()
            images, labels = torch.rand(1, 4, size, size, size), _tumour_labels((size,) * 3)
            row(
                "UNet3D",
                base,
                f"{size}^3",
                "fwd+bwd",
                lambda bf16, n=net, x=images, y=labels: _train_step(n, x, y, bf16),
            )
    if not args.no_128:
        net = UNet3D(base_filters=16).eval()
        images = torch.rand(1, 4, 128, 128, 128)
        row("UNet3D", 16, "128^3", "fwd (eval)", lambda bf16: _forward_step(net, images, bf16))
    net2d = UNet2D(base_filters=16).train()
    images2d = torch.rand(args.slices, 4, 128, 128)
    labels2d = _tumour_labels((128, 128)).expand(args.slices, -1, -1, -1)
    row("UNet2D", 16, f"{args.slices}x128^2", "fwd+bwd", lambda bf16: _train_step(net2d, images2d, labels2d, bf16))
    print(f"s: wall seconds; cpu: process CPU seconds (all threads). UNet2D: per batch of {args.slices} slices.")

    print("\nbf16 autocast vs fp32 input-gradient sign agreement (eval mode, soft Dice loss, random weights)")
    for name, net, images, labels in (
        ("UNet3D base 16, 64^3", UNet3D(base_filters=16), torch.rand(1, 4, 64, 64, 64), _tumour_labels((64,) * 3)),
        ("UNet2D base 16, 16x128^2", UNet2D(base_filters=16), images2d[:16], labels2d[:16]),
    ):
        fp32_rerun, everywhere, largest_half = _sign_agreement(net, images, labels)
        print(
            f"  {name:<26} fp32 rerun {fp32_rerun:.4f}   bf16: all voxels {everywhere:.4f},"
            f" largest-|grad| half {largest_half:.4f}"
        )


if __name__ == "__main__":
    main()
