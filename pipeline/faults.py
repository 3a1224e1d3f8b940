r"""The fault suite: bad input, bad configuration, kills, full disks, unsafe pickles and data leakage.

Each :class:`Case` feeds one fault to one entry point of the pipeline (the scan loader, the dataset builders,
``prepare_noisy``, training, inference, the command lines, the checkpoint readers, the split guards) in a fresh
folder, and checks two things:

* the fault ends in a **clear error** -- the documented exception (:class:`~transforms.errors.InputError`,
  ``ValueError``, :class:`~pipeline.splits.LeakageError`, :class:`~pipeline.checkpoint.CheckpointError`...) whose
  message names the file or the parameter; on the command line a one-line message without a traceback and a
  non-zero exit status -- or is **handled** correctly (a batch reports the bad file and processes the rest; an
  unusual but valid file such as int16 data with ``scl_slope`` loads to the right values);
* **no file is lost or corrupted**: files written before the fault keep their bytes, every file under a final
  name is complete (it loads), and an interrupted run resumes to the same result as an uninterrupted one.

Anything else is a **crash**: an exception that escaped (a library stack trace), an error that does not name
the file or parameter, or bad input that was silently accepted or skipped.

The test corpus is written by the cases themselves (:func:`write_bad_file`): a truncated ``.nii.gz``, a file
with the wrong magic, an empty file, a folder named like a scan, 2-D, 4-D and 5-D images, a zero-length axis,
NaN and Inf voxels, an unsupported extension, an unreadable file, and three valid oddities (an all-zero volume,
int16 data with ``scl_slope``, extreme anisotropic voxels). An unreadable file is a real one: mode ``000``, and
when the suite runs as root (which ignores file modes) the read happens with the effective user ``nobody``.

Command line (from the repository root)::

    python -m pipeline.faults            # every case; one line per case, then the summary
    python -m pipeline.faults -k infer   # the cases whose name contains "infer"
    python -m pipeline.faults --fast     # leave out the kill tests (subprocesses)

It exits with status 1 when any case crashed or lost a file. The pytest suite ``tests/test_faults*.py`` runs the
same cases.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gzip
import hashlib
import io
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from transforms.errors import InputError

__all__ = [
    "BAD_FILES",
    "CASES",
    "CLEAR",
    "CRASH",
    "HANDLED",
    "LOST",
    "VALID_ODDITIES",
    "Case",
    "FaultCrash",
    "FaultReport",
    "FileLoss",
    "FileSnapshot",
    "Outcome",
    "expect_cli_error",
    "expect_error",
    "main",
    "run_case",
    "run_cases",
    "unprivileged",
    "world_writable_dir",
    "write_bad_file",
    "write_scan",
]

logger = logging.getLogger(__name__)

#: Outcome statuses: the two good ones and the two that fail the suite.
CLEAR, HANDLED, CRASH, LOST = "clear error", "handled", "CRASH", "LOST"

REPO_ROOT = Path(__file__).resolve().parents[1]
_SHAPE = (20, 20, 20)
_AFFINE = np.array([[1.2, 0.0, 0.0, -12.0], [0.0, 1.0, 0.0, 8.0], [0.0, 0.0, 2.0, 30.0], [0.0, 0.0, 0.0, 1.0]])
_KILL_TIMEOUT_S = 240.0


# ----------------------------------------------------------------------------------------------- outcomes
class FaultCrash(AssertionError):
    """The fault did not end in a clear error (escaped exception, vague message, or silently accepted input)."""


class FileLoss(AssertionError):
    """A file written before the fault changed or vanished, or a file under a final name is incomplete."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one case found.

    Attributes:
        status: :data:`CLEAR`, :data:`HANDLED`, :data:`CRASH` or :data:`LOST`.
        detail: the error message the user saw, or what was checked, or what went wrong.
    """

    status: str
    detail: str

    @property
    def ok(self) -> bool:
        """True for a clear error or a correctly handled fault."""
        return self.status in (CLEAR, HANDLED)


@dataclasses.dataclass(frozen=True)
class Case:
    """One fault fed to one entry point.

    Attributes:
        name: ``area/fault``, e.g. ``load/truncated``.
        check: ``check(work_dir) -> Outcome``; raises :class:`FaultCrash` / :class:`FileLoss` on failure.
        slow: runs subprocesses that are killed (left out by ``--fast``).
    """

    name: str
    check: Callable[[Path], Outcome]
    slow: bool = False


@dataclasses.dataclass
class FaultReport:
    """The outcomes of a run of cases, in order.

    Attributes:
        outcomes: ``(case name, outcome)`` pairs.
    """

    outcomes: list[tuple[str, Outcome]] = dataclasses.field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of cases with ``status``."""
        return sum(outcome.status == status for _, outcome in self.outcomes)

    @property
    def ok(self) -> bool:
        """True when no case crashed or lost a file."""
        return self.count(CRASH) == 0 and self.count(LOST) == 0

    def summary(self) -> str:
        """``N cases tried: C clear errors, H handled, K crashes, L files lost or corrupted``."""
        return (
            f"{len(self.outcomes)} cases tried: {self.count(CLEAR)} clear errors, {self.count(HANDLED)} handled, "
            f"{self.count(CRASH)} crashes, {self.count(LOST)} files lost or corrupted"
        )


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(nothing)"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(str(error))[:300]}"


def expect_error(
    call: Callable[[], Any],
    errors: type[BaseException] | tuple[type[BaseException], ...],
    mentions: Iterable[str] = (),
    any_of: Iterable[str] = (),
) -> Outcome:
    """Run ``call`` and require a clear error: one of ``errors`` whose message names what is wrong.

    Args:
        call: the operation fed with the fault.
        errors: the acceptable exception classes.
        mentions: strings the message must all contain (the file, the parameter), case-insensitive.
        any_of: strings of which the message must contain at least one (the problem, the allowed values); for an
            ``InputError`` they are looked for in its ``problem`` only, so a folder name cannot match them.

    Returns:
        A :data:`CLEAR` outcome carrying the message.

    Raises:
        FaultCrash: no error, another exception, or a message that does not name the file/parameter.
    """
    try:
        call()
    except errors as error:
        message = str(error)
        lower = message.lower()
        problem = str(getattr(error, "problem", message)).lower()  # an InputError's words, without the path
        missing = [m for m in mentions if m.lower() not in lower]
        wanted = [a.lower() for a in any_of]
        if missing or (wanted and not any(a in problem for a in wanted)):
            need = missing or [f"one of {list(any_of)}"]
            raise FaultCrash(f"{_describe(error)} does not name {', '.join(map(repr, need))}") from error
        return Outcome(CLEAR, _first_line(message)[:300])
    except Exception as error:  # the fault escaped as something other than a clear error
        raise FaultCrash(f"{_describe(error)} (expected {_names(errors)})") from error
    raise FaultCrash(f"no error raised (expected {_names(errors)})")


def _names(errors: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    errors = errors if isinstance(errors, tuple) else (errors,)
    return " or ".join(e.__name__ for e in errors)


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What a command line did: exit status and captured output."""

    code: int
    stdout: str
    stderr: str


def run_cli(entry: Callable[[Sequence[str]], int | None], argv: Sequence[str]) -> CliResult:
    """Call a command line's ``main(argv)`` in this process, capturing its output and exit status.

    Logging goes to the captured stderr at INFO level, as ``logging.basicConfig`` in a fresh process would. An
    exception that escapes ``main`` is a :class:`FaultCrash` (the user would see a stack trace).

    Args:
        entry: the ``main`` function.
        argv: its arguments.

    Returns:
        The exit status (``SystemExit`` codes included) and the output.

    Raises:
        FaultCrash: if ``main`` raises.
    """
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.root.manager.disable)
    # a bundle's logging.conf (fileConfig) disables and re-routes existing loggers: put every one back afterwards
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    states = [(lg, lg.disabled, lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:  # as in a fresh process
        lg.disabled = False
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.disable(logging.NOTSET)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry(list(argv))
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except Exception as error:
                raise FaultCrash(f"the command line raised {_describe(error)} (a stack trace for the user)") from error
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.disable(saved[2])
        for lg, disabled, level, handlers, propagate in states:
            lg.disabled, lg.level, lg.handlers[:], lg.propagate = disabled, level, handlers, propagate
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


def expect_cli_error(
    entry: Callable[[Sequence[str]], int | None],
    argv: Sequence[str],
    mentions: Iterable[str] = (),
    status: int | None = None,
) -> CliResult:
    """Require a command line to fail plainly: non-zero exit, no traceback, and stderr naming the problem.

    Args:
        entry: the ``main`` function.
        argv: its arguments.
        mentions: strings stderr must contain (the file, the parameter).
        status: the exact exit status required (any non-zero one when ``None``).

    Returns:
        The captured result.

    Raises:
        FaultCrash: exit status 0 (or not ``status``), a traceback in the output, or a fault not named.
    """
    result = run_cli(entry, argv)
    if result.code == 0 or (status is not None and result.code != status):
        expected = status or "non-zero"
        raise FaultCrash(f"exit status {result.code} (expected {expected}); stderr: {_last_line(result.stderr)}")
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        raise FaultCrash(f"the command printed a traceback: {_last_line(result.stderr)}")
    missing = [m for m in mentions if m not in result.stderr]
    if missing:
        raise FaultCrash(f"stderr does not name {missing}: {_last_line(result.stderr)}")
    return result


def _cli_line(result: CliResult, needle: str) -> str:
    """The last stderr line containing ``needle`` (the error line, after any usage text)."""
    lines = [line for line in result.stderr.splitlines() if needle in line]
    return lines[-1] if lines else _first_line(result.stderr)


class FileSnapshot:
    """The bytes of files written before a fault, to prove afterwards that none was lost or changed.

    Args:
        paths: the files (they must exist).
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self.digests = {Path(p): _digest(Path(p)) for p in paths}
        if not self.digests:
            raise ValueError("paths must name at least one existing file to watch.")

    def verify(self) -> int:
        """Raise :class:`FileLoss` if a watched file vanished or changed; return the number of files checked."""
        for path, digest in self.digests.items():
            if not path.is_file():
                raise FileLoss(f"{path} was lost")
            if _digest(path) != digest:
                raise FileLoss(f"{path} was overwritten or corrupted")
        return len(self.digests)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_nifti_outputs(paths: Iterable[Path]) -> int:
    """Every file loads completely as NIfTI with finite voxels; raise :class:`FileLoss` otherwise."""
    count = 0
    for path in paths:
        try:
            data = np.asarray(nib.load(path).get_fdata())
        except Exception as error:
            raise FileLoss(f"{path} is under its final name but does not load ({_describe(error)})") from error
        if not np.isfinite(data).all():
            raise FileLoss(f"{path} holds NaN or infinite voxels")
        count += 1
    return count


def _partial_files(folder: Path) -> list[Path]:
    """Visible files under ``folder`` whose name marks an unfinished write (they must never exist)."""
    return [p for p in folder.rglob("*") if ".part" in p.name and not p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------- corpus
def _volume(shape: Sequence[int] = _SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth non-negative test volume (an ellipsoid with texture on a zero background), float32."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:3]], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.8, 0.7, 0.75])[:, None, None, None]) ** 2).sum(0))
    texture = 0.6 + 0.2 * np.sin(3 * grid[0] + rng.uniform(0, 6)) * np.cos(2 * grid[1] + rng.uniform(0, 6))
    volume = np.where(radius < 1.0, texture, 0.0) * rng.uniform(80, 120)
    volume = volume.reshape(tuple(shape[:3]) + (1,) * (len(shape) - 3)) * np.ones(shape)
    return volume.astype(np.float32)


def write_scan(path: str | os.PathLike, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> Path:
    """Write a valid NIfTI scan (default: a 20^3 float32 test volume with an anisotropic affine).

    Args:
        path: the destination (``.nii`` or ``.nii.gz``); its folder is created.
        data: the voxels.
        affine: the 4x4 affine.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(_volume() if data is None else data, _AFFINE if affine is None else affine), path)
    return path


def _truncated(path: Path) -> None:
    write_scan(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _wrong_magic(path: Path) -> None:
    path.write_bytes(b"This is a text file that someone renamed to .nii\n" * 20)


def _gzip_not_nifti(path: Path) -> None:
    path.write_bytes(gzip.compress(b"\x00" * 40 + b"not a NIfTI header" * 40))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _folder(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("a folder named like a scan\n")


def _unreadable(path: Path) -> None:
    write_scan(path)
    path.chmod(0)


#: Bad files: ``kind -> (file name, writer, words of which the problem must contain one)``.
BAD_FILES: dict[str, tuple[str, Callable[[Path], None], tuple[str, ...]]] = {
    "truncated": ("truncated.nii.gz", _truncated, ("truncated", "corrupt", "ended")),
    "wrong-magic": ("wrong-magic.nii", _wrong_magic, ("not a nifti", "cannot work out", "file type")),
    "gzip-not-nifti": ("gzip-not-nifti.nii.gz", _gzip_not_nifti, ("nifti", "file type")),
    "empty": ("empty.nii.gz", _empty, ("empty", "0 bytes")),
    "folder-named-like-a-scan": ("folder.nii.gz", _folder, ("folder", "directory")),
    "2d": ("two-d.nii.gz", lambda p: write_scan(p, _volume((20, 20, 1))[..., 0]), ("2-d",)),
    "4d": ("four-d.nii.gz", lambda p: write_scan(p, _volume((20, 20, 20, 3))), ("4-d",)),
    "5d": ("five-d.nii.gz", lambda p: write_scan(p, _volume((12, 12, 12, 1, 2))), ("5-d",)),
    "zero-length-axis": (
        "zero-axis.nii",
        lambda p: write_scan(p, np.zeros((20, 0, 20), np.float32)),
        ("shape", "empty"),
    ),
    "nan-voxels": ("nan.nii.gz", lambda p: write_scan(p, _with(_volume(), np.nan)), ("nan",)),
    "inf-voxels": ("inf.nii.gz", lambda p: write_scan(p, _with(_volume(), np.inf)), ("infinite",)),
    "unsupported-extension": ("scan.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64), ("extension",)),
    "unreadable": ("unreadable.nii.gz", _unreadable, ("permission", "cannot be opened", "cannot be read")),
}


def _with(volume: np.ndarray, value: float) -> np.ndarray:
    volume = volume.copy()
    volume[5, 6, 7] = value
    return volume


def _int16_scaled(path: Path) -> None:
    raw = (_volume() * 10).astype(np.int16)
    image = nib.Nifti1Image(raw, _AFFINE)
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, path)


#: Valid but unusual files that must load with the right values: ``kind -> (file name, writer)``.
VALID_ODDITIES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "all-zero": ("all-zero.nii.gz", lambda p: write_scan(p, np.zeros(_SHAPE, np.float32))),
    "int16-scl-slope": ("int16-scaled.nii.gz", _int16_scaled),
    "anisotropic": ("anisotropic.nii.gz", lambda p: write_scan(p, _volume((20, 20, 6)), np.diag([0.2, 0.2, 12.0, 1]))),
}


def write_bad_file(folder: str | os.PathLike, kind: str) -> Path:
    """Write one corpus file of :data:`BAD_FILES` or :data:`VALID_ODDITIES` into ``folder``.

    Args:
        folder: the destination folder (created).
        kind: a key of either table.

    Returns:
        The file (or folder) written.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    table = {k: v[:2] for k, v in BAD_FILES.items()} | VALID_ODDITIES
    if kind not in table:
        raise ValueError(f"kind must be one of {sorted(table)}, got {kind!r}.")
    name, writer = table[kind]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer(folder / name)
    return folder / name


# ----------------------------------------------------------------------------------------------- unreadable files
def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block with the effective user ``nobody`` when the process is root, so file modes apply.

    Root reads a mode-000 file regardless of its mode, so an "unreadable file" test would pass vacuously; with
    the effective user and group switched (``seteuid``/``setegid``, restored on exit) the kernel refuses the read as
    it would for a researcher's account. Outside root this does nothing.
    """
    if os.geteuid() != 0:
        yield
        return
    uid, gid = _nobody()
    saved_gid = os.getegid()
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(saved_gid)


@contextlib.contextmanager
def world_writable_dir() -> Iterator[Path]:
    """A fresh folder in the system temporary directory that ``nobody`` can traverse and write (removed after)."""
    folder = Path(tempfile.mkdtemp(prefix="faults-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _shared_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)
    return folder


# ----------------------------------------------------------------------------------------------- loader
def _load_bad(kind: str) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        from transforms.io import LoadScan

        _, _, words = BAD_FILES[kind]
        if kind == "unreadable":
            with world_writable_dir() as shared:
                path = write_bad_file(shared, kind)
                with unprivileged():
                    return expect_error(lambda: LoadScan()(path), InputError, [str(path)], words)
        path = write_bad_file(work, kind)
        return expect_error(lambda: LoadScan()(path), InputError, [str(path)], words)

    return check


def _load_truncated_mha(work: Path) -> Outcome:
    import SimpleITK as sitk

    from transforms.io import LoadScan

    path = work / "truncated.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_volume()), str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return expect_error(lambda: LoadScan()(path), InputError, [str(path)], ["damaged", "truncated"])


def _load_all_zero(work: Path) -> Outcome:
    from transforms.io import LoadScan

    image = LoadScan()(write_bad_file(work, "all-zero"))
    if tuple(image.shape) != (1, *_SHAPE) or bool(image.any()):
        raise FaultCrash(f"an all-zero 20^3 volume loaded as shape {tuple(image.shape)}, max {float(image.max())}")
    return Outcome(HANDLED, "loads as a (1, 20, 20, 20) zero volume (it is valid data)")


def _load_int16_scaled(work: Path) -> Outcome:
    from transforms.io import LoadScan

    path = write_bad_file(work, "int16-scl-slope")
    raw = np.asanyarray(nib.load(path).dataobj.get_unscaled())
    image = LoadScan()(path)
    expected = raw.astype(np.float64) * 0.5 + 10.0
    if not np.allclose(image[0].numpy(), expected, atol=1e-4):
        raise FaultCrash("int16 data with scl_slope 0.5 / scl_inter 10 did not load as slope * raw + inter")
    return Outcome(HANDLED, "int16 voxels scaled by scl_slope/scl_inter (float32, exact)")


def _load_anisotropic(work: Path) -> Outcome:
    from transforms.io import LoadScan, canonical_transforms

    path = write_bad_file(work, "anisotropic")
    image = LoadScan()(path)
    spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    if not np.allclose(spacing, [0.2, 0.2, 12.0]):
        raise FaultCrash(f"0.2 x 0.2 x 12 mm voxels loaded with spacing {spacing}")
    resampled = canonical_transforms("image", spacing=1.0)[1]({"image": image})["image"]
    # MONAI keeps the extent between the first and last voxel centres: (n - 1) * spacing + 1 voxels of 1 mm
    new_spacing = np.linalg.norm(np.asarray(resampled.affine)[:3, :3], axis=0)
    if (
        tuple(resampled.shape) != (1, 5, 5, 61)
        or not np.allclose(new_spacing, 1.0)
        or not bool(torch.isfinite(resampled).all())
    ):
        raise FaultCrash(f"resampling 20x20x6 voxels of 0.2x0.2x12 mm to 1 mm gave {tuple(resampled.shape)}")
    return Outcome(HANDLED, "0.2x0.2x12 mm voxels kept in the affine; resampled to 1 mm: 5x5x61, finite")


# ----------------------------------------------------------------------------------------------- dataset builders
def _empty_folder(work: Path) -> Outcome:
    from pipeline.datasets import clean_folder, list_scans, paired_folders

    empty = work / "FD"
    empty.mkdir()
    expect_error(lambda: list_scans(empty), InputError, [str(empty)], ["holds no scan"])
    expect_error(lambda: clean_folder(empty), InputError, [str(empty)], ["holds no scan"])
    write_scan(work / "gaussian15" / "sub-01.nii.gz")
    return expect_error(lambda: paired_folders(work), InputError, [str(empty)], ["holds no scan"])


def _missing_folder(work: Path) -> Outcome:
    from pipeline.datasets import paired_folders

    write_scan(work / "FD" / "sub-01.nii.gz")
    return expect_error(lambda: paired_folders(work), InputError, [str(work / "gaussian15")], ["does not exist"])


def _unmatched_folders(work: Path) -> Outcome:
    from pipeline.datasets import paired_folders

    for name in ("sub-01", "sub-02", "sub-03"):
        write_scan(work / "FD" / f"{name}.nii.gz")
    for name in ("sub-01", "sub-02", "sub-04"):
        write_scan(work / "gaussian15" / f"{name}.nii.gz")
    return expect_error(
        lambda: paired_folders(work), InputError, [str(work), "FD/sub-03.nii.gz", "gaussian15/sub-04.nii.gz"]
    )


def _folder_in_paired_data(work: Path) -> Outcome:
    from pipeline.datasets import paired_folders

    for name in ("sub-01", "sub-02"):
        write_scan(work / "FD" / f"{name}.nii.gz")
        write_scan(work / "gaussian15" / f"{name}.nii.gz")
    (work / "FD" / "sub-03.nii.gz").mkdir()
    write_scan(work / "gaussian15" / "sub-03.nii.gz")
    # the researcher must learn that FD/sub-03.nii.gz is a folder, not that the scan has "no match"
    return expect_error(lambda: paired_folders(work), InputError, ["sub-03.nii.gz"], ["folder", "directory"])


def _subjects_table(work: Path, rows: Sequence[str], header: str = "subject_id,label,path") -> Path:
    for name in ("s1", "s2", "s3"):
        write_scan(work / "scans" / f"{name}.nii.gz")
    csv_path = work / "subjects.csv"
    csv_path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return csv_path


def _csv_case(header: str, rows: Sequence[str], mentions: Sequence[str]) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        from pipeline.datasets import load_subjects_csv

        path = _subjects_table(work, rows, header)
        return expect_error(lambda: load_subjects_csv(path), InputError, [str(path), *mentions])

    return check


def _datalist_nowhere(work: Path) -> Outcome:
    from pipeline.datasets import load_datalist

    path = work / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": "scans/gone.nii.gz", "label": "clean/gone.nii.gz"}]}))
    expect_error(lambda: load_datalist(work / "missing.json"), InputError, [str(work / "missing.json")])
    return expect_error(lambda: load_datalist(path), InputError, [str(path), "gone.nii.gz"], ["missing"])


def _datalist_not_json(work: Path) -> Outcome:
    from pipeline.datasets import load_datalist

    path = work / "datalist.json"
    path.write_text('{"training": [ {"image": "a.nii.gz", ')
    return expect_error(lambda: load_datalist(path), InputError, [str(path)], ["json"])


def _splits_file_corrupt(work: Path) -> Outcome:
    from pipeline.splits import load_splits

    path = work / "splits.json"
    path.write_text('{"version": 1, "train": ["s1", "s2"], "val": ')
    expect_error(lambda: load_splits(work / "missing.json"), InputError, [str(work / "missing.json")])
    return expect_error(lambda: load_splits(path), InputError, [str(path)], ["json"])


# ----------------------------------------------------------------------------------------------- prepare_noisy
_BATCH_BAD = [k for k in BAD_FILES if k not in ("unreadable", "folder-named-like-a-scan", "unsupported-extension")]


def _prepare_batch(work: Path) -> Outcome:
    from pipeline import prepare_noisy as pn

    clean, out = work / "clean", work / "noisy"
    write_scan(clean / "good-1.nii.gz", _volume(seed=1))
    pn.prepare_noisy(clean, out, "gaussian", 15, seed=0)
    kept = FileSnapshot([out / "good-1.nii.gz"])
    write_scan(clean / "good-2.nii.gz", _volume(seed=2))
    bad = {write_bad_file(clean, kind).name for kind in _BATCH_BAD} | {write_bad_file(clean, "all-zero").name}
    fine = {write_bad_file(clean, kind).name for kind in ("int16-scl-slope", "anisotropic")} | {"good-2.nii.gz"}
    summary = pn.prepare_noisy(clean, out, "gaussian", 15, seed=0)
    failed = {path.name for path, _ in summary.failed}
    if failed != bad:
        raise FaultCrash(f"reported {sorted(failed)}; expected exactly the bad files {sorted(bad)}")
    if {p.name for p in summary.written} != fine or [p.name for p in summary.skipped] != ["good-1.nii.gz"]:
        raise FaultCrash(f"written {sorted(p.name for p in summary.written)}, kept {summary.skipped}")
    kept.verify()
    _check_nifti_outputs(out / name for name in fine)
    for name in fine:
        if not np.allclose(nib.load(out / name).affine, nib.load(clean / name).affine):
            raise FileLoss(f"{out / name} lost the affine of {clean / name}")
    if sorted(p.name for p in out.iterdir()) != sorted(fine | {"good-1.nii.gz"}):
        raise FileLoss(f"unexpected files in {out}: {sorted(p.name for p in out.iterdir())}")
    result = expect_cli_error(
        pn.main, ["--clean-dir", str(clean), "--out-dir", str(out)], [str(clean / n) for n in bad]
    )
    kept.verify()
    return Outcome(
        HANDLED,
        f"{len(bad)} bad files reported by name, {len(fine)} written, 1 kept; exit {result.code}: "
        + _cli_line(result, "truncated"),
    )


def _prepare_folder_named_like_a_scan(work: Path) -> Outcome:
    from pipeline import prepare_noisy as pn

    clean = work / "clean"
    write_scan(clean / "good.nii.gz")
    folder = write_bad_file(clean, "folder-named-like-a-scan")
    summary = pn.prepare_noisy(clean, work / "noisy", "gaussian", 15)
    reasons = [problem for path, problem in summary.failed if path.name == folder.name]
    if not reasons:
        raise FaultCrash(f"{folder} (a folder named like a scan) was silently skipped, not reported")
    return Outcome(CLEAR, f"{folder}: {reasons[0]}")


def _prepare_unreadable(work: Path) -> Outcome:
    from pipeline import prepare_noisy as pn

    with world_writable_dir() as shared:
        clean, out = _shared_dir(shared / "clean"), _shared_dir(shared / "noisy")
        write_scan(clean / "good.nii.gz")
        path = write_bad_file(clean, "unreadable")
        with unprivileged():
            summary = pn.prepare_noisy(clean, out, "gaussian", 15)
        reasons = [problem for p, problem in summary.failed if p == path]
        if not reasons or [p.name for p in summary.written] != ["good.nii.gz"]:
            raise FaultCrash(f"failed {summary.failed}, written {summary.written}")
        if not any(w in reasons[0].lower() for w in BAD_FILES["unreadable"][2]):
            raise FaultCrash(f"{path}: the reason {reasons[0]!r} does not say it cannot be read")
        _check_nifti_outputs([out / "good.nii.gz"])
        return Outcome(HANDLED, f"{path}: {reasons[0]}; the readable file was written")


def _prepare_disk_full(work: Path) -> Outcome:
    from pipeline import prepare_noisy as pn

    clean, out = work / "clean", work / "noisy"
    for i in (1, 2, 3):
        write_scan(clean / f"sub-0{i}.nii.gz", _volume(seed=i))
    pn.prepare_noisy(clean, out, "gaussian", 15, seed=0)
    victim = FileSnapshot([out / "sub-02.nii.gz"])
    with _disk_full(nib, "save", "sub-02"):
        summary = pn.prepare_noisy(clean, out, "gaussian", 25, seed=1, overwrite=True)
    reasons = [problem for path, problem in summary.failed if path.name == "sub-02.nii.gz"]
    if not reasons or "space" not in reasons[0].lower():
        raise FaultCrash(f"a full disk while writing sub-02 gave failed={summary.failed}")
    if sorted(p.name for p in summary.written) != ["sub-01.nii.gz", "sub-03.nii.gz"]:
        raise FaultCrash(f"the other files were not written: {summary.written}")
    victim.verify()
    if sorted(p.name for p in out.iterdir()) != ["sub-01.nii.gz", "sub-02.nii.gz", "sub-03.nii.gz"]:
        raise FileLoss(f"a partial file was left in {out}: {sorted(p.name for p in out.iterdir())}")
    _check_nifti_outputs(sorted(out.iterdir()))
    return Outcome(HANDLED, f"sub-02: {reasons[0]}; previous file intact, the others rewritten")


@contextlib.contextmanager
def _disk_full(module: Any, attribute: str, needle: str) -> Iterator[None]:
    """Simulate a disk that fills up mid-write while ``module.attribute(obj, path, ...)`` writes to ``needle``.

    For target paths containing ``needle`` the writer writes, the file is cut to half its bytes, and ``OSError``
    (ENOSPC) is raised; other paths are written normally. The original writer is restored on exit.
    """
    real = getattr(module, attribute)

    def filling(obj: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        if needle not in os.fspath(target):
            return real(obj, target, *args, **kwargs)
        real(obj, target, *args, **kwargs)
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(target))

    setattr(module, attribute, filling)
    try:
        yield
    finally:
        setattr(module, attribute, real)


# ----------------------------------------------------------------------------------------------- inference
# every architecture key of the bundle's network_def, so the weights built here fit whatever common.yaml's default is
_TINY_DENOISER = {
    "model_depth": 10,
    "levels": 2,
    "block_inplanes": [8, 16, 32, 64],
    "conv1_t_size": 3,
    "conv1_t_stride": 1,
    "residual_output": True,
}


def _inference_overrides() -> dict[str, Any]:
    overrides: dict[str, Any] = {f"network_def::{k}": v for k, v in _TINY_DENOISER.items()}
    overrides.update({"patch_size": [24, 24, 24], "show_progress": False, "num_workers": 0, "sw_batch_size": 2})
    return overrides


def _tiny_weights(path: Path) -> Path:
    from networks import ResUnet3D
    from pipeline.seed import seed_everything

    seed_everything(0)
    net = ResUnet3D(**{k: tuple(v) if isinstance(v, list) else v for k, v in _TINY_DENOISER.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    path.chmod(0o644)
    return path


def _cli_overrides() -> list[str]:
    return [arg for key, value in _inference_overrides().items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def _infer_batch(work: Path) -> Outcome:
    from pipeline import infer

    scans, out = work / "scans", work / "denoised"
    weights = _tiny_weights(work / "model.pt")
    write_scan(scans / "good-1.nii.gz", _volume(seed=1))
    kept = FileSnapshot([write_scan(infer.output_file("good-1.nii.gz", out), _volume(seed=9))])  # an earlier result
    write_scan(scans / "good-2.nii.gz", _volume(seed=2))
    bad = [write_bad_file(scans, k) for k in [*_BATCH_BAD, "folder-named-like-a-scan", "unsupported-extension"]]
    fine = [write_bad_file(scans, k) for k in VALID_ODDITIES] + [scans / "good-2.nii.gz"]
    inputs = [scans, bad[-1]]  # the folder, and the .png named explicitly (a folder listing skips non-scans)
    summary = infer.denoise_scans(inputs, out, weights, "cpu", **_inference_overrides())
    failed = {Path(r.source).name for r in summary.failed}
    if failed != {p.name for p in bad}:
        raise FaultCrash(f"reported {sorted(failed)}; expected exactly {sorted(p.name for p in bad)}")
    done = {Path(r.source).name for r in summary.results if r.status == "done"}
    skipped = [Path(r.source).name for r in summary.results if r.status == "skipped"]
    if done != {p.name for p in fine} or skipped != ["good-1.nii.gz"]:
        raise FaultCrash(f"done {sorted(done)}, skipped {skipped}")
    kept.verify()
    outputs = [infer.output_file(p, out) for p in fine]
    _check_nifti_outputs(outputs)
    for source, output in zip(fine, outputs):
        a, b = nib.load(source), nib.load(output)
        if a.shape != b.shape or not np.allclose(a.affine, b.affine):
            raise FileLoss(f"{output} is not on the grid of {source}")
    if _partial_files(out) or len(list(out.iterdir())) != len(fine) + 1:
        raise FileLoss(f"unexpected files in {out}: {sorted(p.name for p in out.iterdir())}")
    argv = ["denoise", str(scans), str(bad[-1]), "--output", str(out), "--weights", str(weights), "--device", "cpu"]
    result = expect_cli_error(infer.main, argv + _cli_overrides(), [str(p) for p in bad], status=1)
    kept.verify()
    return Outcome(
        HANDLED,
        f"{len(bad)} bad scans reported by name, {len(fine)} denoised on their own grid, 1 kept; exit "
        f"{result.code}: {_cli_line(result, 'truncated')}",
    )


def _classify_batch(work: Path) -> Outcome:
    import csv

    from pipeline import infer
    from pipeline.classify import build_classifier
    from pipeline.seed import seed_everything

    scans, table = work / "scans", work / "classified" / "predictions.csv"
    seed_everything(0)
    weights = work / "classifier.pt"
    # every encoder key of the bundle's common.yaml, so the weights fit whatever its default is
    encoder = {"model_depth": 10, "block_inplanes": [8, 16, 32, 64], "conv1_t_size": 3, "conv1_t_stride": 1}
    torch.save(build_classifier("scratch", num_classes=2, **encoder).state_dict(), weights)
    fine = [write_scan(scans / f"good-{i}.nii.gz", _volume(seed=i)) for i in (1, 2)]
    fine += [write_bad_file(scans, k) for k in VALID_ODDITIES]
    bad = [write_bad_file(scans, k) for k in [*_BATCH_BAD, "folder-named-like-a-scan"]]
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
    if _partial_files(table.parent) or sorted(p.name for p in table.parent.iterdir()) != [table.name]:
        raise FileLoss(f"unexpected files beside {table}: {sorted(p.name for p in table.parent.iterdir())}")
    argv = ["classify", str(scans), "--output", str(table), "--weights", str(weights), "--device", "cpu"]
    argv += [arg for k, v in overrides.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    result = expect_cli_error(infer.main, argv, [str(p) for p in bad], status=1)
    return Outcome(
        HANDLED,
        f"{len(bad)} bad scans reported by name, {len(rows)} rows of probabilities; exit {result.code}: "
        + _cli_line(result, "truncated"),
    )


def _infer_unreadable(work: Path) -> Outcome:
    from pipeline import infer

    with world_writable_dir() as shared:
        scans, out = _shared_dir(shared / "scans"), _shared_dir(shared / "denoised")
        weights = _tiny_weights(shared / "model.pt")
        write_scan(scans / "good.nii.gz")
        path = write_bad_file(scans, "unreadable")
        # the configs travel with the case: `nobody` may not traverse the checkout (e.g. a clone in a mode-700 dir)
        configs = [
            Path(shutil.copy(c, _shared_dir(shared / "configs"))) for c in infer._bundle_configs("inference.yaml")
        ]
        with unprivileged():
            summary = infer.denoise_scans(
                scans, out, weights, "cpu", config_files=[os.fspath(c) for c in configs], **_inference_overrides()
            )
        reasons = [r.reason for r in summary.failed if r.source == str(path)]
        if not reasons or summary.count("done") != 1:
            raise FaultCrash(f"results {summary.results}")
        if not any(w in reasons[0].lower() for w in BAD_FILES["unreadable"][2]):
            raise FaultCrash(f"{path}: the reason {reasons[0]!r} does not say it cannot be read")
        _check_nifti_outputs([infer.output_file("good.nii.gz", out)])
        return Outcome(HANDLED, f"{path}: {reasons[0]}; the readable scan was denoised")


def _infer_datalist_nowhere(work: Path) -> Outcome:
    from pipeline import infer

    weights = _tiny_weights(work / "model.pt")
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": "nowhere/sub-01.nii.gz"}]}))
    argv = ["denoise", str(datalist), "--output", str(work / "out"), "--weights", str(weights), "--device", "cpu"]
    result = expect_cli_error(infer.main, argv + _cli_overrides(), [str(datalist), "sub-01.nii.gz"])
    return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, 'error')}")


def _infer_missing_weights(work: Path) -> Outcome:
    from pipeline import infer

    write_scan(work / "scans" / "sub-01.nii.gz")
    weights = work / "no-such-model.pt"
    argv = ["denoise", str(work / "scans"), "--output", str(work / "out"), "--weights", str(weights)]
    result = expect_cli_error(infer.main, argv + _cli_overrides(), [str(weights)])
    return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, 'error')}")


def _infer_disk_full(work: Path) -> Outcome:
    from pipeline import infer

    scans, out = work / "scans", work / "denoised"
    weights = _tiny_weights(work / "model.pt")
    for i in (1, 2, 3):
        write_scan(scans / f"sub-0{i}.nii.gz", _volume(seed=i))
        write_scan(infer.output_file(f"sub-0{i}.nii.gz", out), _volume(seed=10 + i))  # an earlier run's outputs
    before = FileSnapshot([infer.output_file("sub-02.nii.gz", out)])
    with _disk_full(nib, "save", "sub-02"):
        summary = infer.denoise_scans(scans, out, weights, "cpu", overwrite=True, **_inference_overrides())
    reasons = [r.reason for r in summary.failed if Path(r.source).name == "sub-02.nii.gz"]
    if not reasons or "space" not in reasons[0].lower() or summary.count("done") != 2:
        raise FaultCrash(f"a full disk while writing sub-02 gave {summary.results}")
    before.verify()
    if sorted(out.iterdir()) != [infer.output_file(f"sub-0{i}.nii.gz", out) for i in (1, 2, 3)]:
        raise FileLoss(f"a partial file was left in {out}: {sorted(p.name for p in out.iterdir())}")
    _check_nifti_outputs(sorted(out.iterdir()))
    return Outcome(HANDLED, f"sub-02: {reasons[0]}; previous output intact, the others rewritten")


# ----------------------------------------------------------------------------------------------- training
def _cubes(n: int, seed: int, size: int = 16) -> list[dict[str, Any]]:
    """Tiny in-memory training pairs: two nested boxes plus Gaussian noise; mask = the outer box."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        clean = torch.zeros(1, size, size, size)
        lo = int(torch.randint(2, 6, (1,), generator=generator))
        clean[:, lo : lo + 8, 3:13, 4:12] = 0.8
        clean[:, lo + 2 : lo + 5, 5:9, 5:9] = 0.4
        noisy = clean + 0.25 * torch.randn(clean.shape, generator=generator)
        items.append({"image": noisy, "label": clean, "mask": (clean > 0).float(), "subject": f"sub-{seed}{i:02d}"})
    return items


def _tiny_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    from pipeline.seed import seed_everything

    seed_everything(0)
    return UNet(3, 1, 1, channels=(4, 8), strides=(2,), num_res_units=1)


def _train(run_dir: Path, epochs: int, loss: Any = "l1", **kwargs: Any) -> Any:
    """The reference tiny training run of the kill and disk-full cases (CPU, seconds)."""
    from pipeline.denoise import train_denoiser

    settings = dict(
        max_epochs=epochs, batch_size=2, optimizer="sgd", lr=0.05, momentum=0.9, scheduler="cosine",
        checkpoint_every=1, seed=3, progress=False, device="cpu", loss=loss, ssim_kernel_size=5,
    )  # fmt: skip
    settings.update(kwargs)
    return train_denoiser(_cubes(4, seed=1), _cubes(1, seed=2), _tiny_unet(), run_dir, **settings)


def _train_bad_file(work: Path) -> Outcome:
    from monai.networks.nets import UNet

    from pipeline.denoise import train_denoiser
    from transforms.presets import denoise_transforms

    good = write_scan(work / "scans" / "good.nii.gz")
    bad = write_bad_file(work / "scans", "truncated")
    items = [{"image": str(p), "label": str(p), "subject": p.name} for p in (good, bad)]
    run = work / "run"

    def train() -> None:
        train_denoiser(
            items, items[:1], UNet(3, 1, 1, channels=(4, 8), strides=(2,)), run, max_epochs=1, progress=False,
            device="cpu", train_transform=denoise_transforms("train", patch_size=16, divisible_k=2),
            val_transform=denoise_transforms("val", patch_size=16, divisible_k=2),
        )  # fmt: skip

    return expect_error(train, InputError, [str(bad)], BAD_FILES["truncated"][2])


def _bundle_args(work: Path, **extra: Any) -> list[str]:
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


def _bundle_data(work: Path, bad_kind: str | None = None) -> None:
    """Five paired subjects in the notes' layout; with ``bad_kind`` every noisy file is bad (whatever the split)."""
    for i in range(1, 6):
        write_scan(work / "data" / "FD" / f"sub-0{i}.nii.gz", _volume(seed=i))
        noisy = work / "data" / "gaussian15" / f"sub-0{i}.nii.gz"
        if bad_kind is None:
            write_scan(noisy, _volume(seed=i) + 2.0)
        else:
            noisy.parent.mkdir(parents=True, exist_ok=True)
            write_bad_file(work / "scratch" / str(i), bad_kind).rename(noisy)


def _bundle_train_bad_file(work: Path) -> Outcome:
    from pipeline import bundle_run

    _bundle_data(work, "truncated")
    result = expect_cli_error(bundle_run.main, _bundle_args(work), [str(work / "data" / "gaussian15")])
    if list((work / "bundle").rglob("*.pt")):
        raise FaultCrash("a checkpoint was written although the training data holds a bad file")
    return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, 'gaussian15')}")


def _bundle_bad_config(key: str, value: Any, mentions: Sequence[str]) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        from pipeline import bundle_run

        _bundle_data(work)
        result = expect_cli_error(bundle_run.main, _bundle_args(work, **{key: value}), mentions)
        written = [p for p in (work / "bundle").rglob("*.pt")]
        if written:
            raise FaultCrash(f"training started before the bad {key} was refused: {written}")
        return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, mentions[0])}")

    return check


def _bundle_csv_unknown_label(work: Path) -> Outcome:
    from pipeline import bundle_run

    rows = ["subject_id,label,path"]
    for i, label in enumerate(["control", "patient", "control", "AD", "patient", "control"], start=1):
        rows.append(f"s{i},{label},scans/s{i}.nii.gz")
        write_scan(work / "data" / "scans" / f"s{i}.nii.gz", _volume(seed=i))
    table = work / "data" / "subjects.csv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    configs = [str(REPO_ROOT / "bundle" / "configs" / n) for n in ("common.yaml", "finetune_classifier.yaml")]
    argv = ["--config_file", json.dumps(configs), "--bundle_root", str(work / "bundle")]
    argv += ["--dataset_dir", str(work / "data"), "--init", "scratch", "--num_workers", "0"]
    result = expect_cli_error(bundle_run.main, argv, [str(table), "AD"])
    if list((work / "bundle").rglob("*.pt")):
        raise FaultCrash("the classifier trained although its subjects CSV holds an unknown label")
    return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, 'AD')}")


def _train_disk_full(work: Path) -> Outcome:
    from pipeline.checkpoint import CheckpointError, find_last_checkpoint, load_checkpoint

    run = work / "run"
    with _disk_full(torch, "save", "checkpoint_epoch=2"):
        outcome = expect_error(lambda: _train(run, 3), CheckpointError, ["checkpoint_epoch=2.pt"], ["space"])
    last = find_last_checkpoint(run)
    if last is None or last.name != "checkpoint_epoch=1.pt":
        raise FileLoss(f"the previous checkpoint is gone: newest is {last}")
    try:
        state = load_checkpoint(last)
        load_checkpoint(run / "model.pt")
    except Exception as error:
        raise FileLoss(f"a previous checkpoint no longer loads: {_describe(error)}") from error
    if state["trainer"]["iteration"] != 2 or list(run.glob("*.part*")) + list(run.glob(".*.part*")):
        raise FileLoss(f"unexpected checkpoint state or partial files in {run}")
    _matches_uninterrupted(_train(run, 3).last_checkpoint, 3)
    return Outcome(CLEAR, outcome.detail + " -- resumed to the uninterrupted run's weights")


_REFERENCE: dict[int, dict[str, Any]] = {}


def _uninterrupted(epochs: int) -> dict[str, Any]:
    """The last checkpoint of :func:`_train` run without interruption for ``epochs`` (computed once per process)."""
    from pipeline.checkpoint import load_checkpoint

    if epochs not in _REFERENCE:
        with tempfile.TemporaryDirectory() as folder:
            _REFERENCE[epochs] = load_checkpoint(_train(Path(folder), epochs).last_checkpoint)
    return _REFERENCE[epochs]


def _matches_uninterrupted(checkpoint: Path, epochs: int) -> None:
    """Raise :class:`FileLoss` unless ``checkpoint`` ends where an uninterrupted run does, with equal weights."""
    from pipeline.checkpoint import load_checkpoint

    first, second = load_checkpoint(checkpoint), _uninterrupted(epochs)
    if first["trainer"]["iteration"] != second["trainer"]["iteration"]:
        raise FileLoss(f"the resumed run ended at iteration {first['trainer']['iteration']}, not {second['trainer']}")
    for key, tensor in second["network"].items():
        if not torch.equal(first["network"][key], tensor):
            raise FileLoss(f"the resumed run's weights differ from the uninterrupted run's ({key})")


def _corrupt_resume_checkpoint(work: Path) -> Outcome:
    from pipeline.checkpoint import CheckpointError

    run = work / "run"
    _train(run, 1)
    last = run / "checkpoint_epoch=1.pt"
    last.write_bytes(last.read_bytes()[:100])
    return expect_error(lambda: _train(run, 2), CheckpointError, [str(last)], ["truncated", "corrupt"])


# ----------------------------------------------------------------------------------------------- configuration
def _config_case(call: Callable[[], Any], mentions: Sequence[str], any_of: Sequence[str]) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        return expect_error(call, ValueError, mentions, any_of)

    return check


def _unknown_loss(work: Path) -> Outcome:
    outcome = expect_error(lambda: _train(work / "run", 1, loss="l3"), ValueError, ["loss", "l3"], ["l1", "mse"])
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
    from pipeline import prepare_noisy as pn

    write_scan(work / "clean" / "sub-01.nii.gz")
    argv = ["--clean-dir", str(work / "clean"), "--out-dir", str(work / "noisy"), "--level", "-5"]
    result = expect_cli_error(pn.main, argv, ["level"], status=2)
    if (work / "noisy").exists() and any((work / "noisy").iterdir()):
        raise FaultCrash("files were written before the negative level was refused")
    return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, 'level')}")


def _override_typo(work: Path) -> Outcome:
    from pipeline import bundle_run

    _bundle_data(work)
    args = _bundle_args(work)
    args += ["--num_epoch", "5"]
    result = expect_cli_error(bundle_run.main, args, ["--num_epoch", "num_epochs"], status=2)
    return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, 'num_epoch')}")


# ----------------------------------------------------------------------------------------------- unsafe pickles
class _CodeOnLoad:
    """Unpickling this runs ``open(marker, "w")``: stands for any file that needs arbitrary code to load."""

    def __init__(self, marker: Path) -> None:
        self.marker = os.fspath(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _unsafe_file(work: Path) -> tuple[Path, Path]:
    marker = work / "code-ran"
    path = work / "evil.pt"
    torch.save({"network": _CodeOnLoad(marker), "state_dict": _CodeOnLoad(marker)}, path)
    return path, marker


def _unsafe_case(load: Callable[[Path], Any], errors: Any) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        path, marker = _unsafe_file(work)
        outcome = expect_error(lambda: load(path), errors, [str(path)])
        if marker.exists():
            raise FaultCrash(f"loading {path} ran the code it carries")
        return outcome

    return check


def _resume_from_unsafe(work: Path) -> Outcome:
    from pipeline.checkpoint import CheckpointError

    run = work / "run"
    run.mkdir()
    path, marker = _unsafe_file(work)
    shutil.copy(path, run / "checkpoint_epoch=1.pt")
    outcome = expect_error(lambda: _train(run, 2), CheckpointError, [str(run / "checkpoint_epoch=1.pt")])
    if marker.exists():
        raise FaultCrash("resuming from an unsafe checkpoint ran the code it carries")
    return outcome


def _bundle_resume_from(kind: str) -> Callable[[Path], Outcome]:
    """Bundle training whose newest checkpoint is ``kind``: ``"unsafe"`` (code on unpickling) or ``"truncated"``."""

    def check(work: Path) -> Outcome:
        from pipeline import bundle_run

        _bundle_data(work)
        checkpoint = work / "bundle" / "models" / "checkpoint_epoch=1.pt"
        checkpoint.parent.mkdir(parents=True)
        path, marker = _unsafe_file(work)
        if kind == "unsafe":
            shutil.copy(path, checkpoint)
        else:
            torch.save({"network": {"w": torch.zeros(1000)}}, checkpoint)
            checkpoint.write_bytes(checkpoint.read_bytes()[:300])
        before = FileSnapshot([checkpoint])
        result = expect_cli_error(bundle_run.main, _bundle_args(work), [str(checkpoint)])
        if marker.exists():
            raise FaultCrash("resuming from an unsafe checkpoint ran the code it carries")
        before.verify()
        return Outcome(CLEAR, f"exit {result.code}: {_cli_line(result, 'checkpoint_epoch=1.pt')}")

    return check


def _load_checkpoint(path: Path) -> Any:
    from pipeline.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _load_pretrained(path: Path) -> Any:
    from networks import ResUnet3D, load_pretrained

    return load_pretrained(ResUnet3D(model_depth=10, levels=2), path)


def _load_weights(path: Path) -> Any:
    from networks import ResUnet3D
    from pipeline.infer import load_weights

    return load_weights(ResUnet3D(model_depth=10, levels=2), path)


def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    from networks.pretrained import PretrainedWeightsError
    from pipeline.checkpoint import CheckpointError

    return (CheckpointError, PretrainedWeightsError)


# ----------------------------------------------------------------------------------------------- leakage
def _leak_split_groups(work: Path) -> Outcome:
    from pipeline.splits import LeakageError, check_no_overlap

    groups = {"train": ["s1", "s2", "s3"], "val": ["s3", "s4"], "test": ["s5", "s1"]}
    return expect_error(lambda: check_no_overlap(groups), LeakageError, ["s1", "s3", "train", "val", "test"])


def _leak_split_file(work: Path) -> Outcome:
    from pipeline.splits import LeakageError, load_splits, make_splits, save_splits

    path = save_splits(make_splits([f"s{i}" for i in range(10)], seed=0), work / "splits.json")
    content = json.loads(path.read_text())
    content["test"] = content["test"] + [content["train"][0]]
    path.write_text(json.dumps(content))
    return expect_error(lambda: load_splits(path), LeakageError, [content["train"][0]])


def _leak_denoiser_to_classifier(work: Path) -> Outcome:
    from pipeline.classify import finetune_classifier
    from pipeline.runinfo import write_run_info
    from pipeline.splits import LeakageError

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


# ----------------------------------------------------------------------------------------------- kills
def _child(function: str, *args: Any) -> subprocess.Popen:
    """Start ``pipeline.faults.<function>(*args)`` in a fresh interpreter (the process the case kills)."""
    code = f"import sys; from pipeline.faults import {function} as f; f(*{[os.fspath(a) for a in args]!r})"
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
    _train(Path(run_dir), 3, loss=_StallingL1(marker, stall_at=5))


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
    _train(Path(run_dir), 3)


def _kill_training(child: str, point: str, expected: str) -> Callable[[Path], Outcome]:
    """Kill ``child`` at ``point``; the newest complete checkpoint must be ``expected`` and resume exactly."""

    def check(work: Path) -> Outcome:
        from pipeline.checkpoint import find_last_checkpoint, load_checkpoint

        run, marker = work / "killed", work / "stalled"
        _kill_when(_child(child, run, marker), marker)
        last = find_last_checkpoint(run)
        if last is None or last.name != expected:
            raise FileLoss(f"after a kill {point}, the newest checkpoint is {last}, not {expected}")
        try:
            iteration = load_checkpoint(last)["trainer"]["iteration"]
        except Exception as error:
            raise FileLoss(f"{last} does not load after the kill: {_describe(error)}") from error
        _matches_uninterrupted(_train(run, 3).last_checkpoint, 3)
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
    from pipeline import infer

    real = nib.save

    def stalling(image: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        real(image, target, *args, **kwargs)
        if "sub-02" in os.fspath(target):
            data = Path(target).read_bytes()
            Path(target).write_bytes(data[: len(data) // 2])
            Path(marker).touch()
            time.sleep(_KILL_TIMEOUT_S)

    nib.save = stalling
    infer.denoise_scans(Path(scans), Path(out), Path(weights), "cpu", **_inference_overrides())


def _kill_inference(work: Path) -> Outcome:
    from pipeline import infer

    scans, out, marker = work / "scans", work / "denoised", work / "stalled"
    weights = _tiny_weights(work / "model.pt")
    sources = [write_scan(scans / f"sub-0{i}.nii.gz", _volume(seed=i)) for i in (1, 2, 3)]
    _kill_when(_child("_infer_child", scans, out, weights, marker), marker)
    finals = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    if [p.name for p in finals] != [infer.output_file(sources[0], out).name]:
        raise FileLoss(f"after the kill mid-write of sub-02, final names in {out}: {[p.name for p in finals]}")
    _check_nifti_outputs(finals)
    first = FileSnapshot(finals)
    summary = infer.denoise_scans(scans, out, weights, "cpu", **_inference_overrides())
    statuses = [r.status for r in summary.results]
    if statuses != ["skipped", "done", "done"]:
        raise FaultCrash(f"the re-run gave {statuses}; expected the finished scan skipped and the rest done")
    first.verify()
    reference = infer.denoise_scans(scans, work / "reference", weights, "cpu", **_inference_overrides())
    for result in reference.results:
        a = nib.load(result.output).get_fdata()
        b = nib.load(infer.output_file(result.source, out)).get_fdata()
        if not np.allclose(a, b, atol=1e-5):
            raise FileLoss(f"{infer.output_file(result.source, out)} differs from an uninterrupted run's output")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    note = f"; {len(leftovers)} hidden temporary file(s) of the killed write remain" if leftovers else ""
    return Outcome(HANDLED, f"killed mid-write: no partial file under a final name; re-run skipped 1, did 2{note}")


# ----------------------------------------------------------------------------------------------- the cases
def _cases() -> list[Case]:
    cases = [Case(f"load/{kind}", _load_bad(kind)) for kind in BAD_FILES]
    cases += [
        Case("load/truncated-mha", _load_truncated_mha),
        Case("load/all-zero", _load_all_zero),
        Case("load/int16-scl-slope", _load_int16_scaled),
        Case("load/anisotropic", _load_anisotropic),
        Case("datasets/empty-folder", _empty_folder),
        Case("datasets/missing-folder", _missing_folder),
        Case("datasets/noisy-and-clean-do-not-match", _unmatched_folders),
        Case("datasets/folder-named-like-a-scan", _folder_in_paired_data),
        Case("datasets/csv-missing-columns", _csv_case("subject_id,path", ["s1,scans/s1.nii.gz"], ["label"])),
        Case(
            "datasets/csv-unknown-label",
            _csv_case("subject_id,label,path", ["s1,0,scans/s1.nii.gz", "s2,AD,scans/s2.nii.gz"], ["AD", "label"]),
        ),
        Case(
            "datasets/csv-duplicate-id",
            _csv_case("subject_id,label,path", ["s1,0,scans/s1.nii.gz", "s1,1,scans/s2.nii.gz"], ["duplicate", "s1"]),
        ),
        Case(
            "datasets/csv-subject-without-file",
            _csv_case("subject_id,label,path", ["s1,0,scans/s1.nii.gz", "s9,1,scans/s9.nii.gz"], ["s9"]),
        ),
        Case("datasets/datalist-points-nowhere", _datalist_nowhere),
        Case("datasets/bundle-csv-unknown-label", _bundle_csv_unknown_label),
        Case("datasets/splits-file-corrupt", _splits_file_corrupt),
        Case("datasets/datalist-not-json", _datalist_not_json),
        Case("prepare_noisy/batch-with-bad-files", _prepare_batch),
        Case("prepare_noisy/folder-named-like-a-scan", _prepare_folder_named_like_a_scan),
        Case("prepare_noisy/unreadable", _prepare_unreadable),
        Case("prepare_noisy/disk-full", _prepare_disk_full),
        Case("infer/batch-with-bad-files", _infer_batch),
        Case("infer/classify-batch-with-bad-files", _classify_batch),
        Case("infer/unreadable", _infer_unreadable),
        Case("infer/datalist-points-nowhere", _infer_datalist_nowhere),
        Case("infer/missing-weights", _infer_missing_weights),
        Case("infer/disk-full", _infer_disk_full),
        Case("train/bad-file", _train_bad_file),
        Case("train/bundle-bad-file", _bundle_train_bad_file),
        Case("train/disk-full-checkpoint", _train_disk_full),
        Case("train/corrupt-checkpoint-on-resume", _corrupt_resume_checkpoint),
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
            _bundle_bad_config("patch_size", [4, 4, 4], ["patch_size"]),
        ),
        Case("pickle/checkpoint", _unsafe_case(_load_checkpoint, _checkpoint_errors())),
        Case("pickle/pretrained", _unsafe_case(_load_pretrained, _checkpoint_errors())),
        Case("pickle/inference-weights", _unsafe_case(_load_weights, _checkpoint_errors())),
        Case("pickle/resume-checkpoint", _resume_from_unsafe),
        Case("pickle/bundle-resume-checkpoint", _bundle_resume_from("unsafe")),
        Case("train/bundle-truncated-checkpoint-on-resume", _bundle_resume_from("truncated")),
        Case("leakage/train-val-test-overlap", _leak_split_groups),
        Case("leakage/splits-file-overlap", _leak_split_file),
        Case("leakage/denoiser-train-vs-classifier-test", _leak_denoiser_to_classifier),
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
    ]
    return cases


#: Every case, in the order the report prints them.
CASES: tuple[Case, ...] = tuple(_cases())


def run_case(case: Case, work: str | os.PathLike) -> Outcome:
    """Run one case in ``work`` (a fresh, empty folder) and classify what happened.

    Args:
        case: the case.
        work: its folder (created).

    Returns:
        The outcome: :class:`FaultCrash` becomes :data:`CRASH`, :class:`FileLoss` :data:`LOST`, and any other
        exception escaping the case a :data:`CRASH` too.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return case.check(work)
    except FileLoss as loss:
        return Outcome(LOST, str(loss))
    except FaultCrash as crash:
        return Outcome(CRASH, str(crash))
    except Exception as error:
        logger.debug("case %s raised", case.name, exc_info=True)
        return Outcome(CRASH, f"escaped from the case: {_describe(error)}")


def run_cases(cases: Sequence[Case], root: str | os.PathLike, echo: Callable[[str], None] | None = None) -> FaultReport:
    """Run ``cases``, each in its own sub-folder of ``root``.

    Args:
        cases: the cases.
        root: the parent folder of the cases' work folders.
        echo: called with one line per case as it finishes (e.g. ``print``).

    Returns:
        The report.
    """
    report = FaultReport()
    for number, case in enumerate(cases):
        start = time.perf_counter()
        outcome = run_case(case, Path(root) / f"{number:02d}-{case.name.replace('/', '-')}")
        report.outcomes.append((case.name, outcome))
        if echo is not None:
            echo(f"{outcome.status:<11} {case.name:<46} {time.perf_counter() - start:4.0f}s  {outcome.detail}")
    return report


@contextlib.contextmanager
def _quiet_output() -> Iterator[Any]:
    """Silence the pipeline's own output for the block and yield a stream on the original standard output.

    File descriptors 1 and 2 go to ``/dev/null`` (logs, progress bars, warnings printed by C libraries); the
    report is written to the yielded stream.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    report = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield report
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        report.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the fault cases, print one line per case and the summary.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 when no case crashed or lost a file, 1 otherwise.
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.faults", description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="pattern", default="", help="run only the cases whose name contains this")
    parser.add_argument("--fast", action="store_true", help="leave out the kill tests (subprocesses)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    parser.add_argument("--verbose", action="store_true", help="show the pipeline's own output (logs, progress)")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.pattern in c.name and not (args.fast and c.slow)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not cases:
        parser.error(f"no case name contains {args.pattern!r}; see --list")
    if args.verbose:
        logging.basicConfig(level=logging.INFO)
    with contextlib.ExitStack() as stack:
        root = args.keep if args.keep is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stream = sys.stdout if args.verbose else stack.enter_context(_quiet_output())
        start = time.perf_counter()
        report = run_cases(cases, root, echo=lambda line: print(line, file=stream, flush=True))
        print(f"{report.summary()} ({time.perf_counter() - start:.0f} s)", file=stream, flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
