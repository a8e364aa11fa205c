"""The embedded synthetic BraTS-like data set: deformed MNI anatomy, four MR contrasts and a labelled tumour.

Every robustseg command must run on a fresh machine without a download, so the default data is generated. The
anatomy is the MNI ICBM152 2009a nonlinear symmetric template (T1 and grey/white-matter probability maps at 1 mm)
that the ``nilearn`` wheel ships; it is resampled once to a cubic grid. Each subject then gets

1. a random smooth deformation (as MONAI ``Rand3DElastic``: elastic field plus a small rotation, scaling and shift);
2. a tumour at a random position in hemispheric white matter (above the tentorium, off the midline): a
   lobulated, elongated blob (a noisy ellipsoid level set) with necrotic/non-enhancing core (BraTS label 1) inside
   an enhancing rim of irregular thickness (label 4), surrounded by oedema (label 2) that spreads along white
   matter and spares cortex and CSF;
3. mass effect: a radial displacement field that pushes the surrounding tissue (ventricles included) outward;
4. T1, T1Gd, T2 and FLAIR from per-tissue intensity models with per-subject jitter: T1 WM > GM > CSF; T1Gd as
   T1 with a very bright enhancing rim and a dark necrotic core; T2 with bright CSF, core and oedema and dark WM;
   FLAIR with dark CSF and the oedema brightest; oedema mixes the underlying tissue with fluid, more so near the
   core; the tumour has a mild texture;
5. a smooth multiplicative bias field per series (MONAI ``RandBiasField``), Rician noise (MONAI
   ``RandRicianNoise``) and, as in BraTS, skull stripping: voxels outside the brain are exactly 0.

Images are written as int16 (white matter about 750 on T1), labels as uint8 with values exactly {0, 1, 2, 4}, in
BraTS file naming (``<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``) with an RAS affine whose grid is centred on the
brain in MNI coordinates, plus a MONAI datalist with a seeded train/test split (Liu et al. 2021 kept 20 % for
testing). Subject ``k`` depends only on ``(seed, k, shape)``, so adding subjects never changes existing ones.

The module is longer than most (about 670 lines) because it is one pipeline: the steps above share the template
grid, the tissue classes and the random generator of a subject, and splitting them would only pass those around.

Example::

    from common.data.synthetic import ensure_synthetic_dataset
    from monai.data import load_decathlon_datalist

    datalist = ensure_synthetic_dataset("data/synthetic", subjects=40, seed=0, shape=96)
    test_files = load_decathlon_datalist(datalist, data_list_key="testing")
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.data.datalist import split_subjects, write_datalist
from common.data.labels import MODALITIES
from common.errors import RobustsegError
from common.utils.files import atomic_write, write_atomic
from common.utils.validation import check_int, check_number

__all__ = [
    "SyntheticSubject",
    "synthesize_subject",
    "write_synthetic_dataset",
    "ensure_synthetic_dataset",
    "synthetic_subject_id",
    "SYNTHETIC_MANIFEST",
]

GENERATOR_VERSION = 3
"""Bump whenever the generated voxels change, so that cached data sets are regenerated."""

SYNTHETIC_MANIFEST = "synthetic.json"
"""Name of the file recording the settings of a generated data set (inside its folder)."""

DATALIST_NAME = "datalist.json"

FIELD_OF_VIEW_MM = 200.0
"""Edge of the cubic grid in mm: the template brain spans at most 184 mm (anterior-posterior)."""
MAX_SHAPE = 256
"""The largest grid edge: 0.8 mm voxels over the field of view; the 1 mm template has no detail for finer grids, and a
subject's four contrasts and tissue maps at 256^3 already take about 1 GiB while it is made."""
MAX_SUBJECTS = 100_000
"""The most subjects one call writes (BraTS 2021 has 1251): a larger count is a typo, not a data set."""

_TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_SUBJECT_RE = re.compile(r"^synth_\d{3,}$")
_LABEL_NCR, _LABEL_ED, _LABEL_ET = 1, 2, 4
_MIN_SUBJECTS_FOR_POOL = 8

# Mean intensities (white matter on T1 ~ 750, like an MR scanner's arbitrary units) of the tissue classes
# (CSF, GM, WM) and of the tumour compartments (NCR/NET, ET, and the fluid that oedema mixes into its tissue).
_TISSUE_INTENSITY = {
    "t1": (250.0, 520.0, 750.0),
    "t1ce": (260.0, 530.0, 760.0),
    "t2": (1000.0, 600.0, 400.0),
    "flair": (120.0, 560.0, 420.0),
}
_TUMOUR_INTENSITY = {  # (NCR/NET, ET, oedema fluid)
    "t1": (300.0, 560.0, 380.0),
    "t1ce": (280.0, 1150.0, 400.0),
    "t2": (1000.0, 700.0, 950.0),
    "flair": (520.0, 700.0, 1100.0),
}


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject in memory.

    Attributes:
        images: int16 arrays ``(shape, shape, shape)`` keyed by modality (``MODALITIES`` order).
        label: uint8 BraTS label map with values {0, 1, 2, 4}.
        affine: 4x4 RAS voxel-to-world matrix in mm, shared by all images and the label.
        tissue: float32 ``(3, shape, shape, shape)`` probabilities of CSF, grey and white matter of the deformed
            anatomy (after mass effect, before the tumour replaced them); not written to disk.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    tissue: np.ndarray


@dataclass(frozen=True)
class _Template:
    tissue: np.ndarray  # (4, s, s, s) float32: CSF, GM, WM probabilities and brain-mask fraction
    affine: np.ndarray
    spacing: float


def synthetic_subject_id(index: int) -> str:
    """The subject id of the ``index``-th synthetic subject: ``synth_000``, ``synth_001``, ..."""
    return f"synth_{index:03d}"


# --------------------------------------------------------------------------------------------------- anatomy


def _template_path(name: str) -> Path:
    # find_spec, not importing nilearn.datasets: that pulls in pandas and scikit-learn (~2 s)
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise RobustsegError("MNI template: the nilearn package is not installed, expected nilearn >= 0.10.")
    path = Path(spec.origin).parent / "datasets" / "data" / _TEMPLATE_FILE.format(name)
    if not path.is_file():
        raise RobustsegError(
            f"MNI template: {path} is missing, expected the ICBM152 2009 template shipped with nilearn >= 0.10 "
            "(reinstall nilearn)."
        )
    return path


@functools.lru_cache(maxsize=4)
def _template(shape: int) -> _Template:
    """The MNI ICBM152 2009 tissue maps resampled to a ``shape``^3 grid of edge ``FIELD_OF_VIEW_MM``."""
    import nibabel as nib

    images = {name: nib.load(_template_path(name)) for name in ("t1", "gm", "wm")}
    src_affine = images["t1"].affine
    t1, gm, wm = (np.asarray(images[n].dataobj, dtype=np.float32) / 255.0 for n in ("t1", "gm", "wm"))
    # The template T1 is skull-stripped: its support (holes, i.e. ventricles, filled) is the brain with its CSF.
    brain = ndimage.binary_fill_holes((t1 > 0) | (gm + wm > 0.1)).astype(np.float32)
    csf = brain * np.clip(1.0 - gm - wm, 0.0, 1.0)
    stack = np.stack([csf, gm * brain, wm * brain, brain])

    spacing = FIELD_OF_VIEW_MM / shape
    vox = np.argwhere(brain > 0)
    centre_world = src_affine[:3, :3] @ ((vox.min(0) + vox.max(0)) / 2.0) + src_affine[:3, 3]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre_world - spacing * (shape - 1) / 2.0
    # target voxel -> source voxel, for scipy's pull-back resampling
    to_source = np.linalg.inv(src_affine) @ affine
    src_step = np.abs(np.diag(to_source)[:3])
    sigma = np.maximum((src_step - 1.0) / 2.0, 0.0)  # anti-aliasing as in skimage.transform.resize
    out = np.empty((4, shape, shape, shape), dtype=np.float32)
    for c in range(4):
        smoothed = ndimage.gaussian_filter(stack[c], sigma) if sigma.any() else stack[c]
        out[c] = ndimage.affine_transform(
            smoothed, to_source[:3, :3], to_source[:3, 3], output_shape=(shape,) * 3, order=1, cval=0.0
        )
    np.clip(out, 0.0, 1.0, out=out)
    return _Template(tissue=out, affine=affine, spacing=spacing)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def _deform(template: _Template, rng: np.random.Generator) -> np.ndarray:
    """Random smooth deformation of the tissue maps: an elastic field plus a small rotation, scaling and shift.

    This is MONAI's ``Rand3DElastic`` (Gaussian-smoothed random offsets added to a ``RandAffineGrid``, resampled
    with ``Resample``) except that the offsets are smoothed on a grid 4x coarser and upsampled: the field is just as
    smooth (correlation length >= 12 mm, several coarse voxels) and the full-resolution ~80-tap Gaussian, which took
    1.4 s of the ~2 s per 96^3 subject, is avoided.
    """
    import torch
    import torch.nn.functional as F
    from monai.transforms import RandAffineGrid, Resample
    from monai.transforms.utils import create_grid

    spacing = template.spacing
    shape = template.tissue.shape[1:]
    coarse = max(8, -(-shape[0] // 4))
    sigma_mm = float(rng.uniform(12.0, 20.0))
    displacement_mm = float(rng.uniform(1.5, 3.0))  # std of each component
    noise = rng.standard_normal((3, coarse, coarse, coarse)).astype(np.float32)
    field = ndimage.gaussian_filter(noise, (0,) + (sigma_mm * coarse / FIELD_OF_VIEW_MM,) * 3, mode="wrap")
    field *= displacement_mm / spacing / max(float(field.std()), 1e-6)
    offsets = F.interpolate(torch.from_numpy(field)[None], size=shape, mode="trilinear", align_corners=False)[0]

    affine_grid = RandAffineGrid(
        rotate_range=(0.08, 0.08, 0.12), scale_range=(0.06, 0.06, 0.06), translate_range=(4.0 / spacing,) * 3
    )
    affine_grid.set_random_state(seed=_seed(rng))
    grid = create_grid(spatial_size=shape, backend="torch")
    grid[:3] += offsets
    grid = affine_grid(grid=grid)
    out = Resample()(torch.from_numpy(template.tissue), grid, mode="bilinear", padding_mode="zeros")
    return np.clip(np.asarray(out.detach().cpu().numpy(), dtype=np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------- tumour


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``sigma`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return field / max(float(field.std()), 1e-6)


def _ellipsoid_distance(grid: np.ndarray, centre: np.ndarray, rotation: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Distance to ``centre`` (mm) in the frame of a random ellipsoid with unit-volume semi-axes ``axes``."""
    local = np.einsum("ij,j...->i...", rotation.T, grid - centre.reshape(3, 1, 1, 1))
    return np.sqrt(np.sum((local / axes.reshape(3, 1, 1, 1)) ** 2, axis=0))


@dataclass
class _Tumour:
    centre: np.ndarray  # voxel coordinates
    radius_tc: float  # mm, equivalent-sphere radius of the tumour core
    radius_wt: float  # mm, of the whole tumour before confinement to white matter
    rim_mm: float  # mean enhancing-rim thickness
    mass_effect: float  # in [0, 1): compression strength of the radial displacement


def _draw_tumour(tissue: np.ndarray, spacing: float, affine: np.ndarray, rng: np.random.Generator) -> _Tumour:
    """Size and hemispheric white-matter position of a tumour (BraTS-like: WT ~2.5-20 % of the brain)."""
    brain = tissue[3] > 0.5
    brain_mm3 = float(brain.sum()) * spacing**3
    wt_fraction = math.exp(rng.uniform(math.log(0.025), math.log(0.2)))
    tc_share = rng.uniform(0.15, 0.5)
    radius_wt = (3.0 * wt_fraction * brain_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    radius_tc = max(radius_wt * tc_share ** (1.0 / 3.0), 2.5 * spacing)
    radius_wt = max(radius_wt, radius_tc + 2.0 * spacing)
    rim_mm = float(np.clip(rng.uniform(0.15, 0.35) * radius_tc, spacing, radius_tc - 1.2 * spacing))
    depth = ndimage.distance_transform_edt(brain) * spacing
    # hemispheric white matter: above the tentorium and off the midline (not in the thalamus or brainstem)
    x_world = affine[0, 0] * np.arange(brain.shape[0]) + affine[0, 3]
    z_world = affine[2, 2] * np.arange(brain.shape[2]) + affine[2, 3]
    allowed = (np.abs(x_world) > 15.0).reshape(-1, 1, 1) & (z_world > -5.0).reshape(1, 1, -1)
    white = (tissue[2] > 0.5) & allowed
    centre = None
    for region in (white & (depth >= radius_tc + spacing), white & (depth >= 0.6 * radius_tc), white, brain):
        candidates = np.argwhere(region)
        if len(candidates):
            centre = candidates[rng.integers(len(candidates))].astype(np.float64)
            break
    if centre is None:
        raise RuntimeError("synthetic tumour: the deformed template has no brain voxel.")
    centre += rng.uniform(-0.5, 0.5, 3)
    return _Tumour(centre, radius_tc, radius_wt, rim_mm, float(rng.uniform(0.25, 0.5)))


def _box(centre: np.ndarray, radius_vox: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, int(math.floor(c - radius_vox))), min(n, int(math.ceil(c + radius_vox)) + 1))
        for c, n in zip(centre, shape)
    )


def _mass_effect(tissue: np.ndarray, tumour: _Tumour, spacing: float) -> np.ndarray:
    """Push tissue radially away from the tumour centre.

    Each voxel at distance r samples the tissue at r * (1 - a exp(-r^2 / l^2)); since d/dr of that is >= 1 - a > 0
    the map is a diffeomorphism, the displacement peaks at ~0.43 a l and vanishes far from the tumour.
    """
    length = 1.2 * tumour.radius_wt / spacing
    box = _box(tumour.centre, 2.5 * length, tissue.shape[1:])
    grid = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")).astype(np.float32)
    offset = grid - tumour.centre.reshape(3, 1, 1, 1).astype(np.float32)
    r2 = np.sum(offset**2, axis=0) / length**2
    source = grid - offset * (tumour.mass_effect * np.exp(-r2))
    out = tissue.copy()
    for c in range(tissue.shape[0]):
        out[(c, *box)] = ndimage.map_coordinates(tissue[c], source, order=1, mode="nearest")
    return out


def _tumour_labels(
    tissue: np.ndarray, tumour: _Tumour, spacing: float, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[slice, ...], np.ndarray]:
    """BraTS labels of the tumour, the box holding it, and the oedema fluid fraction inside that box."""
    from scipy.spatial.transform import Rotation

    shape = tissue.shape[1:]
    # the box holds every voxel the level sets below can reach: the core within 1.6 * 1.375 * radius_tc
    # (elongation and clipped lobes), the oedema within 1.15 * 1.5 * radius_wt
    box = _box(tumour.centre, 2.0 * tumour.radius_wt / spacing + 3, shape)
    box_shape = tuple(s.stop - s.start for s in box)
    grid = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")).astype(np.float32)
    grid *= spacing
    centre = (tumour.centre * spacing).astype(np.float32)
    rotation = Rotation.random(random_state=rng).as_matrix().astype(np.float32)
    axes = np.exp(rng.uniform(-0.35, 0.35, 3)).astype(np.float32)
    axes /= np.prod(axes) ** (1.0 / 3.0)  # elongation without changing the volume

    # Tumour core: level set of a lobulated ellipsoid; the rim of irregular thickness is the part of the core
    # within rim_mm of its surface, so the enhancing rim encloses the necrotic core by construction.
    distance = _ellipsoid_distance(grid, centre, rotation, axes)
    lobes = np.clip(_smooth_noise(rng, box_shape, max(0.25 * tumour.radius_tc / spacing, 1.0)), -2.5, 2.5)
    brain = tissue[(3, *box)] > 0.5
    core = (distance / tumour.radius_tc + 0.15 * lobes < 1.0) & brain
    core = ndimage.binary_opening(core) | (core & (distance < 2.0 * spacing))
    depth = ndimage.distance_transform_edt(core) * spacing
    rim = tumour.rim_mm * np.clip(1.0 + 0.35 * _smooth_noise(rng, box_shape, 1.5), 0.6, 1.6)
    rim = np.minimum(np.maximum(rim, spacing), 0.8 * depth.max())
    enhancing = core & (depth <= rim)
    necrotic = core & ~enhancing

    # Oedema spreads along white matter (finger-like) and spares cortex and CSF; a shell around the core stays.
    wm, gm = tissue[(2, *box)], tissue[(1, *box)]
    fingers = np.clip(_smooth_noise(rng, box_shape, max(0.2 * tumour.radius_wt / spacing, 1.0)), -2.0, 2.0)
    radial = np.sqrt(np.sum((grid - centre.reshape(3, 1, 1, 1)) ** 2, axis=0))
    reach = radial / (1.15 * tumour.radius_wt) + 0.25 * fingers < 1.0
    outside_core = ndimage.distance_transform_edt(~core) * spacing
    oedema = ((reach & (wm + 0.3 * gm > 0.45)) | (outside_core <= max(3.0, 1.01 * spacing))) & brain & ~core
    oedema = ndimage.binary_opening(oedema) | (oedema & (outside_core <= 1.01 * spacing))
    # drop oedema islands that a finger of the noise field cut off from the tumour
    components, _ = ndimage.label(oedema | core)
    oedema &= np.isin(components, np.unique(components[core]))

    label = np.zeros(shape, dtype=np.uint8)
    box_label = label[box]
    box_label[oedema] = _LABEL_ED
    box_label[enhancing] = _LABEL_ET
    box_label[necrotic] = _LABEL_NCR
    # Fluid fraction of oedema: high next to the core, lower at the infiltration front.
    front = max(float(outside_core[oedema].max()), spacing) if oedema.any() else spacing
    fluid = np.clip(0.85 - 0.5 * outside_core / front, 0.35, 0.85).astype(np.float32)
    return label, box, fluid


# --------------------------------------------------------------------------------------------------- contrasts


def _contrasts(
    tissue: np.ndarray,
    label: np.ndarray,
    box: tuple[slice, ...],
    fluid: np.ndarray,
    spacing: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """T1, T1Gd, T2, FLAIR (float32, ``(4, *shape)``) from the tissue and tumour intensity models."""
    box_label = label[box]
    texture = _smooth_noise(rng, box_label.shape, max(4.0 / spacing, 0.8))
    images = np.empty((len(MODALITIES), *label.shape), dtype=np.float32)
    for m, modality in enumerate(MODALITIES):
        # per-subject jitter of every class mean (bounded, so the tissue order of each contrast is kept)
        tissue_mean = np.array(_TISSUE_INTENSITY[modality]) * rng.uniform(0.92, 1.08, 3)
        ncr, et, fluid_mean = np.array(_TUMOUR_INTENSITY[modality]) * rng.uniform(0.9, 1.1, 3)
        image = np.tensordot(tissue_mean.astype(np.float32), tissue[:3], axes=1)
        part = image[box]
        part[box_label == _LABEL_ED] = ((1.0 - fluid) * part + fluid * fluid_mean * (1.0 + 0.05 * texture))[
            box_label == _LABEL_ED
        ]
        part[box_label == _LABEL_ET] = (et * (1.0 + 0.10 * texture))[box_label == _LABEL_ET]
        part[box_label == _LABEL_NCR] = (ncr * (1.0 + 0.08 * texture))[box_label == _LABEL_NCR]
        images[m] = image * float(rng.uniform(0.85, 1.2))  # scanner gain
    # partial-volume blur (1 mm) of the sharp tumour boundaries; the resampled anatomy is already smooth
    sigma = min(1.0 / spacing, 0.5)
    return ndimage.gaussian_filter(images, (0, sigma, sigma, sigma))


def _acquisition(images: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bias field per series, Rician noise, and BraTS-style skull stripping (background exactly 0)."""
    from monai.transforms import RandBiasField, RandRicianNoise

    out = np.empty_like(images)
    for m in range(images.shape[0]):
        bias = RandBiasField(degree=3, coeff_range=(-0.08, 0.08), prob=1.0)
        bias.set_random_state(seed=_seed(rng))
        channel = np.asarray(bias(images[m : m + 1]), dtype=np.float32)
        noise = RandRicianNoise(prob=1.0, std=float(rng.uniform(0.03, 0.07)), relative=True, sample_std=False)
        noise.set_random_state(seed=_seed(rng))
        out[m] = np.asarray(noise(channel), dtype=np.float32)[0]
    out *= brain
    return out


def synthesize_subject(index: int, seed: int = 0, shape: int = 96) -> SyntheticSubject:
    """Generate the ``index``-th synthetic BraTS-like subject in memory.

    The subject depends only on ``(index, seed, shape)`` (its generator is ``numpy.random.default_rng([seed,
    index])``), so it is the same whatever the size of the data set it belongs to.

    Args:
        index: subject number, >= 0.
        seed: data-set seed, >= 0.
        shape: edge of the cubic grid in voxels, 16 to :data:`MAX_SHAPE`; the grid spans 200 mm.

    Returns:
        The four int16 contrasts, the uint8 BraTS label map and the RAS affine.

    Raises:
        RobustsegError: if an argument is out of range.
    """
    check_int("index", index, 0)
    check_int("seed", seed, 0)
    check_int("shape", shape, 16, MAX_SHAPE, hint="grid edge in voxels")
    rng = np.random.default_rng([seed, index])
    template = _template(shape)
    tissue = _deform(template, rng)
    for _ in range(20):  # redraw the (rare) tumour whose thin rim or oedema vanished on a coarse grid
        tumour = _draw_tumour(tissue, template.spacing, template.affine, rng)
        pushed = _mass_effect(tissue, tumour, template.spacing)
        label, box, fluid = _tumour_labels(pushed, tumour, template.spacing, rng)
        if all((label == v).any() for v in (_LABEL_NCR, _LABEL_ED, _LABEL_ET)):
            break
    else:
        raise RuntimeError(f"synthetic subject {index}: could not draw a tumour with all three compartments.")
    brain = pushed[3] > 0.5
    label[~brain] = 0
    images = _contrasts(pushed, label, box, fluid, template.spacing, rng)
    images = _acquisition(images, brain, rng)
    as_int = np.clip(np.rint(images), 0, np.iinfo(np.int16).max).astype(np.int16)
    return SyntheticSubject(
        images={m: as_int[i] for i, m in enumerate(MODALITIES)},
        label=label,
        affine=template.affine.copy(),
        tissue=pushed[:3] * brain,
    )


# --------------------------------------------------------------------------------------------------- files


def _subject_files(root: Path, index: int) -> dict[str, Path]:
    sid = synthetic_subject_id(index)
    return {key: root / sid / f"{sid}_{key}.nii.gz" for key in (*MODALITIES, "seg")}


def _write_subject(root: str, index: int, seed: int, shape: int) -> None:
    """Write one subject; each file goes to a temporary name first, so a file that exists is complete."""
    import nibabel as nib

    subject = synthesize_subject(index, seed=seed, shape=shape)
    files = _subject_files(Path(root), index)
    folder = files["seg"].parent
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp.nii.gz"):  # left by an interrupted run
        stale.unlink(missing_ok=True)
    arrays = {**subject.images, "seg": subject.label}
    for key, path in files.items():
        image = nib.Nifti1Image(arrays[key], subject.affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(subject.affine, code="scanner")
        image.set_sform(subject.affine, code="scanner")
        with atomic_write(path, suffix=".tmp.nii.gz") as tmp:
            nib.save(image, tmp)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core


def _check_arguments(out: str | os.PathLike, subjects: int, seed: int, shape: int, test_fraction: float) -> Path:
    check_int("subjects", subjects, 1, MAX_SUBJECTS)
    check_int("seed", seed, 0)
    check_int("shape", shape, 16, MAX_SHAPE, hint="grid edge in voxels")
    check_number("test_fraction", test_fraction, 0.0, 1.0, min_inclusive=False, max_inclusive=False)
    training, testing = split_subjects([synthetic_subject_id(i) for i in range(subjects)], float(test_fraction), seed)
    if not training or not testing:
        raise RobustsegError(
            f"test_fraction {test_fraction} of {subjects} subjects leaves the "
            f"{'training' if not training else 'testing'} list empty; use more subjects or another test_fraction."
        )
    root = Path(os.path.abspath(out))
    if root.exists() and not root.is_dir():
        raise RobustsegError(f"out: {root} is an existing file, expected a folder for the synthetic data set.")
    return root


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise generators on one folder (e.g. the ranks of a distributed run calling ensure at once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root / ".synthetic.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_manifest(root: Path) -> dict | None:
    path = root / SYNTHETIC_MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise RobustsegError(
            f"out: {path} is unreadable ({exc}); delete the folder {root} to regenerate the synthetic data set."
        ) from None
    return manifest


def _generate(
    out: str | os.PathLike,
    subjects: int,
    seed: int,
    shape: int,
    test_fraction: float,
    overwrite: bool,
    workers: int | None,
) -> Path:
    root = _check_arguments(out, subjects, seed, shape, test_fraction)
    if workers is not None:
        check_int("workers", workers, 1)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        manifest = _read_manifest(root)
        if manifest is None and any(not p.name.startswith(".") for p in root.iterdir()):
            raise RobustsegError(
                f"out: {root} is a non-empty folder without {SYNTHETIC_MANIFEST}, expected a new or empty folder "
                "(robustseg never writes into a folder that may hold real data)."
            )
        voxels = {"generator": "common.data.synthetic", "version": GENERATOR_VERSION, "seed": seed, "shape": shape}
        same_voxels = manifest is not None and all(manifest.get(k) == v for k, v in voxels.items())
        wanted = {synthetic_subject_id(i) for i in range(subjects)}
        removed = False
        for folder in root.iterdir():  # subjects of other settings, and beyond the requested number
            if _SUBJECT_RE.match(folder.name) and folder.is_dir() and not (same_voxels and folder.name in wanted):
                shutil.rmtree(folder)
                removed = True
        settings = {**voxels, "subjects": subjects, "test_fraction": float(test_fraction)}
        if manifest != settings:
            (root / DATALIST_NAME).unlink(missing_ok=True)
            # the manifest comes before the subjects: an interrupted run is then recognised and repaired
            write_atomic(root / SYNTHETIC_MANIFEST, json.dumps(settings, indent=2) + "\n")

        todo = [
            i for i in range(subjects) if overwrite or not all(p.is_file() for p in _subject_files(root, i).values())
        ]
        _run(todo, root, seed, shape, workers)

        datalist_path = root / DATALIST_NAME
        if todo or removed or manifest != settings or not datalist_path.is_file():
            # the real-data code path: the same subject discovery, split and relative paths as for BraTS folders
            write_datalist(root, datalist_path, test_fraction=float(test_fraction), seed=seed)
    return datalist_path


def _run(todo: list[int], root: Path, seed: int, shape: int, workers: int | None) -> None:
    if not todo:
        return
    from tqdm.auto import tqdm

    # a worker process costs a few seconds to start (torch, MONAI, the template): worth it for many subjects only
    default = min(2, os.cpu_count() or 1) if len(todo) >= _MIN_SUBJECTS_FOR_POOL else 1
    n_workers = min(workers or default, len(todo))
    progress = tqdm(total=len(todo), desc="synthetic subjects", unit="subject", disable=None)
    try:
        if n_workers == 1:
            for index in todo:
                _write_subject(str(root), index, seed, shape)
                progress.update()
            return
        done: set[int] = set()
        try:
            # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool can hang
            with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
                futures = {pool.submit(_write_subject, str(root), i, seed, shape): i for i in todo}
                for future in as_completed(futures):
                    future.result()
                    done.add(futures[future])
                    progress.update()
        except BrokenProcessPool as exc:
            # e.g. called from a script without an ``if __name__ == "__main__":`` guard, which spawn re-runs
            warnings.warn(f"synthetic data: worker processes failed ({exc}); generating in this process.", stacklevel=3)
            for index in todo:
                if index not in done:
                    _write_subject(str(root), index, seed, shape)
                    progress.update()
    finally:
        progress.close()


def write_synthetic_dataset(
    out: str | os.PathLike,
    subjects: int = 40,
    seed: int = 0,
    shape: int = 96,
    test_fraction: float = 0.2,
    *,
    overwrite: bool = True,
    workers: int | None = None,
) -> Path:
    """Write a synthetic BraTS-like data set and its MONAI datalist.

    Writes ``out/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` for ids ``synth_000`` ... and ``out/datalist.json``:
    ``{"training": [...], "testing": [...]}`` with entries ``{"image": [t1, t1ce, t2, flair], "label": seg,
    "subject": id}``, paths relative to ``out`` (as ``monai.data.load_decathlon_datalist`` expects), written by
    :func:`common.data.datalist.write_datalist` exactly as for a real BraTS folder (its seeded split keeps
    ``subjects * test_fraction`` subjects, rounded half up, for testing: the paper's 20 %). The settings are recorded
    in ``out/synthetic.json``; every file is written under a temporary name and renamed.

    Args:
        out: output folder; created if missing. It must be new, empty, or a synthetic data set written before.
        subjects: number of subjects, 2 to :data:`MAX_SUBJECTS` (both lists must be non-empty).
        seed: random seed, >= 0: the same seed gives identical voxel arrays.
        shape: edge of the cubic grid in voxels, 16 to :data:`MAX_SHAPE` (the 200 mm field of view is fixed).
        test_fraction: share of subjects in the ``testing`` list, in (0, 1).
        overwrite: regenerate every subject; ``False`` keeps the complete subjects written with the same seed
            and shape (what :func:`ensure_synthetic_dataset` does).
        workers: processes generating subjects in parallel; default min(2, CPU count) for 8 or more
            subjects to generate, else 1.

    Returns:
        The absolute path of ``datalist.json``.

    Raises:
        RobustsegError: if an argument is out of range, ``out`` is a file or a non-empty folder that is not a
            synthetic data set, or its manifest is unreadable.
    """
    return _generate(out, subjects, seed, shape, test_fraction, overwrite, workers)


def ensure_synthetic_dataset(
    out: str | os.PathLike,
    subjects: int = 40,
    seed: int = 0,
    shape: int = 96,
    test_fraction: float = 0.2,
    *,
    workers: int | None = None,
) -> Path:
    """Make sure ``out`` holds the synthetic data set with these settings, generating only what is missing.

    Bundles call this on first use. Complete subjects written with the same seed and shape are kept (a subject
    does not depend on the number of subjects), missing or half-written ones (an interrupted run) are generated,
    subjects of other settings are replaced, and the datalist is rewritten when the split changes. Concurrent
    callers on the same folder wait for each other.

    Args:
        out: data-set folder (see :func:`write_synthetic_dataset`).
        subjects: number of subjects, >= 2.
        seed: random seed, >= 0.
        shape: edge of the cubic grid in voxels, >= 16.
        test_fraction: share of subjects in the ``testing`` list, in (0, 1).
        workers: processes generating subjects in parallel; default min(2, CPU count) for 8 or more
            subjects to generate, else 1.

    Returns:
        The absolute path of ``datalist.json``.

    Raises:
        RobustsegError: as :func:`write_synthetic_dataset`.
    """
    return _generate(out, subjects, seed, shape, test_fraction, False, workers)
