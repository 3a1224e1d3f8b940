"""LoadScan: NIfTI/MHA/NRRD/DICOM give the same MetaTensor; every bad input is an InputError in plain words."""

from __future__ import annotations

import gzip
import locale
import logging
import pickle

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from transforms.errors import InputError
from transforms.io import LoadScan, LoadScand, canonical_transforms, scan_suffix

# Non-RAS (axes permuted and flipped) and anisotropic: catches any LPS/RAS or axis-order slip.
AFFINE = np.array([[0.0, 0.0, -1.5, 40.0], [-1.0, 0.0, 0.0, 20.0], [0.0, 2.0, 0.0, -30.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 100, (12, 10, 8)).astype(np.float32)


@pytest.fixture
def nifti(tmp_path, volume):
    path = tmp_path / "sub-01.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINE), path)
    return path


def sitk_image(array_ijk: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """A SimpleITK image with the same voxels and world geometry as a nibabel (RAS) array + affine."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine_ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple((lps / spacing).ravel()))
    image.SetOrigin(tuple(np.diag([-1.0, -1.0, 1.0]) @ affine_ras[:3, 3]))
    return image


def write_dicom_series(folder, array_ijk: np.ndarray, affine_ras: np.ndarray, series_uid: str = "1.2.3.4.5") -> None:
    # SimpleITK's GDCM writer switches the process locale to "C" (then open() defaults to ASCII); restore it.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_series(folder, array_ijk, affine_ras, series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(folder, array_ijk: np.ndarray, affine_ras: np.ndarray, series_uid: str) -> None:
    folder.mkdir()
    image = sitk_image(array_ijk.astype(np.int16), affine_ras)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.3.4",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            # ImageOrientationPatient: the direction cosines of the rows and columns (first two matrix columns)
            "0020|0037": "\\".join(f"{direction[i]:.6f}" for i in (0, 3, 6, 1, 4, 7)),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_nifti_loads_channel_first_with_its_affine(nifti, volume):
    img = LoadScan()(nifti)
    assert img.shape == (1, *volume.shape) and img.dtype == torch.float32
    np.testing.assert_allclose(img.affine.numpy(), AFFINE)
    np.testing.assert_array_equal(img[0].numpy(), volume)
    assert img.meta["filename_or_obj"] == str(nifti)
    assert img.meta["space"] == "RAS"


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii"])
def test_other_formats_load_to_the_same_tensor_and_affine(tmp_path, nifti, volume, suffix):
    path = tmp_path / f"scan{suffix}"
    if suffix == ".nii":
        nib.save(nib.Nifti1Image(volume, AFFINE), path)
    else:
        sitk.WriteImage(sitk_image(volume, AFFINE), str(path))
    reference = LoadScan()(nifti)
    img = LoadScan()(path)
    assert img.shape == reference.shape
    np.testing.assert_allclose(img.affine.numpy(), reference.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(img.numpy(), reference.numpy())


def test_dicom_series_folder_loads_with_the_right_geometry(tmp_path):
    array = np.random.default_rng(1).integers(0, 1000, (10, 9, 6)).astype(np.int16)
    affine = np.array([[0.0, 0.0, 2.5, -20.0], [-0.9, 0.0, 0.0, 15.0], [0.0, -1.1, 0.0, 30.0], [0, 0, 0, 1.0]])
    write_dicom_series(tmp_path / "dicom", array, affine)
    img = LoadScan()(tmp_path / "dicom")
    assert img.shape == (1, 10, 9, 6)
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)
    np.testing.assert_array_equal(img[0].numpy(), array.astype(np.float32))


def test_folder_with_two_series_is_refused(tmp_path):
    array = np.zeros((6, 6, 3), dtype=np.int16)
    write_dicom_series(tmp_path / "a", array, AFFINE, series_uid="1.2.3.4.6")
    write_dicom_series(tmp_path / "b", array, AFFINE, series_uid="1.2.3.4.7")
    for f in (tmp_path / "b").iterdir():
        f.rename(tmp_path / "a" / f"b_{f.name}")
    with pytest.raises(InputError, match="2 DICOM series"):
        LoadScan()(tmp_path / "a")


def test_4d_with_a_single_volume_is_squeezed_and_logged(tmp_path, volume, caplog):
    path = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(volume[..., None], AFFINE), path)
    with caplog.at_level(logging.INFO, logger="transforms.io"):
        img = LoadScan()(path)
    assert img.shape == (1, *volume.shape)
    np.testing.assert_allclose(img.affine.numpy(), AFFINE)
    assert "squeezed" in caplog.text


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda p, v: p / "missing.nii.gz", "does not exist"),
        (lambda p, v: _write(p, "empty.nii.gz", b""), "empty"),
        (lambda p, v: _write(p, "plain.nii.gz", b"\x5c\x01\x00\x00" + b"\x00" * 400), "not gzip"),
        (lambda p, v: _write(p, "wrong.nii", b"hello world" * 40), "not a NIfTI"),
        (lambda p, v: _write(p, "zipped.nii", gzip.compress(b"\x5c\x01\x00\x00" * 100)), "rename it to .nii.gz"),
        (lambda p, v: _write(p, "notes.txt", b"x"), "unknown extension"),
        (lambda p, v: _write(p, "junk.mha", b"garbage" * 10), "SimpleITK cannot read"),
        (lambda p, v: _write(p, "junk.nii.gz", gzip.compress(b"garbage" * 100)), "could not be read as NIfTI"),
        (lambda p, v: (p / "folder").mkdir() or p / "folder", "no DICOM series"),
    ],
)
def test_bad_files_raise_input_error_in_plain_words(tmp_path, volume, make, phrase):
    path = make(tmp_path, volume)
    with pytest.raises(InputError, match=phrase) as info:
        LoadScan()(path)
    assert info.value.path == str(path)
    assert pickle.loads(pickle.dumps(info.value)).problem == info.value.problem


def test_truncated_gzip_is_reported_as_truncated(tmp_path, nifti):
    data = nifti.read_bytes()
    path = _write(tmp_path, "cut.nii.gz", data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        LoadScan()(path)


@pytest.mark.parametrize(
    ("shape", "phrase"),
    [((12, 10), "2-D image"), ((12, 10, 8, 3), "4-D image .*split it first"), ((12, 10, 1), "at least 2 voxels")],
)
def test_wrong_dimensionality_is_refused(tmp_path, shape, phrase):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.float32), AFFINE), path)
    with pytest.raises(InputError, match=phrase):
        LoadScan()(path)


def test_non_finite_voxels_are_refused(tmp_path, volume):
    volume[1, 2, 3] = np.nan
    volume[0, 0, 0] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINE), path)
    with pytest.raises(InputError, match="2 NaN or infinite"):
        LoadScan()(path)


def test_dictionary_loader_loads_paths_and_passes_arrays_through(nifti):
    array = torch.zeros(1, 4, 4, 4)
    out = LoadScand(keys=("image", "label"))({"image": str(nifti), "label": array, "subject": "sub-01"})
    assert out["image"].shape == (1, 12, 10, 8)
    assert out["label"] is array and out["subject"] == "sub-01"


def test_canonical_transforms_orient_to_ras_and_validate(nifti):
    data = LoadScand(keys="image")({"image": nifti})
    for t in canonical_transforms("image", spacing=(2.0, 2.0, 2.0)):
        data = t(data)
    img = data["image"]
    rotation = img.affine[:3, :3].numpy()
    assert np.allclose(rotation, np.diag(np.diag(rotation))) and (np.diag(rotation) > 0).all()
    np.testing.assert_allclose(np.diag(rotation), 2.0)
    with pytest.raises(ValueError, match="spacing"):
        canonical_transforms("image", spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="axcodes"):
        canonical_transforms("image", axcodes="RAX")


def test_scan_suffix():
    assert scan_suffix("a/b/SUB.NII.GZ") == ".nii.gz"
    assert scan_suffix("x.nrrd") == ".nrrd"
    assert scan_suffix("x") == ""
