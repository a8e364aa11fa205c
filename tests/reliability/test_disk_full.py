"""Disk full and read-only output folders (issue 16): every command that writes stops with one ``error:`` line and a
non-zero exit, leaves no partial or temporary file behind, and never touches its inputs; rerun once there is space,
it finishes.

The full disk is simulated (:class:`~.hostile_fs.FullDisk`: the write that fills it writes half of its bytes and
raises ``OSError(ENOSPC)`` without a file name, as ``write(2)`` does) at chosen points of what a fault-free run
writes: its first, middle and last write call. The read-only folder is simulated too (:class:`~.hostile_fs.ReadOnly`,
``EROFS``), and made real with ``chmod 0o555`` where that bites (not as root). The slow tests sweep every tenth of the
writes, fill the disk while a bundle trains, and use a real, tiny ``tmpfs`` where the machine allows one
(``unshare``: a private mount namespace, gone with the process).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torch import nn

from common.engines import AtomicCheckpointSaver, latest_checkpoint
from common.errors import find_user_error
from common.report.schema import COLUMN_NAMES

from .cli import (
    REPO,
    assert_one_error_line,
    evaluate,
    logging_restored,  # noqa: F401 -- an autouse fixture
    run_cli,
)
from .hostile_fs import FullDisk, ReadOnly, leftovers, tree_hashes
from .world import World, make_world


# ------------------------------------------------------------------------------------------------ the commands
@dataclass(frozen=True)
class Command:
    """A command that writes: how to run it into ``out`` and what it reads."""

    name: str
    run: Callable[[World, Path], int]
    inputs: Callable[[World], list[Path]]


def _synth(world: World, out: Path) -> int:
    return run_cli(["data", "synth", "--out", str(out / "synthetic"), "--subjects", "2", "--shape", "16"])


def _datalist(world: World, out: Path) -> int:
    return run_cli(["data", "datalist", str(world.data), "--out", str(out / "datalist.json")])


def _segment(world: World, out: Path) -> int:
    return run_cli(["segment", "--bundle", str(world.bundle), "--input", str(world.subject_dir),
                    "--output", str(out / "seg.nii.gz")])  # fmt: skip


def _certify(world: World, out: Path) -> int:
    return run_cli(["certify", "--bundle", str(world.bundle), "--data", str(world.datalist), "--out", str(out / "cert"),
                    "--n", "4", "--n0", "2", "--batch_size", "4", "--radii", "[0.0,0.1]"])  # fmt: skip


def _evaluate(world: World, out: Path) -> int:
    return evaluate(world, out / "eval")


def _report(world: World, out: Path) -> int:
    return run_cli(["report", str(_results_csv(world)), "--out", str(out / "report")])


def _stats(world: World, out: Path) -> int:
    return run_cli(["stats", str(_results_csv(world)), "--out", str(out / "stats")])


def _export(world: World, out: Path) -> int:
    return run_cli(["bundles", "export", world.bundle.name, "--out", str(out / "bundle.zip"),
                    "--root", str(world.bundle.parent)])  # fmt: skip


def _data(world: World) -> list[Path]:
    return [world.data]


def _bundle_and_data(world: World) -> list[Path]:
    return [world.data, world.bundle]


COMMANDS = {
    "data synth": Command("data synth", _synth, lambda world: []),
    "data datalist": Command("data datalist", _datalist, _data),
    "segment": Command("segment", _segment, _bundle_and_data),
    "certify": Command("certify", _certify, _bundle_and_data),
    "evaluation": Command("evaluation", _evaluate, _bundle_and_data),
    "report": Command("report", _report, lambda world: [_results_csv(world).parent]),
    "stats": Command("stats", _stats, lambda world: [_results_csv(world).parent]),
    "bundles export": Command("bundles export", _export, lambda world: [world.bundle]),
}


def _results_csv(world: World) -> Path:
    """A finished evaluation of the tiny world (written once, read-only afterwards): the report's input."""
    csv_path = world.root / "finished" / "eval" / "results.csv"
    if not csv_path.is_file():
        assert _evaluate(world, world.root / "finished") == 0
    return csv_path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    world = make_world(tmp_path_factory.mktemp("world"))
    _results_csv(world)
    return world


# ------------------------------------------------------------------------------------------------ the checks
def _complete(path: Path) -> str | None:
    """Why the output file ``path`` is not complete, or ``None`` (every format our commands write)."""
    name = path.name
    try:
        if name.endswith((".nii.gz", ".nii")):
            np.asanyarray(nib.load(path).dataobj)
        elif name.endswith(".gz"):
            gzip.decompress(path.read_bytes())
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".csv"):
            text = path.read_text(encoding="utf-8")
            rows = list(csv.reader(text.splitlines()))
            if not text.endswith("\n") or not rows or any(len(r) != len(rows[0]) for r in rows):
                return "a torn CSV row"
            if rows[0][: len(COLUMN_NAMES)] == list(COLUMN_NAMES) and len(rows) == 1 and name == "results.csv":
                return "a results file with a header and no row"
        elif name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return "a corrupt zip member"
        elif name.endswith(".pt"):
            torch.load(path, weights_only=True)
        elif name.endswith(".png"):
            if not path.read_bytes().endswith(b"IEND\xaeB`\x82"):
                return "a PNG without its end chunk"
    except Exception as exc:  # noqa: BLE001 -- any failure to read back is a partial file
        return f"{type(exc).__name__}: {exc}"
    return None


def assert_no_partial_output(out: Path) -> None:
    """Nothing temporary below ``out``, and every file there reads back completely."""
    assert leftovers(out) == [], f"temporary files left behind: {leftovers(out)}"
    broken = {str(p.relative_to(out)): why for p in out.rglob("*") if p.is_file() and (why := _complete(p))}
    assert not broken, f"partial output files: {broken}"


def _fault_run(command: Command, world: World, out: Path, fault: FullDisk | ReadOnly, capsys) -> tuple[int, str]:
    before = {str(p): tree_hashes(p) for p in command.inputs(world)}
    capsys.readouterr()
    with fault:
        code = command.run(world, out)
    stderr = capsys.readouterr().err
    assert {str(p): tree_hashes(p) for p in command.inputs(world)} == before, "an input was changed"
    return code, stderr


def _measure(command: Command, world: World, out: Path, capsys) -> FullDisk:
    """A fault-free run of ``command`` into ``out`` under an unlimited, counting disk."""
    out.mkdir()
    disk = FullDisk(out)
    code, stderr = _fault_run(command, world, out, disk, capsys)
    assert code == 0, stderr
    assert disk.written > 0 and not disk.failed
    return disk


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(COMMANDS))
def test_full_disk_is_one_line_and_leaves_nothing_partial(name, world, tmp_path, capsys, reliability):
    command = COMMANDS[name]
    writes = _measure(command, world, tmp_path / "measured", capsys).writes
    for point, fail_at in (("first write", 1), ("middle write", (writes + 1) // 2), ("last write", writes)):
        out = tmp_path / point.replace(" ", "_")
        out.mkdir()
        disk = FullDisk(out, fail_at=fail_at)
        code, stderr = _fault_run(command, world, out, disk, capsys)
        reliability.fault(f"disk full ({name})")
        assert disk.failed, f"{point}: write {fail_at} of {writes} was not reached"
        line = assert_one_error_line(code, stderr, "no space left on device")
        assert str(out) in line, f"{point}: the error should name the output that could not be written: {line}"
        assert_no_partial_output(out)
    # the disk freed, the same command finishes where the middle fault left it
    out = tmp_path / "middle_write"
    code, stderr = _fault_run(command, world, out, FullDisk(out), capsys)
    assert code == 0, stderr
    assert_no_partial_output(out)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_read_only_output_is_one_line(name, world, tmp_path, capsys, reliability):
    out = tmp_path / "ro"
    out.mkdir()
    code, stderr = _fault_run(COMMANDS[name], world, out, ReadOnly(out), capsys)
    reliability.fault(f"read-only output folder ({name})")
    line = assert_one_error_line(code, stderr, "read-only file system")
    assert str(out) in line
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root from writing")
@pytest.mark.parametrize("name", list(COMMANDS))
def test_chmod_read_only_output_is_one_line(name, world, tmp_path, capsys, reliability):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, stderr = _fault_run(COMMANDS[name], world, out, FullDisk(tmp_path / "unused"), capsys)
    finally:
        out.chmod(0o755)
    reliability.fault(f"chmod 0o555 output folder ({name})")
    assert_one_error_line(code, stderr, "permission denied")
    assert list(out.iterdir()) == []


def test_results_csv_keeps_complete_rows_when_an_append_fails(world, tmp_path, capsys, reliability):
    """The evaluation appends one batch of rows per batch of subjects; the disk fills in the middle of the second
    batch's append: the file keeps the header and the first batch, whole, and the rerun completes it."""
    command = Command("evaluation", _evaluate_batches_of_one, _bundle_and_data)
    measured = tmp_path / "measured"
    disk = _measure(command, world, measured, capsys)
    results = str(measured / "eval" / "results.csv")
    appends = [size for path, size in disk.log if path == results]
    assert len(appends) == len(world.subjects), "one append per batch of one subject (the header with the first)"
    out = tmp_path / "out"
    target = out / "eval" / "results.csv"
    out.mkdir()
    full = FullDisk(target, fail_at=2)
    code, stderr = _fault_run(command, world, out, full, capsys)
    reliability.fault("disk full during a results.csv append")
    assert_one_error_line(code, stderr, "no space left on device", str(target))
    kept = target.read_bytes()
    first = [row for row in _rows(measured / "eval" / "results.csv")
             if world.subjects[0] in row and "worst-case" not in row]  # fmt: skip
    assert kept.endswith(b"\r\n") and len(_rows(target)) == len(first), "complete rows only, up to the fault"
    assert_no_partial_output(out)
    assert command.run(world, out) == 0
    expected, found = _rows(measured / "eval" / "results.csv"), _rows(target)
    reliability.lost(len(expected), len(set(found) & set(expected)))
    assert sorted(found) == sorted(expected)


def _rows(path: Path) -> list[tuple[str, ...]]:
    """The rows of a results CSV without their wall time (the one column a rerun changes)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [tuple(v for k, v in row.items() if k != "seconds") for row in csv.DictReader(handle)]


def _evaluate_batches_of_one(world: World, out: Path) -> int:
    return evaluate(world, out / "eval", batch_size=1, example_subject=False)


@pytest.mark.parametrize("point", [0.0, 0.3, 0.7, 0.999])
def test_checkpoint_write_on_a_full_disk(tmp_path, point, reliability):
    """The training's checkpoint saver: a full disk mid-checkpoint keeps the earlier checkpoints, leaves no temporary
    file and names the checkpoint in the error (ignite's own atomic mode left ``tmp*`` files when closing failed)."""
    torch.manual_seed(0)
    net = nn.Linear(64, 64)
    engine = Engine(lambda e, b: 0.0)
    objects = {"network": net, "trainer": engine}  # as the bundles' train.json saves them: checkpoint_epoch=N.pt
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objects, save_interval=1, n_saved=2)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    first = latest_checkpoint(tmp_path)
    size = first.stat().st_size
    disk = FullDisk(tmp_path, free=int(point * size))
    with disk, pytest.raises(Exception) as caught:
        engine.run([0], max_epochs=2)
    reliability.fault("disk full during a checkpoint write")
    assert disk.failed
    user_error = find_user_error(caught.value)
    assert user_error is not None and "checkpoint_epoch=2.pt" in str(user_error), caught.value
    assert "no space left on device" in str(user_error)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert_no_partial_output(tmp_path)


def test_cli_exit_status_in_a_process(world, tmp_path, reliability):
    """The same contract seen from outside: ``python -m common`` exits with status 2 and one line on stderr."""
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from hostile_fs import FullDisk\n"
        "from common.__main__ import main\n"
        f"with FullDisk({str(out)!r}, fail_at=1):\n"
        f"    main(['data', 'datalist', {str(world.data)!r}, '--out', {str(out / 'datalist.json')!r}])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    reliability.fault("disk full (python -m common data datalist)")
    assert done.returncode == 2, done.stderr[-2000:]
    assert_one_error_line(done.returncode, done.stderr, "no space left on device", str(out / "datalist.json"))
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------ slow: more
@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_full_disk_at_every_tenth(name, world, tmp_path, capsys, reliability):
    command = COMMANDS[name]
    writes = _measure(command, world, tmp_path / "measured", capsys).writes
    for k in range(1, 10):
        out = tmp_path / f"at_{k}"
        out.mkdir()
        code, stderr = _fault_run(command, world, out, FullDisk(out, fail_at=max(1, writes * k // 10)), capsys)
        reliability.fault(f"disk full ({name})")
        assert_one_error_line(code, stderr, "no space left on device")
        assert_no_partial_output(out)


@pytest.mark.slow
def test_training_checkpoints_on_a_full_disk(tmp_path, capsys, reliability):
    """``python -m monai.bundle run training`` of the 3D baseline (two tiny epochs): the disk under ``models/`` fills at
    the middle write; one line names the file, ``models/`` holds complete files only, and the rerun resumes."""
    from common.bundles import bundle_specs
    from common.data import write_synthetic_dataset

    from ..bundles.conftest import copy_bundle, tiny_overrides
    from .cli import run_monai_cli

    datalist = str(write_synthetic_dataset(tmp_path / "data", subjects=4, seed=0, shape=24, workers=1))
    name = next(spec.name for spec in bundle_specs() if spec.net == "3d" and spec.family == "baseline")

    def train(root: Path, disk: FullDisk) -> tuple[int, str]:
        overrides = {**tiny_overrides(datalist, root), "epochs": 2, "precision": "fp32"}
        capsys.readouterr()
        with disk:
            code = run_monai_cli("training", root / "configs" / "train.json", **overrides)
        return code, capsys.readouterr().err

    measured = copy_bundle(name, tmp_path / "measured")
    disk = FullDisk(measured / "models")
    assert train(measured, disk)[0] == 0 and disk.writes > 2
    root = copy_bundle(name, tmp_path / "full")
    code, stderr = train(root, FullDisk(root / "models", fail_at=(disk.writes + 1) // 2))
    reliability.fault("disk full during training (checkpoints)")
    assert_one_error_line(code, stderr, "no space left on device", str(root / "models"))
    assert_no_partial_output(root / "models")
    code, stderr = train(root, FullDisk(root / "models"))
    assert code == 0, stderr
    assert_no_partial_output(root / "models")
    assert (root / "models" / "model.pt").is_file()


def _tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp && echo ok"],
                           capture_output=True, text=True)  # fmt: skip
    return probe.stdout.strip() == "ok"


@pytest.mark.slow
@pytest.mark.skipif(not _tmpfs_available(), reason="no user namespaces to mount a private tmpfs in")
@pytest.mark.parametrize("size_kib", [4, 32, 64])
def test_real_full_tmpfs(world, tmp_path, size_kib, reliability):
    """A real full disk: ``robustseg segment`` and ``data synth`` writing into a tiny tmpfs (in a private mount
    namespace, gone with the process), then the listing of what they left there."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    argv = {
        "segment": ["segment", "--bundle", str(world.bundle), "--input", str(world.subject_dir), "--output",
                    str(mount / "seg.nii.gz")],
        "synth": ["data", "synth", "--out", str(mount / "synthetic"), "--subjects", "2", "--shape", "24"],
    }  # fmt: skip
    before = tree_hashes(world.root)
    failed = []
    for what, args in argv.items():
        script = (
            f"mount -t tmpfs -o size={size_kib}k tmpfs {mount} || exit 99\n"
            f"{sys.executable} -m common {' '.join(repr(a) for a in args)} 2>{tmp_path / 'stderr'}\n"
            "status=$?\n"
            f"cd {mount} && find . -type f -exec sha256sum {{}} + > {tmp_path / 'listing'}\n"
            f"for f in $(find . -type f -name '*.gz'); do gzip -t \"$f\" || echo \"torn $f\"; done "
            f">> {tmp_path / 'listing'} 2>&1\n"
            "exit $status\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, timeout=600)
        reliability.fault(f"real full tmpfs of {size_kib} KiB ({what})")
        listing = (tmp_path / "listing").read_text()
        stderr = (tmp_path / "stderr").read_text()
        print(f"{what} into {size_kib} KiB: exit {done.returncode}")
        if done.returncode == 0:  # it fitted
            continue
        failed.append(what)
        assert done.returncode == 2, stderr[-2000:]
        assert_one_error_line(done.returncode, stderr, "no space left on device")
        assert "torn" not in listing and ".tmp" not in listing and ".robustseg-" not in listing, listing
    assert failed, "nothing ran out of space"
    assert tree_hashes(world.root) == before
