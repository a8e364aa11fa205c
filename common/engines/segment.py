"""``robustseg segment``: one new subject through a trained bundle's ``inference.json``, on the input's own grid."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from common.data.labels import MODALITIES
from common.errors import RobustsegError
from common.utils.files import atomic_write, naming
from common.utils.validation import check_device

__all__ = ["resolve_inputs", "segment"]

logger = logging.getLogger(__name__)


def _nifti_writer() -> type:
    """MONAI's ``NibabelWriter``, keeping the ``OSError`` of a failed write.

    ``SaveImage`` catches every writer's error, tries the next writer (ITK), and at the end raises a ``RuntimeError``
    holding only their text: a full disk would read as "cannot find a suitable writer ... install the writer
    libraries", with no ``OSError`` for :func:`common.errors.find_user_error` to report. With this one writer, the
    write's own error is kept (:attr:`failures`) and raised by :func:`segment`.
    """
    from monai.data import NibabelWriter

    class NiftiWriter(NibabelWriter):
        failures: ClassVar[list[OSError]] = []

        def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> None:
            try:
                super().write(filename, verbose=verbose, **kwargs)
            except OSError as exc:
                NiftiWriter.failures.append(exc)
                raise

    return NiftiWriter


def _save_image_id(config_files: Sequence[str]) -> str:
    """The config id of the ``SaveImaged`` transform in ``infer#postprocessing`` (e.g. ``...#transforms#2``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(config_files))
    transforms = parser["infer#postprocessing#transforms"]
    for index, transform in enumerate(transforms if isinstance(transforms, list) else []):
        if isinstance(transform, dict) and str(transform.get("_target_", "")).endswith("SaveImaged"):
            return f"infer#postprocessing#transforms#{index}"
    raise RobustsegError(f"{config_files[0]}: infer#postprocessing has no SaveImaged, expected the bundle's one.")


def resolve_inputs(inputs: str | Sequence[str]) -> list[str]:
    """The four input files in MODALITIES order from a BraTS subject folder or four paths.

    Args:
        inputs: a subject folder (files found by their ``_t1``/``_t1ce``/``_t2``/``_flair`` suffixes), four
            NIfTI paths in the order t1, t1ce, t2, flair (a list or a comma-separated string).

    Returns:
        Four absolute paths.

    Raises:
        RobustsegError: missing folder or files, or not exactly four images.
    """
    if isinstance(inputs, str) and Path(inputs).is_dir():
        from common.data.show import find_subject_files

        found = find_subject_files(inputs)
        return [str(found[m].resolve()) for m in MODALITIES]
    items = [p.strip() for p in inputs.split(",")] if isinstance(inputs, str) else [str(p) for p in inputs]
    items = [p for p in items if p]
    if len(items) == 1 and not Path(items[0]).exists():
        raise RobustsegError(f"input: {items[0]} does not exist, expected a subject folder or {len(MODALITIES)} NIfTI "
                             f"files in the order {', '.join(MODALITIES)}.")  # fmt: skip
    if len(items) == 1 and not Path(items[0]).is_dir():
        raise RobustsegError(f"input: {items[0]} is a single file, expected a subject folder or {len(MODALITIES)} "
                             f"NIfTI files in the order {', '.join(MODALITIES)}.")  # fmt: skip
    if len(items) != len(MODALITIES):
        raise RobustsegError(
            f"input: {len(items)} image(s) given, expected a subject folder or {len(MODALITIES)} NIfTI files in the "
            f"order {', '.join(MODALITIES)}."
        )
    missing = [p for p in items if not Path(p).is_file()]
    if missing:
        raise RobustsegError(f"{missing[0]}: input file not found.")
    return [str(Path(p).resolve()) for p in items]


def segment(
    bundle: str,
    input: str | Sequence[str],  # noqa: A002 - the CLI's name
    output: str,
    device: str = "cpu",
    config_files: Sequence[str] | None = None,
) -> Path:
    """Segment one subject with a trained model bundle and write a BraTS label map on the input's grid and affine.

    The bundle's own ``inference.json`` runs (MONAI's bundle workflow: its preprocessing, sliding-window inferer,
    ``Invertd`` back to the input grid and ``SaveImaged``) on a one-subject datalist. The inputs are checked first
    (files load, shapes and affines agree, no NaN/Inf); the output is written to a temporary name and renamed, so a
    failure never leaves a partial file.

    Args:
        bundle: a trained bundle folder or name.
        input: a BraTS subject folder or four NIfTI files (t1, t1ce, t2, flair).
        output: the label map to write (``.nii.gz``).
        device: e.g. "cpu" or "cuda:0".
        config_files: the bundle configs to use (default ``configs/inference.json``). The grid, network width and
            preprocessing the model was trained with (``models/training_settings.json``, written by training, also
            with ``quick.json`` or command-line overrides) are applied on top.

    Returns:
        The output path.

    Raises:
        RobustsegError: bad input files or device, a bundle without weights or with weights that do not fit.
    """
    from monai.bundle import run

    from common.bundles import training_overrides
    from common.data.check import check_dataset
    from common.engines.model_bundle import find_model_bundle

    device = check_device("device", device)  # checked before it goes into a config expression
    root = find_model_bundle(bundle)
    files = resolve_inputs(input)
    out = Path(output).resolve()
    if out.is_dir():
        raise RobustsegError(f"output: {out} is a folder, expected a file name such as seg.nii.gz.")
    if not out.parent.is_dir():
        raise RobustsegError(f"output: folder {out.parent} does not exist.")
    if not out.name.endswith((".nii.gz", ".nii")):
        raise RobustsegError(f"output: {out.name} is not a NIfTI file name, expected a name ending in .nii.gz or .nii.")
    subject = Path(files[0]).name.split(".nii")[0].rsplit("_", 1)[0] or "subject"
    config_files = list(config_files) if config_files else ["configs/inference.json"]
    trained = training_overrides(root)

    # a full disk fails a write without naming a file (inside MONAI's SaveImaged, too): the error names the output
    with naming(out), tempfile.TemporaryDirectory(prefix=".robustseg-", dir=out.parent) as tmp:
        entry = {"image": files, "subject": subject}
        datalist = Path(tmp) / "datalist.json"
        datalist.write_text(json.dumps({"testing": [entry]}))
        problems, _ = check_dataset(datalist, require_labels=False)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise RobustsegError(problems[0] + more)
        configs = [str(root / f) for f in config_files]
        writer = _nifti_writer()
        try:
            run(
                "inferring",
                config_file=configs,
                meta_file=str(root / "configs" / "metadata.json"),
                logging_file=str(root / "configs" / "logging.conf"),
                bundle_root=str(root),
                device=f"$torch.device({device!r})",
                inference_datalist=[entry],
                segmentation_dir=str(Path(tmp) / "out"),
                **{f"{_save_image_id(configs)}#writer": writer},
                **trained,
            )
        except Exception as exc:
            if writer.failures:  # the disk, not a missing library (see _nifti_writer)
                raise writer.failures[-1] from exc
            raise
        written = sorted((Path(tmp) / "out").glob("*.nii*"))
        if len(written) != 1:
            raise RobustsegError(f"{root}: inference wrote {len(written)} files, expected one segmentation.")
        gzipped = out.name.endswith(".nii.gz")
        with atomic_write(out, suffix=".tmp.nii.gz" if gzipped else ".tmp.nii") as staged:
            if gzipped:
                shutil.move(str(written[0]), staged)
            else:
                import nibabel as nib

                nib.save(nib.load(str(written[0])), str(staged))
    return out
