"""Time the ways to run ONE small volume through the 3D UNet on CPU, and their input-gradient accuracy.

``robustseg segment`` and a bundle's validation run one volume at a time. PyTorch's CPU convolution picks oneDNN
only above some batch and size thresholds (``ConvParams::use_mkldnn``): a batch of one 48^3 volume at base 8 takes
the slow native kernel. The options, each timed for a forward pass (no grad, eval mode: segment and validation) and
for a forward and backward pass to the input (an attack on one volume), medians of ``--repeats`` interleaved runs:

1. ``plain``: the network as it is (the reference);
2. ``mkldnn off``: ``torch.backends.mkldnn.flags(enabled=False)``;
3. ``channels_last``: model and input in ``torch.channels_last_3d`` memory format;
4. ``two copies``: :class:`common.engines.PairedForwardInferer` (a batch of two copies, the first kept);
5. ``batch of 2`` / ``batch of 4``: two and four different volumes, time per volume (what a batched evaluation pays).

Accuracy: the relative L2 error of the input gradient of the soft-Dice loss against the same computation in fp64
(model and input in double precision), for each option.

Usage::

    python benchmarks/bench_single_volume.py                   # 48^3, base 8, 5 repeats, 1 thread
    python benchmarks/bench_single_volume.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from common.engines.inferers import PairedForwardInferer
from common.losses import SoftDiceLoss
from common.networks import UNet3D

try:
    from bench_attacks import synthetic_tumours
except ImportError:  # run from the repository root
    from benchmarks.bench_attacks import synthetic_tumours


def _input_gradient(net: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor) -> Tensor:
    """Each volume's own soft-Dice input gradient (the loss is a batch mean: times the batch size, a sum)."""
    x = images.detach().requires_grad_(True)
    return torch.autograd.grad(len(x) * SoftDiceLoss()(net(x), labels), x)[0]


def _forward(net: Callable[[Tensor], Tensor], images: Tensor) -> None:
    with torch.no_grad():
        net(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48, help="edge of the cubic input (default 48)")
    parser.add_argument("--base-filters", type=int, default=8, help="UNet3D base filters (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per option; medians are shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 keeps torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    net = UNet3D(base_filters=args.base_filters).eval()
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    paired = PairedForwardInferer()
    images, labels = synthetic_tumours(4, args.size, seed=0)
    one, one_label = images[:1], labels[:1]
    one_cl = one.contiguous(memory_format=torch.channels_last_3d)

    @contextlib.contextmanager
    def no_mkldnn():
        with torch.backends.mkldnn.flags(enabled=False):
            yield

    # name -> (model, input, volumes in the input)
    options: dict[str, tuple[Callable[[Tensor], Tensor], Tensor, int]] = {
        "plain": (net, one, 1),
        "mkldnn off": (net, one, 1),
        "channels_last": (net_cl, one_cl, 1),
        "two copies": (lambda x: paired(x, net), one, 1),
        "batch of 2": (net, images[:2], 2),
        "batch of 4": (net, images, 4),
    }

    def run(name: str, backward: bool) -> Callable[[], None]:
        model, x, _ = options[name]
        y = labels[: len(x)]

        def go() -> None:
            with no_mkldnn() if name == "mkldnn off" else contextlib.nullcontext():
                _input_gradient(model, x, y) if backward else _forward(model, x)

        return go

    runs = {(name, backward): run(name, backward) for name in options for backward in (False, True)}
    for go in runs.values():
        go()  # warm-up: oneDNN picks its kernels on the first call
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in runs}
    for repeat in range(args.repeats):
        for key in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)

    double = copy.deepcopy(net).double()
    reference = _input_gradient(double, one.double(), one_label)
    print(
        f"UNet3D(base_filters={args.base_filters}), one {args.size}^3 volume, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"\n{'option':<16} {'forward (s)':>11} {'ratio':>6} {'fwd+bwd (s)':>11} {'ratio':>6}  grad rel. err vs fp64")
    plain_fwd = statistics.median(times[("plain", False)])
    plain_bwd = statistics.median(times[("plain", True)])
    for name, (model, x, per) in options.items():
        fwd = statistics.median(times[(name, False)]) / per
        bwd = statistics.median(times[(name, True)]) / per
        with no_mkldnn() if name == "mkldnn off" else contextlib.nullcontext():
            grad = _input_gradient(model, x, labels[: len(x)])[:1]
        error = float((grad.double() - reference).norm() / reference.norm())
        print(f"{name:<16} {fwd:11.3f} {fwd / plain_fwd:6.2f} {bwd:11.3f} {bwd / plain_bwd:6.2f}  {100 * error:.3f} %")
    print("(batch rows: seconds per volume; the gradient error is that of the first volume)")


if __name__ == "__main__":
    main()
