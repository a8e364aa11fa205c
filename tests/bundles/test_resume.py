"""Kill training mid-run, rerun the same command: it resumes from the last checkpoint and finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import copy_bundle, tiny_overrides


def _command(root, overrides) -> list[str]:
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(root / "configs/train.json")]
    for key, value in overrides.items():
        args += [f"--{key}", repr(value) if not isinstance(value, str) else value]
    return args


@pytest.mark.slow
def test_kill_and_resume(tiny_datalist, tmp_path):
    root = copy_bundle("brats_unet3d_baseline", tmp_path)
    overrides = {**tiny_overrides(tiny_datalist, root), "epochs": 4}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_command(root, overrides), cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((root / "models").glob("*checkpoint_epoch=1.pt")):
        assert proc.poll() is None, "training ended before the first checkpoint"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run, somewhere in epoch 2
    proc.wait()
    assert not list((root / "models").glob("*checkpoint_epoch=4.pt"))

    done = subprocess.run(_command(root, overrides), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "resumed from" in log and "epoch 1" in log or "epoch 2" in log
    assert "Epoch[1] Complete" not in log, "the resumed run must not redo epoch 1"
    assert list((root / "models").glob("*checkpoint_epoch=4.pt"))
