"""Encoder -> classifier fine-tuning: a 3D ResNet from a trained denoiser's encoder, pretrained weights or scratch.

Data: dicts with ``image`` ((1, H, W, D), intensities as for the denoiser), ``label`` (class index) and
``subject``. The classifier returns logits (B, K); metrics are accuracy, balanced accuracy, ROC AUC and the
confusion matrix (:func:`pipeline.evaluation.metrics.classification_metrics`); predictions are written per subject to
CSV.

Leakage guard: when the encoder comes from a denoiser run, the subjects that run trained or validated on (its
``run_info.json``) must not be among the classifier's validation or test subjects.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.inferers import SimpleInferer
from torch import nn
from torch.optim import Optimizer

from networks import freeze_until
from pipeline.data.splits import LeakageError
from pipeline.evaluation.metrics import classification_metrics, logits_and_labels
from pipeline.runtime.classifier import INITS, build_classifier
from pipeline.runtime.precision import precision_settings
from pipeline.runtime.weights import load_network_state
from pipeline.training.engines import BEST_FILENAME, TrainingResult, make_loader, resolve_device
from pipeline.training.fit import FitContext, FitSettings, Task, fit, fit_settings, lists_fit_fields, settings_record
from pipeline.training.handlers import GradualUnfreeze
from pipeline.training.losses import ClassificationLoss, class_weights
from pipeline.training.runinfo import read_run_info, write_run_info
from pipeline.utils.files import atomic_path

__all__ = [
    "CLASSIFY_DEFAULTS",
    "INITS",
    "PredictionsWriter",
    "build_classifier",
    "build_classify_evaluator",
    "build_classify_trainer",
    "check_denoiser_leakage",
    "classifier_card",
    "classify_evaluator_builder",
    "classify_task",
    "finetune_classifier",
    "labels_of",
    "predict_classifier",
    "prediction_step",
]

logger = logging.getLogger(__name__)


def check_denoiser_leakage(
    denoiser_run: str | os.PathLike, val_subjects: Sequence[str], test_subjects: Sequence[str] = ()
) -> None:
    """Refuse a classifier split whose validation or test subjects the denoiser was trained or validated on.

    Args:
        denoiser_run: the denoiser's run folder (or its ``run_info.json``).
        val_subjects: the classifier's validation subject IDs.
        test_subjects: the classifier's test subject IDs.

    Raises:
        pipeline.data.splits.LeakageError: listing the shared subjects.
        ValueError: if the denoiser run did not record its subjects (so leakage cannot be ruled out).
        FileNotFoundError: if there is no ``run_info.json``.
    """
    info = read_run_info(denoiser_run)
    if not info.get("train_subjects"):
        raise ValueError(
            f"{denoiser_run}: run_info.json records no training subjects, so leakage into the classifier's "
            "validation/test subjects cannot be ruled out; train the denoiser on data with a 'subject' key."
        )
    seen = set(info["train_subjects"]) | set(info.get("val_subjects") or [])
    overlaps = {
        ("denoiser training", f"classifier {name}"): sorted(seen & {str(s) for s in subjects})
        for name, subjects in (("val", val_subjects), ("test", test_subjects))
    }
    overlaps = {pair: ids for pair, ids in overlaps.items() if ids}
    if overlaps:
        raise LeakageError(overlaps)


class PredictionsWriter:
    """Collect per-subject class probabilities during an evaluation and write them to CSV at its end, atomically.

    Columns: ``subject, label, prediction, prob_0 ... prob_{K-1}`` (softmax of the logits).

    Args:
        path: the CSV file (replaced atomically after each evaluation).
        subject_key: batch key of the subject IDs.
    """

    def __init__(self, path: str | os.PathLike, subject_key: str = "subject") -> None:
        self.path = Path(path)
        self.subject_key = subject_key
        self.rows: list[list[Any]] = []

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator's ``EPOCH_STARTED``, ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        logits, labels = logits_and_labels(engine.state.output)
        probs = torch.softmax(logits, dim=1).cpu()
        batch = engine.state.batch
        subjects = batch.get(self.subject_key) if isinstance(batch, Mapping) else None
        if subjects is None:
            start = len(self.rows)
            subjects = [str(start + i) for i in range(len(labels))]
        for subject, label, prob in zip(subjects, labels.tolist(), probs.tolist()):
            self.rows.append([str(subject), int(label), int(max(range(len(prob)), key=prob.__getitem__)), *prob])

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            return
        k = len(self.rows[0]) - 3
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["subject", "label", "prediction", *[f"prob_{i}" for i in range(k)]])
            writer.writerows(self.rows)
        logger.info("wrote %d predictions to %s", len(self.rows), self.path)


def build_classify_trainer(
    network: nn.Module,
    train_loader: Any,
    optimizer: Optimizer,
    loss_function: Callable,
    max_epochs: int,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    train_handlers: Sequence[Any] | None = None,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` for classification, tracking the training accuracy (``train_accuracy``).

    Args:
        network: the classifier, (B, 1, H, W, D) -> logits (B, K).
        train_loader: yields dicts with ``image`` and ``label``.
        optimizer: the optimiser (trainable parameters only).
        loss_function: e.g. :class:`pipeline.training.losses.ClassificationLoss`.
        max_epochs: epochs (>= 1).
        device: the device.
        precision: ``"auto"`` (bf16 where the hardware computes it natively, else fp32), ``"fp32"``, ``"bf16"`` or
            ``"fp16"``.
        train_handlers: more handlers, attached in order.

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
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=inferer,
        amp=amp,
        key_train_metric={"train_accuracy": Accuracy(output_transform=logits_and_labels)},
        train_handlers=list(train_handlers or []),
        decollate=False,
    )


def build_classify_evaluator(
    network: nn.Module,
    val_loader: Any,
    num_classes: int,
    device: str | torch.device = "cpu",
    key_metric: str = "balanced_accuracy",
    precision: str = "auto",
    val_handlers: Sequence[Any] | None = None,
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` computing accuracy, balanced accuracy, AUC and the confusion matrix.

    Args:
        network: the classifier.
        val_loader: yields dicts with ``image``, ``label`` (and ``subject`` for :class:`PredictionsWriter`).
        num_classes: K.
        device: the device.
        key_metric: ``"balanced_accuracy"``, ``"accuracy"`` or ``"auc"`` (tracks the best model).
        precision: ``"auto"`` (bf16 where the hardware computes it natively, else fp32), ``"fp32"``, ``"bf16"`` or
            ``"fp16"``.
        val_handlers: more handlers (e.g. :class:`PredictionsWriter`), attached in order.

    Raises:
        ValueError: for an unknown ``key_metric`` (listing the allowed ones).
    """
    metrics = classification_metrics(num_classes)
    allowed = [name for name in metrics if name != "confusion_matrix"]
    if key_metric not in allowed:
        raise ValueError(f"key_metric must be one of {allowed}, got {key_metric!r}.")
    device = torch.device(device)
    amp, inferer = precision_settings(precision, device, SimpleInferer())
    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=network,
        inferer=inferer,
        key_val_metric={key_metric: metrics.pop(key_metric)},
        additional_metrics=metrics,
        val_handlers=list(val_handlers or []),
        amp=amp,
        decollate=False,
    )


def classifier_card(num_classes: int, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The model-card arguments of a classifier (:func:`pipeline.runtime.model_card.write_model_card`).

    Args:
        num_classes: K.
        class_names: K names in index order (default ``"0" .. "K-1"``).

    Returns:
        ``{"task": "classify", "config": {"class_names": [...]}}``.

    Raises:
        ValueError: if ``class_names`` does not hold K names.
    """
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names must hold num_classes={num_classes} names, got {names}.")
    return {"task": "classify", "config": {"class_names": names}}


def labels_of(data: Any) -> list[int]:
    """The ``label`` of every item of a list of dicts (or of a dataset's ``.data``).

    Raises:
        ValueError: if the items have no ``label``.
    """
    items = getattr(data, "data", data)
    try:
        return [int(item["label"]) for item in items]
    except (TypeError, KeyError) as error:
        raise ValueError("class-weighted loss needs the training items' 'label' values (a list of dicts).") from error


def predict_classifier(
    network: nn.Module,
    data: Any,
    num_classes: int,
    csv_path: str | os.PathLike | None = None,
    transform: Callable | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Classify ``data``, return its metrics and optionally write per-subject probabilities to ``csv_path``.

    Returns:
        ``{"accuracy", "balanced_accuracy", "auc": float, "confusion_matrix": list of lists}``.
    """
    device = resolve_device(device)
    handlers = [PredictionsWriter(csv_path)] if csv_path is not None else []
    evaluator = build_classify_evaluator(
        network.to(device),
        make_loader(data, transform, batch_size=batch_size),
        num_classes,
        device=device,
        val_handlers=handlers,
    )
    evaluator.run()
    return {
        k: (v.tolist() if isinstance(v, torch.Tensor) and v.ndim > 0 else float(v))
        for k, v in evaluator.state.metrics.items()
    }


#: The classifier's defaults where they differ from :class:`~pipeline.training.fit.FitSettings`'s.
CLASSIFY_DEFAULTS: dict[str, Any] = {"key_metric": "balanced_accuracy"}


@lists_fit_fields(CLASSIFY_DEFAULTS)
def finetune_classifier(
    train_data: Any,
    val_data: Any,
    network: nn.Module,
    run_dir: str | os.PathLike,
    settings: FitSettings | None = None,
    *,
    num_classes: int = 2,
    test_data: Any = None,
    denoiser_run: str | os.PathLike | None = None,
    freeze: str | None = None,
    unfreeze_schedule: Mapping[int, str] | None = None,
    class_weighted: bool = True,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    **fit_fields: Any,
) -> TrainingResult:
    """Fine-tune a classifier; write ``model.pt`` (best ``key_metric``) and predictions CSVs for val and test.

    A thin wrapper: :func:`classify_task` run by :func:`pipeline.training.fit.fit`.

    Build ``network`` with :func:`build_classifier` (``init="denoiser" | "pretrained" | "scratch"``). After
    training, the best weights are reloaded and ``predictions_val.csv`` (and ``predictions_test.csv`` with
    ``test_data``) are written; the test metrics are stored in ``run_info.json`` under ``test_metrics``.

    Args:
        train_data: training dicts (``image``, ``label``, ``subject``) or a dataset.
        val_data: validation dicts or dataset.
        network: the classifier.
        run_dir: the run folder.
        settings: the training knobs every task shares (:class:`pipeline.training.fit.FitSettings`; default: the
            task's defaults, Adam at lr 0.001, ``key_metric`` ``balanced_accuracy`` (or ``accuracy``, ``auc``)).
        num_classes: K.
        test_data: optional held-out dicts, predicted once with the best weights.
        denoiser_run: the run folder of the denoiser whose encoder initialised ``network``: its training and
            validation subjects must not appear in ``val_data``/``test_data`` (else :class:`LeakageError`).
        freeze: ``networks.freeze_until`` stage before training (e.g. ``"layer3"``: conv1..layer2 frozen, their
            batch-norm statistics fixed).
        unfreeze_schedule: gradual unfreezing, ``{epoch: stage}`` (see
            :class:`pipeline.training.handlers.GradualUnfreeze`).
        class_weighted: weight the cross-entropy by inverse class frequency of the training labels.
        train_transform: transform for dict training data.
        val_transform: transform for dict validation/test data.
        config: configuration to record in ``run_info.json``.
        class_names: the class names in index order, for the model card ``model.json`` beside ``model.pt``
            (default ``"0" .. "K-1"``).
        **fit_fields: any :class:`~pipeline.training.fit.FitSettings` field (``max_epochs``, ``lr``, ``precision``,
            ``channels_last``...), replacing that field of ``settings``; any other keyword is a ``TypeError``.

    Returns:
        A :class:`pipeline.training.engines.TrainingResult`.

    Raises:
        pipeline.data.splits.LeakageError: if the denoiser saw validation or test subjects, or train/val/test overlap.
        ValueError: for invalid arguments.
    """
    settings = fit_settings(settings, CLASSIFY_DEFAULTS, **fit_fields)
    task_arguments = dict(
        num_classes=num_classes,
        denoiser_run=denoiser_run,
        freeze=freeze,
        unfreeze_schedule=unfreeze_schedule,
        class_names=class_names,
    )
    arguments = {**settings_record(settings), **task_arguments, "class_weighted": class_weighted, "run_dir": run_dir}
    weights = class_weights(labels_of(train_data), num_classes) if class_weighted else None
    return fit(
        classify_task(network, class_weight=weights, **task_arguments),
        train_data,
        val_data,
        run_dir,
        settings,
        test_data=test_data,
        train_transform=train_transform,
        val_transform=val_transform,
        config={"arguments": arguments, **dict(config or {})},
    )


def classify_task(
    network: nn.Module,
    *,
    num_classes: int = 2,
    class_weight: torch.Tensor | None = None,
    denoiser_run: str | os.PathLike | None = None,
    freeze: str | None = None,
    unfreeze_schedule: Mapping[int, str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Task:
    """Classification as a :class:`pipeline.training.fit.Task`; the default key metric is ``balanced_accuracy``.

    Train, validation and test subjects must not overlap; after training the best weights are reloaded and the
    prediction CSVs and test metrics written (:func:`prediction_step`).

    Args:
        network: the classifier (logits (B, K)), saved as ``model.pt``.
        num_classes: K.
        class_weight: the cross-entropy's class weights (:func:`pipeline.training.losses.class_weights`), or
            ``None``.
        denoiser_run: the run folder of the denoiser whose encoder initialised ``network`` (leakage guard, see
            :func:`check_denoiser_leakage`).
        freeze: ``networks.freeze_until`` stage, applied now (before the optimiser is built).
        unfreeze_schedule: gradual unfreezing, ``{epoch: stage}``
            (:class:`pipeline.training.handlers.GradualUnfreeze`, checkpointed with the run).
        class_names: class names in index order, for the model card.

    Returns:
        The task, for :func:`pipeline.training.fit.fit`.

    Raises:
        ValueError: for ``class_names`` that do not hold K names or an unknown ``freeze`` stage.
    """
    if freeze is not None:
        freeze_until(network, freeze)
    loss_fn = ClassificationLoss(class_weight)

    def build_trainer(context: FitContext) -> SupervisedTrainer:
        handlers: list[Any] = []
        if unfreeze_schedule:
            unfreezer = GradualUnfreeze(network, context.optimizer, unfreeze_schedule)
            context.extra_state["unfreeze"] = unfreezer
            handlers.append(unfreezer)
        settings = context.settings
        return build_classify_trainer(
            network,
            context.train_loader,
            context.optimizer,
            loss_fn,
            settings.max_epochs,
            device=context.device,
            precision=settings.precision,
            train_handlers=handlers,
        )

    def check_subjects(subjects: Mapping[str, list[str]]) -> None:
        if denoiser_run is not None:
            check_denoiser_leakage(denoiser_run, subjects["val"], subjects.get("test", []))

    return Task(
        name="classify",
        network=network,
        loss=loss_fn,
        build_trainer=build_trainer,
        build_evaluator=classify_evaluator_builder(network, num_classes),
        key_metric="balanced_accuracy",
        check_overlap=True,
        check_subjects=check_subjects,
        run_info={
            "task": "classify",
            "network": type(network).__name__,
            "class_weights": None if class_weight is None else class_weight.tolist(),
            "denoiser_run": None if denoiser_run is None else os.fspath(denoiser_run),
        },
        model_card=classifier_card(num_classes, class_names),
        after_training=prediction_step(network, num_classes),
    )


def classify_evaluator_builder(network: nn.Module, num_classes: int) -> Callable[[FitContext], SupervisedEvaluator]:
    """The task's evaluator builder: :func:`build_classify_evaluator` of ``network`` on the validation loader.

    Args:
        network: the classifier that is validated (for distillation, the student).
        num_classes: K.

    Returns:
        ``(context) -> SupervisedEvaluator``.
    """

    def build_evaluator(context: FitContext) -> SupervisedEvaluator:
        settings = context.settings
        return build_classify_evaluator(
            network,
            context.val_loader,
            num_classes,
            device=context.device,
            key_metric=settings.key_metric,
            precision=settings.precision,
        )

    return build_evaluator


def prediction_step(network: nn.Module, num_classes: int) -> Callable[[FitContext, TrainingResult], None]:
    """The after-training step of a classifier: reload ``model.pt``, write prediction CSVs and the test metrics.

    Writes ``predictions_val.csv`` and, with test data, ``predictions_test.csv`` into the run folder, and the test
    metrics into ``run_info.json`` under ``test_metrics``.

    Args:
        network: the classifier saved as ``model.pt`` (its best weights are loaded into it).
        num_classes: K.

    Returns:
        ``(context, result) -> None``, for :attr:`pipeline.training.fit.Task.after_training`.
    """

    def after_training(context: FitContext, result: TrainingResult) -> None:
        best = context.run_dir / BEST_FILENAME
        if best.is_file():
            network.load_state_dict(load_network_state(best), strict=True)
        run_dir, transform, device = context.run_dir, context.val_transform, context.device
        predict_classifier(
            network, context.val_data, num_classes, run_dir / "predictions_val.csv", transform, device=device
        )
        if context.test_data is not None:
            test_metrics = predict_classifier(
                network, context.test_data, num_classes, run_dir / "predictions_test.csv", transform, device=device
            )
            write_run_info(run_dir, test_metrics=test_metrics)

    return after_training
