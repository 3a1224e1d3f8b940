"""Losses: denoising (L1, MSE, SSIM, L1 + SSIM), class-weighted cross-entropy and knowledge distillation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from torch import nn

__all__ = [
    "DENOISE_LOSSES",
    "ClassificationLoss",
    "DistillationLoss",
    "WeightedSumLoss",
    "build_loss",
    "class_weights",
]

DENOISE_LOSSES = ("l1", "mse", "ssim", "l1_ssim")


class WeightedSumLoss(nn.Module):
    """``Σ wᵢ · lossᵢ(pred, target)``: e.g. ``1.0·L1 + 0.5·(1 − SSIM)``.

    Args:
        losses: the terms, each called as ``loss(pred, target)`` and returning a scalar.
        weights: one non-negative weight per term, not all zero.

    Raises:
        ValueError: on a length mismatch, a negative weight or all-zero weights.
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(losses) != len(weights) or not losses:
            raise ValueError(
                f"losses and weights must be non-empty and of equal length, got {len(losses)} and {len(weights)}."
            )
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"weights must be >= 0 and not all zero, got {list(weights)}.")
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the terms; ``pred`` and ``target`` (B, C, H, W, D), computed in float32."""
        pred, target = pred.float(), target.float()
        return sum(w * loss(pred, target) for w, loss in zip(self.weights, self.losses) if w > 0)


def build_loss(
    name: str,
    l1_weight: float = 1.0,
    ssim_weight: float = 1.0,
    spatial_dims: int = 3,
    data_range: float = 1.0,
    ssim_window: int = 7,
) -> nn.Module:
    """The denoising loss by name: noisy-input prediction (B, C, H, W, D) against the clean target.

    Args:
        name: ``"l1"`` (mean absolute error), ``"mse"``, ``"ssim"`` (``1 − SSIM``, MONAI's ``SSIMLoss``) or
            ``"l1_ssim"`` (``l1_weight·L1 + ssim_weight·(1 − SSIM)``).
        l1_weight: weight of the L1 term of ``"l1_ssim"``.
        ssim_weight: weight of the SSIM term of ``"l1_ssim"``.
        spatial_dims: 2 or 3.
        data_range: intensity range of the images, for SSIM's constants (1.0 for [0, 1]).
        ssim_window: SSIM Gaussian window size (odd; patches must be at least this large).

    Returns:
        A module ``loss(pred, target) -> scalar``; every variant computes in float32, so it is safe under autocast.

    Raises:
        ValueError: for an unknown ``name`` (listing the allowed ones) or invalid weights.
    """
    key = str(name).lower().replace("+", "_")
    if key not in DENOISE_LOSSES:
        raise ValueError(f"loss must be one of {list(DENOISE_LOSSES)}, got {name!r}.")

    def ssim() -> nn.Module:
        return SSIMLoss(spatial_dims=spatial_dims, data_range=data_range, win_size=ssim_window)

    if key == "l1":
        return WeightedSumLoss([nn.L1Loss()], [1.0])
    if key == "mse":
        return WeightedSumLoss([nn.MSELoss()], [1.0])
    if key == "ssim":
        return WeightedSumLoss([ssim()], [1.0])
    return WeightedSumLoss([nn.L1Loss(), ssim()], [l1_weight, ssim_weight])


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``n / (K · n_k)`` (scikit-learn's ``"balanced"``) from training labels.

    Args:
        labels: the training set's class indices.
        num_classes: K.

    Returns:
        A float tensor (K,); a class absent from ``labels`` gets weight 0 (it cannot be learnt from this set).

    Raises:
        ValueError: if ``labels`` is empty or holds a value outside ``[0, num_classes)``.
    """
    values = torch.as_tensor([int(v) for v in labels], dtype=torch.long)
    if values.numel() == 0:
        raise ValueError("labels is empty: cannot derive class weights.")
    if values.min() < 0 or values.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values {sorted(set(values.tolist()))}.")
    counts = torch.bincount(values, minlength=num_classes).double()
    weights = torch.where(counts > 0, values.numel() / (num_classes * counts), torch.zeros_like(counts))
    return weights.float()


class ClassificationLoss(nn.Module):
    """Cross-entropy on logits (B, K) and class indices (B,) or (B, 1), optionally class-weighted.

    Args:
        weight: per-class weights (K,), e.g. from :func:`class_weights`; ``None`` for plain cross-entropy.
        label_smoothing: passed to ``torch.nn.functional.cross_entropy``.
    """

    def __init__(self, weight: torch.Tensor | Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean (weighted) cross-entropy."""
        return F.cross_entropy(
            logits.float(), target.reshape(-1).long(), weight=self.weight, label_smoothing=self.label_smoothing
        )


class DistillationLoss(nn.Module):
    """Hinton's knowledge-distillation loss.

    ``L = α · CE(student, y) + (1 − α) · T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, with the KL
    divergence summed over classes and averaged over the batch (``reduction="batchmean"``). The ``T²`` factor keeps
    the soft term's gradients on the scale of the hard term's as ``T`` grows.

    Args:
        alpha: weight of the hard-label cross-entropy, in [0, 1].
        temperature: T > 0, softening both distributions.
        class_weight: optional per-class weights (K,) for the cross-entropy term.

    Raises:
        ValueError: if ``alpha`` is outside [0, 1] or ``temperature`` is not positive.
    """

    def __init__(
        self, alpha: float = 0.5, temperature: float = 4.0, class_weight: torch.Tensor | Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.ce = ClassificationLoss(class_weight)

    def forward(
        self,
        student_logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        teacher_logits: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss for student and teacher logits (B, K) and class indices (B,).

        Also callable as ``loss((student_logits, teacher_logits), target)``, the form a ``SupervisedTrainer`` uses
        with :class:`pipeline.training.distill.TeacherStudent`.
        """
        if target is None:
            if not isinstance(student_logits, (tuple, list)):
                raise ValueError("call as loss(student, teacher, target) or loss((student, teacher), target).")
            target = teacher_logits
            student_logits, teacher_logits = student_logits
        student, teacher = student_logits.float(), teacher_logits.detach().float()
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
        )
        return self.alpha * self.ce(student, target) + (1.0 - self.alpha) * t * t * soft
