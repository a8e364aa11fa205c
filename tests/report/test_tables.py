"""Tables 1-3 from a hand-made CSV whose expected numbers are computed here with numpy/scipy on the generated arrays."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from scipy.stats import wilcoxon

from common.__main__ import main
from common.errors import RobustsegError
from common.report.defence_tables import build_defence_tables
from common.report.schema import load_results
from common.report.table import format_p
from common.report.tables import build_tables, write_tables

N = 12  # with 6 subjects the smallest exact two-sided p (2/64) can never survive a Bonferroni correction
SUBJECTS = [f"subj_{i:02d}" for i in range(N)]
REGIONS = ("WT", "TC", "ET")
EPSILONS = (0.0, 0.05, 0.1)
BASE = "brats_unet3d_baseline"
# model -> (defense, param, white-box gain, adaptive gain or None); listed in a scrambled order on purpose
DEFENDED = {
    "brats_unet3d_gaussaug_sigma0.5": ("gaussian_augmentation", "sigma=0.5", 0.02, None),  # after 0.12 in the tables
    "brats_unet3d_artaug": ("artifact_augmentation", "p=0.5", 0.01, None),
    "brats_unet3d_noiseaug": ("noise_augmentation", "r=0.01", 0.03, None),
    "brats_unet3d_distill_t500": ("distillation", "T=500", 0.2, 0.05),  # adaptive gain < half: dagger
    "brats_unet3d_advtrain_eps0.05": ("adversarial_training", "eps=0.05", 0.1, None),
    "brats_unet3d_distill_t20": ("distillation", "T=20", 0.2, 0.0),  # adaptive gain gone: dagger
    "brats_unet3d_distill_t100": ("distillation", "T=100", 0.2, 0.18),  # gain kept: no dagger
    "brats_unet3d_gaussaug_sigma0.12": ("gaussian_augmentation", "sigma=0.12", 0.0, None),
}
ORDER = [
    BASE,
    "brats_unet3d_distill_t20",
    "brats_unet3d_distill_t100",
    "brats_unet3d_distill_t500",
    "brats_unet3d_advtrain_eps0.05",
    "brats_unet3d_noiseaug",
    "brats_unet3d_artaug",
    "brats_unet3d_gaussaug_sigma0.12",
    "brats_unet3d_gaussaug_sigma0.5",
]
LABELS = {
    BASE: "No defence",
    "brats_unet3d_distill_t20": "Distillation (T=20)",
    "brats_unet3d_distill_t100": "Distillation (T=100)",
    "brats_unet3d_distill_t500": "Distillation (T=500)",
    "brats_unet3d_advtrain_eps0.05": "Adversarial training (eps=0.05)",
    "brats_unet3d_noiseaug": "Noise augmentation (r=0.01)",
    "brats_unet3d_artaug": "Artifact augmentation (p=0.5)",
    "brats_unet3d_gaussaug_sigma0.12": "Gaussian augmentation (sigma=0.12)",
    "brats_unet3d_gaussaug_sigma0.5": "Gaussian augmentation (sigma=0.5)",
}
REGION_TITLES = {"WT": "Whole tumour", "TC": "Tumour core", "ET": "Enhancing tumour"}


def _study(seed: int = 7) -> dict:
    """Dice arrays (N,) per [threat][model][epsilon][region], and Table 1's i-FGSM iterates and input quality."""
    rng = np.random.default_rng(seed)
    base = {r: rng.uniform(0.6, 0.9, N) for r in REGIONS}
    wb = {BASE: {0.0: base}}
    adaptive = {}
    for e in EPSILONS[1:]:
        wb[BASE][e] = {r: base[r] - 4 * e - rng.uniform(0, 0.05, N) for r in REGIONS}
    for model, (_, _, gain, gain_adaptive) in DEFENDED.items():
        wb[model] = {0.0: {r: np.clip(base[r] + rng.normal(0, 0.02, N), 0, 1) for r in REGIONS}}
        for e in EPSILONS[1:]:
            wb[model][e] = {r: wb[BASE][e][r] + gain + rng.uniform(0.001, 0.02, N) for r in REGIONS}
        if gain_adaptive is not None:
            adaptive[model] = {0.0: wb[model][0.0]}
            for e in EPSILONS[1:]:
                noise = rng.normal(0, 0.02, N) if gain_adaptive == 0 else rng.uniform(0.001, 0.01, N)
                adaptive[model][e] = {r: wb[BASE][e][r] + gain_adaptive + noise for r in REGIONS}
    ifgsm = {it: {r: base[r] - 0.035 * it - rng.uniform(0, 0.01, N) for r in REGIONS} for it in range(1, 11)}
    quality = {
        ("FGSM", 1): rng.normal([26.0, 0.6, 0.05], [0.3, 0.04, 0.001], (N, 3)),
        **{("i-FGSM", it): rng.normal([30.0 - 0.2 * it, 0.5, 0.04], [0.2, 0.02, 0.001], (N, 3)) for it in range(1, 11)},
    }
    return {"white-box": wb, "adaptive": adaptive, "ifgsm": ifgsm, "quality": quality}


def _rows(study: dict, make_row) -> list[dict]:
    rows = []
    info = {BASE: ("none", None), **{m: (d, p) for m, (d, p, _, _) in DEFENDED.items()}}
    for model in [*DEFENDED, BASE]:
        defense, param = info[model]
        kw = {"defense": defense, "defense_param": param}
        for i, s in enumerate(SUBJECTS):
            cells = study["white-box"][model]
            rows.append(make_row(model, s, [cells[0.0][r][i] for r in REGIONS], **kw))
            for e in EPSILONS[1:]:
                q = study["quality"][("FGSM", 1)][i] if model == BASE and e == 0.05 else (20.0, 0.7, e)
                fgsm = {"attack": "FGSM", "epsilon": e, "steps": 1, "iteration": 1, "quality": q, **kw}
                rows.append(make_row(model, s, [cells[e][r][i] for r in REGIONS], threat="white-box", **fgsm))
                if model in study["adaptive"]:
                    dice = [study["adaptive"][model][e][r][i] for r in REGIONS]
                    rows.append(make_row(model, s, dice, threat="adaptive", **fgsm))
        if model == BASE:
            for it in range(1, 11):
                for i, s in enumerate(SUBJECTS):
                    dice = [study["ifgsm"][it][r][i] for r in REGIONS]
                    q = study["quality"][("i-FGSM", it)][i]
                    rows.append(
                        make_row(
                            BASE, s, dice, attack="i-FGSM", threat="white-box", epsilon=0.05, steps=10, iteration=it,
                            quality=q,
                        )
                    )  # fmt: skip
    return rows


@pytest.fixture
def study():
    return _study()


@pytest.fixture
def results_csv(tmp_path, study, make_row, write_csv):
    return write_csv(tmp_path / "results.csv", _rows(study, make_row))


# ------------------------------------------------------------------------------------------ independent formatting
def _ms(values, decimals=3) -> str:
    return f"{np.mean(values):.{decimals}f} ± {np.std(values, ddof=1):.{decimals}f}"


def _p_text(p: float) -> str:
    if p < 1e-3:
        mantissa, exponent = f"{p:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{p:.4f}"


def _md_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------------ formatting
@pytest.mark.parametrize(
    "p, text",
    [(0.2287, "0.2287"), (0.0013, "0.0013"), (6.628e-4, "6.628e-4"), (2.345e-8, "2.345e-8"), (1.0, "1.0000")],
)
def test_p_values_are_formatted_like_the_paper(p, text):
    assert format_p(p) == text


# --------------------------------------------------------------------------------------------------------- table 1
def test_table1_numbers(tmp_path, results_csv, study):
    paths = write_tables(results_csv, tmp_path / "out")
    md = (tmp_path / "out" / "table1_3d_brats_unet3d_baseline.md").read_text()
    assert str(tmp_path / "out" / "tables.md") == paths[0]

    clean = study["white-box"][BASE][0.0]
    attacked = {"FGSM": study["white-box"][BASE][0.05], "i-FGSM": study["ifgsm"][10]}  # final iterate only
    quality = {"FGSM": study["quality"][("FGSM", 1)], "i-FGSM": study["quality"][("i-FGSM", 10)]}
    order = ("TC", "ET", "WT")
    raw = {(a, r): wilcoxon(clean[r], attacked[a][r]).pvalue for a in attacked for r in order}
    corrected = {k: min(1.0, p * len(raw)) for k, p in raw.items()}
    assert all(p <= 0.05 for p in corrected.values())  # the design makes every attack significant

    assert _md_row(["No attack", *(_ms(clean[r]) for r in order), "-", "-", "-"]) in md
    for a in attacked:
        dice = [_ms(attacked[a][r]) + "*" for r in order]
        q = [_ms(quality[a][:, 0], 2), _ms(quality[a][:, 1]), _ms(quality[a][:, 2])]
        assert _md_row([a, *dice, *q]) in md
        p_cells = [t for r in order for t in (_p_text(raw[(a, r)]), _p_text(corrected[(a, r)]))]
        assert _md_row([a, *p_cells]) in md
    assert "m = 6" in md and "n = 12 subjects" in md and "ε = 0.05" in md
    assert "i-FGSM (loss soft_dice, 10 steps)" in md and "FGSM (loss soft_dice, 1 step)" in md

    rows = _read_csv(tmp_path / "out" / "table1_3d_brats_unet3d_baseline.csv")
    by_key = {(row["attack"], row["metric"]): row for row in rows}
    for a in attacked:
        for r in order:
            row = by_key[(a, f"dice_{r.lower()}")]
            assert float(row["mean"]) == pytest.approx(np.mean(attacked[a][r]), rel=1e-12)
            assert float(row["sd"]) == pytest.approx(np.std(attacked[a][r], ddof=1), rel=1e-12)
            assert float(row["p"]) == pytest.approx(raw[(a, r)], rel=1e-12)
            assert float(row["p_bonferroni"]) == pytest.approx(corrected[(a, r)], rel=1e-12)


def test_table1_without_significance_has_no_asterisk(tmp_path, make_row, write_csv):
    rng = np.random.default_rng(0)
    rows = []
    for s in SUBJECTS[:6]:  # 6 subjects: the smallest p, 2/64 = 0.031, times m = 3 is > 0.05
        dice = rng.uniform(0.5, 0.9, 3)
        rows.append(make_row(BASE, s, dice))
        rows.append(
            make_row(BASE, s, dice - 0.2, attack="FGSM", threat="white-box", epsilon=0.05, steps=1, iteration=1)
        )
    tables = build_tables(load_results(write_csv(tmp_path / "r.csv", rows)))
    assert [t.name for t in tables] == ["table1_3d_brats_unet3d_baseline", "table2_3d_white-box", "sanity_3d"]
    fgsm_row = next(row for row in tables[0].rows if row[0] == "FGSM")
    assert not any("*" in cell for cell in fgsm_row)
    assert "0.0312" in tables[0].to_markdown() and "0.0938" in tables[0].to_markdown()  # 2/64 and 3 * 2/64


def test_table1_caption_names_each_attack_once(tmp_path, make_row, write_csv):
    """An attack name used with two losses is labelled by loss and steps, and the caption does not repeat them."""
    rng = np.random.default_rng(0)
    rows = []
    for s in SUBJECTS[:6]:
        dice = rng.uniform(0.5, 0.9, 3)
        rows.append(make_row(BASE, s, dice))
        rows.append(make_row(BASE, s, dice - 0.2, attack="FGSM", threat="white-box", epsilon=0.05, steps=1,
                             iteration=1))  # fmt: skip
        for loss, steps in (("soft_dice", 60), ("masked_ce", 10)):
            rows.append(make_row(BASE, s, dice - 0.3, attack="APGD", threat="white-box", epsilon=0.05, steps=steps,
                                 iteration=steps, loss=loss))  # fmt: skip
    md = build_tables(load_results(write_csv(tmp_path / "r.csv", rows)))[0].to_markdown()
    assert "FGSM (loss soft_dice, 1 step); APGD (soft_dice, 60 steps); APGD (masked_ce, 10 steps)." in md
    assert "(loss masked_ce" not in md


# ------------------------------------------------------------------------------------------------------ table 2
def _expected_defence_rows(cells: dict, daggers: set) -> tuple[list[str], dict]:
    """Markdown rows and the (p, corrected) per comparison, from the arrays; cells[model][eps][region]."""
    comparisons = [(r, m, e) for r in REGIONS for m in ORDER[1:] if m in cells for e in EPSILONS]
    raw = {(r, m, e): wilcoxon(cells[m][e][r], cells[BASE][e][r]).pvalue for r, m, e in comparisons}
    corrected = {k: min(1.0, p * len(raw)) for k, p in raw.items()}
    lines = []
    for r in REGIONS:
        first = True
        for m in [m for m in ORDER if m in cells]:
            dice, ps = [], []
            for e in EPSILONS:
                marks = ""
                if m != BASE:
                    marks = ("*" if corrected[(r, m, e)] <= 0.05 else "") + ("†" if (r, m, e) in daggers else "")
                dice.append(_ms(cells[m][e][r]) + marks)
                ps.append("-" if m == BASE else _p_text(raw[(r, m, e)]))
            lines.append(_md_row([REGION_TITLES[r] if first else "", LABELS[m], *dice, *ps]))
            first = False
    return lines, {"raw": raw, "corrected": corrected}


def test_table2_white_box_and_adaptive_with_daggers(tmp_path, results_csv, study):
    write_tables(results_csv, tmp_path / "out")
    wb_cells = study["white-box"]
    ad_cells = {BASE: wb_cells[BASE], **study["adaptive"]}  # the undefended model's white-box attack is adaptive
    expected_daggers = {
        (r, m, e)
        for r in REGIONS
        for m in ("brats_unet3d_distill_t20", "brats_unet3d_distill_t500")
        for e in (0.05, 0.1)
    }
    _, wb_stats = _expected_defence_rows(wb_cells, set())
    _, ad_stats = _expected_defence_rows(ad_cells, set())
    for r, m, e in expected_daggers:  # the premises of the design hold
        assert wb_stats["corrected"][(r, m, e)] <= 0.05
        gain_wb = np.mean(wb_cells[m][e][r]) - np.mean(wb_cells[BASE][e][r])
        gain_ad = np.mean(ad_cells[m][e][r]) - np.mean(ad_cells[BASE][e][r])
        assert ad_stats["corrected"][(r, m, e)] > 0.05 or gain_ad < 0.5 * gain_wb
    for r in REGIONS:
        for e in (0.05, 0.1):
            assert ad_stats["corrected"][(r, "brats_unet3d_distill_t100", e)] <= 0.05

    md = (tmp_path / "out" / "table2_3d_white-box.md").read_text()
    lines, _ = _expected_defence_rows(wb_cells, expected_daggers)
    for line in lines:
        assert line in md
    assert f"m = {len(DEFENDED) * len(REGIONS) * len(EPSILONS)} comparisons" in md  # every defence x region x eps
    assert "n = 12 subjects" in md and "FGSM (white-box; loss soft_dice; 1 step" in md
    assert "gradient masking" in md

    md_adaptive = (tmp_path / "out" / "table2_3d_adaptive.md").read_text()
    lines, _ = _expected_defence_rows(ad_cells, expected_daggers)
    for line in lines:
        assert line in md_adaptive
    assert "Adversarial training" not in md_adaptive and "m = 27 comparisons" in md_adaptive
    assert "gradient masking" in md_adaptive

    rows = _read_csv(tmp_path / "out" / "table2_3d_white-box.csv")
    assert len(rows) == len(REGIONS) * len(ORDER) * len(EPSILONS)
    for row in rows:
        r, m, e = row["region"], row["model"], float(row["epsilon"])
        assert float(row["mean"]) == pytest.approx(np.mean(wb_cells[m][e][r]), rel=1e-12)
        assert float(row["sd"]) == pytest.approx(np.std(wb_cells[m][e][r], ddof=1), rel=1e-12)
        if m != BASE:
            assert float(row["p"]) == pytest.approx(wb_stats["raw"][(r, m, e)], rel=1e-12)
            assert float(row["p_bonferroni"]) == pytest.approx(wb_stats["corrected"][(r, m, e)], rel=1e-12)
        assert (row["gain_vanishes_under_adaptive"] == "True") == ((r, m, e) in expected_daggers)


def test_table2_row_order_and_no_table3_without_2d_rows(tmp_path, results_csv):
    paths = write_tables(results_csv, tmp_path / "out")
    names = sorted(os.path.basename(p) for p in paths)
    assert not any(n.startswith("table3") for n in names)
    md = (tmp_path / "out" / "table2_3d_white-box.md").read_text()
    positions = [md.index(f"| {LABELS[m]} |") for m in ORDER]
    assert positions == sorted(positions)  # T=20 < T=100 < T=500 numerically, then adversarial training, noise


def test_table3_for_2d_rows(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    for model, defense in (("brats_unet2d_baseline", "none"), ("brats_unet2d_distill_t20", "distillation")):
        for i, s in enumerate(SUBJECTS):
            dice = [study["white-box"][BASE][0.0][r][i] for r in REGIONS]
            rows.append(make_row(model, s, dice, net="2d", defense=defense))
            attacked = [study["white-box"][BASE][0.05][r][i] for r in REGIONS]
            rows.append(
                make_row(model, s, attacked, net="2d", defense=defense, attack="FGSM", threat="white-box")
                | {"epsilon": 0.05, "steps": 1, "iteration": 1}
            )
    paths = write_tables(write_csv(tmp_path / "r.csv", rows), tmp_path / "out")
    names = [os.path.basename(p) for p in paths]
    assert "table3_2d_white-box.md" in names and "table1_2d_brats_unet2d_baseline.md" in names
    md = (tmp_path / "out" / "table3_2d_white-box.md").read_text()
    assert md.startswith("**Table 3 (2D-UNet, white-box).**")
    assert "| Whole tumour | No defence |" in md and "| n/a |" in md  # no rows at epsilon 0.1
    tables_md = (tmp_path / "out" / "tables.md").read_text()
    assert tables_md.index("Table 2 (3D-UNet") < tables_md.index("Table 3 (2D-UNet")


def test_transfer_table_uses_the_source_models_white_box_rows(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    target = "brats_unet3d_distill_t100"
    for i, s in enumerate(SUBJECTS):
        dice = [study["white-box"][BASE][0.05][r][i] + 0.1 for r in REGIONS]
        rows.append(
            make_row(target, s, dice, defense="distillation", defense_param="T=100", attack="FGSM", threat="transfer")
            | {"epsilon": 0.05, "steps": 1, "iteration": 1, "source_model": BASE}
        )
    tables = build_tables(load_results(write_csv(tmp_path / "r.csv", rows)))
    transfer = next(t for t in tables if t.name == f"table2_3d_transfer_from_{BASE}")
    md = transfer.to_markdown()
    assert f"transfer from {BASE}" in md and "Distillation (T=20)" not in md
    base_wt = study["white-box"][BASE][0.05]["WT"]
    assert f"| {_ms(base_wt)} |" in md  # the source model's own (white-box) rows are its transfer rows


# ------------------------------------------------------------------------------------------------------ options
def test_soft_dice_is_preferred_when_several_losses(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    ce = [
        r | {"loss": "ce", "attack_config": "FGSM(loss=ce)", "dice_wt": 0.0}
        for r in rows
        if r["attack"] == "FGSM" and r["threat"] == "white-box"
    ]
    path = write_csv(tmp_path / "r.csv", rows + ce)
    with_ce = build_defence_tables(load_results(path), "3d")
    without = build_defence_tables(load_results(write_csv(tmp_path / "r2.csv", rows)), "3d")
    assert with_ce[0].rows == without[0].rows
    chosen_ce = build_defence_tables(load_results(path), "3d", loss="ce")
    assert chosen_ce[0].rows != without[0].rows and "loss ce" in chosen_ce[0].caption


def test_explicit_baseline_among_several_undefended(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    rows += [r | {"model": "brats_unet3d_baseline_seed2"} for r in rows if r["model"] == BASE]
    records = load_results(write_csv(tmp_path / "r.csv", rows))
    tables = build_tables(records, baseline=BASE)
    assert sum(t.name.startswith("table1") for t in tables) == 2
    assert f"undefended model `{BASE}`" in tables[2].caption


def test_cli_writes_and_reports_errors_in_one_line(tmp_path, results_csv, capsys):
    main(["stats", str(results_csv), "--out", str(tmp_path / "out")])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "out" / "tables.md").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["stats", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "out2")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err


# ------------------------------------------------------------------------------------------------------- errors
def _records_without(study, make_row, drop) -> list[dict]:
    return [r for r in _rows(study, make_row) if not drop(r)]


def _load(tmp_path, write_csv, rows):
    return load_results(write_csv(tmp_path / "r.csv", rows))


def test_no_clean_rows_for_table1_raises(tmp_path, study, make_row, write_csv):
    records = _load(tmp_path, write_csv, _records_without(study, make_row, lambda r: r["threat"] == "clean"))
    with pytest.raises(RobustsegError, match=f"model {BASE} has no clean rows"):
        build_tables(records)


def test_no_clean_rows_for_defence_table_raises(tmp_path, study, make_row, write_csv):
    drop = lambda r: r["threat"] == "clean" and r["model"] == BASE  # noqa: E731
    records = _load(tmp_path, write_csv, _records_without(study, make_row, drop))
    with pytest.raises(RobustsegError, match=f"undefended model {BASE} has no clean rows"):
        build_defence_tables(records, "3d")


def test_unpaired_attack_subjects_in_table1_raise(tmp_path, study, make_row, write_csv):
    drop = lambda r: r["model"] == BASE and r["attack"] == "i-FGSM" and r["subject"] == "subj_03"  # noqa: E731
    records = _load(tmp_path, write_csv, _records_without(study, make_row, drop))
    with pytest.raises(RobustsegError, match=r"do not pair with its clean rows: missing \['subj_03'\]"):
        build_tables(records)


def test_unpaired_subjects_between_models_raise(tmp_path, study, make_row, write_csv):
    def drop(r):
        return r["model"] == "brats_unet3d_distill_t20" and r["epsilon"] == 0.1 and r["subject"] == "subj_05"

    records = _load(tmp_path, write_csv, _records_without(study, make_row, drop))
    with pytest.raises(RobustsegError, match=rf"distill_t20 FGSM white-box at epsilon 0.1 do not pair with .*{BASE}"):
        build_defence_tables(records, "3d")


def test_duplicate_rows_raise(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    records = _load(tmp_path, write_csv, rows + [r for r in rows if r["model"] == BASE and r["threat"] == "clean"][:1])
    with pytest.raises(RobustsegError, match="subject subj_00 has several rows"):
        build_tables(records)


def test_several_attack_configs_in_a_cell_raise(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    extra = [
        r | {"attack_config": "FGSM(epsilon=0.05, relative=False)"}
        for r in rows
        if r["model"] == "brats_unet3d_noiseaug" and r["threat"] == "white-box" and r["epsilon"] == 0.05
    ]
    with pytest.raises(RobustsegError, match="several attack configs"):
        build_defence_tables(_load(tmp_path, write_csv, rows + extra), "3d")


def test_several_undefended_models_without_baseline_raise(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    rows += [r | {"model": "brats_unet3d_baseline_seed2"} for r in rows if r["model"] == BASE]
    with pytest.raises(RobustsegError, match="several undefended models"):
        build_tables(_load(tmp_path, write_csv, rows))


def test_several_baselines_of_one_net_raise(tmp_path, results_csv):
    with pytest.raises(RobustsegError, match="several models of net 3d"):
        build_tables(load_results(results_csv), baseline=[BASE, "brats_unet3d_noiseaug"])


def test_unknown_baseline_raises(tmp_path, results_csv):
    with pytest.raises(RobustsegError, match=r"baseline: model\(s\) \['brats_unet3d_typo'\] not in"):
        build_tables(load_results(results_csv), baseline="brats_unet3d_typo")


def test_net_without_undefended_model_raises(tmp_path, study, make_row, write_csv):
    records = _load(tmp_path, write_csv, _records_without(study, make_row, lambda r: r["model"] == BASE))
    with pytest.raises(RobustsegError, match="net 3d has no undefended model"):
        build_tables(records)


def test_several_losses_without_soft_dice_raise(tmp_path, study, make_row, write_csv):
    rows = [r | {"loss": "ce"} if r["threat"] != "clean" else r for r in _rows(study, make_row)]
    rows += [r | {"loss": "focal"} for r in rows if r["threat"] == "white-box" and r["attack"] == "FGSM"]
    with pytest.raises(RobustsegError, match=r"several losses \['ce', 'focal'\]"):
        build_defence_tables(_load(tmp_path, write_csv, rows), "3d")


def test_absent_loss_raises(tmp_path, results_csv):
    with pytest.raises(RobustsegError, match="no FGSM white-box on net 3d rows with loss 'ce'"):
        build_tables(load_results(results_csv), loss="ce")


def test_transfer_without_reference_rows_raises(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    rows += [
        r | {"threat": "transfer", "source_model": "brats_unet3d_distill_t20"}
        for r in rows
        if r["model"] == "brats_unet3d_noiseaug" and r["threat"] == "white-box"
    ]
    with pytest.raises(RobustsegError, match="no FGSM transfer rows from brats_unet3d_distill_t20"):
        build_tables(_load(tmp_path, write_csv, rows))


def test_missing_reference_epsilon_raises(tmp_path, study, make_row, write_csv):
    drop = lambda r: r["model"] == BASE and r["attack"] == "FGSM" and r["epsilon"] == 0.1  # noqa: E731
    records = _load(tmp_path, write_csv, _records_without(study, make_row, drop))
    with pytest.raises(RobustsegError, match=f"undefended model {BASE} has no rows at epsilon 0.1"):
        build_defence_tables(records, "3d")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"epsilons": [0.0, -0.05]}, "epsilons must be a non-empty list"),
        ({"attack": ""}, "attack must name an attack"),
        ({"alpha": 1.5}, r"alpha must lie in \(0, 1\)"),
    ],
)
def test_invalid_options_raise(tmp_path, results_csv, options, message):
    with pytest.raises(RobustsegError, match=message):
        write_tables(results_csv, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()  # nothing written


def test_error_writes_nothing(tmp_path, study, make_row, write_csv):
    drop = lambda r: r["model"] == "brats_unet3d_noiseaug" and r["subject"] == "subj_00"  # noqa: E731
    path = write_csv(tmp_path / "r.csv", _records_without(study, make_row, drop))
    (tmp_path / "out").mkdir()
    with pytest.raises(RobustsegError, match="do not pair"):
        write_tables(path, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_output_folder_that_is_a_file_raises(tmp_path, results_csv):
    (tmp_path / "out").write_text("")
    with pytest.raises(RobustsegError, match="cannot create the output folder"):
        write_tables(results_csv, tmp_path / "out")


def test_failed_write_leaves_no_temporary_files(tmp_path, results_csv):
    (tmp_path / "out" / "tables.md").mkdir(parents=True)  # os.replace onto a folder fails
    with pytest.raises(RobustsegError, match="cannot write the tables"):
        write_tables(results_csv, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["tables.md"]


def test_model_with_two_identities_raises(tmp_path, study, make_row, write_csv):
    rows = _rows(study, make_row)
    rows[0] = rows[0] | {"defense_param": "T=21"}
    with pytest.raises(RobustsegError, match="expected one identity per model"):
        build_tables(_load(tmp_path, write_csv, rows))
