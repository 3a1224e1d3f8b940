"""The self-supervised losses and the held-out guard of site adaptation (:mod:`pipeline.training.adapt`).

The batch builders make a training pair from noisy patches alone (:class:`BlindSpotBatch` for Noise2Self,
:class:`RecorruptBatch` for Recorrupted-to-Recorrupted), :class:`MaskedMSELoss` scores them on the voxels they
select, and :class:`HeldOutGuard`, a trainer handler, checks the network on held-out voxels, keeps the best weights
and stops a harmful or stalled run.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.transforms import RandSpatialCropSamplesd
from torch import nn

from transforms.blindspot import blind_spot_input

__all__ = [
    "BlindSpotBatch",
    "HeldOutGuard",
    "MaskedMSELoss",
    "RecorruptBatch",
    "freeze_norm_layers",
    "heldout_batches",
    "heldout_loss",
]

logger = logging.getLogger(__name__)


def _plain(value: Any) -> torch.Tensor:
    """A plain float tensor (MetaTensor's per-operation metadata handling slows the network down)."""
    tensor = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
    return tensor.float()


class MaskedMSELoss(nn.Module):
    """Mean squared error on the voxels a mask selects: ``sum(m (pred - y)^2) / sum(m)``.

    The target is ``(B, 2C, ...)``: the values ``y`` in the first ``C`` channels and the mask ``m`` in the last
    ``C`` (what :class:`BlindSpotBatch` and :class:`RecorruptBatch` build).
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss (0 when the mask is empty)."""
        channels = pred.shape[1]
        if target.shape[1] != 2 * channels:
            raise ValueError(f"target must stack values and mask ({2 * channels} channels), got {target.shape[1]}.")
        values, mask = target[:, :channels], target[:, channels:]
        return ((pred.float() - values) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


class BlindSpotBatch:
    """``prepare_batch`` for Noise2Self: mask random voxels (never held-out ones), target their noisy values.

    Args:
        mask_prob: share of voxels masked per step, in ``(0, 0.5]``.
        seed: seeds the masks (a ``torch.Generator`` on the CPU).
        image_key: batch key of the noisy patches ``(B, C, X, Y, Z)``.
        holdout_key: batch key of the held-out voxel mask (excluded from the targets); may be absent.
    """

    def __init__(
        self, mask_prob: float = 0.02, seed: int = 0, image_key: str = "image", holdout_key: str = "holdout"
    ) -> None:
        if not 0 < mask_prob <= 0.5:
            raise ValueError(f"mask_prob must be in (0, 0.5], got {mask_prob!r}.")
        self.mask_prob = float(mask_prob)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.image_key, self.holdout_key = image_key, holdout_key

    def __call__(self, batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **_: Any) -> tuple:
        """Return ``(masked input, stacked noisy values and mask)`` on ``device``."""
        image = _plain(batchdata[self.image_key])
        draw = torch.rand(image.shape, generator=self.generator) < self.mask_prob
        if self.holdout_key in batchdata:
            draw &= _plain(batchdata[self.holdout_key]).expand_as(image) <= 0
        mask = draw.to(image.dtype)
        inputs = blind_spot_input(image, mask)
        targets = torch.cat([image, mask], dim=1)
        return inputs.to(device, non_blocking=non_blocking), targets.to(device, non_blocking=non_blocking)


class RecorruptBatch:
    """``prepare_batch`` for Recorrupted-to-Recorrupted with Gaussian noise of standard deviation ``sigma``.

    Input ``y + alpha sigma z``, target ``y - sigma z / alpha`` (one ``z ~ N(0, I)`` per step), on every voxel
    except held-out ones.

    Args:
        sigma: noise standard deviation in the patches' units; ``None`` reads a per-sample ``sigma_key`` entry.
        alpha: the recorruption ratio (1 in the paper's experiments).
        seed: seeds ``z``.
        image_key: batch key of the noisy patches.
        holdout_key: batch key of the held-out voxel mask; may be absent.
        sigma_key: batch key of per-sample sigmas ``(B,)`` when ``sigma`` is ``None``.
    """

    def __init__(
        self,
        sigma: float | None = None,
        alpha: float = 1.0,
        seed: int = 0,
        image_key: str = "image",
        holdout_key: str = "holdout",
        sigma_key: str = "sigma",
    ) -> None:
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be None or positive, got {sigma!r}.")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}.")
        self.sigma, self.alpha = sigma, float(alpha)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.image_key, self.holdout_key, self.sigma_key = image_key, holdout_key, sigma_key

    def __call__(self, batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **_: Any) -> tuple:
        """Return ``(recorrupted input, stacked target and mask)`` on ``device``."""
        image = _plain(batchdata[self.image_key])
        if self.sigma is not None:
            sigma = torch.full((image.shape[0],), float(self.sigma))
        else:
            sigma = _plain(batchdata[self.sigma_key]).reshape(-1)
        sigma = sigma.reshape(-1, *([1] * (image.ndim - 1)))
        z = torch.randn(image.shape, generator=self.generator)
        inputs = image + self.alpha * sigma * z
        values = image - sigma * z / self.alpha
        keep = torch.ones_like(image)
        if self.holdout_key in batchdata:
            keep = (_plain(batchdata[self.holdout_key]).expand_as(image) <= 0).to(image.dtype)
        return inputs.to(device, non_blocking=non_blocking), torch.cat([values, keep], 1).to(
            device, non_blocking=non_blocking
        )


def heldout_loss(
    network: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    device: str | torch.device = "cpu",
    image_key: str = "image",
    holdout_key: str = "holdout",
) -> float:
    """The blind-spot loss on the held-out voxels: all of them masked at once, the prediction vs. the noisy value.

    Args:
        network: the denoiser (put in eval mode for the check, then back to its previous mode).
        batches: fixed batches holding ``image`` and ``holdout`` ``(B, 1, X, Y, Z)``.
        device: where the network runs.
        image_key: batch key of the noisy patches.
        holdout_key: batch key of the held-out masks.

    Returns:
        The mean squared error over every held-out voxel of every batch (``nan`` when there is none; ``inf`` when
        the network's output is not finite).
    """
    was_training = network.training
    network.eval()
    total, count = 0.0, 0.0
    try:
        with torch.no_grad():
            for batch in batches:
                image = _plain(batch[image_key])
                mask = (_plain(batch[holdout_key]) > 0).to(image.dtype).expand_as(image)
                pred = network(blind_spot_input(image, mask).to(device)).float().cpu()
                total += float((((pred - image) ** 2) * mask).sum())
                count += float(mask.sum())
    finally:
        network.train(was_training)
    if count == 0:
        return math.nan
    value = total / count
    return value if math.isfinite(value) else math.inf


def freeze_norm_layers(network: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Keep every normalisation layer in eval mode (running statistics fixed) in every forward pass while training.

    A forward pre-hook, since MONAI's ``SupervisedTrainer`` calls ``network.train()`` at every iteration, which undoes
    anything an ignite event handler set before it. Remove the returned handle when training ends.
    """

    def hook(module: nn.Module, _: Any) -> None:
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._NormBase):
                layer.eval()

    return network.register_forward_pre_hook(hook)


class HeldOutGuard:
    """ignite handler: checks a held-out criterion, keeps the best weights, stops a harmful or stalled run.

    A check *beats the start* when its value, and every alternative value ``measure`` returns beside it (SURE at
    other noise levels), lies below the starting model's by ``min_improvement * scale``; the best check is the lowest
    of those, and with none the starting weights stay best (``best_iteration == 0``).

    Args:
        network: the network being adapted.
        measure: the criterion of the network now, lower is better: a value, or a tuple whose first entry is the
            value and the others must improve too (:func:`heldout_sure` or :func:`heldout_loss` on fixed batches).
        check_every: steps between checks.
        patience: checks without a new best before stopping.
        harm_tolerance: stop when the criterion exceeds the starting model's by this share of ``scale``.
        max_iterations: stop after this many steps.
        scale: the unit of ``harm_tolerance`` and ``min_improvement``; ``None``: the starting model's value.
        name: the criterion's name in the log.
        min_improvement: the margin a check must beat the start by, in units of ``scale``.
    """

    def __init__(
        self,
        network: nn.Module,
        measure: Callable[[nn.Module], float],
        check_every: int = 20,
        patience: int = 3,
        harm_tolerance: float = 0.05,
        max_iterations: int = 200,
        scale: float | None = None,
        name: str = "held-out criterion",
        min_improvement: float = 0.0,
    ) -> None:
        self.network, self.measure, self.name = network, measure, name
        self.check_every, self.patience = int(check_every), int(patience)
        self.harm_tolerance, self.max_iterations = float(harm_tolerance), int(max_iterations)
        self.scale, self.min_improvement = scale, float(min_improvement)
        self.start_values: tuple[float, ...] = ()
        self.start_state = copy.deepcopy(network.state_dict())
        self.best_state = self.start_state
        self.start_loss = math.nan
        self.best_loss = math.inf
        self.best_iteration = 0
        self.history: list[tuple[int, float]] = []
        self.stalled = 0
        self.reason = ""
        self.engine: Engine | None = None

    @property
    def iterations(self) -> int:
        """Steps run so far (0 before the trainer is attached)."""
        return int(self.engine.state.iteration) if self.engine is not None else 0

    def attach(self, engine: Engine) -> None:
        """Check at the start, every ``check_every`` steps and at the end; watch every step's loss."""
        self.engine = engine
        engine.add_event_handler(Events.STARTED, self.check)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.step)

    def check(self, engine: Engine) -> None:
        """Measure the held-out loss now; keep the weights if best; terminate on harm or stall."""
        iteration = int(engine.state.iteration)
        if self.history and self.history[-1][0] == iteration:
            return
        measured = self.measure(self.network)
        values = tuple(measured) if isinstance(measured, tuple) else (measured,)
        value = values[0]
        self.history.append((iteration, value))
        if iteration == 0:
            self.start_loss = self.best_loss = value
            self.start_values = values
            if self.scale is None:
                self.scale = abs(value)
            logger.info("%s of the starting model: %s", self.name, ", ".join(f"{v:.6g}" for v in values))
            return
        logger.info(
            "step %d: %s %s (start %s)",
            iteration,
            self.name,
            ", ".join(f"{v:.6g}" for v in values),
            ", ".join(f"{v:.6g}" for v in self.start_values),
        )
        margin = self.min_improvement * self.scale
        beats = all(v < s - margin for v, s in zip(values, self.start_values, strict=True))
        if beats and value < self.best_loss:
            self.best_loss, self.best_iteration, self.stalled = value, iteration, 0
            self.best_state = copy.deepcopy(self.network.state_dict())
        else:
            self.stalled += 1
        if not value <= self.start_loss + self.harm_tolerance * self.scale:
            self.reason = (
                f"stopped at step {iteration}: the {self.name} {value:.6g} rose above the starting model's "
                f"{self.start_loss:.6g} by more than {self.harm_tolerance:.0%} of {self.scale:.6g}"
            )
            engine.terminate()
        elif self.stalled >= self.patience:
            self.reason = f"stopped at step {iteration}: no improvement in {self.patience} checks"
            engine.terminate()

    def stop_non_finite(self) -> None:
        """Record that the training loss of the current step is not finite (the run has stopped)."""
        self.reason = f"stopped at step {self.iterations}: the training loss is not finite"
        self.history.append((self.iterations, math.inf))

    def step(self, engine: Engine) -> None:
        """After each step: stop on a non-finite loss, check every ``check_every`` steps, end at the step budget."""
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        if not math.isfinite(float(torch.as_tensor(loss).detach().float().mean())):
            self.stop_non_finite()
            engine.terminate()
            return
        done = engine.state.iteration >= self.max_iterations
        if engine.state.iteration % self.check_every == 0 or done:
            self.check(engine)
        if done and not engine.should_terminate:
            self.reason = self.reason or f"ran the {self.max_iterations} steps"
            engine.terminate()


def heldout_batches(
    items: Sequence[Mapping[str, Any]], patch_size: Sequence[int], per_scan: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """Fixed patches (seeded) of every scan with their held-out masks and noise levels, batched."""
    cropper = RandSpatialCropSamplesd(
        ["image", "holdout"], roi_size=patch_size, num_samples=per_scan, random_size=False
    )
    cropper.set_random_state(seed)
    patches = [p | {"sigma": item["sigma"]} for item in items for p in cropper(item)]
    batches = []
    for start in range(0, len(patches), batch_size):
        chunk = patches[start : start + batch_size]
        batches.append({key: torch.stack([_plain(p[key]) for p in chunk]) for key in ("image", "holdout", "sigma")})
    return batches
