"""Stein's unbiased risk estimate (pipeline.evaluation.sure): it matches the true error, ranks denoisers as the clean
reference does, trains, and guards adaptation (with ``benchmarks.adaptation``, which checks the guard against truth)."""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.layers import GaussianFilter

from benchmarks import adaptation
from benchmarks.whole_head import make_model
from pipeline.evaluation.sure import SureBatch, SureLoss, heldout_sure, sure_map
from pipeline.training.adapt import adapt_denoiser
from tests.conftest import _affine, blob_volume
from tests.test_adapt import noisy_folder, preprocessing, tiny_network  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def noisy_batch(sigmas=(0.05, 0.1), size=24, seed=0):
    """Clean blobs (B, 1, size^3), their noisy copies at ``sigmas`` and a 10 % held-out mask."""
    torch.manual_seed(seed)
    clean = torch.stack([torch.from_numpy(blob_volume((size,) * 3, seed=i)).float()[None] for i in range(len(sigmas))])
    clean = clean / clean.amax(dim=(1, 2, 3, 4), keepdim=True)
    sigma = torch.tensor(sigmas)
    noisy = clean + sigma.view(-1, 1, 1, 1, 1) * torch.randn_like(clean)
    holdout = (torch.rand(clean.shape) < 0.1).float()
    return clean, {"image": noisy, "holdout": holdout, "sigma": sigma}


@pytest.mark.parametrize("name", ["identity", "gaussian 0.7", "gaussian 1.5", "gaussian 3"])
def test_heldout_sure_estimates_the_true_squared_error_without_the_clean_volume(name):
    clean, batch = noisy_batch()
    denoiser = torch.nn.Identity() if name == "identity" else GaussianFilter(3, float(name.split()[1]))
    estimate = heldout_sure(denoiser, [batch])
    with torch.no_grad():
        true = float((((denoiser(batch["image"]) - clean) ** 2) * batch["holdout"]).sum() / batch["holdout"].sum())
    assert estimate == pytest.approx(true, rel=0.1)


def test_sure_ranks_denoisers_as_the_clean_reference_does_where_the_blind_spot_loss_may_not():
    clean, batch = noisy_batch(sigmas=(0.08, 0.08))
    filters = {s: GaussianFilter(3, s) for s in (0.5, 1.0, 2.0, 4.0)}
    sure = {s: heldout_sure(f, [batch]) for s, f in filters.items()}
    with torch.no_grad():
        true = {s: float(((f(batch["image"]) - clean) ** 2).mean()) for s, f in filters.items()}
    assert sorted(sure, key=sure.get) == sorted(true, key=true.get)


def test_sure_map_of_the_identity_is_sigma_squared_on_average():
    generator = torch.Generator().manual_seed(0)  # unseeded, it failed about one run in two
    image, probe = (
        torch.randn(2, 1, 16, 16, 16, generator=generator),
        torch.randn(2, 1, 16, 16, 16, generator=generator),
    )
    sigma = torch.tensor([0.1, 0.2])
    terms = sure_map(image, image + 0.01 * sigma.view(-1, 1, 1, 1, 1) * probe, image, probe, sigma)
    assert float(terms[0].mean()) == pytest.approx(0.01, rel=0.05)
    assert float(terms[1].mean()) == pytest.approx(0.04, rel=0.05)


def test_sure_batch_doubles_the_batch_and_the_loss_reads_it_back():
    clean, batch = noisy_batch()
    inputs, targets = SureBatch(seed=0)(batch)
    assert inputs.shape[0] == 4 and targets.shape[:2] == (2, 4)
    assert torch.equal(inputs[:2], batch["image"]) and not torch.equal(inputs[2:], batch["image"])
    assert torch.equal(targets[:, 2:3], (batch["holdout"] <= 0).float())  # held-out voxels left out of the loss
    loss = SureLoss()(GaussianFilter(3, 1.0)(inputs), targets)
    with torch.no_grad():
        true = float(((GaussianFilter(3, 1.0)(batch["image"]) - clean) ** 2).mean())
    assert float(loss) == pytest.approx(true, rel=0.15)
    with pytest.raises(ValueError, match="SureBatch"):
        SureLoss()(inputs[:2], targets)
    with pytest.raises(ValueError, match="positive sigma"):
        SureBatch()({"image": batch["image"], "sigma": torch.tensor([0.1, 0.0])})


def test_sure_adaptation_trains_a_network_and_reports_the_estimated_gain(noisy_folder, tmp_path):  # noqa: F811
    items = [{"image": os.fspath(noisy_folder / "s0.nii.gz"), "subject": "s0"}]
    result = adapt_denoiser(
        tiny_network(),
        items,
        preprocessing(),
        tmp_path / "adapted.pt",
        loss="sure",
        criterion="sure",
        patch_size=16,
        lr=3e-3,
        iterations=30,
        check_every=10,
        batch_size=4,
        num_samples=2,
        report_path=tmp_path / "adaptation.json",
    )
    assert result.accepted and result.psnr_gain_db > 0.5 and result.criterion == "sure"
    assert result.scale == pytest.approx((result.noise_levels["s0"] / 255) ** 2, rel=1e-4)
    report = json.loads((tmp_path / "adaptation.json").read_text())
    assert report["loss"] == "sure" and report["psnr_gain_db"] == pytest.approx(result.psnr_gain_db)


def test_magnitude_scans_are_warned_about_when_the_loss_or_check_assumes_gaussian_noise(
    noisy_folder,  # noqa: F811
    tmp_path,
    caplog,
):
    magnitude = tmp_path / "magnitude.nii.gz"
    image = nib.load(noisy_folder / "s0.nii.gz")
    nib.save(nib.Nifti1Image(np.abs(np.asarray(image.dataobj)), image.affine), magnitude)
    for path, loss, criterion, warned in (
        (magnitude, "sure", "sure", True),
        (magnitude, "n2s", "sure", True),  # the check assumes Gaussian noise
        (magnitude, "n2s", "blindspot", False),  # neither assumes Gaussian noise
        (noisy_folder / "s0.nii.gz", "sure", "sure", False),  # negative voxels: additive noise
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.training.adapt"):
            adapt_denoiser(
                tiny_network(),
                [{"image": os.fspath(path), "subject": "s0"}],
                preprocessing(),
                tmp_path / "adapted.pt",
                loss=loss,
                criterion=criterion,
                patch_size=16,
                iterations=2,
                check_every=1,
                batch_size=2,
                num_samples=2,
            )
        assert ("no negative voxel" in caplog.text) is warned, (loss, criterion, path)
        if warned:
            assert os.fspath(path) in caplog.text and "Rician" in caplog.text
            assert ("'sure' loss" in caplog.text) is (loss == "sure") and "SURE check" in caplog.text


def test_a_check_that_needs_a_noise_level_names_the_scan_when_it_has_none(noisy_folder, tmp_path):  # noqa: F811
    items = [{"image": os.fspath(noisy_folder / "s0.nii.gz"), "subject": "s0"}]
    with pytest.raises(ValueError, match="s0.nii.gz: the noise level is 0"):
        adapt_denoiser(tiny_network(), items, preprocessing(), tmp_path / "a.pt", sigma=0.0, patch_size=16)
    with pytest.raises(ValueError, match="criterion"):
        adapt_denoiser(tiny_network(), items, preprocessing(), tmp_path / "a.pt", criterion="psnr")


# ----------------------------------------------------------------------------------------------- the benchmark
def fake_demo_run(root, subjects=2):
    """A demo run folder as benchmarks.adaptation reads it: a denoiser with its card, clean test volumes, masks."""
    make_model(root / "models" / "denoiser" / "model.pt")
    (root / "splits").mkdir(parents=True)
    names = [f"sub-{i:03d}" for i in range(subjects)]
    (root / "splits" / "denoiser.json").write_text(json.dumps({"train": [], "val": [], "test": names}))
    for folder in ("clean", "masks"):
        (root / "cohort" / folder).mkdir(parents=True)
    for i, name in enumerate(names):
        volume = blob_volume((24, 24, 24), seed=i)
        nib.save(nib.Nifti1Image(volume, _affine()), root / "cohort" / "clean" / f"{name}.nii.gz")
        mask = (volume > 0.1 * volume.max()).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, _affine()), root / "cohort" / "masks" / f"{name}.nii.gz")
    return root


def test_adaptation_benchmark_scores_every_config_against_the_clean_volumes(tmp_path):
    run = fake_demo_run(tmp_path / "seed0")
    out = tmp_path / "adaptation.json"
    args = ["--runs", str(run), "--sites", "gaussian10", "--configs", "n2s:blindspot", "sure:sure"]
    result = adaptation.main([*args, "--iterations", "2", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    assert [r["config"] for r in result["rows"]] == ["n2s:blindspot", "sure:sure"]
    for row in result["rows"]:
        assert row["site"] == "gaussian10" and row["steps"] <= 2 and np.isfinite(row["start volume"])
        assert row["accepted"] or row["true gain volume"] == 0.0  # a refused adaptation returns the start
    assert result["rows"][0]["SURE gain"] is None  # the blind-spot check has no PSNR estimate
    assert [s["config"] for s in result["summary"]] == ["n2s:blindspot", "sure:sure"]
    with pytest.raises(SystemExit):
        adaptation.main(["--runs", str(run), "--configs", "n2s:psnr"])
    with pytest.raises(SystemExit):
        adaptation.main(["--runs", str(run), "--sites", "speckle5"])


def test_the_summary_counts_harmful_acceptances_and_bootstraps_the_gain():
    rows = [
        {"config": "a", "accepted": True, "true gain brain": g, "true gain volume": g} for g in (1.0, -0.5, 0.5)
    ] + [{"config": "b", "accepted": False, "true gain brain": 0.0, "true gain volume": 0.0}]
    first, second = adaptation.summarise(rows)
    assert first["accepted"] == 3 and first["harmful accepted"] == 1 and first["worst accepted"] == -0.5
    assert first["gain volume"].startswith("+0.33 [")
    assert second["accepted"] == 0 and second["gain brain"] == "+0.00 [+0.00, +0.00]"


def test_sure_at_scaled_sigmas_is_linear_in_the_scale_squared_and_the_first_value_is_the_plain_estimate():
    _, batch = noisy_batch()
    smooth = GaussianFilter(3, 1.0)
    plain = heldout_sure(smooth, [batch])
    values = heldout_sure(smooth, [batch], sigma_scales=(0.5, 2.0))
    assert values[0] == pytest.approx(plain)
    # SURE(k sigma) = residual + k^2 stein: three points on one line in k^2
    slope = (values[2] - values[1]) / (4.0 - 0.25)
    assert values[0] == pytest.approx(values[1] + slope * (1.0 - 0.25), rel=1e-5)
    # a smoother gains with a larger assumed sigma, so the band can reverse a ranking that rests on sigma
    assert values[2] < values[0] < values[1] or values[2] > values[0] > values[1]


def test_a_gain_that_depends_on_the_assumed_sigma_is_refused_by_the_band():
    """Smoothing more looks better when sigma is assumed larger: the guard accepts only a gain that holds across."""
    from pipeline.training.adapt import HeldOutGuard

    _, batch = noisy_batch(sigmas=(0.3, 0.3))
    light, heavy = GaussianFilter(3, 0.6), GaussianFilter(3, 0.8)
    band = (
        heldout_sure(light, [batch], sigma_scales=(0.75, 1.25)),
        heldout_sure(heavy, [batch], sigma_scales=(0.75, 1.25)),
    )
    assert band[1][0] < band[0][0] and band[1][1] > band[0][1]  # heavier wins at the estimate, loses at 0.75 x

    class Engine:  # what HeldOutGuard reads of an ignite engine
        class state:
            iteration = 0

        def terminate(self):
            pass

    for scales, taken in (((), True), ((0.75, 1.25), False)):
        current = {"net": light}
        guard = HeldOutGuard(
            torch.nn.Conv3d(1, 1, 1),
            lambda _, now=current, scales=scales: heldout_sure(now["net"], [batch], sigma_scales=scales),
        )
        engine = Engine()
        engine.state.iteration = 0
        guard.check(engine)
        current["net"], engine.state.iteration = heavy, 1
        guard.check(engine)
        assert (guard.best_iteration == 1) == taken


def test_the_demo_recipe_benchmark_scores_both_models_on_the_validation_volumes_only(tmp_path):
    from benchmarks import demo_recipe

    run = fake_demo_run(tmp_path / "run")
    split = run / "splits" / "denoiser.json"
    names = json.loads(split.read_text())["test"]
    split.write_text(json.dumps({"train": [], "val": names[:1], "test": names[1:]}))
    result = demo_recipe.main(
        ["--run", str(run), "--levels", "15", "--noises", "gaussian", "--out", str(tmp_path / "r.json")]
    )
    assert result["subjects"] == names[:1] and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["noisy"] == pytest.approx(20 * np.log10(255 / 15), abs=0.5)  # sigma 15/255 of the robust maximum
    assert all(np.isfinite(row[m]) for m in ("demo", "demo_guarded", "ready", "ready_guarded"))
    task = result["means"][0]
    assert result["decision"]["switch"] == (task["ready_guarded"] > task["demo_guarded"])
