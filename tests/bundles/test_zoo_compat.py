"""Model Zoo compatibility: metadata valid under the (offline) schema, TorchScript export equal to the eager net."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata

from common.bundles import PACKAGE_DIR, bundle_specs
from common.engines import load_weights

from .conftest import BUNDLES

SCHEMA = PACKAGE_DIR / "schemas" / "bundle_metadata.schema.json"
ALL_BUNDLES = [spec.name for spec in bundle_specs()]


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_metadata_valid_offline(name):
    # verify_metadata downloads the schema only when `filepath` does not exist: the vendored copy keeps it offline
    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_schema_rejects_incomplete_metadata(tmp_path):
    meta = json.loads((BUNDLES / "brats_unet3d_baseline" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", ["brats_unet3d_baseline", "brats_unet2d_baseline"])
def test_ckpt_export_matches_eager(name, tiny_baselines, tmp_path):
    root = tiny_baselines[name]
    configs = root / "configs"
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(ts), ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
        bundle_root=str(root), base_filters=4,
    )
    scripted = torch.jit.load(str(ts))
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.update({"base_filters": 4})
    eager = load_weights(parser.get_parsed_content("network_def"), root / "models" / "model.pt").eval()
    x = torch.rand(1, 4, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=1e-4)
