"""Kills: training SIGKILLed mid-epoch and during a checkpoint write, inference SIGKILLed mid-folder."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from tests.faults.corpus import random_volume, write_scan
from tests.faults.harness import (
    HANDLED,
    REPO_ROOT,
    Case,
    FaultCrash,
    FileLoss,
    FileSnapshot,
    Outcome,
    check_nifti_outputs,
    describe_error,
)
from tests.faults.infer import inference_overrides, tiny_weights
from tests.faults.train import matches_uninterrupted, train_tiny

__all__ = [
    "CASES",
]


_KILL_TIMEOUT_S = 240.0


def _child(function: str, *args: Any) -> subprocess.Popen:
    """Start ``tests.faults.kill.<function>(*args)`` in a fresh interpreter (the process the case kills)."""
    code = f"import sys; from tests.faults.kill import {function} as f; f(*{[os.fspath(a) for a in args]!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _kill_when(process: subprocess.Popen, marker: Path) -> None:
    """SIGKILL ``process`` as soon as ``marker`` exists (it stalls there); crash if it ends or times out first."""
    deadline = time.monotonic() + _KILL_TIMEOUT_S
    try:
        while not marker.exists():
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise FaultCrash(
                    f"the child process ended (status {process.returncode}) before the kill: {stderr[-500:]}"
                )
            if time.monotonic() > deadline:
                raise FaultCrash(f"the child process did not reach the kill point in {_KILL_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()
    if process.returncode != -signal.SIGKILL:
        raise FaultCrash(f"the child process ended with status {process.returncode}, not by SIGKILL")


class _StallingL1(torch.nn.Module):
    """L1 loss that, at its ``stall_at``-th call, touches ``marker`` and waits to be killed (mid-epoch)."""

    def __init__(self, marker: str, stall_at: int) -> None:
        super().__init__()
        self.marker, self.stall_at, self.calls = marker, stall_at, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stall_at:
            Path(self.marker).touch()
            time.sleep(_KILL_TIMEOUT_S)
        return torch.nn.functional.l1_loss(pred, target)


def _train_child_mid_epoch(run_dir: str, marker: str) -> None:
    """Child of the mid-epoch kill: 3 epochs of 2 iterations; stalls at iteration 5 (epoch 3, after checkpoint 2)."""
    train_tiny(Path(run_dir), 3, loss=_StallingL1(marker, stall_at=5))


def _train_child_in_checkpoint_write(run_dir: str, marker: str) -> None:
    """Child of the kill during a checkpoint write: ``torch.save`` of epoch 2 writes half its bytes, then stalls."""
    real = torch.save

    def stalling(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if "checkpoint_epoch=2" not in os.fspath(target):
            return real(obj, target, *args, **kwargs)
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        with open(target, "wb") as handle:
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        Path(marker).touch()
        time.sleep(_KILL_TIMEOUT_S)
        return None

    torch.save = stalling
    train_tiny(Path(run_dir), 3)


def _kill_training(child: str, point: str, expected: str) -> Callable[[Path], Outcome]:
    """Kill ``child`` at ``point``; the newest complete checkpoint must be ``expected`` and resume exactly."""

    def check(work: Path) -> Outcome:
        from pipeline.training.checkpoint import find_last_checkpoint, load_checkpoint

        run, marker = work / "killed", work / "stalled"
        _kill_when(_child(child, run, marker), marker)
        last = find_last_checkpoint(run)
        if last is None or last.name != expected:
            raise FileLoss(f"after a kill {point}, the newest checkpoint is {last}, not {expected}")
        try:
            iteration = load_checkpoint(last)["trainer"]["iteration"]
        except Exception as error:
            raise FileLoss(f"{last} does not load after the kill: {describe_error(error)}") from error
        matches_uninterrupted(train_tiny(run, 3).last_checkpoint, 3)
        if list(run.glob(".*.part*")):
            raise FileLoss(f"partial files of the killed write remain in {run}")
        return Outcome(
            HANDLED,
            f"killed {point}; {last.name} (iteration {iteration}) loads; "
            "resume ends with the uninterrupted run's weights",
        )

    return check


def _infer_child(scans: str, out: str, weights: str, marker: str) -> None:
    """Child of the inference kill: the write of the second output stalls half-written until the kill."""
    from pipeline.inference import infer

    real = nib.save

    def stalling(image: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        real(image, target, *args, **kwargs)
        if "sub-02" in os.fspath(target):
            data = Path(target).read_bytes()
            Path(target).write_bytes(data[: len(data) // 2])
            Path(marker).touch()
            time.sleep(_KILL_TIMEOUT_S)

    nib.save = stalling
    infer.denoise_scans(Path(scans), Path(out), Path(weights), "cpu", **inference_overrides())


def _kill_inference(work: Path) -> Outcome:
    from pipeline.inference import infer

    scans, out, marker = work / "scans", work / "denoised", work / "stalled"
    weights = tiny_weights(work / "model.pt")
    sources = [write_scan(scans / f"sub-0{i}.nii.gz", random_volume(seed=i)) for i in (1, 2, 3)]
    _kill_when(_child("_infer_child", scans, out, weights, marker), marker)
    finals = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    if [p.name for p in finals] != [infer.output_file(sources[0], out).name]:
        raise FileLoss(f"after the kill mid-write of sub-02, final names in {out}: {[p.name for p in finals]}")
    check_nifti_outputs(finals)
    first = FileSnapshot(finals)
    summary = infer.denoise_scans(scans, out, weights, "cpu", **inference_overrides())
    statuses = [r.status for r in summary.results]
    if statuses != ["skipped", "done", "done"]:
        raise FaultCrash(f"the re-run gave {statuses}; expected the finished scan skipped and the rest done")
    first.verify()
    reference = infer.denoise_scans(scans, work / "reference", weights, "cpu", **inference_overrides())
    for result in reference.results:
        a = nib.load(result.output).get_fdata()
        b = nib.load(infer.output_file(result.source, out)).get_fdata()
        if not np.allclose(a, b, atol=1e-5):
            raise FileLoss(f"{infer.output_file(result.source, out)} differs from an uninterrupted run's output")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    note = f"; {len(leftovers)} hidden temporary file(s) of the killed write remain" if leftovers else ""
    return Outcome(HANDLED, f"killed mid-write: no partial file under a final name; re-run skipped 1, did 2{note}")


#: The kill cases, in report order.
CASES: tuple[Case, ...] = (
    Case(
        "kill/train-mid-epoch",
        _kill_training("_train_child_mid_epoch", "mid-epoch", "checkpoint_epoch=2.pt"),
        slow=True,
    ),
    Case(
        "kill/train-during-checkpoint-write",
        _kill_training("_train_child_in_checkpoint_write", "during a checkpoint write", "checkpoint_epoch=1.pt"),
        slow=True,
    ),
    Case("kill/inference-mid-folder", _kill_inference, slow=True),
)
