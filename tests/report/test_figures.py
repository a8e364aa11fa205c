"""Figures from a realistic synthetic study: what is drawn when, and that the plotted numbers are the CSV's."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from scipy.stats import t as student_t

import common.report.figure as figure_module
from common.errors import RobustsegError
from common.report.examples import load_examples
from common.report.figures import DATA_COLUMNS, build_figures
from common.report.schema import load_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASELINE = "brats_unet3d_baseline"
DISTILL = "brats_unet3d_distill_t5000"
EXPECTED = {
    "fig3_dice_vs_iterations_3d_brats_unet3d_baseline",
    "fig4_psnr_vs_iterations_3d_brats_unet3d_baseline",
    "fig5_dice_vs_epsilon_3d_distillation",
    "fig7_dice_vs_epsilon_3d_adversarial_training",
    "zero_gradient_fraction",
    "fig2_slices_attacks_brats_unet3d_baseline_synth_000",
    "fig9_slices_models_FGSM_eps0.05_synth_000",
}
REGIONS = {"WT": "dice_wt", "TC": "dice_tc", "ET": "dice_et"}


@pytest.fixture
def no_render(monkeypatch):
    """Skip the PNG encoding (the slow part) in tests about which figures are drawn; the full study renders."""
    monkeypatch.setattr(figure_module, "_png", lambda figure: PNG_SIGNATURE)


@pytest.fixture(scope="module")
def records(full_study):
    return load_results(full_study)


@pytest.fixture(scope="module")
def drawn(full_study, records):
    figures, skipped = build_figures(records, load_examples(full_study.parent / "examples"))
    return {f.name: f for f in figures}, skipped


def _values(records, **conditions) -> list[dict]:
    rows = [r for r in records if all(math.isclose(r[k], v) if isinstance(v, float) else r[k] == v
                                      for k, v in conditions.items())]  # fmt: skip
    return rows


def _points(figure, panel, series):
    return {p["x"]: p for p in figure.data if p["panel"] == panel and p["series"] == series}


def test_every_figure_is_drawn_when_its_data_exist(drawn):
    figures, skipped = drawn
    assert set(figures) == EXPECTED
    assert skipped == []
    for figure in figures.values():
        assert figure.png.startswith(PNG_SIGNATURE) and len(figure.png) > 10_000
        assert figure.title and len(figure.caption) > 100
    assert figures["fig3_dice_vs_iterations_3d_brats_unet3d_baseline"].paper_figure == "Fig. 3"
    assert figures["fig7_dice_vs_epsilon_3d_adversarial_training"].paper_figure == "Fig. 7"


def test_iteration_figure_plots_mean_and_sd_of_each_iterate(drawn, records):
    figure = drawn[0]["fig3_dice_vs_iterations_3d_brats_unet3d_baseline"]
    assert "Error bars: ± 1 sample sd" in figure.caption
    for attack in ("i-FGSM", "ti-FGSM"):
        for region, column in REGIONS.items():
            points = _points(figure, f"{attack}, ε = 0.05", region)
            assert sorted(points) == list(range(11))  # 0 = clean, then every iterate
            for iteration, point in points.items():
                if iteration == 0:
                    rows = _values(records, model=BASELINE, threat="clean")
                else:
                    rows = _values(records, model=BASELINE, attack=attack, iteration=iteration)
                values = np.array([r[column] for r in rows])
                assert point["n"] == len(values) == 12
                assert point["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert point["error"] == pytest.approx(values.std(ddof=1), abs=1e-12) and point["error_kind"] == "sd"


def test_psnr_figure_plots_the_input_quality_per_iterate(drawn, records):
    figure = drawn[0]["fig4_psnr_vs_iterations_3d_brats_unet3d_baseline"]
    points = _points(figure, "psnr", "i-FGSM, ε = 0.05")
    assert sorted(points) == list(range(1, 11))
    values = np.array([r["psnr"] for r in _values(records, model=BASELINE, attack="i-FGSM", iteration=4)])
    assert points[4]["mean"] == pytest.approx(values.mean(), abs=1e-12)
    assert {p["panel"] for p in figure.data} == {"psnr", "ssim"}


def test_distillation_figure_has_reference_white_box_and_adaptive_curves_with_95_ci(drawn, records):
    figure = drawn[0]["fig5_dice_vs_epsilon_3d_distillation"]
    series = {p["series"] for p in figure.data}
    assert series == {"No defence (T = 1)", "Distillation (T=5000)", "Distillation (T=5000), adaptive"}
    assert "95 % confidence interval of the mean" in figure.caption and "Dashed" in figure.caption
    curves = [("Distillation (T=5000)", "white-box"), ("Distillation (T=5000), adaptive", "adaptive")]
    for series_name, threat in curves:
        points = _points(figure, "ET", series_name)
        assert sorted(points) == pytest.approx([0.0] + [0.01 * k for k in range(1, 11)])
        values = np.array([r["dice_et"] for r in _values(records, model=DISTILL, threat=threat, epsilon=0.07)])
        point = points[0.07]
        half = student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        assert point["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert point["error"] == pytest.approx(half, rel=1e-9) and point["error_kind"] == "ci95"
    # The gradient-masking story: white-box looks robust, the adaptive attack brings it back to the reference.
    reference = _points(figure, "WT", "No defence (T = 1)")[0.1]["mean"]
    assert _points(figure, "WT", "Distillation (T=5000)")[0.1]["mean"] > reference + 0.1
    assert _points(figure, "WT", "Distillation (T=5000), adaptive")[0.1]["mean"] < reference + 0.05


def test_adversarial_training_figure_includes_noise_augmentation_as_stars(drawn):
    figure = drawn[0]["fig7_dice_vs_epsilon_3d_adversarial_training"]
    assert {p["series"] for p in figure.data} == {
        "No defence",
        "Adversarial training (eps=0.05)",
        "Noise augmentation (r=0.01)",
    }
    assert "Stars: uniform-noise augmentation" in figure.caption and "Dashed" not in figure.caption


def test_zero_gradient_figure_shows_the_masking_model(drawn):
    figure = drawn[0]["zero_gradient_fraction"]
    points = {(p["series"], p["x"]): p for p in figure.data}
    assert points[("white-box", DISTILL)]["mean"] == pytest.approx(60.0)
    assert points[("adaptive", DISTILL)]["mean"] == pytest.approx(2.0)
    assert points[("white-box", BASELINE)]["mean"] == pytest.approx(1.0)
    assert ("adaptive", BASELINE) not in points


def test_figure_data_csv_round_trips(drawn):
    figure = drawn[0]["fig5_dice_vs_epsilon_3d_distillation"]
    rows = list(csv.DictReader(io.StringIO(figure.to_csv())))
    assert tuple(rows[0]) == DATA_COLUMNS and len(rows) == len(figure.data)
    assert [float(r["mean"]) for r in rows] == [p["mean"] for p in figure.data]


@pytest.mark.parametrize(
    "options, absent, reason",
    [
        ({"iterative": False}, {"fig3_", "fig4_"}, "no iterative white-box attack"),
        ({"zero_grad": False}, {"zero_gradient"}, "no zero_grad_fraction values"),
        ({"examples": False}, {"fig2_", "fig9_"}, "no examples/<subject>/index.json"),
    ],
)
def test_figures_without_data_are_skipped_with_a_reason(no_render, tmp_path, make_study, options, absent, reason):
    path = make_study(tmp_path, subjects=4, **options)
    figures, skipped = build_figures(load_results(path), load_examples(tmp_path / "examples"))
    names = {f.name for f in figures}
    assert not any(name.startswith(prefix) for name in names for prefix in absent)
    assert any(name.startswith("fig5_") for name in names)
    assert any(reason in s.reason for s in skipped)


def test_without_adaptive_rows_there_are_no_dashed_curves(no_render, tmp_path, make_study):
    path = make_study(tmp_path, subjects=4, iterative=False, adaptive=False, examples=False, zero_grad=False)
    records = load_results(path)
    figures, _ = build_figures(records)
    figure = next(f for f in figures if f.name.startswith("fig5_"))
    assert not any("adaptive" in p["series"] for p in figure.data) and "Dashed" not in figure.caption


def test_fgsm_only_on_the_baseline_draws_no_defence_or_iteration_figure(no_render, tmp_path, make_row, write_csv):
    rows = []
    for s in range(4):
        rows.append(make_row(BASELINE, f"s{s}", (0.8, 0.7, 0.6)))
        rows.append(make_row(BASELINE, f"s{s}", (0.5, 0.4, 0.3), attack="FGSM", threat="white-box", epsilon=0.05,
                             steps=1, iteration=1, quality=(27.0, 0.7, 0.04)))  # fmt: skip
    figures, skipped = build_figures(load_results(write_csv(tmp_path / "r.csv", rows)))
    assert [f.name for f in figures] == ["zero_gradient_fraction"]
    reasons = " | ".join(f"{s.title}: {s.reason}" for s in skipped)
    assert "no distillation models of the 3D-UNet" in reasons
    assert "no adversarial training and augmentation models" in reasons
    assert "no iterative white-box attack" in reasons


def test_gaussian_augmentation_models_join_the_adversarial_training_figure(no_render, tmp_path, make_row, write_csv):
    """Fig. 7 is the Dice-vs-epsilon figure of the augmentations too: the gaussaug models alone draw it, in sigma
    order (the rows list 0.5 first), without the uniform-noise stars."""
    rows = []
    models = {
        BASELINE: ("none", None, 0.0),
        "brats_unet3d_gaussaug_sigma0.5": ("gaussian_augmentation", "sigma=0.5", 0.2),
        "brats_unet3d_gaussaug_sigma0.12": ("gaussian_augmentation", "sigma=0.12", 0.1),
    }
    for model, (defense, param, gain) in models.items():
        kw = {"defense": defense, "defense_param": param}
        for s in range(4):
            rows.append(make_row(model, f"s{s}", (0.8, 0.7, 0.6), **kw))
            for eps in (0.05, 0.1):
                dice = tuple(d - eps * (2 - gain) for d in (0.8, 0.7, 0.6))
                rows.append(make_row(model, f"s{s}", dice, attack="FGSM", threat="white-box", epsilon=eps, steps=1,
                                     iteration=1, quality=(27.0, 0.7, 0.04), **kw))  # fmt: skip
    figures, _ = build_figures(load_results(write_csv(tmp_path / "r.csv", rows)))
    (figure,) = [f for f in figures if f.name == "fig7_dice_vs_epsilon_3d_adversarial_training"]
    series = list(dict.fromkeys(p["series"] for p in figure.data))
    assert series == ["No defence", "Gaussian augmentation (sigma=0.12)", "Gaussian augmentation (sigma=0.5)"]
    assert _points(figure, "WT", "Gaussian augmentation (sigma=0.5)")[0.1]["mean"] == pytest.approx(0.8 - 0.1 * 1.8)
    assert "Stars" not in figure.caption


def test_only_final_iterates_are_skipped_with_a_reason(no_render, tmp_path, make_row, write_csv):
    rows = [make_row(BASELINE, "s0", (0.8, 0.7, 0.6))]
    rows.append(make_row(BASELINE, "s0", (0.5, 0.4, 0.3), attack="i-FGSM", threat="white-box", epsilon=0.05, steps=10,
                         iteration=10))  # fmt: skip
    figures, skipped = build_figures(load_results(write_csv(tmp_path / "r.csv", rows)), max_example_subjects=0)
    assert not any(f.name.startswith("fig3_") for f in figures)
    assert any("only iterate(s) [10] of 10" in s.reason for s in skipped)


def test_one_model_with_examples_draws_fig2_but_skips_fig9(tmp_path, make_study):
    path = make_study(tmp_path, subjects=4, iterative=False, zero_grad=False)
    records = [r for r in load_results(path) if r["model"] == BASELINE]
    (subject,) = load_examples(tmp_path / "examples")
    baseline_only = type(subject)(**{**subject.__dict__, "entries": tuple(e for e in subject.entries
                                                                          if e.model == BASELINE)})  # fmt: skip
    figures, skipped = build_figures(records, [baseline_only])
    assert [f.name for f in figures if f.name.startswith("fig")] == [
        "fig2_slices_attacks_brats_unet3d_baseline_synth_000"
    ]
    assert "ε = 0.05" in figures[-1].caption and "amplified" in figures[-1].caption
    assert any("fewer than two models" in s.reason for s in skipped)


def test_slice_panels_are_limited_to_max_example_subjects(no_render, tmp_path, make_study, make_examples):
    path = make_study(tmp_path, subjects=4, iterative=False, zero_grad=False, examples=False)
    make_examples(tmp_path, "synth_000", n=16)
    make_examples(tmp_path, "synth_001", seed=1, n=16)
    records = [r for r in load_results(path) if r["model"] == BASELINE]
    figures, skipped = build_figures(records, load_examples(tmp_path / "examples"), max_example_subjects=1)
    assert [f.name for f in figures if f.name.startswith("fig2")] == [
        "fig2_slices_attacks_brats_unet3d_baseline_synth_000"
    ]
    assert any("not drawn: synth_001" in s.reason for s in skipped)


def test_duplicate_rows_raise(tmp_path, make_row, write_csv):
    fgsm = {"attack": "FGSM", "threat": "white-box", "epsilon": 0.05, "steps": 1, "iteration": 1}
    distill = {"defense": "distillation", "defense_param": "T=20"}
    rows = [make_row(BASELINE, "s0", (0.8, 0.7, 0.6)), make_row("distill", "s0", (0.8, 0.7, 0.6), **distill)]
    rows += [make_row(BASELINE, "s0", (0.5, 0.4, 0.3), **fgsm)] * 2  # a resumed run appended the row again
    rows += [make_row("distill", "s0", (0.6, 0.5, 0.4), **fgsm, **distill)]
    with pytest.raises(RobustsegError, match="subject s0 has several rows for model brats_unet3d_baseline FGSM"):
        build_figures(load_results(write_csv(tmp_path / "r.csv", rows)))


def test_negative_max_example_subjects_raises(records):
    with pytest.raises(RobustsegError, match="max_example_subjects must be >= 0, got -1"):
        build_figures(records, max_example_subjects=-1)


def test_2d_models_get_the_papers_2d_figure_numbers(no_render, tmp_path, make_row, write_csv):
    fgsm = {"attack": "FGSM", "threat": "white-box", "steps": 1, "iteration": 1, "net": "2d"}
    rows = []
    for model, defense, param in [("unet2d", "none", None), ("unet2d_t20", "distillation", "T=20")]:
        for s in range(3):
            rows.append(make_row(model, f"s{s}", (0.8, 0.7, 0.6), net="2d", defense=defense, defense_param=param))
            for eps in (0.05, 0.1):
                dice = (0.6 - eps, 0.5 - eps, 0.4 - eps + 0.01 * s)
                rows.append(make_row(model, f"s{s}", dice, epsilon=eps, defense=defense, defense_param=param, **fgsm))
    figures, skipped = build_figures(load_results(write_csv(tmp_path / "r.csv", rows)))
    (distillation,) = [f for f in figures if "distillation" in f.name]
    assert distillation.name == "fig6_dice_vs_epsilon_2d_distillation" and distillation.paper_figure == "Fig. 6"
    assert "2D-UNet" in distillation.title
    assert any("no adversarial training and augmentation models of the 2D-UNet" in s.reason for s in skipped)
