"""``pip install .`` gives a working tool: the wheel carries the bundle's configs and the console scripts.

The wheel is built from a copy of the sources (``pip wheel --no-deps --no-build-isolation --no-index``) and
installed into a fresh virtual environment outside the repository; torch, MONAI and the other dependencies come
from this interpreter's site-packages through a ``.pth`` file, so nothing is downloaded. ``resunet3d-denoise`` then
runs the issue's mixed folder from a working directory outside the repository with only ``--weights``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.inference.scan_listing import scan_name
from tests.scan_cases import header_cases, volume, write_dicom_series
from tests.test_scan_formats import check_same

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "networks", "transforms", "pipeline", "bundle")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_the_wheel_installs_a_tool_that_runs_outside_the_repository(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "models", "eval")
    for name in SOURCES:
        src = ROOT / name
        shutil.copytree(src, source / name, ignore=ignore) if src.is_dir() else shutil.copy(src, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RESUNET3D_BUNDLE_DIR")}
    env["PIP_NO_INDEX"] = "1"  # offline: any attempt to download fails the test
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist",
                  os.fspath(source)], tmp_path, env)  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("resunet3d-*.whl")

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", os.fspath(venv)], tmp_path, env).returncode == 0
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "_dependencies.pth").write_text(os.fspath(Path(torch.__file__).resolve().parents[1]) + "\n")
    python = venv / "bin" / "python"
    install = _run([sys.executable, "-m", "pip", "--python", os.fspath(python), "install", "--no-deps",
                    "--ignore-installed", "-q", os.fspath(wheel)], tmp_path, env)  # fmt: skip
    assert install.returncode == 0, install.stderr

    work = tmp_path / "work"  # outside the repository
    work.mkdir()
    code = "import importlib.util as u; print(u.find_spec('pipeline').origin, u.find_spec('bundle').origin)"
    where = _run([os.fspath(python), "-c", code], work, env)  # (find_spec: no torch import, fast)
    assert where.stdout.startswith(os.fspath(site)) and os.fspath(ROOT) not in where.stdout

    folder = work / "scans"
    cases = header_cases()
    written = {case: cases[case](folder) for case in ("int16-be", "orient-LPI", "sform-only", "mgz")}
    write_dicom_series(folder, volume((16, 18, 5), high=900.0), "1.2.826.0.1.3680043.2.1125.41", 2)
    write_dicom_series(folder, volume((16, 18, 1)), "1.2.826.0.1.3680043.2.1125.42", 3)
    (folder / "broken.mnc").write_bytes(b"not minc")
    (folder / "readme.txt").write_text("notes")
    weights = work / "model.pt"
    torch.save({}, weights)
    card = {"model_card": {"format": 1, "task": "denoise"}, "network_def": {"_target_": "torch.nn.Identity"}}
    weights.with_suffix(".json").write_text(json.dumps(card))

    scripts = {p.name for p in (venv / "bin").glob("resunet3d-*")}  # (their --help: tests/test_entrypoints.py)
    assert scripts == {"resunet3d-denoise", "resunet3d-classify", "resunet3d-demo"}
    run = _run([os.fspath(venv / "bin" / "resunet3d-denoise"), "scans", "--output", "out", "--weights", "model.pt",
                "--device", "cpu", "--set", "show_progress=false", "--no-guard"], work, env)  # fmt: skip
    assert run.returncode == 1, run.stderr  # the broken MINC and the lone DICOM slice failed, named below
    assert "7 scans: 5 done, 0 skipped (output exists), 2 failed; 1 file(s) ignored (not scans)" in run.stderr
    assert "FAILED scans/broken.mnc:" in run.stderr and "IGNORED scans/readme.txt" in run.stderr
    assert sorted(p.name for p in (work / "out").iterdir()) == [
        "brain_denoised.nii.gz",
        "int16-be_denoised.nii.gz",
        "orient-LPI_denoised.nii.gz",
        "scans_dicom_series-2_denoised.nii.gz",
        "sform_denoised.nii.gz",
    ]
    for case, scan in written.items():  # identity network: the input back, in its own space and units
        check_same(work / "out" / f"{scan_name(scan.path)}_denoised.nii.gz", scan, header_like=case != "mgz")

    # no --weights: the ready denoiser shipped in the wheel, guarded, written to the current folder
    scan = written["int16-be"].path
    ready = _run([os.fspath(venv / "bin" / "resunet3d-denoise"), os.fspath(scan), "--device", "cpu", "--set",
                  "show_progress=false"], work, env)  # fmt: skip
    assert ready.returncode == 0, ready.stderr
    assert "using the ready denoiser" in ready.stderr and os.fspath(site) in ready.stderr
    name = scan_name(scan)
    assert nib_shape(work / f"{name}_denoised.nii.gz") == nib_shape(scan)
    assert json.loads((work / f"{name}_denoised.json").read_text())["choice"]


def nib_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    return nib.load(path).shape
