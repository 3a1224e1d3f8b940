"""Inference on new scans: denoised NIfTI in each scan's own space, class probabilities as CSV.

Input is a file, a folder or a datalist JSON (or a list of them), in any orientation, voxel size and matrix size:
NIfTI-1/2, Analyze, MGH/MGZ, MINC, NRRD, MetaImage and DICOM, any byte order and data type. A folder gives every
medical image file in it and one item per DICOM series (:mod:`pipeline.inference.scan_listing`); a file that cannot be
read
fails with its reason, and other files are listed as ignored. Weights trained by this project carry their
configuration (``model.json`` beside ``model.pt``, :mod:`pipeline.training.model_card`), so ``--weights`` is enough.
Each scan goes through the bundle's deterministic preprocessing (load and validate, reorient to RAS, optional
resampling, robust percentile scaling, all invertible), then sliding-window inference under
``torch.inference_mode``; MONAI's ``Invertd`` undoes the preprocessing on the prediction, so the denoised volume
is written on the scan's own voxel grid and in its own intensity units. For a NIfTI input the output keeps the
input's header (qform and sform with their codes, voxel sizes, units, description) and shape; only the data type
becomes little-endian float32 (scaling slope/intercept cleared). Other formats (DICOM series included) are
written as NIfTI with the scan's affine.

Batch behaviour (issue 7): a scan that cannot be processed (unreadable, truncated, 2-D or 4-D, NaN voxels...) is
named with the reason and the others are still processed; every output is written to a temporary name and
renamed into place when complete (:func:`pipeline.utils.files.atomic_path`); outputs that already exist are skipped
unless ``overwrite`` is set, so a killed run is simply repeated (the classifier keeps the rows of an existing
CSV likewise); :class:`InferenceSummary` names every input not processed (failed, skipped, ignored) and the command
line (``python -m pipeline.inference.infer``, or the console scripts ``resunet3d-denoise`` / ``resunet3d-classify``)
exits
with status 1 when any scan failed.

The bundle's ``inference.yaml`` and ``inference_classifier.yaml`` call :func:`denoise_items` and
:func:`classify_items` with the objects they define; :func:`denoise_scans` and :func:`classify_scans` (and the
command line, ``python -m pipeline.inference.infer``) run those configs with the given inputs and weights, and pass the
speed switches on: ``precision`` (``auto`` by default: ``bf16`` autocast where the CPU or GPU computes bf16
natively, else fp32; ``fp16`` on CUDA), ``channels_last`` (the ``channels_last_3d`` memory layout) and the sliding
windows' ``overlap``. Outputs are float32 whatever the precision.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from pipeline.data.datasets import load_datalist
from pipeline.errors import ScanFailuresError
from pipeline.inference.guard import SureGuard, write_guard_report
from pipeline.inference.scan_listing import ScanList, describe, list_folder, scan_name
from pipeline.training.checkpoint import CheckpointError, load_checkpoint
from pipeline.training.engines import PRECISIONS
from pipeline.utils.files import atomic_path
from transforms.errors import InputError
from transforms.formats import DicomSeries, image_suffix

__all__ = [
    "DENOISED_POSTFIX",
    "InferenceSummary",
    "SaveLikeSourced",
    "ScanResult",
    "classify_items",
    "classify_scans",
    "collect_scans",
    "denoise_items",
    "denoise_scans",
    "check_weights_file",
    "load_weights",
    "add_task_arguments",
    "main",
    "output_file",
    "run_task",
    "task_parser",
]

logger = logging.getLogger(__name__)

#: Appended to a scan's name for its denoised output (``sub-01.nii.gz`` -> ``sub-01_denoised.nii.gz``).
DENOISED_POSTFIX = "_denoised"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """What happened to one scan.

    Attributes:
        source: the input path.
        status: ``"done"``, ``"skipped"`` (output already there) or ``"failed"``.
        output: the output file (``None`` for the classifier, whose rows go to one CSV).
        reason: why it failed (empty otherwise).
        seconds: wall time spent on the scan.
        guard: the inference guard's report (:class:`pipeline.inference.guard.GuardReport`), when it ran.
    """

    source: str
    status: str
    output: str | None = None
    reason: str = ""
    seconds: float = 0.0
    guard: dict[str, Any] | None = None


@dataclasses.dataclass
class InferenceSummary:
    """The results of one batch, in input order.

    Attributes:
        results: one :class:`ScanResult` per scan.
        rows: the classifier's CSV rows (empty for denoising).
        table: the classifier's CSV file (``None`` for denoising).
        ignored: ``(path, reason)`` of the input folders' entries that are not scans (text, sidecars...).
    """

    results: list[ScanResult] = dataclasses.field(default_factory=list)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    table: str | None = None
    ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of scans with a given status.

        Args:
            status: ``"done"``, ``"skipped"`` or ``"failed"``.

        Returns:
            How many scans ended with it.
        """
        return sum(result.status == status for result in self.results)

    @property
    def failed(self) -> list[ScanResult]:
        """The scans that could not be processed."""
        return [result for result in self.results if result.status == "failed"]

    def report(self) -> str:
        """The batch in words: every input that was not processed is named.

        Returns:
            One ``FAILED <file>: <reason>`` line per failed scan, one ``IGNORED <file>: <reason>`` line per entry
            that is not a scan, then ``N scans: D done, S skipped (output exists), F failed``; when scans were
            skipped the line says so loudly (``S SKIPPED because their output exists ...``), and it ends with the
            number of ignored files when there are any.
        """
        lines = [f"FAILED {result.source}: {result.reason}" for result in self.failed]
        lines += [f"IGNORED {path}: {reason}" for path, reason in self.ignored]
        skipped = self.count("skipped")
        skip_text = (
            f"{skipped} SKIPPED because their output exists (not recomputed; pass --overwrite / overwrite=True to "
            "recompute)"
            if skipped
            else "0 skipped (output exists)"
        )
        line = f"{len(self.results)} scans: {self.count('done')} done, {skip_text}, {self.count('failed')} failed"
        if self.ignored:
            line += f"; {len(self.ignored)} file(s) ignored (not scans)"
        lines.append(line)
        return "\n".join(lines)

    def raise_if_failed(self) -> InferenceSummary:
        """Turn failed scans into an error (after every scan has been tried).

        Returns:
            ``self``, when no scan failed.

        Raises:
            ScanFailuresError: carrying this summary, when a scan failed.
        """
        if self.failed:
            raise ScanFailuresError(self)
        return self


def _item(image: Any, subject: Any = None) -> dict[str, Any]:
    path = image if isinstance(image, DicomSeries) else os.fspath(image)
    return {"image": path, "subject": str(subject) if subject not in (None, "") else scan_name(path)}


def collect_scans(source: str | os.PathLike | Sequence[Any], datalist_key: str = "testing") -> ScanList:
    """List the scans to process as ``{"image": path, "subject": id}`` items, in a stable order.

    Args:
        source: a scan file (processed even if it turns out unreadable: the failure is reported for it), a folder
            (:func:`pipeline.inference.scan_listing.list_folder`: every medical image file, one item per DICOM series,
            the
            other entries listed as ignored), a datalist ``.json`` (Decathlon style, list ``datalist_key``), or a
            list of any of these or of ``{"image": ..., "subject": ...}`` items.
        datalist_key: which list of a datalist JSON to read.

    Returns:
        The items (a :class:`~pipeline.inference.scan_listing.ScanList`, whose ``ignored`` names the entries left
        out); the
        subject defaults to the file name without its image suffix.

    Raises:
        InputError: a path that does not exist, a folder with no scan, or a datalist that cannot be used.
    """
    if isinstance(source, Mapping):
        return ScanList([_item(source["image"], source.get("subject"))])
    if isinstance(source, DicomSeries):
        return ScanList([_item(source)])
    if not isinstance(source, (str, os.PathLike)):
        items = ScanList()
        for entry in source:
            items.extend_from(collect_scans(entry, datalist_key))
        return items
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        return ScanList(_item(i["image"], i.get("subject")) for i in load_datalist(path, key=datalist_key))
    if path.is_dir() and not image_suffix(path.name):
        found = list_folder(path)
        if not found:
            ignored = f"; ignored: {', '.join(Path(p).name for p, _ in found.ignored)}" if found.ignored else ""
            raise InputError(path, f"holds no scan (no medical image file or DICOM series){ignored}")
        return found
    if not path.exists():
        raise InputError(path, "does not exist")
    return ScanList([_item(path)])


def output_file(source: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = DENOISED_POSTFIX) -> Path:
    """The output path of a scan: ``<output_dir>/<scan name><postfix>.nii.gz``.

    Args:
        source: the scan's path.
        output_dir: the output folder.
        postfix: appended to the scan's name.

    Returns:
        The path.
    """
    return Path(output_dir) / f"{scan_name(source)}{postfix}.nii.gz"


def _check_unique_outputs(items: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, postfix: str) -> None:
    seen: dict[Path, str] = {}
    clashes = []
    for item in items:
        out = output_file(item["image"], output_dir, postfix)
        if out in seen:
            clashes.append(f"{seen[out]} and {describe(item['image'])} -> {out.name}")
        seen[out] = describe(item["image"])
    if clashes:
        raise InputError(output_dir, f"several scans would write the same output: {'; '.join(clashes)}")


class SaveLikeSourced(MapTransform):
    """Write a prediction as NIfTI beside its source's header: same shape, affine and header, float32 data.

    Expects the prediction already back on the source's grid (after ``Invertd``), channel first ``(1, H, W, D)``.
    For a NIfTI source the source file's header is copied (qform/sform and codes, pixdim, units, description,
    intent); the data type becomes float32 and the scaling slope/intercept and ``cal_min``/``cal_max`` are
    cleared. For other sources the prediction's affine is written as both qform and sform (code 1, scanner).
    The file is written atomically (:func:`pipeline.utils.files.atomic_path`).

    Args:
        keys: the prediction key (one).
        output_dir: the output folder.
        source_key: the key whose ``meta["filename_or_obj"]`` names the source scan.
        output_postfix: appended to the source's name (see :func:`output_file`).
        allow_missing_keys: skip a missing prediction.

    Raises:
        ValueError: if ``keys`` names more than one key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        source_key: str = "image",
        output_postfix: str = DENOISED_POSTFIX,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name one prediction key, got {self.keys}.")
        self.output_dir = Path(output_dir)
        self.source_key = source_key
        self.output_postfix = output_postfix

    @staticmethod
    def source_of(data: Mapping[Hashable, Any], source_key: str) -> str:
        """The source scan's path, from the item's metadata or its path entry.

        Args:
            data: the item.
            source_key: the key of the loaded scan (a MetaTensor) or of its path.

        Returns:
            The path.

        Raises:
            ValueError: if the item does not name its source file.
        """
        value = data.get(source_key)
        if isinstance(value, MetaTensor) and value.meta.get("filename_or_obj"):
            return os.fspath(value.meta["filename_or_obj"])
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise ValueError(f"cannot tell the source file of the item: {source_key!r} has no file name.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Write the prediction.

        Args:
            data: the item, with the prediction ``(1, H, W, D)`` on the source's grid and the source key.

        Returns:
            A copy of the item with ``"output"`` set to the written path.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            source = self.source_of(d, self.source_key)
            dest = output_file(source, self.output_dir, self.output_postfix)
            _write_like(d[key], source, dest)
            d["output"] = os.fspath(dest)
        return d


def _write_like(pred: Any, source: str, dest: Path) -> None:
    array = convert_to_numpy(pred, wrap_sequence=True).astype(np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if source.lower().endswith(_NIFTI_SUFFIXES):
        src = nib.load(source)
        if int(np.prod(src.shape)) != array.size:
            raise ValueError(f"prediction shape {array.shape} does not fit {source} (shape {src.shape}).")
        header = src.header.copy() if src.header.endianness == "<" else src.header.as_byteswapped("<")
        header.set_data_dtype(np.float32)  # little-endian float32, whatever the source's type and byte order
        header["cal_min"], header["cal_max"] = 0.0, 0.0
        out = type(src)(array.reshape(src.shape), None, header=header)
        out.header.set_slope_inter(None, None)
    else:
        affine = pred.meta.get("affine") if isinstance(pred, MetaTensor) else None
        affine = np.eye(4) if affine is None else convert_to_numpy(affine).astype(np.float64)
        out = nib.Nifti1Image(array, affine)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
    with atomic_path(dest) as tmp:
        nib.save(out, tmp)


def check_weights_file(path: str | os.PathLike) -> Path:
    """Fail early, in words, when the trained weights a workflow needs are not there.

    Args:
        path: the weights file.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        CheckpointError: if ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"trained weights {path} do not exist: train first, or pass the weights file.")
    return path


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu", key: str = "model"
) -> torch.nn.Module:
    """Load trained weights strictly (``weights_only=True``) into ``network`` (or its DDP ``module``).

    Args:
        network: the network.
        path: a state dict, or a checkpoint holding it under ``key`` (``model.pt`` as the bundle saves it).
        map_location: device the tensors are mapped to.
        key: the checkpoint entry holding the weights, when the file is a checkpoint dictionary.

    Returns:
        ``network``.

    Raises:
        CheckpointError: the file is missing, unreadable, or its weights do not fit the network.
    """
    path = check_weights_file(path)
    if isinstance(network, torch.jit.ScriptModule):  # a TorchScript file is its own network, weights included
        return network
    state = load_checkpoint(path, map_location=map_location)
    if key in state and isinstance(state[key], Mapping):
        state = state[key]
    target = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        from pipeline.training.model_card import card_path

        card = card_path(path)
        hint = (
            f"the weights' own configuration is in {card}: run through `python -m pipeline.inference.infer` or "
            "`python -m pipeline.bundle_run`, which apply it, or pass its network_def"
            if card.is_file()
            else "use the config the weights were trained with"
        )
        raise CheckpointError(
            f"weights {path} do not fit the configured network ({str(error).splitlines()[0]}); {hint}."
        ) from error
    return network


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
    (:class:`pipeline.inference.guard.SureGuard`), the network runs twice and the guard decides what is written (the
    network's output, a blend with the input, a Gaussian filter or the input itself, whichever has the least
    estimated error); its report goes to ``<scan>_denoised.json`` beside the output and to the log.

    Args:
        items: ``{"image": path, "subject": id}`` items (:func:`collect_scans`).
        network: the trained denoiser (weights loaded); put in eval mode here.
        preprocessing: the deterministic, invertible preprocessing.
        inferer: e.g. ``SlidingWindowInferer(roi_size=..., progress=True)`` (its bar is the per-scan progress), or
            one wrapped by :func:`pipeline.training.engines.precision_settings`.
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
    _check_unique_outputs(items, output_dir, output_postfix)
    _remove_stale_partials(Path(output_dir), output_postfix)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    network.eval()
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

            def predict(x: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return inferer(x.unsqueeze(0).to(device), network)[0]

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


def _check_overlap(overlap: float) -> float:
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
    the card embedded) bring their network, tile size and intensity convention (:mod:`pipeline.training.model_card`):
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
            (:mod:`pipeline.training.card_schema`); by default such a card is refused.
        **overrides: further config overrides, e.g. ``{"network_def::model_depth": 34, "patch_size": [48] * 3}``.

    Returns:
        The summary (check ``summary.failed``).

    Raises:
        ValueError: an unknown precision, fp16 without CUDA, or an overlap outside [0, 1).
        ConfigOverrideError: an override names a key the configs do not have.
        pipeline.training.model_card.ModelConfigMismatchError: an override contradicts the weights' own configuration.
        CheckpointError: the weights are missing or do not fit the network.
        UnsafeModelCardError: the weights' model card could run code or holds what a card may not.
        InputError: an input path does not exist or holds no scan.
    """
    settings: dict[str, Any] = {"dataset_dir": _as_data(inputs), "output_dir": os.fspath(output_dir)}
    settings["overwrite"] = overwrite
    if overlap is not None:
        settings["sw_overlap"] = _check_overlap(overlap)
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
    network, class names and input size (:mod:`pipeline.training.model_card`): ``weights`` alone is enough.

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
        pipeline.training.model_card.ModelConfigMismatchError: an override contradicts the weights' own configuration.
        CheckpointError: the weights are missing or do not fit the network.
        UnsafeModelCardError: the weights' model card could run code or holds what a card may not.
        InputError: an input path does not exist or holds no scan.
    """
    settings: dict[str, Any] = {"dataset_dir": _as_data(inputs), "output_csv": os.fspath(output_csv)}
    settings["overwrite"] = overwrite
    settings.update(_common_settings(weights, device, precision, channels_last, trust_card))
    configs = config_files or _bundle_configs("inference_classifier.yaml", bundle_dir)
    return _run_config(configs, {**settings, **overrides})


def _parse_overlap(text: str) -> float:
    try:
        return _check_overlap(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from error


def _parse_override(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. network_def::model_depth=34), got {text!r}")
    return key.lstrip("-"), yaml.safe_load(value)


#: What each task writes, and an example for its ``--help``.
_TASKS = {
    "denoise": (
        "write <scan>_denoised.nii.gz per scan, in the scan's own space and units",
        "output folder",
        "{prog} scans/ --output denoised/",
    ),
    "classify": (
        "write one CSV row of class probabilities per scan",
        "output CSV file",
        "{prog} scans/ --output predictions.csv --weights demo/models/classifier_denoiser/classifier.pt",
    ),
}
_EPILOG = """example:
  {example}

Inputs: scan files (NIfTI-1/2, Analyze, MGH/MGZ, MINC, NRRD, MetaImage, DICOM), folders (every medical image in
them, DICOM files grouped by series; other files are listed as ignored) or datalist .json files. Weights trained by
this project carry their configuration (model.json beside model.pt): --weights is all a trained model needs.
Exit status: 0 when every scan was processed (or skipped because its output exists), 1 when any failed or an input
cannot be used, 2 for a bad setting."""


def add_task_arguments(parser: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    """Add the arguments of ``denoise`` or ``classify`` to a parser (the module's and the console scripts').

    Args:
        parser: the (sub)parser.
        task: ``"denoise"`` or ``"classify"``.

    Returns:
        ``parser``.
    """
    _, output_help, _ = _TASKS[task]
    parser.add_argument("inputs", nargs="+", help="scan files, folders or datalist .json files")
    if task == "denoise":
        parser.add_argument("--output", default=".", help=output_help + " (default: the current folder)")
        parser.add_argument(
            "--weights",
            default=None,
            help="trained weights, .pt or .ts (default: the ready denoiser the package ships, trained on generated "
            "heads: pipeline/inference/ready/)",
        )
        parser.add_argument(
            "--no-guard",
            dest="guard",
            action="store_false",
            help="write the network's output as it is (default: SURE picks, per scan, the network, a blend with the "
            "input, a Gaussian filter or the input, whichever has the least estimated error; <scan>_denoised.json "
            "says which and the estimated gain)",
        )
        parser.add_argument(
            "--noise-level",
            type=float,
            default=None,
            metavar="LEVEL",
            help="the scans' noise standard deviation on the 0-255 scale of their robust maximum, when known "
            "(default: measured per scan, in the air around the head where there is air)",
        )
    else:
        parser.add_argument("--output", required=True, help=output_help)
        parser.add_argument(
            "--weights", default=None, help="trained weights, .pt or .ts (default: the bundle's models/ file)"
        )
    parser.add_argument("--device", default=None, help="cpu, cuda:0, ... (default: CUDA when available)")
    parser.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="auto (the bundle's default): bf16 where the CPU (AVX512-BF16/AMX) or GPU has it natively, else fp32;"
        " bf16: autocast on the CPU or CUDA (about 40x slower than fp32 on a CPU without native bf16); fp16: CUDA"
        " only; outputs are float32",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="run the network in the channels_last_3d memory layout (same weights)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute outputs that already exist (denoise) / scans the CSV already holds (classify)",
    )
    parser.add_argument(
        "--overlap",
        type=_parse_overlap,
        default=None,
        help="sliding-window overlap in [0, 1) (default: the bundle's sw_overlap); denoise only: the classifier "
        "sees each scan once, cropped to its input size",
    )
    parser.add_argument(
        "--bundle-dir", default=None, help="bundle folder whose configs/ run (default: the installed bundle)"
    )
    parser.add_argument(
        "--trust-card",
        action="store_true",
        help="apply the weights' model card unchecked: only for a card from someone you trust, as it may then run "
        "any code (by default a card is data, and one naming a network off the allow-list or carrying MONAI "
        "expressions is refused)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set network_def::model_depth=34 (repeatable)",
    )
    return parser


def task_parser(task: str, prog: str) -> argparse.ArgumentParser:
    """The parser of one task, as the console scripts (``resunet3d-denoise``, ``resunet3d-classify``) use it.

    Args:
        task: ``"denoise"`` or ``"classify"``.
        prog: the program name shown in the usage and the example.

    Returns:
        The parser; its ``--help`` ends with an example.
    """
    description, _, example = _TASKS[task]
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description.capitalize()}.",
        epilog=_EPILOG.format(example=example.format(prog=prog)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return add_task_arguments(parser, task)


def _denoiser_weights(weights: str | None, overrides: Mapping[str, Any]) -> str | os.PathLike | None:
    """The command line's weights: the ones given, else the ready denoiser (unless ``--set ckpt_path=...``)."""
    if weights is not None or "ckpt_path" in overrides:
        return weights
    from pipeline.inference.ready import default_weights

    path = default_weights()
    logger.info("no --weights given: using the ready denoiser %s (trained on generated heads only)", path)
    return path


def run_task(task: str, args: argparse.Namespace) -> int:
    """Run parsed arguments of ``denoise`` or ``classify``; print the summary to standard error.

    Args:
        task: ``"denoise"`` or ``"classify"``.
        args: from :func:`task_parser` or the module's parser.

    Returns:
        0 when every scan was processed or skipped, 1 when any failed or an input cannot be used, 2 for a bad
        config key or value (e.g. ``--precision fp16`` without CUDA, an override contradicting the weights).
    """
    from pipeline.bundle_run import ConfigOverrideError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = dict(args.overrides)
    for key, value in (("precision", args.precision), ("channels_last", args.channels_last)):
        if value is not None:  # a flag wins over --set; absent, the --set value or the bundle's default stands
            overrides[key] = value
    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    try:
        if task == "denoise":
            if not args.guard:
                overrides["guard_enabled"] = False
            if args.noise_level is not None:
                overrides["known_noise_level"] = args.noise_level
            summary = denoise_scans(
                inputs,
                args.output,
                _denoiser_weights(args.weights, overrides),
                args.device,
                args.overwrite,
                overlap=args.overlap,
                bundle_dir=args.bundle_dir,
                trust_card=args.trust_card,
                **overrides,
            )
        else:
            if args.overlap is not None:
                raise ValueError(
                    "--overlap sets the denoiser's sliding windows; the classifier sees each scan once, cropped "
                    "to its input size, so there is no overlap to set"
                )
            summary = classify_scans(
                inputs,
                args.output,
                args.weights,
                args.device,
                overwrite=args.overwrite,
                bundle_dir=args.bundle_dir,
                trust_card=args.trust_card,
                **overrides,
            )
    except (ConfigOverrideError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (InputError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary.report(), file=sys.stderr)  # every file not processed, and the counts, at the end
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pipeline.inference.infer {denoise,classify} INPUT... --output ... [--weights ...]``.

    The summary (failed and ignored files with their reasons, then the counts) is printed to standard error at the
    end.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every scan was processed, 1 when any failed or an input cannot be used, 2 for a bad config key or
        value (e.g. ``--precision fp16`` without CUDA).
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.inference.infer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="task", required=True)
    for task, (help_text, _, example) in _TASKS.items():
        prog = f"python -m pipeline.inference.infer {task}"
        add_task_arguments(
            sub.add_parser(
                task,
                help=help_text,
                description=f"{help_text.capitalize()}.",
                epilog=_EPILOG.format(example=example.format(prog=prog)),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            ),
            task,
        )
    args = parser.parse_args(argv)
    return run_task(args.task, args)


if __name__ == "__main__":
    # run the importable module's main, so exceptions raised by config expressions (which import
    # pipeline.inference.infer) are the same classes as the ones caught here
    from pipeline.inference.infer import main as _main

    sys.exit(_main())
