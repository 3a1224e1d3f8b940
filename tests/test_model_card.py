"""Self-describing models: training writes model.json beside the weights; inference needs only the weights.

Checked: the networks record a config that rebuilds them; a denoiser trained through the Python API leaves a
card that rebuilds it; ``--weights`` alone gives the same output as the full explicit configuration; an override
that contradicts the card is an error naming both values; TorchScript exports (ours and MONAI's ``ckpt_export``)
embed the card and run the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export

from networks import ResUnet3D
from pipeline.inference.infer import denoise_scans, load_weights, main
from pipeline.runtime.model_card import (
    ModelConfigMismatchError,
    build_network,
    card_path,
    copy_model_card,
    export_torchscript,
    load_torchscript,
    read_model_card,
    write_model_card,
)
from pipeline.training.classify import build_classifier
from tests.conftest import blob_volume

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
TINY = {"model_depth": 10, "levels": 2, "block_inplanes": [4, 8, 8, 8], "conv1_t_stride": 1, "conv1_t_size": 3}
QUIET = {"device": "cpu", "show_progress": False, "num_workers": 0}


def shapes(net: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_networks_record_a_config_that_rebuilds_them():
    unet = ResUnet3D(patch_size=16, residual_output=True, **TINY)
    for net in (
        unet,
        build_classifier("denoiser", num_classes=3, denoiser=unet),
        build_classifier("scratch", num_classes=2, model_depth=10, block_inplanes=[4, 8, 8, 8]),
    ):
        config = json.loads(json.dumps(net.init_config))  # what the card stores
        rebuilt = ConfigParser({"net": config}).get_parsed_content("net")
        assert type(rebuilt) is type(net) and shapes(rebuilt) == shapes(net)
    assert unet.init_config["residual_output"] is True and unet.init_config["levels"] == 2
    torch.jit.script(unet)  # the record is invisible to TorchScript


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny denoiser trained one epoch through the Python API: model.pt and its card in the run folder."""
    from pipeline.training.denoise import train_denoiser
    from pipeline.utils.seed import seed_everything
    from tests.test_engines import cubes

    seed_everything(0)
    net = ResUnet3D(**TINY)
    run = tmp_path_factory.mktemp("run")
    train_denoiser(cubes(2, 1), cubes(1, 2), net, run, max_epochs=1, roi_size=16, progress=False, device="cpu")
    return run / "model.pt"


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "scans" / "sub-01.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.round(blob_volume((20, 22, 18), seed=4)).astype(np.int16), np.eye(4)), path)
    return path


def test_training_writes_a_card_and_the_weights_alone_denoise_as_the_full_config_does(trained, scan, tmp_path):
    card = read_model_card(trained)
    assert card_path(trained) == trained.with_suffix(".json") and card["model_card"]["task"] == "denoise"
    assert card["network_def"]["_target_"] == "networks.ResUnet3D" and card["patch_size"] == [16, 16, 16]
    assert card["model_card"]["versions"]["monai"]
    load_weights(build_network(card), trained)  # the card rebuilds exactly the trained network
    by_card = denoise_scans(scan, tmp_path / "by_card", trained, **QUIET)
    assert by_card.count("done") == 1
    # every architecture setting the weights were trained with, given by hand (the bundle's defaults differ)
    explicit = {f"network_def::{k}": v for k, v in card["network_def"].items() if k not in ("_target_", "patch_size")}
    hidden = trained.with_name("elsewhere.pt")  # the same weights without a card: today's explicit config
    hidden.write_bytes(trained.read_bytes())
    by_hand = denoise_scans(scan, tmp_path / "by_hand", hidden, **QUIET, **explicit)
    assert by_hand.count("done") == 1
    a = nib.load(tmp_path / "by_card" / "sub-01_denoised.nii.gz").get_fdata()
    b = nib.load(tmp_path / "by_hand" / "sub-01_denoised.nii.gz").get_fdata()
    assert np.array_equal(a, b) and not np.array_equal(a, nib.load(scan).get_fdata())
    # the same settings given explicitly next to the card are accepted; a different tile size too
    assert (
        denoise_scans(scan, tmp_path / "again", trained, **QUIET, **(explicit | {"patch_size": [20] * 3})).failed == []
    )


def test_an_override_contradicting_the_weights_config_is_an_error_naming_both(trained, scan, tmp_path, capsys):
    with pytest.raises(ModelConfigMismatchError) as caught:
        denoise_scans(scan, tmp_path / "out", trained, **QUIET, **{"network_def::model_depth": 18})
    message = str(caught.value)
    assert "network_def::model_depth: given 18, the weights' config has 10" in message
    assert os.fspath(card_path(trained)) in message
    with pytest.raises(ModelConfigMismatchError, match='network_def::_target_: given "torch.nn.Identity"'):
        denoise_scans(scan, tmp_path / "out", trained, network_def={"_target_": "torch.nn.Identity"}, **QUIET)
    args = ["denoise", os.fspath(scan), "--output", os.fspath(tmp_path / "o"), "--weights", os.fspath(trained)]
    assert main([*args, "--device", "cpu", "--set", "network_def::levels=3"]) == 2
    assert "network_def::levels: given 3, the weights' config has 2" in capsys.readouterr().err


def test_a_network_that_does_not_describe_itself_gets_a_card_without_network_def(tmp_path, caplog):
    path = write_model_card(tmp_path / "model.pt", torch.nn.Conv3d(1, 1, 3), "denoise", config={"spacing": None})
    card = json.loads(path.read_text())
    assert "network_def" not in card and card["spacing"] is None
    assert "needs the network given" in caplog.text


def test_torchscript_exports_embed_the_card_and_denoise_alike(trained, scan, tmp_path):
    ts = export_torchscript(trained, tmp_path / "model.ts")
    network, card = load_torchscript(ts)
    assert card == read_model_card(trained) == read_model_card(ts)
    x = torch.rand(1, 1, 16, 20, 16)
    eager = load_weights(build_network(card), trained).eval()
    with torch.no_grad():
        assert torch.allclose(network(x), eager(x), atol=1e-5)
    denoise_scans(scan, tmp_path / "pt", trained, **QUIET)
    denoise_scans(scan, tmp_path / "ts", ts, **QUIET)  # the TorchScript file alone
    a = nib.load(tmp_path / "pt" / "sub-01_denoised.nii.gz").get_fdata()
    b = nib.load(tmp_path / "ts" / "sub-01_denoised.nii.gz").get_fdata()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
    # MONAI's own exporter: the card is a config overlay, embedded as an extra file under its own name
    configs = [os.fspath(CONFIGS / "common.yaml"), os.fspath(CONFIGS / "inference.yaml"), os.fspath(card_path(trained))]
    ckpt_export(
        net_id="network_def",
        filepath=os.fspath(tmp_path / "monai.ts"),
        ckpt_file=os.fspath(trained),
        meta_file=os.fspath(CONFIGS / "metadata.json"),
        config_file=configs,
    )
    assert read_model_card(tmp_path / "monai.ts")["network_def"] == card["network_def"]


def test_weights_derived_from_others_get_their_card_only_when_written(tmp_path):
    network = ResUnet3D(model_depth=10, block_inplanes=[4, 8, 8, 8], levels=2)
    source, target = tmp_path / "model.pt", tmp_path / "adapted.pt"
    torch.save(network.state_dict(), source)
    write_model_card(source, network, "denoise")
    assert copy_model_card(source, target) is None and not card_path(target).exists()  # refused: no weights
    torch.save(network.state_dict(), target)
    assert copy_model_card(source, target) == card_path(target)
    card = read_model_card(target)
    assert card["derived_from"] == str(source)
    assert {k: v for k, v in card.items() if k != "derived_from"} == read_model_card(source)
    assert isinstance(build_network(card), ResUnet3D)
