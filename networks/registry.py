"""Select a network by name: ResUnet3D beside the MONAI networks that make sense as denoisers and classifiers.

``get_network("unet")`` builds MONAI's UNet with denoiser defaults (3-D, one input and one output channel);
keyword arguments override any default, so a config switches network with one line::

    network = get_network("flexibleunet", in_channels=2)
    classifier = get_network("resnet", model_depth=34, num_classes=3)

Bundle configs may also name the class directly: ``_target_: networks.ResUnet3D``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monai.networks import nets
from torch import nn

from networks.resunet import ResUnet3D, build_resnet

__all__ = ["NETWORKS", "NetworkSpec", "get_network", "list_networks"]

TASKS = ("denoise", "classify")


@dataclass(frozen=True)
class NetworkSpec:
    """One selectable network.

    Args:
        name: registry name (lower case).
        task: ``"denoise"`` (image -> image of the same size) or ``"classify"`` (image -> class logits).
        factory: the class or function called with the merged keyword arguments.
        defaults: keyword arguments used unless the caller gives them.
        description: one line for listings.
    """

    name: str
    task: str
    factory: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_IO = {"in_channels": 1, "out_channels": 1}
NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec("resunet3d", "denoise", ResUnet3D, {"spatial_dims": 3, **_IO}, "this project's residual U-Net"),
        NetworkSpec(
            "unet",
            "denoise",
            nets.UNet,
            {"spatial_dims": 3, **_IO, "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2},
            "MONAI UNet with residual units (Kerfoot et al.)",
        ),
        NetworkSpec("basicunet", "denoise", nets.BasicUNet, {"spatial_dims": 3, **_IO}, "MONAI BasicUNet"),
        NetworkSpec(
            "flexibleunet",
            "denoise",
            nets.FlexibleUNet,
            {"spatial_dims": 3, **_IO, "backbone": "resnet18", "pretrained": False},
            "MONAI FlexibleUNet on a ResNet backbone (resnet10-200)",
        ),
        NetworkSpec(
            "attentionunet",
            "denoise",
            nets.AttentionUnet,
            {"spatial_dims": 3, **_IO, "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)},
            "MONAI AttentionUnet (Oktay et al.)",
        ),
        NetworkSpec(
            "segresnet", "denoise", nets.SegResNet, {"spatial_dims": 3, **_IO, "init_filters": 16}, "MONAI SegResNet"
        ),
        NetworkSpec(
            "swinunetr",
            "denoise",
            nets.SwinUNETR,
            {"spatial_dims": 3, **_IO, "feature_size": 24},
            "MONAI SwinUNETR (inputs divisible by 32)",
        ),
        NetworkSpec(
            "resnet",
            "classify",
            build_resnet,
            {"model_depth": 18, "spatial_dims": 3, "in_channels": 1, "num_classes": 2},
            "MONAI ResNet built like ResUnet3D's encoder (networks.build_resnet)",
        ),
        NetworkSpec(
            "densenet121",
            "classify",
            nets.DenseNet121,
            {"spatial_dims": 3, "in_channels": 1, "out_channels": 2},
            "MONAI DenseNet121",
        ),
    )
}


def list_networks(task: str | None = None) -> list[str]:
    """Names of the registered networks, optionally only those for one task.

    Args:
        task: ``None`` (all), ``"denoise"`` or ``"classify"``.

    Returns:
        Sorted names.

    Raises:
        ValueError: for an unknown task.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be None or one of {TASKS}, got {task!r}")
    return sorted(name for name, spec in NETWORKS.items() if task is None or spec.task == task)


def get_network(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network; ``kwargs`` override its defaults.

    Args:
        name: one of :func:`list_networks` (case-insensitive).
        **kwargs: constructor arguments of the network (e.g. ``in_channels``, ``model_depth``, ``num_classes``).

    Returns:
        The network (randomly initialised; nothing is downloaded).

    Raises:
        ValueError: for an unknown name, listing the allowed ones.
    """
    spec = NETWORKS.get(str(name).lower())
    if spec is None:
        raise ValueError(
            f"unknown network {name!r}; allowed: denoisers {list_networks('denoise')},"
            f" classifiers {list_networks('classify')}"
        )
    return spec.factory(**{**spec.defaults, **kwargs})
