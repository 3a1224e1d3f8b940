"""Which files are medical images, how each is read, and DICOM files grouped into series.

File kinds, by name (case-insensitive; a compression suffix ``.gz``/``.bz2``/``.zst``/``.xz`` may follow):

* NIfTI-1/2 (``.nii``, ``.nii.gz``): MONAI's ``NibabelReader``;
* the other volume formats of nibabel (:data:`NIBABEL_SUFFIXES`: Analyze / NIfTI pairs ``.hdr`` + ``.img``,
  FreeSurfer ``.mgh``/``.mgz``, MINC ``.mnc``): :class:`NibabelVolumeReader`;
* MetaImage and NRRD (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) and DICOM: SimpleITK (``transforms.io``);
* DICOM files (:data:`DICOM_SUFFIXES`, or any file without a known suffix that has the ``DICM`` preamble) are read
  by series: :func:`group_dicom` sorts them into :class:`DicomSeries` (one per Series Instance UID, slices ordered
  along the slice normal), the unit of inference.

A compressed file whose reader cannot decompress it (``.dcm.gz``, ``.nrrd.gz``...) is still a medical image: it is
listed, and loading it fails with the reason (:func:`unreadable_reason`).

Every array leaves the readers in native byte order (:func:`native`): big-endian files (MGH always, NIfTI written
on big-endian machines) otherwise make ``torch`` refuse the array.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

__all__ = [
    "COMPRESSION_SUFFIXES",
    "DICOM_SUFFIXES",
    "NIBABEL_SUFFIXES",
    "DicomSeries",
    "NibabelVolumeReader",
    "group_dicom",
    "image_suffix",
    "is_dicom_file",
    "native",
    "unreadable_reason",
]

logger = logging.getLogger(__name__)

#: Volume formats nibabel reads besides NIfTI (``.img`` is the data half of a ``.hdr`` pair).
NIBABEL_SUFFIXES: tuple[str, ...] = (".hdr", ".img", ".mgh", ".mgz", ".mnc")
#: DICOM file names (files without a suffix are recognised by their ``DICM`` preamble).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
#: Compression suffixes that may follow an image suffix.
COMPRESSION_SUFFIXES: tuple[str, ...] = (".gz", ".bz2", ".zst", ".xz")
_NIFTI = (".nii",)
_ITK = (".mha", ".mhd", ".nrrd", ".nhdr")
_BASE = _NIFTI + NIBABEL_SUFFIXES + _ITK + DICOM_SUFFIXES
#: Compressed forms a reader decompresses itself (nibabel: NIfTI, Analyze pairs, MGH, MINC-1).
_READABLE_COMPRESSED = (".nii.gz", ".hdr.gz", ".img.gz", ".mgh.gz", ".mnc.gz")
_FORMAT_NAMES = {
    ".nii": "NIfTI",
    ".hdr": "Analyze/NIfTI pair",
    ".img": "Analyze/NIfTI pair",
    ".mgh": "MGH",
    ".mgz": "MGH",
    ".mnc": "MINC",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".dcm": "DICOM",
    ".dicom": "DICOM",
    ".ima": "DICOM",
}


def image_suffix(path: str | os.PathLike) -> str:
    """The medical-image suffix of a file name (with a compression suffix, e.g. ``".dcm.gz"``), lower-case, or ``""``.

    Args:
        path: a file name.

    Returns:
        ``".nii.gz"``, ``".mgz"``, ``".dcm"``, ``".dcm.gz"``... or ``""`` for a name that is not a medical image's.
    """
    name = os.fspath(path).lower()
    for compression in ("", *COMPRESSION_SUFFIXES):
        for base in _BASE:
            if name.endswith(base + compression) and len(name) > len(base + compression):
                return base + compression
    return ""


def unreadable_reason(suffix: str) -> str | None:
    """Why a file with this suffix cannot be read at all, or ``None`` when a reader exists.

    Args:
        suffix: an :func:`image_suffix`.

    Returns:
        The reason in words (a compressed file whose reader cannot decompress it), or ``None``.
    """
    base = next((b for b in _BASE if suffix.startswith(b)), "")
    compression = suffix[len(base) :]
    if not compression or suffix in _READABLE_COMPRESSED:
        return None
    kind = _FORMAT_NAMES.get(base, base)
    return (
        f"is a compressed {kind} file ({suffix}), which cannot be read compressed; decompress it first "
        f"(e.g. `gunzip`){' and keep it with the other files of its series' if kind == 'DICOM' else ''}"
    )


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether a file is a DICOM file: a DICOM suffix, or no image suffix and the ``DICM`` preamble at byte 128.

    Args:
        path: a file.

    Returns:
        ``True`` for DICOM candidates (their readability is checked when read).
    """
    suffix = image_suffix(path)
    if suffix:
        return suffix in DICOM_SUFFIXES
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (a copy only when it is not already native).

    Args:
        array: any array.

    Returns:
        The same values with a native-endian dtype.
    """
    array = np.asarray(array)
    if array.dtype.byteorder not in ("=", "|") and not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


class NibabelVolumeReader(ImageReader):
    """MONAI ``ImageReader`` for nibabel's non-NIfTI volumes: Analyze / NIfTI pairs, MGH/MGZ and MINC.

    MONAI's ``NibabelReader`` expects a NIfTI header (it fails on MINC); this reader takes any nibabel spatial
    image: the array (scaling applied, native byte order) in voxel order and ``img.affine`` (RAS world).
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Whether the file is one of :data:`NIBABEL_SUFFIXES` (compressed or not)."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(image_suffix(n).split(".gz")[0] in NIBABEL_SUFFIXES for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Open the file with ``nibabel.load``."""
        path = data if isinstance(data, (str, os.PathLike)) else data[0]
        return nib.load(os.fspath(path), **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the array (scaled, native byte order) and MONAI-style metadata (``affine`` in RAS)."""
        array = native(np.asanyarray(img.dataobj))
        affine = np.asarray(img.affine, dtype=np.float64)
        spatial = min(array.ndim, 3)
        meta: dict[str, Any] = {
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.AFFINE: affine,
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:spatial]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "format": type(img).__name__,
        }
        return array, meta


@dataclasses.dataclass(frozen=True)
class DicomSeries(os.PathLike):
    """The files of one DICOM series, in slice order: one scan.

    ``os.fspath`` gives ``<folder>/<name>``, the path the scan's outputs are named after (it is not a file).

    Attributes:
        folder: the folder holding the files.
        name: the scan's name (the folder's name, with ``_series-<number>`` when the folder holds several series).
        uid: the Series Instance UID.
        files: the files, ordered along the slice normal.
    """

    folder: str
    name: str
    uid: str
    files: tuple[str, ...]

    def __fspath__(self) -> str:
        return os.path.join(self.folder, self.name)

    def __str__(self) -> str:
        if len(self.files) == 1:
            return f"{self.files[0]} (DICOM series {self.uid}, 1 file)"
        first, last = Path(self.files[0]).name, Path(self.files[-1]).name
        return f"{self.folder}{os.sep}{{{first}..{last}}} (DICOM series {self.uid}, {len(self.files)} files)"


def _tags(path: str) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    wanted = {"0020|000e": "uid", "0020|0011": "number", "0020|0032": "position", "0020|0037": "orientation"}
    wanted["0020|0013"] = "instance"
    return {name: reader.GetMetaData(tag).strip() for tag, name in wanted.items() if reader.HasMetaDataKey(tag)}


def _slice_key(tags: dict[str, str], path: str) -> tuple[float, float, str]:
    try:
        position = np.array([float(v) for v in tags["position"].split("\\")])
        row, col = np.array([float(v) for v in tags["orientation"].split("\\")]).reshape(2, 3)
        along = float(np.dot(position, np.cross(row, col)))
    except (KeyError, ValueError):
        along = 0.0
    try:
        instance = float(tags.get("instance", "nan"))
    except ValueError:
        instance = float("nan")
    return along, instance if np.isfinite(instance) else 0.0, path


def group_dicom(
    files: Iterable[str | os.PathLike], folder: str | os.PathLike, name: str | None = None
) -> tuple[list[DicomSeries], dict[str, str]]:
    """Group DICOM files into series (Series Instance UID), each ordered along its slice normal.

    Args:
        files: the DICOM files of one folder.
        folder: that folder (it names the series).
        name: the scan name of a folder's only series (default: the folder's name).

    Returns:
        ``(series, unreadable)``: the series in the order of their first file, and ``{file: reason}`` for files
        SimpleITK cannot read as DICOM.
    """
    folder = Path(folder)
    groups: dict[str, list[tuple[tuple[float, float, str], dict[str, str]]]] = {}
    unreadable: dict[str, str] = {}
    for file in sorted(os.fspath(f) for f in files):
        try:
            tags = _tags(file)
        except RuntimeError:
            unreadable[file] = "is not a readable DICOM file (SimpleITK/GDCM cannot parse it: damaged or not DICOM)"
            continue
        uid = tags.get("uid") or f"no-series-uid:{Path(file).name}"
        groups.setdefault(uid, []).append((_slice_key(tags, file), tags))
    base = name or folder.name
    series: list[DicomSeries] = []
    used: set[str] = set()
    for uid, members in groups.items():
        members.sort(key=lambda m: m[0])
        if len(groups) == 1:
            label = base
        else:
            number = members[0][1].get("number", "")
            label = f"{base}_series-{number}" if number else f"{base}_series-{uid[-8:]}"
            if label in used:
                label = f"{label}-{uid[-8:]}"
        used.add(label)
        series.append(DicomSeries(os.fspath(folder), label, uid, tuple(m[0][2] for m in members)))
    return series, unreadable
