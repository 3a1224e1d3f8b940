"""A folder of scans as inference items: every medical image is an item, everything else is listed as ignored.

Real folders mix formats: NIfTI volumes beside DICOM files of several series, MINC or MGH files, a text file of
notes and JSON sidecars. :func:`list_folder` turns one folder into:

* one item per volume file (any :func:`transforms.formats.image_suffix`, compressed or not), whether or not it can
  be read: a file that fails is reported with its reason when it is loaded, so no medical image disappears;
* one item per DICOM series (:func:`transforms.formats.group_dicom`, by Series Instance UID) of the folder's DICOM
  files (a DICOM suffix, or the ``DICM`` preamble) and of each sub-folder holding DICOM files; a DICOM file that
  cannot be parsed is an item of its own, so it fails with its reason;
* ``ignored``: the other entries (text, JSON sidecars, sub-folders without DICOM files), each with the reason.

The data files of a pair (``x.img`` beside ``x.hdr``, ``x.raw`` beside ``x.mhd``/``x.nhdr``) belong to their
header's item. Hidden entries (``.DS_Store``, half-written ``.x.part.nii.gz``) are skipped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.datasets import load_datalist, scan_id
from transforms.errors import InputError
from transforms.formats import DicomSeries, group_dicom, image_suffix, is_dicom_file

__all__ = ["ScanList", "collect_scans", "describe", "list_folder", "scan_name"]

logger = logging.getLogger(__name__)

#: Data files that belong to a header of the same name: ``{data suffix: header suffixes}``.
_COMPANIONS = {
    ".img": (".hdr",),
    ".img.gz": (".hdr.gz", ".hdr"),
    ".raw": (".mhd", ".nhdr"),
    ".zraw": (".mhd",),
    ".raw.gz": (".mhd", ".nhdr"),
    ".rec": (".par",),
}


class ScanList(list):
    """A list of ``{"image": ..., "subject": ...}`` items that also names the entries left out.

    Attributes:
        ignored: ``[(path, reason), ...]`` for the entries that are not scans (reported once in the summary).
    """

    def __init__(self, items: Iterable = (), ignored: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(items)
        self.ignored: list[tuple[str, str]] = list(ignored)

    def extend_from(self, other: Iterable) -> None:
        """Append another list's items and, for a :class:`ScanList`, its ignored entries."""
        self.extend(other)
        self.ignored.extend(getattr(other, "ignored", []))


def _companion_of(path: Path, names: set[str]) -> bool:
    lower = path.name.lower()
    for data_suffix, headers in _COMPANIONS.items():
        if lower.endswith(data_suffix):
            stem = path.name[: len(path.name) - len(data_suffix)]
            if any(f"{stem}{h}".lower() in names for h in headers):
                return True
    return False


def _dicom_children(folder: Path) -> list[Path]:
    return [c for c in sorted(folder.iterdir()) if c.is_file() and not c.name.startswith(".") and is_dicom_file(c)]


def _series_items(files: list[Path], folder: Path, name: str | None = None) -> list[dict]:
    series, unreadable = group_dicom(files, folder, name)
    items: list[dict] = [{"image": s, "subject": s.name} for s in series]
    items += [{"image": os.fspath(path), "subject": Path(path).name} for path in unreadable]
    return items


def list_folder(folder: str | os.PathLike) -> ScanList:
    """List a folder's scans as items, in name order (DICOM series after the files), and what was ignored.

    Args:
        folder: the folder (not searched recursively, except for sub-folders of DICOM files).

    Returns:
        The items (``{"image": path or DicomSeries, "subject": name}``) with ``ignored`` set.
    """
    folder = Path(folder)
    children = [c for c in sorted(folder.iterdir()) if not c.name.startswith(".")]
    names = {c.name.lower() for c in children}
    items = ScanList()
    dicom_files: list[Path] = []
    for child in children:
        if child.is_dir():
            dicom = _dicom_children(child)
            if image_suffix(child.name):
                items.append({"image": os.fspath(child), "subject": child.name})  # fails: a folder named like a scan
            elif dicom:
                items.extend(_series_items(dicom, child))
            else:
                items.ignored.append((os.fspath(child), "a folder without DICOM files (folders are not searched)"))
        elif _companion_of(child, names):
            continue
        elif is_dicom_file(child):
            dicom_files.append(child)
        elif image_suffix(child.name):
            items.append({"image": os.fspath(child), "subject": scan_name(child)})
        else:
            items.ignored.append((os.fspath(child), "not a medical image"))
    if dicom_files:
        only_dicom = len(dicom_files) == len(children)
        items.extend(_series_items(dicom_files, folder, None if only_dicom else f"{folder.name}_dicom"))
    for path, reason in items.ignored:  # listed once, in the run's summary
        logger.debug("ignoring %s: %s", path, reason)
    return items


def scan_name(path: str | os.PathLike) -> str:
    """A scan's name without its image suffix (``sub-01.nii.gz``, ``sub-01.mgz`` -> ``sub-01``).

    Args:
        path: a scan file, a DICOM series folder or a :class:`~transforms.formats.DicomSeries`.

    Returns:
        The name its outputs are named after.
    """
    if isinstance(path, DicomSeries):
        return path.name
    name = Path(os.fspath(path)).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else scan_id(name)


def describe(image: object) -> str:
    """An item's image in words for the summary: its path, or a DICOM series' folder, files and UID.

    Args:
        image: a path or a :class:`~transforms.formats.DicomSeries`.

    Returns:
        The text.
    """
    return str(image) if isinstance(image, DicomSeries) else os.fspath(image)  # type: ignore[arg-type]


def _item(image: Any, subject: Any = None) -> dict[str, Any]:
    path = image if isinstance(image, DicomSeries) else os.fspath(image)
    return {"image": path, "subject": str(subject) if subject not in (None, "") else scan_name(path)}


def collect_scans(source: str | os.PathLike | Sequence[Any], datalist_key: str = "testing") -> ScanList:
    """List the scans to process as ``{"image": path, "subject": id}`` items, in a stable order.

    Args:
        source: a scan file (processed even if it turns out unreadable: the failure is reported for it), a folder
            (:func:`pipeline.inference.scan_listing.list_folder`: every medical image file, one item per DICOM series,
            the
            other entries listed as ignored), a datalist ``.json`` (Decathlon style, list ``datalist_key``), or a
            list of any of these or of ``{"image": ..., "subject": ...}`` items.
        datalist_key: which list of a datalist JSON to read.

    Returns:
        The items (a :class:`~pipeline.inference.scan_listing.ScanList`, whose ``ignored`` names the entries left
        out); the
        subject defaults to the file name without its image suffix.

    Raises:
        InputError: a path that does not exist, a folder with no scan, or a datalist that cannot be used.
    """
    if isinstance(source, Mapping):
        return ScanList([_item(source["image"], source.get("subject"))])
    if isinstance(source, DicomSeries):
        return ScanList([_item(source)])
    if not isinstance(source, (str, os.PathLike)):
        items = ScanList()
        for entry in source:
            items.extend_from(collect_scans(entry, datalist_key))
        return items
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        return ScanList(_item(i["image"], i.get("subject")) for i in load_datalist(path, key=datalist_key))
    if path.is_dir() and not image_suffix(path.name):
        found = list_folder(path)
        if not found:
            ignored = f"; ignored: {', '.join(Path(p).name for p, _ in found.ignored)}" if found.ignored else ""
            raise InputError(path, f"holds no scan (no medical image file or DICOM series){ignored}")
        return found
    if not path.exists():
        raise InputError(path, "does not exist")
    return ScanList([_item(path)])
