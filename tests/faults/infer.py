"""Faults fed to inference: batches with bad scans, unreadable files, missing weights, a full disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from tests.faults.corpus import (
    BAD_FILES,
    VALID_ODDITIES,
    random_volume,
    shared_dir,
    unprivileged,
    world_writable_dir,
    write_bad_file,
    write_scan,
)
from tests.faults.data import BATCH_BAD
from tests.faults.harness import (
    CLEAR,
    HANDLED,
    Case,
    FaultCrash,
    FileLoss,
    FileSnapshot,
    Outcome,
    check_nifti_outputs,
    cli_line,
    disk_full,
    expect_cli_error,
    partial_files,
)

__all__ = ["CASES", "inference_overrides", "tiny_weights"]


# every architecture key of the bundle's network_def, so the weights built here fit whatever common.yaml's default is
_TINY_DENOISER = {
    "model_depth": 10,
    "levels": 2,
    "block_inplanes": [8, 16, 32, 64],
    "conv1_t_size": 3,
    "conv1_t_stride": 1,
    "residual_output": True,
    "norm": "instance",  # the bundle's default
}


def inference_overrides() -> dict[str, Any]:
    overrides: dict[str, Any] = {f"network_def::{k}": v for k, v in _TINY_DENOISER.items()}
    overrides.update({"patch_size": [24, 24, 24], "show_progress": False, "num_workers": 0, "sw_batch_size": 2})
    return overrides


def tiny_weights(path: Path) -> Path:
    from networks import ResUnet3D
    from pipeline.utils.seed import seed_everything

    seed_everything(0)
    net = ResUnet3D(**{k: tuple(v) if isinstance(v, list) else v for k, v in _TINY_DENOISER.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    path.chmod(0o644)
    return path


def _cli_overrides() -> list[str]:
    return [arg for key, value in inference_overrides().items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def _infer_batch(work: Path) -> Outcome:
    from pipeline.inference import infer

    scans, out = work / "scans", work / "denoised"
    weights = tiny_weights(work / "model.pt")
    write_scan(scans / "good-1.nii.gz", random_volume(seed=1))
    kept = FileSnapshot(
        [write_scan(infer.output_file("good-1.nii.gz", out), random_volume(seed=9))]
    )  # an earlier result
    write_scan(scans / "good-2.nii.gz", random_volume(seed=2))
    bad = [write_bad_file(scans, k) for k in [*BATCH_BAD, "folder-named-like-a-scan", "unsupported-extension"]]
    fine = [write_bad_file(scans, k) for k in VALID_ODDITIES] + [scans / "good-2.nii.gz"]
    inputs = [scans, bad[-1]]  # the folder, and the .png named explicitly (a folder listing skips non-scans)
    summary = infer.denoise_scans(inputs, out, weights, "cpu", **inference_overrides())
    failed = {Path(r.source).name for r in summary.failed}
    if failed != {p.name for p in bad}:
        raise FaultCrash(f"reported {sorted(failed)}; expected exactly {sorted(p.name for p in bad)}")
    done = {Path(r.source).name for r in summary.results if r.status == "done"}
    skipped = [Path(r.source).name for r in summary.results if r.status == "skipped"]
    if done != {p.name for p in fine} or skipped != ["good-1.nii.gz"]:
        raise FaultCrash(f"done {sorted(done)}, skipped {skipped}")
    kept.verify()
    outputs = [infer.output_file(p, out) for p in fine]
    check_nifti_outputs(outputs)
    for source, output in zip(fine, outputs):
        a, b = nib.load(source), nib.load(output)
        if a.shape != b.shape or not np.allclose(a.affine, b.affine):
            raise FileLoss(f"{output} is not on the grid of {source}")
    written = {p.name for p in out.iterdir()}
    reports = {n for n in written if n.endswith("_denoised.json")}  # the guard's sidecars, where it ran
    if any(n.removesuffix(".json") + ".nii.gz" not in written for n in reports):
        raise FileLoss(f"a guard report without its output in {out}: {sorted(written)}")
    if partial_files(out) or len(written - reports) != len(fine) + 1:
        raise FileLoss(f"unexpected files in {out}: {sorted(written)}")
    argv = ["denoise", str(scans), str(bad[-1]), "--output", str(out), "--weights", str(weights), "--device", "cpu"]
    result = expect_cli_error(infer.main, argv + _cli_overrides(), [str(p) for p in bad], status=1)
    kept.verify()
    return Outcome(
        HANDLED,
        f"{len(bad)} bad scans reported by name, {len(fine)} denoised on their own grid, 1 kept; exit "
        f"{result.code}: {cli_line(result, 'truncated')}",
    )


def _classify_batch(work: Path) -> Outcome:
    import csv

    from pipeline.inference import infer
    from pipeline.training.classify import build_classifier
    from pipeline.utils.seed import seed_everything

    scans, table = work / "scans", work / "classified" / "predictions.csv"
    seed_everything(0)
    weights = work / "classifier.pt"
    # every encoder key of the bundle's common.yaml, so the weights fit whatever its default is
    encoder = {"model_depth": 10, "block_inplanes": [8, 16, 32, 64], "conv1_t_size": 3, "conv1_t_stride": 1}
    torch.save(build_classifier("scratch", num_classes=2, **encoder).state_dict(), weights)
    fine = [write_scan(scans / f"good-{i}.nii.gz", random_volume(seed=i)) for i in (1, 2)]
    fine += [write_bad_file(scans, k) for k in VALID_ODDITIES]
    bad = [write_bad_file(scans, k) for k in [*BATCH_BAD, "folder-named-like-a-scan"]]
    overrides = {**encoder, "input_size": [24, 24, 24], "show_progress": False, "num_workers": 0}
    summary = infer.classify_scans(scans, table, weights, "cpu", **overrides)
    failed = {Path(r.source).name for r in summary.failed}
    if failed != {p.name for p in bad}:
        raise FaultCrash(f"reported {sorted(failed)}; expected exactly {sorted(p.name for p in bad)}")
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if sorted(Path(row["file"]).name for row in rows) != sorted(p.name for p in fine):
        raise FileLoss(f"{table} holds rows for {[row['file'] for row in rows]}, not the readable scans")
    for row in rows:
        total = float(row["prob_control"]) + float(row["prob_patient"])
        if abs(total - 1.0) > 1e-4 or row["prediction"] not in ("control", "patient"):
            raise FileLoss(f"{table}: incomplete or invalid row {row}")
    if partial_files(table.parent) or sorted(p.name for p in table.parent.iterdir()) != [table.name]:
        raise FileLoss(f"unexpected files beside {table}: {sorted(p.name for p in table.parent.iterdir())}")
    argv = ["classify", str(scans), "--output", str(table), "--weights", str(weights), "--device", "cpu"]
    argv += [arg for k, v in overrides.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    result = expect_cli_error(infer.main, argv, [str(p) for p in bad], status=1)
    return Outcome(
        HANDLED,
        f"{len(bad)} bad scans reported by name, {len(rows)} rows of probabilities; exit {result.code}: "
        + cli_line(result, "truncated"),
    )


def _infer_unreadable(work: Path) -> Outcome:
    from pipeline.inference import infer, runner

    with world_writable_dir() as shared:
        scans, out = shared_dir(shared / "scans"), shared_dir(shared / "denoised")
        weights = tiny_weights(shared / "model.pt")
        write_scan(scans / "good.nii.gz")
        path = write_bad_file(scans, "unreadable")
        # the configs travel with the case: `nobody` may not traverse the checkout (e.g. a clone in a mode-700 dir)
        configs = [
            Path(shutil.copy(c, shared_dir(shared / "configs"))) for c in runner._bundle_configs("inference.yaml")
        ]
        with unprivileged():
            summary = infer.denoise_scans(
                scans, out, weights, "cpu", config_files=[os.fspath(c) for c in configs], **inference_overrides()
            )
        reasons = [r.reason for r in summary.failed if r.source == str(path)]
        if not reasons or summary.count("done") != 1:
            raise FaultCrash(f"results {summary.results}")
        if not any(w in reasons[0].lower() for w in BAD_FILES["unreadable"][2]):
            raise FaultCrash(f"{path}: the reason {reasons[0]!r} does not say it cannot be read")
        check_nifti_outputs([infer.output_file("good.nii.gz", out)])
        return Outcome(HANDLED, f"{path}: {reasons[0]}; the readable scan was denoised")


def _infer_datalist_nowhere(work: Path) -> Outcome:
    from pipeline.inference import infer

    weights = tiny_weights(work / "model.pt")
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": "nowhere/sub-01.nii.gz"}]}))
    argv = ["denoise", str(datalist), "--output", str(work / "out"), "--weights", str(weights), "--device", "cpu"]
    result = expect_cli_error(infer.main, argv + _cli_overrides(), [str(datalist), "sub-01.nii.gz"])
    return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, 'error')}")


def _infer_missing_weights(work: Path) -> Outcome:
    from pipeline.inference import infer

    write_scan(work / "scans" / "sub-01.nii.gz")
    weights = work / "no-such-model.pt"
    argv = ["denoise", str(work / "scans"), "--output", str(work / "out"), "--weights", str(weights)]
    result = expect_cli_error(infer.main, argv + _cli_overrides(), [str(weights)])
    return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, 'error')}")


def _infer_disk_full(work: Path) -> Outcome:
    from pipeline.inference import infer

    scans, out = work / "scans", work / "denoised"
    weights = tiny_weights(work / "model.pt")
    for i in (1, 2, 3):
        write_scan(scans / f"sub-0{i}.nii.gz", random_volume(seed=i))
        write_scan(infer.output_file(f"sub-0{i}.nii.gz", out), random_volume(seed=10 + i))  # an earlier run's outputs
    before = FileSnapshot([infer.output_file("sub-02.nii.gz", out)])
    with disk_full(nib, "save", "sub-02"):
        summary = infer.denoise_scans(scans, out, weights, "cpu", overwrite=True, **inference_overrides())
    reasons = [r.reason for r in summary.failed if Path(r.source).name == "sub-02.nii.gz"]
    if not reasons or "space" not in reasons[0].lower() or summary.count("done") != 2:
        raise FaultCrash(f"a full disk while writing sub-02 gave {summary.results}")
    before.verify()
    if sorted(out.iterdir()) != [infer.output_file(f"sub-0{i}.nii.gz", out) for i in (1, 2, 3)]:
        raise FileLoss(f"a partial file was left in {out}: {sorted(p.name for p in out.iterdir())}")
    check_nifti_outputs(sorted(out.iterdir()))
    return Outcome(HANDLED, f"sub-02: {reasons[0]}; previous output intact, the others rewritten")


#: The infer cases, in report order.
CASES: tuple[Case, ...] = (
    Case("infer/batch-with-bad-files", _infer_batch),
    Case("infer/classify-batch-with-bad-files", _classify_batch),
    Case("infer/unreadable", _infer_unreadable),
    Case("infer/datalist-points-nowhere", _infer_datalist_nowhere),
    Case("infer/missing-weights", _infer_missing_weights),
    Case("infer/disk-full", _infer_disk_full),
)
