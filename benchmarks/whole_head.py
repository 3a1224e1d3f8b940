"""A 1 mm whole head (256 x 256 x 180, int16) through the command line with only ``--weights``: seconds and peak memory.

Run: ``python -m benchmarks.whole_head [--out benchmarks/results/whole_head.json] [--tiles 32 64] [--quick]``.

The scan is synthetic (an ellipsoidal head with smooth tissue contrast and Rician-like noise, int16, big-endian, in
LAS orientation with an oblique affine, so loading, reorientation and inversion all run). The network is the demo's
denoiser (``bundle/configs/small_denoiser.yaml``: ResUnet3D depth 10, 3 levels, 16-128 channels, full-resolution
stem, residual output; random weights, as speed does not depend on them) saved with its model card, so the command is
exactly what a user runs::

    python -m pipeline.inference.infer denoise head.nii.gz --output out --weights model.pt --device cpu

with the sliding-window tile set per row (``--set patch_size=[T,T,T]``; the bundle's default is 64^3) and, with
``--bf16``, ``--precision bf16 --channels-last`` as well.

Each configuration runs in a fresh process under ``/usr/bin/time -v`` (its "Maximum resident set size" is the peak
of imports + network + volume + sliding-window buffers + inversion + writing); the wall time is the process's. The
sliding-window inferer shows its progress bar on the console (``show_progress``, on by default).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from benchmarks._common import format_table, machine_info, write_json

__all__ = ["SHAPE", "main", "make_head", "make_model", "measure"]

SHAPE = (256, 256, 180)


def make_head(path: Path, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> Path:
    """Write the synthetic int16 big-endian head (LAS, oblique 1 mm affine)."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    radius = np.sqrt((x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2)
    tissue = 600 + 250 * np.sin(6 * x) * np.cos(5 * y) + 150 * z
    head = np.where(radius < 1.0, tissue, 0.0) + np.where((radius > 0.93) & (radius < 1.0), 400.0, 0.0)
    noisy = np.abs(head + rng.normal(0, 30, shape) + 1j * rng.normal(0, 30, shape)).astype(np.float32)
    affine = np.array([[-1.0, 0.02, 0, 128], [0.02, 1.0, 0, -120], [0, 0, 1.0, -90], [0, 0, 0, 1]])
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    image = nib.Nifti1Image(np.round(noisy).astype(">i2"), affine, header=header)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def make_model(path: Path, patch: int = 32) -> Path:
    """Save the demo-sized denoiser (random weights) with its model card."""
    import torch

    from networks import ResUnet3D, preset
    from pipeline.runtime.model_card import write_model_card

    torch.manual_seed(0)
    # the small preset with ResUnet3D's default batch norm, as this benchmark first measured it
    net = ResUnet3D(patch_size=patch, **preset("small", norm="batch"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    config = {"patch_size": [patch] * 3, "spacing": None, "percentile_lower": None, "percentile_upper": 99.5}
    write_model_card(path, net, "denoise", config=config)
    return path


def measure(scan: Path, weights: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """Run the command once in a fresh process; return wall seconds, peak RSS (MiB) and the exit status."""
    command = [sys.executable, "-m", "pipeline.inference.infer", "denoise", os.fspath(scan), "--output", os.fspath(out)]
    command += ["--weights", os.fspath(weights), "--device", "cpu", "--overwrite", *extra]
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command], capture_output=True, encoding="utf-8", errors="replace", check=False
    )
    seconds = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {
        "command": " ".join(["python", "-m", "pipeline.inference.infer", *command[3:]]),
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "returncode": done.returncode,
        "tail": done.stderr.strip().splitlines()[-25:] if done.returncode else [],
    }


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.whole_head", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/whole_head.json"))
    parser.add_argument("--tiles", type=int, nargs="+", default=[32, 64], help="sliding-window tile edges to time")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast + channels_last_3d")
    parser.add_argument("--quick", action="store_true", help="a 48 x 48 x 40 head instead (a smoke run)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shape = (48, 48, 40) if args.quick else SHAPE
        scan = make_head(folder / "head.nii.gz", shape)
        weights = make_model(folder / "model" / "model.pt")
        for tile in args.tiles:
            runs = [("fp32", [])] + (
                [("bf16+channels_last", ["--precision", "bf16", "--channels-last"])] if args.bf16 else []
            )
            for name, flags in runs:
                extra = ["--set", f"patch_size=[{tile},{tile},{tile}]"]
                row = {"tiles": tile, "precision": name, **measure(scan, weights, folder / "out", extra + flags)}
                out = nib.load(folder / "out" / "head_denoised.nii.gz") if row["returncode"] == 0 else None
                row["output_ok"] = bool(
                    out is not None and out.shape == shape and np.allclose(out.affine, nib.load(scan).affine)
                )
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
    result = {"benchmark": "whole_head", "quick": args.quick, "shape": list(shape), "machine": machine_info()}
    result["rows"] = rows
    write_json(result, args.out)
    print(format_table(rows, ["tiles", "precision", "seconds", "peak_rss_mib", "returncode", "output_ok"]))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
