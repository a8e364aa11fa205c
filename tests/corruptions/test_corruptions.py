"""The corruption library (common/corruptions): argument checks, determinism, PSNR falling with severity, shapes."""

from __future__ import annotations

import math
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import torchio as tio
from monai.data import MetaTensor

from common.corruptions import CORRUPTIONS, MISSING_MODALITY, SEVERITIES, corrupt, corruption_seed, severity_table
from common.errors import RobustsegError
from common.metrics.image_quality import psnr

NAMES = list(CORRUPTIONS)
RANDOM = [name for name, c in CORRUPTIONS.items() if c.random]

# mean intensity of background, brain, oedema, tumour core in each contrast (t1, t1ce, t2, flair)
_MEANS = torch.tensor(
    [
        [0.00, 0.00, 0.00, 0.00],
        [0.45, 0.40, 0.35, 0.30],
        [0.35, 0.35, 0.80, 0.90],
        [0.30, 0.90, 0.60, 0.60],
    ]
)


def synthetic_subject(size: int = 32, seed: int = 0, spatial_dims: int = 3) -> torch.Tensor:
    """A skull-stripped head in [0, 1]: zero background, an ellipsoidal brain with a smooth texture, a tumour."""
    generator = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, size)] * spatial_dims
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    scale = torch.tensor([0.8, 0.9, 0.75][:spatial_dims]).reshape(-1, *[1] * spatial_dims)
    brain = ((grid / scale) ** 2).sum(0) < 1
    centre = (torch.rand(spatial_dims, generator=generator) - 0.5).reshape(-1, *[1] * spatial_dims) * 0.6
    radius = ((grid - centre) ** 2).sum(0).sqrt()
    index = brain.long()
    index[brain & (radius < 0.35)] = 2
    index[brain & (radius < 0.18)] = 3
    image = _MEANS[index].movedim(-1, 0)
    texture = 0.08 * torch.sin(6 * grid[0] + 3 * seed) * torch.cos(5 * grid[-1])
    noise = 0.02 * torch.randn(image.shape, generator=generator)
    return ((image + texture + noise) * brain).clamp(0, 1)


def psnr_of(clean: torch.Tensor, corrupted: torch.Tensor) -> float:
    return float(psnr(clean[None], corrupted[None])[0])


@pytest.fixture(scope="module")
def subject() -> torch.Tensor:
    return synthetic_subject()


# -- arguments ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gauss", "Gibbs", "", None, 3])
def test_bad_name_is_one_line_listing_the_names(name, subject):
    with pytest.raises(RobustsegError, match="corruption name must be one of") as caught:
        corrupt(subject, name, 1)
    assert "\n" not in str(caught.value) and "'rician_noise'" in str(caught.value)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3", None])
def test_bad_severity_is_one_line_naming_the_range(severity, subject):
    with pytest.raises(RobustsegError, match=r"severity must be an integer in \[1, 5\]") as caught:
        corrupt(subject, "blur", severity)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_bad_seed(seed, subject):
    with pytest.raises(RobustsegError, match="seed must be an integer"):
        corrupt(subject, "rician_noise", 1, seed)


@pytest.mark.parametrize(
    "image", [torch.zeros(8, 8), torch.zeros(1, 4, 8, 8, 8), torch.zeros(4, 8, 8, dtype=torch.int64)]
)
def test_bad_image(image):
    with pytest.raises(RobustsegError, match="image must be a floating-point tensor"):
        corrupt(image, "blur", 1)


def test_seed_helper_checks_its_arguments():
    with pytest.raises(RobustsegError, match="corruption name"):
        corruption_seed("s1", "nope", 1)
    with pytest.raises(RobustsegError, match="severity"):
        corruption_seed("s1", "blur", 9)


def test_seed_helper_is_stable_and_distinguishes_its_inputs():
    """CRC-32, so the value is fixed across processes (Python's hash() of a str is salted per process)."""
    assert corruption_seed("BraTS19_2013_2_1", "rician_noise", 3) == 774513183
    assert corruption_seed("s1", "blur", 2) == zlib.crc32(b"s1/blur/2")
    seeds = {corruption_seed(s, n, v) for s in ("a", "b") for n in NAMES for v in SEVERITIES}
    assert len(seeds) == 2 * len(NAMES) * len(SEVERITIES)
    assert all(0 <= seed < 2**32 for seed in seeds)


# -- the table ---------------------------------------------------------------------------------------------------------


def test_every_corruption_has_five_documented_levels():
    """The registry's docstring table lists every parameter of every level, with the values the code uses."""
    from common.corruptions import registry

    rows = severity_table()
    assert len(rows) == len(NAMES) * 5 and [r["severity"] for r in rows[:5]] == [1, 2, 3, 4, 5]
    documented = {}
    for line in registry.__doc__.splitlines():
        words = line.split()
        if len(words) == 7 and words[0] in CORRUPTIONS and words[1] != "(PSNR":
            documented[words[0], words[1]] = [float(w) for w in words[2:]]
    for name, corruption in CORRUPTIONS.items():
        for key in corruption.levels[0]:
            values = [float(corruption.params(s)[key]) for s in SEVERITIES]
            assert documented.pop((name, key), None) == values, f"{name}.{key}: the docstring table is out of date"
    assert not documented, f"documented parameters the code does not have: {sorted(documented)}"
    with pytest.raises(TypeError):
        CORRUPTIONS["blur"].levels[0]["sigma"] = 9.0  # the table is read-only


def test_the_issue_list_is_covered():
    assert {"bias_field", "gibbs", "kspace_spike", "rician_noise", "blur", "downsample", "gamma"} <= set(NAMES)
    assert {"ghosting", "motion"} <= set(NAMES)
    assert set(MISSING_MODALITY) <= set(NAMES) and len(MISSING_MODALITY) == 4


# -- the contract, for every corruption --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_and_input_untouched(name, dtype, subject):
    image = subject.to(dtype)
    before = image.clone()
    out = corrupt(image, name, 3, seed=7)
    assert torch.equal(image, before), "the input was modified"
    assert out.shape == image.shape and out.dtype == dtype and out.device == image.device
    assert type(out) is torch.Tensor and out.data_ptr() != image.data_ptr()
    assert torch.isfinite(out).all()
    assert not torch.equal(out, image), "severity 3 changed nothing"
    if CORRUPTIONS[name].clip:
        low, high = image.flatten(1).amin(1), image.flatten(1).amax(1)
        assert (out.flatten(1).amin(1) >= low).all() and (out.flatten(1).amax(1) <= high).all()


@pytest.mark.parametrize("name", NAMES)
def test_two_dimensional_images(name, subject):
    image = synthetic_subject(size=40, spatial_dims=2)
    out = corrupt(image, name, 4, seed=1)
    assert out.shape == image.shape and torch.isfinite(out).all() and not torch.equal(out, image)
    assert psnr_of(image, corrupt(image, name, 1, seed=1)) > psnr_of(image, out)


@pytest.mark.parametrize("name", NAMES)
def test_meta_tensor_keeps_its_affine(name, subject):
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.5, 1.0]))
    affine[:3, 3] = torch.tensor([-10.0, 4.0, 7.0])
    image = MetaTensor(subject.clone(), affine=affine, meta={"filename_or_obj": "subject.nii.gz"})
    out = corrupt(image, name, 2, seed=3)
    assert isinstance(out, MetaTensor) and out.shape == image.shape
    assert torch.equal(out.affine, affine) and out.meta["filename_or_obj"] == "subject.nii.gz"
    assert torch.equal(image.as_tensor(), subject) and torch.equal(image.affine, affine)
    assert torch.equal(out.as_tensor(), corrupt(subject, name, 2, seed=3))


# -- ghosting and motion are TorchIO's -----------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("severity", [1, 5])
def test_motion_is_torchio_motion_with_the_drawn_movements(spatial_dims, severity):
    from common.corruptions.kspace import motion, motion_parameters

    image = synthetic_subject(size=24, spatial_dims=spatial_dims)
    params = CORRUPTIONS["motion"].params(severity)
    drawn = motion_parameters(params, 5, spatial_dims)
    volume = image[:, None] if spatial_dims == 2 else image  # TorchIO's axes; see kspace._as_volume
    expected = tio.Motion(**drawn, image_interpolation="linear")(tio.ScalarImage(tensor=volume, affine=np.eye(4))).data
    out = motion(image, params, 5)
    assert torch.equal(out, expected[:, 0] if spatial_dims == 2 else expected)
    assert not torch.equal(out, image)


@pytest.mark.parametrize("spatial_dims, axis", [(2, 1), (3, 0)])
@pytest.mark.parametrize("severity", [1, 4])
def test_ghosting_is_torchio_ghosting_along_the_first_spatial_axis(spatial_dims, axis, severity):
    from common.corruptions.kspace import ghosting

    image = synthetic_subject(size=24, spatial_dims=spatial_dims)
    params = CORRUPTIONS["ghosting"].params(severity)
    volume = image[:, None] if spatial_dims == 2 else image
    transform = tio.Ghosting(num_ghosts=params["num_ghosts"], axis=axis, intensity=params["intensity"], restore=None)
    expected = transform(tio.ScalarImage(tensor=volume, affine=np.eye(4))).data
    out = ghosting(image, params, 0)
    assert torch.equal(out, expected[:, 0] if spatial_dims == 2 else expected)
    # ghosts lie along the first spatial axis only: the image's projection onto the others is unchanged
    assert torch.allclose(out.sum(1), image.sum(1), atol=1e-4)
    assert not torch.allclose(out.sum(2), image.sum(2), atol=1e-2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("severity", SEVERITIES)
def test_motion_parameters_are_seeded_and_bounded_by_the_severity(spatial_dims, severity):
    from common.corruptions.kspace import motion_parameters

    params = CORRUPTIONS["motion"].params(severity)
    drawn = motion_parameters(params, 123, spatial_dims)
    again = motion_parameters(params, 123, spatial_dims)
    other = motion_parameters(params, 124, spatial_dims)
    assert all((drawn[key] == again[key]).all() for key in drawn)
    assert not (drawn["degrees"] == other["degrees"]).all()
    n = params["movements"]
    assert drawn["degrees"].shape == drawn["translation"].shape == (n, 3) and drawn["times"].shape == (n,)
    # severity sets each movement's size, the seed only its direction
    assert np.allclose(np.linalg.norm(drawn["degrees"], axis=1), params["degrees"])
    assert np.allclose(np.linalg.norm(drawn["translation"], axis=1), params["translation"])
    times = drawn["times"]
    assert (times > 0).all() and (times < 1).all() and (times[1:] > times[:-1]).all()
    if spatial_dims == 2:  # in the slice's plane: rotation about TorchIO's singleton first axis, no shift along it
        assert (drawn["degrees"][:, 1:] == 0).all() and (drawn["translation"][:, 0] == 0).all()
    else:
        assert (drawn["degrees"] != 0).all() and (drawn["translation"] != 0).all()


@pytest.mark.parametrize(
    "params, seed, spatial_dims, message",
    [
        ({"movements": 0, "degrees": 1.0, "translation": 1.0}, 0, 3, "movements must be an integer >= 1"),
        ({"movements": 1.5, "degrees": 1.0, "translation": 1.0}, 0, 3, "movements must be an integer >= 1"),
        ({"movements": 2, "degrees": -1.0, "translation": 1.0}, 0, 3, "degrees must be a finite number >= 0"),
        ({"movements": 2, "degrees": 1.0, "translation": float("nan")}, 0, 3, "translation must be a finite number"),
        ({"movements": 2, "degrees": 1.0, "translation": 1.0}, -1, 3, "seed must be an integer >= 0"),
        ({"movements": 2, "degrees": 1.0, "translation": 1.0}, 0, 4, r"spatial_dims must be an integer in \[2, 3\]"),
    ],
)
def test_motion_parameters_bad_arguments_are_one_line(params, seed, spatial_dims, message):
    from common.corruptions.kspace import motion_parameters

    with pytest.raises(RobustsegError, match=message) as caught:
        motion_parameters(params, seed, spatial_dims)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["ghosting", "motion"])
def test_torchio_corruptions_leave_the_global_torch_generator_alone(name, subject):
    """TorchIO's Transform.__call__ draws torch.rand(1) for its probability; the caller's stream must not shift."""
    torch.manual_seed(0)
    corrupt(subject, name, 2, seed=4)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_importing_the_corruptions_does_not_import_torchio():
    code = "import sys, common.corruptions; print('torchio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result(name, subject):
    assert torch.equal(corrupt(subject, name, 2, seed=11), corrupt(subject, name, 2, seed=11))


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_depend_on_the_seed(name, subject):
    """Four other seeds cannot all agree with the first."""
    first = corrupt(subject, name, 2, seed=11)
    assert not all(torch.equal(first, corrupt(subject, name, 2, seed=seed)) for seed in (12, 13, 14, 15))


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(RANDOM)))
def test_deterministic_corruptions_ignore_the_seed(name, subject):
    assert torch.equal(corrupt(subject, name, 2, seed=11), corrupt(subject, name, 2, seed=12))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("subject_seed", [0, 1, 2])
def test_psnr_falls_strictly_with_severity(name, subject_seed):
    """With the per-(subject, corruption, severity) seeds an evaluation would use, at 32^3."""
    image = synthetic_subject(seed=subject_seed)
    values = [
        psnr_of(image, corrupt(image, name, s, corruption_seed(f"subject-{subject_seed}", name, s))) for s in SEVERITIES
    ]
    assert all(math.isfinite(v) for v in values), values
    assert all(a > b for a, b in zip(values, values[1:])), f"{name}: PSNR by severity {values}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_psnr_falls_strictly_with_severity_at_128(name):
    image = synthetic_subject(size=128, seed=5)
    values = [psnr_of(image, corrupt(image, name, s, corruption_seed("big", name, s))) for s in SEVERITIES]
    assert all(a > b for a, b in zip(values, values[1:])), f"{name}: PSNR by severity {values}"


# -- missing modality --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel, name", list(enumerate(MISSING_MODALITY)))
@pytest.mark.parametrize("severity", SEVERITIES)
def test_missing_modality_leaves_the_other_channels_bit_identical(channel, name, severity, subject):
    out = corrupt(subject, name, severity)
    others = [c for c in range(4) if c != channel]
    assert torch.equal(out[others], subject[others])
    zeroed = (out[channel] == 0).all(dim=(0, 1))
    assert torch.equal(out[channel][..., ~zeroed], subject[channel][..., ~zeroed])
    if severity == 5:
        assert bool(zeroed.all()), "severity 5 must remove the whole modality"


def test_missing_slices_are_nested_across_severities(subject):
    masks = [(corrupt(subject, "missing_t2", s)[2] == 0).all(dim=(0, 1)) for s in SEVERITIES]
    for lower, higher in zip(masks, masks[1:]):
        assert bool((higher | ~lower).all()) and int(higher.sum()) > int(lower.sum())


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["missing_t1", "blur", "gibbs", "blur"], ["gibbs", "blur", "missing_t1"]),
        (["zeta", "gamma", "alpha"], ["gamma", "alpha", "zeta"]),  # unregistered names last, sorted
        ([], []),
    ],
)
def test_corruption_order_is_the_registry_order_then_the_rest_sorted(names, expected):
    from common.corruptions import corruption_order

    assert corruption_order(iter(names)) == expected
