"""Part (a): the notes' architecture and recipe questions, one change from the baseline per arm, equal budgets.

Each arm is trained for the same number of steps, on the same training subjects, with each of the study's seeds, and
scored on the same held-out volumes: PSNR/SSIM in the brain and over the whole volume, and seconds per step.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from networks import ResUnet3D
from pipeline.evaluation.metrics import volume_quality
from pipeline.study.plan import Arm, StudySettings
from pipeline.training.denoise import train_denoiser
from pipeline.training.engines import TrainingResult
from pipeline.training.runinfo import read_run_info
from pipeline.utils.seed import seed_everything

__all__ = ["METRICS", "arm_network", "arm_training", "denoise_volume", "run_arm", "train_for_steps"]

logger = logging.getLogger(__name__)

#: What each held-out volume is scored on.
METRICS = ("psnr_brain", "ssim_brain", "psnr_volume", "ssim_volume")


def arm_network(arm: Arm, recipe: Mapping[str, Any], patch: int) -> ResUnet3D:
    """The arm's ResUnet3D: the baseline's arguments with the arm's changes (the patch size is validated)."""
    return ResUnet3D(**{**recipe["network"], **arm.network, "patch_size": patch})


def arm_training(arm: Arm, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The arm's optimiser settings: the baseline recipe with the arm's changes (``lr_factor`` scales its rate)."""
    changes = dict(arm.training)
    factor = float(changes.pop("lr_factor", 1.0))
    settings = {"optimizer": recipe["optimizer"], "lr": recipe["lr"] * factor, "momentum": 0.9}
    settings.update(changes)
    return settings


def denoise_volume(network: Any, item: Mapping[str, Any], patch: int) -> Any:
    """The network's output for one held-out volume (sliding window, the bundle's overlap), as a tensor."""
    import torch
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=[patch] * 3, sw_batch_size=4, overlap=0.25, mode="gaussian")
    network.eval()
    device = next(network.parameters()).device
    with torch.no_grad():
        return inferer(torch.as_tensor(item["image"])[None].float().to(device), network)[0].float().cpu()


def train_for_steps(
    network: Any,
    train_data: Any,
    val_items: Sequence[Mapping[str, Any]],
    run_dir: Path,
    steps: int,
    seed: int,
    patch: int,
    **optimizer: Any,
) -> tuple[TrainingResult, int]:
    """Train a denoiser for about ``steps`` steps (whole epochs of one volume each) and validate once, at the end.

    The cosine schedule spans the whole budget, ``model.pt`` is the final network (the one validation picks nothing)
    and one checkpoint is kept.

    Args:
        network: the denoiser.
        train_data: one item per step (:func:`pipeline.study.data.denoising_patches`).
        val_items: the volumes validated after the last step.
        run_dir: the run folder.
        steps: the budget, rounded up to whole epochs.
        seed: the run seed.
        patch: the training patch side, also the validation's sliding window.
        **optimizer: ``optimizer``, ``lr``, ``weight_decay`` (and ``momentum``) of :func:`train_denoiser`.

    Returns:
        The training result and the number of steps run.
    """
    epochs = max(1, math.ceil(steps / len(train_data)))
    result = train_denoiser(
        train_data,
        list(val_items),
        network,
        run_dir,
        max_epochs=epochs,
        batch_size=1,
        scheduler="cosine",
        roi_size=patch,
        sw_batch_size=4,
        val_interval=epochs,
        checkpoint_every=epochs,
        keep_checkpoints=1,
        seed=seed,
        resume=False,
        progress=False,
        **optimizer,
    )
    return result, epochs * len(train_data)


def run_arm(
    arm: Arm,
    seed: int,
    recipe: Mapping[str, Any],
    settings: StudySettings,
    train_data: Any,
    val_items: Sequence[Mapping[str, Any]],
    eval_items: Sequence[Mapping[str, Any]],
    run_dir: Path,
    steps: int | None = None,
) -> dict[str, Any]:
    """Train one arm with one seed and score it on every held-out volume.

    Args:
        arm: the arm.
        seed: the seed (initial weights, data order, crops and noise).
        recipe: :func:`pipeline.study.plan.baseline_recipe`.
        settings: the study's sizes.
        train_data: :func:`pipeline.study.data.denoising_patches` (one step per training volume).
        val_items: the volume validated once, after the last step (``model.pt`` is the final network).
        eval_items: the held-out volumes (``image``, ``label``, ``mask``, ``subject``).
        run_dir: the run folder (removed after scoring, the scores are what the study keeps).
        steps: the training budget (default ``settings.steps``), rounded up to whole epochs.

    Returns:
        ``{"arm", "seed", "steps", "seconds", "cpu_seconds", "seconds_per_step", "precision", "volumes": [{subject,
        metric: value}], "final_loss"}``.
    """
    seed_everything(seed)
    network = arm_network(arm, recipe, settings.patch)
    optim = arm_training(arm, recipe)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run killed half-way starts again from its first step
    wall, cpu = time.perf_counter(), time.process_time()
    result, done = train_for_steps(
        network,
        train_data,
        val_items,
        run_dir,
        steps or settings.steps,
        seed,
        settings.patch,
        optimizer=optim["optimizer"],
        lr=optim["lr"],
        momentum=optim["momentum"],
        weight_decay=recipe["weight_decay"],
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    volumes = []
    for item in eval_items:
        output = denoise_volume(network, item, settings.patch)
        quality = volume_quality(output, item["label"], item["mask"])
        volumes.append({"subject": item["subject"], **{k: float(quality[k]) for k in METRICS}})
    precision = read_run_info(run_dir)["config"]["arguments"]["precision"]
    shutil.rmtree(run_dir, ignore_errors=True)
    logger.info("%s seed %d: %d steps in %.0f s", arm.name, seed, done, wall)
    return {
        "arm": arm.name,
        "seed": seed,
        "steps": done,
        "seconds": wall,
        "cpu_seconds": cpu,
        "seconds_per_step": wall / done,
        "precision": precision,
        "final_loss": result.losses[-1] if result.losses else None,
        "volumes": volumes,
    }
