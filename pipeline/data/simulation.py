"""One simulated subject of the demo cohort: the MNI152 template under a random anatomy, atrophy and intensity.

Each subject (see :func:`simulate_subject`):

1. **Anatomy**: the template resampled through a subject-specific transform: a small affine change (rotation
   up to 4 degrees per axis, isotropic scale ``1 +- size_variation``, translation up to 3 mm) composed with a
   smooth random deformation (displacement of standard deviation ``deformation_mm`` on a coarse 6x7x6 control
   grid, cubic-spline upsampled), so brains differ in size, pose and local shape.
2. **Atrophy** (label 1; severity ``s`` drawn uniformly in ``patient_severity``): *grey-matter thinning*, a loss
   fraction ``s * gm_loss * w(x)`` of the grey-matter probability next to cerebrospinal fluid (``w`` the smoothed
   CSF map times a smooth random field, so loss is patchy and strongest at the sulci), where lost grey matter
   turns into CSF and its intensity moves from the grey-matter to the CSF mean; and *ventricle enlargement*, a
   radial displacement about the ventricles' centre (MNI (0, -13.6, 13.2) mm, Gaussian envelope of 15x25x12 mm)
   whose central Jacobian is ``1 + s * ventricle_growth`` per axis. Controls (label 0) get the same model with
   a small "normal ageing" severity drawn in ``control_severity``, so the classes overlap a little, as real ones do.
3. **Intensity**: a global gain (0.85-1.15, on a 1000-unit scale), tissue-contrast jitter and a smooth
   multiplicative bias field (exponential of a random second-order polynomial, about +-7 %).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from pipeline.data.template import cohort_grid, load_template, smoothed_template

__all__ = ["CohortParameters", "Subject", "simulate_subject"]

_VENTRICLE_CENTRE_MM = np.array([0.0, -13.6, 13.2])
_VENTRICLE_SIGMA_MM = np.array([15.0, 25.0, 12.0])


@dataclasses.dataclass(frozen=True)
class CohortParameters:
    """The knobs of the simulation (stored in ``cohort.json``; any change gives a different cohort).

    Attributes:
        spacing: voxel size in mm of the written volumes (isotropic), ``>= 1``.
        patient_severity: range of the atrophy severity of label-1 subjects, within ``[0, 1]``.
        control_severity: range of the "normal ageing" severity of label-0 subjects, within ``[0, 1]``.
        gm_loss: grey-matter loss fraction next to CSF at severity 1 (before the random patchiness).
        ventricle_growth: per-axis stretch at the ventricles' centre at severity 1.
        deformation_mm: standard deviation of the smooth random displacement, mm.
        size_variation: isotropic scale drawn in ``1 +- size_variation`` (head-size variation).
        bias_field: standard deviation of the bias field's polynomial coefficients (0.04: about +-7 %).
        gaussian_level: Gaussian noise of ``gaussian15/`` on the 0-255 scale.
        poisson_scale: photon count at the robust maximum for ``poisson/``.
    """

    spacing: float = 2.0
    patient_severity: tuple[float, float] = (0.5, 1.0)
    control_severity: tuple[float, float] = (0.0, 0.15)
    gm_loss: float = 0.8
    ventricle_growth: float = 0.6
    deformation_mm: float = 1.5
    size_variation: float = 0.04
    bias_field: float = 0.04
    gaussian_level: float = 15.0
    poisson_scale: float = 200.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.spacing) or self.spacing < 1.0:
            raise ValueError(f"spacing must be a finite number of mm >= 1, got {self.spacing}")
        for name in ("patient_severity", "control_severity"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"{name} must be a (low, high) range within [0, 1], got {(low, high)}")
        limits = (
            ("gm_loss", 0.9),
            ("ventricle_growth", 0.8),
            ("deformation_mm", 5.0),
            ("size_variation", 0.2),
            ("bias_field", 0.3),
        )
        for name, high in limits:
            value = getattr(self, name)
            if not 0.0 <= value <= high:
                raise ValueError(f"{name} must be in [0, {high}], got {value}")
        if not 0.0 < self.gaussian_level <= 255.0:
            raise ValueError(f"gaussian_level must be in (0, 255], got {self.gaussian_level}")
        if not 0.0 < self.poisson_scale <= 1e9:
            raise ValueError(f"poisson_scale must be in (0, 1e9], got {self.poisson_scale}")


@dataclasses.dataclass(frozen=True)
class Subject:
    """One simulated subject.

    Attributes:
        image: clean T1 volume ``(X, Y, Z)``, float32, about 0-1500 units.
        mask: brain mask ``(X, Y, Z)``, float32 0/1.
        severity: atrophy severity in ``[0, 1]``.
        gm_volume_ml: grey-matter volume (sum of the probability times the voxel volume), ml.
        ventricle_volume_ml: CSF volume within 30 mm of the ventricles' centre, ml.
    """

    image: np.ndarray
    mask: np.ndarray
    severity: float
    gm_volume_ml: float
    ventricle_volume_ml: float


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], control: tuple[int, ...]) -> np.ndarray:
    """A smooth random field of unit standard deviation at the control points, cubic-spline upsampled to ``shape``."""
    coarse = rng.standard_normal(control)
    return ndimage.zoom(coarse, [s / c for s, c in zip(shape, control)], order=3, mode="nearest")[
        tuple(slice(0, s) for s in shape)
    ]


def simulate_subject(rng: np.random.Generator, severity: float, params: CohortParameters | None = None) -> Subject:
    """Simulate one subject on the :func:`cohort_grid` of ``params.spacing`` (the model in the module docstring).

    Args:
        rng: the subject's random generator (every draw comes from it).
        severity: atrophy severity in ``[0, 1]``; 0 is the template's anatomy under the random variations only.
        params: simulation parameters; defaults if ``None``.

    Returns:
        The subject.

    Raises:
        ValueError: if ``severity`` is outside ``[0, 1]``.
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    params = params or CohortParameters()
    template = load_template()
    maps = smoothed_template(params.spacing)
    shape, affine = cohort_grid(params.spacing)

    # Output voxel centres in mm, (3, X, Y, Z).
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    points = np.einsum("ij,jxyz->ixyz", affine[:3, :3], grid) + affine[:3, 3, None, None, None]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]

    # Affine change (subject -> template), then a smooth random displacement.
    angles = rng.uniform(-1.0, 1.0, 3) * np.deg2rad(4.0)
    scale = rng.uniform(1.0 - params.size_variation, 1.0 + params.size_variation)
    shift = rng.uniform(-3.0, 3.0, 3)
    matrix = _rotation(angles) / scale
    q = np.einsum("ij,jxyz->ixyz", matrix, points - centre[:, None, None, None]) + (centre + shift)[:, None, None, None]
    control = (6, 7, 6)
    q += np.stack([_smooth_field(rng, shape, control) for _ in range(3)]) * params.deformation_mm

    # Ventricle enlargement: sample closer to the ventricles' centre, so the structures there grow.
    offset = q - _VENTRICLE_CENTRE_MM[:, None, None, None]
    scaled = offset / _VENTRICLE_SIGMA_MM[:, None, None, None]
    growth = severity * params.ventricle_growth
    q -= growth / (1.0 + growth) * offset * np.exp(-0.5 * (scaled**2).sum(0))

    inverse = np.linalg.inv(template.affine)
    coords = np.einsum("ij,jxyz->ixyz", inverse[:3, :3], q) + inverse[:3, 3, None, None, None]
    sampled = {
        name: ndimage.map_coordinates(maps[name], coords, order=1, mode="constant", cval=0.0)
        for name in ("t1", "gm", "wm", "csf", "mask")
    }

    # Grey-matter thinning next to CSF, patchy; lost grey matter becomes CSF.
    sigma_vox = 3.0 / params.spacing
    near_csf = ndimage.gaussian_filter(sampled["csf"], sigma_vox)
    near_csf /= max(float(near_csf.max()), 1e-6)
    patchy = np.clip(1.0 + 0.5 * _smooth_field(rng, shape, (5, 6, 5)), 0.0, 2.0)
    loss = np.clip(severity * params.gm_loss * patchy * np.sqrt(near_csf), 0.0, 0.9) * sampled["gm"]
    means = template.tissue_means
    t1 = sampled["t1"] - loss * (means["gm"] - means["csf"])
    gm = sampled["gm"] - loss
    csf = sampled["csf"] + loss

    # Intensity: tissue-contrast jitter, global gain, smooth bias field.
    t1 = t1 + rng.normal(0.0, 0.015) * sampled["wm"] + rng.normal(0.0, 0.015) * gm
    unit = (points - centre[:, None, None, None]) / 90.0
    terms = [unit[0], unit[1], unit[2], unit[0] * unit[1], unit[0] * unit[2], unit[1] * unit[2], *(unit**2 - 0.3)]
    bias = np.exp(sum(c * t for c, t in zip(rng.normal(0.0, params.bias_field, len(terms)), terms)))
    gain = 1000.0 * rng.uniform(0.85, 1.15)
    image = np.clip(t1, 0.0, None) * bias * gain
    mask = (sampled["mask"] > 0.5).astype(np.float32)
    image = np.where(sampled["mask"] > 0.05, image, 0.0).astype(np.float32)

    voxel_ml = params.spacing**3 / 1000.0
    near_ventricles = np.linalg.norm(points - _VENTRICLE_CENTRE_MM[:, None, None, None], axis=0) < 30.0
    return Subject(
        image=image,
        mask=mask,
        severity=float(severity),
        gm_volume_ml=float(gm.sum() * voxel_ml),
        ventricle_volume_ml=float(csf[near_ventricles].sum() * voxel_ml),
    )
