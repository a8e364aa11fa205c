"""Time the attacks against named references, and measure how bf16 autocast changes the input-gradient sign.

Comparisons, each measured in the same run on the same network and input (medians of ``--repeats`` interleaved
runs, after one warm-up each, so that load from other processes hits both sides alike):

1. ``IterativeFGSM(steps=10)`` against the floor: ten forward + soft-Dice loss + input-gradient passes of the same
   network on the same input, with nothing else (target ratio <= 1.05); also with a per-step ``callback``.
2. Our i-FGSM with cross-entropy, absolute epsilon and [0, 1] clipping against torchattacks' ``BIM`` with the same
   settings (target ratio <= 1.0); the outputs are checked to agree.
3. An 11-point FGSM epsilon sweep with ``FGSM.sweep`` (one forward and backward pass) against eleven ``FGSM`` runs
   (target ratio <= 0.35); the outputs are checked to be identical.
4. i-FGSM with ``amp=True`` (bf16 autocast) against fp32: time only, no target.
5. bf16 autocast: the network is first trained for ``--train-steps`` steps on synthetic tumours ("trained-ish"),
   then the sign of the input gradient under ``torch.autocast(dtype=torch.bfloat16)`` is compared with fp32, and
   the soft-Dice loss reached by i-FGSM(10) at epsilon 0.05 with and without ``amp``.
6. ``APGD(steps=--apgd-steps)`` (default 100) against its floor: as many forward + soft-Dice loss + input-gradient
   passes (target ratio <= 1.1: APGD adds one forward pass per restart for its last iterate, the hard-Dice scoring of
   every iterate and its per-sample bookkeeping). ``--apgd-steps 0`` skips it.
7. ``APGD(steps=--apgd-steps, norm="l2")`` at L2 radius ``--l2-epsilon`` against the same floor (target ratio <= 1.1:
   its step normalises the gradient and its projection takes one norm per sample, instead of a sign and a clamp).
   Skipped with 6.

The network is :class:`common.networks.UNet3D` (``--batch`` volumes, default 1, ``--size``^3 input, ``--base-filters``
filters) or, if that is missing, MONAI's ``BasicUNet``. Our attacks take each volume's own loss (one soft-Dice call per
volume, so that a batch equals its volumes attacked alone); the floor and torchattacks take one batch loss. The
machine's other load makes single timings noisy: read the ratios (both the ratio of medians and of the fastest runs are
printed). Because the network dominates and that load swamps the milliseconds that differ, 1 and 2 are also timed with a
1x1x1 convolution standing in for the network: the difference is the attack's own work, and ``1 + difference / real
reference time`` the ratio it implies on the real network.

Like robustseg's command line and bundles, the script first calls :func:`common.utils.keep_freed_memory` (glibc keeps
freed tensor memory instead of page-faulting it in again at every pass, which made every side about 20 % slower;
``benchmarks/bench_allocator.py``); ``--default-malloc`` keeps glibc's defaults.

Usage::

    python benchmarks/bench_attacks.py                            # UNet3D base 8, 48^3, 5 repeats (~12 minutes)
    python benchmarks/bench_attacks.py --size 32 --repeats 1 --train-steps 10     # quick look
    python benchmarks/bench_attacks.py --batch 4 --no-bf16     # the evaluation's default batch of subjects; 1-3, 6
    python benchmarks/bench_attacks.py --apgd-steps 0             # without the APGD timings (6, 7), the longest
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchattacks
from torch import Tensor, nn

from common.attacks import APGD, FGSM, IterativeFGSM
from common.data.labels import labels_to_indices
from common.losses import SoftDiceLoss
from common.utils import keep_freed_memory

# mean intensity of each BraTS label (rows 0, 1, 2, 4) in each contrast (t1, t1ce, t2, flair)
_MEANS = torch.tensor([[0.4, 0.4, 0.3, 0.3], [0.25, 0.2, 0.7, 0.55], [0.35, 0.35, 0.8, 0.9], [0.35, 0.9, 0.6, 0.6]])


def synthetic_tumours(n: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` volumes (n, 4, size^3) in [0, 1] with a spherical tumour (core 1, rim 4, oedema 2) and their labels."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, size)] * 3, indexing="ij"))
    images, labels = [], []
    for _ in range(n):
        centre = (torch.rand(3, 1, 1, 1, generator=generator) - 0.5) * 0.6
        radius = ((grid - centre) ** 2).sum(0).sqrt() / (0.8 + 0.4 * torch.rand(1, generator=generator))
        index = torch.zeros(radius.shape, dtype=torch.long)
        index[radius < 0.6] = 2
        index[radius < 0.4] = 3
        index[radius < 0.25] = 1
        noise = 0.05 * torch.randn(4, size, size, size, generator=generator)
        images.append((_MEANS[index].permute(3, 0, 1, 2) + noise).clamp(0, 1))
        labels.append(torch.tensor([0, 1, 2, 4])[index][None])
    return torch.stack(images), torch.stack(labels)


def build_net(base_filters: int) -> tuple[nn.Module, str]:
    try:
        from common.networks import UNet3D
    except ImportError:
        from monai.networks.nets import BasicUNet

        features = (base_filters, base_filters, 2 * base_filters, 4 * base_filters, 8 * base_filters, base_filters)
        return BasicUNet(spatial_dims=3, features=features, in_channels=4, out_channels=4), "monai BasicUNet"
    return UNet3D(base_filters=base_filters), f"UNet3D(base_filters={base_filters})"


def time_runs(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each run; runs alternate, in reversed order every other round, so outside load and drift hit
    them alike."""
    for run in runs.values():
        run()  # warm-up: oneDNN picks its kernels on the first call
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def floor(net: nn.Module, images: Tensor, labels: Tensor, steps: int) -> None:
    """The unavoidable work of a ``steps``-step soft-Dice attack: forward, loss and input gradient, ``steps`` times."""
    loss = SoftDiceLoss()
    for _ in range(steps):
        x = images.detach().requires_grad_(True)
        torch.autograd.grad(loss(net(x), labels), x)


def train_briefly(net: nn.Module, size: int, steps: int) -> None:
    images, labels = synthetic_tumours(4, size, seed=1)
    loss = SoftDiceLoss(ce_weight=1.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for step in range(steps):
        optimizer.zero_grad()
        i = step % len(images)
        value = loss(net(images[i : i + 1]), labels[i : i + 1])
        value.backward()
        optimizer.step()
    net.zero_grad(set_to_none=True)
    net.eval()
    print(f"trained {steps} steps on synthetic tumours, last training loss {value.item():.3f}")


def sign_agreement(net: nn.Module, images: Tensor, labels: Tensor) -> tuple[float, float, float]:
    """Agreement of the bf16-autocast input-gradient sign with fp32: over voxels with a non-zero fp32 gradient,
    over the half of those with the largest fp32 magnitude, and the fraction of fp32 gradients that are zero."""
    loss = SoftDiceLoss()
    grads = []
    for amp in (False, True):
        x = images.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
        grads.append(torch.autograd.grad(loss(logits.float(), labels), x)[0])
    fp32, bf16 = grads
    nonzero = fp32 != 0
    agree = (fp32.sign() == bf16.sign())[nonzero]
    magnitude = fp32.abs()[nonzero]
    top = magnitude >= magnitude.median()
    return agree.float().mean().item(), agree[top].float().mean().item(), 1 - nonzero.float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48, help="edge of the cubic input (default 48)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--base-filters", type=int, default=8, help="UNet3D base filters (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; medians are shown")
    parser.add_argument("--steps", type=int, default=10, help="i-FGSM steps (default 10, the paper's)")
    parser.add_argument("--train-steps", type=int, default=40, help="training steps before the bf16 comparison")
    parser.add_argument(
        "--apgd-steps", type=int, default=100, help="APGD iterations, timed against as many passes (0 skips)"
    )
    parser.add_argument(
        "--l2-epsilon", type=float, default=1.0, help="L2 radius of APGD-L2 (7), relative to the image maximum"
    )
    parser.add_argument("--channels-last", action="store_true", help="give the network channels-last 3D input")
    parser.add_argument(
        "--no-bf16", action="store_true", help="skip bf16 (4 and 5): slow without AMX or AVX512-BF16, and 5 trains"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared CPU, more threads mostly add "
        "noise from waiting on each other; 0 keeps torch's default)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's allocator defaults (robustseg's command line and bundles call keep_freed_memory)",
    )
    args = parser.parse_args()
    kept = False if args.default_malloc else keep_freed_memory()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    net, net_name = build_net(args.base_filters)
    net.eval()
    images, labels = synthetic_tumours(args.batch, args.size, seed=0)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last_3d)
    indices = labels_to_indices(labels)[:, 0]
    epsilon, steps = 0.05, args.steps
    alpha = epsilon / steps
    epsilons = [i * 0.001 for i in range(11)]  # the paper's defence sweep, 0 to 0.010
    print(
        f"{net_name}, input {tuple(images.shape)}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}, freed memory kept: {kept}"
    )

    ifgsm = IterativeFGSM(epsilon, steps=steps)
    ours_ce = IterativeFGSM(epsilon, steps=steps, alpha=alpha, loss="ce", relative=False, clip=(0, 1))
    bim = torchattacks.BIM(net, eps=epsilon, alpha=alpha, steps=steps)
    agree = torch.allclose(ours_ce(net, images, labels), bim(images, indices))
    sweep = FGSM(epsilon).sweep(net, images, labels, epsilons)
    identical = all(torch.equal(a, FGSM(e)(net, images, labels)) for a, e in zip(sweep, epsilons, strict=True))

    runs = {
        "floor": lambda: floor(net, images, labels, steps),
        "ifgsm": lambda: ifgsm(net, images, labels),
        "ifgsm_callback": lambda: ifgsm(net, images, labels, callback=lambda record: None),
        "ours_ce": lambda: ours_ce(net, images, labels),
        "bim": lambda: bim(images, indices),
        "sweep": lambda: FGSM(epsilon).sweep(net, images, labels, epsilons),
        "fgsm_loop": lambda: [FGSM(e)(net, images, labels) for e in epsilons],
    }
    apgd_steps = args.apgd_steps
    if apgd_steps > 0:
        apgd = APGD(epsilon, steps=apgd_steps)
        apgd_l2 = APGD(args.l2_epsilon, steps=apgd_steps, norm="l2")
        runs["apgd"] = lambda: apgd(net, images, labels)
        runs["apgd_l2"] = lambda: apgd_l2(net, images, labels)
        runs["apgd_floor"] = lambda: floor(net, images, labels, apgd_steps)
    if not args.no_bf16:
        runs["ifgsm_amp"] = lambda: IterativeFGSM(epsilon, steps=steps, amp=True)(net, images, labels)
    times = time_runs(runs, args.repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    rows = [
        (f"i-FGSM({steps}) vs {steps} x (forward+loss+backward)", "ifgsm", "floor", "<= 1.05", ""),
        (f"i-FGSM({steps}) + callback vs the same floor", "ifgsm_callback", "floor", "<= 1.05", ""),
        (f"i-FGSM({steps}) CE vs torchattacks BIM", "ours_ce", "bim", "<= 1.0", f"outputs agree: {agree}"),
        ("FGSM.sweep (11 eps) vs 11 x FGSM", "sweep", "fgsm_loop", "<= 0.35", f"identical: {identical}"),
        (f"i-FGSM({steps}) amp=True (bf16) vs fp32", "ifgsm_amp", "ifgsm", "-", ""),
        (f"APGD({apgd_steps}) vs {apgd_steps} x (forward+loss+backward)", "apgd", "apgd_floor", "<= 1.1", ""),
        (f"APGD-L2({apgd_steps}) vs the same floor", "apgd_l2", "apgd_floor", "<= 1.1", ""),
    ]
    print(f"\n{'comparison':<48} {'ours (s)':>9} {'ref (s)':>9} {'ratio':>7} {'min ratio':>9}  target   check")
    for label, ours, reference, target, check in rows:
        if ours not in median:
            continue
        ratio, min_ratio = median[ours] / median[reference], fastest[ours] / fastest[reference]
        print(
            f"{label:<48} {median[ours]:9.3f} {median[reference]:9.3f} {ratio:7.3f} {min_ratio:9.3f}  {target:<8} "
            f"{check}"
        )
    print("(seconds and ratio: medians; min ratio: fastest run of each side, less sensitive to other load)")

    # The network dominates both sides, so other load on the machine swamps the few milliseconds that differ. Time
    # the same calls with a 1x1x1 convolution standing in for the network: what remains is the attack's own work
    # (loss, sign, projection, records), which adds to the real network's time.
    stand_in = nn.Conv3d(4, 4, 1).eval()
    stand_in_bim = torchattacks.BIM(stand_in, eps=epsilon, alpha=alpha, steps=steps)
    cheap_runs = {
        "floor": lambda: floor(stand_in, images, labels, steps),
        "ifgsm": lambda: ifgsm(stand_in, images, labels),
        "ifgsm_callback": lambda: ifgsm(stand_in, images, labels, callback=lambda record: None),
        "ours_ce": lambda: ours_ce(stand_in, images, labels),
        "bim": lambda: stand_in_bim(images, indices),
    }
    if apgd_steps > 0:
        cheap_runs["apgd"] = lambda: apgd(stand_in, images, labels)
        cheap_runs["apgd_l2"] = lambda: apgd_l2(stand_in, images, labels)
        cheap_runs["apgd_floor"] = lambda: floor(stand_in, images, labels, apgd_steps)
    cheap = time_runs(cheap_runs, max(20, args.repeats))
    cheap_median = {name: statistics.median(values) for name, values in cheap.items()}
    print(f"\nwithout the network (1x1x1-conv stand-in, median of {max(20, args.repeats)}): ms per step, and the ratio")
    print("the extra work implies on the real network (1 + extra / real reference time)")
    for label, ours, reference, n in [
        ("i-FGSM vs floor", "ifgsm", "floor", steps),
        ("i-FGSM + callback vs floor", "ifgsm_callback", "floor", steps),
        ("i-FGSM CE vs torchattacks BIM", "ours_ce", "bim", steps),
        ("APGD vs floor", "apgd", "apgd_floor", apgd_steps),
        ("APGD-L2 vs floor", "apgd_l2", "apgd_floor", apgd_steps),
    ]:
        if ours not in cheap_median:
            continue
        extra = cheap_median[ours] - cheap_median[reference]
        print(
            f"{label:<32} ours {1e3 * cheap_median[ours] / n:7.2f}  reference "
            f"{1e3 * cheap_median[reference] / n:7.2f}  implied ratio {1 + extra / median[reference]:.4f}"
        )

    if args.no_bf16:
        return
    print(f"\nbf16 autocast vs fp32 ({net_name}, {args.size}^3)")
    train_briefly(net, args.size, args.train_steps)
    test_images, test_labels = synthetic_tumours(2, args.size, seed=2)
    for i in range(len(test_images)):
        x, y = test_images[i : i + 1], test_labels[i : i + 1]
        all_nonzero, top_half, zero = sign_agreement(net, x, y)
        losses = []
        for amp in (False, True):
            adv = IterativeFGSM(epsilon, steps=steps, amp=amp)(net, x, y)
            with torch.no_grad():
                losses.append(SoftDiceLoss()(net(adv), y).item())
        with torch.no_grad():
            clean = SoftDiceLoss()(net(x), y).item()
        print(
            f"volume {i}: sign agreement {all_nonzero:.4f} (non-zero fp32 gradients), {top_half:.4f} (larger half); "
            f"zero fp32 gradients {zero:.4f}; soft-Dice loss clean {clean:.3f}, i-FGSM fp32 {losses[0]:.3f}, "
            f"i-FGSM bf16 {losses[1]:.3f}"
        )


if __name__ == "__main__":
    main()
