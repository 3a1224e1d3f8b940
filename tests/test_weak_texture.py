"""transforms.weak_texture: the noise level from the flattest patches, where fine texture fools a wavelet MAD."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.noise_level import estimate_noise_sigma
from transforms.weak_texture import estimate_weak_texture_sigma


def _textured(shape: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """Flat tissue on one half, a fine checkerboard-like texture (period 2-3 voxels) on the other."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    texture = 0.04 * np.sin(2.6 * grid[0]) * np.sin(2.9 * grid[1]) * np.sin(3.0 * grid[2])
    return 0.6 + np.where(grid[0] < shape[0] // 2, 0.0, texture)


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.1])
def test_white_noise_on_flat_tissue_gives_its_level(sigma):
    noisy = 0.5 + np.random.default_rng(0).normal(0, sigma, (36, 36, 36))
    assert estimate_weak_texture_sigma(noisy) == pytest.approx(sigma, rel=0.04)


def test_fine_texture_does_not_pass_for_noise():
    clean = _textured()
    sigma = 0.01
    noisy = clean + np.random.default_rng(1).normal(0, sigma, clean.shape)
    haar = estimate_noise_sigma(noisy, foreground=None)
    found = estimate_weak_texture_sigma(noisy)
    assert haar > 1.3 * sigma  # the texture inflates the wavelet estimate ...
    assert found == pytest.approx(sigma, rel=0.08)  # ... not the flattest patches'


def test_zero_filled_background_and_the_floor_are_left_out():
    rng = np.random.default_rng(2)
    noisy = 0.5 + rng.normal(0, 0.05, (40, 40, 40))
    noisy[:, :, :12] = 0.0  # zero-filled (skull-stripped) slab: no noise there
    assert estimate_weak_texture_sigma(noisy) == pytest.approx(0.05, rel=0.05)
    dark = noisy.copy()
    dark[:, :, 12:20] = 0.05 + rng.normal(0, 0.2, (40, 40, 8))  # a noisier dark slab below the floor
    assert estimate_weak_texture_sigma(dark, floor=0.3) == pytest.approx(0.05, rel=0.05)


def test_too_small_or_noise_free_volumes():
    assert estimate_weak_texture_sigma(np.ones((4, 30, 30))) is None
    assert estimate_weak_texture_sigma(np.ones((8, 8, 8))) is None  # 64 patches: fewer than 10 k^3
    assert estimate_weak_texture_sigma(np.full((30, 30, 30), 0.7)) == pytest.approx(0.0, abs=1e-6)
