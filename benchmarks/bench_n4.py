"""Time N4 bias-field correction through SimpleITK against the ``itk`` Python package, and check they agree.

:class:`~common.data.transforms.N4BiasFieldCorrection` runs ITK's ``N4BiasFieldCorrectionImageFilter`` through
SimpleITK (a 260 MB install) since it replaced the ``itk`` wheels (1.5 GB). The reference is the former
implementation, transcribed below: the same filter through ``itk``, its log field reconstructed with
``ReconstructBiasField`` on the same shrunk grid, then resampled by the same code. Both run on the same synthetic
subjects (:func:`~common.data.synthetic.synthesize_subject`, the arrays ``robustseg data synth`` writes) at each
``--shapes`` edge, as ``MetaTensor`` with the subject's affine, so the spacing is the one a bundle sees.

Per shape it prints the median seconds per subject (4 channels) of each side, interleaved after one warm-up each so
that other load hits both alike (the warm-up also keeps ``itk``'s import, ~10 s, out of the timing), their ratio,
and per channel the largest absolute difference of the corrected images, the largest relative one
(``|new - old| / |old|`` over voxels where ``old != 0``) and the mean relative one (mean ``|new - old|`` over mean
``|old|`` on those voxels). Without ``itk`` installed only the SimpleITK time is printed.

Do not expect zero: N4's B-spline fits sum per-thread lattices, so even the reference changes with ``itk``'s thread
count (the former ``SetNumberOfWorkUnits(1)`` did not reach the fits; the SimpleITK version pins the process-wide
default to one thread during the fit instead). The last column, the reference on one thread against itself on its
default thread count, is the yardstick for the SimpleITK difference.

Usage::

    python benchmarks/bench_n4.py                            # 4 subjects at 64^3 and 96^3 (~4 CPU minutes)
    python benchmarks/bench_n4.py --subjects 2 --shapes 160 --repeats 1
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from common.data.labels import MODALITIES
from common.data.synthetic import synthesize_subject
from common.data.transforms import N4BiasFieldCorrection


class _ItkN4BiasFieldCorrection(N4BiasFieldCorrection):
    """The implementation before SimpleITK (``itk>=5.3``), transcribed: the named reference."""

    def log_bias_field(self, volume: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        import itk

        image_type, mask_type = itk.Image[itk.F, 3], itk.Image[itk.UC, 3]
        spacing = np.asarray(spacing, dtype=np.float64)
        keep = volume > 0 if self.mask == "nonzero" else np.ones(volume.shape, dtype=bool)
        factors = np.array([min(self.shrink_factor, n) for n in volume.shape])
        offsets = (factors - 1) // 2
        grid = tuple(slice(o, None, f) for o, f in zip(offsets, factors))

        def to_itk(array: np.ndarray, dtype: type) -> itk.Image:
            image = itk.image_from_array(np.ascontiguousarray(array[grid].transpose(2, 1, 0), dtype=dtype))
            image.SetSpacing((spacing * factors).tolist())
            image.SetOrigin((spacing * offsets).tolist())
            return image

        n4 = itk.N4BiasFieldCorrectionImageFilter[image_type, mask_type, image_type].New()
        n4.SetNumberOfWorkUnits(1)
        n4.SetInput(to_itk(volume, np.float32))
        n4.SetMaskImage(to_itk(keep, np.uint8))
        n4.SetMaximumNumberOfIterations(list(self.iterations))
        n4.SetNumberOfFittingLevels(len(self.iterations))
        n4.SetConvergenceThreshold(self.convergence_threshold)
        n4.Update()
        field = n4.ReconstructBiasField(n4.GetLogBiasFieldControlPointLattice())
        log_field = itk.array_from_image(field).transpose(2, 1, 0).astype(np.float64)
        if log_field.shape == volume.shape:
            return log_field
        return ndimage.affine_transform(
            log_field,
            matrix=1.0 / factors,
            offset=-offsets / factors,
            output_shape=volume.shape,
            order=1,
            mode="nearest",
        )


def _median_seconds(steps: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall seconds of each step; the steps alternate so that outside load hits them alike."""
    for step in steps:
        step()  # warm-up: imports and first-call costs
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def _differences(new: np.ndarray, old: np.ndarray) -> tuple[float, float, float]:
    """Largest absolute, largest relative (to ``|old|``, where ``old != 0``) and mean relative difference."""
    new, old = new.astype(np.float64), old.astype(np.float64)
    absolute = np.abs(new - old)
    nonzero = old != 0
    if not nonzero.any():
        return float(absolute.max()), 0.0, 0.0
    relative = absolute[nonzero] / np.abs(old[nonzero])
    return float(absolute.max()), float(relative.max()), float(absolute[nonzero].mean() / np.abs(old[nonzero]).mean())


def _itk_threads(threads: int | None) -> int:
    """Set ``itk``'s global default thread count (``None``: leave it); return the previous one."""
    import itk

    previous = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    if threads is not None:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    return previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=4, help="synthetic subjects per shape (seed 0)")
    parser.add_argument("--shapes", type=int, nargs="+", default=[64, 96], help="cubic grid edges in voxels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per subject (median reported)")
    parser.add_argument("--shrink-factor", type=int, default=4, help="N4BiasFieldCorrection's shrink_factor")
    args = parser.parse_args()
    import SimpleITK as sitk

    with_itk = importlib.util.find_spec("itk") is not None
    new = N4BiasFieldCorrection(shrink_factor=args.shrink_factor)
    old = _ItkN4BiasFieldCorrection(shrink_factor=args.shrink_factor)
    versions = f"SimpleITK {sitk.Version_VersionString()}"
    if with_itk:
        versions += f" vs itk {version('itk')} with {_itk_threads(None)} threads (reference)"
    print(f"N4 shrink_factor {args.shrink_factor}, iterations {list(new.iterations)}; {versions}")
    print(f"seconds per subject (4 channels): median of {args.repeats}, interleaved after a warm-up")
    for shape in args.shapes:
        new_times, old_times = [], []
        # per channel, worst over subjects: _differences of SimpleITK against itk, then of itk on 1 thread against itk
        worst = {m: np.zeros(6) for m in MODALITIES}
        for index in range(args.subjects):
            subject = synthesize_subject(index, seed=0, shape=shape)
            image = MetaTensor(
                torch.from_numpy(np.stack([subject.images[m] for m in MODALITIES]).astype(np.float32)),
                affine=torch.from_numpy(subject.affine),
            )
            if not with_itk:
                new_times += _median_seconds([lambda x=image: new(x)], args.repeats)
                continue
            t_new, t_old = _median_seconds([lambda x=image: new(x), lambda x=image: old(x)], args.repeats)
            new_times.append(t_new)
            old_times.append(t_old)
            corrected_new, corrected_old = new(image).numpy(), old(image).numpy()
            threads = _itk_threads(1)
            try:
                corrected_old_1 = old(image).numpy()
            finally:
                _itk_threads(threads)
            for c, m in enumerate(MODALITIES):
                found = _differences(corrected_new[c], corrected_old[c]) + _differences(
                    corrected_old_1[c], corrected_old[c]
                )
                worst[m] = np.maximum(worst[m], found)
        line = f"{shape}^3, {args.subjects} subjects: SimpleITK {statistics.median(new_times):.3f} s"
        if with_itk:
            ratio = statistics.median(new_times) / statistics.median(old_times)
            line += f", itk {statistics.median(old_times):.3f} s, SimpleITK/itk {ratio:.2f}"
        print(line, flush=True)
        if with_itk:
            print(f"  {'':<6}  {'SimpleITK vs itk':^28}   {'itk 1 thread vs itk':^28}".rstrip())
            print((f"  {'':<6}" + f" {'max abs':>9} {'max rel':>8} {'mean rel':>9} " * 2).rstrip())
            for m, w in worst.items():
                print(
                    f"  {m:<6}" + "".join(f" {w[i]:>9.3g} {w[i + 1]:>8.2g} {w[i + 2]:>9.2g} " for i in (0, 3)).rstrip()
                )
    if with_itk:
        print("corrected intensities (int16 scale); rel: |a - b| / |b| where b != 0; mean rel: mean |a - b| / mean |b|")
    else:
        print("itk is not installed: no reference (pip install itk to compare)")


if __name__ == "__main__":
    main()
