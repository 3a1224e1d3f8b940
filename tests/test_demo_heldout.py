"""pipeline.demo.heldout: the held-out classification cohort's guard, its scores and intervals, the floor's CSV."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.demo.heldout import HeldOut, check_heldout, classification_scores, floor_predictions
from pipeline.demo.settings import QUICK, DemoSettings
from pipeline.demo.stages import CohortInfo
from pipeline.errors import LeakageError


def _volumes(folder: Path, ids: list[str], seed: int) -> dict[str, Path]:
    """Random 16^3 volumes (one per ID, a brighter block for odd IDs) written as ``<folder>/<id>.nii.gz``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, sid in enumerate(ids):
        volume = rng.uniform(0.5, 1.0, (16, 16, 16)).astype(np.float32)
        volume[4:12, 4:12, 4:12] += 0.5 * (k % 2)
        paths[sid] = folder / f"{sid}.nii.gz"
        nib.save(nib.Nifti1Image(volume, np.diag([8.0, 8.0, 8.0, 1.0])), paths[sid])
    return paths


def _cohort(tmp_path: Path) -> CohortInfo:
    ids = [f"sub-{k:03d}" for k in range(1, 9)]
    _volumes(tmp_path / "cohort" / "clean", ids, seed=0)
    return CohortInfo(
        dir=tmp_path / "cohort",
        noise_dir="gaussian15",
        shape=[16, 16, 16],
        labels={sid: k % 2 for k, sid in enumerate(ids)},
        parts={"train": ids[:4], "val": ids[4:6], "test": ids[6:]},
        denoiser_splits=None,
        splits_file=tmp_path / "splits.json",
    )


def _heldout(tmp_path: Path, n: int = 6) -> HeldOut:
    ids = [f"held-{k:03d}" for k in range(1, n + 1)]
    scans = _volumes(tmp_path / "heldout" / "clean", ids, seed=1)
    return HeldOut(dir=tmp_path / "heldout", seed=1000, scans=scans, labels={s: k % 2 for k, s in enumerate(ids)})


def test_the_guard_compares_images_not_only_ids(tmp_path):
    cohort, heldout = _cohort(tmp_path), _heldout(tmp_path)
    assert check_heldout(cohort, heldout) == 8
    # a training scan copied under a new held-out ID: every ID differs, the voxels do not
    shutil.copy(cohort.dir / "clean" / "sub-003.nii.gz", heldout.scans["held-002"])
    with pytest.raises(LeakageError, match="sub-003.nii.gz = .*held-002.nii.gz"):
        check_heldout(cohort, heldout)
    # a shared ID with other voxels is refused too
    clash = HeldOut(heldout.dir, 1000, {"sub-001": heldout.scans["held-001"]}, {"sub-001": 0})
    with pytest.raises(LeakageError, match="sub-001"):
        check_heldout(cohort, clash)


def _write_predictions(path: Path, labels: dict[str, int], prob: list[float]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["subject", "prob_control", "prob_patient", "prediction"])
        writer.writeheader()
        for subject, p in zip(labels, prob, strict=True):
            prediction = "patient" if p >= 0.5 else "control"
            writer.writerow({"subject": subject, "prob_control": 1 - p, "prob_patient": p, "prediction": prediction})
    return path


def test_scores_carry_intervals_that_separate_chance_from_a_good_classifier(tmp_path):
    from pipeline.evaluation import stats

    rng = np.random.default_rng(0)
    labels = {f"held-{k:03d}": k % 2 for k in range(64)}
    truth = np.array(list(labels.values()))
    good = np.clip(0.5 + (truth - 0.5) * 0.5 + rng.normal(0, 0.25, truth.size), 0, 1)  # AUC near 0.9
    chance = rng.uniform(0, 1, truth.size)
    good_scores = classification_scores(_write_predictions(tmp_path / "good.csv", labels, list(good)), labels)
    chance_scores = classification_scores(_write_predictions(tmp_path / "chance.csv", labels, list(chance)), labels)
    for scores in (good_scores, chance_scores):
        assert scores["n"] == 64 and scores["level"] == 0.95
        for name in ("balanced_accuracy", "auc"):
            low, high = scores[f"{name}_interval"]
            assert low <= scores[name] <= high
            assert high - low < 0.3  # 64 subjects: about +-0.1, narrow enough to tell 0.5 from 0.8
        hits = sum(1 for s, v in scores["subjects"].items() if v["label"] == 1 and v["prob_patient"] >= 0.5)
        assert scores["sensitivity"]["value"] == hits / 32
        assert scores["sensitivity"]["interval"] == pytest.approx(list(stats.proportion_interval(hits, 32)))
    assert good_scores["auc"] == pytest.approx(stats.auc(good, truth))
    assert good_scores["auc_interval"][0] > 0.5 + 0.1  # a good classifier's interval excludes chance
    assert chance_scores["auc_interval"][0] < 0.5 < chance_scores["auc_interval"][1]
    # the figures are read from the CSV's subjects, in any order, against the given labels
    flipped = {s: 1 - v for s, v in labels.items()}
    assert classification_scores(tmp_path / "good.csv", flipped)["auc"] == pytest.approx(1 - good_scores["auc"])


def test_the_floor_is_fitted_on_train_and_val_and_predicts_every_heldout_subject(tmp_path):
    cohort, heldout = _cohort(tmp_path), _heldout(tmp_path)
    path = floor_predictions(cohort, heldout, tmp_path / "predictions" / "floor.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["subject"] for r in rows] == list(heldout.scans)
    for row in rows:
        p = float(row["prob_patient"])
        assert float(row["prob_control"]) == pytest.approx(1 - p, abs=1e-5)
        assert row["prediction"] == ("patient" if p >= 0.5 else "control")
    # the block in odd subjects is easy: the floor separates the held-out classes
    assert classification_scores(path, heldout.labels)["auc"] == 1.0


def test_heldout_size_is_validated_and_quick_keeps_a_small_cohort():
    with pytest.raises(ValueError, match="heldout_subjects"):
        DemoSettings(heldout_subjects=2)
    assert QUICK.heldout_subjects <= 12 and DemoSettings().heldout_subjects >= 64
