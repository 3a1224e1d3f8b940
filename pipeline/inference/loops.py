"""The per-scan loops the bundle's inference configs call: every scan tried, each failure reported, outputs atomic.

:func:`denoise_items` (``inference.yaml``) and :func:`classify_items` (``inference_classifier.yaml``) take the
objects those configs define: the network with its weights, the preprocessing, the inferer and the writer.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer

from pipeline.inference.guard import SureGuard, write_guard_report
from pipeline.inference.results import InferenceSummary, ScanResult
from pipeline.inference.scan_listing import describe, scan_name
from pipeline.inference.within import PairSingles, predict_within
from pipeline.inference.writer import DENOISED_POSTFIX, check_unique_outputs, output_file
from pipeline.utils.files import atomic_path
from transforms.errors import InputError

__all__ = ["classify_items", "denoise_items"]

logger = logging.getLogger(__name__)


def _remove_stale_partials(output_dir: Path, postfix: str) -> list[Path]:
    """Delete the hidden temporary files that a killed earlier run left mid-write (never a finished output)."""
    stale = sorted(output_dir.glob(f".*{postfix}.*.part.nii.gz")) if output_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
        logger.info("removed the partial file of an interrupted write: %s", path)
    return stale


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="scan")


def _reason(error: BaseException) -> str:
    """The problem in words: an ``InputError``'s own text, found behind MONAI's transform wrappers if need be."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    for link in chain:
        if isinstance(link, InputError):
            return link.problem
    error = chain[-1]
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else 'no message'}"


def denoise_items(
    items: Sequence[Mapping[str, Any]],
    network: torch.nn.Module,
    preprocessing: Callable[[dict], dict],
    inferer: Inferer,
    postprocessing: Callable[[dict], dict],
    output_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    output_postfix: str = DENOISED_POSTFIX,
    overwrite: bool = False,
    progress: bool = True,
    image_key: str = "image",
    pred_key: str = "pred",
    guard: SureGuard | None = None,
) -> InferenceSummary:
    """Denoise each scan and write it in its own space; a failing scan is reported and the rest continue.

    Hidden temporary files left in ``output_dir`` by a run killed mid-write are removed first.
    Per scan: ``preprocessing`` (dictionary transforms on ``{"image": path, ...}``) -> ``inferer(image[None],
    network)`` under ``torch.inference_mode``, the prediction cast to float32 on the CPU (a reduced-precision
    inferer's bf16/fp16 output included) -> ``postprocessing`` (``Invertd`` and :class:`SaveLikeSourced`, as the
    bundle's ``inference.yaml`` defines them), which writes the file. With a ``guard``
    (:class:`pipeline.inference.guard.SureGuard`), the network runs twice (the second pass only on the windows that
    touch the head, :func:`pipeline.inference.within.predict_within`) and the guard decides what is written (the
    network's output, a blend with the input, a Gaussian filter or the input itself, whichever has the least
    estimated error); its report goes to ``<scan>_denoised.json`` beside the output and to the log.

    Args:
        items: ``{"image": path, "subject": id}`` items (:func:`collect_scans`).
        network: the trained denoiser (weights loaded); put in eval mode here.
        preprocessing: the deterministic, invertible preprocessing.
        inferer: e.g. ``SlidingWindowInferer(roi_size=..., progress=True)`` (its bar is the per-scan progress), or
            one wrapped by :func:`pipeline.runtime.precision.precision_settings`.
        postprocessing: inverts the preprocessing on ``pred_key`` and writes the output.
        output_dir: the output folder (created).
        device: where the network runs.
        output_postfix: appended to each scan's name (must match the saver's).
        overwrite: recompute scans whose output exists (default: skip them).
        progress: show a progress bar over the scans.
        image_key: the input key.
        pred_key: the prediction key.
        guard: the inference guard; ``None`` writes the network's output as it is.

    Returns:
        The summary (failed scans included; call :meth:`InferenceSummary.raise_if_failed` to turn them into an error).

    Raises:
        InputError: if two scans would write the same output file.
    """
    check_unique_outputs(items, output_dir, output_postfix)
    _remove_stale_partials(Path(output_dir), output_postfix)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    network.eval()
    paired = PairSingles(network)  # a last window alone would take the CPU's slow convolution
    summary = InferenceSummary(ignored=list(getattr(items, "ignored", [])))
    for item in _progress(items, "denoising", progress):
        source = describe(item[image_key])
        dest = output_file(item[image_key], output_dir, output_postfix)
        if dest.exists() and not overwrite:
            summary.results.append(ScanResult(source, "skipped", os.fspath(dest)))
            logger.info("skipping %s: %s exists", source, dest)
            continue
        start = time.perf_counter()
        report = None
        try:
            data = preprocessing(dict(item))
            image = data[image_key]

            def predict(x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
                with torch.inference_mode():
                    batch = x.unsqueeze(0).to(device)
                    if where is None:
                        return inferer(batch, paired)[0]
                    return predict_within(inferer, network, batch, where)[0]

            if guard is None:
                pred = predict(image)
            else:
                pred, report = guard(image, predict)
            # a float32 copy outside inference mode: Invertd's resampling and the writer work in full precision,
            # and may edit it
            pred = torch.as_tensor(pred).detach().to(device="cpu", dtype=torch.float32, copy=True)
            if not isinstance(pred, MetaTensor) and isinstance(image, MetaTensor):
                pred = MetaTensor(pred, meta=image.meta, applied_operations=image.applied_operations)
            data[pred_key] = pred
            postprocessing(data)
            if report is not None:
                write_guard_report(report, dest, source)
        except Exception as error:  # one bad scan must not stop the batch; every failure is reported
            reason = _reason(error)
            logger.error("cannot denoise %s: %s", source, reason)
            logger.debug("traceback for %s", source, exc_info=True)
            summary.results.append(ScanResult(source, "failed", None, reason, time.perf_counter() - start))
            continue
        seconds = time.perf_counter() - start
        guard_info = report.as_dict() if report is not None else None
        summary.results.append(ScanResult(source, "done", os.fspath(dest), "", seconds, guard_info))
        logger.info("denoised %s -> %s (%.1f s)", source, dest, seconds)
    _log_summary(summary)
    return summary


def _log_summary(summary: InferenceSummary) -> None:
    """The counts line at INFO, or at WARNING when a scan was skipped or failed (so it is not lost among the lines).

    Each failure was logged when it happened; :meth:`InferenceSummary.report` (printed by the command line at the
    end) lists them together with the ignored files.
    """
    quiet = not summary.failed and not summary.count("skipped")
    logger.log(logging.INFO if quiet else logging.WARNING, "%s", summary.report().splitlines()[-1])


def classify_items(
    items: Sequence[Mapping[str, Any]],
    network: torch.nn.Module,
    preprocessing: Callable[[dict], dict],
    class_names: Sequence[str],
    output_csv: str | os.PathLike,
    device: str | torch.device = "cpu",
    inferer: Inferer | None = None,
    progress: bool = True,
    image_key: str = "image",
    overwrite: bool = False,
) -> InferenceSummary:
    """Classify each scan and write one CSV row per scan that could be read (``file, subject, prob_*, prediction``).

    The probabilities are the softmax of the network's logits over ``class_names``; ``prediction`` is the most
    probable class name. The CSV is written atomically once every scan has been tried (the same inputs and
    weights give the same file, so a re-run rewrites it identically). When ``output_csv`` exists and
    ``overwrite`` is off, its rows are kept and the scans it already holds are skipped (reported as skipped
    because their output exists), as the denoiser skips finished outputs.

    Args:
        items: ``{"image": path, "subject": id}`` items (:func:`collect_scans`).
        network: the trained classifier (weights loaded); put in eval mode here.
        preprocessing: the classifier's deterministic preprocessing.
        class_names: one name per network output, in order.
        output_csv: the CSV file.
        device: where the network runs.
        inferer: how to run the network (default ``SimpleInferer``).
        progress: show a progress bar over the scans.
        image_key: the input key.
        overwrite: classify every scan again and replace the CSV (default: keep its rows, skip their scans).

    Returns:
        The summary, with ``rows`` and ``table`` set.

    Raises:
        ValueError: if ``class_names`` is empty or does not match the network's outputs, or an existing CSV has
            other columns (without ``overwrite``).
    """
    if not class_names:
        raise ValueError("class_names must name at least one class.")
    inferer = SimpleInferer() if inferer is None else inferer
    network.eval()
    summary = InferenceSummary(table=os.fspath(output_csv), ignored=list(getattr(items, "ignored", [])))
    fields = ["file", "subject", *(f"prob_{name}" for name in class_names), "prediction"]
    done = {} if overwrite else _existing_rows(output_csv, fields)
    summary.rows.extend(done.values())
    for item in _progress(items, "classifying", progress):
        source = describe(item[image_key])
        if source in done:
            summary.results.append(ScanResult(source, "skipped", os.fspath(output_csv)))
            continue
        start = time.perf_counter()
        try:
            data = preprocessing(dict(item))
            with torch.inference_mode():
                logits = inferer(data[image_key].unsqueeze(0).to(device), network)
        except Exception as error:  # one bad scan must not stop the batch; every failure is reported
            summary.results.append(ScanResult(source, "failed", None, _reason(error), time.perf_counter() - start))
            logger.error("cannot classify %s: %s", source, _reason(error))
            continue
        probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        if probs.shape[0] != len(class_names):
            raise ValueError(
                f"class_names has {len(class_names)} names but the network gives {probs.shape[0]} outputs."
            )
        row: dict[str, Any] = {"file": source, "subject": item.get("subject", scan_name(item[image_key]))}
        row.update({f"prob_{name}": f"{p:.6f}" for name, p in zip(class_names, probs)})
        row["prediction"] = class_names[int(np.argmax(probs))]
        summary.rows.append(row)
        summary.results.append(ScanResult(source, "done", os.fspath(output_csv), "", time.perf_counter() - start))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary.rows)
    with atomic_path(output_csv) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    logger.info("wrote %d rows to %s", len(summary.rows), output_csv)
    _log_summary(summary)
    return summary


def _existing_rows(output_csv: str | os.PathLike, fields: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The rows of an earlier run's CSV by file, or ``{}`` without one; other columns are refused."""
    path = Path(output_csv)
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    if columns != list(fields):
        raise ValueError(
            f"{path} exists with the columns {columns}, but this classifier writes {list(fields)}; pass "
            "--overwrite (overwrite=True) to replace it, or choose another output file."
        )
    return {row["file"]: row for row in rows}
