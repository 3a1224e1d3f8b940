"""Faults fed to the bundle workflows (``python -m pipeline.bundle_run``): bad data, bad overrides, bad checkpoints."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tests.faults.corpus import random_volume, write_bad_file, write_scan
from tests.faults.harness import CLEAR, REPO_ROOT, Case, FaultCrash, FileSnapshot, Outcome, cli_line, expect_cli_error
from tests.faults.unsafe import unsafe_file

__all__ = ["CASES", "bundle_args", "bundle_data"]


def bundle_args(work: Path, **extra: Any) -> list[str]:
    configs = [str(REPO_ROOT / "bundle" / "configs" / n) for n in ("common.yaml", "train_denoise.yaml")]
    settings: dict[str, Any] = {
        "bundle_root": str(work / "bundle"), "dataset_dir": str(work / "data"), "num_epochs": 1,
        "patch_size": [16, 16, 16], "num_workers": 0, "network_def::model_depth": 10, "network_def::levels": 2,
    }  # fmt: skip
    settings.update(extra)
    argv = ["--config_file", json.dumps(configs)]
    for key, value in settings.items():
        argv += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return argv


def bundle_data(work: Path, bad_kind: str | None = None) -> None:
    """Five paired subjects in the notes' layout; with ``bad_kind`` every noisy file is bad (whatever the split)."""
    for i in range(1, 6):
        write_scan(work / "data" / "FD" / f"sub-0{i}.nii.gz", random_volume(seed=i))
        noisy = work / "data" / "gaussian15" / f"sub-0{i}.nii.gz"
        if bad_kind is None:
            write_scan(noisy, random_volume(seed=i) + 2.0)
        else:
            noisy.parent.mkdir(parents=True, exist_ok=True)
            write_bad_file(work / "scratch" / str(i), bad_kind).rename(noisy)


def _bundle_train_bad_file(work: Path) -> Outcome:
    from pipeline import bundle_run

    bundle_data(work, "truncated")
    result = expect_cli_error(bundle_run.main, bundle_args(work), [str(work / "data" / "gaussian15")])
    if list((work / "bundle").rglob("*.pt")):
        raise FaultCrash("a checkpoint was written although the training data holds a bad file")
    return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, 'gaussian15')}")


def _bundle_bad_config(key: str, value: Any, mentions: Sequence[str]) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        from pipeline import bundle_run

        bundle_data(work)
        result = expect_cli_error(bundle_run.main, bundle_args(work, **{key: value}), mentions)
        written = [p for p in (work / "bundle").rglob("*.pt")]
        if written:
            raise FaultCrash(f"training started before the bad {key} was refused: {written}")
        return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, mentions[0])}")

    return check


def _bundle_csv_unknown_label(work: Path) -> Outcome:
    from pipeline import bundle_run

    rows = ["subject_id,label,path"]
    for i, label in enumerate(["control", "patient", "control", "AD", "patient", "control"], start=1):
        rows.append(f"s{i},{label},scans/s{i}.nii.gz")
        write_scan(work / "data" / "scans" / f"s{i}.nii.gz", random_volume(seed=i))
    table = work / "data" / "subjects.csv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    configs = [str(REPO_ROOT / "bundle" / "configs" / n) for n in ("common.yaml", "finetune_classifier.yaml")]
    argv = ["--config_file", json.dumps(configs), "--bundle_root", str(work / "bundle")]
    argv += ["--dataset_dir", str(work / "data"), "--init", "scratch", "--num_workers", "0"]
    result = expect_cli_error(bundle_run.main, argv, [str(table), "AD"])
    if list((work / "bundle").rglob("*.pt")):
        raise FaultCrash("the classifier trained although its subjects CSV holds an unknown label")
    return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, 'AD')}")


def _override_typo(work: Path) -> Outcome:
    from pipeline import bundle_run

    bundle_data(work)
    args = bundle_args(work)
    args += ["--num_epoch", "5"]
    result = expect_cli_error(bundle_run.main, args, ["--num_epoch", "num_epochs"], status=2)
    return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, 'num_epoch')}")


def _bundle_resume_from(kind: str) -> Callable[[Path], Outcome]:
    """Bundle training whose newest checkpoint is ``kind``: ``"unsafe"`` (code on unpickling) or ``"truncated"``."""

    def check(work: Path) -> Outcome:
        from pipeline import bundle_run

        bundle_data(work)
        checkpoint = work / "bundle" / "models" / "checkpoint_epoch=1.pt"
        checkpoint.parent.mkdir(parents=True)
        path, marker = unsafe_file(work)
        if kind == "unsafe":
            shutil.copy(path, checkpoint)
        else:
            torch.save({"network": {"w": torch.zeros(1000)}}, checkpoint)
            checkpoint.write_bytes(checkpoint.read_bytes()[:300])
        before = FileSnapshot([checkpoint])
        result = expect_cli_error(bundle_run.main, bundle_args(work), [str(checkpoint)])
        if marker.exists():
            raise FaultCrash("resuming from an unsafe checkpoint ran the code it carries")
        before.verify()
        return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, 'checkpoint_epoch=1.pt')}")

    return check


#: The bundle cases, in report order.
CASES: tuple[Case, ...] = (
    Case("datasets/bundle-csv-unknown-label", _bundle_csv_unknown_label),
    Case("train/bundle-bad-file", _bundle_train_bad_file),
    Case("config/override-key-typo", _override_typo),
    Case(
        "config/bundle-model-depth-19",
        _bundle_bad_config("network_def::model_depth", 19, ["model_depth"]),
    ),
    Case(
        "config/bundle-unknown-network",
        _bundle_bad_config("network_def::_target_", "networks.ResUnet4D", ["network_def", "ResUnet4D"]),
    ),
    Case(
        "config/bundle-unknown-loss",
        _bundle_bad_config("lossfn::_target_", "torch.nn.L3Loss", ["lossfn", "L3Loss"]),
    ),
    Case(
        "config/bundle-patch-below-network-minimum",
        _bundle_bad_config("patch_size", [2, 2, 2], ["patch_size"]),
    ),
    Case("pickle/bundle-resume-checkpoint", _bundle_resume_from("unsafe")),
    Case("train/bundle-truncated-checkpoint-on-resume", _bundle_resume_from("truncated")),
)
