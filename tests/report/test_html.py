"""The HTML report: self-contained, every table (numbers as build_tables) and figure in it; errors write nothing."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import struct
from html.parser import HTMLParser

import pytest

import common.report.figure as figure_module
from common.__main__ import main
from common.errors import RobustsegError
from common.report.defence_tables import DAGGER, DAGGER_NOTE
from common.report.figures import SkippedFigure
from common.report.html import PAPER_TABLE1, is_synthetic, load_settings, render_report, write_report
from common.report.schema import COLUMN_NAMES, load_results
from common.report.tables import build_tables

BASELINE = "brats_unet3d_baseline"
FIGURE_NAMES = {
    "fig3_dice_vs_iterations_3d_brats_unet3d_baseline",
    "fig4_psnr_vs_iterations_3d_brats_unet3d_baseline",
    "fig5_dice_vs_epsilon_3d_distillation",
    "fig7_dice_vs_epsilon_3d_adversarial_training",
    "zero_gradient_fraction",
    "fig2_slices_attacks_brats_unet3d_baseline_synth_000",
    "fig9_slices_models_FGSM_eps0.05_synth_000",
}


class _Page(HTMLParser):
    """Collects tables (by ``data-table``), attributes that load resources, images and tag names."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[tuple[str, str, str]] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            if name in attrs and name != "data":
                self.links.append((tag, name, attrs[name]))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "table" and "data-table" in attrs:
            self._table = attrs["data-table"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def report(full_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report"
    path = write_report(full_study, out)
    return out, path.read_text(encoding="utf-8")


@pytest.fixture
def no_render(monkeypatch):
    """Skip the PNG encoding (the slow part) where the pixels do not matter: a PNG signature and IHDR size only."""
    stub = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 300, 200)
    monkeypatch.setattr(figure_module, "_png", lambda figure: stub)


def test_writes_tables_figures_and_one_page(report, full_study):
    out, _ = report
    tables = build_tables(load_results(full_study), source=str(full_study))
    expected = {"report.html", "tables.md"} | {f"{t.name}.{ext}" for t in tables for ext in ("md", "csv")}
    expected |= {f"figures/{name}.png" for name in FIGURE_NAMES}
    expected |= {f"figures/{name}.csv" for name in FIGURE_NAMES if not name.startswith(("fig2", "fig9"))}
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == expected
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_page_is_self_contained(report):
    _, text = report
    page = _parse(text)
    assert page.links and all(value.startswith(("data:image/png;base64,", "#")) for _, _, value in page.links)
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "base"}
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "http" not in without_data and "url(" not in without_data and "@import" not in without_data


def test_tables_hold_the_numbers_of_build_tables(report, full_study):
    _, text = report
    page = _parse(text)
    tables = build_tables(load_results(full_study), source=str(full_study))
    kinds = ("table", "headline", "sanity")
    assert [t.name for t in tables] == [n for n in page.tables if n.startswith(kinds) and "--extra" not in n]
    for table in tables:
        assert page.tables[table.name] == [table.header, *table.rows]
        for k, (_, header, rows) in enumerate(table.extra):
            assert page.tables[f"{table.name}--extra{k}"] == [header, *rows]
        assert table.title in text
    marks = [cell for t in tables for row in t.rows for cell in row if cell.endswith(("*", DAGGER))]
    assert any(c.endswith("*") for c in marks) and any(DAGGER in c for c in marks)  # the study has both
    assert DAGGER_NOTE in text and "* p ≤ 0.05 after Bonferroni correction" in text


def test_every_figure_is_embedded_with_its_caption(report):
    out, text = report
    page = _parse(text)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in page.images}
    files = {p.stem: p.read_bytes() for p in (out / "figures").glob("*.png")}
    assert set(files) == FIGURE_NAMES and embedded == set(files.values()) and len(page.images) == len(files)
    for k in range(1, len(files) + 1):
        assert f"<strong>Figure {k}." in text
    assert "(cf. the paper's Fig. 5)" in text and "95 % confidence interval of the mean" in text


def test_synthetic_warning_paper_table_and_settings(report):
    _, text = report
    assert 'id="synthetic-warning"' in text and "these are not BraTS numbers" in text
    page = _parse(text)
    assert page.tables["paper-table1"][1:] == [list(row) for row in PAPER_TABLE1]
    assert "the paper's numbers, for comparison only" in text and "BraTS 2017" in text
    assert "0.821 ± 0.042" in text and "0.342 ± 0.087*" in text
    assert "Run settings (<code>settings.json</code>)" in text and "embedded synthetic BraTS-like data" in text
    assert "brats_unet3d_distill_t5000" in page.tables["settings-models"][2]
    assert "Report rendered with" in text


def test_real_subject_ids_get_no_synthetic_warning(tmp_path, make_row, write_csv):
    records = load_results(write_csv(tmp_path / "r.csv", [make_row(BASELINE, "BraTS2021_00000", (0.8, 0.7, 0.6))]))
    text = render_report(records, [], [])
    assert "synthetic-warning" not in text and "No table could be made" in text
    assert "synthetic-warning" in render_report(records, [], [], settings=[("s", {"data": {"synthetic": True}})])


@pytest.mark.parametrize(
    "settings, synthetic",
    [
        ({}, False),
        ({"synthetic": True}, True),
        ({"data": "the embedded Synthetic dataset"}, True),
        ({"dataset": {"synthetic": True}}, True),
        ({"data": {"synthetic": False, "root": "/data/brats"}}, False),
    ],
)
def test_settings_can_declare_synthetic_data(tmp_path, make_row, write_csv, settings, synthetic):
    records = load_results(write_csv(tmp_path / "r.csv", [make_row(BASELINE, "case_01", (0.8, 0.7, 0.6))]))
    assert is_synthetic(records, [("settings", settings)]) is synthetic


def test_settings_sources(tmp_path):
    csv = tmp_path / "results.csv"
    assert load_settings(None, csv) == []
    (tmp_path / "run_info.json").write_text(json.dumps({"device": "cpu"}))
    assert load_settings(None, csv) == [("run_info.json", {"device": "cpu"})]
    assert load_settings({"a": 1}, csv) == [("settings", {"a": 1})]
    (tmp_path / "mine.json").write_text(json.dumps({"b": [1, 2]}))
    assert load_settings(tmp_path / "mine.json", csv) == [("mine.json", {"b": [1, 2]})]


def test_skipped_figures_are_listed_with_reasons(no_render, tmp_path, make_row, write_csv):
    rows = []
    for s in range(6):
        rows.append(make_row(BASELINE, f"synth_{s:03d}", (0.8, 0.7, 0.6 + 0.01 * s)))
        rows.append(make_row(BASELINE, f"synth_{s:03d}", (0.5, 0.4, 0.3 + 0.02 * s), attack="FGSM", threat="white-box",
                             epsilon=0.05, steps=1, iteration=1, quality=(27.0, 0.7, 0.04)))  # fmt: skip
    out = tmp_path / "out"
    text = write_report(write_csv(tmp_path / "results.csv", rows), out).read_text(encoding="utf-8")
    assert 'id="skipped"' in text
    for reason in ("no iterative white-box attack", "no distillation models", "no examples/&lt;subject&gt;/index.json"):
        assert reason in text
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["zero_gradient_fraction.csv", "zero_gradient_fraction.png"]


def test_cli_writes_the_report(no_render, tmp_path, make_study, capsys):
    csv = make_study(tmp_path / "run", subjects=4, iterative=False, examples=False)
    main(["report", str(csv), "--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "report.html").is_file()
    assert str(tmp_path / "report" / "report.html") in capsys.readouterr().out


def test_cli_error_is_one_line_and_exits_non_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "report")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: results CSV") and "\n" not in err
    assert not (tmp_path / "report").exists()


def test_existing_folder_keeps_other_files_and_gets_the_new_report(no_render, tmp_path, make_study):
    csv = make_study(tmp_path / "run", subjects=4, iterative=False, examples=False)
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.html").write_text("old")
    write_report(csv, out)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert (out / "tables.md").is_file() and (out / "figures" / "fig5_dice_vs_epsilon_3d_distillation.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------- errors: nothing
def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _drop_column(run, path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    keep = [i for i, name in enumerate(rows[0]) if name != "dice_et"]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([[row[i] for i in keep] for row in rows])


def _missing_example_file(run, csv):
    (run / "examples" / "synth_000" / "brats_unet3d_baseline__FGSM__white-box__eps0.05_pred.nii.gz").unlink()


@pytest.mark.parametrize(
    "break_input, kwargs, message",
    [
        (lambda run, csv: csv.unlink(), {}, "does not exist"),
        (_drop_column, {}, r"missing column\(s\) \['dice_et'\]"),
        (lambda run, csv: csv.write_text(",".join(COLUMN_NAMES) + "\n"), {}, "no result rows"),
        (_missing_example_file, {}, r"prediction names .*_pred.nii.gz, but .* does not exist"),
        (lambda run, csv: (run / "settings.json").write_text("{oops"), {}, "settings file .* cannot be read as JSON"),
        (lambda run, csv: (run / "settings.json").write_text("[1]"), {}, "holds a JSON list; expected a JSON object"),
        (lambda run, csv: None, {"settings": "nope.json"}, "settings: file nope.json does not exist"),
        (lambda run, csv: None, {"settings": 5}, "settings must be a mapping, a JSON file path or None, got int"),
        (lambda run, csv: None, {"examples": "no_such_dir"}, "examples: no_such_dir is not a folder"),
        (lambda run, csv: None, {"epsilon": -1.0}, "epsilon must be a finite number > 0"),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_input_errors_write_nothing(tmp_path, make_study, break_input, kwargs, message, existing):
    run = tmp_path / "run"
    csv = make_study(run, subjects=3, iterative=False)
    break_input(run, csv)
    out = tmp_path / "out" / "report"
    if existing:
        out.mkdir(parents=True)
        (out / "report.html").write_text("the previous report")
    before = _snapshot(tmp_path / "out") if existing else None
    with pytest.raises(RobustsegError, match=message):
        write_report(csv, out, **kwargs)
    if existing:
        assert _snapshot(tmp_path / "out") == before
    else:
        assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_raises(tmp_path, make_study):
    csv = make_study(tmp_path / "run", subjects=3, iterative=False, examples=False)
    (tmp_path / "out").write_text("a file")
    with pytest.raises(RobustsegError, match="is a file; expected a folder"):
        write_report(csv, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "a file"


def test_failed_write_leaves_no_partial_report(no_render, tmp_path, make_study, monkeypatch):
    csv = make_study(tmp_path / "run", subjects=3, iterative=False, examples=False)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)  # the disk fills up while the files are flushed
    with pytest.raises(RobustsegError, match="cannot write the report into .*No space left on device"):
        write_report(csv, tmp_path / "out" / "report")
    assert os.listdir(tmp_path / "out") == []


def test_render_report_lists_skipped_figures(tmp_path, make_row, write_csv):
    records = load_results(write_csv(tmp_path / "r.csv", [make_row(BASELINE, "synth_000", (0.8, 0.7, 0.6))]))
    text = render_report(records, [], [], [SkippedFigure("Zero <gradient>", "no values & so on")])
    assert "<strong>Zero &lt;gradient&gt;</strong>: no values &amp; so on." in text


@pytest.mark.parametrize(
    "record, shown",
    [
        ({"recipe": "approximation", "temperature": 5000, "teacher_train_temperature": 1.0,
          "teacher_temperature": 1.0, "logit_norm_ratio": 812.5, "matching_logit_norm_ratio": 5000.0},
         ["approximation, not the paper", "5e+03", "1 / 1", "812"]),
        ({"recipe": "paper", "temperature": 100, "teacher_train_temperature": 100.0, "teacher_temperature": 100.0,
          "logit_norm_ratio": 1.25, "matching_logit_norm_ratio": 1.0},
         ["the paper&#x27;s: teacher trained at T", "100 / 100", "1.25"]),
        (None, ["not recorded (no models/distillation_record.json)"]),
    ],
)  # fmt: skip
def test_distilled_models_show_recipe_and_logit_scale(record, shown, tmp_path, make_row, write_csv):
    records = load_results(write_csv(tmp_path / "r.csv", [make_row(BASELINE, "synth_000", (0.8, 0.7, 0.6))]))
    models = [{"model": "brats_unet3d_baseline", "defense": "none"},
              {"model": "brats_unet3d_distill_t5000", "defense": "distillation", "distillation": record}]  # fmt: skip
    text = render_report(records, [], [], settings=[("settings.json", {"models": models})])
    section = text.split('<h3 id="distillation">', 1)[1].split("</table>", 1)[0]
    assert "brats_unet3d_distill_t5000" in section and "brats_unet3d_baseline" not in section
    assert all(s in section for s in shown), section


def test_no_distillation_section_without_distilled_models(tmp_path, make_row, write_csv):
    records = load_results(write_csv(tmp_path / "r.csv", [make_row(BASELINE, "synth_000", (0.8, 0.7, 0.6))]))
    text = render_report(records, [], [], settings=[("settings.json", {"models": [{"defense": "none"}]})])
    assert 'id="distillation"' not in text
