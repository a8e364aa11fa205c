"""Time randomized-smoothing certification (``common.certify``) against the plain forward passes it is made of.

SegCertify needs ``n0 + n`` forward passes per volume. The smoothing adds, per batch of noisy copies, the Gaussian
noise, a channels-last argmax and a scatter-add of the counts; the certificate adds per volume the binomial p-values
and the Holm procedure over the voxels and, per reported radius, another Holm pass. This prints:

* ``plain``: ``n`` forward passes of the network in batches of ``--batch`` (no grad, eval mode), on one clean volume
  repeated: the floor;
* ``smoothing``: :meth:`GaussianSmoothing.counts` for ``n`` samples at the same batch (target: at most 1.1 x plain);
* ``certify``: :func:`certify` with ``n0`` selection and ``n`` estimation samples plus the certified Dice at every
  radius of ``--radii``: seconds per subject and voxels certified (tested) per second.

On the 2-core development machine (shared with other jobs, load about 3.5), ``OMP_NUM_THREADS=1 python
benchmarks/bench_certify.py --repeats 3`` printed: plain 20.1 s, smoothing 19.7 s (ratio 0.98), certify 25.5 s per
subject (4,300 voxels certified per second); the smoothing's own work (noise, argmax, counts) is 0.77 s per 100
samples with an identity network, about 4 % of the network's time, and the statistics 0.2 s per subject plus 0.04 s
per radius. The time is the network's: seconds per subject ~ (n0 + n) x one forward pass.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_certify.py                  # UNet3D base 8, 48^3, n = 100, 1 thread
    python benchmarks/bench_certify.py --device cuda --size 128 --base-filters 16 --batch 32 --n 1000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from common.certify import GaussianSmoothing, certified_dice, certify
from common.networks import UNet3D


def _timed(functions: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` interleaved rounds (so a busy machine slows all alike)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            function()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48, help="edge of the cubic input (default 48)")
    parser.add_argument("--base-filters", type=int, default=8, help="UNet3D base filters (default 8)")
    parser.add_argument("--n", type=int, default=100, help="estimation samples (default 100)")
    parser.add_argument("--n0", type=int, default=10, help="selection samples (default 10)")
    parser.add_argument("--batch", type=int, default=8, help="noisy copies per forward pass (default 8)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level (default 0.25)")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.25, 0.5])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians are shown (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    network = UNet3D(base_filters=args.base_filters).to(device).eval()
    image = torch.rand(1, 4, *(args.size,) * 3, device=device)
    label = torch.zeros(1, 1, *(args.size,) * 3, dtype=torch.long, device=device)
    label[..., 16:32, 16:32, 16:32] = 2
    smoothing = GaussianSmoothing(network, args.sigma, args.batch)
    voxels = image[0, 0].numel()

    # contiguous copies, made once: a stride-0 expand() would send the convolutions down a slower path
    chunks = [min(args.batch, args.n - start) for start in range(0, args.n, args.batch)]
    copies = {k: image.expand(k, *image.shape[1:]).contiguous() for k in set(chunks)}

    def plain() -> None:
        with torch.no_grad():
            for k in chunks:
                network(copies[k])

    def smoothed() -> None:
        smoothing.counts(image, args.n, torch.Generator(device=device).manual_seed(0))

    def certified() -> None:
        cert = certify(smoothing, image, n0=args.n0, n=args.n, alpha=0.001, tau=0.75, seed=0)
        for radius in args.radii:
            certified_dice(cert, label, radius)

    plain(), smoothed()  # warm-up (oneDNN primitives, CUDA kernels)
    runs = _timed({"plain": plain, "smoothing": smoothed, "certify": certified}, args.repeats, device)
    ratio = runs["smoothing"] / runs["plain"]
    print(
        f"UNet3D(base_filters={args.base_filters}) at {args.size}^3 on {device} ({torch.get_num_threads()} thread(s)), "
        f"batch {args.batch}, sigma {args.sigma}, medians of {args.repeats} interleaved"
    )
    print(f"plain     {args.n} forward passes        {runs['plain']:8.2f} s")
    print(f"smoothing {args.n} noise samples         {runs['smoothing']:8.2f} s   ratio {ratio:.3f} (target <= 1.1)")
    print(
        f"certify   n0={args.n0} + n={args.n}, {len(args.radii)} radii  {runs['certify']:8.2f} s per subject   "
        f"{voxels / runs['certify']:,.0f} voxels certified per second"
    )


if __name__ == "__main__":
    main()
