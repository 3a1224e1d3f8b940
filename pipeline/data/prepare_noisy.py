"""Write a noisy copy of a folder of clean scans (the notes' "add noise" step), keeping every header and affine.

Example (from the repository root)::

    python -m pipeline.data.prepare_noisy --clean-dir data/FD --out-dir data/gaussian15 --noise gaussian --level 15

How the level maps to a file's intensities: scans on disk are not normalised, so the noise is stated against a
*reference intensity* of each clean volume, the 99.5th percentile of its non-zero voxels (``reference="robust"``
of :mod:`transforms.noise`, the same statistic ``ScalePercentile`` maps to 1 when the network reads the scan).
The reference plays the part of 255 on the notes' 8-bit scale:

* ``gaussian``, level ``L``: ``y = x + (L / 255) * ref * N(0, 1)`` (so ``gaussian 15`` is sigma ``15/255`` of the
  normalised range, on every voxel including the background; no clipping);
* ``rician``, level ``L``: magnitude of complex Gaussian noise of that sigma per channel;
* ``poisson``, level ``s`` (photon count at ``ref``): ``y = ref * Poisson(s * x / ref) / s``, so ``E[y] = x`` and
  ``Var[y] = x * ref / s``; needs non-negative voxels;
* ``lowdose``, level ``f`` (dose fraction): binomial thinning of a full-dose count map (see ``transforms.noise``).

Outputs are float32 with the input's file name, header (orientation codes, units, description) and affine, or,
for ``.mha``/``.nrrd``, origin, spacing, direction and metadata. Each file's noise is seeded by the base seed
and its file name only (``transforms.noise.item_seed``), so the result does not depend on the order files are
processed in, and the same command writes byte-identical files. Files are written atomically
(``pipeline.utils.files.atomic_path``); existing outputs are skipped unless ``overwrite`` is set, so an interrupted run
can simply be repeated. A file that cannot be used is reported (file and problem, one line each) and the others
are still processed; the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from pipeline.data.datasets import list_scans, scan_named_folders
from pipeline.utils.files import atomic_path
from transforms.errors import InputError
from transforms.noise import NOISE_NAMES, make_noise

__all__ = ["PrepareSummary", "add_noise", "main", "prepare_noisy"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareSummary:
    """What :func:`prepare_noisy` did.

    Attributes:
        written: output files written.
        skipped: output files that already existed and were kept (``overwrite=False``).
        failed: ``(input file, problem)`` for each file (or folder named like a scan) that could not be used.
    """

    written: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed


def add_noise(volume: np.ndarray, noise: str, level: float, seed: int, identifier: str) -> np.ndarray:
    """Return a noisy float32 copy of one clean volume, the noise stated against its robust reference intensity.

    Args:
        volume: the clean volume, any shape (e.g. ``(H, W, D)``), finite.
        noise: one of ``transforms.noise.NOISE_NAMES``.
        level: the noise level (see the module docstring for its meaning per model).
        seed: base seed (non-negative).
        identifier: the name that, with ``seed``, seeds this volume's noise (its file name).

    Returns:
        The noisy volume, same shape, float32.

    Raises:
        InputError: with ``identifier`` as the path, if the volume is empty, not finite or all zero, or does not
            suit the model (negative voxels for Poisson / low-dose).
        ValueError: for an unknown ``noise`` or a ``level`` out of range.
    """
    transform = make_noise(noise, level, keys=("image",), reference="robust", seed=seed, id_key="name")
    volume = np.asarray(volume)
    if volume.size == 0:
        raise InputError(identifier, "is empty")
    if not np.isfinite(volume).all():
        raise InputError(identifier, "has NaN or infinite voxels")
    if not np.any(volume):
        raise InputError(identifier, "is all zero, so it has no intensity to state the noise level against")
    try:
        out = transform({"image": volume.astype(np.float32)[None], "name": identifier})["image"]
    except ValueError as err:
        raise InputError(identifier, str(err)) from err
    return np.asarray(out[0], dtype=np.float32)


def _read(path: Path) -> tuple[object, np.ndarray]:
    """Read one scan: (the image object whose header is copied, data array)."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        try:
            image = nib.load(path)
            data = np.asarray(image.get_fdata(dtype=np.float32))
        except Exception as err:
            raise InputError(path, f"cannot be read as NIfTI ({err})") from err
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise InputError(path, f"cannot be read by SimpleITK ({str(err).strip().splitlines()[-1]})") from err
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
        data = sitk.GetArrayFromImage(image).astype(np.float32)
    squeezed = data.shape[:3] if data.ndim == 4 and data.shape[3] == 1 else data.shape
    if len(squeezed) != 3:
        raise InputError(path, f"is a {data.ndim}-D image (shape {'x'.join(map(str, data.shape))}); expected 3-D")
    return image, data


def _write(dest: Path, like: object, data: np.ndarray) -> None:
    """Write ``data`` (float32) to ``dest`` with the header/geometry of ``like``, atomically."""
    with atomic_path(dest) as tmp:
        if isinstance(like, sitk.Image):
            out = sitk.GetImageFromArray(data.astype(np.float32))
            out.CopyInformation(like)
            for key in like.GetMetaDataKeys():
                out.SetMetaData(key, like.GetMetaData(key))
            sitk.WriteImage(out, str(tmp), useCompression=True)
        else:
            header = like.header.copy()
            header.set_data_dtype(np.float32)
            out = type(like)(data.astype(np.float32), like.affine, header=header)
            out.header.set_slope_inter(1.0, 0.0)
            nib.save(out, tmp)


def prepare_noisy(
    clean_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    noise: str = "gaussian",
    level: float = 15.0,
    seed: int = 0,
    overwrite: bool = False,
) -> PrepareSummary:
    """Write a noisy copy of every scan of ``clean_dir`` into ``out_dir`` under the same file name.

    Args:
        clean_dir: folder of clean scans (``.nii``, ``.nii.gz``, ``.mha``, ``.nrrd``; hidden files ignored; a
            sub-folder named like a scan is reported as failed).
        out_dir: destination folder, created if needed; must differ from ``clean_dir``.
        noise: one of ``gaussian``, ``poisson``, ``rician``, ``lowdose``.
        level: noise level (module docstring), e.g. ``15`` for Gaussian sigma 15/255 of the robust maximum.
        seed: base seed; each file's noise depends only on it and the file name.
        overwrite: replace existing outputs instead of skipping them.

    Returns:
        The summary: files written, skipped and failed (with the problem).

    Raises:
        ValueError: for an unknown ``noise``, a ``level`` out of range, a negative ``seed``, or
            ``out_dir == clean_dir``.
        InputError: if ``clean_dir`` does not exist or holds no scan.
    """
    if noise not in NOISE_NAMES:
        raise ValueError(f"noise must be one of {', '.join(NOISE_NAMES)}, got {noise!r}")
    make_noise(noise, level, keys=("image",), seed=seed)  # validates level and seed before touching any file
    clean_dir, out_dir = Path(clean_dir), Path(out_dir)
    if out_dir.resolve() == clean_dir.resolve():
        raise ValueError(f"out_dir must differ from clean_dir ({clean_dir}); the clean scans would be overwritten")
    summary = PrepareSummary()
    scans = list_scans(clean_dir, folders_named_like_scans="skip")
    for path in scan_named_folders(clean_dir):
        summary.failed.append((path, "is a folder, not a scan file"))
        logger.warning("skipping %s: is a folder, not a scan file", path)
    for path in scans.values():
        dest = out_dir / path.name
        if dest.exists() and not overwrite:
            summary.skipped.append(dest)
            continue
        try:
            image, data = _read(path)
            noisy = add_noise(data, noise, level, seed, path.name)
            _write(dest, image, noisy)
        except InputError as err:
            problem = err.problem if err.path in (str(path), path.name) else str(err)
            summary.failed.append((path, problem))
            logger.warning("skipping %s: %s", path, problem)
            continue
        except OSError as err:
            summary.failed.append((path, f"cannot be written to {dest} ({err.strerror or err})"))
            continue
        summary.written.append(dest)
    logger.info(
        "%s %s: %d written, %d kept, %d failed in %s",
        noise,
        level,
        len(summary.written),
        len(summary.skipped),
        len(summary.failed),
        out_dir,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pipeline.data.prepare_noisy --clean-dir FD --out-dir gaussian15 --noise gaussian ...``.

    Returns:
        0 when every file was written (or kept), 1 when any file failed or the input folder is unusable.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.data.prepare_noisy",
        description="Write a noisy copy of a folder of clean scans, with the same file names, headers and affines.",
    )
    parser.add_argument("--clean-dir", required=True, type=Path, help="folder of clean scans")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the noisy copies go")
    parser.add_argument("--noise", choices=NOISE_NAMES, default="gaussian", help="noise model (default gaussian)")
    parser.add_argument(
        "--level",
        type=float,
        default=15.0,
        help="gaussian/rician: sigma on the 0-255 scale of the robust maximum; poisson: photon count at it; "
        "lowdose: dose fraction (default 15)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; noise depends on it and the file name")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of keeping them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare_noisy(args.clean_dir, args.out_dir, args.noise, args.level, args.seed, args.overwrite)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        parser.error(str(err))
    for path, problem in summary.failed:
        print(f"FAILED {path}: {problem}", file=sys.stderr)
    print(
        f"{len(summary.written)} written, {len(summary.skipped)} already present, {len(summary.failed)} failed "
        f"-> {args.out_dir}"
    )
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
