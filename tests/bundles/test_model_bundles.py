"""Model bundles: configs parse, every ``_target_`` resolves, and training / evaluating / inferring run on tiny data."""

from __future__ import annotations

import json
from pathlib import Path
from pydoc import locate

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from common.bundles import generate_bundles

from .conftest import BASELINES, BUNDLES, MODEL_BUNDLES, copy_bundle, run_bundle, tiny_overrides

CONFIGS = ["train.json", "evaluate.json", "inference.json"]


def test_committed_bundles_match_templates():
    assert generate_bundles(BUNDLES, check=True) == []


def _targets(node, found):
    if isinstance(node, dict):
        if "_target_" in node and isinstance(node["_target_"], str) and not node["_target_"].startswith(("%", "@")):
            found.add(node["_target_"])
        for value in node.values():
            _targets(value, found)
    elif isinstance(node, list):
        for value in node:
            _targets(value, found)
    return found


@pytest.mark.parametrize("name", MODEL_BUNDLES)
def test_every_target_resolves(name):
    from monai.bundle.config_item import ComponentLocator

    locator = ComponentLocator()
    configs = [json.loads((BUNDLES / name / "configs" / c).read_text()) for c in [*CONFIGS, "multi_gpu_train.json"]]
    targets = set().union(*(_targets(c, set()) for c in configs))
    missing = [t for t in sorted(targets) if "." not in t and locator.get_component_module_name(t) is None]
    missing += [t for t in sorted(targets) if "." in t and locate(t) is None]
    assert not missing, f"unresolvable _target_ names: {missing}"


@pytest.mark.parametrize("name", MODEL_BUNDLES)
@pytest.mark.parametrize("overlay", [None, "quick.json"])
def test_configs_parse_with_overlays(name, overlay):
    for config in CONFIGS:
        files = [str(BUNDLES / name / "configs" / config)]
        if overlay:
            files.append(str(BUNDLES / name / "configs" / overlay))
        parser = ConfigParser()
        parser.read_config(files)
        parser.read_meta(str(BUNDLES / name / "configs" / "metadata.json"))
        run_id = {"train.json": "training", "evaluate.json": "evaluating", "inference.json": "inferring"}[config]
        assert run_id in parser and "initialize" in parser and "run" in parser
        net = parser.get_parsed_content("network_def")
        assert sum(p.numel() for p in net.parameters()) > 0


def _transforms(name: str, config: str, section: str) -> list:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / name / "configs" / config))
    return list(parser.get_parsed_content(f"{section}#preprocessing").transforms)


@pytest.mark.parametrize("name", [n for n in MODEL_BUNDLES if n.endswith("_artaug")])
def test_artifact_augmentation_is_the_baseline_recipe_plus_one_random_transform(name):
    """After the cached deterministic preprocessing, before the 2D slices are drawn; validation stays clean."""
    from monai.transforms import Randomizable

    from common.corruptions import CORRUPTIONS, SEVERITIES, RandMRArtifactd
    from common.data.slices import RandAxialSlicesd

    train = _transforms(name, "train.json", "train")
    artifacts = [i for i, t in enumerate(train) if isinstance(t, RandMRArtifactd)]
    assert len(artifacts) == 1
    index, artifact = artifacts[0], train[artifacts[0]]
    first_random = next(i for i, t in enumerate(train) if isinstance(t, Randomizable))
    assert index > first_random, "PersistentDataset caches up to the first random transform: the artifact is after it"
    slicing = [i for i, t in enumerate(train) if isinstance(t, RandAxialSlicesd)]
    assert slicing == ([index + 1] if "_unet2d_" in name else []), "2D: the volume is corrupted, then sliced"
    assert artifact.prob == 0.5 and artifact.keys == ("image",)
    assert artifact.artifact.corruptions == tuple(CORRUPTIONS) and artifact.artifact.severities == SEVERITIES
    assert not any(isinstance(t, RandMRArtifactd) for t in _transforms(name, "train.json", "validate"))

    baseline = name.replace("_artaug", "_baseline")
    baseline_train = _transforms(baseline, "train.json", "train")
    assert [type(t) for t in train[:index] + train[index + 1:]] == [type(t) for t in baseline_train]
    trainer = json.loads((BUNDLES / name / "configs" / "train.json").read_text())["train"]["trainer"]
    assert "iteration_update" not in trainer, "the baseline's training step"


@pytest.mark.parametrize("name", [n for n in MODEL_BUNDLES if "_gaussaug_" in n])
def test_gaussian_augmentation_is_the_baseline_recipe_plus_smoothing_noise_last(name):
    """Randomized smoothing's noise at the bundle's own sigma on every training volume, after every other augmentation
    (rotating after it would interpolate the noise, and change its std) and before the 2D slices; validation clean."""
    from monai.transforms import Randomizable

    from common.data.slices import RandAxialSlicesd
    from common.defenses import RandSmoothingNoised

    train = _transforms(name, "train.json", "train")
    noises = [i for i, t in enumerate(train) if isinstance(t, RandSmoothingNoised)]
    assert len(noises) == 1
    index, noise = noises[0], train[noises[0]]
    slicing = [i for i, t in enumerate(train) if isinstance(t, RandAxialSlicesd)]
    assert slicing == ([index + 1] if "_unet2d_" in name else []), "2D: the volume gets the noise, then is sliced"
    later = [t for t in train[index + 1:] if isinstance(t, Randomizable) and not isinstance(t, RandAxialSlicesd)]
    assert not later, "the noise is the last augmentation"
    sigma = float(name.split("_sigma")[1])
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())["robustseg"]
    assert meta["defense"] == "gaussian_augmentation" and meta["defense_param"] == f"sigma={sigma}"
    assert noise.sigma == sigma and noise.prob == 1.0 and noise.keys == ("image",)
    assert noise.rand_gaussian_noise.std == sigma and not noise.rand_gaussian_noise.sample_std
    assert noise.rand_gaussian_noise.mean == 0.0
    assert not any(isinstance(t, RandSmoothingNoised) for t in _transforms(name, "train.json", "validate"))

    baseline = name.split("_gaussaug_")[0] + "_baseline"
    baseline_train = _transforms(baseline, "train.json", "train")
    assert [type(t) for t in train[:index] + train[index + 1:]] == [type(t) for t in baseline_train]
    trainer = json.loads((BUNDLES / name / "configs" / "train.json").read_text())["train"]["trainer"]
    assert "iteration_update" not in trainer, "the baseline's training step"


# every family x net in the default run; the other parameter values of a family differ only in numbers (slow run)
ONE_PER_FAMILY = [n for n in MODEL_BUNDLES if n.endswith(
    ("_distill_t20", "_advtrain_eps0.05", "_noiseaug", "_artaug", "_gaussaug_sigma0.25"))]
OTHERS = [n for n in MODEL_BUNDLES if n not in ONE_PER_FAMILY and n not in BASELINES]


@pytest.mark.parametrize(
    "name", BASELINES + ONE_PER_FAMILY + [pytest.param(n, marks=pytest.mark.slow) for n in OTHERS]
)
def test_train_evaluate_infer_on_tiny_data(name, tiny_datalist, tiny_baselines, tmp_path):
    baseline = tiny_baselines[f"brats_unet{'2d' if '_unet2d_' in name else '3d'}_baseline"]
    root = baseline if name in BASELINES else copy_bundle(name, tmp_path)
    overrides = tiny_overrides(tiny_datalist, root)
    if name not in BASELINES:
        overrides["init_weights"] = str(baseline / "models" / "model.pt")
        if "_distill_" in name:
            overrides["teacher_bundle"] = str(baseline)
            overrides["teacher_overrides"] = {"base_filters": overrides["base_filters"]}
        run_bundle("training", root, "train.json", overrides)
    assert (root / "models" / "model.pt").is_file(), "validation must save the best model"
    assert list((root / "models").glob("*checkpoint_epoch=1.pt")), "interval checkpoint for resuming"
    if name in BASELINES:
        trained = json.loads((root / "models" / "training_settings.json").read_text())
        assert trained["train_temperature"] == 1, "a baseline records the temperature it was trained at"
    if "_distill_" in name:
        record = json.loads((root / "models" / "distillation_record.json").read_text())
        assert record["recipe"] == "approximation" and record["teacher_train_temperature"] == 1
        assert record["student_logit_norm"] > 0 and record["logit_norm_ratio"] > 0

    run_bundle("evaluating", root, "evaluate.json", overrides)
    rows = (root / "eval" / "test_dice_per_subject.csv").read_text().strip().splitlines()
    assert rows[0] == "subject,dice_wt,dice_tc,dice_et" and len(rows) == 2
    assert rows[1].startswith("synth_"), "subject ids, not paths"
    summary = json.loads((root / "eval" / "test_dice_summary.json").read_text())
    assert summary["subjects"] == 1 and 0.0 <= summary["dice_wt_mean"] <= 1.0

    run_bundle("inferring", root, "inference.json", overrides)
    segs = list((root / "eval" / "segmentations").glob("*_seg.nii.gz"))
    assert len(segs) == 1
    test_entry = json.loads(Path(tiny_datalist).read_text())["testing"][0]
    source = nib.load(str(Path(tiny_datalist).parent / test_entry["image"][0]))
    seg = nib.load(str(segs[0]))
    assert seg.shape == source.shape, "the segmentation is on the input's grid"
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
