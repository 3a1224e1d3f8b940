"""Image-quality and classification metrics, as MONAI cumulative metrics and ignite metrics for the engines.

Denoising metrics compare a prediction with the clean target, both of layout (B, C, H, W, D) with intensities in
the data range ``[0, data_range]`` (``[0, 1]`` after ``ScalePercentile``; the default ``data_range=1.0``):

- ``psnr_volume`` / ``ssim_volume``: over the whole volume (background included, so they are inflated by the easy
  zero background);
- ``psnr_brain`` / ``ssim_brain``: inside the brain mask only (key ``mask``, (B, 1, H, W, D), non-zero = brain),
  the figure that matters for a brain scan;
- ``*_noisy``: the same four for the noisy input against the clean target, the reference a denoiser must beat.

MONAI's ``PSNRMetric`` and ``SSIMMetric`` have no mask; :class:`MaskedPSNRMetric` and :class:`MaskedSSIMMetric`
add one, and reduce to MONAI's whole-volume values when no mask is given (tested). They are the project's only
image-quality implementation: :func:`masked_psnr`, :func:`masked_ssim` and :func:`volume_quality` are their forms for
one volume ``(H, W, D)``, which the demo, the classical denoisers' tuning and the benchmarks call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Accuracy, ConfusionMatrix, Metric, MetricsLambda
from monai.handlers import ROCAUC
from monai.metrics import CumulativeIterationMetric
from monai.metrics.regression import KernelType, compute_ssim_and_cs
from monai.utils import convert_to_tensor

__all__ = [
    "QUALITY_KEYS",
    "CumulativeMetricAdapter",
    "MaskedPSNRMetric",
    "MaskedSSIMMetric",
    "as_volume",
    "balanced_accuracy",
    "classification_metrics",
    "denoise_metrics",
    "logits_and_labels",
    "masked_psnr",
    "masked_ssim",
    "volume_quality",
]


def _plain(x: Any) -> torch.Tensor:
    return convert_to_tensor(x, track_meta=False).float()


def _check_pair(y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> None:
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    if y_pred.ndim < 3:
        raise ValueError(f"expected (B, C, spatial...) tensors, got shape {tuple(y_pred.shape)}.")
    if mask is not None and (mask.shape[0] != y.shape[0] or mask.shape[2:] != y.shape[2:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the images' {tuple(y.shape)}.")


class MaskedPSNRMetric(CumulativeIterationMetric):
    """Peak signal-to-noise ratio, over the whole volume or inside a mask: ``10·log10(data_range² / MSE)``.

    Args:
        data_range: the intensity range of the images (``1.0`` for images scaled to [0, 1]).
        reduction: passed to ``aggregate``: ``"mean"`` over the items seen so far, or ``"none"`` for per-item values.

    Raises:
        ValueError: if ``data_range`` is not positive or ``reduction`` is unknown.

    Example:
        >>> metric = MaskedPSNRMetric(data_range=1.0)
        >>> metric(y_pred=pred, y=clean, mask=brain)  # doctest: +SKIP
        >>> float(metric.aggregate())  # doctest: +SKIP
    """

    def __init__(self, data_range: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if data_range <= 0:
            raise ValueError(f"data_range must be > 0, got {data_range}.")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        self.data_range = float(data_range)
        self.reduction = reduction

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-item PSNR in dB, shape (B, 1); ``inf`` for an exact match.

        Raises:
            ValueError: on mismatched shapes or an item whose mask is empty.
        """
        y_pred, y = _plain(y_pred), _plain(y)
        weight = torch.ones_like(y) if mask is None else (_plain(mask) > 0).float().expand_as(y)
        _check_pair(y_pred, y, None if mask is None else weight)
        dims = tuple(range(1, y.ndim))
        count = weight.sum(dim=dims)
        if torch.any(count == 0):
            raise ValueError("the mask of at least one item is empty: PSNR inside the mask is undefined.")
        mse = ((y_pred - y) ** 2 * weight).sum(dim=dims) / count
        psnr = 20 * math.log10(self.data_range) - 10 * torch.log10(mse)
        return psnr.unsqueeze(1)

    def aggregate(self) -> torch.Tensor:
        """Mean PSNR over the items seen since the last ``reset`` (or all of them with ``reduction="none"``)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("no data: call the metric on a batch before aggregate().")
        return data.mean() if self.reduction == "mean" else data


class MaskedSSIMMetric(CumulativeIterationMetric):
    """Structural similarity, averaged over the whole volume or over the mask's voxels.

    The local SSIM map is MONAI's (``compute_ssim_and_cs``: Gaussian window, ``k1=0.01``, ``k2=0.03``, computed
    where the window fits inside the volume); the masked value averages that map over the voxels whose window centre
    lies in the mask. Without a mask the value equals ``monai.metrics.SSIMMetric``.

    Args:
        spatial_dims: 2 or 3.
        data_range: the intensity range of the images.
        kernel_size: the window size (odd; 11 is Wang et al.'s; 7 suits volumes of 32³ or less).
        kernel_sigma: standard deviation of the Gaussian window.
        reduction: ``"mean"`` or ``"none"`` (per item).

    Raises:
        ValueError: on a non-positive ``data_range``, an even or < 3 ``kernel_size``, unknown ``spatial_dims`` or
            ``reduction``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        data_range: float = 1.0,
        kernel_size: int = 7,
        kernel_sigma: float = 1.5,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if data_range <= 0:
            raise ValueError(f"data_range must be > 0, got {data_range}.")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size}.")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        self.spatial_dims = spatial_dims
        self.data_range = float(data_range)
        self.kernel_size = kernel_size
        self.kernel_sigma = kernel_sigma
        self.reduction = reduction

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-item SSIM, shape (B, 1).

        Raises:
            ValueError: on mismatched shapes, a volume smaller than the window, or an item whose mask has no voxel
                where the window fits.
        """
        y_pred, y = _plain(y_pred), _plain(y)
        _check_pair(y_pred, y, None if mask is None else _plain(mask))
        if min(y.shape[2:]) < self.kernel_size:
            raise ValueError(f"SSIM window {self.kernel_size} is larger than the volume {tuple(y.shape[2:])}.")
        ssim_map, _ = compute_ssim_and_cs(
            y_pred,
            y,
            spatial_dims=self.spatial_dims,
            kernel_size=[self.kernel_size] * self.spatial_dims,
            kernel_sigma=[self.kernel_sigma] * self.spatial_dims,
            data_range=self.data_range,
            kernel_type=KernelType.GAUSSIAN,
        )
        dims = tuple(range(1, ssim_map.ndim))
        if mask is None:
            return ssim_map.mean(dim=dims).unsqueeze(1)
        half = (self.kernel_size - 1) // 2
        crop = (slice(None), slice(None)) + tuple(slice(half, s - half) for s in y.shape[2:])
        weight = (_plain(mask) > 0).float()[crop].expand_as(ssim_map)
        count = weight.sum(dim=dims)
        if torch.any(count == 0):
            raise ValueError("the mask of at least one item has no voxel where the SSIM window fits.")
        return ((ssim_map * weight).sum(dim=dims) / count).unsqueeze(1)

    def aggregate(self) -> torch.Tensor:
        """Mean SSIM over the items seen since the last ``reset`` (or all of them with ``reduction="none"``)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("no data: call the metric on a batch before aggregate().")
        return data.mean() if self.reduction == "mean" else data


#: The four image-quality figures of :func:`volume_quality`, in table order.
QUALITY_KEYS: tuple[str, ...] = ("psnr_brain", "ssim_brain", "psnr_volume", "ssim_volume")


def as_volume(volume: Any, name: str = "volume") -> np.ndarray:
    """One volume as a float32 numpy array ``(H, W, D)``.

    Args:
        volume: ``(H, W, D)`` or ``(1, H, W, D)`` (any size-1 axes are dropped), numpy or torch.
        name: what the error calls it.

    Returns:
        The float32 array (a copy only when a conversion is needed).

    Raises:
        ValueError: if it is not 3-D once size-1 axes are dropped.
    """
    array = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume, dtype=np.float32)
    array = np.squeeze(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume (H, W, D) (or (1, H, W, D)), got shape {array.shape}")
    return array


def _volume_batch(volume: Any, name: str) -> torch.Tensor:
    """One volume as a float32 batch ``(1, 1, H, W, D)``."""
    return torch.from_numpy(as_volume(volume, name))[None, None]


def _volume_pair(pred: Any, ref: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    batches = [_volume_batch(pred, "pred"), _volume_batch(ref, "ref")]
    if mask is not None:
        batches.append(_volume_batch(mask, "mask"))
    if len({tuple(b.shape) for b in batches}) != 1:
        raise ValueError(f"pred, ref and mask must have one shape, got {[tuple(b.shape[2:]) for b in batches]}")
    if mask is not None and not bool((batches[2] > 0).any()):
        raise ValueError("mask is empty: the scores inside the mask are undefined")
    return batches[0], batches[1], batches[2] if mask is not None else None


def masked_psnr(pred: Any, ref: Any, mask: Any = None, data_range: float = 1.0) -> float:
    """PSNR in dB of one volume against its reference, inside ``mask`` or over the whole volume.

    The functional form of :class:`MaskedPSNRMetric` for single volumes (the classical tuning, the demo, the
    benchmarks): ``10 log10(data_range^2 / MSE)`` with the MSE over the mask's non-zero voxels.

    Args:
        pred: the volume to score, ``(H, W, D)`` or ``(1, H, W, D)``, numpy or torch, on the scale of ``ref``.
        ref: the clean reference, same shape.
        mask: optional mask (non-zero = inside), same shape.
        data_range: the intensity range of the scale (1.0 on the robust-maximum scale).

    Returns:
        The PSNR (``inf`` for an exact match).

    Raises:
        ValueError: for shapes that differ or are not 3-D, or an empty mask.
    """
    pred_t, ref_t, mask_t = _volume_pair(pred, ref, mask)
    return float(MaskedPSNRMetric(data_range=data_range)(pred_t, ref_t, mask=mask_t).item())


def masked_ssim(pred: Any, ref: Any, mask: Any = None, data_range: float = 1.0, kernel_size: int = 7) -> float:
    """SSIM of one volume against its reference, averaged inside ``mask`` or over the whole volume.

    The functional form of :class:`MaskedSSIMMetric` (Gaussian window ``kernel_size``^3, sigma 1.5).

    Args:
        pred: the volume to score, ``(H, W, D)`` or ``(1, H, W, D)``, numpy or torch, on the scale of ``ref``.
        ref: the clean reference, same shape.
        mask: optional mask (non-zero = inside), same shape.
        data_range: the intensity range of the scale.
        kernel_size: the window (odd, at most the smallest side).

    Returns:
        The SSIM.

    Raises:
        ValueError: for shapes that differ or are not 3-D, an empty mask, or a window larger than the volume.
    """
    pred_t, ref_t, mask_t = _volume_pair(pred, ref, mask)
    metric = MaskedSSIMMetric(spatial_dims=3, data_range=data_range, kernel_size=kernel_size)
    return float(metric(pred_t, ref_t, mask=mask_t).item())


def volume_quality(
    pred: Any, clean: Any, mask: Any, data_range: float = 1.0, ssim_kernel_size: int = 7
) -> dict[str, float]:
    """PSNR and SSIM of one volume against its clean reference, inside the brain mask and over the whole volume.

    The same quantities as the engines' :func:`denoise_metrics`, so a report's figures and the training's
    TensorBoard figures agree.

    Args:
        pred: the volume to score, ``(H, W, D)`` or ``(1, H, W, D)``, on the same intensity scale as ``clean``.
        clean: the clean reference, same shape.
        mask: the brain mask (non-zero = brain), same shape.
        data_range: the intensity range of the scale (1.0 when the clean brain's robust maximum is 1).
        ssim_kernel_size: SSIM window (odd, at most the smallest side).

    Returns:
        ``{"psnr_brain", "ssim_brain", "psnr_volume", "ssim_volume"}`` (dB for PSNR), in :data:`QUALITY_KEYS` order.

    Raises:
        ValueError: for shapes that differ or are not 3-D, or an empty mask.
    """
    if mask is None:
        raise ValueError("mask is required: volume_quality scores inside the brain mask and over the whole volume")
    kernel = {"kernel_size": ssim_kernel_size}
    return {
        "psnr_brain": masked_psnr(pred, clean, mask, data_range),
        "ssim_brain": masked_ssim(pred, clean, mask, data_range, **kernel),
        "psnr_volume": masked_psnr(pred, clean, None, data_range),
        "ssim_volume": masked_ssim(pred, clean, None, data_range, **kernel),
    }


def _stack(value: Any) -> torch.Tensor:
    if isinstance(value, (list, tuple)):
        return torch.stack([_plain(v) for v in value])
    return _plain(value)


class CumulativeMetricAdapter(Metric):
    """An ignite metric over a MONAI cumulative metric, passing an optional third output item as ``mask``.

    MONAI's ``IgniteMetricHandler`` passes only ``(y_pred, y)``; this adapter lets the masked metrics run inside
    MONAI's evaluators. ``output_transform`` maps the engine output (decollated list of dicts, or a batched dict)
    to ``(y_pred, y)`` or ``(y_pred, y, mask)``; lists of per-item (C, H, W, D) tensors are stacked to a batch.

    Args:
        metric: the MONAI metric (reset at each epoch start, aggregated at each epoch end).
        output_transform: engine output -> ``(y_pred, y[, mask])``.
        device: where ignite keeps the metric's state.
    """

    def __init__(
        self, metric: CumulativeIterationMetric, output_transform: Callable = lambda x: x, device: str = "cpu"
    ) -> None:
        self.metric = metric
        super().__init__(output_transform=output_transform, device=device)

    @torch.no_grad()
    def iteration_completed(self, engine: Any) -> None:
        """Update from the engine output (ignite's default rejects outputs of three per-item lists)."""
        self.update(self._output_transform(engine.state.output))

    def reset(self) -> None:
        """Forget the items of the previous epoch."""
        self.metric.reset()

    def update(self, output: Sequence[Any]) -> None:
        """Add one batch: ``output`` is ``(y_pred, y)`` or ``(y_pred, y, mask)``."""
        y_pred, y, *rest = output
        kwargs = {"mask": _stack(rest[0])} if rest and rest[0] is not None else {}
        self.metric(y_pred=_stack(y_pred), y=_stack(y), **kwargs)

    def compute(self) -> float:
        """The aggregated value as a Python float."""
        return float(self.metric.aggregate().item())


def _select(pred_key: str, label_key: str, mask_key: str | None) -> Callable:
    def transform(output: Any) -> tuple:
        items = output if isinstance(output, (list, tuple)) else [output]
        if isinstance(output, dict):
            return (output[pred_key], output[label_key]) + ((output[mask_key],) if mask_key else ())
        preds = [item[pred_key] for item in items]
        labels = [item[label_key] for item in items]
        if not mask_key:
            return preds, labels
        return preds, labels, [item[mask_key] for item in items]

    return transform


def denoise_metrics(
    mask_key: str | None = "mask",
    data_range: float = 1.0,
    ssim_kernel_size: int = 7,
    spatial_dims: int = 3,
    include_noisy: bool = True,
    pred_key: str = "pred",
    label_key: str = "label",
    image_key: str = "image",
) -> dict[str, Metric]:
    """The denoising metrics, by name, ready for ``SupervisedEvaluator(key_val_metric=..., additional_metrics=...)``.

    Args:
        mask_key: output key of the brain mask (the evaluator copies it from the batch,
            see :class:`pipeline.training.handlers.CopyBatchKeys`); ``None`` gives only the whole-volume metrics.
        data_range: the images' intensity range (1.0 for [0, 1]).
        ssim_kernel_size: SSIM window size.
        spatial_dims: 2 or 3.
        include_noisy: also measure the noisy input (``image``) against the target (names end in ``_noisy``).
        pred_key: output key of the prediction.
        label_key: output key of the clean target.
        image_key: output key of the noisy input.

    Returns:
        ``{"psnr_brain", "ssim_brain", "psnr_volume", "ssim_volume"}`` (brain entries only with a mask), plus the
        same names with ``_noisy`` appended when ``include_noisy``.
    """
    sources = [("", pred_key)] + ([("_noisy", image_key)] if include_noisy else [])
    metrics: dict[str, Metric] = {}
    for suffix, source in sources:
        regions = [("brain", mask_key)] if mask_key else []
        regions.append(("volume", None))
        for region, key in regions:
            metrics[f"psnr_{region}{suffix}"] = CumulativeMetricAdapter(
                MaskedPSNRMetric(data_range=data_range), _select(source, label_key, key)
            )
            metrics[f"ssim_{region}{suffix}"] = CumulativeMetricAdapter(
                MaskedSSIMMetric(spatial_dims=spatial_dims, data_range=data_range, kernel_size=ssim_kernel_size),
                _select(source, label_key, key),
            )
    return metrics


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """Mean per-class recall over the classes present in the labels (scikit-learn's ``balanced_accuracy_score``).

    Args:
        confusion: (K, K) counts, rows = true class, columns = predicted class.

    Returns:
        The balanced accuracy in [0, 1].

    Raises:
        ValueError: if the matrix is not square or holds no sample.
    """
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {tuple(confusion.shape)}.")
    support = confusion.sum(dim=1)
    if support.sum() == 0:
        raise ValueError("confusion matrix holds no sample.")
    present = support > 0
    return float((confusion.diag()[present] / support[present]).mean())


def logits_and_labels(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K) and class indices (B,) from a classifier engine's output (batched dict or list of dicts)."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        pred = torch.stack([_plain(o["pred"]) for o in output])
        label = torch.stack([torch.as_tensor(o["label"]).reshape(-1)[0] for o in output])
    else:
        pred, label = _plain(output["pred"]), torch.as_tensor(output["label"])
    return pred, label.reshape(-1).long()


def classification_metrics(num_classes: int) -> dict[str, Metric]:
    """Accuracy, balanced accuracy, ROC AUC and the confusion matrix for a classifier that outputs logits (B, K).

    ``auc`` is MONAI's ``ROCAUC`` on the softmax probabilities (macro average over classes, one-vs-rest); the
    ``confusion_matrix`` (K, K) has true classes in rows.

    Args:
        num_classes: K >= 2.

    Returns:
        ``{"accuracy", "balanced_accuracy", "auc", "confusion_matrix"}`` ignite metrics reading the engine output's
        ``pred`` (logits) and ``label`` (class index).

    Raises:
        ValueError: if ``num_classes < 2``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")

    def probs_onehot(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pred, label = logits_and_labels(output)
        return torch.softmax(pred, dim=1), torch.nn.functional.one_hot(label, num_classes).float()

    confusion = ConfusionMatrix(num_classes=num_classes, output_transform=logits_and_labels)
    return {
        "accuracy": Accuracy(output_transform=logits_and_labels),
        "balanced_accuracy": MetricsLambda(balanced_accuracy, confusion),
        "auc": ROCAUC(output_transform=probs_onehot),
        "confusion_matrix": confusion,
    }
