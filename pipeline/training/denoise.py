"""Supervised denoising: noisy ``image`` -> clean ``label``, trained and validated with MONAI's engines.

Low level (for bundle configs and custom loops): :func:`build_denoise_trainer`, :func:`build_denoise_evaluator`.
High level (for researchers): :func:`train_denoiser` and :func:`evaluate_denoiser`; :func:`denoise_task` for
:func:`pipeline.training.fit.fit`.

Data: dicts with ``image`` (noisy, (1, H, W, D)), ``label`` (clean, same shape), optionally ``mask`` (brain mask)
and ``subject``; intensities in ``[0, data_range]`` (``[0, 1]`` after ``ScalePercentile``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from torch import nn
from torch.optim import Optimizer

from pipeline.evaluation.metrics import denoise_metrics
from pipeline.runtime.precision import memory_format, precision_settings
from pipeline.training.engines import TrainingResult, make_loader, resolve_device
from pipeline.training.fit import FitContext, FitSettings, Task, fit, fit_settings, lists_fit_fields, settings_record
from pipeline.training.handlers import CopyBatchKeys, TensorBoardSlices
from pipeline.training.losses import build_loss

__all__ = [
    "DENOISE_DEFAULTS",
    "build_denoise_evaluator",
    "build_denoise_trainer",
    "denoise_task",
    "evaluate_denoiser",
    "train_denoiser",
]

logger = logging.getLogger(__name__)


def build_denoise_trainer(
    network: nn.Module,
    train_loader: Any,
    optimizer: Optimizer,
    loss_function: Callable,
    max_epochs: int,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    train_handlers: Sequence[Any] | None = None,
    channels_last: bool = False,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` for denoising on patches (whole batches through the network).

    Args:
        network: the denoiser, (B, 1, H, W, D) -> (B, 1, H, W, D).
        train_loader: yields dicts with ``image`` and ``label``.
        optimizer: the optimiser.
        loss_function: ``loss(pred, label) -> scalar`` (see :func:`pipeline.training.losses.build_loss`).
        max_epochs: epochs to train.
        device: the device.
        precision: ``"auto"`` (bf16 where the hardware computes it natively, else fp32), ``"fp32"``, ``"bf16"`` or
            ``"fp16"`` (see :func:`pipeline.runtime.precision.precision_settings`).
        train_handlers: more handlers, attached in order.
        channels_last: convert the network (in place) and each batch to ``channels_last_3d``; the weights' names and
            values are unchanged.

    Returns:
        The trainer; its output holds ``image``, ``label``, ``pred`` and ``loss``.

    Raises:
        ValueError: for ``max_epochs < 1`` or an invalid precision.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    device = torch.device(device)
    amp, inferer = precision_settings(precision, device, SimpleInferer(), channels_last=channels_last)
    network.to(memory_format=memory_format(channels_last))
    return SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=inferer,
        amp=amp,
        train_handlers=list(train_handlers or []),
        decollate=False,
    )


def build_denoise_evaluator(
    network: nn.Module,
    val_loader: Any,
    device: str | torch.device = "cpu",
    roi_size: Sequence[int] | int | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    key_metric: str = "psnr_brain",
    mask_key: str | None = "mask",
    data_range: float = 1.0,
    ssim_kernel_size: int = 7,
    include_noisy: bool = True,
    precision: str = "auto",
    val_handlers: Sequence[Any] | None = None,
    channels_last: bool = False,
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` on whole volumes with sliding-window inference and the denoising metrics.

    Metrics (see :mod:`pipeline.evaluation.metrics`): ``psnr_brain``, ``ssim_brain`` (inside ``mask``), ``psnr_volume``,
    ``ssim_volume`` (whole volume), and the noisy input's ``*_noisy`` reference values.

    Args:
        network: the denoiser.
        val_loader: yields dicts with ``image``, ``label`` and (for the brain metrics) ``mask``; batch size 1 lets
            volumes differ in shape.
        device: the device.
        roi_size: sliding-window patch size (e.g. the training patch); ``None`` runs whole volumes at once.
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction in [0, 1).
        key_metric: the metric that tracks the best model.
        mask_key: batch key of the brain mask; ``None`` for whole-volume metrics only.
        data_range: intensity range of the images.
        ssim_kernel_size: SSIM window.
        include_noisy: also report the noisy input's metrics.
        precision: ``"auto"`` (bf16 where the hardware computes it natively, else fp32), ``"fp32"``, ``"bf16"`` or
            ``"fp16"``; predictions reach the metrics in float32 either way.
        val_handlers: more handlers (e.g. :class:`pipeline.training.handlers.TensorBoardSlices`), attached in order.
        channels_last: convert the network (in place) and each window to ``channels_last_3d``.

    Returns:
        The evaluator.

    Raises:
        ValueError: for an unknown ``key_metric`` (listing the available ones) or invalid window settings.
    """
    metrics = denoise_metrics(
        mask_key=mask_key, data_range=data_range, ssim_kernel_size=ssim_kernel_size, include_noisy=include_noisy
    )
    if key_metric not in metrics:
        raise ValueError(f"key_metric must be one of {sorted(metrics)}, got {key_metric!r}.")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}.")
    device = torch.device(device)
    base: Inferer = (
        SimpleInferer()
        if roi_size is None
        else SlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")
    )
    amp, inferer = precision_settings(precision, device, base, channels_last=channels_last, training=False)
    network.to(memory_format=memory_format(channels_last))
    handlers: list[Any] = [CopyBatchKeys([mask_key])] if mask_key else []
    handlers.extend(val_handlers or [])
    key = {key_metric: metrics.pop(key_metric)}
    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=network,
        inferer=inferer,
        key_val_metric=key,
        additional_metrics=metrics,
        val_handlers=handlers,
        amp=amp,
    )


#: The denoiser's defaults where they differ from :class:`~pipeline.training.fit.FitSettings`'s.
DENOISE_DEFAULTS: dict[str, Any] = {"optimizer": "sgd", "lr": 0.01, "key_metric": "psnr_brain"}


@lists_fit_fields(DENOISE_DEFAULTS)
def train_denoiser(
    train_data: Any,
    val_data: Any,
    network: nn.Module,
    run_dir: str | os.PathLike,
    settings: FitSettings | None = None,
    *,
    loss: str | nn.Module = "l1",
    l1_weight: float = 1.0,
    ssim_weight: float = 1.0,
    roi_size: Sequence[int] | int | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    mask_key: str | None = "mask",
    data_range: float = 1.0,
    ssim_kernel_size: int = 7,
    config: Mapping[str, Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
    **fit_fields: Any,
) -> TrainingResult:
    """Train a denoiser, validate it on whole volumes, checkpoint, log to TensorBoard; resume when interrupted.

    A thin wrapper: :func:`denoise_task` run by :func:`pipeline.training.fit.fit`.

    The network should be built after :func:`pipeline.utils.seed.seed_everything` for reproducible initial weights.
    Everything lands in ``run_dir`` (see :func:`pipeline.training.engines.run_training`); ``tensorboard --logdir
    run_dir`` shows the loss, learning rate, all metrics and each validation's middle slices (tags ``val/axial``,
    ``val/coronal``, ``val/sagittal``: noisy | denoised | clean | |error|).

    Args:
        train_data: training dicts (``image``, ``label``[, ``subject``]) or a dataset yielding them (patches).
        val_data: validation dicts (``image``, ``label``, ``mask``) or a dataset (whole volumes).
        network: the denoiser (moved to the device).
        run_dir: the run folder.
        settings: the training knobs every task shares (:class:`pipeline.training.fit.FitSettings`; default: the
            task's defaults, SGD at lr 0.01, ``key_metric`` ``psnr_brain``).
        loss: ``"l1"``, ``"mse"``, ``"ssim"``, ``"l1_ssim"`` or a module ``loss(pred, target)``.
        l1_weight: L1 weight of ``"l1_ssim"``.
        ssim_weight: SSIM weight of ``"l1_ssim"``.
        roi_size: sliding-window size for validation (``None``: whole volumes at once).
        sw_batch_size: sliding-window batch.
        overlap: sliding-window overlap.
        train_transform: transform for ``train_data`` given as dicts.
        val_transform: transform for ``val_data`` given as dicts.
        mask_key: brain-mask key (``None``: whole-volume metrics only; then use a ``*_volume`` key metric).
        data_range: intensity range (1.0 for [0, 1]).
        ssim_kernel_size: SSIM window for the metrics and the SSIM loss.
        config: the resolved configuration to record in ``run_info.json`` (the arguments are recorded too).
        model_card: what inference needs beyond the network, for the card ``model.json`` beside ``model.pt``
            (:mod:`pipeline.runtime.model_card`): ``config`` (bundle ids such as ``patch_size``, ``spacing``,
            ``percentile_upper``; default ``patch_size`` = ``roi_size``) and facts such as ``noise`` and
            ``intensity``, as the caller's transforms define them.
        **fit_fields: any :class:`~pipeline.training.fit.FitSettings` field (``max_epochs``, ``lr``, ``precision``,
            ``channels_last``...), replacing that field of ``settings``; any other keyword is a ``TypeError``.

    Returns:
        A :class:`pipeline.training.engines.TrainingResult`.

    Raises:
        ValueError: for invalid arguments, before any training.
        pipeline.training.handlers.NonFiniteLossError: when the loss becomes NaN/Inf (the last checkpoint stays).
    """
    settings = fit_settings(settings, DENOISE_DEFAULTS, **fit_fields)
    task_arguments = dict(
        loss=loss,
        l1_weight=l1_weight,
        ssim_weight=ssim_weight,
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mask_key=mask_key,
        data_range=data_range,
        ssim_kernel_size=ssim_kernel_size,
        model_card=model_card,
    )
    arguments = {**settings_record(settings), **task_arguments, "run_dir": run_dir}
    return fit(
        denoise_task(network, **task_arguments),
        train_data,
        val_data,
        run_dir,
        settings,
        train_transform=train_transform,
        val_transform=val_transform,
        config={"arguments": arguments, **dict(config or {})},
    )


def denoise_task(
    network: nn.Module,
    *,
    loss: str | nn.Module = "l1",
    l1_weight: float = 1.0,
    ssim_weight: float = 1.0,
    roi_size: Sequence[int] | int | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    mask_key: str | None = "mask",
    data_range: float = 1.0,
    ssim_kernel_size: int = 7,
    model_card: Mapping[str, Any] | None = None,
) -> Task:
    """Denoising as a :class:`pipeline.training.fit.Task`: patches in training, whole volumes in validation.

    The evaluator logs each validation's middle slices to TensorBoard; the default key metric is ``psnr_brain``.

    Args:
        network: the denoiser, saved as ``model.pt``.
        loss: ``"l1"``, ``"mse"``, ``"ssim"``, ``"l1_ssim"`` or a module ``loss(pred, target)``.
        l1_weight: L1 weight of ``"l1_ssim"``.
        ssim_weight: SSIM weight of ``"l1_ssim"``.
        roi_size: sliding-window size for validation (``None``: whole volumes at once).
        sw_batch_size: sliding-window batch.
        overlap: sliding-window overlap.
        mask_key: brain-mask key (``None``: whole-volume metrics only).
        data_range: intensity range.
        ssim_kernel_size: SSIM window for the metrics and the SSIM loss.
        model_card: what inference needs beyond the network (see :func:`train_denoiser`).

    Returns:
        The task, for :func:`pipeline.training.fit.fit`.

    Raises:
        ValueError: for an unknown loss.
    """
    loss_fn = (
        build_loss(
            loss, l1_weight=l1_weight, ssim_weight=ssim_weight, data_range=data_range, ssim_window=ssim_kernel_size
        )
        if isinstance(loss, str)
        else loss
    )

    def build_evaluator(context: FitContext) -> SupervisedEvaluator:
        return build_denoise_evaluator(
            network,
            context.val_loader,
            device=context.device,
            roi_size=roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            key_metric=context.settings.key_metric,
            mask_key=mask_key,
            data_range=data_range,
            ssim_kernel_size=ssim_kernel_size,
            precision=context.settings.precision,
            val_handlers=[TensorBoardSlices(context.summary_writer, data_range=data_range)],
            channels_last=context.settings.channels_last,
        )

    def build_trainer(context: FitContext) -> SupervisedTrainer:
        settings = context.settings
        return build_denoise_trainer(
            network,
            context.train_loader,
            context.optimizer,
            loss_fn,
            settings.max_epochs,
            device=context.device,
            precision=settings.precision,
            channels_last=settings.channels_last,
        )

    return Task(
        name="denoise",
        network=network,
        loss=loss_fn,
        build_trainer=build_trainer,
        build_evaluator=build_evaluator,
        key_metric="psnr_brain",
        val_batch_size=1,
        run_info={"task": "denoise", "network": type(network).__name__},
        model_card=_denoise_card(roi_size, model_card),
    )


def _denoise_card(roi_size: Sequence[int] | int | None, given: Mapping[str, Any] | None) -> dict[str, Any]:
    card = dict(given or {})
    config = dict(card.pop("config", {}) or {})
    if roi_size is not None:
        config.setdefault("patch_size", [roi_size] * 3 if isinstance(roi_size, int) else list(roi_size))
    return {"task": "denoise", "config": config, **card}


def evaluate_denoiser(
    network: nn.Module,
    data: Any,
    *,
    roi_size: Sequence[int] | int | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    transform: Callable | None = None,
    mask_key: str | None = "mask",
    data_range: float = 1.0,
    ssim_kernel_size: int = 7,
    device: str | torch.device | None = None,
    precision: str = "auto",
    channels_last: bool = False,
) -> dict[str, float]:
    """The denoising metrics of ``network`` on ``data`` (whole volumes), with the noisy input's as reference.

    Args:
        network: the denoiser.
        data: dicts (``image``, ``label``, ``mask``) or a dataset yielding them.
        roi_size: sliding-window size (``None``: whole volumes at once).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction in [0, 1).
        transform: transform for ``data`` given as dicts.
        mask_key: brain-mask key (``None``: whole-volume metrics only).
        data_range: intensity range.
        ssim_kernel_size: SSIM window.
        device: default CUDA when available, else CPU.
        precision: ``"auto"`` (bf16 where the hardware computes it natively, else fp32), ``"fp32"``, ``"bf16"`` or
            ``"fp16"`` (see :func:`build_denoise_evaluator`).
        channels_last: run in the ``channels_last_3d`` memory layout (the network is converted in place).

    Returns:
        ``{"psnr_brain": ..., "psnr_brain_noisy": ..., ...}`` (see :func:`build_denoise_evaluator`).
    """
    device = resolve_device(device)
    evaluator = build_denoise_evaluator(
        network.to(device),
        make_loader(data, transform, batch_size=1),
        device=device,
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        key_metric="psnr_brain" if mask_key else "psnr_volume",
        mask_key=mask_key,
        data_range=data_range,
        ssim_kernel_size=ssim_kernel_size,
        precision=precision,
        channels_last=channels_last,
    )
    evaluator.run()
    return {k: float(v) for k, v in evaluator.state.metrics.items()}
