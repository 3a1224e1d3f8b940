"""Engine plug-ins: re-seeding, loss guard, time budget, TensorBoard, unfreezing, mixed precision, channels-last.

Everything here attaches to MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` (ignite engines) through
``attach(engine)`` or is passed to them as an inferer, so bundle configs can list them by ``_target_``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.tensorboard_logger import OptimizerParamsHandler, TensorboardLogger
from monai.engines.utils import IterationEvents
from monai.utils import convert_to_tensor
from torch import nn
from torch.optim import Optimizer

from networks import FREEZE_ORDER, freeze_until
from pipeline.errors import NonFiniteLossError
from pipeline.runtime.precision import AutocastInferer, ChannelsLastInferer
from pipeline.utils.seed import epoch_seed, reseed

__all__ = [
    "AutocastInferer",  # pipeline.runtime.precision's, importable from here as before
    "ChannelsLastInferer",
    "CopyBatchKeys",
    "EpochReseed",
    "GradualUnfreeze",
    "LearningRateLogger",
    "NonFiniteLossGuard",
    "TensorBoardSlices",
    "TimeBudget",
    "middle_slices",
]

logger = logging.getLogger(__name__)


class EpochReseed:
    """Re-seed every generator at each epoch start from ``(seed, epoch)``, so a resumed run replays exactly.

    Fires on ``EPOCH_STARTED``, before ignite creates the epoch's data iterator: the shuffling order, the
    data-loader workers' seeds and the random transforms of epoch *k* then depend only on ``(seed, k)``, not on
    what ran before, and a run resumed from the checkpoint of epoch *k − 1* draws what an uninterrupted run draws.

    Args:
        seed: the run seed.
        datasets: datasets whose MONAI random transforms are re-seeded too (needed for ``num_workers=0``; with
            workers, MONAI's ``worker_init_fn`` derives them from torch's seed). By default the trainer's
            ``data_loader.dataset``.
    """

    def __init__(self, seed: int, datasets: Sequence[Any] | None = None) -> None:
        self.seed = int(seed)
        self.datasets = datasets

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's ``EPOCH_STARTED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Re-seed for ``engine.state.epoch``."""
        datasets = self.datasets
        if datasets is None:
            loader = getattr(engine, "data_loader", None)
            datasets = [getattr(loader, "dataset", None)]
        reseed(epoch_seed(self.seed, engine.state.epoch), *datasets)


class NonFiniteLossGuard:
    """Stop training with :class:`NonFiniteLossError` when a loss is NaN or infinite, before the optimiser step.

    It listens to MONAI's ``IterationEvents.LOSS_COMPLETED``, fired after the loss and before ``backward`` and
    ``optimizer.step``: the weights are still the last finite ones, and no checkpoint of poisoned weights can be
    written (ignite's ``TerminateOnNan`` checks after the step).
    """

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's ``LOSS_COMPLETED``."""
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Raise if the current loss is not finite.

        Raises:
            NonFiniteLossError: naming the epoch, the iteration within it, the global iteration and the value.
        """
        loss = torch.as_tensor(engine.state.output["loss"]).detach()
        if not torch.isfinite(loss).all():
            state = engine.state
            within = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
            raise NonFiniteLossError(
                f"loss is {float(loss.float().mean())} at epoch {state.epoch}, iteration {within}"
                f" of {state.epoch_length} (global iteration {state.iteration}); training stopped before the "
                "optimiser step, the last checkpoint is unaffected. Lower the learning rate, check the inputs for "
                "NaN/Inf voxels, or disable mixed precision."
            )


class TimeBudget:
    """Train for a time budget: a learning rate by the clock, callbacks at checkpoint times, a stop at the budget.

    The clock counts the trainer's own time: fetching each batch, the step and the other handlers, but not what
    ``on_checkpoint`` does (e.g. evaluations), so scoring pauses it. ``clock="cpu"`` counts this process's CPU time
    (``time.process_time``, all threads: other jobs on a shared machine do not shrink the budget), ``"wall"``
    wall-clock time (``time.perf_counter``). Before each iteration a ``"cosine"`` schedule sets every parameter
    group's learning rate to ``base_lr * (1 + cos(pi * elapsed / budget)) / 2``, annealing it to 0 over the budget
    whatever the number of steps; ``"constant"`` leaves it alone. After each iteration, every checkpoint time that
    has been passed is handed, in ascending order, to ``on_checkpoint(engine, checkpoint_s)``; once the budget is
    spent the trainer is terminated (it finishes that iteration).

    Attributes ``elapsed_s`` (on ``clock``) and ``wall_s`` (wall-clock seconds of the same counted intervals) hold
    the trainer time so far; both restart at each ``engine.run``.

    Args:
        budget_s: training seconds on ``clock``, > 0.
        clock: ``"cpu"`` or ``"wall"``.
        checkpoints_s: times (seconds on ``clock``) at which to call ``on_checkpoint``; sorted here.
        on_checkpoint: ``callback(engine, checkpoint_s)``; its own time is not counted.
        lr_schedule: ``"cosine"`` or ``"constant"``.
        optimizer: the optimiser whose learning rate ``"cosine"`` sets (default the engine's ``optimizer``, as
            MONAI's ``SupervisedTrainer`` has).
        base_lr: the peak learning rate (default each group's learning rate when the run starts).

    Raises:
        ValueError: for a budget <= 0, a negative checkpoint time, an unknown clock or schedule.
    """

    def __init__(
        self,
        budget_s: float,
        clock: str = "cpu",
        checkpoints_s: Sequence[float] = (),
        on_checkpoint: Callable[[Engine, float], None] | None = None,
        lr_schedule: str = "constant",
        optimizer: Optimizer | None = None,
        base_lr: float | None = None,
    ) -> None:
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}.")
        if clock not in ("cpu", "wall"):
            raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}.")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}.")
        if any(t < 0 for t in checkpoints_s):
            raise ValueError(f"checkpoints_s must be >= 0, got {list(checkpoints_s)}.")
        self.budget_s = float(budget_s)
        self.clock = clock
        self.checkpoints_s = sorted(checkpoints_s)
        self.on_checkpoint = on_checkpoint
        self.lr_schedule = lr_schedule
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.elapsed_s = 0.0
        self.wall_s = 0.0
        self._pending: list[float] = []
        self._base_lrs: list[float] = []
        self._mark = (0.0, 0.0)

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's ``STARTED``, ``ITERATION_STARTED`` and ``ITERATION_COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._set_lr)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)

    def _now(self) -> tuple[float, float]:
        wall = time.perf_counter()
        return (time.process_time() if self.clock == "cpu" else wall), wall

    def _groups(self, engine: Engine) -> list[dict[str, Any]]:
        optimizer = self.optimizer or getattr(engine, "optimizer", None)
        if optimizer is None:
            raise ValueError("lr_schedule='cosine' needs an optimizer (given, or the engine's `optimizer`).")
        return optimizer.param_groups

    def _start(self, engine: Engine) -> None:
        self.elapsed_s, self.wall_s = 0.0, 0.0
        self._pending = list(self.checkpoints_s)
        if self.lr_schedule == "cosine":
            self._base_lrs = [group["lr"] if self.base_lr is None else self.base_lr for group in self._groups(engine)]
        self._mark = self._now()

    def _set_lr(self, engine: Engine) -> None:
        if self.lr_schedule != "cosine":
            return
        factor = 0.5 * (1.0 + math.cos(math.pi * min(self.elapsed_s / self.budget_s, 1.0)))
        for group, base in zip(self._groups(engine), self._base_lrs, strict=False):
            group["lr"] = base * factor

    def _count(self, engine: Engine) -> None:
        now, wall = self._now()
        self.elapsed_s += now - self._mark[0]
        self.wall_s += wall - self._mark[1]
        while self._pending and self.elapsed_s >= self._pending[0]:
            checkpoint = self._pending.pop(0)
            if self.on_checkpoint is not None:
                self.on_checkpoint(engine, checkpoint)
        if self.elapsed_s >= self.budget_s:
            engine.terminate()
        self._mark = self._now()


class CopyBatchKeys:
    """Copy batch keys (e.g. the brain ``mask``) into the engine output, where metrics can read them.

    Runs on ``IterationEvents.FORWARD_COMPLETED``, while the output is still a batched dict, so it is decollated
    with the rest.

    Args:
        keys: batch keys to copy; missing ones are skipped.
    """

    def __init__(self, keys: Sequence[str] = ("mask",)) -> None:
        self.keys = tuple(keys)

    def attach(self, engine: Engine) -> None:
        """Register on ``FORWARD_COMPLETED``."""
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Copy the keys present in ``engine.state.batch``."""
        for key in self.keys:
            if isinstance(engine.state.batch, Mapping) and key in engine.state.batch:
                value = engine.state.batch[key]
                if isinstance(value, torch.Tensor):
                    value = value.to(engine.state.device)
                engine.state.output[key] = value


def middle_slices(volume: torch.Tensor) -> dict[str, np.ndarray]:
    """Middle axial, coronal and sagittal slices of a (C, H, W, D) or (H, W, D) volume (first channel).

    Axes are taken as RAS (H = left-right, W = posterior-anterior, D = inferior-superior), the orientation the
    loaders produce; slices are transposed and flipped so the head is up in the images.

    Returns:
        ``{"axial", "coronal", "sagittal"}`` -> 2-D float arrays.
    """
    array = convert_to_tensor(volume, track_meta=False).detach().float().cpu().numpy()
    if array.ndim == 4:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a (C, H, W, D) or (H, W, D) volume, got shape {array.shape}.")
    x, y, z = (s // 2 for s in array.shape)
    return {
        "axial": np.flipud(array[:, :, z].T),
        "coronal": np.flipud(array[:, y, :].T),
        "sagittal": np.flipud(array[x, :, :].T),
    }


class TensorBoardSlices:
    """Write each validation's middle slices of noisy / denoised / clean / |error| to TensorBoard.

    Attach to the evaluator: the first item of the first batch is kept, and at the end of the validation one image
    per plane is written (tags ``{tag_prefix}/axial``, ``/coronal``, ``/sagittal``), each a row of four panels:
    noisy input, network output, clean target and absolute error, clipped to ``[0, data_range]``.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        step_transform: engine -> global step (e.g. the trainer's epoch); default the engine's epoch.
        data_range: display range of the intensities.
        tag_prefix: tag prefix.
        keys: output keys of the noisy input, prediction and target.
    """

    def __init__(
        self,
        summary_writer: Any,
        step_transform: Callable[[Engine], int] | None = None,
        data_range: float = 1.0,
        tag_prefix: str = "val",
        keys: tuple[str, str, str] = ("image", "pred", "label"),
    ) -> None:
        self.writer = summary_writer
        self.step_transform = step_transform
        self.data_range = float(data_range)
        self.tag_prefix = tag_prefix
        self.keys = keys
        self._item: dict[str, torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator's ``EPOCH_STARTED``, ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._keep)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._item = None

    def _keep(self, engine: Engine) -> None:
        if self._item is not None:
            return
        output = engine.state.output
        first = output[0] if isinstance(output, (list, tuple)) else {k: output[k][0] for k in self.keys}
        self._item = {k: convert_to_tensor(first[k], track_meta=False).detach().float().cpu() for k in self.keys}

    def _write(self, engine: Engine) -> None:
        if self._item is None:
            return
        step = self.step_transform(engine) if self.step_transform else engine.state.epoch
        noisy, pred, clean = (self._item[k] for k in self.keys)
        panels = [noisy, pred, clean, (pred - clean).abs()]
        slices = [middle_slices(p) for p in panels]
        for plane in ("axial", "coronal", "sagittal"):
            row = np.concatenate([s[plane] for s in slices], axis=1)
            row = np.clip(row / self.data_range, 0.0, 1.0)
            self.writer.add_image(f"{self.tag_prefix}/{plane}", row[None], global_step=step, dataformats="CHW")
        self.writer.flush()


class _RunWriterLogger(TensorboardLogger):
    """ignite's ``TensorboardLogger`` over the run's own ``SummaryWriter``.

    ignite's constructor always opens a new writer (a second event file in the run folder); this one shares the
    writer the run already has, and leaves closing it to its owner.
    """

    def __init__(self, summary_writer: Any) -> None:
        self.writer = summary_writer

    def close(self) -> None:
        """Nothing to close: the writer belongs to the run."""


class LearningRateLogger:
    """Write the learning rate of each parameter group to TensorBoard at every epoch end.

    ignite's own ``OptimizerParamsHandler``, attached through a ``TensorboardLogger`` that writes into the run's
    ``SummaryWriter``, in a form bundle configs can list among a trainer's handlers (``attach(engine)``).

    Tags: ``train/lr/group_0``, ``train/lr/group_1``... (ignite's names), stepped by the epoch.

    Args:
        summary_writer: a ``SummaryWriter``.
        optimizer: the optimiser.
    """

    def __init__(self, summary_writer: Any, optimizer: Optimizer) -> None:
        self.logger = _RunWriterLogger(summary_writer)
        self.handler = OptimizerParamsHandler(optimizer, param_name="lr", tag="train")

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's ``EPOCH_COMPLETED``."""
        self.logger.attach(engine, self.handler, Events.EPOCH_COMPLETED)


class GradualUnfreeze:
    """Unfreeze a ResNet encoder stage by stage at given epochs, adding the newly trainable parameters to the optimiser.

    ``schedule={3: "layer4", 6: "layer3"}`` calls ``networks.freeze_until(model, "layer4")`` at the start of epoch 3
    (``conv1`` to ``layer3`` stay frozen, ``layer4`` and ``fc`` train) and ``freeze_until(model, "layer3")`` at the
    start of epoch 6. Frozen batch norms keep their running statistics (``freeze_until`` makes them
    ``FrozenBatchNorm3d``, which ignores ``train()``). Each step adds one parameter group holding exactly the
    parameters that became trainable (learning rate ``lr``, default the first group's), so the optimiser never
    holds a frozen parameter. Learning-rate schedules built earlier keep scheduling the groups they were built
    with; the added groups keep their own rate.

    Put this object in the checkpoint's ``save_dict`` before the optimiser (``extra_state`` of
    :func:`pipeline.training.engines.run_training`): loading it re-applies the steps, so the optimiser state then
    loads into
    matching groups.

    Args:
        model: a ``monai.networks.nets.ResNet`` classifier or a ``ResUnet3D``.
        optimizer: its optimiser.
        schedule: epoch (1-based) -> stage name for ``freeze_until`` (``conv1, bn1, layer1..layer4, fc``).
        lr: learning rate of the added groups.

    Raises:
        ValueError: for an epoch < 1 or a stage name outside ``networks.FREEZE_ORDER``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        schedule: Mapping[int, str],
        lr: float | None = None,
    ) -> None:
        self.schedule: dict[int, str] = {}
        for epoch, name in schedule.items():
            if int(epoch) < 1:
                raise ValueError(f"schedule epochs must be >= 1, got {epoch}.")
            if name not in FREEZE_ORDER:
                raise ValueError(f"schedule stage must be one of {list(FREEZE_ORDER)}, got {name!r}.")
            self.schedule[int(epoch)] = name
        self.model = model
        self.optimizer = optimizer
        self.lr = lr
        self.applied: list[int] = []

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's ``EPOCH_STARTED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Apply the scheduled steps up to this epoch."""
        self.apply_until(engine.state.epoch)

    def apply_until(self, epoch: int) -> None:
        """Apply, in order, every scheduled step at or before ``epoch`` not applied yet."""
        for at in sorted(self.schedule):
            if at <= epoch and at not in self.applied:
                self._apply(at)

    def _apply(self, at: int) -> None:
        freeze_until(self.model, self.schedule[at])
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        new = [p for p in self.model.parameters() if p.requires_grad and id(p) not in held]
        if new:
            lr = self.lr if self.lr is not None else self.optimizer.param_groups[0]["lr"]
            self.optimizer.add_param_group({"params": new, "lr": lr})
        self.applied.append(at)
        logger.info(
            "epoch %d: training from %s on (%d parameter tensors added to the optimiser)",
            at,
            self.schedule[at],
            len(new),
        )

    def state_dict(self) -> dict[str, Any]:
        """The epochs whose steps were applied, in order."""
        return {"applied": list(self.applied)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-apply the recorded steps in order (before the optimiser state is loaded)."""
        for at in state.get("applied", []):
            if at not in self.applied:
                self._apply(int(at))
