"""Stein's unbiased risk estimate (SURE): a denoiser's squared error against a clean scan that nobody has.

For Gaussian noise of standard deviation ``sigma`` (``y = x + n``) and any weakly differentiable denoiser ``f``,

    E |f(y) - x|^2 = E [ |f(y) - y|^2 - sigma^2 + 2 sigma^2 df_i/dy_i ]      (voxel by voxel, Stein 1981),

so the mean of the right-hand side over many voxels estimates the denoiser's mean squared error from the noisy scan
alone. The derivative is estimated by Monte Carlo (Ramani, Blu & Unser, IEEE TIP 2008): for one probe
``b ~ N(0, I)`` and a small ``eps``, ``b_i (f(y + eps b)_i - f(y)_i) / eps`` has expectation ``df_i/dy_i``.

It serves twice in :mod:`pipeline.training.adapt`:

* as the guard's check (:func:`heldout_sure`): it scores the network as inference runs it, on the full noisy input,
  where the blind-spot loss scores a masked input that inference never sees (and ranked adapted networks wrongly:
  it accepted adaptations that lost up to 3.75 dB on real heads);
* as a training loss (:class:`SureBatch` + :class:`SureLoss`, Soltanayev & Chun, NeurIPS 2018): the network runs on
  ``y`` and ``y + eps b`` in one batch of twice the size, and the loss is the SURE of its output.

For Rician magnitude noise the formula holds where the signal is well above the noise (in the head); in air it is
only approximate. ``sigma`` is in the images' units; :mod:`transforms.noise_level` estimates it blind, and a wrong
``sigma`` biases SURE: too large favours smoothing more, too small favours smoothing less. On the demo cohort's
held-out volumes the blind estimate was 1.31x the true sigma at 5/255 Gaussian (fine anatomy passes for noise) and
0.83x at 25/255 Rician, so :func:`heldout_sure` can also score ``sigma`` scaled by each factor of ``sigma_scales``
(SURE is linear in ``sigma^2``, so the network runs once), and the guard accepts only a gain that holds across them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from torch import nn

__all__ = ["SureBatch", "SureLoss", "heldout_sure", "sure_map"]

#: ``eps = EPSILON_RATIO * sigma``: small enough for a linear response, large enough for float32 differences.
EPSILON_RATIO = 0.01


def _plain(value: Any) -> torch.Tensor:
    tensor = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
    return tensor.float()


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` sigmas shaped to broadcast over ``(B, C, ...)``, checked positive."""
    sigma = sigma.reshape(-1).to(like)
    if sigma.numel() != like.shape[0] or not bool((sigma > 0).all()):
        raise ValueError(f"SURE needs one positive sigma per sample ({like.shape[0]}), got {sigma.tolist()}.")
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def sure_map(
    pred: torch.Tensor, perturbed: torch.Tensor, image: torch.Tensor, probe: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Per-voxel SURE terms; their mean over many voxels estimates the mean squared error of ``pred``.

    Args:
        pred: ``f(y)``, ``(B, C, ...)``.
        perturbed: ``f(y + eps b)`` with ``eps = EPSILON_RATIO * sigma``.
        image: the noisy input ``y``.
        probe: the probe ``b``.
        sigma: noise standard deviation, ``(B,)`` (or broadcastable ``(B, 1, ...)``).

    Returns:
        ``(f(y) - y)^2 - sigma^2 + 2 sigma^2 b (f(y + eps b) - f(y)) / eps``, shaped like ``image``.
    """
    sigma = _per_sample(sigma, image) if sigma.ndim <= 1 else sigma
    eps = EPSILON_RATIO * sigma
    divergence = probe * (perturbed - pred) / eps
    return (pred - image) ** 2 - sigma**2 + 2 * sigma**2 * divergence


class SureBatch:
    """``prepare_batch`` for SURE training: input ``[y; y + eps b]`` (twice the batch), target ``[y, b, keep, sigma]``.

    Args:
        seed: seeds the probes.
        image_key: batch key of the noisy patches ``(B, C, X, Y, Z)``.
        holdout_key: batch key of the held-out voxel mask (left out of the loss); may be absent.
        sigma_key: batch key of the per-sample noise levels ``(B,)`` in the patches' units.
    """

    def __init__(
        self, seed: int = 0, image_key: str = "image", holdout_key: str = "holdout", sigma_key: str = "sigma"
    ) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))
        self.image_key, self.holdout_key, self.sigma_key = image_key, holdout_key, sigma_key

    def __call__(self, batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **_: Any) -> tuple:
        """Return ``(inputs (2B, C, ...), targets (B, 4C, ...))`` on ``device``."""
        image = _plain(batchdata[self.image_key])
        sigma = _per_sample(_plain(batchdata[self.sigma_key]), image)
        probe = torch.randn(image.shape, generator=self.generator)
        keep = torch.ones_like(image)
        if self.holdout_key in batchdata:
            keep = (_plain(batchdata[self.holdout_key]).expand_as(image) <= 0).to(image.dtype)
        inputs = torch.cat([image, image + EPSILON_RATIO * sigma * probe], dim=0)
        targets = torch.cat([image, probe, keep, sigma.expand_as(image)], dim=1)
        return inputs.to(device, non_blocking=non_blocking), targets.to(device, non_blocking=non_blocking)


class SureLoss(nn.Module):
    """Mean SURE over the kept voxels, from the doubled batch :class:`SureBatch` builds.

    Its expectation is the mean squared error against the clean patch, so it can be negative for a single batch.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss (0 when no voxel is kept)."""
        batch, channels = target.shape[0], pred.shape[1]
        if pred.shape[0] != 2 * batch or target.shape[1] != 4 * channels:
            raise ValueError(
                f"SureLoss needs predictions of {2 * batch} samples and targets of {4 * channels} channels "
                f"(SureBatch), got {tuple(pred.shape)} and {tuple(target.shape)}."
            )
        image, probe, keep, sigma = target.split(channels, dim=1)
        terms = sure_map(pred[:batch].float(), pred[batch:].float(), image, probe, sigma)
        return (terms * keep).sum() / keep.sum().clamp(min=1.0)


def heldout_sure(
    network: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    device: str | torch.device = "cpu",
    seed: int = 0,
    image_key: str = "image",
    holdout_key: str = "holdout",
    sigma_key: str = "sigma",
    sigma_scales: Sequence[float] = (),
) -> float | tuple[float, ...]:
    """The network's mean squared error on the held-out voxels as SURE estimates it, with inference's full input.

    The probes come from ``seed`` afresh at every call, so two networks are compared on the same probes.

    Args:
        network: the denoiser (put in eval mode for the check, then back to its previous mode).
        batches: fixed batches holding ``image`` and ``holdout`` ``(B, 1, X, Y, Z)`` and ``sigma`` ``(B,)``.
        device: where the network runs.
        seed: seeds the probes.
        image_key: batch key of the noisy patches.
        holdout_key: batch key of the held-out masks.
        sigma_key: batch key of the noise levels, in the patches' units.
        sigma_scales: also estimate with every ``sigma`` multiplied by each of these factors.

    Returns:
        The estimate (``nan`` with no held-out voxel, ``inf`` when the output is not finite); with ``sigma_scales``,
        a tuple: the estimate, then one per factor.
    """
    generator = torch.Generator().manual_seed(int(seed))
    was_training = network.training
    network.eval()
    residual, stein, count = 0.0, 0.0, 0.0  # SURE(k sigma) = (residual + k^2 stein) / count
    try:
        with torch.no_grad():
            for batch in batches:
                image = _plain(batch[image_key])
                sigma = _per_sample(_plain(batch[sigma_key]), image)
                probe = torch.randn(image.shape, generator=generator)
                mask = (_plain(batch[holdout_key]) > 0).to(image.dtype).expand_as(image)
                pred = network(image.to(device)).float().cpu()
                perturbed = network((image + EPSILON_RATIO * sigma * probe).to(device)).float().cpu()
                terms = sure_map(pred, perturbed, image, probe, sigma)
                squared = (pred - image) ** 2
                residual += float((squared * mask).sum())
                stein += float(((terms - squared) * mask).sum())
                count += float(mask.sum())
    finally:
        network.train(was_training)
    values = []
    for scale in (1.0, *sigma_scales):
        value = (residual + scale**2 * stein) / count if count else math.nan
        values.append(value if math.isfinite(value) or not count else math.inf)
    return tuple(values) if sigma_scales else values[0]
