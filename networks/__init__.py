"""Networks: the residual 3D U-Net (ResUnet3D), pretrained-weight import and a registry beside MONAI's nets."""

from __future__ import annotations

from networks.presets import PRESETS, preset
from networks.pretrained import (
    FREEZE_ORDER,
    PretrainedWeightsError,
    describe_state_dict,
    freeze_until,
    load_pretrained,
    read_state_dict,
)
from networks.registry import NETWORKS, get_network, list_networks
from networks.resunet import RESNET_LAYOUTS, ResUnet3D, build_resnet, make_norm
from networks.transfer import encoder_to_classifier, load_encoder_from_classifier

__all__ = [
    "FREEZE_ORDER",
    "NETWORKS",
    "PRESETS",
    "RESNET_LAYOUTS",
    "PretrainedWeightsError",
    "ResUnet3D",
    "build_resnet",
    "describe_state_dict",
    "encoder_to_classifier",
    "freeze_until",
    "get_network",
    "list_networks",
    "load_encoder_from_classifier",
    "load_pretrained",
    "make_norm",
    "preset",
    "read_state_dict",
]
