"""NIfTI header checks before any voxel is read: absurd dimensions, scaling and sizes as one line, never an allocation.

A NIfTI header is 348 (NIfTI-1) or 540 (NIfTI-2) bytes that say how many voxels follow; nibabel and MONAI's
``LoadImage`` trust it and allocate that many at once. A header claiming 10^6 voxels per axis (or a negative or zero
extent), a truncated ``.nii.gz`` or a 4-D file where a 3-D volume belongs would otherwise end in a ``MemoryError``,
a machine swapping itself to a halt, or a traceback from deep inside a data loader. :func:`header_problem` reads the
header alone and compares it with the file:

* the number of dimensions (1 to 7) and each extent (>= 1), against the one expected where the caller says so;
* the voxel count, at most :data:`MAX_VOXELS`;
* the scaling: a ``scl_slope`` of 0 means "no scaling" in the NIfTI-1 standard, and nibabel (so MONAI's loader, and
  every reader here) reads a NaN or infinite slope the same way -- nibabel itself writes NaN for unscaled data -- so
  these files load with their stored values, the same in every command; a finite non-zero slope with a non-finite
  ``scl_inter`` is refused by nibabel when it reads the header, and reported as a header that cannot be read;
* the data size: the file (for ``.nii``) or the decompressed stream (for ``.nii.gz``: the gzip trailer's size, and
  only when that disagrees, a streaming count that allocates nothing) must hold every voxel the header announces.

Used by ``robustseg data check`` (:mod:`common.data.check`, so also by ``robustseg segment`` and the bundles'
training), and by the evaluation and ``robustseg certify`` when they check their test split
(:func:`common.engines.subject_batch.test_entries`).

Example::

    problem = header_problem("sub_t1.nii.gz", ndim=3)
    if problem:
        raise RobustsegError(problem)
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["MAX_VOXELS", "header_problem"]

MAX_VOXELS = 4 * 512**3
"""The most voxels (all axes, channels included) a file may announce: four 512^3 channels, 2 GiB of float32. A BraTS
subject is four 240 x 240 x 155 volumes (36 million voxels); a 0.5 mm whole-head scan is below 512^3."""

_CHUNK = 1 << 20


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def _gzip_size(path: Path, needed: int) -> int | None:
    """The decompressed size of a gzip file, counted up to ``needed`` bytes; ``None`` when the stream is cut short or
    corrupt. The trailer's ISIZE (the size modulo 2^32) answers at once for a whole file; the streaming count,
    which reads the file in chunks and keeps nothing, is for a trailer that disagrees (a cut or multi-member file)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() >= 18:  # the smallest gzip member: 10-byte header, empty deflate block, 8-byte trailer
            handle.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", handle.read(4))
            if isize == needed % 2**32:
                return needed
    count = 0
    try:
        with gzip.open(path, "rb") as stream:
            while count < needed:
                chunk = stream.read(min(_CHUNK, needed - count))
                if not chunk:
                    break
                count += len(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return count


def header_problem(path: str | os.PathLike, ndim: int | None = None) -> str | None:
    """The first problem of a NIfTI file's header, found without reading its voxels, or ``None``.

    Args:
        path: an existing ``.nii`` or ``.nii.gz`` file (other formats nibabel reads are checked as far as they go).
        ndim: the number of dimensions the caller needs (3 for a BraTS modality or label map, 4 for an MSD image);
            ``None``: any.

    Returns:
        ``"<path>: <what is wrong> (expected <...>)"``, the form of :func:`common.data.check.check_dataset`'s lines,
        or ``None`` when the header is sane and the file holds all its voxels.
    """
    path = Path(path)
    try:
        image = nib.load(path)  # the header only: nibabel reads voxels lazily
        header = image.header
    except Exception as err:  # noqa: BLE001 -- any failure to read is the user's file, reported as one line
        return f"{path}: cannot read the NIfTI header ({_one_line(err)}) (expected a readable NIfTI-1/2 file)"
    if not isinstance(header, nib.Nifti1Header):  # Nifti2Header derives from it
        return None
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:
        return f"{path}: header dim[0] = {dim[0]} dimensions (expected 1 to 7, the NIfTI standard's range)"
    shape = tuple(dim[1 : dim[0] + 1])
    if any(extent < 1 for extent in shape):
        return f"{path}: header shape {shape} has an extent below 1 (expected positive voxel counts)"
    if ndim is not None and len(shape) != ndim:
        return f"{path}: shape {shape} (expected a {ndim}-D {'volume' if ndim == 3 else 'image'})"
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        return f"{path}: header shape {shape} announces {voxels:.3g} voxels (expected at most {MAX_VOXELS:.3g})"
    try:
        itemsize = np.dtype(header.get_data_dtype()).itemsize
    except Exception as err:  # noqa: BLE001 -- an unknown datatype code
        return f"{path}: header datatype cannot be used ({_one_line(err)}) (expected a NIfTI numeric datatype)"
    if header["magic"].item() != header.single_magic:
        return None  # a .hdr/.img pair: the voxels are in another file, which nibabel checks when it reads them
    # the image's header copy has vox_offset 0 (set again on saving); the file's offset is the array proxy's
    needed = int(getattr(image.dataobj, "offset", 0)) + voxels * itemsize
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            found = _gzip_size(path, needed)
        elif name.endswith(".nii"):
            found = path.stat().st_size
        else:
            return None
    except OSError as err:
        return f"{path}: cannot read ({_one_line(err)}) (expected a readable NIfTI-1/2 file)"
    if found is None:
        return f"{path}: cannot read (the compressed data is cut short or corrupt) (expected a complete .nii.gz)"
    if found < needed:
        return (
            f"{path}: cannot read (truncated: {found} bytes of header and voxels, its header shape {shape} needs "
            f"{needed}) (expected a complete NIfTI file)"
        )
    return None
