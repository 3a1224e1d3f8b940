"""Helpers every benchmark script shares: machine facts, timing, masked image metrics, tables and JSON output.

Nothing here downloads anything: the MNI152 template and brain mask come from files inside the installed nilearn
package, and the "real scan of another person" is the T1 volume that ships inside nibabel's test data.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REAL_SCAN",
    "add_noise",
    "build_denoiser",
    "bundle_resunet_config",
    "center_crop",
    "default_out",
    "format_table",
    "load_real_scan",
    "load_template",
    "machine_info",
    "masked_psnr_ssim",
    "median_seconds",
    "poisson_scale",
    "write_json",
]

#: nibabel ships this real T1-weighted scan of a person (2 mm, 33 x 41 x 25, not skull-stripped) as test data.
REAL_SCAN = "nibabel/tests/data/anatomical.nii"

#: photon count at intensity 1.0 of the [0, 1] scale for the Poisson benchmarks: variance = mean / scale.
_POISSON_SCALE = 200.0


def poisson_scale() -> float:
    """Return the photon count per unit intensity used for Poisson noise (variance = mean / scale).

    Returns:
        The scale (200, as the demo cohort's ``poisson/`` folder: a voxel of intensity 1 has mean 200 counts).
    """
    return _POISSON_SCALE


def machine_info() -> dict[str, Any]:
    """Describe the machine and software a figure was measured on.

    Returns:
        A dict with the UTC date, CPU model name (``lscpu``), logical CPU count, torch thread count and the versions
        of Python, torch, MONAI and NumPy.
    """
    import monai
    import torch

    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Time ``fn`` and return the median wall-clock seconds of ``repeats`` calls after ``warmup`` untimed calls.

    Args:
        fn: the callable to time (its result is discarded).
        repeats: timed calls (>= 1).
        warmup: untimed calls first (>= 0).

    Returns:
        The median duration in seconds.

    Raises:
        ValueError: if ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def masked_psnr_ssim(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float = 1.0
) -> tuple[float, float]:
    """PSNR and SSIM of a 3-D volume restricted to a mask.

    PSNR = 10 log10(data_range^2 / MSE) with the MSE averaged over the mask's voxels only. SSIM is scikit-image's
    ``structural_similarity`` (7^3 uniform window, ``data_range`` given) computed over the whole volume with
    ``full=True``; its per-voxel map is then averaged over the mask.

    Args:
        pred: the denoised volume (H, W, D), on the same scale as ``ref``.
        ref: the reference (clean) volume (H, W, D).
        mask: boolean or 0/1 volume (H, W, D); at least one voxel set.
        data_range: the intensity range of the scale (1.0 for volumes scaled to [0, 1]).

    Returns:
        ``(psnr_db, ssim)``.

    Raises:
        ValueError: if the shapes differ or the mask is empty.
    """
    from skimage.metrics import structural_similarity

    if pred.shape != ref.shape or ref.shape != mask.shape:
        raise ValueError(f"pred, ref and mask must have one shape, got {pred.shape}, {ref.shape}, {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask is empty")
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    mse = float(np.mean((pred[mask] - ref[mask]) ** 2))
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)
    _, ssim_map = structural_similarity(ref, pred, data_range=data_range, full=True, win_size=7)
    return psnr, float(ssim_map[mask].mean())


def center_crop(volume: np.ndarray, size: int, center: Sequence[int] | None = None) -> tuple[slice, ...]:
    """Slices of a ``size``^3 cube inside ``volume`` around ``center`` (default: the volume's centre), clipped in.

    Args:
        volume: the 3-D array to crop.
        size: edge length in voxels (<= every axis of ``volume``).
        center: voxel coordinates of the cube's centre.

    Returns:
        A tuple of three slices.

    Raises:
        ValueError: if ``size`` exceeds an axis.
    """
    if any(size > s for s in volume.shape):
        raise ValueError(f"size must be <= every axis of {volume.shape}, got {size}")
    center = [s // 2 for s in volume.shape] if center is None else list(center)
    starts = [min(max(c - size // 2, 0), s - size) for c, s in zip(center, volume.shape)]
    return tuple(slice(a, a + size) for a in starts)


def load_template() -> tuple[np.ndarray, np.ndarray]:
    """Load nilearn's MNI152 2009 T1 template (1 mm, 197 x 233 x 189, skull-stripped, [0, 1]) and its brain mask.

    Returns:
        ``(t1, mask)``: float32 volume scaled to [0, 1] by its maximum, and a boolean brain mask (nilearn's
        ``load_mni152_brain_mask``, grey + white matter probability > 0.2).
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    t1 = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    t1 /= float(t1.max())
    mask = np.asarray(load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    return t1, mask


def load_real_scan() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load the real T1 scan of a person that ships with nibabel's test data, scaled to [0, 1], with a head mask.

    The volume (``nibabel/tests/data/anatomical.nii``: 33 x 41 x 25 voxels of 2 mm, not skull-stripped) is scaled
    by its 0.5th and 99.5th percentiles and clipped to [0, 1]; the evaluation mask is the Otsu foreground (head),
    with holes filled, since the scan has no brain mask. Its own noise level is estimated with scikit-image's
    ``estimate_sigma`` (wavelet MAD) on that scale and reported on the 0-255 scale.

    Returns:
        ``(volume, mask, info)`` with ``info`` holding the path, shape, spacing and estimated noise sigma (0-255).
    """
    import nibabel as nib
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.restoration import estimate_sigma

    path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    image = nib.load(path)
    data = np.asarray(image.get_fdata(), dtype=np.float32)
    lo, hi = np.percentile(data, [0.5, 99.5])
    volume = np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    mask = ndimage.binary_fill_holes(volume > threshold_otsu(volume))
    sigma = float(estimate_sigma(volume))
    info = {
        "path": REAL_SCAN,
        "shape": list(volume.shape),
        "spacing_mm": [float(z) for z in image.header.get_zooms()[:3]],
        "own_noise_sigma_255": round(255.0 * sigma, 2),
        "mask": "Otsu head foreground (not skull-stripped)",
    }
    return volume, mask, info


def add_noise(clean: np.ndarray, kind: str, seed: int, level: float = 15.0) -> np.ndarray:
    """Add seeded noise to a [0, 1] volume.

    Args:
        clean: the clean volume on the [0, 1] scale.
        kind: ``"gaussian"`` (zero-mean normal, sigma = ``level`` / 255 of the [0, 1] range) or ``"poisson"``
            (``Poisson(clean * s) / s`` with ``s`` = :func:`poisson_scale`, so variance = mean / s).
        seed: seed of the NumPy generator.
        level: Gaussian sigma on the 0-255 scale (ignored for Poisson).

    Returns:
        The noisy float32 volume (not clipped).

    Raises:
        ValueError: if ``kind`` is not one of the two names.
    """
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return (clean + rng.normal(0.0, level / 255.0, clean.shape)).astype(np.float32)
    if kind == "poisson":
        scale = poisson_scale()
        return (rng.poisson(np.clip(clean, 0, None) * scale) / scale).astype(np.float32)
    raise ValueError(f"kind must be 'gaussian' or 'poisson', got {kind!r}")


def bundle_resunet_config() -> dict[str, Any]:
    """ResUnet3D's keyword arguments as the bundle ships them (``network_def`` of ``bundle/configs/common.yaml``).

    Returns:
        The arguments without ``_target_``; ``{"model_depth": 18}`` when the bundle file is absent (a bare copy of
        ``benchmarks/`` and ``networks/``, as on a GPU machine).

    Raises:
        ValueError: if ``network_def`` holds a reference or expression (``@``/``$``) the benchmark cannot resolve.
    """
    path = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "common.yaml"
    if not path.is_file():
        return {"model_depth": 18}
    import yaml

    common = yaml.safe_load(path.read_text())
    config = common["network_def"]
    # patch_size only validates the bundle's own patches; the benchmarks choose theirs
    kwargs = {k: v for k, v in config.items() if k not in ("_target_", "patch_size")}
    # the encoder's shape is read from shared top-level keys (`model_depth: '@model_depth'`)
    kwargs = {
        k: common[v[1:]] if isinstance(v, str) and v[1:] in common and v[:1] == "@" else v for k, v in kwargs.items()
    }
    unresolved = {k: v for k, v in kwargs.items() if isinstance(v, str) and v[:1] in "@$"}
    if unresolved:
        raise ValueError(f"bundle network_def has references the benchmark cannot resolve: {unresolved}")
    return kwargs


def build_denoiser(name: str, size: str = "default", **overrides: Any) -> Any:
    """Build one of the compared 3-D denoisers (1 input channel, 1 output channel, random weights).

    The MONAI configurations are the ones a user would pick first (and ``networks.get_network``'s defaults):
    ``UNet`` with channels (16, 32, 64, 128, 256), strides 2 and two residual units; ``BasicUNet`` with its default
    features (32, 32, 64, 128, 256, 32); ``FlexibleUNet`` with a ResNet-18 backbone (``pretrained=False``).
    ResUnet3D is configured as the bundle ships it (:func:`bundle_resunet_config`); ``size="small"`` sets depth 10,
    levels 3 on top of it for the quick smoke runs.

    Args:
        name: ``"resunet3d"``, ``"unet"``, ``"basicunet"`` or ``"flexibleunet"``.
        size: ``"default"`` or ``"small"`` (smaller versions for ``--quick`` runs).
        **overrides: keyword arguments replacing the ResUnet3D configuration (ResUnet3D only).

    Returns:
        The ``torch.nn.Module``.

    Raises:
        ValueError: if ``name`` or ``size`` is unknown, or ``overrides`` are given for a MONAI network.
    """
    from monai.networks.nets import BasicUNet, FlexibleUNet, UNet

    if size not in ("default", "small"):
        raise ValueError(f"size must be 'default' or 'small', got {size!r}")
    small = size == "small"
    if name == "resunet3d":
        from networks import ResUnet3D

        kwargs = bundle_resunet_config()
        if small:  # as benchmarks.inference overrides the bundle's network_def for its quick runs
            kwargs.update(model_depth=10, levels=3)
        kwargs.update(spatial_dims=3, in_channels=1, out_channels=1)
        return ResUnet3D(**{**kwargs, **overrides})
    if overrides:
        raise ValueError(f"overrides apply to resunet3d only, got {sorted(overrides)} for {name!r}")
    if name == "unet":
        channels = (8, 16, 32, 64) if small else (16, 32, 64, 128, 256)
        return UNet(3, 1, 1, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=2)
    if name == "basicunet":
        features = (8, 8, 16, 32, 64, 8) if small else (32, 32, 64, 128, 256, 32)
        return BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=features)
    if name == "flexibleunet":
        decoder = (64, 32, 16, 8, 4) if small else (256, 128, 64, 32, 16)
        return FlexibleUNet(1, 1, backbone="resnet18", pretrained=False, spatial_dims=3, decoder_channels=decoder)
    raise ValueError(f"name must be one of 'resunet3d', 'unet', 'basicunet', 'flexibleunet', got {name!r}")


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as a Markdown table (floats with 3 significant decimals, missing cells as ``-``).

    Args:
        rows: one dict per row.
        columns: the keys to show, in order.

    Returns:
        The table as a string.
    """

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def default_out(name: str) -> Path:
    """The default JSON path of a benchmark: ``benchmarks/results/<name>.json`` under the repository root.

    Args:
        name: the benchmark's module name.

    Returns:
        The path.
    """
    return Path(__file__).resolve().parent / "results" / f"{name}.json"


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``result`` as indented JSON atomically (temporary file + rename).

    Args:
        result: JSON-serialisable dict.
        path: destination.

    Returns:
        The destination path.
    """
    from pipeline.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return path
