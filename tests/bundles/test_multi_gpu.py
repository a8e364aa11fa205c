"""``multi_gpu_train.json`` (DDP, DistributedSampler, rank-0 handlers) on CPU: torchrun, gloo, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from common.engines import load_weights

from .conftest import copy_bundle, tiny_overrides


@pytest.mark.slow
@pytest.mark.parametrize("name", ["brats_unet3d_baseline", "brats_unet2d_baseline"])
def test_torchrun_two_cpu_processes(name, tiny_datalist, tmp_path):
    root = copy_bundle(name, tmp_path)
    # two validation subjects: a DistributedSampler needs at least one per rank
    overrides = {**tiny_overrides(tiny_datalist, root), "epochs": 2, "val_interval": 1, "val_fraction": 0.5}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
            "-m", "monai.bundle", "run", "training", "--config_file",
            json.dumps([str(root / "configs/train.json"), str(root / "configs/multi_gpu_train.json")])]
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "models" / "model.pt").is_file()
    checkpoints = list((root / "models").glob("*checkpoint_epoch=2.pt"))
    assert len(checkpoints) == 1, "rank 0 alone writes the interval checkpoint"
    assert "network" in torch.load(checkpoints[0], weights_only=True)
    # the best model loads into the plain network, as evaluation and inference build it
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs/inference.json"))
    parser.update({"base_filters": overrides["base_filters"]})
    load_weights(parser.get_parsed_content("network_def"), root / "models" / "model.pt")
    # two ranks each saw half of the training subjects per epoch: the trainer ran the sharded loader
    log = done.stdout + done.stderr
    assert log.count("Epoch[2] Complete") >= 2, "both ranks train"
