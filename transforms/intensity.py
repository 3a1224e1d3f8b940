"""Intensity normalisation: the robust maximum and robust percentile scaling (invertible).

:class:`ScalePercentile` maps ``x`` to ``(x - lo) / (hi - lo)`` where ``hi`` is the ``upper`` percentile (99.5th
by default) and ``lo`` the ``lower`` percentile (0.5th) of the **non-zero voxels** of each channel (all voxels
with ``nonzero=False``), and optionally clips to ``[0, 1]``. ``lower=None`` uses ``lo = 0``: a pure rescaling
that keeps intensities proportional to the signal, which Poisson and low-dose noise models need. The statistics
are recorded in ``meta["scale_percentile"]`` and in ``applied_operations``, so MONAI's ``Invertd`` maps a
prediction back to the scan's own intensity units (exactly, for voxels that were not clipped).

:func:`robust_max` is the 99.5th percentile of the non-zero voxels: the intensity that ``ScalePercentile(lower=None)``
maps to 1 and that the noise levels (``transforms.noise``, ``reference="robust"``) and every image-quality score of
the project are stated against.
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

__all__ = ["ROBUST_PERCENTILE", "ScalePercentile", "ScalePercentiled", "percentile_stats", "robust_max"]

logger = logging.getLogger(__name__)

STATS_META_KEY = "scale_percentile"


def _check_percentile(value: float | None, name: str, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 100.0:
        allowed = "a number in [0, 100] or None" if allow_none else "a number in [0, 100]"
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return float(value)


ROBUST_PERCENTILE = 99.5
"""The percentile of the non-zero voxels that :func:`robust_max` returns and ``ScalePercentile`` maps to 1."""


def _nonzero_values(values: np.ndarray) -> np.ndarray:
    """The non-zero entries of a flat array (the head of a zero-background scan)."""
    return values[values != 0]


def robust_max(img: NdarrayOrTensor, percentile: float = ROBUST_PERCENTILE, default: float | None = None) -> float:
    """The robust maximum of an image: the ``percentile`` (99.5th) percentile of its non-zero voxels.

    The one definition of the scale every part of the project puts intensities on: ``ScalePercentile(lower=None)``
    maps it to 1, the noise models state their levels against it (``reference="robust"``), and the demo, the
    classical tuning and the benchmarks score on it. Percentiles interpolate linearly (``numpy.percentile``).

    Args:
        img: image of any shape (numpy, torch or MetaTensor), all channels pooled.
        percentile: the percentile in ``[0, 100]``.
        default: returned when the image has no non-zero voxel; ``None`` raises instead.

    Returns:
        The robust maximum, in the image's own intensity units.

    Raises:
        ValueError: for a percentile outside ``[0, 100]``, or an image without a non-zero voxel and no ``default``.
    """
    percentile = _check_percentile(percentile, "percentile", allow_none=False)
    array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    values = _nonzero_values(array.reshape(-1))
    if values.size == 0:
        if default is None:
            raise ValueError("the image has no non-zero voxel, so its robust maximum is undefined.")
        return float(default)
    return float(np.percentile(values, percentile))


def percentile_stats(
    img: NdarrayOrTensor, lower: float | None = 0.5, upper: float = ROBUST_PERCENTILE, nonzero: bool = True
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
        values = _nonzero_values(channel) if nonzero else channel
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
        upper: float = ROBUST_PERCENTILE,
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
        upper: float = ROBUST_PERCENTILE,
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
