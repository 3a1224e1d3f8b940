from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.data.prepare_noisy import add_noise, main, prepare_noisy
from transforms.errors import InputError


def robust_reference(volume: np.ndarray) -> float:
    return float(np.percentile(volume[volume != 0], 99.5))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def clean_dir(tmp_path, make_nifti):
    rng = np.random.default_rng(0)
    for i in range(3):
        make_nifti(tmp_path / "FD" / f"sub-0{i}.nii.gz", rng.uniform(50, 150, (32, 32, 32)).astype(np.float32))
    return tmp_path / "FD"


def test_gaussian_copy_keeps_header_and_affine_and_has_the_requested_sigma(clean_dir, tmp_path, test_affine):
    clean = nib.load(clean_dir / "sub-00.nii.gz")
    clean.header["descrip"] = b"site A T1"
    clean.header.set_xyzt_units("mm", "sec")
    clean.header.set_qform(test_affine, code=1)
    clean.header.set_sform(test_affine, code=4)
    nib.save(clean, clean_dir / "sub-00.nii.gz")
    summary = prepare_noisy(clean_dir, tmp_path / "gaussian15", "gaussian", 15, seed=0)
    assert summary.ok and len(summary.written) == 3
    clean = nib.load(clean_dir / "sub-00.nii.gz")
    noisy = nib.load(tmp_path / "gaussian15" / "sub-00.nii.gz")
    np.testing.assert_array_equal(noisy.affine, clean.affine)
    for field in ("descrip", "xyzt_units", "qform_code", "sform_code", "pixdim", "dim", "srow_x", "quatern_b"):
        np.testing.assert_array_equal(noisy.header[field], clean.header[field], err_msg=field)
    assert noisy.get_data_dtype() == np.float32
    x, y = clean.get_fdata(), noisy.get_fdata()
    sigma_255 = (y - x).std() / robust_reference(x) * 255
    assert sigma_255 == pytest.approx(15, rel=0.03)
    assert abs((y - x).mean()) < 0.05 * (y - x).std()


def test_poisson_copy_has_variance_mean_over_scale_in_the_robust_domain(tmp_path, make_nifti):
    x = np.full((32, 32, 32), 400.0, dtype=np.float32)
    x[:16] = 100.0
    make_nifti(tmp_path / "FD" / "a.nii", x)
    assert prepare_noisy(tmp_path / "FD", tmp_path / "poisson", "poisson", 50, seed=3).ok
    y = nib.load(tmp_path / "poisson" / "a.nii").get_fdata()
    ref = robust_reference(x)
    for value in (100.0, 400.0):
        region = y[x == value]
        assert region.mean() == pytest.approx(value, rel=0.02)
        assert region.var() == pytest.approx(value * ref / 50, rel=0.08)


def test_noise_is_seeded_per_file_whatever_the_order(clean_dir, tmp_path):
    prepare_noisy(clean_dir, tmp_path / "a", seed=7)
    (clean_dir / "sub-00.nii.gz").rename(clean_dir / "zz.nii.gz")  # changes the processing order of the others
    prepare_noisy(clean_dir, tmp_path / "b", seed=7)
    prepare_noisy(clean_dir, tmp_path / "c", seed=8)
    for name in ("sub-01.nii.gz", "sub-02.nii.gz"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name)
        assert digest(tmp_path / "a" / name) != digest(tmp_path / "c" / name)
    assert digest(tmp_path / "a" / "sub-01.nii.gz") != digest(tmp_path / "b" / "sub-02.nii.gz")


def test_existing_outputs_are_kept_unless_overwrite(clean_dir, tmp_path):
    prepare_noisy(clean_dir, tmp_path / "out", seed=1)
    before = digest(tmp_path / "out" / "sub-00.nii.gz")
    again = prepare_noisy(clean_dir, tmp_path / "out", seed=2)
    assert not again.written and len(again.skipped) == 3
    assert digest(tmp_path / "out" / "sub-00.nii.gz") == before
    assert len(prepare_noisy(clean_dir, tmp_path / "out", seed=2, overwrite=True).written) == 3
    assert digest(tmp_path / "out" / "sub-00.nii.gz") != before


def test_mha_and_nrrd_keep_their_geometry(tmp_path):
    (tmp_path / "FD").mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(0).uniform(1, 2, (10, 12, 14)).astype(np.float32))
    image.SetSpacing((1.5, 2.0, 3.0))
    image.SetOrigin((1.0, -2.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    for name in ("a.mha", "b.nrrd"):
        sitk.WriteImage(image, str(tmp_path / "FD" / name))
    assert prepare_noisy(tmp_path / "FD", tmp_path / "out", "rician", 10).ok
    for name in ("a.mha", "b.nrrd"):
        out = sitk.ReadImage(str(tmp_path / "out" / name))
        assert out.GetSpacing() == image.GetSpacing() and out.GetOrigin() == image.GetOrigin()
        assert out.GetDirection() == image.GetDirection() and out.GetSize() == image.GetSize()
        assert not np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image))


def test_bad_files_are_reported_and_the_rest_processed(clean_dir, tmp_path, make_nifti, capsys):
    (clean_dir / "broken.nii.gz").write_bytes(b"not a nifti file")
    make_nifti(clean_dir / "four_d.nii.gz", np.ones((8, 8, 8, 3), np.float32))
    make_nifti(clean_dir / "zeros.nii", np.zeros((8, 8, 8), np.float32))
    make_nifti(clean_dir / "negative.nii", np.full((8, 8, 8), -1.0, np.float32))
    summary = prepare_noisy(clean_dir, tmp_path / "out", "poisson", 100)
    failed = {path.name: problem for path, problem in summary.failed}
    assert set(failed) == {"broken.nii.gz", "four_d.nii.gz", "zeros.nii", "negative.nii"}
    assert "cannot be read as NIfTI" in failed["broken.nii.gz"]
    assert "4-D image (shape 8x8x8x3)" in failed["four_d.nii.gz"]
    assert "all zero" in failed["zeros.nii"] and "non-negative" in failed["negative.nii"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"sub-0{i}.nii.gz" for i in range(3)]

    status = main(["--clean-dir", str(clean_dir), "--out-dir", str(tmp_path / "cli"), "--noise", "poisson"])
    captured = capsys.readouterr()
    assert status == 1
    assert len([line for line in captured.err.splitlines() if line.startswith("FAILED ")]) == 4
    assert "FAILED " + str(clean_dir / "zeros.nii") in captured.err and "3 written" in captured.out


def test_a_folder_named_like_a_scan_is_reported_and_the_rest_processed(clean_dir, tmp_path, capsys):
    (clean_dir / "sub-09.nii.gz").mkdir()
    summary = prepare_noisy(clean_dir, tmp_path / "out")
    assert summary.failed == [(clean_dir / "sub-09.nii.gz", "is a folder, not a scan file")]
    assert sorted(p.name for p in summary.written) == [f"sub-0{i}.nii.gz" for i in range(3)]
    status = main(["--clean-dir", str(clean_dir), "--out-dir", str(tmp_path / "cli")])
    assert status == 1
    assert f"FAILED {clean_dir / 'sub-09.nii.gz'}: is a folder, not a scan file" in capsys.readouterr().err


def test_cli_success_and_argument_errors(clean_dir, tmp_path, capsys):
    out = tmp_path / "gaussian15"
    argv = ["--clean-dir", str(clean_dir), "--out-dir", str(out), "--noise", "gaussian", "--level", "15"]
    assert main([*argv, "--seed", "0"]) == 0
    assert main(["--clean-dir", str(tmp_path / "nowhere"), "--out-dir", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--clean-dir", str(clean_dir), "--out-dir", str(clean_dir)])
    with pytest.raises(SystemExit):
        main([*argv, "--level", "300"])
    with pytest.raises(ValueError, match="noise must be one of"):
        prepare_noisy(clean_dir, out, noise="speckle")


def test_add_noise_refuses_unusable_volumes():
    with pytest.raises(InputError, match="NaN or infinite"):
        add_noise(np.array([[[np.nan, 1.0]]]), "gaussian", 15, 0, "x.nii")
    with pytest.raises(InputError, match="x.nii: is empty"):
        add_noise(np.zeros((0, 2, 2)), "gaussian", 15, 0, "x.nii")
