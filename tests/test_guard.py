"""The inference guard (pipeline.inference.guard): never worse than the input, and its estimate holds."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.inference.guard import SureGuard, gaussian_centre_weight, gaussian_divergence, report_path
from tests.test_noise_level import _head_on_air
from transforms.noise_level import head_mask

SIGMAS = (5 / 255, 15 / 255, 25 / 255)


def _noisy(sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured head of ~20 000 voxels, so denoising gains 3-9 dB as on real heads.

    SURE's standard error is about ``sigma^2 sqrt(2 / N)``, ~1 % of ``sigma^2``: 0.1-0.3 dB of the estimated gain here,
    0.02-0.05 dB on a real head's 10^6 voxels.
    """
    head = _head_on_air((56, 56, 56), (0.8, 0.85, 0.8))
    texture = ndimage.gaussian_filter(np.random.default_rng(100).normal(size=head.shape), 0.7)
    clean = head * (1 + 0.6 * texture)
    return clean, clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)


def _mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean((a - b)[mask] ** 2))


def _as_network(fn):
    """A ``predict`` callable over a numpy function of the volume."""
    return lambda x, where=None: torch.from_numpy(fn(x.double().numpy().reshape(x.shape[-3:]))).reshape(x.shape).float()


def _oversmoothing(volume: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(volume, 2.5)


def _nonlinear(volume: np.ndarray) -> np.ndarray:
    """A smooth nonlinear denoiser (a filter plus a soft-thresholded detail), so the divergence needs Monte Carlo."""
    smooth = ndimage.gaussian_filter(volume, 1.0)
    return smooth + 0.05 * np.tanh((volume - smooth) / 0.05) * 0.5


def _run(noisy: np.ndarray, network, **kwargs):
    out, report = SureGuard(**kwargs)(torch.from_numpy(noisy[None]).float(), _as_network(network))
    return out.numpy()[0].astype(np.float64), report


def test_the_centre_weight_is_the_filters_response_to_a_delta():
    delta = np.zeros((21, 21, 21))
    delta[10, 10, 10] = 1.0
    assert gaussian_centre_weight(1.3) == pytest.approx(ndimage.gaussian_filter(delta, 1.3)[10, 10, 10], rel=1e-9)
    assert gaussian_centre_weight(0.0) == 1.0


def test_the_filters_divergence_is_exact_at_the_border_too():
    shape, width = (5, 6, 7), 1.2
    mask = np.zeros(shape, bool)
    mask[0, :3, -2:] = mask[2, 3, 3] = True  # a corner, an edge and the interior
    diagonal = np.zeros(shape)
    for index in np.ndindex(shape):
        delta = np.zeros(shape)
        delta[index] = 1.0
        diagonal[index] = ndimage.gaussian_filter(delta, width)[index]
    assert gaussian_divergence(shape, width, mask) == pytest.approx(diagonal[mask].mean(), rel=1e-9)
    assert gaussian_divergence(shape, width) == pytest.approx(diagonal.mean(), rel=1e-9)
    assert diagonal[0, 0, 0] > 1.5 * gaussian_centre_weight(width)  # why the centre weight is not enough


@pytest.mark.parametrize("sigma", SIGMAS)
def test_the_output_is_never_worse_than_the_noisy_input_even_from_an_oversmoothing_network(sigma):
    clean, noisy = _noisy(sigma)
    mask = head_mask(noisy)
    out, report = _run(noisy, _oversmoothing)
    assert _mse(out, clean, mask) <= _mse(noisy, clean, mask)
    assert _mse(out, clean, mask) <= _mse(_oversmoothing(noisy), clean, mask) * 1.001
    assert report.estimated_gain_db >= 0 and report.choice != "network"


@pytest.mark.parametrize("sigma", SIGMAS)
def test_the_estimated_gain_matches_the_true_gain_for_a_nonlinear_network(sigma):
    clean, noisy = _noisy(sigma, seed=1)
    mask = head_mask(noisy)
    out, report = _run(noisy, _nonlinear)
    true_gain = 10 * math.log10(_mse(noisy, clean, mask) / _mse(out, clean, mask))
    assert report.estimated_gain_db == pytest.approx(true_gain, abs=0.4)
    network_gain = 10 * math.log10(_mse(noisy, clean, mask) / _mse(_nonlinear(noisy), clean, mask))
    assert report.candidates["network"] == pytest.approx(network_gain, abs=0.4)
    assert report.sigma == pytest.approx(sigma, rel=0.06) and report.noise_method == "background"


def test_the_choice_beats_every_single_gaussian_filter():
    clean, noisy = _noisy(15 / 255, seed=2)
    mask = head_mask(noisy)
    out, report = _run(noisy, _nonlinear)
    for width in (0.5, 0.75, 1.0, 1.5, 2.0):
        assert _mse(out, clean, mask) <= _mse(ndimage.gaussian_filter(noisy, width), clean, mask) * 1.02
        assert report.estimated_gain_db >= report.candidates[f"gaussian {width:g}"]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_the_combination_of_every_output_corrects_an_oversmoothing_network_beyond_any_single_candidate(sigma):
    """SURE-LET: signed weights on the network and the filters restore detail none of them keeps alone."""
    clean, noisy = _noisy(sigma, seed=1)
    mask = head_mask(noisy)
    out, report = _run(noisy, _oversmoothing)
    true_gain = 10 * math.log10(_mse(noisy, clean, mask) / _mse(out, clean, mask))
    others = {name: gain for name, gain in report.candidates.items() if name != report.choice}
    assert report.choice == "network + filters (SURE-LET)"
    assert true_gain >= max(others.values()) + 0.5
    assert report.estimated_gain_db == pytest.approx(true_gain, abs=0.3)
    assert any(weight < 0 for weight in report.weights.values())  # a signed correction, not a blend


def _undersmoothing(volume: np.ndarray) -> np.ndarray:
    """A nonlinear denoiser that leaves noise behind, as a network for every level does at the high ones."""
    smooth = ndimage.gaussian_filter(volume, 0.5)
    return smooth + 0.5 * 0.05 * np.tanh((volume - smooth) / 0.05)


def _within(fn):
    """A ``predict`` that computes only where it is told to read (zeros elsewhere), as the guard's second pass may."""
    full = _as_network(fn)

    def predict(x, where=None):
        out = full(x)
        return out if where is None else out * where.reshape(out.shape[-3:]).to(out.dtype)

    return predict


@pytest.mark.parametrize("sigma", (15 / 255, 25 / 255))
def test_the_smoothed_networks_gains_are_estimated_from_the_same_probe(sigma):
    clean, noisy = _noisy(sigma, seed=3)
    mask = head_mask(noisy)
    image = torch.from_numpy(noisy[None]).float()
    out, report = SureGuard(network_widths=(0.5, 1.0))(image, _within(_undersmoothing))
    for width in (0.5, 1.0):
        smoothed = ndimage.gaussian_filter(_undersmoothing(noisy), width)
        true_gain = 10 * math.log10(_mse(noisy, clean, mask) / _mse(smoothed, clean, mask))
        assert report.candidates[f"network, gaussian {width:g}"] == pytest.approx(true_gain, abs=0.4)
    _, without = SureGuard()(image, _within(_undersmoothing))
    assert report.estimated_gain_db > without.estimated_gain_db  # a larger family: SURE's minimum can only fall
    # the second pass reads the head and the filters' reach: the same as a network run everywhere
    everywhere, same = SureGuard(network_widths=(0.5, 1.0))(image, _as_network(_undersmoothing))
    assert torch.allclose(out, everywhere, atol=1e-6) and same.candidates == pytest.approx(report.candidates)


def test_a_known_level_is_used_as_given_and_bad_settings_are_refused():
    _, noisy = _noisy(10 / 255)
    _, report = _run(noisy, _nonlinear, sigma_255=12.0)
    assert report.noise_method == "given" and report.sigma_255 == pytest.approx(12.0)
    for bad in ({"widths": (0.0,)}, {"network_widths": (-1.0,)}, {"sigma_255": 0}, {"noise_method": "nowhere"}):
        with pytest.raises(ValueError):
            SureGuard(**bad)


def test_a_scan_without_noise_gets_the_networks_output_and_no_report():
    clean = _head_on_air()
    out, report = _run(clean * 0 + 0.5, _nonlinear)
    assert report is None and np.allclose(out, _nonlinear(clean * 0 + 0.5), atol=1e-6)


def test_the_sidecar_sits_beside_the_output():
    assert report_path("out/sub-01_denoised.nii.gz").name == "sub-01_denoised.json"
    assert report_path("out/sub-01_denoised.nii").name == "sub-01_denoised.json"


def test_denoise_items_writes_the_guards_choice_beside_each_output(tmp_path):
    from monai.inferers import SimpleInferer

    from pipeline.inference.infer import denoise_items
    from transforms.io import LoadScand

    _, noisy = _noisy(10 / 255, seed=3)
    scan = tmp_path / "sub-01.nii.gz"
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), scan)
    network = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        network.weight.fill_(1 / 27)  # a box filter

    def save(data):
        nib.save(nib.Nifti1Image(data["pred"].numpy()[0], np.eye(4)), tmp_path / "out" / "sub-01_denoised.nii.gz")
        return data

    summary = denoise_items(
        [{"image": str(scan)}],
        network,
        LoadScand("image"),
        SimpleInferer(),
        save,
        tmp_path / "out",
        progress=False,
        guard=SureGuard(),
    )
    assert summary.count("done") == 1
    sidecar = json.loads((tmp_path / "out" / "sub-01_denoised.json").read_text())
    assert sidecar["source"].endswith("sub-01.nii.gz") and sidecar["choice"] in sidecar["candidates"]
    assert sidecar["estimated_gain_db"] == summary.results[0].guard["estimated_gain_db"] >= 0
    assert "white noise" in sidecar["assumptions"]


def test_a_network_that_returns_nan_is_set_aside():
    _, noisy = _noisy(15 / 255, seed=4)
    out, report = _run(noisy, lambda v: np.full_like(v, np.nan))
    assert np.isfinite(out).all() and not report.choice.startswith("network")


def test_an_overestimated_noise_level_is_caught_and_the_networks_output_written(caplog):
    clean, noisy = _noisy(5 / 255, seed=5)
    with caplog.at_level("WARNING", logger="pipeline.inference.guard"):
        out, report = _run(noisy, _nonlinear, sigma_255=60.0)  # 12x the noise there is
    assert report.choice == "network (estimate implausible)" and math.isnan(report.estimated_gain_db)
    assert np.allclose(out, _nonlinear(noisy), atol=1e-5) and "implausible" in caplog.text
    assert report.as_dict()["estimated_gain_db"] is None
    json.dumps(report.as_dict(), allow_nan=False)  # valid JSON: no NaN in the sidecar


def test_a_level_measured_in_the_tissue_is_reported_with_a_warning(caplog):
    noisy = _noisy(15 / 255)[1][14:42, 14:42, 14:42]  # a crop inside the head: no air holds noise
    with caplog.at_level("WARNING", logger="pipeline.inference.guard"):
        _, report = _run(noisy, _nonlinear)
    assert report.noise_method == "tissue" and "estimated in the tissue" in caplog.text
    guard, image = SureGuard(), torch.from_numpy(noisy[None]).float()
    with caplog.at_level("INFO", logger="pipeline.inference.guard"):
        for _ in range(2):
            guard(image, _as_network(_nonlinear))
    assert [r.levelname for r in caplog.records if "in the tissue" in r.message][-2:] == ["WARNING", "INFO"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.inference.guard"):
        _, report = _run(_noisy(15 / 255)[1], _nonlinear)
    assert report.noise_method == "background" and "tissue" not in caplog.text


def test_the_guard_family_benchmark_scores_every_guard_on_the_same_network_outputs(monkeypatch):
    from benchmarks import guard_family
    from pipeline.data.synth import load_tissue_maps

    calls = []
    network = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        network.weight.fill_(1 / 27)  # a box filter
    forward = network.forward
    monkeypatch.setattr(network, "forward", lambda x: calls.append(x.shape) or forward(x))
    head = {"seed": 7, "contrast": "t1", "noise": "gaussian", "voxel_mm": 4.0}
    row = guard_family.score_head(network, head, 15.0, load_tissue_maps(16.0, 4.0))
    assert row["sure_let_choice"] == "network + filters (SURE-LET)" and "SURE-LET" not in row["candidates_choice"]
    assert all(math.isfinite(row[k]) for k in ("noisy", "network", "candidates", "sure_let", "smoothed"))
    assert row["sure_let"] > row["noisy"] and abs(row["sure_let_estimate_error"]) < 1.0
    passes = len(calls)
    guard_family.score_head(network, head, 15.0, load_tissue_maps(16.0, 4.0))
    assert len(calls) == 2 * passes  # the output and each perturbed pass once (the smoothed arm reads farther)


def test_the_guard_family_rule_needs_the_interval_over_heads_above_zero():
    from benchmarks.guard_family import _decision, generated_heads

    heads = generated_heads(5, 100)
    assert [h["seed"] for h in heads] == [100, 101, 102, 103, 104] and {h["noise"] for h in heads} == {
        "gaussian",
        "rician",
    }
    rows = [
        {"seed": h["seed"], "candidates": 30.0, "sure_let": 30.0 + d} for h, d in zip(heads, (0.5, 0.6, 0.4, 0.7, 0.5))
    ]
    assert _decision(rows, heads)["combine"]
    rows = [
        {"seed": h["seed"], "candidates": 30.0, "sure_let": 30.0 + d}
        for h, d in zip(heads, (0.5, -0.6, 0.4, -0.7, 0.5))
    ]
    assert not _decision(rows, heads)["combine"]
    assert not _decision(rows, heads, "sure_let", "candidates")["combine"]
    rows = [{**r, "smoothed": r["sure_let"] + 0.2 + 0.01 * k} for k, r in enumerate(rows)]
    assert _decision(rows, heads, "smoothed", "sure_let")["adopt"]


def test_the_guard_family_compares_two_models_paired_by_head(tmp_path):
    from benchmarks import guard_family

    def run(model, shift):
        rows = [
            {"seed": seed, "air": air, "level": level, "sure_let": 30.0 + level / 10 + shift(seed)}
            for seed in range(5)
            for air in (True, False)
            for level in (5.0, 25.0)
        ]
        return {"model": model, "rows": rows}

    shipped = run("shipped", lambda seed: seed)  # heads differ a lot; the pairing removes that
    better = run("new", lambda seed: seed + 0.2 + 0.02 * seed)
    found = guard_family.compare(shipped, better)
    assert found["adopt"] and found["models"] == ["shipped", "new"] and found["difference_db"][1] > 0
    assert not guard_family.compare(better, shipped)["adopt"]
    mixed = run("mixed", lambda seed: seed + (0.3 if seed % 2 else -0.3))
    assert not guard_family.compare(shipped, mixed)["adopt"]
    for name, data in (("a", shipped), ("b", better)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert guard_family.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])["adopt"]
    with pytest.raises(ValueError, match="different heads"):
        guard_family.compare(shipped, {"rows": better["rows"][:-1]})


def test_the_guard_family_crop_inside_the_head_leaves_no_air():
    from benchmarks.guard_family import _inside

    head = _head_on_air((40, 48, 44), (0.8, 0.85, 0.8)) > 0
    box = _inside(head)
    assert head[box].all() and all(0 < s.start < s.stop < n for s, n in zip(box, head.shape, strict=True))
