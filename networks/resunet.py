"""ResUnet3D: a symmetric residual U-Net whose encoder is a MONAI ``ResNet``, with an addition at every level.

The encoder is ``monai.networks.nets.ResNet(feed_forward=False)`` held at ``ResUnet3D.encoder``: its ``encoder.*``
state-dict keys and shapes are those of a ResNet of the same configuration, so 3D-ResNets-PyTorch and MedicalNet
weights load into it strictly (:mod:`networks.pretrained`) and it turns back into a classifier
(:meth:`ResUnet3D.classifier`). The decoder mirrors the encoder stage by stage with the same residual blocks.

Feature maps for an input ``(B, C_in, H, W, D)`` and the default configuration (stem stride 2, max-pool)::

    e0 = stem(x)         (B, 64,  H/2,  W/2,  D/2)      -- conv1 7^3 stride 2, norm, act
    e1 = layer1(pool e0) (B, 64,  H/4,  W/4,  D/4)      -- x expansion 4 for bottleneck depths (50+)
    e2 = layer2(e1)      (B, 128, H/8, ...)
    e3 = layer3(e2)      (B, 256, H/16, ...)
    e4 = layer4(e3)      (B, 512, H/32, ...)            -- the deepest level when ``levels=4``
    decoder: up(e4) + e3 -> blocks -> up + e2 -> blocks -> up + e1 -> blocks -> up + e0 -> block -> up -> conv

Every division is a ceiling, and each upsampling is told the exact size of the skip it meets (transposed
convolutions get their ``output_padding`` from it, interpolation its ``size``), so the output has exactly the
input's spatial size for odd, even and anisotropic inputs alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer, get_pool_layer
from monai.networks.nets import ResNet
from monai.networks.nets.attentionunet import AttentionBlock
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = [
    "DEFAULT_BLOCK_INPLANES",
    "RESNET_LAYOUTS",
    "ResUnet3D",
    "ZeroPadShortcut",
    "build_resnet",
    "make_norm",
]

logger = logging.getLogger(__name__)

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

_NORMS = ("batch", "instance", "group", "none")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _canonical_norm(norm: str | tuple | None) -> tuple[str, dict]:
    """Return ``(name, kwargs)`` for a norm given as a name, a ``(name, kwargs)`` pair or ``None``."""
    if norm is None:
        return "none", {}
    name, kwargs = (norm, {}) if isinstance(norm, str) else (norm[0], dict(norm[1]) if len(norm) > 1 else {})
    name = str(name).lower()
    if name not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS} or a (name, kwargs) pair of those, got {norm!r}")
    return name, kwargs


def make_norm(norm: str | tuple | None, spatial_dims: int, channels: int) -> nn.Module:
    """Build one normalisation layer the way every ResUnet3D/encoder layer gets it.

    Args:
        norm: ``"batch"``, ``"instance"``, ``"group"``, ``"none"`` (or ``None``), or a ``(name, kwargs)`` pair.
            ``"instance"`` is affine unless the kwargs say otherwise (MONAI's default is not, and MONAI's ``ResNet``
            initialisation needs a weight); ``"group"`` uses ``num_groups`` from the kwargs, else the largest divisor
            of ``channels`` not above 32 (Wu & He's default of 32 groups, fewer for narrow layers).
        spatial_dims: 2 or 3.
        channels: number of channels normalised.

    Returns:
        The layer (``nn.Identity`` for ``"none"``).

    Raises:
        ValueError: for an unknown norm name.
    """
    name, kwargs = _canonical_norm(norm)
    if name == "none":
        return nn.Identity()
    if name == "instance":
        kwargs.setdefault("affine", True)
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


def _set_block_norm(block: nn.Module, norm: str | tuple | None, spatial_dims: int) -> None:
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
    norm_name, _ = _canonical_norm(norm)
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
    for stage in _STAGES:
        for blk in getattr(net, stage):
            if replace_norm:
                _set_block_norm(blk, norm, spatial_dims)
            blk.act = get_act_layer(act)
            if blk.downsample is not None and not isinstance(blk.downsample, nn.Module):
                kw = blk.downsample.keywords
                blk.downsample = ZeroPadShortcut(kw["planes"], kw["stride"], spatial_dims)
    return net


class _Upsample(nn.Module):
    """Upsample ``(B, C_in, *S)`` to ``(B, C_out, *size)``: transposed conv, or interpolation + conv; then norm, act.

    The transposed convolution (kernel 3, padding 1) gets its ``output_padding`` from the requested size, which is
    exact because every encoder downsampling (kernel 3 / odd conv1 kernel, padding k//2) maps ``n`` to ``ceil(n/s)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Sequence[int],
        mode: str,
        norm: str | tuple | None,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.interpolate = mode == "interp"
        self.interp_mode = "trilinear" if spatial_dims == 3 else "bilinear"
        if self.interpolate:
            self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, padding=1, bias=False)
            self.deconv = None
        else:
            self.conv = None
            self.deconv = Conv[Conv.CONVTRANS, spatial_dims](
                in_channels, out_channels, kernel_size=3, stride=tuple(stride), padding=1, bias=False
            )
        self.norm = make_norm(norm, spatial_dims, out_channels)
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        if self.deconv is not None:
            x = self.deconv(x, output_size=size)
        elif self.conv is not None:
            x = self.conv(F.interpolate(x, size=size, mode=self.interp_mode, align_corners=False))
        return self.act(self.norm(x))


class _DecoderStage(nn.Module):
    """Upsample the deeper map, merge the encoder skip (add or concatenate), then residual blocks."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: int,
        stride: Sequence[int],
        n_blocks: int,
        block: type[ResNetBlock | ResNetBottleneck],
        *,
        upsample: str,
        skip: str,
        attention: str,
        norm: str | tuple | None,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.up = _Upsample(spatial_dims, in_channels, channels, stride, upsample, norm, act)
        self.gate = (
            AttentionBlock(spatial_dims, f_int=max(1, channels // 2), f_g=channels, f_l=channels)
            if attention == "gate"
            else None
        )
        self.concat = skip == "cat"
        blocks: list[nn.Module] = []
        for i in range(n_blocks):
            first_in = 2 * channels if (self.concat and i == 0) else channels
            downsample = None
            if first_in != channels:
                downsample = nn.Sequential(
                    Conv[Conv.CONV, spatial_dims](first_in, channels, kernel_size=1, bias=False),
                    make_norm(norm, spatial_dims, channels),
                )
            residual = block(
                in_planes=first_in,
                planes=channels // block.expansion,
                spatial_dims=spatial_dims,
                downsample=downsample,
                act=act,
            )
            _set_block_norm(residual, norm, spatial_dims)
            blocks.append(residual)
            if attention == "se":
                blocks.append(ChannelSELayer(spatial_dims, channels, r=min(8, channels)))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x, skip.shape[2:])
        if self.gate is not None:
            skip = self.gate(up, skip)
        merged = torch.cat([up, skip], dim=1) if self.concat else up + skip
        return self.blocks(merged)


class _TransformerBottleneck(nn.Module):
    """Multi-head self-attention over the deepest feature map ``(B, C, *S)``, added back as a residual.

    A depthwise 3^d convolution adds a conditional positional encoding (Chu et al., "Conditional Positional
    Encodings for Vision Transformers", ICLR 2023): it is learned and works for any spatial size, unlike a fixed
    table. The map is projected to ``dim`` channels, flattened to ``prod(S)`` tokens, passed through pre-norm
    transformer encoder layers (feed-forward width ``2 * dim``, no dropout), projected back and added to the input.
    """

    def __init__(self, spatial_dims: int, channels: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.pos = conv(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.proj_in = conv(channels, dim, kernel_size=1)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj_out = conv(dim, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        t = self.proj_in(x)
        tokens = self.transformer(t.flatten(2).transpose(1, 2))
        return x + self.proj_out(tokens.transpose(1, 2).reshape(t.shape))


class _Head(nn.Module):
    """Undo the stem's stride back to the input size and map to ``out_channels`` (logits; no final activation)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Sequence[int],
        upsample: str,
        norm: str | tuple | None,
        act: str | tuple,
    ) -> None:
        super().__init__()
        hidden = max(1, in_channels // 2)
        self.up = _Upsample(spatial_dims, in_channels, hidden, stride, upsample, norm, act)
        self.out = Conv[Conv.CONV, spatial_dims](hidden, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return self.out(self.up(x, size))


class ResUnet3D(nn.Module):
    """Residual U-Net: a MONAI ResNet encoder, a mirrored residual decoder, a skip merged at every level.

    Input ``(B, in_channels, H, W, D)`` (``(B, C, H, W)`` with ``spatial_dims=2``); output
    ``(B, out_channels, H, W, D)``, the same spatial size exactly, as raw values (logits / images, no activation).

    Levels and sizes. ``levels`` (1-4) is how many ResNet stages run below the stem; ``levels=3`` drops the
    512-channel stage (the notes' "drop512"). The encoder always holds all four stages, so its state dict is that
    of the full ResNet and pretrained weights load strictly at any ``levels``; the stages a U-Net does not run are
    frozen (``requires_grad=False``, so optimisers and DDP skip them) and reach :meth:`classifier` unchanged.
    ``levels="auto"`` needs ``patch_size`` and keeps the most stages whose feature map is at least 2 voxels on every
    axis for that patch (for 64^3 with the default strides: 64 -> 32 -> 16 -> 16 -> 8 -> 4 -> 2, so 4 levels;
    for 32^3 the level-4 map is 1 voxel wide, so 3 levels). An input is accepted when every downsampling step sees at
    least 2 voxels along each axis it halves, i.e. the deepest map is a real downsampled cell: that minimum size is
    :attr:`min_input_size` (17^3 for 4 levels with the default strides; with instance norm the deepest map must
    also hold more than one voxel); smaller inputs raise ``ValueError`` naming it.

    Args:
        spatial_dims: 3 (volumes) or 2 (slices).
        in_channels: input channels.
        out_channels: output channels.
        model_depth: encoder depth: 10, 18, 34 (basic blocks) or 50, 101, 152, 200 (bottleneck blocks).
        levels: 1-4 encoder stages, or ``"auto"`` (needs ``patch_size``).
        patch_size: training patch size (int or one per axis); validated against the minimum input size.
        skip: ``"add"`` (the notes' design: decoder map + encoder map) or ``"cat"`` (classic U-Net concatenation,
            then a 1x1 projection in the first decoder block's shortcut).
        upsample: ``"deconv"`` (transposed convolution) or ``"interp"`` (linear interpolation + 3^d convolution).
        residual_output: predict the noise and return ``x - net(x)`` (DnCNN-style); needs in == out channels.
        attention: ``"none"``, ``"gate"`` (MONAI ``AttentionBlock`` gates on every skip, Oktay et al.) or ``"se"``
            (MONAI ``ChannelSELayer`` after every decoder block, as Roy et al. place squeeze-and-excitation).
        bottleneck: ``"none"`` or ``"transformer"`` (self-attention over the deepest map, see ``transformer_*``).
        norm: ``"batch"``, ``"instance"``, ``"group"``, ``"none"`` or a ``(name, kwargs)`` pair, in encoder and
            decoder alike (see :func:`make_norm`).
        act: activation (name or ``(name, kwargs)``), encoder and decoder alike.
        shortcut_type: "A" or "B" (encoder, see :func:`build_resnet`).
        bias_downsample: bias in shortcut-B convolutions (False in both pretrained families).
        conv1_t_size: odd kernel size of the stem convolution.
        conv1_t_stride: stride of the stem convolution (int or per axis); undone by the output head.
        widen_factor: multiplies ``block_inplanes`` (encoder and decoder).
        block_inplanes: stage channels before widening, default (64, 128, 256, 512).
        no_max_pool: skip the stem's max-pool (one fewer halving; the decoder's stem level then does not upsample).
        decoder_layers: residual blocks of the decoder at levels 1, 2, 3; default: the encoder's (mirror).
        transformer_heads: attention heads of the transformer bottleneck.
        transformer_dim: token width of the transformer bottleneck; default ``min(deepest channels, 256)``.
        transformer_layers: transformer encoder layers in the bottleneck.

    Raises:
        ValueError: for any argument outside its allowed values, naming it.

    Example:
        >>> net = ResUnet3D(model_depth=18, levels=3)
        >>> net(torch.zeros(1, 1, 37, 45, 29)).shape
        torch.Size([1, 1, 37, 45, 29])
    """

    __jit_ignored_attributes__ = ["encoder_config", "init_config"]
    __jit_unused_properties__ = ["min_input_size"]

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        model_depth: int = 18,
        levels: int | str = 4,
        patch_size: int | Sequence[int] | None = None,
        skip: str = "add",
        upsample: str = "deconv",
        residual_output: bool = False,
        attention: str = "none",
        bottleneck: str = "none",
        norm: str | tuple | None = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        shortcut_type: str = "B",
        bias_downsample: bool = False,
        conv1_t_size: int | Sequence[int] = 7,
        conv1_t_stride: int | Sequence[int] = 2,
        widen_factor: float = 1.0,
        block_inplanes: Sequence[int] = DEFAULT_BLOCK_INPLANES,
        no_max_pool: bool = False,
        decoder_layers: Sequence[int] | None = None,
        transformer_heads: int = 8,
        transformer_dim: int | None = None,
        transformer_layers: int = 1,
    ) -> None:
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        for name, value, allowed in (
            ("skip", skip, ("add", "cat")),
            ("upsample", upsample, ("deconv", "interp")),
            ("attention", attention, ("none", "gate", "se")),
            ("bottleneck", bottleneck, ("none", "transformer")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if residual_output and in_channels != out_channels:
            raise ValueError(
                f"residual_output=True returns x - net(x), so in_channels ({in_channels}) must equal"
                f" out_channels ({out_channels})"
            )
        if out_channels < 1 or in_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        self.encoder_config = {
            "model_depth": model_depth,
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "shortcut_type": shortcut_type,
            "bias_downsample": bias_downsample,
            "conv1_t_size": conv1_t_size,
            "conv1_t_stride": conv1_t_stride,
            "widen_factor": widen_factor,
            "block_inplanes": tuple(block_inplanes),
            "no_max_pool": no_max_pool,
            "norm": norm,
            "act": act,
        }
        self.encoder = build_resnet(**self.encoder_config)
        block_name, layout = RESNET_LAYOUTS[model_depth]
        block = ResNetBlock if block_name == "basic" else ResNetBottleneck

        stem_stride = list(ensure_tuple_rep(conv1_t_stride, spatial_dims))
        pool_stride = [1 if no_max_pool else 2] * spatial_dims
        # strides[k] = stride taking level k-1 to level k (level 0 = stem output, level k = layer k output)
        strides = [stem_stride, pool_stride] + [[2] * spatial_dims] * 3
        if isinstance(patch_size, int):
            patch_size = (patch_size,) * spatial_dims
        if patch_size is not None and len(patch_size) != spatial_dims:
            raise ValueError(f"patch_size must have {spatial_dims} entries, got {patch_size!r}")
        self.levels = self._resolve_levels(levels, patch_size, strides)
        # the MONAI config that rebuilds this network (levels resolved): trained weights carry it beside them
        self.init_config: dict = {"_target_": "networks.ResUnet3D", **arguments, "levels": self.levels}
        self.spatial_dims = spatial_dims
        self.no_max_pool = no_max_pool
        self.residual_output = residual_output
        self.instance_norm = _canonical_norm(norm)[0] == "instance"
        used = strides[: self.levels + 1]
        self.reduction = [math.prod(s[a] for s in used) for a in range(spatial_dims)]
        self.min_size = [_min_extent([s[a] for s in used]) for a in range(spatial_dims)]
        if patch_size is not None:
            self._check_size(list(patch_size), "patch_size")

        widths = [int(c * widen_factor) for c in block_inplanes]
        if widths[0] < block.expansion:
            raise ValueError(
                f"block_inplanes[0] * widen_factor must be >= {block.expansion} for depth {model_depth}"
                f" (the decoder's stem-level {block_name} block needs that many channels), got {widths[0]}"
            )
        channels = [widths[0]] + [w * block.expansion for w in widths]  # per level 0..4
        if decoder_layers is None:
            decoder_layers = layout[:3]
        if len(decoder_layers) != 3 or any(int(n) < 1 for n in decoder_layers):
            raise ValueError(f"decoder_layers must be 3 positive block counts (levels 1-3), got {decoder_layers!r}")
        for stage in _STAGES[self.levels :]:
            getattr(self.encoder, stage).requires_grad_(False)

        deepest = channels[self.levels]
        if bottleneck == "transformer":
            dim = transformer_dim or min(deepest, 256)
            if transformer_heads < 1 or dim % transformer_heads:
                raise ValueError(
                    f"transformer_heads must divide the token width {dim} (transformer_dim), got {transformer_heads}"
                )
            if transformer_layers < 1:
                raise ValueError(f"transformer_layers must be >= 1, got {transformer_layers}")
            self.bottleneck: nn.Module = _TransformerBottleneck(
                spatial_dims, deepest, dim, transformer_heads, transformer_layers
            )
        else:
            self.bottleneck = nn.Identity()

        stages = []
        for level in range(self.levels - 1, -1, -1):
            stages.append(
                _DecoderStage(
                    spatial_dims,
                    channels[level + 1],
                    channels[level],
                    strides[level + 1],
                    int(decoder_layers[level - 1]) if level > 0 else 1,
                    block,
                    upsample=upsample,
                    skip=skip,
                    attention=attention,
                    norm=norm,
                    act=act,
                )
            )
        self.decoder = nn.ModuleList(stages)
        self.head = _Head(spatial_dims, channels[0], out_channels, stem_stride, upsample, norm, act)

    @staticmethod
    def _resolve_levels(levels: int | str, patch_size: Sequence[int] | None, strides: list[list[int]]) -> int:
        if levels == "auto":
            if patch_size is None:
                raise ValueError('levels="auto" needs patch_size (the training patch, int or one per axis)')
            best = 0
            for n in range(1, 5):
                factor = [math.prod(s[a] for s in strides[: n + 1]) for a in range(len(patch_size))]
                if all(-(-p // f) >= 2 for p, f in zip(patch_size, factor)):
                    best = n
            if best == 0:
                raise ValueError(
                    f"patch_size {tuple(patch_size)} is too small for even one encoder stage: levels='auto' needs"
                    " a level-1 feature map of at least 2 voxels on every axis"
                )
            logger.info("levels='auto': %d encoder stages for patch size %s", best, tuple(patch_size))
            return best
        if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= 4:
            raise ValueError(f"levels must be 1, 2, 3, 4 or 'auto', got {levels!r}")
        return levels

    @property
    def min_input_size(self) -> tuple[int, ...]:
        """Smallest accepted spatial size per axis (every downsampling step sees at least 2 voxels)."""
        return tuple(self.min_size)

    def _check_size(self, size: list[int], name: str = "input spatial size") -> None:
        """Raise ``ValueError`` when a spatial size is below :attr:`min_input_size` (TorchScript-compatible).

        Args:
            size: the spatial size (H, W, D).
            name: what ``size`` is, for the message (``"patch_size"`` when checking the constructor's argument).

        Raises:
            ValueError: naming ``name``, the size and the minimum.
        """
        small = len(size) != len(self.min_size)
        deepest = 1
        for a in range(len(size)):
            if not small:
                small = size[a] < self.min_size[a]
                deepest = deepest * ((size[a] + self.reduction[a] - 1) // self.reduction[a])
        if small or (self.instance_norm and deepest < 2):
            msg = (
                name
                + " "
                + "x".join([str(s) for s in size])
                + " is too small for ResUnet3D with "
                + str(self.levels)
                + " levels: the minimum size is "
                + "x".join([str(s) for s in self.min_size])
            )
            if self.instance_norm:
                msg += (
                    " and, with instance norm, the deepest map (input / "
                    + "x".join([str(s) for s in self.reduction])
                    + ") must hold more than one voxel"
                )
            raise ValueError(msg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise / map ``x`` of shape (B, in_channels, *S) to (B, out_channels, *S) with the same *S."""
        self._check_size(x.shape[2:])
        enc = self.encoder
        y = enc.act(enc.bn1(enc.conv1(x)))
        skips: list[torch.Tensor] = [y]
        if not self.no_max_pool:
            y = enc.maxpool(y)
        y = enc.layer1(y)
        if self.levels > 1:
            skips.append(y)
            y = enc.layer2(y)
        if self.levels > 2:
            skips.append(y)
            y = enc.layer3(y)
        if self.levels > 3:
            skips.append(y)
            y = enc.layer4(y)
        y = self.bottleneck(y)
        for i, stage in enumerate(self.decoder):
            y = stage(y, skips[len(skips) - 1 - i])
        y = self.head(y, x.shape[2:])
        if self.residual_output:
            y = x - y
        return y

    def classifier(self, num_classes: int) -> ResNet:
        """A ``monai.networks.nets.ResNet`` classifier holding copies of this encoder's tensors and a new ``fc``.

        The copy is a strict ``load_state_dict`` of every encoder tensor (including stages this U-Net does not run,
        see ``levels``); ``fc`` keeps MONAI's fresh initialisation. The classifier is independent of the U-Net.

        Args:
            num_classes: outputs of the new ``fc`` (logits, no activation).

        Returns:
            The classifier, in training mode, on the encoder's device.

        Raises:
            ValueError: if ``num_classes < 1``.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        net = build_resnet(**self.encoder_config, num_classes=num_classes)
        state = {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
        state["fc.weight"] = net.fc.weight.detach().clone()
        state["fc.bias"] = net.fc.bias.detach().clone()
        net.load_state_dict(state, strict=True)
        return net.to(next(self.encoder.parameters()).device)


def _min_extent(strides: list[int]) -> int:
    """Smallest size along one axis for which every stride > 1 step gets at least 2 voxels (sizes map to ceil)."""
    strided = [i for i, s in enumerate(strides) if s > 1]
    if not strided:
        return 1
    return math.prod(strides[: strided[-1]]) + 1
