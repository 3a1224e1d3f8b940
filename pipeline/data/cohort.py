"""A reproducible synthetic cohort built from real anatomy: nilearn's MNI ICBM152 2009 template, nothing downloaded.

No clinical data can ship with the project, so the demo trains on subjects simulated from the MNI ICBM152 2009c
nonlinear symmetric template that the installed ``nilearn`` package carries (T1, grey- and white-matter
probability maps and brain mask at 1 mm; ``nilearn.datasets.load_mni152_*`` read them from the package, offline).

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

Outputs under ``out_dir`` (float32 gzipped NIfTI with the RAS affine ``diag(spacing)`` centred on the brain, so the
header carries the resampled voxel size; sform/qform code 4, MNI space):

* ``clean/sub-XXX.nii.gz``: noise-free scans;
* ``gaussian15/``: Gaussian noise, sigma 15/255 of each scan's robust maximum (``pipeline.data.prepare_noisy``);
* ``poisson/``: Poisson noise with ``poisson_scale`` photons at the robust maximum;
* ``masks/``: brain masks (0/1, float32);
* ``subjects.csv``: ``subject_id, label, severity, age, sex, split, gm_volume_ml, ventricle_volume_ml, path``;
  ``split`` is a stratified 60/20/20 subject-level split (``pipeline.data.splits.make_splits``); ``path`` points at
  ``clean/``; the two volume columns are ground truth for analysis, not inputs for a classifier;
* ``cohort.json``: the generation parameters.

Resolution: the default 2 mm grid crops to the brain at 80x96x80 voxels (every side divisible by 16, so a U-Net
with four down-samplings needs no padding); 32 subjects with both noisy folders took 105 s to generate on the
shared 2-core development machine, and train in minutes. ``spacing=3`` gives 56x64x56 volumes for quicker runs.
Seeded: the same seed and parameters give byte-identical files (nibabel writes gzip with a zero time stamp); each
subject's draws come from its own ``SeedSequence([seed, index])`` stream.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from pipeline.data.prepare_noisy import add_noise
from pipeline.data.splits import make_splits
from pipeline.utils.files import atomic_path
from transforms.errors import InputError
from transforms.intensity import robust_max

__all__ = [
    "Cohort",
    "CohortParameters",
    "Subject",
    "Template",
    "block_features",
    "build_cohort",
    "cohort_grid",
    "load_template",
    "logistic_baseline",
    "main",
    "simulate_subject",
]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_VENTRICLE_CENTRE_MM = np.array([0.0, -13.6, 13.2])
_VENTRICLE_SIGMA_MM = np.array([15.0, 25.0, 12.0])
_GRID_MULTIPLE = 8


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
def _smoothed_template(spacing: float) -> dict[str, np.ndarray]:
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
    """Simulate one subject on the :func:`cohort_grid` of ``params.spacing`` (model in the module docstring).

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
    maps = _smoothed_template(params.spacing)
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


@dataclasses.dataclass(frozen=True)
class Cohort:
    """What :func:`build_cohort` wrote.

    Attributes:
        out_dir: the cohort folder.
        subjects_csv: path of ``subjects.csv``.
        subjects: one row per subject (the CSV's columns; ``path`` relative to ``out_dir``).
        shape: volume shape ``(X, Y, Z)``.
        affine: the volumes' 4x4 affine.
        folders: ``{"clean": ..., "gaussian15": ..., "poisson": ..., "masks": ...}`` absolute folder paths.
    """

    out_dir: Path
    subjects_csv: Path
    subjects: list[dict[str, Any]]
    shape: tuple[int, int, int]
    affine: np.ndarray
    folders: dict[str, Path]


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=4)  # MNI-aligned space
    image.header.set_sform(affine, code=4)
    image.header["descrip"] = b"resUnet3D demo cohort (MNI152 2009)"
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def build_cohort(
    out_dir: str | os.PathLike,
    n_subjects: int = 32,
    seed: int = 0,
    params: CohortParameters | None = None,
    noisy: bool = True,
    id_prefix: str = "sub-",
) -> Cohort:
    """Generate the demo cohort (module docstring) under ``out_dir``; existing files are replaced atomically.

    Labels are balanced (``n_subjects // 2`` patients, the rest controls) and assigned in a seeded random order.

    Args:
        out_dir: destination folder, created if needed.
        n_subjects: number of subjects, ``>= 4`` (so every split part has a subject).
        seed: base seed (non-negative); same seed and parameters give byte-identical files.
        params: simulation parameters; defaults if ``None``.
        noisy: also write ``gaussian15/`` and ``poisson/`` (tests may skip them to save time).
        id_prefix: subject IDs are ``<id_prefix>001``...; cohorts meant to stay apart (pretraining and labelled
            subjects, say) need different prefixes so the leakage guard can tell their subjects apart.

    Returns:
        What was written.

    Raises:
        ValueError: for ``n_subjects < 4`` or a negative ``seed``.
    """
    if n_subjects < 4:
        raise ValueError(f"n_subjects must be >= 4, got {n_subjects}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not id_prefix or any(c in id_prefix for c in '/\\,"'):
        raise ValueError(f"id_prefix must be a non-empty name without '/', '\\', ',' or quotes, got {id_prefix!r}")
    params = params or CohortParameters()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    shape, affine = cohort_grid(params.spacing)
    gauss_dir = f"gaussian{params.gaussian_level:g}"
    folders = {name: out_dir / name for name in ("clean", "masks", *((gauss_dir, "poisson") if noisy else ()))}

    label_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    labels = label_rng.permutation(np.arange(n_subjects) % 2).tolist()
    noise_seeds = [int(v) for v in np.random.SeedSequence([seed, 0xD015E]).generate_state(2)]
    rows = []
    for index, label in enumerate(labels):
        sid = f"{id_prefix}{index + 1:03d}"
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        severity_range = params.patient_severity if label else params.control_severity
        severity = float(rng.uniform(*severity_range))
        age = round(float(rng.uniform(60.0, 85.0)), 1)
        sex = "F" if rng.random() < 0.5 else "M"
        subject = simulate_subject(rng, severity, params)
        name = f"{sid}.nii.gz"
        _save_nifti(folders["clean"] / name, subject.image, affine)
        _save_nifti(folders["masks"] / name, subject.mask, affine)
        if noisy:
            gaussian = add_noise(subject.image, "gaussian", params.gaussian_level, noise_seeds[0], name)
            _save_nifti(folders[gauss_dir] / name, gaussian, affine)
            poisson = add_noise(subject.image, "poisson", params.poisson_scale, noise_seeds[1], name)
            _save_nifti(folders["poisson"] / name, poisson, affine)
        rows.append(
            {
                "subject_id": sid,
                "label": int(label),
                "severity": round(severity, 4),
                "age": age,
                "sex": sex,
                "gm_volume_ml": round(subject.gm_volume_ml, 2),
                "ventricle_volume_ml": round(subject.ventricle_volume_ml, 2),
                "path": f"clean/{name}",
            }
        )
        logger.debug("%s: label %d, severity %.2f", sid, label, severity)

    splits = make_splits([r["subject_id"] for r in rows], [r["label"] for r in rows], seed=seed)
    for row in rows:
        row["split"] = next(part for part in ("train", "val", "test") if row["subject_id"] in splits.part(part))
    columns = ["subject_id", "label", "severity", "age", "sex", "split", "gm_volume_ml", "ventricle_volume_ml", "path"]
    csv_lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in rows]
    subjects_csv = out_dir / "subjects.csv"
    _write_text(subjects_csv, "\n".join(csv_lines) + "\n")
    metadata = {
        "version": _FORMAT_VERSION,
        "seed": seed,
        "n_subjects": n_subjects,
        "shape": list(shape),
        "affine": affine.tolist(),
        "parameters": dataclasses.asdict(params),
        "folders": sorted(folders),
        "template": "MNI ICBM152 2009c nonlinear symmetric (nilearn)",
    }
    _write_text(out_dir / "cohort.json", json.dumps(metadata, indent=2) + "\n")
    logger.info(
        "wrote %d subjects (%dx%dx%d at %g mm) to %s in %.1f s",
        n_subjects,
        *shape,
        params.spacing,
        out_dir,
        time.perf_counter() - started,
    )
    return Cohort(
        out_dir=out_dir,
        subjects_csv=subjects_csv,
        subjects=rows,
        shape=shape,
        affine=affine,
        folders=folders,
    )


def block_features(path: str | os.PathLike, voxel_mm: float = 8.0) -> np.ndarray:
    """The logistic floor's features of one volume: block means of the volume over its robust maximum.

    The volume is divided by its robust maximum (99.5th percentile of its non-zero voxels) and block-averaged to
    about ``voxel_mm`` mm voxels (a whole number of voxels per block), then flattened.

    Args:
        path: a NIfTI volume.
        voxel_mm: feature voxel size; larger is coarser and fewer features.

    Returns:
        The 1-D feature vector (float32).
    """
    image = nib.load(os.fspath(path))
    volume = np.asarray(image.get_fdata(dtype=np.float32))
    reference = robust_max(volume, default=1.0)
    factor = max(1, round(voxel_mm / float(np.abs(image.header.get_zooms()[0]))))
    cropped = volume[tuple(slice(0, (n // factor) * factor) for n in volume.shape)] / reference
    blocks = cropped.reshape(
        cropped.shape[0] // factor, factor, cropped.shape[1] // factor, factor, cropped.shape[2] // factor, factor
    )
    return blocks.mean(axis=(1, 3, 5)).ravel()


def logistic_baseline(
    cohort_dir: str | os.PathLike,
    folder: str = "clean",
    voxel_mm: float = 8.0,
    n_folds: int = 5,
    seed: int = 0,
    c: float = 0.05,
) -> float:
    """Cross-validated balanced accuracy of a logistic regression on the cohort's downsampled volumes.

    The floor a classifier has to beat. Each volume is divided by its robust maximum (99.5th percentile of its
    non-zero voxels), block-averaged to about ``voxel_mm`` mm voxels, flattened and standardised per feature;
    an L2-regularised logistic regression (scikit-learn, ``C=c``) is scored by stratified k-fold
    cross-validation over subjects (one volume per subject, so folds are subject-disjoint).

    Args:
        cohort_dir: a folder written by :func:`build_cohort` (reads ``subjects.csv`` and ``<folder>/``).
        folder: which volumes to use (``clean``, ``gaussian15``, ``poisson``).
        voxel_mm: feature voxel size; larger is coarser and fewer features.
        n_folds: cross-validation folds (lowered to the smaller class size if needed, at least 2).
        seed: seed of the fold assignment.
        c: inverse regularisation strength.

    Returns:
        Balanced accuracy of the out-of-fold predictions, in ``[0, 1]`` (0.5 is chance).

    Raises:
        InputError: if ``subjects.csv`` or a volume is missing or unreadable (``pipeline.data.datasets`` errors).
        ValueError: if a class has fewer than 2 subjects.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.data.datasets import load_subjects_csv

    cohort_dir = Path(cohort_dir)
    items = load_subjects_csv(cohort_dir / "subjects.csv")
    if folder != "clean":  # the CSV's path column points at clean/; read the same file names in ``folder``
        for item in items:
            item["image"] = str(cohort_dir / folder / Path(item["image"]).name)
            if not os.path.isfile(item["image"]):
                raise InputError(item["image"], f"is missing; {folder}/ does not match the cohort's clean/ scans")
    labels = np.array([item["label"] for item in items])
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"each class needs at least 2 subjects for cross-validation, got counts {counts.tolist()}")
    x = np.stack([block_features(item["image"], voxel_mm) for item in items])
    folds = StratifiedKFold(max(2, min(n_folds, int(counts.min()))), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    predicted = cross_val_predict(model, x, labels, cv=folds)
    return float(balanced_accuracy_score(labels, predicted))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pipeline.data.cohort --out demo/cohort --subjects 32 --seed 0``.

    Returns:
        0 on success.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.data.cohort",
        description="Build the synthetic demo cohort from nilearn's MNI152 template (offline, seeded).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--subjects", type=int, default=32, help="number of subjects, >= 4 (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2: 80x96x80)")
    parser.add_argument("--baseline", action="store_true", help="also print the logistic-regression baseline")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.utils.tiny import cohort_size

    args.subjects, args.spacing = cohort_size(args.subjects, args.spacing)  # RESUNET3D_TINY=1: smoke-test sizes
    try:
        params = CohortParameters(spacing=args.spacing)
        cohort = build_cohort(args.out, args.subjects, args.seed, params)
    except ValueError as err:
        parser.error(str(err))
    labels = [row["label"] for row in cohort.subjects]
    print(
        f"{len(labels)} subjects ({sum(labels)} with atrophy), {'x'.join(map(str, cohort.shape))} voxels at "
        f"{args.spacing:g} mm -> {cohort.out_dir}"
    )
    if args.baseline:
        accuracy = logistic_baseline(cohort.out_dir)
        print(f"logistic-regression baseline, balanced accuracy on clean/ (k-fold CV by subject): {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
