"""The trainer's and evaluator's handlers the bundle's training workflows share, built in one place.

``train_denoise.yaml`` and ``finetune_classifier.yaml`` (and ``distill.yaml``, which overrides the latter) keep their
model-zoo items (``train::handlers``, ``train::trainer``, ``validate::handlers``, ``validate::evaluator``, ...) and fill
them from these pieces, so the logs, the periodic checkpoint, the best-model saver and the metric split are written
once. ``train::handlers`` stays a list of components (MONAI's ``check_properties`` reads its ``ValidationHandler``).
Handlers that log, write TensorBoard or save files run on rank 0 only; the rest run on every rank.

Order matters for exact resume (as in :mod:`pipeline.training.engines`): the trainer re-seeds first, guards the loss,
validates, steps the schedule and logs; the periodic checkpoint (:func:`checkpoint_saver`, attached after the
trainer's own handlers) is written last at each epoch end.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import ProgressBar
from monai.handlers import StatsHandler, TensorBoardStatsHandler
from torch.optim import Optimizer

from pipeline.data.splits import SubjectSplits, save_splits
from pipeline.runtime.model_card import write_model_card
from pipeline.runtime.weights import load_checkpoint
from pipeline.training.checkpoint import AtomicCheckpointSaver
from pipeline.training.handlers import LearningRateLogger
from pipeline.training.runinfo import write_run_info

__all__ = [
    "attach_checkpoint_handlers",
    "check_resume",
    "record_run",
    "TrainingLogs",
    "best_saver",
    "checkpoint_saver",
    "iteration_loss",
    "key_metric",
    "other_metrics",
    "validation_handlers",
]


def iteration_loss(output: Any) -> torch.Tensor:
    """The loss of an iteration, whether the trainer decollates its output (a list of items) or not (distillation)."""
    return (output[0] if isinstance(output, list) else output)["loss"]


class TrainingLogs:
    """The trainer's logs as one handler: console loss, TensorBoard loss and learning rate, a progress bar.

    The configs disable it off rank 0. Listed after the validation and schedule handlers, so each epoch's summary
    follows them (as the four handlers it attaches would, listed one by one).

    Args:
        summary_writer: the TensorBoard writer.
        optimizer: the optimiser whose learning rate is logged.
    """

    def __init__(self, summary_writer: Any, optimizer: Optimizer) -> None:
        self.handlers = [
            StatsHandler(name=None, tag_name="train_loss", output_transform=iteration_loss),
            TensorBoardStatsHandler(
                summary_writer=summary_writer, tag_name="train_loss", output_transform=iteration_loss
            ),
            LearningRateLogger(summary_writer, optimizer),
            ProgressBar(persist=True),
        ]

    def attach(self, engine: Engine) -> None:
        """Attach the four handlers to the trainer, in order."""
        for handler in self.handlers:
            handler.attach(engine)


def best_saver(
    ckpt_dir: str | os.PathLike, network: torch.nn.Module, ckpt_path: str | os.PathLike
) -> AtomicCheckpointSaver:
    """The saver of the network at the best key metric, as ``ckpt_path``'s file name in ``ckpt_dir``.

    Built on every rank (its record is checkpointed and resumed), attached to the evaluator on rank 0.
    """
    return AtomicCheckpointSaver(
        save_dir=os.fspath(ckpt_dir),
        save_dict={"model": network},
        save_key_metric=True,
        key_metric_filename=os.path.basename(ckpt_path),
        key_metric_n_saved=1,
    )


def key_metric(metrics: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The evaluator's key metric, ``{name: metric}`` (``model.pt`` is the epoch with its best value)."""
    return {name: metrics[name]}


def other_metrics(metrics: Mapping[str, Any], name: str, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The evaluator's additional metrics: every metric but the key one ``name`` and those in ``skip``."""
    return {k: v for k, v in metrics.items() if k != name and k not in skip}


def validation_handlers(
    *, summary_writer: Any, saver: AtomicCheckpointSaver, rank: int = 0, extra: Sequence[Any] = ()
) -> list[Any]:
    """The evaluator's handlers: (rank 0) console and TensorBoard summaries, the task's ``extra``, the best saver.

    Args:
        summary_writer: the TensorBoard writer (``None`` off rank 0).
        saver: the best-model saver (:func:`best_saver`), attached last, on rank 0 only.
        rank: the process rank.
        extra: the task's handlers (each may be disabled off rank 0 in the config).

    Returns:
        The handlers, for ``SupervisedEvaluator(val_handlers=...)``.
    """
    logs = [
        StatsHandler(name=None, iteration_log=False),
        TensorBoardStatsHandler(summary_writer=summary_writer, iteration_log=False),
    ]
    return [*(logs if rank == 0 else []), *extra, *([saver] if rank == 0 else [])]


def checkpoint_saver(
    *,
    ckpt_dir: str | os.PathLike,
    save_dict: Mapping[str, Any],
    interval: int,
    rank: int = 0,
    file_prefix: str = "",
) -> AtomicCheckpointSaver | None:
    """The trainer's periodic checkpoint saver, on rank 0 (``None`` elsewhere).

    Args:
        ckpt_dir: where ``{file_prefix}_checkpoint_epoch=K.pt`` goes.
        save_dict: ``{network, optimizer, lr_scheduler, trainer, best_saver}``, saved together (and restored
            together by the config's ``CheckpointLoader``).
        interval: a checkpoint every N epochs (and at the end).
        rank: the process rank (only rank 0 saves).
        file_prefix: the checkpoint names' prefix (``""``: ``checkpoint_epoch=K.pt``).

    Returns:
        The saver, attached to the trainer after its own handlers (:func:`attach_checkpoint_handlers`).
    """
    if rank != 0:
        return None
    return AtomicCheckpointSaver(
        save_dir=os.fspath(ckpt_dir),
        file_prefix=file_prefix,
        save_dict=dict(save_dict),
        save_interval=interval,
        epoch_level=True,
        n_saved=1,
    )


def attach_checkpoint_handlers(handlers: Sequence[Any], trainer: Engine) -> None:
    """Attach ``handlers`` to ``trainer``, skipping ``None`` (they name the trainer, so ``run`` attaches them)."""
    for handler in handlers:
        if handler is not None:
            handler.attach(trainer)


def check_resume(resume_ckpt: str | os.PathLike) -> None:
    """Refuse a truncated or unsafe checkpoint to resume from before anything runs (``""``: nothing to resume).

    ``CheckpointLoader`` would fail only when the trainer starts; the loaded dict is not kept.

    Raises:
        pipeline.errors.CheckpointError: naming the file and its problem.
    """
    if resume_ckpt:
        load_checkpoint(resume_ckpt)


def record_run(
    output_dir: str | os.PathLike,
    splits: SubjectSplits,
    *,
    run_info: Mapping[str, Any],
    model_card: Mapping[str, Any],
    rank: int = 0,
) -> None:
    """On rank 0: ``splits.json``, ``run_info.json`` (with the subjects of each part) and the model card.

    Args:
        output_dir: the run's folder.
        splits: the run's subject split.
        run_info: more ``run_info.json`` fields (``seed``, ...), before the subjects.
        model_card: :func:`pipeline.runtime.model_card.write_model_card` arguments (``weights``, ``network``,
            ``task``, ...): the card beside the weights that lets inference rebuild the network from them alone.
        rank: the process rank (other ranks write nothing).
    """
    if rank != 0:
        return
    save_splits(splits, os.path.join(output_dir, "splits.json"))
    subjects = {f"{part}_subjects": list(getattr(splits, part)) for part in ("train", "val", "test")}
    write_run_info(output_dir, **run_info, **subjects)
    write_model_card(**model_card)
