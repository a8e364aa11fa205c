"""Generate, verify and export the MONAI bundles under ``bundles/``."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import RobustsegError
from common.utils.enums import Defense
from common.utils.files import atomic_write, write_atomic
from common.utils.validation import check_number, look_up_option

__all__ = [
    "BundleSpec",
    "apply_overlay",
    "bundle_root",
    "find_bundle",
    "bundle_specs",
    "distillation_record",
    "export_bundle",
    "format_json",
    "generate_bundles",
    "render_bundle",
    "record_training_settings",
    "teacher_spec",
    "training_overrides",
]

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent


def _is_bundle(folder: Path, name: str | None = None) -> bool:
    """Whether ``folder`` is a bundle (has ``configs/metadata.json``), called ``name`` if given (folder or metadata)."""
    meta = folder / "configs" / "metadata.json"
    if not meta.is_file():
        return False
    if name is None or folder.name == name:
        return True
    try:
        return json.loads(meta.read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        return False


def _named_candidates(name: str) -> tuple[Path, ...]:
    """Where a bundle called ``name`` may be: here, ``./bundles/<name>``, an exported bundle's root, the repo's."""
    cwd = Path.cwd()
    return (cwd, cwd / "bundles" / name, PACKAGE_DIR.parent, PACKAGE_DIR.parent / "bundles" / name)


def _find_named(name: str) -> Path | None:
    return next((c for c in _named_candidates(name) if _is_bundle(c, name)), None)


def bundle_root(name: str) -> str:
    """Find the folder of bundle ``name`` so its configs work from any working directory.

    MONAI's config parser does not know where a config file lives, and Model Zoo bundles default ``bundle_root`` to
    ``"."``. Ours look, in order, at: the current directory (running from inside the bundle), ``./bundles/<name>``
    (running from the repository root), the folder that holds this ``common`` package (an exported bundle, where
    ``common/`` is copied to the bundle root) and ``<repo>/bundles/<name>``. ``--bundle_root DIR`` on the command line
    overrides all of this. Unlike :func:`find_bundle`, a bundle that is not found is not an error here (a config
    may be parsed before its bundle is generated).

    Args:
        name: the bundle's folder name, e.g. ``brats_unet3d_baseline``.

    Returns:
        The bundle's root folder as a string (the current directory if none is found).
    """
    found = _find_named(name)
    if found is None:
        logger.warning("bundle %s not found from %s; using the current directory as bundle_root", name, Path.cwd())
        return str(Path.cwd())
    return str(found)


def find_bundle(bundle: str | os.PathLike, what: str = "model bundle", require_metadata: bool = True) -> Path:
    """The folder of a bundle given by path or by name: the one bundle look-up of the project.

    A path is taken relative to the working directory, then to the repository root (so ``bundles/<name>`` works
    from any folder of the checkout). A bare name (no path separator) is also looked up as :func:`bundle_root`
    does: the current folder, ``./bundles/<name>``, an exported bundle's root, the repository's ``bundles/<name>``
    -- but only a bundle of that name counts, never whatever folder the command runs in.

    Args:
        bundle: folder or name.
        what: what the bundle is to the caller, for the error message ("model bundle", "teacher bundle").
        require_metadata: whether a folder given by path must hold ``configs/metadata.json`` (Model Zoo layout).

    Returns:
        The absolute folder.

    Raises:
        RobustsegError: if nothing is found, or (with ``require_metadata``) the folder is not a bundle.
    """
    text = os.fspath(bundle)
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [path, PACKAGE_DIR.parent / path]
    for candidate in candidates:
        if candidate.is_dir():
            if require_metadata and not _is_bundle(candidate):
                raise RobustsegError(
                    f"{what} {text}: {candidate / 'configs' / 'metadata.json'} not found; expected a bundle."
                )
            return candidate.resolve()
    is_name = not isinstance(bundle, Path) and "/" not in text and os.sep not in text and text not in ("", ".", "..")
    if is_name:
        found = _find_named(text)
        if found is not None:
            return found.resolve()
    raise RobustsegError(
        f"{what} {text!r} not found (looked in {', '.join(str(c) for c in candidates)}"
        + (" and for a bundle of that name in the current folder and under bundles/" if is_name else "")
        + "); give a bundle folder or the name of one under bundles/."
    )


# --------------------------------------------------------------------------------------------------------------------
# Generation from templates
# --------------------------------------------------------------------------------------------------------------------

TEMPLATES = PACKAGE_DIR / "bundle_templates"
MODEL_TEMPLATE = TEMPLATES / "model"
EVAL_TEMPLATE = TEMPLATES / "robustness_eval"
GENERATED = ("configs", "docs", "LICENSE")  # what a bundle folder holds that comes from its template
COMMON_CONFIG = "configs/_common.json"  # merged into each of these before their own content:
COMMON_USERS = ("configs/train.json", "configs/evaluate.json", "configs/inference.json")


@dataclass(frozen=True)
class BundleSpec:
    """One bundle to generate: its folder name, template family, network and the values its templates use.

    Attributes:
        name: folder name under ``bundles/``.
        family: "baseline", "distill", "advtrain", "noiseaug", "artaug", "gaussaug" (model bundles) or
            "robustness_eval".
        net: "3d" or "2d" for model bundles, ``None`` for the evaluation bundle.
        variables: values substituted for ``${key}`` in the templates.
    """

    name: str
    family: str
    net: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)


QUICK_FINE_TUNE_EPOCHS = 3
"""Epochs of the quick overlays of the defences, which fine-tune the quick baseline instead of training anew."""

ARTIFACT_PROB = 0.5
"""Probability that the artifact-augmentation bundles corrupt a training volume (``artifact_prob``)."""

GAUSSIAN_SIGMAS = (0.12, 0.25, 0.5)
"""The noise levels sigma of the Gaussian-augmentation bundles (``noise_sigma``; issue 17), as fractions of the [0, 1]
intensity range: three of the levels of Cohen et al. 2019 (0.12, 0.25, 0.5, 1.0 on CIFAR-10). Certify a bundle at its
own sigma (``robustseg certify --sigma``)."""

_NETS = {
    "3d": {"net": "3d", "net_title": "3D", "network_class": "UNet3D"},
    "2d": {"net": "2d", "net_title": "2D", "network_class": "UNet2D"},
}


def bundle_specs() -> list[BundleSpec]:
    """Every bundle: per net a baseline and its defences (the ``family`` of each spec), then the evaluation bundle.

    27 in all: 2 baselines, 8 distilled, 6 adversarially trained, 2 noise-, 2 artifact- and 6 Gaussian-augmented
    and 1 evaluation bundle.

    Returns:
        The specs in a stable order (by family, network, parameter).
    """
    specs = []
    for net, net_vars in _NETS.items():
        prefix = f"brats_unet{net}"
        baseline = f"{prefix}_baseline"
        base_vars = {**net_vars, "name": baseline, "defense": Defense.NONE.value, "defense_param": "",
                     "train_temperature": 1}
        specs.append(BundleSpec(baseline, "baseline", net, base_vars))
        for temperature in DISTILLATION_TEMPERATURES:
            name = f"{prefix}_distill_t{temperature}"
            # the paper: distillation 400 epochs at lr 5e-4 (3D); the 2D nets use lr 1e-5 "throughout all experiments"
            specs.append(BundleSpec(name, "distill", net, {
                **net_vars, "name": name, "defense": Defense.DISTILLATION.value, "defense_param": f"T={temperature}",
                "temperature": temperature, "teacher": baseline, "epochs": 400,
                "learning_rate": 5e-4 if net == "3d" else 1e-5, "quick_epochs": QUICK_FINE_TUNE_EPOCHS,
            }))
        for epsilon in (0.01, 0.05, 0.1):
            name = f"{prefix}_advtrain_eps{epsilon}"
            specs.append(BundleSpec(name, "advtrain", net, {
                **net_vars, "name": name, "defense": Defense.ADVERSARIAL_TRAINING.value,
                "defense_param": f"eps={epsilon}", "epsilon": epsilon, "baseline": baseline,
                "quick_epochs": QUICK_FINE_TUNE_EPOCHS,
            }))
        name = f"{prefix}_noiseaug"
        specs.append(BundleSpec(name, "noiseaug", net, {
            **net_vars, "name": name, "defense": Defense.NOISE_AUGMENTATION.value, "defense_param": "r=0.01",
            "radius": 0.01, "baseline": baseline, "quick_epochs": QUICK_FINE_TUNE_EPOCHS,
        }))
        name = f"{prefix}_artaug"
        specs.append(BundleSpec(name, "artaug", net, {
            **net_vars, "name": name, "defense": Defense.ARTIFACT_AUGMENTATION.value,
            "defense_param": f"p={ARTIFACT_PROB}", "artifact_prob": ARTIFACT_PROB, "baseline": baseline,
            "quick_epochs": QUICK_FINE_TUNE_EPOCHS,
        }))
        for sigma in GAUSSIAN_SIGMAS:
            name = f"{prefix}_gaussaug_sigma{sigma}"
            specs.append(BundleSpec(name, "gaussaug", net, {
                **net_vars, "name": name, "defense": Defense.GAUSSIAN_AUGMENTATION.value,
                "defense_param": f"sigma={sigma}", "sigma": sigma, "baseline": baseline,
                "quick_epochs": QUICK_FINE_TUNE_EPOCHS,
            }))
    specs.append(BundleSpec("brats_robustness_eval", "robustness_eval", None, {"name": "brats_robustness_eval"}))
    return specs


DISTILLATION_TEMPERATURES = (20, 100, 500, 5000)
"""The paper's distillation temperatures T."""


def teacher_spec(net: str, temperature: float) -> BundleSpec:
    """A distillation teacher: the baseline bundle of ``net`` trained at ``temperature`` (Papernot et al. 2016).

    Defensive distillation as published trains the teacher F itself at the distillation temperature T, so that its
    soft labels ``softmax(z / T)`` are informative (Liu et al. 2021, "Defenses"). The teacher is the baseline family
    with ``train_temperature`` = T (its training loss sees the logits divided by T,
    :class:`~common.losses.TemperatureScaledLoss`). Teachers are not committed under ``bundles/``:
    ``robustseg reproduce`` renders and trains one per network and T in its output folder.

    Args:
        net: "3d" or "2d".
        temperature: T > 0.

    Returns:
        The spec of ``brats_unet<net>_teacher_t<T>``.

    Raises:
        RobustsegError: if ``net`` is not "3d" or "2d" or ``temperature`` <= 0.
    """
    net = look_up_option("net", net, tuple(_NETS))
    check_number("temperature", temperature, 0, min_inclusive=False)
    name = f"brats_unet{net}_teacher_t{temperature:g}"
    return BundleSpec(name, "baseline", net, {
        **_NETS[net], "name": name, "defense": Defense.NONE.value, "defense_param": "",
        "train_temperature": temperature,
    })


# ---- templates ------------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def _substitute(obj: Any, variables: dict[str, Any], where: str) -> Any:
    """Replace ``${key}``: a string that is exactly one placeholder takes the variable's JSON type."""
    if isinstance(obj, dict):
        return {k: _substitute(v, variables, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, variables, where) for v in obj]
    if not isinstance(obj, str) or "${" not in obj:
        return obj
    missing = [k for k in _PLACEHOLDER.findall(obj) if k not in variables]
    if missing:
        raise RobustsegError(f"{where}: template variable(s) {missing} not defined for this bundle.")
    whole = _PLACEHOLDER.fullmatch(obj)
    if whole:
        return variables[whole.group(1)]
    return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), obj)


def apply_overlay(config: dict, overlay: dict) -> dict:
    """Apply a MONAI-style override file to a config, as ``--config_file "['a.json','b.json']"`` would.

    This is MONAI's own merge (:meth:`monai.bundle.ConfigParser.load_config_files` puts each key of a later file
    with ``monai.bundle.utils.merge_kv``): keys may be nested ids joined by ``#`` (``"train#trainer#max_epochs"``),
    list items are addressed by index, a ``+``-prefixed key extends a list or dict, and other values replace what
    is there. So a generated bundle and one merged on the command line cannot disagree.

    Args:
        config: the base config (not modified).
        overlay: the overrides.

    Returns:
        A new config.

    Raises:
        RobustsegError: an overlay key whose parent is not in the config.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    parser = ConfigParser(copy.deepcopy(config))
    for key, value in overlay.items():
        try:
            merge_kv(parser, key, copy.deepcopy(value))
        except (KeyError, ValueError, IndexError) as exc:
            raise RobustsegError(f"overlay key {key!r}: cannot be applied to the config ({exc}).") from None
    return parser.get()


def format_json(obj: Any, indent: int = 0, width: int = 120, lead: int = 0) -> str:
    """Pretty-print JSON readably: 4-space indentation, but anything that fits in ``width`` stays on one line.

    Args:
        obj: a JSON-serialisable value.
        indent: current indentation.
        width: line width.
        lead: characters already on the line before the value (a key), counted against ``width``.
    """
    flat = json.dumps(obj)
    if not isinstance(obj, (dict, list)) or not obj or indent + lead + len(flat) + 1 <= width:
        return flat
    pad = " " * (indent + 4)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {format_json(v, indent + 4, width, len(json.dumps(k)) + 2)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + format_json(v, indent + 4, width) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RobustsegError(f"{path}: template is not valid JSON ({exc}).") from exc


def _template_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path.relative_to(folder).as_posix(), path


def _overlays(spec: BundleSpec) -> list[dict[str, dict]]:
    """Per-file overlays for a model bundle: the network's, then the family's (``{"configs/x.json": {...}}``)."""
    found = []
    for path in (TEMPLATES / "nets" / f"{spec.net}.json", TEMPLATES / "families" / f"{spec.family}.json"):
        if path.is_file():
            found.append(_load_json(path))
    return found


def render_bundle(spec: BundleSpec) -> dict[str, str]:
    """Render every generated file of a bundle.

    Model bundles: the files of ``bundle_templates/model`` (``configs/_common.json`` merged into train, evaluate and
    inference), then the overlays of ``bundle_templates/nets/<net>.json`` and
    ``bundle_templates/families/<family>.json`` (keyed by file, MONAI override syntax), then ``${...}`` substitution.
    The family's ``docs/<family>.md`` fills the README's ``${family_docs}``. The evaluation bundle is rendered from
    ``bundle_templates/robustness_eval`` by substitution only.

    Args:
        spec: the bundle.

    Returns:
        ``{relative path: file content}``.
    """
    folder = EVAL_TEMPLATE if spec.family == "robustness_eval" else MODEL_TEMPLATE
    variables = {"family": spec.family, **spec.variables}
    if spec.family != "robustness_eval":
        docs = TEMPLATES / "families" / f"{spec.family}.md"
        variables["family_docs"] = _substitute(docs.read_text().strip(), variables, str(docs)) if docs.is_file() else ""
    files: dict[str, str] = {}
    configs: dict[str, dict] = {}
    for rel, path in _template_files(folder):
        if rel.endswith(".json"):
            configs[rel] = _load_json(path)
        else:
            files[rel] = _substitute(path.read_text(), variables, str(path))
    overlays = _overlays(spec) if spec.family != "robustness_eval" else []
    common = configs.pop(COMMON_CONFIG, None)
    if common is not None:
        for overlay in overlays:
            common = apply_overlay(common, overlay.get(COMMON_CONFIG, {}))
        for rel in COMMON_USERS:
            configs[rel] = {**common, **configs.get(rel, {})}
    for overlay in overlays:
        for rel, changes in overlay.items():
            if rel != COMMON_CONFIG:
                configs[rel] = apply_overlay(configs.get(rel, {}), changes)
    for rel, config in configs.items():
        files[rel] = format_json(_substitute(config, variables, rel)) + "\n"
    return dict(sorted(files.items()))


def _generated_files(bundle_dir: Path) -> set[str]:
    """Template-owned files present in a bundle folder, as paths relative to it."""
    found = set()
    for top in GENERATED:
        path = bundle_dir / top
        if path.is_file():
            found.add(top)
        elif path.is_dir():
            found.update(p.relative_to(bundle_dir).as_posix() for p in path.rglob("*") if p.is_file())
    return found


def generate_bundles(root: str | Path = "bundles", check: bool = False) -> list[str]:
    """Write every bundle folder from its template, or with ``check`` report how the committed ones differ.

    Only template-owned files are touched (``configs/``, ``docs/``, ``LICENSE``); ``models/`` and run outputs stay.

    Args:
        root: the folder holding the bundles.
        check: compare instead of writing.

    Returns:
        With ``check``: one line per difference (missing, changed or extra file); otherwise the files written.
    """
    root = Path(root)
    lines: list[str] = []
    for spec in bundle_specs():
        rendered = render_bundle(spec)
        folder = root / spec.name
        on_disk = _generated_files(folder) if folder.is_dir() else set()
        for rel, content in rendered.items():
            path = folder / rel
            current = path.read_text() if path.is_file() else None
            if current == content:
                continue
            if check:
                state = "missing" if current is None else "differs from its template"
                lines.append(f"{path}: {state} (run `robustseg bundles generate`)")
            else:
                write_atomic(path, content, parents=True)
                lines.append(str(path))
        for rel in sorted(on_disk - set(rendered)):
            if check:
                lines.append(f"{folder / rel}: not produced by the template (remove it or add it to the template)")
            else:
                (folder / rel).unlink()
                lines.append(f"removed {folder / rel}")
    return lines


# ---- export ----------------------------------------------------------------------------------------------------------


def export_bundle(name: str, out: str | Path | None = None, root: str | Path = "bundles") -> Path:
    """Zip a trained bundle as a self-contained Model Zoo bundle.

    The zip holds ``<name>/configs``, ``docs``, ``LICENSE``, ``models/model.pt`` (with the training record
    ``models/training_settings.json``, and a distilled model's ``models/distillation_record.json``) and a copy of
    this ``common``
    package at the bundle root, so that ``"_target_": "common...."`` resolves when MONAI runs the bundle from there
    (MONAI puts the bundle root on ``sys.path``; ``bundle_root`` is found from the copied package).

    Args:
        name: bundle folder name under ``root``.
        out: the zip to write (default ``<name>.zip`` in the current directory).
        root: the folder holding the bundles.

    Returns:
        The path of the zip.

    Raises:
        RobustsegError: the bundle does not exist or has no trained ``models/model.pt``.
    """
    folder = Path(root) / name
    if not (folder / "configs" / "metadata.json").is_file():
        raise RobustsegError(f"{folder}: not a bundle (no configs/metadata.json).")
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        raise RobustsegError(f"{weights}: missing -- train the bundle before exporting it.")
    out = Path(out) if out is not None else Path(f"{name}.zip")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(_generated_files(folder)):
            zf.write(folder / rel, f"{name}/{rel}")
        zf.write(weights, f"{name}/models/model.pt")
        for record in (TRAINING_RECORD, DISTILLATION_RECORD):
            if (folder / "models" / record).is_file():
                zf.write(folder / "models" / record, f"{name}/models/{record}")
        for path in sorted(PACKAGE_DIR.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, f"{name}/common/{path.relative_to(PACKAGE_DIR).as_posix()}")
    return out


# ---- what a model was trained with -------------------------------------------------------------------------------

TRAINING_RECORD = "training_settings.json"
"""Written beside ``model.pt`` when training starts: the settings that inference must repeat."""


def record_training_settings(ckpt_dir: str | Path, settings: dict[str, Any]) -> Path:
    """Record the settings a model is trained with (grid, network width, preprocessing) beside its weights.

    Evaluation and inference of a model must use the network and preprocessing it was trained with, also when
    training used an overlay (``quick.json``) or ``--key value`` overrides. ``robustseg segment``, the robustness
    evaluation and distillation teachers read this record (:func:`training_overrides`) and apply it on top of the
    bundle's ``inference.json``.

    Args:
        ckpt_dir: the bundle's ``models/`` folder.
        settings: JSON-serialisable values, e.g. ``{"spatial_size": [48, 48, 48], "base_filters": 8}``.

    Returns:
        The record's path.
    """
    path = Path(ckpt_dir) / TRAINING_RECORD
    write_atomic(path, json.dumps(settings, indent=2) + "\n", parents=True)
    return path


def training_overrides(root: str | Path) -> dict[str, Any]:
    """The settings recorded by :func:`record_training_settings` under ``<root>/models``, or ``{}``.

    Raises:
        RobustsegError: if the record exists but is not a JSON object.
    """
    return _read_record(Path(root) / "models" / TRAINING_RECORD, "of settings") or {}


def _read_record(path: Path, what: str = "") -> dict[str, Any] | None:
    """A training-time JSON record (an object), or ``None`` when there is none; one line if it is broken."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise RobustsegError(f"{path}: not valid JSON ({exc}); delete it or retrain.") from exc
    if not isinstance(record, dict):
        raise RobustsegError(f"{path}: expected a JSON object{' ' + what if what else ''}.")
    return record


DISTILLATION_RECORD = "distillation_record.json"
"""Written beside a distilled model's ``model.pt`` when training ends: the recipe and the measured logit scale."""


def distillation_record(root: str | Path) -> dict[str, Any] | None:
    """The record :class:`~common.defenses.DistillationRecord` wrote under ``<root>/models``, or ``None``.

    Raises:
        RobustsegError: if the record exists but is not a JSON object.
    """
    return _read_record(Path(root) / "models" / DISTILLATION_RECORD)
