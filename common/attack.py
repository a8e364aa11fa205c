"""``robustseg attack``: the robustness evaluation of any model bundle on any BraTS data, in one command.

Sugar over the ``brats_robustness_eval`` bundle (``python -m monai.bundle run evaluating``): the given bundles
(robustseg's own or third-party Model Zoo ones, :mod:`common.engines.zoo_bundle`) are attacked on the ``testing``
subjects of a datalist with the paper's attacks (``--preset paper``) or those plus the worst-case ensemble
(``--preset worst-case``, the bundle's ``worst_case.json``), and the report is written from the results.

Example::

    robustseg attack --bundle bundles/brats_mri_segmentation --data runs/demo/data/synthetic-64 --out runs/zoo
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.errors import RobustsegError
from common.utils.validation import check_int, check_number, look_up_option

__all__ = ["PRESETS", "bundle_task", "run_attack", "find_datalist"]

PRESETS = ("paper", "worst-case")
"""``paper``: FGSM (with its epsilon sweep), i-FGSM and ti-FGSM with soft Dice, and the random-sign control;
``worst-case``: those plus the APGD/PGD ensemble of ``worst_case.json`` and its per-subject worst case."""

EVAL_BUNDLE = "brats_robustness_eval"

PAPER_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "FGSM"},
    {"name": "i-FGSM", "steps": 10},
    {"name": "ti-FGSM", "steps": 10, "target": 1},
)
"""The paper's Table 1 attacks (``evaluate.json``'s ``paper_attacks``), set at each of ``--epsilons``."""


def find_datalist(data: str | os.PathLike) -> Path:
    """The datalist of ``data``: a datalist JSON file, or a folder holding ``datalist.json``.

    Raises:
        RobustsegError: ``data`` does not exist, or is a folder without ``datalist.json``.
    """
    path = Path(data)
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        if (path / "datalist.json").is_file():
            return (path / "datalist.json").resolve()
        raise RobustsegError(
            f"{path}: no datalist.json in this folder; write one with `robustseg data datalist {path}` (BraTS or MSD "
            "Task01 folders) or pass the datalist file."
        )
    raise RobustsegError(f"{path}: --data not found; expected a data folder with datalist.json or a datalist file.")


def _list(value: Any, what: str) -> list[Any]:
    """One value or a list; a string ``"[a,b]"`` (what a shell passes when fire cannot read it as a literal, e.g.
    paths) is the list of its comma-separated items."""
    if value is None:
        return []
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        return [item.strip().strip("'\"") for item in value[1:-1].split(",") if item.strip()]
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, Sequence):
        return list(value)
    raise RobustsegError(f"{what} is {value!r}; expected one value or a list.")


def _epsilons(epsilons: Any) -> list[float]:
    values = _list(epsilons, "epsilons")
    if isinstance(epsilons, str):  # fire passes "0.01,0.05" as one string
        values = [v for v in epsilons.replace("[", "").replace("]", "").split(",") if v.strip()]
        try:
            values = [float(v) for v in values]
        except ValueError:
            raise RobustsegError(f"epsilons is {epsilons!r}; expected numbers, e.g. [0.01,0.05].") from None
    if not values:
        raise RobustsegError("epsilons is empty; expected at least one epsilon, e.g. [0.05].")
    return sorted({check_number("epsilons: epsilon", e, minimum=0, min_inclusive=False) for e in values})


def _overrides(overrides: Any) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except ValueError:
            expected = "expected a JSON object of config ids -> values"
            raise RobustsegError(f"overrides is {overrides!r}; {expected}.") from None
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
        raise RobustsegError(f"overrides is {overrides!r}; expected a mapping of config ids -> values.")
    return dict(overrides)


def run_attack(
    bundle: str | Sequence[str],
    data: str | os.PathLike,
    out: str | os.PathLike = "runs/attack",
    preset: str = "paper",
    epsilons: Sequence[float] | str | None = None,
    config_file: str | Sequence[str] = "configs/inference.json",
    overrides: Mapping[str, Any] | str | None = None,
    input_channels: Sequence[str] | None = None,
    output_channels: Sequence[str] | None = None,
    output_activation: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    ensemble_steps: int | None = None,
    report: bool = True,
    task: str | None = None,
) -> str:
    """Attack model bundles on the test subjects of ``data``; write ``results/``, the tables and ``report/``.

    Args:
        bundle: one bundle folder or name, or a list of them (all must preprocess identically).
        data: a data folder with ``datalist.json`` (e.g. ``robustseg data synth`` output) or a datalist file; its
            ``testing`` subjects are evaluated.
        out: the output folder: ``results/`` (``results.csv``, ``settings.json``, ``tables/``, ``examples/``) and
            ``report/report.html``. A rerun resumes.
        preset: ``"paper"`` or ``"worst-case"`` (:data:`PRESETS`).
        epsilons: the attack radii (relative to each subject's maximum absolute input intensity, in the network's
            input space after the bundle's own preprocessing); default: the preset's (0.05 for the paper's attacks,
            with the FGSM sweep 0.01-0.1; 0.01, 0.03, 0.05 for the worst case).
        config_file: the bundles' config files, merged in order (default ``configs/inference.json``).
        overrides: config ids -> values set in every bundle's configs, e.g. ``{"inferer#roi_size": [64, 64, 64]}``.
        input_channels: a third-party bundle's input modalities in its channel order, if its metadata lacks them.
        output_channels: a third-party bundle's output channel names, if its metadata lacks them.
        output_activation: ``"sigmoid"`` or ``"softmax"``, if its postprocessing does not say.
        device: e.g. ``"cpu"`` or ``"cuda"``; default CUDA if available.
        batch_size: test subjects attacked together (default: the evaluation bundle's).
        ensemble_steps: steps of each worst-case ensemble member (``worst_case.json``'s 100 by default; the demo's
            quick preset uses 20); only with ``preset="worst-case"``.
        report: write ``report/report.html``.
        task: what a third-party bundle segments, ``"brats"`` or ``"classes"`` (a generic task, scored per class by
            its ``channel_def`` names; :mod:`common.engines.class_evaluation`); default: read from its metadata
            (:func:`common.engines.zoo_bundle.task_kind`).

    Returns:
        A line naming the results and the report.

    Raises:
        RobustsegError: a bad preset, epsilon, bundle, datalist or option (one line each).
    """
    from common.bundles import find_bundle
    from common.demo import _run_bundle

    look_up_option("preset", preset, PRESETS)
    if ensemble_steps is not None:
        if preset != "worst-case":
            raise RobustsegError(f"ensemble_steps is {ensemble_steps!r}, but preset is {preset!r}; the ensemble runs "
                                 "only with --preset worst-case.")  # fmt: skip
        ensemble_steps = check_int("ensemble_steps", ensemble_steps, 1)
    bundles = [str(Path(find_bundle(b, what="model bundle"))) for b in _list(bundle, "bundle")]
    if not bundles:
        raise RobustsegError("bundle is empty; expected a bundle folder or name.")
    datalist = find_datalist(data)
    given = (("input_channels", input_channels), ("output_channels", output_channels),
             ("output_activation", output_activation), ("task", task))  # fmt: skip
    options = {k: v for k, v in given if v is not None}
    kinds = {b: bundle_task(Path(b), options) for b in bundles}
    if "classes" in kinds.values():
        if "brats" in kinds.values():
            brats = [Path(b).name for b, k in kinds.items() if k == "brats"]
            raise RobustsegError(f"bundle: {brats} segment BraTS and the others a generic task; a run evaluates "
                                 "bundles of one task.")  # fmt: skip
        if batch_size is not None:
            raise RobustsegError(f"batch_size is {batch_size!r}; a generic task's bundles are attacked one subject at "
                                 "a time (leave batch_size out).")  # fmt: skip
        return _run_class_attack(bundles, datalist, Path(out), preset, epsilons, _list(config_file, "config_file"),
                                 _overrides(overrides), options, device, ensemble_steps, report)  # fmt: skip
    items: list[Any] = [{"bundle": b, **options} if options else b for b in bundles]
    out = Path(out)
    results = out / "results"
    settings: dict[str, Any] = {
        "model_bundles": items,
        "model_config_files": _list(config_file, "config_file"),
        "model_overrides": _overrides(overrides),
        "datalist": str(datalist),
        "output_dir": str(results),
    }
    if device is not None:
        settings["device"] = device
    if batch_size is not None:
        settings["batch_size"] = batch_size
    configs = ["evaluate.json"]
    if preset == "worst-case":
        configs.append("worst_case.json")
    if ensemble_steps is not None:
        settings["ensemble_steps"] = ensemble_steps
    if epsilons is not None:
        radii = _epsilons(epsilons)
        settings["sweep_epsilons"] = radii
        settings["epsilon"] = 0.05 if 0.05 in radii else radii[-1]
        settings["paper_attacks"] = [{**spec, "epsilon": e} for e in radii for spec in PAPER_ATTACKS]
        if preset == "worst-case":
            settings["worst_case_epsilons"] = radii
    _run_bundle("evaluating", find_bundle(EVAL_BUNDLE, what="evaluation bundle"), configs, settings)
    csv = results / "results.csv"
    if not report:
        return f"wrote {csv}"
    from common.report.html import write_report
    from common.report.options import ReportOptions

    path = write_report(csv, out / "report", options=ReportOptions(**_report_options(results, epsilons)))
    return f"wrote {csv} and {path}"


def bundle_task(root: Path, options: Mapping[str, Any]) -> str:
    """``"brats"`` or ``"classes"``: what the bundle folder ``root`` segments (robustseg's own bundles: BraTS), read
    from its metadata without parsing its configs (:func:`common.engines.zoo_bundle.task_kind`)."""
    from common.engines.zoo_bundle import is_zoo_bundle, task_kind

    if not is_zoo_bundle(root):
        return "brats"
    path = root / "configs" / "metadata.json"
    return task_kind(json.loads(path.read_text()), str(path), options)


def _ensemble(steps: int | None) -> list[dict[str, Any]]:
    """``worst_case.json``'s ensemble (APGD with soft Dice, masked CE, JS and SegPGD; PGD with soft Dice and
    restarts), with ``steps`` (checked by :func:`run_attack`) steps per member instead of its default."""
    from monai.bundle import ConfigParser

    from common.bundles import find_bundle

    parser = ConfigParser()
    parser.read_config(str(Path(find_bundle(EVAL_BUNDLE, what="evaluation bundle")) / "configs" / "worst_case.json"))
    if steps is not None:
        parser["ensemble_steps"] = steps
    return [dict(spec) for spec in parser.get_parsed_content("ensemble")]


def _run_class_attack(
    bundles: Sequence[str],
    datalist: Path,
    out: Path,
    preset: str,
    epsilons: Any,
    config_files: Sequence[str],
    overrides: Mapping[str, Any],
    options: Mapping[str, Any],
    device: str | None,
    ensemble_steps: int | None,
    report: bool,
) -> str:
    """:func:`run_attack` for bundles of a generic task (:class:`~common.engines.class_evaluation.ClassEvaluation`)."""
    import torch

    from common.engines.class_evaluation import CLASS_PAPER_ATTACKS, ClassEvaluation
    from common.engines.model_bundle import load_model_bundle

    radii = _epsilons(epsilons) if epsilons is not None else ([0.05] if preset == "paper" else [0.01, 0.03, 0.05])
    ensemble = _ensemble(ensemble_steps) if preset == "worst-case" else []
    where = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    models = [load_model_bundle(b, config_files, where, overrides, options) for b in bundles]
    results = out / "results"
    evaluation = ClassEvaluation(models, datalist, results, CLASS_PAPER_ATTACKS, radii, ensemble, device=where)
    csv = evaluation.run()
    if not report:
        return f"wrote {csv}"
    from common.report.class_report import write_class_report

    return f"wrote {csv} and {write_class_report(results, out / 'report')}"


def _report_options(results: Path, epsilons: Any) -> dict[str, Any]:
    """The report's epsilons (those attacked) and baseline (the first undefended model given, if several)."""
    options: dict[str, Any] = {}
    if epsilons is not None:
        radii = _epsilons(epsilons)
        options["epsilon"] = 0.05 if 0.05 in radii else radii[-1]
        options["epsilons"] = (0.0, *radii)
    try:
        models = json.loads((results / "settings.json").read_text())["models"]
        undefended = [m["model"] for m in models if m.get("defense") == "none"]
    except (OSError, ValueError, KeyError, TypeError):
        undefended = []
    if len(undefended) > 1:
        options["baseline"] = undefended[0]
    return options
