"""Shared assembly of MONAI trainers and evaluators: loaders, precision, handlers, checkpoints, resume, results.

:mod:`pipeline.training.denoise`, :mod:`pipeline.training.classify` and :mod:`pipeline.training.distill` build a task's
``SupervisedTrainer``/``SupervisedEvaluator`` and hand them to :func:`run_training`, which attaches the same
machinery to all three (through small steps: validation handlers, training handlers, the checkpoint state,
resume, run records), in an order that matters for exact resume:

- trainer ``EPOCH_STARTED``: :class:`~pipeline.training.handlers.EpochReseed` first, before the epoch's data iterator
exists;
- trainer ``LOSS_COMPLETED``: :class:`~pipeline.training.handlers.NonFiniteLossGuard` (before the optimiser step);
- trainer ``EPOCH_COMPLETED``: validation, then the learning-rate step, logging, and last the periodic checkpoint,
  so a checkpoint holds the state *after* everything of its epoch (including the best-metric record and the
  early-stopping counter);
- evaluator ``EPOCH_COMPLETED``: metrics, plateau schedule, best checkpoint (``model.pt``), early stopping, logging.

A run folder holds ``checkpoint_epoch=K.pt`` every ``checkpoint_every`` epochs and at the end (``{network, optimizer,
lr_scheduler, trainer, ...}`` together, atomically), ``model.pt`` (the network at the best key metric),
``run_info.json`` (config, seed, versions, training and validation subjects), ``train.log`` and TensorBoard events.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    CheckpointLoader,
    EarlyStopHandler,
    LrScheduleHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
    stopping_fn_from_metric,
)
from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter

from pipeline.runtime.precision import PRECISIONS, check_precision, memory_format, precision_settings
from pipeline.runtime.weights import load_checkpoint
from pipeline.training.checkpoint import AtomicCheckpointSaver, find_last_checkpoint, remove_partial_files
from pipeline.training.handlers import EpochReseed, LearningRateLogger, NonFiniteLossGuard
from pipeline.training.optim import WarmupPlateau
from pipeline.training.runinfo import collect_subjects, run_logging, write_run_info
from transforms.errors import InputError

__all__ = [
    "BEST_FILENAME",
    "PRECISIONS",
    "TrainingResult",
    "check_precision",
    "checkpoint_state",
    "make_loader",
    "memory_format",
    "precision_settings",
    "resolve_device",
    "run_training",
]

logger = logging.getLogger(__name__)

BEST_FILENAME = "model.pt"
# How an InputError reads inside the formatted traceback that torch re-raises for a DataLoader worker process.
_INPUT_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?InputError: (?P<path>.+?): (?P<problem>.+)$", re.MULTILINE)


@dataclass
class TrainingResult:
    """What a training run returns.

    Attributes:
        run_dir: the run folder (checkpoints, ``model.pt``, ``run_info.json``, ``train.log``, TensorBoard events).
        epochs: the last completed epoch.
        best_metric: the best validation value of the key metric (``None`` without validation).
        best_epoch: the epoch it was reached at.
        history: per validation, ``{metric name: [(epoch, value), ...]}`` (scalar metrics only).
        losses: the training loss of every iteration run in this call, in order.
        last_checkpoint: the newest ``checkpoint_epoch=K.pt``.
        best_checkpoint: ``model.pt``, the network's weights at the best key metric.
        stopped_early: whether early stopping ended the run.
    """

    run_dir: Path
    epochs: int
    best_metric: float | None
    best_epoch: int | None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    stopped_early: bool = False


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_loader(
    data: Any,
    transform: Callable | None = None,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A MONAI ``DataLoader`` over a dataset, or over a list of dicts wrapped in ``monai.data.Dataset``.

    Args:
        data: a ready ``DataLoader`` (returned as is: its own batch size, sampler and generator), a
            ``torch.utils.data.Dataset`` (used as is) or a sequence of dicts (paths or tensors per key).
        transform: applied to each dict when ``data`` is a sequence.
        batch_size: items per batch (>= 1).
        shuffle: reshuffle every epoch (training); the order follows torch's global generator, which
            :class:`~pipeline.training.handlers.EpochReseed` re-seeds per epoch.
        num_workers: worker processes (MONAI's loader seeds each worker and its transforms).

    Raises:
        ValueError: for an empty data set or ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    dataset = data if isinstance(data, torch.utils.data.Dataset) else Dataset(list(data), transform=transform)
    if len(dataset) == 0:
        raise ValueError("the data set is empty.")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)


def _progress_loss(output: Any) -> dict[str, float]:
    """The progress bar's ``{"loss": value}`` of a trainer output."""
    return {"loss": _loss_value(output)}


def _loss_value(output: Any) -> float:
    """The scalar loss of a trainer output (batched dict, ``decollate=False``)."""
    loss = output["loss"] if isinstance(output, Mapping) else output[0]["loss"]
    return float(torch.as_tensor(loss).detach().float().mean())


class _History:
    """Records each iteration's loss and each validation's scalar metrics, by epoch."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    def loss(self, engine: Engine) -> None:
        self.losses.append(_loss_value(engine.state.output))

    def validation(self, engine: Engine) -> None:
        for name, value in engine.state.metrics.items():
            if _is_number(value):
                self.metrics.setdefault(name, []).append((int(engine.state.epoch), float(value)))


def run_training(
    trainer: SupervisedTrainer,
    evaluator: SupervisedEvaluator | None,
    run_dir: str | os.PathLike,
    *,
    network: torch.nn.Module,
    optimizer: Optimizer,
    lr_scheduler: Any = None,
    seed: int = 0,
    reseed_epochs: bool = True,
    key_metric: str | None = None,
    val_interval: int = 1,
    checkpoint_every: int = 10,
    keep_checkpoints: int | None = None,
    early_stop_patience: int | None = None,
    early_stop_min_delta: float = 0.0,
    resume: bool = True,
    extra_state: Mapping[str, Any] | None = None,
    summary_writer: SummaryWriter | None = None,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    run_info: Mapping[str, Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> TrainingResult:
    """Attach the shared handlers to a task's trainer and evaluator, resume if asked, train, and report.

    Args:
        trainer: the task's ``SupervisedTrainer`` (not yet run).
        evaluator: its validation ``SupervisedEvaluator`` with ``key_metric`` among its metrics, or ``None``.
        run_dir: the run folder (its files: see the module docstring).
        network: the trained network.
        optimizer: its optimiser.
        lr_scheduler: an epoch-level schedule; a :class:`~pipeline.training.optim.WarmupPlateau` or
            ``ReduceLROnPlateau`` is stepped with the key metric after each validation.
        seed: the run seed (per-epoch re-seeding from ``(seed, epoch)``).
        reseed_epochs: re-seed every generator and the data's random transforms at each epoch start.
        key_metric: the evaluator metric that picks ``model.pt``, drives early stopping and the plateau schedule.
        val_interval: validate every N epochs.
        checkpoint_every: save a resumable checkpoint every N epochs (the notes' ``--checkpoint 10``).
        keep_checkpoints: how many periodic checkpoints to keep (``None``: all).
        early_stop_patience: stop after this many validations without improvement (``None``: never).
        early_stop_min_delta: the smallest change that counts as an improvement.
        resume: continue from the newest ``checkpoint_epoch=K.pt`` in ``run_dir`` when there is one.
        extra_state: more stateful objects checkpointed, loaded first (e.g. a ``GradualUnfreeze``).
        summary_writer: TensorBoard writer (created in ``run_dir`` when ``None``; closed at the end).
        progress: show ignite progress bars.
        config: the run's full resolved configuration, recorded in ``run_info.json``.
        train_data: the training data (its ``subject`` IDs are recorded).
        val_data: the validation data (ditto).
        run_info: more fields for ``run_info.json``.
        model_card: :func:`pipeline.runtime.model_card.write_model_card` arguments for the card beside ``model.pt``.

    Returns:
        A :class:`TrainingResult`.

    Raises:
        ValueError: on invalid intervals, or an evaluator without a ``key_metric``.
        pipeline.training.handlers.NonFiniteLossError: when a loss is NaN or infinite (the last checkpoint stays).
        transforms.errors.InputError: an unusable scan (unwrapped from MONAI's and loader workers' errors).
    """
    _check_run_arguments(evaluator, key_metric, val_interval, checkpoint_every, keep_checkpoints)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = summary_writer or SummaryWriter(log_dir=str(run_dir))

    with run_logging(run_dir, console=progress) as log_file:
        history, best_saver, early = _attach_handlers(
            trainer,
            evaluator,
            run_dir,
            writer,
            network=network,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            seed=seed if reseed_epochs else None,
            key_metric=key_metric,
            val_interval=val_interval,
            early_stop=(early_stop_patience, early_stop_min_delta),
            progress=progress,
        )
        save_dict = checkpoint_state(
            trainer, evaluator, network, optimizer, lr_scheduler, best_saver, early, extra_state=extra_state
        )
        resumed_from = _attach_checkpoints(trainer, run_dir, save_dict, checkpoint_every, keep_checkpoints, resume)
        if progress:
            ProgressBar(persist=False, desc="train").attach(trainer, output_transform=_progress_loss)
        info = {**(run_info or {}), "seed": seed, "config": dict(config or {}), "key_metric": key_metric}
        info.update(device=str(trainer.state.device), train_subjects=collect_subjects(train_data))
        info.update(val_subjects=collect_subjects(val_data), log_file=log_file.name)
        _write_records(run_dir, info, resumed_from, network, model_card)
        try:
            _run_trainer(trainer)
        finally:
            if summary_writer is None:
                writer.close()
    return _training_result(run_dir, trainer, evaluator, history, early)


def _attach_handlers(
    trainer: SupervisedTrainer,
    evaluator: SupervisedEvaluator | None,
    run_dir: Path,
    writer: SummaryWriter,
    *,
    network: torch.nn.Module,
    optimizer: Optimizer,
    lr_scheduler: Any,
    seed: int | None,
    key_metric: str | None,
    val_interval: int,
    early_stop: tuple[int | None, float],
    progress: bool,
) -> tuple[_History, AtomicCheckpointSaver | None, EarlyStopHandler | None]:
    """The evaluator's handlers (when there is one), then the trainer's (see :func:`run_training`).

    Returns:
        The loss and metric history, the best-model saver and the early-stopping handler (``None`` without an
        evaluator, or without early stopping).
    """
    best_saver, early = None, None
    if evaluator is not None:
        best_saver, early = _attach_validation_handlers(
            evaluator,
            trainer,
            run_dir,
            network=network,
            lr_scheduler=lr_scheduler,
            key_metric=key_metric,
            early_stop_patience=early_stop[0],
            early_stop_min_delta=early_stop[1],
            writer=writer,
            progress=progress,
        )
    history = _attach_training_handlers(
        trainer, evaluator, optimizer, lr_scheduler, seed=seed, val_interval=val_interval, writer=writer
    )
    return history, best_saver, early


def _attach_checkpoints(
    trainer: SupervisedTrainer,
    run_dir: Path,
    save_dict: Mapping[str, Any],
    checkpoint_every: int,
    keep_checkpoints: int | None,
    resume: bool,
) -> Path | None:
    """The periodic checkpoint of ``save_dict``, then (with ``resume``) the loader of the newest one.

    Returns:
        The checkpoint resumed from, or ``None``.
    """
    AtomicCheckpointSaver(
        save_dir=str(run_dir), save_dict=dict(save_dict), save_interval=checkpoint_every, n_saved=keep_checkpoints
    ).attach(trainer)
    return _attach_resume(trainer, run_dir, save_dict) if resume else None


def _check_run_arguments(
    evaluator: SupervisedEvaluator | None,
    key_metric: str | None,
    val_interval: int,
    checkpoint_every: int,
    keep_checkpoints: int | None,
) -> None:
    """Refuse intervals below 1 and an evaluator without a key metric, before anything is written."""
    if val_interval < 1 or checkpoint_every < 1:
        raise ValueError(f"val_interval and checkpoint_every must be >= 1, got {val_interval} and {checkpoint_every}.")
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be >= 1 or None, got {keep_checkpoints}.")
    if evaluator is not None and key_metric is None:
        raise ValueError("key_metric is required when there is an evaluator.")


def _is_plateau(lr_scheduler: Any) -> bool:
    """Whether ``lr_scheduler`` is stepped with the key metric after each validation (not every epoch)."""
    return isinstance(lr_scheduler, (WarmupPlateau, torch.optim.lr_scheduler.ReduceLROnPlateau))


def _attach_validation_handlers(
    evaluator: SupervisedEvaluator,
    trainer: SupervisedTrainer,
    run_dir: Path,
    *,
    network: torch.nn.Module,
    lr_scheduler: Any,
    key_metric: str,
    early_stop_patience: int | None,
    early_stop_min_delta: float,
    writer: SummaryWriter,
    progress: bool,
) -> tuple[AtomicCheckpointSaver, EarlyStopHandler | None]:
    """The evaluator's ``EPOCH_COMPLETED`` handlers, in order: plateau schedule, ``model.pt``, early stop, logs.

    Returns:
        The best-model saver and the early-stopping handler (``None`` without ``early_stop_patience``); both are
        checkpointed with the run.
    """
    if _is_plateau(lr_scheduler):
        LrScheduleHandler(lr_scheduler, print_lr=False, step_transform=stopping_fn_from_metric(key_metric)).attach(
            evaluator
        )
    best_saver = AtomicCheckpointSaver(
        save_dir=str(run_dir),
        save_dict={"network": network},
        save_key_metric=True,
        key_metric_name=key_metric,
        key_metric_filename=BEST_FILENAME,
    )
    best_saver.attach(evaluator)
    early = None
    if early_stop_patience is not None:
        early = EarlyStopHandler(
            patience=early_stop_patience,
            score_function=stopping_fn_from_metric(key_metric),
            trainer=trainer,
            min_delta=early_stop_min_delta,
        )
        early.attach(evaluator)
    StatsHandler(iteration_log=False, name="pipeline.validation", tag_name="val").attach(evaluator)
    TensorBoardStatsHandler(writer, iteration_log=False).attach(evaluator)
    if progress:
        ProgressBar(persist=False, desc="validation").attach(evaluator)
    return best_saver, early


def _attach_training_handlers(
    trainer: SupervisedTrainer,
    evaluator: SupervisedEvaluator | None,
    optimizer: Optimizer,
    lr_scheduler: Any,
    *,
    seed: int | None,
    val_interval: int,
    writer: SummaryWriter,
) -> _History:
    """The trainer's handlers, in order: re-seeding (``seed`` not ``None``), loss guard, validation, schedule, logs.

    Returns:
        The history that records each iteration's loss and (on the evaluator, last) each validation's metrics.
    """
    if seed is not None:
        EpochReseed(seed).attach(trainer)
    NonFiniteLossGuard().attach(trainer)
    if evaluator is not None:
        ValidationHandler(interval=val_interval, validator=evaluator).attach(trainer)
    if lr_scheduler is not None and not _is_plateau(lr_scheduler):
        LrScheduleHandler(lr_scheduler, print_lr=False).attach(trainer)
    StatsHandler(iteration_log=False, name="pipeline.training", tag_name="loss", output_transform=_loss_value).attach(
        trainer
    )
    TensorBoardStatsHandler(writer, epoch_log=False, tag_name="train/loss", output_transform=_loss_value).attach(
        trainer
    )
    LearningRateLogger(writer, optimizer).attach(trainer)
    history = _History()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, history.loss)
    if evaluator is not None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, history.validation)
    return history


def checkpoint_state(
    trainer: SupervisedTrainer,
    evaluator: SupervisedEvaluator | None,
    network: torch.nn.Module,
    optimizer: Optimizer,
    lr_scheduler: Any = None,
    best_saver: AtomicCheckpointSaver | None = None,
    early: EarlyStopHandler | None = None,
    *,
    extra_state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The objects a resumable checkpoint saves and restores, in load order.

    Args:
        trainer: the trainer (its epoch and iteration).
        evaluator: the evaluator (its best metric and epoch), or ``None``.
        network: the trained network.
        optimizer: its optimiser.
        lr_scheduler: the schedule, or ``None``.
        best_saver: the ``model.pt`` saver (its record of the best value), or ``None``.
        early: the early-stopping handler (its counter), or ``None``.
        extra_state: more stateful objects, loaded first (e.g. :class:`~pipeline.training.handlers.GradualUnfreeze`).

    Returns:
        ``{name: object with state_dict/load_state_dict}``.
    """
    save_dict: dict[str, Any] = dict(extra_state or {})
    save_dict.update({"network": network, "optimizer": optimizer})
    if lr_scheduler is not None:
        save_dict["lr_scheduler"] = lr_scheduler
    save_dict["trainer"] = trainer
    if best_saver is not None:
        save_dict["best_saver"] = best_saver
    if early is not None:
        save_dict["early_stop"] = early._handler
    if evaluator is not None:
        save_dict["evaluator_best"] = _BestMetricState(evaluator)
    return save_dict


def _attach_resume(trainer: SupervisedTrainer, run_dir: Path, save_dict: Mapping[str, Any]) -> Path | None:
    """Load the newest complete checkpoint of ``run_dir`` into ``save_dict`` when the trainer starts.

    Returns:
        The checkpoint resumed from, or ``None`` when there is none.

    Raises:
        pipeline.training.checkpoint.CheckpointError: for a corrupt newest checkpoint (early, before training).
    """
    remove_partial_files(run_dir)
    resumed_from = find_last_checkpoint(run_dir)
    if resumed_from is not None:
        load_checkpoint(resumed_from)  # fails early and clearly on a corrupt file
        CheckpointLoader(str(resumed_from), dict(save_dict), map_location=trainer.state.device).attach(trainer)
        logger.info("resuming from %s", resumed_from)
    return resumed_from


def _write_records(
    run_dir: Path,
    info: dict[str, Any],
    resumed_from: Path | None,
    network: torch.nn.Module,
    model_card: Mapping[str, Any] | None,
) -> None:
    """Write ``run_info.json`` (with ``resumed_from`` when resuming) and the model card beside ``model.pt``."""
    if resumed_from is not None:
        info["resumed_from"] = resumed_from.name
    write_run_info(run_dir, **info)
    if model_card is not None:
        from pipeline.runtime.model_card import write_model_card

        write_model_card(run_dir / BEST_FILENAME, network, **model_card)


def _run_trainer(trainer: SupervisedTrainer) -> None:
    """Run the trainer; an unusable scan ends in its :class:`InputError`, not in MONAI's or torch's wrapper."""
    try:
        trainer.run()
    except Exception as error:
        input_error = _input_error_behind(error)
        if input_error is None:
            raise
        raise input_error from error  # the MONAI/torch wrapper stays chained for debugging


def _training_result(
    run_dir: Path,
    trainer: SupervisedTrainer,
    evaluator: SupervisedEvaluator | None,
    history: _History,
    early: EarlyStopHandler | None,
) -> TrainingResult:
    """The :class:`TrainingResult` of a finished run."""
    validated = evaluator is not None and evaluator.state.best_metric_epoch > 0
    best_path = run_dir / BEST_FILENAME
    return TrainingResult(
        run_dir=run_dir,
        epochs=int(trainer.state.epoch),
        best_metric=float(evaluator.state.best_metric) if validated else None,
        best_epoch=int(evaluator.state.best_metric_epoch) if validated else None,
        history=history.metrics,
        losses=history.losses,
        last_checkpoint=find_last_checkpoint(run_dir),
        best_checkpoint=best_path if best_path.is_file() else None,
        stopped_early=bool(early is not None and trainer.should_terminate),
    )


def _input_error_behind(error: BaseException) -> InputError | None:
    """Return the :class:`InputError` that ``error`` wraps, or ``None`` if it wraps none.

    MONAI's ``apply_transform`` raises ``RuntimeError('applying transform ...')`` with the loader's
    ``InputError`` as its cause; a DataLoader worker process loses the object and torch re-raises the formatted
    traceback as text, so the message is searched too. The result is a fresh ``InputError`` (the caller chains
    ``error`` to it), never the original object, so the chain stays free of cycles.
    """
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, InputError):
            return InputError(link.path, link.problem)
        link = link.__cause__ or link.__context__
    match = _INPUT_ERROR_LINE.search(str(error))
    return InputError(match["path"], match["problem"].strip()) if match is not None else None


class _BestMetricState:
    """The evaluator's best key metric and its epoch, as a checkpointable object."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_metric": float(self.engine.state.best_metric),
            "best_epoch": int(self.engine.state.best_metric_epoch),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_epoch"]


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
