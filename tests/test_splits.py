from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline.data.datasets import load_subjects_csv
from pipeline.data.splits import (
    LeakageError,
    SubjectSplits,
    check_no_overlap,
    check_transfer_leakage,
    load_splits,
    make_splits,
    save_splits,
    select_items,
    splits_from_items,
)
from transforms.errors import InputError

SUBJECTS = [f"sub-{i:03d}" for i in range(40)]
LABELS = [int(i % 4 == 0) for i in range(40)]  # 10 positives, 30 negatives


def test_holdout_split_is_disjoint_complete_and_stratified():
    splits = make_splits(SUBJECTS, LABELS, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert len(splits.test) == 10 and len(splits.val) == 8 and len(splits.train) == 22
    assert sorted(splits.train + splits.val + splits.test) == sorted(SUBJECTS)
    label = dict(zip(SUBJECTS, LABELS))
    assert Counter(label[s] for s in splits.test) == {0: 7, 1: 3} or Counter(label[s] for s in splits.test) == {
        0: 8,
        1: 2,
    }
    assert sum(label[s] for s in splits.val) == 2 and splits.stratified


def test_split_is_deterministic_order_independent_and_seed_dependent():
    a = make_splits(SUBJECTS, LABELS, seed=3)
    b = make_splits(list(reversed(SUBJECTS)), list(reversed(LABELS)), seed=3)
    c = make_splits(SUBJECTS, dict(zip(SUBJECTS, LABELS)), seed=3)
    assert a == b == c
    assert make_splits(SUBJECTS, LABELS, seed=4).test != a.test


def test_kfold_validates_every_subject_exactly_once_and_keeps_strata():
    splits = make_splits(SUBJECTS, LABELS, test_fraction=0.2, n_folds=4, seed=1)
    pool = sorted(splits.train + splits.val)
    assert len(splits.folds) == 4 and not set(pool) & set(splits.test)
    validated = [s for fold in splits.folds for s in fold.val]
    assert sorted(validated) == pool and len(validated) == len(set(validated))
    label = dict(zip(SUBJECTS, LABELS))
    for k, fold in enumerate(splits.folds):
        assert sorted(fold.train + fold.val) == pool
        assert sum(label[s] for s in fold.val) == 2
        assert splits.fold(k).val == fold.val and splits.fold(k).test == splits.test
    assert (splits.train, splits.val) == (splits.folds[0].train, splits.folds[0].val)
    with pytest.raises(ValueError, match="fold must be in 0..3"):
        splits.fold(4)


def test_unlabelled_and_unstratifiable_cohorts_still_split(caplog):
    plain = make_splits(SUBJECTS[:10], None, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert (len(plain.train), len(plain.val), len(plain.test)) == (6, 2, 2) and not plain.stratified
    tiny = make_splits(["a", "b", "c", "d"], [0, 1, 0, 1], val_fraction=0.25, test_fraction=0.25)
    assert (len(tiny.train), len(tiny.val), len(tiny.test)) == (2, 1, 1) and not tiny.stratified
    assert "cannot stratify" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"test_fraction": -0.1}, "test_fraction must be in"),
        ({"n_folds": 1}, "n_folds must be 0"),
        ({"n_folds": 50}, "n_folds=50 needs at least 50"),
        ({"labels": [0, 1]}, "labels has 2 entries for 40 subjects"),
        ({"labels": {"sub-000": 1}}, "labels has no entry for subjects sub-001"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    kwargs = {"labels": LABELS, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_splits(SUBJECTS, **kwargs)


def test_duplicate_subjects_are_refused():
    with pytest.raises(LeakageError, match=r"'subjects' and 'subjects' share 1 subject\(s\): sub-001"):
        make_splits([*SUBJECTS, "sub-001"])


def test_overlap_guard_lists_shared_ids_and_groups():
    check_no_overlap({"train": ["a", "b"], "val": ["c"], "test": ["d"]})
    with pytest.raises(LeakageError) as info:
        check_no_overlap({"train": ["a", "b", "c"], "val": ["c", "d"], "test": ["a", "d", "e"]})
    assert info.value.overlaps == {("train", "val"): ["c"], ("train", "test"): ["a"], ("val", "test"): ["d"]}
    assert "'train' and 'test' share 1 subject(s): a" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(LeakageError):
        SubjectSplits(train=("a", "b"), val=("b",))


def test_transfer_guard_allows_pretraining_on_train_only():
    splits = make_splits(SUBJECTS, LABELS, test_fraction=0.2, n_folds=4, seed=0)
    check_transfer_leakage(splits, splits.train)
    leaked = [splits.val[0], splits.test[0], splits.test[1]]
    with pytest.raises(LeakageError) as info:
        check_transfer_leakage(splits, [*splits.train, *leaked])
    assert info.value.overlaps == {
        ("denoiser training", "classifier val"): [splits.val[0]],
        ("denoiser training", "classifier test"): sorted(splits.test[:2]),
    }
    # Pretraining on fold 0's train leaks into fold 1's validation subjects.
    with pytest.raises(LeakageError, match="classifier val"):
        check_transfer_leakage(splits, splits.folds[0].train, fold=1)


def test_save_and_load_round_trip_and_refuse_bad_files(tmp_path):
    splits = make_splits(SUBJECTS, LABELS, n_folds=3, seed=2)
    path = save_splits(splits, tmp_path / "runs" / "splits.json")
    assert load_splits(path) == splits
    assert json.loads(path.read_text())["folds"][0]["val"] == list(splits.folds[0].val)
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]

    content = json.loads(path.read_text())
    content["test"].append(content["train"][0])
    path.write_text(json.dumps(content))
    with pytest.raises(LeakageError, match="'train' and 'test' share"):
        load_splits(path)
    path.write_text(json.dumps({"train": "sub-1", "val": []}))
    with pytest.raises(InputError, match="train must be a list of subject ID strings"):
        load_splits(path)
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a split file"):
        load_splits(path)
    with pytest.raises(InputError, match="does not exist"):
        load_splits(tmp_path / "missing.json")


def test_split_column_of_a_subjects_csv(subjects_csv):
    items = load_subjects_csv(subjects_csv)
    splits = splits_from_items(items)
    assert splits.train == ("sub-01", "sub-02", "sub-03", "sub-04")
    assert (splits.val, splits.test) == (("sub-05",), ("sub-06",))
    assert [item["subject"] for item in select_items(items, splits, "train")] == list(splits.train)
    with pytest.raises(ValueError, match="'test' subjects have no data: sub-06"):
        select_items(items[:5], splits, "test")
    items[0]["split"] = ""
    with pytest.raises(ValueError, match="subjects without a train/val/test split: sub-01"):
        splits_from_items(items)
