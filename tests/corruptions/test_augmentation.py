"""The MR-artifact augmentation (common/corruptions/augmentation.py): probability, draws, determinism, meta."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose
from monai.utils import set_determinism

from common.corruptions import CORRUPTIONS, SEVERITIES, RandMRArtifact, RandMRArtifactd, corrupt
from common.errors import RobustsegError

SHAPES = {"3d": (4, 16, 16, 16), "2d": (4, 24, 24)}


def image(net: str, seed: int = 0) -> torch.Tensor:
    """Positive, varied intensities in [0.1, 0.9]: every corruption (a zeroed slice included) changes some voxel."""
    generator = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(SHAPES[net], generator=generator)


def meta_image(net: str) -> MetaTensor:
    affine = torch.diag(torch.tensor([1.5, 2.0, 3.0, 1.0], dtype=torch.float64))
    return MetaTensor(image(net), affine=affine, meta={"filename_or_obj": "synth_000.nii.gz"})


@pytest.mark.parametrize("net", list(SHAPES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probability_zero_is_the_identity(net, seed):
    x = meta_image(net)
    transform = RandMRArtifactd(keys="image", prob=0.0).set_random_state(seed=seed)
    for _ in range(5):
        out = transform({"image": x})["image"]
        assert torch.equal(out, x) and transform.last is None


@pytest.mark.parametrize("net", list(SHAPES))
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_probability_one_changes_the_image_with_every_corruption(net, name):
    x = image(net)
    transform = RandMRArtifactd(keys="image", prob=1.0, corruptions=[name], severities=[1]).set_random_state(seed=0)
    out = transform({"image": x})["image"]
    assert transform.last is not None and transform.last[:2] == (name, 1)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x), f"{name} at severity 1 left the {net} image unchanged"
    assert torch.equal(x, image(net)), "the input is not modified in place"


@pytest.mark.parametrize("net", list(SHAPES))
def test_the_output_is_the_library_corruption_of_the_draw(net):
    """The transform adds only the draw: the result is corrupt(image, name, severity, seed) of what it drew."""
    x = image(net)
    transform = RandMRArtifactd(keys="image", prob=1.0).set_random_state(seed=5)
    for _ in range(6):
        out = transform({"image": x})["image"]
        name, severity, seed = transform.last
        torch.testing.assert_close(out, corrupt(x, name, severity, seed), rtol=0, atol=0)


def _draws(transform, x, n):
    outs, draws = [], []
    for _ in range(n):
        outs.append(transform({"image": x})["image"])
        draws.append(transform.last)
    return outs, draws


@pytest.mark.parametrize("net", list(SHAPES))
def test_same_seed_same_draws_and_outputs(net):
    x = image(net)
    first = _draws(RandMRArtifactd("image", prob=0.5).set_random_state(seed=11), x, 12)
    second = _draws(RandMRArtifactd("image", prob=0.5).set_random_state(seed=11), x, 12)
    assert first[1] == second[1]
    assert all(torch.equal(a, b) for a, b in zip(first[0], second[0]))
    other = _draws(RandMRArtifactd("image", prob=0.5).set_random_state(seed=12), x, 12)
    assert other[1] != first[1], "another seed draws otherwise"


def test_monai_determinism_through_compose_and_dataloader():
    """set_determinism + MONAI's DataLoader seed the transform (set_rnd): two epochs of two loaders agree."""
    data = [{"image": image("3d", seed=s)} for s in range(4)]

    def epoch() -> list[torch.Tensor]:
        set_determinism(seed=0)
        loader = DataLoader(Dataset(data, Compose([RandMRArtifactd("image", prob=0.5)])), batch_size=1, num_workers=0)
        return [batch["image"] for batch in loader]

    try:
        first, second = epoch(), epoch()
    finally:
        set_determinism(seed=None)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    changed = [not torch.equal(out[0], item["image"]) for out, item in zip(first, data)]
    assert any(changed), "with prob 0.5 at least one of these four samples is corrupted (seed 0)"


def test_only_the_listed_corruptions_and_severities_are_drawn():
    names, severities = ["blur", "gamma", "missing_flair"], [2, 4]
    transform = RandMRArtifactd("image", prob=0.5, corruptions=names, severities=severities).set_random_state(seed=3)
    x = image("2d")
    _, draws = _draws(transform, x, 300)
    applied = [d for d in draws if d is not None]
    assert {d[0] for d in applied} == set(names), "every listed corruption is drawn, nothing else"
    assert {d[1] for d in applied} == set(severities)
    assert all(0 <= d[2] < 2**32 for d in applied)
    assert 0.4 < len(applied) / len(draws) < 0.6, "corrupted with probability 0.5"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prob": -0.1}, r"prob must be a finite number in \[0, 1\], got -0.1"),
        ({"prob": 1.5}, r"prob must be a finite number in \[0, 1\], got 1.5"),
        ({"prob": float("nan")}, r"prob must be a finite number in \[0, 1\], got nan"),
        ({"prob": "0.5"}, r"prob must be a finite number in \[0, 1\], got '0.5'"),
        ({"corruptions": "gauss"}, r"corruptions must be one of \[.*'rician_noise'.*\], got 'gauss'"),
        ({"corruptions": ["blur", "motoin"]}, r"corruptions must be one of .*got 'motoin' \(did you mean 'motion'\?\)"),
        ({"corruptions": []}, r"corruptions must be 'all', a corruption name or a non-empty list of them, got \[\]"),
        ({"corruptions": None}, r"corruptions must be 'all', a corruption name or a non-empty list .*got None"),
        ({"severities": [0, 1]}, r"severities must be an integer in \[1, 5\], got 0"),
        ({"severities": [6]}, r"severities must be an integer in \[1, 5\], got 6"),
        ({"severities": [2.0]}, r"severities must be an integer in \[1, 5\], got 2.0"),
        ({"severities": []}, r"severities must be a non-empty list of integers 1-5, got \[\]"),
        ({"severities": "3"}, r"severities must be a non-empty list of integers 1-5, got '3'"),
    ],
)
@pytest.mark.parametrize("cls", [RandMRArtifactd, RandMRArtifact])
def test_bad_argument_is_one_line_naming_it(cls, kwargs, message):
    args = {"keys": "image"} if cls is RandMRArtifactd else {}
    with pytest.raises(RobustsegError, match=message) as caught:
        cls(**args, **kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("corruptions, expected", [("all", list(CORRUPTIONS)), ("motion", ["motion"]),
                                                   (["gamma", "blur", "gamma"], ["blur", "gamma"])])  # fmt: skip
def test_corruption_lists_are_read_in_registry_order(corruptions, expected):
    transform = RandMRArtifact(corruptions=corruptions, severities=[5, 1, 5])
    assert list(transform.corruptions) == expected and transform.severities == (1, 5)
    assert RandMRArtifact().severities == SEVERITIES


@pytest.mark.parametrize("net", list(SHAPES))
def test_metatensor_keeps_affine_and_meta_and_other_keys_are_untouched(net):
    x = meta_image(net)
    label = MetaTensor(torch.zeros((1, *SHAPES[net][1:])), affine=x.affine)
    transform = RandMRArtifactd(keys="image", prob=1.0).set_random_state(seed=4)
    out = transform({"image": x, "label": label, "id": "synth_000"})
    assert isinstance(out["image"], MetaTensor)
    torch.testing.assert_close(out["image"].affine, x.affine)
    assert out["image"].meta["filename_or_obj"] == "synth_000.nii.gz"
    assert not torch.equal(out["image"].as_tensor(), x.as_tensor())
    assert out["label"] is label and out["id"] == "synth_000"


def test_keys_share_one_draw_and_numpy_input_becomes_a_tensor():
    x = image("3d")
    transform = RandMRArtifactd(keys=["a", "b"], prob=1.0).set_random_state(seed=2)
    out = transform({"a": x, "b": x.numpy().copy()})
    assert isinstance(out["b"], torch.Tensor)
    assert torch.equal(torch.as_tensor(out["a"]), torch.as_tensor(out["b"])), "one corruption, severity and seed"


def test_array_transform_draws_from_its_own_state():
    x = image("3d")
    a, b = RandMRArtifact(prob=1.0).set_random_state(seed=9), RandMRArtifact(prob=1.0).set_random_state(seed=9)
    assert all(torch.equal(a(x), b(x)) and a.last == b.last for _ in range(4))
    state = np.random.RandomState(0)
    c = RandMRArtifact(prob=1.0).set_random_state(state=state)
    assert c.R is state
