"""The demo's classification test: a separate held-out cohort, both classifiers and the logistic floor scored on it.

The cohort's own test part (6 subjects at the default size) cannot tell a classifier at 0.5 from one at 0.8: its
intervals reached [0, 1]. So the classifiers are scored on a second cohort from the same simulator and parameters
(:func:`pipeline.data.cohort.build_cohort`) with another seed (:data:`~pipeline.demo.settings.HELDOUT_SEED_OFFSET`)
and ID prefix (:data:`~pipeline.demo.settings.HELDOUT_PREFIX`): new people, none of them seen by any model. Before
anything is scored, the guard refuses a held-out subject whose ID or image (a hash of its voxels,
:func:`pipeline.evaluation.leakage.check_distinct_volumes`) equals one of the training cohort's.

The logistic-regression floor (the model of :func:`pipeline.data.cohort.logistic_baseline`: 8 mm block means,
standardised, L2 ``C=0.05``) is fitted on the training cohort's train and val subjects, the ones the classifiers
learnt from and chose their epoch on, and scored on the same held-out subjects.

Every figure carries a 95 % interval: balanced accuracy and ROC AUC a percentile bootstrap over the held-out subjects
(:func:`pipeline.evaluation.stats.bootstrap_interval`), sensitivity and specificity (the two recalls balanced
accuracy averages) a Wilson interval (:func:`pipeline.evaluation.stats.proportion_interval`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.demo.settings import CLASS_NAMES, HELDOUT_PREFIX, HELDOUT_SEED_OFFSET, DemoSettings
from pipeline.demo.stages import CohortInfo, StageRecord, cohort_progress
from pipeline.evaluation import stats
from pipeline.utils.files import atomic_path

__all__ = ["HeldOut", "build_heldout", "check_heldout", "classification_scores", "floor_predictions", "heldout_summary"]

#: Coverage of every classification interval.
LEVEL = 0.95
#: Bootstrap resamples of the balanced-accuracy and AUC intervals.
RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The held-out classification cohort.

    Attributes:
        dir: its folder (``clean/``, ``masks/``, ``subjects.csv``, ``cohort.json``).
        seed: the seed it was built with.
        scans: ``{subject: clean scan}``.
        labels: ``{subject: class index}``.
    """

    dir: Path
    seed: int
    scans: dict[str, Path]
    labels: dict[str, int]


def build_heldout(out: Path, settings: DemoSettings, cohort: CohortInfo, resume: bool, record: StageRecord) -> HeldOut:
    """Build (or reuse) the held-out cohort under ``<out>/heldout`` and check it shares nothing with the training one.

    Raises:
        pipeline.errors.LeakageError: if a held-out subject's ID or image equals a training-cohort subject's.
    """
    from pipeline.data.cohort import CohortParameters, build_cohort
    from pipeline.data.datasets import load_subjects_csv

    folder, seed = out / "heldout", settings.seed + HELDOUT_SEED_OFFSET
    if resume and (folder / "cohort.json").is_file():
        record.note = "reused from the previous run"
    else:
        with cohort_progress(settings.heldout_subjects):
            params = CohortParameters(spacing=settings.spacing)
            build_cohort(folder, settings.heldout_subjects, seed, params, noisy=False, id_prefix=HELDOUT_PREFIX)
    items = load_subjects_csv(folder / "subjects.csv", class_names=list(CLASS_NAMES))
    heldout = HeldOut(
        dir=folder,
        seed=seed,
        scans={str(i["subject"]): Path(i["image"]) for i in items},
        labels={str(i["subject"]): int(i["label"]) for i in items},
    )
    record.note = (
        f"{len(heldout.scans)} subjects, seed {seed}; no ID or image (voxel hash) shared with the "
        f"{check_heldout(cohort, heldout)} training-cohort subjects"
    )
    return heldout


def check_heldout(cohort: CohortInfo, heldout: HeldOut) -> int:
    """Refuse a held-out subject whose ID, or whose image (voxel hash), equals a training-cohort subject's.

    Returns:
        The number of training-cohort subjects compared.

    Raises:
        pipeline.errors.LeakageError: naming the shared IDs or files.
    """
    from pipeline.data.splits import check_no_overlap
    from pipeline.evaluation.leakage import check_distinct_volumes

    check_no_overlap({"training cohort": list(cohort.labels), "held-out cohort": list(heldout.labels)})
    training = [str(cohort.dir / "clean" / f"{s}.nii.gz") for s in cohort.labels]
    check_distinct_volumes({"training cohort": training, "held-out cohort": [str(p) for p in heldout.scans.values()]})
    return len(training)


def floor_predictions(cohort: CohortInfo, heldout: HeldOut, path: Path) -> Path:
    """The logistic floor fitted on the cohort's train and val subjects, its held-out predictions written as a CSV.

    The CSV has the columns of ``inference_classifier.yaml``'s (``subject``, ``prob_<class>``, ``prediction``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.data.cohort import block_features

    fit_subjects = [*cohort.parts["train"], *cohort.parts["val"]]
    x = np.stack([block_features(cohort.dir / "clean" / f"{s}.nii.gz") for s in fit_subjects])
    y = np.array([cohort.labels[s] for s in fit_subjects])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)).fit(x, y)
    subjects = list(heldout.scans)
    prob = model.predict_proba(np.stack([block_features(heldout.scans[s]) for s in subjects]))[:, 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, ["subject", *(f"prob_{c}" for c in CLASS_NAMES), "prediction"])
        writer.writeheader()
        for subject, p in zip(subjects, prob, strict=True):
            writer.writerow(
                {"subject": subject, f"prob_{CLASS_NAMES[0]}": f"{1 - p:.6f}", f"prob_{CLASS_NAMES[1]}": f"{p:.6f}"}
                | {"prediction": CLASS_NAMES[int(p >= 0.5)]}
            )
    return path


def _recall(predicted: np.ndarray, truth: np.ndarray, label: int) -> dict[str, Any]:
    """Recall of one class with its Wilson interval and counts."""
    hits, total = int(np.sum((predicted == label) & (truth == label))), int(np.sum(truth == label))
    return {"value": hits / total, "interval": list(stats.proportion_interval(hits, total, LEVEL)), "n": total}


def classification_scores(csv_path: Path, labels: Mapping[str, int]) -> dict[str, Any]:
    """Balanced accuracy, ROC AUC, sensitivity and specificity of a predictions CSV, each with its 95 % interval.

    Args:
        csv_path: ``subject``, ``prob_patient`` and ``prediction`` columns, one row per subject.
        labels: ``{subject: class index}``; every subject of the CSV must have one.

    Returns:
        ``balanced_accuracy`` and ``auc`` with ``*_interval`` (bootstrap over subjects, ``*_interval_se``: the
        bounds' Monte-Carlo errors), ``sensitivity`` and ``specificity`` (Wilson), ``n``, ``level`` and ``subjects``
        (``{subject: {"label", "prob_patient"}}``).
    """
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = np.array([labels[r["subject"]] for r in rows])
    prob = np.array([float(r[f"prob_{CLASS_NAMES[1]}"]) for r in rows])
    predicted = np.array([CLASS_NAMES.index(r["prediction"]) for r in rows])
    scores: dict[str, Any] = {}
    for name, statistic in (
        ("balanced_accuracy", lambda _, c: stats.balanced_accuracy(predicted[c], truth[c])),
        ("auc", lambda _, c: stats.auc(prob[c], truth[c])),
    ):
        interval = stats.bootstrap_interval(statistic, 1, len(rows), level=LEVEL, n_resamples=RESAMPLES)
        scores[name] = interval.estimate
        scores[f"{name}_interval"] = [interval.low, interval.high]
        scores[f"{name}_interval_se"] = list(interval.bound_se)
    return {
        **scores,
        "sensitivity": _recall(predicted, truth, 1),
        "specificity": _recall(predicted, truth, 0),
        "n": len(rows),
        "level": LEVEL,
        "subjects": {
            r["subject"]: {"label": int(truth[k]), "prob_patient": float(prob[k])} for k, r in enumerate(rows)
        },
    }


def heldout_summary(heldout: HeldOut, fit_subjects: Sequence[str]) -> dict[str, Any]:
    """The held-out cohort as ``results.json`` records it."""
    meta = json.loads((heldout.dir / "cohort.json").read_text(encoding="utf-8"))
    return {
        "subjects": sorted(heldout.labels),
        "seed": heldout.seed,
        "patients": int(sum(heldout.labels.values())),
        "shape": meta["shape"],
        "floor_fitted_on": list(fit_subjects),
        "leakage_guard": "no ID and no image (SHA-256 of the voxel array) shared with the training cohort",
    }
