"""The denoised volume written in its scan's own space: the source's NIfTI header kept, float32 data, atomic writes."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from pipeline.inference.scan_listing import describe, scan_name
from pipeline.utils.files import atomic_path
from transforms.errors import InputError

__all__ = ["DENOISED_POSTFIX", "SaveLikeSourced", "check_unique_outputs", "output_file"]

#: Appended to a scan's name for its denoised output (``sub-01.nii.gz`` -> ``sub-01_denoised.nii.gz``).
DENOISED_POSTFIX = "_denoised"

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def output_file(source: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = DENOISED_POSTFIX) -> Path:
    """The output path of a scan: ``<output_dir>/<scan name><postfix>.nii.gz``.

    Args:
        source: the scan's path.
        output_dir: the output folder.
        postfix: appended to the scan's name.

    Returns:
        The path.
    """
    return Path(output_dir) / f"{scan_name(source)}{postfix}.nii.gz"


def check_unique_outputs(items: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, postfix: str) -> None:
    """Refuse a batch in which two scans would write the same output file.

    Raises:
        InputError: naming the clashing scans.
    """
    seen: dict[Path, str] = {}
    clashes = []
    for item in items:
        out = output_file(item["image"], output_dir, postfix)
        if out in seen:
            clashes.append(f"{seen[out]} and {describe(item['image'])} -> {out.name}")
        seen[out] = describe(item["image"])
    if clashes:
        raise InputError(output_dir, f"several scans would write the same output: {'; '.join(clashes)}")


class SaveLikeSourced(MapTransform):
    """Write a prediction as NIfTI beside its source's header: same shape, affine and header, float32 data.

    Expects the prediction already back on the source's grid (after ``Invertd``), channel first ``(1, H, W, D)``.
    For a NIfTI source the source file's header is copied (qform/sform and codes, pixdim, units, description,
    intent); the data type becomes float32 and the scaling slope/intercept and ``cal_min``/``cal_max`` are
    cleared. For other sources the prediction's affine is written as both qform and sform (code 1, scanner).
    The file is written atomically (:func:`pipeline.utils.files.atomic_path`).

    Args:
        keys: the prediction key (one).
        output_dir: the output folder.
        source_key: the key whose ``meta["filename_or_obj"]`` names the source scan.
        output_postfix: appended to the source's name (see :func:`output_file`).
        allow_missing_keys: skip a missing prediction.

    Raises:
        ValueError: if ``keys`` names more than one key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        source_key: str = "image",
        output_postfix: str = DENOISED_POSTFIX,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name one prediction key, got {self.keys}.")
        self.output_dir = Path(output_dir)
        self.source_key = source_key
        self.output_postfix = output_postfix

    @staticmethod
    def source_of(data: Mapping[Hashable, Any], source_key: str) -> str:
        """The source scan's path, from the item's metadata or its path entry.

        Args:
            data: the item.
            source_key: the key of the loaded scan (a MetaTensor) or of its path.

        Returns:
            The path.

        Raises:
            ValueError: if the item does not name its source file.
        """
        value = data.get(source_key)
        if isinstance(value, MetaTensor) and value.meta.get("filename_or_obj"):
            return os.fspath(value.meta["filename_or_obj"])
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise ValueError(f"cannot tell the source file of the item: {source_key!r} has no file name.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Write the prediction.

        Args:
            data: the item, with the prediction ``(1, H, W, D)`` on the source's grid and the source key.

        Returns:
            A copy of the item with ``"output"`` set to the written path.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            source = self.source_of(d, self.source_key)
            dest = output_file(source, self.output_dir, self.output_postfix)
            _write_like(d[key], source, dest)
            d["output"] = os.fspath(dest)
        return d


def _write_like(pred: Any, source: str, dest: Path) -> None:
    array = convert_to_numpy(pred, wrap_sequence=True).astype(np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if source.lower().endswith(_NIFTI_SUFFIXES):
        src = nib.load(source)
        if int(np.prod(src.shape)) != array.size:
            raise ValueError(f"prediction shape {array.shape} does not fit {source} (shape {src.shape}).")
        header = src.header.copy() if src.header.endianness == "<" else src.header.as_byteswapped("<")
        header.set_data_dtype(np.float32)  # little-endian float32, whatever the source's type and byte order
        header["cal_min"], header["cal_max"] = 0.0, 0.0
        out = type(src)(array.reshape(src.shape), None, header=header)
        out.header.set_slope_inter(None, None)
    else:
        affine = pred.meta.get("affine") if isinstance(pred, MetaTensor) else None
        affine = np.eye(4) if affine is None else convert_to_numpy(affine).astype(np.float64)
        out = nib.Nifti1Image(array, affine)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
    with atomic_path(dest) as tmp:
        nib.save(out, tmp)
