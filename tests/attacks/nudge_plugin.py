"""A pytest plugin that registers one more attack before collection (``-p nudge_plugin``, with this folder on the
Python path): test_base.py runs pytest with it to show that a new registry entry joins the contract tests."""

from __future__ import annotations

from torch import Tensor

from common.attacks import ATTACKS, Attack


class Nudge(Attack):
    """A registry newcomer: one signed-gradient step, as FGSM."""

    name = "nudge"

    def step(self, images: Tensor, grad: Tensor, step_size: Tensor | float) -> Tensor:
        return images + step_size * grad.sign()


def pytest_configure(config) -> None:
    ATTACKS[Nudge.name] = Nudge
