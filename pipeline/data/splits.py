"""Subject-level train/val/test and k-fold splits, saved to JSON, and the guard against data leakage.

Splits are made on subject IDs, never on scans or patches, so two scans of one subject can never sit on both
sides of a split. They are deterministic: the IDs are sorted before shuffling with the seed, so the same subjects,
labels and seed give the same split whatever order they were listed in. When labels are given the split is
stratified (scikit-learn's ``train_test_split(stratify=...)`` and ``StratifiedKFold``), so each part keeps the
class proportions; if a class is too small to stratify, the split falls back to a plain shuffle and says so
(logged, and ``stratified: false`` in the file).

The guard (:func:`check_no_overlap`, :func:`check_transfer_leakage`) implements ClinicaDL's rule against data
leakage: no subject may appear in two parts of a split, and when a denoiser's encoder is transferred to a
classifier, the subjects the denoiser was trained on must not be in the classifier's validation or test set.

File format (``save_splits`` / ``load_splits``), JSON::

    {"version": 1, "seed": 0, "stratified": true,
     "train": ["sub-01", ...], "val": [...], "test": [...],
     "folds": [{"train": [...], "val": [...]}, ...],      # empty without k-fold
     "labels": {"sub-01": 0, ...}}                        # empty without labels
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from pipeline.errors import LeakageError
from pipeline.utils.files import atomic_path
from transforms.errors import InputError

__all__ = [
    "Fold",
    "SubjectSplits",
    "check_no_overlap",
    "check_transfer_leakage",
    "load_splits",
    "make_splits",
    "save_splits",
    "select_items",
    "splits_from_items",
]

logger = logging.getLogger(__name__)
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Fold:
    """One cross-validation fold: the subjects trained on and the subjects validated on."""

    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SubjectSplits:
    """A subject-level split: a held-out test set, a train/val split and optionally k folds of train+val.

    Attributes:
        train: subject IDs to train on (fold 0's train part when ``folds`` is not empty).
        val: subject IDs to validate on (fold 0's val part when ``folds`` is not empty).
        test: held-out subject IDs, never seen in training or model selection.
        folds: k-fold partitions of ``train + val``; each subject is in exactly one fold's ``val``.
        seed: the seed the split was drawn with.
        stratified: whether the class proportions were kept in every part.
        labels: ``{subject: class index}`` used for stratification (empty if none).
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] = ()
    folds: tuple[Fold, ...] = ()
    seed: int = 0
    stratified: bool = False
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_no_overlap({"train": self.train, "val": self.val, "test": self.test})
        for k, fold in enumerate(self.folds):
            check_no_overlap({f"fold {k} train": fold.train, f"fold {k} val": fold.val, "test": self.test})

    def fold(self, k: int) -> SubjectSplits:
        """Return the split whose ``train``/``val`` are fold ``k``'s (same ``test``), for one cross-validation run.

        Args:
            k: fold index, ``0 <= k < len(self.folds)``.

        Raises:
            ValueError: if ``k`` is out of range.
        """
        if not 0 <= k < len(self.folds):
            raise ValueError(
                f"fold must be in 0..{len(self.folds) - 1} (this split has {len(self.folds)} folds), got {k}"
            )
        return dataclasses.replace(self, train=self.folds[k].train, val=self.folds[k].val)

    def part(self, name: str) -> tuple[str, ...]:
        """Return the subject IDs of ``"train"``, ``"val"`` or ``"test"``.

        Raises:
            ValueError: for any other name.
        """
        if name not in ("train", "val", "test"):
            raise ValueError(f"part must be one of 'train', 'val', 'test', got {name!r}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form documented in the module docstring."""
        return {
            "version": _VERSION,
            "seed": int(self.seed),
            "stratified": bool(self.stratified),
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "folds": [{"train": list(f.train), "val": list(f.val)} for f in self.folds],
            "labels": {str(k): int(v) for k, v in self.labels.items()},
        }

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> SubjectSplits:
        """Build from :meth:`to_dict`'s form, validating types and disjointness.

        Raises:
            ValueError: if a field is missing or has the wrong type.
            LeakageError: if parts overlap.
        """

        def ids(value: Any, name: str) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of subject ID strings")
            return tuple(value)

        for key in ("train", "val"):
            if key not in content:
                raise ValueError(f"missing {key!r}")
        folds = content.get("folds", [])
        if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
            raise ValueError("folds must be a list of {'train': [...], 'val': [...]} objects")
        labels = content.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
            raise ValueError("labels must map subject IDs to integer class indices")
        return cls(
            train=ids(content["train"], "train"),
            val=ids(content["val"], "val"),
            test=ids(content.get("test", []), "test"),
            folds=tuple(
                Fold(ids(f.get("train"), f"folds[{k}].train"), ids(f.get("val"), f"folds[{k}].val"))
                for k, f in enumerate(folds)
            ),
            seed=int(content.get("seed", 0)),
            stratified=bool(content.get("stratified", False)),
            labels=dict(labels),
        )


def check_no_overlap(groups: Mapping[str, Iterable[str]]) -> None:
    """Refuse groups of subject IDs that share a subject, listing every shared ID and the groups involved.

    Args:
        groups: ``{group name: subject IDs}``, e.g. ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        LeakageError: if any two groups share a subject, or one group lists a subject twice.
    """
    sets = {}
    overlaps: dict[tuple[str, str], list[str]] = {}
    for name, ids in groups.items():
        ids = [str(i) for i in ids]
        repeated = sorted(i for i, count in collections.Counter(ids).items() if count > 1)
        if repeated:
            overlaps[(name, name)] = repeated
        sets[name] = set(ids)
    for (a, ids_a), (b, ids_b) in itertools.combinations(sets.items(), 2):
        shared = ids_a & ids_b
        if shared:
            overlaps[(a, b)] = sorted(shared)
    if overlaps:
        raise LeakageError(overlaps)


def check_transfer_leakage(
    splits: SubjectSplits, pretrained_on: Iterable[str], fold: int | None = None, pretraining: str = "denoiser"
) -> None:
    """Refuse to fine-tune an encoder on a split whose validation or test subjects the encoder was trained on.

    ClinicaDL's rule: a network pretrained (here, the denoiser whose encoder becomes the classifier's) may have
    seen the classifier's training subjects, never its validation or test subjects, or the reported accuracy is
    optimistic.

    Args:
        splits: the classifier's split.
        pretrained_on: subject IDs the pretrained network was trained (or validated, i.e. model-selected) on.
        fold: check ``splits.fold(fold)`` instead of ``splits``' own train/val.
        pretraining: name of the pretrained network in the error message.

    Raises:
        LeakageError: listing the subjects shared with the classifier's ``val`` and ``test``.
    """
    split = splits.fold(fold) if fold is not None else splits
    pretrained = set(map(str, pretrained_on))
    overlaps = {
        (f"{pretraining} training", f"classifier {name}"): sorted(pretrained & set(split.part(name)))
        for name in ("val", "test")
    }
    overlaps = {pair: ids for pair, ids in overlaps.items() if ids}
    if overlaps:
        raise LeakageError(overlaps)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _can_stratify(labels: Sequence[int], n_parts: int) -> bool:
    counts = np.bincount(np.asarray(labels)) if len(labels) else np.array([])
    return bool(len(counts[counts > 0]) > 1 and counts[counts > 0].min() >= n_parts)


def _holdout(
    ids: list[str], labels: list[int] | None, fraction: float, seed: int, stratify: bool
) -> tuple[list[str], list[str], bool]:
    """Split ``ids`` into (rest, held out) with ``round(fraction * n)`` (at least 1) held out."""
    if fraction == 0.0:
        return ids, [], stratify
    n_out = max(1, round(fraction * len(ids)))
    if n_out >= len(ids):
        raise ValueError(f"a fraction of {fraction} of {len(ids)} subjects leaves none to train on")
    use_strata = (
        stratify
        and labels is not None
        and _can_stratify(labels, 2)
        and n_out >= len(set(labels))
        and len(ids) - n_out >= len(set(labels))
    )
    if stratify and labels is not None and not use_strata:
        logger.warning(
            "cannot stratify %d subjects into %d held out by label; splitting without strata", len(ids), n_out
        )
    rest, out = train_test_split(
        ids, test_size=n_out, random_state=seed, shuffle=True, stratify=labels if use_strata else None
    )
    return sorted(rest), sorted(out), use_strata


def make_splits(
    subjects: Iterable[str],
    labels: Sequence[int] | Mapping[str, int] | None = None,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    n_folds: int = 0,
    seed: int = 0,
    stratify: bool = True,
) -> SubjectSplits:
    """Draw a deterministic subject-level split: test held out first, then train/val (or k folds) of the rest.

    Args:
        subjects: subject IDs (unique).
        labels: class index per subject (a sequence aligned with ``subjects`` or a ``{subject: label}`` map);
            ``None`` for an unlabelled (denoising) cohort.
        val_fraction: share of the non-test subjects for validation (ignored when ``n_folds >= 2``).
        test_fraction: share of all subjects held out for testing; 0 for none.
        n_folds: 0 for a single train/val split; ``k >= 2`` for k folds over the non-test subjects, each
            subject validated in exactly one fold (``train``/``val`` then hold fold 0).
        seed: random seed; the same subjects, labels and seed give the same split.
        stratify: keep class proportions in each part when labels allow it.

    Returns:
        The split.

    Raises:
        ValueError: for duplicate IDs, labels that do not match the subjects, fractions outside [0, 1), a
            fraction leaving no subject to train on, or fewer non-test subjects than folds.
    """
    ids = [str(s) for s in subjects]
    if len(set(ids)) != len(ids):
        check_no_overlap({"subjects": ids})
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if n_folds < 0 or n_folds == 1:
        raise ValueError(f"n_folds must be 0 (a single train/val split) or >= 2, got {n_folds}")
    label_map: dict[str, int] = {}
    if labels is not None:
        if isinstance(labels, Mapping):
            missing = [i for i in ids if i not in labels]
            if missing:
                raise ValueError(f"labels has no entry for subjects {', '.join(missing[:20])}")
            label_map = {i: int(labels[i]) for i in ids}
        else:
            if len(labels) != len(ids):
                raise ValueError(f"labels has {len(labels)} entries for {len(ids)} subjects")
            label_map = {i: int(v) for i, v in zip(ids, labels)}
    ids = sorted(ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 subjects to split, got {len(ids)}")
    lab = [label_map[i] for i in ids] if label_map else None
    rest, test, strat_test = _holdout(ids, lab, test_fraction, seed, stratify)
    rest_labels = [label_map[i] for i in rest] if label_map else None
    folds: tuple[Fold, ...] = ()
    if n_folds >= 2:
        if len(rest) < n_folds:
            raise ValueError(f"n_folds={n_folds} needs at least {n_folds} non-test subjects, got {len(rest)}")
        strat_folds = stratify and rest_labels is not None and _can_stratify(rest_labels, n_folds)
        if stratify and rest_labels is not None and not strat_folds:
            logger.warning("a class has fewer than %d subjects; k-fold without strata", n_folds)
        splitter = (
            StratifiedKFold(n_folds, shuffle=True, random_state=seed)
            if strat_folds
            else KFold(n_folds, shuffle=True, random_state=seed)
        )
        rest_arr = np.asarray(rest)
        folds = tuple(
            Fold(tuple(sorted(rest_arr[tr].tolist())), tuple(sorted(rest_arr[va].tolist())))
            for tr, va in splitter.split(rest_arr, rest_labels if strat_folds else None)
        )
        train, val, strat_val = list(folds[0].train), list(folds[0].val), strat_folds
    else:
        train, val, strat_val = _holdout(rest, rest_labels, val_fraction, seed, stratify)
    stratified = bool(label_map) and stratify and strat_test and strat_val
    return SubjectSplits(
        train=tuple(train),
        val=tuple(val),
        test=tuple(test),
        folds=folds,
        seed=seed,
        stratified=stratified,
        labels=label_map,
    )


def splits_from_items(items: Iterable[Mapping[str, Any]]) -> SubjectSplits:
    """Build the split a subjects CSV states in its ``split`` column.

    The CSV is read by :func:`pipeline.data.datasets.load_subjects_csv`.

    Args:
        items: subject items with ``"subject"``, ``"split"`` (``train``/``val``/``test``) and optionally an integer
            ``"label"``.

    Returns:
        The split, with ``folds`` empty and ``stratified`` false (it is the table's, not drawn here).

    Raises:
        ValueError: if an item has no ``split`` or an empty one, or no subject is in ``train`` or ``val``.
        LeakageError: if a subject is listed in two parts.
    """
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    unassigned = []
    labels = {}
    for item in items:
        split = item.get("split", "")
        if split not in parts:
            unassigned.append(str(item.get("subject")))
            continue
        parts[split].append(str(item["subject"]))
        if isinstance(item.get("label"), int):
            labels[str(item["subject"])] = item["label"]
    if unassigned:
        raise ValueError(f"subjects without a train/val/test split: {', '.join(unassigned[:20])}")
    if not parts["train"] or not parts["val"]:
        raise ValueError("the split column must put at least one subject in 'train' and one in 'val'")
    check_no_overlap(parts)
    return SubjectSplits(**{k: tuple(sorted(v)) for k, v in parts.items()}, labels=labels)


def select_items(items: Iterable[Mapping[str, Any]], splits: SubjectSplits, part: str) -> list[dict[str, Any]]:
    """Return the items whose ``"subject"`` is in one part of a split, in the items' order.

    Args:
        items: data items with a ``"subject"`` key (``pipeline.data.datasets``' output).
        splits: the split.
        part: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        Copies of the matching items.

    Raises:
        ValueError: for an unknown ``part``, or if a subject of that part has no item (data and split disagree).
    """
    wanted = set(splits.part(part))
    items = [dict(item) for item in items]
    chosen = [item for item in items if str(item["subject"]) in wanted]
    missing = wanted - {str(item["subject"]) for item in chosen}
    if missing:
        raise ValueError(f"the split's {part!r} subjects have no data: {', '.join(sorted(missing)[:20])}")
    return chosen


def save_splits(splits: SubjectSplits, path: str | os.PathLike) -> Path:
    """Write a split to JSON atomically (temporary file + rename).

    Args:
        splits: the split.
        path: destination ``.json`` file; its folder is created.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splits.to_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "wrote split (%d train, %d val, %d test, %d folds) to %s",
        len(splits.train),
        len(splits.val),
        len(splits.test),
        len(splits.folds),
        path,
    )
    return path


def load_splits(path: str | os.PathLike) -> SubjectSplits:
    """Read a split written by :func:`save_splits`, checking that no subject is in two parts.

    Args:
        path: the JSON file.

    Returns:
        The split.

    Raises:
        InputError: if the file is missing, is not JSON, or does not have the split's form.
        LeakageError: if two parts share a subject.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist; write it with pipeline.data.splits.save_splits first")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot be read as JSON ({err})") from err
    if not isinstance(content, dict):
        raise InputError(path, "is not a split file (expected a JSON object with 'train', 'val', 'test')")
    if content.get("version", _VERSION) != _VERSION:
        raise InputError(path, f"has split format version {content.get('version')}; this code reads {_VERSION}")
    try:
        return SubjectSplits.from_dict(content)
    except LeakageError:
        raise
    except (ValueError, TypeError) as err:
        raise InputError(path, f"is not a valid split file: {err}") from err
