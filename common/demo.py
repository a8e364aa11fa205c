"""``robustseg demo`` (the main job on the embedded data) and ``robustseg reproduce`` (the paper's protocol).

Both run the project's MONAI bundles through ``monai.bundle.run`` -- the same workflows a user runs by hand -- on
copies of the bundles rendered into the output folder, so the repository's ``bundles/`` stay clean and a demo folder
holds everything it produced: data, trained bundles, the robustness CSV and the report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import RobustsegError

__all__ = [
    "DEMO_ARTIFACT_MODEL",
    "DEMO_GAUSSIAN_MODEL",
    "DEMO_MODELS",
    "DISTILLATION_RECIPES",
    "Stage",
    "demo_models",
    "plan_demo",
    "plan_reproduce",
    "run_demo",
    "run_reproduce",
]

logger = logging.getLogger(__name__)

DISTILLATION_RECIPES = ("paper", "approx")
"""``robustseg reproduce --distillation``: teachers trained at T (the paper's) or the baseline as teacher."""

DEMO_MODELS = (
    "brats_unet3d_baseline",
    "brats_unet3d_distill_t5000",
    "brats_unet3d_advtrain_eps0.05",
    "brats_unet3d_noiseaug",
)
"""The models the demo trains (quick overlays; the defences fine-tune the baseline) and attacks. Its distilled model
keeps the approximation of the committed bundle (the baseline as teacher, soft labels at T = 1), which its training
record names (``recipe: approximation``) and the report shows; ``robustseg reproduce`` runs the paper's recipe."""
DEMO_ARTIFACT_MODEL = "brats_unet3d_artaug"
"""The artifact-augmentation defence (issue 15), trained and evaluated by the demo only with ``artaug=True``
(``robustseg demo --artaug``): a fine-tune of the quick baseline like the other defences. Off by default, so the
default demo's models, time and numbers stay those the README reports."""
DEMO_GAUSSIAN_MODEL = "brats_unet3d_gaussaug_sigma0.25"
"""The Gaussian-augmentation defence at sigma = 0.25 (issue 17: the base network of randomized smoothing), trained and
evaluated by the demo only with ``gaussaug=True`` (``robustseg demo --gaussaug``): a fine-tune of the quick baseline
like the other defences. One sigma only, and off by default, because the default demo is at its time budget;
``robustseg reproduce`` trains all three."""

DEMO_SUBJECTS = 40
DEMO_SHAPE = 64
EVAL_BUNDLE = "brats_robustness_eval"
PRESETS = ("paper", "worst-case")
"""The demo's evaluation presets: the paper's attacks, or those plus the ``worst_case.json`` ensemble."""
DEMO_CORRUPTIONS: dict[str, Any] = {"corruptions": "all", "severities": [1, 3, 5]}
"""The demo's MR artifacts: every corruption of :mod:`common.corruptions` at severities 1, 3 and 5 (a quick subset:
the evaluation bundle's default, when corruptions are asked for, is all five)."""
DEMO_WORST_CASE: dict[str, Any] = {"ensemble_steps": 5, "apgd_dice_steps": 80, "worst_case_epsilons": [0.05]}
"""The quick settings of the demo's ``worst-case`` preset, at the paper's epsilon only: APGD with the soft-Dice loss
(and SEA's radius schedule) 80 steps, the other members 5 steps each (PGD: 2 restarts of 5). The budget goes where
the worst case is found: on the demo's four models APGD with soft Dice gave the lowest Dice of every member by far
(mean Dice 0.20-0.36 at 60 steps against 0.47-0.61 for the cross-entropy family at 10, and 0.54-0.57 on the baseline
at 20), and it set the worst case of all 32 (model, subject) pairs (31 white-box, 1 transferred from the baseline).
The adversarially trained model needs the most steps: under bf16 its last 20 % of passes still lowered the worst
case by 0.011 at 60 steps and by 0.016 at 70 (flagged), by 0.007 at 80 (and at 40 steps the baseline's had not
levelled off either). The report's convergence figure and sanity check say whether 80 were enough. The preset's own
settings (100 steps for every member at 0.01, 0.03 and 0.05) make 17 times as many attack passes."""


@dataclass
class Stage:
    """One step of a run: a description, the work, and the marker that says it is done.

    Attributes:
        name: short id, also the marker file's name.
        description: the one-line summary printed before and after it.
        work: the callable doing it; returns an optional summary text.
        estimate: a rough size or duration for the plan (``--dry-run``).
    """

    name: str
    description: str
    work: Callable[[], str | None]
    estimate: str = ""


def _fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _render_specs(specs: Sequence[Any], root: Path) -> None:
    """Write the template-owned files of ``specs`` under ``root`` (trained weights and results are kept)."""
    from common.bundles import render_bundle
    from common.utils.files import write_atomic

    for spec in specs:
        for rel, content in render_bundle(spec).items():
            path = root / spec.name / rel
            if not path.is_file() or path.read_text() != content:
                write_atomic(path, content, parents=True)


def _render_bundles(names: Sequence[str], root: Path) -> None:
    """Write the template-owned files of the committed bundles ``names`` under ``root``."""
    from common.bundles import bundle_specs

    specs = {spec.name: spec for spec in bundle_specs()}
    _render_specs([specs[name] for name in names], root)


def _run_bundle(run_id: str, bundle: Path, configs: Sequence[str], overrides: dict[str, Any]) -> None:
    from monai.bundle import run

    run(
        run_id,
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        **overrides,
    )


def _train_stage(
    bundle: Path,
    datalist: str,
    baseline: Path | None,
    configs: Sequence[str],
    estimate: str,
    extra: dict[str, Any] | None = None,
    teacher: tuple[Path, float] | None = None,
) -> Stage:
    """Training of one bundle; with ``baseline``, a defence that distils from it or fine-tunes it (quick runs).

    ``teacher``: a distilled bundle's teacher folder and ``teacher_temperature`` (default: ``baseline`` at the
    bundle's own setting, i.e. the committed approximation).
    """
    overrides: dict[str, Any] = {"datalist": datalist, **(extra or {})}
    if baseline is not None:
        if "_distill_" in bundle.name:
            overrides["teacher_bundle"] = str(baseline if teacher is None else teacher[0])
            if teacher is not None:
                overrides["teacher_temperature"] = teacher[1]
        if "quick.json" in configs:  # quick runs fine-tune the baseline; the paper's runs train from scratch
            overrides["init_weights"] = str(baseline / "models" / "model.pt")

    def work() -> None:
        _run_bundle("training", bundle, configs, overrides)

    return Stage(f"train-{bundle.name}", f"train {bundle.name}", work, estimate=estimate)


def _shared_cache(out: Path) -> dict[str, str]:
    """One preprocessing cache for every bundle of a run (the ``cache_dir`` override).

    MONAI's ``PersistentDataset`` keys each cached item by the datalist entry with its files' size and time
    (:func:`common.data.caching.stat_hashing`) and by the settings of the deterministic transforms
    (:func:`common.data.caching.transform_hashing`), so bundles that preprocess alike share their items and bundles
    that do not get items of their own: the defences reuse the baseline's N4-corrected volumes instead of keeping a
    copy each.
    """
    return {"cache_dir": str(out / "cache")}


def _test_dice(bundle: Path) -> str:
    summary = json.loads((bundle / "eval" / "test_dice_summary.json").read_text())
    return "test Dice " + " / ".join(f"{r} {summary[f'dice_{r.lower()}_mean']:.3f}" for r in ("WT", "TC", "ET"))


def _optional_models(artaug: bool, gaussaug: bool) -> dict[str, str]:
    """The opt-in models asked for, by flag (``{"artaug": DEMO_ARTIFACT_MODEL, ...}``), in a fixed order."""
    from common.utils.validation import check_bool

    wanted = {"artaug": check_bool("artaug", artaug), "gaussaug": check_bool("gaussaug", gaussaug)}
    models = {"artaug": DEMO_ARTIFACT_MODEL, "gaussaug": DEMO_GAUSSIAN_MODEL}
    return {flag: models[flag] for flag, on in wanted.items() if on}


def demo_models(artaug: bool = False, gaussaug: bool = False) -> tuple[str, ...]:
    """The demo's model bundles: :data:`DEMO_MODELS`, plus :data:`DEMO_ARTIFACT_MODEL` with ``artaug`` and
    :data:`DEMO_GAUSSIAN_MODEL` with ``gaussaug``.

    Raises:
        RobustsegError: if ``artaug`` or ``gaussaug`` is not a boolean.
    """
    return DEMO_MODELS + tuple(_optional_models(artaug, gaussaug).values())


_COUNTS = {4: "four", 5: "five", 6: "six"}


def plan_demo(
    out: str | os.PathLike = "runs/demo", preset: str = "paper", artaug: bool = False, gaussaug: bool = False
) -> list[Stage]:
    """The demo's stages (nothing is run): data, baseline, three defences (one more for each of ``artaug`` and
    ``gaussaug``), evaluation, report.

    Args:
        out: the demo folder.
        preset: ``"paper"`` (the paper's attacks and the noise control) or ``"worst-case"`` (those plus the
            ``worst_case.json`` ensemble with :data:`DEMO_WORST_CASE`). The worst-case stages have names of their own
            and write into the same ``results.csv``, so after a ``paper`` demo they add only the ensemble's rows (the
            evaluation resumes) and rewrite the report.
        artaug: also train :data:`DEMO_ARTIFACT_MODEL` (fine-tuning the baseline) and evaluate it. Its evaluation and
            report stages have names of their own (suffix ``-artaug``) and the same ``results.csv``, so after a demo
            without it only the new model's rows are computed.
        gaussaug: the same for :data:`DEMO_GAUSSIAN_MODEL` (suffix ``-gaussaug``; ``-artaug-gaussaug`` with both).

    Raises:
        RobustsegError: for an unknown ``preset`` or an ``artaug`` or ``gaussaug`` that is not a boolean.
    """
    from common.data import ensure_synthetic_dataset
    from common.utils.validation import look_up_option

    preset = look_up_option("preset", preset, PRESETS)
    optional = _optional_models(artaug, gaussaug)
    models = DEMO_MODELS + tuple(optional.values())

    out = Path(out).resolve()
    bundles = out / "bundles"
    data_dir = out / "data" / f"synthetic-{DEMO_SHAPE}"
    datalist = str(data_dir / "datalist.json")
    quick = ["train.json", "quick.json"]
    baseline = bundles / models[0]
    results = out / "results"
    shared = _shared_cache(out)

    def data() -> str:
        ensure_synthetic_dataset(data_dir, subjects=DEMO_SUBJECTS, seed=0, shape=DEMO_SHAPE)
        return f"{DEMO_SUBJECTS} subjects at {DEMO_SHAPE}^3 in {data_dir.relative_to(out)}"

    def test_baseline() -> str:
        _run_bundle("evaluating", baseline, ["evaluate.json", "quick.json"], {"datalist": datalist, **shared})
        return _test_dice(baseline)

    worst_case = preset == "worst-case"
    configs = ["evaluate.json", "quick.json", *(["worst_case.json"] if worst_case else [])]

    def evaluate() -> str:
        _run_bundle("evaluating", bundles / EVAL_BUNDLE, configs, {
            "model_bundles": [str(bundles / m) for m in models],
            "datalist": datalist,
            "output_dir": str(results),
            **DEMO_CORRUPTIONS,
            **(DEMO_WORST_CASE if worst_case else {}),
        })
        return f"{results.relative_to(out)}/results.csv"

    def report() -> str:
        from common.report.html import write_report

        return str(write_report(results / "results.csv", out / "report").relative_to(out))

    stages = [Stage("data", "generate the embedded synthetic data", data, "~30 s")]
    stages.append(_train_stage(baseline, datalist, None, quick, "quick overlay", shared))
    stages.append(Stage("test-baseline", f"score {baseline.name} on the test split", test_baseline, "~10 s"))
    stages += [_train_stage(bundles / m, datalist, baseline, quick, "fine-tune", shared) for m in models[1:]]
    count = _COUNTS.get(len(models), str(len(models)))
    suffix = "".join(f"-{flag}" for flag in optional)
    if worst_case:
        what = f"add the worst-case ensemble (APGD x 4 losses, PGD) to the {count} models' evaluation"
        stages.append(Stage(f"evaluate-worst-case{suffix}", what, evaluate, "~5-12 min"))
        stages.append(Stage(f"report-worst-case{suffix}", "write the report", report, "~10 s"))
    else:
        what = f"attack the {count} models and score them under MR artifacts (brats_robustness_eval)"
        stages.append(Stage(f"evaluate{suffix}", what, evaluate, "~3-6 min"))
        stages.append(Stage(f"report{suffix}", "write the report", report, "~10 s"))
    return stages


def _run_stages(stages: Sequence[Stage], out: Path, prepare: Callable[[], None]) -> float:
    """Run stages in order, skipping those whose marker exists; one summary line per stage."""
    markers = out / ".stages"
    markers.mkdir(parents=True, exist_ok=True)
    prepare()
    total = 0.0
    for index, stage in enumerate(stages, 1):
        marker = markers / f"{stage.name}.json"
        prefix = f"[{index}/{len(stages)}] {stage.description}"
        if marker.is_file():
            done = json.loads(marker.read_text())
            print(f"{prefix}: done before ({_fmt_seconds(done['seconds'])}), skipped", flush=True)
            continue
        print(f"{prefix} ...", flush=True)
        start = time.perf_counter()
        summary = stage.work()
        seconds = time.perf_counter() - start
        total += seconds
        marker.write_text(json.dumps({"seconds": seconds, "summary": summary}))
        print(f"{prefix}: done in {_fmt_seconds(seconds)}" + (f" -- {summary}" if summary else ""), flush=True)
    return total


def _headline(out: Path) -> str:
    tables = out / "results" / "tables" / "tables.md"
    if not tables.is_file():
        return ""
    text = tables.read_text()
    first = text.split("\n## ", 2)
    return ("## " + first[1]).strip() if len(first) > 1 else text.strip()


def run_demo(
    out: str | os.PathLike = "runs/demo",
    fresh: bool = False,
    preset: str = "paper",
    artaug: bool = False,
    gaussaug: bool = False,
) -> str:
    """Run the demo end to end: data -> quick baseline -> quick defences -> robustness evaluation -> report.

    Each stage goes through the bundles' MONAI workflows (``monai.bundle.run``) on copies rendered into
    ``out/bundles``; a stage that finished before is skipped (its marker is in ``out/.stages``), and an interrupted
    training or evaluation resumes from its checkpoint or CSV.

    Args:
        out: the demo folder.
        fresh: delete ``out`` first and redo everything.
        preset: the evaluation preset, ``"paper"`` or ``"worst-case"`` (see :func:`plan_demo`).
        artaug: also train and evaluate the artifact-augmentation defence :data:`DEMO_ARTIFACT_MODEL`.
        gaussaug: also train and evaluate the Gaussian-augmentation defence :data:`DEMO_GAUSSIAN_MODEL`.

    Returns:
        Where the report is, and the headline table.

    Raises:
        RobustsegError: if ``out`` is a file, ``preset`` is unknown or ``artaug`` or ``gaussaug`` is not a boolean.
    """
    out_path = Path(out).resolve()
    if fresh and out_path.exists():
        shutil.rmtree(out_path)
    if out_path.exists() and not out_path.is_dir():
        raise RobustsegError(f"out: {out_path} is a file, expected a folder for the demo.")
    stages = plan_demo(out_path, preset, artaug, gaussaug)
    models = demo_models(artaug, gaussaug)
    start = time.perf_counter()
    _run_stages(stages, out_path, lambda: _render_bundles([*models, EVAL_BUNDLE], out_path / "bundles"))
    elapsed = time.perf_counter() - start
    report = out_path / "report" / "report.html"
    return f"demo finished in {_fmt_seconds(elapsed)}; report: {report}\n\n{_headline(out_path)}"


# ---- the paper's full protocol ----------------------------------------------------------------------------------


def _reproduce_specs(distillation: str) -> list[Any]:
    """Model bundle specs in training order: baselines, then (paper recipe) the teachers at T, then the defences."""
    from common.bundles import DISTILLATION_TEMPERATURES, bundle_specs, teacher_spec

    specs = [s for s in bundle_specs() if s.net is not None]
    baselines = [s for s in specs if s.family == "baseline"]
    teachers = [teacher_spec(s.net, t) for s in baselines for t in DISTILLATION_TEMPERATURES] if (
        distillation == "paper") else []  # fmt: skip
    return baselines + teachers + sorted((s for s in specs if s.family != "baseline"), key=lambda s: (s.net, s.name))


def plan_reproduce(
    data: str | os.PathLike,
    out: str | os.PathLike,
    device: str,
    quick: bool,
    overrides: dict[str, Any] | None = None,
    distillation: str = "paper",
) -> list[Stage]:
    """The paper's protocol on real data: datalist, the model bundles (teachers first), evaluation, report.

    With ``distillation="paper"`` (Papernot et al. 2016; Liu et al. 2021, "Defenses") a teacher is trained per
    network and temperature T -- the baseline bundle with ``train_temperature`` T, rendered as
    ``brats_unet<net>_teacher_t<T>`` in ``out/bundles`` -- and each distilled bundle learns from its teacher's soft
    labels at T (``teacher_temperature`` = T); 8 more trainings. ``"approx"`` keeps the committed bundles' recipe:
    the baseline as teacher, soft labels at T = 1. Quick runs start every trained model but the baselines from the
    baseline's weights. ``overrides`` are passed to every training (e.g. ``{"epochs": 1}`` for a smoke test).

    Raises:
        RobustsegError: if ``distillation`` is not "paper" or "approx".
    """
    from common.utils.validation import look_up_option

    distillation = look_up_option("distillation", distillation, DISTILLATION_RECIPES)
    out = Path(out).resolve()
    bundles = out / "bundles"
    datalist = str(out / "datalist.json")
    results = out / "results"
    order = _reproduce_specs(distillation)
    specs = [s for s in order if "_teacher_" not in s.name]  # the evaluated models
    configs = ["train.json", "quick.json"] if quick else ["train.json"]
    training = {"device": f"$torch.device('{device}')", **_shared_cache(out), **(overrides or {})}

    def make_datalist() -> str:
        from common.data.datalist import write_datalist

        write_datalist(data, datalist, test_fraction=0.2, seed=0)
        return datalist

    stages = [Stage("datalist", f"write an 80/20 datalist of {data}", make_datalist, "seconds")]
    for spec in order:
        baseline = bundles / f"brats_unet{spec.net}_baseline"
        epochs = spec.variables.get("epochs", 400 if spec.net == "2d" else 100)
        teacher = None
        if distillation == "paper" and spec.family == "distill":
            temperature = spec.variables["temperature"]
            teacher = (bundles / f"brats_unet{spec.net}_teacher_t{temperature:g}", temperature)
        is_baseline = spec.name == baseline.name
        stage = _train_stage(bundles / spec.name, datalist, None if is_baseline else baseline, configs,
                             f"{epochs} epochs", training, teacher=teacher)  # fmt: skip
        if "_teacher_" in spec.name:
            stage.description += f" (distillation teacher, trained at T = {spec.variables['train_temperature']:g})"
        elif teacher is not None:
            stage.description += f" (teacher {teacher[0].name}, soft labels at T = {teacher[1]:g})"
        elif spec.family == "distill":
            stage.description += " (teacher the baseline, soft labels at T = 1: the approximation)"
        stages.append(stage)

    def evaluate() -> str:
        _run_bundle("evaluating", bundles / EVAL_BUNDLE, ["evaluate.json", *(["quick.json"] if quick else [])], {
            "model_bundles": [str(bundles / s.name) for s in specs],
            "datalist": datalist,
            "output_dir": str(results),
            "device": device,
        })
        return f"{results}/results.csv"

    def report() -> str:
        from common.report.html import write_report

        return str(write_report(results / "results.csv", out / "report"))

    stages.append(Stage("evaluate", f"attack all {len(specs)} models (paper epsilons and iterations)", evaluate,
                        "hours"))
    stages.append(Stage("report", "write the report", report, "~1 min"))
    return stages


def run_reproduce(
    data: str,
    out: str = "runs/reproduce",
    device: str = "cuda",
    dry_run: bool = False,
    quick: bool = False,
    overrides: dict[str, Any] | None = None,
    distillation: str = "paper",
) -> str:
    """The paper's full protocol on a real BraTS folder (see :func:`plan_reproduce`).

    Args:
        data: a BraTS 2017-2021 or MSD Task01 folder.
        out: output folder.
        device: e.g. "cuda" or "cpu".
        dry_run: print the plan only.
        quick: use the quick overlays (for tests and a first look).
        overrides: config values for every training, e.g. ``{"epochs": 1}``.
        distillation: "paper" (a teacher trained at each T, soft labels at T) or "approx" (the baseline as
            teacher, soft labels at T = 1).

    Returns:
        The plan (dry run) or where the report is.

    Raises:
        RobustsegError: if ``data`` is not a folder or ``distillation`` is not "paper" or "approx".
    """
    if not Path(data).is_dir():
        raise RobustsegError(f"data: {data} is not a folder, expected a BraTS or MSD Task01 data folder.")
    stages = plan_reproduce(data, out, device, quick, overrides, distillation)
    if dry_run:
        lines = [f"{i:2d}. {s.description} [{s.estimate}]" for i, s in enumerate(stages, 1)]
        return "plan (nothing run):\n" + "\n".join(lines)
    from common.bundles import bundle_specs

    out_path = Path(out).resolve()
    specs = [*_reproduce_specs(distillation), *(s for s in bundle_specs() if s.name == EVAL_BUNDLE)]
    start = time.perf_counter()
    _run_stages(stages, out_path, lambda: _render_specs(specs, out_path / "bundles"))
    return f"reproduction finished in {_fmt_seconds(time.perf_counter() - start)}; report: {out_path / 'report'}"


if __name__ == "__main__":  # pragma: no cover
    print(run_demo(*sys.argv[1:2]))
