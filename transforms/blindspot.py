"""Blind-spot masking for self-supervised denoising (Noise2Self), and a fixed voxel hold-out per scan.

:func:`blind_spot_input` replaces every masked voxel by the mean of its *unmasked* 26 neighbours. A network's output
at a masked voxel then cannot depend on that voxel's own noisy value, even when neighbours are masked too (masked
values never enter any replacement): the input is J-invariant on the masked set (Batson & Royer, "Noise2Self", ICML
2019). For noise independent between voxels and zero-mean, the expected squared error between such a prediction and
the *noisy* value is the error against the clean value plus the noise variance, so the masked loss ranks models the
way the supervised loss would, with no clean reference.

:class:`HoldoutMask` / :class:`HoldoutMaskd` mark a fixed random fraction of a scan's voxels as held out (drawn from a
generator seeded by the base seed and the scan's name, so the same scan gets the same voxels in every run). Training
never uses those voxels as targets; checking the blind-spot loss on them tells whether adaptation helps or harms.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["HoldoutMask", "HoldoutMaskd", "blind_spot_input"]


def blind_spot_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the masked voxels of ``image`` by the mean of their unmasked 26 neighbours.

    Args:
        image: ``(B, C, X, Y, Z)`` float tensor (3-D) or ``(B, C, X, Y)`` (2-D).
        mask: same shape (or one channel, broadcast over ``C``), non-zero where a voxel is masked.

    Returns:
        A new tensor; unmasked voxels are unchanged. A masked voxel whose neighbours are all masked (or outside the
        volume) gets 0.

    Raises:
        ValueError: the shapes do not match or the tensor is not 4-D or 5-D.
    """
    if image.ndim not in (4, 5):
        raise ValueError(f"image must be (B, C, X, Y[, Z]), got shape {tuple(image.shape)}.")
    if mask.shape != image.shape and mask.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the image's {tuple(image.shape)}.")
    masked = (mask > 0).to(image.dtype).expand_as(image)
    keep = 1.0 - masked
    dims = image.ndim - 2
    kernel = torch.ones((1, 1) + (3,) * dims, dtype=image.dtype, device=image.device)
    kernel[(0, 0) + (1,) * dims] = 0.0
    conv = F.conv3d if dims == 3 else F.conv2d
    b, c = image.shape[:2]
    flat_values = (image * keep).reshape(b * c, 1, *image.shape[2:])
    flat_keep = keep.reshape(b * c, 1, *image.shape[2:])
    total = conv(flat_values, kernel, padding=1).reshape(image.shape)
    count = conv(flat_keep, kernel, padding=1).reshape(image.shape)
    mean = torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros_like(total))
    return image * keep + mean * masked


def _scan_seed(base_seed: int, name: str) -> int:
    digest = zlib.crc32(os.path.basename(str(name).rstrip("/\\")).encode("utf-8"))
    return int(np.random.SeedSequence([int(base_seed), digest]).generate_state(1)[0])


class HoldoutMask(Transform):
    """A fixed random voxel mask ``(1, X, Y, Z)``: each voxel is held out with probability ``fraction``.

    Deterministic: the draws come from a generator seeded by ``seed`` and the scan's name (the MetaTensor's
    ``filename_or_obj``, or the ``name`` argument), so a scan keeps its held-out voxels across runs and orders.

    Args:
        fraction: share of voxels held out, in ``[0, 0.5]``.
        seed: base seed, a non-negative integer.

    Raises:
        ValueError: ``fraction`` or ``seed`` out of range.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, fraction: float = 0.05, seed: int = 0) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 0.5:
            raise ValueError(f"fraction must be a number in [0, 0.5], got {fraction!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        self.fraction = float(fraction)
        self.seed = int(seed)

    def __call__(self, img: NdarrayOrTensor, name: str | None = None) -> NdarrayOrTensor:
        """The held-out mask of ``img`` (``(C, X, Y, Z)``), float 0/1, on its grid and with its metadata.

        Args:
            img: the scan.
            name: identifies the scan (default: its ``filename_or_obj``, else ``"scan"``).

        Returns:
            A ``(1, X, Y, Z)`` mask.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if name is None and isinstance(img_t, MetaTensor):
            name = str(img_t.meta.get("filename_or_obj", "") or "")
        rng = np.random.RandomState(_scan_seed(self.seed, name or "scan"))
        mask = (rng.random_sample(tuple(img_t.shape[1:])) < self.fraction).astype(np.float32)[None]
        return convert_to_dst_type(torch.from_numpy(mask), img_t, dtype=torch.float32)[0]


class HoldoutMaskd(MapTransform):
    """Dictionary version of :class:`HoldoutMask`: the mask of ``keys``' first present key goes to ``holdout_key``.

    Args:
        keys: the scan's key, normally ``"image"``.
        holdout_key: where the mask goes.
        fraction, seed: as the array class.
        id_key: item key naming the scan (default: the image's file name).
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = HoldoutMask.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        holdout_key: str = "holdout",
        fraction: float = 0.05,
        seed: int = 0,
        id_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.holdout_key = holdout_key
        self.id_key = id_key
        self.masker = HoldoutMask(fraction, seed)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the held-out mask; returns a new dictionary."""
        d = dict(data)
        for key in self.key_iterator(d):
            name = str(d[self.id_key]) if self.id_key is not None and self.id_key in d else None
            d[self.holdout_key] = self.masker(d[key], name=name)
            break
        return d
