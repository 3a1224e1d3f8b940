"""Ready-made ``monai.transforms.Compose`` chains for the denoiser and the classifier.

Denoising (:func:`denoise_transforms`). Keys: ``image`` (network input, noisy), ``label`` (clean target),
``mask`` (brain mask, for patch sampling and masked losses). Intensities are scaled by
``ScalePercentiled(lower=None, upper=99.5, nonzero=True, clip=False)``: divided by the 99.5th percentile of the
**input's** non-zero voxels, with no offset (so Poisson/low-dose models stay physical) and no clipping (so the
inverse is exact and bright structures do not saturate). The statistic comes from ``image`` in every stage,
because at inference only the noisy scan exists: the network is trained on exactly the input scaling it will
see, and ``Invertd`` undoes that scaling (and every spatial step) on its output.

* Synthetic noise (``paired=False``, clean scans only): the clean scan is read from ``image`` and copied to
  ``label`` (replacing any ``label`` the item had); both are scaled by the clean scan's statistic, which fixes
  the unit of the noise level (``gaussian15`` = std 15/255 of it); optional augmentation; noise on ``image``;
  then both are re-scaled by the noisy image's statistic, the same scaling inference applies.
* Paired folders (``paired=True``): ``image`` is the noisy file, ``label`` the clean one, both scaled by the noisy
  image's statistic.

The mask is ``HeadMask`` of the clean ``label`` (or a mask file, ``mask_file=True``), made before any
random step so ``CacheDataset``/``PersistentDataset`` store it with the loaded volumes.

Stages: ``train`` (random noise level if ``level`` is a range, brain-mask-weighted random patches, optional
augmentation), ``val`` (noise seeded per item from ``seed`` and the file name, so it is the same in every run;
whole volume padded to a multiple of ``divisible_k``, or a centre crop of ``val_roi``) and ``infer`` (load,
orient, scale, pad: every step invertible).

Classification (:func:`classify_transforms`): percentile scaling clipped to ``[0, 1]`` (0.5th/99.5th percentiles
of the non-zero voxels), crop to the brain's bounding box, then centre pad/crop to ``spatial_size`` **without
resizing**, so head size (atrophy) is kept in millimetres.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    AsDiscreted,
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianSmoothd,
    RandScaleIntensityd,
)

from transforms.intensity import ScalePercentiled
from transforms.io import LoadScand, canonical_transforms
from transforms.noise import NOISE_NAMES, make_noise, parse_noise_name
from transforms.spatial import (
    HeadMaskd,
    center_crop,
    divisible_pad,
    foreground_crop,
    random_patches,
)

__all__ = ["STAGES", "classify_transforms", "denoise_transforms", "fresh_noise", "intensity_augmentation"]

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("train", "val", "infer")
UPPER_PERCENTILE = 99.5


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
    return stage


def intensity_augmentation(keys: Sequence[str], prob: float = 0.3) -> list[MapTransform]:
    """Scanner-variation augmentation; every transform draws once per item and applies it to all ``keys``.

    ``RandBiasFieldd`` (smooth multiplicative field, coefficients up to 0.1), ``RandAdjustContrastd``
    (gamma in ``[0.7, 1.5]``), ``RandScaleIntensityd`` (factor in ``[0.9, 1.1]``) and ``RandGaussianSmoothd``
    (sigma in ``[0.25, 1.0]`` voxels, a lower-resolution acquisition), each with probability ``prob``.

    Args:
        keys: keys sharing the draws (noisy input and clean target together).
        prob: probability of each transform.

    Returns:
        The four MONAI transforms.

    Raises:
        ValueError: ``prob`` outside ``[0, 1]``.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob!r}.")
    keys = list(keys)
    return [
        RandBiasFieldd(keys=keys, coeff_range=(0.0, 0.1), prob=prob),
        RandAdjustContrastd(keys=keys, gamma=(0.7, 1.5), prob=prob),
        RandScaleIntensityd(keys=keys, factors=0.1, prob=prob),
        RandGaussianSmoothd(keys=keys, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0), prob=prob * 0.5),
    ]


def _fixed_level(level: float | Sequence[float]) -> float:
    """Validation uses one level: the number itself, or the midpoint of a training range."""
    if isinstance(level, Sequence) and not isinstance(level, str):
        return float(np.mean([float(v) for v in level]))
    return float(level)


def fresh_noise(
    noise: str,
    level: float | Sequence[float] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    counts: float = 200.0,
) -> list[MapTransform]:
    """Replace the input by its clean target plus noise drawn afresh at every call (paired data, fresh noise).

    A folder of noisy files holds one noise draw per scan, so a network trained on it for many epochs learns those
    draws; with these steps at the end of the training chain every patch gets a new one (the noisy files still
    validate and test). The noise is added on the normalised scale (``reference=1``): after ``ScalePercentiled``
    the clean target's robust maximum is about 1, so ``gaussian15`` means std 15/255 of it, as in the files.

    Args:
        noise: a noise name as the folders are named, e.g. ``"gaussian15"``, ``"rician10"``, ``"poisson200"``;
            ``""`` returns no step (train on the noisy files as they are).
        level: overrides the name's level: a number or a ``(low, high)`` range drawn per patch (a blind denoiser).
        image_key: the network input, replaced.
        label_key: the clean target, copied.
        counts: full-dose counts for ``lowdose``.

    Returns:
        ``[DeleteItemsd, CopyItemsd, <noise>]``, or ``[]`` for ``noise=""``.

    Raises:
        ValueError: unknown noise name, no level, or a level out of the model's range.
    """
    if not noise:
        return []
    name, named_level = parse_noise_name(noise)
    level = named_level if level is None else level
    if level is None:
        raise ValueError(f"fresh noise {noise!r} needs a level: name it (e.g. 'gaussian15') or pass level=.")
    return [
        DeleteItemsd(keys=image_key),
        CopyItemsd(keys=label_key, names=image_key),
        make_noise(name, level, keys=image_key, counts=counts),
    ]


def denoise_transforms(
    stage: str = "train",
    patch_size: Sequence[int] | int = 64,
    noise: str | None = "gaussian",
    level: float | Sequence[float] = 15.0,
    spacing: Sequence[float] | float | None = None,
    seed: int = 0,
    paired: bool = False,
    divisible_k: int | Sequence[int] = 16,
    num_samples: int = 1,
    augment: bool = False,
    counts: float = 200.0,
    margin: int = 4,
    val_roi: Sequence[int] | int | None = None,
    id_key: str | None = None,
    mask_file: bool = False,
    background: float = 0.0,
) -> Compose:
    """Preprocessing for training, validating and applying the denoiser.

    Args:
        stage: ``"train"``, ``"val"`` or ``"infer"``.
        patch_size: training patch ``(H, W, D)`` or one int.
        noise: synthetic noise model, one of ``gaussian``, ``poisson``, ``rician``, ``lowdose``; ignored with
            ``paired=True`` and at inference (may be ``None`` there).
        level: noise level in :func:`~transforms.noise.make_noise`'s units, or a ``(low, high)`` range drawn
            per item in training (validation uses its midpoint).
        spacing: resample to this voxel size in mm (``Spacingd``), or ``None`` to keep each scan's grid.
        seed: base seed: seeds the training chain (``Compose.set_random_state``) and the per-item validation noise.
        paired: the item's ``image`` is an existing noisy file and ``label`` its clean twin.
        divisible_k: total stride of the network; validation and inference volumes are padded to multiples.
        num_samples: training patches per volume.
        augment: add :func:`intensity_augmentation` and left-right flips in training.
        counts: full-dose counts for the ``lowdose`` model.
        margin: voxels kept around the brain's bounding box in training.
        val_roi: centre-crop validation volumes to this size instead of padding the whole volume.
        id_key: item key that names an item for seeded validation noise (default: the image's file name).
        mask_file: the item's ``mask`` is a path to a brain mask on the scan's grid (e.g. the demo cohort's
            ``masks/``), loaded with nearest-neighbour resampling and binarised at 0.5; otherwise the mask is
            ``HeadMask`` of the clean scan.
        background: share of training patches centred outside the brain mask (then the whole field of view is
            kept; with 0 the volume is cropped to the brain's bounding box plus ``margin``).

    Returns:
        A ``Compose``; with ``stage="train"`` it returns a list of ``num_samples`` dictionaries per item.

    Raises:
        ValueError: unknown ``stage`` or ``noise``, or a level out of range.
    """
    _check_stage(stage)
    if not paired and stage != "infer" and noise not in NOISE_NAMES:
        raise ValueError(f"noise must be one of {NOISE_NAMES} for synthetic-noise training, got {noise!r}.")
    scale_kw = {"lower": None, "upper": UPPER_PERCENTILE, "nonzero": True, "clip": False}

    if stage == "infer":
        steps: list = [LoadScand(keys="image"), *canonical_transforms("image", spacing)]
        steps += [ScalePercentiled(keys="image", stats_key="image", **scale_kw), divisible_pad("image", divisible_k)]
        return Compose(steps)

    pair = ["image", "label"]
    loaded = (pair if paired else ["image"]) + (["mask"] if mask_file else [])
    modes = ["nearest" if key == "mask" else "bilinear" for key in loaded]
    steps = [LoadScand(keys=loaded), *canonical_transforms(loaded, spacing, mode=modes)]
    if not paired:
        steps += [DeleteItemsd(keys="label"), CopyItemsd(keys="image", names="label")]
    steps.append(ScalePercentiled(keys=pair, stats_key="image" if paired else "label", **scale_kw))
    if mask_file:
        steps.append(AsDiscreted(keys="mask", threshold=0.5))
    else:  # of the clean scan, before anything random, so caching datasets keep it
        steps.append(HeadMaskd(keys="label", mask_key="mask"))
    if augment and stage == "train":
        steps += intensity_augmentation(pair)
    if not paired:
        if stage == "train":
            steps.append(make_noise(noise, level, keys="image", counts=counts))
        else:
            steps.append(make_noise(noise, _fixed_level(level), keys="image", counts=counts, seed=seed, id_key=id_key))
        steps.append(ScalePercentiled(keys=pair, stats_key="image", **scale_kw))
    keys = ["image", "label", "mask"]
    if stage == "train":
        if not background:
            steps.append(foreground_crop(keys, source_key="mask", margin=margin))
        steps += random_patches(keys, patch_size, w_key="mask", num_samples=num_samples, background=background)
        if augment:
            steps.append(RandFlipd(keys=keys, spatial_axis=0, prob=0.5))
        return Compose(steps).set_random_state(seed=seed)
    steps.append(center_crop(keys, val_roi) if val_roi is not None else divisible_pad(keys, divisible_k))
    return Compose(steps)


def classify_transforms(
    stage: str = "train",
    spatial_size: Sequence[int] | int = 96,
    spacing: Sequence[float] | float | None = None,
    augment: bool = True,
    seed: int = 0,
    margin: int = 4,
) -> Compose:
    """Preprocessing for the classifier: keys ``image`` (path) and ``label`` (class index, absent at inference).

    Steps: load, orient to RAS (optionally resample), scale to ``[0, 1]`` by the 0.5th/99.5th percentiles of the
    non-zero voxels with clipping, brain mask (Otsu), crop to its bounding box plus ``margin``, centre pad/crop to
    ``spatial_size`` (no resizing), drop the mask, and make ``label`` a ``torch.long`` tensor. Training with
    ``augment`` adds left-right flips, a small random affine (rotation up to 0.1 rad, scale up to 5 %,
    translation up to 4 voxels) and :func:`intensity_augmentation`.

    Args:
        stage: ``"train"``, ``"val"`` or ``"infer"``.
        spatial_size: network input size ``(H, W, D)`` or one int.
        spacing: resample to this voxel size in mm, or ``None``.
        augment: add the augmentation above in training.
        seed: seeds the training chain.
        margin: voxels kept around the brain's bounding box.

    Returns:
        A ``Compose`` producing ``image`` ``(1, H, W, D)`` float32 and ``label`` (a 0-d long tensor).

    Raises:
        ValueError: unknown ``stage``.
    """
    _check_stage(stage)
    steps: list = [LoadScand(keys="image"), *canonical_transforms("image", spacing)]
    steps.append(ScalePercentiled(keys="image", lower=0.5, upper=UPPER_PERCENTILE, nonzero=True, clip=True))
    steps.append(HeadMaskd(keys="image", mask_key="mask"))
    steps.append(foreground_crop(["image", "mask"], source_key="mask", margin=margin))
    steps.append(center_crop("image", spatial_size))
    steps.append(DeleteItemsd(keys="mask"))
    if stage == "train" and augment:
        steps.append(RandFlipd(keys="image", spatial_axis=0, prob=0.5))
        steps.append(
            RandAffined(
                keys="image",
                prob=0.5,
                rotate_range=(0.1, 0.1, 0.1),
                scale_range=(0.05, 0.05, 0.05),
                translate_range=(4, 4, 4),
                padding_mode="zeros",
            )
        )
        steps += intensity_augmentation(["image"])
    steps.append(EnsureTyped(keys="label", dtype=torch.long, track_meta=False, allow_missing_keys=True))
    chain = Compose(steps)
    return chain.set_random_state(seed=seed) if stage == "train" else chain
