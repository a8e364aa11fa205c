"""Time robustseg's SSIM (:func:`common.metrics.ssim`: the Gaussian window one axis at a time, the batch at once)
against MONAI's :class:`~monai.metrics.SSIMMetric` (a dense 11^3 window, one sample at a time, as robustseg called it
before).

Every attacked iterate and every MR-artifact input of the evaluation gets PSNR, SSIM and RMSE against the clean input,
and SSIM was nearly all of that time. Prints, per shape, the median time of both, their ratio (target <= 0.5) and the
largest difference of the values (float32 rounding only).

Usage::

    python benchmarks/bench_quality.py
    python benchmarks/bench_quality.py --repeats 10 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.metrics import SSIMMetric

from common.metrics import ssim

SHAPES = [(1, 4, 48, 48, 48), (4, 4, 48, 48, 48), (1, 4, 96, 96, 96), (16, 4, 128, 128)]


def median_s(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def monai_ssim(clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
    """The former implementation: MONAI's metric per sample with the sample's clean data range."""
    values = []
    for b in range(len(clean)):
        metric = SSIMMetric(clean.ndim - 2, data_range=float(clean[b].max() - clean[b].min()), reduction="none")
        values.append(metric(adversarial[b : b + 1], clean[b : b + 1]).reshape(()))
    return torch.stack(values).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; medians are shown")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'shape':<22} {'MONAI (s)':>10} {'robustseg (s)':>14} {'ratio':>7} {'max |diff|':>11}")
    for shape in SHAPES:
        generator = torch.Generator().manual_seed(0)
        clean = torch.rand(shape, generator=generator)
        adversarial = clean + 0.05 * torch.randn(shape, generator=generator)
        reference = median_s(lambda c=clean, a=adversarial: monai_ssim(c, a), args.repeats)
        ours = median_s(lambda c=clean, a=adversarial: ssim(c, a), args.repeats)
        diff = float((monai_ssim(clean, adversarial) - ssim(clean, adversarial)).abs().max())
        print(f"{str(shape):<22} {reference:10.3f} {ours:14.3f} {ours / reference:7.2f} {diff:11.1e}")


if __name__ == "__main__":
    main()
