"""Preprocessing transforms for BraTS-like MR volumes, used beside MONAI's own in the bundle configs.

The paper's preprocessing (Liu et al. 2021, "Training details"): N4 bias-field correction, intensity normalisation
and resizing to 128^3. A bundle spells it out as::

    LoadImaged(keys=["image", "label"]) -> EnsureChannelFirstd -> BraTSLayoutd -> Orientationd(axcodes="RAS")
    -> N4BiasFieldCorrectiond (optional, cached) -> NormalizeBraTSd -> Resized(spatial_size=[128, 128, 128])

:class:`BraTSLayoutd` brings an MSD Task01 subject to the BraTS channel order and labels, so everything after it
sees one convention; :class:`N4BiasFieldCorrectiond` wraps ITK's N4 (through SimpleITK); :class:`NormalizeBraTSd`
picks one of two MONAI normalisations. All of them keep ``MetaTensor`` metadata (affine, ``applied_operations``), so
MONAI's ``Invertd`` can bring a prediction back to the input grid.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    MapLabelValue,
    MapTransform,
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRangePercentilesd,
    Transform,
)
from monai.utils import convert_to_dst_type
from scipy import ndimage

from common.data.datalist import LAYOUTS, MSD_MODALITIES, MSD_TO_BRATS_LABELS
from common.data.labels import MODALITIES
from common.errors import RobustsegError
from common.utils.validation import check_int, check_number, is_integer, look_up_option

__all__ = ["BraTSLayoutd", "N4BiasFieldCorrection", "N4BiasFieldCorrectiond", "NORMALIZE_MODES", "NormalizeBraTSd"]

NORMALIZE_MODES: tuple[str, ...] = ("minmax", "standardize")
N4_MASKS: tuple[str, ...] = ("nonzero", "none")

_MSD_TO_BRATS_CHANNELS = [MSD_MODALITIES.index(m) for m in MODALITIES]  # [1, 2, 3, 0]
_ITK_THREADS_LOCK = threading.Lock()  # ITK's default thread count is process-wide: one N4 call changes it at a time


@contextmanager
def _single_threaded_itk(sitk: ModuleType) -> Iterator[None]:
    """Run ITK filters created meanwhile with one thread and one work unit, then restore the process default.

    N4's own loop is sequential (its ``SetNumberOfWorkUnits`` changes nothing), but each iteration's B-spline fit is
    a filter N4 creates inside, which takes ITK's global default thread count (the number of cores) and sums
    per-thread lattices in that order. The fit's histogram sharpening amplifies the rounding: from 1 to 2 threads
    the corrected synthetic volumes change by up to 1 % in some voxels (``benchmarks/bench_n4.py``).
    """
    with _ITK_THREADS_LOCK:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _source_name(data: Mapping, value: object) -> str:
    """The subject (or, failing that, the file) an item came from, for error messages."""
    if "subject" in data:
        return f"subject {data['subject']}"
    meta = getattr(value, "meta", {})
    return str(meta.get("filename_or_obj", "input"))


class BraTSLayoutd(MapTransform):
    """Bring an item to the BraTS convention: channels t1, t1ce, t2, flair and labels {0, 1, 2, 4}.

    Items whose ``layout_key`` is ``"msd"`` (MSD Task01 entries written by
    :func:`common.data.datalist.write_datalist`) get their image channels reordered from FLAIR, T1w, T1gd, T2w and
    their labels mapped 1 -> 2 (oedema), 2 -> 1 (non-enhancing tumour), 3 -> 4 (enhancing tumour); other items pass
    through unchanged. Either way the image must have 4 channels (and a label 1), so apply it after
    ``EnsureChannelFirstd``. Metadata, including ``applied_operations``, is kept, and the transform itself is not
    recorded: channel order and label values play no part in inverting spatial transforms.

    Args:
        keys: keys of the items to convert (images and labels).
        label_keys: which of ``keys`` are label maps; the others are 4-channel images. Names not in ``keys`` are
            ignored, so ``BraTSLayoutd(keys="image")`` serves inference as it is.
        layout_key: the item key holding the layout, ``"brats"`` (the default when absent) or ``"msd"``.
        allow_missing_keys: don't raise if a key is missing (e.g. ``label`` at inference).

    Raises:
        RobustsegError: for an unknown layout, an image without 4 channels, a label without 1 channel, or MSD labels
            outside {0, 1, 2, 3}; the message names the subject or file.

    Example:
        >>> item = {"image": torch.rand(4, 8, 8, 8), "label": torch.zeros(1, 8, 8, 8), "layout": "msd"}
        >>> out = BraTSLayoutd(keys=["image", "label"])(item)
        >>> torch.equal(out["image"][3], item["image"][0])  # FLAIR is the last BraTS channel
        True
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_keys: KeysCollection = ("label",),
        layout_key: str = "layout",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = (label_keys,) if isinstance(label_keys, str) else tuple(label_keys)
        self.layout_key = layout_key

    def _image(self, img, layout: str, source: str):
        if img.ndim != 4 or img.shape[0] != len(MODALITIES):
            raise RobustsegError(
                f"{source}: image of shape {tuple(img.shape)}, expected 4 channels first "
                f"({', '.join(MSD_MODALITIES if layout == 'msd' else MODALITIES)}; apply EnsureChannelFirstd first)."
            )
        return img[_MSD_TO_BRATS_CHANNELS] if layout == "msd" else img

    def _label(self, lab, layout: str, source: str):
        if lab.ndim != 4 or lab.shape[0] != 1:
            raise RobustsegError(
                f"{source}: label of shape {tuple(lab.shape)}, expected 1 channel first "
                "(apply EnsureChannelFirstd first)."
            )
        if layout != "msd":
            return lab
        values = torch.unique(torch.as_tensor(lab)).tolist()
        bad = [v for v in values if v not in MSD_TO_BRATS_LABELS]
        if bad:
            raise RobustsegError(f"{source}: MSD label values {bad}, expected only {list(MSD_TO_BRATS_LABELS)}.")
        # MapLabelValue compares with the input, not with values already mapped, so the 1 <-> 2 swap is safe
        mapping = MapLabelValue(list(MSD_TO_BRATS_LABELS), list(MSD_TO_BRATS_LABELS.values()), dtype=lab.dtype)
        return mapping(lab)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        layout = d.get(self.layout_key, "brats")
        if layout not in LAYOUTS:
            source = _source_name(d, None)
            raise RobustsegError(f"{source}: {self.layout_key} must be one of {list(LAYOUTS)}, got {layout!r}.")
        for key in self.key_iterator(d):
            source = _source_name(d, d[key])
            d[key] = (self._label if key in self.label_keys else self._image)(d[key], layout, source)
        return d


class N4BiasFieldCorrection(Transform):
    """N4 bias-field correction (Tustison et al. 2010; the paper's preprocessing) of each channel, with ITK (SimpleITK).

    For speed, as usual for N4 (ANTs shrinks by 4 too), the field is estimated on the image subsampled by
    ``shrink_factor`` per axis (every ``shrink_factor``-th voxel, mask alike) as the B-spline log-field ITK's
    ``N4BiasFieldCorrectionImageFilter`` fits there, through its SimpleITK interface (``GetLogBiasFieldAsImage`` of
    the shrunk image: its control-point lattice evaluated on the shrunk grid). That log-field is resampled
    trilinearly (scipy ``affine_transform``; edge values held over the last ``shrink_factor / 2`` voxels) at the
    exact positions of the full-resolution voxels, and the image is divided by its exponential. The fit uses the
    voxel spacing from the affine (``MetaTensor.pixdim``; 1 mm for plain tensors), in voxel-aligned axes.

    ITK runs the fit on one thread (its process-wide default is set to 1 for the call), so the result does not
    depend on the number of cores (MONAI's ``PersistentDataset`` caches it); expect a few seconds per channel for a
    240 x 240 x 155 BraTS volume at ``shrink_factor=4``.

    Args:
        shrink_factor: integer shrink factor per axis for the estimation (capped at each axis's size); 1 fits at
            full resolution.
        iterations: maximum iterations per fitting level; its length is the number of B-spline fitting levels.
        mask: ``"nonzero"`` fits the brain only: voxels > 0, leaving out the zero background of skull-stripped
            BraTS volumes (and the rare negative interpolation artefacts, which N4's log cannot take; they are still
            divided by the field). ``"none"`` fits every voxel and needs intensities >= 0.
        convergence_threshold: ITK's stopping threshold on the change of the field per level.

    Raises:
        RobustsegError: for bad arguments; at call time for an input that is not ``(C, H, W, D)``, negative
            intensities with ``mask="none"`` (apply N4 before normalisation), or a channel ITK's N4 cannot fit.

    Example:
        >>> corrected = N4BiasFieldCorrection(shrink_factor=4)(image)  # doctest: +SKIP
    """

    def __init__(
        self,
        shrink_factor: int = 4,
        iterations: Sequence[int] = (50, 50, 30, 20),
        mask: str = "nonzero",
        convergence_threshold: float = 0.001,
    ) -> None:
        check_int("shrink_factor", shrink_factor, 1)
        if (
            isinstance(iterations, str | int)
            or not iterations
            or not all(is_integer(i) and i >= 1 for i in iterations)
        ):
            raise RobustsegError(f"iterations must be a non-empty list of integers >= 1, got {iterations!r}.")
        check_number("convergence_threshold", convergence_threshold, 0)
        self.shrink_factor = shrink_factor
        self.iterations = tuple(iterations)
        self.mask = look_up_option("mask", mask, N4_MASKS)
        self.convergence_threshold = float(convergence_threshold)

    def log_bias_field(self, volume: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """The N4 log bias field of one 3-D volume, on the volume's grid (``volume / exp(field)`` is corrected)."""
        import SimpleITK as sitk  # deferred: only N4 needs it

        spacing = np.asarray(spacing, dtype=np.float64)
        keep = volume > 0 if self.mask == "nonzero" else np.ones(volume.shape, dtype=bool)
        # subsample every factor-th voxel from a known offset, so the shrunk grid's geometry is exact (ITK's
        # ShrinkImageFilter reports an origin up to half a voxel away from the voxels it actually keeps)
        factors = np.array([min(self.shrink_factor, n) for n in volume.shape])
        offsets = (factors - 1) // 2
        grid = tuple(slice(o, None, f) for o, f in zip(offsets, factors))

        def to_sitk(array: np.ndarray, dtype: type) -> sitk.Image:
            # numpy (x, y, z) -> ITK's (z, y, x) array order, so ITK index i is numpy axis i
            image = sitk.GetImageFromArray(np.ascontiguousarray(array[grid].transpose(2, 1, 0), dtype=dtype))
            image.SetSpacing((spacing * factors).tolist())
            image.SetOrigin((spacing * offsets).tolist())
            return image

        shrunk = to_sitk(volume, np.float32)
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations([int(i) for i in self.iterations])  # length = fitting levels
        n4.SetConvergenceThreshold(self.convergence_threshold)
        with _single_threaded_itk(sitk):  # a fixed summation order: identical fields on any number of cores
            n4.Execute(shrunk, to_sitk(keep, np.uint8))
        # the fitted B-spline on the shrunk grid (ITK's BSplineControlPointImageFilter maps output *indices* onto
        # the spline's domain, so asking it for the full grid would stretch the field by up to a voxel)
        field = n4.GetLogBiasFieldAsImage(shrunk)
        log_field = sitk.GetArrayFromImage(field).transpose(2, 1, 0).astype(np.float64)
        if log_field.shape == volume.shape:
            return log_field
        # full-resolution voxel i is at shrunk index (i - offset) / factor; edge values are held outside
        return ndimage.affine_transform(
            log_field,
            matrix=1.0 / factors,
            offset=-offsets / factors,
            output_shape=volume.shape,
            order=1,
            mode="nearest",
        )

    def __call__(self, img):
        """Correct each channel of ``img`` (``(C, H, W, D)``, tensor or array); metadata is kept."""
        if img.ndim != 4:
            raise RobustsegError(f"N4BiasFieldCorrection: input of shape {tuple(img.shape)}, expected (C, H, W, D).")
        spacing = [float(s) for s in img.pixdim] if hasattr(img, "pixdim") else [1.0, 1.0, 1.0]
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        out = np.empty(array.shape, dtype=np.float32)
        for c, volume in enumerate(array):
            volume = volume.astype(np.float32)
            low = float(volume.min())
            if self.mask == "none" and low < 0:
                raise RobustsegError(
                    f"N4BiasFieldCorrection: channel {c} has intensities down to {low:g}, expected >= 0 with "
                    "mask 'none' (apply N4 to raw intensities, before normalisation, or use mask 'nonzero')."
                )
            if not (volume > 0).any():  # nothing to fit: an empty channel
                out[c] = volume
                continue
            try:
                field = self.log_bias_field(volume, spacing)
            except RuntimeError as err:  # ITK exceptions, e.g. too few voxels in the mask after shrinking
                message = " ".join(str(err).split())[-200:]
                raise RobustsegError(f"N4BiasFieldCorrection: channel {c}: ITK's N4 failed ({message}).") from err
            out[c] = volume / np.exp(field)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class N4BiasFieldCorrectiond(MapTransform):
    """Dictionary version of :class:`N4BiasFieldCorrection`: N4 bias-field correction of each image channel.

    Deterministic and picklable (only its settings are stored), so MONAI's ``PersistentDataset`` can cache it.

    Args:
        keys: keys of the images to correct.
        shrink_factor: see :class:`N4BiasFieldCorrection`.
        iterations: see :class:`N4BiasFieldCorrection`.
        mask: ``"nonzero"`` or ``"none"``, see :class:`N4BiasFieldCorrection`.
        convergence_threshold: see :class:`N4BiasFieldCorrection`.
        allow_missing_keys: don't raise if a key is missing.

    Example:
        >>> n4 = N4BiasFieldCorrectiond(keys="image", shrink_factor=4, iterations=[50, 50, 30, 20])
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        shrink_factor: int = 4,
        iterations: Sequence[int] = (50, 50, 30, 20),
        mask: str = "nonzero",
        convergence_threshold: float = 0.001,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.corrector = N4BiasFieldCorrection(shrink_factor, iterations, mask, convergence_threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.corrector(d[key])
            except RobustsegError as err:
                raise RobustsegError(f"{_source_name(d, d[key])}, key {key!r}: {err}") from None
        return d


class NormalizeBraTSd(MapTransform):
    """Per-volume, per-channel intensity normalisation (the paper's [0, 1] scaling or its global standardisation).

    ``mode="minmax"`` (default) maps each channel of each volume linearly onto [0, 1] (MONAI ``ScaleIntensityd``,
    ``channel_wise=True``), so an attack's ``epsilon = 0.05`` is 5 % of the maximum intensity, as in the paper. No
    percentile clipping by default: the paper's epsilon is relative to the maximum, and on a BraTS volume, mostly
    background, a high percentile of all voxels falls inside the bright enhancing tumour of T1Gd, which clipping
    would flatten. ``upper_percentile`` (e.g. 99.9) clips hot voxels instead (MONAI
    ``ScaleIntensityRangePercentilesd`` from the 0th percentile, percentiles over all voxels of the channel).

    ``mode="standardize"`` is a z-score per channel over the non-zero (brain) voxels, background left at 0 (MONAI
    ``NormalizeIntensityd(nonzero=True, channel_wise=True)``).

    Args:
        keys: keys of the images to normalise.
        mode: ``"minmax"`` or ``"standardize"``.
        upper_percentile: ``None`` or a percentile in (0, 100] mapped to 1 and clipped above ("minmax" only).
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        RobustsegError: for an unknown ``mode`` or a bad ``upper_percentile``.

    Example:
        >>> out = NormalizeBraTSd(keys="image")({"image": torch.rand(4, 8, 8, 8) * 900})
        >>> float(out["image"].amax())
        1.0
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mode: str = "minmax",
        upper_percentile: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = look_up_option("mode", mode, NORMALIZE_MODES)
        if upper_percentile is not None:
            if self.mode != "minmax":
                raise RobustsegError(f"upper_percentile applies to mode 'minmax' only, got mode {mode!r}.")
            check_number("upper_percentile", upper_percentile, 0, 100, min_inclusive=False, hint="or None")
        self.upper_percentile = upper_percentile
        if self.mode == "standardize":
            self.transform = NormalizeIntensityd(
                self.keys, nonzero=True, channel_wise=True, allow_missing_keys=allow_missing_keys
            )
        elif upper_percentile is None:
            self.transform = ScaleIntensityd(
                self.keys, minv=0.0, maxv=1.0, channel_wise=True, allow_missing_keys=allow_missing_keys
            )
        else:
            self.transform = ScaleIntensityRangePercentilesd(
                self.keys, lower=0.0, upper=float(upper_percentile), b_min=0.0, b_max=1.0, clip=True,
                channel_wise=True, allow_missing_keys=allow_missing_keys,
            )  # fmt: skip

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        return self.transform(data)
