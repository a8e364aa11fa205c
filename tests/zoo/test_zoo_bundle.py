"""Third-party (Model Zoo layout) bundles as evaluation models: loading, channels, inferer gradients, errors."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.engines import load_model_bundle
from common.engines.subject_batch import load_subjects
from common.engines.subject_batch import test_entries as entries_of
from common.engines.zoo_bundle import ZooNetwork, input_order, is_zoo_bundle, output_convention
from common.errors import RobustsegError

from .zoo_bundles import ROI


def _meta(root: Path) -> dict:
    return json.loads((root / "configs" / "metadata.json").read_text())


def _write_meta(root: Path, meta: dict) -> None:
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))


def _channel_def(meta: dict, part: str) -> dict:
    fmt = meta["network_data_format"]
    return fmt["inputs"]["image"] if part == "inputs" else fmt["outputs"]["pred"]


def test_loads_as_a_model_bundle(trained_zoo_bundle: Path) -> None:
    assert is_zoo_bundle(trained_zoo_bundle)
    model = load_model_bundle(trained_zoo_bundle)
    assert model.name == "zoo_brats_tiny" and model.defense == "none" and model.net == "3d"
    assert model.adapter is not None
    assert model.adapter["input_channels"] == ["t1ce", "t1", "t2", "flair"]
    assert model.adapter["output"]["canonical"] == {"WT": "Whole tumor", "TC": "Tumor core", "ET": "Enhancing tumor"}
    assert model.adapter["inferer"]["class"] == "SlidingWindowInferer"
    assert model.adapter["inferer"]["roi_size"] == ROI
    assert model.amp is False  # the bundle's amp is CUDA autocast, as MONAI's evaluators apply it
    assert model.settings()["adapter"] == model.adapter
    json.dumps(model.settings())


def test_preprocessing_reads_in_the_bundles_order_and_returns_robustsegs(
    trained_zoo_bundle: Path, zoo_data: Path
) -> None:
    """The bundle's transforms get the image files in its order (T1c first); the result comes back in robustseg's
    order (t1, t1ce, t2, flair), each channel z-scored over the brain as the bundle's NormalizeIntensityd does."""
    model = load_model_bundle(trained_zoo_bundle)
    assert model.preprocessing.order == [1, 0, 2, 3]
    seen = []
    transforms = model.preprocessing.transforms
    model.preprocessing.transforms = lambda item: seen.append(list(item["image"])) or transforms(item)
    entry = entries_of(str(zoo_data))[0]
    item = model.preprocessing(dict(entry))
    assert seen == [[entry["image"][i] for i in (1, 0, 2, 3)]]
    image, label = item["image"], item["label"]
    assert image.shape[0] == 4 and label.shape == (1, *image.shape[1:])
    for channel in range(4):
        raw = nib.load(entry["image"][channel]).get_fdata()
        brain = raw != 0
        expected = (raw[brain] - raw[brain].mean()) / raw[brain].std()
        np.testing.assert_allclose(np.asarray(image[channel])[brain], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(label[0]), nib.load(entry["label"]).get_fdata())


def test_network_output_is_canonical(trained_zoo_bundle: Path, zoo_data: Path) -> None:
    """The adapter feeds the network its own input order and returns its channels (through its inferer) in the order
    WT, TC, ET."""
    model = load_model_bundle(trained_zoo_bundle)
    (batch,) = load_subjects(entries_of(str(zoo_data)), model.preprocessing, torch.device("cpu"))
    adapter = model.network
    assert isinstance(adapter, ZooNetwork)
    with torch.no_grad():
        raw = adapter.inferer(batch.images[:, [1, 0, 2, 3]], adapter.network)
        canonical = model.network(batch.images)
    torch.testing.assert_close(canonical, raw[:, [1, 0, 2]])


def _windows(shape: tuple[int, ...], roi: list[int], overlap: float) -> list[tuple[slice, ...]]:
    """The sliding windows as MONAI places them: a step of ``roi * (1 - overlap)``, the last window flush with the
    end."""
    starts = []
    for size, edge in zip(shape, roi, strict=True):
        step = max(int(edge * (1 - overlap)), 1)
        count = math.ceil((size - edge) / step) + 1
        starts.append(sorted({min(i * step, size - edge) for i in range(count)}))
    return [tuple(slice(b, b + e) for b, e in zip(begin, roi, strict=True)) for begin in itertools.product(*starts)]


def test_gradient_flows_through_every_window(trained_zoo_bundle: Path, zoo_data: Path) -> None:
    """The input gradient through the sliding-window inferer equals that of stitching the windows by hand, and every
    window contributes a gradient of its own."""
    model = load_model_bundle(trained_zoo_bundle)
    (batch,) = load_subjects(entries_of(str(zoo_data))[:1], model.preprocessing, torch.device("cpu"))
    images = batch.images[:1].clone().requires_grad_(True)
    weights = torch.randn(1, 3, *images.shape[2:], generator=torch.Generator().manual_seed(0))
    (model.network(images) * weights).sum().backward()
    inferred = images.grad.clone()

    network = model.network.network
    windows = _windows(tuple(images.shape[2:]), ROI, 0.25)
    assert len(windows) > 1
    manual = images.detach().clone().requires_grad_(True)
    out = torch.zeros(1, 3, *images.shape[2:])
    count = torch.zeros(1, 1, *images.shape[2:])
    per_window = []
    for window in windows:
        index = (slice(None), slice(None), *window)
        piece = network(manual[index][:, [1, 0, 2, 3]])
        out[index] += piece
        count[index] += 1
        per_window.append(torch.autograd.grad((piece * weights[index]).sum(), manual, retain_graph=True)[0])
    stitched = (out / count)[:, [1, 0, 2]]
    torch.testing.assert_close(stitched, model.network(images).detach(), rtol=1e-4, atol=1e-4)
    (grad,) = torch.autograd.grad((stitched * weights).sum(), manual)
    torch.testing.assert_close(inferred, grad, rtol=1e-4, atol=1e-5)
    for window, own in zip(windows, per_window, strict=True):
        index = (slice(None), slice(None), *window)
        assert own[index].abs().sum() > 0, f"window {window} got no gradient"


@pytest.mark.parametrize(
    "names, expected",
    [
        (["T1c", "T1", "T2", "FLAIR"], ["t1ce", "t1", "t2", "flair"]),
        (["FLAIR", "T1w", "T1Gd", "T2w"], ["flair", "t1", "t1ce", "t2"]),
        (["t1", "t1ce", "t2", "flair"], ["t1", "t1ce", "t2", "flair"]),
    ],
)
def test_input_order(names: list[str], expected: list[str]) -> None:
    meta = {"network_data_format": {"inputs": {"image": {"channel_def": dict(enumerate(names))}}}}
    meta["network_data_format"]["inputs"]["image"]["channel_def"] = {str(i): n for i, n in enumerate(names)}
    assert input_order(meta, "m.json") == expected
    assert input_order({}, "m.json", override=names) == expected


@pytest.mark.parametrize(
    "names, activation, order",
    [
        (["Tumor core", "Whole tumor", "Enhancing tumor"], None, (1, 0, 2)),
        (["ET", "WT", "TC"], "sigmoid", (1, 2, 0)),
        (["background", "edema", "non-enhancing tumor", "enhancing tumour"], None, (0, 2, 1, 3)),
        (["background", "NCR", "ED", "ET"], "softmax", (0, 1, 2, 3)),
    ],
)
def test_output_convention(names: list[str], activation: str | None, order: tuple[int, ...]) -> None:
    convention = output_convention({}, "m.json", activation=activation, names=names)
    assert convention.order == order
    assert convention.activation == (activation or ("sigmoid" if len(names) == 3 else "softmax"))


@pytest.mark.parametrize(
    "names, activation, message",
    [
        (["TC", "WT", "WT"], "sigmoid", "each once"),
        (["TC", "WT", "necrosis"], "sigmoid", "three BraTS regions"),
        (["TC", "WT", "ET"], "softmax", "four BraTS labels"),
        (["TC", "WT", "ET"], "relu", "output_activation"),
        ("TC", None, "not a list"),
    ],
)
def test_output_convention_errors(names: object, activation: str | None, message: str) -> None:
    with pytest.raises(RobustsegError, match=message):
        output_convention({}, "m.json", activation=activation, names=names)  # type: ignore[arg-type]


def _break_input_channel_def(root: Path) -> None:
    meta = _meta(root)
    _channel_def(meta, "inputs")["channel_def"] = {"0": "T1c", "1": "T1", "2": "T2", "3": "PD"}
    _write_meta(root, meta)


def _number_keys(root: Path) -> None:
    meta = _meta(root)
    _channel_def(meta, "outputs")["channel_def"] = {"a": "TC", "b": "WT", "c": "ET"}
    _write_meta(root, meta)


def _no_weights(root: Path) -> None:
    (root / "models" / "model.pt").unlink()


def _four_outputs(root: Path) -> None:
    meta = _meta(root)
    pred = _channel_def(meta, "outputs")
    pred["num_channels"] = 4
    pred["channel_def"] = {"0": "background", "1": "TC", "2": "WT", "3": "ET"}
    _write_meta(root, meta)


def _count_contradicts(root: Path) -> None:
    meta = _meta(root)
    _channel_def(meta, "outputs")["num_channels"] = 4
    _write_meta(root, meta)


def _pickled(root: Path) -> None:
    torch.save({"model": torch.nn.Linear(2, 2)}, root / "models" / "model.pt")


def _wrong_weights(root: Path) -> None:
    torch.save({"conv.weight": torch.zeros(2)}, root / "models" / "model.pt")


def _no_metadata_channels(root: Path) -> None:
    meta = _meta(root)
    del _channel_def(meta, "outputs")["channel_def"]
    _write_meta(root, meta)


@pytest.mark.parametrize(
    "breaks, message",
    [
        (_break_input_channel_def, r"metadata.json: network_data_format.inputs.image.channel_def: channel 'PD'"),
        (_number_keys, r"channel_def is .*expected keys '0' .. 'n-1'"),
        (_no_weights, r"model.pt: weights of model bundle zoo_brats_tiny not found"),
        (_four_outputs, r"three BraTS regions"),
        (_count_contradicts, r"num_channels 4 but its channel_def names 3"),
        (_pickled, r"model.pt: holds a pickled object \(torch.nn.modules.linear.Linear\) that weights_only=True"),
        (_wrong_weights, r"model.pt: does not fit the network SegResNet"),
        (_no_metadata_channels, r"no network_data_format.outputs.pred.channel_def; give output_channels"),
    ],
)
def test_broken_bundle_is_one_line(zoo_copy: Path, breaks, message: str) -> None:
    breaks(zoo_copy)
    with pytest.raises(RobustsegError, match=message) as error:
        load_model_bundle(zoo_copy)
    assert "\n" not in str(error.value)


def test_output_count_contradicting_metadata(zoo_copy: Path) -> None:
    """A network with 4 output channels where the metadata names 3: one line, at load time."""
    config = json.loads((zoo_copy / "configs" / "inference.json").read_text())
    config["network_def"]["out_channels"] = 4
    (zoo_copy / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(RobustsegError, match=r"network_def has out_channels 4, but .* names 3 output channels"):
        load_model_bundle(zoo_copy)


def test_torchscript_output_count_checked(zoo_copy: Path, zoo_data: Path) -> None:
    """TorchScript weights (models/model.ts) load without network_def; a wrong channel count stops the forward."""
    model = load_model_bundle(zoo_copy)
    scripted = torch.jit.trace(model.network.network, torch.zeros(1, 4, *ROI))
    (zoo_copy / "models" / "model.pt").unlink()
    torch.jit.save(scripted, str(zoo_copy / "models" / "model.ts"))
    loaded = load_model_bundle(zoo_copy)
    assert loaded.adapter["weights_format"] == "torchscript"
    x = torch.randn(1, 4, *ROI)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), model.network(x))
    meta = _meta(zoo_copy)
    pred = _channel_def(meta, "outputs")
    pred["num_channels"] = 4
    pred["channel_def"] = {"0": "background", "1": "NCR", "2": "ED", "3": "ET"}
    _write_meta(zoo_copy, meta)
    wrong = load_model_bundle(zoo_copy, options={"output_activation": "softmax"})
    message = r"outputs \(1, 3, 16, 16, 16\), but its metadata names 4"
    with torch.no_grad(), pytest.raises(RobustsegError, match=message):
        wrong.network(x)


def test_options_override_the_metadata(zoo_copy: Path) -> None:
    _no_metadata_channels(zoo_copy)
    model = load_model_bundle(zoo_copy, options={"output_channels": ["TC", "WT", "ET"]})
    assert model.adapter["output"]["canonical"] == {"WT": "WT", "TC": "TC", "ET": "ET"}
    with pytest.raises(RobustsegError, match=r"unknown option\(s\) \['channels'\]"):
        load_model_bundle(zoo_copy, options={"channels": ["TC", "WT", "ET"]})


def test_options_refused_for_robustseg_bundles(tmp_path: Path) -> None:
    with pytest.raises(RobustsegError, match="are for third-party bundles"):
        load_model_bundle("bundles/brats_unet3d_baseline", options={"input_channels": ["t1"]})


def test_trust_notice_names_the_bundle(zoo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_model_bundle(zoo_copy)
    load_model_bundle(zoo_copy)
    err = capsys.readouterr().err
    assert err.count("is a third-party bundle: its configs run code") == 1
    assert "zoo_brats_tiny" in err


def test_label_follows_a_preprocessing_that_moves_the_grid(zoo_copy: Path, zoo_data: Path) -> None:
    """A bundle whose preprocessing resamples the image (``Spacingd`` to twice the voxel size): the label is resampled
    by nearest neighbour onto the same grid, so that it is scored where the network predicts."""
    from monai.transforms import LoadImage, Spacing

    entry = entries_of(str(zoo_data))[0]
    pixdim = [2 * float(z) for z in nib.load(entry["label"]).header.get_zooms()[:3]]
    config = json.loads((zoo_copy / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"].append({"_target_": "Spacingd", "keys": "image", "pixdim": pixdim})
    (zoo_copy / "configs" / "inference.json").write_text(json.dumps(config))
    model = load_model_bundle(zoo_copy)
    item = model.preprocessing(dict(entry))
    assert tuple(item["image"].shape[1:]) == (12, 12, 12)
    assert tuple(item["label"].shape) == (1, 12, 12, 12)
    expected = Spacing(pixdim=pixdim, mode="nearest")(LoadImage(image_only=True, ensure_channel_first=True)(
        entry["label"]))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(item["label"]), np.asarray(expected))
    torch.testing.assert_close(item["label"].affine, item["image"].affine)


def test_model_is_named_by_its_folder(zoo_copy: Path) -> None:
    """The Model Zoo names a bundle by its folder; metadata's display name (here with spaces) is kept beside it."""
    meta = _meta(zoo_copy)
    meta["name"] = "BraTS MRI segmentation"
    _write_meta(zoo_copy, meta)
    model = load_model_bundle(zoo_copy)
    assert model.name == zoo_copy.name == "zoo_brats_tiny"
    assert model.adapter["display_name"] == "BraTS MRI segmentation"


@pytest.mark.parametrize("modality, bundle_channel", [("t1", 1), ("t1ce", 0), ("flair", 3)])
def test_missing_modality_reaches_the_right_bundle_channel(
    trained_zoo_bundle: Path, zoo_data: Path, modality: str, bundle_channel: int
) -> None:
    """Corruptions work in robustseg's channel order; the network gets the corrupted contrast on its own channel."""
    from common.corruptions import corrupt

    model = load_model_bundle(trained_zoo_bundle)
    (batch,) = load_subjects(entries_of(str(zoo_data))[:1], model.preprocessing, torch.device("cpu"))
    corrupted = corrupt(batch.images[0], f"missing_{modality}", 5, seed=0)
    seen = []
    handle = model.network.network.register_forward_pre_hook(lambda _module, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            model.network(corrupted[None])
    finally:
        handle.remove()
    windows = torch.cat(seen)  # the sliding windows the network saw, in its channel order (T1c, T1, T2, FLAIR)
    assert windows[:, bundle_channel].abs().max() == 0
    others = [c for c in range(4) if c != bundle_channel]
    assert all(windows[:, c].abs().max() > 0 for c in others)
