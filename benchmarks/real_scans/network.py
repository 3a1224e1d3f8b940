"""The denoiser under test: rebuilt from its model card, or adapted to a site's noisy scans."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["adapt_to_site", "guard_available", "shipped_weights", "load_denoiser"]


def adapt_to_site(
    model: torch.nn.Module,
    cases: Sequence[dict[str, Any]],
    folder: Path,
    iterations: int,
    seed: int,
    loss: str = "n2s",
    criterion: str = "sure",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Self-supervised adaptation on a folder of the noisy scans themselves, no clean reference (``adapt.yaml``).

    The noisy volumes of ``cases`` (one site: every scan at one noise type and level) are written to ``folder`` as
    NIfTI and :func:`pipeline.training.adapt.adapt_denoiser` fine-tunes a copy of ``model`` on them with ``loss`` and
    the held-out guard's ``criterion``, with the bundle's preprocessing (load, orient, divide by the robust maximum).
    The references are never read.

    Args:
        model: the trained denoiser (left unchanged).
        cases: the site's noisy cases (:func:`noisy_cases`).
        folder: an empty folder for the site's scans and the adapted weights.
        iterations: adaptation steps at most.
        seed: seeds the patches, masks and hold-out.
        loss: the adaptation loss (:data:`pipeline.training.adapt.LOSSES`).
        criterion: the guard's check (:data:`pipeline.training.adapt.CRITERIA`).

    Returns:
        ``(adapted copy, or the unchanged copy when the guard refused it; the adaptation's report)``.
    """
    import copy

    import nibabel as nib
    from monai.transforms import Compose

    from pipeline.training.adapt import adapt_denoiser
    from transforms.intensity import ScalePercentiled
    from transforms.io import LoadScand, canonical_transforms

    scans = folder / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    for case in cases:
        nib.save(nib.Nifti1Image(case["noisy"].astype(np.float32), np.eye(4)), scans / f"{case['scan']}.nii.gz")
    items = [{"image": str(path), "subject": path.name.split(".")[0]} for path in sorted(scans.iterdir())]
    preprocessing = Compose(
        [
            LoadScand(keys="image"),
            *canonical_transforms("image", None),
            ScalePercentiled(keys="image", stats_key="image", lower=None, upper=99.5, nonzero=True, clip=False),
        ]
    )
    network = copy.deepcopy(model)
    result = adapt_denoiser(
        network,
        items,
        preprocessing,
        folder / "adapted.pt",
        patch_size=32,
        iterations=iterations,
        seed=seed,
        loss=loss,
        criterion=criterion,
    )
    keys = ("accepted", "reason", "iterations", "criterion", "start_loss", "best_loss", "psnr_gain_db", "noise_levels")
    report = {key: value for key, value in result.to_dict().items() if key in keys}
    return network.eval(), {"loss": loss} | report


def load_denoiser(weights: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained denoiser from its model card and load its weights, as ``pipeline.inference.infer`` does.

    Args:
        weights: ``model.pt`` with its card (``model.json``) beside it.

    Returns:
        ``(network in eval mode, card)``.

    Raises:
        ValueError: no card, or a card whose preprocessing this benchmark does not reproduce (a ``spacing`` to
            resample to, or percentiles other than the robust maximum's).
        CheckpointError: weights that do not fit the card's network.
    """
    from pipeline.inference.infer import load_weights
    from pipeline.training.model_card import build_network, card_path, read_model_card

    card = read_model_card(weights)
    if card is None:
        raise ValueError(f"{weights} has no model card ({card_path(weights).name}): the benchmark cannot rebuild it")
    for key, expected in (("spacing", None), ("percentile_lower", None), ("percentile_upper", 99.5)):
        if card.get(key, expected) != expected:
            raise ValueError(f"{card_path(weights)}: {key} {card[key]!r}; the benchmark runs with {expected!r} only")
    return load_weights(build_network(card), weights).eval(), card


def shipped_weights() -> Path | None:
    """The shipped model (``pipeline.inference.ready.default_weights``), or ``None`` where it is not there yet."""
    from pipeline.errors import CheckpointError

    try:
        from pipeline.inference.ready import default_weights

        return Path(default_weights())
    except (ImportError, CheckpointError) as error:
        print(f"no shipped model: {error}")
        return None


def guard_available() -> bool:
    """Whether ``pipeline.inference.guard.SureGuard`` can be imported (the guarded output needs it)."""
    try:
        from pipeline.inference.guard import SureGuard  # noqa: F401
    except ImportError:
        return False
    return True
