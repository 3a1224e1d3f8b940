"""Data leakage: split groups, split files, a classifier tested on the denoiser's training subjects, and one image
under two subject IDs (the study's guard compares voxels, not IDs)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.faults.harness import Case, FaultCrash, Outcome, expect_error

__all__ = [
    "CASES",
]


def _leak_split_groups(work: Path) -> Outcome:
    from pipeline.data.splits import LeakageError, check_no_overlap

    groups = {"train": ["s1", "s2", "s3"], "val": ["s3", "s4"], "test": ["s5", "s1"]}
    return expect_error(lambda: check_no_overlap(groups), LeakageError, ["s1", "s3", "train", "val", "test"])


def _leak_split_file(work: Path) -> Outcome:
    from pipeline.data.splits import LeakageError, load_splits, make_splits, save_splits

    path = save_splits(make_splits([f"s{i}" for i in range(10)], seed=0), work / "splits.json")
    content = json.loads(path.read_text())
    content["test"] = content["test"] + [content["train"][0]]
    path.write_text(json.dumps(content))
    return expect_error(lambda: load_splits(path), LeakageError, [content["train"][0]])


def _leak_denoiser_to_classifier(work: Path) -> Outcome:
    from pipeline.data.splits import LeakageError
    from pipeline.training.classify import finetune_classifier
    from pipeline.training.runinfo import write_run_info

    denoiser_run = work / "denoiser"
    write_run_info(denoiser_run, train_subjects=["s1", "s2", "s3"], val_subjects=["s4"])
    data = {i: {"image": torch.rand(1, 16, 16, 16), "label": i % 2, "subject": f"s{i}"} for i in range(1, 9)}
    # the classifier may train on the denoiser's subjects, never test on them: s3 is the leak
    train, val, test = [data[1], data[2]], [data[5], data[6]], [data[3], data[7]]

    def finetune() -> None:
        from networks import ResUnet3D

        network = ResUnet3D(model_depth=10, levels=2).classifier(2)
        finetune_classifier(
            train, val, network, work / "classifier", test_data=test, denoiser_run=denoiser_run, max_epochs=1,
            progress=False, device="cpu",
        )  # fmt: skip

    outcome = expect_error(finetune, LeakageError, ["s3", "denoiser training", "test"])
    if list((work / "classifier").glob("*.pt")):
        raise FaultCrash("the classifier trained before the leakage was refused")
    return outcome


def _leak_same_voxels_other_id(work: Path) -> Outcome:
    import nibabel as nib
    import numpy as np

    from pipeline.errors import LeakageError
    from pipeline.study.data import check_distinct_volumes

    volumes = np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)
    paths = []
    for name, volume in zip(("den-0", "den-1", "eval-0"), volumes):
        paths.append(str(work / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(volume, np.eye(4)), paths[-1])
    copy = str(work / "eval-1.nii.gz")  # den-0's voxels under a held-out ID and another header
    nib.save(nib.Nifti1Image(volumes[0], np.diag([2.0, 2.0, 2.0, 1.0])), copy)
    groups = {"denoiser training": paths[:2], "held out": [paths[2], copy]}
    return expect_error(lambda: check_distinct_volumes(groups), LeakageError, ["den-0", "eval-1", "held out"])


#: The leakage cases, in report order.
CASES: tuple[Case, ...] = (
    Case("leakage/train-val-test-overlap", _leak_split_groups),
    Case("leakage/splits-file-overlap", _leak_split_file),
    Case("leakage/denoiser-train-vs-classifier-test", _leak_denoiser_to_classifier),
    Case("leakage/same-voxels-other-id", _leak_same_voxels_other_id),
)
