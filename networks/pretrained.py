"""Load pretrained 3D ResNet weights into a ResUnet3D encoder or a ResNet classifier, and freeze leading stages.

Formats read by :func:`load_pretrained` (facts in ``shared/reference/pretrained-weights.md``):

- 3D-ResNets-PyTorch (Hara et al.) ``r3d{18,34,50,..}_{K,KM}_200ep.pth``: ``{"arch", "epoch", "state_dict", ...}``,
  3-channel ``conv1``, shortcut B, an ``fc`` head of 700 (K) or 1039 (KM) classes -- the class count is never asked;
- MedicalNet (Tencent Med3D) ``resnet_{10,18,34,50,..}.pth``: ``{"state_dict"}`` with a ``module.`` prefix,
  1-channel ``conv1``, shortcut A at depths 18/34, no head or a ``conv_seg`` head;
- flat state dicts, and this project's own checkpoints: MONAI ``CheckpointSaver`` dicts such as
  ``{"network": ..., "optimizer": ...}`` holding a ResUnet3D or a ResNet classifier.

Loading is strict: every encoder tensor must be found with its shape, or a :class:`PretrainedWeightsError` names the
file, describes what it holds (depth, block layout, shortcut type, channels, head) and what the network expects.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping

import torch
from monai.networks.nets import ResNet
from torch import nn

from networks.resunet import RESNET_LAYOUTS, ResUnet3D

__all__ = [
    "FREEZE_ORDER",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "PretrainedWeightsError",
    "describe_state_dict",
    "freeze_until",
    "load_pretrained",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

_HEADS = ("fc.", "conv_seg.")
_CONTAINER_KEYS = ("state_dict", "network", "model", "net")
#: Module order of a ResNet, as used by 3D-ResNets-PyTorch's ``--ft_begin_module`` and :func:`freeze_until`.
FREEZE_ORDER = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")


class PretrainedWeightsError(ValueError):
    """A weight file that cannot be loaded into the network, with the path and the problem in plain words.

    (``networks/`` is a leaf package and cannot use ``transforms.errors.InputError``; this mirrors it.)

    Args:
        path: the checkpoint file.
        problem: what is wrong, including what the file holds and what the network expects.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


def _strip_module(key: str) -> str:
    """Remove a leading ``module.`` (DataParallel) -- as a prefix only, never inside a name."""
    return key[len("module.") :] if key.startswith("module.") else key


def _is_state(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint file with ``weights_only=True`` and return its state dict and a description of the container.

    Args:
        path: a ``.pth``/``.pt`` file of any format listed in the module docstring.

    Returns:
        ``(state, container)``: tensors by key (``module.`` prefix stripped), and a phrase such as
        ``"a 3D-ResNets-PyTorch checkpoint (arch 'resnet-18', epoch 200)"``.

    Raises:
        PretrainedWeightsError: if the file is missing, unreadable with ``weights_only=True`` or holds no state dict.
    """
    if not os.path.isfile(path):
        raise PretrainedWeightsError(path, "no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise PretrainedWeightsError(
            path, f"cannot be read as PyTorch weights with weights_only=True ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, Mapping):
        raise PretrainedWeightsError(path, f"holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    if _is_state(obj):
        state, container = obj, "a flat state dict"
    else:
        found = next((k for k in _CONTAINER_KEYS if _is_state(obj.get(k))), None)
        if found is None:
            raise PretrainedWeightsError(
                path,
                f"holds a dict with keys {sorted(map(str, obj))} but no state dict under any of {_CONTAINER_KEYS}",
            )
        state = obj[found]
        if "arch" in obj:
            container = f"a 3D-ResNets-PyTorch checkpoint (arch {obj['arch']!r}, epoch {obj.get('epoch', '?')})"
        elif found == "state_dict":
            container = "a checkpoint dict with 'state_dict'"
        else:
            container = f"a checkpoint dict (e.g. MONAI CheckpointSaver) with {found!r}"
    prefixed = any(k.startswith("module.") for k in state)
    state = {_strip_module(k): v for k, v in state.items()}
    if prefixed:
        container += ", keys prefixed 'module.'"
    return state, container


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Describe a ResNet state dict in words: depth, block layout, shortcut, stem, norm, head.

    Args:
        state: ResNet keys (``conv1.weight``, ``layerN.i...``, optional ``fc.*``/``conv_seg.*``).

    Returns:
        e.g. ``"ResNet-18 (basic blocks 2-2-2-2, shortcut A, conv1 64x1x7x7x7, batch norm, no head)"``.
    """
    if "conv1.weight" not in state:
        return f"no ResNet (no 'conv1.weight'; first keys {sorted(state)[:4]})"
    bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.weight$", k) for k in state)
    counts = tuple(len({m.group(1) for k in state if (m := re.match(rf"layer{s}\.(\d+)\.", k))}) for s in range(1, 5))
    kind = "bottleneck" if bottleneck else "basic"
    depth = next((d for d, (b, lay) in RESNET_LAYOUTS.items() if b == kind and lay == counts), None)
    name = f"ResNet-{depth}" if depth else "a ResNet of unknown depth"
    if any(re.match(r"layer[234]\.0\.downsample\.0\.weight$", k) for k in state):
        shortcut = "shortcut B" + (" with bias" if "layer2.0.downsample.0.bias" in state else "")
    else:
        shortcut = "shortcut A"
    norm = (
        "batch norm"
        if "bn1.running_mean" in state
        else ("affine instance/group norm" if "bn1.weight" in state else "no norm")
    )
    stem = "x".join(str(s) for s in state["conv1.weight"].shape)
    heads = [f"'{h[:-1]}' head with {state[h + 'weight'].shape[0]} outputs" for h in _HEADS if h + "weight" in state]
    if any(k.startswith("conv_seg.") for k in state) and not heads:
        heads = ["'conv_seg' head"]
    return (
        f"{name} ({kind} blocks {'-'.join(map(str, counts))}, {shortcut}, conv1 {stem}, {norm}, "
        f"{', '.join(heads) or 'no head'})"
    )


def _target_resnet(model: nn.Module) -> ResNet:
    if isinstance(model, ResNet):
        return model
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, ResNet):
        return encoder
    raise ValueError(
        f"model must be a monai.networks.nets.ResNet or hold one at .encoder (ResUnet3D), got {type(model).__name__}"
    )


def _adapt_conv1(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, str]:
    """3 -> 1 input channel: sum (exact for a grey image repeated as RGB); 1 -> 3: repeat and divide by 3."""
    src_c, tgt_c = source.shape[1], target.shape[1]
    if src_c == tgt_c or source.shape[2:] != target.shape[2:] or source.shape[0] != target.shape[0]:
        return source, ""
    if src_c == 3 and tgt_c == 1:
        return source.sum(dim=1, keepdim=True), "conv1 3->1 input channels by summing"
    if src_c == 1 and tgt_c == 3:
        return source.repeat_interleave(3, dim=1) / 3.0, "conv1 1->3 input channels by repeating / 3"
    return source, ""


def _hint(source: str, expected: str) -> str:
    hints = []
    src_depth, tgt_depth = (re.search(r"ResNet-(\d+)", s) for s in (source, expected))
    if src_depth and (not tgt_depth or src_depth.group(1) != tgt_depth.group(1)):
        hints.append(f"build the network with model_depth={src_depth.group(1)}")
    src_short, tgt_short = (re.search(r"shortcut ([AB])", s) for s in (source, expected))
    if src_short and tgt_short and src_short.group(1) != tgt_short.group(1):
        hints.append(f"build the network with shortcut_type={src_short.group(1)!r}")
    if "with bias" in source and "with bias" not in expected:
        hints.append("build the network with bias_downsample=True")
    if "with bias" in expected and "with bias" not in source:
        hints.append("build the network with bias_downsample=False")
    return ("; " + "; ".join(hints)) if hints else ""


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> int:
    """Load pretrained ResNet weights strictly into a ResUnet3D encoder or a MONAI ``ResNet``.

    The file may be any format of the module docstring. The state dict is taken from ``state_dict`` (or
    ``network``/``model``/``net``) when nested; a leading ``module.`` is stripped; heads (``fc.*``,
    ``conv_seg.*``) are never copied -- a classifier keeps its own new ``fc`` and the source's class count does not
    matter; a 3-channel ``conv1`` is summed to 1 channel (1 -> 3: repeated and divided by 3). A ResUnet3D checkpoint
    of this project loads whole into a ResUnet3D, and its ``encoder.*`` part into a ResNet.

    Args:
        model: a ``ResUnet3D`` (weights go to ``model.encoder``) or a ``monai.networks.nets.ResNet``.
        path: the checkpoint file.

    Returns:
        The number of tensors loaded (also logged).

    Raises:
        PretrainedWeightsError: if the file cannot be read, or its tensors do not match the network one-to-one with
            equal shapes (depth, shortcut, width, channel or norm mismatch); the message names the file, what it
            holds and what the network expects.
        ValueError: if ``model`` is neither a ResNet nor holds one at ``.encoder``.
    """
    target = _target_resnet(model)
    state, container = read_state_dict(path)
    notes: list[str] = []
    if "encoder.conv1.weight" in state:
        if isinstance(model, ResUnet3D):
            expected = model.state_dict()
            missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
            if missing or unexpected or shapes:
                raise PretrainedWeightsError(
                    path,
                    f"holds {container} of a ResUnet3D that differs from this one: missing {missing[:6]},"
                    f" unexpected {unexpected[:6]}, shape mismatches {shapes[:6]} -- build the network with the"
                    " options it was trained with",
                )
            model.load_state_dict(state, strict=True)
            logger.info("loaded %d tensors (whole ResUnet3D) from %s", len(state), os.fspath(path))
            return len(state)
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        notes.append("encoder of a ResUnet3D")
    source_desc = describe_state_dict(state)
    dropped = sorted(k for k in state if k.startswith(_HEADS))
    state = {k: v for k, v in state.items() if not k.startswith(_HEADS)}
    expected = {k: v for k, v in target.state_dict().items() if not k.startswith("fc.")}
    if "conv1.weight" in state and "conv1.weight" in expected:
        state["conv1.weight"], note = _adapt_conv1(state["conv1.weight"], expected["conv1.weight"])
        if note:
            notes.append(note)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        expected_desc = describe_state_dict(expected)
        details = []
        if missing:
            details.append(f"{len(missing)} tensors missing from the file (e.g. {missing[:4]})")
        if unexpected:
            details.append(f"{len(unexpected)} tensors the network has no place for (e.g. {unexpected[:4]})")
        if shapes:
            details.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise PretrainedWeightsError(
            path,
            f"holds {container} with a {source_desc}, but the network expects a {expected_desc}"
            f"{_hint(source_desc, expected_desc)}: {'; '.join(details)}",
        )
    if target.fc is not None:
        state.update({k: v for k, v in target.state_dict().items() if k.startswith("fc.")})
    target.load_state_dict(state, strict=True)
    n_loaded = len(state) - (2 if target.fc is not None else 0)
    logger.info(
        "loaded %d tensors into the %s from %s (%s); head tensors not copied: %s%s",
        n_loaded,
        "ResUnet3D encoder" if target is not model else "ResNet",
        os.fspath(path),
        container,
        dropped or "none",
        f"; {'; '.join(notes)}" if notes else "",
    )
    return n_loaded


class _FrozenNormMixin:
    """A BatchNorm that stays in eval mode: ``train(True)`` is ignored, so its running statistics never move."""

    def train(self, mode: bool = True):
        return super().train(False)


class FrozenBatchNorm1d(_FrozenNormMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` frozen by :func:`freeze_until` (same state dict; always eval mode)."""


class FrozenBatchNorm2d(_FrozenNormMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` frozen by :func:`freeze_until` (same state dict; always eval mode)."""


class FrozenBatchNorm3d(_FrozenNormMixin, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` frozen by :func:`freeze_until` (same state dict; always eval mode)."""


_FROZEN = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d, nn.BatchNorm3d: FrozenBatchNorm3d}
_THAWED = {v: k for k, v in _FROZEN.items()}


def _set_frozen(module: nn.Module, frozen: bool, training: bool) -> None:
    module.requires_grad_(not frozen)
    for m in module.modules():
        if frozen and type(m) in _FROZEN:
            m.__class__ = _FROZEN[type(m)]
            m.eval()
        elif not frozen and type(m) in _THAWED:
            m.__class__ = _THAWED[type(m)]
            m.train(training)


def freeze_until(model: nn.Module, module_name: str) -> list[str]:
    """Freeze every encoder module before ``module_name`` and unfreeze it and the ones after.

    The order is ``conv1, bn1, layer1, layer2, layer3, layer4, fc``: ``freeze_until(model, "layer3")`` freezes
    ``conv1``, ``bn1``, ``layer1`` and ``layer2``; ``"conv1"`` unfreezes everything; ``"fc"`` freezes the whole
    encoder (a linear probe for a classifier; for a ResUnet3D only the decoder then trains). Calling it again
    re-freezes from scratch, so fine-tuning can be staged. A ResUnet3D's encoder stages below its ``levels`` stay
    frozen whatever the name (it never runs them).

    Frozen means ``requires_grad=False`` *and* BatchNorm running statistics that do not move: each frozen
    ``BatchNorm{1,2,3}d`` becomes a :class:`FrozenBatchNorm3d` (etc.) -- the same object, parameters and state-dict
    keys, only its class changes -- whose ``train()`` always sets eval mode. So ``model.train()``, which ignite's
    engines call every iteration, leaves them in eval mode, and ``torch.jit.script`` compiles them as ordinary
    BatchNorms. This differs from 3D-ResNets-PyTorch's ``--ft_begin_module NAME`` (same naming and order): it only
    left the earlier parameters out of the optimizer, so they did not change by gradient steps but their BatchNorm
    statistics still drifted with every training batch, and an unknown name silently gave an empty optimizer (here:
    ``ValueError``).

    Args:
        model: a ``ResUnet3D`` or a ``monai.networks.nets.ResNet``.
        module_name: the first module that trains, one of :data:`FREEZE_ORDER`.

    Returns:
        The names of the frozen modules, in order.

    Raises:
        ValueError: for an unknown ``module_name`` or a model without a ResNet.
    """
    if module_name not in FREEZE_ORDER:
        raise ValueError(f"module_name must be one of {FREEZE_ORDER}, got {module_name!r}")
    resnet = _target_resnet(model)
    never_run = set(FREEZE_ORDER[2:6][model.levels :]) if isinstance(model, ResUnet3D) else set()
    start = FREEZE_ORDER.index(module_name)
    frozen = []
    for i, name in enumerate(FREEZE_ORDER):
        module = getattr(resnet, name, None)
        if module is None:
            continue
        freeze = i < start or name in never_run
        _set_frozen(module, freeze, resnet.training)
        if i < start:
            frozen.append(name)
    n_frozen = sum(p.numel() for p in resnet.parameters() if not p.requires_grad)
    logger.info("froze %s (%d parameters; BatchNorm kept in eval mode)", frozen or "nothing", n_frozen)
    return frozen
