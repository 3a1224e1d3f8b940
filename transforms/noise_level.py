"""Blind noise-level estimation: how noisy is a scan, with no clean reference (robust MAD of its finest details).

:func:`estimate_noise_sigma` follows Donoho's wavelet estimator in 3-D: the scan is cut into 2x2x2 blocks, each
block's highest-frequency Haar coefficient ``d = sum((-1)^(i+j+k) x_ijk) / sqrt(8)`` is taken (for white noise of
standard deviation ``sigma`` it has standard deviation ``sigma``; smooth anatomy contributes almost nothing), and
``sigma = median(|d|) / 0.6745`` over the blocks inside the foreground. The foreground (blocks whose mean is at least
``foreground`` times the robust maximum) keeps the estimate on tissue, where Rician noise is close to Gaussian;
in air, magnitude images carry Rayleigh noise whose spread is only 0.66 ``sigma``.

Fine anatomy also passes for noise in that estimate (a real head at 5/255 read 7.0/255). The air around a head holds
noise and nothing else, so :func:`estimate_background_sigma` measures it there: the same Haar coefficients, over the
blocks outside the dilated head (:func:`head_mask`) that are not zero-filled. Signed data (noise added to an image,
or a real/imaginary channel) is Gaussian there, ``sigma = MAD / 0.6745``; magnitude data (MRI) is Rayleigh, whose
Haar coefficients (four samples minus four) are symmetric with standard deviation ``sqrt(2 - pi/2) sigma``. The model
is read off the air itself: a share of negative voxels means signed data, and so does air whose voxels lie
symmetrically about their 2x2x2 block means (signed noise over a faint background leaves few negatives; Rayleigh
noise is skewed). Magnitude air that holds a faint signal
(ghosting, the floor of a scan that noise was added to) is Rician, whose spread is larger than a Rayleigh variable's:
the air's median over its spread gives that signal (:func:`rician_snr`, after Koay and Basser) and the spread is
divided by the Rician standard deviation instead (read as Rayleigh, generated heads at 5/255 came out up to 1.28x high;
now within 0.99-1.06x). :func:`estimate_noise` takes the air where
there is enough of it (``method="auto"``) and the tissue estimate elsewhere (skull-stripped or zero-filled scans):
:func:`estimate_tissue_sigma`, the principal components of the tissue's weakly textured patches
(:mod:`transforms.weak_texture`), which fine anatomy fools far less than the Haar MAD (generated heads cropped inside
the head: 0.95-1.19x the true level at 5-25/255, against 0.99-1.43x).

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

from transforms.weak_texture import estimate_weak_texture_sigma

__all__ = [
    "NOISE_LEVEL_KEY",
    "NOISE_METHODS",
    "NOISE_SIGMA_KEY",
    "EstimateNoiseLevel",
    "EstimateNoiseLeveld",
    "estimate_background_sigma",
    "estimate_noise",
    "estimate_noise_sigma",
    "estimate_tissue_sigma",
    "head_mask",
    "rician_snr",
    "rician_spread",
    "robust_max",
]

logger = logging.getLogger(__name__)

NOISE_SIGMA_KEY = "noise_sigma"
"""``meta`` entry of the estimated noise standard deviation, in image units."""
NOISE_LEVEL_KEY = "noise_level_255"
"""``meta`` entry of the estimate on the 0-255 scale of the scan's robust maximum."""

NOISE_METHODS = ("auto", "background", "tissue")
"""Where :func:`estimate_noise` measures: the air if it can (``auto``), only the air, or only the tissue."""

_MAD_TO_SIGMA = 0.6744897501960817  # the median of |N(0, 1)|
_RAYLEIGH_SPREAD = float(np.sqrt(2.0 - np.pi / 2.0))  # standard deviation of a Rayleigh(1) variable
_ROBUST_PERCENTILE = 99.5
_MIN_AIR_BLOCKS = 500  # fewer blocks of air than this: the tissue estimate is used
_SIGNED_SHARE = 0.05  # at least this share of negative air voxels: signed (Gaussian) data
# below this skewness of the air voxels' deviations from their 2x2x2 block means, the noise is symmetric (signed data
# over a faint background that leaves few negatives); Rayleigh air gives 0.51, generated heads 0.30-0.79, signed 0.00
_SYMMETRIC_SKEW = 0.1
# the largest median of air, in estimated sigmas, that is still air: a Rayleigh variable's median is 1.18 sigma (twice
# that allows for ghosting and the reference's own noise); signed noise's is 0, but noise added to a magnitude scan
# sits on the scan's own Rayleigh air, whose offset stays where resampling has smoothed its spread away (2 sigma)
_RAYLEIGH_AIR_MEDIAN = 2.4
_SIGNED_AIR_MEDIAN = 2.0
_RATIO_ERROR = 3.05  # relative s.d. of Rayleigh air's median over its Haar spread x sqrt(voxels) (simulated, 40^3)


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


def _haar_details(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """The finest 3-D Haar coefficient of every 2x2x2 block, the blocks themselves and the even crop they cover."""
    even = tuple(slice(0, n - n % 2) for n in x.shape)
    x = x[even]
    blocks = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, x.shape[2] // 2, 2)
    signs = np.array([1.0, -1.0])
    pattern = signs[:, None, None] * signs[None, :, None] * signs[None, None, :]
    return np.einsum("aibjck,ijk->abc", blocks, pattern) / np.sqrt(8.0), blocks, even


def head_mask(img: NdarrayOrTensor, smoothing: float = 1.0) -> np.ndarray:
    """The head (or brain) of a noisy scan: Otsu's foreground of the lightly smoothed scan, holes filled.

    Args:
        img: the volume ``(X, Y, Z)`` or ``(1, X, Y, Z)``.
        smoothing: the Gaussian filter's standard deviation in voxels before thresholding (noise would speckle it).

    Returns:
        A boolean ``(X, Y, Z)`` mask (all false for a constant volume).
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    x = _as_volume(img)
    smooth = ndimage.gaussian_filter(x, smoothing) if smoothing > 0 else x
    if float(smooth.max()) <= float(smooth.min()):
        return np.zeros(x.shape, dtype=bool)
    return ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))


def estimate_background_sigma(
    img: NdarrayOrTensor, margin: int = 3, min_blocks: int = _MIN_AIR_BLOCKS, head: np.ndarray | None = None
) -> tuple[float, str] | None:
    """Estimate the noise standard deviation in the air around the head (module docstring).

    Args:
        img: the volume ``(X, Y, Z)`` or ``(1, X, Y, Z)``.
        margin: the head mask is dilated by this many voxels first (partial volume at the scalp is not air).
        min_blocks: the fewest 2x2x2 blocks of air that make an estimate.
        head: the scan's :func:`head_mask`, when the caller has it already.

    Returns:
        ``(sigma in the volume's units, "gaussian" or "magnitude")``, or ``None`` when the scan has too little air
        holding noise (a skull-stripped or zero-filled background, a tight crop), or when what lies outside the head
        is too bright to be air (its median above what noise alone gives: dark tissue of a crop inside the head).
    """
    from scipy import ndimage

    x = _as_volume(img)
    if min(x.shape) < 2:
        return None
    head = head_mask(x) if head is None else np.asarray(head, dtype=bool).reshape(x.shape)
    if margin > 0 and head.any():
        head = ndimage.binary_dilation(head, iterations=margin)
    air = ~head & (x != 0)
    detail, blocks, even = _haar_details(x)
    in_air = air[even].reshape(*detail.shape[:1], 2, detail.shape[1], 2, detail.shape[2], 2).all(axis=(1, 3, 5))
    if int(in_air.sum()) < min_blocks:
        return None
    signed = float(np.mean(x[air] < 0)) >= _SIGNED_SHARE or _air_skewness(blocks, in_air) < _SYMMETRIC_SKEW
    model = "gaussian" if signed else "magnitude"
    spread = float(np.median(np.abs(detail[in_air])) / _MAD_TO_SIGMA)
    sigma = spread if model == "gaussian" else spread / _RAYLEIGH_SPREAD
    # air holds noise only: its mean is 0 (signed) or 1.25 sigma (Rayleigh); dark tissue taken for air is brighter
    level = abs(float(np.median(x[air])))
    if not sigma > 0 or level > (_SIGNED_AIR_MEDIAN if model == "gaussian" else _RAYLEIGH_AIR_MEDIAN) * sigma:
        return None
    if model == "magnitude":  # air holding a faint signal is Rician, whose spread exceeds a Rayleigh variable's
        # near noise alone the ratio barely moves with the signal, so its sampling error (about 3 / sqrt(voxels),
        # median and spread of Rayleigh air) is taken off first: the signal is read only where the air shows one
        ratio = level / spread * (1.0 - 3.0 * _RATIO_ERROR / np.sqrt(max(int(air.sum()), 1)))
        sigma = spread / np.sqrt(rician_spread(rician_snr(ratio)))
    return float(sigma), model


def _air_skewness(blocks: np.ndarray, in_air: np.ndarray) -> float:
    """The skewness of the air's voxels about their 2x2x2 block means (:func:`_haar_details`' blocks).

    Taking each block's mean off removes a smooth background, so signed noise gives 0 whatever lies under it, while
    Rayleigh noise stays skewed: ``(7/8)^3 - 7/8^3`` of its third cumulant over ``(7/8)^1.5`` of its variance's power,
    0.51 of Rayleigh's own 0.63.
    """
    voxels = blocks.transpose(0, 2, 4, 1, 3, 5)[in_air].reshape(-1, 8)
    deviations = voxels - voxels.mean(axis=1, keepdims=True)
    spread = float(np.mean(deviations**2))
    return float(np.mean(deviations**3)) / spread**1.5 if spread > 0 else 0.0


def rician_spread(snr: float) -> float:
    """The variance of a Rician variable of signal ``snr`` and noise 1 (Koay and Basser's correction factor xi).

    ``2 - pi/2`` (Rayleigh) at ``snr = 0``, tending to 1 (Gaussian) as the signal grows.
    """
    from scipy.stats import rice

    return float(rice(b=snr).var())


def rician_snr(ratio: float) -> float:
    """The signal-to-noise ratio ``A / sigma`` of Rician data whose median over its standard deviation is ``ratio``.

    The median, not the mean of Koay and Basser (J Magn Reson 2006), since air holds outliers (ghosts, a scalp's
    partial volume); 0 where ``ratio`` is at or below a Rayleigh variable's (1.80: noise alone).
    """
    from scipy.optimize import brentq
    from scipy.stats import rice

    def excess(t: float) -> float:
        return float(rice(b=max(t, 1e-9)).median()) / np.sqrt(rician_spread(t)) - ratio

    if not np.isfinite(ratio) or excess(0.0) >= 0:
        return 0.0
    return float(brentq(excess, 0.0, ratio + 2.0, xtol=1e-8))


def estimate_noise(
    img: NdarrayOrTensor, method: str = "auto", foreground: float | None = 0.1, head: np.ndarray | None = None
) -> dict[str, Any]:
    """Blind noise estimate of a scan, from its air where it has enough (``auto``), else from its tissue.

    Args:
        img: the volume ``(X, Y, Z)`` or ``(1, X, Y, Z)``.
        method: one of :data:`NOISE_METHODS`.
        foreground: the tissue estimate's foreground fraction (:func:`estimate_tissue_sigma`).
        head: the scan's :func:`head_mask`, when the caller has it already.

    Returns:
        ``{"noise_sigma": image units, "noise_level_255": 0-255 scale of the robust maximum, "method": "background"
        or "tissue", "model": "gaussian", "magnitude" or "unknown" (tissue)}``.

    Raises:
        ValueError: an unknown method, or ``background`` on a scan without enough air.
    """
    if method not in NOISE_METHODS:
        raise ValueError(f"method must be one of {NOISE_METHODS}, got {method!r}.")
    found = estimate_background_sigma(img, head=head) if method != "tissue" else None
    if found is None and method == "background":
        raise ValueError("the scan has too little air holding noise to measure it there; use method='tissue'.")
    if found is not None:
        sigma, model, where = found[0], found[1], "background"
    else:
        sigma, model, where = estimate_tissue_sigma(img, foreground=foreground), "unknown", "tissue"
    reference = robust_max(img)
    level = 255.0 * sigma / reference if reference > 0 else 0.0
    return {NOISE_SIGMA_KEY: sigma, NOISE_LEVEL_KEY: level, "method": where, "model": model}


def estimate_tissue_sigma(img: NdarrayOrTensor, foreground: float | None = 0.1) -> float:
    """The noise level measured in the tissue: the weakly textured patches' principal components.

    :func:`transforms.weak_texture.estimate_weak_texture_sigma` over the 5-cubed patches whose mean is at least
    ``foreground`` times the robust maximum; Haar's MAD (:func:`estimate_noise_sigma`) where the volume holds too
    few of them.

    Args:
        img: the volume ``(X, Y, Z)`` or ``(1, X, Y, Z)``.
        foreground: the patches' least mean, as a fraction of the robust maximum; ``None`` takes every patch.

    Returns:
        ``sigma`` in the volume's intensity units.
    """
    x = _as_volume(img)
    found = estimate_weak_texture_sigma(x, None if foreground is None else foreground * robust_max(x))
    return estimate_noise_sigma(img, foreground=foreground) if found is None else found


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
    if min(x.shape) < 2:
        return 0.0
    detail, blocks, even = _haar_details(x)
    x = x[even]
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
        foreground: as :func:`estimate_tissue_sigma` (the tissue estimate).
        method: where to measure, one of :data:`NOISE_METHODS` (:func:`estimate_noise`).
        trained_range: the 0-255 range of levels the denoiser was trained on; an estimate outside it is logged as
            a warning (``None``: no check).
        log: log each estimate at INFO level.

    Raises:
        ValueError: ``trained_range`` is not a ``(low, high)`` pair with ``0 <= low <= high``, or an unknown method.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        foreground: float | None = 0.1,
        trained_range: Sequence[float] | None = None,
        log: bool = True,
        method: str = "auto",
    ) -> None:
        if method not in NOISE_METHODS:
            raise ValueError(f"method must be one of {NOISE_METHODS}, got {method!r}.")
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
        self.method = method
        self.trained_range = trained_range
        self.log = log
        self.last: dict[str, Any] = {}

    def estimate(self, img: NdarrayOrTensor) -> dict[str, Any]:
        """The estimate of ``img``: ``{"noise_sigma": image units, "noise_level_255": 0-255 scale}``."""
        found = estimate_noise(img, self.method, self.foreground)
        return {
            NOISE_SIGMA_KEY: found[NOISE_SIGMA_KEY],
            NOISE_LEVEL_KEY: found[NOISE_LEVEL_KEY],
            "noise_method": found["method"],
        }

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
                "%s: estimated noise sigma %.4g (%.1f/255 of its robust maximum, measured in the %s)",
                name,
                self.last[NOISE_SIGMA_KEY],
                level,
                "air" if self.last["noise_method"] == "background" else "tissue",
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
        foreground, trained_range, log, method: as the array class.
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
        method: str = "auto",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.estimator = EstimateNoiseLevel(foreground, trained_range, log, method)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Estimate every present key; returns a new dictionary holding the same (annotated) images."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.estimator(d[key])
        return d
