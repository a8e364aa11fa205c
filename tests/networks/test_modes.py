"""eval_mode (common/networks/modes.py): eval inside, every submodule's own flag back after, even on error."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from torch import nn

from common.networks.modes import eval_mode


def _net(training: bool) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2)))
    net.train(training)
    net[2].eval()  # a submodule the caller keeps in eval mode
    return net


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fail", [False, True])
def test_eval_inside_and_every_flag_restored(training, fail):
    net = _net(training)
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError) if fail else nullcontext():
        with eval_mode(net):
            assert not any(m.training for m in net.modules())
            if fail:
                raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before


def test_a_plain_function_is_left_alone():
    with eval_mode(lambda x: x):
        pass
