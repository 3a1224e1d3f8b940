"""Inference on new scans: inputs, the scan's own space, bad scans, re-runs, the classifier's CSV, the CLI.

The geometry tests run the bundle's inference config with an identity network (``torch.nn.Identity`` in place of
the denoiser), so the output must equal the input voxel for voxel once MONAI's ``Invertd`` has undone the
reorientation and the intensity scaling: any slip in orientation, shape or intensity units shows.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipeline.errors import CheckpointError, ScanFailuresError
from pipeline.inference.infer import (
    InferenceSummary,
    SaveLikeSourced,
    ScanResult,
    classify_scans,
    collect_scans,
    denoise_scans,
    main,
    output_file,
)
from tests.conftest import blob_volume
from transforms.errors import InputError

IDENTITY = {"network_def": {"_target_": "torch.nn.Identity"}, "show_progress": False, "num_workers": 0}
TINY_CLASSIFIER = {"model_depth": 10, "network_def::block_inplanes": [4, 8, 8, 8], "input_size": [24, 24, 24]}

# a permuted, flipped, anisotropic, shifted grid: nothing like RAS 1 mm
OBLIQUE = np.array([[0.0, 0.0, -2.5, 40.0], [-1.1, 0.0, 0.0, 20.0], [0.0, 0.9, 0.0, -10.0], [0.0, 0.0, 0.0, 1.0]])


def write_int16_scan(path: Path, shape=(30, 21, 13), seed=7) -> Path:
    data = np.round(blob_volume(shape, seed=seed)).astype(np.int16)
    img = nib.Nifti1Image(data, OBLIQUE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"test scan"
    img.set_qform(OBLIQUE, code=1)
    img.set_sform(OBLIQUE, code=2)
    img.header.set_slope_inter(0.5, 3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


@pytest.fixture
def identity_weights(tmp_path) -> Path:
    path = tmp_path / "identity.pt"
    torch.save({}, path)
    return path


@pytest.fixture
def scans(tmp_path) -> Path:
    folder = tmp_path / "scans"
    write_int16_scan(folder / "oblique.nii.gz")
    nib.save(nib.Nifti1Image(blob_volume((20, 22, 24), seed=3), np.diag([1.5, 1.5, 1.5, 1.0])), folder / "plain.nii")
    return folder


def add_bad_scans(folder: Path) -> dict[str, str]:
    good = (folder / "oblique.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(good[: len(good) // 3])
    nib.save(nib.Nifti1Image(np.ones((10, 12), np.float32), np.eye(4)), folder / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), folder / "series.nii.gz")
    with_nan = blob_volume((12, 12, 12))
    with_nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(with_nan, np.eye(4)), folder / "nan.nii.gz")
    (folder / "notes.txt").write_text("not a scan, ignored")
    return {"truncated": "", "flat": "2-D", "series": "4-D", "nan": "finite"}


def test_collect_scans_from_file_folder_datalist_and_list(scans, tmp_path):
    files = sorted(str(p) for p in scans.iterdir())
    assert [i["image"] for i in collect_scans(scans)] == files
    assert collect_scans(files[0]) == [{"image": files[0], "subject": Path(files[0]).name.split(".")[0]}]
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"testing": [{"image": files[1], "subject": "S7"}]}))
    assert collect_scans(datalist) == [{"image": files[1], "subject": "S7"}]
    assert [i["image"] for i in collect_scans([files[1], scans])] == [files[1], *files]
    with pytest.raises(InputError, match="does not exist"):
        collect_scans(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no scan"):
        collect_scans(tmp_path / "empty")


def test_denoised_output_is_in_the_scans_own_space(scans, tmp_path, identity_weights):
    summary = denoise_scans(scans, tmp_path / "out", identity_weights, device="cpu", **IDENTITY)
    assert summary.count("done") == 2 and not summary.failed
    for source in sorted(scans.iterdir()):
        src = nib.load(source)
        out = nib.load(output_file(source, tmp_path / "out"))
        assert out.shape == src.shape
        assert np.array_equal(out.affine, src.affine)
        assert out.header.get_qform(coded=True)[1] == src.header.get_qform(coded=True)[1]
        assert out.header.get_sform(coded=True)[1] == src.header.get_sform(coded=True)[1]
        ignored = {"datatype", "bitpix", "scl_slope", "scl_inter", "cal_min", "cal_max", "vox_offset"}
        differing = [k for k in src.header if k not in ignored and not np.array_equal(src.header[k], out.header[k])]
        assert not differing
        assert out.get_data_dtype() == np.float32
        # identity network: Invertd must undo the reorientation and the scaling exactly, in the scan's units
        np.testing.assert_allclose(out.get_fdata(), src.get_fdata(), rtol=1e-5, atol=1e-4)


def test_outputs_are_floored_at_output_min_unless_it_is_null(tmp_path, identity_weights):
    signed = blob_volume((20, 22, 24), seed=3) - 20.0  # negative in the air, as a denoiser's output can be
    assert signed.min() < 0 < signed.max()
    source = tmp_path / "signed.nii.gz"
    nib.save(nib.Nifti1Image(signed, np.diag([1.5, 1.5, 1.5, 1.0])), source)
    cases = ((0.0, np.maximum(signed, 0.0)), (-5.0, np.maximum(signed, -5.0)), (None, signed), (False, signed))
    for output_min, expected in cases:
        out = tmp_path / f"out{output_min}"
        assert denoise_scans(source, out, identity_weights, device="cpu", output_min=output_min, **IDENTITY).count(
            "done"
        )
        np.testing.assert_allclose(nib.load(output_file(source, out)).get_fdata(), expected, rtol=1e-5, atol=1e-4)


def test_resampled_inference_comes_back_on_the_scans_grid(scans, tmp_path, identity_weights):
    summary = denoise_scans(
        scans / "oblique.nii.gz", tmp_path / "out", identity_weights, device="cpu", spacing=[2.0, 2.0, 2.0], **IDENTITY
    )
    assert summary.count("done") == 1
    src, out = nib.load(scans / "oblique.nii.gz"), nib.load(tmp_path / "out" / "oblique_denoised.nii.gz")
    assert out.shape == src.shape and np.array_equal(out.affine, src.affine)
    corr = np.corrcoef(out.get_fdata().ravel(), src.get_fdata().ravel())[0, 1]
    assert corr > 0.9  # resampled there and back: blurred, not shifted or flipped


def test_bad_scans_are_named_and_the_rest_processed(scans, tmp_path, identity_weights, capsys):
    problems = add_bad_scans(scans)
    out = tmp_path / "out"
    args = ["denoise", os.fspath(scans), "--output", os.fspath(out), "--weights", os.fspath(identity_weights)]
    args += ["--device", "cpu", "--set", "network_def={_target_: torch.nn.Identity}", "--set", "show_progress=false"]
    assert main(args) == 1
    written = sorted(p.name for p in out.iterdir())
    # no partial or hidden files; the guard's report beside each output
    assert written == [
        "oblique_denoised.json",
        "oblique_denoised.nii.gz",
        "plain_denoised.json",
        "plain_denoised.nii.gz",
    ]
    logged = capsys.readouterr().err
    for name, words in problems.items():
        line = next(line for line in logged.splitlines() if f"FAILED {scans / name}" in line)
        assert words in line
    assert "6 scans: 2 done, 0 skipped (output exists), 4 failed" in logged


def test_rerun_skips_finished_outputs_and_overwrite_rewrites_them_identically(scans, tmp_path, identity_weights):
    out = tmp_path / "out"
    denoise_scans(scans, out, identity_weights, device="cpu", **IDENTITY)
    first = {p.name: (p.stat().st_mtime_ns, nib.load(p).get_fdata()) for p in out.glob("*.nii.gz")}
    again = denoise_scans(scans, out, identity_weights, device="cpu", **IDENTITY)
    assert again.count("skipped") == 2 and again.count("done") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == {k: v[0] for k, v in first.items()}
    stale = out / ".oblique_denoised.k1ll3d.part.nii.gz"  # what a run killed mid-write leaves behind
    stale.write_bytes(b"half a file")
    rewritten = denoise_scans(scans, out, identity_weights, device="cpu", overwrite=True, **IDENTITY)
    assert not stale.exists()
    assert rewritten.count("done") == 2
    for p in out.glob("*.nii.gz"):
        assert np.array_equal(nib.load(p).get_fdata(), first[p.name][1])


def test_missing_or_mismatched_weights_are_clear_errors(scans, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="train first"):
        denoise_scans(scans, tmp_path / "out", tmp_path / "none.pt", device="cpu", **IDENTITY)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        denoise_scans(scans, tmp_path / "out", wrong, device="cpu", **IDENTITY)
    assert main(["denoise", os.fspath(scans), "--output", os.fspath(tmp_path / "o"), "--weights", "none.pt"]) == 1
    assert "none.pt do not exist" in capsys.readouterr().err


def test_unknown_config_key_on_the_command_line_exits_2(scans, tmp_path, capsys):
    args = ["denoise", os.fspath(scans), "--output", os.fspath(tmp_path), "--set", "patch_sise=[32,32,32]"]
    assert main(args) == 2
    assert "did you mean --patch_size" in capsys.readouterr().err


def test_non_nifti_source_is_written_as_nifti_with_its_affine(tmp_path):
    image = sitk.GetImageFromArray(blob_volume((10, 12, 14)))
    image.SetSpacing((0.8, 1.0, 2.0))
    image.SetOrigin((5.0, -3.0, 7.0))
    source = tmp_path / "scan.mha"
    sitk.WriteImage(image, os.fspath(source))
    from monai.data import MetaTensor

    affine = torch.tensor(np.diag([0.8, 1.0, 2.0, 1.0]))
    pred = MetaTensor(torch.rand(1, 14, 12, 10), affine=affine, meta={"filename_or_obj": os.fspath(source)})
    SaveLikeSourced(keys="pred", output_dir=tmp_path / "out")({"pred": pred, "image": pred})
    out = nib.load(tmp_path / "out" / "scan_denoised.nii.gz")
    assert out.shape == (14, 12, 10) and np.allclose(out.affine, affine.numpy())


def test_summary_report_and_failures():
    summary = InferenceSummary([ScanResult("a.nii", "done"), ScanResult("b.nii", "failed", reason="is a 2-D image")])
    assert summary.report().splitlines() == [
        "FAILED b.nii: is a 2-D image",
        "2 scans: 1 done, 0 skipped (output exists), 1 failed",
    ]
    with pytest.raises(ScanFailuresError, match="FAILED b.nii"):
        summary.raise_if_failed()


@pytest.fixture
def classifier_weights(tmp_path) -> Path:
    from pipeline.training.classify import build_classifier

    torch.manual_seed(0)
    # the stem of the bundle's default encoder (common.yaml: conv1_t_size 3, conv1_t_stride 1)
    stem = {"conv1_t_size": 3, "conv1_t_stride": 1}
    net = build_classifier("scratch", num_classes=2, model_depth=10, block_inplanes=[4, 8, 8, 8], **stem)
    path = tmp_path / "classifier.pt"
    torch.save(net.state_dict(), path)
    return path


def test_classifier_writes_one_row_per_readable_scan(scans, tmp_path, classifier_weights):
    add_bad_scans(scans)
    table = tmp_path / "predictions.csv"
    settings = {"device": "cpu", "show_progress": False, "num_workers": 0, **TINY_CLASSIFIER}
    summary = classify_scans(scans, table, classifier_weights, **settings)
    assert summary.count("done") == 2 and len(summary.failed) == 4
    rows = list(csv.DictReader(open(table)))
    assert [r["subject"] for r in rows] == ["oblique", "plain"]
    assert list(rows[0]) == ["file", "subject", "prob_control", "prob_patient", "prediction"]
    for row in rows:
        probs = [float(row["prob_control"]), float(row["prob_patient"])]
        assert abs(sum(probs) - 1) < 1e-5
        assert row["prediction"] == ("control", "patient")[int(np.argmax(probs))]
    before = table.read_bytes()
    classify_scans(
        scans, table, classifier_weights, device="cpu", show_progress=False, num_workers=0, **TINY_CLASSIFIER
    )
    assert table.read_bytes() == before  # deterministic: a re-run rewrites the same table


def test_classify_skips_scans_the_table_holds_unless_overwrite(scans, tmp_path, classifier_weights, capsys):
    table = tmp_path / "predictions.csv"
    settings = {"device": "cpu", "show_progress": False, "num_workers": 0, **TINY_CLASSIFIER}
    first = classify_scans(scans / "oblique.nii.gz", table, classifier_weights, **settings)
    assert first.count("done") == 1
    both = classify_scans(scans, table, classifier_weights, **settings)  # the oblique row is kept, plain is added
    assert both.count("skipped") == 1 and both.count("done") == 1
    assert "1 SKIPPED because their output exists" in both.report()
    assert [r["subject"] for r in csv.DictReader(open(table))] == ["oblique", "plain"]
    again = classify_scans(scans, table, classifier_weights, overwrite=True, **settings)
    assert again.count("done") == 2 and [r["subject"] for r in csv.DictReader(open(table))] == ["oblique", "plain"]
    with pytest.raises(ValueError, match="exists with the columns"):  # other classes: never mixed into one table
        classify_scans(scans, table, classifier_weights, **settings, class_names=["a", "b"])
    args = ["classify", os.fspath(scans), "--output", os.fspath(table), "--weights", os.fspath(classifier_weights)]
    assert main([*args, "--overlap", "0.5"]) == 2
    assert "--overlap sets the denoiser's sliding windows" in capsys.readouterr().err
