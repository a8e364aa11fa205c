"""The MR-artifact slice panels (common/report/corruption_panels.py): rows, columns, the channel rule, the Dice in the
titles, the reference-only columns, the skip reasons and the report wiring, from a synthetic example set."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import common.report.corruption_panels as panels_module
import common.report.figure as figure_module
from common.corruptions import corrupt, corruption_seed
from common.report.corruption_panels import corruption_example_figures, shown_channel
from common.report.examples import ExampleWriter, load_example_volumes, load_examples
from common.report.figures import build_figures
from common.report.html import write_report
from common.report.schema import load_results

from .conftest import BASELINE, MODELS

SUBJECT = "synth_000"
CORRUPTIONS = ("gibbs", "missing_t2", "bias_field")
ADVTRAIN = "brats_unet3d_advtrain_eps0.05"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _dice(model: str, corruption: str) -> tuple[float, float, float]:
    """A distinct Dice per model and corruption, so a title shows the right row's numbers."""
    k = list(MODELS).index(model) * len(CORRUPTIONS) + CORRUPTIONS.index(corruption)
    return (0.9 - 0.01 * k, 0.8 - 0.01 * k, 0.7 - 0.01 * k)


@pytest.fixture
def study(tmp_path, make_study, make_examples, make_row, write_csv):
    """``study(models=..., saved=...)``: a 4-subject study (clean and FGSM rows of four models) with corruption rows of
    ``models`` at severity 3 and, when ``saved``, their example volumes for ``synth_000`` (the real corruptions of its
    16^3 image, beside the attack examples); returns the CSV path."""

    def make(models=(BASELINE, ADVTRAIN), saved=True):
        return _study(tmp_path, make_study, make_examples, make_row, write_csv, models, saved)

    return make


def _study(root, make_study, make_examples, make_row, write_csv, models, saved, severity=3):
    path = make_study(root, subjects=4, iterative=False, zero_grad=False, examples=False)
    make_examples(root, SUBJECT, n=16)
    rows = load_results(path)
    for model in models:
        defense, param, *_ = MODELS[model]
        for subject in {r["subject"] for r in rows}:
            for name in CORRUPTIONS:
                config = f"{name}(severity={severity})"
                row = make_row(model, subject, _dice(model, name), defense=defense, defense_param=param, attack=name,
                               threat="corruption", loss=None, attack_config=config)  # fmt: skip
                rows.append({**row, "source_model": None, "zero_grad_fraction": None, "severity": severity})
    write_csv(path, rows)
    folder = root / "examples" / SUBJECT
    if saved:
        writer = ExampleWriter.reopen(folder, SUBJECT, drop_threat="corruption")
        image = torch.as_tensor(np.asarray(nib.load(folder / "image.nii.gz").dataobj))
        label = torch.as_tensor(np.asarray(nib.load(folder / "label.nii.gz").dataobj))
        for model in models:
            for name in CORRUPTIONS:
                corrupted = corrupt(image, name, severity, seed=corruption_seed(SUBJECT, name, severity))
                writer.add(model, name, "corruption", 0.0, corrupted[None], label[None], source=None,
                           severity=severity)  # fmt: skip
        writer.finish()
    return path


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures drawn, in order (their PNG encoding, the slow part, is skipped)."""
    drawn = []
    monkeypatch.setattr(figure_module, "_png", lambda figure: drawn.append(figure) or PNG_SIGNATURE)
    return drawn


def _grid(figure):
    """The panel axes as rows of columns (colour bars and legends are not subplots)."""
    axes = [ax for ax in figure.axes if ax.get_subplotspec() is not None]
    n_rows, n_cols = axes[0].get_subplotspec().get_geometry()[:2]
    return [axes[r * n_cols : (r + 1) * n_cols] for r in range(n_rows)]


@pytest.mark.parametrize(
    ("limit", "shown", "omitted"),
    [(4, [BASELINE, ADVTRAIN], []), (1, [BASELINE], [ADVTRAIN])],
)
def test_one_row_per_corruption_with_each_models_prediction_and_its_csv_dice(
    tmp_path, study, captured, monkeypatch, limit, shown, omitted
):
    monkeypatch.setattr(panels_module, "MAX_CORRUPTION_MODELS", limit)
    records = load_results(study())
    info = panels_module.model_identities(records)
    figures, skipped = corruption_example_figures(records, load_examples(tmp_path / "examples"))
    (figure,) = figures
    assert not skipped and figure.name == "corruption_examples_3d"
    assert "severity 3" in figure.title and SUBJECT in figure.title
    grid = _grid(captured[-1])
    assert len(grid) == len(CORRUPTIONS) and len(grid[0]) == 2 + len(shown) + 1
    assert [row[0].get_ylabel().split("\n")[0] for row in grid] == ["bias_field", "gibbs", "missing_t2"]  # registry
    for row in grid:
        name = row[0].get_ylabel().split("\n")[0]
        for ax, model in zip(row[2:-1], shown, strict=True):
            wt, tc, et = _dice(model, name)
            assert ax.get_title().endswith(f"WT {wt:.2f} TC {tc:.2f} ET {et:.2f}")
    assert grid[0][-1].get_title().startswith("ground truth")
    assert [ax.get_title().split("\n")[0] for ax in grid[0][2:-1]] == [panels_module.model_label(m, info)
                                                                         .split(" (")[0] for m in shown]  # fmt: skip
    assert {(p["panel"], p["series"], p["x"]): p["mean"] for p in figure.data} == {
        (name, model, region): _dice(model, name)[k]
        for name in CORRUPTIONS for model in shown for k, region in enumerate(("WT", "TC", "ET"))
    }  # fmt: skip
    assert ("Not shown" in figure.caption) == bool(omitted) and all(m in figure.caption for m in omitted)


@pytest.mark.parametrize(
    ("corruption", "channel"),
    [("gibbs", "t1ce"), ("bias_field", "t1ce"), ("missing_t2", "t2"), ("missing_t1", "t1"), ("other", "t1ce")],
)
def test_the_channel_rule(corruption, channel):
    assert shown_channel(corruption, 3) == channel


def test_each_row_shows_the_corrupted_channel_and_its_difference(tmp_path, study, captured):
    records = load_results(study(models=(BASELINE,)))
    (subject,) = load_examples(tmp_path / "examples")
    corruption_example_figures(records, [subject])
    volumes = load_example_volumes(subject)
    z = volumes.axial_slice
    for row in _grid(captured[-1]):
        name = row[0].get_ylabel().split("\n")[0]
        channel = shown_channel(name, 3)
        assert row[0].get_ylabel() == f"{name}\n({ {'t1ce': 'T1Gd', 't2': 'T2'}[channel] })"
        entry = next(e for e in subject.entries if e.attack == name)
        corrupted = volumes.channel(volumes.adversarial(entry), channel)[:, :, z]
        np.testing.assert_array_equal(row[0].images[0].get_array(), corrupted.T)
        difference = corrupted - volumes.channel(volumes.image, channel)[:, :, z]
        if np.abs(difference).max() > 0:
            np.testing.assert_allclose(row[1].images[0].get_array(), difference.T)
        else:  # a missing modality that spares this slice
            assert not row[1].images and "no change" in row[1].texts[0].get_text()


REASON = "the CSV has corruption rows but examples/<subject>/index.json has no corruption entries of its models"


@pytest.mark.parametrize(
    ("corruption_rows", "saved", "read_examples", "reason"),
    [
        (True, False, True, REASON),  # an evaluation before corruption examples were saved
        (True, True, False, REASON),  # no example folder given at all
        (False, False, True, None),  # no corruptions anywhere: nothing drawn, nothing to explain
    ],
)
def test_without_corruption_examples_nothing_is_drawn(
    tmp_path, study, captured, corruption_rows, saved, read_examples, reason
):
    records = load_results(study(models=(BASELINE,) if corruption_rows else (), saved=saved))
    examples = load_examples(tmp_path / "examples") if read_examples else []
    figures, skipped = build_figures(records, examples)
    assert not any(f.name.startswith("corruption_examples") for f in figures)
    assert [s.reason.split(" (")[0] for s in skipped if s.title.startswith("MR artifact examples")] == (
        [reason] if reason else []
    )


def test_the_figure_is_in_the_html_report_and_a_png(tmp_path, study):
    path = study()
    html = write_report(path, tmp_path / "report").read_text(encoding="utf-8")
    png = tmp_path / "report" / "figures" / "corruption_examples_3d.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert 'id="corruption_examples_3d"' in html and "MR artifacts at severity 3" in html
    assert (tmp_path / "report" / "figures" / "corruption_examples_3d.csv").is_file()
