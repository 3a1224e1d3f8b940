"""What a run records beside its checkpoints (``run_info.json``) and where it logs (``train.log``)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from pipeline.utils.files import atomic_path
from pipeline.utils.versions import package_versions

__all__ = [
    "RUN_INFO",
    "collect_subjects",
    "package_versions",
    "read_run_info",
    "run_logged",
    "run_logging",
    "write_run_info",
]

RUN_INFO = "run_info.json"
_T = TypeVar("_T")
_LOGGERS = (
    "pipeline",
    "pipeline.training",
    "pipeline.validation",
    "networks",
    "transforms",
    "ignite",
    "monai",
    "py.warnings",
)


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def collect_subjects(data: Any, key: str = "subject") -> list[str]:
    """The sorted distinct subject IDs of a list of dicts, a dataset holding one (``.data``) or a loader of one.

    Items without ``key`` are skipped, so data without subject IDs gives an empty list. A ``DataLoader`` is never
    iterated (that would load and draw): its dataset's items are read.
    """
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    items = getattr(data, "data", data)
    if not isinstance(items, Iterable):
        return []
    subjects = {str(item[key]) for item in items if isinstance(item, Mapping) and key in item}
    return sorted(subjects)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def write_run_info(run_dir: str | os.PathLike, **fields: Any) -> Path:
    """Write (or update) ``run_dir/run_info.json`` atomically.

    Always records ``versions`` (:func:`package_versions`), ``git_commit``, ``command`` and ``written``; the
    caller adds ``seed``, ``config`` (the full resolved configuration), ``train_subjects``, ``val_subjects``...
    Existing fields not given again are kept, so a resumed run adds to the record.

    Args:
        run_dir: the run folder.
        fields: JSON-serialisable values (others are stored as their ``repr``).

    Returns:
        The file's path.
    """
    path = Path(run_dir) / RUN_INFO
    info = read_run_info(run_dir) if path.is_file() else {}
    info.update(_jsonable(fields))
    info["versions"] = package_versions()
    info["git_commit"] = _git_commit()
    info["command"] = sys.argv
    info["written"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``run_info.json`` from a run folder (or the file itself).

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: if it is not valid JSON.
    """
    path = Path(run_dir)
    path = path if path.suffix == ".json" else path / RUN_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} a training run folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from error


@contextlib.contextmanager
def run_logging(
    run_dir: str | os.PathLike, filename: str = "train.log", level: int = logging.INFO, console: bool = False
) -> Iterator[Path]:
    """Log the pipeline's, MONAI's and ignite's messages to ``run_dir/filename`` (appending) during the block.

    Args:
        run_dir: the run folder (created).
        filename: the log file name.
        level: the file's level.
        console: also print the pipeline's and MONAI's handler messages (epoch summaries) to stderr, one short
            line each.

    Yields:
        The log file's path.
    """
    path = Path(run_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > level:
            lg.setLevel(level)
    stream = None
    if console:
        stream = logging.StreamHandler()
        stream.setLevel(logging.INFO)
        stream.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        for name in ("pipeline", "monai.handlers"):
            logging.getLogger(name).addHandler(stream)
    try:
        yield path
    finally:
        for lg, lvl in zip(loggers, previous):
            lg.removeHandler(handler)
            lg.setLevel(lvl)
        if stream is not None:
            for name in ("pipeline", "monai.handlers"):
                logging.getLogger(name).removeHandler(stream)
        handler.close()


def run_logged(run_dir: str | os.PathLike | None, run: Callable[[], _T], filename: str = "train.log") -> _T:
    """Call ``run()`` inside :func:`run_logging`: the bundle configs' way to log a training run like the engines do.

    The project's one logging set-up for a run (``pipeline.training.engines.run_training`` opens the same
    :func:`run_logging` around its trainer). MONAI's ``LogfileHandler`` is not used: it records only the attached
    engine's own logger, not the pipeline's, MONAI's handlers' or ignite's messages (tested in
    ``tests/test_engines.py``).

    Args:
        run_dir: the run folder; ``None`` runs without a log file (the other ranks of a multi-GPU run).
        run: what to call, e.g. a trainer's ``run``.
        filename: the log file name.

    Returns:
        What ``run()`` returns.
    """
    if run_dir is None:
        return run()
    with run_logging(run_dir, filename=filename):
        return run()
