"""The demo's stages that train and run networks, each through a bundle config (:mod:`pipeline.demo.run` times them).

Also the stage timer and the cohort stage, whose :class:`CohortInfo` the later stages read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.demo.settings import CLASS_NAMES, ENCODER_KEYS, PRECISION, DemoSettings

__all__ = [
    "CohortInfo",
    "StageRecord",
    "StageTimer",
    "classify_subjects",
    "cohort_progress",
    "cohort_stage",
    "denoise_subjects",
    "network_overrides",
    "run_workflow",
    "train_classifier",
    "train_denoiser",
    "window_size",
]

logger = logging.getLogger(__name__)


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
def cohort_progress(total: int) -> Iterator[None]:
    """Show a progress bar over ``total`` subjects while ``pipeline.data.cohort`` builds a cohort."""
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


def run_workflow(configs: Sequence[str], **overrides: Any) -> None:
    """Run a bundle training workflow (``initialize`` -> ``run`` -> ``finalize``), raising the config's own error."""
    from pipeline.bundle_run import create_workflow, unwrap_config_error

    workflow = create_workflow(
        configs, workflow_type="train", logging_file=False, **{"precision": PRECISION, **overrides}
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


@dataclasses.dataclass(frozen=True)
class CohortInfo:
    """What the later stages need to know about the cohort."""

    dir: Path
    noise_dir: str
    shape: list[int]
    labels: dict[str, int]
    parts: dict[str, list[str]]
    denoiser_splits: Any
    splits_file: Path


def cohort_stage(out: Path, settings: DemoSettings, resume: bool, record: StageRecord) -> CohortInfo:
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
        with cohort_progress(settings.subjects):
            build_cohort(cohort_dir, settings.subjects, settings.seed, params)
    cohort_meta = json.loads(cohort_json.read_text(encoding="utf-8"))
    items = load_subjects_csv(cohort_dir / "subjects.csv", class_names=list(CLASS_NAMES))
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
    return CohortInfo(
        dir=cohort_dir,
        noise_dir=f"gaussian{params.gaussian_level:g}",
        shape=[int(s) for s in cohort_meta["shape"]],
        labels={str(i["subject"]): int(i["label"]) for i in items},
        parts=parts,
        denoiser_splits=denoiser_splits,
        splits_file=save_splits(denoiser_splits, out / "splits" / "denoiser.json"),
    )


def network_overrides(settings: DemoSettings, prefix: str = "network_def", encoder_only: bool = False) -> dict:
    """The denoiser's ResUnet3D arguments as bundle overrides ``{prefix}::{key}`` (or only its encoder's)."""
    net = dict(settings.denoiser)
    return {f"{prefix}::{k}": v for k, v in net.items() if not encoder_only or k in ENCODER_KEYS}


def window_size(settings: DemoSettings, cohort: CohortInfo) -> list[int]:
    """The denoiser's sliding-window tile: ``settings.window`` cubed, or the whole volume in one window."""
    return list(cohort.shape) if settings.window is None else [settings.window] * 3


def train_denoiser(out: Path, settings: DemoSettings, cohort: CohortInfo) -> None:
    """Stage 2: ``train_denoise.yaml`` on the denoiser's split, noisy -> clean."""
    from pipeline.utils.seed import seed_everything

    seed_everything(settings.seed)
    run_workflow(
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
        **{"validate::inferer::roi_size": window_size(settings, cohort)},
        **network_overrides(settings),
    )


def train_classifier(out: Path, settings: DemoSettings, cohort: CohortInfo, init: str) -> None:
    """Stage 4: ``finetune_classifier.yaml`` from the denoiser's encoder (``init="denoiser"``) or from scratch."""
    from pipeline.utils.seed import seed_everything

    seed_everything(settings.seed)
    extra = {} if init == "denoiser" else network_overrides(settings, encoder_only=True)
    run_workflow(
        _configs("finetune_classifier.yaml"),
        init=init,
        ckpt_dir=os.fspath(out / "models" / f"classifier_{init}"),
        output_dir=os.fspath(out / "runs" / f"classifier_{init}"),
        dataset_dir=os.fspath(cohort.dir),
        class_names=list(CLASS_NAMES),
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
        **network_overrides(settings, prefix="denoiser_def"),
        **extra,
    )


def denoise_subjects(
    out: Path, settings: DemoSettings, cohort: CohortInfo, part: str = "test", folder: str = "denoised"
) -> dict[str, float]:
    """Stage 5: ``inference.yaml`` on one split part's noisy scans, into ``<out>/<folder>``; seconds per subject."""
    from pipeline.inference.infer import denoise_scans

    subjects = cohort.parts[part]
    summary = denoise_scans(
        [{"image": os.fspath(cohort.dir / cohort.noise_dir / f"{s}.nii.gz"), "subject": s} for s in subjects],
        out / folder,
        weights=out / "models" / "denoiser" / "model.pt",
        overwrite=True,
        precision=PRECISION,
        patch_size=window_size(settings, cohort),
        num_workers=0,
        **network_overrides(settings),
    )
    summary.raise_if_failed()
    return {Path(r.source).name.split(".")[0]: r.seconds for r in summary.results}


def classify_subjects(
    out: Path, settings: DemoSettings, cohort: CohortInfo, init: str, scans: Mapping[str, Path]
) -> Path:
    """Stage 5: ``inference_classifier.yaml`` on clean scans (``{subject: path}``); returns the predictions CSV."""
    from pipeline.inference.infer import classify_scans

    predictions = out / "predictions" / f"classifier_{init}.csv"
    classify_scans(
        [{"image": os.fspath(path), "subject": s} for s, path in scans.items()],
        predictions,
        weights=out / "models" / f"classifier_{init}" / "classifier.pt",
        precision=PRECISION,
        class_names=list(CLASS_NAMES),
        model_depth=int(settings.denoiser.get("model_depth", 18)),
        input_size=cohort.shape,
        num_workers=0,
        **network_overrides(settings, encoder_only=True),
    ).raise_if_failed()
    return predictions
