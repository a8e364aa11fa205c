"""Tests for :mod:`common.engines.certification` and ``robustseg certify``: certified-Dice rows and the smoothed
segmenter's Dice under L2 attacks of a tiny model bundle on the tiny test subjects, in the results schema, resumable,
with one-line errors before anything is written."""

from __future__ import annotations

import json

import pytest

from common.__main__ import main
from common.engines.certification import SETTINGS_FILE, run_certification, subject_seed, summarize
from common.errors import RobustsegError
from common.report import load_results

from .conftest import BASELINE, OVERRIDES, QUICK, SUBJECTS

RADII = [0.0, 0.02, 0.05, 0.2]
ATTACKS = [{"name": "APGD", "loss": "soft_dice", "steps": 3}, {"name": "PGD", "loss": "masked_ce", "steps": 2}]
SETTINGS = {"sigma": 0.1, "n": 30, "n0": 5, "alpha": 0.01, "radii": RADII, "batch_size": 15, "attacks": ATTACKS,
            "eot_samples": 2}  # fmt: skip


def _run(bundles, datalist, out, **kwargs):
    settings = {**SETTINGS, "config_files": QUICK, "overrides": OVERRIDES, **kwargs}
    return run_certification(bundles[BASELINE], datalist, out, **settings)


@pytest.fixture(scope="module")
def certified(bundles, tiny_datalist, tmp_path_factory):
    out = tmp_path_factory.mktemp("certify") / "out"
    path, summary = _run(bundles, tiny_datalist, out)
    return out, load_results(path), summary


def test_one_schema_row_per_subject_and_radius(certified):
    out, rows, summary = certified
    rows = [r for r in rows if r["threat"] == "certified"]
    assert sorted((r["subject"], r["radius"]) for r in rows) == sorted((s, r) for s in SUBJECTS for r in RADII)
    for row in rows:
        assert (row["model"], row["threat"], row["attack"]) == (BASELINE, "certified", "smoothing")
        assert (row["sigma"], row["n_samples"], row["alpha"]) == (0.1, 30, 0.01)
        assert row["epsilon"] == 0.0 and row["l2"] == 0.0 and row["severity"] is None
        assert 0.0 <= row["abstain_fraction"] <= 1.0 and row["seconds"] > 0
        assert row["attack_config"].startswith("SegCertify(sigma=0.1, n0=5, n=30, alpha=0.01, tau=0.75")
    assert list(summary["certified"]) == RADII and all(len(v) == 3 for v in summary["certified"].values())
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert settings["certify"]["radii"] == RADII and settings["model"]["model"] == BASELINE
    assert settings["certify"]["smoothed_attacks"] == ATTACKS and settings["certify"]["eot_samples"] == 2


def test_smoothed_rows_score_the_clean_input_and_each_l2_attack_at_each_radius(certified):
    _, rows, _ = certified
    smoothed = [r for r in rows if r["threat"] == "smoothed"]
    expected = [(s, "clean", 0.0) for s in SUBJECTS]
    expected += [(s, a["name"], r) for s in SUBJECTS for a in ATTACKS for r in RADII if r > 0]
    assert sorted((r["subject"], r["attack"], r["radius"]) for r in smoothed) == sorted(expected)
    for row in smoothed:
        attacked = row["attack"] != "clean"
        assert row["epsilon"] == row["radius"] and (row["sigma"], row["n_samples"]) == (0.1, 30)
        assert row["l2"] <= row["radius"] * (1 + 1e-5) + 1e-7  # inside the L2 ball
        assert row["source_model"] == (BASELINE if attacked else None) and row["alpha"] is None
        assert row["attack_config"].endswith("smoothed prediction (n=30, sigma=0.1, seed=0)")
        if attacked:
            config = row["attack_config"]
            assert "norm='l2'" in config and "SmoothedLogits(sigma=0.1, samples=2)" in config
            assert row["iteration"] == row["steps"] == next(a["steps"] for a in ATTACKS if a["name"] == row["attack"])
            assert row["l2"] > 0.5 * row["radius"]  # the attack used its budget


def test_the_attacks_lower_the_smoothed_dice_and_stay_above_the_certificate(certified):
    _, rows, summary = certified
    attacked, certified_means = summary["attacked"], summary["certified"]
    assert list(attacked) == RADII
    for r in RADII:
        # the worst case over a growing set of balls never rises; the certificate is a lower bound
        assert sum(attacked[r]) <= sum(attacked[0.0]) + 1e-12
        assert sum(certified_means[r]) <= sum(attacked[r]) + 0.05
    assert summarize(rows) == summary  # the CSV gives the numbers the run printed


def test_dice_falls_and_abstention_grows_with_the_radius(certified):
    _, rows, _ = certified
    rows = [r for r in rows if r["threat"] == "certified"]
    for subject in SUBJECTS:
        mine = sorted((r for r in rows if r["subject"] == subject), key=lambda r: r["radius"])
        for earlier, later in zip(mine, mine[1:]):
            assert later["abstain_fraction"] >= earlier["abstain_fraction"]
            assert all(later[c] <= earlier[c] + 1e-12 for c in ("dice_wt", "dice_tc", "dice_et"))
        assert mine[-1]["abstain_fraction"] == 1.0  # sigma 0.1 with n = 30 cannot certify 0.2 (Phi(2) needs more)


def test_a_rerun_resumes_and_other_settings_stop(certified, bundles, tiny_datalist):
    out, rows, _ = certified
    before = (out / "results.csv").read_text()
    _run(bundles, tiny_datalist, out)
    assert (out / "results.csv").read_text() == before  # every row was there: nothing recomputed or appended
    with pytest.raises(RobustsegError, match="holds certified rows of tiny_baseline made by SegCertify"):
        _run(bundles, tiny_datalist, out, n0=6)
    with pytest.raises(RobustsegError, match="holds smoothed rows of tiny_baseline made by .*samples=2"):
        _run(bundles, tiny_datalist, out, eot_samples=3)


def test_the_subject_seed_does_not_depend_on_the_order():
    assert subject_seed(0, "a") == subject_seed(0, "a") != subject_seed(0, "b") != subject_seed(1, "b")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": 0.0}, "sigma must be a finite number > 0"),
        ({"n": 0}, "n must be an integer >= 1"),
        ({"n0": -1}, "n0 must be an integer >= 1"),
        ({"alpha": 2.0}, "alpha must be a finite number in"),
        ({"tau": 0.3}, r"tau must be a finite number in \[0.5, 1\)"),
        ({"radii": []}, "radii must be a non-empty list"),
        ({"radii": [0.1, -0.1]}, "radii: radius must be a finite number >= 0"),
        ({"non_certified": "ignore"}, "non_certified must be one of"),
        ({"correction": "fdr"}, "correction must be one of"),
        ({"eot_samples": 0}, "eot_samples must be an integer >= 1"),
        ({"attacks": "APGD"}, "attacks must be a list of L2 attack specs"),
        ({"attacks": [{"name": "APGD", "epsilon": 0.1}]}, r"sets \['epsilon'\]; the smoothed attacks are L2"),
        ({"attacks": [{"name": "PGD"}, {"name": "pgd"}]}, "two attacks with the same name and loss"),
        ({"attacks": [{"name": "APGD", "stepz": 3}]}, r"unknown setting\(s\) \['stepz'\]"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(bundles, tiny_datalist, tmp_path, kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        _run(bundles, tiny_datalist, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_error_line(bundles, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["certify", "--bundle", str(bundles[BASELINE]), "--data", str(tmp_path), "--sigma", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: sigma must be a finite number > 0 (the smoothing noise level), got -1."]


def test_cli_names_a_missing_datalist(bundles, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--bundle", str(bundles[BASELINE]), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "datalist.json not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("attacks", "expected"),
    [(None, "default"), ("none", []), ("[{'name':'APGD','steps':3}]", [{"name": "APGD", "steps": 3}])],
)
def test_cli_prints_both_bounds_per_radius(attacks, expected, tmp_path, capsys, monkeypatch):
    from common.engines import certification

    seen = {}

    def fake(bundle, data, out, **kwargs):
        seen.update(kwargs)
        attacked = {0.0: [0.9, 0.8, 0.7], 0.1: [0.85, 0.75, 0.6]} if kwargs["attacks"] else {}
        certified = {0.0: [0.5, 0.2, 0.1], 0.1: [0.4, 0.1, 0.0]}
        return tmp_path / "results.csv", {"certified": certified, "attacked": attacked}

    monkeypatch.setattr(certification, "run_certification", fake)
    argv = ["certify", "--bundle", "b", "--data", "d"] + ([] if attacks is None else ["--attacks", attacks])
    main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert seen["attacks"] == (certification.DEFAULT_SMOOTHED_ATTACKS if expected == "default" else expected)
    table = lines[-2:]
    if expected == []:
        assert table[1].split() == ["0.1", "0.400", "0.100", "0.000"]
    else:
        assert lines[-3].split()[-3:] == ["WT", "TC", "ET"] and "attacked" in lines[-3]
        assert table[1].split() == ["0.1", "0.400", "0.100", "0.000", "0.850", "0.750", "0.600"]
