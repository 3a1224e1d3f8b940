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

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.inferers import SimpleInferer
from monai.transforms import Compose, RandSpatialCropSamplesd, SpatialPadd
from torch import nn

from pipeline.errors import NonFiniteLossError
from pipeline.evaluation.sure import SureBatch, SureLoss, heldout_sure
from pipeline.runtime.precision import precision_settings
from pipeline.training.adapt_guard import (
    BlindSpotBatch,
    HeldOutGuard,
    MaskedMSELoss,
    RecorruptBatch,
    freeze_norm_layers,
    heldout_batches,
    heldout_loss,
)
from pipeline.training.engines import resolve_device
from pipeline.training.fit import FitContext, FitSettings, Task, fit, fit_settings
from pipeline.utils.files import atomic_path
from transforms.blindspot import HoldoutMaskd
from transforms.noise_level import NOISE_LEVEL_KEY, EstimateNoiseLeveld

__all__ = [
    "ADAPT_DEFAULTS",
    "ADAPT_DERIVED",
    "CRITERIA",
    "LOSSES",
    "AdaptationRefused",
    "AdaptationResult",
    "BlindSpotBatch",
    "HeldOutGuard",
    "MaskedMSELoss",
    "RecorruptBatch",
    "adapt_denoiser",
    "adapt_task",
    "heldout_loss",
]

logger = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("n2s", "r2r", "sure")
CRITERIA: tuple[str, ...] = ("sure", "blindspot")


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


#: The :class:`~pipeline.training.fit.FitSettings` defaults of adaptation where they differ from the shared ones
#: (``max_epochs`` and ``batch_size`` are derived from ``iterations``, ``batch_size`` and ``num_samples``).
ADAPT_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-4,
    "scheduler": "none",
    "precision": "fp32",
    "device": "cpu",
    "resume": False,
    "progress": False,
}
#: The settings fields adaptation derives from its own arguments (any given value is replaced).
ADAPT_DERIVED: tuple[str, ...] = ("max_epochs", "batch_size")


def _check_arguments(
    loss: str,
    criterion: str,
    limits: Mapping[str, float],
    heldout_per_scan: int,
    batch_size: int,
    num_samples: int,
    holdout_fraction: float,
    sigma_band: Sequence[float],
) -> None:
    """Refuse out-of-range arguments before any scan is read (``ValueError`` naming them)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    counts = (limits["max_iterations"], limits["check_every"], limits["patience"], heldout_per_scan)
    if min(counts) < 1:
        raise ValueError("iterations, check_every, patience and heldout_per_scan must be >= 1.")
    if num_samples < 1 or batch_size % num_samples:
        raise ValueError(f"num_samples must be >= 1 and divide batch_size ({batch_size}), got {num_samples}.")
    if not 0 < holdout_fraction <= 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5], got {holdout_fraction!r}.")
    if not sigma_band or not all(k > 0 for k in sigma_band):
        raise ValueError(f"sigma_band must hold positive factors, got {sigma_band!r}.")
    if not 0 <= limits["min_improvement"] < 1 or not limits["harm_tolerance"] >= 0:
        raise ValueError("min_improvement must be in [0, 1) and harm_tolerance >= 0.")


def _prepare_scans(
    items: Sequence[Mapping[str, Any]],
    preprocessing: Callable[[dict], dict],
    patch: tuple[int, ...],
    loss: str,
    criterion: str,
    sigma: float | None,
    holdout_fraction: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Each scan preprocessed, its noise level estimated (``sigma``: 0-1 scale) and its held-out voxels drawn."""
    deterministic = Compose(
        [
            preprocessing,
            EstimateNoiseLeveld("image", log=True),
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
        _warn_magnitude(magnitude, len(items), loss, criterion)
    return prepared


def _warn_magnitude(magnitude: Sequence[str], total: int, loss: str, criterion: str) -> None:
    """Warn that scans without a negative voxel carry Rician noise, which the Gaussian loss or check assumes away."""
    gaussian = [f"the {loss!r} loss"] if loss in ("r2r", "sure") else []
    if criterion == "sure":
        gaussian.append("the SURE check")
    logger.warning(
        "%d of %d scans have no negative voxel (%s): magnitude data, whose noise is Rician, not the additive "
        "Gaussian noise that %s assume%s where the signal is low; on cohort volumes with Rician noise of 25/255 "
        "the SURE loss lost 0.3-0.7 dB over the volume and its check did not see it (benchmarks.adaptation)",
        len(magnitude),
        total,
        ", ".join(magnitude[:3]) + (", ..." if len(magnitude) > 3 else ""),
        " and ".join(gaussian),
        "" if len(gaussian) > 1 else "s",
    )


def _make_guard(
    network: nn.Module,
    check_batches: list[dict[str, torch.Tensor]],
    criterion: str,
    device: torch.device,
    seed: int,
    sigma_band: Sequence[float],
    **limits: Any,
) -> HeldOutGuard:
    """The held-out guard of ``criterion`` on ``check_batches`` (``limits``: :class:`HeldOutGuard`'s thresholds)."""
    if criterion == "sure":
        variance = float(torch.cat([b["sigma"].reshape(-1) for b in check_batches]).pow(2).mean())
        scales = tuple(float(k) for k in sigma_band if k != 1.0)
        return HeldOutGuard(
            network,
            lambda net: heldout_sure(net, check_batches, device, seed, sigma_scales=scales),
            scale=variance,
            name=f"held-out SURE (estimated squared error; sigma x {', '.join(f'{k:g}' for k in (1.0, *scales))})",
            **limits,
        )
    return HeldOutGuard(
        network, lambda net: heldout_loss(net, check_batches, device), name="held-out blind-spot loss", **limits
    )


def adapt_task(network: nn.Module, loss: str, prepare_batch: Callable, guard: HeldOutGuard) -> Task:
    """Adaptation as a :class:`~pipeline.training.fit.Task`: the self-supervised loss, no evaluator, the guard.

    Args:
        network: the denoiser being adapted.
        loss: ``"n2s"``, ``"r2r"`` (:class:`MaskedMSELoss`) or ``"sure"`` (:class:`~pipeline.evaluation.sure.SureLoss`).
        prepare_batch: builds input and target from the noisy patches (:class:`BlindSpotBatch`, ...).
        guard: the held-out guard, the trainer's handler (it checks, keeps the best weights and stops the run).

    Returns:
        The task (run it with :func:`~pipeline.training.fit.fit` and no validation data).
    """

    def build_trainer(context: FitContext) -> SupervisedTrainer:
        settings = context.settings
        amp, inferer = precision_settings(
            settings.precision, context.device, SimpleInferer(), channels_last=settings.channels_last
        )
        return SupervisedTrainer(
            device=context.device,
            max_epochs=settings.max_epochs,
            train_data_loader=context.train_loader,
            network=network,
            optimizer=context.optimizer,
            loss_function=task.loss,
            inferer=inferer,
            amp=amp,
            prepare_batch=prepare_batch,
            decollate=False,
            train_handlers=[guard],
        )

    task = Task(
        name="adapt",
        network=network,
        loss=SureLoss() if loss == "sure" else MaskedMSELoss(),
        build_trainer=build_trainer,
        build_evaluator=None,
        key_metric=guard.name,
        reseed_epochs=False,  # the patches draw one seeded stream over the step budget, as before it ran on fit
    )
    return task


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
    report_path: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    refuse_is_error: bool = False,
    settings: FitSettings | None = None,
    **fit_fields: Any,
) -> AdaptationResult:
    """Fine-tune ``network`` on noisy scans without clean references, saving the weights only if they help.

    See the module docstring for the losses and the guard. It trains through :func:`fit` (:func:`adapt_task`):
    ``lr``, ``seed``, ``device``... are :class:`FitSettings` fields (defaults :data:`ADAPT_DEFAULTS`); fields about
    validation do nothing (there is none), and :data:`ADAPT_DERIVED` follow from the step budget and batches.

    Args:
        network: the trained denoiser (weights loaded), modified in place (restored when refused).
        items: ``{"image": path, "subject": id}`` items of the folder (``pipeline.inference.scan_listing``).
        preprocessing: the bundle's deterministic preprocessing of ``image`` (load, orient, scale), as at inference.
        output_path: where the adapted network's ``state_dict`` goes (written atomically, only when accepted).
        patch_size: training and check patch (voxels).
        loss: ``"n2s"`` (blind-spot), ``"r2r"`` or ``"sure"`` (Gaussian, known or estimated ``sigma``).
        criterion: the guard's check, ``"sure"`` (the network's estimated squared error) or ``"blindspot"``.
        sigma: for ``"r2r"``, ``"sure"`` and the SURE check: noise level on the 0-255 scale of each scan's robust
            maximum; ``None`` estimates it per scan.
        iterations: training steps at most.
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
        freeze_norm: keep normalisation layers' running statistics fixed (one site's small batches would not).
        report_path: write the result as JSON here (``None``: no report).
        run_dir: the run record (``train.log``, ``run_info.json``, TensorBoard); default ``<output stem>_run``.
        refuse_is_error: raise :class:`AdaptationRefused` when refused (after the report is written).
        settings: the shared training settings (``lr``, ``seed``, ``device``, ...).
        **fit_fields: :class:`FitSettings` fields replacing those of ``settings``.

    Returns:
        The :class:`AdaptationResult`.

    Raises:
        ValueError: an argument out of range, or no scan.
        AdaptationRefused: with ``refuse_is_error``, when the adapted weights were refused.
    """
    limits = {"check_every": check_every, "patience": patience, "harm_tolerance": harm_tolerance}
    limits.update(max_iterations=iterations, min_improvement=min_improvement)
    _check_arguments(loss, criterion, limits, heldout_per_scan, batch_size, num_samples, holdout_fraction, sigma_band)
    settings = fit_settings(settings, ADAPT_DEFAULTS, **fit_fields)
    if not items:
        raise ValueError("no scan to adapt to.")
    patch = (int(patch_size),) * 3 if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    seed, device = settings.seed, resolve_device(settings.device)
    prepared = _prepare_scans(items, preprocessing, patch, loss, criterion, sigma, holdout_fraction, seed)
    check_batches = heldout_batches(prepared, patch, heldout_per_scan, batch_size, seed)
    loader = _patch_loader(prepared, patch, num_samples, batch_size // num_samples, seed, settings.num_workers)
    prepare = _batch_builder(loss, mask_prob, seed)
    network.to(device)
    guard = _make_guard(network, check_batches, criterion, device, seed, sigma_band, **limits)
    derived = {"max_epochs": max(1, math.ceil(iterations / max(1, len(loader)))), "batch_size": loader.batch_size}
    settings = dataclasses.replace(settings, **derived)
    output_path = Path(output_path)
    run_dir = Path(run_dir) if run_dir is not None else output_path.with_name(f"{output_path.stem}_run")
    _fit_guarded(adapt_task(network, loss, prepare, guard), loader, run_dir, settings, guard, freeze_norm)
    result = _decide(network, guard, output_path, min_improvement, criterion)
    result.noise_levels = {str(p.get("subject", i)): float(p["sigma"]) * 255.0 for i, p in enumerate(prepared)}
    (logger.info if result.accepted else logger.warning)("adaptation (%s): %s", loss, result.reason)
    if report_path is not None:
        report = {"loss": loss, "sigma": sigma, "lr": settings.lr, "seed": seed, **result.to_dict()}
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(report_path)) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    return result.raise_if_refused() if refuse_is_error else result


def _patch_loader(
    prepared: list[dict[str, Any]], patch: tuple[int, ...], num_samples: int, scans: int, seed: int, num_workers: int
) -> DataLoader:
    """Shuffled ``scans`` per step (seeded), ``num_samples`` random patches cut from each, with their hold-out."""
    crops = RandSpatialCropSamplesd(["image", "holdout"], roi_size=patch, num_samples=num_samples, random_size=False)
    dataset = CacheDataset(prepared, transform=Compose([crops]).set_random_state(seed), cache_rate=0.0, progress=False)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=scans, shuffle=True, generator=generator, num_workers=num_workers)


def _batch_builder(loss: str, mask_prob: float, seed: int) -> Callable:
    """The ``prepare_batch`` of ``loss``: input and target built from the noisy patches."""
    if loss == "n2s":
        return BlindSpotBatch(mask_prob, seed)
    return RecorruptBatch(None, seed=seed) if loss == "r2r" else SureBatch(seed)


def _fit_guarded(
    task: Task, loader: DataLoader, run_dir: Path, settings: FitSettings, guard: HeldOutGuard, freeze_norm: bool
) -> None:
    """Run ``task`` through :func:`fit` with the guard; a non-finite loss stops it as the guard's decision.

    The shared loss guard stops the step before the optimiser (:class:`NonFiniteLossError`); the held-out guard
    records it as its reason. The run's periodic checkpoints hold unchecked weights, so they are removed: only the
    guard's decision is kept.
    """
    frozen = freeze_norm_layers(task.network) if freeze_norm else None
    try:
        fit(task, loader, None, run_dir, settings)
    except NonFiniteLossError:
        guard.stop_non_finite()
    finally:
        if frozen is not None:
            frozen.remove()
        for path in run_dir.glob("*checkpoint_epoch=*.pt"):
            path.unlink()
    if guard.history[-1][0] != guard.iterations and math.isfinite(guard.history[-1][1]):
        guard.check(guard.engine)


def _decide(
    network: nn.Module, guard: HeldOutGuard, output_path: Path, min_improvement: float, criterion: str
) -> AdaptationResult:
    """Keep and save the best check's weights if they beat the start, else restore the starting weights."""
    start, best = guard.start_loss, guard.best_loss
    scale = guard.scale if guard.scale is not None else abs(start)
    accepted = guard.best_iteration > 0 and math.isfinite(best)
    saved = None
    if accepted:
        network.load_state_dict(guard.best_state)
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
    return AdaptationResult(
        accepted=accepted,
        reason=f"{guard.reason or f'ran {guard.iterations} steps'}; {decision}",
        start_loss=start,
        best_loss=best,
        best_iteration=guard.best_iteration,
        iterations=guard.iterations,
        history=guard.history,
        saved=saved,
        criterion=criterion,
        scale=scale,
    )
