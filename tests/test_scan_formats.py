"""Every valid 3-D scan in: each header case, format and folder layout, checked voxel for voxel.

The denoiser is the identity (``torch.nn.Identity``), so after the bundle's preprocessing (load, reorient to RAS,
percentile scaling) and its inversion (``Invertd``) the written volume must equal the input in the input's own
units, on its own grid: any slip in byte order, scaling, orientation, shape or affine shows.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.inference.infer import collect_scans, denoise_items, main, output_file
from pipeline.inference.scan_listing import list_folder
from tests.scan_cases import (
    ORIENTATIONS,
    SHAPE,
    dicom_expected,
    header_cases,
    volume,
    write_dicom_series,
    write_minc1,
)
from transforms.errors import InputError
from transforms.formats import DicomSeries, image_suffix, is_dicom_file, unreadable_reason
from transforms.io import LoadScan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [os.fspath(ROOT / "bundle" / "configs" / n) for n in ("common.yaml", "inference.yaml")]
CASES = header_cases()


@pytest.fixture(scope="module")
def pipeline_parts(tmp_path_factory):
    """The bundle's own preprocessing and postprocessing (parsed once), writing to a module folder."""
    out = tmp_path_factory.mktemp("out")
    parser = ConfigParser(ConfigParser.load_config_files(CONFIGS))
    parser.update({"bundle_root": os.fspath(ROOT / "bundle"), "output_dir": os.fspath(out), "dataset_dir": "."})
    return parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing"), out


def check_same(out_path: Path, written, header_like: bool) -> None:
    out = nib.load(out_path)
    assert out.shape == written.data.shape
    assert out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, written.affine, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.get_fdata(), written.data, rtol=1e-5, atol=1e-3)
    if header_like:
        source = nib.load(written.path)
        for form in ("get_qform", "get_sform"):
            assert getattr(out.header, form)(coded=True)[1] == getattr(source.header, form)(coded=True)[1]
        assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(source.affine)


def test_48_orientations_are_distinct():
    assert len(ORIENTATIONS) == 48


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_header_case_comes_back_voxel_for_voxel(case, tmp_path, pipeline_parts):
    preprocessing, postprocessing, out = pipeline_parts
    written = CASES[case](tmp_path)
    items = collect_scans(written.path.parent if written.path.is_dir() else written.path)
    assert len(items) == 1
    summary = denoise_items(
        items, torch.nn.Identity(), preprocessing, _whole, postprocessing, out, overwrite=True, progress=False
    )
    assert summary.count("done") == 1, summary.report()
    nifti = written.path.name.lower().endswith((".nii", ".nii.gz"))
    check_same(output_file(items[0]["image"], out), written, header_like=nifti)


def _whole(image: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
    return network(image)


def test_big_endian_scans_load_native_for_reorientation_and_resampling(tmp_path):
    written = CASES["orient-LPI"](tmp_path)  # big-endian int16, flipped axes
    assert nib.load(written.path).header.endianness == ">"
    image = LoadScan()(written.path)
    assert image.dtype == torch.float32 and image.shape[1:] == SHAPE
    from monai.transforms import Compose

    from transforms.io import LoadScand, canonical_transforms

    chain = Compose([LoadScand("image"), *canonical_transforms("image", spacing=[2.0, 2.0, 2.0])])
    assert chain({"image": os.fspath(written.path)})["image"].shape[0] == 1  # used to raise "byte order" here


def test_suffixes_and_dicom_detection(tmp_path):
    assert image_suffix("a.NII.GZ") == ".nii.gz" and image_suffix("b.mgz") == ".mgz" and image_suffix("c.txt") == ""
    assert image_suffix("x.dcm.gz") == ".dcm.gz" and "decompress" in unreadable_reason(".dcm.gz")
    assert unreadable_reason(".nii.gz") is None and unreadable_reason(".mnc") is None
    files = write_dicom_series(tmp_path / "d", np.ones((8, 8, 2)), "1.2.3.4", 1)
    plain = tmp_path / "IM0001"
    shutil.copy(files[0], plain)  # a DICOM file without a suffix: found by its DICM preamble
    assert is_dicom_file(files[0]) and is_dicom_file(plain)
    (tmp_path / "notes").write_text("x" * 200)
    assert not is_dicom_file(tmp_path / "notes")


def _mixed_folder(root: Path) -> dict:
    """The issue's folder: NIfTI of many header cases, a DICOM series, lone DICOM files, unreadable files, text."""
    folder = root / "scans"
    expected = {}
    for case in ("int16-be", "float32-be", "orient-LAS", "qform-only", "sform-only", "singleton-4d", "nifti2-be"):
        written = CASES[case](folder)
        expected[written.path] = written
    series_values = np.round(volume(shape=(16, 18, 6), high=1500.0))
    write_dicom_series(folder, series_values, "1.2.826.0.1.3680043.2.1125.30", 5)
    expected["series"] = dicom_expected(folder, series_values)
    lone = [write_dicom_series(folder, volume((16, 18, 1)), f"1.2.826.0.1.3680043.2.1125.{n}", n)[0] for n in (6, 7)]
    minc = write_minc1(folder / "good.mnc", volume(), np.diag([1.5, 1.0, 2.0, 1.0]))
    expected[minc.path] = minc
    (folder / "corrupt.mnc").write_bytes(b"CDF\x01" + b"\x00" * 40)
    with open(lone[0], "rb") as source, gzip.open(folder / "packed.dcm.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    (folder / "notes.txt").write_text("scanner notes, not a scan")
    (folder / "int16-be.json").write_text(json.dumps({"RepetitionTime": 2.3}))
    return {"folder": folder, "expected": expected, "lone": lone}


def test_a_mixed_folder_lists_every_scan_and_names_the_rest(tmp_path):
    mixed = _mixed_folder(tmp_path)
    items = list_folder(mixed["folder"])
    names = sorted(i["subject"] for i in items)
    assert names == sorted(
        ["corrupt", "float32-be", "good", "int16-be", "nifti2", "orient-LAS", "packed", "qform", "sform", "single"]
        + ["scans_dicom_series-5", "scans_dicom_series-6", "scans_dicom_series-7"]
    )
    series = [i["image"] for i in items if isinstance(i["image"], DicomSeries)]
    assert sorted(len(s.files) for s in series) == [1, 1, 6]
    assert sorted(Path(p).name for p, _ in items.ignored) == ["int16-be.json", "notes.txt"]


def test_one_command_with_only_weights_processes_every_valid_volume(tmp_path, capsys):
    """The issue's 'done when': NIfTI of every header case, a DICOM series, lone DICOM files, unreadable files."""
    mixed = _mixed_folder(tmp_path)
    weights = tmp_path / "model" / "model.pt"
    weights.parent.mkdir()
    torch.save({}, weights)  # an identity network: no tensors
    card = {"model_card": {"format": 1, "task": "denoise"}, "network_def": {"_target_": "torch.nn.Identity"}}
    card.update(patch_size=[16, 16, 16])
    weights.with_suffix(".json").write_text(json.dumps(card))
    out = tmp_path / "out"
    args = ["denoise", os.fspath(mixed["folder"]), "--output", os.fspath(out), "--weights", os.fspath(weights)]
    args += ["--no-guard"]  # the identity network's output is the scan itself: compared below
    assert main([*args, "--device", "cpu", "--set", "show_progress=false", "--set", "num_workers=0"]) == 1
    err = capsys.readouterr().err
    for path, written in mixed["expected"].items():
        name = "scans_dicom_series-5" if path == "series" else written.path
        check_same(output_file(name, out), written, header_like=str(name).endswith((".nii", ".nii.gz")))
    failed = {line.split(": ")[0].split()[1]: line for line in err.splitlines() if line.startswith("FAILED ")}
    assert any("corrupt.mnc" in k for k in failed)
    assert "decompress" in next(v for k, v in failed.items() if k.endswith("packed.dcm.gz"))
    lone_lines = [v for k, v in failed.items() if any(os.fspath(p) in k for p in mixed["lone"])]
    assert len(lone_lines) == 2 and all("2-D" in v or "at least 2 voxels" in v for v in lone_lines)
    assert f"IGNORED {mixed['folder'] / 'notes.txt'}: not a medical image" in err
    assert "13 scans: 9 done, 0 skipped (output exists), 4 failed; 2 file(s) ignored (not scans)" in err
    # run again: every finished output is skipped, and the summary says so loudly
    assert main([*args, "--device", "cpu", "--set", "show_progress=false", "--set", "num_workers=0"]) == 1
    assert "9 SKIPPED because their output exists" in capsys.readouterr().err


def test_a_minc2_file_without_h5py_fails_with_what_to_install(tmp_path):
    try:
        import h5py  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("h5py is installed: MINC-2 is readable here")
    path = tmp_path / "scan.mnc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2000))  # the HDF5 signature of a MINC-2 file
    with pytest.raises(InputError, match=r"needs the optional package h5py \(pip install h5py\)"):
        LoadScan()(path)
