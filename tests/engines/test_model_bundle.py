"""Model bundle loader (common/engines/model_bundle.py): network, preprocessing, identity, one-line errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from monai.transforms import Compose

from common.engines import check_same_preprocessing, find_model_bundle, load_model_bundle
from common.engines.precision import choose_precision
from common.errors import RobustsegError

from .conftest import OVERRIDES, QUICK


def _load(folder, **kwargs):
    return load_model_bundle(folder, QUICK, "cpu", {**OVERRIDES, **kwargs.pop("overrides", {})}, **kwargs)


def test_loads_network_preprocessing_and_identity(bundles, tiny_datalist):
    folder = bundles["tiny_baseline"]
    model = _load(folder)
    assert model.name == "tiny_baseline" and model.root == folder.resolve()
    assert model.identity == {"model": "tiny_baseline", "net": "3d", "defense": "none", "defense_param": ""}
    assert model.temperature is None and model.family == "baseline"
    assert not model.network.training
    saved = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.network.state_dict().items())
    assert model.weights_sha256 == hashlib.sha256((folder / "models" / "model.pt").read_bytes()).hexdigest()
    assert isinstance(model.preprocessing, Compose)
    quick = json.loads((folder / "configs" / "quick.json").read_text())
    # no training record here: precision "auto" measured this network at a batch of two (the same cached choice)
    auto = choose_precision("auto", model.network, [2, 4, 16, 16, 16], "cpu")
    assert model.spatial_size == [16, 16, 16] and model.amp is auto.amp and "precision" not in quick
    assert model.config_files == QUICK
    assert model.training["config_files"] == ["configs/train.json", "configs/quick.json"]
    assert model.training["epochs"] == quick["epochs"]
    assert model.trained_with == {}


def test_training_record_applies_before_explicit_overrides(bundle_factory):
    folder = bundle_factory("tiny_recorded")
    record = {"spatial_size": [32, 32, 32], "normalization": "standardize", "amp": True}
    (folder / "models" / "training_settings.json").write_text(json.dumps(record))
    model = load_model_bundle(folder, QUICK, "cpu", {k: v for k, v in OVERRIDES.items() if k != "spatial_size"})
    assert model.trained_with == record
    assert (model.spatial_size, model.amp) == ([32, 32, 32], True)
    assert model.preprocessing_settings["normalization"] == "standardize"
    assert _load(folder).spatial_size == [16, 16, 16]  # the explicit override wins


def test_preprocessing_gives_the_grid(bundles, tiny_datalist):
    from common.data.splits import load_split

    model = _load(bundles["tiny_baseline"])
    item = model.preprocessing(load_split(tiny_datalist, "testing")[0])
    assert tuple(item["image"].shape) == (4, 16, 16, 16) and tuple(item["label"].shape) == (1, 16, 16, 16)
    assert 0.0 <= float(item["image"].min()) < float(item["image"].max()) <= 1.0  # normalised, then resized


def test_distillation_metadata_gives_temperature(bundles):
    model = _load(bundles["tiny_distill_t5"])
    assert (model.defense, model.defense_param, model.temperature) == ("distillation", "T=5", 5.0)


@pytest.mark.parametrize("record", [None, {"recipe": "paper", "temperature": 5.0, "logit_norm_ratio": 1.3}])
def test_distillation_record_reaches_the_settings(record, bundle_factory):
    """The student's logit-scale record travels with the model into the evaluation's settings.json (and report)."""
    folder = bundle_factory("tiny_distill_t5")
    if record is not None:
        (folder / "models" / "distillation_record.json").write_text(json.dumps(record))
    model = _load(folder)
    assert model.distillation == record and model.settings()["distillation"] == record
    assert "recipe" not in model.trained_with, "a measurement, not a setting to apply to the configs"


def test_datalist_is_evaluated_on_request(bundles, tiny_datalist):
    model = _load(bundles["tiny_baseline"], overrides={"datalist": tiny_datalist})
    assert model.datalist() == tiny_datalist


def test_found_by_name_under_bundles(bundles, tmp_path, monkeypatch):
    shutil.copytree(bundles["tiny_baseline"], tmp_path / "bundles" / "tiny_baseline")
    monkeypatch.chdir(tmp_path)
    assert find_model_bundle("tiny_baseline") == (tmp_path / "bundles" / "tiny_baseline").resolve()
    assert find_model_bundle("bundles/tiny_baseline") == (tmp_path / "bundles" / "tiny_baseline").resolve()


def test_same_preprocessing_passes_and_differences_are_named(bundles):
    first, second = _load(bundles["tiny_baseline"]), _load(bundles["tiny_distill_t5"])
    check_same_preprocessing([first, second])
    other = _load(bundles["tiny_distill_t5"], overrides={"spatial_size": [32, 32, 32]})
    with pytest.raises(RobustsegError, match=r"tiny_baseline and tiny_distill_t5 preprocess differently \(spatial_siz"):
        check_same_preprocessing([first, other])
    other = _load(bundles["tiny_distill_t5"], overrides={"intensity_transforms#1#mode": ["area", "nearest-exact"]})
    with pytest.raises(RobustsegError, match=r"preprocess differently \(preprocessing_transforms differ\)"):
        check_same_preprocessing([first, other])


def _edit_metadata(folder, **section):
    path = folder / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    if section.pop("drop", False):
        del meta["robustseg"]
    meta.get("robustseg", {}).update(section)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, message",
    [
        # without its robustseg section a bundle is a third-party one, loaded by its metadata (then: no weights)
        ({"drop": True}, r"model.pt: weights of model bundle tiny_bad_meta not found \(nor model.ts\)"),
        ({"net": "4d"}, r"robustseg.net is '4d'; expected one of \['3d', '2d'\]"),
        ({"defense": "magic"}, r"robustseg.defense is 'magic'; expected one of"),
        ({"temperature": -1}, r"robustseg.temperature is -1; expected null or a number > 0"),
    ],
)
def test_bad_metadata_raises(edit, message, bundle_factory):
    folder = bundle_factory("tiny_bad_meta", weights=False)
    _edit_metadata(folder, **edit)
    with pytest.raises(RobustsegError, match=message):
        _load(folder)


def test_missing_bundle_raises(tmp_path):
    with pytest.raises(RobustsegError, match=r"model bundle '.*nowhere' not found"):
        find_model_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustsegError, match=r"empty: .*metadata.json not found; expected a bundle"):
        find_model_bundle(tmp_path / "empty")


def test_missing_weights_name_the_training_command(bundle_factory):
    folder = bundle_factory("tiny_untrained", weights=False)
    with pytest.raises(RobustsegError, match=r"model.pt: weights of model bundle tiny_untrained not found; train it"):
        _load(folder)


def test_weights_of_another_network_raise(bundle_factory):
    folder = bundle_factory("tiny_other_net", overrides={"base_filters": 3})
    with pytest.raises(RobustsegError, match=r"does not fit the network"):
        _load(folder)


def test_missing_config_file_raises(bundles):
    with pytest.raises(RobustsegError, match=r"configs/nope.json: config file of model bundle tiny_baseline not found"):
        load_model_bundle(bundles["tiny_baseline"], ["configs/inference.json", "configs/nope.json"])


def test_empty_config_files_raise(bundles):
    with pytest.raises(RobustsegError, match=r"config_files is empty"):
        load_model_bundle(bundles["tiny_baseline"], [])
