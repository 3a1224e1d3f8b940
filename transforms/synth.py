"""A training-image generator: random heads synthesised from tissue probability maps (domain randomisation).

The chain turns one stack of tissue maps into an endless supply of noisy/clean training pairs that look like scans
of any contrast, resolution, field of view and noise, so that a denoiser trained on it meets real heads it has never
seen (the brain template alone is one skull-stripped average brain at one resolution and contrast). Every step is a
MONAI-style array + dictionary pair; the maps come from the caller (``pipeline.data.synth.load_tissue_maps`` reads
nilearn's MNI152 maps; this package never reads files).

**Input** (key ``label`` in :func:`synth_transforms`): a channel-first stack ``(4, X, Y, Z)`` on a grid of
``source_spacing`` mm (the MetaTensor's affine when it has one), channels :data:`TISSUE_CHANNELS`: grey-matter,
white-matter and cerebrospinal-fluid probabilities, and the distance in mm from the brain outward (0 inside).

**Steps**, in order:

1. :class:`RandVoxelSizeCrop`: draws the acquisition's voxel size ``v`` (uniform in ``voxel_size`` mm, isotropic;
   with probability ``anisotropic_prob`` one random axis gets a slice spacing uniform in ``slice_spacing``) and a
   box of ``spatial_size * v`` mm whose centre is uniform over the *whole* field of view (background included);
   crops it from the 1 mm maps (zero-padded where it leaves the field of view; the distance channel is padded with
   a large distance, i.e. air).
2. :class:`RandTissueContrast`: picks a contrast (``t1``, ``t2``, ``pd`` or ``random``), draws a mean intensity per
   class (CSF, GM, WM, skull, scalp, air) uniformly in that contrast's ranges (:data:`CONTRAST_RANGES`), then
   normalises them so the brightest tissue is 1; with probability ``head_prob`` adds shells around the brain from
   the distance channel: a CSF rim, skull and scalp, each of a thickness drawn per item and modulated by a smooth
   random field (else the brain stands on air, as a skull-stripped scan). The image is the probability-weighted sum
   of the class intensities, each class times ``1 + tau * F`` with ``F`` a smooth unit-variance field (correlation
   length 4-16 mm) and ``tau`` uniform in ``texture``, plus fine texture (blurred white noise, amplitude uniform in
   ``fine_texture``), times a smooth bias field ``exp(b * F)`` (``b`` uniform in ``bias``, 64 mm correlation).
   Writes the brain mask (``gm + wm + csf >= 0.5``) to ``mask_key``.
3. :class:`RandResolution`: the point-spread function, a Gaussian of FWHM ``v`` times a factor uniform in
   ``fwhm_factor`` per axis, then trilinear resampling onto the ``v`` mm grid (``spatial_size`` voxels); masks are
   resampled without blur and thresholded at 0.5. Acquisition before noise, as in a scanner: the noise stays white.
4. MONAI ``RandScaleIntensityd`` (global gain, ``gain``), ``RandFlipd`` on each axis, then the clean ``label`` is
   copied to ``image``.
5. :class:`RandNoiseMix`: per item one noise type among Gaussian, Rician and Poisson (``weights``) with its level
   uniform in its range (``transforms.noise`` models, reference intensity 1 = the brightest tissue), drawn fresh
   every time an item is made, so no two epochs see the same noise.

Intensities: no per-patch normalisation. The brightest tissue is 1 (times the gain and bias), which is what the
bundle's inference scaling (the 99.5th percentile of a whole scan's non-zero voxels -> 1) gives a real scan, so a
patch of air keeps its tiny intensities instead of being blown up to 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.networks.layers import gaussian_1d, separable_filtering
from monai.transforms import (
    Compose,
    CopyItemsd,
    MapTransform,
    RandFlipd,
    RandomizableTransform,
    RandScaleIntensityd,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from transforms.noise import RandGaussianNoise255, RandPoissonNoise, RandRicianNoise

__all__ = [
    "CLASSES",
    "CONTRAST_RANGES",
    "TISSUE_CHANNELS",
    "VOXEL_SIZE_KEY",
    "RandNoiseMix",
    "RandNoiseMixd",
    "RandResolution",
    "RandResolutiond",
    "RandTissueContrast",
    "RandTissueContrastd",
    "RandVoxelSizeCrop",
    "RandVoxelSizeCropd",
    "synth_transforms",
]

logger = logging.getLogger(__name__)

TISSUE_CHANNELS: tuple[str, ...] = ("gm", "wm", "csf", "distance")
"""Channels of the input stack: tissue probabilities, then the distance (mm) from the brain outward."""

CLASSES: tuple[str, ...] = ("csf", "gm", "wm", "skull", "scalp", "air")
"""Intensity classes; the CSF rim around the brain takes the CSF intensity."""

VOXEL_SIZE_KEY = "synth_voxel_size"
"""MetaTensor ``meta`` entry where :class:`RandVoxelSizeCrop` records the drawn voxel size (mm, per axis)."""

_FAR_MM = 1000.0
_Range = tuple[float, float]

CONTRAST_RANGES: dict[str, dict[str, _Range]] = {
    "t1": {
        "csf": (0.05, 0.30),
        "gm": (0.40, 0.65),
        "wm": (0.70, 1.00),
        "skull": (0.00, 0.20),
        "scalp": (0.50, 1.00),
        "air": (0.00, 0.03),
    },
    "t2": {
        "csf": (0.80, 1.00),
        "gm": (0.45, 0.70),
        "wm": (0.25, 0.50),
        "skull": (0.00, 0.15),
        "scalp": (0.30, 0.80),
        "air": (0.00, 0.03),
    },
    "pd": {
        "csf": (0.75, 1.00),
        "gm": (0.70, 0.90),
        "wm": (0.55, 0.75),
        "skull": (0.00, 0.20),
        "scalp": (0.50, 0.90),
        "air": (0.00, 0.03),
    },
    "random": {
        "csf": (0.00, 1.00),
        "gm": (0.00, 1.00),
        "wm": (0.00, 1.00),
        "skull": (0.00, 1.00),
        "scalp": (0.00, 1.00),
        "air": (0.00, 0.05),
    },
}
"""Per contrast, the range each class's mean intensity is drawn from (before normalising the brightest to 1)."""


# ------------------------------------------------------------------------------------------------ validation helpers
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _range(value: float | Sequence[float], name: str, low: float, high: float) -> _Range:
    """A number or ``(lo, hi)`` pair within ``[low, high]``, as a pair; the error names the parameter."""
    if _is_number(value):
        pair = (float(value), float(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(map(_is_number, value)):
        pair = (float(value[0]), float(value[1]))
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
    if not all(np.isfinite(v) and low <= v <= high for v in pair) or pair[0] > pair[1]:
        raise ValueError(f"{name} must be a (low, high) range with {low:g} <= low <= high <= {high:g}, got {value!r}.")
    return pair


def _prob(value: float, name: str = "prob") -> float:
    if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def _size(value: Sequence[int] | int | None, name: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    size = (value,) * 3 if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else tuple(value)
    if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"{name} must be None, a positive int or three positive ints, got {value!r}.")
    return tuple(int(s) for s in size)


def _uniform(R: np.random.RandomState, pair: _Range) -> float:
    return float(R.uniform(*pair)) if pair[1] > pair[0] else pair[0]


def _plain(img: torch.Tensor) -> torch.Tensor:
    plain = img.as_tensor() if isinstance(img, MetaTensor) else img
    return plain.to(torch.float64 if plain.dtype == torch.float64 else torch.float32)


def _spacing(img: Any, default: float) -> np.ndarray:
    """Voxel size (mm) per axis: the MetaTensor's affine column norms, else ``default``."""
    if isinstance(img, MetaTensor):
        affine = np.asarray(img.affine, dtype=np.float64)
        if affine.shape == (4, 4):
            return np.linalg.norm(affine[:3, :3], axis=0)
    return np.full(3, float(default))


def _smooth(field: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
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


def _upsample(coarse: np.ndarray, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Trilinear upsampling of a coarse random grid ``(C, a, b, c)`` to ``(C, *shape)``: a smooth random field."""
    grid = torch.as_tensor(coarse, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(grid, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0]


def _coarse_shape(shape: Sequence[int], spacing_vox: float) -> tuple[int, ...]:
    return tuple(max(2, int(math.ceil(n / max(spacing_vox, 1e-3))) + 1) for n in shape)


# ------------------------------------------------------------------------------------------------ 1. voxel size + crop
class RandVoxelSizeCrop(RandomizableTransform):
    """Draw an acquisition voxel size and crop the box a ``spatial_size``-voxel patch covers, anywhere in the FOV.

    The voxel size ``v`` is uniform in ``voxel_size`` (mm, the same on every axis); with probability
    ``anisotropic_prob`` one axis, drawn uniformly, gets a slice spacing uniform in ``slice_spacing`` (but never
    below ``v``). The box spans ``round(spatial_size * v / s)`` source voxels per axis (``s`` the source spacing)
    and its centre is uniform over the whole field of view, so patches of air and of the head's edge are as likely
    as patches of brain. Outside the field of view, channel ``c`` is padded with ``pad_value[c]``. The box is then
    block-averaged to a grid no finer than ``v / oversample`` (see ``oversample``). The drawn
    ``v`` is recorded in ``meta["synth_voxel_size"]`` for :class:`RandResolution`, and the affine follows the crop.

    Args:
        spatial_size: patch size in output voxels (``(X, Y, Z)`` or one int); ``None`` keeps the whole field of view
            (validation volumes), with ``v`` still drawn.
        voxel_size: in-plane voxel size range in mm, ``0 < lo <= hi <= 10``.
        slice_spacing: slice spacing range in mm of the anisotropic axis, ``0 < lo <= hi <= 10``.
        anisotropic_prob: probability that one axis gets the slice spacing.
        source_spacing: voxel size of the input in mm when it carries no affine.
        pad_value: value outside the field of view, one per channel or one for all.
        oversample: the crop is block-averaged (``avg_pool3d``: partial volumes of the tissue probabilities) by
            ``floor(v / (s * oversample))`` per axis, so the later steps work on a grid at most ``oversample`` times
            finer than the acquisition's (a 3 mm patch is synthesised on a 3 mm grid rather than 27x more 1 mm
            voxels); ``None`` keeps the source grid.
        foreground_prob: probability that the box's centre is redrawn (up to 50 times) until channel
            ``foreground_channel`` there is at most ``foreground_max`` (e.g. the distance channel <= 15 mm: inside
            the head); otherwise it is uniform over the whole field of view.
        foreground_channel: the channel that marks the foreground.
        foreground_max: the largest value of that channel counted as foreground.
        prob: probability of cropping (else the input is returned as it is).

    Raises:
        ValueError: a parameter out of its range (the message names it).
    """

    backend = [TransformBackends.TORCH]
    MAX_TRIES = 50

    def __init__(
        self,
        spatial_size: Sequence[int] | int | None = 32,
        voxel_size: float | Sequence[float] = (1.0, 3.0),
        slice_spacing: float | Sequence[float] = (1.0, 4.0),
        anisotropic_prob: float = 0.3,
        source_spacing: float = 1.0,
        pad_value: float | Sequence[float] = 0.0,
        oversample: float | None = 1.0,
        foreground_prob: float = 0.0,
        foreground_channel: int = -1,
        foreground_max: float = 0.0,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, _prob(prob))
        self.foreground_prob = _prob(foreground_prob, "foreground_prob")
        if isinstance(foreground_channel, bool) or not isinstance(foreground_channel, (int, np.integer)):
            raise ValueError(f"foreground_channel must be an int, got {foreground_channel!r}.")
        if not _is_number(foreground_max):
            raise ValueError(f"foreground_max must be a number, got {foreground_max!r}.")
        self.foreground_channel, self.foreground_max = int(foreground_channel), float(foreground_max)
        self._values: Any = None
        if oversample is not None and (not _is_number(oversample) or not 0.5 <= oversample <= 10):
            raise ValueError(f"oversample must be None or a number in [0.5, 10], got {oversample!r}.")
        self.oversample = math.inf if oversample is None else float(oversample)
        self.spatial_size = _size(spatial_size, "spatial_size")
        self.voxel_size = _range(voxel_size, "voxel_size", 1e-3, 10.0)
        self.slice_spacing = _range(slice_spacing, "slice_spacing", 1e-3, 10.0)
        self.anisotropic_prob = _prob(anisotropic_prob, "anisotropic_prob")
        if not _is_number(source_spacing) or not 0 < source_spacing <= 10:
            raise ValueError(f"source_spacing must be a number of mm in (0, 10], got {source_spacing!r}.")
        self.source_spacing = float(source_spacing)
        values = [pad_value] if _is_number(pad_value) else list(pad_value)
        if not values or not all(map(_is_number, values)):
            raise ValueError(f"pad_value must be a number or one number per channel, got {pad_value!r}.")
        self.pad_value = [float(v) for v in values]
        self.drawn_voxel_size = np.ones(3)
        self.start = np.zeros(3, dtype=int)
        self.box = np.ones(3, dtype=int)

    def randomize(self, shape: Sequence[int], spacing: Sequence[float], values: Any = None) -> None:
        """Draw the voxel size, the anisotropic axis and the box's position, all from ``self.R``.

        Args:
            shape: spatial shape of the input ``(X, Y, Z)``.
            spacing: its voxel size in mm per axis.
            values: the ``foreground_channel`` of the input (``(X, Y, Z)``), for foreground-centred boxes.
        """
        super().randomize(None)
        self._values = values if self.foreground_prob > 0 else None
        spacing = np.asarray(spacing, dtype=np.float64)
        v = np.full(3, _uniform(self.R, self.voxel_size))
        if self.R.random_sample() < self.anisotropic_prob:
            axis = int(self.R.randint(3))
            v[axis] = max(v[axis], _uniform(self.R, self.slice_spacing))
        self.drawn_voxel_size = v
        shape = np.asarray(shape, dtype=int)
        if self.spatial_size is None:
            self.start, self.box = np.zeros(3, dtype=int), shape.copy()
            return
        factor = self.pool_factor(spacing)
        box = np.maximum(1, np.round(np.asarray(self.spatial_size) * v / spacing).astype(int))
        self.box = np.maximum(factor, np.round(box / factor).astype(int) * factor)
        centre = np.array([self.R.randint(n) for n in shape])
        if self._values is not None and self.R.random_sample() < self.foreground_prob:
            for _ in range(self.MAX_TRIES):
                if float(self._values[tuple(centre)]) <= self.foreground_max:
                    break
                centre = np.array([self.R.randint(n) for n in shape])
        self.start = centre - self.box // 2

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Crop ``img`` (``(C, X, Y, Z)``); the input is never modified.

        Args:
            img: the tissue stack (numpy, torch or MetaTensor).
            randomize: draw anew; ``False`` reuses the last draw.

        Returns:
            The cropped stack (float32; a MetaTensor with the shifted affine and ``meta["synth_voxel_size"]``).

        Raises:
            ValueError: the image is not ``(C, X, Y, Z)`` or ``pad_value`` does not match its channels.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if img_t.ndim != 4:
            raise ValueError(f"{type(self).__name__} needs a (C, X, Y, Z) image, got shape {tuple(img_t.shape)}.")
        if len(self.pad_value) not in (1, img_t.shape[0]):
            raise ValueError(f"pad_value has {len(self.pad_value)} values for {img_t.shape[0]} channels.")
        spacing = _spacing(img_t, self.source_spacing)
        if randomize:
            self.randomize(img_t.shape[1:], spacing, self.foreground_values(img_t))
        if not self._do_transform:
            return convert_to_dst_type(img_t, img_t, dtype=torch.float32)[0]
        work = _plain(img_t).float()
        shape = np.asarray(work.shape[1:])
        stop = self.start + self.box
        out = torch.empty((work.shape[0], *self.box.tolist()), dtype=torch.float32, device=work.device)
        pads = self.pad_value * work.shape[0] if len(self.pad_value) == 1 else self.pad_value
        for c in range(work.shape[0]):
            out[c] = pads[c]
        src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(self.start, stop, shape))
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, self.start))
        if all(s.stop > s.start for s in src):
            out[(slice(None), *dst)] = work[(slice(None), *src)]
        factor = self.pool_factor(spacing)
        if np.any(factor > 1):
            usable = (np.asarray(out.shape[1:]) // factor) * factor
            out = out[(slice(None), *(slice(0, int(u)) for u in usable))]
            out = F.avg_pool3d(out[None], kernel_size=tuple(int(f) for f in factor))[0]
        result = convert_to_dst_type(out, img_t, dtype=torch.float32)[0]
        if isinstance(result, MetaTensor):
            affine = torch.as_tensor(np.asarray(img_t.affine, dtype=np.float64)).clone()
            affine[:3, 3] += affine[:3, :3] @ torch.as_tensor(self.start + (factor - 1) / 2.0, dtype=affine.dtype)
            affine[:3, :3] = affine[:3, :3] * torch.as_tensor(factor, dtype=affine.dtype)[None, :]
            result.affine = affine
            result.meta[VOXEL_SIZE_KEY] = torch.as_tensor(self.drawn_voxel_size, dtype=torch.float64)
        return result

    def foreground_values(self, img: torch.Tensor) -> torch.Tensor | None:
        """The channel that marks the foreground (``None`` when foreground centring is off)."""
        if self.foreground_prob <= 0:
            return None
        channel = self.foreground_channel
        if not -img.shape[0] <= channel < img.shape[0]:
            raise ValueError(f"foreground_channel {channel} does not exist in an image of {img.shape[0]} channels.")
        return img[channel]

    def pool_factor(self, spacing: Sequence[float]) -> np.ndarray:
        """Per-axis block-averaging factor of the crop: ``floor(v / (spacing * oversample))``, at least 1."""
        ratio = self.drawn_voxel_size / (np.asarray(spacing, dtype=np.float64) * self.oversample)
        return np.maximum(1, np.floor(ratio + 1e-6)).astype(int)


class RandVoxelSizeCropd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandVoxelSizeCrop`; all keys share one draw (same voxel size and box).

    Args:
        keys: keys to crop (same spatial shape), normally the tissue stack only.
        spatial_size, voxel_size, slice_spacing, anisotropic_prob, source_spacing, pad_value, oversample,
            foreground_prob, foreground_channel, foreground_max: as the array class (the first key's channel
            decides the foreground).
        prob: probability of cropping an item.
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = RandVoxelSizeCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int | None = 32,
        voxel_size: float | Sequence[float] = (1.0, 3.0),
        slice_spacing: float | Sequence[float] = (1.0, 4.0),
        anisotropic_prob: float = 0.3,
        source_spacing: float = 1.0,
        pad_value: float | Sequence[float] = 0.0,
        oversample: float | None = 1.0,
        foreground_prob: float = 0.0,
        foreground_channel: int = -1,
        foreground_max: float = 0.0,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _prob(prob))
        self.cropper = RandVoxelSizeCrop(
            spatial_size,
            voxel_size,
            slice_spacing,
            anisotropic_prob,
            source_spacing,
            pad_value,
            oversample,
            foreground_prob,
            foreground_channel,
            foreground_max,
            prob=1.0,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandVoxelSizeCropd:
        """Seed this transform and its inner array transform; returns ``self``."""
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Crop every present key with one draw; returns a new dictionary."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        first = convert_to_tensor(d[keys[0]], track_meta=get_track_meta())
        self.randomize(None)
        if not self._do_transform:
            return d
        spacing = _spacing(first, self.cropper.source_spacing)
        self.cropper.randomize(first.shape[1:], spacing, self.cropper.foreground_values(first))
        for key in keys:
            d[key] = self.cropper(d[key], randomize=False)
        return d


# ------------------------------------------------------------------------------------------------ 2. contrast + head
class RandTissueContrast(RandomizableTransform):
    """Synthesise a clean image from a tissue stack: random class intensities, head shells, texture and bias field.

    Model (module docstring, step 2), for probabilities ``p_gm, p_wm, p_csf`` and distance ``d`` (mm) outside the
    brain: with ``p_b = p_gm + p_wm + p_csf`` (clipped to 1) and soft shells ``s(b) = sigmoid((b - d) / 0.5 mm)`` at
    the outer boundaries ``b1 = t_rim``, ``b2 = b1 + t_skull``, ``b3 = b2 + t_scalp`` (each thickness drawn uniformly
    in its range and multiplied by ``1 + 0.3 F``), the outside ``1 - p_b`` splits into CSF rim ``s(b1)``, skull
    ``s(b2) - s(b1)``, scalp ``s(b3) - s(b2)`` and air ``1 - s(b3)``. Without a head (probability ``1 - head_prob``)
    it is all air. Image: ``sum_k p_k mu_k (1 + tau_k F_k) * (1 + f N) * exp(b F_bias)``, clipped at 0, with the
    class means ``mu_k`` of a contrast drawn uniformly from ``contrasts`` (names of :data:`CONTRAST_RANGES`, or a
    mapping of that form) and scaled so the brightest of CSF, GM, WM (and scalp, with a head) is 1.

    Args:
        contrasts: contrast names drawn uniformly, or ``{name: {class: (lo, hi)}}`` for every class of
            :data:`CLASSES`.
        head_prob: probability of the skull, scalp and CSF-rim shells.
        rim_mm: CSF-rim thickness range (mm).
        skull_mm: skull thickness range (mm).
        scalp_mm: scalp thickness range (mm).
        texture: range of the within-class smooth variation's amplitude ``tau`` (relative).
        fine_texture: range of the fine texture's amplitude ``f`` (relative; blurred white noise, 1 voxel).
        bias: range of the bias field's log-amplitude ``b`` (0.3: about +-30 %).
        source_spacing: voxel size of the input in mm when it carries no affine.
        prob: probability of randomising; otherwise :meth:`set_fixed`'s values are used (the output is still an
            image, so ``prob=0`` is deterministic rather than the identity).

    Raises:
        ValueError: a parameter out of its range (the message names it).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        contrasts: Sequence[str] | Mapping[str, Mapping[str, Sequence[float]]] = ("t1", "t2", "pd", "random"),
        head_prob: float = 0.8,
        rim_mm: float | Sequence[float] = (0.5, 3.0),
        skull_mm: float | Sequence[float] = (3.0, 8.0),
        scalp_mm: float | Sequence[float] = (3.0, 10.0),
        texture: float | Sequence[float] = (0.0, 0.1),
        fine_texture: float | Sequence[float] = (0.0, 0.04),
        bias: float | Sequence[float] = (0.0, 0.3),
        source_spacing: float = 1.0,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, _prob(prob))
        self.contrasts = self._check_contrasts(contrasts)
        self.head_prob = _prob(head_prob, "head_prob")
        self.rim_mm = _range(rim_mm, "rim_mm", 0.0, 50.0)
        self.skull_mm = _range(skull_mm, "skull_mm", 0.0, 50.0)
        self.scalp_mm = _range(scalp_mm, "scalp_mm", 0.0, 50.0)
        self.texture = _range(texture, "texture", 0.0, 1.0)
        self.fine_texture = _range(fine_texture, "fine_texture", 0.0, 1.0)
        self.bias = _range(bias, "bias", 0.0, 2.0)
        if not _is_number(source_spacing) or not 0 < source_spacing <= 10:
            raise ValueError(f"source_spacing must be a number of mm in (0, 10], got {source_spacing!r}.")
        self.source_spacing = float(source_spacing)
        self.contrast = next(iter(self.contrasts))
        self.means = {k: float(np.mean(v)) for k, v in self.contrasts[self.contrast].items()}
        self.head = True
        self.thickness = {"rim": 0.0, "skull": 0.0, "scalp": 0.0}
        self.amplitudes = {"texture": np.zeros(len(CLASSES)), "fine": 0.0, "bias": 0.0}
        self._fields: dict[str, np.ndarray] = {}
        self._shape: tuple[int, ...] | None = None

    @staticmethod
    def _check_contrasts(contrasts: Any) -> dict[str, dict[str, _Range]]:
        if isinstance(contrasts, Mapping):
            table = {}
            for name, ranges in contrasts.items():
                if not isinstance(ranges, Mapping) or set(ranges) != set(CLASSES):
                    raise ValueError(f"contrasts[{name!r}] must map every class of {CLASSES} to a (low, high) range.")
                table[str(name)] = {c: _range(ranges[c], f"contrasts[{name!r}][{c!r}]", 0.0, 10.0) for c in CLASSES}
            if not table:
                raise ValueError("contrasts must name at least one contrast.")
            return table
        if isinstance(contrasts, str) or not isinstance(contrasts, Sequence) or not contrasts:
            raise ValueError(f"contrasts must be a non-empty list of {sorted(CONTRAST_RANGES)}, got {contrasts!r}.")
        unknown = [c for c in contrasts if c not in CONTRAST_RANGES]
        if unknown:
            raise ValueError(f"contrasts must be among {sorted(CONTRAST_RANGES)}, got unknown {unknown}.")
        return {c: CONTRAST_RANGES[c] for c in contrasts}

    def randomize(self, shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None) -> None:
        """Draw the contrast, class means, head shells, amplitudes and (given ``shape``) the random fields.

        Args:
            shape: spatial shape of the stack ``(X, Y, Z)``; ``None`` draws only the scalars.
            spacing: its voxel size in mm (sets the fields' correlation lengths in voxels).
        """
        super().randomize(None)
        names = list(self.contrasts)
        if not self._do_transform:
            self.set_fixed(shape)
            return
        self.contrast = names[int(self.R.randint(len(names)))]
        self.means = {c: _uniform(self.R, r) for c, r in self.contrasts[self.contrast].items()}
        self.head = bool(self.R.random_sample() < self.head_prob)
        self.thickness = {k: _uniform(self.R, r) for k, r in zip(("rim", "skull", "scalp"), self._shells())}
        self.amplitudes = {
            "texture": np.array([_uniform(self.R, self.texture) for _ in CLASSES]),
            "fine": _uniform(self.R, self.fine_texture),
            "bias": _uniform(self.R, self.bias),
        }
        self._shape = None
        if shape is None:
            return
        spacing = np.full(3, self.source_spacing) if spacing is None else np.asarray(spacing, dtype=np.float64)
        self._shape = tuple(int(s) for s in shape)
        corr = float(self.R.uniform(4.0, 16.0)) / float(np.mean(spacing))
        coarse = _coarse_shape(self._shape, corr)
        self._fields = {
            "texture": self.R.standard_normal((len(CLASSES), *coarse)).astype(np.float32),
            "thickness": self.R.standard_normal(
                (1, *_coarse_shape(self._shape, 32.0 / float(np.mean(spacing))))
            ).astype(np.float32),
            "bias": self.R.standard_normal((1, *_coarse_shape(self._shape, 64.0 / float(np.mean(spacing))))).astype(
                np.float32
            ),
            "fine": self.R.standard_normal((1, *self._shape)).astype(np.float32)
            if self.amplitudes["fine"] > 0
            else np.zeros((1, 1, 1, 1), dtype=np.float32),
        }
        self._fine_sigma = 0.7 / spacing

    def set_fixed(self, shape: Sequence[int] | None = None) -> None:
        """Replace the draws by fixed values (what ``prob=0`` gives).

        The first contrast's mid-range means, a head of mid-range shells, no texture, no bias.

        Args:
            shape: spatial shape the values are for (``None``: any).
        """
        self._do_transform = False
        self.contrast = next(iter(self.contrasts))
        self.means = {k: float(np.mean(v)) for k, v in self.contrasts[self.contrast].items()}
        self.head = True
        self.thickness = {k: float(np.mean(r)) for k, r in zip(("rim", "skull", "scalp"), self._shells())}
        self.amplitudes = {"texture": np.zeros(len(CLASSES)), "fine": 0.0, "bias": 0.0}
        self._fields = {}
        self._shape = None if shape is None else tuple(int(s) for s in shape)

    def _shells(self) -> tuple[_Range, _Range, _Range]:
        return self.rim_mm, self.skull_mm, self.scalp_mm

    def probabilities(self, stack: torch.Tensor) -> dict[str, torch.Tensor]:
        """The class probabilities ``{class: (X, Y, Z)}`` of a tissue stack under the current draw.

        Args:
            stack: ``(4, X, Y, Z)`` plain tensor (:data:`TISSUE_CHANNELS`).

        Returns:
            One map per class of :data:`CLASSES`, summing to 1 at every voxel.
        """
        gm, wm, csf, distance = (stack[i].clamp(min=0) for i in range(4))
        total = gm + wm + csf
        brain = total.clamp(max=1.0)
        share = brain / total.clamp(min=1e-6)  # renormalises where the maps sum above 1
        probs = {"gm": gm * share, "wm": wm * share, "csf": csf * share}
        outside = 1.0 - brain
        if self.head:
            modulation: torch.Tensor | float = 1.0
            if "thickness" in self._fields:
                modulation = (1.0 + 0.3 * _upsample(self._fields["thickness"], brain.shape, brain)[0]).clamp(min=0.2)
            b1 = self.thickness["rim"] * modulation
            b2 = b1 + self.thickness["skull"] * modulation
            b3 = b2 + self.thickness["scalp"] * modulation
            s1, s2, s3 = (torch.sigmoid((b - distance) / 0.5) for b in (b1, b2, b3))
            probs["csf"] = probs["csf"] + outside * s1
            probs["skull"] = outside * (s2 - s1).clamp(min=0)
            probs["scalp"] = outside * (s3 - s2).clamp(min=0)
            probs["air"] = outside * (1.0 - s3)
        else:
            zero = torch.zeros_like(brain)
            probs["skull"], probs["scalp"], probs["air"] = zero, zero, outside
        return probs

    def normalised_means(self) -> dict[str, float]:
        """The class means of the current draw, scaled so the brightest tissue (CSF/GM/WM, scalp with a head) is 1."""
        bright = ["csf", "gm", "wm"] + (["scalp"] if self.head else [])
        top = max(self.means[c] for c in bright)
        top = top if top > 1e-6 else 1.0
        return {c: m / top for c, m in self.means.items()}

    def brain_mask(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The brain mask ``(1, X, Y, Z)``: ``gm + wm + csf >= 0.5`` of a tissue stack, float 0/1, same metadata."""
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        stack = _plain(img_t)
        mask = ((stack[0] + stack[1] + stack[2]) >= 0.5).to(torch.float32)[None]
        return convert_to_dst_type(mask, img_t, dtype=torch.float32)[0]

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Synthesise the clean image ``(1, X, Y, Z)`` from a stack ``(4, X, Y, Z)``; the input is not modified.

        Args:
            img: the tissue stack (numpy, torch or MetaTensor).
            randomize: draw anew; ``False`` reuses the last draw (same shape).

        Returns:
            The image, float32, with the input's metadata (a MetaTensor when metadata is tracked).

        Raises:
            ValueError: the stack is not ``(4, X, Y, Z)``, or reused draws were made for another shape.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if img_t.ndim != 4 or img_t.shape[0] != len(TISSUE_CHANNELS):
            raise ValueError(
                f"{type(self).__name__} needs a ({len(TISSUE_CHANNELS)}, X, Y, Z) stack of {TISSUE_CHANNELS}, "
                f"got shape {tuple(img_t.shape)}."
            )
        spacing = _spacing(img_t, self.source_spacing)
        if randomize:
            self.randomize(img_t.shape[1:], spacing)
        if self._do_transform and self._shape != tuple(img_t.shape[1:]):
            raise ValueError(f"fields were drawn for shape {self._shape}, the stack has {tuple(img_t.shape[1:])}.")
        stack = _plain(img_t).float()
        probs = self.probabilities(stack)
        means = self.normalised_means()
        out = torch.zeros_like(stack[0])
        texture = _upsample(self._fields["texture"], out.shape, out) if self._do_transform else None
        for k, name in enumerate(CLASSES):
            term = probs[name] * means[name]
            if texture is not None and self.amplitudes["texture"][k] > 0:
                term = term * (1.0 + float(self.amplitudes["texture"][k]) * texture[k]).clamp(min=0)
            out = out + term
        if self._do_transform and self.amplitudes["fine"] > 0:
            fine = _smooth(torch.as_tensor(self._fields["fine"], dtype=out.dtype), self._fine_sigma)[0]
            fine = fine / fine.std().clamp(min=1e-6)
            out = out * (1.0 + self.amplitudes["fine"] * fine).clamp(min=0)
        if self._do_transform and self.amplitudes["bias"] > 0:
            out = out * torch.exp(self.amplitudes["bias"] * _upsample(self._fields["bias"], out.shape, out)[0])
        return convert_to_dst_type(out.clamp(min=0)[None], img_t, dtype=torch.float32)[0]


class RandTissueContrastd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandTissueContrast`: replaces each key's tissue stack by a synthetic image.

    Each key gets its own draw (normally there is one key). With ``mask_key`` the brain mask of the (first) key's
    stack is stored there, before the stack is replaced.

    Args:
        keys: keys holding tissue stacks ``(4, X, Y, Z)``.
        mask_key: where to store the brain mask ``(1, X, Y, Z)``; ``None`` for none.
        contrasts, head_prob, rim_mm, skull_mm, scalp_mm, texture, fine_texture, bias, source_spacing: as the
            array class.
        prob: probability of randomising an item (as the array class).
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = RandTissueContrast.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        contrasts: Sequence[str] | Mapping[str, Mapping[str, Sequence[float]]] = ("t1", "t2", "pd", "random"),
        head_prob: float = 0.8,
        rim_mm: float | Sequence[float] = (0.5, 3.0),
        skull_mm: float | Sequence[float] = (3.0, 8.0),
        scalp_mm: float | Sequence[float] = (3.0, 10.0),
        texture: float | Sequence[float] = (0.0, 0.1),
        fine_texture: float | Sequence[float] = (0.0, 0.04),
        bias: float | Sequence[float] = (0.0, 0.3),
        source_spacing: float = 1.0,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _prob(prob))
        self.mask_key = mask_key
        self.synth = RandTissueContrast(
            contrasts, head_prob, rim_mm, skull_mm, scalp_mm, texture, fine_texture, bias, source_spacing, prob=1.0
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandTissueContrastd:
        """Seed this transform and its inner array transform; returns ``self``."""
        super().set_random_state(seed, state)
        self.synth.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Synthesise every present key; returns a new dictionary."""
        d = dict(data)
        self.randomize(None)
        for n, key in enumerate(self.key_iterator(d)):
            stack = convert_to_tensor(d[key], track_meta=get_track_meta())
            if n == 0 and self.mask_key is not None:
                d[self.mask_key] = self.synth.brain_mask(stack)
            self.synth.randomize(stack.shape[1:], _spacing(stack, self.synth.source_spacing))
            if not self._do_transform:
                self.synth.set_fixed(stack.shape[1:])
            d[key] = self.synth(stack, randomize=False)
        return d


# ------------------------------------------------------------------------------------------------ 3. PSF + resampling
class RandResolution(RandomizableTransform):
    """Acquire an image at a coarser voxel size: Gaussian point-spread function, then trilinear resampling.

    The target voxel size ``v`` (mm per axis) is ``meta["synth_voxel_size"]`` when the input carries it
    (:class:`RandVoxelSizeCrop`), else drawn uniformly in ``voxel_size`` (isotropic). The PSF is a Gaussian of
    FWHM ``v * k`` mm per axis with ``k`` uniform in ``fwhm_factor`` (one draw per item), applied on the source grid
    (sigma = FWHM / 2.355, minus the source voxel's own share); the result is sampled on the ``v`` grid
    (``spatial_size`` voxels, default ``round(shape * source / v)``) by trilinear interpolation, and the affine is
    updated to the new grid. ``mask=True`` skips the PSF and thresholds the interpolated mask at 0.5.

    Args:
        voxel_size: target voxel size range (mm) when the input has no recorded voxel size.
        fwhm_factor: range of the PSF's FWHM in units of the voxel size (1: a slice profile as wide as the slice).
        spatial_size: output shape; ``None`` derives it from the voxel sizes.
        source_spacing: input voxel size in mm when it carries no affine.
        mask: treat the input as a binary mask.
        prob: probability of resampling (else the input is returned unchanged).

    Raises:
        ValueError: a parameter out of its range (the message names it).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        voxel_size: float | Sequence[float] = (1.0, 3.0),
        fwhm_factor: float | Sequence[float] = (0.8, 1.2),
        spatial_size: Sequence[int] | int | None = None,
        source_spacing: float = 1.0,
        mask: bool = False,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, _prob(prob))
        self.voxel_size = _range(voxel_size, "voxel_size", 1e-3, 10.0)
        self.fwhm_factor = _range(fwhm_factor, "fwhm_factor", 0.0, 5.0)
        self.spatial_size = _size(spatial_size, "spatial_size")
        if not _is_number(source_spacing) or not 0 < source_spacing <= 10:
            raise ValueError(f"source_spacing must be a number of mm in (0, 10], got {source_spacing!r}.")
        self.source_spacing = float(source_spacing)
        self.mask = bool(mask)
        self.factor = 1.0
        self.drawn_voxel_size = np.full(3, self.voxel_size[0])

    def randomize(self, data: Any = None) -> None:
        """Flip the coin, draw the PSF factor and a fallback voxel size from ``self.R``."""
        super().randomize(None)
        self.factor = _uniform(self.R, self.fwhm_factor)
        self.drawn_voxel_size = np.full(3, _uniform(self.R, self.voxel_size))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Blur and resample ``img`` (``(C, X, Y, Z)``); the input is not modified.

        Args:
            img: image or mask (numpy, torch or MetaTensor).
            randomize: draw anew; ``False`` reuses the last draw.

        Returns:
            The resampled image (float32; a MetaTensor with the new affine when metadata is tracked).
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize()
        if not self._do_transform:
            return convert_to_dst_type(img_t, img_t, dtype=torch.float32)[0]
        source = _spacing(img_t, self.source_spacing)
        target = self.drawn_voxel_size
        if isinstance(img_t, MetaTensor) and VOXEL_SIZE_KEY in img_t.meta:
            target = np.asarray(torch.as_tensor(img_t.meta[VOXEL_SIZE_KEY]).reshape(-1)[:3], dtype=np.float64)
        shape = np.asarray(img_t.shape[1:])
        out_shape = (
            np.asarray(self.spatial_size)
            if self.spatial_size is not None
            else np.maximum(1, np.round(shape * source / target).astype(int))
        )
        work = _plain(img_t).float()
        if not self.mask:
            fwhm = target * self.factor / source  # in source voxels
            sigma = np.sqrt(np.clip(fwhm**2 - 1.0, 0.0, None)) / 2.3548  # the source voxel already integrates ~1
            work = _smooth(work, sigma)
        out = F.interpolate(work[None], size=tuple(int(s) for s in out_shape), mode="trilinear", align_corners=False)[0]
        if self.mask:
            out = (out >= 0.5).to(torch.float32)
        result = convert_to_dst_type(out, img_t, dtype=torch.float32)[0]
        if isinstance(result, MetaTensor):
            scale = shape / out_shape
            affine = torch.as_tensor(np.asarray(img_t.affine, dtype=np.float64)).clone()
            affine[:3, 3] += affine[:3, :3] @ torch.as_tensor((scale - 1.0) / 2.0)
            affine[:3, :3] = affine[:3, :3] * torch.as_tensor(scale)[None, :]
            result.affine = affine
        return result


class RandResolutiond(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandResolution`; the keys share one draw, ``mask_keys`` skip the PSF.

    Args:
        keys: keys to resample (same grid), e.g. ``("label", "mask")``.
        mask_keys: those of ``keys`` that are binary masks (no blur, thresholded).
        voxel_size, fwhm_factor, spatial_size, source_spacing: as the array class.
        prob: probability of resampling an item.
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = RandResolution.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: KeysCollection = ("mask",),
        voxel_size: float | Sequence[float] = (1.0, 3.0),
        fwhm_factor: float | Sequence[float] = (0.8, 1.2),
        spatial_size: Sequence[int] | int | None = None,
        source_spacing: float = 1.0,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _prob(prob))
        self.mask_keys = {mask_keys} if isinstance(mask_keys, str) else set(mask_keys or ())
        self.resampler = RandResolution(voxel_size, fwhm_factor, spatial_size, source_spacing, mask=False, prob=1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandResolutiond:
        """Seed this transform and its inner array transform; returns ``self``."""
        super().set_random_state(seed, state)
        self.resampler.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Resample every present key with one draw; returns a new dictionary."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.resampler.randomize()
        for key in self.key_iterator(d):
            self.resampler.mask = key in self.mask_keys
            d[key] = self.resampler(d[key], randomize=False)
        self.resampler.mask = False
        return d


# ------------------------------------------------------------------------------------------------ 5. random noise type
class RandNoiseMix(RandomizableTransform):
    """Noise of a random type and level: Gaussian, Rician or Poisson, one drawn per call (``transforms.noise``).

    The type is drawn with probabilities proportional to ``weights`` among the types whose range is not ``None``;
    its level is uniform in its range. Levels are in :func:`transforms.noise.make_noise`'s units against
    ``reference``: Gaussian and Rician standard deviation on the 0-255 scale, Poisson photon count at the reference
    intensity (``Var = mean / scale``).

    Args:
        gaussian: Gaussian level range (0-255 scale), a number, or ``None`` to leave the type out.
        rician: Rician level range (0-255 scale), a number, or ``None``.
        poisson: Poisson photon-count range, a number, or ``None``.
        weights: relative probabilities of (Gaussian, Rician, Poisson).
        reference: intensity playing the part of 255 / 1 (see ``transforms.noise``).
        prob: probability of adding noise.

    Raises:
        ValueError: no type enabled, a range out of bounds, or bad weights (the message names the parameter).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    TYPES: tuple[str, ...] = ("gaussian", "rician", "poisson")

    def __init__(
        self,
        gaussian: float | Sequence[float] | None = (3.0, 30.0),
        rician: float | Sequence[float] | None = (3.0, 30.0),
        poisson: float | Sequence[float] | None = (50.0, 2000.0),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reference: float | str = 1.0,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, _prob(prob))
        if isinstance(weights, str) or len(weights) != 3 or not all(_is_number(w) and w >= 0 for w in weights):
            raise ValueError(
                f"weights must be three non-negative numbers (gaussian, rician, poisson), got {weights!r}."
            )
        self.models: dict[str, Any] = {}
        if gaussian is not None:
            self.models["gaussian"] = RandGaussianNoise255(gaussian, 1.0, reference)
        if rician is not None:
            self.models["rician"] = RandRicianNoise(rician, 1.0, reference)
        if poisson is not None:
            self.models["poisson"] = RandPoissonNoise(poisson, 1.0, reference)
        self.weights = np.array([float(w) for t, w in zip(self.TYPES, weights) if t in self.models])
        if not self.models or self.weights.sum() <= 0:
            raise ValueError("at least one of gaussian, rician, poisson must be enabled with a positive weight.")
        self.weights = self.weights / self.weights.sum()
        self.kind = next(iter(self.models))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandNoiseMix:
        """Seed the type draw and every inner noise model; returns ``self``."""
        super().set_random_state(seed, state)
        for model in self.models.values():
            model.set_random_state(seed, state)
        return self

    @property
    def level(self) -> float:
        """The level of the last draw, in the drawn type's units."""
        return self.models[self.kind].level

    def randomize(self, img: NdarrayOrTensor | None = None) -> None:
        """Flip the coin, draw the type, then its level (and, given ``img``, its noise field), all from ``self.R``."""
        super().randomize(None)
        if not self._do_transform:
            return
        kinds = list(self.models)
        self.kind = kinds[int(self.R.choice(len(kinds), p=self.weights))]
        model = self.models[self.kind]
        model.R = self.R
        model.randomize(img)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Return a noisy copy of ``img``; the input is never modified.

        Args:
            img: image, channel first; numpy, torch or MetaTensor (Poisson needs non-negative values).
            randomize: draw a new type, level and field; ``False`` reuses the last draws.

        Returns:
            The noisy float32 image, with the input's metadata; ``meta["synth_noise"]`` names type and level.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize(img_t)
        if not self._do_transform:
            return convert_to_dst_type(img_t, img_t, dtype=torch.float32)[0]
        out = self.models[self.kind](img_t, randomize=False)
        if isinstance(out, MetaTensor):
            out.meta["synth_noise"] = f"{self.kind} {self.level:.4g}"
        return out


class RandNoiseMixd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandNoiseMix`: the keys share the type and level, each gets its own field.

    Args:
        keys: keys to noise, normally ``"image"`` (the clean ``label`` keeps its copy).
        gaussian, rician, poisson, weights, reference: as the array class.
        prob: probability of noising an item.
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = RandNoiseMix.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        gaussian: float | Sequence[float] | None = (3.0, 30.0),
        rician: float | Sequence[float] | None = (3.0, 30.0),
        poisson: float | Sequence[float] | None = (50.0, 2000.0),
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        reference: float | str = 1.0,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _prob(prob))
        self.noise = RandNoiseMix(gaussian, rician, poisson, weights, reference, prob=1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandNoiseMixd:
        """Seed this transform and its inner array transform; returns ``self``."""
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Noise every present key (one type and level per item); returns a new dictionary."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.noise.randomize(None)
        model = self.noise.models[self.noise.kind]
        for key in self.key_iterator(d):
            model.randomize_field(d[key])
            d[key] = self.noise(d[key], randomize=False)
        return d


# ------------------------------------------------------------------------------------------------ the chain
def synth_transforms(
    patch_size: Sequence[int] | int | None = 32,
    voxel_size: float | Sequence[float] = (1.0, 3.0),
    slice_spacing: float | Sequence[float] = (1.0, 4.0),
    anisotropic_prob: float = 0.3,
    contrasts: Sequence[str] | Mapping[str, Mapping[str, Sequence[float]]] = ("t1", "t2", "pd", "random"),
    head_prob: float = 0.8,
    rim_mm: float | Sequence[float] = (0.5, 3.0),
    skull_mm: float | Sequence[float] = (3.0, 8.0),
    scalp_mm: float | Sequence[float] = (3.0, 10.0),
    texture: float | Sequence[float] = (0.0, 0.1),
    fine_texture: float | Sequence[float] = (0.0, 0.04),
    bias: float | Sequence[float] = (0.0, 0.3),
    fwhm_factor: float | Sequence[float] = (0.8, 1.2),
    gain: float = 0.2,
    flip_prob: float = 0.5,
    gaussian: float | Sequence[float] | None = (3.0, 30.0),
    rician: float | Sequence[float] | None = (3.0, 30.0),
    poisson: float | Sequence[float] | None = (50.0, 2000.0),
    noise_weights: Sequence[float] = (1.0, 1.0, 1.0),
    source_spacing: float = 1.0,
    oversample: float | None = 1.0,
    foreground_prob: float = 0.7,
    head_mm: float = 15.0,
    seed: int | None = 0,
) -> Compose:
    """The generator chain (module docstring): a tissue stack under ``label`` -> ``image`` (noisy), ``label``, ``mask``.

    Args:
        patch_size: output patch size in voxels; ``None`` keeps the whole field of view (validation volumes).
        voxel_size: voxel size range in mm.
        slice_spacing: slice spacing range in mm of the anisotropic axis.
        anisotropic_prob: probability of an anisotropic acquisition.
        contrasts: contrast names (or ranges), see :class:`RandTissueContrast`.
        head_prob: probability of skull, scalp and CSF rim (else a skull-stripped brain on air).
        rim_mm: CSF-rim thickness range (mm).
        skull_mm: skull thickness range (mm).
        scalp_mm: scalp thickness range (mm).
        texture: within-class smooth variation amplitude range.
        fine_texture: fine texture amplitude range.
        bias: bias field log-amplitude range.
        fwhm_factor: point-spread function FWHM range in voxel sizes.
        gain: global intensity gain, uniform in ``[1 - gain, 1 + gain]`` (``RandScaleIntensityd``, clean image).
        flip_prob: probability of a flip along each axis (all keys together).
        gaussian: Gaussian noise level range (0-255 scale) or ``None``.
        rician: Rician noise level range (0-255 scale) or ``None``.
        poisson: Poisson photon-count range or ``None``.
        noise_weights: relative probabilities of the three noise types.
        source_spacing: voxel size of the stack in mm when it carries no affine.
        oversample: synthesis grid at most this many times finer than the acquisition (see
            :class:`RandVoxelSizeCrop`); ``None``: the stack's own grid.
        foreground_prob: share of patches centred in the head (within ``head_mm`` of the brain); the others are
            centred anywhere in the field of view, air included.
        head_mm: distance from the brain (mm) that counts as head for ``foreground_prob``.
        seed: seeds the chain (``Compose.set_random_state``); ``None`` leaves it unseeded.

    Returns:
        A ``Compose`` producing ``{"image": (1, *patch), "label": (1, *patch), "mask": (1, *patch), ...}``.

    Raises:
        ValueError: a parameter out of range (raised by the step that owns it, naming it).
    """
    if not _is_number(gain) or not 0 <= gain < 1:
        raise ValueError(f"gain must be a number in [0, 1), got {gain!r}.")
    _prob(flip_prob, "flip_prob")
    steps: list = [
        RandVoxelSizeCropd(
            "label",
            spatial_size=patch_size,
            voxel_size=voxel_size,
            slice_spacing=slice_spacing,
            anisotropic_prob=anisotropic_prob,
            source_spacing=source_spacing,
            pad_value=(0.0, 0.0, 0.0, _FAR_MM),
            oversample=oversample,
            foreground_prob=foreground_prob,
            foreground_channel=TISSUE_CHANNELS.index("distance"),
            foreground_max=head_mm,
        ),
        RandTissueContrastd(
            "label",
            mask_key="mask",
            contrasts=contrasts,
            head_prob=head_prob,
            rim_mm=rim_mm,
            skull_mm=skull_mm,
            scalp_mm=scalp_mm,
            texture=texture,
            fine_texture=fine_texture,
            bias=bias,
            source_spacing=source_spacing,
        ),
        RandResolutiond(
            ["label", "mask"],
            mask_keys="mask",
            fwhm_factor=fwhm_factor,
            spatial_size=patch_size,
            source_spacing=source_spacing,
        ),
    ]
    if gain > 0:
        steps.append(RandScaleIntensityd(keys="label", factors=float(gain), prob=1.0))
    if flip_prob > 0:
        steps += [RandFlipd(keys=["label", "mask"], prob=flip_prob, spatial_axis=axis) for axis in range(3)]
    steps.append(CopyItemsd(keys="label", names="image"))
    steps.append(
        RandNoiseMixd("image", gaussian=gaussian, rician=rician, poisson=poisson, weights=noise_weights, reference=1.0)
    )
    chain = Compose(steps)
    return chain.set_random_state(seed=seed) if seed is not None else chain
