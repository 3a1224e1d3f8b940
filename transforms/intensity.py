"""Intensity normalisation: robust percentile scaling (invertible) and z-scoring inside a mask.

:class:`ScalePercentile` maps ``x`` to ``(x - lo) / (hi - lo)`` where ``hi`` is the ``upper`` percentile (99.5th
by default) and ``lo`` the ``lower`` percentile (0.5th) of the **non-zero voxels** of each channel (all voxels
with ``nonzero=False``), and optionally clips to ``[0, 1]``. ``lower=None`` uses ``lo = 0``: a pure rescaling
that keeps intensities proportional to the signal, which Poisson and low-dose noise models need. The statistics
are recorded in ``meta["scale_percentile"]`` and in ``applied_operations``, so MONAI's ``Invertd`` maps a
prediction back to the scan's own intensity units (exactly, for voxels that were not clipped).

:class:`ZScoreInMask` maps ``x`` to ``(x - mean) / std`` with the mean and the population standard deviation of
the voxels where the mask is non-zero (the non-zero voxels of the image when no mask is given).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["ScalePercentile", "ScalePercentiled", "ZScoreInMask", "ZScoreInMaskd", "percentile_stats"]

logger = logging.getLogger(__name__)

STATS_META_KEY = "scale_percentile"


def _check_percentile(value: float | None, name: str, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 100.0:
        allowed = "a number in [0, 100] or None" if allow_none else "a number in [0, 100]"
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return float(value)


def percentile_stats(
    img: NdarrayOrTensor, lower: float | None = 0.5, upper: float = 99.5, nonzero: bool = True
) -> tuple[list[float], list[float]]:
    """Per-channel offset ``lo`` and width ``hi - lo`` used by :class:`ScalePercentile`.

    Args:
        img: channel-first image ``(C, H, W, D)``.
        lower: lower percentile in ``[0, 100]``, or ``None`` for ``lo = 0``.
        upper: upper percentile in ``[0, 100]``.
        nonzero: take the percentiles over the non-zero voxels only (all voxels if a channel has none).

    Returns:
        ``(offsets, widths)``, one float per channel; a width is never zero (a flat channel gets width 1).
    """
    array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    offsets, widths = [], []
    for channel in array.reshape(array.shape[0], -1):
        values = channel[channel != 0] if nonzero else channel
        if values.size == 0:
            values = channel
        if values.size == 0:
            offsets.append(0.0)
            widths.append(1.0)
            continue
        lo = float(np.percentile(values, lower)) if lower is not None else 0.0
        hi = float(np.percentile(values, upper))
        width = hi - lo
        if not np.isfinite(width) or width <= 0:
            logger.warning("ScalePercentile: channel has no intensity spread (lo=%g, hi=%g); using width 1", lo, hi)
            width = 1.0
        offsets.append(lo)
        widths.append(width)
    return offsets, widths


def _scale(img: torch.Tensor, offsets: Sequence[float], widths: Sequence[float], clip: bool) -> torch.Tensor:
    shape = (-1,) + (1,) * (img.ndim - 1)
    off = torch.as_tensor(offsets, dtype=img.dtype, device=img.device).reshape(shape)
    wid = torch.as_tensor(widths, dtype=img.dtype, device=img.device).reshape(shape)
    out = (img - off) / wid
    return out.clamp(0.0, 1.0) if clip else out


def _unscale(img: torch.Tensor, offsets: Sequence[float], widths: Sequence[float]) -> torch.Tensor:
    shape = (-1,) + (1,) * (img.ndim - 1)
    off = torch.as_tensor(offsets, dtype=img.dtype, device=img.device).reshape(shape)
    wid = torch.as_tensor(widths, dtype=img.dtype, device=img.device).reshape(shape)
    return img * wid + off


class ScalePercentile(InvertibleTransform, Transform):
    """Robust percentile scaling to ``[0, 1]``: ``(x - lo) / (hi - lo)``, per channel, optionally clipped.

    ``lo``/``hi`` are the ``lower``/``upper`` percentiles (linear interpolation, ``numpy.percentile``) of the
    non-zero voxels of the channel (``nonzero=True``) or of all its voxels. Pass ``offsets``/``widths`` to
    ``__call__`` to apply statistics computed elsewhere (e.g. from another image of the same item).

    Args:
        lower: lower percentile in ``[0, 100]``; ``None`` means ``lo = 0`` (pure scaling; keeps the signal
            proportional, as the Poisson/low-dose models need).
        upper: upper percentile in ``[0, 100]``, above ``lower``.
        nonzero: compute the percentiles over the non-zero voxels (the head, in a skull-stripped or
            zero-background scan) rather than the whole volume.
        clip: clip the result to ``[0, 1]``. Clipping saturates the brightest voxels and makes the inverse
            inexact for them, so the denoising presets keep it off.
        dtype: output dtype.

    Raises:
        ValueError: percentiles outside ``[0, 100]`` or ``upper <= lower``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        lower: float | None = 0.5,
        upper: float = 99.5,
        nonzero: bool = True,
        clip: bool = True,
        dtype: DtypeLike = np.float32,
    ) -> None:
        self.lower = _check_percentile(lower, "lower", allow_none=True)
        self.upper = _check_percentile(upper, "upper", allow_none=False)
        if self.lower is not None and self.upper <= self.lower:
            raise ValueError(f"upper ({upper}) must be above lower ({lower}).")
        self.nonzero = nonzero
        self.clip = clip
        self.dtype = dtype

    def stats(self, img: NdarrayOrTensor) -> tuple[list[float], list[float]]:
        """Per-channel ``(offsets, widths)`` of ``img`` (see :func:`percentile_stats`)."""
        return percentile_stats(img, self.lower, self.upper, self.nonzero)

    def __call__(
        self,
        img: NdarrayOrTensor,
        offsets: Sequence[float] | None = None,
        widths: Sequence[float] | None = None,
    ) -> NdarrayOrTensor:
        """Scale ``img`` (channel first, ``(C, H, W, D)``); the input is not modified.

        Args:
            img: numpy, torch or MetaTensor image.
            offsets: per-channel ``lo`` to use instead of the image's own (one value broadcasts).
            widths: per-channel ``hi - lo`` to use with ``offsets``.

        Returns:
            The scaled image (MetaTensor with ``meta["scale_percentile"]`` when metadata is tracked).
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if offsets is None or widths is None:
            offsets, widths = self.stats(img_t)
        offsets, widths = [float(v) for v in offsets], [float(v) for v in widths]
        if len(offsets) == 1 and img_t.shape[0] > 1:
            offsets, widths = offsets * img_t.shape[0], widths * img_t.shape[0]
        plain = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        work = plain.to(torch.float64 if plain.dtype == torch.float64 else torch.float32)
        out = convert_to_dst_type(_scale(work, offsets, widths, self.clip), img_t, dtype=self.dtype)[0]
        info = {"offsets": offsets, "widths": widths, "clip": self.clip}
        if isinstance(out, MetaTensor):
            out.meta[STATS_META_KEY] = dict(info)
        self.push_transform(out, extra_info=info)
        return out

    def inverse(self, data: NdarrayOrTensor) -> NdarrayOrTensor:
        """Undo the scaling with the recorded statistics: ``y * (hi - lo) + lo`` (clipped voxels stay clipped)."""
        transform = self.pop_transform(data)
        info = transform["extra_info"]
        img_t = convert_to_tensor(data, track_meta=get_track_meta())
        plain = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        work = plain.to(torch.float64 if plain.dtype == torch.float64 else torch.float32)
        out = convert_to_dst_type(_unscale(work, info["offsets"], info["widths"]), img_t)[0]
        if isinstance(out, MetaTensor):
            out.meta.pop(STATS_META_KEY, None)
        return out


class ScalePercentiled(InvertibleTransform, MapTransform):
    """Dictionary version of :class:`ScalePercentile`, optionally with the statistics of one key for all keys.

    Args:
        keys: keys to scale, e.g. ``("image", "label")``.
        stats_key: key whose percentiles scale every key (so a noisy input and its clean target share one
            scaling); ``None`` scales each key by its own statistics.
        lower, upper, nonzero, clip, dtype: as in :class:`ScalePercentile`.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ValueError: as :class:`ScalePercentile`; at call time, ``stats_key`` absent from the item.
    """

    backend = ScalePercentile.backend

    def __init__(
        self,
        keys: KeysCollection,
        stats_key: str | None = None,
        lower: float | None = 0.5,
        upper: float = 99.5,
        nonzero: bool = True,
        clip: bool = True,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.stats_key = stats_key
        self.scaler = ScalePercentile(lower=lower, upper=upper, nonzero=nonzero, clip=clip, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Scale every keyed image; returns a new dictionary."""
        d = dict(data)
        offsets = widths = None
        if self.stats_key is not None:
            if self.stats_key not in d:
                raise ValueError(f"stats_key {self.stats_key!r} is not in the item (keys: {sorted(map(str, d))}).")
            offsets, widths = self.scaler.stats(d[self.stats_key])
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key], offsets, widths)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Undo the scaling of every present key (used by ``Invertd``)."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler.inverse(d[key])
        return d


class ZScoreInMask(Transform):
    """Z-score inside a mask: ``(x - mean) / std`` with the statistics of the voxels where ``mask != 0``.

    Mean and population standard deviation are taken per channel over the mask (the image's non-zero voxels
    when no mask is given); voxels outside the mask are set to ``outside`` unless it is ``None``.
    The statistics are recorded in ``meta["zscore_in_mask"]``.

    Args:
        outside: value for voxels outside the mask, or ``None`` to z-score them too.
        dtype: output dtype.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, outside: float | None = 0.0, dtype: DtypeLike = np.float32) -> None:
        if outside is not None and (isinstance(outside, bool) or not np.isfinite(outside)):
            raise ValueError(f"outside must be a finite number or None, got {outside!r}.")
        self.outside = outside
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Normalise ``img`` ``(C, H, W, D)`` with a mask ``(1 or C, H, W, D)``; the input is not modified.

        Raises:
            ValueError: the mask's spatial shape differs from the image's.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        plain = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        work = plain.to(torch.float64 if plain.dtype == torch.float64 else torch.float32)
        if mask is None:
            inside = work != 0
        else:
            m = convert_to_tensor(mask, track_meta=False).to(work.device)
            if m.ndim == work.ndim - 1:
                m = m[None]
            if tuple(m.shape[1:]) != tuple(work.shape[1:]):
                raise ValueError(f"mask shape {tuple(m.shape)} does not match image shape {tuple(work.shape)}.")
            inside = (m != 0).expand_as(work)
        means, stds, channels = [], [], []
        for c in range(work.shape[0]):
            values = work[c][inside[c]]
            if values.numel() == 0:
                logger.warning("ZScoreInMask: channel %d has an empty mask; leaving it unscaled", c)
                mean, std = 0.0, 1.0
            else:
                mean = float(values.mean())
                std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
                std = std if std > 0 else 1.0
            out_c = (work[c] - mean) / std
            if self.outside is not None:
                out_c = torch.where(inside[c], out_c, torch.full_like(out_c, self.outside))
            channels.append(out_c)
            means.append(mean)
            stds.append(std)
        out = convert_to_dst_type(torch.stack(channels), img_t, dtype=self.dtype)[0]
        if isinstance(out, MetaTensor):
            out.meta["zscore_in_mask"] = {"means": means, "stds": stds}
        return out


class ZScoreInMaskd(MapTransform):
    """Dictionary version of :class:`ZScoreInMask`, with the mask read from ``mask_key``.

    Args:
        keys: keys to normalise.
        mask_key: key of the mask (e.g. ``"mask"`` from ``ForegroundMaskd``), or ``None`` for non-zero voxels.
        outside: value outside the mask, or ``None``.
        dtype: output dtype.
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = ZScoreInMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        outside: float | None = 0.0,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.normaliser = ZScoreInMask(outside=outside, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Normalise every keyed image; returns a new dictionary.

        Raises:
            ValueError: ``mask_key`` absent from the item.
        """
        d = dict(data)
        if self.mask_key is not None and self.mask_key not in d:
            raise ValueError(f"mask_key {self.mask_key!r} is not in the item (keys: {sorted(map(str, d))}).")
        mask = d[self.mask_key] if self.mask_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.normaliser(d[key], mask)
        return d
