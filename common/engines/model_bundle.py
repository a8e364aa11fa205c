"""Load a trained model bundle for evaluation: network, preprocessing, inference settings and identity.

The robustness evaluation (:mod:`common.engines.robustness`) attacks networks of other bundles. A model bundle
defines in its ``configs/inference.json`` (plus overlays such as ``configs/quick.json``) the ``network_def``, the
``preprocessing_transforms``, the ``datalist``, ``ckpt_dir`` (weights in ``model.pt``), ``spatial_size`` and ``amp``;
its ``configs/metadata.json`` has a ``robustseg`` section with ``net``, ``family``, ``defense``, ``defense_param`` and
``temperature``. :func:`load_model_bundle` reads all of that with MONAI's :class:`~monai.bundle.ConfigParser`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from torch import nn

from common.bundles import distillation_record, find_bundle, training_overrides
from common.data.caching import transform_hashing
from common.data.task import BRATS, SegmentationTask
from common.engines.checkpoint import load_weights
from common.engines.zoo_bundle import is_zoo_bundle, load_zoo_bundle
from common.errors import RobustsegError
from common.utils.enums import Defense, Net, StrEnum
from common.utils.validation import is_number

__all__ = ["ModelBundle", "find_model_bundle", "load_model_bundle", "check_same_preprocessing"]

logger = logging.getLogger(__name__)

PREPROCESSING_KEYS = ("spatial_size", "n4", "normalization")
"""Config keys that say how a bundle preprocesses, named in the error when two bundles differ."""
TRAINING_KEYS = (
    "epochs", "learning_rate", "batch_size", "spatial_size", "base_filters", "amp", "n4", "normalization",
    "ce_weight", "val_fraction", "seed", "synthetic_subjects", "synthetic_shape", "temperature", "teacher_bundle",
    "teacher_config_files", "adversarial_epsilon", "adversarial_beta", "noise_radius", "noise_beta", "init_weights",
)  # fmt: skip
"""Train-config keys recorded in ``settings.json`` (those a bundle defines)."""


@dataclass
class ModelBundle:
    """A trained model bundle, ready to be evaluated.

    Attributes:
        name: the bundle name (``metadata.json``'s ``name``, else the folder name): the CSV's ``model``.
        root: the bundle folder.
        config_files: the config files parsed, relative to ``root`` when inside it.
        network: the network built from ``network_def`` with the trained weights, in eval mode, on the device.
        preprocessing: the bundle's ``preprocessing_transforms`` as a MONAI ``Compose`` (keys image and label); for a
            third-party bundle, :class:`~common.engines.zoo_bundle.ZooPreprocessing` (BraTS) or
            :class:`~common.engines.zoo_bundle.ClassPreprocessing` (a generic task).
        amp: whether the bundle infers under autocast (its ``amp`` setting, resolved from ``precision``).
        spatial_size: the preprocessed grid (``spatial_size``).
        net: ``"3d"`` or ``"2d"`` (metadata).
        family: template family, e.g. ``"baseline"``, ``"distill"`` (metadata).
        defense: a :class:`~common.utils.enums.Defense` value, e.g. ``"none"``, ``"distillation"`` (metadata).
        defense_param: e.g. ``"T=100"``; ``""`` for none (metadata).
        temperature: the distillation temperature T (metadata), ``None`` for other defences.
        weights: the weights file loaded (``<ckpt_dir>/model.pt``).
        weights_sha256: its SHA-256, so that results can be traced to the exact weights.
        preprocessing_settings: the values of :data:`PREPROCESSING_KEYS` in the parsed configs.
        preprocessing_hash: a hash of every preprocessing transform's class and settings.
        training: the training settings (:data:`TRAINING_KEYS`) read from ``configs/train.json`` with the same
            overlays, and the train config files used.
        trained_with: the settings training recorded beside the weights (``models/training_settings.json``: grid,
            network width, preprocessing), applied on top of the config files.
        overrides: the explicit config overrides, applied last.
        distillation: a distilled model's ``models/distillation_record.json`` (the recipe, temperatures and the
            student/teacher logit norm ratio; :class:`~common.defenses.DistillationRecord`), ``None`` if absent.
        amp_dtype: the autocast dtype when :attr:`amp` is on: ``"bfloat16"`` or ``"float16"`` (its ``amp_dtype``).
        adapter: for a third-party (Model Zoo layout) bundle, how it was adapted (:mod:`common.engines.zoo_bundle`:
            input channel order, output convention, inferer); ``None`` for robustseg's own bundles.
        task: what the network segments (:mod:`common.data.task`): BraTS, or a third-party bundle's generic task
            (:class:`~common.data.task.ClassTask`), which ``robustseg attack`` evaluates
            (:mod:`common.engines.class_evaluation`).
    """

    name: str
    root: Path
    config_files: list[str]
    network: nn.Module
    preprocessing: Callable[[dict[str, Any]], Mapping[str, Any]]
    amp: bool
    spatial_size: list[int]
    net: str
    family: str
    defense: str
    defense_param: str
    temperature: float | None
    weights: Path
    weights_sha256: str
    preprocessing_settings: dict[str, Any]
    preprocessing_hash: str
    training: dict[str, Any] = field(default_factory=dict)
    trained_with: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    amp_dtype: str = "bfloat16"
    distillation: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None
    task: SegmentationTask = BRATS
    _parser: ConfigParser | None = field(default=None, repr=False)

    @property
    def identity(self) -> dict[str, Any]:
        """The CSV's model columns: ``model``, ``net``, ``defense``, ``defense_param``."""
        return {"model": self.name, "net": self.net, "defense": self.defense, "defense_param": self.defense_param}

    def datalist(self) -> str:
        """The bundle's ``datalist`` (evaluated only now: the default generates the embedded synthetic data)."""
        if self._parser is None or "datalist" not in self._parser:
            raise RobustsegError(f"model bundle {self.name}: its configs define no 'datalist'; pass a datalist.")
        try:
            return str(self._parser.get_parsed_content("datalist"))
        except RobustsegError:
            raise
        except Exception as exc:
            raise RobustsegError(
                f"model bundle {self.name}: cannot evaluate its 'datalist' ({type(exc).__name__}: {exc})."
            ) from exc

    def settings(self) -> dict[str, Any]:
        """A JSON-ready description for ``settings.json``: identity, files, weights and training settings."""
        return {
            **self.identity,
            "family": self.family,
            "temperature": self.temperature,
            "bundle": str(self.root),
            "config_files": self.config_files,
            "trained_with": self.trained_with,
            "overrides": self.overrides,
            "weights": str(self.weights),
            "weights_sha256": self.weights_sha256,
            "amp": self.amp,
            "amp_dtype": self.amp_dtype if self.amp else None,
            "spatial_size": self.spatial_size,
            "preprocessing": self.preprocessing_settings,
            "training": self.training,
            "distillation": self.distillation,
            **({"adapter": self.adapter} if self.adapter is not None else {}),
        }


def find_model_bundle(bundle: str | os.PathLike) -> Path:
    """The folder of a model bundle given by path or by name (:func:`common.bundles.find_bundle`)."""
    return find_bundle(bundle, what="model bundle")


def _option(path: Path, key: str, value: Any, options: type[StrEnum]) -> str:
    """``robustseg.<key>`` of ``metadata.json`` checked against ``options`` (kept as the plain string it is)."""
    if value not in options.values():
        raise RobustsegError(f"{path}: robustseg.{key} is {value!r}; expected one of {list(options.values())}.")
    return value


def _read_metadata(root: Path) -> tuple[str, dict[str, Any]]:
    path = root / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RobustsegError(f"{path}: cannot be read as JSON ({exc}).") from None
    section = meta.get("robustseg") if isinstance(meta, dict) else None
    if not isinstance(section, dict):
        raise RobustsegError(
            f"{path}: no 'robustseg' section (net, family, defense, defense_param, temperature); regenerate the "
            "bundle with `robustseg bundles generate`."
        )
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else root.name
    net = _option(path, "net", section.get("net"), Net)
    defense = _option(path, "defense", section.get("defense"), Defense)
    temperature = section.get("temperature")
    if temperature is not None and not (is_number(temperature) and math.isfinite(temperature) and temperature > 0):
        raise RobustsegError(f"{path}: robustseg.temperature is {temperature!r}; expected null or a number > 0.")
    return name, {
        "net": net,
        "family": str(section.get("family") or ""),
        "defense": defense,
        "defense_param": str(section.get("defense_param") or ""),
        "temperature": float(temperature) if temperature is not None else None,
    }


def _parser(root: Path, config_files: Sequence[str], overrides: Mapping[str, Any]) -> tuple[ConfigParser, list[Path]]:
    paths = [Path(f) if Path(f).is_absolute() else root / f for f in config_files]
    for path in paths:
        if not path.is_file():
            raise RobustsegError(f"{path}: config file of model bundle {root.name} not found.")
    parser = ConfigParser()
    try:
        parser.read_config([str(p) for p in paths])
    except Exception as exc:
        raise RobustsegError(f"{paths[-1]}: cannot read the bundle's configs ({type(exc).__name__}: {exc}).") from exc
    parser["bundle_root"] = str(root)  # the bundle's own lookup goes by name, which a copied bundle may not match
    for key, value in overrides.items():
        parser[key] = value
    return parser, paths


def _parsed(parser: ConfigParser, key: str, where: str) -> Any:
    if key not in parser:
        raise RobustsegError(f"{where}: the configs define no {key!r}.")
    try:
        return parser.get_parsed_content(key)
    except RobustsegError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise RobustsegError(f"{where}: cannot build {key!r} ({type(exc).__name__}: {message}).") from exc


def _plain(value: Any) -> Any:
    """``value`` if it is JSON data, else its string form."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _training(root: Path, config_files: Sequence[str]) -> dict[str, Any]:
    files = [
        str(Path(f).with_name("train.json")) if Path(f).name == "inference.json" else str(f) for f in config_files
    ]
    out: dict[str, Any] = {"config_files": files}
    paths = [Path(f) if Path(f).is_absolute() else root / f for f in files]
    if not all(p.is_file() for p in paths):
        out["missing"] = [str(p) for p in paths if not p.is_file()]
        return out
    parser = ConfigParser()
    try:
        parser.read_config([str(p) for p in paths])
    except Exception as exc:  # the training settings are informative; a broken train config does not stop evaluation
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    parser["bundle_root"] = str(root)
    for key in TRAINING_KEYS:
        if key in parser:
            try:
                out[key] = _plain(parser.get_parsed_content(key, instantiate=False))
            except Exception as exc:  # e.g. init_weights naming a teacher bundle that is not here: keep its config
                logger.debug("training setting %s of %s not evaluated (%s)", key, root, exc)
                out[key] = _plain(parser.get(key))
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_bundle(
    bundle: str | os.PathLike,
    config_files: Sequence[str] = ("configs/inference.json",),
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ModelBundle:
    """Load a trained model bundle: its network with weights, preprocessing, inference settings and identity.

    A bundle whose ``metadata.json`` has no ``robustseg`` section is a third-party (Model Zoo layout) bundle, loaded
    through :func:`common.engines.zoo_bundle.load_zoo_bundle`: its own network, weights, preprocessing, inferer,
    channel order and output convention.

    Args:
        bundle: the bundle folder or name (see :func:`find_model_bundle`).
        config_files: config files relative to the bundle folder, merged in order (later files override keys), as
            ``--config_file "['configs/inference.json','configs/quick.json']"`` would; use the overlays the bundle
            was trained with.
        device: where the network runs.
        overrides: config ids -> values set last (``#`` for nested ids), e.g. ``{"spatial_size": [64, 64, 64]}``.
            Before them, the settings training recorded beside the weights (``models/training_settings.json``:
            grid, network width, preprocessing, amp; :func:`common.bundles.training_overrides`) are applied, so a
            model trained with an overlay or command-line overrides is evaluated as it was trained.
        options: for third-party bundles only, the overrides of :data:`common.engines.zoo_bundle.ZOO_OPTIONS`
            (``input_channels``, ``output_channels``, ``output_activation``, ``task``).

    Returns:
        The :class:`ModelBundle`; its network is in eval mode with the weights of ``<ckpt_dir>/model.pt``.

    Raises:
        RobustsegError: if the bundle or a config file is not found, ``metadata.json`` has no valid ``robustseg``
            section, ``network_def``/``preprocessing_transforms`` cannot be built, or the weights are missing or do
            not fit the network.

    Example::

        model = load_model_bundle("bundles/brats_unet3d_baseline", ["configs/inference.json", "configs/quick.json"])
        logits = model.network(model.preprocessing(item)["image"][None])
    """
    root = find_model_bundle(bundle)
    if isinstance(config_files, (str, os.PathLike)):
        config_files = [os.fspath(config_files)]
    config_files = [os.fspath(f) for f in config_files]
    if not config_files:
        raise RobustsegError(f"model bundle {root.name}: config_files is empty; expected e.g. configs/inference.json.")
    if is_zoo_bundle(root):
        return ModelBundle(**load_zoo_bundle(root, config_files, torch.device(device), overrides, options))
    if options:
        raise RobustsegError(
            f"model bundle {root.name}: options {sorted(options)} are for third-party bundles; robustseg's own "
            "bundles define their channels in their configs."
        )
    name, meta = _read_metadata(root)
    trained_with = training_overrides(root)
    overrides = dict(overrides or {})
    parser, _ = _parser(root, config_files, {**trained_with, **overrides})
    where = f"model bundle {name}"

    weights = Path(str(_parsed(parser, "ckpt_dir", where))) / "model.pt"
    if not weights.is_file():
        train = ",".join(f"'{f}'" for f in _training(root, config_files)["config_files"])
        raise RobustsegError(
            f"{weights}: weights of model bundle {name} not found; train it first: "
            f'python -m monai.bundle run training --config_file "[{train}]" (from {root}).'
        )
    network = _parsed(parser, "network_def", where)
    if not isinstance(network, nn.Module):
        raise RobustsegError(f"{where}: network_def builds a {type(network).__name__}, expected a torch.nn.Module.")
    device = torch.device(device)
    network = network.to(device)
    load_weights(network, weights, map_location=device)
    network.eval()

    transforms = _parsed(parser, "preprocessing_transforms", where)
    if not isinstance(transforms, (list, tuple)):
        raise RobustsegError(f"{where}: preprocessing_transforms is a {type(transforms).__name__}, expected a list.")
    preprocessing = Compose(list(transforms))
    spatial_size = _parsed(parser, "spatial_size", where)
    amp = bool(_parsed(parser, "amp", where)) if "amp" in parser else False
    amp_dtype = str(_parsed(parser, "amp_dtype", where)) if amp and "amp_dtype" in parser else "bfloat16"
    settings = {k: _plain(parser.get_parsed_content(k)) for k in PREPROCESSING_KEYS if k in parser}
    relative = [os.path.relpath(f, root) if Path(f).is_absolute() and Path(f).is_relative_to(root) else f
                for f in config_files]  # fmt: skip
    return ModelBundle(
        name=name,
        root=root,
        config_files=relative,
        network=network,
        preprocessing=preprocessing,
        amp=amp,
        amp_dtype=amp_dtype,
        spatial_size=[int(s) for s in spatial_size],
        weights=weights.resolve(),
        weights_sha256=_sha256(weights),
        preprocessing_settings=settings,
        preprocessing_hash=transform_hashing(preprocessing.transforms).decode(),
        training=_training(root, config_files),
        trained_with={k: _plain(v) for k, v in trained_with.items()},
        distillation=distillation_record(root),
        overrides={k: _plain(v) for k, v in overrides.items()},
        _parser=parser,
        **meta,
    )


def check_same_preprocessing(models: Sequence[ModelBundle]) -> None:
    """Stop unless every model preprocesses its input identically (paired-by-subject Dice needs the same input).

    Args:
        models: the loaded model bundles.

    Raises:
        RobustsegError: naming the first two bundles that differ and, where one of :data:`PREPROCESSING_KEYS`
            differs, the setting and both values.
    """
    if not models:
        return
    first = models[0]
    for other in models[1:]:
        if other.preprocessing_hash == first.preprocessing_hash:
            continue
        mine, theirs = first.preprocessing_settings, other.preprocessing_settings
        keys = [k for k in PREPROCESSING_KEYS if mine.get(k) != theirs.get(k)]
        what = "; ".join(f"{k}: {mine.get(k)} vs {theirs.get(k)}" for k in keys) or "preprocessing_transforms differ"
        raise RobustsegError(
            f"model bundles {first.name} and {other.name} preprocess differently ({what}); all models of one "
            "evaluation must see the same inputs so that Dice pairs by subject (use the same config overlays)."
        )
