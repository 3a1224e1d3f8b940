"""Optimisers and learning-rate schedules by name, holding only trainable parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, ReduceLROnPlateau, SequentialLR, StepLR

__all__ = ["OPTIMIZERS", "SCHEDULERS", "WarmupPlateau", "build_optimizer", "build_scheduler", "trainable_parameters"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step", "plateau")


def trainable_parameters(model: nn.Module | Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that require gradients (frozen ones are left out of the optimiser)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    return [p for p in params if p.requires_grad]


def build_optimizer(
    model: nn.Module | Iterable[nn.Parameter],
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> Optimizer:
    """An optimiser over ``model``'s trainable parameters.

    Args:
        model: a network (its parameters with ``requires_grad``) or an iterable of parameters.
        name: ``"sgd"`` (with ``momentum``; the notes' runs used lr 0.01, 0.1 and 0.6), ``"adam"`` or ``"adamw"``.
        lr: learning rate (> 0).
        momentum: SGD momentum, in [0, 1).
        weight_decay: L2 penalty (SGD, Adam) or decoupled weight decay (AdamW), >= 0.
        nesterov: Nesterov momentum for SGD.

    Returns:
        The optimiser.

    Raises:
        ValueError: for an unknown ``name`` (listing the allowed ones), a non-positive ``lr``, a ``momentum``
            outside [0, 1), a negative ``weight_decay``, or no trainable parameter.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}.")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameter (everything is frozen).")
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class WarmupPlateau:
    """``ReduceLROnPlateau`` preceded by a linear warm-up of ``warmup_epochs`` epochs.

    ``SequentialLR`` cannot chain a plateau schedule; this steps a ``LinearLR`` for the warm-up epochs, then the
    plateau schedule with the validation metric. It has ``step(metric)``, ``get_last_lr()``, ``state_dict()`` and
    ``load_state_dict()``, which is what ``monai.handlers.LrScheduleHandler`` and checkpoints need.

    Args:
        optimizer: the optimiser.
        warmup_epochs: epochs of linear warm-up from ``warmup_start_factor · lr`` to ``lr``.
        warmup_start_factor: in (0, 1].
        plateau_kwargs: arguments of ``ReduceLROnPlateau`` (``mode``, ``factor``, ``patience``, ``min_lr``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: int,
        warmup_start_factor: float = 0.1,
        **plateau_kwargs: Any,
    ) -> None:
        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.warmup = LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=max(warmup_epochs, 1))
        self.plateau = ReduceLROnPlateau(optimizer, **plateau_kwargs)
        self.steps = 0

    def step(self, metric: float | None = None) -> None:
        """One epoch: warm-up first, then the plateau logic on ``metric``."""
        self.steps += 1
        if self.steps <= self.warmup_epochs:
            self.warmup.step()
        elif metric is not None:
            self.plateau.step(metric)

    def get_last_lr(self) -> list[float]:
        """The current learning rate of each parameter group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Warm-up and plateau state, and the step count."""
        return {"steps": self.steps, "warmup": self.warmup.state_dict(), "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.steps = int(state["steps"])
        self.warmup.load_state_dict(state["warmup"])
        self.plateau.load_state_dict(state["plateau"])


def build_scheduler(
    optimizer: Optimizer,
    name: str = "cosine",
    max_epochs: int = 100,
    warmup_epochs: int = 0,
    warmup_start_factor: float = 0.1,
    min_lr: float = 0.0,
    step_size: int = 30,
    gamma: float = 0.1,
    plateau_mode: str = "max",
    plateau_patience: int = 10,
    plateau_factor: float = 0.1,
) -> Any:
    """An epoch-level learning-rate schedule with an optional linear warm-up.

    Args:
        optimizer: the optimiser.
        name: ``"none"`` (constant), ``"cosine"`` (cosine annealing to ``min_lr`` at ``max_epochs``), ``"step"``
            (multiply by ``gamma`` every ``step_size`` epochs) or ``"plateau"`` (multiply by ``plateau_factor`` when
            the validation key metric stops improving for ``plateau_patience`` validations; it is stepped after each
            validation with the metric, so its warm-up counts validations).
        max_epochs: the run's length in epochs.
        warmup_epochs: epochs of linear warm-up from ``warmup_start_factor · lr`` (0 = none).
        warmup_start_factor: the warm-up's starting fraction of the learning rate, in (0, 1].
        min_lr: the cosine schedule's final learning rate and the plateau schedule's floor.
        step_size: epochs between step decays.
        gamma: step decay factor, in (0, 1].
        plateau_mode: ``"max"`` for metrics such as PSNR, ``"min"`` for losses.
        plateau_patience: validations without improvement before a decay.
        plateau_factor: plateau decay factor, in (0, 1).

    Returns:
        A ``torch.optim.lr_scheduler`` object (``SequentialLR`` when warming up) or :class:`WarmupPlateau`; ``None``
        for ``"none"`` without warm-up.

    Raises:
        ValueError: for an unknown ``name`` (listing the allowed ones) or out-of-range arguments.
    """
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {name!r}.")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    if not 0 <= warmup_epochs < max_epochs:
        raise ValueError(f"warmup_epochs must lie in [0, max_epochs={max_epochs}), got {warmup_epochs}.")
    if not 0 < warmup_start_factor <= 1:
        raise ValueError(f"warmup_start_factor must lie in (0, 1], got {warmup_start_factor}.")
    if key == "plateau":
        if plateau_mode not in ("max", "min"):
            raise ValueError(f"plateau_mode must be 'max' or 'min', got {plateau_mode!r}.")
        return WarmupPlateau(
            optimizer,
            warmup_epochs,
            warmup_start_factor,
            mode=plateau_mode,
            factor=plateau_factor,
            patience=plateau_patience,
            min_lr=min_lr,
        )
    if key == "none":
        main = None
    elif key == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=max_epochs - warmup_epochs, eta_min=min_lr)
    else:
        if step_size < 1 or not 0 < gamma <= 1:
            raise ValueError(f"step needs step_size >= 1 and gamma in (0, 1], got {step_size} and {gamma}.")
        main = StepLR(optimizer, step_size=step_size, gamma=gamma)
    if warmup_epochs == 0:
        return main
    warmup = LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup_epochs)
    if main is None:
        return warmup
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_epochs])
