"""The main job on the embedded demo cohort: ``python -m pipeline.demo --out demo`` (what ``make demo`` runs).

Stages, each timed (wall clock and CPU time of this process), with progress bars:

1. **Cohort** (:func:`pipeline.data.cohort.build_cohort`): subjects simulated from nilearn's MNI152 template, half with
   atrophy, written as ``clean/``, ``gaussian15/``, ``poisson/``, ``masks/`` and ``subjects.csv`` (its ``split``
   column is a stratified subject-level train/val/test split).
2. **Denoiser**: the bundle's ``train_denoise.yaml`` (after ``common.yaml``) through ``monai.bundle.ConfigWorkflow``
   with overrides (:func:`pipeline.bundle_run.create_workflow`), noisy ``gaussian15/`` -> ``clean/``. It trains on
   the cohort's *train* subjects, a few of which validate it; the cohort's val and test subjects stay unseen.
3. **Held-out classification cohort** (:mod:`pipeline.demo.heldout`): ``heldout_subjects`` more subjects from the
   same simulator with another seed and ID prefix, checked to share no ID and no image (voxel hash) with the cohort.
4. **Classifiers**: ``finetune_classifier.yaml`` twice, ``init: denoiser`` (the trained denoiser's encoder) and
   ``init: scratch`` (the same ResNet, random weights), with the same split (the CSV's), epochs, batch, optimiser,
   learning rate and augmentation. The leakage guard checks that no classifier val/test subject was seen by the
   denoiser.
5. **Inference**: ``inference.yaml`` on the cohort's test subjects (denoised NIfTI in each scan's own space) and
   ``inference_classifier.yaml`` on the held-out cohort (a CSV of class probabilities), as a user runs them.
6. **Classical denoisers** (:mod:`pipeline.demo.scoring`, :mod:`pipeline.evaluation.classical`): Gaussian filter,
   median filter and non-local means, each with its free parameter tuned on the cohort's *val* subjects, scored on
   the same test volumes as the network.
7. **Floor**: a logistic regression on downsampled volumes fitted on the cohort's train and val subjects, scored on
   the held-out cohort; every classification figure carries its 95 % interval.
8. **Report** (:mod:`pipeline.demo.report`): ``<out>/report.md`` with PNG figures under ``<out>/figures``,
   ``<out>/results.json`` with every number, ``<out>/demo.log``. ``tensorboard --logdir <out>`` shows the three training
   runs.

Settings live in :mod:`pipeline.demo.settings`, the training and inference stages in :mod:`pipeline.demo.stages`.

Running again into the same ``--out`` with the same settings reuses the cohort and resumes (or skips) training from
the checkpoints; other settings, or ``--fresh``, start over (only folders this demo made are removed).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.demo import heldout as ho
from pipeline.demo import scoring, stages
from pipeline.demo.report import append_totals, write_report
from pipeline.demo.settings import DEFAULT, MEASURED_MIN, PRECISION, QUICK, DemoSettings
from pipeline.demo.stages import CohortInfo, StageRecord, StageTimer, run_workflow
from pipeline.errors import OutputFolderError
from pipeline.utils.files import atomic_path

__all__ = [
    "DEFAULT",
    "QUICK",
    "DemoSettings",
    "OutputFolderError",
    "StageRecord",
    "StageTimer",
    "announce",
    "check_out",
    "main",
    "run_demo",
]

logger = logging.getLogger(__name__)

_MARKER = "demo_run.json"
_GENERATED = ("cohort", "heldout", "models", "runs", "denoised", "denoised_val", "predictions", "splits", "figures")
# the names tests and older code reach through this module
_MEASURED_MIN = MEASURED_MIN
_run_workflow = run_workflow


def check_out(out: str | os.PathLike) -> Path:
    """Check that ``out`` is new, empty, or a folder a previous demo wrote.

    Args:
        out: the output folder.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        OutputFolderError: if ``out`` is a file, or a folder with files but without the demo's ``demo_run.json``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file; give a folder")
    others = [p for p in out.iterdir() if p.name != "demo.log"] if out.is_dir() else []
    if others and not (out / _MARKER).is_file():
        raise OutputFolderError(
            f"--out {out} is not empty and was not written by the demo (no {_MARKER}); choose a new folder"
        )
    return out


def _prepare_out(out: Path, settings: DemoSettings, fresh: bool) -> bool:
    """Check/prepare the output folder; return True when a previous run with the same settings is resumed.

    Raises:
        OutputFolderError: if ``out`` holds files but is not a folder this demo wrote.
    """
    marker = check_out(out) / _MARKER
    previous = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    resume = previous is not None and previous.get("settings") == settings.to_dict() and not fresh
    if previous is not None and not resume:
        for name in _GENERATED:
            shutil.rmtree(out / name, ignore_errors=True)
        logger.info("removed the previous demo outputs in %s (%s)", out, "--fresh" if fresh else "other settings")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps({"settings": settings.to_dict()}, indent=2) + "\n", encoding="utf-8")
    return resume


def run_demo(out: str | os.PathLike, settings: DemoSettings = DEFAULT, fresh: bool = False) -> dict[str, Any]:
    """Run every stage (module docstring) and write ``<out>/report.md``.

    Args:
        out: the output folder (created; must be empty or a previous demo's).
        settings: the demo's sizes and budgets (:data:`DEFAULT`, :data:`QUICK` or your own).
        fresh: start over even when ``out`` holds a run with the same settings.

    Returns:
        The results (also written to ``<out>/results.json``).

    Raises:
        OutputFolderError: for an ``out`` folder that the demo did not write.
        pipeline.errors.LeakageError: if a held-out subject's ID or image equals a training subject's.
    """
    out = Path(out).resolve()
    timer = StageTimer()
    resume = _prepare_out(out, settings, fresh)
    started = _dt.datetime.now(_dt.UTC)

    with timer.stage("build the demo cohort") as record:
        cohort = stages.cohort_stage(out, settings, resume, record)
    with timer.stage("build the held-out classification cohort (other seed, other IDs)") as record:
        heldout = ho.build_heldout(out, settings, cohort, resume, record)
    with timer.stage("train the denoiser (train_denoise.yaml)"):
        stages.train_denoiser(out, settings, cohort)
    inits = {"denoiser": "denoiser encoder", "scratch": "scratch"}
    for init, title in inits.items():
        with timer.stage(f"fine-tune the classifier from {title} (finetune_classifier.yaml)"):
            stages.train_classifier(out, settings, cohort, init)

    test = cohort.parts["test"]
    with timer.stage("denoise the held-out scans (inference.yaml)") as record:
        network_seconds = stages.denoise_subjects(out, settings, cohort)
        record.note = f"{len(test)} scans"
    with timer.stage("classify the held-out cohort (inference_classifier.yaml)") as record:
        predictions = {init: stages.classify_subjects(out, settings, cohort, init, heldout.scans) for init in inits}
        record.note = f"{len(heldout.scans)} scans x {len(inits)} classifiers"
    with timer.stage("score the network and the classical denoisers") as record:
        cases, quality, parameters, denoised_volumes = _denoising_scores(out, settings, cohort, network_seconds)
        record.note = f"{len(cases)} test volumes, parameters tuned on {settings.tuning_subjects} val volumes"
    with timer.stage("logistic-regression floor on the held-out cohort") as record:
        predictions["logistic_floor"] = ho.floor_predictions(cohort, heldout, out / "predictions" / "floor.csv")
        record.note = f"fitted on {len(cohort.parts['train']) + len(cohort.parts['val'])} train+val subjects"

    results = _results(out, settings, started, cohort, quality, parameters, predictions, heldout)
    with timer.stage("write the report") as record:
        write_report(out, results, cases, denoised_volumes, timer)
        record.note = "report.md, figures/"
    results["stages"] = [dataclasses.asdict(r) for r in timer.records]
    results["total_wall_s"], results["total_cpu_s"] = timer.total()
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=_json_default) + "\n", encoding="utf-8")
    # the report's stage table is written before its own stage ends; add the final line now
    append_totals(out / "report.md", timer)
    logger.info("wrote %s in %.0f s (CPU %.0f s)", out / "report.md", *timer.total())
    return results


def _denoising_scores(
    out: Path, settings: DemoSettings, cohort: CohortInfo, network_seconds: Mapping[str, float]
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, str], dict[str, np.ndarray]]:
    """The test volumes, every method's per-volume quality, their parameters and the network's outputs."""
    from pipeline.evaluation.metrics import volume_quality

    cases = [scoring.load_case(cohort.dir, cohort.noise_dir, s) for s in cohort.parts["test"]]
    tuning = [
        scoring.load_case(cohort.dir, cohort.noise_dir, s) for s in cohort.parts["val"][: settings.tuning_subjects]
    ]
    quality = {"noisy": [{**volume_quality(c["noisy"], c["clean"], c["mask"]), "seconds": 0.0} for c in cases]}
    classical, parameters = scoring.score_classical(settings, cases, tuning)
    quality.update(classical)
    quality["resunet3d"], denoised_volumes = scoring.score_network(out, cases, network_seconds)
    return cases, quality, {"noisy": "-", **parameters, "resunet3d": "best validation epoch"}, denoised_volumes


def _results(
    out: Path,
    settings: DemoSettings,
    started: _dt.datetime,
    cohort: CohortInfo,
    quality: Mapping[str, list[dict[str, Any]]],
    parameters: Mapping[str, str],
    predictions: Mapping[str, Path],
    heldout: ho.HeldOut,
) -> dict[str, Any]:
    """Every number of the run, as ``results.json`` holds it (the stage timings are added at the end)."""
    from pipeline.evaluation import report as rp

    classification = {name: ho.classification_scores(path, heldout.labels) for name, path in predictions.items()}
    return {
        "started": started.isoformat(timespec="seconds"),
        "settings": settings.to_dict(),
        "machine": _machine(),
        "cohort": {
            "subjects": settings.subjects,
            "shape": cohort.shape,
            "spacing_mm": settings.spacing,
            "splits": cohort.parts,
            "denoiser_splits": {"train": list(cohort.denoiser_splits.train), "val": list(cohort.denoiser_splits.val)},
        },
        "heldout": ho.heldout_summary(heldout, [*cohort.parts["train"], *cohort.parts["val"]]),
        "denoising": {
            name: {"parameter": parameters[name], "mean": scoring.mean_quality(rows), "per_volume": rows}
            for name, rows in quality.items()
        },
        "classification": classification,
        "logistic_floor_balanced_accuracy": classification["logistic_floor"]["balanced_accuracy"],
        "curves": {
            name: rp.read_scalars(out / "runs" / name)
            for name in ("denoiser", *(f"classifier_{i}" for i in predictions if i != "logistic_floor"))
        },
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _machine() -> dict[str, Any]:
    import torch

    from pipeline.utils.machine import machine_info

    return machine_info() | {"device": "cuda" if torch.cuda.is_available() else "cpu"}


def announce(settings: DemoSettings, quick: bool = False, hardware: Any = None) -> list[str]:
    """Log what the demo is about to do and roughly how long it takes on this machine.

    The estimate scales the default demo's measured wall time on 2 cores (:data:`MEASURED_MIN`: 16.4 min with
    AVX-512, 18.0 min with AVX2 kernels; float32 either way) by the number of logical CPUs; ``--quick`` takes about a
    minute.

    Args:
        settings: the demo's settings.
        quick: the smoke run (``--quick``).
        hardware: the :class:`pipeline.utils.precision.HardwareReport` to estimate for (default: this machine's).

    Returns:
        The lines logged.
    """
    from pipeline.utils.precision import detect_hardware

    hardware = detect_hardware() if hardware is None else hardware
    kind = "avx512" if "avx512f" in hardware.cpu_flags else "avx2"
    cores = max(1, min(hardware.logical_cpus, 16))
    minutes = 1.0 if quick else MEASURED_MIN[kind] * 2 / cores
    lines = [
        f"demo: build a {settings.subjects}-subject cohort at {settings.spacing:g} mm, train the denoiser for"
        f" {settings.denoise_epochs} epochs, fine-tune two classifiers for {settings.classifier_epochs} epochs each,"
        f" denoise the test subjects, classify a separate {settings.heldout_subjects}-subject held-out cohort,"
        f" score {', '.join(settings.classical)}, write report.md",
        f"expected: about {minutes:.0f} min on this machine ({cores} logical CPUs, "
        + ("AVX-512" if kind == "avx512" else "AVX2 only, no AVX-512")
        + f"); measured on 2 idle cores: {MEASURED_MIN['avx512']} min with AVX-512, "
        f"{MEASURED_MIN['avx2']} min with AVX2 kernels only (set-up excluded)"
        + ("; the --quick smoke run takes about a minute" if quick else ""),
        f"CPU: {hardware.describe_cpu()}",
        f"precision: {PRECISION} on every CPU (the demo's reported figures were measured in float32)",
    ]
    for line in lines:
        logger.info("%s", line)
    return lines


def _setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    console.setFormatter(formatter)
    logfile = logging.FileHandler(out / "demo.log", encoding="utf-8")
    logfile.setLevel(logging.INFO)
    logfile.setFormatter(formatter)
    root.handlers[:] = [console, logfile]


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipeline.demo") -> int:
    """Command line: ``python -m pipeline.demo --out demo [--quick] [--fresh]`` (console script ``resunet3d-demo``).

    Args:
        argv: arguments (default ``sys.argv[1:]``).
        prog: the program name shown by ``--help``.

    Returns:
        0 on success, 2 for an unusable ``--out``.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build the demo cohort, train the denoiser and two classifiers, run inference, write a report.",
        epilog=f"example:\n  {prog} --out demo --quick   # every stage in about a minute"
        f" (without --quick: {MEASURED_MIN['avx512']:.0f}-{MEASURED_MIN['avx2']:.0f} min on 2 cores)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 8 small subjects, one epoch each (also RESUNET3D_TINY=1)"
    )
    parser.add_argument("--fresh", action="store_true", help="start over even if --out holds this run")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the cohort, splits, weights and data order (default: 0)"
    )
    args = parser.parse_args(argv)
    from pipeline.utils.tiny import enabled as tiny

    args.quick = args.quick or tiny()
    try:
        check_out(args.out)
        _setup_logging(args.out)
        settings = QUICK if args.quick else DEFAULT
        if args.seed is not None:
            settings = dataclasses.replace(settings, seed=args.seed)
        announce(settings, quick=args.quick)
        results = run_demo(args.out, settings, fresh=args.fresh)
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {args.out / 'report.md'}  ({results['total_wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
