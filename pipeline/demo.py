"""The main job on the embedded demo cohort: ``python -m pipeline.demo --out demo`` (what ``make demo`` runs).

Stages, each timed (wall clock and CPU time of this process), with progress bars:

1. **Cohort** (:func:`pipeline.cohort.build_cohort`): subjects simulated from nilearn's MNI152 template, half with
   atrophy, written as ``clean/``, ``gaussian15/``, ``poisson/``, ``masks/`` and ``subjects.csv`` (its ``split``
   column is a stratified subject-level train/val/test split).
2. **Denoiser**: the bundle's ``train_denoise.yaml`` (after ``common.yaml``) through ``monai.bundle.ConfigWorkflow``
   with overrides (:func:`pipeline.bundle_run.create_workflow`), noisy ``gaussian15/`` -> ``clean/``. It trains on
   the cohort's *train* subjects, a few of which validate it; the cohort's val and test subjects stay unseen.
3. **Classifiers**: ``finetune_classifier.yaml`` twice, ``init: denoiser`` (the trained denoiser's encoder) and
   ``init: scratch`` (the same ResNet, random weights), with the same split (the CSV's), epochs, batch, optimiser,
   learning rate and augmentation. The leakage guard checks that no classifier val/test subject was seen by the
   denoiser.
4. **Inference** on the held-out test subjects through ``inference.yaml`` (denoised NIfTI in each scan's own space)
   and ``inference_classifier.yaml`` (a CSV of class probabilities), as a user runs them on new scans.
5. **Classical denoisers** (:mod:`pipeline.classical`): Gaussian filter, median filter and non-local means, each
   with its free parameter tuned on the cohort's *val* subjects, scored on the same test volumes.
6. **Floor**: :func:`pipeline.cohort.logistic_baseline` (cross-validated logistic regression on downsampled volumes).
7. **Report**: ``<out>/report.md`` with PNG figures under ``<out>/figures``, ``<out>/results.json`` with every
   number, ``<out>/demo.log``. ``tensorboard --logdir <out>`` shows the three training runs.

Scores: every volume (noisy input, each method's output, clean reference) is divided by the clean scan's robust
maximum (99.5th percentile of its non-zero voxels, the reference of the cohort's noise level), so the data range is 1
and PSNR/SSIM are comparable across methods (:func:`pipeline.report.volume_quality`).

Running again into the same ``--out`` with the same settings reuses the cohort and resumes (or skips) training from
the checkpoints; other settings, or ``--fresh``, start over (only folders this demo made are removed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.files import atomic_path

__all__ = ["DEFAULT", "QUICK", "DemoSettings", "OutputFolderError", "StageTimer", "check_out", "main", "run_demo"]

logger = logging.getLogger(__name__)

_MARKER = "demo_run.json"
_GENERATED = ("cohort", "models", "runs", "denoised", "predictions", "splits", "figures")
_ENCODER_KEYS = (
    "shortcut_type",
    "bias_downsample",
    "conv1_t_size",
    "conv1_t_stride",
    "widen_factor",
    "block_inplanes",
    "no_max_pool",
    "norm",
    "act",
)
_CLASS_NAMES = ("control", "patient")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's numbers (stored beside the outputs; a change starts the demo over).

    Attributes:
        subjects: cohort size (half with atrophy).
        spacing: cohort voxel size in mm (2 mm gives 80x96x80 volumes).
        seed: seeds the cohort, the splits, the weights and the data order.
        denoiser: ``network_def`` overrides of ``common.yaml`` (ResUnet3D arguments). The default keeps the stem at
            full resolution (``conv1_t_stride=1``, 3^3 kernel) and predicts the noise (``residual_output``): with the
            bundle's stride-2 stem the output is rebuilt from half-resolution features, which cannot represent white
            noise, and in this budget the network stayed at the noisy input's PSNR (measured: 24.7 vs. 24.95 dB
            after 140 iterations), while the full-resolution stem passed the Gaussian filter within ~100.
        denoise_epochs: denoiser epochs (one epoch = every training volume once, ``num_samples`` patches each).
        patch_size: training patch edge (voxels).
        batch_size: denoiser volumes per batch.
        num_samples: patches drawn per volume and epoch.
        learning_rate: denoiser learning rate (Adam, cosine schedule).
        val_interval: validate the denoiser every this many epochs (whole volumes; the best one is kept).
        denoise_val_subjects: cohort *train* subjects held back to validate the denoiser.
        classifier_epochs: epochs of each classifier.
        classifier_batch_size: classifier batch size.
        classifier_learning_rate: classifier learning rate (AdamW, cosine schedule).
        classical: classical denoisers compared (:data:`pipeline.classical.CLASSICAL_DENOISERS` names).
        tuning_subjects: cohort *val* subjects the classical filters' parameters are tuned on.
        quick_grids: use the classical denoisers' short parameter grids.
        figure_subjects: held-out subjects shown in tri-planar figures.
    """

    subjects: int = 32
    spacing: float = 2.0
    seed: int = 0
    denoiser: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "model_depth": 10,
            "levels": 3,
            "block_inplanes": [16, 32, 64, 128],
            "conv1_t_stride": 1,
            "conv1_t_size": 3,
            "residual_output": True,
        }
    )
    denoise_epochs: int = 40
    patch_size: int = 32
    batch_size: int = 2
    num_samples: int = 2
    learning_rate: float = 3e-3
    val_interval: int = 4
    denoise_val_subjects: int = 2
    classifier_epochs: int = 24
    classifier_batch_size: int = 4
    classifier_learning_rate: float = 1e-3
    classical: tuple[str, ...] = ("gaussian", "median", "nl_means")
    tuning_subjects: int = 2
    quick_grids: bool = False
    figure_subjects: int = 2

    def __post_init__(self) -> None:
        positive = (
            "subjects",
            "denoise_epochs",
            "patch_size",
            "batch_size",
            "num_samples",
            "denoise_val_subjects",
            "classifier_epochs",
            "classifier_batch_size",
            "tuning_subjects",
            "figure_subjects",
            "val_interval",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.subjects < 8:
            raise ValueError(f"subjects must be >= 8 (each split part needs both classes), got {self.subjects}")
        for name in ("learning_rate", "classifier_learning_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        from pipeline.classical import CLASSICAL_DENOISERS

        unknown = [m for m in self.classical if m not in CLASSICAL_DENOISERS]
        if unknown:
            raise ValueError(f"classical must name denoisers among {list(CLASSICAL_DENOISERS)}, got {unknown}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


#: The demo ``make demo`` runs (sized for about 15 minutes on 2 CPU cores).
DEFAULT = DemoSettings()

#: A smoke run of every stage in about a minute: 8 subjects at 4 mm (40x48x40), one epoch each.
QUICK = DemoSettings(
    subjects=8,
    spacing=4.0,
    denoiser={
        "model_depth": 10,
        "levels": 2,
        "block_inplanes": [8, 16, 32, 64],
        "conv1_t_stride": 1,
        "conv1_t_size": 3,
        "residual_output": True,
    },
    denoise_epochs=1,
    val_interval=1,
    patch_size=32,
    batch_size=2,
    num_samples=1,
    denoise_val_subjects=1,
    classifier_epochs=1,
    classifier_batch_size=2,
    tuning_subjects=1,
    quick_grids=True,
    figure_subjects=1,
)


@dataclasses.dataclass
class StageRecord:
    """Timing of one stage: wall-clock and CPU seconds (CPU of this process, all threads)."""

    name: str
    wall_s: float
    cpu_s: float
    note: str = ""


class StageTimer:
    """Time named stages (wall clock and process CPU time) and log their start and end."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        """Time the ``with`` block as stage ``name``; the yielded record's ``note`` may be set inside it.

        Args:
            name: stage name (report row).

        Yields:
            The stage's record (appended when the block ends, also on error).
        """
        record = StageRecord(name, 0.0, 0.0)
        logger.info("=== %s ...", name)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield record
        finally:
            record.wall_s = time.perf_counter() - wall
            record.cpu_s = time.process_time() - cpu
            self.records.append(record)
            logger.info(
                "=== %s: %.1f s (CPU %.1f s)%s",
                name,
                record.wall_s,
                record.cpu_s,
                f"; {record.note}" if record.note else "",
            )

    def total(self) -> tuple[float, float]:
        """Wall-clock and CPU seconds since the timer was made."""
        return time.perf_counter() - self._wall0, time.process_time() - self._cpu0


class _CohortProgress(logging.Handler):
    """A progress bar over the cohort's subjects, fed by ``pipeline.cohort``'s per-subject debug records."""

    def __init__(self, total: int) -> None:
        super().__init__(level=logging.DEBUG)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="cohort", unit="subject")

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.DEBUG and str(record.msg).startswith("%s: label"):
            self.bar.update(1)


@contextlib.contextmanager
def _cohort_progress(total: int) -> Iterator[None]:
    cohort_logger = logging.getLogger("pipeline.cohort")
    handler, level = _CohortProgress(total), cohort_logger.level
    cohort_logger.addHandler(handler)
    cohort_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        cohort_logger.removeHandler(handler)
        cohort_logger.setLevel(level)
        handler.bar.close()


def _configs(*names: str) -> list[str]:
    from pipeline.bundle_run import BUNDLE_DIR

    return [os.fspath(BUNDLE_DIR / "configs" / "common.yaml"), *(os.fspath(BUNDLE_DIR / "configs" / n) for n in names)]


def _run_workflow(configs: Sequence[str], **overrides: Any) -> None:
    """Run a bundle training workflow (``initialize`` -> ``run`` -> ``finalize``), raising the config's own error."""
    from pipeline.bundle_run import create_workflow, unwrap_config_error

    workflow = create_workflow(configs, workflow_type="train", logging_file=False, **overrides)
    try:
        workflow.run()
    except Exception as error:
        cause = unwrap_config_error(error)
        if cause is not error:
            raise cause from None
        raise
    finally:
        workflow.finalize()


class OutputFolderError(ValueError):
    """The output folder holds files that the demo did not write (the demo never deletes those)."""


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


def _robust_max(volume: np.ndarray) -> float:
    positive = volume[volume > 0]
    if positive.size == 0:
        raise ValueError("the clean volume has no positive voxel")
    return float(np.percentile(positive, 99.5))


def _load(path: str | os.PathLike) -> np.ndarray:
    return np.asarray(nib.load(os.fspath(path)).get_fdata(dtype=np.float32))


def _case(cohort_dir: Path, noise_dir: str, subject: str) -> dict[str, Any]:
    """Noisy, clean and mask volumes of one subject on the clean scan's robust-maximum scale."""
    name = f"{subject}.nii.gz"
    clean = _load(cohort_dir / "clean" / name)
    reference = _robust_max(clean)
    return {
        "subject": subject,
        "reference": reference,
        "clean": clean / reference,
        "noisy": _load(cohort_dir / noise_dir / name) / reference,
        "mask": (_load(cohort_dir / "masks" / name) > 0).astype(np.float32),
    }


def _mean_quality(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    from pipeline.report import QUALITY_KEYS

    return {key: float(np.mean([r[key] for r in rows])) for key in (*QUALITY_KEYS, "seconds")}


def _classification_scores(csv_path: Path, labels: Mapping[str, int]) -> dict[str, Any]:
    """Balanced accuracy and ROC AUC of a predictions CSV (``prob_patient``) against the cohort labels."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = np.array([labels[r["subject"]] for r in rows])
    prob = np.array([float(r[f"prob_{_CLASS_NAMES[1]}"]) for r in rows])
    predicted = np.array([_CLASS_NAMES.index(r["prediction"]) for r in rows])
    auc = float(roc_auc_score(truth, prob)) if len(set(truth.tolist())) == 2 else float("nan")
    return {
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "auc": auc,
        "n": len(rows),
        "subjects": {
            r["subject"]: {"label": int(labels[r["subject"]]), "prob_patient": float(prob[k])}
            for k, r in enumerate(rows)
        },
    }


def _best(series: Sequence[tuple[int, float]]) -> tuple[int, float] | tuple[None, float]:
    if not series:
        return None, float("nan")
    return max(series, key=lambda point: point[1])


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
    """
    from pipeline.classical import get_denoiser, tune
    from pipeline.cohort import CohortParameters, build_cohort, logistic_baseline
    from pipeline.datasets import load_subjects_csv
    from pipeline.infer import classify_scans, denoise_scans
    from pipeline.report import volume_quality
    from pipeline.seed import seed_everything
    from pipeline.splits import SubjectSplits, save_splits

    out = Path(out).resolve()
    timer = StageTimer()
    resume = _prepare_out(out, settings, fresh)
    started = _dt.datetime.now(_dt.UTC)
    params = CohortParameters(spacing=settings.spacing)
    noise_dir = f"gaussian{params.gaussian_level:g}"
    cohort_dir = out / "cohort"
    net = dict(settings.denoiser)
    net_overrides = {f"network_def::{k}": v for k, v in net.items()}
    encoder_kwargs = {k: v for k, v in net.items() if k in _ENCODER_KEYS}
    depth = int(net.get("model_depth", 18))

    # ------------------------------------------------------------------ 1. cohort
    with timer.stage("build the demo cohort") as record:
        cohort_json = cohort_dir / "cohort.json"
        if resume and cohort_json.is_file():
            record.note = "reused from the previous run"
        else:
            with _cohort_progress(settings.subjects):
                build_cohort(cohort_dir, settings.subjects, settings.seed, params)
        cohort_meta = json.loads(cohort_json.read_text(encoding="utf-8"))
        shape = [int(s) for s in cohort_meta["shape"]]
        items = load_subjects_csv(cohort_dir / "subjects.csv", class_names=list(_CLASS_NAMES))
        labels = {str(i["subject"]): int(i["label"]) for i in items}
        parts = {p: sorted(str(i["subject"]) for i in items if i["split"] == p) for p in ("train", "val", "test")}
        if len(parts["train"]) <= settings.denoise_val_subjects or not parts["val"] or not parts["test"]:
            raise ValueError(f"the cohort's split is too small for the demo: { {p: len(s) for p, s in parts.items()} }")
        # the denoiser sees only classifier-training subjects: its own validation comes out of them
        denoiser_splits = SubjectSplits(
            train=tuple(parts["train"][: -settings.denoise_val_subjects]),
            val=tuple(parts["train"][-settings.denoise_val_subjects :]),
            test=tuple(parts["test"]),
            seed=settings.seed,
        )
        splits_file = save_splits(denoiser_splits, out / "splits" / "denoiser.json")

    # ------------------------------------------------------------------ 2. denoiser
    denoiser_models, denoiser_run = out / "models" / "denoiser", out / "runs" / "denoiser"
    with timer.stage("train the denoiser (train_denoise.yaml)"):
        seed_everything(settings.seed)
        _run_workflow(
            _configs("train_denoise.yaml"),
            dataset_dir=os.fspath(cohort_dir),
            noise_dir=noise_dir,
            clean_dir="clean",
            mask_dir="masks",
            splits_file=os.fspath(splits_file),
            ckpt_dir=os.fspath(denoiser_models),
            output_dir=os.fspath(denoiser_run),
            num_epochs=settings.denoise_epochs,
            ckpt_interval=settings.denoise_epochs,
            patch_size=[settings.patch_size] * 3,
            batch_size=settings.batch_size,
            num_samples=settings.num_samples,
            learning_rate=settings.learning_rate,
            val_interval=settings.val_interval,
            cache_rate=1.0,
            num_workers=0,
            seed=settings.seed,
            **{"validate::inferer::roi_size": shape},  # whole volumes in one window: exact and fastest
            **net_overrides,
        )
    denoiser_ckpt = denoiser_models / "model.pt"

    # ------------------------------------------------------------------ 3. classifiers
    classifier_common = {
        "dataset_dir": os.fspath(cohort_dir),
        "class_names": list(_CLASS_NAMES),
        "model_depth": depth,
        "input_size": shape,
        "num_epochs": settings.classifier_epochs,
        "ckpt_interval": settings.classifier_epochs,
        "batch_size": settings.classifier_batch_size,
        "learning_rate": settings.classifier_learning_rate,
        "cache_rate": 1.0,
        "num_workers": 0,
        "seed": settings.seed,
        "denoiser_ckpt": os.fspath(denoiser_ckpt),
        "denoiser_run": os.fspath(denoiser_run),
        **{f"denoiser_def::{k}": v for k, v in net.items()},
    }
    inits = {"denoiser": "denoiser encoder", "scratch": "scratch"}
    for init, title in inits.items():
        with timer.stage(f"fine-tune the classifier from {title} (finetune_classifier.yaml)"):
            seed_everything(settings.seed)
            extra = {} if init == "denoiser" else {f"network_def::{k}": v for k, v in encoder_kwargs.items()}
            _run_workflow(
                _configs("finetune_classifier.yaml"),
                init=init,
                ckpt_dir=os.fspath(out / "models" / f"classifier_{init}"),
                output_dir=os.fspath(out / "runs" / f"classifier_{init}"),
                **classifier_common,
                **extra,
            )

    # ------------------------------------------------------------------ 4. inference on held-out scans
    test = parts["test"]
    with timer.stage("denoise the held-out scans (inference.yaml)") as record:
        summary = denoise_scans(
            [{"image": os.fspath(cohort_dir / noise_dir / f"{s}.nii.gz"), "subject": s} for s in test],
            out / "denoised",
            weights=denoiser_ckpt,
            overwrite=True,
            patch_size=shape,
            num_workers=0,
            **net_overrides,
        )
        summary.raise_if_failed()
        network_seconds = {Path(r.source).name.split(".")[0]: r.seconds for r in summary.results}
        record.note = f"{len(test)} scans"
    predictions: dict[str, Path] = {}
    with timer.stage("classify the held-out scans (inference_classifier.yaml)") as record:
        for init in inits:
            predictions[init] = out / "predictions" / f"classifier_{init}.csv"
            classify_scans(
                [{"image": os.fspath(cohort_dir / "clean" / f"{s}.nii.gz"), "subject": s} for s in test],
                predictions[init],
                weights=out / "models" / f"classifier_{init}" / "classifier.pt",
                class_names=list(_CLASS_NAMES),
                model_depth=depth,
                input_size=shape,
                num_workers=0,
                **{f"network_def::{k}": v for k, v in encoder_kwargs.items()},
            ).raise_if_failed()
        record.note = f"{len(test)} scans x {len(inits)} classifiers"

    # ------------------------------------------------------------------ 5. scores: network and classical filters
    from tqdm.auto import tqdm

    quality: dict[str, list[dict[str, Any]]] = {}
    parameters: dict[str, str] = {}
    with timer.stage("score the network and the classical denoisers") as record:
        cases = [_case(cohort_dir, noise_dir, s) for s in test]
        tuning = [_case(cohort_dir, noise_dir, s) for s in parts["val"][: settings.tuning_subjects]]
        quality["noisy"] = [{**volume_quality(c["noisy"], c["clean"], c["mask"]), "seconds": 0.0} for c in cases]
        parameters["noisy"] = "-"
        with tqdm(total=len(settings.classical) * (len(cases) + 1), desc="classical denoisers", unit="step") as bar:
            for name in settings.classical:
                method = get_denoiser(name)
                param, _ = tune(method, tuning, quick=settings.quick_grids)
                bar.update(1)
                parameters[name] = "-" if param is None else f"{method.param} = {param}"
                rows = []
                for case in cases:
                    start = time.perf_counter()
                    denoised = method(case["noisy"], param)
                    seconds = time.perf_counter() - start
                    rows.append({**volume_quality(denoised, case["clean"], case["mask"]), "seconds": seconds})
                    bar.update(1)
                quality[name] = rows
        denoised_volumes = {}
        rows = []
        for case in cases:
            volume = _load(out / "denoised" / f"{case['subject']}_denoised.nii.gz") / case["reference"]
            denoised_volumes[case["subject"]] = volume
            rows.append(
                {**volume_quality(volume, case["clean"], case["mask"]), "seconds": network_seconds[case["subject"]]}
            )
        quality["resunet3d"] = rows
        parameters["resunet3d"] = "best validation epoch"
        record.note = f"{len(cases)} test volumes, parameters tuned on {len(tuning)} val volumes"

    with timer.stage("logistic-regression floor (pipeline.cohort.logistic_baseline)"):
        floor = logistic_baseline(cohort_dir, seed=settings.seed)

    # ------------------------------------------------------------------ 6. report
    from pipeline import report as rp

    classification = {init: _classification_scores(predictions[init], labels) for init in inits}
    curves = {name: rp.read_scalars(out / "runs" / name) for name in ("denoiser", *(f"classifier_{i}" for i in inits))}
    results = {
        "started": started.isoformat(timespec="seconds"),
        "settings": settings.to_dict(),
        "machine": _machine(),
        "cohort": {
            "subjects": settings.subjects,
            "shape": shape,
            "spacing_mm": settings.spacing,
            "splits": parts,
            "denoiser_splits": {"train": list(denoiser_splits.train), "val": list(denoiser_splits.val)},
        },
        "denoising": {
            name: {"parameter": parameters[name], "mean": _mean_quality(rows), "per_volume": rows}
            for name, rows in quality.items()
        },
        "classification": classification,
        "logistic_floor_balanced_accuracy": floor,
        "curves": curves,
    }
    with timer.stage("write the report") as record:
        _write_report(out, results, cases, denoised_volumes, timer)
        record.note = "report.md, figures/"
    results["stages"] = [dataclasses.asdict(r) for r in timer.records]
    results["total_wall_s"], results["total_cpu_s"] = timer.total()
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=_json_default) + "\n", encoding="utf-8")
    # the report's stage table is written before its own stage ends; add the final line now
    _append_totals(out / "report.md", timer)
    logger.info("wrote %s in %.0f s (CPU %.0f s)", out / "report.md", *timer.total())
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _machine() -> dict[str, Any]:
    import monai
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


_TITLES = {
    "noisy": "Noisy input (Gaussian, sigma 15/255)",
    "gaussian": "Gaussian filter (best sigma)",
    "median": "Median filter",
    "nl_means": "Non-local means (scikit-image)",
    "curvature_flow": "Curvature flow (SimpleITK)",
    "tv": "Total variation",
    "bm4d": "BM4D",
    "resunet3d": "**ResUnet3D** (inference.yaml)",
}


_SHORT = {"noisy": "noisy", "gaussian": "Gaussian", "median": "median", "nl_means": "NLM", "resunet3d": "ResUnet3D"}


def _denoiser_summary(settings: Mapping[str, Any], curves: Mapping[str, Any]) -> str:
    """One paragraph: the denoiser's architecture, size, budget and best validation epoch."""
    from networks import ResUnet3D

    net = dict(settings["denoiser"])
    parameters = sum(p.numel() for p in ResUnet3D(**net).parameters() if p.requires_grad)
    epoch, best = _best(curves["denoiser"].get("psnr_brain", []))
    noisy = dict(curves["denoiser"].get("psnr_brain_noisy", [])).get(epoch, float("nan"))
    iterations = len(curves["denoiser"].get("train_loss", []))
    arguments = ", ".join(f"{k}={v}" for k, v in net.items())
    return (
        f"ResUnet3D({arguments}): {parameters / 1e6:.2f} M trainable parameters, {settings['denoise_epochs']} epochs "
        f"({iterations} iterations of {settings['batch_size']} volumes x {settings['num_samples']} random "
        f"{settings['patch_size']}^3 patches inside the brain), Adam lr {settings['learning_rate']:g} with a cosine "
        f"schedule, L1 loss. Its weights are those of the best validation epoch ({epoch}: PSNR in the brain "
        f"{best:.2f} dB vs. {noisy:.2f} dB for the noisy input)."
    )


def _write_report(
    out: Path,
    results: Mapping[str, Any],
    cases: Sequence[Mapping[str, Any]],
    denoised: Mapping[str, np.ndarray],
    timer: StageTimer,
) -> None:
    from pipeline import report as rp

    settings = results["settings"]
    figures = out / "figures"
    doc = rp.Report(out / "report.md", "resUnet3D demo report")
    machine = results["machine"]
    cohort = results["cohort"]
    doc.paragraph(
        f"Run started {results['started']} on {machine['cpus']} CPU(s) ({machine['processor']}, torch "
        f"{machine['torch']} with {machine['torch_threads']} threads, MONAI {machine['monai']}, device "
        f"`{machine['device']}`). Every number and figure below was produced by this run "
        f"(`python -m pipeline.demo`); all of them are also in `results.json`."
    )
    doc.heading("Data")
    parts = cohort["splits"]
    doc.paragraph(
        f"{cohort['subjects']} synthetic subjects from nilearn's MNI152 template (`pipeline.cohort`), "
        f"{'x'.join(map(str, cohort['shape']))} voxels at {cohort['spacing_mm']:g} mm, half with simulated atrophy "
        f"(label 1). Subject-level split from `subjects.csv`: {len(parts['train'])} train, {len(parts['val'])} val, "
        f"{len(parts['test'])} test. The denoiser trained on {len(cohort['denoiser_splits']['train'])} train "
        f"subjects and validated on the other {len(cohort['denoiser_splits']['val'])}; the classifiers "
        f"trained on the train part and chose their best epoch on the val part; the classical filters' parameters "
        f"were tuned on val subjects. **Everything below is scored on the {len(parts['test'])} test subjects, which "
        f"no model or parameter choice saw**: {', '.join(parts['test'])}."
    )

    doc.heading("Denoising: Gaussian noise, sigma 15/255")
    doc.paragraph(_denoiser_summary(settings, results["curves"]))
    rows = []
    for name, entry in results["denoising"].items():
        mean = entry["mean"]
        rows.append(
            [
                _TITLES.get(name, name),
                entry["parameter"],
                mean["psnr_brain"],
                mean["ssim_brain"],
                mean["psnr_volume"],
                mean["ssim_volume"],
                None if name == "noisy" else mean["seconds"],
            ]
        )
    doc.table(
        ["method", "parameter", "PSNR brain (dB)", "SSIM brain", "PSNR volume (dB)", "SSIM volume", "s / volume"],
        rows,
        digits=[0, 0, 2, 4, 2, 4, 2],
        note=(
            f"Means over the {len(cases)} test volumes. Intensities divided by each clean scan's robust maximum "
            "(99.5th percentile of its non-zero voxels), data range 1. *brain*: inside the brain mask; *volume*: the "
            "whole "
            "volume, whose zero background inflates the figures. Classical filters: seconds of the filter on the "
            "array; ResUnet3D: seconds per scan through `inference.yaml` (read, preprocess, network, invert to the "
            "scan's space, write NIfTI)."
        ),
    )
    per_volume = [
        [case["subject"], *(results["denoising"][n]["per_volume"][i]["psnr_brain"] for n in results["denoising"])]
        for i, case in enumerate(cases)
    ]
    doc.table(
        ["test subject", *(_SHORT.get(n, n) for n in results["denoising"])],
        per_volume,
        note="PSNR in the brain mask (dB) per test volume.",
    )
    for case in cases[: settings["figure_subjects"]]:
        subject = case["subject"]
        path = rp.triplanar_figure(
            {"noisy": case["noisy"], "ResUnet3D": denoised[subject], "clean": case["clean"]},
            figures / f"triplanar_{subject}.png",
            title=f"{subject} (held out)",
            error_of=("ResUnet3D", "clean"),
            mask=case["mask"],
            vmax=1.0,
        )
        doc.figure(path, f"{subject}: noisy input, ResUnet3D output, clean reference and |error|")

    doc.heading("Classification: atrophy vs. control")
    classification = results["classification"]
    curves = results["curves"]
    rows = []
    for init, title in (("scratch", "ResNet from scratch"), ("denoiser", "ResNet from the denoiser's encoder")):
        scores = classification[init]
        epoch, best_val = _best(curves[f"classifier_{init}"].get("balanced_accuracy", []))
        rows.append([title, scores["balanced_accuracy"], scores["auc"], best_val, epoch])
    rows.append(
        ["Logistic regression (floor)", results["logistic_floor_balanced_accuracy"], None, None, None],
    )
    doc.table(
        ["classifier", "balanced accuracy (test)", "ROC AUC (test)", "best val balanced accuracy", "best epoch"],
        rows,
        digits=[0, 3, 3, 3, 0],
        note=(
            f"Test: the {len(cases)} held-out subjects' clean scans (the subjects CSV's) classified through "
            "`inference_classifier.yaml` with each run's best-validation weights. Both networks: same split, "
            f"{settings['classifier_epochs']} epochs, "
            f"batch {settings['classifier_batch_size']}, AdamW lr {settings['classifier_learning_rate']:g}, same "
            "augmentation. Floor: `pipeline.cohort.logistic_baseline`, logistic regression on 6 mm block averages "
            "of the clean volumes, 5-fold cross-validated over all subjects (it has no AUC). With this few test "
            "subjects, one subject moves balanced accuracy by a large step: read the figures as a smoke test of "
            "the chain, not as a benchmark."
        ),
    )

    doc.heading("Training curves")
    den = curves["denoiser"]
    panels = {
        "denoiser: training loss (L1)": {"loss": den.get("train_loss", [])},
        "denoiser: validation PSNR in the brain (dB)": {
            "ResUnet3D": den.get("psnr_brain", []),
            "noisy input": den.get("psnr_brain_noisy", []),
        },
        "classifiers: training loss (cross-entropy)": {
            init: curves[f"classifier_{init}"].get("train_loss", []) for init in ("scratch", "denoiser")
        },
        "classifiers: validation balanced accuracy": {
            init: curves[f"classifier_{init}"].get("balanced_accuracy", []) for init in ("scratch", "denoiser")
        },
    }
    path = rp.curves_figure(
        panels,
        figures / "training_curves.png",
        xlabels={
            "denoiser: training loss (L1)": "iteration",
            "classifiers: training loss (cross-entropy)": "iteration",
        },
    )
    doc.figure(path, "Training curves read back from the runs' TensorBoard event files")
    doc.paragraph(f"All runs, with images of each validation: `tensorboard --logdir {out}`.")

    doc.heading("Stage timings")
    total_wall, total_cpu = timer.total()
    doc.table(
        ["stage", "wall (s)", "CPU (s)", "note"],
        [[r.name, r.wall_s, r.cpu_s, r.note or ""] for r in timer.records],
        digits=[0, 1, 1, 0],
        align="lrrl",
        note=(
            "CPU: CPU seconds of this process over all its threads. On a shared machine the wall clock also counts "
            "the time other processes held the cores."
        ),
    )
    doc.paragraph(f"Settings: `{json.dumps(settings)}`")
    doc.write()


def _append_totals(report: Path, timer: StageTimer) -> None:
    wall, cpu = timer.total()
    text = report.read_text(encoding="utf-8")
    line = f"**Total: {wall:.0f} s wall ({wall / 60:.1f} min), {cpu:.0f} s CPU**, report stage included.\n"
    with atomic_path(report) as tmp:
        tmp.write_text(text + "\n" + line, encoding="utf-8")


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pipeline.demo --out demo [--quick] [--fresh]``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for an unusable ``--out``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.demo",
        description="Build the demo cohort, train the denoiser and two classifiers, run inference, write a report.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 8 small subjects, one epoch each (also RESUNET3D_TINY=1)"
    )
    parser.add_argument("--fresh", action="store_true", help="start over even if --out holds this run")
    args = parser.parse_args(argv)
    from pipeline.tiny import enabled as tiny

    args.quick = args.quick or tiny()
    try:
        check_out(args.out)
        _setup_logging(args.out)
        results = run_demo(args.out, QUICK if args.quick else DEFAULT, fresh=args.fresh)
    except OutputFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {args.out / 'report.md'}  ({results['total_wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
