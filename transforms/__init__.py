"""MONAI-style array and dictionary transforms: loading, normalisation, cropping and noise."""

from __future__ import annotations

from transforms.errors import InputError
from transforms.noise import (
    NOISE_NAMES,
    RandGaussianNoise255,
    RandGaussianNoise255d,
    RandLowDose,
    RandLowDosed,
    RandPoissonNoise,
    RandPoissonNoised,
    RandRicianNoise,
    RandRicianNoised,
    item_seed,
    make_noise,
    parse_noise_name,
)

__all__ = [
    "NOISE_NAMES",
    "InputError",
    "RandGaussianNoise255",
    "RandGaussianNoise255d",
    "RandLowDose",
    "RandLowDosed",
    "RandPoissonNoise",
    "RandPoissonNoised",
    "RandRicianNoise",
    "RandRicianNoised",
    "item_seed",
    "make_noise",
    "parse_noise_name",
]
