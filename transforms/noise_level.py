"""Blind noise-level estimation: how noisy is a scan, with no clean reference (robust MAD of its finest details).

:func:`estimate_noise_sigma` follows Donoho's wavelet estimator in 3-D: the scan is cut into 2x2x2 blocks, each
block's highest-frequency Haar coefficient ``d = sum((-1)^(i+j+k) x_ijk) / sqrt(8)`` is taken (for white noise of
standard deviation ``sigma`` it has standard deviation ``sigma``; smooth anatomy contributes almost nothing), and
``sigma = median(|d|) / 0.6745`` over the blocks inside the foreground. The foreground (blocks whose mean is at least
``foreground`` times the robust maximum) keeps the estimate on tissue, where Rician noise is close to Gaussian;
in air, magnitude images carry Rayleigh noise whose spread is only 0.66 ``sigma``.

:class:`EstimateNoiseLevel` / :class:`EstimateNoiseLeveld` pass the image through unchanged, record the estimate in
its metadata (``meta["noise_sigma"]`` in image units, ``meta["noise_level_255"]`` on the 0-255 scale of the scan's
robust maximum, the unit of the training levels of ``transforms.noise``) and log it, with a warning when it lies
outside the range the denoiser was trained for. The bundle's inference appends it to its preprocessing, so every
denoised scan's log line says what noise level the blind denoiser met.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

__all__ = [
    "NOISE_LEVEL_KEY",
    "NOISE_SIGMA_KEY",
    "EstimateNoiseLevel",
    "EstimateNoiseLeveld",
    "estimate_noise_sigma",
    "robust_max",
]

logger = logging.getLogger(__name__)

NOISE_SIGMA_KEY = "noise_sigma"
"""``meta`` entry of the estimated noise standard deviation, in image units."""
NOISE_LEVEL_KEY = "noise_level_255"
"""``meta`` entry of the estimate on the 0-255 scale of the scan's robust maximum."""

_MAD_TO_SIGMA = 0.6744897501960817  # the median of |N(0, 1)|
_ROBUST_PERCENTILE = 99.5


def _as_volume(img: Any) -> np.ndarray:
    array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    array = np.squeeze(array.astype(np.float64, copy=False))
    if array.ndim != 3:
        raise ValueError(f"noise estimation needs a 3-D volume (optionally with one channel), got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError("noise estimation needs finite intensities; the volume has NaN or infinite voxels.")
    return array


def robust_max(img: NdarrayOrTensor) -> float:
    """The 99.5th percentile of the non-zero voxels (what ``ScalePercentile`` maps to 1); 1 for an empty volume."""
    array = _as_volume(img)
    nonzero = array[array != 0]
    return float(np.percentile(nonzero, _ROBUST_PERCENTILE)) if nonzero.size else 1.0


def estimate_noise_sigma(
    img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None, foreground: float | None = 0.1
) -> float:
    """Estimate the standard deviation of white noise in a 3-D volume (module docstring).

    Args:
        img: the volume ``(X, Y, Z)`` or ``(1, X, Y, Z)``; numpy, torch or MetaTensor.
        mask: optional boolean mask of the same shape: only 2x2x2 blocks entirely inside it count.
        foreground: with no mask, only blocks whose mean is at least this fraction of the robust maximum count;
            ``None`` uses every block.

    Returns:
        ``sigma`` in the volume's intensity units (0 for a volume too small to hold one block).

    Raises:
        ValueError: not a 3-D volume, non-finite voxels, a mask of another shape, or ``foreground`` outside [0, 1].
    """
    x = original = _as_volume(img)
    if foreground is not None and not 0 <= foreground <= 1:
        raise ValueError(f"foreground must be None or a fraction in [0, 1], got {foreground!r}.")
    even = tuple(slice(0, n - n % 2) for n in x.shape)
    x = x[even]
    if min(x.shape) < 2:
        return 0.0
    blocks = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, x.shape[2] // 2, 2)
    signs = np.array([1.0, -1.0])
    pattern = signs[:, None, None] * signs[None, :, None] * signs[None, None, :]
    detail = np.einsum("aibjck,ijk->abc", blocks, pattern) / np.sqrt(8.0)
    if mask is not None:
        m = _as_volume(mask) > 0
        if m.shape != original.shape:
            raise ValueError(f"mask shape {m.shape} differs from the volume's {original.shape}.")
        m = m[even].reshape(blocks.shape).all(axis=(1, 3, 5))
    elif foreground is not None:
        m = blocks.mean(axis=(1, 3, 5)) >= foreground * robust_max(x)
    else:
        m = np.ones(detail.shape, dtype=bool)
    values = np.abs(detail[m]) if m.any() else np.abs(detail.ravel())
    return float(np.median(values) / _MAD_TO_SIGMA)


class EstimateNoiseLevel(Transform):
    """Record (and log) the noise level of an image; the image itself passes through unchanged.

    Args:
        foreground: as :func:`estimate_noise_sigma`.
        trained_range: the 0-255 range of levels the denoiser was trained on; an estimate outside it is logged as
            a warning (``None``: no check).
        log: log each estimate at INFO level.

    Raises:
        ValueError: ``trained_range`` is not a ``(low, high)`` pair with ``0 <= low <= high``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, foreground: float | None = 0.1, trained_range: Sequence[float] | None = None, log: bool = True
    ) -> None:
        if trained_range is not None:
            if (
                isinstance(trained_range, str)
                or len(trained_range) != 2
                or not 0 <= trained_range[0] <= trained_range[1]
            ):
                raise ValueError(
                    f"trained_range must be None or (low, high) with 0 <= low <= high, got {trained_range}."
                )
            trained_range = (float(trained_range[0]), float(trained_range[1]))
        self.foreground = foreground
        self.trained_range = trained_range
        self.log = log
        self.last: dict[str, float] = {}

    def estimate(self, img: NdarrayOrTensor) -> dict[str, float]:
        """The estimate of ``img``: ``{"noise_sigma": image units, "noise_level_255": 0-255 scale}``."""
        sigma = estimate_noise_sigma(img, foreground=self.foreground)
        reference = robust_max(img)
        level = 255.0 * sigma / reference if reference > 0 else 0.0
        return {NOISE_SIGMA_KEY: sigma, NOISE_LEVEL_KEY: level}

    def __call__(self, img: NdarrayOrTensor, name: str | None = None) -> NdarrayOrTensor:
        """Estimate, record in ``img.meta`` (MetaTensor), log; return ``img`` itself.

        Args:
            img: the scan, ``(1, X, Y, Z)`` or ``(X, Y, Z)``.
            name: what to call the scan in the log (default: its ``filename_or_obj``).

        Returns:
            ``img``, unchanged (its metadata updated).
        """
        self.last = self.estimate(img)
        if isinstance(img, MetaTensor):
            img.meta.update(self.last)
            name = name or str(img.meta.get("filename_or_obj", "") or "scan")
        name = name or "scan"
        level = self.last[NOISE_LEVEL_KEY]
        if self.log:
            logger.info(
                "%s: estimated noise sigma %.4g (%.1f/255 of its robust maximum)",
                name,
                self.last[NOISE_SIGMA_KEY],
                level,
            )
        if self.trained_range is not None and not self.trained_range[0] <= level <= self.trained_range[1]:
            logger.warning(
                "%s: estimated noise level %.1f/255 is outside the %g-%g/255 the denoiser was trained for",
                name,
                level,
                *self.trained_range,
            )
        return img


class EstimateNoiseLeveld(MapTransform):
    """Dictionary version of :class:`EstimateNoiseLevel`; each key is estimated on its own.

    Args:
        keys: keys of the scans, normally ``"image"``.
        foreground, trained_range, log: as the array class.
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = EstimateNoiseLevel.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        foreground: float | None = 0.1,
        trained_range: Sequence[float] | None = None,
        log: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.estimator = EstimateNoiseLevel(foreground, trained_range, log)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Estimate every present key; returns a new dictionary holding the same (annotated) images."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.estimator(d[key])
        return d
