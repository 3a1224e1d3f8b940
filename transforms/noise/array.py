"""The noise models as MONAI array transforms: Gaussian (0-255 scale), Rician, Poisson and low-dose PET.

The models and the reference intensity are described in :mod:`transforms.noise`. Every transform draws its level
and its per-voxel noise in ``randomize()`` from ``self.R`` and applies them in ``__call__``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from transforms.intensity import robust_max

__all__ = [
    "RandGaussianNoise255",
    "RandLowDose",
    "RandNoiseBase",
    "RandPoissonNoise",
    "RandRicianNoise",
    "Reference",
    "check_prob",
]

Reference = float | str
_REFERENCE_WORDS = ("max", "robust")


def _level_range(value: float | Sequence[float], name: str, low: float, high: float, low_open: bool) -> tuple:
    """Validate a level or a ``(low, high)`` range and return it as a pair."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        pair = (float(value), float(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        pair = (float(value[0]), float(value[1]))
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
    lower_ok = all((v > low) if low_open else (v >= low) for v in pair)
    if not (lower_ok and all(v <= high and np.isfinite(v) for v in pair)):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low:g}, {high:g}], got {value!r}.")
    if pair[0] > pair[1]:
        raise ValueError(f"{name} range must be (low, high) with low <= high, got {value!r}.")
    return pair


def check_prob(prob: float) -> float:
    """Return ``prob`` as a float; ``ValueError`` unless it is a number in ``[0, 1]``."""
    if isinstance(prob, bool) or not isinstance(prob, (int, float, np.floating)) or not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"prob must be a number in [0, 1], got {prob!r}.")
    return float(prob)


def _check_reference(reference: Reference) -> Reference:
    if isinstance(reference, str):
        if reference not in _REFERENCE_WORDS:
            raise ValueError(f"reference must be a positive number or one of {_REFERENCE_WORDS}, got {reference!r}.")
        return reference
    if isinstance(reference, bool) or not np.isfinite(reference) or float(reference) <= 0:
        raise ValueError(f"reference must be a positive number or one of {_REFERENCE_WORDS}, got {reference!r}.")
    return float(reference)


def _reference_value(reference: Reference, x: np.ndarray) -> float:
    """The intensity that stands for 255 (or 1 after normalisation) for this image."""
    if not isinstance(reference, str):
        return float(reference)
    if reference == "max":
        return float(x.max()) if x.size else 0.0
    return robust_max(x, default=0.0)


def _as_numpy(img: NdarrayOrTensor) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        return img.detach().cpu().numpy()
    return np.asarray(img)


class RandNoiseBase(RandomizableTransform):
    """Shared machinery: level range, reference, draw-then-apply and MetaTensor handling."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    _level_name = "level"

    def __init__(self, prob: float, level: tuple[float, float], reference: Reference, dtype: DtypeLike) -> None:
        RandomizableTransform.__init__(self, check_prob(prob))
        self.level_range = level
        self.reference = _check_reference(reference)
        self.dtype = dtype
        self.level: float = level[0]
        self._draw: Any = None
        self._ref: float = 0.0
        self._shape: tuple[int, ...] | None = None

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        """Flip the coin, draw the level, and (given ``img``) the noise for that image, all from ``self.R``.

        Args:
            img: the image that will be noised; ``None`` draws only the coin and the level.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        low, high = self.level_range
        self.level = float(self.R.uniform(low, high)) if high > low else low
        if img is not None:
            self.randomize_field(img)

    def randomize_field(self, img: NdarrayOrTensor) -> None:
        """Draw the per-voxel noise for ``img`` at the current level, from ``self.R``.

        Args:
            img: the image that will be noised, any shape (e.g. ``(C, H, W, D)``).
        """
        x = _as_numpy(img)
        self._check_input(x)
        self._ref = _reference_value(self.reference, x)
        self._shape = tuple(x.shape)
        self._draw = self._sample(x)

    def _check_input(self, x: np.ndarray) -> None:
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"{type(self).__name__} needs a real-valued image, got dtype {x.dtype}.")

    @abstractmethod
    def _sample(self, x: np.ndarray) -> Any:
        """Draw, from ``self.R``, whatever the model needs to noise ``x`` (numpy, input shape)."""

    @abstractmethod
    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        """Combine ``img`` (plain float tensor) with the stored draws; must not write into ``img``."""

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Return a noisy copy of ``img``; the input is never modified.

        Args:
            img: image of any shape, channel first by convention ``(C, H, W, D)``; numpy, torch or MetaTensor.
            randomize: draw a new coin, level and noise; ``False`` reuses the last draws (same image shape).

        Returns:
            A tensor (a MetaTensor, with the input's metadata, when metadata tracking is on) of dtype ``dtype``.

        Raises:
            ValueError: the image does not suit the model (see the class), or ``randomize=False`` with draws made
                for a different shape.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize(img_t)
        if not self._do_transform:
            return convert_to_dst_type(img_t, img_t, dtype=self.dtype or img_t.dtype)[0]
        if self._shape != tuple(img_t.shape):
            raise ValueError(
                f"{type(self).__name__}: noise was drawn for shape {self._shape}, image has {tuple(img_t.shape)}; "
                "call randomize(img) first."
            )
        work = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        work = work.to(torch.float64 if work.dtype == torch.float64 else torch.float32)
        out = self._apply(work)
        return convert_to_dst_type(out, img_t, dtype=self.dtype or img_t.dtype)[0]

    def _noise_tensor(self, array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(array, device=like.device).to(like.dtype)


class RandGaussianNoise255(RandNoiseBase):
    """Add zero-mean Gaussian noise whose standard deviation is given on the notes' 0-255 scale.

    ``y = x + (level / 255) * ref * N(0, 1)``, independently per voxel; ``ref`` is the reference intensity
    (:mod:`transforms.noise`): with the default ``reference=1.0`` the image is assumed normalised to ``[0, 1]`` and
    ``level=15`` (``gaussian15``) means a standard deviation of ``15/255 = 0.0588`` of that range.
    The output is not clipped, so the noise stays zero-mean.

    Args:
        level: noise standard deviation on the 0-255 scale, in ``[0, 255]``, or a ``(low, high)`` range drawn
            uniformly per call.
        prob: probability of adding noise.
        reference: intensity that stands for 255: a positive number, ``"max"`` or ``"robust"``.
        dtype: output dtype; ``None`` keeps the input's.

    Raises:
        ValueError: ``level``, ``prob`` or ``reference`` out of range.
    """

    def __init__(
        self,
        level: float | Sequence[float] = 15.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        super().__init__(prob, _level_range(level, "level", 0.0, 255.0, low_open=False), reference, dtype)

    @property
    def sigma(self) -> float:
        """Standard deviation, in image units, of the last draw."""
        return self.level / 255.0 * self._ref

    def _sample(self, x: np.ndarray) -> np.ndarray:
        return self.R.standard_normal(x.shape).astype(np.float32)

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        return img + self.sigma * self._noise_tensor(self._draw, img)


class RandRicianNoise(RandNoiseBase):
    """Rician noise of magnitude MRI, with the level on the 0-255 scale; replaces MONAI's ``RandRicianNoise``.

    ``y = sqrt((x + s * N1)^2 + (s * N2)^2)`` with ``s = (level / 255) * ref``: the magnitude of a complex signal
    whose real and imaginary channels carry independent Gaussian noise of std ``s``. For a signal ``A`` the
    output follows the Rice distribution; on the background (``A = 0``) it is Rayleigh with mean
    ``s * sqrt(pi / 2)``.

    MONAI 1.6's ``RandRicianNoise`` is not used because it stores the unclamped ``prob`` over the clamped one,
    writes into the caller's tensor in ``channel_wise`` mode, and draws its noise in ``__call__`` rather than in
    ``randomize()`` (so ``randomize=False`` still redraws); ``tests/test_noise.py`` checks all three.

    Args:
        level: std ``s`` of each Gaussian channel on the 0-255 scale, in ``[0, 255]``, or a ``(low, high)`` range.
        prob: probability of adding noise.
        reference: intensity that stands for 255: a positive number, ``"max"`` or ``"robust"``.
        dtype: output dtype; ``None`` keeps the input's.

    Raises:
        ValueError: ``level``, ``prob`` or ``reference`` out of range.
    """

    def __init__(
        self,
        level: float | Sequence[float] = 15.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        super().__init__(prob, _level_range(level, "level", 0.0, 255.0, low_open=False), reference, dtype)

    @property
    def sigma(self) -> float:
        """Standard deviation of each Gaussian channel, in image units, of the last draw."""
        return self.level / 255.0 * self._ref

    def _sample(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        real = self.R.standard_normal(x.shape).astype(np.float32)
        imag = self.R.standard_normal(x.shape).astype(np.float32)
        return real, imag

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        real, imag = (self._noise_tensor(a, img) for a in self._draw)
        return torch.sqrt((img + self.sigma * real) ** 2 + (self.sigma * imag) ** 2)


class _CountingNoise(RandNoiseBase):
    """Noise models that read intensities as counts and so refuse negative or non-finite voxels."""

    def _check_input(self, x: np.ndarray) -> None:
        super()._check_input(x)
        if x.size and not np.isfinite(x).all():
            raise ValueError(f"{type(self).__name__} needs finite intensities; the image has NaN or infinite voxels.")
        if x.size and x.min() < 0:
            raise ValueError(
                f"{type(self).__name__} reads intensities as photon counts and needs non-negative input, but the "
                f"image's minimum is {float(x.min()):g}; scale it without an offset first "
                "(ScalePercentile(lower=None)) or use Gaussian noise for signed data."
            )


class RandPoissonNoise(_CountingNoise):
    """Poisson (shot) noise with a photon-count scale, so that the variance is the mean divided by ``scale``.

    ``y = ref * Poisson(scale * x / ref) / scale`` per voxel: ``E[y] = x`` and ``Var[y] = x * ref / scale``; with
    the default ``reference=1.0`` (image normalised to ``[0, 1]``) that is ``variance = mean / scale``, and a
    voxel at intensity 1 has signal-to-noise ratio ``sqrt(scale)``. Smaller ``scale`` means fewer photons and
    more noise. Missing from MONAI and TorchIO.

    Args:
        scale: photon count of a voxel at the reference intensity, ``> 0`` (at most ``1e9``), or a
            ``(low, high)`` range drawn uniformly per call.
        prob: probability of adding noise.
        reference: intensity read as ``scale`` photons: a positive number, ``"max"`` or ``"robust"``.
        dtype: output dtype; ``None`` keeps the input's.

    Raises:
        ValueError: ``scale``, ``prob`` or ``reference`` out of range; at call time, negative or non-finite input.
    """

    def __init__(
        self,
        scale: float | Sequence[float] = 100.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        super().__init__(prob, _level_range(scale, "scale", 0.0, 1e9, low_open=True), reference, dtype)

    @property
    def scale(self) -> float:
        """Photon count at the reference intensity, of the last draw."""
        return self.level

    def _sample(self, x: np.ndarray) -> np.ndarray:
        if self._ref <= 0:
            return np.zeros(x.shape, dtype=np.float64)
        lam = x.astype(np.float64) * (self.scale / self._ref)
        return self.R.poisson(lam).astype(np.float64)

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        factor = self._ref / self.scale
        return self._noise_tensor(self._draw, img) * factor


class RandLowDose(_CountingNoise):
    """Simulate a low-dose PET scan from a full-dose one by binomial thinning of its counts.

    The full-dose image is read as a count map with ``counts`` events per voxel at the reference intensity:
    ``n = counts * x / ref`` rounded stochastically (floor plus a Bernoulli draw of the fraction, so ``E[n]`` is
    exact). A scan at dose fraction ``f`` keeps each event with probability ``f`` and is rescaled to full-dose
    units: ``y = ref * Binomial(n, f) / (f * counts)``. Hence ``E[y] = x`` and
    ``Var[y] ~= x * ref * (1 - f) / (f * counts)``; ``f = 1`` returns the image up to the rounding.
    Image-space model: the correlated texture of reconstructed low-count data is not reproduced.

    Args:
        dose: dose fraction ``f`` in ``(0, 1]`` (e.g. ``0.25`` for a quarter dose), or a ``(low, high)`` range.
        counts: full-dose events per voxel at the reference intensity, ``> 0``.
        prob: probability of simulating a low dose.
        reference: intensity read as ``counts`` events: a positive number, ``"max"`` or ``"robust"``.
        dtype: output dtype; ``None`` keeps the input's.

    Raises:
        ValueError: ``dose``, ``counts``, ``prob`` or ``reference`` out of range; negative or non-finite input.
    """

    def __init__(
        self,
        dose: float | Sequence[float] = 0.25,
        counts: float = 200.0,
        prob: float = 1.0,
        reference: Reference = 1.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        super().__init__(prob, _level_range(dose, "dose", 0.0, 1.0, low_open=True), reference, dtype)
        if isinstance(counts, bool) or not np.isfinite(counts) or not 0 < counts <= 1e9:
            raise ValueError(f"counts must be a number in (0, 1e9], got {counts!r}.")
        self.counts = float(counts)

    @property
    def dose(self) -> float:
        """Dose fraction of the last draw."""
        return self.level

    def _sample(self, x: np.ndarray) -> np.ndarray:
        if self._ref <= 0:
            return np.zeros(x.shape, dtype=np.float64)
        expected = x.astype(np.float64) * (self.counts / self._ref)
        full = np.floor(expected)
        full += self.R.random_sample(x.shape) < (expected - full)
        return self.R.binomial(full.astype(np.int64), self.dose).astype(np.float64)

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        factor = self._ref / (self.dose * self.counts)
        return self._noise_tensor(self._draw, img) * factor
