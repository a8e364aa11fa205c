"""Time ``channel_argmax`` (channels made last, then argmax) against ``torch.argmax(logits, dim=1)``.

Every prediction of robustseg is an argmax over the 4 channels of (B, 4, *spatial) logits: scoring, the attacks'
per-step predictions and best-iterate tracking (PGD, APGD), masked losses. Prints, per shape, the median time of
both and their ratio (target <= 0.5), and checks that the indices are identical.

Usage::

    python benchmarks/bench_argmax.py
    python benchmarks/bench_argmax.py --repeats 20 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common.data.labels import channel_argmax

SHAPES = [(1, 4, 48, 48, 48), (4, 4, 48, 48, 48), (1, 4, 128, 128, 128), (64, 4, 128, 128)]


def median_ms(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per method; medians are shown")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print(f"{'shape':<22} {'torch.argmax ms':>16} {'channel_argmax ms':>18} {'ratio':>7}  identical  target")
    generator = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        logits = torch.randn(shape, generator=generator)
        logits[:, 2] = logits[:, 1]  # ties: both must pick the first channel
        same = torch.equal(channel_argmax(logits), torch.argmax(logits, dim=1, keepdim=True))
        ref = median_ms(lambda x=logits: torch.argmax(x, dim=1, keepdim=True), args.repeats)
        ours = median_ms(lambda x=logits: channel_argmax(x), args.repeats)
        print(f"{str(shape):<22} {ref:16.1f} {ours:18.1f} {ours / ref:7.3f}  {same!s:9}  <= 0.5")


if __name__ == "__main__":
    main()
