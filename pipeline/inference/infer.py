"""Inference on new scans: denoised NIfTI in each scan's own space, class probabilities as CSV.

Input is a file, a folder or a datalist JSON (or a list of them), in any orientation, voxel size and matrix size:
NIfTI-1/2, Analyze, MGH/MGZ, MINC, NRRD, MetaImage and DICOM, any byte order and data type. A folder gives every
medical image file in it and one item per DICOM series (:mod:`pipeline.inference.scan_listing`); a file that cannot be
read
fails with its reason, and other files are listed as ignored. Weights trained by this project carry their
configuration (``model.json`` beside ``model.pt``, :mod:`pipeline.runtime.model_card`), so ``--weights`` is enough.
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

This module is the public facade; the code lives in rooms: :mod:`.results` (:class:`ScanResult`,
:class:`InferenceSummary`), :mod:`.scan_listing` (:func:`collect_scans`), :mod:`.writer` (:class:`SaveLikeSourced`),
:mod:`.loops` (:func:`denoise_items`, :func:`classify_items`), :mod:`.runner` (:func:`denoise_scans`,
:func:`classify_scans`) and :mod:`.cli` (:func:`main`); weight loading is :mod:`pipeline.runtime.weights`.
"""

from __future__ import annotations

import sys

from pipeline.inference.cli import add_task_arguments, main, run_task, task_parser
from pipeline.inference.loops import classify_items, denoise_items
from pipeline.inference.results import InferenceSummary, ScanResult
from pipeline.inference.runner import classify_scans, denoise_scans
from pipeline.inference.scan_listing import collect_scans
from pipeline.inference.writer import DENOISED_POSTFIX, SaveLikeSourced, output_file
from pipeline.runtime.weights import check_weights_file, load_weights

__all__ = [
    "DENOISED_POSTFIX",
    "InferenceSummary",
    "SaveLikeSourced",
    "ScanResult",
    "add_task_arguments",
    "check_weights_file",
    "classify_items",
    "classify_scans",
    "collect_scans",
    "denoise_items",
    "denoise_scans",
    "load_weights",
    "main",
    "output_file",
    "run_task",
    "task_parser",
]

if __name__ == "__main__":
    # run the importable module's main, so exceptions raised by config expressions (which import the pipeline's
    # modules) are the same classes as the ones caught here
    from pipeline.inference.cli import main as _main

    sys.exit(_main())
