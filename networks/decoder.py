"""ResUnet3D's decoder blocks: upsampling to a skip's exact size, a decoder stage, a transformer bottleneck, the head.

Each takes ``spatial_dims``, channels and ``norm``/``act`` as the encoder does (:func:`networks.encoder.make_norm`),
so one ``norm`` argument reaches every layer of a ResUnet3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets.attentionunet import AttentionBlock
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import nn

from networks.encoder import make_norm, set_block_norm

__all__ = [
    "DecoderStage",
    "OutputHead",
    "TransformerBottleneck",
    "UpsampleBlock",
    "build_bottleneck",
    "decoder_stages",
]


class UpsampleBlock(nn.Module):
    """Upsample ``(B, C_in, *S)`` to ``(B, C_out, *size)``: transposed conv, or interpolation + conv; then norm, act.

    The transposed convolution (kernel 3, padding 1) gets its ``output_padding`` from the requested size, which is
    exact because every encoder downsampling (kernel 3 / odd conv1 kernel, padding k//2) maps ``n`` to ``ceil(n/s)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the deeper map.
        out_channels: channels after upsampling.
        stride: the encoder stride this upsampling undoes, per axis.
        mode: ``"deconv"`` (transposed convolution) or ``"interp"`` (linear interpolation, then a 3^d convolution).
        norm: see :func:`networks.encoder.make_norm`.
        act: activation name or ``(name, kwargs)``.
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
        """Upsample ``x`` (B, C_in, *S) to (B, C_out, *size)."""
        if self.deconv is not None:
            x = self.deconv(x, output_size=size)
        elif self.conv is not None:
            x = self.conv(F.interpolate(x, size=size, mode=self.interp_mode, align_corners=False))
        return self.act(self.norm(x))


class DecoderStage(nn.Module):
    """Upsample the deeper map, merge the encoder skip (add or concatenate), then residual blocks.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the deeper map.
        channels: channels of the skip and of this stage's output.
        stride: the encoder stride between the two levels, per axis.
        n_blocks: residual blocks after the merge.
        block: the encoder's residual block type.
        upsample: ``"deconv"`` or ``"interp"`` (:class:`UpsampleBlock`).
        skip: ``"add"`` or ``"cat"`` (then a 1x1 projection in the first block's shortcut).
        attention: ``"none"``, ``"gate"`` (MONAI ``AttentionBlock`` on the skip) or ``"se"`` (after every block).
        norm: see :func:`networks.encoder.make_norm`.
        act: activation name or ``(name, kwargs)``.
    """

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
        self.up = UpsampleBlock(spatial_dims, in_channels, channels, stride, upsample, norm, act)
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
            set_block_norm(residual, norm, spatial_dims)
            blocks.append(residual)
            if attention == "se":
                blocks.append(ChannelSELayer(spatial_dims, channels, r=min(8, channels)))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample the deeper map ``x`` to the size of ``skip`` (B, channels, *S), merge it, run the blocks."""
        up = self.up(x, skip.shape[2:])
        if self.gate is not None:
            skip = self.gate(up, skip)
        merged = torch.cat([up, skip], dim=1) if self.concat else up + skip
        return self.blocks(merged)


class TransformerBottleneck(nn.Module):
    """Multi-head self-attention over the deepest feature map ``(B, C, *S)``, added back as a residual.

    A depthwise 3^d convolution adds a conditional positional encoding (Chu et al., "Conditional Positional
    Encodings for Vision Transformers", ICLR 2023): it is learned and works for any spatial size, unlike a fixed
    table. The map is projected to ``dim`` channels, flattened to ``prod(S)`` tokens, passed through pre-norm
    transformer encoder layers (feed-forward width ``2 * dim``, no dropout), projected back and added to the input.

    Args:
        spatial_dims: 2 or 3.
        channels: channels of the map.
        dim: token width.
        heads: attention heads (dividing ``dim``).
        layers: transformer encoder layers.
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
        """Attend over the map ``x`` (B, C, *S); returns the same shape."""
        x = x + self.pos(x)
        t = self.proj_in(x)
        tokens = self.transformer(t.flatten(2).transpose(1, 2))
        return x + self.proj_out(tokens.transpose(1, 2).reshape(t.shape))


class OutputHead(nn.Module):
    """Undo the stem's stride back to the input size and map to ``out_channels`` (logits; no final activation).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the stem-level map.
        out_channels: output channels.
        stride: the stem's stride, per axis.
        upsample: ``"deconv"`` or ``"interp"`` (:class:`UpsampleBlock`, to ``in_channels // 2`` channels).
        norm: see :func:`networks.encoder.make_norm`.
        act: activation name or ``(name, kwargs)``.
    """

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
        self.up = UpsampleBlock(spatial_dims, in_channels, hidden, stride, upsample, norm, act)
        self.out = Conv[Conv.CONV, spatial_dims](hidden, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        """Map the stem-level map ``x`` to (B, out_channels, *size)."""
        return self.out(self.up(x, size))


def build_bottleneck(
    kind: str, spatial_dims: int, channels: int, dim: int | None, heads: int, layers: int
) -> nn.Module:
    """The module between the deepest encoder map and the decoder.

    Args:
        kind: ``"none"`` (``nn.Identity``) or ``"transformer"`` (:class:`TransformerBottleneck`).
        spatial_dims: 2 or 3.
        channels: channels of the deepest map.
        dim: token width of the transformer; ``None`` for ``min(channels, 256)``.
        heads: attention heads; must divide the token width.
        layers: transformer encoder layers, ``>= 1``.

    Returns:
        The bottleneck module.

    Raises:
        ValueError: for heads that do not divide the token width, or fewer than one layer.
    """
    if kind != "transformer":
        return nn.Identity()
    dim = dim or min(channels, 256)
    if heads < 1 or dim % heads:
        raise ValueError(f"transformer_heads must divide the token width {dim} (transformer_dim), got {heads}")
    if layers < 1:
        raise ValueError(f"transformer_layers must be >= 1, got {layers}")
    return TransformerBottleneck(spatial_dims, channels, dim, heads, layers)


def decoder_stages(
    spatial_dims: int,
    levels: int,
    channels: Sequence[int],
    strides: Sequence[Sequence[int]],
    decoder_layers: Sequence[int],
    block: type[ResNetBlock | ResNetBottleneck],
    *,
    upsample: str,
    skip: str,
    attention: str,
    norm: str | tuple | None,
    act: str | tuple,
) -> nn.ModuleList:
    """The decoder, deepest stage first: the stage of level ``l`` upsamples level ``l + 1`` and meets skip ``l``.

    Args:
        spatial_dims: 2 or 3.
        levels: encoder stages run below the stem (1-4).
        channels: feature-map channels of levels 0 (stem output) to 4.
        strides: ``strides[k]`` takes level ``k - 1`` to level ``k``.
        decoder_layers: residual blocks at levels 1, 2, 3 (level 0 gets one).
        block: the encoder's residual block type.
        upsample: ``"deconv"`` or ``"interp"`` (:class:`UpsampleBlock`).
        skip: ``"add"`` or ``"cat"``: how a stage merges its skip.
        attention: ``"none"``, ``"gate"`` (on every skip) or ``"se"`` (after every block).
        norm: see :func:`networks.encoder.make_norm`.
        act: activation name or ``(name, kwargs)``.

    Returns:
        ``levels`` :class:`DecoderStage` modules.
    """
    stages = []
    for level in range(levels - 1, -1, -1):
        stages.append(
            DecoderStage(
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
    return nn.ModuleList(stages)
