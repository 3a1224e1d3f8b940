"""The command line of inference: ``python -m pipeline.inference.infer {denoise,classify}`` and the console scripts.

A thin argparse layer over :func:`pipeline.inference.runner.denoise_scans` and
:func:`pipeline.inference.runner.classify_scans`; the summary goes to standard error, the exit status says whether
every scan was processed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import CheckpointError
from pipeline.inference.runner import check_overlap, classify_scans, denoise_scans
from pipeline.runtime.precision import PRECISIONS
from transforms.errors import InputError

__all__ = ["add_task_arguments", "main", "run_task", "task_parser"]

logger = logging.getLogger(__name__)

#: The first line of :func:`main`'s ``--help``.
_DESCRIPTION = "Inference on new scans: denoised NIfTI in each scan's own space, class probabilities as CSV."


def _parse_overlap(text: str) -> float:
    try:
        return check_overlap(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from error


def _parse_override(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. network_def::model_depth=34), got {text!r}")
    return key.lstrip("-"), yaml.safe_load(value)


#: What each task writes, and an example for its ``--help``.
_TASKS = {
    "denoise": (
        "write <scan>_denoised.nii.gz per scan, in the scan's own space and units",
        "output folder",
        "{prog} scans/ --output denoised/",
    ),
    "classify": (
        "write one CSV row of class probabilities per scan",
        "output CSV file",
        "{prog} scans/ --output predictions.csv --weights demo/models/classifier_denoiser/classifier.pt",
    ),
}

_EPILOG = """example:
  {example}

Inputs: scan files (NIfTI-1/2, Analyze, MGH/MGZ, MINC, NRRD, MetaImage, DICOM), folders (every medical image in
them, DICOM files grouped by series; other files are listed as ignored) or datalist .json files. Weights trained by
this project carry their configuration (model.json beside model.pt): --weights is all a trained model needs.
Exit status: 0 when every scan was processed (or skipped because its output exists), 1 when any failed or an input
cannot be used, 2 for a bad setting."""


def add_task_arguments(parser: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    """Add the arguments of ``denoise`` or ``classify`` to a parser (the module's and the console scripts').

    Args:
        parser: the (sub)parser.
        task: ``"denoise"`` or ``"classify"``.

    Returns:
        ``parser``.
    """
    _, output_help, _ = _TASKS[task]
    parser.add_argument("inputs", nargs="+", help="scan files, folders or datalist .json files")
    if task == "denoise":
        parser.add_argument("--output", default=".", help=output_help + " (default: the current folder)")
        parser.add_argument(
            "--weights",
            default=None,
            help="trained weights, .pt or .ts (default: the ready denoiser the package ships, trained on generated "
            "heads: pipeline/inference/ready/)",
        )
        parser.add_argument(
            "--no-guard",
            dest="guard",
            action="store_false",
            help="write the network's output as it is (default: SURE picks, per scan, the network, a blend with the "
            "input, a Gaussian filter or the input, whichever has the least estimated error; <scan>_denoised.json "
            "says which and the estimated gain)",
        )
        parser.add_argument(
            "--noise-level",
            type=float,
            default=None,
            metavar="LEVEL",
            help="the scans' noise standard deviation on the 0-255 scale of their robust maximum, when known "
            "(default: measured per scan, in the air around the head where there is air)",
        )
    else:
        parser.add_argument("--output", required=True, help=output_help)
        parser.add_argument(
            "--weights", default=None, help="trained weights, .pt or .ts (default: the bundle's models/ file)"
        )
    parser.add_argument("--device", default=None, help="cpu, cuda:0, ... (default: CUDA when available)")
    parser.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="auto (the bundle's default): bf16 where the CPU (AVX512-BF16/AMX) or GPU has it natively, else fp32;"
        " bf16: autocast on the CPU or CUDA (about 40x slower than fp32 on a CPU without native bf16); fp16: CUDA"
        " only; outputs are float32",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the network in the channels_last_3d memory layout (same weights; denoising's default, 1.5x faster"
        " on the CPU for the small ResUnet3D)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute outputs that already exist (denoise) / scans the CSV already holds (classify)",
    )
    parser.add_argument(
        "--overlap",
        type=_parse_overlap,
        default=None,
        help="sliding-window overlap in [0, 1) (default: the bundle's sw_overlap); denoise only: the classifier "
        "sees each scan once, cropped to its input size",
    )
    parser.add_argument(
        "--bundle-dir", default=None, help="bundle folder whose configs/ run (default: the installed bundle)"
    )
    parser.add_argument(
        "--trust-card",
        action="store_true",
        help="apply the weights' model card unchecked: only for a card from someone you trust, as it may then run "
        "any code (by default a card is data, and one naming a network off the allow-list or carrying MONAI "
        "expressions is refused)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set network_def::model_depth=34 (repeatable)",
    )
    return parser


def task_parser(task: str, prog: str) -> argparse.ArgumentParser:
    """The parser of one task, as the console scripts (``resunet3d-denoise``, ``resunet3d-classify``) use it.

    Args:
        task: ``"denoise"`` or ``"classify"``.
        prog: the program name shown in the usage and the example.

    Returns:
        The parser; its ``--help`` ends with an example.
    """
    description, _, example = _TASKS[task]
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description.capitalize()}.",
        epilog=_EPILOG.format(example=example.format(prog=prog)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return add_task_arguments(parser, task)


def _denoiser_weights(weights: str | None, overrides: Mapping[str, Any]) -> str | os.PathLike | None:
    """The command line's weights: the ones given, else the ready denoiser (unless ``--set ckpt_path=...``)."""
    if weights is not None or "ckpt_path" in overrides:
        return weights
    from pipeline.inference.ready import default_weights

    path = default_weights()
    logger.info("no --weights given: using the ready denoiser %s (trained on generated heads only)", path)
    return path


def run_task(task: str, args: argparse.Namespace) -> int:
    """Run parsed arguments of ``denoise`` or ``classify``; print the summary to standard error.

    Args:
        task: ``"denoise"`` or ``"classify"``.
        args: from :func:`task_parser` or the module's parser.

    Returns:
        0 when every scan was processed or skipped, 1 when any failed or an input cannot be used, 2 for a bad
        config key or value (e.g. ``--precision fp16`` without CUDA, an override contradicting the weights).
    """
    from pipeline.bundle_run import ConfigOverrideError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = dict(args.overrides)
    for key, value in (("precision", args.precision), ("channels_last", args.channels_last)):
        if value is not None:  # a flag wins over --set; absent, the --set value or the bundle's default stands
            overrides[key] = value
    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    try:
        if task == "denoise":
            if not args.guard:
                overrides["guard_enabled"] = False
            if args.noise_level is not None:
                overrides["known_noise_level"] = args.noise_level
            summary = denoise_scans(
                inputs,
                args.output,
                _denoiser_weights(args.weights, overrides),
                args.device,
                args.overwrite,
                overlap=args.overlap,
                bundle_dir=args.bundle_dir,
                trust_card=args.trust_card,
                **overrides,
            )
        else:
            if args.overlap is not None:
                raise ValueError(
                    "--overlap sets the denoiser's sliding windows; the classifier sees each scan once, cropped "
                    "to its input size, so there is no overlap to set"
                )
            summary = classify_scans(
                inputs,
                args.output,
                args.weights,
                args.device,
                overwrite=args.overwrite,
                bundle_dir=args.bundle_dir,
                trust_card=args.trust_card,
                **overrides,
            )
    except (ConfigOverrideError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (InputError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary.report(), file=sys.stderr)  # every file not processed, and the counts, at the end
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pipeline.inference.infer {denoise,classify} INPUT... --output ... [--weights ...]``.

    The summary (failed and ignored files with their reasons, then the counts) is printed to standard error at the
    end.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every scan was processed, 1 when any failed or an input cannot be used, 2 for a bad config key or
        value (e.g. ``--precision fp16`` without CUDA).
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.inference.infer", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="task", required=True)
    for task, (help_text, _, example) in _TASKS.items():
        prog = f"python -m pipeline.inference.infer {task}"
        add_task_arguments(
            sub.add_parser(
                task,
                help=help_text,
                description=f"{help_text.capitalize()}.",
                epilog=_EPILOG.format(example=example.format(prog=prog)),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            ),
            task,
        )
    args = parser.parse_args(argv)
    return run_task(args.task, args)
