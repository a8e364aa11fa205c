from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    Resized,
    SaveImaged,
)

from common.data.datalist import MSD_MODALITIES, MSD_TO_BRATS_LABELS, find_subjects
from common.data.labels import MODALITIES
from common.data.transforms import BraTSLayoutd, N4BiasFieldCorrection, N4BiasFieldCorrectiond, NormalizeBraTSd
from common.errors import RobustsegError

KEYS = ["image", "label"]


def preprocessing(size: int = 32, mode: str = "minmax") -> Compose:
    """The bundles' preprocessing, N4 aside."""
    return Compose(
        [
            LoadImaged(keys=KEYS),
            EnsureChannelFirstd(keys=KEYS),
            BraTSLayoutd(keys=KEYS),
            Orientationd(keys=KEYS, axcodes="RAS", labels=None),
            NormalizeBraTSd(keys="image", mode=mode),
            # "nearest-exact": torch's "nearest" is off by up to a voxel and does not invert exactly
            Resized(keys=KEYS, spatial_size=[size] * 3, mode=["area", "nearest-exact"]),
        ]
    )


def meta_item(layout: str | None, channels: int = 4, shape=(5, 6, 7), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    affine = torch.tensor([[0, 2.0, 0, 3], [1.0, 0, 0, -4], [0, 0, 1.5, 5], [0, 0, 0, 1]], dtype=torch.float64)
    image = MetaTensor(torch.rand(channels, *shape, generator=g), affine=affine)
    image.applied_operations.append({"class": "Fake", "id": 1})
    label = MetaTensor(torch.randint(0, 4, (1, *shape), generator=g).float(), affine=affine)
    item = {"image": image, "label": label, "subject": "s01"}
    if layout is not None:
        item["layout"] = layout
    return item


# ---------------------------------------------------------------------------------------------------- BraTSLayoutd


def test_layout_msd_reorders_channels_and_maps_labels():
    item = meta_item("msd")
    out = BraTSLayoutd(keys=KEYS)(item)
    for i, modality in enumerate(MODALITIES):
        assert torch.equal(out["image"][i], item["image"][MSD_MODALITIES.index(modality)])
    for msd, brats in MSD_TO_BRATS_LABELS.items():
        assert torch.all(out["label"][item["label"] == msd] == brats)
    assert out["label"].dtype == item["label"].dtype


@pytest.mark.parametrize("layout", [None, "brats"])
def test_layout_brats_is_a_no_op(layout):
    item = meta_item(layout)
    out = BraTSLayoutd(keys=KEYS)(item)
    assert torch.equal(out["image"], item["image"]) and torch.equal(out["label"], item["label"])


@pytest.mark.parametrize("layout", ["msd", "brats"])
def test_layout_keeps_metadata_and_leaves_input_alone(layout):
    item = meta_item(layout)
    before = {k: item[k].clone() for k in KEYS}
    out = BraTSLayoutd(keys=KEYS)(item)
    for key in KEYS:
        assert isinstance(out[key], MetaTensor)
        assert torch.equal(out[key].affine, item[key].affine)
        assert out[key].applied_operations == item[key].applied_operations
        assert torch.equal(item[key], before[key])  # not modified in place


def test_layout_without_label_at_inference():
    item = meta_item("msd")
    del item["label"]
    out = BraTSLayoutd(keys=KEYS, allow_missing_keys=True)(item)
    assert torch.equal(out["image"][3], item["image"][0])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (meta_item("msd", channels=3), r"subject s01: image of shape \(3, 5, 6, 7\), expected 4 channels"),
        (meta_item("brats", channels=5), r"subject s01: image of shape \(5, 5, 6, 7\), expected 4 channels"),
        ({**meta_item("brats"), "label": torch.zeros(2, 5, 6, 7)}, r"subject s01: label of shape \(2, 5, 6, 7\)"),
        ({**meta_item("msd"), "label": torch.full((1, 5, 6, 7), 4.0)}, r"subject s01: MSD label values \[4\.0\]"),
        (meta_item("nifti"), r"subject s01: layout must be one of \['brats', 'msd'\], got 'nifti'"),
    ],
)
def test_layout_errors_name_the_subject(item, match):
    with pytest.raises(RobustsegError, match=match):
        BraTSLayoutd(keys=KEYS)(item)


def test_layout_error_names_the_file_without_subject():
    item = meta_item("brats", channels=3)
    del item["subject"]
    item["image"].meta["filename_or_obj"] = "/data/x_t1.nii.gz"
    with pytest.raises(RobustsegError, match=r"^/data/x_t1\.nii\.gz: image of shape"):
        BraTSLayoutd(keys=KEYS)(item)


def test_layout_image_only_at_inference():
    item = meta_item("msd")
    del item["label"]
    out = BraTSLayoutd(keys="image")(item)  # label_keys keeps its default "label", which is not among the keys
    assert torch.equal(out["image"][0], item["image"][1])


# ------------------------------------------------------------------------------------ pipeline on BraTS and MSD


def test_pipeline_gives_the_same_tensors_for_brats_and_msd_files(brats_tree, msd_tree):
    brats = find_subjects(brats_tree("flat", n=2))
    msd = find_subjects(msd_tree(n=2))
    pipeline = preprocessing(size=32)
    for brats_item, msd_item in zip(brats, msd):
        a, b = pipeline(brats_item), pipeline(msd_item)
        assert a["image"].shape == (4, 32, 32, 32) and a["label"].shape == (1, 32, 32, 32)
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["label"], b["label"])
        assert torch.allclose(a["image"].affine, b["image"].affine)
        assert set(torch.unique(a["label"]).tolist()) == {0, 1, 2, 4}


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flip = np.diag([-1.0, 1.0, 1.0])  # LAS-like storage, so that Orientationd has work to do
    affine = np.eye(4)
    affine[:3, :3] = rotation @ flip @ np.diag([1.0, 1.2, 2.0])
    affine[:3, 3] = [90.0, -120.0, -60.0]
    return affine


@pytest.mark.parametrize("kind", ["flat", "msd"])
def test_invertd_brings_a_prediction_back_to_the_input_grid(kind, data_tree, tmp_path):
    shape = (10, 12, 14)
    root = data_tree(kind, n=1, shape=shape, affine=oblique_affine())
    item = find_subjects(root)[0]
    pipeline = preprocessing(size=32)
    data = pipeline(item)
    # the "prediction" is the preprocessed label map with its own history, as a post-processed network output
    data["pred"] = data["label"].clone()
    inverted = Invertd(keys="pred", transform=pipeline, orig_keys="label", nearest_interp=False)(data)["pred"]
    assert inverted.shape == (1, *shape)
    np.testing.assert_allclose(inverted.affine.numpy(), oblique_affine(), atol=1e-5)
    original = nib.load(item["label"]).get_fdata()
    if kind == "msd":
        original = np.vectorize(MSD_TO_BRATS_LABELS.get)(original)
    np.testing.assert_array_equal(inverted[0].numpy(), original)
    # network outputs carry the image's history: logits invert to the input grid too (then argmax there)
    data["logits"] = data["image"].clone()
    logits = Invertd(keys="logits", transform=pipeline, orig_keys="image")(data)["logits"]
    assert logits.shape == (4, *shape)
    np.testing.assert_allclose(logits.affine.numpy(), oblique_affine(), atol=1e-5)
    # and MONAI writes it on the input's grid
    SaveImaged(keys="pred", output_dir=str(tmp_path / "out"), output_postfix="seg", separate_folder=False)(
        {"pred": inverted}
    )
    saved = nib.load(next((tmp_path / "out").glob("*.nii.gz")))
    assert saved.shape == shape
    np.testing.assert_allclose(saved.affine, oblique_affine(), atol=1e-4)


# -------------------------------------------------------------------------------------------------- NormalizeBraTSd


def scaled_channels() -> MetaTensor:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(4, 10, 10, 10, generator=g) * torch.tensor([10.0, 300.0, 5000.0, 1.0]).view(4, 1, 1, 1)
    image[:, :3] = 0  # background
    image[1, 5, 5, 5] = 0.0
    return MetaTensor(image + torch.tensor([0.0, 0.0, 0.0, 7.0]).view(4, 1, 1, 1), affine=torch.diag(torch.ones(4) * 2))


def test_minmax_maps_each_channel_onto_0_1():
    image = scaled_channels()
    out = NormalizeBraTSd(keys="image")({"image": image})["image"]
    for c in range(4):
        assert float(out[c].min()) == pytest.approx(0.0, abs=1e-7)
        assert float(out[c].max()) == pytest.approx(1.0, abs=1e-6)
        # linear per channel: the order and the ratios of differences are kept
        ref = (image[c] - image[c].min()) / (image[c].max() - image[c].min())
        torch.testing.assert_close(out[c].as_tensor(), ref.as_tensor(), rtol=1e-5, atol=1e-6)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)


def test_minmax_with_upper_percentile_clips_hot_voxels():
    image = scaled_channels()
    image[0, 8, 8, 8] = 1e6  # one hot voxel
    plain = NormalizeBraTSd(keys="image")({"image": image})["image"]
    clipped = NormalizeBraTSd(keys="image", upper_percentile=99.0)({"image": image})["image"]
    assert float(clipped.max()) == pytest.approx(1.0) and float(clipped.min()) == pytest.approx(0.0)
    assert float((clipped[0] == 1).float().mean()) >= 0.01 - 1e-3  # the top 1 % saturate
    assert float(plain[0].median()) < 1e-4 < float(clipped[0].median())  # the hot voxel no longer squashes the rest


def test_standardize_is_a_zscore_over_nonzero_voxels():
    image = scaled_channels()
    out = NormalizeBraTSd(keys="image", mode="standardize")({"image": image})["image"]
    for c in range(4):
        inside = image[c] != 0
        assert torch.all(out[c][~inside] == 0)
        assert float(out[c][inside].mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(out[c][inside].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "zscore"}, r"mode must be one of \['minmax', 'standardize'\], got 'zscore'"),
        ({"mode": "standardize", "upper_percentile": 99.5}, "upper_percentile applies to mode 'minmax' only"),
        ({"upper_percentile": 0}, r"upper_percentile must be a finite number in \(0, 100\] \(or None\), got 0"),
        ({"upper_percentile": 101}, r"upper_percentile must be a finite number in \(0, 100\] \(or None\), got 101"),
        ({"upper_percentile": "99"}, r"upper_percentile must be a finite number in \(0, 100\] \(or None\), got '99'"),
    ],
)
def test_normalize_argument_errors(kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        NormalizeBraTSd(keys="image", **kwargs)


# ----------------------------------------------------------------------------------------------------------- N4


@pytest.fixture(scope="module")
def biased_phantom():
    """A 32^3 two-tissue phantom, 2 % noise, times a known smooth multiplicative bias field."""
    n = 32
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain, white = radius < 0.85, radius < 0.5
    rng = np.random.default_rng(0)
    truth = np.where(white, 100.0, 60.0) * (1 + 0.02 * rng.standard_normal((n, n, n))) * brain
    log_bias = 0.35 * grid[0] + 0.25 * grid[1] - 0.2 * grid[2] ** 2
    observed = (truth * np.exp(log_bias)).astype(np.float32)
    return observed, log_bias, brain, white


def cv(volume: np.ndarray, mask: np.ndarray) -> float:
    values = volume[mask]
    return float(values.std() / values.mean())


@pytest.mark.parametrize("shrink_factor", [2, 4])
def test_n4_removes_a_known_bias_field(biased_phantom, shrink_factor):
    observed, log_bias, brain, white = biased_phantom
    image = MetaTensor(torch.from_numpy(np.stack([observed, np.zeros_like(observed)])), affine=torch.eye(4))
    image.applied_operations.append({"class": "Orientation", "id": 1})
    out = N4BiasFieldCorrectiond(keys="image", shrink_factor=shrink_factor)({"image": image})["image"]
    corrected = out[0].numpy()
    assert cv(observed, white) > 0.09
    assert cv(corrected, white) < 0.03  # the noise alone gives 0.02
    # the estimated field matches the true one up to N4's arbitrary scale: a misplaced upsampled field would not
    estimated = np.log(observed[brain] / corrected[brain])
    error = (estimated - estimated.mean()) - (log_bias[brain] - log_bias[brain].mean())
    assert float(np.sqrt((error**2).mean())) < 0.02
    assert torch.equal(out[1], image[1])  # an empty channel passes unchanged
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and torch.equal(out.affine, image.affine)
    assert out.applied_operations == image.applied_operations  # Invertd still sees the spatial history


def test_n4_is_deterministic_and_picklable(biased_phantom):
    observed = biased_phantom[0]
    transform = N4BiasFieldCorrectiond(keys="image", shrink_factor=4, iterations=[20, 10])
    copy = pickle.loads(pickle.dumps(transform))
    image = torch.from_numpy(observed[None].copy())
    a = transform({"image": image})["image"]
    b = copy({"image": image})["image"]
    assert torch.equal(a, b)
    assert torch.equal(image[0], torch.from_numpy(observed))  # input untouched


def test_n4_does_not_depend_on_the_thread_count(biased_phantom):
    # N4's B-spline fits take ITK's process-wide default thread count, which SimpleITK sets to the number of cores
    sitk = pytest.importorskip("SimpleITK")
    transform = N4BiasFieldCorrection(shrink_factor=2, iterations=[20, 10])
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    fields = []
    try:
        for threads in (1, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            fields.append(transform.log_bias_field(biased_phantom[0]))
            assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads  # restored after the fit
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    assert np.array_equal(fields[0], fields[1])


def test_n4_mask_none_uses_every_voxel(biased_phantom):
    observed, _, _, white = biased_phantom
    corrected = N4BiasFieldCorrection(shrink_factor=4, mask="none")(observed[None])
    assert isinstance(corrected, np.ndarray) and np.isfinite(corrected).all()
    assert cv(corrected[0], white) < 0.03


def test_n4_nonzero_mask_leaves_out_negative_artefacts(biased_phantom):
    observed = biased_phantom[0].copy()
    observed[16, 16, 16] = -5.0
    corrected = N4BiasFieldCorrection(shrink_factor=4)(observed[None])[0]
    assert np.isfinite(corrected).all() and corrected[16, 16, 16] < 0
    assert np.array_equal(corrected == 0, observed == 0)  # background stays 0


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (torch.full((1, 4, 4, 4), -1.0), {"mask": "none"}, r"channel 0 has intensities down to -1, expected >= 0"),
        (torch.ones(4, 4, 4), {}, r"input of shape \(4, 4, 4\), expected \(C, H, W, D\)"),
    ],
)
def test_n4_input_errors_name_the_subject(image, kwargs, match):
    with pytest.raises(RobustsegError, match=r"^subject s01, key 'image': N4BiasFieldCorrection: " + match):
        N4BiasFieldCorrectiond(keys="image", **kwargs)({"image": image, "subject": "s01"})


def test_n4_itk_failure_is_one_line(monkeypatch):
    def fail(self, volume, spacing):
        raise RuntimeError("Exception thrown in SimpleITK N4BiasFieldCorrectionImageFilter_Execute:\ntoo few voxels")

    monkeypatch.setattr(N4BiasFieldCorrection, "log_bias_field", fail)
    with pytest.raises(RobustsegError, match=r"channel 0: ITK's N4 failed \(.*Execute: too few voxels\)\.$"):
        N4BiasFieldCorrection()(np.ones((1, 4, 4, 4), np.float32))


def test_n4_failure_inside_itk_is_one_line():
    # a one-voxel volume: N4's B-spline domain has zero width, and ITK refuses the zero spacing it would need
    with pytest.raises(RobustsegError, match=r"^N4BiasFieldCorrection: channel 0: ITK's N4 failed \([^\n]+\)\.$"):
        N4BiasFieldCorrection()(np.ones((1, 1, 1, 1), np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shrink_factor": 0}, "shrink_factor must be an integer >= 1, got 0"),
        ({"shrink_factor": 2.5}, "shrink_factor must be an integer >= 1, got 2.5"),
        ({"iterations": []}, r"iterations must be a non-empty list of integers >= 1, got \[\]"),
        ({"iterations": [50, 0]}, r"iterations must be a non-empty list of integers >= 1, got \[50, 0\]"),
        ({"mask": "otsu"}, r"mask must be one of \['nonzero', 'none'\], got 'otsu'"),
        ({"convergence_threshold": -1}, "convergence_threshold must be a finite number >= 0, got -1"),
    ],
)
def test_n4_argument_errors(kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        N4BiasFieldCorrectiond(keys="image", **kwargs)
