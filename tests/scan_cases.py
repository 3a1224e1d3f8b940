"""Tiny scans of every header case real archives hold, written on the fly (no downloaded data).

Each case writes one scan (16-20 voxels a side) and returns what a correct reader must see: the voxel values in the
file's own units (scaling applied) and the affine (RAS world). Cases: byte order, data types with and without
scl_slope/scl_inter, all 48 axis orientations, qform-only / sform-only / no-transform headers, a trailing singleton
axis, NIfTI-2, Analyze and NIfTI pairs, MGH/MGZ, MINC-1 (a NetCDF file written with scipy), NRRD, MetaImage and
DICOM series (SimpleITK).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy.io import netcdf_file

SHAPE = (16, 18, 17)


@dataclass
class Written:
    """A written case: the path given to inference and what the reader must return."""

    path: Path
    data: np.ndarray  # voxel values in the file's units, file voxel order
    affine: np.ndarray  # RAS world


def volume(shape=SHAPE, seed: int = 0, low: float = 0.0, high: float = 1000.0) -> np.ndarray:
    """Smooth positive volume with a zero background and distinct values (no two equal neighbours)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.8
    base = 0.5 + 0.3 * np.sin(3 * grid[0] + 1) * np.cos(2 * grid[1]) + 0.2 * grid[2]
    noise = rng.uniform(0, 0.05, shape)
    return np.where(inside, low + (high - low) * np.clip(base + noise, 0.05, 1.0), 0.0)


def orientation_affine(code: tuple[int, ...], signs: tuple[int, ...]) -> np.ndarray:
    """An affine whose voxel axis ``i`` runs along world axis ``code[i]`` in direction ``signs[i]`` (1.1/0.9/1.3 mm)."""
    affine = np.zeros((4, 4))
    for axis, (world, sign) in enumerate(zip(code, signs)):
        affine[world, axis] = sign * (1.1, 0.9, 1.3)[axis]
    affine[:3, 3] = [12.0, -7.5, 3.25]
    affine[3, 3] = 1.0
    return affine


#: the 48 orientations reachable from RAS: 6 axis permutations x 8 flips, named by nibabel's axis codes
ORIENTATIONS = {
    "".join(nib.aff2axcodes(orientation_affine(p, s))): (p, s)
    for p in itertools.permutations(range(3))
    for s in itertools.product((1, -1), repeat=3)
}

OBLIQUE = np.array([[0.96, -0.17, 0.3, -20.0], [0.2, 1.05, -0.1, 15.5], [-0.25, 0.12, 1.9, 40.0], [0.0, 0.0, 0.0, 1.0]])


def _nifti(path: Path, values: np.ndarray, affine: np.ndarray, **options) -> Written:
    """A NIfTI-1 (or ``image_class``) file; options: dtype, endian, slope, inter, qform_code, sform_code."""
    image_class = options.get("image_class", nib.Nifti1Image)
    header = image_class.header_class(endianness=options.get("endian", "<"))
    dtype = np.dtype(options.get("dtype", np.float32))
    slope, inter = options.get("slope"), options.get("inter")
    raw = values if slope is None else (values - (inter or 0.0)) / slope
    if np.issubdtype(dtype, np.integer):
        raw = np.round(raw)
    stored = raw.astype(dtype.newbyteorder(options.get("endian", "<")))
    header.set_data_dtype(dtype)
    img = image_class(stored, None, header=header)
    img.set_qform(affine, code=options.get("qform_code", 1))
    img.set_sform(affine, code=options.get("sform_code", 2))
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    back = nib.load(path)
    assert back.header.endianness == options.get("endian", "<")  # nibabel keeps the byte order it was given
    return Written(path, np.asanyarray(back.dataobj).astype(np.float64), back.affine)


def write_minc1(path: Path, values: np.ndarray, affine: np.ndarray) -> Written:
    """A MINC-1 file (NetCDF classic) with float32 voxels; ``affine`` must be diagonal."""
    steps = np.diag(affine)[:3]
    starts = affine[:3, 3] / steps
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = netcdf_file(path, "w", version=1)
    dims = ("zspace", "yspace", "xspace")
    for name, size in zip(dims, values.shape[::-1]):
        handle.createDimension(name, size)
    for i, name in enumerate(("xspace", "yspace", "zspace")):
        var = handle.createVariable(name, "d", ())
        var.spacing, var.step, var.start = b"regular__", float(steps[i]), float(starts[i])
        var.direction_cosines = np.eye(3)[i]
    image = handle.createVariable("image", "f", dims)
    image[:] = np.transpose(values, (2, 1, 0)).astype(np.float32)
    for name, value in (("image-max", values.max()), ("image-min", values.min())):
        handle.createVariable(name, "d", ()).data[...] = float(value)
    handle.close()
    back = nib.load(path)
    return Written(path, np.asanyarray(back.dataobj).astype(np.float64), back.affine)


def _sitk_affine(image: sitk.Image) -> np.ndarray:
    """The RAS affine of a SimpleITK image (ITK's LPS world, x and y negated)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def write_itk(path: Path, values: np.ndarray, dtype=np.int16) -> Written:
    """An NRRD / MetaImage file with an oblique direction, via SimpleITK."""
    image = sitk.GetImageFromArray(np.transpose(values, (2, 1, 0)).astype(dtype))
    image.SetSpacing((0.8, 1.2, 1.5))
    image.SetOrigin((10.0, -4.0, 6.5))
    angle = np.deg2rad(15)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(rotation.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, os.fspath(path))
    return Written(path, values.astype(dtype).astype(np.float64), _sitk_affine(image))


def write_dicom_series(
    folder: Path, values: np.ndarray, uid: str, number: int, prefix: str = "IM", spacing=(0.9, 1.1, 2.0)
) -> list[Path]:
    """One int16 DICOM file per slice ``k`` of ``values`` (i, j, k), MR, axial, written in reverse slice order."""
    origin = (10.0, -5.0, 3.0)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in reversed(range(values.shape[2])):
        image = sitk.GetImageFromArray(np.ascontiguousarray(values[:, :, k].T).astype(np.int16))
        image.SetSpacing(spacing[:2])
        position = (origin[0], origin[1], origin[2] + k * spacing[2])
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{uid}.{k + 1}",
            "0008|0060": "MR",
            "0008|103e": f"series {number}",
            "0010|0010": "Test^Subject",
            "0010|0020": "S1",
            "0018|0050": str(spacing[2]),
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": uid,
            "0020|0011": str(number),
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]:g}\\{spacing[0]:g}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        path = folder / f"{prefix}{number:02d}_{values.shape[2] - k:03d}.dcm"
        writer.SetFileName(os.fspath(path))
        writer.Execute(image)
        paths.append(path)
    return paths


def dicom_expected(folder: Path, values: np.ndarray, spacing=(0.9, 1.1, 2.0)) -> Written:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    return Written(folder, np.round(values).astype(np.int16).astype(np.float64), affine)


# --------------------------------------------------------------------------------------------- the header cases
def _case_nifti(**options) -> Callable[[Path], Written]:
    def write(folder: Path) -> Written:
        rest = dict(options)
        name, values, affine = rest.pop("name"), rest.pop("values", None), rest.pop("affine", OBLIQUE)
        return _nifti(folder / name, volume() if values is None else values, affine, **rest)

    return write


def header_cases() -> dict[str, Callable[[Path], Written]]:
    """``{case id: writer(folder) -> Written}`` for the parametrised tests."""
    cases: dict[str, Callable[[Path], Written]] = {}
    dtypes = {
        "uint8": (np.uint8, 200.0),
        "int8": (np.int8, 120.0),
        "int16": (np.int16, 3000.0),
        "uint16": (np.uint16, 60000.0),
        "int32": (np.int32, 1e6),
        "uint32": (np.uint32, 1e6),
        "int64": (np.int64, 1e6),
        "float32": (np.float32, 1000.0),
        "float64": (np.float64, 1000.0),
    }
    for name, (dtype, high) in dtypes.items():
        for endian in ("<", ">"):
            tag = f"{name}-{'be' if endian == '>' else 'le'}"
            cases[tag] = _case_nifti(
                name=f"{tag}.nii.gz", values=volume(high=high), dtype=dtype, endian=endian, affine=OBLIQUE
            )
    cases["int16-be-scaled"] = _case_nifti(
        name="scaled-be.nii", values=volume(high=900.0), dtype=np.int16, endian=">", slope=0.25, inter=-12.0
    )
    cases["uint8-scaled"] = _case_nifti(name="scaled-u8.nii.gz", values=volume(high=500.0), dtype=np.uint8, slope=2.0)
    cases["qform-only"] = _case_nifti(name="qform.nii.gz", sform_code=0, qform_code=1)
    cases["sform-only"] = _case_nifti(name="sform.nii.gz", sform_code=2, qform_code=0)
    cases["no-transform"] = _case_nifti(
        name="nocode.nii.gz", sform_code=0, qform_code=0, affine=np.diag([1.2, 1.0, 0.9, 1.0])
    )
    cases["singleton-4d"] = _case_nifti(name="single.nii.gz", values=volume()[..., None], dtype=np.int16)
    cases["nifti2-be"] = _case_nifti(name="nifti2.nii", image_class=nib.Nifti2Image, endian=">", dtype=np.int16)
    cases["nifti-pair"] = _case_nifti(name="pair.hdr", image_class=nib.Nifti1Pair, dtype=np.int16)
    cases["analyze"] = lambda folder: _analyze(folder / "analyze.hdr")
    cases["mgz"] = lambda folder: _mgh(folder / "brain.mgz")
    cases["mgh-int16"] = lambda folder: _mgh(folder / "brain16.mgh", np.int16)
    cases["minc1"] = lambda folder: write_minc1(folder / "minc.mnc", volume(), np.diag([1.5, 1.0, 2.0, 1.0]))
    cases["nrrd"] = lambda folder: write_itk(folder / "nrrd-scan.nrrd", volume(high=2000.0))
    cases["mha-float"] = lambda folder: write_itk(folder / "mha-scan.mha", volume(), np.float32)
    cases["dicom-series"] = _dicom_case
    for code, (perm, signs) in ORIENTATIONS.items():
        cases[f"orient-{code}"] = _case_nifti(
            name=f"orient-{code}.nii.gz", affine=orientation_affine(perm, signs), dtype=np.int16, endian=">"
        )
    return cases


def _analyze(path: Path) -> Written:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.AnalyzeImage(np.round(volume()).astype(np.int16), np.diag([1.5, 1.2, 2.0, 1.0])), path)
    back = nib.load(path)
    return Written(path, np.asanyarray(back.dataobj).astype(np.float64), back.affine)


def _mgh(path: Path, dtype=np.float32) -> Written:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.MGHImage(volume().astype(dtype), OBLIQUE), path)
    back = nib.load(path)
    assert back.header.endianness == ">"  # MGH is big-endian by definition
    return Written(path, np.asanyarray(back.dataobj).astype(np.float64), back.affine)


def _dicom_case(folder: Path) -> Written:
    values = np.round(volume(shape=(16, 18, 6), high=1500.0))
    series = folder / "dicom_t1"
    write_dicom_series(series, values, "1.2.826.0.1.3680043.2.1125.21", 3)
    return dicom_expected(series, values)
