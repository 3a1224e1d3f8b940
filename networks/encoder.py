"""The encoder: a MONAI ``ResNet`` whose norm and activation reach every block, and the norm factory it shares.

MONAI 1.6.1's ``ResNet`` hands ``norm`` and ``act`` to its stem only; :func:`build_resnet` sets them in every block
and shortcut too, without adding or renaming a state-dict entry, so ResUnet3D's encoder (``ResUnet3D.encoder``),
its classifier and the 3D-ResNets-PyTorch / MedicalNet weights share one layout (:data:`RESNET_LAYOUTS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_act_layer, get_norm_layer, get_pool_layer
from monai.networks.nets import ResNet
from monai.utils import ensure_tuple_rep
from torch import nn

from networks.norms import InstanceNorm2d, InstanceNorm3d

__all__ = [
    "DEFAULT_BLOCK_INPLANES",
    "NORMS",
    "RESNET_LAYOUTS",
    "STAGES",
    "ZeroPadShortcut",
    "build_resnet",
    "canonical_norm",
    "make_norm",
    "set_block_norm",
]

#: ``model_depth`` -> (block type, blocks per stage), as in 3D-ResNets-PyTorch, MedicalNet and MONAI.
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
#: Channels of the four stages before ``widen_factor`` (and before the bottleneck expansion of 4).
DEFAULT_BLOCK_INPLANES: tuple[int, int, int, int] = (64, 128, 256, 512)

NORMS = ("batch", "instance", "group", "none")
STAGES = ("layer1", "layer2", "layer3", "layer4")
_INSTANCE_NORMS: dict[int, type[nn.Module]] = {2: InstanceNorm2d, 3: InstanceNorm3d}


def canonical_norm(norm: str | tuple | None) -> tuple[str, dict]:
    """Return ``(name, kwargs)`` for a norm given as a name, a ``(name, kwargs)`` pair or ``None``."""
    if norm is None:
        return "none", {}
    name, kwargs = (norm, {}) if isinstance(norm, str) else (norm[0], dict(norm[1]) if len(norm) > 1 else {})
    name = str(name).lower()
    if name not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} or a (name, kwargs) pair of those, got {norm!r}")
    return name, kwargs


def make_norm(norm: str | tuple | None, spatial_dims: int, channels: int) -> nn.Module:
    """Build one normalisation layer the way every ResUnet3D/encoder layer gets it.

    Args:
        norm: ``"batch"``, ``"instance"``, ``"group"``, ``"none"`` (or ``None``), or a ``(name, kwargs)`` pair.
            ``"instance"`` is affine unless the kwargs say otherwise (MONAI's default is not, and MONAI's ``ResNet``
            initialisation needs a weight) and evaluates faster (:mod:`networks.norms`); ``"group"`` uses
            ``num_groups`` from the kwargs, else the largest divisor of ``channels`` not above 32 (Wu & He's
            default of 32 groups, fewer for narrow layers).
        spatial_dims: 2 or 3.
        channels: number of channels normalised.

    Returns:
        The layer (``nn.Identity`` for ``"none"``).

    Raises:
        ValueError: for an unknown norm name.
    """
    name, kwargs = canonical_norm(norm)
    if name == "none":
        return nn.Identity()
    if name == "instance":
        kwargs.setdefault("affine", True)
        if spatial_dims in _INSTANCE_NORMS:
            return _INSTANCE_NORMS[spatial_dims](channels, **kwargs)
    if name == "group" and "num_groups" not in kwargs:
        kwargs["num_groups"] = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
    return get_norm_layer(name=(name, kwargs), spatial_dims=spatial_dims, channels=channels)


class ZeroPadShortcut(nn.Module):
    """Parameter-free ResNet shortcut "A": stride by sub-sampling, then zero-pad the new channels.

    It computes what MONAI's ``ResNet._downsample_basic_block`` computes (a ``functools.partial``, which TorchScript
    cannot compile), as a module, so shortcut-A encoders (MedicalNet depths 18 and 34) can be scripted. Unlike MONAI's
    version it does not detach the shortcut (``.data``), so gradients flow through it as in He et al.

    Args:
        planes: output channels (input channels are kept, the rest are zeros).
        stride: sub-sampling stride.
        spatial_dims: 2 or 3.
    """

    def __init__(self, planes: int, stride: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.planes = planes
        self.pool = get_pool_layer(("avg", {"kernel_size": 1, "stride": stride}), spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sub-sample ``x`` (B, C, *S) and pad it with zero channels to (B, planes, *S/stride)."""
        out = self.pool(x)
        pad = torch.zeros(
            [out.shape[0], self.planes - out.shape[1]] + list(out.shape[2:]), dtype=out.dtype, device=out.device
        )
        return torch.cat([out, pad], dim=1)


def set_block_norm(block: nn.Module, norm: str | tuple | None, spatial_dims: int) -> None:
    """Replace a MONAI residual block's norm layers (``bn1..3`` and a shortcut-B norm) by ``make_norm(norm)``."""
    for name in ("bn1", "bn2", "bn3"):
        if isinstance(getattr(block, name, None), nn.modules.batchnorm._BatchNorm):
            setattr(block, name, make_norm(norm, spatial_dims, getattr(block, name).num_features))
    if isinstance(block.downsample, nn.Sequential) and isinstance(block.downsample[1], nn.modules.batchnorm._BatchNorm):
        block.downsample[1] = make_norm(norm, spatial_dims, block.downsample[1].num_features)


def build_resnet(
    model_depth: int = 18,
    *,
    spatial_dims: int = 3,
    in_channels: int = 1,
    num_classes: int | None = None,
    shortcut_type: str = "B",
    bias_downsample: bool = False,
    conv1_t_size: int | Sequence[int] = 7,
    conv1_t_stride: int | Sequence[int] = 2,
    widen_factor: float = 1.0,
    block_inplanes: Sequence[int] = DEFAULT_BLOCK_INPLANES,
    no_max_pool: bool = False,
    norm: str | tuple | None = "batch",
    act: str | tuple = ("relu", {"inplace": True}),
) -> ResNet:
    """Build a ``monai.networks.nets.ResNet`` whose norm and activation really reach every block.

    MONAI 1.6.1's ``ResNet`` hands ``norm`` and ``act`` to the stem only (its ``_make_layer`` never receives them),
    so this builder sets them in every block and shortcut too, and replaces shortcut "A" (a ``functools.partial``)
    by the equivalent :class:`ZeroPadShortcut` module so the network can be scripted. Neither change adds or renames
    a state-dict entry: with ``norm="batch"`` the keys and shapes are exactly those of the plain
    ``ResNet(...)`` with the same arguments. ResUnet3D's encoder and its classifier both come from here, which keeps
    the encoder <-> classifier transfer strict for every norm.

    Args:
        model_depth: 10, 18, 34 (basic blocks), 50, 101, 152 or 200 (bottleneck blocks).
        spatial_dims: 2 or 3.
        in_channels: input channels of ``conv1``.
        num_classes: size of the new ``fc`` head; ``None`` builds a feature extractor (``feed_forward=False``).
        shortcut_type: "A" (parameter-free, MedicalNet 18/34) or "B" (1x1 conv + norm).
        bias_downsample: bias in the shortcut-B convolution (False in both pretrained families).
        conv1_t_size: odd kernel size of ``conv1`` (int or one per axis).
        conv1_t_stride: stride of ``conv1`` (2 for isotropic scans; 3D-ResNets videos used (1, 2, 2)).
        widen_factor: multiplies ``block_inplanes``.
        block_inplanes: channels of the four stages before widening.
        no_max_pool: build the network for use without the stem's max-pool (MONAI skips it in ``forward``).
        norm: see :func:`make_norm`.
        act: activation name or ``(name, kwargs)``.

    Returns:
        The ResNet (random initialisation as in MONAI).

    Raises:
        ValueError: for an unknown depth, shortcut type, norm or an even ``conv1_t_size``.
    """
    if model_depth not in RESNET_LAYOUTS:
        raise ValueError(f"model_depth must be one of {sorted(RESNET_LAYOUTS)}, got {model_depth!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None (no head) or >= 1, got {num_classes!r}")
    if shortcut_type not in ("A", "B"):
        raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    kernel = ensure_tuple_rep(conv1_t_size, spatial_dims)
    if any(k < 1 or k % 2 == 0 for k in kernel):
        raise ValueError(f"conv1_t_size must be odd (so sizes divide exactly by the stride), got {conv1_t_size!r}")
    if len(block_inplanes) != 4 or any(int(c * widen_factor) < 1 for c in block_inplanes):
        raise ValueError(
            f"block_inplanes must hold 4 positive channel counts (after widen_factor={widen_factor}),"
            f" got {tuple(block_inplanes)!r}"
        )
    norm_name, _ = canonical_norm(norm)
    block, layers = RESNET_LAYOUTS[model_depth]
    net = ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=kernel,
        conv1_t_stride=ensure_tuple_rep(conv1_t_stride, spatial_dims),
        no_max_pool=no_max_pool,
        shortcut_type=shortcut_type,
        widen_factor=widen_factor,
        num_classes=num_classes if num_classes is not None else 1,
        feed_forward=num_classes is not None,
        bias_downsample=bias_downsample,
        act=act,
        norm="batch",
    )
    replace_norm = norm_name != "batch" or norm != "batch"
    if replace_norm:
        net.bn1 = make_norm(norm, spatial_dims, net.bn1.num_features)
    for stage in STAGES:
        for blk in getattr(net, stage):
            if replace_norm:
                set_block_norm(blk, norm, spatial_dims)
            blk.act = get_act_layer(act)
            if blk.downsample is not None and not isinstance(blk.downsample, nn.Module):
                kw = blk.downsample.keywords
                blk.downsample = ZeroPadShortcut(kw["planes"], kw["stride"], spatial_dims)
    return net
