"""Head (brain) mask and the crop/pad steps of the presets, built from MONAI's invertible transforms.

:class:`HeadMask` marks the head/brain of a scan: voxels above a threshold (Otsu's threshold of the
channel-mean image by default, or a fixed value), holes filled slice-free in 3-D (``scipy.ndimage.
binary_fill_holes``, so dark ventricles and sulci inside the brain belong to the mask), only the largest
26-connected component kept (drops noise specks and background blobs), optionally dilated. Its output is a
``(1, H, W, D)`` float mask of 0/1 on the image's grid, carrying the image's metadata. It is not MONAI's
``monai.transforms.ForegroundMask``, a whole-slide-pathology tissue mask (by default the voxels *below* a threshold
per RGB/HSV channel, no hole filling, no component selection), hence the other name.

The helpers return MONAI dictionary transforms: :func:`foreground_crop` (``CropForegroundd`` on the mask),
:func:`divisible_pad` (``DivisiblePadd``, for a network whose total stride is ``k``), :func:`random_patches`
(patch centres drawn uniformly inside the brain with ``RandWeightedCropd``, or a set share of them outside it, in air
and skull, with ``RandCropByPosNegLabeld``) and :func:`center_crop` (``ResizeWithPadOrCropd``: centre crop, padding
where the scan is smaller). All are invertible through ``Invertd``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import get_track_meta
from monai.transforms import (
    CropForegroundd,
    DivisiblePadd,
    MapTransform,
    RandCropByPosNegLabeld,
    RandWeightedCropd,
    ResizeWithPadOrCropd,
    SpatialPadd,
    Transform,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep
from scipy import ndimage
from skimage.filters import threshold_otsu

__all__ = [
    "HeadMask",
    "HeadMaskd",
    "center_crop",
    "divisible_pad",
    "foreground_crop",
    "random_patches",
]

logger = logging.getLogger(__name__)


def _check_size(value: Sequence[int] | int, name: str) -> tuple[int, int, int]:
    size = ensure_tuple_rep(value, 3)
    if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}.")
    return tuple(int(s) for s in size)


class HeadMask(Transform):
    """Binary head/brain mask ``(1, H, W, D)`` of a channel-first image ``(C, H, W, D)``.

    Args:
        threshold: ``"otsu"`` (Otsu's threshold of the channel-mean image's voxels) or a number; voxels strictly
            above it are foreground.
        fill_holes: fill enclosed holes in 3-D.
        largest_component: keep only the largest 26-connected component.
        dilate: binary dilations (3x3x3, in voxels) applied last; 0 for none.

    Raises:
        ValueError: a bad ``threshold`` or a negative ``dilate``.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        threshold: float | str = "otsu",
        fill_holes: bool = True,
        largest_component: bool = True,
        dilate: int = 0,
    ) -> None:
        if isinstance(threshold, str) and threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a number, got {threshold!r}.")
        if not isinstance(threshold, str) and (isinstance(threshold, bool) or not np.isfinite(threshold)):
            raise ValueError(f"threshold must be 'otsu' or a finite number, got {threshold!r}.")
        if isinstance(dilate, bool) or not isinstance(dilate, (int, np.integer)) or dilate < 0:
            raise ValueError(f"dilate must be a non-negative int, got {dilate!r}.")
        self.threshold = threshold
        self.fill_holes = fill_holes
        self.largest_component = largest_component
        self.dilate = int(dilate)

    def mask_array(self, image: np.ndarray) -> np.ndarray:
        """The boolean mask ``(H, W, D)`` of a channel-mean image ``(H, W, D)``."""
        if self.threshold == "otsu":
            thr = float(threshold_otsu(image)) if np.ptp(image) > 0 else float(image.max())
        else:
            thr = float(self.threshold)
        mask = image > thr
        if self.fill_holes and mask.any():
            mask = ndimage.binary_fill_holes(mask)
        if self.largest_component and mask.any():
            labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
            if count > 1:
                sizes = np.bincount(labels.ravel())
                sizes[0] = 0
                mask = labels == int(sizes.argmax())
        if self.dilate and mask.any():
            mask = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), dtype=bool), iterations=self.dilate)
        if not mask.any():
            logger.warning("HeadMask: no voxel above the threshold %g; the mask is empty", thr)
        return mask

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return the float 0/1 mask ``(1, H, W, D)`` with the image's metadata; the input is not modified."""
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        array = img_t.detach().cpu().numpy().astype(np.float32, copy=False)
        mask = self.mask_array(array.mean(axis=0))
        out = torch.as_tensor(mask[None].astype(np.float32))
        return convert_to_dst_type(out, img_t, dtype=torch.float32)[0]


class HeadMaskd(MapTransform):
    """Dictionary version of :class:`HeadMask`: writes the mask of ``keys`` (one key) to ``mask_key``.

    Args:
        keys: the one key the mask is computed from (the clean ``label`` in training, ``image`` at inference).
        mask_key: key the mask is written to.
        threshold, fill_holes, largest_component, dilate: as in :class:`HeadMask`.
        allow_missing_keys: skip an absent key instead of raising.

    Raises:
        ValueError: more than one key.
    """

    backend = HeadMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        threshold: float | str = "otsu",
        fill_holes: bool = True,
        largest_component: bool = True,
        dilate: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name exactly one source image for the mask, got {self.keys!r}.")
        self.mask_key = mask_key
        self.masker = HeadMask(threshold, fill_holes, largest_component, dilate)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Add ``mask_key`` to a new dictionary."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.masker(d[key])
        return d


def foreground_crop(keys: KeysCollection, source_key: str = "mask", margin: int = 4) -> CropForegroundd:
    """Crop ``keys`` to the bounding box of ``source_key > 0`` plus ``margin`` voxels (``CropForegroundd``).

    Args:
        keys: keys to crop (include the mask itself).
        source_key: the mask key.
        margin: voxels kept around the box on every side.

    Returns:
        An invertible ``CropForegroundd``; an empty mask leaves the image whole.

    Raises:
        ValueError: negative ``margin``.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be a non-negative int, got {margin!r}.")
    return CropForegroundd(
        keys=keys,
        source_key=source_key,
        margin=int(margin),
        allow_smaller=True,
        start_coord_key=None,
        end_coord_key=None,
    )


def divisible_pad(keys: KeysCollection, k: int | Sequence[int] = 16) -> DivisiblePadd:
    """Zero-pad ``keys`` so each spatial size is a multiple of ``k`` (the network's total stride).

    Args:
        keys: keys to pad.
        k: divisor, one per axis or one for all; e.g. 32 for a ResNet encoder with a stride-2 stem, a max-pool
            and three strided stages.

    Returns:
        An invertible ``DivisiblePadd`` (padding split evenly on both sides).

    Raises:
        ValueError: non-positive ``k``.
    """
    return DivisiblePadd(keys=keys, k=_check_size(k, "k"), mode="constant")


def random_patches(
    keys: KeysCollection,
    patch_size: Sequence[int] | int,
    w_key: str = "mask",
    num_samples: int = 1,
    background: float = 0.0,
) -> list[MapTransform]:
    """Random patches centred in the brain, or a set share of them outside it.

    With ``background=0`` patch centres are drawn with probability proportional to ``w_key`` (the 0/1 mask:
    uniformly inside the brain, ``RandWeightedCropd``). With ``background > 0`` each centre lies outside the mask
    with that probability and inside it otherwise, uniformly in each (``RandCropByPosNegLabeld``), so the network
    also learns what to do with air, skull and scalp: a denoiser trained on brain patches only leaves the noise
    outside the brain almost untouched.

    Args:
        keys: keys to crop together (image, label, mask).
        patch_size: patch size ``(H, W, D)`` or one int.
        w_key: key of the 0/1 brain mask (sampling weights).
        num_samples: patches per volume; the item becomes a list of ``num_samples`` dictionaries.
        background: probability that a patch centre lies outside the mask, in ``[0, 1)``.

    Returns:
        ``[SpatialPadd, RandWeightedCropd]`` or ``[SpatialPadd, RandCropByPosNegLabeld]``.

    Raises:
        ValueError: non-positive ``patch_size`` or ``num_samples``, or ``background`` outside ``[0, 1)``.
    """
    size = _check_size(patch_size, "patch_size")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    if isinstance(background, bool) or not isinstance(background, (int, float)) or not 0.0 <= background < 1.0:
        raise ValueError(f"background must be a share in [0, 1), got {background!r}.")
    pad = SpatialPadd(keys=keys, spatial_size=size, mode="constant")
    if background == 0:
        return [pad, RandWeightedCropd(keys=keys, w_key=w_key, spatial_size=size, num_samples=int(num_samples))]
    crop = RandCropByPosNegLabeld(
        keys=keys,
        label_key=w_key,
        spatial_size=size,
        pos=1.0 - float(background),
        neg=float(background),
        num_samples=int(num_samples),
    )
    return [pad, crop]


def center_crop(keys: KeysCollection, roi_size: Sequence[int] | int) -> ResizeWithPadOrCropd:
    """Centre crop to ``roi_size``, zero-padding axes where the volume is smaller (``ResizeWithPadOrCropd``).

    Args:
        keys: keys to crop.
        roi_size: output size ``(H, W, D)`` or one int.

    Returns:
        An invertible ``ResizeWithPadOrCropd``.

    Raises:
        ValueError: non-positive ``roi_size``.
    """
    return ResizeWithPadOrCropd(keys=keys, spatial_size=_check_size(roi_size, "roi_size"), mode="constant")
