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

Modules: :mod:`transforms.synth.acquisition` (steps 1 and 3), :mod:`transforms.synth.contrast` (step 2),
:mod:`transforms.synth.noise_mix` (step 5), :mod:`transforms.synth.chain` (:func:`synth_transforms`) and
:mod:`transforms.synth.common` (the channels, classes and helpers they share).
"""

from __future__ import annotations

from transforms.synth.acquisition import RandResolution, RandResolutiond, RandVoxelSizeCrop, RandVoxelSizeCropd
from transforms.synth.chain import synth_transforms
from transforms.synth.common import CLASSES, TISSUE_CHANNELS, VOXEL_SIZE_KEY
from transforms.synth.contrast import CONTRAST_RANGES, RandTissueContrast, RandTissueContrastd
from transforms.synth.noise_mix import RandNoiseMix, RandNoiseMixd

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
