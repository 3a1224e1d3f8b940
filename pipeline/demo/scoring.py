"""The demo's denoising scores: the test volumes on one scale, the classical filters and the network scored on them.

Every volume (noisy input, each method's output, clean reference) is divided by the clean scan's robust maximum
(99.5th percentile of its non-zero voxels), so the data range is 1 and PSNR/SSIM are comparable across methods
(:func:`pipeline.evaluation.metrics.volume_quality`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.demo.settings import DemoSettings
from transforms.intensity import robust_max

__all__ = ["load_case", "load_volume", "mean_quality", "score_classical", "score_network"]


def load_volume(path: str | os.PathLike) -> np.ndarray:
    """A NIfTI volume's voxels as float32."""
    return np.asarray(nib.load(os.fspath(path)).get_fdata(dtype=np.float32))


def load_case(cohort_dir: Path, noise_dir: str, subject: str) -> dict[str, Any]:
    """Noisy, clean and mask volumes of one subject on the clean scan's robust-maximum scale."""
    name = f"{subject}.nii.gz"
    clean = load_volume(cohort_dir / "clean" / name)
    reference = robust_max(clean)
    return {
        "subject": subject,
        "reference": reference,
        "clean": clean / reference,
        "noisy": load_volume(cohort_dir / noise_dir / name) / reference,
        "mask": (load_volume(cohort_dir / "masks" / name) > 0).astype(np.float32),
    }


def mean_quality(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each quality figure (and the seconds) averaged over the test volumes."""
    from pipeline.evaluation.metrics import QUALITY_KEYS

    return {key: float(np.mean([r[key] for r in rows])) for key in (*QUALITY_KEYS, "seconds")}


def score_classical(
    settings: DemoSettings, cases: Sequence[Mapping[str, Any]], tuning: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Stage 6: each classical denoiser tuned on the *tuning* volumes, then scored on ``cases``."""
    from tqdm.auto import tqdm

    from pipeline.evaluation.classical import get_denoiser, tune
    from pipeline.evaluation.metrics import volume_quality

    quality: dict[str, list[dict[str, Any]]] = {}
    parameters: dict[str, str] = {}
    with tqdm(total=len(settings.classical) * (len(cases) + 1), desc="classical denoisers", unit="step") as bar:
        for name in settings.classical:
            method = get_denoiser(name)
            param, _ = tune(method, tuning, quick=settings.quick_grids)
            bar.update(1)
            parameters[name] = "-" if param is None else f"{method.param} = {param}"
            rows = []
            for case in cases:
                start = time.perf_counter()
                denoised = method(case["noisy"], param)
                seconds = time.perf_counter() - start
                rows.append({**volume_quality(denoised, case["clean"], case["mask"]), "seconds": seconds})
                bar.update(1)
            quality[name] = rows
    return quality, parameters


def score_network(
    out: Path, cases: Sequence[Mapping[str, Any]], network_seconds: Mapping[str, float], folder: str = "denoised"
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The network's denoised scans (as ``inference.yaml`` wrote them under ``<out>/<folder>``) on each case's scale."""
    from pipeline.evaluation.metrics import volume_quality

    rows, volumes = [], {}
    for case in cases:
        volume = load_volume(out / folder / f"{case['subject']}_denoised.nii.gz") / case["reference"]
        volumes[case["subject"]] = volume
        rows.append(
            {**volume_quality(volume, case["clean"], case["mask"]), "seconds": network_seconds[case["subject"]]}
        )
    return rows, volumes
