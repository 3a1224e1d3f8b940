"""networks.presets: one definition of each shipped network, read by the bundle, the demo and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from networks import PRESETS, ResUnet3D, preset
from pipeline.bundle_run import create_workflow

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def test_a_preset_is_a_copy_with_overrides():
    small = preset("small", norm="batch")
    small["block_inplanes"].append(256)
    assert small["norm"] == "batch" and PRESETS["small"]["norm"] == "instance"
    assert PRESETS["small"]["block_inplanes"] == [16, 32, 64, 128]
    with pytest.raises(ValueError, match="resunet18"):
        preset("resunet19")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_builds_a_resunet(name):
    with torch.device("meta"):
        net = ResUnet3D(**preset(name))
    assert net.levels == PRESETS[name]["levels"]


@pytest.mark.parametrize(
    ("mixins", "name"),
    [((), "small"), (("resunet18.yaml",), "resunet18"), (("resunet18.yaml", "small_denoiser.yaml"), "small")],
)
def test_the_bundle_network_keys_come_from_the_preset(mixins, name):
    files = [str(CONFIGS / f) for f in ("common.yaml", "train_denoise.yaml", *mixins)]
    parser = create_workflow(files, logging_file=False, initialize=False).parser
    assert {k: parser.get_parsed_content(f"network_def::{k}") for k in PRESETS[name]} == PRESETS[name]


def test_the_demo_trains_the_small_preset():
    from pipeline.demo.run import DemoSettings

    assert dict(DemoSettings().denoiser) == PRESETS["small"]
