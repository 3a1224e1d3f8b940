"""The errors the pipeline raises for its users: each names the file, key or subject at fault.

Input problems found while reading a scan are :class:`transforms.errors.InputError` and bad pretrained
weights :class:`networks.pretrained.PretrainedWeightsError`; both are re-exported here so callers catch
every user-facing error from one module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from networks.pretrained import PretrainedWeightsError
from transforms.errors import InputError

if TYPE_CHECKING:
    from pipeline.inference.results import InferenceSummary

__all__ = [
    "CheckpointError",
    "ConfigComponentError",
    "ConfigOverrideError",
    "InputError",
    "LeakageError",
    "ModelConfigMismatchError",
    "NonFiniteLossError",
    "OutputFolderError",
    "PretrainedWeightsError",
    "NOT_SET",
    "ScanFailuresError",
    "UnsafeModelCardError",
]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the cause."""


class UnsafeModelCardError(CheckpointError):
    """A model card (``model.json``, or the one embedded in a ``.ts`` file) holds more than data.

    A card is applied as MONAI config, which runs ``$`` expressions and calls any ``_target_``: one that names a
    network off the allow-list, carries MONAI syntax or a key the schema does not know
    (:mod:`pipeline.runtime.card_schema`) is refused before any of it is used.

    Args:
        card: the card file.
        problems: ``(key path, why)`` for each problem.
    """

    def __init__(self, card: str | os.PathLike, problems: Sequence[tuple[str, str]]) -> None:
        self.card = os.fspath(card)
        self.problems = [(str(key), str(why)) for key, why in problems]
        shown = "; ".join(f"{key}: {why}" for key, why in self.problems[:8])
        more = f" (and {len(self.problems) - 8} more)" if len(self.problems) > 8 else ""
        super().__init__(
            f"the model card {self.card} was refused, as it could run code or holds what a card may not: {shown}{more}."
            " A card is data only. If you trust whoever made it, run with --trust-card (trust_model_card=true)."
        )

    def __reduce__(self):
        return (type(self), (self.card, self.problems))


class _NotSet:
    def __repr__(self) -> str:
        return "NOT_SET"


#: A config value that is absent (in a :class:`ModelConfigMismatchError` difference).
NOT_SET: Any = _NotSet()


def _short(value: Any) -> str:
    text = "(not set)" if value is NOT_SET else json.dumps(value, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


class ModelConfigMismatchError(ValueError):
    """An explicitly given config value differs from the one the trained weights carry.

    Args:
        card: the card file.
        differences: ``(config id, given value, the weights' value)`` for each difference (:data:`NOT_SET` for a
            value the card lacks).
    """

    def __init__(self, card: str | os.PathLike, differences: Sequence[tuple[str, Any, Any]]) -> None:
        self.card = os.fspath(card)
        self.differences = list(differences)
        lines = "; ".join(
            f"{key}: given {_short(given)}, the weights' config has {_short(own)}" for key, given, own in differences
        )
        super().__init__(
            f"the configuration given does not match the one the weights were trained with ({self.card}): {lines}. "
            "Leave these settings out (the weights carry their own), or use weights trained with them."
        )


class LeakageError(ValueError):
    """Subject IDs shared by groups that must be disjoint (e.g. train and test), which would leak data.

    Args:
        overlaps: ``{(group_a, group_b): [shared subject IDs]}``, only for pairs that overlap.

    Attributes:
        overlaps: as given, with the IDs sorted.
    """

    def __init__(self, overlaps: Mapping[tuple[str, str], Iterable[str]]) -> None:
        self.overlaps = {pair: sorted(ids) for pair, ids in overlaps.items()}
        parts = []
        for (a, b), ids in self.overlaps.items():
            shown = ", ".join(ids[:20]) + (f" (and {len(ids) - 20} more)" if len(ids) > 20 else "")
            parts.append(f"{a!r} and {b!r} share {len(ids)} subject(s): {shown}")
        super().__init__("data leakage: " + "; ".join(parts))

    def __reduce__(self):
        return (type(self), (self.overlaps,))


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss was NaN or infinite; the message names the epoch and iteration."""


class OutputFolderError(ValueError):
    """The output folder holds files that the demo did not write (the demo never deletes those)."""


class ConfigOverrideError(KeyError):
    """An override names a config key that does not exist (a typo would otherwise be silently added).

    Args:
        unknown: ``{override key: [closest existing keys]}``.
        config_files: the configs the keys were looked up in.
    """

    def __init__(self, unknown: Mapping[str, Sequence[str]], config_files: Sequence[str]) -> None:
        self.unknown = {key: list(close) for key, close in unknown.items()}
        self.config_files = list(config_files)
        lines = []
        for key, close in self.unknown.items():
            hint = f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""
            lines.append(f"--{key}{hint}")
        super().__init__(
            f"unknown config key(s) {'; '.join(lines)}: not defined in {', '.join(self.config_files)}. "
            "Check the spelling; list the keys with `python -m pipeline.bundle_run --config_file ... --list_keys`."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigComponentError(ValueError):
    """A config component (a section with a ``_target_``) cannot be built: unknown class or bad arguments.

    Args:
        message: the problem, naming the config key(s) and the ``_target_``.
    """


class ScanFailuresError(RuntimeError):
    """Some scans of a batch could not be processed (the others were); carries the :class:`InferenceSummary`."""

    def __init__(self, summary: InferenceSummary) -> None:
        self.summary = summary
        super().__init__(summary.report())
