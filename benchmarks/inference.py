"""Whole-brain inference: seconds and peak memory for a 1 mm brain (197 x 233 x 189) through sliding-window inference.

Run: ``python -m benchmarks.inference [--quick] [--out benchmarks/results/inference.json]``.

Each configuration runs in its own fresh Python process, so its peak resident memory (``resource.getrusage``
``ru_maxrss``, which covers torch's native allocations that ``tracemalloc`` cannot see) is the peak of exactly one
such run: imports + network + volume + sliding-window buffers. The input is nilearn's MNI152 T1 template at 1 mm
(197 x 233 x 189) with Gaussian noise (sigma 15/255). The network is ResUnet3D as the bundle configures it (depth 18,
levels 4; random weights: speed does not depend on them).

Two kinds of rows:

* ``pipeline``: the project's inference path end to end - :func:`pipeline.inference.infer.denoise_scans` with the
bundle's
  ``inference.yaml`` (load the NIfTI, reorient, percentile-scale, pad, ``SlidingWindowInferer`` with the config's
  64^3 tiles, 4 tiles per pass, overlap 0.5, Gaussian blending, ``torch.inference_mode``; invert; write the NIfTI),
  on one scan and on a folder of scans (the batch).
* model-level knobs, one at a time against ``baseline`` (MONAI ``sliding_window_inference`` on the in-memory volume
  with the same settings as the bundle): ``torch.no_grad`` instead of ``inference_mode``, window batch size,
  overlap, tile size, ``channels_last_3d``, bf16 autocast, TorchScript (``torch.jit.script`` + ``torch.jit.freeze``)
  and ONNX Runtime (the optional ``onnx`` extra, ``pip install -e '.[onnx]'``: the network exported with
  ``torch.onnx.export`` for the tile size, batch axis dynamic, run by ``onnxruntime``'s CPU provider with as many
  threads as torch; skipped with a clear line when not installed).

The ``bf16`` knob runs by default only on a CPU with native bf16 (the rule of ``precision: auto``); elsewhere bf16 is
emulated, about 40x slower, and ``--knobs bf16`` still measures it. The ``pipeline`` rows run the bundle's default,
``precision: auto``. The run starts with what it will measure, the CPU and an estimate of its duration, and prints a
line per configuration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from benchmarks._common import (
    SMALL_NETWORKS,
    Progress,
    announce,
    benchmark_precision,
    bundle_resunet_config,
    default_out,
    expected_duration,
    format_table,
    machine_info,
    write_json,
)

__all__ = ["BASELINE", "KNOBS", "main", "measure", "run_worker"]

#: the baseline configuration every knob is compared with.
BASELINE: dict[str, Any] = {
    "mode": "direct",
    "network": "resunet3d",
    "size": "default",
    "shape": [197, 233, 189],
    "roi": 64,
    "sw_batch_size": 4,
    "overlap": 0.5,
    "blend": "gaussian",
    "inference_mode": True,
    "channels_last": False,
    "bf16": False,
    "torchscript": False,
    "onnx": False,
    "scans": 1,
    "resunet": {},
}

#: name -> the settings it changes from the baseline.
KNOBS: dict[str, dict[str, Any]] = {
    "pipeline": {"mode": "pipeline"},
    "baseline": {},
    "no_grad": {"inference_mode": False},
    "sw_batch1": {"sw_batch_size": 1},
    "sw_batch8": {"sw_batch_size": 8},
    "overlap0.25": {"overlap": 0.25},
    "overlap0.25_roi96": {"overlap": 0.25, "roi": 96},
    "channels_last_3d": {"channels_last": True},
    "bf16": {"bf16": True},
    "torchscript": {"torchscript": True},
    "onnxruntime": {"onnx": True},
}


def run_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process and return its timings and peak memory.

    Args:
        cfg: a configuration (the keys of :data:`BASELINE`).

    Returns:
        ``{"load_s", "seconds" (list, one per scan), "rss_before_gib", "peak_rss_gib"}``.
    """
    import numpy as np
    import torch

    from benchmarks._common import build_denoiser, load_template, noisy_copy

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_denoiser(cfg["network"], cfg["size"], **cfg.get("resunet", {})).eval()
    t1, _ = load_template()
    h, w, d = cfg["shape"]
    t1 = np.pad(t1, [(0, max(0, n - s)) for n, s in zip((h, w, d), t1.shape)])[:h, :w, :d]
    noisy = noisy_copy(np.ascontiguousarray(t1), "gaussian", seed=0)
    if cfg["mode"] == "pipeline":
        return _run_pipeline(cfg, model, noisy)
    from monai.inferers import sliding_window_inference

    volume = torch.from_numpy(noisy)[None, None]
    fmt = torch.channels_last_3d if cfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if cfg["torchscript"]:
        with torch.no_grad():
            model = torch.jit.freeze(torch.jit.script(model))

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["bf16"]):
            return model(x.contiguous(memory_format=fmt)).float()

    if cfg.get("onnx"):
        predictor = _onnx_predictor(model, cfg)

    load_s = time.perf_counter() - start
    rss_before = _rss_gib()
    seconds = []
    for _ in range(cfg["scans"]):
        start = time.perf_counter()
        ctx = torch.inference_mode() if cfg["inference_mode"] else torch.no_grad()
        with ctx:
            sliding_window_inference(
                volume, cfg["roi"], cfg["sw_batch_size"], predictor, overlap=cfg["overlap"], mode=cfg["blend"]
            )
        seconds.append(time.perf_counter() - start)
    return {"load_s": load_s, "seconds": seconds, "rss_before_gib": rss_before, "peak_rss_gib": _rss_gib()}


def _onnx_predictor(model: Any, cfg: dict[str, Any]) -> Any:
    """Export ``model`` to ONNX for ``cfg["roi"]`` tiles (dynamic batch) and return an onnxruntime predictor."""
    import tempfile
    import warnings
    from pathlib import Path

    import onnxruntime
    import torch

    roi = cfg["roi"]
    example = torch.zeros(cfg["sw_batch_size"], 1, roi, roi, roi)
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated in favour of dynamo's
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    return predictor


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (``ru_maxrss`` is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _run_pipeline(cfg: dict[str, Any], model: Any, noisy: Any) -> dict[str, Any]:
    """Denoise ``cfg["scans"]`` NIfTI copies of ``noisy`` through the bundle.

    Uses :func:`pipeline.inference.infer.denoise_scans`.
    """
    import tempfile
    from pathlib import Path

    import nibabel as nib
    import torch
    from nilearn.datasets import load_mni152_template

    from pipeline.inference.infer import denoise_scans

    affine = load_mni152_template(resolution=1).affine
    with tempfile.TemporaryDirectory() as tmp:
        scans = Path(tmp) / "scans"
        scans.mkdir()
        for i in range(cfg["scans"]):
            nib.save(nib.Nifti1Image(noisy, affine), scans / f"scan{i:02d}.nii.gz")
        weights = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), weights)
        overrides: dict[str, Any] = {
            "patch_size": [cfg["roi"]] * 3,
            "sw_batch_size": cfg["sw_batch_size"],
            "sw_overlap": cfg["overlap"],
            "show_progress": False,
        }
        if cfg["size"] == "small":
            overrides.update({f"network_def::{k}": v for k, v in SMALL_NETWORKS["resunet3d"].items()})
        overrides.update({f"network_def::{k}": v for k, v in cfg.get("resunet", {}).items()})
        rss_before = _rss_gib()
        start = time.perf_counter()
        summary = denoise_scans(scans, Path(tmp) / "out", weights=weights, device="cpu", **overrides)
        total = time.perf_counter() - start
        if summary.failed:
            raise RuntimeError(f"pipeline inference failed: {summary.report()}")
        seconds = [r.seconds for r in summary.results]
    return {
        "load_s": total - sum(seconds),
        "seconds": seconds,
        "rss_before_gib": rss_before,
        "peak_rss_gib": _rss_gib(),
    }


def measure(cfg: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Run one configuration in a fresh subprocess (``python -m benchmarks.inference --worker JSON``).

    Args:
        cfg: the configuration.
        timeout: seconds before the subprocess is killed.

    Returns:
        The worker's result dict.

    Raises:
        RuntimeError: if the worker fails; the message holds its stderr's tail.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.inference", "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"inference worker failed for {cfg}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: a 20 x 24 x 20 volume, 16^3 tiles, small network"
    )
    parser.add_argument("--scans", type=int, default=3, help="scans in the batch-of-scans run (0: none)")
    parser.add_argument(
        "--knobs",
        nargs="+",
        default=None,
        choices=list(KNOBS),
        help="default: all (bf16 only on a CPU with native bf16)",
    )
    parser.add_argument(
        "--resunet", type=json.loads, default={}, help="JSON of ResUnet3D arguments overriding the bundle's network_def"
    )
    parser.add_argument(
        "--shape", type=int, nargs=3, default=BASELINE["shape"], help="volume shape (default: 1 mm MNI)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(default_out("inference")))
    return parser


def _configs(args: argparse.Namespace, base: dict[str, Any]) -> tuple[list[tuple[str, dict]], str]:
    """The configurations to run (``(name, worker config)``) and the precision note; ``base`` is updated in place."""
    auto, note = benchmark_precision("auto")
    if args.knobs is None:
        args.knobs = [k for k in KNOBS if auto == "bf16" or k != "bf16"]
        note += "" if auto == "bf16" else "; the bf16 knob is left out (--knobs bf16 measures it anyway)"
    elif "bf16" in args.knobs and auto != "bf16":
        note += "; the bf16 knob asked for: EMULATED on this CPU, about 40x slower than fp32"
    if args.quick:
        base.update(size="small", shape=[20, 24, 20], roi=16)
        args.knobs = [k for k in args.knobs if k != "overlap0.25_roi96"]
    if "onnxruntime" in args.knobs and not _onnx_available():
        print("onnxruntime: skipped - the optional 'onnx' extra is not installed (pip install -e '.[onnx]')")
        args.knobs = [k for k in args.knobs if k != "onnxruntime"]
    configs = [(name, dict(base, **KNOBS[name])) for name in args.knobs]
    if args.scans > 0:
        configs.append((f"pipeline, folder of {args.scans} scans", dict(base, mode="pipeline", scans=args.scans)))
    return configs, note


def _announce(args: argparse.Namespace, base: dict[str, Any], configs: list, note: str) -> None:
    if args.quick:
        # a fresh process each: CPU seconds on the 2-core Xeon (AMX) / 1.5, mostly imports
        expected = expected_duration(7.0 * len(configs), 8.0 * len(configs))
    else:
        expected = (
            f"roughly {len(configs)} min: {len(configs)} fresh processes, each about a minute for a 1 mm brain on 2"
            " cores with AVX-512 (longer with AVX2 only)"
        )
    shape_text = "x".join(str(n) for n in base["shape"])
    announce(
        "benchmarks.inference",
        f"{len(configs)} configurations ({', '.join(name for name, _ in configs)}) on a {shape_text} volume,"
        f" {base['roi']}^3 tiles, each in a fresh process",
        expected,
        note,
    )


def _measure_all(configs: list, quick: bool, out: str) -> list[dict[str, Any]]:
    """One row per configuration, each in a fresh process; the JSON is rewritten (``partial``) after each."""
    progress = Progress(len(configs))
    rows = []
    for name, cfg in configs:
        res = measure(cfg)
        row = {
            "config": name,
            "seconds_per_scan": sum(res["seconds"]) / len(res["seconds"]),
            "first_scan_s": res["seconds"][0],
            "load_s": res["load_s"],
            "peak_rss_gib": res["peak_rss_gib"],
            "rss_before_gib": res["rss_before_gib"],
            "cfg": cfg,
        }
        rows.append(row)
        progress.step(f"{name}: {row['seconds_per_scan']:.2f} s/scan, peak RSS {row['peak_rss_gib']:.2f} GiB")
        write_json({"benchmark": "inference", "quick": quick, "partial": True, "rows": rows}, out)
    return rows


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{rows[0]['config']} peak RSS GiB (target <= 4)": round(rows[0]["peak_rss_gib"], 2),
        "max peak RSS GiB over configs (target <= 4)": round(max(r["peak_rss_gib"] for r in rows), 2),
        "best config": min(rows, key=lambda r: r["seconds_per_scan"])["config"],
        "best speed-up over baseline": round(max(r["speedup_vs_baseline"] for r in rows), 2),
        "pipeline seconds per scan": next(
            (round(r["seconds_per_scan"], 2) for r in rows if r["config"] == "pipeline"), None
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every knob and the batch of scans, print the table and ratios, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written (or, with ``--worker``, the worker's result, printed as one JSON line).
    """
    args = _parser().parse_args(argv)
    if args.worker:
        result = run_worker(json.loads(args.worker))
        print(json.dumps(result))
        return result
    base = dict(BASELINE, resunet=args.resunet, shape=list(args.shape))
    configs, note = _configs(args, base)
    _announce(args, base, configs, note)
    rows = _measure_all(configs, args.quick, args.out)
    reference = next((r for r in rows if r["config"] == "baseline"), rows[0])
    for row in rows:
        row["speedup_vs_baseline"] = reference["seconds_per_scan"] / row["seconds_per_scan"]
    shape = "x".join(str(n) for n in base["shape"])
    print(f"\n{shape} volume, {base['network']} ({base['size']}), {base['roi']}^3 tiles\n")
    columns = ["config", "seconds_per_scan", "first_scan_s", "speedup_vs_baseline", "peak_rss_gib", "rss_before_gib"]
    print(format_table(rows, columns))
    ratios = _ratios(rows)
    for key, value in ratios.items():
        print(f"{key}: {value}")
    setup = {k: base[k] for k in ("network", "size", "shape", "roi")}
    setup |= {"resunet3d": {**bundle_resunet_config(), **args.resunet}, "precision_note": note}
    result = {"benchmark": "inference", "quick": args.quick, "partial": False, "machine": machine_info()}
    result.update(setup=setup, rows=rows, ratios=ratios)
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
