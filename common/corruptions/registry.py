"""Corruptions by name, their severity tables, and :func:`corrupt`, the one entry point.

Severity tables: the parameters of each level (intensities relative to each channel's ``max - min``, distances in
voxels; the meaning of each parameter is in the corruption's function) and, in the ``(PSNR dB)`` rows, the mean PSNR
against the clean image on three synthetic 32^3 tumour volumes (``tests/corruptions``), with the seeds of
:func:`corruption_seed`. PSNR falls strictly with severity for every corruption and subject there, and at 64^3 and
128^3; ``tests/corruptions/test_corruptions.py`` checks it and that this table matches :data:`CORRUPTIONS`.

===============  =============  ======  ======  ======  ======  ======
corruption       parameter           1       2       3       4       5
===============  =============  ======  ======  ======  ======  ======
bias_field       degree              3       3       3       3       3
bias_field       log_gain_sd      0.05     0.1    0.15    0.22     0.3
bias_field       (PSNR dB)        40.1    34.1    30.6    27.5    25.0
gibbs            alpha             0.4     0.5     0.6     0.7     0.8
gibbs            (PSNR dB)        30.0    28.6    27.4    26.1    23.9
kspace_spike     amplitude        0.04    0.08    0.12    0.18    0.25
kspace_spike     (PSNR dB)        34.2    28.1    24.6    21.1    18.3
rician_noise     std              0.02    0.04    0.06    0.09    0.12
rician_noise     (PSNR dB)        32.7    26.7    23.2    19.6    17.2
ghosting         num_ghosts          4       4       4       2       2
ghosting         intensity         0.4     0.6     0.8     0.8       1
ghosting         (PSNR dB)        39.4    35.9    33.4    26.7    24.7
motion           movements           2       4       6       8      12
motion           degrees          0.25     0.5       1       2       4
motion           translation     0.125    0.25     0.5       1       2
motion           (PSNR dB)        41.1    35.4    29.8    25.8    23.5
blur             sigma             0.5    0.75       1     1.5       2
blur             (PSNR dB)        29.9    27.1    25.7    23.9    22.7
downsample       factor              2       3       4       6       8
downsample       (PSNR dB)        28.8    26.2    25.1    23.0    21.8
gamma            gamma            1.25     1.5       2     2.5       3
gamma            (PSNR dB)        29.5    24.5    20.2    18.3    17.2
missing_t1       channel             0       0       0       0       0
missing_t1       fraction          0.2     0.4     0.6     0.8       1
missing_t1       (PSNR dB)        26.0    23.1    21.1    19.8    19.0
missing_t1ce     channel             1       1       1       1       1
missing_t1ce     fraction          0.2     0.4     0.6     0.8       1
missing_t1ce     (PSNR dB)        26.7    23.9    21.8    20.6    19.7
missing_t2       channel             2       2       2       2       2
missing_t2       fraction          0.2     0.4     0.6     0.8       1
missing_t2       (PSNR dB)        26.7    24.0    21.9    20.7    19.8
missing_flair    channel             3       3       3       3       3
missing_flair    fraction          0.2     0.4     0.6     0.8       1
missing_flair    (PSNR dB)        27.1    24.5    22.5    21.2    20.4
===============  =============  ======  ======  ======  ======  ======

Random (seeded): ``bias_field`` (the field's shape), ``rician_noise`` (the noise), ``kspace_spike`` (the spike's
location), ``motion`` (each movement's angles, shifts and time). The others are deterministic and ignore the seed.
``ghosting`` and ``motion`` are TorchIO's ``Ghosting`` and ``Motion`` (:mod:`common.corruptions.kspace`). Ghosting's
levels raise the intensity and, at 4 and 5, modulate every 2nd k-space plane instead of every 4th: one stronger ghost
at half the field of view instead of three; the planes of a level include those below it and the intensity never
falls, so PSNR falls at any image size. Motion's levels add movements and double their size.
Every result is clipped to the clean image's per-channel ``[min, max]`` except ``missing_*`` (its fill value is 0):
for ``bias_field``, ``rician_noise``, ``gibbs``, ``kspace_spike``, ``ghosting`` and ``motion`` the clip matters (the
network never saw intensities outside its normalised range; the bias field saturates the brightest voxels as a
scanner's windowing would); for ``blur``, ``downsample`` and ``gamma`` it only removes rounding.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from common.corruptions.base import SEVERITIES, Corruption, clip_to_ranges, plain
from common.corruptions.intensity import bias_field, gamma, rician_noise
from common.corruptions.kspace import ghosting, gibbs, kspace_spike, motion
from common.corruptions.missing import missing_slices
from common.corruptions.resolution import blur, downsample
from common.data.labels import MODALITIES
from common.errors import RobustsegError
from common.utils.validation import check_int, look_up_option

__all__ = [
    "CORRUPTIONS",
    "MISSING_MODALITY",
    "check_corruption_names",
    "check_severities",
    "corrupt",
    "corruption_order",
    "corruption_seed",
    "severity_table",
]


def _levels(**columns: tuple[Any, ...]) -> tuple[dict[str, Any], ...]:
    """Five parameter sets from per-parameter columns; a 1-tuple is the same at every level."""
    return tuple(
        {key: values[0] if len(values) == 1 else values[s] for key, values in columns.items()} for s in range(5)
    )


_TABLE: list[Corruption] = [
    Corruption(
        "bias_field",
        bias_field,
        _levels(degree=(3,), log_gain_sd=(0.05, 0.1, 0.15, 0.22, 0.3)),
        random=True,
        clip=True,
        summary="smooth multiplicative receive-coil field",
    ),
    Corruption(
        "gibbs",
        gibbs,
        _levels(alpha=(0.4, 0.5, 0.6, 0.7, 0.8)),
        random=False,
        clip=True,
        summary="Gibbs ringing from k-space truncated to a ball",
    ),
    Corruption(
        "kspace_spike",
        kspace_spike,
        _levels(amplitude=(0.04, 0.08, 0.12, 0.18, 0.25)),
        random=True,
        clip=True,
        summary="herringbone stripes from one k-space spike",
    ),
    Corruption(
        "rician_noise",
        rician_noise,
        _levels(std=(0.02, 0.04, 0.06, 0.09, 0.12)),
        random=True,
        clip=True,
        summary="Rician (magnitude) noise",
    ),
    Corruption(
        "ghosting",
        ghosting,
        _levels(num_ghosts=(4, 4, 4, 2, 2), intensity=(0.4, 0.6, 0.8, 0.8, 1.0)),
        random=False,
        clip=True,
        summary="periodic phase-encoding ghosts (TorchIO Ghosting)",
    ),
    Corruption(
        "motion",
        motion,
        _levels(
            movements=(2, 4, 6, 8, 12), degrees=(0.25, 0.5, 1.0, 2.0, 4.0), translation=(0.125, 0.25, 0.5, 1.0, 2.0)
        ),
        random=True,
        clip=True,
        summary="rigid head movements during the acquisition (TorchIO Motion)",
    ),
    Corruption(
        "blur",
        blur,
        _levels(sigma=(0.5, 0.75, 1.0, 1.5, 2.0)),
        random=False,
        clip=True,
        summary="isotropic Gaussian blur",
    ),
    Corruption(
        "downsample",
        downsample,
        _levels(factor=(2.0, 3.0, 4.0, 6.0, 8.0)),
        random=False,
        clip=True,
        summary="thick slices: area down-sampling of the last axis, linear up-sampling",
    ),
    Corruption(
        "gamma",
        gamma,
        _levels(gamma=(1.25, 1.5, 2.0, 2.5, 3.0)),
        random=False,
        clip=True,
        summary="gamma contrast change",
    ),
    *(
        Corruption(
            f"missing_{modality}",
            missing_slices,
            _levels(channel=(index,), fraction=(0.2, 0.4, 0.6, 0.8, 1.0)),
            random=False,
            clip=False,
            summary=f"{modality} zeroed in a share of its slices, all of them at severity 5",
        )
        for index, modality in enumerate(MODALITIES)
    ),
]

CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in _TABLE}
"""Name (the CSV's ``corruption`` column) -> :class:`~common.corruptions.base.Corruption`, in report order."""

MISSING_MODALITY: tuple[str, ...] = tuple(f"missing_{m}" for m in MODALITIES)
"""The missing-modality family, one name per input channel in :data:`~common.data.labels.MODALITIES` order."""

_SEED_LIMIT = 2**32  # MONAI's transforms seed NumPy's RandomState, which takes 32 bits


def _check(name: object, severity: object) -> Corruption:
    corruption = CORRUPTIONS[look_up_option("corruption name", name, CORRUPTIONS)]
    check_int("severity", severity, min(SEVERITIES), max(SEVERITIES))
    return corruption


def check_corruption_names(corruptions: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"``, one corruption name or a non-empty list of names -> the names, in registry order, without repeats.

    Raises:
        RobustsegError: naming ``corruptions`` for another type or an empty list, or the unknown name.
    """
    if isinstance(corruptions, str):
        names = list(CORRUPTIONS) if corruptions == "all" else [corruptions]
    elif isinstance(corruptions, Sequence) and len(corruptions) > 0:
        names = list(corruptions)
    else:
        raise RobustsegError(f"corruptions must be 'all', a corruption name or a non-empty list of them, "
                             f"got {corruptions!r}.")  # fmt: skip
    chosen = {look_up_option("corruptions", name, list(CORRUPTIONS)) for name in names}
    return tuple(name for name in CORRUPTIONS if name in chosen)


def corruption_order(names: Iterable[str]) -> list[str]:
    """``names`` without repeats: the registered corruptions in :data:`CORRUPTIONS` order, then any others sorted (a
    CSV may name corruptions of another version), the order of every corruption table and figure."""
    present = set(names)
    return [n for n in CORRUPTIONS if n in present] + sorted(present - set(CORRUPTIONS))


def check_severities(severities: Sequence[int]) -> tuple[int, ...]:
    """A non-empty list of severities 1-5 -> sorted, without repeats.

    Raises:
        RobustsegError: naming ``severities`` for another type, an empty list or a level outside 1-5.
    """
    if isinstance(severities, (str, bytes)) or not isinstance(severities, Sequence) or not severities:
        raise RobustsegError(f"severities must be a non-empty list of integers 1-5, got {severities!r}.")
    return tuple(sorted({check_int("severities", s, min(SEVERITIES), max(SEVERITIES)) for s in severities}))


def corruption_seed(subject: str, name: str, severity: int) -> int:
    """A seed for one (subject, corruption, severity), the same in every process and on every machine.

    CRC-32 of ``"<subject>/<name>/<severity>"``, not Python's ``hash()``, which is salted per process.

    Args:
        subject: the subject's identifier (e.g. ``BraTS19_2013_2_1``).
        name: a corruption name.
        severity: 1 to 5.

    Returns:
        An integer in ``[0, 2**32)``.

    Raises:
        RobustsegError: for an unknown name or a severity outside 1-5.
    """
    _check(name, severity)
    return zlib.crc32(f"{subject}/{name}/{severity}".encode())


def corrupt(image: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """The corrupted copy of one image in the network's input space.

    Args:
        image: a float tensor ``(C, *spatial)``, 2 or 3 spatial dimensions (a :class:`~monai.data.MetaTensor` keeps
            its affine and metadata); it is not modified.
        name: a key of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe).
        seed: an integer in ``[0, 2**32)``, e.g. from :func:`corruption_seed`; the same seed, name and severity give
            the same result.

    Returns:
        A new tensor of the same shape, dtype and device (and type), each channel within the clean channel's
        ``[min, max]`` except the zero fill of ``missing_*``.

    Raises:
        RobustsegError: for an unknown name (the names are listed), a severity outside 1-5, a seed outside
            ``[0, 2**32)``, or an image that is not a floating-point ``(C, H, W)`` or ``(C, H, W, D)`` tensor.

    Example::

        noisy = corrupt(image, "rician_noise", 3, seed=corruption_seed("BraTS19_2013_2_1", "rician_noise", 3))
    """
    corruption = _check(name, severity)
    check_int("seed", seed, 0, _SEED_LIMIT - 1)
    if not hasattr(image, "ndim") or image.ndim not in (3, 4) or not image.is_floating_point():
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise RobustsegError(
            f"image must be a floating-point tensor (C, H, W) or (C, H, W, D), got {shape}"
            f"{'' if not hasattr(image, 'dtype') else f' of {image.dtype}'}."
        )
    clean = plain(image).detach()
    out = corruption.apply(clean, corruption.levels[severity - 1], seed)
    if corruption.clip:
        out = clip_to_ranges(out, clean)
    out = out.to(dtype=image.dtype, device=image.device)
    if out is clean or out.data_ptr() == clean.data_ptr():
        out = out.clone()
    if plain(image) is image:
        return out
    wrapped = image.clone()  # a MetaTensor: keep its affine and metadata
    wrapped.data = out
    return wrapped


def severity_table() -> list[dict[str, Any]]:
    """One row per (corruption, severity): ``corruption``, ``severity``, ``random``, ``clip`` and the parameters."""
    return [
        {"corruption": c.name, "severity": s, "random": c.random, "clip": c.clip, **c.params(s)}
        for c in CORRUPTIONS.values()
        for s in SEVERITIES
    ]
