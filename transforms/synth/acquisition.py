"""The acquisition steps of the generator: the voxel size and field of view, then the point-spread function.

:class:`RandVoxelSizeCrop` (step 1) draws the voxel size and crops the box a patch covers anywhere in the field of
view; :class:`RandResolution` (step 3) blurs with the point-spread function and resamples onto the drawn grid.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from transforms.synth.common import (
    VOXEL_SIZE_KEY,
    check_prob,
    check_range,
    check_size,
    is_number,
    plain_float,
    smooth,
    uniform,
    voxel_spacing,
)

__all__ = ["RandResolution", "RandResolutiond", "RandVoxelSizeCrop", "RandVoxelSizeCropd"]


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
        RandomizableTransform.__init__(self, check_prob(prob))
        self.foreground_prob = check_prob(foreground_prob, "foreground_prob")
        if isinstance(foreground_channel, bool) or not isinstance(foreground_channel, (int, np.integer)):
            raise ValueError(f"foreground_channel must be an int, got {foreground_channel!r}.")
        if not is_number(foreground_max):
            raise ValueError(f"foreground_max must be a number, got {foreground_max!r}.")
        self.foreground_channel, self.foreground_max = int(foreground_channel), float(foreground_max)
        self._values: Any = None
        if oversample is not None and (not is_number(oversample) or not 0.5 <= oversample <= 10):
            raise ValueError(f"oversample must be None or a number in [0.5, 10], got {oversample!r}.")
        self.oversample = math.inf if oversample is None else float(oversample)
        self.spatial_size = check_size(spatial_size, "spatial_size")
        self.voxel_size = check_range(voxel_size, "voxel_size", 1e-3, 10.0)
        self.slice_spacing = check_range(slice_spacing, "slice_spacing", 1e-3, 10.0)
        self.anisotropic_prob = check_prob(anisotropic_prob, "anisotropic_prob")
        if not is_number(source_spacing) or not 0 < source_spacing <= 10:
            raise ValueError(f"source_spacing must be a number of mm in (0, 10], got {source_spacing!r}.")
        self.source_spacing = float(source_spacing)
        values = [pad_value] if is_number(pad_value) else list(pad_value)
        if not values or not all(map(is_number, values)):
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
        v = np.full(3, uniform(self.R, self.voxel_size))
        if self.R.random_sample() < self.anisotropic_prob:
            axis = int(self.R.randint(3))
            v[axis] = max(v[axis], uniform(self.R, self.slice_spacing))
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
        spacing = voxel_spacing(img_t, self.source_spacing)
        if randomize:
            self.randomize(img_t.shape[1:], spacing, self.foreground_values(img_t))
        if not self._do_transform:
            return convert_to_dst_type(img_t, img_t, dtype=torch.float32)[0]
        work = plain_float(img_t).float()
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
        RandomizableTransform.__init__(self, check_prob(prob))
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
        spacing = voxel_spacing(first, self.cropper.source_spacing)
        self.cropper.randomize(first.shape[1:], spacing, self.cropper.foreground_values(first))
        for key in keys:
            d[key] = self.cropper(d[key], randomize=False)
        return d


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
        RandomizableTransform.__init__(self, check_prob(prob))
        self.voxel_size = check_range(voxel_size, "voxel_size", 1e-3, 10.0)
        self.fwhm_factor = check_range(fwhm_factor, "fwhm_factor", 0.0, 5.0)
        self.spatial_size = check_size(spatial_size, "spatial_size")
        if not is_number(source_spacing) or not 0 < source_spacing <= 10:
            raise ValueError(f"source_spacing must be a number of mm in (0, 10], got {source_spacing!r}.")
        self.source_spacing = float(source_spacing)
        self.mask = bool(mask)
        self.factor = 1.0
        self.drawn_voxel_size = np.full(3, self.voxel_size[0])

    def randomize(self, data: Any = None) -> None:
        """Flip the coin, draw the PSF factor and a fallback voxel size from ``self.R``."""
        super().randomize(None)
        self.factor = uniform(self.R, self.fwhm_factor)
        self.drawn_voxel_size = np.full(3, uniform(self.R, self.voxel_size))

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
        source = voxel_spacing(img_t, self.source_spacing)
        target = self.drawn_voxel_size
        if isinstance(img_t, MetaTensor) and VOXEL_SIZE_KEY in img_t.meta:
            target = np.asarray(torch.as_tensor(img_t.meta[VOXEL_SIZE_KEY]).reshape(-1)[:3], dtype=np.float64)
        shape = np.asarray(img_t.shape[1:])
        out_shape = (
            np.asarray(self.spatial_size)
            if self.spatial_size is not None
            else np.maximum(1, np.round(shape * source / target).astype(int))
        )
        work = plain_float(img_t).float()
        if not self.mask:
            fwhm = target * self.factor / source  # in source voxels
            sigma = np.sqrt(np.clip(fwhm**2 - 1.0, 0.0, None)) / 2.3548  # the source voxel already integrates ~1
            work = smooth(work, sigma)
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
        RandomizableTransform.__init__(self, check_prob(prob))
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
