"""Hostile and malformed input, property-based (issue 16): attack specs, epsilon lists, datalists, report options and
the command line's numbers and paths. Whatever comes in, the answer is a valid result or one
:class:`~common.errors.RobustsegError` line -- never another exception, never a traceback.

Datalist paths that leave the datalist's folder (``..``, absolute paths, symbolic links) are allowed: a datalist
only names files to read, and ``robustseg data datalist`` itself writes absolute paths for data outside its folder.
What becomes an output path is the subject id (``examples/<id>/``): it must be a plain name, and one that would
escape the output folder is refused (``common.engines.subject_batch.subject_id``).

Hypothesis runs derandomized (the same examples every run) with a few dozen examples per property; each example
tried is counted in the reliability summary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from common.attacks import ATTACKS, Attack, make_attack
from common.data.check import check_dataset
from common.data.splits import load_split
from common.engines.attack_jobs import build_jobs
from common.engines.subject_batch import subject_id
from common.engines.subject_batch import test_entries as checked_test_split
from common.errors import RobustsegError
from common.report.options import ReportOptions

from .cli import (
    assert_one_error_line,
    logging_restored,  # noqa: F401 -- an autouse fixture
    run_cli,
)
from .hostile_fs import tree_hashes
from .world import World, make_world

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


def one_line(err: RobustsegError) -> str:
    """The error's message, checked to be one non-empty line."""
    text = str(err)
    assert text and "\n" not in text, repr(text)
    return text


# ------------------------------------------------------------------------------------------------ strategies
hostile_numbers = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1, -0.0, 0, 1e-300, 1e300, 10**30, -(10**30), 2**63, True, False]),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
)
hostile_scalars = st.one_of(
    hostile_numbers,
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["0.05", "nan", "inf", "1e309", "FGSM", "soft_dice", "", " ", "../..", "ε", "sample"]),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
setting_names = st.sampled_from(sorted({"epsilon", "steps", "alpha", "loss", "relative", "clip", "temperature",
                                        "logit_scale", "inferer", "amp", "stop", "target", "restarts", "seed",
                                        "radius_schedule", "momentum", "name", "bogus"}))  # fmt: skip
attack_names = st.one_of(st.sampled_from(list(ATTACKS) + ["fgsm", "I-fgsm", "CW", ""]), hostile_values)
epsilons = st.one_of(hostile_numbers, st.floats(0, 1))
attack_specs = st.one_of(
    st.fixed_dictionaries({"name": attack_names}, optional={"epsilon": epsilons}).flatmap(
        lambda spec: st.dictionaries(setting_names, hostile_values, max_size=3).map(lambda more: {**spec, **more})
    ),
    hostile_values,
)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv3d(4, 4, 1)


IMAGES = torch.rand(1, 4, 4, 4, 4)
LABELS = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)


# ------------------------------------------------------------------------------------------------ attack specs
@SETTINGS
@given(spec=attack_specs)
def test_attack_specs(spec, reliability):
    reliability.bad_input("attack spec (make_attack)")
    try:
        attack = make_attack(spec)
    except RobustsegError as err:
        one_line(err)
        return
    assert isinstance(attack, Attack)
    if attack.steps * getattr(attack, "restarts", 1) <= 4:  # a valid attack also runs, or says why it cannot
        try:
            adversarial = attack(_tiny_net(), IMAGES, LABELS)
        except RobustsegError as err:
            one_line(err)
            return
        assert adversarial.shape == IMAGES.shape and bool(torch.isfinite(adversarial).all())


@SETTINGS
@given(
    attacks=st.one_of(st.lists(attack_specs, max_size=3), hostile_values),
    sweep=st.one_of(st.none(), st.just("FGSM"), attack_specs),
    sweep_epsilons=st.one_of(st.lists(st.one_of(hostile_numbers, st.floats(0, 1)), max_size=4), hostile_values),
    epsilon=st.one_of(hostile_numbers, st.floats(0, 1)),
    loss=st.one_of(st.sampled_from(["soft_dice", "ce", "masked_ce", "js"]), hostile_values),
)
def test_the_evaluations_attack_list(attacks, sweep, sweep_epsilons, epsilon, loss, reliability):
    reliability.bad_input("evaluation attack list and epsilons (build_jobs)")
    try:
        jobs = build_jobs(attacks, sweep, sweep_epsilons, epsilon, loss)
    except RobustsegError as err:
        one_line(err)
        return
    for job in jobs:
        assert all(math.isfinite(a.epsilon) and a.epsilon >= 0 for a in job.attacks)


@SETTINGS
@given(
    epsilon=st.one_of(hostile_numbers, st.floats(0, 1)),
    epsilons=st.one_of(st.lists(st.one_of(hostile_numbers, st.floats(0, 1)), max_size=4), hostile_values),
    attack=hostile_values,
    loss=hostile_values,
    baseline=hostile_values,
    alpha=st.one_of(hostile_numbers, st.floats(0, 1)),
)
def test_report_options(epsilon, epsilons, attack, loss, baseline, alpha, reliability):
    reliability.bad_input("report options (epsilon lists, names)")
    try:
        options = ReportOptions(epsilon=epsilon, epsilons=epsilons, attack=attack, loss=loss, baseline=baseline,
                                alpha=alpha)  # fmt: skip
    except RobustsegError as err:
        one_line(err)
        return
    assert all(math.isfinite(e) and e >= 0 for e in options.epsilons) and isinstance(options.attack, str)
    assert all(isinstance(b, str) for b in options.baselines)
    assert options.loss is None or isinstance(options.loss, str)


# ------------------------------------------------------------------------------------------------ datalists
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("world"), subjects=1)


def _paths(world: World) -> st.SearchStrategy[Any]:
    """File names a datalist may hold: real ones (plain, through ``..``, through a symbolic link), missing ones,
    hostile text, and anything else JSON can hold."""
    entry = json.loads(world.datalist.read_text())["testing"][0]
    real = [str(world.data / p) for p in entry["image"]]
    outside = [os.path.relpath(p, world.root / "lists") for p in real]  # from a datalist in another folder: ../..
    return st.one_of(
        st.sampled_from(real + outside + entry["image"] + ["link/" + p for p in entry["image"]]),
        st.sampled_from(["", "/", ".", "..", "missing.nii.gz", "/etc/passwd", "a\u0000b.nii.gz", "ünï cödé.nii.gz"]),
        hostile_values,
    )


def _datalists(world: World) -> st.SearchStrategy[Any]:
    paths = _paths(world)
    real = json.loads(world.datalist.read_text())["testing"][0]
    subjects = st.one_of(st.sampled_from(["s1", "../../escape", "/abs", ".", "a/b", "a\\b", "ok", "ünï cödé"]),
                         hostile_values)  # fmt: skip
    ways = {  # the same subject, named from the datalist's folder in four ways
        "relative": lambda p: p,
        "through ..": lambda p: os.path.relpath(world.data / p, world.root / "lists"),
        "through a symbolic link": lambda p: f"link/{p}",
        "absolute": lambda p: str(world.data / p),
    }
    valid = st.sampled_from(sorted(ways)).flatmap(
        lambda way: st.fixed_dictionaries(
            {"image": st.just([ways[way](p) for p in real["image"]]), "label": st.just(ways[way](real["label"]))},
            optional={"subject": st.sampled_from(["s1", "ok", "ünï cödé", "with space"])},
        )
    )
    hostile = st.one_of(
        st.fixed_dictionaries(
            {"image": st.one_of(st.lists(paths, max_size=5), paths)},
            optional={"label": paths, "layout": st.sampled_from(["brats", "msd", 3]), "subject": subjects},
        ),
        hostile_values,
    )
    entries = st.one_of(valid, hostile)
    return st.one_of(
        st.fixed_dictionaries({"testing": st.one_of(st.tuples(valid).map(list), st.lists(entries, max_size=2))},
                              optional={"training": st.lists(entries, max_size=2),
                                        "validation": st.one_of(st.lists(entries, max_size=2), hostile_values)}),
        hostile_values,
    )  # fmt: skip


@pytest.fixture(scope="module")
def datalist_folder(world, tmp_path_factory) -> Path:
    """Where the generated datalists go: the tiny subject reached as ``./<id>``, ``link/<id>`` (a symbolic link to
    the data folder) and ``../data/<id>`` (another folder)."""
    folder = world.root / "lists"
    folder.mkdir()
    shutil.copytree(world.subject_dir, folder / world.subjects[0])
    (folder / "link").symlink_to(world.data, target_is_directory=True)
    return folder


@SETTINGS
@given(data=st.data())
def test_datalists(data, world, datalist_folder, reliability):
    content = data.draw(_datalists(world))
    path = datalist_folder / "datalist.json"
    path.write_text(json.dumps(content))
    before = tree_hashes(world.data)
    reliability.bad_input("datalist (load_split, test_entries, check_dataset)")
    for split in ("training", "validation", "testing"):
        try:
            entries = load_split(path, split)
        except RobustsegError as err:
            one_line(err)
            continue
        assert entries and all(isinstance(e["image"], (str, list)) for e in entries)
    try:
        entries = checked_test_split(path)
    except RobustsegError as err:
        event("test split refused")
        one_line(err)
    else:
        event("test split accepted")
        for entry in entries:  # what the evaluation then does with them: name folders after the subject
            folder = (datalist_folder / "out" / "examples" / subject_id(entry)).resolve()
            assert folder.parent == (datalist_folder / "out" / "examples").resolve()
    try:
        problems, _ = check_dataset(path)
    except RobustsegError as err:
        one_line(err)
    else:
        assert all(isinstance(p, str) and "\n" not in p for p in problems)
    assert tree_hashes(world.data) == before


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_paths_outside_the_datalists_folder_are_read(how, world, tmp_path, reliability):
    """The decision: a datalist may name files anywhere; the evaluation's checks and ``data check`` accept them."""
    entry = json.loads(world.datalist.read_text())["testing"][0]
    lists = tmp_path / "lists"
    lists.mkdir()
    if how == "symlink":
        (lists / "data").symlink_to(world.data, target_is_directory=True)
        moved = {k: [f"data/{p}" for p in v] if isinstance(v, list) else f"data/{v}" for k, v in entry.items()
                 if k in ("image", "label")}  # fmt: skip
    else:
        base = lists if how == "dotdot" else Path("/")
        def where(p: str) -> str:
            full = world.data / p
            return os.path.relpath(full, base) if how == "dotdot" else str(full)
        moved = {k: [where(p) for p in v] if isinstance(v, list) else where(v) for k, v in entry.items()
                 if k in ("image", "label")}  # fmt: skip
    datalist = lists / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{**entry, **moved}]}))
    reliability.bad_input(f"datalist path outside its folder ({how})")
    assert [subject_id(e) for e in checked_test_split(datalist)] == [world.subjects[0]]
    assert check_dataset(datalist) == ([], 1)


@pytest.mark.parametrize("subject", ["../../escape", "/tmp/abs", "a/b", "..", ".", "a\\b", "x" * 300])
def test_a_subject_id_that_would_leave_the_output_folder_is_refused(subject, world, tmp_path, reliability):
    entry = {**json.loads(world.datalist.read_text())["testing"][0], "subject": subject}
    reliability.bad_input("subject id")
    with pytest.raises(RobustsegError, match="plain name") as caught:
        subject_id(entry)
    one_line(caught.value)


# ------------------------------------------------------------------------------------------------ the command line
class _Validated(Exception):
    """Raised by a stub where a command's work would begin: its arguments were all accepted."""


def cli_numbers() -> st.SearchStrategy[str]:
    """A command-line value as typed: numbers fire reads as numbers, and what it reads as strings or lists."""
    return st.one_of(
        st.sampled_from(["nan", "inf", "-inf", "1e309", "-1e309", "-1", "0", "-0.0", "1e-320", "99999999999999999999",
                         "10**9", "True", "False", "None", "[]", "[1,2]", "[0.1,nan]", "{}", "{'a':1}", "0x10", "1_0",
                         "'5'", "", " ", "é", "∞", "½"]),
        st.integers(-(10**25), 10**25).map(str),
        st.floats().map(repr),
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6),
    )  # fmt: skip


COMMAND_FLAGS = {
    "data synth": (["data", "synth", "--out", "{tmp}/synth"], ["subjects", "seed", "shape", "test_fraction"]),
    "data datalist": (["data", "datalist", "{data}", "--out", "{tmp}/datalist.json"], ["test_fraction", "seed"]),
    "certify": (["certify", "--bundle", "{bundle}", "--data", "{data}", "--out", "{tmp}/cert"],
                ["sigma", "n", "n0", "alpha", "tau", "radii", "batch_size", "seed", "correction", "non_certified",
                 "device"]),
    "segment": (["segment", "--bundle", "{bundle}", "--input", "{subject}", "--output", "{tmp}/seg.nii.gz"],
                ["device"]),
    "report": (["report", "{tmp}/results.csv", "--out", "{tmp}/report"],
               ["epsilon", "epsilons", "attack", "loss", "baseline", "alpha"]),
}  # fmt: skip


@pytest.fixture
def stubs(monkeypatch):
    """Stop each command where its work would begin, once its arguments are checked."""

    def validated(*args, **kwargs):
        raise _Validated

    monkeypatch.setattr("common.data.synthetic._run", validated)
    monkeypatch.setattr("common.engines.certification._datalist", validated)
    monkeypatch.setattr("common.engines.model_bundle.find_model_bundle", validated)
    monkeypatch.setattr("common.report.html.write_report", validated)


@pytest.mark.parametrize("command", list(COMMAND_FLAGS))
def test_command_line_numbers(command, world, tmp_path, stubs, capsys, reliability):
    base, flags = COMMAND_FLAGS[command]
    where = {"tmp": str(tmp_path), "data": str(world.data), "bundle": str(world.bundle),
             "subject": str(world.subject_dir)}  # fmt: skip
    argv0 = [part.format(**where) for part in base]

    @SETTINGS
    @given(values=st.dictionaries(st.sampled_from(flags), cli_numbers(), min_size=1, max_size=3))
    def check(values):
        reliability.bad_input(f"command-line values ({command})")
        argv = argv0 + [f"--{flag}={value}" for flag, value in values.items()]
        capsys.readouterr()
        try:
            code = run_cli(argv)
        except _Validated:
            return
        stderr = capsys.readouterr().err
        if code == 0:
            return
        assert_one_error_line(code, stderr)

    check()


@pytest.mark.parametrize("name", ["dätä mit Leerzeichen ☃", "  leading and trailing  ", "a'b\"c", "-dash", "日本"])
def test_unicode_paths_and_spaces(name, world, tmp_path, capsys, reliability):
    """Paths with spaces, quotes, a leading dash and non-ASCII letters work, from data check to segment."""
    root = tmp_path / name
    shutil.copytree(world.subject_dir, root / world.subjects[0])
    reliability.bad_input("unicode path or path with spaces")
    assert run_cli(["data", "check", str(root), "--require_labels=True"]) == 0, capsys.readouterr().err
    assert run_cli(["data", "datalist", str(root), f"--out={root / 'datalist.json'}"]) == 0
    out = root / "out put"
    out.mkdir()
    code = run_cli(["segment", "--bundle", str(world.bundle), "--input", str(root / world.subjects[0]),
                    f"--output={out / 'séG ☃.nii.gz'}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (out / "séG ☃.nii.gz").is_file()


@SETTINGS
@given(path=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20))
def test_any_missing_path_is_named_in_one_line(path, tmp_path_factory, capsys, reliability):
    """Every path argument of the data commands: a missing path or one of the wrong kind is one line."""
    reliability.bad_input("path argument (data check, data datalist, data show)")
    target = tmp_path_factory.getbasetemp() / "nowhere" / path
    out = tmp_path_factory.getbasetemp() / "out.json"
    for argv in (["data", "check", str(target)], ["data", "datalist", str(target), "--out", str(out)],
                 ["data", "show", str(target), "--out", str(out) + ".png"]):  # fmt: skip
        capsys.readouterr()
        code = run_cli(argv)
        line = assert_one_error_line(code, capsys.readouterr().err)
        assert " ".join(str(target).split()) in line, f"the missing path is not named: {line}"
