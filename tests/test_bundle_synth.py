"""The generator's bundle mixin (train_synth.yaml): MONAI's property check and one tiny epoch end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.bundle_run import create_workflow

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
TRAIN_SYNTH = [os.fspath(CONFIGS / n) for n in ("common.yaml", "train_denoise.yaml", "train_synth.yaml")]
TINY = {"network_def::model_depth": 10, "network_def::block_inplanes": [4, 8, 8, 8]}
PHANTOM = {
    "synth::maps": "$pipeline.data.synth.phantom_tissue_maps((40, 40, 40), 2.0)",
    "synth::samples_per_epoch": 4,
    "synth::val_volumes": 1,
    "synth::val_voxel_size": 4.0,
    "synth::identity_check_after": 1,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def overrides(tmp_path: Path) -> dict:
    return {
        "output_dir": os.fspath(tmp_path / "run"),
        "ckpt_dir": os.fspath(tmp_path / "models"),
        "num_workers": 0,
        "device": "cpu",
        "patch_size": [24, 24, 24],
        "num_epochs": 1,
        "batch_size": 2,
        **TINY,
        **PHANTOM,
    }


def test_train_synth_passes_monais_property_check(tmp_path):
    workflow = create_workflow(TRAIN_SYNTH, workflow_type="train", logging_file=False, **overrides(tmp_path))
    assert workflow.check_properties() == []
    assert workflow.parser.get_parsed_content("splits").train == ("synth-generator",)


def test_train_synth_runs_one_tiny_epoch_on_generated_heads(tmp_path):
    workflow = create_workflow(TRAIN_SYNTH, workflow_type="train", logging_file=False, **overrides(tmp_path))
    try:
        workflow.run()
    finally:
        workflow.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["train"] == ["synth-generator"] and splits["val"] == ["synth-val-0"]
    check = next(
        h for h in workflow.parser.get_parsed_content("train::handlers") if type(h).__name__ == "IdentityLossCheck"
    )
    assert len(check.losses) == 2 and check.ratios  # 4 patches in batches of 2, checked from the first iteration
    trainer = workflow.parser.get_parsed_content("train::trainer")
    assert trainer.state.iteration == 2


def test_generator_settings_reach_the_chain(tmp_path):
    workflow = create_workflow(
        TRAIN_SYNTH, logging_file=False, initialize=False, **overrides(tmp_path), **{"synth::head_prob": 0.25}
    )
    chain = workflow.parser.get_parsed_content("train::preprocessing")
    contrast = next(t for t in chain.transforms if type(t).__name__ == "RandTissueContrastd")
    assert contrast.synth.head_prob == 0.25
