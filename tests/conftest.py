"""Shared pytest fixtures: tiny NIfTI volumes with a non-trivial affine, a paired noisy/clean dataset, a subjects CSV.

``precision: auto`` (the default of the bundle and the Python API) resolves to float32 in every test, whatever the
CPU: this module sets ``RESUNET3D_NATIVE_BF16=0`` for the session (its subprocesses included), so the suite computes
the same on an AVX2-only and on an AMX machine. Tests of the bf16 path ask for it explicitly, and
``tests/test_precision.py`` simulates both kinds of hardware.

All volumes are small (24^3 by default), float32, deterministic (seeded) and written under pytest's ``tmp_path``.
The affine is deliberately not the identity: anisotropic voxels, a rotation and an offset, so a test that drops
or transposes the affine fails.

Fixtures:
    ``test_affine``: the 4x4 affine every fixture volume carries.
    ``make_nifti``: factory ``make_nifti(path, data=None, affine=None, shape=(24, 24, 24), seed=0) -> Path``.
    ``nifti_volumes``: three 24^3 scans ``scans/sub-0{1,2,3}.nii.gz`` (smooth blobs on a zero background).
    ``paired_dataset``: a folder in the notes' layout: ``FD/`` (clean), ``gaussian15/`` (clean + N(0, 15/255 of
        the clean maximum)), ``masks/``, three subjects ``sub-01..03``; returns the root.
    ``subjects_csv``: ``table/subjects.csv`` with six subjects ``sub-01..06`` (labels 0,1,0,1,0,1; splits
        train x4, val, test), columns ``subject_id, label, path, age, sex, split`` and their scans under
        ``table/scans/`` (paths relative to the CSV); returns the CSV path.
"""

from __future__ import annotations

import locale
import logging
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.utils.precision import NATIVE_BF16_ENV

SHAPE = (24, 24, 24)
# auto -> fp32 on every machine, in this process, pytest-xdist's workers and the subprocesses tests start
os.environ[NATIVE_BF16_ENV] = "0"
# pytest-xdist: each worker (and the subprocesses its tests start) gets an equal share of the cores. Two workers of
# two threads each on 2 cores ran the two longest slow tests 5x slower (612 s instead of 95 s) than one alone.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


def _affine() -> np.ndarray:
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 1.0, 2.0])
    affine[:3, 3] = [-14.0, 7.5, 30.0]
    return affine


def blob_volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth, non-negative test volume: an ellipsoid of random smooth texture on a zero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.8, 0.7, 0.75])[:, None, None, None]) ** 2).sum(0))
    texture = 0.6 + 0.2 * np.sin(3 * grid[0] + rng.uniform(0, 6)) * np.cos(2 * grid[1] + rng.uniform(0, 6))
    texture += 0.15 * grid[2] * rng.uniform(0.5, 1.5)
    return np.where(radius < 1.0, texture, 0.0).astype(np.float32) * rng.uniform(80, 120)


def _all_loggers() -> list[logging.Logger]:
    loggers = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return loggers


@pytest.fixture(autouse=True)
def _restore_log_handlers():
    """Remove the log handlers a test leaves behind (one bound to a captured, since closed stream prints
    "--- Logging error ---" tracebacks into later tests' output)."""
    saved = {id(lg): list(lg.handlers) for lg in _all_loggers()}
    yield
    for lg in _all_loggers():
        lg.handlers[:] = saved.get(id(lg), [])


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a shared 2-core machine two threads per test worker oversubscribe the cores
    (the adaptation steps ran 4x slower). Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_locale():
    """SimpleITK's DICOM writer switches the process locale to "C" (``open()`` then defaults to ASCII): undo it."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def smooth_volume(shape: tuple[int, int, int] = (24, 28, 20), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth textured ellipsoid on a zero background and its mask (both float32), for image-quality tests."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.8
    texture = 0.6 + 0.3 * np.sin(3 * grid[0] + rng.uniform(0, 6)) * np.cos(2 * grid[1])
    return np.where(inside, texture, 0.0).astype(np.float32), inside.astype(np.float32)


@pytest.fixture
def test_affine() -> np.ndarray:
    return _affine()


@pytest.fixture
def make_nifti() -> Callable[..., Path]:
    def write(
        path: str | Path,
        data: np.ndarray | None = None,
        affine: np.ndarray | None = None,
        shape: tuple[int, int, int] = SHAPE,
        seed: int = 0,
    ) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = blob_volume(shape, seed) if data is None else np.asarray(data)
        nib.save(nib.Nifti1Image(data, _affine() if affine is None else affine), path)
        return path

    return write


@pytest.fixture
def nifti_volumes(tmp_path, make_nifti) -> list[Path]:
    return [make_nifti(tmp_path / "scans" / f"sub-0{i}.nii.gz", seed=i) for i in (1, 2, 3)]


@pytest.fixture
def paired_dataset(tmp_path, make_nifti) -> Path:
    root = tmp_path / "dataset"
    rng = np.random.default_rng(123)
    for i in (1, 2, 3):
        clean = blob_volume(SHAPE, seed=i)
        noisy = clean + rng.normal(0.0, 15 / 255 * clean.max(), SHAPE).astype(np.float32)
        make_nifti(root / "FD" / f"sub-0{i}.nii.gz", clean)
        make_nifti(root / "gaussian15" / f"sub-0{i}.nii.gz", noisy)
        make_nifti(root / "masks" / f"sub-0{i}.nii.gz", (clean > 0).astype(np.float32))
    return root


@pytest.fixture
def subjects_csv(tmp_path, make_nifti) -> Path:
    rows = ["subject_id,label,path,age,sex,split"]
    splits = ["train", "train", "train", "train", "val", "test"]
    for i in range(6):
        sid = f"sub-{i + 1:02d}"
        make_nifti(tmp_path / "table" / "scans" / f"{sid}.nii.gz", seed=i)
        rows.append(f"{sid},{i % 2},scans/{sid}.nii.gz,{60 + i},{'MF'[i % 2]},{splits[i]}")
    path = tmp_path / "table" / "subjects.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
