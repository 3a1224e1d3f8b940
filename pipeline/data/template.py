"""The MNI ICBM152 2009 template maps that the installed ``nilearn`` package carries, and the cohort's output grid.

nilearn ships the 2009c nonlinear symmetric template (T1, grey- and white-matter probability maps and brain mask at
1 mm); ``nilearn.datasets.load_mni152_*`` read them from the package, offline. :func:`load_template` is the one
template loader of the project (the cohort simulates its subjects from it, the benchmarks score on it).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import ndimage

__all__ = ["Template", "cohort_grid", "load_template", "smoothed_template"]

_GRID_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class Template:
    """The MNI152 template maps at 1 mm, float32, RAS, cropped to the brain plus a 12 mm margin.

    Attributes:
        t1: T1 intensity in ``[0, 1]``, skull-stripped.
        gm: grey-matter probability.
        wm: white-matter probability.
        csf: cerebrospinal fluid probability, ``clip(mask - gm - wm, 0, 1)``.
        mask: brain mask probability.
        affine: the 4x4 voxel-to-MNI-mm affine.
        tissue_means: mean T1 of voxels with probability > 0.8 of each tissue (``gm``, ``wm``, ``csf``).
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    tissue_means: dict[str, float]


@functools.cache
def load_template(margin: int | None = 12) -> Template:
    """Read nilearn's MNI ICBM152 2009 template maps from the installed package (no download); cached.

    The one template loader of the project: the cohort simulates its subjects from it and the benchmarks score on
    it.

    Args:
        margin: crop to the brain plus this many 1 mm voxels on each side (12, the default, is wide enough for
            every deformation of :func:`simulate_subject`: half the voxels, same content); ``None`` keeps nilearn's
            whole 197 x 233 x 189 grid.

    Returns:
        The template (arrays are read-only).
    """
    from nilearn import datasets  # imported here: nilearn takes seconds to import and only the cohort needs it

    t1_img = datasets.load_mni152_template(resolution=1)
    maps = {
        "t1": t1_img,
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
        "mask": datasets.load_mni152_brain_mask(resolution=1),
    }
    arrays = {name: np.clip(img.get_fdata(dtype=np.float32), 0.0, 1.0) for name, img in maps.items()}
    for name, img in maps.items():
        if not np.allclose(img.affine, t1_img.affine):
            raise RuntimeError(f"nilearn's MNI152 {name} map is not on the T1 grid; the nilearn install is unusual")
    low = np.zeros(3, dtype=int)
    if margin is not None:
        ijk = np.argwhere(arrays["mask"] > 0)
        low = np.maximum(ijk.min(0) - margin, 0)
        high = np.minimum(ijk.max(0) + margin + 1, arrays["mask"].shape)
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
        arrays = {name: np.ascontiguousarray(array[box]) for name, array in arrays.items()}
    affine = np.asarray(t1_img.affine, dtype=np.float64).copy()
    affine[:3, 3] += affine[:3, :3] @ low
    arrays["csf"] = np.clip(arrays["mask"] - arrays["gm"] - arrays["wm"], 0.0, 1.0)
    inside = arrays["mask"] > 0.5
    means = {tissue: float(arrays["t1"][inside & (arrays[tissue] > 0.8)].mean()) for tissue in ("gm", "wm", "csf")}
    for array in arrays.values():
        array.setflags(write=False)
    return Template(affine=affine, tissue_means=means, **arrays)


def cohort_grid(spacing: float, margin_mm: float = 2.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """The output grid: the template's brain bounding box plus a margin, in ``spacing`` mm voxels.

    Each side is rounded up to a multiple of 8 voxels and the grid is centred on the bounding box.

    Args:
        spacing: isotropic voxel size in mm.
        margin_mm: margin around the brain on each side.

    Returns:
        ``(shape, affine)``: the volume shape ``(X, Y, Z)`` and its RAS voxel-to-mm affine ``diag(spacing)``.
    """
    template = load_template()
    ijk = np.argwhere(template.mask > 0.5)
    corners = np.stack([ijk.min(0), ijk.max(0)]) @ template.affine[:3, :3].T + template.affine[:3, 3]
    low, high = corners.min(0) - margin_mm, corners.max(0) + margin_mm
    shape = tuple(int(_GRID_MULTIPLE * math.ceil((h - lo) / spacing / _GRID_MULTIPLE)) for lo, h in zip(low, high))
    centre = (low + high) / 2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - (np.array(shape) - 1) / 2 * spacing
    return shape, affine


@functools.cache
def smoothed_template(spacing: float) -> dict[str, np.ndarray]:
    """Template maps low-pass filtered for sampling at ``spacing`` mm (Gaussian FWHM ~ the new voxel size)."""
    template = load_template()
    sigma = 0.42 * max(spacing - 1.0, 0.0)
    maps = {}
    for name in ("t1", "gm", "wm", "csf", "mask"):
        array = getattr(template, name)
        smoothed = ndimage.gaussian_filter(array, sigma) if sigma > 0 else array.copy()
        smoothed.setflags(write=False)
        maps[name] = smoothed
    return maps
