"""The main job on the embedded demo cohort: ``python -m pipeline.demo --out demo`` (what ``make demo`` runs).

Stages, each timed (wall clock and CPU time of this process), with progress bars:

1. **Cohort** (:func:`pipeline.data.cohort.build_cohort`): subjects simulated from nilearn's MNI152 template, half with
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
5. **Classical denoisers** (:mod:`pipeline.evaluation.classical`): Gaussian filter, median filter and non-local
   means, each with its free parameter tuned on the cohort's *val* subjects, scored on the same test volumes.
6. **Floor**: :func:`pipeline.data.cohort.logistic_baseline` (cross-validated logistic regression on downsampled
   volumes).
7. **Report** (:mod:`pipeline.demo.report`): ``<out>/report.md`` with PNG figures under ``<out>/figures``,
   ``<out>/results.json`` with every number, ``<out>/demo.log``. ``tensorboard --logdir <out>`` shows the three
   training runs.

Scores: every volume (noisy input, each method's output, clean reference) is divided by the clean scan's robust
maximum (99.5th percentile of its non-zero voxels, the reference of the cohort's noise level), so the data range is 1
and PSNR/SSIM are comparable across methods (:func:`pipeline.evaluation.metrics.volume_quality`).

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

from pipeline.demo.report import append_totals, write_report
from pipeline.errors import OutputFolderError
from pipeline.evaluation import stats
from pipeline.utils.files import atomic_path
from transforms.intensity import robust_max

__all__ = [
    "DEFAULT",
    "QUICK",
    "DemoSettings",
    "OutputFolderError",
    "StageTimer",
    "announce",
    "check_out",
    "main",
    "run_demo",
]

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
#: The demo's figures (README, report) were measured in float32; ``precision: auto`` would turn bf16 on where the CPU
#: has it natively and change them, so the demo pins float32 on every CPU.
_PRECISION = "fp32"
#: Wall minutes of the default demo on 2 idle cores, set-up excluded (README, 2026-12-06): a 2-core AMD EPYC with
#: AVX-512 and AVX512-BF16, and the same CPU with torch's and oneDNN's kernels limited to AVX2.
_MEASURED_MIN = {"avx512": 16.4, "avx2": 18.0}


def _small_denoiser() -> dict[str, Any]:
    """The shipped small denoiser (:data:`networks.presets.PRESETS`), imported only when a setting is built."""
    from networks.presets import preset

    return preset("small")


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
            after 140 iterations), while the full-resolution stem passed the Gaussian filter within ~100. Instance
            norm instead of batch norm: with batch norm, whose running statistics mix brain and air patches, one
            seed's validation PSNR swung between 10 and 29 dB while its training loss fell; instance norm's rose
            steadily on every seed (README, Findings).
        denoise_epochs: denoiser epochs (one epoch = every training volume once, ``num_samples`` patches each).
            160: with 80 the network tied non-local means in the brain and lost to it over the whole volume; with
            160 it beat it in both on every seed (README, Findings).
        patch_size: training patch edge (voxels).
        batch_size: denoiser volumes per batch.
        num_samples: patches drawn per volume and epoch.
        learning_rate: denoiser learning rate (Adam, cosine schedule).
        fresh_noise: draw the cohort's noise (the noise of its ``gaussian15/`` folder, so the test volumes' noise
            model) afresh on the clean target for every training patch (``train_denoise.yaml``'s ``train_noise``);
            ``False`` trains on the folder's one fixed draw per subject, which the network learns by heart.
        noise_range: with ``fresh_noise``, draw each patch's noise level from this ``(low, high)`` range (0-255
            scale, ``train_denoise.yaml``'s ``train_noise_level``) instead of the folder's one level: a blind
            denoiser for scans whose noise level is not known. ``None`` trains at the folder's level.
        background_fraction: share of training patches centred outside the brain (the cohort's air): with none the
            network never sees the background and leaves its noise in place.
        val_interval: validate the denoiser every this many epochs (whole volumes; the best one is kept).
        window: sliding-window tile edge (voxels) of the denoiser's validation and inference, as the bundle's
            ``patch_size``: instance norm takes each window's own statistics, so windows of the training patch's
            size; ``None`` runs each volume in one window.
        denoise_val_subjects: cohort *train* subjects held back to validate the denoiser.
        classifier_epochs: epochs of each classifier.
        classifier_batch_size: classifier batch size.
        classifier_learning_rate: classifier learning rate (AdamW, cosine schedule).
        classical: classical denoisers compared (:data:`pipeline.evaluation.classical.CLASSICAL_DENOISERS` names).
        tuning_subjects: cohort *val* subjects the classical filters' parameters are tuned on.
        quick_grids: use the classical denoisers' short parameter grids.
        figure_subjects: held-out subjects shown in tri-planar figures.
    """

    subjects: int = 32
    spacing: float = 2.0
    seed: int = 0
    denoiser: Mapping[str, Any] = dataclasses.field(default_factory=_small_denoiser)
    denoise_epochs: int = 160
    patch_size: int = 32
    batch_size: int = 2
    num_samples: int = 2
    learning_rate: float = 3e-3
    fresh_noise: bool = True
    noise_range: tuple[float, float] | None = None
    background_fraction: float = 0.25
    val_interval: int = 4
    window: int | None = 32
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
        if self.noise_range is not None and not (
            len(self.noise_range) == 2 and 0 < self.noise_range[0] <= self.noise_range[1] and self.fresh_noise
        ):
            raise ValueError(
                f"noise_range must be (low, high), 0 < low <= high, with fresh_noise; got {self.noise_range}"
            )
        if self.window is not None and self.window < 8:
            raise ValueError(f"window must be None or >= 8 voxels, got {self.window}")
        if not 0 <= self.background_fraction < 1:
            raise ValueError(f"background_fraction must be in [0, 1), got {self.background_fraction}")
        for name in ("learning_rate", "classifier_learning_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        from pipeline.evaluation.classical import CLASSICAL_DENOISERS

        unknown = [m for m in self.classical if m not in CLASSICAL_DENOISERS]
        if unknown:
            raise ValueError(f"classical must name denoisers among {list(CLASSICAL_DENOISERS)}, got {unknown}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


#: The demo ``make demo`` runs (its measured duration: :data:`_MEASURED_MIN`).
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
        "norm": "instance",
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
    """A progress bar over the cohort's subjects, fed by ``pipeline.data.cohort``'s per-subject debug records."""

    def __init__(self, total: int) -> None:
        super().__init__(level=logging.DEBUG)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="cohort", unit="subject")

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.DEBUG and str(record.msg).startswith("%s: label"):
            self.bar.update(1)


@contextlib.contextmanager
def _cohort_progress(total: int) -> Iterator[None]:
    cohort_logger = logging.getLogger("pipeline.data.cohort")
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

    workflow = create_workflow(
        configs, workflow_type="train", logging_file=False, **{"precision": _PRECISION, **overrides}
    )
    try:
        workflow.run()
    except Exception as error:
        cause = unwrap_config_error(error)
        if cause is not error:
            raise cause from None
        raise
    finally:
        workflow.finalize()


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


def _load(path: str | os.PathLike) -> np.ndarray:
    return np.asarray(nib.load(os.fspath(path)).get_fdata(dtype=np.float32))


def _case(cohort_dir: Path, noise_dir: str, subject: str) -> dict[str, Any]:
    """Noisy, clean and mask volumes of one subject on the clean scan's robust-maximum scale."""
    name = f"{subject}.nii.gz"
    clean = _load(cohort_dir / "clean" / name)
    reference = robust_max(clean)
    return {
        "subject": subject,
        "reference": reference,
        "clean": clean / reference,
        "noisy": _load(cohort_dir / noise_dir / name) / reference,
        "mask": (_load(cohort_dir / "masks" / name) > 0).astype(np.float32),
    }


def _mean_quality(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    from pipeline.evaluation.metrics import QUALITY_KEYS

    return {key: float(np.mean([r[key] for r in rows])) for key in (*QUALITY_KEYS, "seconds")}


def _classification_scores(csv_path: Path, labels: Mapping[str, int]) -> dict[str, Any]:
    """Balanced accuracy and ROC AUC of a predictions CSV (``prob_patient``) against the cohort labels.

    Each comes with its 95 % interval (``*_interval``: bootstrap over the test subjects).
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = np.array([labels[r["subject"]] for r in rows])
    prob = np.array([float(r[f"prob_{_CLASS_NAMES[1]}"]) for r in rows])
    predicted = np.array([_CLASS_NAMES.index(r["prediction"]) for r in rows])
    auc = float(roc_auc_score(truth, prob)) if len(set(truth.tolist())) == 2 else float("nan")
    intervals = {  # 95 % bootstrap over the test subjects
        name: list(stats.bootstrap(statistic, 1, len(rows))[1:])
        for name, statistic in (
            ("balanced_accuracy_interval", lambda _, c: stats.balanced_accuracy(predicted[c], truth[c])),
            ("auc_interval", lambda _, c: stats.auc(prob[c], truth[c])),
        )
    }
    return {
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "auc": auc,
        **intervals,
        "n": len(rows),
        "subjects": {
            r["subject"]: {"label": int(labels[r["subject"]]), "prob_patient": float(prob[k])}
            for k, r in enumerate(rows)
        },
    }


@dataclasses.dataclass(frozen=True)
class _CohortInfo:
    """What the later stages need to know about the cohort."""

    dir: Path
    noise_dir: str
    shape: list[int]
    labels: dict[str, int]
    parts: dict[str, list[str]]
    denoiser_splits: Any
    splits_file: Path


def _cohort_stage(out: Path, settings: DemoSettings, resume: bool, record: StageRecord) -> _CohortInfo:
    """Stage 1: build (or reuse) the cohort, read its split, and carve the denoiser's own split out of *train*."""
    from pipeline.data.cohort import CohortParameters, build_cohort
    from pipeline.data.datasets import load_subjects_csv
    from pipeline.data.splits import SubjectSplits, save_splits

    params = CohortParameters(spacing=settings.spacing)
    cohort_dir = out / "cohort"
    cohort_json = cohort_dir / "cohort.json"
    if resume and cohort_json.is_file():
        record.note = "reused from the previous run"
    else:
        with _cohort_progress(settings.subjects):
            build_cohort(cohort_dir, settings.subjects, settings.seed, params)
    cohort_meta = json.loads(cohort_json.read_text(encoding="utf-8"))
    items = load_subjects_csv(cohort_dir / "subjects.csv", class_names=list(_CLASS_NAMES))
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
    return _CohortInfo(
        dir=cohort_dir,
        noise_dir=f"gaussian{params.gaussian_level:g}",
        shape=[int(s) for s in cohort_meta["shape"]],
        labels={str(i["subject"]): int(i["label"]) for i in items},
        parts=parts,
        denoiser_splits=denoiser_splits,
        splits_file=save_splits(denoiser_splits, out / "splits" / "denoiser.json"),
    )


def _network_overrides(settings: DemoSettings, prefix: str = "network_def", encoder_only: bool = False) -> dict:
    """The denoiser's ResUnet3D arguments as bundle overrides ``{prefix}::{key}`` (or only its encoder's)."""
    net = dict(settings.denoiser)
    return {f"{prefix}::{k}": v for k, v in net.items() if not encoder_only or k in _ENCODER_KEYS}


def _window(settings: DemoSettings, cohort: _CohortInfo) -> list[int]:
    """The denoiser's sliding-window tile: ``settings.window`` cubed, or the whole volume in one window."""
    return list(cohort.shape) if settings.window is None else [settings.window] * 3


def _train_denoiser(out: Path, settings: DemoSettings, cohort: _CohortInfo) -> None:
    """Stage 2: ``train_denoise.yaml`` on the denoiser's split, noisy -> clean."""
    from pipeline.utils.seed import seed_everything

    seed_everything(settings.seed)
    _run_workflow(
        _configs("train_denoise.yaml"),
        dataset_dir=os.fspath(cohort.dir),
        noise_dir=cohort.noise_dir,
        clean_dir="clean",
        mask_dir="masks",
        splits_file=os.fspath(cohort.splits_file),
        ckpt_dir=os.fspath(out / "models" / "denoiser"),
        output_dir=os.fspath(out / "runs" / "denoiser"),
        num_epochs=settings.denoise_epochs,
        ckpt_interval=settings.denoise_epochs,
        patch_size=[settings.patch_size] * 3,
        batch_size=settings.batch_size,
        num_samples=settings.num_samples,
        learning_rate=settings.learning_rate,
        train_noise=cohort.noise_dir if settings.fresh_noise else "",
        train_noise_level=list(settings.noise_range) if settings.noise_range else None,
        background_fraction=settings.background_fraction,
        val_interval=settings.val_interval,
        cache_rate=1.0,
        num_workers=0,
        seed=settings.seed,
        **{"validate::inferer::roi_size": _window(settings, cohort)},
        **_network_overrides(settings),
    )


def _train_classifier(out: Path, settings: DemoSettings, cohort: _CohortInfo, init: str) -> None:
    """Stage 3: ``finetune_classifier.yaml`` from the denoiser's encoder (``init="denoiser"``) or from scratch."""
    from pipeline.utils.seed import seed_everything

    seed_everything(settings.seed)
    extra = {} if init == "denoiser" else _network_overrides(settings, encoder_only=True)
    _run_workflow(
        _configs("finetune_classifier.yaml"),
        init=init,
        ckpt_dir=os.fspath(out / "models" / f"classifier_{init}"),
        output_dir=os.fspath(out / "runs" / f"classifier_{init}"),
        dataset_dir=os.fspath(cohort.dir),
        class_names=list(_CLASS_NAMES),
        model_depth=int(settings.denoiser.get("model_depth", 18)),
        input_size=cohort.shape,
        num_epochs=settings.classifier_epochs,
        ckpt_interval=settings.classifier_epochs,
        batch_size=settings.classifier_batch_size,
        learning_rate=settings.classifier_learning_rate,
        cache_rate=1.0,
        num_workers=0,
        seed=settings.seed,
        denoiser_ckpt=os.fspath(out / "models" / "denoiser" / "model.pt"),
        denoiser_run=os.fspath(out / "runs" / "denoiser"),
        **_network_overrides(settings, prefix="denoiser_def"),
        **extra,
    )


def _denoise_test_scans(out: Path, settings: DemoSettings, cohort: _CohortInfo) -> dict[str, float]:
    """Stage 4a: ``inference.yaml`` on the test subjects' noisy scans; returns the seconds per subject."""
    from pipeline.inference.infer import denoise_scans

    test = cohort.parts["test"]
    summary = denoise_scans(
        [{"image": os.fspath(cohort.dir / cohort.noise_dir / f"{s}.nii.gz"), "subject": s} for s in test],
        out / "denoised",
        weights=out / "models" / "denoiser" / "model.pt",
        overwrite=True,
        precision=_PRECISION,
        patch_size=_window(settings, cohort),
        num_workers=0,
        **_network_overrides(settings),
    )
    summary.raise_if_failed()
    return {Path(r.source).name.split(".")[0]: r.seconds for r in summary.results}


def _classify_test_scans(out: Path, settings: DemoSettings, cohort: _CohortInfo, init: str) -> Path:
    """Stage 4b: ``inference_classifier.yaml`` on the test subjects' clean scans; returns the predictions CSV."""
    from pipeline.inference.infer import classify_scans

    test = cohort.parts["test"]
    predictions = out / "predictions" / f"classifier_{init}.csv"
    classify_scans(
        [{"image": os.fspath(cohort.dir / "clean" / f"{s}.nii.gz"), "subject": s} for s in test],
        predictions,
        weights=out / "models" / f"classifier_{init}" / "classifier.pt",
        precision=_PRECISION,
        class_names=list(_CLASS_NAMES),
        model_depth=int(settings.denoiser.get("model_depth", 18)),
        input_size=cohort.shape,
        num_workers=0,
        **_network_overrides(settings, encoder_only=True),
    ).raise_if_failed()
    return predictions


def _score_classical(
    settings: DemoSettings, cases: Sequence[Mapping[str, Any]], tuning: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Stage 5a: each classical denoiser tuned on the *val* volumes, then scored on the test volumes."""
    from tqdm.auto import tqdm

    from pipeline.evaluation.classical import get_denoiser, tune
    from pipeline.evaluation.metrics import volume_quality

    quality: dict[str, list[dict[str, Any]]] = {}
    parameters: dict[str, str] = {}
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
    return quality, parameters


def _score_network(
    out: Path, cases: Sequence[Mapping[str, Any]], network_seconds: Mapping[str, float]
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Stage 5b: the network's denoised test scans (as written by ``inference.yaml``) on each case's scale."""
    from pipeline.evaluation.metrics import volume_quality

    rows, volumes = [], {}
    for case in cases:
        volume = _load(out / "denoised" / f"{case['subject']}_denoised.nii.gz") / case["reference"]
        volumes[case["subject"]] = volume
        rows.append(
            {**volume_quality(volume, case["clean"], case["mask"]), "seconds": network_seconds[case["subject"]]}
        )
    return rows, volumes


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
    from pipeline.data.cohort import logistic_baseline
    from pipeline.evaluation.metrics import volume_quality

    out = Path(out).resolve()
    timer = StageTimer()
    resume = _prepare_out(out, settings, fresh)
    started = _dt.datetime.now(_dt.UTC)

    with timer.stage("build the demo cohort") as record:
        cohort = _cohort_stage(out, settings, resume, record)
    with timer.stage("train the denoiser (train_denoise.yaml)"):
        _train_denoiser(out, settings, cohort)
    inits = {"denoiser": "denoiser encoder", "scratch": "scratch"}
    for init, title in inits.items():
        with timer.stage(f"fine-tune the classifier from {title} (finetune_classifier.yaml)"):
            _train_classifier(out, settings, cohort, init)

    test = cohort.parts["test"]
    with timer.stage("denoise the held-out scans (inference.yaml)") as record:
        network_seconds = _denoise_test_scans(out, settings, cohort)
        record.note = f"{len(test)} scans"
    with timer.stage("classify the held-out scans (inference_classifier.yaml)") as record:
        predictions = {init: _classify_test_scans(out, settings, cohort, init) for init in inits}
        record.note = f"{len(test)} scans x {len(inits)} classifiers"

    with timer.stage("score the network and the classical denoisers") as record:
        cases = [_case(cohort.dir, cohort.noise_dir, s) for s in test]
        tuning = [_case(cohort.dir, cohort.noise_dir, s) for s in cohort.parts["val"][: settings.tuning_subjects]]
        quality = {"noisy": [{**volume_quality(c["noisy"], c["clean"], c["mask"]), "seconds": 0.0} for c in cases]}
        classical, parameters = _score_classical(settings, cases, tuning)
        quality.update(classical)
        quality["resunet3d"], denoised_volumes = _score_network(out, cases, network_seconds)
        parameters = {"noisy": "-", **parameters, "resunet3d": "best validation epoch"}
        record.note = f"{len(cases)} test volumes, parameters tuned on {len(tuning)} val volumes"

    with timer.stage("logistic-regression floor (pipeline.data.cohort.logistic_baseline)"):
        floor = logistic_baseline(cohort.dir, seed=settings.seed)

    results = _results(out, settings, started, cohort, quality, parameters, predictions, floor)
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


def _results(
    out: Path,
    settings: DemoSettings,
    started: _dt.datetime,
    cohort: _CohortInfo,
    quality: Mapping[str, list[dict[str, Any]]],
    parameters: Mapping[str, str],
    predictions: Mapping[str, Path],
    floor: float,
) -> dict[str, Any]:
    """Every number of the run, as ``results.json`` holds it (the stage timings are added at the end)."""
    from pipeline.evaluation import report as rp

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
        "denoising": {
            name: {"parameter": parameters[name], "mean": _mean_quality(rows), "per_volume": rows}
            for name, rows in quality.items()
        },
        "classification": {init: _classification_scores(path, cohort.labels) for init, path in predictions.items()},
        "logistic_floor_balanced_accuracy": floor,
        "curves": {
            name: rp.read_scalars(out / "runs" / name)
            for name in ("denoiser", *(f"classifier_{i}" for i in predictions))
        },
    }


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


def announce(settings: DemoSettings, quick: bool = False, hardware: Any = None) -> list[str]:
    """Log what the demo is about to do and roughly how long it takes on this machine.

    The estimate scales the default demo's measured wall time on 2 cores (:data:`_MEASURED_MIN`: 16.4 min with
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
    minutes = 1.0 if quick else _MEASURED_MIN[kind] * 2 / cores
    lines = [
        f"demo: build a {settings.subjects}-subject cohort at {settings.spacing:g} mm, train the denoiser for"
        f" {settings.denoise_epochs} epochs, fine-tune two classifiers for {settings.classifier_epochs} epochs each,"
        f" denoise and classify the held-out subjects, score {', '.join(settings.classical)}, write report.md",
        f"expected: about {minutes:.0f} min on this machine ({cores} logical CPUs, "
        + ("AVX-512" if kind == "avx512" else "AVX2 only, no AVX-512")
        + f"); measured on 2 idle cores: {_MEASURED_MIN['avx512']} min with AVX-512, "
        f"{_MEASURED_MIN['avx2']} min with AVX2 kernels only (set-up excluded)"
        + ("; the --quick smoke run takes about a minute" if quick else ""),
        f"CPU: {hardware.describe_cpu()}",
        f"precision: {_PRECISION} on every CPU (the demo's reported figures were measured in float32)",
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
        f" (without --quick: {_MEASURED_MIN['avx512']:.0f}-{_MEASURED_MIN['avx2']:.0f} min on 2 cores)",
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
