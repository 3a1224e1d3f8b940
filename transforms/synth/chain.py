"""The generator chain: tissue maps -> a noisy/clean training pair, every step of :mod:`transforms.synth` in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.transforms import Compose, CopyItemsd, RandFlipd, RandScaleIntensityd

from transforms.synth.acquisition import RandResolutiond, RandVoxelSizeCropd
from transforms.synth.common import FAR_MM, TISSUE_CHANNELS, check_prob, is_number
from transforms.synth.contrast import RandTissueContrastd
from transforms.synth.noise_mix import RandNoiseMixd

__all__ = ["synth_transforms"]


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
    """The generator chain (:mod:`transforms.synth`): a tissue stack under ``label`` -> ``image``, ``label``, ``mask``.

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
    if not is_number(gain) or not 0 <= gain < 1:
        raise ValueError(f"gain must be a number in [0, 1), got {gain!r}.")
    check_prob(flip_prob, "flip_prob")
    steps: list = [
        _crop_step(
            patch_size,
            voxel_size,
            slice_spacing,
            anisotropic_prob,
            source_spacing,
            oversample,
            foreground_prob,
            head_mm,
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
    chain = Compose(steps + _augment_and_noise(gain, flip_prob, gaussian, rician, poisson, noise_weights))
    return chain.set_random_state(seed=seed) if seed is not None else chain


def _crop_step(
    patch_size: Sequence[int] | int | None,
    voxel_size: float | Sequence[float],
    slice_spacing: float | Sequence[float],
    anisotropic_prob: float,
    source_spacing: float,
    oversample: float | None,
    foreground_prob: float,
    head_mm: float,
) -> RandVoxelSizeCropd:
    """Step 1 on the ``label`` stack: outside the field of view is air (far from the brain), the head is ``head_mm``."""
    return RandVoxelSizeCropd(
        "label",
        spatial_size=patch_size,
        voxel_size=voxel_size,
        slice_spacing=slice_spacing,
        anisotropic_prob=anisotropic_prob,
        source_spacing=source_spacing,
        pad_value=(0.0, 0.0, 0.0, FAR_MM),
        oversample=oversample,
        foreground_prob=foreground_prob,
        foreground_channel=TISSUE_CHANNELS.index("distance"),
        foreground_max=head_mm,
    )


def _augment_and_noise(
    gain: float,
    flip_prob: float,
    gaussian: float | Sequence[float] | None,
    rician: float | Sequence[float] | None,
    poisson: float | Sequence[float] | None,
    noise_weights: Sequence[float],
) -> list:
    """Steps 4 and 5: gain and flips of the clean ``label`` (and ``mask``), its copy to ``image``, then the noise."""
    steps: list = []
    if gain > 0:
        steps.append(RandScaleIntensityd(keys="label", factors=float(gain), prob=1.0))
    if flip_prob > 0:
        steps += [RandFlipd(keys=["label", "mask"], prob=flip_prob, spatial_axis=axis) for axis in range(3)]
    steps.append(CopyItemsd(keys="label", names="image"))
    steps.append(
        RandNoiseMixd("image", gaussian=gaussian, rician=rician, poisson=poisson, weights=noise_weights, reference=1.0)
    )
    return steps
