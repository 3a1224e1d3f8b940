"""Turn files on disk into MONAI data lists: paired folders, clean-only folders, datalist JSON and a subjects CSV.

Every builder returns a list of plain dictionaries, one per scan, that MONAI's ``Dataset`` / ``CacheDataset`` and
the dictionary transforms of ``transforms/`` consume directly:

* ``"image"``: path of the network input (the noisy scan for denoising, the scan for classification);
* ``"label"``: path of the clean target (denoising) or the integer class index (classification);
* ``"subject"``: the subject ID, the unit of every split (``pipeline.data.splits``);
* optionally ``"mask"`` (path of a brain mask) and, for the subjects CSV, its extra columns (age, sex, ...).

The builders live in ``pipeline/`` rather than ``transforms/`` because they read folders and tables and decide
what a subject is, which is pipeline policy; ``transforms/`` only turns one item into tensors.

Every problem a researcher can fix raises :class:`transforms.errors.InputError` naming the file and listing
*all* offending entries at once (every unmatched file, every bad CSV row), so one run shows everything to fix.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from monai.data import load_decathlon_datalist

from transforms.errors import InputError

__all__ = [
    "SCAN_SUFFIXES",
    "SPLIT_NAMES",
    "clean_folder",
    "list_scans",
    "load_datalist",
    "load_subjects_csv",
    "paired_folders",
    "scan_id",
    "scan_named_folders",
]

logger = logging.getLogger(__name__)

#: File name endings read as one scan (longest first, so ``.nii.gz`` wins over ``.gz``).
SCAN_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Values allowed in a subjects CSV's optional ``split`` column.
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
_MAX_LISTED = 20


def scan_id(path: str | os.PathLike) -> str:
    """Return a scan's name without its scan suffix (``sub-01.nii.gz`` -> ``sub-01``), the key files are paired on.

    Args:
        path: a scan file path.

    Returns:
        The file name without the first matching suffix of :data:`SCAN_SUFFIXES` (case-insensitive); the whole name
        if none matches.
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in SCAN_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _listing(entries: Sequence[str]) -> str:
    shown = ", ".join(entries[:_MAX_LISTED])
    more = len(entries) - _MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown


def scan_named_folders(folder: str | os.PathLike) -> list[Path]:
    """Return the sub-folders of ``folder`` whose names end in a scan suffix (``sub-03.nii.gz/``), sorted.

    Such an entry is always a mistake in a folder of scans (an unpacked archive, a failed copy): folder listings
    only take scan *files*. (A DICOM series is a folder too, but it is named explicitly, never by a scan suffix.)

    Args:
        folder: the folder to look in (not searched recursively); a missing folder has none.

    Returns:
        The paths of the folders named like a scan; hidden ones (starting with ``.``) are left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [
        path
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and path.name.lower().endswith(SCAN_SUFFIXES) and path.is_dir()
    ]


def list_scans(folder: str | os.PathLike, folders_named_like_scans: str = "raise") -> dict[str, Path]:
    """List the scans of one folder, keyed by :func:`scan_id`, sorted by ID.

    Hidden files (starting with ``.``, e.g. ``.DS_Store`` or a half-written ``.sub-01.part.nii.gz``) and files
    without a scan suffix are ignored (logged at debug level); sub-folders are not searched. A sub-folder named
    like a scan (``sub-03.nii.gz/``, see :func:`scan_named_folders`) is an error by default, so that a pairing
    problem names the folder instead of reporting the scan as missing.

    Args:
        folder: the folder to list.
        folders_named_like_scans: ``"raise"`` (default) to raise an :class:`InputError` naming every sub-folder
            named like a scan, or ``"skip"`` to leave them out (for callers that report them per entry).

    Returns:
        ``{scan_id: path}`` in sorted ID order.

    Raises:
        ValueError: if ``folders_named_like_scans`` is not ``"raise"`` or ``"skip"``.
        InputError: if ``folder`` does not exist or is not a folder, if it holds a sub-folder named like a scan
            (with ``"raise"``), if it holds no scan, or if two files share an ID (``sub-01.nii`` and
            ``sub-01.nii.gz``).
    """
    if folders_named_like_scans not in ("raise", "skip"):
        raise ValueError(f"folders_named_like_scans must be 'raise' or 'skip', got {folders_named_like_scans!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "does not exist or is not a folder")
    misnamed = scan_named_folders(folder)
    if misnamed and folders_named_like_scans == "raise":
        if len(misnamed) == 1:
            raise InputError(misnamed[0], "is a folder, not a scan file; move the scan out of it or remove it")
        names = _listing([path.name for path in misnamed])
        raise InputError(folder, f"holds folders named like scans, not scan files: {names}; remove them")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not path.name.lower().endswith(SCAN_SUFFIXES):
            logger.debug("ignoring %s: not a scan (expected one of %s)", path, ", ".join(SCAN_SUFFIXES))
            continue
        found.setdefault(scan_id(path), []).append(path)
    clashes = [f"{key} ({', '.join(p.name for p in paths)})" for key, paths in found.items() if len(paths) > 1]
    if clashes:
        raise InputError(folder, f"several files share one scan name: {_listing(clashes)}; keep one file per scan")
    if not found:
        only = f"; only folders named like scans: {_listing([p.name for p in misnamed])}" if misnamed else ""
        raise InputError(folder, f"holds no scan (expected files ending in {', '.join(SCAN_SUFFIXES)}){only}")
    return {key: paths[0] for key, paths in sorted(found.items())}


def paired_folders(
    root: str | os.PathLike,
    noise_dir: str = "gaussian15",
    clean_dir: str = "FD",
    mask_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Pair noisy inputs with clean targets by file name: the notes' ``<root>/gaussian15`` + ``<root>/FD`` layout.

    Files are matched on :func:`scan_id`, so ``gaussian15/sub-01.nii.gz`` pairs with ``FD/sub-01.nii.gz`` (or
    ``FD/sub-01.nii``). The scan ID is the subject ID.

    Args:
        root: the dataset folder.
        noise_dir: sub-folder of ``root`` with the noisy inputs (absolute paths are used as they are).
        clean_dir: sub-folder of ``root`` with the clean targets.
        mask_dir: optional sub-folder with brain masks, one per scan, added as ``"mask"``.

    Returns:
        ``[{"image": noisy path, "label": clean path, "subject": id[, "mask": path]}, ...]`` sorted by ID.

    Raises:
        InputError: naming ``root`` and listing every unmatched file of every folder, or a problem of one folder.
    """
    root = Path(root)
    folders = {"image": root / noise_dir, "label": root / clean_dir}
    if mask_dir is not None:
        folders["mask"] = root / mask_dir
    scans = {key: list_scans(folder) for key, folder in folders.items()}
    all_ids = sorted(set().union(*(set(found) for found in scans.values())))
    problems = []
    for key, folder in folders.items():
        missing = [i for i in all_ids if i not in scans[key]]
        if missing:
            orphans = sorted(
                str(path.relative_to(root) if path.is_relative_to(root) else path)
                for other, found in scans.items()
                if other != key
                for i, path in found.items()
                if i in missing
            )
            problems.append(f"no match in {folder.name}/ for {_listing(orphans)}")
    if problems:
        raise InputError(root, "unmatched files: " + "; ".join(problems))
    items = []
    for i in all_ids:
        item: dict[str, Any] = {key: str(found[i]) for key, found in scans.items()}
        item["subject"] = i
        items.append(item)
    logger.info("paired %d scans from %s and %s", len(items), folders["image"], folders["label"])
    return items


def clean_folder(folder: str | os.PathLike, mask_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """List a folder of clean scans for denoising with noise synthesised on the fly.

    ``"image"`` and ``"label"`` both point at the clean file: the loader reads it twice and the noise transforms
    (``transforms.noise``, applied to ``"image"`` only) corrupt the input while ``"label"`` keeps the clean target.

    Args:
        folder: folder of clean scans.
        mask_dir: optional folder of brain masks with the same file names.

    Returns:
        ``[{"image": clean path, "label": clean path, "subject": id[, "mask": path]}, ...]`` sorted by ID.

    Raises:
        InputError: if the folder holds no scan, or a scan has no mask (all listed).
    """
    scans = list_scans(folder)
    masks = list_scans(mask_dir) if mask_dir is not None else None
    if masks is not None:
        missing = [scans[i].name for i in scans if i not in masks]
        if missing:
            raise InputError(mask_dir, f"no mask for {_listing(missing)}")
    items = []
    for i, path in scans.items():
        item: dict[str, Any] = {"image": str(path), "label": str(path), "subject": i}
        if masks is not None:
            item["mask"] = str(masks[i])
        items.append(item)
    return items


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    path_keys: Iterable[str] = ("image", "label", "mask"),
) -> list[dict[str, Any]]:
    """Read a MONAI / Medical Segmentation Decathlon datalist JSON (``{"training": [{"image": ..., ...}]}``).

    Parsing and path resolution are MONAI's ``load_decathlon_datalist``: relative paths are resolved against
    ``base_dir``, by default the JSON file's folder. Integer labels (classification) pass through unchanged.
    Items without ``"subject"`` get the image's :func:`scan_id`.

    Args:
        path: the JSON file.
        key: which list to read (``"training"``, ``"validation"``, ``"test"``).
        base_dir: folder relative paths are resolved against; default the JSON file's folder.
        path_keys: item keys whose string values must be existing files (or folders, for DICOM series).

    Returns:
        The list of items, each a dict with at least ``"image"`` and ``"subject"``.

    Raises:
        InputError: naming the JSON file if it cannot be read or parsed, lacks ``key``, has an item without
            ``"image"``, or refers to missing files (each listed with its item index and key).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot be read as JSON ({err})") from err
    if not isinstance(content, dict) or not isinstance(content.get(key), list):
        keys = ", ".join(sorted(content)) if isinstance(content, dict) else "none"
        raise InputError(path, f"has no list under key {key!r} (keys found: {keys})")
    # The Decathlon "test" list may hold bare paths, which MONAI turns into {"image": path}.
    bad = [
        str(n)
        for n, entry in enumerate(content[key])
        if not (isinstance(entry, dict) and "image" in entry) and not (key == "test" and isinstance(entry, str))
    ]
    if bad:
        raise InputError(path, f"items without an 'image' entry under {key!r}: index {_listing(bad)}")
    items = load_decathlon_datalist(
        path, is_segmentation=True, data_list_key=key, base_dir=base_dir if base_dir is not None else path.parent
    )
    missing = []
    for n, item in enumerate(items):
        for field in path_keys:
            values = item.get(field)
            values = values if isinstance(values, list) else [values]
            missing += [f"[{n}].{field}={v}" for v in values if isinstance(v, str) and not os.path.exists(v)]
        item.setdefault("subject", scan_id(item["image"][0] if isinstance(item["image"], list) else item["image"]))
    if missing:
        raise InputError(path, f"refers to missing files: {_listing(missing)}")
    return items


def _find_scan(folder: Path, subject: str) -> Path | None:
    for suffix in SCAN_SUFFIXES:
        candidate = folder / f"{subject}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_subjects_csv(
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    image_dir: str | os.PathLike | None = None,
    require_files: bool = True,
) -> list[dict[str, Any]]:
    """Read a subjects table for classification: one row per subject, one scan per subject.

    Columns: ``subject_id`` and ``label`` (required); ``path`` or ``image`` (the scan, relative paths resolved
    against the CSV's folder) unless ``image_dir`` is given, in which case the scan is
    ``<image_dir>/<subject_id>.<any scan suffix>``; an optional ``split`` (one of :data:`SPLIT_NAMES`, or empty);
    any other column (age, sex, severity, ...) is kept: numeric columns as ``float`` (missing -> ``nan``), the
    others as ``str`` (missing -> ``""``), so a DataLoader can collate them.

    Labels are class indices ``0..len(class_names)-1`` or, when ``class_names`` is given, the class names
    themselves (``"CN"``, ``"AD"``); without ``class_names`` any non-negative integer is accepted.

    Args:
        path: the CSV file.
        class_names: the allowed classes, in index order; ``None`` accepts any non-negative integer label.
        image_dir: folder holding ``<subject_id>.nii.gz`` (etc.) when the CSV has no ``path``/``image`` column.
        require_files: check that every scan exists (turn off only to inspect a table away from its data).

    Returns:
        ``[{"image": path, "label": int, "subject": id, "split": str (if the column exists), ...extra columns}]``
        in file order.

    Raises:
        InputError: naming the CSV and listing every problem at once: missing columns, empty or duplicate subject
            IDs (with their line numbers), unknown labels, invalid split names, subjects without a scan.
    """
    path = Path(path)
    table, file_column = _read_subjects_table(path, image_dir)
    ids = table["subject_id"].fillna("").str.strip()
    problems = _subject_id_problems(ids)
    labels, unknown = _table_labels(table, ids, class_names)
    if unknown:
        allowed = f"{', '.join(class_names)} or 0..{len(class_names) - 1}" if class_names else "a non-negative integer"
        problems.append(f"unknown label {_listing(unknown)}; allowed: {allowed}")

    splits = None
    if "split" in table.columns:
        splits = table["split"].fillna("").str.strip().str.lower()
        bad = [f"{s} ({ids.iloc[r] or _line(r)})" for r, s in enumerate(splits) if s and s not in SPLIT_NAMES]
        if bad:
            problems.append(f"invalid split {_listing(bad)}; allowed: {', '.join(SPLIT_NAMES)} or empty")

    files, no_file = _table_scans(table, ids, file_column, path, image_dir, require_files)
    if no_file:
        problems.append(f"subjects without a scan: {_listing(no_file)}")
    if problems:
        raise InputError(path, "; ".join(problems))

    reserved = {"subject_id", "label", "split", file_column}
    extras = [c for c in table.columns if c not in reserved]
    items = []
    for r in range(len(table)):
        item: dict[str, Any] = {"image": files[r], "label": labels[r], "subject": ids.iloc[r]}
        if splits is not None:
            item["split"] = splits.iloc[r]
        for column in extras:
            item[column] = _extra_value(table[column], r)
        items.append(item)
    logger.info("read %d subjects from %s", len(items), path)
    return items


def _line(row: int) -> str:
    """The CSV line of a table row (the header is line 1)."""
    return f"line {row + 2}"


def _read_subjects_table(path: Path, image_dir: str | os.PathLike | None) -> tuple[pd.DataFrame, str | None]:
    """Read a subjects CSV and check its columns; returns the table and its scan column (``path``/``image``/None).

    Raises:
        InputError: the file is missing, unreadable, lacks a required column or has no rows.
    """
    if not path.is_file():
        raise InputError(path, "does not exist or is not a file")
    try:
        table = pd.read_csv(path, dtype={"subject_id": str, "label": str, "split": str}, keep_default_na=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(path, f"cannot be read as CSV ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    file_column = next((c for c in ("path", "image") if c in table.columns), None)
    required = ["subject_id", "label"]
    missing_columns = [c for c in required if c not in table.columns]
    if file_column is None and image_dir is None:
        missing_columns.append("path (or image, or pass image_dir)")
    if missing_columns:
        raise InputError(path, f"missing columns: {', '.join(missing_columns)} (found: {', '.join(table.columns)})")
    if table.empty:
        raise InputError(path, "has no rows")
    return table, file_column


def _subject_id_problems(ids: pd.Series) -> list[str]:
    """The empty and the duplicate subject IDs of a table, as problem descriptions with their line numbers."""
    problems = []
    empty = [_line(r) for r in range(len(ids)) if not ids.iloc[r]]
    if empty:
        problems.append(f"empty subject_id on {_listing(empty)}")
    duplicated = ids[ids.duplicated(keep=False) & (ids != "")]
    if not duplicated.empty:
        groups = [
            f"{sid} ({', '.join(_line(r) for r in duplicated.index[duplicated == sid])})"
            for sid in sorted(set(duplicated))
        ]
        problems.append(f"duplicate subject_id: {_listing(groups)}")
    return problems


def _table_labels(
    table: pd.DataFrame, ids: pd.Series, class_names: Sequence[str] | None
) -> tuple[list[int | None], list[str]]:
    """The class index of every row (``None`` where not allowed) and the unknown labels, named by subject."""
    labels: list[int | None] = []
    unknown = []
    for r, raw in enumerate(table["label"].fillna("").str.strip()):
        value = _parse_label(raw, class_names)
        labels.append(value)
        if value is None:
            unknown.append(f"{raw or '<empty>'} ({ids.iloc[r] or _line(r)})")
    return labels, unknown


def _table_scans(
    table: pd.DataFrame,
    ids: pd.Series,
    file_column: str | None,
    path: Path,
    image_dir: str | os.PathLike | None,
    require_files: bool,
) -> tuple[list[str | None], list[str]]:
    """Every row's scan path (from ``file_column``, else found in ``image_dir``) and the subjects without one.

    Relative paths are resolved against the CSV's folder ``path.parent``; with ``require_files`` a scan that does
    not exist counts as missing.
    """
    files: list[str | None] = []
    no_file = []
    for r in range(len(table)):
        sid = ids.iloc[r]
        found: Path | None = None
        if file_column is not None and isinstance(table[file_column].iloc[r], str) and table[file_column].iloc[r]:
            found = Path(table[file_column].iloc[r].strip())
            found = found if found.is_absolute() else path.parent / found
            if require_files and not found.exists():
                no_file.append(f"{sid} ({found})")
        elif image_dir is not None and sid:
            found = _find_scan(Path(image_dir), sid)
            if found is None:
                if require_files:
                    no_file.append(f"{sid} (no {sid}.nii.gz or other scan in {image_dir})")
                found = Path(image_dir) / f"{sid}.nii.gz"
        else:
            no_file.append(f"{sid or _line(r)} (empty {file_column} entry)")
        files.append(os.path.normpath(found) if found is not None else None)
    return files, no_file


def _parse_label(raw: str, class_names: Sequence[str] | None) -> int | None:
    """Return the class index of a CSV label, or ``None`` if it is not allowed."""
    if class_names is not None and raw in class_names:
        return list(class_names).index(raw)
    try:
        number = float(raw)
    except ValueError:
        return None
    if not math.isfinite(number) or number != int(number) or number < 0:
        return None
    index = int(number)
    if class_names is not None and index >= len(class_names):
        return None
    return index


def _extra_value(column: pd.Series, row: int) -> Any:
    value = column.iloc[row]
    if pd.api.types.is_numeric_dtype(column):
        return float(value)
    return "" if pd.isna(value) else str(value).strip()
