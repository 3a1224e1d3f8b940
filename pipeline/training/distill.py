"""Knowledge distillation: a frozen teacher classifier teaches a student classifier.

The notes' plan: the teacher is, e.g., a classifier started from video-pretrained weights and fine-tuned (or any
checkpoint); the student is, e.g., the denoiser-pretrained classifier. The loss is
``α·CE(student, y) + (1 − α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``
(:class:`pipeline.training.losses.DistillationLoss`). The teacher is frozen and kept in eval mode throughout (its
batch-norm
statistics and dropout are those of inference), even though the engine calls ``train()`` on the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.metrics import Accuracy
from monai.engines import SupervisedTrainer
from monai.inferers import SimpleInferer
from torch import nn
from torch.optim import Optimizer

from pipeline.evaluation.metrics import logits_and_labels
from pipeline.runtime.precision import precision_settings
from pipeline.training.classify import (
    CLASSIFY_DEFAULTS,
    classifier_card,
    classify_evaluator_builder,
    labels_of,
    prediction_step,
)
from pipeline.training.engines import TrainingResult
from pipeline.training.fit import FitContext, FitSettings, Task, fit, fit_settings, lists_fit_fields, settings_record
from pipeline.training.losses import DistillationLoss, class_weights

__all__ = ["TeacherStudent", "build_distill_trainer", "distill", "distill_task"]


class TeacherStudent(nn.Module):
    """Run a student and a frozen teacher on the same input: ``forward(x) -> (student_logits, teacher_logits)``.

    The teacher's parameters get ``requires_grad=False``, its forward runs under ``torch.no_grad``, and ``train()``
    never switches it out of eval mode. ``state_dict`` holds both (``student.*``, ``teacher.*``); checkpoints of a
    distillation save the student alone (see :func:`distill`).

    Args:
        student: the network being trained, (B, C, H, W, D) -> (B, K).
        teacher: the trained network, same input and K.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> TeacherStudent:
        """Set the student's mode; the teacher stays in eval mode."""
        self.training = mode
        self.student.train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student logits (with gradients) and teacher logits (without), both (B, K)."""
        with torch.no_grad():
            teacher = self.teacher(x)
        return self.student(x), teacher


def _student_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pred = output["pred"]
    return logits_and_labels({"pred": pred[0] if isinstance(pred, (tuple, list)) else pred, "label": output["label"]})


def build_distill_trainer(
    pair: TeacherStudent,
    train_loader: Any,
    optimizer: Optimizer,
    loss_function: DistillationLoss,
    max_epochs: int,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    train_handlers: list[Any] | None = None,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` whose network is a :class:`TeacherStudent` and whose loss is the distillation loss.

    The output's ``pred`` is the pair ``(student_logits, teacher_logits)``; ``train_accuracy`` is the student's.

    Raises:
        ValueError: for ``max_epochs < 1`` or an invalid precision.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    device = torch.device(device)
    amp, inferer = precision_settings(precision, device, SimpleInferer())
    return SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=pair,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=inferer,
        amp=amp,
        key_train_metric={"train_accuracy": Accuracy(output_transform=_student_logits)},
        train_handlers=list(train_handlers or []),
        decollate=False,
    )


@lists_fit_fields(CLASSIFY_DEFAULTS)
def distill(
    train_data: Any,
    val_data: Any,
    student: nn.Module,
    teacher: nn.Module,
    run_dir: str | os.PathLike,
    settings: FitSettings | None = None,
    *,
    num_classes: int = 2,
    alpha: float = 0.5,
    temperature: float = 4.0,
    test_data: Any = None,
    class_weighted: bool = True,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    **fit_fields: Any,
) -> TrainingResult:
    """Distil ``teacher`` into ``student``; validate the student; write ``model.pt`` (student) and predictions CSVs.

    A thin wrapper: :func:`distill_task` run by :func:`pipeline.training.fit.fit`. After training the best student
    is reloaded and ``predictions_val.csv`` (and ``predictions_test.csv`` with ``test_data``) written; the test
    metrics go to ``run_info.json``.

    Args:
        train_data: training dicts (``image``, ``label``, ``subject``) or a dataset.
        val_data: validation dicts or dataset.
        student: the network trained (e.g. a shallower ResNet).
        teacher: the trained network distilled (frozen, in eval mode).
        run_dir: the run folder.
        settings: the training knobs every task shares (:class:`pipeline.training.fit.FitSettings`; default: the
            task's defaults, the classifier's, ``key_metric`` ``balanced_accuracy``).
        num_classes: K.
        alpha: weight of the hard-label cross-entropy (``1 - alpha`` for the softened teacher term).
        temperature: softens both distributions (> 0).
        test_data: optional held-out dicts, predicted once with the best student.
        class_weighted: weight the cross-entropy by inverse class frequency of the training labels.
        train_transform: transform for dict training data.
        val_transform: transform for dict validation/test data.
        config: configuration to record in ``run_info.json``.
        class_names: the class names in index order, for the student's model card ``model.json``
            (default ``"0" .. "K-1"``).
        **fit_fields: any :class:`~pipeline.training.fit.FitSettings` field (``max_epochs``, ``lr``, ``precision``,
            ``channels_last``...), replacing that field of ``settings``; any other keyword is a ``TypeError``.

    Returns:
        A :class:`pipeline.training.engines.TrainingResult`.

    Raises:
        ValueError: for invalid arguments (``alpha``, ``temperature``...).
        pipeline.data.splits.LeakageError: if train, val and test share subjects.
    """
    settings = fit_settings(settings, CLASSIFY_DEFAULTS, **fit_fields)
    task_arguments = dict(num_classes=num_classes, alpha=alpha, temperature=temperature, class_names=class_names)
    arguments = {**settings_record(settings), **task_arguments, "class_weighted": class_weighted, "run_dir": run_dir}
    weights = class_weights(labels_of(train_data), num_classes) if class_weighted else None
    return fit(
        distill_task(student, teacher, class_weight=weights, **task_arguments),
        train_data,
        val_data,
        run_dir,
        settings,
        test_data=test_data,
        train_transform=train_transform,
        val_transform=val_transform,
        config={"arguments": arguments, **dict(config or {})},
    )


def distill_task(
    student: nn.Module,
    teacher: nn.Module,
    *,
    num_classes: int = 2,
    alpha: float = 0.5,
    temperature: float = 4.0,
    class_weight: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> Task:
    """Distillation as a :class:`pipeline.training.fit.Task`: the trainer runs the pair, the student is saved.

    The optimiser, the checkpoints, the validation, ``model.pt`` and the prediction CSVs hold the student alone;
    train, validation and test subjects must not overlap; the default key metric is ``balanced_accuracy``.

    Args:
        student: the classifier to train (logits (B, K)).
        teacher: the trained classifier (frozen, eval mode).
        num_classes: K.
        alpha: weight of the hard-label cross-entropy, in [0, 1].
        temperature: softening temperature T > 0.
        class_weight: class weights of the hard-label term, or ``None``.
        class_names: class names in index order, for the student's model card.

    Returns:
        The task, for :func:`pipeline.training.fit.fit`.

    Raises:
        ValueError: for ``alpha`` outside [0, 1] or ``temperature <= 0``.
    """
    loss_fn = DistillationLoss(alpha=alpha, temperature=temperature, class_weight=class_weight)
    pair = TeacherStudent(student, teacher)

    def build_trainer(context: FitContext) -> SupervisedTrainer:
        settings = context.settings
        return build_distill_trainer(
            pair,
            context.train_loader,
            context.optimizer,
            loss_fn,
            settings.max_epochs,
            device=context.device,
            precision=settings.precision,
        )

    return Task(
        name="distill",
        network=student,
        module=pair,
        loss=loss_fn,
        build_trainer=build_trainer,
        build_evaluator=classify_evaluator_builder(student, num_classes),
        key_metric="balanced_accuracy",
        check_overlap=True,
        run_info={"task": "distill", "student": type(student).__name__, "teacher": type(teacher).__name__},
        model_card=classifier_card(num_classes, class_names),
        after_training=prediction_step(student, num_classes),
    )
