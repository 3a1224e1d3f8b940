"""Checkpoints that survive kills and full disks, and finding the one to resume from.

Two defects of the stock handlers are fixed here (ignite 0.5.5, MONAI 1.6.1):

1. MONAI's ``CheckpointSaver`` builds its ``DiskSaver`` with ``atomic=False``: ``torch.save`` writes straight to
   the final name, so a kill or a full disk mid-write leaves a truncated checkpoint under that name.
2. ignite's ``Checkpoint`` deletes the oldest kept file *before* writing the new one, so with ``n_saved=1`` a
   failing write leaves no checkpoint at all.

:class:`AtomicDiskSaver` writes through :func:`pipeline.utils.files.atomic_path` (temporary file in the same folder,
fsync, ``os.replace``) and defers deletions until the next write has succeeded. :class:`AtomicCheckpointSaver` is
MONAI's ``CheckpointSaver`` with that saver in every slot, the same constructor, plus ``state_dict`` (so a resumed
run keeps its best-metric record) and a last checkpoint when training completes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from pipeline.errors import CheckpointError
from pipeline.runtime.weights import load_checkpoint, load_network_state
from pipeline.utils.files import atomic_path

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "find_last_checkpoint",
    "load_checkpoint",
    "load_network_state",
    "remove_partial_files",
]

logger = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"_epoch=(\d+)\.pt$")


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler: atomic writes, deletions only after the next successful write.

    Args:
        dirname: folder of the checkpoints (created if missing).
        filename: a fixed file name overriding ignite's (e.g. ``model.pt`` for the best network).
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.dirname.mkdir(parents=True, exist_ok=True)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` atomically, then delete the files ignite asked to remove earlier.

        Raises:
            CheckpointError: when the write fails (e.g. disk full); the previous checkpoints are untouched.
        """
        name = self.filename or filename
        path = self.dirname / name
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
                os.chmod(tmp, 0o644)
        except Exception as error:
            raise CheckpointError(
                f"could not write checkpoint {path}: {type(error).__name__}: {error}. The previous checkpoints in "
                f"{self.dirname} are intact (is the disk full?)."
            ) from error
        pending, self._pending_removal = self._pending_removal, []
        for old in pending:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        """Queue ``filename`` for deletion after the next successful write (ignite calls this before writing)."""
        self._pending_removal.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with atomic writes, safe rotation, resumable state and a last checkpoint.

    Takes exactly ``monai.handlers.CheckpointSaver``'s arguments (``save_dir``, ``save_dict``, ``save_interval``,
    ``n_saved``, ``save_key_metric``, ``key_metric_filename``, ...) and:

    - writes every file through :class:`AtomicDiskSaver`;
    - with ``save_interval > 0`` at epoch level, also saves when the run completes (early stop or last epoch) if
      that epoch was not saved yet, so the newest ``checkpoint_epoch=K.pt`` is always the run's end;
    - ``save_final`` saves on completion only, never on an exception (the weights could be the ones that caused it);
    - ``state_dict``/``load_state_dict`` carry the best-metric record, so put the best-metric saver in the
      trainer's ``save_dict`` and a resumed run does not overwrite a better ``model.pt`` with a worse one.

    Filenames: ``{file_prefix}_checkpoint_epoch=K.pt`` (``checkpoint_epoch=K.pt`` without prefix) and the fixed
    ``key_metric_filename`` or ``checkpoint_key_metric=V.pt``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed)

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer or evaluator (see MONAI's ``CheckpointSaver.attach``)."""
        if self._name is None:
            self.logger = engine.logger
        if self._final_checkpoint is not None:
            engine.add_event_handler(Events.COMPLETED, self.completed)
        if self._key_metric_checkpoint is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.metrics_completed)
        if self._interval_checkpoint is not None:
            if self.epoch_level:
                engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.interval_completed)
                engine.add_event_handler(Events.COMPLETED, self._save_last)
            else:
                engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.interval_completed)

    def _save_last(self, engine: Engine) -> None:
        saved = self._interval_checkpoint._saved  # type: ignore[union-attr]
        if engine.state.epoch > 0 and (not saved or saved[-1].priority != engine.state.epoch):
            self.interval_completed(engine)

    def state_dict(self) -> dict[str, Any]:
        """The best-metric record (empty without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return {}
        return self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`'s output (ignored when empty)."""
        if state_dict and self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict(state_dict)


def find_last_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "") -> Path | None:
    """The checkpoint of the highest epoch in ``ckpt_dir`` (``[prefix_]checkpoint_epoch=K.pt``), or ``None``.

    Temporary files of interrupted writes (hidden ``.…part.pt`` names) never match.

    Args:
        ckpt_dir: the folder.
        prefix: the savers' ``file_prefix``.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    head = f"{prefix}_checkpoint" if prefix else "checkpoint"
    found = []
    for path in folder.glob(f"{head}_epoch=*.pt"):
        match = _EPOCH_RE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def remove_partial_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by writes that a kill interrupted; returns what was removed."""
    folder = Path(ckpt_dir)
    removed = sorted(folder.glob(".*.part.pt")) if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
        logger.info("removed the partial file of an interrupted write: %s", path)
    return removed
