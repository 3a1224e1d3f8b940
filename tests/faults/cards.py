"""Hostile model cards and datalists (issue 27): files from someone else that would run code if applied as config.

Each card's MONAI syntax would create a marker file; the case requires a clear, named error, no marker, and the
weights, the card and earlier outputs kept byte for byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.faults.corpus import random_volume, write_scan
from tests.faults.harness import (
    CLEAR,
    Case,
    FaultCrash,
    FileSnapshot,
    Outcome,
    cli_line,
    expect_cli_error,
    expect_error,
)
from tests.faults.infer import tiny_weights

__all__ = ["CASES"]


def _touch(marker: Path) -> str:
    return f"$__import__('pathlib').Path({os.fspath(marker)!r}).touch()"


def _model(work: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Tiny weights with the card training writes; returns ``(weights, marker, card)``."""
    from networks import ResUnet3D
    from pipeline.runtime.model_card import card_path, write_model_card
    from tests.faults.infer import _TINY_DENOISER

    weights = tiny_weights(work / "model" / "model.pt")
    network = ResUnet3D(**{k: tuple(v) if isinstance(v, list) else v for k, v in _TINY_DENOISER.items()})
    write_model_card(weights, network, "denoise", config={"patch_size": [24, 24, 24], "percentile_upper": 99.5})
    return weights, work / "code-ran", json.loads(card_path(weights).read_text())


def _no_marker(marker: Path, outcome: Outcome) -> Outcome:
    if marker.exists():
        raise FaultCrash(f"the hostile file ran code ({marker} was created)")
    return outcome


def _card_case(key: str, hostile: Callable[[dict, Path], dict]) -> Callable[[Path], Outcome]:
    """The command line fed weights whose card is ``hostile(card, marker)``: exit 1 naming the card and ``key``."""

    def check(work: Path) -> Outcome:
        from pipeline.inference import infer
        from pipeline.runtime.model_card import card_path

        weights, marker, card = _model(work)
        card_path(weights).write_text(json.dumps(hostile(card, marker)))
        scan = write_scan(work / "scans" / "sub-01.nii.gz", random_volume(seed=1))
        out = work / "out"
        earlier = write_scan(infer.output_file("earlier.nii.gz", out), random_volume(seed=2))
        kept = FileSnapshot([weights, card_path(weights), scan, earlier])
        argv = ["denoise", str(scan), "--output", str(out), "--weights", str(weights), "--device", "cpu"]
        result = expect_cli_error(infer.main, argv, [str(card_path(weights)), key], status=1)
        kept.verify()
        return _no_marker(marker, Outcome(CLEAR, cli_line(result, "refused")[:300]))

    return check


def _torchscript(work: Path) -> Outcome:
    from pipeline.errors import UnsafeModelCardError
    from pipeline.runtime.model_card import CARD_NAME_IN_TORCHSCRIPT, load_torchscript

    _, marker, card = _model(work)
    card["network_def"]["_target_"] = _touch(marker) + " or __import__('networks').ResUnet3D"
    path = work / "hostile.ts"
    torch.jit.save(torch.jit.script(torch.nn.Conv3d(1, 1, 1)), os.fspath(path), _extra_files={
        CARD_NAME_IN_TORCHSCRIPT: json.dumps(card)
    })  # fmt: skip
    outcome = expect_error(lambda: load_torchscript(path), UnsafeModelCardError, [str(path), "network_def::_target_"])
    return _no_marker(marker, outcome)


def _datalist(work: Path) -> Outcome:
    from pipeline.inference.infer import collect_scans
    from transforms.errors import InputError

    marker = work / "code-ran"
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": _touch(marker) + " or 'x.nii.gz'"}]}))
    outcome = expect_error(lambda: collect_scans(datalist), InputError, [str(datalist), "missing"])
    return _no_marker(marker, outcome)


def _set(section: str, key: str, value: Callable[[Path], Any]) -> Callable[[dict, Path], dict]:
    def change(card: dict, marker: Path) -> dict:
        card.setdefault(section, {})[key] = value(marker)
        return card

    return change


#: The hostile-card cases, in report order.
CASES: tuple[Case, ...] = (
    Case(
        "card/expression-target",
        _card_case(
            "network_def::_target_",
            _set("network_def", "_target_", lambda m: _touch(m) + " or __import__('networks').ResUnet3D"),
        ),
    ),
    Case(
        "card/os-system-target",
        _card_case(
            "network_def::_target_",
            lambda c, m: {**c, "network_def": {"_target_": "os.system", "command": f"touch {m}"}},
        ),
    ),
    Case(
        "card/nested-expression", _card_case("network_def::act::0", _set("network_def", "act", lambda m: [_touch(m)]))
    ),
    Case("card/requires-key", _card_case("_requires_", _set("network_def", "_requires_", _touch))),
    Case("card/expression-argument", _card_case("patch_size", lambda c, m: {**c, "patch_size": _touch(m)})),
    Case("card/torchscript-embedded", _torchscript),
    Case("card/datalist-expression", _datalist),
)
