from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.classical import (
    CLASSICAL_DENOISERS,
    OUTPUT_FLOOR,
    bm4d_available,
    estimate_noise_sigma,
    get_denoiser,
    tune,
)
from pipeline.evaluation.metrics import masked_psnr

SIGMA = 15 / 255


def phantom(shape=(28, 32, 24), seed=0):
    """A smooth brain-like volume in [0, 1] with its mask, and a noisy copy (Gaussian, sigma 15/255)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius2 = ((grid / np.array([0.85, 0.8, 0.8])[:, None, None, None]) ** 2).sum(0)
    inside = radius2 < 1
    texture = 0.7 + 0.2 * np.sin(2 * grid[0] + rng.uniform(0, 6)) * np.cos(2 * grid[1] + rng.uniform(0, 6))
    clean = (texture * np.exp(-(radius2**2))).astype(np.float32)  # smooth, no sharp edge
    noisy = (clean + SIGMA * rng.standard_normal(shape)).astype(np.float32)
    return {"noisy": noisy, "clean": clean, "mask": inside.astype(np.float32)}


CHEAP = ["gaussian", "median", "curvature_flow", "tv", "nl_means"]


@pytest.mark.parametrize("name", CHEAP)
def test_each_denoiser_keeps_the_shape_and_removes_noise(name):
    case = phantom()
    method = get_denoiser(name)
    param, _ = tune(method, [phantom(seed=5)])  # tuned on another volume, as the demo does
    before = case["noisy"].copy()
    out = method(case["noisy"], param)
    assert out.shape == case["noisy"].shape and out.dtype == np.float32
    np.testing.assert_array_equal(case["noisy"], before)  # the input is not modified
    noisy_psnr = masked_psnr(case["noisy"], case["clean"], case["mask"])
    assert masked_psnr(out, case["clean"], case["mask"]) > noisy_psnr + 1.0


def test_outputs_are_floored_alike_unless_floor_is_none():
    noisy = phantom()["noisy"] - 0.2  # negative around the phantom
    method = get_denoiser("gaussian")
    raw = method(noisy, 0.5, floor=None)
    assert raw.min() < 0
    np.testing.assert_array_equal(method(noisy, 0.5), np.maximum(raw, OUTPUT_FLOOR))
    np.testing.assert_array_equal(method(noisy, 0.5, floor=-0.1), np.maximum(raw, -0.1))


def test_tune_picks_the_best_scoring_parameter_on_the_tuning_volumes():
    volumes = [phantom(seed=1), phantom(seed=2)]
    best, scores = tune("gaussian", volumes)
    assert set(scores) == set(CLASSICAL_DENOISERS["gaussian"].grid)
    assert scores[best] == max(scores.values())
    # the score is the mean masked PSNR of the filtered tuning volumes
    method = get_denoiser("gaussian")
    expected = np.mean([masked_psnr(method(v["noisy"], best), v["clean"], v["mask"]) for v in volumes])
    assert scores[best] == pytest.approx(expected)
    quick_best, quick_scores = tune("gaussian", volumes, quick=True)
    assert set(quick_scores) == set(method.quick_grid) and quick_best in method.quick_grid


def test_tune_without_a_grid_returns_the_only_value():
    single = get_denoiser("median").__class__("one", "one", lambda x, p: x, (7,), "p")
    assert tune(single, [phantom()]) == (7, {})


def test_tune_rejects_bad_tuning_volumes():
    with pytest.raises(ValueError, match="at least one"):
        tune("gaussian", [])
    with pytest.raises(ValueError, match="mask"):
        tune("gaussian", [{"noisy": np.zeros((8, 8, 8)), "clean": np.zeros((8, 8, 8))}])


def test_bad_names_parameters_and_volumes_raise():
    with pytest.raises(ValueError, match="name must be one of"):
        get_denoiser("wiener")
    method = get_denoiser("gaussian")
    with pytest.raises(ValueError, match="param is required"):
        method(phantom()["noisy"])
    with pytest.raises(ValueError, match="3-D"):
        method(np.zeros((8, 8)), 1.0)
    volume = phantom()["noisy"]
    volume[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        method(volume, 1.0)


def test_bm4d_is_optional():
    assert list(CLASSICAL_DENOISERS)[:3] == ["gaussian", "median", "curvature_flow"]
    assert "bm4d" in CLASSICAL_DENOISERS
    if not bm4d_available():
        with pytest.raises(ValueError, match="pip install"):
            get_denoiser("bm4d")


def test_estimate_noise_sigma_is_close_to_the_truth():
    case = phantom(shape=(40, 40, 40))
    assert estimate_noise_sigma(case["noisy"]) == pytest.approx(SIGMA, rel=0.15)
