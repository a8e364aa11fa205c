"""Kill -9 at seeded random points of a training and of an evaluation (issue 16): rerunning the same command finishes,
no checkpoint is corrupt (each loads with ``weights_only=True``), and ``results.csv`` holds the rows of an
uninterrupted run, none torn, written twice or missing.

The default run kills a training inside a checkpoint write and an evaluation inside a CSV append, each in a forked copy
of the test process (no imports to wait for; :func:`_runs.run_forked`), and reruns the same call in the test process.
The slow tests run the real commands (``python -m monai.bundle run training`` / ``evaluating``, ``torchrun``) and kill
them several times over at seeded random points: inside checkpoint and CSV writes, just before the rename of an
atomic write, during the merge of the torchrun shards, and at random times.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ._runs import (
    EVAL_BUNDLE,
    KILL_ENV,
    TRAIN_OVERRIDES,
    check_partial,
    check_results,
    copy_training_bundle,
    evaluate,
    evaluation_args,
    leftovers,
    load_every_checkpoint,
    python_command,
    read_rows,
    run_forked,
    tiny_data,
    tiny_evaluation,
    train,
    train_command,
)

SEED = 16
"""The seed of every kill point drawn here (issue 16)."""
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def training_data(tmp_path_factory) -> str:
    """Four tiny subjects: three to train on, one to validate."""
    return tiny_data(tmp_path_factory.mktemp("kill_train_data"))


def _resumed_from(monkeypatch) -> list[str]:
    """Record the checkpoint each resume of this process starts from (``None``: from scratch)."""
    from common.engines import checkpoint

    starts: list[str] = []
    call = checkpoint.ResumeFromLatest.__call__

    def recording(self, engine):
        latest = checkpoint.latest_checkpoint(self.ckpt_dir) if self.enabled else None
        starts.append(latest.name if latest is not None else None)
        return call(self, engine)

    monkeypatch.setattr(checkpoint.ResumeFromLatest, "__call__", recording)
    return starts


# ---- default run: one kill each, in a forked process ----------------------------------------------------------------


def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_one_and_the_rerun_resumes(
    training_data, reliability, tmp_path, monkeypatch
):
    root = copy_training_bundle(tmp_path)
    overrides = {**TRAIN_OVERRIDES, "datalist": training_data}
    fraction = random.Random(SEED).uniform(0.05, 0.95)
    assert run_forked(lambda: train(root, overrides), kill=f"checkpoint:2:{fraction:.3f}") == KILLED
    reliability.fault("kill -9 inside a checkpoint write (training)")
    models = root / "models"
    # what a resume will read is whole: the epoch-1 checkpoint, not a truncated epoch-2 one
    assert "checkpoint_epoch=1.pt" in " ".join(load_every_checkpoint(models))
    assert not list(models.glob("*checkpoint_epoch=2.pt"))

    starts = _resumed_from(monkeypatch)
    train(root, overrides)  # the same command again
    assert len(starts) == 1 and str(starts[0]).endswith("checkpoint_epoch=1.pt"), f"resumed from {starts}"
    names = load_every_checkpoint(models)
    assert "model.pt" in names and any(n.endswith("checkpoint_epoch=2.pt") for n in names)
    assert json.loads((models / "training_settings.json").read_text())["base_filters"] == 2


def test_a_kill_inside_a_csv_append_loses_and_repeats_no_row(tiny_eval, reliability, tmp_path):
    settings, reference = tiny_eval
    rng = random.Random(SEED)
    nth, fraction = rng.randint(1, 3), rng.uniform(0.05, 0.95)  # 3 appends: one per subject
    out = tmp_path / "out"
    assert run_forked(lambda: evaluate(settings, out), kill=f"append:{nth}:{fraction:.3f}") == KILLED
    reliability.fault("kill -9 inside a CSV append (evaluation)")
    assert not (out / "results.csv").read_text().endswith("\n"), "the kill should leave a torn line"

    evaluate(settings, out)  # the same call again
    check_results(out / "results.csv", reference, reliability)
    assert not leftovers(out)


# ---- slow: the real commands, killed again and again --------------------------------------------------------------


def _killed_run(command: list[str], cwd: Path, kill: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``command`` with kill point ``kill`` (``"after:S"``: SIGKILL its process group S seconds after the start;
    else the kill switch's point, armed through the environment); return its exit status and standard error."""
    timed = kill.startswith("after:")
    proc = subprocess.Popen(command, cwd=cwd, env={**env, **({} if timed else {KILL_ENV: kill})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        if timed:
            try:
                proc.wait(timeout=float(kill.split(":")[1]))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stderr.decode(errors="replace")


def _kill_then_finish(command, cwd, kills, check, what, reliability, env=None, dies=lambda s, e: s == KILLED):
    """Run ``command`` once per kill point, each killed there (``dies``: how a killed run ends) and ``check()`` after
    it, then once more without a kill: that run must finish. Return its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    env.pop(KILL_ENV, None)
    for kill in kills:
        status, stderr = _killed_run(command, cwd, kill, env)
        if dies(status, stderr):
            reliability.fault(what)
        else:  # only a timed kill may come too late (after the end, or before the run did anything)
            assert kill.startswith("after:"), f"{kill}: exit {status}: {stderr[-3000:]}"
        check()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_training_killed_at_random_points_finishes_with_whole_checkpoints(training_data, reliability, tmp_path):
    """``python -m monai.bundle run training`` killed five times (inside ``model.pt``, inside an interval checkpoint,
    before the rename of one, before the rename of the training record, at a random time), then run to the end."""
    root = copy_training_bundle(tmp_path)
    models = root / "models"
    rng = random.Random(SEED)
    kills = [
        f"model:1:{rng.uniform(0.05, 0.95):.3f}",  # a fresh run: the best model of epoch 1
        f"checkpoint:1:{rng.uniform(0.05, 0.95):.3f}",  # a fresh run again: the interval checkpoint of epoch 1
        "replace=checkpoint_epoch:2",  # whole in its temporary file, not yet renamed
        f"after:{rng.uniform(9, 15):.1f}",  # resumed from epoch 1: anywhere
        "replace=training_settings.json:1",  # the record, written once the resume is checked
    ]

    def check():  # after every kill: what is there loads, and the record is whole
        load_every_checkpoint(models)
        if (models / "training_settings.json").exists():
            json.loads((models / "training_settings.json").read_text())

    command = train_command(root, {**TRAIN_OVERRIDES, "datalist": training_data, "epochs": 4})
    log = _kill_then_finish(command, root, kills, check, "kill -9 at a seeded point of a training (command)",
                            reliability)  # fmt: skip
    assert "resumed from" in log
    names = load_every_checkpoint(models)
    assert "model.pt" in names and any(n.endswith("checkpoint_epoch=4.pt") for n in names), names
    assert not list(models.glob(".*.tmp")), "the final run removes what the killed saves left"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A baseline and a distilled tiny bundle (white-box, adaptive and transfer rows), four subjects, and the rows of
    their uninterrupted evaluation."""
    folder = tmp_path_factory.mktemp("kill_eval_two")
    settings = tiny_evaluation(folder, models=2, subjects=4)
    evaluate(settings, folder / "reference")
    return settings, read_rows(folder / "reference" / "results.csv")


@pytest.mark.slow
def test_evaluation_killed_at_random_points_finishes_with_the_rows_of_one_run(two_models, reliability, tmp_path):
    """``python -m monai.bundle run evaluating`` killed seven times: before the rename of ``settings.json``, of the
    example index, of ``results.csv`` repaired after a torn append, and of ``results.csv`` with its worst-case rows;
    inside CSV appends; at a random time."""
    settings, reference = two_models
    out = tmp_path / "out"
    rng = random.Random(SEED)
    kills = [
        "replace=settings.json:1",  # before any row
        "replace=index.json:1",  # the first subject's rows are in, its example volumes too, not their index
        f"append:{rng.randint(1, 2)}:{rng.uniform(0.05, 0.95):.3f}",  # the next subjects' appends (one per subject)
        "replace=results.csv:1",  # the repair of the torn line the append left
        f"append:1:{rng.uniform(0.05, 0.95):.3f}",  # repaired, then torn again
        "replace=results.csv:2",  # repaired, the rest appended, then the worst-case rows added at the end
        f"after:{rng.uniform(8, 12):.1f}",  # anywhere (a timed kill may also come before or after the work)
    ]
    command = python_command("monai.bundle", evaluation_args(settings, out))

    def check():  # after every kill: no row twice or wrong (a torn last line is allowed), settings whole
        check_partial(out, reference)
        if (out / "settings.json").exists():
            json.loads((out / "settings.json").read_text())

    log = _kill_then_finish(command, EVAL_BUNDLE, kills, check, "kill -9 at a seeded point of an evaluation (command)",
                            reliability)  # fmt: skip
    check_results(out / "results.csv", reference, reliability)
    assert "Table 1" in log and (out / "tables").is_dir()
    assert len(list((out / "examples").glob("*/index.json"))) == 1
    assert not leftovers(out)


@pytest.mark.slow
def test_torchrun_evaluation_killed_in_a_shard_append_and_in_the_merge_finishes(two_models, reliability, tmp_path):
    """Two ranks under ``torchrun``: rank 1 killed inside its part-file append, rank 0 inside the merge (before the
    merged ``results.csv`` is renamed into place, then after the first part file is removed); the rerun finishes with
    the rows of one uninterrupted single-process run."""
    settings, reference = two_models
    out = tmp_path / "out"
    rng = random.Random(SEED)
    kills = [
        f"append:1:{rng.uniform(0.05, 0.95):.3f}@1",
        "replace=results.csv:1@0",  # the merge: the parts are read, the merged file not yet in place
        "unlink=results.part:1@0",  # the merge: results.csv in place, one part file removed, the other not
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(_torchrun_script(tmp_path)), *evaluation_args(settings, out)]  # fmt: skip

    def killed(status: int, stderr: str) -> bool:  # torchrun reports the rank's signal, then stops the other
        return status != 0 and re.search(r"exitcode\s*:\s*-9|Signal 9", stderr) is not None

    def check():
        check_partial(out, reference)
        json.loads((out / "settings.json").read_text())

    _kill_then_finish(command, EVAL_BUNDLE, kills, check, "kill -9 of a torchrun rank (shard append, merge)",
                      reliability, dies=killed)  # fmt: skip
    check_results(out / "results.csv", reference, reliability)
    assert not list(out.glob("results.part*")) and not leftovers(out)


def _torchrun_script(folder: Path) -> Path:
    """A script for torchrun that arms the kill switch, then runs ``monai.bundle`` with its arguments."""
    script = folder / "monai_bundle.py"
    script.write_text(python_command("monai.bundle", [])[2])
    return script
