r"""The fault suite: bad input, bad configuration, kills, full disks, unsafe pickles and cards, data leakage.

Each :class:`Case` feeds one fault to one entry point of the pipeline (the scan loader, the dataset builders,
``prepare_noisy``, training, inference, the command lines, the checkpoint readers, the split guards) in a fresh
folder, and checks two things:

* the fault ends in a **clear error** -- the documented exception (:class:`~transforms.errors.InputError`,
  ``ValueError``, :class:`~pipeline.data.splits.LeakageError`,
  :class:`~pipeline.training.checkpoint.CheckpointError`...) whose
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

    python -m tests.faults            # every case; one line per case, then the summary
    python -m tests.faults -k infer   # the cases whose name contains "infer"
    python -m tests.faults --fast     # leave out the kill tests (subprocesses)

It exits with status 1 when any case crashed or lost a file. The pytest suite ``tests/test_faults*.py`` runs the
same cases.

Layout: this module holds the registry (:data:`CASES`), the runner and the command line; :mod:`tests.faults.harness`
the outcomes and the checks every case uses; :mod:`tests.faults.corpus` the bad files; one module per area holds its
cases (``data``, ``infer``, ``train``, ``bundle``, ``config``, ``unsafe``, ``cards``, ``leakage``, ``kill``), each
as a ``CASES`` tuple.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.faults import bundle, cards, config, data, infer, kill, leakage, train, unsafe
from tests.faults.corpus import (
    BAD_FILES,
    VALID_ODDITIES,
    unprivileged,
    world_writable_dir,
    write_bad_file,
    write_scan,
)
from tests.faults.harness import (
    CLEAR,
    CRASH,
    HANDLED,
    LOST,
    Case,
    FaultCrash,
    FaultReport,
    FileLoss,
    FileSnapshot,
    Outcome,
    describe_error,
    expect_cli_error,
    expect_error,
    run_cli,
)

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
    "run_cli",
    "unprivileged",
    "world_writable_dir",
    "write_bad_file",
    "write_scan",
]

logger = logging.getLogger(__name__)

#: Every case, in the order the report prints them: each area's cases, the kills last.
CASES: tuple[Case, ...] = (
    *data.CASES,
    *infer.CASES,
    *train.CASES,
    *config.CASES,
    *unsafe.CASES,
    *cards.CASES,
    *leakage.CASES,
    *bundle.CASES,
    *kill.CASES,
)


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
        return Outcome(CRASH, f"escaped from the case: {describe_error(error)}")


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
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
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
