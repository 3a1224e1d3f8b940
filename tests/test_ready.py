"""The ready denoiser the package ships (pipeline.inference.ready): it loads from its card; its recipe reproduces."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.inference.cli import _denoiser_weights
from pipeline.inference.ready import READY_DIR, default_weights
from pipeline.runtime.model_card import build_network, read_model_card


def test_the_shipped_weights_load_into_the_network_of_their_card():
    weights = default_weights()
    assert weights.parent == READY_DIR and weights.stat().st_size < 10_000_000
    card = read_model_card(weights)  # validated: a card that could run code is refused here
    assert card["model_card"]["task"] == "denoise" and card["model_card"]["weights"] == "denoiser.pt"
    assert "python -m pipeline.inference.ready" in card["model_card"]["training"]["command"]
    network = build_network(card)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    with torch.no_grad():
        assert network.eval()(torch.rand(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)


def test_a_run_of_other_length_records_its_own_recipe():
    from pipeline.inference.ready.__main__ import RECIPE, recipe

    assert recipe() == RECIPE
    longer = recipe(epochs=120, samples_per_epoch=48)
    assert longer["num_epochs"] == 120 and longer["synth::samples_per_epoch"] == 48 and longer["val_interval"] == 5
    assert recipe(epochs=2)["val_interval"] == 2 and RECIPE["num_epochs"] == 150  # the default is not edited


def test_the_command_line_uses_them_only_when_no_weights_are_given():
    assert _denoiser_weights(None, {}) == default_weights()
    assert _denoiser_weights("mine.pt", {}) == "mine.pt"
    assert _denoiser_weights(None, {"ckpt_path": "other.pt"}) is None  # the --set value stands


@pytest.mark.slow
def test_the_recipe_trains_and_packages_a_model_with_its_card(tmp_path):
    from pipeline.inference.ready.__main__ import package_model, recipe, train

    weights = train(
        tmp_path / "run", epochs=1, samples_per_epoch=2, **{"synth::map_spacing": 4.0, "synth::val_volumes": 1}
    )
    used = recipe(epochs=1, samples_per_epoch=2)
    packaged = package_model(weights, tmp_path / "ready", "python -m pipeline.inference.ready --epochs 1", used)
    card = json.loads((tmp_path / "ready" / "denoiser.json").read_text())
    assert packaged.name == "denoiser.pt" and card["model_card"]["noise"]["levels_255"] == [1.0, 30.0]
    assert card["model_card"]["training"]["recipe"]["num_epochs"] == 1  # the run's recipe, not the default's
    assert read_model_card(packaged) == card
