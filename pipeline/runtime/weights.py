"""Trained weights, read safely: ``weights_only=True`` checkpoints, strict loading, errors that name the file.

Training resumes and fine-tunes from these files and inference runs them, so both stages import the readers from
here (the writers, which only training needs, are :mod:`pipeline.training.checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import CheckpointError

__all__ = ["card_path", "check_weights_file", "load_checkpoint", "load_network_state", "load_weights"]


def card_path(weights: str | os.PathLike) -> Path:
    """The card file of a weights file: ``model.pt`` -> ``model.json``.

    Args:
        weights: the weights file.

    Returns:
        The path (it may not exist).
    """
    return Path(weights).with_suffix(".json")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: the file.
        map_location: device to map tensors to (``"cpu"`` loads GPU-trained checkpoints anywhere).

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointError: when the file is missing, truncated/corrupt, or needs arbitrary code to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "it is truncated, corrupt, or holds objects that would run code when unpickled."
        ) from error


def load_network_state(path: str | os.PathLike, key: str = "network") -> dict[str, torch.Tensor]:
    """A network's state dict from ``model.pt`` (a flat state dict) or a training checkpoint (its ``key`` entry).

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    state = load_checkpoint(path)
    if key in state and isinstance(state[key], Mapping):
        return dict(state[key])
    return state


def check_weights_file(path: str | os.PathLike) -> Path:
    """Fail early, in words, when the trained weights a workflow needs are not there.

    Args:
        path: the weights file.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        CheckpointError: if ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"trained weights {path} do not exist: train first, or pass the weights file.")
    return path


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", key: str = "model"
) -> torch.nn.Module:
    """Load trained weights strictly (``weights_only=True``) into ``network`` (or its DDP ``module``).

    Args:
        network: the network.
        path: a state dict, or a checkpoint holding it under ``key`` (``model.pt`` as the bundle saves it).
        map_location: device the tensors are mapped to.
        key: the checkpoint entry holding the weights, when the file is a checkpoint dictionary.

    Returns:
        ``network``.

    Raises:
        CheckpointError: the file is missing, unreadable, or its weights do not fit the network.
    """
    path = check_weights_file(path)
    if isinstance(network, torch.jit.ScriptModule):  # a TorchScript file is its own network, weights included
        return network
    state = load_checkpoint(path, map_location=map_location)
    if key in state and isinstance(state[key], Mapping):
        state = state[key]
    target = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        card = card_path(path)
        hint = (
            f"the weights' own configuration is in {card}: run through `python -m pipeline.inference.infer` or "
            "`python -m pipeline.bundle_run`, which apply it, or pass its network_def"
            if card.is_file()
            else "use the config the weights were trained with"
        )
        raise CheckpointError(
            f"weights {path} do not fit the configured network ({str(error).splitlines()[0]}); {hint}."
        ) from error
    return network
