"""The test corpus: valid test scans, the bad files and valid oddities, and an unprivileged user for them."""

from __future__ import annotations

import contextlib
import gzip
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "AFFINE",
    "BAD_FILES",
    "SHAPE",
    "VALID_ODDITIES",
    "random_volume",
    "shared_dir",
    "unprivileged",
    "world_writable_dir",
    "write_bad_file",
    "write_scan",
]


SHAPE = (20, 20, 20)


AFFINE = np.array([[1.2, 0.0, 0.0, -12.0], [0.0, 1.0, 0.0, 8.0], [0.0, 0.0, 2.0, 30.0], [0.0, 0.0, 0.0, 1.0]])


def random_volume(shape: Sequence[int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth non-negative test volume (an ellipsoid with texture on a zero background), float32."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:3]], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.8, 0.7, 0.75])[:, None, None, None]) ** 2).sum(0))
    texture = 0.6 + 0.2 * np.sin(3 * grid[0] + rng.uniform(0, 6)) * np.cos(2 * grid[1] + rng.uniform(0, 6))
    volume = np.where(radius < 1.0, texture, 0.0) * rng.uniform(80, 120)
    volume = volume.reshape(tuple(shape[:3]) + (1,) * (len(shape) - 3)) * np.ones(shape)
    return volume.astype(np.float32)


def write_scan(path: str | os.PathLike, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> Path:
    """Write a valid NIfTI scan (default: a 20^3 float32 test volume with an anisotropic affine).

    Args:
        path: the destination (``.nii`` or ``.nii.gz``); its folder is created.
        data: the voxels.
        affine: the 4x4 affine.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(random_volume() if data is None else data, AFFINE if affine is None else affine), path)
    return path


def _truncated(path: Path) -> None:
    write_scan(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _wrong_magic(path: Path) -> None:
    path.write_bytes(b"This is a text file that someone renamed to .nii\n" * 20)


def _gzip_not_nifti(path: Path) -> None:
    path.write_bytes(gzip.compress(b"\x00" * 40 + b"not a NIfTI header" * 40))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _folder(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("a folder named like a scan\n")


def _unreadable(path: Path) -> None:
    write_scan(path)
    path.chmod(0)


#: Bad files: ``kind -> (file name, writer, words of which the problem must contain one)``.
BAD_FILES: dict[str, tuple[str, Callable[[Path], None], tuple[str, ...]]] = {
    "truncated": ("truncated.nii.gz", _truncated, ("truncated", "corrupt", "ended")),
    "wrong-magic": ("wrong-magic.nii", _wrong_magic, ("not a nifti", "cannot work out", "file type")),
    "gzip-not-nifti": ("gzip-not-nifti.nii.gz", _gzip_not_nifti, ("nifti", "file type")),
    "empty": ("empty.nii.gz", _empty, ("empty", "0 bytes")),
    "folder-named-like-a-scan": ("folder.nii.gz", _folder, ("folder", "directory")),
    "2d": ("two-d.nii.gz", lambda p: write_scan(p, random_volume((20, 20, 1))[..., 0]), ("2-d",)),
    "4d": ("four-d.nii.gz", lambda p: write_scan(p, random_volume((20, 20, 20, 3))), ("4-d",)),
    "5d": ("five-d.nii.gz", lambda p: write_scan(p, random_volume((12, 12, 12, 1, 2))), ("5-d",)),
    "zero-length-axis": (
        "zero-axis.nii",
        lambda p: write_scan(p, np.zeros((20, 0, 20), np.float32)),
        ("shape", "empty"),
    ),
    "nan-voxels": ("nan.nii.gz", lambda p: write_scan(p, _with(random_volume(), np.nan)), ("nan",)),
    "inf-voxels": ("inf.nii.gz", lambda p: write_scan(p, _with(random_volume(), np.inf)), ("infinite",)),
    "unsupported-extension": ("scan.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64), ("extension",)),
    "unreadable": ("unreadable.nii.gz", _unreadable, ("permission", "cannot be opened", "cannot be read")),
}


def _with(volume: np.ndarray, value: float) -> np.ndarray:
    volume = volume.copy()
    volume[5, 6, 7] = value
    return volume


def _int16_scaled(path: Path) -> None:
    raw = (random_volume() * 10).astype(np.int16)
    image = nib.Nifti1Image(raw, AFFINE)
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, path)


#: Valid but unusual files that must load with the right values: ``kind -> (file name, writer)``.
VALID_ODDITIES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "all-zero": ("all-zero.nii.gz", lambda p: write_scan(p, np.zeros(SHAPE, np.float32))),
    "int16-scl-slope": ("int16-scaled.nii.gz", _int16_scaled),
    "anisotropic": (
        "anisotropic.nii.gz",
        lambda p: write_scan(p, random_volume((20, 20, 6)), np.diag([0.2, 0.2, 12.0, 1])),
    ),
}


def write_bad_file(folder: str | os.PathLike, kind: str) -> Path:
    """Write one corpus file of :data:`BAD_FILES` or :data:`VALID_ODDITIES` into ``folder``.

    Args:
        folder: the destination folder (created).
        kind: a key of either table.

    Returns:
        The file (or folder) written.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    table = {k: v[:2] for k, v in BAD_FILES.items()} | VALID_ODDITIES
    if kind not in table:
        raise ValueError(f"kind must be one of {sorted(table)}, got {kind!r}.")
    name, writer = table[kind]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer(folder / name)
    return folder / name


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block with the effective user ``nobody`` when the process is root, so file modes apply.

    Root reads a mode-000 file regardless of its mode, so an "unreadable file" test would pass vacuously; with
    the effective user and group switched (``seteuid``/``setegid``, restored on exit) the kernel refuses the read as
    it would for a researcher's account. Outside root this does nothing.
    """
    if os.geteuid() != 0:
        yield
        return
    uid, gid = _nobody()
    saved_gid = os.getegid()
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(saved_gid)


@contextlib.contextmanager
def world_writable_dir() -> Iterator[Path]:
    """A fresh folder in the system temporary directory that ``nobody`` can traverse and write (removed after)."""
    folder = Path(tempfile.mkdtemp(prefix="faults-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def shared_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)
    return folder
