"""The floor a classifier of the demo cohort has to beat: a logistic regression on block-averaged volumes."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from transforms.errors import InputError
from transforms.intensity import robust_max

__all__ = ["block_features", "logistic_baseline"]


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
