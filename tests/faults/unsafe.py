"""Files that would run code when unpickled: every checkpoint and weight reader must refuse them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.faults.harness import Case, FaultCrash, Outcome, expect_error
from tests.faults.train import train_tiny

__all__ = ["CASES", "unsafe_file"]


class _CodeOnLoad:
    """Unpickling this runs ``open(marker, "w")``: stands for any file that needs arbitrary code to load."""

    def __init__(self, marker: Path) -> None:
        self.marker = os.fspath(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def unsafe_file(work: Path) -> tuple[Path, Path]:
    marker = work / "code-ran"
    path = work / "evil.pt"
    torch.save({"network": _CodeOnLoad(marker), "state_dict": _CodeOnLoad(marker)}, path)
    return path, marker


def _unsafe_case(load: Callable[[Path], Any], errors: Any) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        path, marker = unsafe_file(work)
        outcome = expect_error(lambda: load(path), errors, [str(path)])
        if marker.exists():
            raise FaultCrash(f"loading {path} ran the code it carries")
        return outcome

    return check


def _resume_from_unsafe(work: Path) -> Outcome:
    from pipeline.training.checkpoint import CheckpointError

    run = work / "run"
    run.mkdir()
    path, marker = unsafe_file(work)
    shutil.copy(path, run / "checkpoint_epoch=1.pt")
    outcome = expect_error(lambda: train_tiny(run, 2), CheckpointError, [str(run / "checkpoint_epoch=1.pt")])
    if marker.exists():
        raise FaultCrash("resuming from an unsafe checkpoint ran the code it carries")
    return outcome


def _load_checkpoint(path: Path) -> Any:
    from pipeline.training.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _load_pretrained(path: Path) -> Any:
    from networks import ResUnet3D, load_pretrained

    return load_pretrained(ResUnet3D(model_depth=10, levels=2), path)


def _load_weights(path: Path) -> Any:
    from networks import ResUnet3D
    from pipeline.inference.infer import load_weights

    return load_weights(ResUnet3D(model_depth=10, levels=2), path)


def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    from networks.pretrained import PretrainedWeightsError
    from pipeline.training.checkpoint import CheckpointError

    return (CheckpointError, PretrainedWeightsError)


#: The unsafe cases, in report order.
CASES: tuple[Case, ...] = (
    Case("pickle/checkpoint", _unsafe_case(_load_checkpoint, _checkpoint_errors())),
    Case("pickle/pretrained", _unsafe_case(_load_pretrained, _checkpoint_errors())),
    Case("pickle/inference-weights", _unsafe_case(_load_weights, _checkpoint_errors())),
    Case("pickle/resume-checkpoint", _resume_from_unsafe),
)
