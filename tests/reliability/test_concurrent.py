"""Two runs into one output folder at once (issue 16): the second is refused with one line naming the first, and
never interleaves rows with it; a killed holder leaves no stale lock (:mod:`common.utils.lock`).

The first run is held at a known point (its first CSV append, lock taken) in a forked process while the second
starts in the test process: deterministic, where two free-running processes would overlap only by chance (the slow
test lets them race too).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from common.errors import RobustsegError, find_user_error
from common.utils.lock import LOCK_NAME, FolderLock

from ._runs import (
    EVAL_BUNDLE,
    TRAIN_OVERRIDES,
    check_results,
    copy_training_bundle,
    evaluate,
    evaluation_args,
    exit_of,
    python_command,
    run_forked,
    tiny_data,
    train,
)

REFUSED = r"{parameter} {folder}: another {owner} \(pid {pid}, started [0-9-]+ [0-9:]+ on .+\) is writing here; wait for it or use another folder\."  # noqa: E501


def _refusal(parameter, folder, owner, pid) -> str:
    return REFUSED.format(parameter=parameter, folder=re.escape(str(folder)), owner=re.escape(owner), pid=pid)


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _holder_pid(folder) -> int | None:
    try:
        return json.loads((folder / LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _hold(folder, owner: str, parameter: str, release) -> int:
    """Fork a process that holds ``folder``'s lock until the file ``release`` exists; return its pid."""

    def work():
        with FolderLock(folder, owner, parameter):
            _wait_for(release.exists, timeout=300)

    pid = run_forked(work, wait=False)
    _wait_for(lambda: _holder_pid(folder) == pid)
    return pid


def _pause(owner, name: str, reached, release) -> None:
    """Make this (forked) process touch ``reached`` at its first call of ``owner.name`` and wait there until
    ``release`` exists."""
    original = getattr(owner, name)

    def paused(*args, **kwargs):
        setattr(owner, name, original)
        reached.touch()
        _wait_for(release.exists, timeout=300)
        return original(*args, **kwargs)

    setattr(owner, name, paused)


def test_a_second_evaluation_into_the_same_folder_is_refused_and_rows_never_interleave(
    tiny_eval, reliability, tmp_path
):
    """The worst overlap: the second evaluation starts when the first holds the folder and is about to append, and
    would finish its appends before the first makes its own (without the lock every row would then be there twice)."""
    from common.engines import results_io, robustness

    settings, reference = tiny_eval
    out = tmp_path / "out"
    files = {name: tmp_path / name for name in ("first_reached", "first_go", "second_reached", "second_go")}

    def first():
        _pause(results_io._RowWriter, "write", files["first_reached"], files["first_go"])
        evaluate(settings, out)

    def second():
        _pause(robustness, "add_worst_case_rows", files["second_reached"], files["second_go"])
        try:
            evaluate(settings, out)
        except RobustsegError as err:
            (tmp_path / "refusal").write_text(str(err))
            raise

    first_pid = run_forked(first, wait=False)
    _wait_for(files["first_reached"].exists)  # it holds the lock and has read the folder; its rows come next
    second_pid = run_forked(second, wait=False)
    _wait_for(lambda: files["second_reached"].exists() or (tmp_path / "refusal").exists())
    files["first_go"].touch()
    assert exit_of(os.waitpid(first_pid, 0)[1]) == 0
    files["second_go"].touch()
    second_status = exit_of(os.waitpid(second_pid, 0)[1])
    reliability.fault("a second evaluation into a folder another one is writing")
    check_results(out / "results.csv", reference, reliability)
    refusal = (tmp_path / "refusal").read_text() if (tmp_path / "refusal").exists() else None
    assert second_status == 1 and refusal is not None, "the second evaluation must be refused"
    assert re.fullmatch(_refusal("output_dir", out, "evaluation", first_pid), refusal), refusal
    assert not (out / LOCK_NAME).exists(), "the lock file goes with the run that held it"


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    folder, release = tmp_path / "out", tmp_path / "release"
    pid = _hold(folder, "evaluation", "output_dir", release)
    with pytest.raises(RobustsegError, match=_refusal("output_dir", folder, "evaluation", pid)):
        FolderLock(folder, "evaluation", "output_dir").acquire()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert (folder / LOCK_NAME).exists(), "a killed holder cannot remove its lock file..."
    with FolderLock(folder, "evaluation", "output_dir") as lock:  # ...but the kernel dropped its lock
        assert lock.held and _holder_pid(folder) == os.getpid()
    assert list(folder.iterdir()) == []


def test_a_refused_run_leaves_no_folder_behind(tmp_path):
    """A lock taken on a folder that did not exist creates it, and removes it again when the run leaves it empty."""
    folder = tmp_path / "new" / "out"
    with FolderLock(folder, "robustseg certify", "out"):
        assert folder.is_dir()
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("holder", "parameter"), [("evaluation", "output_dir"), ("robustseg certify", "out")])
def test_certify_into_a_folder_another_run_writes_is_refused(holder, parameter, tiny_eval, reliability, tmp_path):
    from common.engines.certification import run_certification

    settings, _ = tiny_eval
    out, release = tmp_path / "out", tmp_path / "release"
    pid = _hold(out, holder, parameter, release)
    try:
        with pytest.raises(RobustsegError, match=_refusal("out", out, holder, pid)):
            run_certification(settings["model_bundles"][0], settings["datalist"], out, n=4, n0=2,
                              config_files=settings["model_config_files"], overrides=settings["model_overrides"])
        reliability.fault(f"robustseg certify into a folder held by: {holder}")
        assert not (out / "results.csv").exists()
    finally:
        release.touch()
        os.waitpid(pid, 0)


def test_a_second_training_of_one_bundle_is_refused(reliability, tmp_path):
    root = copy_training_bundle(tmp_path)
    models, release = root / "models", tmp_path / "release"
    overrides = {**TRAIN_OVERRIDES, "datalist": tiny_data(tmp_path / "data")}
    pid = _hold(models, "training", "ckpt_dir", release)
    try:
        with pytest.raises(Exception) as raised:  # noqa: B017 - MONAI wraps it; the CLI prints the RobustsegError
            train(root, overrides)
        reliability.fault("a second training of one bundle")
        assert re.fullmatch(_refusal("ckpt_dir", models, "training", pid), str(find_user_error(raised.value)))
        assert sorted(p.name for p in models.iterdir()) == [LOCK_NAME], "the second one wrote nothing"
    finally:
        release.touch()
        os.waitpid(pid, 0)


# ---- slow: the real commands ---------------------------------------------------------------------------------------

def _evaluation_command(settings, out) -> list[str]:
    return python_command("monai.bundle", evaluation_args(settings, out))


@pytest.mark.slow
def test_two_evaluation_commands_started_together_never_interleave(tiny_eval, reliability, tmp_path):
    """Two real ``monai.bundle run evaluating`` commands into one folder, the second started a seeded random moment
    after the first, three times: each time one is refused with one line (or, if the first is done already, the
    second only resumes it), and the rows are those of one run."""
    settings, reference = tiny_eval
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(16)
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        command = _evaluation_command(settings, out)
        first = subprocess.Popen(command, cwd=EVAL_BUNDLE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0, 4))
        second = subprocess.run(command, cwd=EVAL_BUNDLE, env=env, capture_output=True, text=True, timeout=600)
        _, first_err = first.communicate(timeout=600)
        outcomes = sorted([first.returncode, second.returncode])
        reliability.fault("two evaluation commands into one folder at once")
        assert outcomes in ([0, 0], [0, 1]), (first_err[-2000:], second.stderr[-2000:])
        if outcomes == [0, 1]:
            refused = first_err if first.returncode else second.stderr
            assert re.search(r"^error: output_dir .*: another evaluation \(pid \d+", refused, re.M), refused[-2000:]
            assert "Traceback" not in refused
        check_results(out / "results.csv", reference, reliability)


@pytest.mark.slow
def test_a_torchrun_evaluation_into_a_locked_folder_stops_every_rank_before_writing(tiny_eval, reliability, tmp_path):
    settings, _ = tiny_eval
    out, release = tmp_path / "out", tmp_path / "release"
    pid = _hold(out, "evaluation", "output_dir", release)
    try:
        args = _evaluation_command(settings, out)[3:]  # python -c CODE | monai.bundle args
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                   "monai.bundle", *args]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(command, cwd=EVAL_BUNDLE, env=env, capture_output=True, text=True, timeout=600)
        reliability.fault("a torchrun evaluation into a folder another one is writing")
        assert done.returncode != 0
        refused = r"^(?:\[rank\d\]: )?error: output_dir .*: another evaluation \(pid (\d+)"  # torchrun tags the rank
        refusals = re.findall(refused, done.stderr, re.M)
        assert refusals == [str(pid), str(pid)], done.stderr[-3000:]  # both ranks, one line each
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], "nothing written"
    finally:
        release.touch()
        os.waitpid(pid, 0)
