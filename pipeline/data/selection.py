"""Which items a training workflow reads and how they split: the data steps of the bundle's training configs.

``train_denoise.yaml`` and ``finetune_classifier.yaml`` call these instead of writing the choices as config
expressions; each rule is stated once here:

- the denoiser's items come from a datalist JSON when one is given, else from paired noisy / clean folders;
- the denoiser's split is ``splits_file`` when given; with the classifier's subjects CSV it is drawn from the CSV's
  train subjects only (val from them, no test drawn) and tests on the CSV's test subjects, so the classifier's
  leakage guard passes; otherwise drawn subject-level from every item;
- the classifier's split is ``splits_file`` when given, else the CSV's own split column, else drawn (stratified by
  label).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.data.datasets import load_datalist, load_subjects_csv, paired_folders
from pipeline.data.splits import SubjectSplits, load_splits, make_splits, splits_from_items

__all__ = ["classifier_splits", "denoiser_items", "denoiser_splits"]


def denoiser_items(
    dataset_dir: str | os.PathLike,
    noise_dir: str,
    clean_dir: str,
    mask_dir: str | None = None,
    datalist: str | os.PathLike = "",
) -> list[dict[str, Any]]:
    """The denoiser's noisy / clean pairs: ``datalist`` when given, else ``dataset_dir``'s paired folders.

    Args:
        dataset_dir: the folder holding ``noise_dir`` and ``clean_dir`` (and ``mask_dir``).
        noise_dir: sub-folder of the noisy inputs.
        clean_dir: sub-folder of the clean targets (same file names).
        mask_dir: optional sub-folder of brain masks.
        datalist: a Decathlon-style JSON used instead of the folders (``""``: the folders).

    Returns:
        ``{"image", "label", "subject"[, "mask"]}`` items.
    """
    if datalist:
        return load_datalist(datalist)
    return paired_folders(dataset_dir, noise_dir, clean_dir, mask_dir)


def denoiser_splits(
    items: Sequence[Mapping[str, Any]],
    *,
    splits_file: str | os.PathLike = "",
    subjects_csv: str | os.PathLike = "",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> SubjectSplits:
    """The denoiser's subject-level split (see the module docstring for the rule).

    Args:
        items: the denoiser's items (each with ``subject``).
        splits_file: a saved split (:func:`pipeline.data.splits.save_splits`) used as it is.
        subjects_csv: the classifier's subjects CSV with a split column: the denoiser then draws train/val from
            the CSV's train subjects and tests on its test subjects.
        val_fraction: share of subjects validated on.
        test_fraction: share of subjects tested on (no test is drawn with ``subjects_csv``).
        seed: the split's seed.

    Returns:
        The split.
    """
    if splits_file:
        return load_splits(splits_file)
    if not subjects_csv:
        return make_splits(
            [i["subject"] for i in items], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
    csv = splits_from_items(load_subjects_csv(subjects_csv))
    pool = [i["subject"] for i in items if i["subject"] in csv.train]
    drawn = make_splits(pool, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    return dataclasses.replace(drawn, test=csv.test)


def classifier_splits(
    items: Sequence[Mapping[str, Any]],
    *,
    splits_file: str | os.PathLike = "",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> SubjectSplits:
    """The classifier's subject-level split: ``splits_file``, else the CSV's split column, else drawn by label.

    Args:
        items: the subjects CSV's items (``subject``, ``label``, optional ``split``).
        splits_file: a saved split used as it is.
        val_fraction: share of subjects validated on (when drawn).
        test_fraction: share of subjects tested on (when drawn).
        seed: the split's seed.

    Returns:
        The split.
    """
    if splits_file:
        return load_splits(splits_file)
    if any(i.get("split") for i in items):
        return splits_from_items(items)
    return make_splits(
        [i["subject"] for i in items],
        [i["label"] for i in items],
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
