"""Self-supervised adaptation (pipeline.training.adapt, transforms.blindspot): blind-spot masking, hold-out, guard,
bundle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from networks import ResUnet3D
from pipeline.bundle_run import create_workflow
from pipeline.training.adapt import (
    AdaptationRefused,
    AdaptationResult,
    BlindSpotBatch,
    MaskedMSELoss,
    RecorruptBatch,
    adapt_denoiser,
    heldout_loss,
)
from tests.conftest import _affine, blob_volume
from transforms.blindspot import HoldoutMask, HoldoutMaskd, blind_spot_input
from transforms.intensity import ScalePercentiled
from transforms.io import LoadScand, canonical_transforms

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
TINY = {"model_depth": 10, "levels": 2, "block_inplanes": [4, 8, 8, 8], "conv1_t_stride": 1, "conv1_t_size": 3}


def tiny_network(seed: int = 0, residual: bool = True) -> ResUnet3D:
    torch.manual_seed(seed)
    return ResUnet3D(spatial_dims=3, in_channels=1, out_channels=1, residual_output=residual, **TINY)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def noisy_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    clean = blob_volume((24, 24, 24), seed=3)
    noisy = clean + rng.normal(0, 20 / 255 * clean.max(), clean.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), _affine()), root / "s0.nii.gz")
    return root


def preprocessing() -> Compose:
    steps = [LoadScand(keys="image"), *canonical_transforms("image", None)]
    return Compose([*steps, ScalePercentiled(keys="image", lower=None, upper=99.5, clip=False)])


# ----------------------------------------------------------------------------------------------- blind spot
def test_blind_spot_replaces_masked_voxels_by_their_unmasked_neighbours_mean():
    image = torch.rand(2, 1, 6, 6, 6)
    mask = torch.zeros_like(image)
    mask[0, 0, 2, 2, 2] = 1
    out = blind_spot_input(image, mask)
    assert torch.equal(out[mask == 0], image[mask == 0])
    neighbours = image[0, 0, 1:4, 1:4, 1:4].sum() - image[0, 0, 2, 2, 2]
    assert float(out[0, 0, 2, 2, 2]) == pytest.approx(float(neighbours) / 26, rel=1e-5)


def test_blind_spot_input_is_j_invariant_on_the_masked_set():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 8, 8, 8, generator=generator)
    mask = (torch.rand(image.shape, generator=generator) < 0.3).float()
    changed = image + mask * torch.randn(image.shape, generator=generator)  # only masked voxels differ
    assert torch.allclose(blind_spot_input(image, mask), blind_spot_input(changed, mask))


def test_blind_spot_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mask shape"):
        blind_spot_input(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4))


def test_holdout_mask_is_fixed_per_scan_name():
    img = MetaTensor(torch.zeros(1, 20, 20, 20), meta={"filename_or_obj": "/a/sub-01.nii.gz"})
    first, again = HoldoutMask(0.1, seed=0)(img), HoldoutMask(0.1, seed=0)(img.clone())
    other = HoldoutMask(0.1, seed=0)(img, name="sub-02")
    assert first.shape == (1, 20, 20, 20) and torch.equal(first, again) and not torch.equal(first, other)
    assert abs(float(first.mean()) - 0.1) < 0.02
    d = HoldoutMaskd("image", fraction=0.2, seed=1, id_key="subject")({"image": img, "subject": "x"})
    assert abs(float(d["holdout"].mean()) - 0.2) < 0.03
    with pytest.raises(ValueError, match="fraction"):
        HoldoutMask(0.9)


# ----------------------------------------------------------------------------------------------- batches and losses
def test_blind_spot_batch_targets_only_masked_voxels_that_are_not_held_out():
    image = torch.rand(2, 1, 8, 8, 8)
    holdout = torch.zeros_like(image)
    holdout[:, :, :4] = 1
    inputs, targets = BlindSpotBatch(mask_prob=0.5, seed=0)({"image": image, "holdout": holdout})
    values, mask = targets[:, :1], targets[:, 1:]
    assert torch.equal(values, image) and float(mask[:, :, :4].sum()) == 0 and float(mask.sum()) > 0
    assert torch.equal(inputs[mask == 0], image[mask == 0])
    loss = MaskedMSELoss()(image + 0.5, targets)
    assert float(loss) == pytest.approx(0.25)


def test_recorrupted_pairs_have_the_stated_noise():
    image = torch.zeros(4, 1, 16, 16, 16)
    inputs, targets = RecorruptBatch(sigma=0.1, seed=0)({"image": image})
    assert float(inputs.std()) == pytest.approx(0.1, rel=0.05) and float(targets[:, :1].std()) == pytest.approx(
        0.1, rel=0.05
    )
    assert torch.allclose(inputs, -targets[:, :1]) and float(targets[:, 1:].min()) == 1.0
    per_sample = RecorruptBatch(seed=0)({"image": image, "sigma": torch.tensor([0.0, 0.1, 0.2, 0.3])})[0]
    assert float(per_sample[0].abs().max()) == 0.0 and float(per_sample[3].std()) > float(per_sample[1].std())


# ----------------------------------------------------------------------------------------------- adaptation + guard
def test_adaptation_reduces_the_held_out_blind_spot_loss_and_saves(noisy_folder, tmp_path):
    items = [{"image": os.fspath(noisy_folder / "s0.nii.gz"), "subject": "s0"}]
    network = tiny_network(residual=False)  # a random start: its output is far from the scan
    statistics = {k: v.clone() for k, v in network.state_dict().items() if "running" in k}
    result = adapt_denoiser(
        network,
        items,
        preprocessing(),
        tmp_path / "adapted.pt",
        patch_size=16,
        lr=3e-3,
        iterations=30,
        check_every=10,
        batch_size=4,
        num_samples=2,
        report_path=tmp_path / "adaptation.json",
    )
    assert result.accepted and result.best_loss < 0.9 * result.start_loss and result.best_iteration > 0
    assert result.history[0][0] == 0 and result.saved == os.fspath(tmp_path / "adapted.pt")
    assert 15 < result.noise_levels["s0"] < 30  # sigma 20/255 of the clean maximum, estimated blind
    state = torch.load(tmp_path / "adapted.pt", weights_only=True)
    assert statistics and all(torch.equal(state[k], v) for k, v in statistics.items())  # freeze_norm held
    fresh = tiny_network(seed=1)
    fresh.load_state_dict(state)
    report = json.loads((tmp_path / "adaptation.json").read_text())
    assert report["accepted"] and report["improvement"] > 0.1 and report["loss"] == "n2s"


def test_guard_refuses_a_harmful_learning_rate_and_keeps_the_starting_weights(noisy_folder, tmp_path):
    items = [{"image": os.fspath(noisy_folder / "s0.nii.gz"), "subject": "s0"}]
    network = tiny_network()
    start = {k: v.clone() for k, v in network.state_dict().items()}
    result = adapt_denoiser(
        network,
        items,
        preprocessing(),
        tmp_path / "adapted.pt",
        patch_size=16,
        lr=10.0,
        iterations=30,
        check_every=5,
        batch_size=4,
        num_samples=2,
    )
    assert not result.accepted and result.saved is None and not (tmp_path / "adapted.pt").exists()
    assert "refused" in result.reason and result.iterations < 30  # stopped early
    assert all(torch.equal(start[k], v) for k, v in network.state_dict().items())
    with pytest.raises(AdaptationRefused, match="refused"):
        result.raise_if_refused()


def test_heldout_loss_of_the_identity_is_the_blind_spot_error():
    image = torch.rand(1, 1, 8, 8, 8)
    holdout = (torch.rand(image.shape) < 0.1).float()
    expected = float((((blind_spot_input(image, holdout) - image) ** 2) * holdout).sum() / holdout.sum())
    assert heldout_loss(torch.nn.Identity(), [{"image": image, "holdout": holdout}]) == pytest.approx(expected)


def test_adaptation_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="loss"):
        adapt_denoiser(tiny_network(), [{"image": "x"}], preprocessing(), tmp_path / "a.pt", loss="n2v")
    with pytest.raises(ValueError, match="num_samples"):
        adapt_denoiser(tiny_network(), [{"image": "x"}], preprocessing(), tmp_path / "a.pt", num_samples=3)
    result = AdaptationResult(True, "ok", 1.0, 0.5, 3, 3, [(0, 1.0), (3, 0.5)])
    assert result.improvement == pytest.approx(0.5) and result.raise_if_refused() is result


# ----------------------------------------------------------------------------------------------- the bundle
def test_adapt_yaml_adapts_a_trained_model_on_a_folder(noisy_folder, tmp_path):
    torch.save(tiny_network().state_dict(), tmp_path / "model.pt")
    files = [os.fspath(CONFIGS / "common.yaml"), os.fspath(CONFIGS / "adapt.yaml")]
    overrides = {f"network_def::{k}": v for k, v in TINY.items()}
    workflow = create_workflow(
        files,
        workflow_type=None,
        logging_file=False,
        dataset_dir=os.fspath(noisy_folder),
        ckpt_dir=os.fspath(tmp_path),
        ckpt_path=os.fspath(tmp_path / "model.pt"),  # (without it: the ready denoiser the package ships)
        output_dir=os.fspath(tmp_path / "eval"),
        patch_size=[16, 16, 16],
        adapt_iterations=20,
        check_every=10,
        learning_rate=0.003,
        num_workers=0,
        device="cpu",
        **{"network_def::residual_output": True, "network_def::norm": "batch"},  # tiny_network's (frozen) batch norm
        **overrides,
    )
    try:
        workflow.run()
    finally:
        workflow.finalize()
    report = json.loads((tmp_path / "eval" / "adaptation.json").read_text())
    assert report["accepted"] == (tmp_path / "adapted.pt").exists()
    assert [step for step, _ in report["history"]][0] == 0 and report["iterations"] >= 10
