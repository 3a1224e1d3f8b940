"""Load a scan from disk as a validated, channel-first MetaTensor, and make its orientation canonical.

Formats: NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel (MONAI's ``NibabelReader``); Analyze / NIfTI pairs
(``.hdr`` + ``.img``), MGH/MGZ and MINC-1 through nibabel (:class:`transforms.formats.NibabelVolumeReader`);
MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``, ``.nhdr``), DICOM files, a DICOM series folder and a
:class:`transforms.formats.DicomSeries` (files grouped by series) through SimpleITK (:class:`SimpleITKReader`,
since MONAI's ``ITKReader`` needs the ``itk`` package). All give the array in voxel-index order ``(i, j, k)``,
in native byte order and with the file's scaling applied, and an affine in MONAI's convention (world coordinates
RAS, ``meta["space"] == "RAS"``), so the same scan saved as ``.nii.gz`` and ``.mha`` loads to identical
MetaTensors.

Validation (each failure is an :class:`~transforms.errors.InputError` naming the file and the problem): the path
exists; a folder holds exactly one DICOM series; a file is non-empty, has a known extension and can be read;
the image is 3-D (a 4-D image whose trailing axis has length 1 is squeezed to 3-D, and the squeeze is logged),
every spatial extent is at least 2, and every voxel is finite.

:func:`canonical_transforms` returns MONAI's invertible ``Orientationd`` (RAS) and optional ``Spacingd``;
they record what they did in ``applied_operations`` so ``Invertd`` can bring a prediction back to the scan's own
grid.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import MapTransform, Orientationd, Spacingd, Transform
from monai.utils import ImageMetaKey as Key
from monai.utils import MetaKeys, SpaceKeys, TransformBackends, ensure_tuple_rep, get_equivalent_dtype
from nibabel.filebasedimages import ImageFileError

from transforms.errors import InputError
from transforms.formats import (
    DICOM_SUFFIXES,
    NIBABEL_SUFFIXES,
    DicomSeries,
    NibabelVolumeReader,
    image_suffix,
    is_dicom_file,
    native,
    unreadable_reason,
)

__all__ = [
    "ITK_SUFFIXES",
    "NIFTI_SUFFIXES",
    "LoadScan",
    "LoadScand",
    "SimpleITKReader",
    "canonical_transforms",
    "scan_suffix",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".mha", ".mhd", ".nrrd", ".nhdr")
_KNOWN = NIFTI_SUFFIXES + ITK_SUFFIXES
_SITK_FILES = ITK_SUFFIXES + DICOM_SUFFIXES
#: Every file suffix LoadScan reads (nibabel decompresses the ``.gz`` forms itself).
_READABLE = _KNOWN + NIBABEL_SUFFIXES + (".hdr.gz", ".img.gz", ".mgh.gz", ".mnc.gz") + DICOM_SUFFIXES
_KINDS = {".nii": "NIfTI", ".hdr": "Analyze/NIfTI pair", ".img": "Analyze/NIfTI pair", ".mgz": "MGH", ".mnc": "MINC"}
_KINDS.update({suffix: "DICOM" for suffix in DICOM_SUFFIXES})


def scan_suffix(path: str | os.PathLike) -> str:
    """Return the scan extension of ``path`` (``".nii.gz"`` counts as one), lower-case, or ``""``.

    Args:
        path: a file name.

    Returns:
        The suffix including the dot.
    """
    name = os.fspath(path).lower()
    for suffix in sorted(_KNOWN, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return image_suffix(name) or Path(name).suffix


def _dicom_series(folder: Path) -> list[str]:
    """File names of the single DICOM series in ``folder``, or an InputError."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(folder, "is a folder but holds no DICOM series; give a scan file or a DICOM series folder")
    if len(series_ids) > 1:
        raise InputError(
            folder, f"holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); give a folder with one series"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` for MetaImage, NRRD and DICOM series folders, built on SimpleITK.

    The array is returned in index order ``(i, j, k)`` (SimpleITK's numpy view is ``(k, j, i)``) and the affine
    is ``direction @ diag(spacing)`` with the origin, converted from ITK's LPS world to RAS the way MONAI's
    ``ITKReader`` does, so downstream MONAI transforms see the same metadata as for a NIfTI file.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Whether ``filename`` is a MetaImage/NRRD/DICOM file, a DICOM series or a folder (read as one)."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(isinstance(n, DicomSeries) or os.path.isdir(n) or scan_suffix(n) in _SITK_FILES for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> sitk.Image:
        """Read one file, a :class:`~transforms.formats.DicomSeries` or a DICOM series folder into an image.

        Raises:
            InputError: a folder without exactly one DICOM series.
        """
        if isinstance(data, DicomSeries):
            if len(data.files) == 1:
                return sitk.ReadImage(data.files[0])
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(list(data.files))
            return reader.Execute()
        path = Path(os.fspath(data if isinstance(data, (str, os.PathLike)) else data[0]))
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_dicom_series(path))
            return reader.Execute()
        return sitk.ReadImage(str(path))

    def get_data(self, img: sitk.Image) -> tuple[np.ndarray, dict]:
        """Return the array in ``(i, j, k)`` order and MONAI-style metadata (``affine`` in RAS)."""
        array = native(sitk.GetArrayFromImage(img))
        spatial = img.GetDimension()
        array = np.transpose(array, tuple(range(spatial))[::-1] + tuple(range(spatial, array.ndim)))
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(spatial, spatial)
        spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
        sr = min(spatial, 3)
        affine = np.eye(sr + 1)
        affine[:sr, :sr] = direction[:sr, :sr] @ np.diag(spacing[:sr])
        affine[:sr, -1] = np.asarray(img.GetOrigin(), dtype=np.float64)[:sr]
        affine = orientation_ras_lps(affine)
        meta: dict[str, Any] = {
            "spacing": spacing,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.AFFINE: affine,
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.SPATIAL_SHAPE: np.asarray(img.GetSize()[:sr]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if img.GetNumberOfComponentsPerPixel() == 1 else -1,
        }
        for key in img.GetMetaDataKeys():
            if not key.startswith("ITK_"):
                meta[key] = img.GetMetaData(key)
        return array, meta


def _check_header(path: Path, suffix: str) -> None:
    """Cheap checks that turn the commonest bad files into plain-words errors before any reader runs."""
    if path.stat().st_size == 0:
        raise InputError(path, "is empty (0 bytes)")
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise InputError(path, f"cannot be opened ({err.strerror or err}); check that you may read it") from err
    if suffix == ".nii.gz" and head[:2] != b"\x1f\x8b":
        raise InputError(path, "is named .nii.gz but is not gzip-compressed; rename it to .nii if it is plain NIfTI")
    if suffix == ".nii" and head[:2] == b"\x1f\x8b":
        raise InputError(path, "is gzip-compressed but named .nii; rename it to .nii.gz")
    if suffix == ".nii" and len(head) == 4:
        sizeof_hdr = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
        if not sizeof_hdr & {348, 540}:
            raise InputError(path, "is not a NIfTI file (its header does not start with a NIfTI-1 or NIfTI-2 size)")


def _reason(exc: BaseException) -> str:
    """A short reason for a failed read, without library stack details."""
    if isinstance(exc, (EOFError, zlib.error)):
        return "the file is truncated or corrupt"
    if isinstance(exc, RuntimeError) and ("SimpleITK" in str(exc) or "ITK ERROR" in str(exc)):
        return "SimpleITK cannot read it; the file is damaged, truncated or not of the format its name says"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


class LoadScan(Transform):
    """Load a scan file or DICOM folder as a validated channel-first MetaTensor ``(1, H, W, D)``.

    ``H, W, D`` follow the file's voxel axes (``i, j, k``); orientation is left to :func:`canonical_transforms`.
    The metadata carries ``affine`` (RAS world), ``original_affine``, ``spatial_shape``, ``filename_or_obj``.

    Args:
        dtype: dtype of the returned voxels (float32 by default).

    Raises:
        InputError: at call time, for every file problem listed in the module docstring.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, dtype: DtypeLike = np.float32) -> None:
        self.dtype = dtype
        self._nifti = NibabelReader()
        self._nibabel = NibabelVolumeReader()
        self._itk = SimpleITKReader()

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        """Load and validate ``path``.

        Args:
            path: a file of a format in the module docstring, a DICOM series folder, or a
                :class:`~transforms.formats.DicomSeries`.

        Returns:
            MetaTensor of shape ``(1, H, W, D)``.

        Raises:
            InputError: the path is missing, empty, of unknown type, unreadable, not 3-D, degenerate or non-finite.
        """
        series = path if isinstance(path, DicomSeries) else None
        path = Path(os.fspath(path))
        source: Any = str(path)
        if series is not None:
            missing = [f for f in series.files if not os.path.isfile(f)]
            if missing:
                raise InputError(path, f"DICOM series {series.uid}: {len(missing)} file(s) missing ({missing[0]})")
            loader, kind, source = self._itk, "a DICOM series", series
        elif not path.exists():
            raise InputError(path, "does not exist")
        elif path.is_dir():
            _dicom_series(path)
            loader, kind = self._itk, "a DICOM series"
        else:
            suffix = scan_suffix(path)
            cannot = unreadable_reason(image_suffix(path))
            if cannot:
                raise InputError(path, cannot)
            if suffix == "" and is_dicom_file(path):
                suffix = ".dcm"
            elif suffix not in _READABLE:
                raise InputError(
                    path,
                    f"has an unknown extension {suffix or '(none)'!r}; expected one of {', '.join(_READABLE)} "
                    "or a DICOM series folder",
                )
            _check_header(path, suffix)
            loader, kind = self._loader(suffix)
        try:
            array, meta = loader.get_data(loader.read(source))
        except InputError:
            raise
        except ImportError as exc:  # e.g. MINC-2 (HDF5) needs h5py
            raise InputError(
                path, f"could not be read as {kind}: it needs the optional package {exc.name} (pip install {exc.name})"
            ) from exc
        except (
            OSError,
            EOFError,
            ValueError,
            RuntimeError,
            ImageFileError,
            zlib.error,
            KeyError,
            AttributeError,
        ) as exc:
            # AttributeError: nibabel's stand-in for a missing optional reader (h5py for MINC-2)
            raise InputError(path, f"could not be read as {kind}: {_reason(exc)}") from exc
        meta[Key.FILENAME_OR_OBJ] = str(path)
        try:  # native byte order (torch refuses big-endian arrays), then the requested dtype
            array = np.asarray(native(np.asarray(array)), dtype=get_equivalent_dtype(self.dtype, np.ndarray))
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"has voxels of type {np.asarray(array).dtype} that are not intensities") from exc
        img = MetaTensor.ensure_torch_and_prune_meta(array, meta, simple_keys=False)
        return self._validate(path, img)

    def _loader(self, suffix: str) -> tuple[ImageReader, str]:
        base = suffix.removesuffix(".gz")
        kind = _KINDS.get(base, base[1:].upper())
        if suffix in NIFTI_SUFFIXES:
            return self._nifti, kind
        return (self._nibabel, kind) if base in NIBABEL_SUFFIXES else (self._itk, kind)

    def _validate(self, path: Path, img: MetaTensor) -> MetaTensor:
        shape = tuple(img.shape)
        if len(shape) == 4 and shape[3] == 1:
            logger.info("%s: 4-D image with a single volume (shape %s) squeezed to 3-D", path, shape)
            meta = {k: v for k, v in img.meta.items() if k != MetaKeys.AFFINE}
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(shape[:3])
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
            img = MetaTensor(img.as_tensor()[..., 0], affine=img.affine, meta=meta)
            shape = tuple(img.shape)
        if len(shape) != 3:
            extra = "; it holds several volumes (e.g. a time series); split it first" if len(shape) == 4 else ""
            raise InputError(
                path, f"is a {len(shape)}-D image (shape {'x'.join(map(str, shape))}); expected one 3-D volume{extra}"
            )
        if min(shape) < 2:
            raise InputError(
                path, f"has shape {'x'.join(map(str, shape))}; every axis of a 3-D scan needs at least 2 voxels"
            )
        finite = torch.isfinite(img.as_tensor())
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise InputError(path, f"has {bad} NaN or infinite voxel(s) out of {finite.numel()}")
        out = img.unsqueeze(0)
        out.meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        return out


class LoadScand(MapTransform):
    """Dictionary version of :class:`LoadScan`: replaces each keyed path with its validated ``(1, H, W, D)`` scan.

    Values that are already arrays or tensors are passed through unchanged, so a dataset may mix paths and
    in-memory volumes.

    Args:
        keys: keys holding paths, e.g. ``("image", "label")``.
        dtype: dtype of the returned voxels.
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = LoadScan.backend

    def __init__(self, keys: KeysCollection, dtype: DtypeLike = np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadScan(dtype=dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every keyed path of ``data``; returns a new dictionary.

        Raises:
            InputError: a file problem (see :class:`LoadScan`).
        """
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, os.PathLike)):  # a path, a DICOM folder or a DicomSeries
                d[key] = self.loader(d[key])
        return d


def canonical_transforms(
    keys: KeysCollection,
    spacing: Sequence[float] | float | None = None,
    mode: Sequence[str] | str = "bilinear",
    axcodes: str = "RAS",
) -> list[MapTransform]:
    """MONAI's invertible orientation (and optional resampling) steps for the loaded keys.

    Args:
        keys: keys of loaded images, e.g. ``("image", "label")``.
        spacing: target voxel size in mm (one number or one per axis), or ``None`` to keep the scan's grid.
        mode: interpolation per key for ``Spacingd`` (``"bilinear"`` for images, ``"nearest"`` for masks).
        axcodes: target orientation; ``"RAS"`` is the project's canonical one.

    Returns:
        ``[Orientationd]`` or ``[Orientationd, Spacingd]``.

    Raises:
        ValueError: non-positive spacing or a malformed ``axcodes``.
    """
    if not (isinstance(axcodes, str) and len(axcodes) == 3 and set(axcodes.upper()) <= set("LRAPSI")):
        raise ValueError(f"axcodes must be three letters from L/R, A/P, S/I such as 'RAS', got {axcodes!r}.")
    steps: list[MapTransform] = [Orientationd(keys=keys, axcodes=axcodes.upper(), labels=None)]
    if spacing is not None:
        pixdim = ensure_tuple_rep(spacing, 3)
        if not all(float(s) > 0 for s in pixdim):
            raise ValueError(f"spacing must be positive (mm), got {spacing!r}.")
        steps.append(Spacingd(keys=keys, pixdim=tuple(float(s) for s in pixdim), mode=mode))
    return steps
