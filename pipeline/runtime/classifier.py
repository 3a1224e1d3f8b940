"""The classifier network: a 3D ResNet initialised from scratch, a trained denoiser's encoder or pretrained weights.

Training builds it to fine-tune and inference rebuilds it from a model card (the card records
``pipeline.runtime.classifier.build_classifier``; cards written before it moved name
``pipeline.training.classify.build_classifier``, which still works).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from networks import ResUnet3D, encoder_to_classifier, get_network, load_pretrained
from pipeline.runtime.weights import load_network_state

__all__ = ["INITS", "build_classifier"]

#: How :func:`build_classifier` initialises the classifier.
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
        "_target_": "pipeline.runtime.classifier.build_classifier",
        "init": "scratch",
        "num_classes": num_classes,
        "model_depth": model_depth,
        **resnet_kwargs,
    }
    return net
