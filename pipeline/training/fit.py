"""One ``fit`` for every training task: the shared settings (:class:`FitSettings`), a task description (:class:`Task`).

Denoising (:func:`pipeline.training.denoise.denoise_task`), classification
(:func:`pipeline.training.classify.classify_task`), distillation (:func:`pipeline.training.distill.distill_task`) and
site adaptation (:func:`pipeline.training.adapt.adapt_task`: no evaluator, its held-out guard as the trainer's handler)
describe only what differs: the network saved as ``model.pt``, the module the trainer runs, the loss, how to build
the trainer and the evaluator, their ``run_info.json`` fields, the model card and an optional step after training.
:func:`fit` does the rest once for all four: subject checks, device and precision, optimiser and schedule, loaders,
the TensorBoard writer, :func:`pipeline.training.engines.run_training` and the after-training step. The public
``train_denoiser``, ``finetune_classifier``, ``distill`` and ``adapt_denoiser`` are thin wrappers around it.

The bundle configs build their optimiser and learning-rate schedule with :func:`make_optimizer` and
:func:`make_scheduler` from a :class:`FitSettings` (``fit_settings`` in ``finetune_classifier.yaml`` and
``train_denoise.yaml``), the same code :func:`fit` runs, and their logs, periodic checkpoint and best-model saver with
:mod:`pipeline.training.bundle_engine`. Their trainer, evaluator and the rest of the handler list stay config items:
MONAI's model zoo requires ``train#trainer``, ``train#handlers`` (a list of components, whose ``ValidationHandler``
``check_properties`` reads) and ``validate#evaluator``, which ``multi_gpu_train.yaml`` and command-line overrides reach
one by one.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from torch import nn
from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter

from pipeline.data.splits import check_no_overlap
from pipeline.runtime.precision import PRECISIONS, check_precision, memory_format
from pipeline.training.engines import TrainingResult, make_loader, resolve_device, run_training
from pipeline.training.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from pipeline.training.runinfo import collect_subjects

__all__ = [
    "FitContext",
    "FitSettings",
    "Task",
    "fit",
    "fit_settings",
    "lists_fit_fields",
    "make_optimizer",
    "make_scheduler",
    "settings_record",
]

logger = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FitSettings:
    """The training knobs every task shares; invalid values fail at construction, naming the field.

    Attributes:
        max_epochs: epochs to train (>= 1).
        batch_size: training batch size (>= 1; classification validates with it too).
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"``, ``"adamw"`` or a ready optimiser.
        lr: learning rate (> 0).
        momentum: SGD momentum, in [0, 1).
        weight_decay: weight decay (>= 0).
        scheduler: ``"none"``, ``"cosine"``, ``"step"`` or ``"plateau"`` (on ``key_metric``).
        warmup_epochs: linear warm-up epochs, in [0, max_epochs).
        key_metric: the validation metric that picks ``model.pt``, drives early stopping and the plateau schedule
            (``None``: the task's default).
        val_interval: validate every N epochs (>= 1).
        checkpoint_every: a resumable checkpoint every N epochs and at the end (>= 1).
        keep_checkpoints: periodic checkpoints kept (``None``: all; else >= 1).
        early_stop_patience: validations without improvement before stopping (``None``: never; else >= 1).
        early_stop_min_delta: the smallest change that counts as an improvement (>= 0).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``
            (:func:`pipeline.runtime.precision.precision_settings`).
        channels_last: train in the ``channels_last_3d`` memory layout (a bool).
        seed: the run seed (per-epoch re-seeding).
        num_workers: data-loader worker processes (>= 0).
        device: the device (``None``: CUDA when available, else the CPU).
        resume: continue from the newest checkpoint in the run folder.
        progress: progress bars and console epoch summaries.
    """

    max_epochs: int = 10
    batch_size: int = 2
    optimizer: str | Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    key_metric: str | None = None
    val_interval: int = 1
    checkpoint_every: int = 10
    keep_checkpoints: int | None = None
    early_stop_patience: int | None = None
    early_stop_min_delta: float = 0.0
    precision: str = "auto"
    channels_last: bool = False
    seed: int = 0
    num_workers: int = 0
    device: str | torch.device | None = None
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        """Refuse out-of-range values with a message naming the field."""
        for name in ("max_epochs", "batch_size", "val_interval", "checkpoint_every"):
            _require(name, getattr(self, name), lambda v: v >= 1, ">= 1")
        for name in ("keep_checkpoints", "early_stop_patience"):
            _require(name, getattr(self, name), lambda v: v is None or v >= 1, ">= 1 or None", optional=True)
        if not isinstance(self.optimizer, Optimizer) and str(self.optimizer).lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)} or an Optimizer, got {self.optimizer!r}.")
        if str(self.scheduler).lower() not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {self.scheduler!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}.")
        _require("lr", self.lr, lambda v: v > 0, "> 0", real=True)
        _require("momentum", self.momentum, lambda v: 0 <= v < 1, "in [0, 1)", real=True)
        _require("weight_decay", self.weight_decay, lambda v: v >= 0, ">= 0", real=True)
        _require("early_stop_min_delta", self.early_stop_min_delta, lambda v: v >= 0, ">= 0", real=True)
        _require("warmup_epochs", self.warmup_epochs, lambda v: 0 <= v < self.max_epochs, "in [0, max_epochs)")
        _require("num_workers", self.num_workers, lambda v: v >= 0, ">= 0")
        _require("seed", self.seed, lambda v: True, "an integer")
        memory_format(self.channels_last)  # refuses a non-bool, naming channels_last
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.key_metric is not None and not (isinstance(self.key_metric, str) and self.key_metric):
            raise ValueError(f"key_metric must be a metric name or None, got {self.key_metric!r}.")


def fit_settings(
    settings: FitSettings | None = None, defaults: Mapping[str, Any] | None = None, **fields: Any
) -> FitSettings:
    """The settings a task wrapper runs with: ``settings`` (or the task's ``defaults``) with ``fields`` replaced.

    The wrappers (:func:`pipeline.training.denoise.train_denoiser`,
    :func:`pipeline.training.classify.finetune_classifier`, :func:`pipeline.training.distill.distill`) take a
    :class:`FitSettings` or its fields as keyword arguments and pass them here, so every field reaches :func:`fit`
    the same way in every task.

    Args:
        settings: the settings (default: ``FitSettings(**defaults)``).
        defaults: the task's own defaults where they differ from :class:`FitSettings`'s (e.g. the denoiser's SGD).
        **fields: :class:`FitSettings` fields, overriding ``settings``.

    Returns:
        The settings, validated.

    Raises:
        TypeError: a keyword that is not a :class:`FitSettings` field (a typo is never silently ignored).
        ValueError: an invalid value, naming the field.
    """
    known = {f.name for f in dataclasses.fields(FitSettings)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}: not a FitSettings field ({sorted(known)}).")
    base = settings if settings is not None else FitSettings(**dict(defaults or {}))
    return dataclasses.replace(base, **fields) if fields else base


def lists_fit_fields(defaults: Mapping[str, Any] | None = None) -> Callable[[_F], _F]:
    """Show a task wrapper's ``**fit_fields`` as the :class:`FitSettings` fields in its signature.

    The wrapper still takes them as ``**fit_fields`` (checked by :func:`fit_settings`); its ``__signature__`` lists
    each field as a keyword-only parameter with the task's default, so ``inspect.signature(...).bind`` (help, the
    README command checks) refuses a misspelt keyword as it would for a hand-written parameter.

    Args:
        defaults: the task's defaults where they differ from :class:`FitSettings`'s.

    Returns:
        The decorator (it returns the function itself).
    """
    base = FitSettings(**dict(defaults or {}))

    def decorate(func: _F) -> _F:
        signature = inspect.signature(func)
        kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fields = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(base, f.name), annotation=f.type)
            for f in dataclasses.fields(FitSettings)
            if f.name not in signature.parameters
        ]
        func.__signature__ = signature.replace(parameters=kept + fields)  # type: ignore[attr-defined]
        return func

    return decorate


def settings_record(settings: FitSettings) -> dict[str, Any]:
    """The fields of ``settings`` as a flat dict, for ``run_info.json``'s ``arguments``."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def _require(
    name: str, value: Any, ok: Callable[[Any], bool], wanted: str, *, real: bool = False, optional: bool = False
) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` has the right type and ``ok(value)``."""
    if optional and value is None:
        return
    kinds = (int, float) if real else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or not ok(value):
        kind = "a number" if real else "an integer"
        raise ValueError(f"{name} must be {kind} {wanted}, got {value!r}.")


@dataclass
class FitContext:
    """What :func:`fit` has built when it asks the task for its trainer and evaluator.

    Attributes:
        settings: the settings with ``device``, ``precision`` and ``key_metric`` resolved.
        device: the device.
        run_dir: the run folder.
        optimizer: the optimiser over the task's network.
        train_loader: the shuffled training loader.
        val_loader: the validation loader (``None`` without validation data).
        summary_writer: the run's TensorBoard writer.
        train_data: the training data.
        val_data: the validation data (``None``: none).
        val_transform: the transform of dict validation (and test) data.
        test_data: the held-out data, or ``None``.
        subjects: ``{"train": [...], "val": [...]}`` (and ``"test"`` with test data).
        extra_state: more objects the task wants checkpointed (e.g. a
            :class:`~pipeline.training.handlers.GradualUnfreeze`); loaded before the network.
    """

    settings: FitSettings
    device: torch.device
    run_dir: Path
    optimizer: Optimizer
    train_loader: Any
    val_loader: Any
    summary_writer: SummaryWriter
    train_data: Any = None
    val_data: Any = None
    val_transform: Callable | None = None
    test_data: Any = None
    subjects: dict[str, list[str]] = field(default_factory=dict)
    extra_state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """What one training task is; :func:`fit` does everything the tasks share.

    Attributes:
        name: ``"denoise"``, ``"classify"``, ``"distill"``...
        network: the network that is optimised and saved as ``model.pt``.
        loss: the loss (moved to the device when it is a module).
        build_trainer: ``(context) -> SupervisedTrainer`` running ``module``.
        build_evaluator: ``(context) -> SupervisedEvaluator`` of ``network`` with the key metric; ``None`` for a
            task without validation (adaptation: its guard checks instead), run with ``val_data=None``.
        key_metric: the default key metric (used when the settings give none).
        module: what the trainer runs when it is not ``network`` (e.g. the
            :class:`~pipeline.training.distill.TeacherStudent` pair); moved to the device.
        val_batch_size: the validation batch size (``None``: the settings' ``batch_size``).
        check_overlap: refuse train/val/test sets that share subjects.
        check_subjects: more checks on ``{"train": [...], "val": [...], "test": [...]}`` (e.g. the denoiser
            leakage guard), before anything is built.
        run_info: more ``run_info.json`` fields.
        model_card: :func:`pipeline.runtime.model_card.write_model_card` arguments, or ``None``.
        after_training: ``(context, result) -> None``, run after training (e.g. reload ``model.pt`` and write
            prediction CSVs).
        reseed_epochs: re-seed the generators and the data's random transforms at each epoch start (exact resume);
            off for a task whose data draws one seeded stream across epochs (adaptation's step budget).
    """

    name: str
    network: nn.Module
    loss: Callable
    build_trainer: Callable[[FitContext], SupervisedTrainer]
    build_evaluator: Callable[[FitContext], SupervisedEvaluator] | None
    key_metric: str
    module: nn.Module | None = None
    val_batch_size: int | None = None
    check_overlap: bool = False
    check_subjects: Callable[[Mapping[str, list[str]]], None] | None = None
    run_info: Mapping[str, Any] = field(default_factory=dict)
    model_card: Mapping[str, Any] | None = None
    after_training: Callable[[FitContext, TrainingResult], None] | None = None
    reseed_epochs: bool = True


def make_optimizer(network: nn.Module, settings: FitSettings) -> Optimizer:
    """The optimiser of ``settings`` over ``network``'s trainable parameters (a ready one is returned as is).

    Args:
        network: the network (frozen parameters are left out).
        settings: ``optimizer``, ``lr``, ``momentum``, ``weight_decay``.

    Returns:
        The optimiser.
    """
    if isinstance(settings.optimizer, Optimizer):
        return settings.optimizer
    return build_optimizer(
        network, settings.optimizer, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def make_scheduler(optimizer: Optimizer, settings: FitSettings) -> Any:
    """The epoch-level schedule of ``settings`` (:func:`pipeline.training.optim.build_scheduler`).

    The plateau schedule minimises a key metric whose name holds ``"loss"`` and maximises any other.

    Args:
        optimizer: the optimiser.
        settings: ``scheduler``, ``max_epochs``, ``warmup_epochs``, ``key_metric``.

    Returns:
        The schedule, or ``None`` for ``"none"`` without warm-up.
    """
    plateau_mode = "min" if "loss" in (settings.key_metric or "") else "max"
    return build_scheduler(
        optimizer,
        settings.scheduler,
        max_epochs=settings.max_epochs,
        warmup_epochs=settings.warmup_epochs,
        min_lr=0.0,
        plateau_mode=plateau_mode,
    )


def fit(
    task: Task,
    train_data: Any,
    val_data: Any,
    run_dir: str | os.PathLike,
    settings: FitSettings,
    *,
    test_data: Any = None,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    config: Mapping[str, Any] | None = None,
) -> TrainingResult:
    """Train ``task`` on ``train_data``, validate on ``val_data``, checkpoint and record into ``run_dir``.

    Args:
        task: what to train (:func:`~pipeline.training.denoise.denoise_task`,
            :func:`~pipeline.training.classify.classify_task`, :func:`~pipeline.training.distill.distill_task`).
        train_data: training dicts, a dataset or a ready ``DataLoader``.
        val_data: validation dicts or a dataset (``None`` for a task without an evaluator).
        run_dir: the run folder (see :func:`pipeline.training.engines.run_training`).
        settings: the shared training settings.
        test_data: held-out data for the task's after-training step (e.g. ``predictions_test.csv``).
        train_transform: transform of dict training data.
        val_transform: transform of dict validation and test data.
        config: the configuration recorded in ``run_info.json``; its ``arguments`` (default: the settings) get
            the precision that runs.

    Returns:
        A :class:`pipeline.training.engines.TrainingResult`.

    Raises:
        pipeline.data.splits.LeakageError: when the task checks subjects and they overlap.
        ValueError: for invalid settings, before anything is written.
    """
    subjects = _check_subjects(task, train_data, val_data, test_data)
    settings = _resolve(settings, task)
    device = torch.device(settings.device)
    (task.module or task.network).to(device, memory_format=memory_format(settings.channels_last))
    if isinstance(task.loss, nn.Module):
        task.loss.to(device)
    optimizer = make_optimizer(task.network, settings)
    scheduler = make_scheduler(optimizer, settings)
    train_loader = make_loader(
        train_data, train_transform, batch_size=settings.batch_size, shuffle=True, num_workers=settings.num_workers
    )
    val_loader = None
    if val_data is not None:
        val_batch = task.val_batch_size or settings.batch_size
        val_loader = make_loader(val_data, val_transform, batch_size=val_batch, num_workers=settings.num_workers)
    writer = SummaryWriter(log_dir=str(run_dir))
    context = FitContext(
        settings=settings,
        device=device,
        run_dir=Path(run_dir),
        optimizer=optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        summary_writer=writer,
        train_data=train_data,
        val_data=val_data,
        val_transform=val_transform,
        test_data=test_data,
        subjects=subjects,
    )
    try:
        result = _train(task, context, scheduler, _record(config, settings))
    finally:
        writer.close()
    if task.after_training is not None:
        task.after_training(context, result)
    return result


def _check_subjects(task: Task, train_data: Any, val_data: Any, test_data: Any) -> dict[str, list[str]]:
    """The subjects of each set, refused when the task checks them and they overlap or leak."""
    subjects = {"train": collect_subjects(train_data), "val": collect_subjects(val_data)}
    if test_data is not None:
        subjects["test"] = collect_subjects(test_data)
    if task.check_overlap:
        check_no_overlap(subjects)
    if task.check_subjects is not None:
        task.check_subjects(subjects)
    return subjects


def _resolve(settings: FitSettings, task: Task) -> FitSettings:
    """``settings`` with the device, the precision that runs there and the key metric decided."""
    device = resolve_device(settings.device)
    precision = check_precision(settings.precision, device)  # "auto" -> what runs; refuses fp16 off CUDA
    return dataclasses.replace(
        settings, device=device, precision=precision, key_metric=settings.key_metric or task.key_metric
    )


def _record(config: Mapping[str, Any] | None, settings: FitSettings) -> dict[str, Any]:
    """The configuration for ``run_info.json``: ``arguments`` (default: the settings) hold the precision that runs."""
    record = dict(config or {})
    arguments = dict(record.get("arguments") or _plain_settings(settings))
    arguments["precision"] = settings.precision
    return {**record, "arguments": arguments}


def _plain_settings(settings: FitSettings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def _train(
    task: Task,
    context: FitContext,
    scheduler: Any,
    config: Mapping[str, Any],
) -> TrainingResult:
    """Build the task's evaluator and trainer and run them through :func:`~pipeline.training.engines.run_training`."""
    settings = context.settings
    evaluator = task.build_evaluator(context) if task.build_evaluator is not None else None
    trainer = task.build_trainer(context)
    run_info = {**task.run_info}
    if task.check_overlap:
        run_info["test_subjects"] = context.subjects.get("test", [])
    return run_training(
        trainer,
        evaluator,
        context.run_dir,
        network=task.network,
        optimizer=context.optimizer,
        lr_scheduler=scheduler,
        seed=settings.seed,
        reseed_epochs=task.reseed_epochs,
        key_metric=settings.key_metric,
        val_interval=settings.val_interval,
        checkpoint_every=settings.checkpoint_every,
        keep_checkpoints=settings.keep_checkpoints,
        early_stop_patience=settings.early_stop_patience,
        early_stop_min_delta=settings.early_stop_min_delta,
        resume=settings.resume,
        extra_state=context.extra_state,
        summary_writer=context.summary_writer,
        progress=settings.progress,
        config=config,
        train_data=context.train_data,
        val_data=context.val_data,
        run_info=run_info,
        model_card=task.model_card,
    )
