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

from networks import ResUnet3D, encoder_to_classifier, freeze_until, get_network, load_pretrained
from pipeline.data.splits import LeakageError
from pipeline.evaluation.metrics import classification_metrics, logits_and_labels
from pipeline.training.checkpoint import load_network_state
from pipeline.training.engines import BEST_FILENAME, TrainingResult, make_loader, precision_settings, resolve_device
from pipeline.training.fit import FitContext, FitSettings, Task, fit
from pipeline.training.handlers import GradualUnfreeze
from pipeline.training.losses import ClassificationLoss, class_weights
from pipeline.training.runinfo import read_run_info, write_run_info
from pipeline.utils.files import atomic_path

__all__ = [
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

INITS = ("scratch", "denoiser", "pretrained")


def build_classifier(
    init: str = "scratch",
    num_classes: int = 2,
    path: str | os.PathLike | None = None,
    denoiser: ResUnet3D | None = None,
    model_depth: int = 18,
    denoiser_kwargs: Mapping[str, Any] | None = None,
    **resnet_kwargs: Any,
) -> nn.Module:
    """A 3D ResNet classifier (logits (B, K)) initialised one of three ways, chosen by one switch.

    Args:
        init: ``"scratch"`` (random weights), ``"denoiser"`` (the encoder of a trained ResUnet3D: ``denoiser``, or
            a ResUnet3D built with ``denoiser_kwargs`` and loaded strictly from ``path``, a ``model.pt`` or a
            training checkpoint) or ``"pretrained"`` (3D-ResNets-PyTorch video or MedicalNet weights from ``path``,
            via ``networks.load_pretrained``).
        num_classes: K.
        path: the weights file for ``"denoiser"`` (when ``denoiser`` is not given) and ``"pretrained"``.
        denoiser: a trained ResUnet3D for ``"denoiser"``.
        model_depth: ResNet depth for ``"scratch"``/``"pretrained"`` (10, 18, 34, 50, ...).
        denoiser_kwargs: ``ResUnet3D`` arguments to rebuild the denoiser saved at ``path``.
        resnet_kwargs: more ``networks.build_resnet`` arguments (``shortcut_type``, ``conv1_t_stride``...).

    Returns:
        A ``monai.networks.nets.ResNet`` with a new ``fc`` of ``num_classes`` outputs.

    Raises:
        ValueError: for an unknown ``init`` (listing the allowed ones) or a missing ``path``/``denoiser``.
        pipeline.training.checkpoint.CheckpointError: for an unreadable denoiser checkpoint.
        networks.PretrainedWeightsError: for pretrained weights that do not match the network.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}.")
    if init == "denoiser":
        if denoiser is None:
            if path is None:
                raise ValueError("init='denoiser' needs `denoiser` (a ResUnet3D) or `path` to its weights.")
            denoiser = ResUnet3D(**dict(denoiser_kwargs or {}))
            denoiser.load_state_dict(load_network_state(path), strict=True)
        if not isinstance(denoiser, ResUnet3D):
            raise ValueError(f"init='denoiser' needs a ResUnet3D, got {type(denoiser).__name__}.")
        net = encoder_to_classifier(denoiser, num_classes)
        encoder = dict(denoiser.encoder_config)
        model_depth = encoder.pop("model_depth")
        return _describe(net, num_classes, model_depth, encoder)
    net = get_network("resnet", model_depth=model_depth, num_classes=num_classes, **resnet_kwargs)
    if init == "pretrained":
        if path is None:
            raise ValueError("init='pretrained' needs `path` to the pretrained weights.")
        load_pretrained(net, path)
    return _describe(net, num_classes, model_depth, resnet_kwargs)


def _describe(net: nn.Module, num_classes: int, model_depth: int, resnet_kwargs: Mapping[str, Any]) -> nn.Module:
    """Attach the MONAI config that rebuilds ``net``'s architecture (random weights): trained weights carry it."""
    net.init_config = {  # type: ignore[assignment]
        "_target_": "pipeline.training.classify.build_classifier",
        "init": "scratch",
        "num_classes": num_classes,
        "model_depth": model_depth,
        **resnet_kwargs,
    }
    return net


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
    """The model-card arguments of a classifier (:func:`pipeline.training.model_card.write_model_card`).

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


def finetune_classifier(
    train_data: Any,
    val_data: Any,
    network: nn.Module,
    run_dir: str | os.PathLike,
    *,
    num_classes: int = 2,
    test_data: Any = None,
    denoiser_run: str | os.PathLike | None = None,
    freeze: str | None = None,
    unfreeze_schedule: Mapping[int, str] | None = None,
    max_epochs: int = 10,
    batch_size: int = 2,
    optimizer: str | Optimizer = "adam",
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    scheduler: str = "cosine",
    warmup_epochs: int = 0,
    class_weighted: bool = True,
    key_metric: str = "balanced_accuracy",
    val_interval: int = 1,
    checkpoint_every: int = 10,
    keep_checkpoints: int | None = None,
    early_stop_patience: int | None = None,
    precision: str = "auto",
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    resume: bool = True,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
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
        num_classes: K.
        test_data: optional held-out dicts, predicted once with the best weights.
        denoiser_run: the run folder of the denoiser whose encoder initialised ``network``: its training and
            validation subjects must not appear in ``val_data``/``test_data`` (else :class:`LeakageError`).
        freeze: ``networks.freeze_until`` stage before training (e.g. ``"layer3"``: conv1..layer2 frozen, their
            batch-norm statistics fixed).
        unfreeze_schedule: gradual unfreezing, ``{epoch: stage}`` (see
        :class:`pipeline.training.handlers.GradualUnfreeze`).
        max_epochs: epochs.
        batch_size: training batch size.
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"`` or a ready optimiser.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        scheduler: ``"none"``, ``"cosine"``, ``"step"`` or ``"plateau"``.
        warmup_epochs: linear warm-up epochs.
        class_weighted: weight the cross-entropy by inverse class frequency of the training labels.
        key_metric: ``"balanced_accuracy"``, ``"accuracy"`` or ``"auc"``.
        val_interval: validate every N epochs.
        checkpoint_every: resumable checkpoint every N epochs (and at the end).
        keep_checkpoints: periodic checkpoints kept (``None``: all).
        early_stop_patience: validations without improvement before stopping.
        precision: ``"auto"`` (bf16 where the hardware computes it natively, else fp32), ``"fp32"``, ``"bf16"`` or
            ``"fp16"``.
        seed: the run seed.
        num_workers: data-loader workers.
        device: default CUDA when available.
        train_transform: transform for dict training data.
        val_transform: transform for dict validation/test data.
        resume: continue from the newest checkpoint in ``run_dir``.
        progress: progress bars and console summaries.
        config: configuration to record in ``run_info.json``.
        class_names: the class names in index order, for the model card ``model.json`` beside ``model.pt``
            (default ``"0" .. "K-1"``).

    Returns:
        A :class:`pipeline.training.engines.TrainingResult`.

    Raises:
        pipeline.data.splits.LeakageError: if the denoiser saw validation or test subjects, or train/val/test overlap.
        ValueError: for invalid arguments.
    """
    arguments = {
        k: v for k, v in locals().items() if k not in ("train_data", "val_data", "test_data", "network", "config")
    }
    settings = FitSettings(
        max_epochs=max_epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        scheduler=scheduler,
        warmup_epochs=warmup_epochs,
        key_metric=key_metric,
        val_interval=val_interval,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        early_stop_patience=early_stop_patience,
        precision=precision,
        seed=seed,
        num_workers=num_workers,
        device=device,
        resume=resume,
        progress=progress,
    )
    task = classify_task(
        network,
        num_classes=num_classes,
        class_weight=class_weights(labels_of(train_data), num_classes) if class_weighted else None,
        denoiser_run=denoiser_run,
        freeze=freeze,
        unfreeze_schedule=unfreeze_schedule,
        class_names=class_names,
    )
    return fit(
        task,
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
