"""Helpers every benchmark script shares: machine facts, timing, test volumes, networks, tables and JSON output.

Nothing here downloads anything: the MNI152 template and brain mask come from files inside the installed nilearn
package, and the "real scan of another person" is the T1 volume that ships inside nibabel's test data.

Nothing here is a second copy of the pipeline: the benchmarks score with ``pipeline.evaluation.metrics``, noise
volumes with ``transforms.noise``, read the template with ``pipeline.data.cohort`` and build networks with
``networks.get_network``; this module only adapts them to the benchmarks' [0, 1] test volumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = [
    "SMALL_NETWORKS",
    "REAL_SCAN",
    "Progress",
    "announce",
    "benchmark_precision",
    "build_denoiser",
    "bundle_resunet_config",
    "center_crop",
    "default_out",
    "describe_cpu",
    "expected_duration",
    "format_table",
    "head_mask",
    "load_real_scan",
    "load_template",
    "machine_info",
    "nibabel_data_dir",
    "noisy_copy",
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
    """Describe the machine and software a figure was measured on (:func:`pipeline.utils.machine.machine_info`)."""
    from pipeline.utils.machine import machine_info as _machine_info

    return _machine_info()


def describe_cpu() -> str:
    """One line naming this CPU: model, logical CPUs, AVX2/AVX-512/AVX512-BF16/AMX flags, torch's kernels, bf16 verdict.

    Returns:
        :meth:`pipeline.utils.precision.HardwareReport.describe_cpu` of this machine, plus torch's thread count.
    """
    import torch

    from pipeline.utils.precision import detect_hardware

    return f"{detect_hardware().describe_cpu()}; torch threads {torch.get_num_threads()}"


def benchmark_precision(requested: str = "auto") -> tuple[str, str]:
    """Resolve a benchmark's ``--precision`` on the CPU with the project's rule (:mod:`pipeline.utils.precision`).

    Args:
        requested: ``"auto"``, ``"fp32"`` or ``"bf16"``.

    Returns:
        ``(precision, note)``: ``"fp32"`` or ``"bf16"``, and a line saying what was asked, what runs and why.

    Raises:
        ValueError: for a precision the CPU cannot run (``fp16``) or an unknown one.
    """
    from pipeline.utils.precision import detect_hardware, resolve_precision

    hardware = detect_hardware()
    resolved = resolve_precision(requested, "cpu", hardware)
    why = hardware.cpu_bf16_reason()
    if requested == "auto":
        return resolved, f"auto -> {resolved} ({why})"
    if resolved == "bf16" and not hardware.native_cpu_bf16:
        return resolved, f"bf16 as asked, EMULATED ({why}): expect it about 40x slower than fp32"
    return resolved, f"{resolved} as asked ({why})"


def expected_duration(native_bf16_s: float, avx2_s: float, hardware: Any = None) -> str:
    """Roughly how long a run takes on this machine, from references for two kinds of 2-core CPU.

    A machine counts as the first kind when it has native bf16 (:mod:`pipeline.utils.precision`) and as the second
    otherwise, and the reference is scaled by its logical CPU count (torch's kernels scale about linearly on a few
    cores). Each caller says where its references come from: the CPU seconds of a run on the 2-core Intel Xeon with
    AMX these benchmarks were developed on, natively and limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2
    ATEN_CPU_CAPABILITY=avx2``), divided by 1.5 (the machine was shared, so its wall times overstated the run), or
    the README's figures of the 2-core AMD EPYCs.

    Args:
        native_bf16_s: seconds on 2 idle cores of a CPU with native bf16.
        avx2_s: seconds on 2 idle cores of a CPU with AVX2 only.
        hardware: the :class:`pipeline.utils.precision.HardwareReport` to estimate for (default: this machine's).

    Returns:
        E.g. ``"about 40 s here (2 idle cores: 25 s with native bf16, 40 s with AVX2 only)"``.
    """
    from pipeline.utils.precision import detect_hardware

    hardware = detect_hardware() if hardware is None else hardware
    reference = native_bf16_s if hardware.native_cpu_bf16 else avx2_s
    estimate = reference * 2 / max(1, min(hardware.logical_cpus, 16))
    return (
        f"about {_clock(estimate)} here (2 idle cores: {_clock(native_bf16_s)} with native bf16, "
        f"{_clock(avx2_s)} with AVX2 only)"
    )


def _clock(seconds: float) -> str:
    """``"40 s"``, ``"3.5 min"`` or ``"1.2 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def announce(
    benchmark: str, plan: str, expected: str, precision: str | None = None, file: TextIO | None = None
) -> None:
    """Print what a benchmark is about to do, roughly how long it takes, on which CPU and in which precision.

    Args:
        benchmark: the module, e.g. ``"benchmarks.throughput"``.
        plan: what it will run, in one line.
        expected: roughly how long (:func:`expected_duration`, or a formula's result).
        precision: the precision note (:func:`benchmark_precision`), if the benchmark has one.
        file: where to print (default standard output).
    """
    out = file or sys.stdout
    print(f"{benchmark}: {plan}", file=out, flush=True)
    print(f"  expected: {expected}", file=out, flush=True)
    print(f"  CPU: {describe_cpu()}", file=out, flush=True)
    if precision:
        print(f"  precision: {precision}", file=out, flush=True)


class Progress:
    """A line per finished step: ``[3/8] unet fp32: 0.120 s/step (0:14 elapsed, about 0:30 left)``.

    Args:
        total: the number of steps announced.
        file: where to print (default standard output).
    """

    def __init__(self, total: int, file: TextIO | None = None) -> None:
        if total < 1:
            raise ValueError(f"total must be >= 1, got {total}")
        self.total = total
        self.done = 0
        self.file = file
        self.start = time.perf_counter()

    def step(self, text: str) -> None:
        """Count one step and print its line with the elapsed time and the estimate of the time left.

        Args:
            text: what the step measured.
        """
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * max(0, self.total - self.done)
        tail = f"{_mmss(elapsed)} elapsed" + (f", about {_mmss(left)} left" if self.done < self.total else "")
        print(f"[{self.done}/{self.total}] {text} ({tail})", file=self.file or sys.stdout, flush=True)


def _mmss(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


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
    """The MNI152 2009 T1 template of nilearn (1 mm, 197 x 233 x 189, skull-stripped, [0, 1]) and its brain mask.

    Read by the cohort's loader (:func:`pipeline.data.cohort.load_template`, uncropped), so the benchmarks and the
    demo cohort start from the same arrays.

    Returns:
        ``(t1, mask)``: the float32 T1 volume on [0, 1] and the boolean brain mask (nilearn's
        ``load_mni152_brain_mask``).
    """
    from pipeline.data.cohort import load_template as cohort_template

    template = cohort_template(margin=None)
    return np.array(template.t1), template.mask > 0.5


def nibabel_data_dir() -> Path:
    """The folder of the test data that ships inside the installed nibabel package (real scans among them).

    Returns:
        ``<nibabel>/tests/data``.
    """
    import nibabel as nib

    return Path(nib.__file__).parent / "tests" / "data"


def head_mask(volume: np.ndarray) -> np.ndarray:
    """The head of a scan without a brain mask: its Otsu foreground with holes filled.

    Args:
        volume: a 3-D volume (any intensity scale).

    Returns:
        The boolean mask, same shape.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    return ndimage.binary_fill_holes(volume > threshold_otsu(volume))


def load_real_scan() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load the real T1 scan of a person that ships with nibabel's test data, scaled to [0, 1], with a head mask.

    The volume (``nibabel/tests/data/anatomical.nii``: 33 x 41 x 25 voxels of 2 mm, not skull-stripped) is scaled
    by the 0.5th and 99.5th percentiles of all its voxels and clipped to [0, 1] (``transforms.intensity``'s
    ``ScalePercentile(nonzero=False, clip=True)``); the evaluation mask is the Otsu foreground (head),
    with holes filled, since the scan has no brain mask. Its own noise level is estimated with scikit-image's
    ``estimate_sigma`` (wavelet MAD) on that scale and reported on the 0-255 scale.

    Returns:
        ``(volume, mask, info)`` with ``info`` holding the path, shape, spacing and estimated noise sigma (0-255).
    """
    import nibabel as nib
    from skimage.restoration import estimate_sigma

    from transforms.intensity import ScalePercentile

    image = nib.load(nibabel_data_dir() / "anatomical.nii")
    data = np.asarray(image.get_fdata(), dtype=np.float32)
    volume = np.asarray(ScalePercentile(lower=0.5, nonzero=False, clip=True)(data[None])[0], dtype=np.float32)
    mask = head_mask(volume)
    sigma = float(estimate_sigma(volume))
    info = {
        "path": REAL_SCAN,
        "shape": list(volume.shape),
        "spacing_mm": [float(z) for z in image.header.get_zooms()[:3]],
        "own_noise_sigma_255": round(255.0 * sigma, 2),
        "mask": "Otsu head foreground (not skull-stripped)",
    }
    return volume, mask, info


def noisy_copy(clean: np.ndarray, kind: str, seed: int, level: float = 15.0) -> np.ndarray:
    """A seeded noisy copy of a [0, 1] volume, made by the project's noise transforms (``transforms.noise``).

    Args:
        clean: the clean volume on the [0, 1] scale (the reference intensity is 1).
        kind: ``"gaussian"`` (``RandGaussianNoise255``: sigma = ``level`` / 255 of the [0, 1] range),
            ``"rician"`` (``RandRicianNoise``: the magnitude of the volume plus complex Gaussian noise of that sigma
            per channel) or ``"poisson"`` (``RandPoissonNoise``: ``Poisson(clean * s) / s`` with ``s`` =
            :func:`poisson_scale`, so variance = mean / s).
        seed: seed of the transform's random state.
        level: Gaussian or Rician sigma on the 0-255 scale (ignored for Poisson).

    Returns:
        The noisy float32 volume (not clipped).

    Raises:
        ValueError: if ``kind`` is not one of the three names, or the volume does not suit the model.
    """
    from transforms.noise import make_noise

    if kind not in ("gaussian", "rician", "poisson"):
        raise ValueError(f"kind must be 'gaussian', 'rician' or 'poisson', got {kind!r}")
    noise = make_noise(kind, poisson_scale() if kind == "poisson" else level, keys=None).set_random_state(seed)
    return np.asarray(noise(np.asarray(clean, dtype=np.float32)[None])[0], dtype=np.float32)


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
    # ... which come from the named preset (`model_depth: "$networks.presets.preset(@network_preset)[...]"`)
    from networks.presets import preset

    named = preset(common.get("network_preset", "small"))
    kwargs = {
        k: named[k] if k in named and isinstance(v, str) and v.startswith("$networks.presets.") else v
        for k, v in kwargs.items()
    }
    unresolved = {k: v for k, v in kwargs.items() if isinstance(v, str) and v[:1] in "@$"}
    if unresolved:
        raise ValueError(f"bundle network_def has references the benchmark cannot resolve: {unresolved}")
    return kwargs


#: The smaller versions of the compared networks for ``--quick`` runs (``networks.get_network`` arguments).
#: The networks of the quick smoke runs (``build_denoiser(name, "small")``).
SMALL_NETWORKS = {
    "resunet3d": {"model_depth": 10, "levels": 2},  # on top of the bundle's network_def
    "unet": {"channels": (8, 16, 32, 64), "strides": (2, 2, 2)},
    "basicunet": {"features": (8, 8, 16, 32, 64, 8)},
    "flexibleunet": {"decoder_channels": (64, 32, 16, 8, 4)},
}


def build_denoiser(name: str, size: str = "default", **overrides: Any) -> Any:
    """Build one of the compared 3-D denoisers (1 input channel, 1 output channel, random weights).

    Built by the project's registry (``networks.get_network``), whose defaults are the configurations a user would
    pick first: ``UNet`` with channels (16, 32, 64, 128, 256), strides 2 and two residual units; ``BasicUNet`` with
    its default features (32, 32, 64, 128, 256, 32); ``FlexibleUNet`` with a ResNet-18 backbone
    (``pretrained=False``). ResUnet3D is configured as the bundle ships it (:func:`bundle_resunet_config`);
    ``size="small"`` gives smaller versions of all four for the quick smoke runs.

    Args:
        name: ``"resunet3d"``, ``"unet"``, ``"basicunet"`` or ``"flexibleunet"``.
        size: ``"default"`` or ``"small"`` (smaller versions for ``--quick`` runs).
        **overrides: keyword arguments replacing the ResUnet3D configuration (ResUnet3D only).

    Returns:
        The ``torch.nn.Module``.

    Raises:
        ValueError: if ``name`` or ``size`` is unknown, or ``overrides`` are given for a MONAI network.
    """
    from networks import get_network

    if size not in ("default", "small"):
        raise ValueError(f"size must be 'default' or 'small', got {size!r}")
    if name not in SMALL_NETWORKS:
        raise ValueError(f"name must be one of {sorted(SMALL_NETWORKS)}, got {name!r}")
    if overrides and name != "resunet3d":
        raise ValueError(f"overrides apply to resunet3d only, got {sorted(overrides)} for {name!r}")
    kwargs = bundle_resunet_config() if name == "resunet3d" else {}
    if size == "small":
        kwargs.update(SMALL_NETWORKS[name])
    return get_network(name, **{**kwargs, **overrides})


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
    from pipeline.utils.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return path
