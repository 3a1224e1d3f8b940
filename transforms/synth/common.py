"""What every step of the synthetic-head generator shares: the stack's channels, the classes, argument checks, fields.

The helpers validate arguments with errors that name the parameter, read a MetaTensor's voxel size, and make the
smooth random fields (a coarse random grid upsampled trilinearly, or white noise blurred by a Gaussian).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.layers import gaussian_1d, separable_filtering

__all__ = [
    "CLASSES",
    "FAR_MM",
    "TISSUE_CHANNELS",
    "VOXEL_SIZE_KEY",
    "Range",
    "check_prob",
    "check_range",
    "check_size",
    "coarse_shape",
    "is_number",
    "plain_float",
    "smooth",
    "uniform",
    "upsample_field",
    "voxel_spacing",
]

TISSUE_CHANNELS: tuple[str, ...] = ("gm", "wm", "csf", "distance")
"""Channels of the input stack: tissue probabilities, then the distance (mm) from the brain outward."""

CLASSES: tuple[str, ...] = ("csf", "gm", "wm", "skull", "scalp", "air")
"""Intensity classes; the CSF rim around the brain takes the CSF intensity."""

VOXEL_SIZE_KEY = "synth_voxel_size"
"""MetaTensor ``meta`` entry where :class:`RandVoxelSizeCrop` records the drawn voxel size (mm, per axis)."""

FAR_MM = 1000.0
"""Distance (mm) the distance channel is padded with outside the field of view: air, far from the brain."""

Range = tuple[float, float]


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (a bool is not)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_range(value: float | Sequence[float], name: str, low: float, high: float) -> Range:
    """A number or ``(lo, hi)`` pair within ``[low, high]``, as a pair; the error names the parameter."""
    if is_number(value):
        pair = (float(value), float(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(map(is_number, value)):
        pair = (float(value[0]), float(value[1]))
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
    if not all(np.isfinite(v) and low <= v <= high for v in pair) or pair[0] > pair[1]:
        raise ValueError(f"{name} must be a (low, high) range with {low:g} <= low <= high <= {high:g}, got {value!r}.")
    return pair


def check_prob(value: float, name: str = "prob") -> float:
    """``value`` as a float; ``ValueError`` naming ``name`` unless it is a number in ``[0, 1]``."""
    if not is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def check_size(value: Sequence[int] | int | None, name: str) -> tuple[int, int, int] | None:
    """``None``, or a spatial size as three positive ints; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    size = (value,) * 3 if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else tuple(value)
    if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"{name} must be None, a positive int or three positive ints, got {value!r}.")
    return tuple(int(s) for s in size)


def uniform(R: np.random.RandomState, pair: Range) -> float:
    """A uniform draw from ``R`` in ``pair``, or its value without a draw when the range is a single point."""
    return float(R.uniform(*pair)) if pair[1] > pair[0] else pair[0]


def plain_float(img: torch.Tensor) -> torch.Tensor:
    """The plain tensor of ``img`` (no metadata), float64 if it is float64, else float32."""
    plain = img.as_tensor() if isinstance(img, MetaTensor) else img
    return plain.to(torch.float64 if plain.dtype == torch.float64 else torch.float32)


def voxel_spacing(img: Any, default: float) -> np.ndarray:
    """Voxel size (mm) per axis: the MetaTensor's affine column norms, else ``default``."""
    if isinstance(img, MetaTensor):
        affine = np.asarray(img.affine, dtype=np.float64)
        if affine.shape == (4, 4):
            return np.linalg.norm(affine[:3, :3], axis=0)
    return np.full(3, float(default))


def smooth(field: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Gaussian blur of ``(C, X, Y, Z)`` with per-axis ``sigma`` (voxels), edges replicated; 0 skips an axis."""
    if all(s <= 0 for s in sigma):
        return field
    kernels = [
        gaussian_1d(torch.tensor(float(s)), truncated=3.0, approx="erf", normalize=True).to(field)
        if s > 0
        else torch.ones(1, dtype=field.dtype, device=field.device)
        for s in sigma
    ]
    with torch.no_grad():
        return separable_filtering(field.unsqueeze(1), kernels, mode="replicate").squeeze(1)


def upsample_field(coarse: np.ndarray, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Trilinear upsampling of a coarse random grid ``(C, a, b, c)`` to ``(C, *shape)``: a smooth random field."""
    grid = torch.as_tensor(coarse, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(grid, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0]


def coarse_shape(shape: Sequence[int], spacing_vox: float) -> tuple[int, ...]:
    """Shape of a coarse random grid with one point every ``spacing_vox`` voxels (at least 2 per axis)."""
    return tuple(max(2, int(math.ceil(n / max(spacing_vox, 1e-3))) + 1) for n in shape)
