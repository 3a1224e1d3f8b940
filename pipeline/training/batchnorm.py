"""Batch-norm statistics re-estimated on new data, before fine-tuning a network trained on other data.

An encoder pretrained by denoising carries running means and variances of noisy patches; a classifier sees whole
clean volumes. Re-estimating the statistics on the target data (forward passes in training mode, no gradient, a
cumulative average) removes that mismatch without touching a single weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["reestimate_batchnorm"]


def reestimate_batchnorm(network: nn.Module, batches: Iterable[Any], device: str | torch.device = "cpu") -> int:
    """Replace every batch-norm layer's running statistics by those of ``batches`` (weights unchanged).

    Args:
        network: the network (its mode is restored afterwards).
        batches: tensors ``(B, C, ...)`` or dicts holding one under ``"image"``.
        device: where the forward passes run.

    Returns:
        The number of batch-norm layers re-estimated (0: nothing to do, nothing run).

    Raises:
        ValueError: if ``batches`` is empty while the network has batch-norm layers.
    """
    layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    was_training = network.training
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches
    network.train()
    seen = 0
    with torch.no_grad():
        for batch in batches:
            x = batch["image"] if isinstance(batch, Mapping) else batch
            network(torch.as_tensor(x).to(device).float())
            seen += 1
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    network.train(was_training)
    if seen == 0:
        raise ValueError("no batch to re-estimate the batch-norm statistics from")
    return len(layers)
