"""The harness's vocabulary: outcomes, cases, the report, and the checks a case uses (clear error, CLI, files kept)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "CLEAR",
    "CRASH",
    "Case",
    "CliResult",
    "FaultCrash",
    "FaultReport",
    "FileLoss",
    "FileSnapshot",
    "HANDLED",
    "LOST",
    "Outcome",
    "REPO_ROOT",
    "check_nifti_outputs",
    "cli_line",
    "describe_error",
    "disk_full",
    "expect_cli_error",
    "expect_error",
    "first_line",
    "partial_files",
    "run_cli",
]


#: Outcome statuses: the two good ones and the two that fail the suite.
CLEAR, HANDLED, CRASH, LOST = "clear error", "handled", "CRASH", "LOST"


REPO_ROOT = Path(__file__).resolve().parents[2]


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


def first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(nothing)"


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(str(error))[:300]}"


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
            raise FaultCrash(f"{describe_error(error)} does not name {', '.join(map(repr, need))}") from error
        return Outcome(CLEAR, first_line(message)[:300])
    except Exception as error:  # the fault escaped as something other than a clear error
        raise FaultCrash(f"{describe_error(error)} (expected {_names(errors)})") from error
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
                raise FaultCrash(
                    f"the command line raised {describe_error(error)} (a stack trace for the user)"
                ) from error
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


def cli_line(result: CliResult, needle: str) -> str:
    """The last stderr line containing ``needle`` (the error line, after any usage text)."""
    lines = [line for line in result.stderr.splitlines() if needle in line]
    return lines[-1] if lines else first_line(result.stderr)


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


def check_nifti_outputs(paths: Iterable[Path]) -> int:
    """Every file loads completely as NIfTI with finite voxels; raise :class:`FileLoss` otherwise."""
    count = 0
    for path in paths:
        try:
            data = np.asarray(nib.load(path).get_fdata())
        except Exception as error:
            raise FileLoss(f"{path} is under its final name but does not load ({describe_error(error)})") from error
        if not np.isfinite(data).all():
            raise FileLoss(f"{path} holds NaN or infinite voxels")
        count += 1
    return count


def partial_files(folder: Path) -> list[Path]:
    """Visible files under ``folder`` whose name marks an unfinished write (they must never exist)."""
    return [p for p in folder.rglob("*") if ".part" in p.name and not p.name.startswith(".")]


@contextlib.contextmanager
def disk_full(module: Any, attribute: str, needle: str) -> Iterator[None]:
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
