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

The encoder builder and the norm factory live in :mod:`networks.encoder`, the decoder's blocks in
:mod:`networks.decoder`; this module assembles them (and re-exports the encoder's public names).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from monai.utils import ensure_tuple_rep
from torch import nn

from networks.decoder import OutputHead, build_bottleneck, decoder_stages
from networks.encoder import (
    DEFAULT_BLOCK_INPLANES,
    RESNET_LAYOUTS,
    STAGES,
    ZeroPadShortcut,
    build_resnet,
    canonical_norm,
    make_norm,
)

__all__ = [
    "DEFAULT_BLOCK_INPLANES",
    "RESNET_LAYOUTS",
    "ResUnet3D",
    "ZeroPadShortcut",
    "build_resnet",
    "make_norm",
]

logger = logging.getLogger(__name__)

#: The allowed values of ResUnet3D's choice arguments, in the order they are checked.
_CHOICES: dict[str, tuple[str, ...]] = {
    "skip": ("add", "cat"),
    "upsample": ("deconv", "interp"),
    "attention": ("none", "gate", "se"),
    "bottleneck": ("none", "transformer"),
}


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
        _check_choices(skip=skip, upsample=upsample, attention=attention, bottleneck=bottleneck)
        _check_channels(in_channels, out_channels, residual_output)
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
        self.instance_norm = canonical_norm(norm)[0] == "instance"
        used = strides[: self.levels + 1]
        self.reduction = [math.prod(s[a] for s in used) for a in range(spatial_dims)]
        self.min_size = [_min_extent([s[a] for s in used]) for a in range(spatial_dims)]
        if patch_size is not None:
            self._check_size(list(patch_size), "patch_size")

        channels = _level_channels(block_inplanes, widen_factor, block, block_name, model_depth)
        if decoder_layers is None:
            decoder_layers = layout[:3]
        if len(decoder_layers) != 3 or any(int(n) < 1 for n in decoder_layers):
            raise ValueError(f"decoder_layers must be 3 positive block counts (levels 1-3), got {decoder_layers!r}")
        for stage in STAGES[self.levels :]:
            getattr(self.encoder, stage).requires_grad_(False)

        self.bottleneck = build_bottleneck(
            bottleneck, spatial_dims, channels[self.levels], transformer_dim, transformer_heads, transformer_layers
        )
        self.decoder = decoder_stages(
            spatial_dims,
            self.levels,
            channels,
            strides,
            decoder_layers,
            block,
            upsample=upsample,
            skip=skip,
            attention=attention,
            norm=norm,
            act=act,
        )
        self.head = OutputHead(spatial_dims, channels[0], out_channels, stem_stride, upsample, norm, act)

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


def _check_choices(**values: str) -> None:
    """Raise ``ValueError`` naming the first argument whose value is not one of its allowed choices."""
    for name, value in values.items():
        allowed = _CHOICES[name]
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_channels(in_channels: int, out_channels: int, residual_output: bool) -> None:
    """Raise ``ValueError`` for fewer than one channel, or a residual output whose in and out channels differ."""
    if residual_output and in_channels != out_channels:
        raise ValueError(
            f"residual_output=True returns x - net(x), so in_channels ({in_channels}) must equal"
            f" out_channels ({out_channels})"
        )
    if out_channels < 1 or in_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")


def _level_channels(
    block_inplanes: Sequence[int], widen_factor: float, block: type, block_name: str, model_depth: int
) -> list[int]:
    """Channels of the feature maps at levels 0 (stem output) to 4, checked for the decoder's stem-level block."""
    widths = [int(c * widen_factor) for c in block_inplanes]
    if widths[0] < block.expansion:
        raise ValueError(
            f"block_inplanes[0] * widen_factor must be >= {block.expansion} for depth {model_depth}"
            f" (the decoder's stem-level {block_name} block needs that many channels), got {widths[0]}"
        )
    return [widths[0]] + [w * block.expansion for w in widths]


def _min_extent(strides: list[int]) -> int:
    """Smallest size along one axis for which every stride > 1 step gets at least 2 voxels (sizes map to ceil)."""
    strided = [i for i, s in enumerate(strides) if s > 1]
    if not strided:
        return 1
    return math.prod(strides[: strided[-1]]) + 1
