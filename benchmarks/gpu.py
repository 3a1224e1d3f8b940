"""GPU benchmark (<= 5 minutes on one H100): training throughput with AMP and whole-brain inference latency.

Run on a machine with a CUDA GPU and its own torch build, from the repository root::

    python -m benchmarks.gpu                 # prints one JSON document; also writes $OUT/gpu.json when OUT is set
    python -m benchmarks.gpu --quick         # a smoke run in seconds (runs on the CPU when there is no GPU)

Needs only torch, numpy and MONAI (a pure-Python wheel: ``pip install --no-deps monai==1.6.1`` or a carried wheel),
plus this repository's ``networks`` package; nothing is downloaded and no data set is read: the "brain" is a smooth
synthetic 197 x 233 x 189 volume (the MNI152 1 mm grid), since speed does not depend on the content.

Sections, each under a shared time budget (``--budget-s``; a section that would start past it is skipped and
listed under ``skipped``; the JSON is rewritten after every section, so a killed run still leaves its figures):

1. conv3d ceiling: ``Conv3d(32, 32, 3)`` forward + backward on (4, 32, 96, 96, 96) in fp32 (TF32 on), bf16 and
   fp16 autocast, NCDHW and ``channels_last_3d``.
2. Training step (forward, L1, backward, Adam) at batch 4 of 96^3 patches for MONAI UNet, BasicUNet,
   FlexibleUNet(resnet18) and ResUnet3D-18: fp32/TF32, bf16 autocast, fp16 autocast with ``GradScaler``, bf16 +
   ``channels_last_3d``; samples/s, GFLOP/s (``FlopCounterMode``) and peak GPU memory.
3. Whole-brain inference latency: ResUnet3D-18 on the 1 mm volume with MONAI's ``sliding_window_inference``
   (the bundle's 64^3 tiles, 4 per pass, overlap 0.5, Gaussian blending; and 128^3 tiles, 8 per pass, overlap
   0.25), fp32 and bf16 autocast, ``torch.inference_mode``; median of 3 after a warm-up, plus peak GPU memory.
4. ``torch.compile`` of ResUnet3D's training step (bf16), compile time and steady-state step time, if time is left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["main"]

NETWORKS = ("unet", "basicunet", "flexibleunet", "resunet3d")


def _build(name: str, small: bool) -> torch.nn.Module:
    """The four compared networks (same configurations as ``benchmarks._common.build_denoiser``)."""
    from benchmarks._common import build_denoiser

    return build_denoiser(name, "small" if small else "default")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def _native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively (the rule of ``precision: auto``), and a line saying why.

    Uses :mod:`pipeline.utils.precision` when the repository's ``pipeline`` package is there; a bare copy of
    ``benchmarks/`` and ``networks/`` (a GPU machine) asks torch directly: bf16 on a CUDA GPU that supports it, never
    on the CPU.
    """
    try:
        from pipeline.utils.precision import detect_hardware, resolve_precision
    except ImportError:
        native = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return native, f"{device.type}: bf16 {'supported' if native else 'not measured (pipeline package absent)'}"
    hardware = detect_hardware()
    native = resolve_precision("auto", device, hardware) == "bf16"
    return native, f"auto -> {'bf16' if native else 'fp32'}; CPU: {hardware.describe_cpu()}"


def conv_ceiling(
    device: torch.device, size: int, batch: int, steps: int, bf16: bool = True, warmup: int = 3
) -> list[dict[str, Any]]:
    """Forward + backward GFLOP/s of a 32 -> 32, 3^3 convolution per precision and memory layout.

    ``bf16=False`` leaves bf16 out (a CPU that would emulate it); fp16 is measured on CUDA only.
    """
    rows = []
    precisions = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    if not bf16:
        precisions.remove("bf16")
    for precision in precisions:
        for channels_last in (False, True):
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
            conv = torch.nn.Conv3d(32, 32, 3, padding=1).to(device, memory_format=fmt)
            x = torch.randn(batch, 32, size, size, size, device=device).contiguous(memory_format=fmt)
            x.requires_grad_(True)
            dtype = _dtype(precision)

            def step(conv: torch.nn.Module = conv, x: torch.Tensor = x, dtype: torch.dtype | None = dtype) -> None:
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    out = conv(x)
                out.float().sum().backward()

            flop = _flops(step)
            seconds = _median_s(step, device, steps, warmup=warmup)
            rows.append(
                {
                    "precision": precision,
                    "channels_last_3d": channels_last,
                    "gflops": flop / seconds / 1e9,
                    "s": seconds,
                }
            )
    return rows


def train_rate(
    name: str,
    device: torch.device,
    patch: int,
    batch: int,
    steps: int,
    precision: str,
    channels_last: bool,
    small: bool,
    warmup: int = 3,
) -> dict[str, Any]:
    """Samples/s, GFLOP/s and peak memory of one training configuration."""
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = _build(name, small).to(device, memory_format=fmt).train()
    x = torch.rand(batch, 1, patch, patch, patch, device=device).contiguous(memory_format=fmt)
    y = torch.rand_like(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    dtype = _dtype(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.l1_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    flop = _flops(lambda: torch.nn.functional.l1_loss(model(x), y).backward())
    _reset_peak(device)
    seconds = _median_s(step, device, steps, warmup=warmup)
    row = {
        "network": name,
        "precision": precision,
        "channels_last_3d": channels_last,
        "s_per_step": seconds,
        "samples_per_s": batch / seconds,
        "gflops": flop / seconds / 1e9,
        "peak_gib": _peak_gib(device),
    }
    return row


def _brain(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """A smooth synthetic head-sized volume (ellipsoid with texture) plus Gaussian noise, (1, 1, *shape)."""
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    radius = grid[0] ** 2 / 0.8 + grid[1] ** 2 / 0.9 + grid[2] ** 2 / 0.8
    texture = 0.5 + 0.2 * np.sin(12 * grid[0]) * np.cos(9 * grid[1]) * np.sin(7 * grid[2])
    volume = np.where(radius < 1.0, texture, 0.0).astype(np.float32)
    volume += rng.normal(0, 15 / 255, shape).astype(np.float32)
    return torch.from_numpy(volume)[None, None].to(device)


def inference_latency(
    device: torch.device, shape: tuple[int, int, int], configs: list[dict[str, Any]], small: bool, repeats: int
) -> list[dict[str, Any]]:
    """Whole-volume sliding-window latency of ResUnet3D per configuration (median of ``repeats`` after a warm-up)."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    model = _build("resunet3d", small).to(device).eval()
    volume = _brain(shape, device)
    rows = []
    for cfg in configs:
        dtype = _dtype(cfg["precision"])

        def run(cfg: dict[str, Any] = cfg, dtype: torch.dtype | None = dtype) -> None:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                sliding_window_inference(
                    volume, cfg["roi"], cfg["sw_batch_size"], model, overlap=cfg["overlap"], mode="gaussian"
                )

        _reset_peak(device)
        seconds = _median_s(run, device, repeats, warmup=1)
        rows.append({**cfg, "seconds": seconds, "peak_gib": _peak_gib(device)})
    return rows


def compiled_step(device: torch.device, patch: int, batch: int, steps: int, small: bool) -> dict[str, Any]:
    """``torch.compile`` of ResUnet3D's bf16 training step: compile time and steady-state step time."""
    torch.manual_seed(0)
    model = _build("resunet3d", small).to(device).train()
    compiled = torch.compile(model)
    x = torch.rand(batch, 1, patch, patch, patch, device=device)
    y = torch.rand_like(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.l1_loss(compiled(x).float(), y)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    _sync(device)
    compile_s = time.perf_counter() - start
    seconds = _median_s(step, device, steps, warmup=2)
    return {"network": "resunet3d", "precision": "bf16", "compile_s": compile_s, "s_per_step": seconds}


def _write(result: dict[str, Any]) -> None:
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / "gpu.json"
        tmp = path.with_suffix(".json.part")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and small networks: a smoke run in seconds")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip sections that would start after this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    return parser


def _fast_cuda(device: torch.device) -> None:
    """TF32 matrix products and convolutions, cuDNN's autotuner (on a CUDA device only)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sections within the time budget, print the JSON, write ``$OUT/gpu.json`` when ``OUT`` is set.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict.
    """
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    _fast_cuda(device)
    small = args.quick
    # the smoke run: 16^3 patches, except for the networks that pool too often for them
    quick_patch = 32 if {"basicunet", "flexibleunet"} & set(args.networks) else 16
    patch, batch, steps = (quick_patch, 2, 1) if args.quick else (96, 4, 10)
    warmup = 1 if args.quick else 3
    bf16, bf16_note = _native_bf16(device)
    print(
        f"benchmarks.gpu on {device}: conv3d ceiling, training of {', '.join(args.networks)}, inference"
        f"{'' if args.no_compile else ', torch.compile'}; at most about {args.budget_s / 60:.1f} min (--budget-s);"
        f" bf16 {'measured' if bf16 else 'left out (not native here)'}: {bf16_note}",
        file=sys.stderr,
        flush=True,
    )
    shape = (20, 24, 20) if args.quick else (197, 233, 189)
    import monai

    result: dict[str, Any] = {
        "benchmark": "gpu",
        "quick": args.quick,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "monai": monai.__version__,
        "python": sys.version.split()[0],
        "setup": {"patch": patch, "batch": batch, "timed_steps": steps, "volume": list(shape), "bf16": bf16_note},
        "skipped": [],
    }

    def section(name: str, fn: Callable[[], Any]) -> None:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            result["skipped"].append(f"{name} (budget spent: {elapsed:.0f} s)")
            return
        start = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as error:  # a failing section is reported and the others still run
            result[name] = {"error": f"{type(error).__name__}: {error}"}
        result[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
        print(f"[gpu] {name} done in {result[f'{name}_wall_s']} s", file=sys.stderr, flush=True)
        _write(result)

    conv = (8, 1) if args.quick else (96, 4)
    section("conv3d_ceiling", lambda: conv_ceiling(device, conv[0], conv[1], steps, bf16=bf16, warmup=warmup))
    train_rows: list[dict[str, Any]] = []

    def training() -> list[dict[str, Any]]:
        variants = [("fp32", False), ("bf16", False), ("fp16", False), ("bf16", True)]
        if device.type != "cuda":  # fp16 autocast and GradScaler are CUDA features
            variants.remove(("fp16", False))
        if not bf16:  # emulated bf16 (a CPU without it): tens of times slower, not what this benchmark is for
            variants = [v for v in variants if v[0] != "bf16"]
        for name in args.networks:
            for precision, channels_last in variants:
                if time.perf_counter() - started > args.budget_s * 0.6:
                    result["skipped"].append(f"training {name} {precision} (budget)")
                    continue
                try:
                    train_rows.append(
                        train_rate(name, device, patch, batch, steps, precision, channels_last, small, warmup)
                    )
                except Exception as error:  # e.g. out of memory for one configuration
                    train_rows.append({"network": name, "precision": precision, "error": f"{type(error).__name__}"})
        return train_rows

    section("training", training)
    roi_a, roi_b = (16, 24) if args.quick else (64, 128)
    configs = [
        {"roi": roi, "sw_batch_size": sw, "overlap": overlap, "precision": precision}
        for roi, sw, overlap in ((roi_a, 4, 0.5), (roi_b, 8, 0.25))
        for precision in (("fp32",) if args.quick or not bf16 else ("fp32", "bf16"))
    ]
    section("inference", lambda: inference_latency(device, shape, configs, small, repeats=1 if args.quick else 3))
    if not args.no_compile and not bf16:
        result["skipped"].append("compile (its step runs in bf16, which is not native here)")
    elif not args.no_compile:
        section("compile", lambda: compiled_step(device, patch, batch, steps, small))
    result["total_s"] = round(time.perf_counter() - started, 1)
    _write(result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
