"""MONAI-style array and dictionary transforms: loading, normalisation, cropping and noise."""

from __future__ import annotations

from transforms.errors import InputError
from transforms.intensity import ROBUST_PERCENTILE, ScalePercentile, ScalePercentiled, percentile_stats, robust_max
from transforms.io import LoadScan, LoadScand, SimpleITKReader, canonical_transforms, scan_suffix
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
from transforms.presets import STAGES, classify_transforms, denoise_transforms, intensity_augmentation
from transforms.spatial import (
    HeadMask,
    HeadMaskd,
    center_crop,
    divisible_pad,
    foreground_crop,
    random_patches,
)

__all__ = [
    "NOISE_NAMES",
    "ROBUST_PERCENTILE",
    "STAGES",
    "HeadMask",
    "HeadMaskd",
    "InputError",
    "LoadScan",
    "LoadScand",
    "RandGaussianNoise255",
    "RandGaussianNoise255d",
    "RandLowDose",
    "RandLowDosed",
    "RandPoissonNoise",
    "RandPoissonNoised",
    "RandRicianNoise",
    "RandRicianNoised",
    "ScalePercentile",
    "ScalePercentiled",
    "SimpleITKReader",
    "canonical_transforms",
    "center_crop",
    "classify_transforms",
    "denoise_transforms",
    "divisible_pad",
    "foreground_crop",
    "intensity_augmentation",
    "item_seed",
    "make_noise",
    "parse_noise_name",
    "percentile_stats",
    "random_patches",
    "robust_max",
    "scan_suffix",
]
