"""Bad configuration values given to the library's builders and command lines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.faults.corpus import write_scan
from tests.faults.harness import CLEAR, Case, FaultCrash, Outcome, cli_line, expect_cli_error, expect_error
from tests.faults.train import train_tiny

__all__ = [
    "CASES",
]


def _config_case(call: Callable[[], Any], mentions: Sequence[str], any_of: Sequence[str]) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        return expect_error(call, ValueError, mentions, any_of)

    return check


def _unknown_loss(work: Path) -> Outcome:
    outcome = expect_error(lambda: train_tiny(work / "run", 1, loss="l3"), ValueError, ["loss", "l3"], ["l1", "mse"])
    if list((work / "run").glob("*.pt")):
        raise FaultCrash("training started before the unknown loss was refused")
    return outcome


def _make_noise_negative() -> None:
    from transforms.noise import make_noise

    make_noise("gaussian", -5)


def _resunet(**kwargs: Any) -> None:
    from networks import ResUnet3D

    ResUnet3D(**kwargs)


def _get_network(name: str) -> None:
    from networks import get_network

    get_network(name)


def _prepare_negative_level(work: Path) -> Outcome:
    from pipeline.data import prepare_noisy as pn

    write_scan(work / "clean" / "sub-01.nii.gz")
    argv = ["--clean-dir", str(work / "clean"), "--out-dir", str(work / "noisy"), "--level", "-5"]
    result = expect_cli_error(pn.main, argv, ["level"], status=2)
    if (work / "noisy").exists() and any((work / "noisy").iterdir()):
        raise FaultCrash("files were written before the negative level was refused")
    return Outcome(CLEAR, f"exit {result.code}: {cli_line(result, 'level')}")


#: The config cases, in report order.
CASES: tuple[Case, ...] = (
    Case(
        "config/negative-noise-level",
        _config_case(_make_noise_negative, ["level"], ["-5"]),
    ),
    Case("config/prepare-noisy-negative-level", _prepare_negative_level),
    Case("config/model-depth-19", _config_case(lambda: _resunet(model_depth=19), ["model_depth", "19"], ["18"])),
    Case(
        "config/patch-below-network-minimum",
        _config_case(lambda: _resunet(levels=4, patch_size=8), ["patch_size", "8"], ["17"]),
    ),
    Case(
        "config/unknown-network",
        _config_case(lambda: _get_network("resunet"), ["resunet"], ["resunet3d"]),
    ),
    Case("config/unknown-loss", _unknown_loss),
)
