"""Fixtures for the attack tests: a tiny synthetic tumour problem and a toy 3D net trained on it for a few seconds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.attacks import ATTACKS, LOSSES, Attack, make_attack
from common.data.labels import labels_to_indices
from common.errors import RobustsegError

SIZE = 16

CONTRACT_SETTINGS: dict[str, dict[str, Any]] = {
    "i-FGSM": {"steps": 3},
    "ti-FGSM": {"steps": 3},
    "PGD": {"steps": 3},
    "APGD": {"steps": 4},
}
"""Settings beyond ``epsilon`` that the shared contract tests (test_base.py) build an attack with, by registry name,
only where one is needed: three steps keep the iterative attacks fast. A registry entry whose constructor requires
more than ``epsilon`` must be given its settings here (test_base.py fails until it is)."""

TARGETED = {"ti-FGSM"}
"""Registry names of the attacks that descend their loss towards a target instead of ascending it."""

GRADIENT_FREE = {"random-sign"}
"""Registry names of the controls that take no gradient (their records have a NaN zero-gradient fraction)."""

RANDOM_START = {"PGD", "APGD"}
"""Registry names of the attacks whose first gradient is taken at a random start, not at the clean input."""


def registered_attacks() -> list[str]:
    """The attacks the contract tests run for: every name of ``common.attacks.registry.ATTACKS``, read when called."""
    return list(ATTACKS)


def build_attack(name: str, epsilon: float, **settings: Any) -> Attack:
    """The registry's attack ``name`` through :func:`make_attack`, with its contract settings, then ``settings``."""
    return make_attack({"name": name, "epsilon": epsilon, **CONTRACT_SETTINGS.get(name, {}), **settings})


def build_l2_attack(name: str, epsilon: float, **settings: Any) -> Attack | None:
    """The registry's attack ``name`` in the L2 threat model (``norm="l2"``), built as :func:`build_attack` does; or
    ``None`` for an attack that supports only L-inf, after checking that it refuses ``norm="l2"`` in one line. So
    every registry entry takes part in the L2 contract tests: by meeting them, or by refusing the threat model."""
    if "l2" in ATTACKS[name].norms:
        return build_attack(name, epsilon, norm="l2", **settings)
    with pytest.raises(RobustsegError, match=r"norm must be one of \['linf'\] for .*, got 'l2'\.") as info:
        build_attack(name, epsilon, norm="l2", **settings)
    assert "\n" not in str(info.value)
    return None


def l2_distance(adversarial: Tensor, images: Tensor) -> Tensor:
    """Per sample ``(B,)``, the L2 norm of ``adversarial - images`` over all channels and voxels."""
    return (adversarial - images).flatten(1).norm(dim=1)


# mean intensity of each BraTS label (rows: 0, 1, 2, 4) in each contrast (t1, t1ce, t2, flair)
_MEANS = torch.tensor(
    [
        [0.40, 0.40, 0.30, 0.30],
        [0.25, 0.20, 0.70, 0.55],
        [0.35, 0.35, 0.80, 0.90],
        [0.35, 0.90, 0.60, 0.60],
    ]
)


def make_tumours(n: int, seed: int, size: int = SIZE) -> tuple[Tensor, Tensor]:
    """``n`` volumes (n, 4, size^3) in [0, 1] with a spherical tumour: core 1, enhancing rim 4, oedema 2."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    images, labels = [], []
    for _ in range(n):
        centre = size / 2 + (torch.rand(3, 1, 1, 1, generator=generator) - 0.5) * size / 4
        radius = ((grid - centre) ** 2).sum(0).sqrt() / (0.8 + 0.4 * torch.rand(1, generator=generator))
        index = torch.full(radius.shape, 0)
        index[radius < 5.5] = 2
        index[radius < 3.5] = 3
        index[radius < 2.2] = 1
        image = _MEANS[index].permute(3, 0, 1, 2) + 0.05 * torch.randn(4, size, size, size, generator=generator)
        images.append(image.clamp(0, 1))
        labels.append(torch.tensor([0, 1, 2, 4])[index][None])
    return torch.stack(images), torch.stack(labels)


class TinyNet(nn.Sequential):
    """Three 3D convolutions: 4 contrasts in, 4 BraTS channels out."""

    def __init__(self, width: int = 8, norm: bool = False, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.Conv3d(4, width, 3, padding=1)]
        if norm:
            layers.append(nn.BatchNorm3d(width))
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Conv3d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv3d(width, 4, 1))
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # channels-last convolutions are an order of magnitude faster on the CPU build the tests run on
        return super().forward(x.contiguous(memory_format=torch.channels_last_3d))


class Scaled(nn.Module):
    """A network whose logits are multiplied by ``factor``: a distilled student deployed at T = 1."""

    def __init__(self, net: nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.factor


@pytest.fixture(scope="session")
def tumours() -> tuple[Tensor, Tensor]:
    """Two test volumes (2, 4, 16^3) in [0, 1] and their BraTS labels (2, 1, 16^3)."""
    return make_tumours(2, seed=1)


@pytest.fixture(scope="session")
def trained_net() -> nn.Module:
    """A TinyNet trained with cross-entropy for a few seconds on the synthetic tumours (about 98 % voxel accuracy).

    It is in eval mode; tests must leave it as found (and do check that attacks do).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = TinyNet()
        images, labels = make_tumours(4, seed=0)
        indices = labels_to_indices(labels)[:, 0]
        optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
        for _ in range(100):
            optimizer.zero_grad()
            F.cross_entropy(net(images), indices).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    net.zero_grad(set_to_none=True)
    return net.eval()


@pytest.fixture(scope="session")
def loss_of() -> Callable[..., float]:
    """``loss_of(model, images, labels, loss="soft_dice")``: an attack loss evaluated without gradients."""

    def evaluate(model: nn.Module, images: Tensor, labels: Tensor, loss: str = "soft_dice") -> float:
        with torch.no_grad():
            return float(LOSSES[loss]()(model(images), labels))

    return evaluate


@pytest.fixture(scope="session")
def make_net() -> Callable[..., TinyNet]:
    """``make_net(seed=0, **TinyNet kwargs)``: a fresh, untrained TinyNet."""

    def make(seed: int = 0, **kwargs) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(**kwargs)

    return make


@pytest.fixture(scope="session")
def scaled() -> type[Scaled]:
    """The :class:`Scaled` wrapper (logits times a factor): a simulated distilled student."""
    return Scaled
