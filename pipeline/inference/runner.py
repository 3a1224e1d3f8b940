"""Run the bundle's inference configs on given scans and weights: :func:`denoise_scans`, :func:`classify_scans`.

They set the configs' ids from their arguments (``dataset_dir``, ``output_dir``, ``ckpt_path``, the speed
switches...), run ``inference.yaml`` or ``inference_classifier.yaml`` through
:func:`pipeline.bundle_run.create_workflow` (which applies the weights' model card) and return the
:class:`~pipeline.inference.results.InferenceSummary`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ScanFailuresError
from pipeline.inference.results import InferenceSummary

__all__ = ["check_overlap", "classify_scans", "denoise_scans"]

logger = logging.getLogger(__name__)


def _run_config(configs: Sequence[str], overrides: Mapping[str, Any], workflow_type: str = "infer") -> InferenceSummary:
    from pipeline.bundle_run import create_workflow, unwrap_config_error

    try:
        workflow = create_workflow(configs, workflow_type=workflow_type, logging_file=False, **overrides)
    except RuntimeError as error:  # a check of the config's `initialize` (e.g. fp16 on a CPU), without MONAI's wrapper
        cause = unwrap_config_error(error)
        if cause is not error:
            raise cause from None
        raise
    try:
        results = workflow.run()
    except Exception as error:
        cause = unwrap_config_error(error)
        if isinstance(cause, ScanFailuresError):
            return cause.summary
        if cause is not error:
            raise cause from None
        raise
    finally:
        workflow.finalize()
    summaries = [r for r in results if isinstance(r, InferenceSummary)]
    if not summaries:
        raise RuntimeError(f"the config's `run` returned no InferenceSummary ({configs}).")
    return summaries[-1]


def _bundle_configs(name: str, bundle_dir: str | os.PathLike | None = None) -> list[str]:
    from pipeline.bundle_files import bundle_configs

    return bundle_configs(name, bundle_dir=bundle_dir)


def _common_settings(
    weights: str | os.PathLike | None,
    device: str | None,
    precision: str | None,
    channels_last: bool | None,
    trust_card: bool = False,
) -> dict[str, Any]:
    """The config overrides of the arguments both inference functions take (``None``: the config's value)."""
    settings: dict[str, Any] = {}
    if trust_card:  # only when asked: a config without the id keeps working
        logger.warning("--trust-card: the weights' model card is applied unchecked and may run any code it carries")
        settings["trust_model_card"] = True
    if weights is not None:
        settings["ckpt_path"] = os.fspath(weights)
    if device is not None:
        settings["device"] = device
    if precision is not None:
        settings["precision"] = precision
    if channels_last is not None:
        settings["channels_last"] = bool(channels_last)
    return settings


def _as_data(inputs: Any) -> Any:
    """Input paths as ``Path`` objects: a MONAI config would run a file named ``$...`` given as a string."""
    if isinstance(inputs, str):
        return Path(inputs)
    if isinstance(inputs, (list, tuple)):
        return [Path(entry) if isinstance(entry, str) else entry for entry in inputs]
    return inputs


def check_overlap(overlap: float) -> float:
    """``overlap`` as a float, refused outside [0, 1) (the sliding windows' overlap).

    Raises:
        ValueError: ``overlap`` outside [0, 1).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}.")
    return float(overlap)


def denoise_scans(
    inputs: str | os.PathLike | Sequence[Any],
    output_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    overwrite: bool = False,
    config_files: Sequence[str] | None = None,
    *,
    precision: str | None = None,
    channels_last: bool | None = None,
    overlap: float | None = None,
    bundle_dir: str | os.PathLike | None = None,
    trust_card: bool = False,
    **overrides: Any,
) -> InferenceSummary:
    """Denoise scans with the bundle's ``inference.yaml`` (see :func:`denoise_items` for what happens per scan).

    Weights with a model card (``model.json`` beside ``model.pt``, written by training; or a TorchScript file with
    the card embedded) bring their network, tile size and intensity convention (:mod:`pipeline.runtime.model_card`):
    ``weights`` alone is enough, and an override that contradicts the card is refused.

    Args:
        inputs: file(s), folder(s) or datalist JSON (:func:`collect_scans`).
        output_dir: where ``<scan>_denoised.nii.gz`` files go.
        weights: the trained denoiser (default: the config's ``ckpt_path``, ``bundle/models/model.pt``).
        device: ``"cpu"``, ``"cuda:0"``...; default: CUDA when available.
        overwrite: recompute outputs that exist.
        config_files: the configs to run (default ``common.yaml`` + ``inference.yaml`` of the bundle).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only); default: the config's
            ``precision``, ``auto`` (bf16 where the CPU or GPU computes it natively, else fp32).
        channels_last: run the network in the ``channels_last_3d`` memory layout; default: the config's.
        overlap: the sliding windows' overlap in [0, 1); default: the config's ``sw_overlap``.
        bundle_dir: the bundle folder whose configs run (default: the checkout's or the installed one).
        trust_card: apply the weights' model card unchecked (config id ``trust_model_card``), with a warning: for a
            card from someone you trust that needs a network off the allow-list or MONAI expressions
            (:mod:`pipeline.runtime.card_schema`); by default such a card is refused.
        **overrides: further config overrides, e.g. ``{"network_def::model_depth": 34, "patch_size": [48] * 3}``.

    Returns:
        The summary (check ``summary.failed``).

    Raises:
        ValueError: an unknown precision, fp16 without CUDA, or an overlap outside [0, 1).
        ConfigOverrideError: an override names a key the configs do not have.
        pipeline.runtime.model_card.ModelConfigMismatchError: an override contradicts the weights' own configuration.
        CheckpointError: the weights are missing or do not fit the network.
        UnsafeModelCardError: the weights' model card could run code or holds what a card may not.
        InputError: an input path does not exist or holds no scan.
    """
    settings: dict[str, Any] = {"dataset_dir": _as_data(inputs), "output_dir": os.fspath(output_dir)}
    settings["overwrite"] = overwrite
    if overlap is not None:
        settings["sw_overlap"] = check_overlap(overlap)
    settings.update(_common_settings(weights, device, precision, channels_last, trust_card))
    configs = config_files or _bundle_configs("inference.yaml", bundle_dir)
    return _run_config(configs, {**settings, **overrides})


def classify_scans(
    inputs: str | os.PathLike | Sequence[Any],
    output_csv: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    config_files: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    precision: str | None = None,
    channels_last: bool | None = None,
    bundle_dir: str | os.PathLike | None = None,
    trust_card: bool = False,
    **overrides: Any,
) -> InferenceSummary:
    """Classify scans with the bundle's ``inference_classifier.yaml`` (see :func:`classify_items`).

    Weights with a model card (``classifier.json`` beside ``classifier.pt``, written by training) bring their
    network, class names and input size (:mod:`pipeline.runtime.model_card`): ``weights`` alone is enough.

    Args:
        inputs: file(s), folder(s) or datalist JSON (:func:`collect_scans`).
        output_csv: the CSV to write.
        weights: the trained classifier (default: the config's ``ckpt_path``, ``bundle/models/classifier.pt``).
        device: ``"cpu"``, ``"cuda:0"``...; default: CUDA when available.
        config_files: the configs to run (default ``common.yaml`` + ``inference_classifier.yaml`` of the bundle).
        overwrite: classify again the scans ``output_csv`` already holds (default: keep their rows, skip them).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only); default: the config's
            ``precision``, ``auto`` (bf16 where the CPU or GPU computes it natively, else fp32).
        channels_last: run the network in the ``channels_last_3d`` memory layout; default: the config's.
        bundle_dir: the bundle folder whose configs run (default: the checkout's or the installed one).
        trust_card: apply the weights' model card unchecked, with a warning (see :func:`denoise_scans`).
        **overrides: further config overrides, e.g. ``{"class_names": ["CN", "AD"]}``.

    Returns:
        The summary, with the CSV rows.

    Raises:
        ValueError: an unknown precision or fp16 without CUDA.
        ConfigOverrideError: an override names a key the configs do not have.
        pipeline.runtime.model_card.ModelConfigMismatchError: an override contradicts the weights' own configuration.
        CheckpointError: the weights are missing or do not fit the network.
        UnsafeModelCardError: the weights' model card could run code or holds what a card may not.
        InputError: an input path does not exist or holds no scan.
    """
    settings: dict[str, Any] = {"dataset_dir": _as_data(inputs), "output_csv": os.fspath(output_csv)}
    settings["overwrite"] = overwrite
    settings.update(_common_settings(weights, device, precision, channels_last, trust_card))
    configs = config_files or _bundle_configs("inference_classifier.yaml", bundle_dir)
    return _run_config(configs, {**settings, **overrides})
