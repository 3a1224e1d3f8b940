"""Self-supervised adaptation of a trained denoiser to a folder of the user's own noisy scans, with a guard.

No clean reference exists at a new site, so the denoiser is fine-tuned with a loss computed from the noisy scans
alone (MONAI's ``SupervisedTrainer`` with a ``prepare_batch`` that builds input and target from the noisy patch):

* ``loss="n2s"`` (default): Noise2Self blind-spot training. Each step masks a random ``mask_prob`` of the patch's
  voxels, replaces them by the mean of their unmasked neighbours (:func:`transforms.blindspot.blind_spot_input`), and
  the loss is the squared error between the prediction and the noisy value *on the masked voxels only*. Works for any
  noise that is independent between voxels (Gaussian, Rician, Poisson), at any unknown level.
* ``loss="r2r"``: Recorrupted-to-Recorrupted (Pang et al., CVPR 2021) for Gaussian noise of known ``sigma`` (0-255
  scale of each scan's robust maximum; ``None`` estimates it per scan with :mod:`transforms.noise_level`): input
  ``y + sigma z``, target ``y - sigma z`` for one fresh ``z ~ N(0, I)``; its expected loss is a supervised loss.

**The guard.** A fixed share (``holdout_fraction``) of every scan's voxels is held out
(:class:`transforms.blindspot.HoldoutMaskd`): training never uses them as targets. Before the first step and every
``check_every`` steps, the blind-spot loss on those voxels (all masked at once, on fixed patches) is measured; it
estimates the denoiser's error on this folder plus a constant (the noise variance), so it ranks models as a supervised
check would. Training stops early when that loss rises ``harm_tolerance`` above the starting model's, when it has not
improved for ``patience`` checks, or when the training loss turns non-finite. The weights of the best check are saved
only when they beat the starting model by ``min_improvement`` (relative); otherwise nothing is saved, the network is
restored to its starting weights and :class:`AdaptationResult` says why (``raise_if_refused`` turns that into an
error). ``adaptation.json`` records the checks, the decision and each scan's estimated noise level.

The bundle's ``adapt.yaml`` runs :func:`adapt_denoiser` on ``dataset_dir`` with the model of ``ckpt_path``; the
adapted weights (``adapted_path``) load like ``model.pt`` in ``inference.yaml`` (``--ckpt_path``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, RandSpatialCropSamplesd, SpatialPadd
from torch import nn

from pipeline.utils.files import atomic_path
from transforms.blindspot import HoldoutMaskd, blind_spot_input
from transforms.noise_level import NOISE_LEVEL_KEY, EstimateNoiseLeveld

__all__ = [
    "LOSSES",
    "AdaptationRefused",
    "AdaptationResult",
    "BlindSpotBatch",
    "HeldOutGuard",
    "MaskedMSELoss",
    "RecorruptBatch",
    "adapt_denoiser",
    "heldout_loss",
]

logger = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("n2s", "r2r")


def _plain(value: Any) -> torch.Tensor:
    """A plain float tensor (MetaTensor's per-operation metadata handling slows the network down)."""
    tensor = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
    return tensor.float()


class AdaptationRefused(RuntimeError):
    """The adapted weights did not beat the starting model on the held-out check, so none were saved."""


@dataclasses.dataclass
class AdaptationResult:
    """What an adaptation did.

    Attributes:
        accepted: the adapted weights beat the starting model and were saved.
        reason: why training stopped and why the weights were (not) saved, in words.
        start_loss: held-out blind-spot loss of the starting model.
        best_loss: the lowest held-out loss seen (the starting model's when nothing improved).
        best_iteration: the step it was seen at (0: the starting model).
        iterations: steps run.
        history: ``(step, held-out loss)`` of every check, the start included.
        saved: the file written, ``None`` when refused.
        noise_levels: each scan's estimated noise level on the 0-255 scale of its robust maximum.
    """

    accepted: bool
    reason: str
    start_loss: float
    best_loss: float
    best_iteration: int
    iterations: int
    history: list[tuple[int, float]]
    saved: str | None = None
    noise_levels: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def improvement(self) -> float:
        """Relative drop of the held-out loss, ``1 - best / start`` (negative when it only got worse)."""
        return 1.0 - self.best_loss / self.start_loss if self.start_loss > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**dataclasses.asdict(self), "improvement": self.improvement}

    def raise_if_refused(self) -> AdaptationResult:
        """Return ``self`` when accepted.

        Raises:
            AdaptationRefused: when the adapted weights were refused.
        """
        if not self.accepted:
            raise AdaptationRefused(self.reason)
        return self


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


def _freeze_norm(network: nn.Module) -> Callable[[Any], None]:
    """A handler that keeps every normalisation layer in eval mode (running statistics fixed) while training."""

    def handler(_: Any = None) -> None:
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()

    return handler


class HeldOutGuard:
    """ignite handler: checks the held-out blind-spot loss, keeps the best weights, stops a harmful or stalled run.

    Args:
        network: the network being adapted.
        batches: the fixed held-out batches (:func:`heldout_loss`).
        check_every: steps between checks.
        patience: checks without improvement before stopping.
        harm_tolerance: stop when the loss exceeds the starting model's by this relative margin.
        max_iterations: stop after this many steps.
        device: where the network runs.
    """

    def __init__(
        self,
        network: nn.Module,
        batches: Sequence[Mapping[str, torch.Tensor]],
        check_every: int = 20,
        patience: int = 3,
        harm_tolerance: float = 0.05,
        max_iterations: int = 200,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network, self.batches, self.device = network, batches, device
        self.check_every, self.patience = int(check_every), int(patience)
        self.harm_tolerance, self.max_iterations = float(harm_tolerance), int(max_iterations)
        self.start_state = copy.deepcopy(network.state_dict())
        self.best_state = self.start_state
        self.start_loss = math.nan
        self.best_loss = math.inf
        self.best_iteration = 0
        self.history: list[tuple[int, float]] = []
        self.stalled = 0
        self.reason = ""

    def attach(self, engine: Engine) -> None:
        """Check at the start, every ``check_every`` steps and at the end; watch every step's loss."""
        engine.add_event_handler(Events.STARTED, self.check)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.step)

    def check(self, engine: Engine) -> None:
        """Measure the held-out loss now; keep the weights if best; terminate on harm or stall."""
        iteration = int(engine.state.iteration)
        if self.history and self.history[-1][0] == iteration:
            return
        value = heldout_loss(self.network, self.batches, self.device)
        self.history.append((iteration, value))
        if iteration == 0:
            self.start_loss = self.best_loss = value
            logger.info("held-out blind-spot loss of the starting model: %.6g", value)
            return
        logger.info("step %d: held-out blind-spot loss %.6g (start %.6g)", iteration, value, self.start_loss)
        if value < self.best_loss:
            self.best_loss, self.best_iteration, self.stalled = value, iteration, 0
            self.best_state = copy.deepcopy(self.network.state_dict())
        else:
            self.stalled += 1
        if not value <= self.start_loss * (1.0 + self.harm_tolerance):
            self.reason = (
                f"stopped at step {iteration}: the held-out loss {value:.6g} rose above the starting model's "
                f"{self.start_loss:.6g} by more than {self.harm_tolerance:.0%}"
            )
            engine.terminate()
        elif self.stalled >= self.patience:
            self.reason = f"stopped at step {iteration}: no improvement in {self.patience} checks"
            engine.terminate()

    def step(self, engine: Engine) -> None:
        """After each step: stop on a non-finite loss, check every ``check_every`` steps, end at the step budget."""
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        if not math.isfinite(float(torch.as_tensor(loss).detach().float().mean())):
            self.reason = f"stopped at step {engine.state.iteration}: the training loss is not finite"
            self.history.append((int(engine.state.iteration), math.inf))
            engine.terminate()
            return
        done = engine.state.iteration >= self.max_iterations
        if engine.state.iteration % self.check_every == 0 or done:
            self.check(engine)
        if done and not engine.should_terminate:
            self.reason = self.reason or f"ran the {self.max_iterations} steps"
            engine.terminate()


def _heldout_batches(
    items: Sequence[Mapping[str, Any]], patch_size: Sequence[int], per_scan: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """Fixed patches (seeded) of every scan with their held-out masks, batched."""
    cropper = RandSpatialCropSamplesd(
        ["image", "holdout"], roi_size=patch_size, num_samples=per_scan, random_size=False
    )
    cropper.set_random_state(seed)
    patches = [p for item in items for p in cropper(item)]
    batches = []
    for start in range(0, len(patches), batch_size):
        chunk = patches[start : start + batch_size]
        batches.append({key: torch.stack([_plain(p[key]) for p in chunk]) for key in ("image", "holdout")})
    return batches


def adapt_denoiser(
    network: nn.Module,
    items: Sequence[Mapping[str, Any]],
    preprocessing: Callable[[dict], dict],
    output_path: str | os.PathLike,
    *,
    patch_size: Sequence[int] | int = 32,
    loss: str = "n2s",
    sigma: float | None = None,
    iterations: int = 200,
    lr: float = 1e-4,
    batch_size: int = 4,
    num_samples: int = 4,
    mask_prob: float = 0.02,
    holdout_fraction: float = 0.05,
    heldout_per_scan: int = 4,
    check_every: int = 20,
    patience: int = 3,
    min_improvement: float = 0.0,
    harm_tolerance: float = 0.05,
    freeze_norm: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    report_path: str | os.PathLike | None = None,
) -> AdaptationResult:
    """Fine-tune ``network`` on noisy scans without clean references, saving the weights only if they help.

    See the module docstring for the losses and the guard.

    Args:
        network: the trained denoiser (weights loaded), modified in place (restored when refused).
        items: ``{"image": path, "subject": id}`` items of the folder (:func:`pipeline.inference.infer.collect_scans`).
        preprocessing: the bundle's deterministic preprocessing of ``image`` (load, orient, scale), as at inference.
        output_path: where the adapted network's ``state_dict`` goes (written atomically, only when accepted).
        patch_size: training and check patch (voxels).
        loss: ``"n2s"`` (blind-spot) or ``"r2r"`` (Gaussian, known or estimated ``sigma``).
        sigma: for ``"r2r"``: noise level on the 0-255 scale of each scan's robust maximum; ``None`` estimates it.
        iterations: training steps at most.
        lr: Adam's learning rate.
        batch_size: patches per step.
        num_samples: patches cut from a scan each time it is read (must divide ``batch_size``).
        mask_prob: share of voxels masked per step (``"n2s"``).
        holdout_fraction: share of every scan's voxels held out for the guard.
        heldout_per_scan: fixed check patches per scan.
        check_every: steps between held-out checks.
        patience: checks without improvement before stopping.
        min_improvement: relative drop of the held-out loss required to save (0: any improvement).
        harm_tolerance: stop when the held-out loss exceeds the start's by this relative margin.
        freeze_norm: keep normalisation layers' running statistics fixed (small batches of one site would
            otherwise overwrite them).
        seed: seeds the patches, masks, noise and hold-out.
        device: where the network trains.
        report_path: write the result as JSON here (``None``: no report).

    Returns:
        The :class:`AdaptationResult`.

    Raises:
        ValueError: an argument out of range, or no scan.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    if iterations < 1 or check_every < 1 or patience < 1 or heldout_per_scan < 1:
        raise ValueError("iterations, check_every, patience and heldout_per_scan must be >= 1.")
    if num_samples < 1 or batch_size % num_samples:
        raise ValueError(f"num_samples must be >= 1 and divide batch_size ({batch_size}), got {num_samples}.")
    if not 0 < holdout_fraction <= 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5], got {holdout_fraction!r}.")
    if not 0 <= min_improvement < 1 or not harm_tolerance >= 0 or not lr > 0:
        raise ValueError("min_improvement must be in [0, 1), harm_tolerance >= 0 and lr > 0.")
    if not items:
        raise ValueError("no scan to adapt to.")
    patch = (int(patch_size),) * 3 if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    device = torch.device(device)
    estimate = EstimateNoiseLeveld("image", log=True)
    deterministic = Compose(
        [
            preprocessing,
            estimate,
            HoldoutMaskd("image", "holdout", fraction=holdout_fraction, seed=seed, id_key="subject"),
            SpatialPadd(["image", "holdout"], spatial_size=patch),
        ]
    )
    prepared = []
    for item in items:
        data = deterministic(dict(item))
        level = float(data["image"].meta.get(NOISE_LEVEL_KEY, math.nan))
        data["sigma"] = torch.tensor((sigma if sigma is not None else level) / 255.0)
        prepared.append({k: data[k] for k in ("image", "holdout", "sigma", "subject") if k in data})
    levels = {str(p.get("subject", i)): float(p["sigma"]) * 255.0 for i, p in enumerate(prepared)}
    if sigma is not None:
        levels = {k: float(sigma) for k in levels}
    check_batches = _heldout_batches(prepared, patch, heldout_per_scan, batch_size, seed)

    crops = RandSpatialCropSamplesd(["image", "holdout"], roi_size=patch, num_samples=num_samples, random_size=False)
    dataset = CacheDataset(prepared, transform=Compose([crops]).set_random_state(seed), cache_rate=0.0, progress=False)
    loader = DataLoader(
        dataset, batch_size=batch_size // num_samples, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    prepare = BlindSpotBatch(mask_prob, seed) if loss == "n2s" else RecorruptBatch(None, seed=seed)
    network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    guard = HeldOutGuard(network, check_batches, check_every, patience, harm_tolerance, iterations, device)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max(1, math.ceil(iterations / max(1, len(loader)))),
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=MaskedMSELoss(),
        prepare_batch=prepare,
        decollate=False,
        train_handlers=[guard],
    )
    if freeze_norm:
        trainer.add_event_handler(Events.EPOCH_STARTED, _freeze_norm(network))
    trainer.run()
    iterations_run = int(trainer.state.iteration)
    if guard.history[-1][0] != iterations_run and math.isfinite(guard.history[-1][1]):
        guard.check(trainer)
    start, best = guard.start_loss, guard.best_loss
    accepted = math.isfinite(best) and best < start * (1.0 - min_improvement)
    saved = None
    if accepted:
        network.load_state_dict(guard.best_state)
        output_path = Path(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output_path) as tmp:
            torch.save(network.state_dict(), tmp)
        saved = os.fspath(output_path)
        decision = f"saved the weights of step {guard.best_iteration} to {saved}"
    else:
        network.load_state_dict(guard.start_state)
        decision = (
            f"refused: the best held-out loss {best:.6g} does not beat the starting model's {start:.6g}"
            f"{f' by {min_improvement:.0%}' if min_improvement else ''}; nothing saved, the starting weights kept"
        )
    reason = f"{guard.reason or f'ran {iterations_run} steps'}; {decision}"
    result = AdaptationResult(
        accepted=accepted,
        reason=reason,
        start_loss=start,
        best_loss=best,
        best_iteration=guard.best_iteration,
        iterations=iterations_run,
        history=guard.history,
        saved=saved,
        noise_levels=levels,
    )
    (logger.info if accepted else logger.warning)("adaptation (%s): %s", loss, reason)
    if report_path is not None:
        report = {"loss": loss, "sigma": sigma, "lr": lr, "seed": seed, **result.to_dict()}
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(report_path)) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    return result
