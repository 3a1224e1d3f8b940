"""``benchmarks.real_scans``: the shipped real scans, their seeded noisy copies, the scoring and the ``--quick`` run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import real_scans
from benchmarks.whole_head import make_model
from transforms.intensity import robust_max


@pytest.fixture(scope="module")
def anatomical():
    (scan,) = real_scans.real_scans(["anatomical"])
    return scan


def test_real_scans_finds_the_nibabel_t1_on_its_robust_maximum_scale_with_a_head_mask(anatomical):
    assert anatomical.path.name == "anatomical.nii" and anatomical.path.is_file()
    assert anatomical.volume.shape == (33, 41, 25) and anatomical.volume.dtype == np.float32
    assert anatomical.spacing_mm == (2.0, 2.0, 2.0)
    assert robust_max(anatomical.volume) == pytest.approx(1.0, rel=1e-4)
    assert 3 < anatomical.noise_sigma_255 < 30  # a real scan's own noise, on the 0-255 scale
    assert anatomical.mask.shape == anatomical.volume.shape and anatomical.mask.dtype == bool
    assert 0.3 < anatomical.mask.mean() < 0.95
    info = anatomical.info()
    assert info["file"] == "nibabel/tests/data/anatomical.nii" and info["own_noise_sigma_255"] > 0
    json.dumps(info)


def test_every_listed_scan_loads_as_a_3d_volume_large_enough_for_3d_scores():
    scans = real_scans.real_scans()
    assert [s.name for s in scans] == [name for name, _, _ in real_scans.SCANS]
    for scan in scans:
        assert scan.volume.ndim == 3 and min(scan.volume.shape) >= 7  # SSIM's 7^3 window fits
        assert 0.1 < scan.mask.mean() < 0.95 and scan.noise_sigma_255 > 0
    with pytest.raises(ValueError, match="unknown scans"):
        real_scans.real_scans(["mni152"])


def test_noisy_copies_are_seeded_and_add_noise_of_the_level(anatomical):
    (case,) = real_scans.noisy_cases([anatomical], ["gaussian"], [10.0], seed=0)
    assert case["clean"] is anatomical.volume and case["level"] == 10.0
    assert np.std(case["noisy"] - case["clean"]) == pytest.approx(10 / 255, rel=0.03)
    again = real_scans.noisy_cases([anatomical], ["gaussian"], [10.0], seed=0)[0]["noisy"]
    np.testing.assert_array_equal(case["noisy"], again)
    assert not np.array_equal(case["noisy"], real_scans.noisy_cases([anatomical], ["gaussian"], [10.0], 1)[0]["noisy"])
    rician = real_scans.noisy_cases([anatomical], ["rician"], [10.0], seed=0)[0]["noisy"]
    assert rician.min() >= 0 and not np.array_equal(rician, case["noisy"])


def test_a_network_that_returns_its_input_scores_the_noisy_input(anatomical):
    (case,) = real_scans.noisy_cases([anatomical], ["gaussian"], [15.0], seed=0)
    noisy = real_scans.score_classical(case, "noisy")
    # inference floors its output at 0 (output_min): the identity returns the noisy input without its negative values
    floored = real_scans.score_classical(dict(case, noisy=np.maximum(case["noisy"], 0.0)), "noisy")
    same = real_scans.score_network(case, "identity", torch.nn.Identity(), 32, overlap=0.25)
    assert same["method"] == "identity"
    for key in ("psnr_head", "psnr_whole", "ssim_head", "ssim_whole"):
        assert same[key] == pytest.approx(floored[key], abs=0.011)
    assert same["psnr_whole"] > noisy["psnr_whole"]  # the reference is never negative: the floor only removes error
    assert noisy["psnr_head"] == pytest.approx(20 * np.log10(255 / 15), abs=0.3)


def test_differences_subtract_each_method_from_each_network_per_case():
    rows = [
        {"scan": "s", "noise": "gaussian", "level": 5.0, "method": m, "psnr_head": h, "psnr_whole": w}
        for m, h, w in (("net", 30.0, 29.0), ("nl_means", 28.5, 28.0), ("gaussian", 28.0, 27.0))
    ]
    (diff,) = real_scans.differences(rows, ["net"])
    assert diff == {
        "network": "net",
        "scan": "s",
        "noise": "gaussian",
        "level": 5.0,
        "nl_means_head": 1.5,
        "nl_means_whole": 1.0,
        "gaussian_head": 2.0,
        "gaussian_whole": 2.0,
    }


def test_load_denoiser_needs_a_card_with_the_preprocessing_the_benchmark_runs(tmp_path):
    weights = make_model(tmp_path / "run" / "model.pt")
    model, card = real_scans.load_denoiser(weights)
    assert not model.training and card["patch_size"] == [32, 32, 32]
    card["spacing"] = [1.0, 1.0, 1.0]
    weights.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="spacing"):
        real_scans.load_denoiser(weights)
    weights.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match="no model card"):
        real_scans.load_denoiser(weights)


def test_quick_run_scores_a_trained_network_file_and_writes_the_json(tmp_path, capsys):
    weights = make_model(tmp_path / "tiny" / "model.pt")
    out = tmp_path / "real_scans.json"
    result = real_scans.main(["--quick", "--weights", str(weights), "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    expected = {"benchmark", "quick", "machine", "setup", "scans", "left_out", "rows", "differences", "ratios"}
    assert expected <= set(data) and data["benchmark"] == "real_scans" and data["quick"]
    assert [s["name"] for s in data["scans"]] == ["anatomical"]
    assert data["setup"]["networks"][0]["label"] == "tiny" and data["setup"]["levels_255"] == [15.0]
    methods = {r["method"] for r in data["rows"]}
    assert methods == {"noisy", "gaussian", "nl_means", "tiny"}  # no BM4D in a quick run
    assert {(r["noise"], r["level"]) for r in data["rows"]} == {("gaussian", 15.0), ("rician", 15.0)}
    for row in data["rows"]:
        assert all(np.isfinite(row[k]) for k in ("psnr_head", "psnr_whole", "ssim_head", "ssim_whole", "seconds"))
    assert len(data["differences"]) == 2 and "bm4d_head" not in data["differences"][0]
    assert any(key.startswith("tiny - NL means") and "target >= +1 dB" in key for key in data["ratios"])
    printed = capsys.readouterr().out
    assert "PSNR, head mask / whole volume" in printed and "own noise" in printed and "tiny - best Gaussian" in printed


def test_networks_are_named_by_label_then_by_folder_and_repeated_names_are_numbered():
    assert real_scans._labels(["runs/a/model.pt", "runs/b/model.pt"], ["mine"]) == ["mine", "b"]
    assert real_scans._labels(["runs/a/model.pt", "runs/a/best.pt"], []) == ["a (1)", "a (2)"]


def test_adaptation_to_the_site_never_reads_the_reference_and_is_scored_beside(tmp_path, anatomical):
    weights = make_model(tmp_path / "tiny" / "model.pt")
    model, _ = real_scans.load_denoiser(weights)
    (case,) = real_scans.noisy_cases([anatomical], ["gaussian"], [15.0], seed=0)
    blind = dict(case, clean=None, mask=None)  # adaptation must not need the reference
    adapted, report = real_scans.adapt_to_site(model, [blind], tmp_path / "site", iterations=2, seed=0)
    assert adapted is not model and {"accepted", "reason", "start_loss", "best_loss"} <= set(report)
    assert report["iterations"] <= 2 and isinstance(report["reason"], str)
    out = tmp_path / "adapt.json"
    args = ["--quick", "--weights", str(weights), "--adapt", "15", "--adapt-iterations", "2", "--out", str(out)]
    data = real_scans.main(args)
    assert [(a["network"], a["noise"]) for a in data["adaptations"]] == [("tiny", "gaussian"), ("tiny", "rician")]
    assert {r["method"] for r in data["rows"]} >= {"tiny", "tiny+n2s"}
    assert {d["network"] for d in data["differences"]} == {"tiny", "tiny+n2s"}
