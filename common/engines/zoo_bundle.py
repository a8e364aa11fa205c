"""Third-party MONAI bundles (Model Zoo layout) as models of the robustness evaluation.

A Model Zoo bundle such as ``brats_mri_segmentation`` differs from robustseg's own bundles in every convention the
evaluation relies on: its ``metadata.json`` has no ``robustseg`` section; its network may output 3 sigmoid region
channels (tumour core, whole tumour, enhancing tumour, in its own order) instead of softmax logits over the BraTS
labels; it reads its inputs in its own modality order (T1c, T1, T2, FLAIR); it preprocesses with its own transforms
(e.g. ``NormalizeIntensityd(nonzero=True, channel_wise=True)``: z-scores) and infers through its own ``inferer``
(e.g. a ``SlidingWindowInferer``). :func:`load_zoo_bundle` turns such a bundle into a
:class:`~common.engines.model_bundle.ModelBundle` that the evaluation, the attacks and the losses use unchanged:

* **network** (:class:`ZooNetwork`): the bundle's ``network_def`` (or ``network``) with ``models/model.pt`` (a state
  dict or a dict holding one, ``weights_only=True``), or TorchScript ``models/model.ts``, run through the bundle's
  ``inferer`` (gradients flow through every window of a ``SlidingWindowInferer``), with its output channels put in
  robustseg's canonical order: softmax logits over the BraTS labels (0, 1, 2, 4), or sigmoid region logits in the
  order WT, TC, ET (:data:`common.data.labels.REGION_CHANNELS`; predicted labels follow the Model Zoo bundle's own
  postprocessing rule, :func:`common.data.labels.logits_to_labels`).
* **preprocessing** (:class:`ZooPreprocessing`): the bundle's own ``preprocessing`` (or ``preprocessing_transforms``)
  on the subject's image files put in the bundle's channel order, the result put back in robustseg's channel order
  (the network adapter reorders for the network, so corruptions, examples and panels keep meaning what they say);
  the label is loaded beside it and resampled (nearest neighbour) onto the preprocessed image's grid if the
  preprocessing moved it.
* **output convention** (:class:`OutputConvention`) and **input channel order**, read from ``metadata.json``
  (``network_data_format.outputs.pred.channel_def``, ``inputs.image.channel_def``) and the activation of the bundle's
  ``postprocessing`` (``Activations[d]`` with ``sigmoid`` or ``softmax``), each with an explicit override
  (``output_channels``, ``output_activation``, ``input_channels``) for bundles whose metadata is incomplete.

Where epsilon lives: the attacks perturb the network's input, after the bundle's own preprocessing (as SEA wraps the
normalisation inside the model), and an epsilon relative to each subject's maximum absolute input intensity
(:class:`common.attacks.Attack`'s default ``relative=True``) means the same share of the input's range for every
bundle. On robustseg's [0, 1]-scaled inputs that is epsilon itself; on z-scored inputs (``NormalizeIntensityd``) it is
epsilon times the subject's largest absolute z-score, typically 4-8 standard deviations of brain intensity, so
epsilon = 0.05 moves a voxel by about 0.2-0.4 standard deviations. The rows' ``linf`` column holds the perturbation in
the input's own units.

Trust: a bundle's configs run code when parsed (``_target_`` builds any class, ``$`` evaluates Python). Loading a
third-party bundle says so once, naming it, on standard error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Invertd, LoadImage, ResampleToMatch
from torch import Tensor, nn

from common.data.caching import transform_hashing
from common.data.labels import BRATS_LABELS, MODALITIES, REGION_CHANNELS
from common.data.task import BRATS, ClassTask, SegmentationTask, name_key
from common.engines.checkpoint import load_weights
from common.errors import RobustsegError

__all__ = [
    "TASKS",
    "ZOO_OPTIONS",
    "ClassPreprocessing",
    "OutputConvention",
    "ZooNetwork",
    "ZooPreprocessing",
    "class_convention",
    "input_order",
    "same_grid",
    "output_convention",
    "task_kind",
    "load_zoo_bundle",
    "is_zoo_bundle",
]

logger = logging.getLogger(__name__)

ZOO_OPTIONS = ("input_channels", "output_channels", "output_activation", "task")
"""Per-bundle overrides of what ``metadata.json`` and the postprocessing say (see :func:`load_zoo_bundle`)."""

TASKS = ("brats", "classes")
"""What a third-party bundle segments: BraTS tumour labels or regions, or a generic task's classes
(:class:`common.data.task.ClassTask`)."""


_MODALITY_NAMES: dict[str, str] = {
    **dict.fromkeys(["t1c", "t1ce", "t1gd", "t1contrast", "t1post", "t1wce", "t1cegd", "t1wgd", "t1postcontrast"],
                    "t1ce"),
    **dict.fromkeys(["t1", "t1w", "t1native", "t1pre", "t1precontrast"], "t1"),
    **dict.fromkeys(["t2", "t2w"], "t2"),
    **dict.fromkeys(["flair", "t2flair", "t2wflair"], "flair"),
}  # fmt: skip
"""Normalised channel names (lower case, letters and digits only) -> robustseg modality (:data:`MODALITIES`)."""

_REGION_NAMES: dict[str, str] = {
    **dict.fromkeys(["wt", "wholetumor", "wholetumour", "whole"], "WT"),
    **dict.fromkeys(["tc", "tumorcore", "tumourcore", "core"], "TC"),
    **dict.fromkeys(["et", "enhancingtumor", "enhancingtumour", "enhancing", "gdenhancingtumor"], "ET"),
}
"""Normalised channel names -> BraTS scoring region (sigmoid region outputs)."""

_LABEL_NAMES: dict[str, int] = {
    **dict.fromkeys(["background", "bg", "bkg", "0"], 0),
    **dict.fromkeys(["ncr", "net", "ncrnet", "necrotic", "necrosis", "necroticcore", "nonenhancingtumor",
                     "nonenhancingtumour", "necroticandnonenhancingtumorcore", "necroticnonenhancingtumorcore",
                     "1"], 1),
    **dict.fromkeys(["ed", "edema", "oedema", "peritumoraledema", "peritumoraloedema", "2"], 2),
    **dict.fromkeys(["et", "enhancingtumor", "enhancingtumour", "enhancing", "gdenhancingtumor", "4"], 4),
}  # fmt: skip
"""Normalised channel names -> BraTS label value (softmax label outputs)."""

ACTIVATIONS = ("sigmoid", "softmax")


def _match(name: str, activation: str) -> Any:
    """The region (sigmoid) or BraTS label (softmax) a channel name denotes: an exact name of the tables above, else
    ``label <n>`` in the name, else its key words (``non-enhancing``/``necrotic`` before ``enhancing``)."""
    key = name_key(name)
    if activation == "sigmoid":
        if key in _REGION_NAMES:
            return _REGION_NAMES[key]
        words = (("whole", "WT"), ("core", "TC"), ("enhancing", "ET"))
        return next((region for word, region in words if word in key), None)
    if key in _LABEL_NAMES:
        return _LABEL_NAMES[key]
    label = re.search(r"label\s*(\d+)", name.lower())
    if label is not None and int(label.group(1)) in BRATS_LABELS:
        return int(label.group(1))
    words = (("background", 0), ("nonenhancing", 1), ("necro", 1), ("edema", 2), ("oedema", 2), ("enhancing", 4))
    return next((value for word, value in words if word in key), None)


def is_zoo_bundle(root: Path) -> bool:
    """Whether the bundle folder ``root`` is a third-party bundle: its ``metadata.json`` has no ``robustseg`` section.

    A ``metadata.json`` that cannot be read counts as robustseg's (whose loader names what is wrong with it).
    """
    try:
        meta = json.loads((root / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "robustseg" not in meta


@dataclass(frozen=True)
class OutputConvention:
    """How a bundle's output channels map to robustseg's canonical output.

    Attributes:
        activation: ``"sigmoid"`` (one independent region per channel) or ``"softmax"`` (one BraTS label per channel).
        names: the bundle's own channel names, in its channel order.
        order: the bundle channel of each canonical channel: ``output[:, order]`` is canonical (sigmoid: WT, TC, ET;
            softmax: labels 0, 1, 2, 4; a generic task: the bundle's own order).
        task: ``"brats"`` or ``"classes"`` (a generic task, :data:`TASKS`): softmax over the classes, or one sigmoid
            channel (a binary task, whose logit ``z`` becomes the softmax logits ``(0, z)``: ``softmax((0, z))[1] =
            sigmoid(z)``).
    """

    activation: str
    names: tuple[str, ...]
    order: tuple[int, ...]
    task: str = "brats"

    @property
    def channels(self) -> int:
        """The bundle network's number of output channels."""
        return len(self.names)

    @property
    def binary(self) -> bool:
        """A generic task's single sigmoid channel, given to the evaluation as two softmax logits ``(0, z)``."""
        return self.task == "classes" and self.activation == "sigmoid"

    @property
    def class_names(self) -> tuple[str, ...]:
        """A generic task's class of each canonical channel (a binary task: ``background`` first)."""
        return ("background", *self.names) if self.binary else self.names

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description for ``settings.json``."""
        if self.task == "classes":
            return {"task": "classes", "activation": self.activation, "channels": list(self.names),
                    "classes": list(self.class_names)}  # fmt: skip
        canonical = REGION_CHANNELS if self.activation == "sigmoid" else [f"label {v}" for v in BRATS_LABELS]
        return {
            "activation": self.activation,
            "channels": list(self.names),
            "canonical": {str(c): self.names[i] for c, i in zip(canonical, self.order, strict=True)},
        }


def _channel_def(meta: Mapping[str, Any], where: str, section: str) -> tuple[list[str] | None, int | None]:
    """``network_data_format.<section>.channel_def`` as names in channel order, and ``num_channels``."""
    fmt = meta.get("network_data_format")
    part: Any = fmt
    for key in section.split("."):
        part = part.get(key) if isinstance(part, Mapping) else None
    if not isinstance(part, Mapping):
        return None, None
    count = part.get("num_channels")
    count = count if isinstance(count, int) and not isinstance(count, bool) else None
    channel_def = part.get("channel_def")
    if channel_def is None:
        return None, count
    if not isinstance(channel_def, Mapping) or not channel_def:
        raise RobustsegError(f"{where}: network_data_format.{section}.channel_def is {channel_def!r}; expected an "
                             "object mapping channel indices ('0', '1', ...) to names.")  # fmt: skip
    try:
        indices = sorted(int(k) for k in channel_def)
    except (TypeError, ValueError):
        indices = []
    if indices != list(range(len(channel_def))) or not all(isinstance(v, str) for v in channel_def.values()):
        raise RobustsegError(f"{where}: network_data_format.{section}.channel_def is {dict(channel_def)!r}; "
                             "expected keys '0' .. 'n-1', each naming its channel.")  # fmt: skip
    names = [channel_def[k] for k in sorted(channel_def, key=int)]
    if count is not None and count != len(names):
        raise RobustsegError(f"{where}: network_data_format.{section} has num_channels {count} but its channel_def "
                             f"names {len(names)} channels ({names}).")  # fmt: skip
    return names, count


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(isinstance(n, str) for n in value):
        raise RobustsegError(f"{what}: {value!r} is not a list of channel names.")
    return list(value)


def _listed_channels(
    meta: Mapping[str, Any], where: str, section: str, option: str, override: Sequence[str] | None, hint: str
) -> tuple[str, list[str]]:
    """The channel names of ``section`` (``inputs.image`` or ``outputs.pred``): the ``option`` override, else its
    ``channel_def``; and ``what`` names where they came from, for messages. Neither: one line asking for ``option``,
    ``hint`` saying what it holds."""
    what = option if override is not None else f"{where}: network_data_format.{section}.channel_def"
    names = _names(override, what) if override is not None else _channel_def(meta, where, section)[0]
    if names is None:
        raise RobustsegError(f"{where}: no network_data_format.{section}.channel_def; give {option}, {hint}.")
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise RobustsegError(f"{what}: {names!r} is not a list of channel names.")
    return what, names


def input_order(meta: Mapping[str, Any], where: str, override: Sequence[str] | None = None) -> list[str]:
    """The bundle's input channels as robustseg modalities (``t1``, ``t1ce``, ``t2``, ``flair``), in its order.

    Args:
        meta: the bundle's ``metadata.json``.
        where: the file, for messages.
        override: the modality of each input channel (names as in ``channel_def`` are accepted, e.g. ``T1c``),
            instead of ``inputs.image.channel_def``.

    Raises:
        RobustsegError: no channel_def and no override, a name that is no MR contrast robustseg knows, or a list that
            is not the four modalities, each once.
    """
    hint = "the modality of each input channel (e.g. ['t1ce', 't1', 't2', 'flair'])"
    what, names = _listed_channels(meta, where, "inputs.image", "input_channels", override, hint)
    modalities = []
    for name in names:
        modality = _MODALITY_NAMES.get(name_key(name))
        if modality is None:
            raise RobustsegError(f"{what}: channel {name!r} is no MR contrast robustseg knows; expected one of T1, "
                                 "T1c (T1Gd, T1ce), T2, FLAIR.")  # fmt: skip
        modalities.append(modality)
    if sorted(modalities) != sorted(MODALITIES):
        raise RobustsegError(f"{what}: {list(names)} are the modalities {modalities}; expected each of "
                             f"{list(MODALITIES)} once (a BraTS subject's four contrasts).")  # fmt: skip
    return modalities


def _postprocessing_activation(parser: ConfigParser) -> str | None:
    """``"sigmoid"``/``"softmax"`` if the bundle's ``postprocessing`` applies ``Activations[d]`` with it, else None."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            target = str(node.get("_target_", ""))
            if target.rsplit(".", 1)[-1] in ("Activations", "Activationsd"):
                found.extend(a for a in ACTIVATIONS if node.get(a) is True)
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    for key in ("postprocessing", "postprocessing_transforms"):
        if key in parser:
            walk(parser.get(key))
    return found[0] if len(set(found)) == 1 else None


def _outputs(
    meta: Mapping[str, Any],
    where: str,
    activation: str | None,
    names: Sequence[str] | None,
    parser: ConfigParser | None,
    example: str,
) -> tuple[str, list[str], str | None]:
    """The output channel names (the override, else ``outputs.pred.channel_def``; ``what`` names where they came from,
    for messages) and the activation (the override, else the postprocessing's; ``None`` if neither says)."""
    hint = f"the name of each output channel (e.g. {example})"
    what, found = _listed_channels(meta, where, "outputs.pred", "output_channels", names, hint)
    if activation is not None and activation not in ACTIVATIONS:
        raise RobustsegError(f"output_activation is {activation!r}; expected one of {list(ACTIVATIONS)}.")
    if activation is None and parser is not None:
        activation = _postprocessing_activation(parser)
    return what, list(found), activation


def output_convention(
    meta: Mapping[str, Any],
    where: str,
    activation: str | None = None,
    names: Sequence[str] | None = None,
    parser: ConfigParser | None = None,
) -> OutputConvention:
    """The output convention of a BraTS bundle, from its metadata and postprocessing, or the overrides.

    Args:
        meta: the bundle's ``metadata.json``.
        where: the file, for messages.
        activation: ``"sigmoid"`` or ``"softmax"``; ``None``: the activation of the bundle's ``postprocessing``, else
            sigmoid if the channel names are regions and softmax if they are labels.
        names: the bundle's output channel names, instead of ``outputs.pred.channel_def``.
        parser: the bundle's parsed configs (to read its postprocessing).

    Raises:
        RobustsegError: names missing, unknown or repeated, an unknown activation, or channels that are not the three
            regions (sigmoid) or the four BraTS labels (softmax).
    """
    what, found, activation = _outputs(meta, where, activation, names, parser, "['TC', 'WT', 'ET']")
    if activation is None:
        activation = "sigmoid" if all(name_key(n) in _REGION_NAMES for n in found) else "softmax"
    if activation == "sigmoid":
        wanted: Sequence[Any] = REGION_CHANNELS
        expected = "the three BraTS regions (whole tumour, tumour core, enhancing tumour)"
    else:
        wanted = BRATS_LABELS
        expected = "the four BraTS labels (background, necrotic core, oedema, enhancing tumour)"
    mapped = [_match(n, activation) for n in found]
    if None in mapped or sorted(mapped, key=str) != sorted(wanted, key=str):
        raise RobustsegError(f"{what}: {list(found)} with {activation} outputs; expected {expected}, each once, "
                             "in any order (or give output_channels / output_activation).")  # fmt: skip
    order = tuple(mapped.index(w) for w in wanted)
    return OutputConvention(activation, tuple(found), order)


def class_convention(
    meta: Mapping[str, Any],
    where: str,
    activation: str | None = None,
    names: Sequence[str] | None = None,
    parser: ConfigParser | None = None,
) -> OutputConvention:
    """The output convention of a generic task's bundle (not BraTS): its classes, in its channel order.

    Softmax over two or more channels (channel ``i`` scores label ``i``), or one sigmoid channel (a binary task:
    label 1 where the logit is positive). The activation is the override, else that of the bundle's
    ``postprocessing``, else softmax for two or more channels and sigmoid for one.

    Raises:
        RobustsegError: names missing or repeated, an unknown activation, softmax over one channel, or sigmoid over
            several (independent, possibly overlapping classes: not a label map).
    """
    what, found, activation = _outputs(meta, where, activation, names, parser, "['background', 'spleen']")
    if activation is None:
        activation = "softmax" if len(found) > 1 else "sigmoid"
    if len(set(found)) != len(found):
        raise RobustsegError(f"{what}: {list(found)} repeats a class name; each output channel needs its own.")
    if activation == "softmax" and len(found) < 2:
        raise RobustsegError(f"{what}: {list(found)} is one softmax channel; a softmax needs a channel per class "
                             "(or give output_activation 'sigmoid' for a binary task).")  # fmt: skip
    if activation == "sigmoid" and len(found) != 1:
        raise RobustsegError(f"{what}: {list(found)} are {len(found)} sigmoid channels of a task that is not BraTS; "
                             "independent (possibly overlapping) classes are not a label map robustseg can score: "
                             "expected softmax channels, or one sigmoid channel.")  # fmt: skip
    return OutputConvention(activation, tuple(found), tuple(range(len(found))), task="classes")


def task_kind(meta: Mapping[str, Any], where: str, options: Mapping[str, Any]) -> str:
    """What a third-party bundle segments (:data:`TASKS`): the ``task`` option, else BraTS when its input has four
    channels or its output channels are named as BraTS regions or labels, else a generic task (``"classes"``).

    Raises:
        RobustsegError: an unknown ``task`` option, or a broken ``channel_def``.
    """
    if options.get("task") is not None:
        if options["task"] not in TASKS:
            raise RobustsegError(f"task is {options['task']!r}; expected one of {list(TASKS)}.")
        return str(options["task"])
    if options.get("input_channels") is not None:
        return "brats"
    inputs, count = _channel_def(meta, where, "inputs.image")
    n_inputs = len(inputs) if inputs is not None else count
    if n_inputs == len(MODALITIES):
        return "brats"
    outputs = options.get("output_channels")
    if outputs is None:
        outputs = _channel_def(meta, where, "outputs.pred")[0]
    if isinstance(outputs, (list, tuple)) and outputs and all(isinstance(n, str) for n in outputs):
        regions = {_match(n, "sigmoid") for n in outputs}
        labels = {_match(n, "softmax") for n in outputs}
        if regions == set(REGION_CHANNELS) or labels == set(BRATS_LABELS):
            return "brats"
    return "classes" if n_inputs is not None or outputs is not None else "brats"


class ZooNetwork(nn.Module):
    """A third-party bundle's network and inferer with robustseg's canonical output channels.

    ``forward(x)`` takes robustseg's channel order (:data:`~common.data.labels.MODALITIES`, as
    :class:`ZooPreprocessing` gives it), puts the channels in the bundle's order (``input_order``), and returns
    ``inferer(x, network)`` (``network(x)`` without an inferer), checked to have the channel count of the bundle's
    metadata, with the output channels reordered by :attr:`OutputConvention.order`. The inferer runs inside
    ``forward``, so an attack differentiates through it (every window of a sliding-window inferer gets its share of
    the input gradient).

    Args:
        network: the bundle's network with its weights.
        convention: its output convention.
        inferer: the bundle's inferer, or ``None``.
        name: the bundle, for messages.
        input_order: the robustseg channel of each of the bundle's input channels (``None``: the same order).
    """

    def __init__(
        self,
        network: nn.Module,
        convention: OutputConvention,
        inferer: Callable[..., Tensor] | None,
        name: str,
        input_order: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.convention = convention
        self.inferer = inferer
        self.name = name
        self.input_order = list(input_order) if input_order is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """Canonical output logits of the bundle for inputs ``x`` (B, C, *spatial) in robustseg's channel order (a
        BraTS bundle's four contrasts) or the bundle's own (a generic task's)."""
        if self.input_order is not None:
            x = x[:, self.input_order]
        out = self.inferer(x, self.network) if self.inferer is not None else self.network(x)
        if isinstance(out, (list, tuple)):  # deep-supervision networks return the full-resolution output first
            out = out[0]
        if not isinstance(out, Tensor) or out.ndim != x.ndim or out.shape[1] != self.convention.channels:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            names = list(self.convention.names)
            raise RobustsegError(f"model bundle {self.name}: the network outputs {got}, but its metadata names "
                                 f"{self.convention.channels} output channels {names}.")  # fmt: skip
        out = out[:, list(self.convention.order)].as_subclass(Tensor)
        if self.convention.binary:  # softmax((0, z))[1] = sigmoid(z): one sigmoid channel as two softmax logits
            out = torch.cat([torch.zeros_like(out), out], dim=1)
        return out

    def extra_repr(self) -> str:
        return f"bundle={self.name!r}, convention={self.convention}, inferer={type(self.inferer).__name__}"


class _BundlePreprocessing:
    """What both preprocessings share: the bundle's transforms, its name, and the label put on the image's grid."""

    def __init__(self, transforms: Callable[[dict[str, Any]], Any], name: str) -> None:
        self.transforms = transforms
        self.name = name
        self._load_label = LoadImage(image_only=True, ensure_channel_first=True)
        self._resample = ResampleToMatch(mode="nearest")

    def _hash(self, extra: Mapping[str, Any]) -> str:
        """A hash of the transforms' classes and settings and of ``extra``."""
        inner = getattr(self.transforms, "transforms", [self.transforms])
        return transform_hashing([*inner, dict(extra)]).decode()

    def _labels(self, path: Any, image: Tensor) -> tuple[Tensor, Tensor | None]:
        """The label file ``path`` as ``(1, *spatial)`` with its values rounded: on the preprocessed ``image``'s grid
        (resampled, nearest neighbour, if the preprocessing moved it: another shape or affine), and as stored when
        that differs (``None`` when the grids are the same)."""
        stored = self._load_label(path).round()
        if same_grid(stored, image):
            return stored, None
        return self._resample(stored, img_dst=image).round(), stored


class ZooPreprocessing(_BundlePreprocessing):
    """A third-party bundle's preprocessing of a robustseg datalist entry: image files in the bundle's channel order,
    its own transforms, the result back in robustseg's channel order (:data:`~common.data.labels.MODALITIES`, which
    the corruptions, examples and figure panels rely on; :class:`ZooNetwork` reorders for the network), and the label
    on the preprocessed image's grid.

    Args:
        transforms: the bundle's preprocessing (a callable on a dict with ``image``: the list of image files).
        modalities: the modality of each of the bundle's input channels (:func:`input_order`).
        name: the bundle, for messages.

    Raises (when called):
        RobustsegError: an entry that is not four image files in robustseg's modality order (e.g. an MSD Task01 4-D
            image), or a preprocessing that does not give a ``(4, *spatial)`` image.
    """

    def __init__(self, transforms: Callable[[dict[str, Any]], Any], modalities: Sequence[str], name: str) -> None:
        super().__init__(transforms, name)
        self.modalities = list(modalities)
        self.order = [MODALITIES.index(m) for m in self.modalities]
        self.inverse = [self.modalities.index(m) for m in MODALITIES]

    @property
    def hash(self) -> str:
        """A hash of the transforms' classes and settings, the channel order and the output order."""
        return self._hash({"channel_order": self.modalities, "output": "robustseg order"})

    def __call__(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        images = entry.get("image")
        if entry.get("layout", "brats") != "brats" or not isinstance(images, (list, tuple)) or len(images) != 4:
            raise RobustsegError(f"datalist entry {dict(entry)!r:.200}: model bundle {self.name} needs the four image "
                                 f"files of a BraTS-layout entry ({', '.join(MODALITIES)}); MSD Task01 4-D images are "
                                 "not supported for third-party bundles.")  # fmt: skip
        item = {k: v for k, v in entry.items() if k != "label"}
        item["image"] = [images[i] for i in self.order]
        out = self.transforms(item)
        image = out["image"] if isinstance(out, Mapping) else None
        if not isinstance(image, Tensor) or image.ndim < 3 or image.shape[0] != 4:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise RobustsegError(f"model bundle {self.name}: its preprocessing gives an image {got} for "
                                 f"{images[0]}; expected (4, *spatial), the four contrasts as channels.")  # fmt: skip
        image = image[self.inverse]  # back to robustseg's channel order: corruptions, examples and panels use it
        return {**out, "image": image, "label": self._labels(entry["label"], image)[0]}


def same_grid(label: Tensor, image: Tensor) -> bool:
    """Whether ``label`` ``(1, *spatial)`` lies on ``image``'s grid: the same shape and (where both have one) affine."""
    return tuple(label.shape[1:]) == tuple(image.shape[1:]) and (
        not hasattr(image, "affine")
        or not hasattr(label, "affine")
        or torch.allclose(label.affine.double(), image.affine.double(), atol=1e-4)
    )


class ClassPreprocessing(_BundlePreprocessing):
    """A generic task's bundle preprocessing of a datalist entry (``image``: one file or a list, ``label``: the class
    index map): the bundle's own transforms on the image, the label on the preprocessed image's grid.

    When the transforms move the grid (e.g. ``Orientationd`` and ``Spacingd``, as the Model Zoo's
    ``spleen_ct_segmentation``), the result also holds ``label_original``, the label as stored, and :meth:`invert`
    maps class probabilities back onto that grid as the bundle's own postprocessing does (``Invertd`` with
    interpolation, then argmax): the evaluation scores there, so that its clean Dice is the bundle's own.

    Args:
        transforms: the bundle's preprocessing (a callable on a dict with ``image``).
        channels: the bundle's input channel count (``None``: not checked).
        name: the bundle, for messages.

    Raises (when called):
        RobustsegError: an entry without an image or a label, or a preprocessing that does not give a
            ``(channels, *spatial)`` image.
    """

    def __init__(self, transforms: Callable[[dict[str, Any]], Any], channels: int | None, name: str) -> None:
        super().__init__(transforms, name)
        self.channels = channels

    @property
    def hash(self) -> str:
        """A hash of the transforms' classes and settings."""
        return self._hash({"task": "classes"})

    def __call__(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        if not entry.get("image") or not entry.get("label"):
            raise RobustsegError(f"datalist entry {dict(entry)!r:.200}: model bundle {self.name} needs an 'image' "
                                 "and a 'label' file.")  # fmt: skip
        out = self.transforms({k: v for k, v in entry.items() if k != "label"})
        image = out["image"] if isinstance(out, Mapping) else None
        if not isinstance(image, Tensor) or image.ndim < 3 or (self.channels and image.shape[0] != self.channels):
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            expected = f"({self.channels}, *spatial)" if self.channels else "(C, *spatial)"
            raise RobustsegError(f"model bundle {self.name}: its preprocessing gives an image {got} for "
                                 f"{entry['image']}; expected {expected}, its input channels.")  # fmt: skip
        label, stored = self._labels(entry["label"], image)
        if stored is None:
            return {**out, "image": image, "label": label}
        return {**out, "image": image, "label": label, "label_original": stored}

    def invert(self, probabilities: Tensor, image: Tensor) -> Tensor:
        """Class probabilities ``(C, *grid)`` on the preprocessed ``image``'s grid, put back on the grid the image was
        stored on by inverting the bundle's transforms (MONAI's ``Invertd``, linear interpolation, as a Model Zoo
        inference postprocessing does before its argmax)."""
        from monai.data import MetaTensor

        return self._inverse({"pred": MetaTensor(probabilities, meta=image.meta), "image": image})["pred"]

    @cached_property
    def _inverse(self) -> Invertd:
        """MONAI's ``Invertd`` of the bundle's transforms, built once, when first needed (a preprocessing that keeps
        the grid is never inverted, and need not be invertible)."""
        return Invertd(keys="pred", transform=self.transforms, orig_keys="image", nearest_interp=False, to_tensor=True)


def _weights(root: Path, parser: ConfigParser, where: str) -> tuple[Path, bool]:
    """The weights file (``<ckpt_dir>/model.pt``, else ``model.ts``) and whether it is TorchScript."""
    folder = root / "models"
    if "ckpt_dir" in parser:
        try:
            folder = Path(str(parser.get_parsed_content("ckpt_dir")))
        except Exception:  # a ckpt_dir expression that needs what is not here: the Model Zoo layout's models/
            folder = root / "models"
    for name, script in (("model.pt", False), ("model.ts", True)):
        if (folder / name).is_file():
            return folder / name, script
    raise RobustsegError(f"{folder / 'model.pt'}: weights of {where} not found (nor model.ts); put the trained "
                         "weights there (a state dict, or a dict holding one under 'model').")  # fmt: skip


def _describe_inferer(inferer: Any) -> dict[str, Any] | None:
    """The inferer's class and public settings (e.g. a sliding window's ``roi_size`` and ``overlap``)."""
    if inferer is None:
        return None
    from common.engines.model_bundle import _plain

    settings = {k: v for k, v in vars(inferer).items() if not k.startswith("_") and not callable(v)}
    return {"class": type(inferer).__name__, **{k: _plain(v) for k, v in settings.items()}}


_WARNED: set[str] = set()
"""The third-party bundle folders this process has warned about (the notice is given once per bundle)."""


def _warn_once(name: str, root: Path) -> None:
    if str(root) in _WARNED:
        return
    _WARNED.add(str(root))
    print(
        f"robustseg: model bundle {name} ({root}) is a third-party bundle: its configs run code when parsed "
        "(_target_ builds classes, $ evaluates Python); evaluate only bundles you trust.",
        file=sys.stderr,
    )


def load_zoo_bundle(
    root: Path,
    config_files: Sequence[str],
    device: torch.device,
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a third-party (Model Zoo layout) bundle: the fields of a :class:`~common.engines.ModelBundle`.

    Args:
        root: the bundle folder.
        config_files: its config files, relative to ``root``, merged in order (e.g. ``configs/inference.json``).
        device: where the network runs.
        overrides: config ids -> values set last (e.g. ``{"inferer#roi_size": [64, 64, 64]}``).
        options: any of :data:`ZOO_OPTIONS`: ``input_channels`` (the modality of each input channel),
            ``output_channels`` (the name of each output channel), ``output_activation`` (``"sigmoid"`` or
            ``"softmax"``), for bundles whose metadata is incomplete or wrong.

    Returns:
        The keyword arguments of :class:`~common.engines.ModelBundle` (with the parser under ``_parser``).

    Raises:
        RobustsegError: an unknown option, a broken ``metadata.json`` or ``channel_def``, a missing or unloadable
            weights file, a network or preprocessing that cannot be built, or a network whose output channel count
            contradicts its metadata.
    """
    from common.engines.model_bundle import _parsed, _parser, _plain, _sha256

    options = dict(options or {})
    unknown = sorted(k for k in options if k not in ZOO_OPTIONS)
    if unknown:
        raise RobustsegError(f"model bundle {root.name}: unknown option(s) {unknown}; expected some of "
                             f"{list(ZOO_OPTIONS)}.")  # fmt: skip
    path = root / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RobustsegError(f"{path}: cannot be read as JSON ({exc}).") from None
    if not isinstance(meta, dict):
        raise RobustsegError(f"{path}: expected a JSON object.")
    # the Model Zoo names a bundle by its folder (its id); metadata's "name" is a display name, often with spaces
    name = root.name
    display = meta.get("name") if isinstance(meta.get("name"), str) else None
    _warn_once(name, root)
    where = f"model bundle {name}"
    parser, _ = _parser(root, config_files, dict(overrides or {}))
    kind = task_kind(meta, str(path), options)
    if kind == "brats":
        modalities: list[str] | None = input_order(meta, str(path), options.get("input_channels"))
        convention = output_convention(
            meta, str(path), options.get("output_activation"), options.get("output_channels"), parser
        )
        task: SegmentationTask = BRATS
    else:
        if options.get("input_channels") is not None:
            raise RobustsegError(f"{where}: input_channels names the MR contrasts of a BraTS bundle; this bundle's "
                                 "task is generic (task 'classes'), its inputs are read as they are.")  # fmt: skip
        modalities = None
        convention = class_convention(
            meta, str(path), options.get("output_activation"), options.get("output_channels"), parser
        )
        task = ClassTask(convention.class_names)

    weights, script = _weights(root, parser, where)
    if script:
        try:
            network = torch.jit.load(str(weights), map_location=device)
        except Exception as exc:
            raise RobustsegError(f"{weights}: cannot be loaded as TorchScript ({type(exc).__name__}).") from None
    else:
        key = "network_def" if "network_def" in parser else "network"
        network = _parsed(parser, key, where)
        if not isinstance(network, nn.Module):
            raise RobustsegError(f"{where}: {key} builds a {type(network).__name__}, expected a torch.nn.Module.")
        declared = parser.get(f"{key}#out_channels") if f"{key}#out_channels" in parser else None
        if isinstance(declared, int) and declared != convention.channels:
            raise RobustsegError(f"{where}: {key} has out_channels {declared}, but {path} names "
                                 f"{convention.channels} output channels {list(convention.names)}.")  # fmt: skip
        network = network.to(device)
        load_weights(network, weights, map_location=device)
    network.eval()

    inferer = _parsed(parser, "inferer", where) if "inferer" in parser else None
    if inferer is not None and not callable(inferer):
        raise RobustsegError(f"{where}: inferer builds a {type(inferer).__name__}, expected a MONAI inferer.")
    key = "preprocessing" if "preprocessing" in parser else "preprocessing_transforms"
    transforms = _parsed(parser, key, where)
    if isinstance(transforms, (list, tuple)):
        from monai.transforms import Compose

        transforms = Compose(list(transforms))
    if not callable(transforms):
        raise RobustsegError(f"{where}: {key} builds a {type(transforms).__name__}, expected a MONAI transform.")
    if modalities is not None:
        preprocessing: ZooPreprocessing | ClassPreprocessing = ZooPreprocessing(transforms, modalities, name)
        order: list[int] | None = preprocessing.order
    else:
        inputs, count = _channel_def(meta, str(path), "inputs.image")
        preprocessing = ClassPreprocessing(transforms, len(inputs) if inputs is not None else count, name)
        order = None
    amp = bool(_parsed(parser, "amp", where)) if "amp" in parser else False
    spatial = (((meta.get("network_data_format") or {}).get("inputs") or {}).get("image") or {}).get("spatial_shape")
    net = "2d" if isinstance(spatial, list) and len(spatial) == 2 else "3d"
    relative = [os.path.relpath(f, root) if Path(f).is_absolute() and Path(f).is_relative_to(root) else f
                for f in config_files]  # fmt: skip
    return {
        "name": name,
        "root": root,
        "config_files": relative,
        "network": ZooNetwork(network, convention, inferer, name, order).to(device).eval(),
        "preprocessing": preprocessing,
        # MONAI's evaluators autocast on CUDA only ("amp": true runs in fp32 on a CPU); so does the evaluation
        "amp": amp and device.type == "cuda",
        "amp_dtype": "float16",
        "spatial_size": [],
        "net": net,
        "family": "zoo",
        "defense": "none",
        "defense_param": "",
        "temperature": None,
        "weights": weights.resolve(),
        "weights_sha256": _sha256(weights),
        "preprocessing_settings": {},
        "preprocessing_hash": preprocessing.hash,
        "overrides": {k: _plain(v) for k, v in (overrides or {}).items()},
        "adapter": {
            "kind": "model-zoo",
            "display_name": display,
            "task": task.describe() if isinstance(task, ClassTask) else "brats",
            "input_channels": modalities,
            "output": convention.describe(),
            "inferer": _describe_inferer(inferer),
            "bundle_amp": amp,
            "weights_format": "torchscript" if script else "state_dict",
            "options": {k: _plain(v) for k, v in options.items()},
        },
        "task": task,
        "_parser": parser,
    }
