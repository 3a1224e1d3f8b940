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
* ``loss="sure"``: Stein's unbiased risk estimate of the network's own output (:mod:`pipeline.evaluation.sure`), for
  Gaussian noise of known or estimated ``sigma``; its expectation is the supervised squared error.

**The guard.** A fixed share (``holdout_fraction``) of every scan's voxels is held out
(:class:`transforms.blindspot.HoldoutMaskd`): training never uses them as targets. Before the first step and every
``check_every`` steps, the ``criterion`` is measured on those voxels of fixed patches:

* ``"sure"`` (default): SURE of the network run as inference runs it, on the full noisy input
  (:func:`pipeline.evaluation.sure.heldout_sure`, with each scan's ``sigma``): it estimates the squared error against
  the clean scan, so a drop is a PSNR gain. It assumes Gaussian-like noise (Rician in the head is close).
* ``"blindspot"``: the blind-spot loss (all held-out voxels masked at once, :func:`heldout_loss`), for any
  voxel-independent noise. It scores the network on a masked input inference never gives it, and on real heads it
  accepted adaptations that lowered PSNR by up to 3.75 dB; use it only where SURE's noise model does not hold.

Training stops early when the criterion rises ``harm_tolerance`` (relative to the noise variance ``sigma^2`` for SURE,
to the starting value for the blind-spot loss) above the starting model's, when it has not improved for ``patience``
checks, or when the training loss turns non-finite. The weights of the best check are saved only when they beat the
starting model by ``min_improvement`` (same scale), for SURE at every noise level of ``sigma_band`` (the blind sigma
estimate's uncertainty, since a sigma too large favours smoothing: without the band, SURE accepted an adaptation that
lost 0.8 dB on cohort volumes with 5/255 noise, whose sigma was estimated 31 % high); otherwise nothing is saved, the
network is restored to its starting weights and :class:`AdaptationResult` says why (``raise_if_refused`` turns that
into an error). ``adaptation.json`` records the checks, the decision and each scan's estimated noise level.

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

from pipeline.evaluation.sure import SureBatch, SureLoss, heldout_sure
from pipeline.utils.files import atomic_path
from transforms.blindspot import HoldoutMaskd, blind_spot_input
from transforms.noise_level import NOISE_LEVEL_KEY, EstimateNoiseLeveld

__all__ = [
    "CRITERIA",
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

LOSSES: tuple[str, ...] = ("n2s", "r2r", "sure")
CRITERIA: tuple[str, ...] = ("sure", "blindspot")


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
        start_loss: the guard's criterion for the starting model (SURE: its estimated mean squared error).
        best_loss: the lowest value seen (the starting model's when nothing improved).
        best_iteration: the step it was seen at (0: the starting model).
        iterations: steps run.
        history: ``(step, criterion)`` of every check, the start included.
        saved: the file written, ``None`` when refused.
        noise_levels: each scan's estimated noise level on the 0-255 scale of its robust maximum.
        criterion: what the guard measured (:data:`CRITERIA`).
        scale: the criterion's unit for ``harm_tolerance``/``min_improvement`` (SURE: the mean noise variance).
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
    criterion: str = "blindspot"
    scale: float | None = None

    @property
    def improvement(self) -> float:
        """Drop of the criterion in units of ``scale`` (the start's value when none), negative when it got worse."""
        scale = self.scale if self.scale is not None else self.start_loss
        return (self.start_loss - self.best_loss) / scale if scale and scale > 0 else 0.0

    @property
    def psnr_gain_db(self) -> float | None:
        """SURE only: the estimated PSNR gain of the saved weights, ``10 log10(start / best)`` (``None`` otherwise)."""
        if self.criterion != "sure" or not (self.start_loss > 0 and self.best_loss > 0):
            return None
        return 10.0 * math.log10(self.start_loss / self.best_loss)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**dataclasses.asdict(self), "improvement": self.improvement, "psnr_gain_db": self.psnr_gain_db}

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


def _freeze_norm(network: nn.Module) -> torch.utils.hooks.RemovableHandle:
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

    def attach(self, engine: Engine) -> None:
        """Check at the start, every ``check_every`` steps and at the end; watch every step's loss."""
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


def adapt_denoiser(
    network: nn.Module,
    items: Sequence[Mapping[str, Any]],
    preprocessing: Callable[[dict], dict],
    output_path: str | os.PathLike,
    *,
    patch_size: Sequence[int] | int = 32,
    loss: str = "n2s",
    criterion: str = "sure",
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
    sigma_band: Sequence[float] = (0.75, 1.25),
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
        loss: ``"n2s"`` (blind-spot), ``"r2r"`` or ``"sure"`` (Gaussian, known or estimated ``sigma``).
        criterion: the guard's check, ``"sure"`` (the network's estimated squared error) or ``"blindspot"``.
        sigma: for ``"r2r"``, ``"sure"`` and the SURE check: noise level on the 0-255 scale of each scan's robust
            maximum; ``None`` estimates it per scan.
        iterations: training steps at most.
        lr: Adam's learning rate.
        batch_size: patches per step.
        num_samples: patches cut from a scan each time it is read (must divide ``batch_size``).
        mask_prob: share of voxels masked per step (``"n2s"``).
        holdout_fraction: share of every scan's voxels held out for the guard.
        heldout_per_scan: fixed check patches per scan.
        check_every: steps between held-out checks.
        patience: checks without improvement before stopping.
        min_improvement: drop of the criterion required to save, as a share of its scale (SURE: the mean noise
            variance; blind-spot: the starting value); 0: any improvement.
        harm_tolerance: stop when the criterion exceeds the start's by this share of the same scale.
        sigma_band: SURE check: factors on each scan's sigma (its estimate's uncertainty) at which a gain must hold
            too (:mod:`pipeline.evaluation.sure`); ``(1,)`` trusts a known sigma.
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
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    if iterations < 1 or check_every < 1 or patience < 1 or heldout_per_scan < 1:
        raise ValueError("iterations, check_every, patience and heldout_per_scan must be >= 1.")
    if num_samples < 1 or batch_size % num_samples:
        raise ValueError(f"num_samples must be >= 1 and divide batch_size ({batch_size}), got {num_samples}.")
    if not 0 < holdout_fraction <= 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5], got {holdout_fraction!r}.")
    if not sigma_band or not all(k > 0 for k in sigma_band):
        raise ValueError(f"sigma_band must hold positive factors, got {sigma_band!r}.")
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
    needs_sigma = loss in ("r2r", "sure") or criterion == "sure"
    prepared, magnitude = [], []
    for item in items:
        data = deterministic(dict(item))
        if needs_sigma and float(data["image"].min()) >= 0:
            magnitude.append(str(item.get("image")))
        level = float(sigma if sigma is not None else data["image"].meta.get(NOISE_LEVEL_KEY, math.nan))
        if needs_sigma and not level > 0:
            raise ValueError(
                f"{item.get('image')}: the noise level is {level!r}, but the {loss!r} loss and the {criterion!r} check "
                "need a positive one; pass sigma (adapt_sigma), or use loss='n2s' with criterion='blindspot'."
            )
        data["sigma"] = torch.tensor(level / 255.0)
        prepared.append({k: data[k] for k in ("image", "holdout", "sigma", "subject") if k in data})
    if magnitude:
        gaussian = [f"the {loss!r} loss"] if loss in ("r2r", "sure") else []
        if criterion == "sure":
            gaussian.append("the SURE check")
        logger.warning(
            "%d of %d scans have no negative voxel (%s): magnitude data, whose noise is Rician, not the additive "
            "Gaussian noise that %s assume%s where the signal is low; on cohort volumes with Rician noise of 25/255 "
            "the SURE loss lost 0.3-0.7 dB over the volume and its check did not see it (benchmarks.adaptation)",
            len(magnitude),
            len(items),
            ", ".join(magnitude[:3]) + (", ..." if len(magnitude) > 3 else ""),
            " and ".join(gaussian),
            "" if len(gaussian) > 1 else "s",
        )
    levels = {str(p.get("subject", i)): float(p["sigma"]) * 255.0 for i, p in enumerate(prepared)}
    check_batches = _heldout_batches(prepared, patch, heldout_per_scan, batch_size, seed)

    crops = RandSpatialCropSamplesd(["image", "holdout"], roi_size=patch, num_samples=num_samples, random_size=False)
    dataset = CacheDataset(prepared, transform=Compose([crops]).set_random_state(seed), cache_rate=0.0, progress=False)
    loader = DataLoader(
        dataset, batch_size=batch_size // num_samples, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    prepare = {
        "n2s": lambda: BlindSpotBatch(mask_prob, seed),
        "r2r": lambda: RecorruptBatch(None, seed=seed),
        "sure": lambda: SureBatch(seed),
    }[loss]()
    network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    if criterion == "sure":
        variance = float(torch.cat([b["sigma"].reshape(-1) for b in check_batches]).pow(2).mean())
        scales = tuple(float(k) for k in sigma_band if k != 1.0)
        guard = HeldOutGuard(
            network,
            lambda net: heldout_sure(net, check_batches, device, seed, sigma_scales=scales),
            check_every,
            patience,
            harm_tolerance,
            iterations,
            scale=variance,
            name=f"held-out SURE (estimated squared error; sigma x {', '.join(f'{k:g}' for k in (1.0, *scales))})",
            min_improvement=min_improvement,
        )
    else:
        guard = HeldOutGuard(
            network,
            lambda net: heldout_loss(net, check_batches, device),
            check_every,
            patience,
            harm_tolerance,
            iterations,
            name="held-out blind-spot loss",
            min_improvement=min_improvement,
        )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max(1, math.ceil(iterations / max(1, len(loader)))),
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=SureLoss() if loss == "sure" else MaskedMSELoss(),
        prepare_batch=prepare,
        decollate=False,
        train_handlers=[guard],
    )
    frozen = _freeze_norm(network) if freeze_norm else None
    try:
        trainer.run()
    finally:
        if frozen is not None:
            frozen.remove()
    iterations_run = int(trainer.state.iteration)
    if guard.history[-1][0] != iterations_run and math.isfinite(guard.history[-1][1]):
        guard.check(trainer)
    start, best = guard.start_loss, guard.best_loss
    scale = guard.scale if guard.scale is not None else abs(start)
    accepted = guard.best_iteration > 0 and math.isfinite(best)
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
            f"refused: no check's {guard.name} beat the starting model's ({start:.6g})"
            f"{f' by {min_improvement:.0%} of {scale:.6g}' if min_improvement else ''} at every noise level checked; "
            "nothing saved, the starting weights kept"
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
        criterion=criterion,
        scale=scale,
    )
    (logger.info if accepted else logger.warning)("adaptation (%s): %s", loss, reason)
    if report_path is not None:
        report = {"loss": loss, "sigma": sigma, "lr": lr, "seed": seed, **result.to_dict()}
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(report_path)) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    return result
