"""Blind noise-level estimation (transforms.noise_level) and its place in the bundle's inference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from pipeline.data.synth import phantom_tissue_maps
from transforms.noise_level import (
    NOISE_LEVEL_KEY,
    NOISE_SIGMA_KEY,
    EstimateNoiseLevel,
    EstimateNoiseLeveld,
    estimate_background_sigma,
    estimate_noise,
    estimate_noise_sigma,
    estimate_tissue_sigma,
    head_mask,
    robust_max,
)
from transforms.synth import RandTissueContrast


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    maps = phantom_tissue_maps((48, 48, 48))
    synth = RandTissueContrast(contrasts=["t1"], head_prob=1.0, fine_texture=0.0, bias=0.0, texture=0.0)
    return synth.set_random_state(0)(maps)[0].numpy().astype(np.float64)


@pytest.mark.parametrize("sigma", [0.02, 0.06, 0.1])
def test_gaussian_and_rician_levels_are_recovered_within_10_percent(clean, sigma):
    rng = np.random.default_rng(0)
    gaussian = clean + rng.normal(0, sigma, clean.shape)
    rician = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    for noisy in (gaussian, rician):
        assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)


def test_scaling_the_scan_scales_the_estimate_and_a_mask_restricts_it(clean):
    noisy = clean + np.random.default_rng(1).normal(0, 0.05, clean.shape)
    assert estimate_noise_sigma(noisy * 7.0) == pytest.approx(7.0 * estimate_noise_sigma(noisy), rel=1e-6)
    half = np.zeros(clean.shape, dtype=bool)
    half[:24] = True
    assert estimate_noise_sigma(noisy, mask=half) == pytest.approx(0.05, rel=0.15)
    with pytest.raises(ValueError, match="mask shape"):
        estimate_noise_sigma(noisy, mask=half[:10])
    with pytest.raises(ValueError, match="3-D"):
        estimate_noise_sigma(np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="foreground"):
        estimate_noise_sigma(noisy, foreground=2.0)


def test_the_transform_records_logs_and_passes_the_image_through(clean, caplog):
    noisy = clean + np.random.default_rng(2).normal(0, 15 / 255, clean.shape)
    img = MetaTensor(torch.as_tensor(noisy[None], dtype=torch.float32), meta={"filename_or_obj": "/x/sub-01.nii.gz"})
    before = img.clone()
    with caplog.at_level(logging.INFO, logger="transforms.noise_level"):
        out = EstimateNoiseLeveld("image", trained_range=(3, 10))({"image": img})["image"]
    assert out is img and torch.equal(out.as_tensor(), before.as_tensor())
    level = out.meta[NOISE_LEVEL_KEY]
    assert level == pytest.approx(255 * out.meta[NOISE_SIGMA_KEY] / robust_max(noisy), rel=1e-6)
    assert 12 < level < 19
    assert "sub-01.nii.gz: estimated noise sigma" in caplog.text and "outside the 3-10/255" in caplog.text
    with pytest.raises(ValueError, match="trained_range"):
        EstimateNoiseLevel(trained_range=(5, 1))


def test_inference_config_estimates_each_scans_noise_level():
    from pipeline.bundle_run import BUNDLE_DIR

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_DIR / "configs" / n) for n in ("common.yaml", "inference.yaml")])
    assert parser["noise_level"]["_target_"] == "transforms.noise_level.EstimateNoiseLeveld"
    assert "@noise_level" in parser["preprocessing"]["transforms"]


def _head_on_air(
    shape: tuple[int, int, int] = (48, 48, 48), radii: tuple[float, float, float] = (0.6, 0.7, 0.6)
) -> np.ndarray:
    """A smooth bright ellipsoid (the head; ``radii`` of the half field of view) with air all around."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt(((grid / np.array(radii)[:, None, None, None]) ** 2).sum(0))
    return np.clip(1.5 - 1.5 * radius, 0, 1) * (0.7 + 0.3 * np.cos(4 * grid[0]))


@pytest.mark.parametrize("sigma", [5 / 255, 15 / 255, 25 / 255])
def test_the_air_gives_the_level_and_tells_signed_from_magnitude_data(sigma):
    clean = _head_on_air()
    rng = np.random.default_rng(3)
    gaussian = clean + rng.normal(0, sigma, clean.shape)
    rician = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    for noisy, model in ((gaussian, "gaussian"), (rician, "magnitude")):
        found = estimate_noise(noisy)
        assert found["method"] == "background" and found["model"] == model
        assert found[NOISE_SIGMA_KEY] == pytest.approx(sigma, rel=0.06)
        assert estimate_background_sigma(noisy) == pytest.approx((found[NOISE_SIGMA_KEY], model))


@pytest.mark.parametrize("snr", [0.0, 1.0, 1.5, 2.0])
def test_magnitude_air_holding_a_faint_signal_is_read_as_rician_not_rayleigh(snr):
    """Air with a faint signal (ghosting, a reference's own floor) is Rician: read as Rayleigh it was 1.2-1.4x high."""
    sigma = 5 / 255
    clean = _head_on_air((64, 64, 64))
    clean = np.where(clean > 0, clean, snr * sigma)
    found = []
    for seed in range(11, 16):
        rng = np.random.default_rng(seed)
        rician = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
        estimate = estimate_noise(rician)
        assert estimate["model"] == "magnitude"
        found.append(estimate[NOISE_SIGMA_KEY] / sigma)
    assert np.median(found) == pytest.approx(1.0, abs=0.04) and max(abs(np.array(found) - 1.0)) < 0.12, found


@pytest.mark.parametrize("floor", [1.0, 1.75, 1.85])
def test_signed_noise_over_a_faint_background_is_not_read_as_magnitude(floor):
    """Gaussian noise over air holding a faint positive signal leaves few negatives; its symmetry still tells it.

    A generated validation head (seed 3012, 5/255) had 5 % of its air negative: read as Rayleigh, its level came out
    1.53x and the guard wrote an output 0.9 dB below the noisy input.
    """
    sigma = 5 / 255
    clean = _head_on_air((64, 64, 64))
    clean = np.where(clean > 0, clean, floor * sigma * (1 + 0.05 * np.cos(np.linspace(0, 3, 64)))[:, None, None])
    noisy = clean + np.random.default_rng(8).normal(0, sigma, clean.shape)
    air = ~head_mask(noisy)
    assert np.mean(noisy[air] < 0) < 0.2  # few negatives: the share rule alone reads the two faintest as magnitude
    found = estimate_noise(noisy)
    assert found["model"] == "gaussian" and found[NOISE_SIGMA_KEY] == pytest.approx(sigma, rel=0.06)


def test_rician_snr_inverts_the_median_over_the_spread():
    from scipy.stats import rice

    from transforms.noise_level import rician_snr, rician_spread

    for snr in (0.3, 1.0, 2.0, 5.0):
        ratio = rice(b=snr).median() / np.sqrt(rice(b=snr).var())
        assert rician_snr(ratio) == pytest.approx(snr, abs=1e-4)
        assert rician_spread(snr) == pytest.approx(rice(b=snr).var(), rel=1e-6)
    assert rician_snr(1.0) == 0.0 and rician_spread(0.0) == pytest.approx(2 - np.pi / 2)  # Rayleigh: noise alone


def test_signed_noise_on_a_magnitude_scans_smooth_air_is_measured_in_the_air():
    """Noise added to a resampled magnitude scan: its air keeps a Rayleigh offset but little fine spread."""
    from scipy import ndimage

    clean = _head_on_air()
    rng = np.random.default_rng(7)
    own = 6 / 255
    magnitude = np.sqrt((clean + rng.normal(0, own, clean.shape)) ** 2 + rng.normal(0, own, clean.shape) ** 2)
    scan = ndimage.gaussian_filter(magnitude, 1.0)  # a resampled grid: the own noise's offset stays, its spread goes
    sigma = 5 / 255
    found = estimate_noise(scan + rng.normal(0, sigma, clean.shape))
    assert found["method"] == "background" and found["model"] == "gaussian"
    assert found[NOISE_SIGMA_KEY] == pytest.approx(sigma, rel=0.1)


def test_without_air_holding_noise_the_tissue_estimate_is_used():
    clean = _head_on_air()
    noisy = clean + np.random.default_rng(4).normal(0, 0.05, clean.shape)
    noisy[clean == 0] = 0.0  # a zero-filled background (skull-stripped or masked by the scanner)
    assert estimate_background_sigma(noisy) is None
    found = estimate_noise(noisy)
    assert found["method"] == "tissue" and found["model"] == "unknown"
    assert found[NOISE_SIGMA_KEY] == pytest.approx(estimate_tissue_sigma(noisy))
    assert found[NOISE_SIGMA_KEY] == pytest.approx(0.05, rel=0.05)
    with pytest.raises(ValueError, match="too little air"):
        estimate_noise(noisy, method="background")
    with pytest.raises(ValueError, match="method"):
        estimate_noise(noisy, method="everywhere")


def test_the_head_mask_covers_the_head_and_leaves_the_air():
    clean = _head_on_air()
    noisy = clean + np.random.default_rng(5).normal(0, 15 / 255, clean.shape)
    mask = head_mask(noisy)
    assert mask[24, 24, 24] and not mask[0, 0, 0] and not mask[24, 24, 1]
    assert not head_mask(np.ones((8, 8, 8))).any()


def test_dark_tissue_around_a_bright_region_is_not_taken_for_air():
    """A crop inside the head: what lies outside the bright part is tissue, brighter than noise alone."""
    clean = 0.2 + 0.8 * (_head_on_air() > 0.5)
    noisy = clean + np.random.default_rng(6).normal(0, 0.02, clean.shape)
    assert estimate_background_sigma(noisy) is None
    assert estimate_noise(noisy)["method"] == "tissue"
