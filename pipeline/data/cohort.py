"""A reproducible synthetic cohort built from real anatomy: nilearn's MNI ICBM152 2009 template, nothing downloaded.

No clinical data can ship with the project, so the demo trains on subjects simulated from the MNI ICBM152 2009c
nonlinear symmetric template that the installed ``nilearn`` package carries (T1, grey- and white-matter
probability maps and brain mask at 1 mm; ``nilearn.datasets.load_mni152_*`` read them from the package, offline).

Each subject is the template under a random anatomy, atrophy (label 1) or "normal ageing" (label 0) and intensity
(:mod:`pipeline.data.simulation`; the template and the grid: :mod:`pipeline.data.template`).

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
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.data.baseline import block_features, logistic_baseline
from pipeline.data.prepare_noisy import add_noise
from pipeline.data.simulation import CohortParameters, Subject, simulate_subject
from pipeline.data.splits import make_splits
from pipeline.data.template import Template, cohort_grid, load_template
from pipeline.utils.files import atomic_path

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


def _gaussian_folder(params: CohortParameters) -> str:
    """The Gaussian-noise folder's name, e.g. ``gaussian15``."""
    return f"gaussian{params.gaussian_level:g}"


def _write_subject(
    sid: str,
    label: int,
    rng: np.random.Generator,
    params: CohortParameters,
    folders: dict[str, Path],
    affine: np.ndarray,
    noise_seeds: list[int] | None,
) -> dict[str, Any]:
    """Draw one subject from its own generator, write its volumes, and return its CSV row (no ``split`` yet).

    Args:
        sid: the subject ID (also the file name's stem).
        label: 1 (atrophy) or 0 (control).
        rng: the subject's generator; severity, age and sex are drawn first, then the anatomy.
        params: simulation parameters.
        folders: the output folders by name.
        affine: the volumes' affine.
        noise_seeds: base seeds of the Gaussian and Poisson copies; ``None`` writes no noisy copy.

    Returns:
        The subject's row of ``subjects.csv``.
    """
    severity_range = params.patient_severity if label else params.control_severity
    severity = float(rng.uniform(*severity_range))
    age = round(float(rng.uniform(60.0, 85.0)), 1)
    sex = "F" if rng.random() < 0.5 else "M"
    subject = simulate_subject(rng, severity, params)
    name = f"{sid}.nii.gz"
    _save_nifti(folders["clean"] / name, subject.image, affine)
    _save_nifti(folders["masks"] / name, subject.mask, affine)
    if noise_seeds is not None:
        gaussian = add_noise(subject.image, "gaussian", params.gaussian_level, noise_seeds[0], name)
        _save_nifti(folders[_gaussian_folder(params)] / name, gaussian, affine)
        poisson = add_noise(subject.image, "poisson", params.poisson_scale, noise_seeds[1], name)
        _save_nifti(folders["poisson"] / name, poisson, affine)
    logger.debug("%s: label %d, severity %.2f", sid, label, severity)
    return {
        "subject_id": sid,
        "label": int(label),
        "severity": round(severity, 4),
        "age": age,
        "sex": sex,
        "gm_volume_ml": round(subject.gm_volume_ml, 2),
        "ventricle_volume_ml": round(subject.ventricle_volume_ml, 2),
        "path": f"clean/{name}",
    }


def _write_subjects_csv(out_dir: Path, rows: list[dict[str, Any]], seed: int) -> Path:
    """Give every row its part of the stratified subject split, then write ``subjects.csv``; returns its path."""
    splits = make_splits([r["subject_id"] for r in rows], [r["label"] for r in rows], seed=seed)
    for row in rows:
        row["split"] = next(part for part in ("train", "val", "test") if row["subject_id"] in splits.part(part))
    columns = ["subject_id", "label", "severity", "age", "sex", "split", "gm_volume_ml", "ventricle_volume_ml", "path"]
    csv_lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in rows]
    subjects_csv = out_dir / "subjects.csv"
    _write_text(subjects_csv, "\n".join(csv_lines) + "\n")
    return subjects_csv


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
    gauss_dir = _gaussian_folder(params)
    folders = {name: out_dir / name for name in ("clean", "masks", *((gauss_dir, "poisson") if noisy else ()))}

    label_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    labels = label_rng.permutation(np.arange(n_subjects) % 2).tolist()
    noise_seeds = [int(v) for v in np.random.SeedSequence([seed, 0xD015E]).generate_state(2)]
    rows = []
    for index, label in enumerate(labels):
        sid = f"{id_prefix}{index + 1:03d}"
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        rows.append(_write_subject(sid, label, rng, params, folders, affine, noise_seeds if noisy else None))
    subjects_csv = _write_subjects_csv(out_dir, rows, seed)
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
