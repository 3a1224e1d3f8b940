"""Console scripts (``setup.cfg`` ``[options.entry_points]``): thin argument parsing over typed functions.

* ``resunet3d-denoise`` -> :func:`pipeline.inference.infer.denoise_scans` (as ``python -m pipeline.inference.infer
denoise``);
* ``resunet3d-classify`` -> :func:`pipeline.inference.infer.classify_scans` (as ``python -m pipeline.inference.infer
classify``);
* ``resunet3d-demo`` -> :func:`pipeline.demo.run.run_demo` (as ``python -m pipeline.demo``).

Each ``--help`` ends with an example. After ``pip install .`` they run from any folder: the bundle's configs are
package data (:mod:`pipeline.bundle_files`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["classify_entry", "demo_entry", "denoise_entry"]


def _infer(task: str, prog: str, argv: Sequence[str] | None) -> int:
    from pipeline.inference.infer import run_task, task_parser

    args = task_parser(task, prog).parse_args(sys.argv[1:] if argv is None else list(argv))
    return run_task(task, args)


def denoise_entry(argv: Sequence[str] | None = None) -> int:
    """``resunet3d-denoise INPUT... --output FOLDER [--weights model.pt]``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (:func:`pipeline.inference.infer.run_task`).
    """
    return _infer("denoise", "resunet3d-denoise", argv)


def classify_entry(argv: Sequence[str] | None = None) -> int:
    """``resunet3d-classify INPUT... --output predictions.csv [--weights classifier.pt]``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (:func:`pipeline.inference.infer.run_task`).
    """
    return _infer("classify", "resunet3d-classify", argv)


def demo_entry(argv: Sequence[str] | None = None) -> int:
    """``resunet3d-demo --out demo [--quick] [--fresh]``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status of :func:`pipeline.demo.run.main`.
    """
    from pipeline.demo.run import main

    return main(argv, prog="resunet3d-demo")
