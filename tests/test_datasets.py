from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.datasets import (
    clean_folder,
    list_scans,
    load_datalist,
    load_subjects_csv,
    paired_folders,
    scan_id,
    scan_named_folders,
)
from transforms.errors import InputError


def test_fixture_volumes_carry_the_non_trivial_affine(nifti_volumes, test_affine):
    assert not np.allclose(test_affine, np.diag(np.diag(test_affine)))
    for path in nifti_volumes:
        img = nib.load(path)
        np.testing.assert_allclose(img.affine, test_affine, atol=1e-5)
        assert img.shape == (24, 24, 24) and np.asarray(img.dataobj).max() > 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("sub-01.nii.gz", "sub-01"), ("a.b.nii", "a.b"), ("x.MHA", "x"), ("y.nrrd", "y"), ("notes.txt", "notes.txt")],
)
def test_scan_id_strips_only_the_scan_suffix(name, expected):
    assert scan_id(f"/data/{name}") == expected


def test_list_scans_ignores_hidden_and_non_scan_files(tmp_path, make_nifti):
    make_nifti(tmp_path / "b.nii.gz")
    make_nifti(tmp_path / "a.nii")
    (tmp_path / ".DS_Store").write_text("x")
    (tmp_path / ".a2.part.nii.gz").write_text("half written")
    (tmp_path / "README.txt").write_text("notes")
    (tmp_path / "sub").mkdir()
    assert list(list_scans(tmp_path)) == ["a", "b"]


def test_list_scans_refuses_two_files_with_one_name_and_empty_folders(tmp_path, make_nifti):
    make_nifti(tmp_path / "s" / "a.nii")
    make_nifti(tmp_path / "s" / "a.nii.gz")
    with pytest.raises(InputError, match=r"several files share one scan name: a \(a\.nii, a\.nii\.gz\)"):
        list_scans(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no scan"):
        list_scans(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        list_scans(tmp_path / "nowhere")


def test_paired_folders_pairs_by_name(paired_dataset):
    items = paired_folders(paired_dataset, "gaussian15", "FD", mask_dir="masks")
    assert [item["subject"] for item in items] == ["sub-01", "sub-02", "sub-03"]
    for item in items:
        assert item["image"].endswith(f"gaussian15/{item['subject']}.nii.gz")
        assert item["label"].endswith(f"FD/{item['subject']}.nii.gz")
        assert item["mask"].endswith(f"masks/{item['subject']}.nii.gz")


def test_paired_folders_pairs_across_nifti_suffixes(paired_dataset, make_nifti):
    (paired_dataset / "FD" / "sub-03.nii.gz").unlink()
    make_nifti(paired_dataset / "FD" / "sub-03.nii")
    items = paired_folders(paired_dataset)
    assert items[-1]["label"].endswith("FD/sub-03.nii") and items[-1]["image"].endswith("gaussian15/sub-03.nii.gz")


def test_paired_folders_lists_every_unmatched_file_in_one_error(paired_dataset, make_nifti):
    (paired_dataset / "FD" / "sub-02.nii.gz").unlink()
    make_nifti(paired_dataset / "FD" / "sub-09.nii.gz")
    make_nifti(paired_dataset / "FD" / "sub-10.nii.gz")
    with pytest.raises(InputError) as info:
        paired_folders(paired_dataset, "gaussian15", "FD")
    message = str(info.value)
    assert info.value.path == str(paired_dataset)
    assert "no match in FD/ for gaussian15/sub-02.nii.gz" in message
    assert "no match in gaussian15/ for FD/sub-09.nii.gz, FD/sub-10.nii.gz" in message


def test_a_folder_named_like_a_scan_is_named_in_the_error_not_reported_as_unmatched(paired_dataset):
    (paired_dataset / "FD" / "sub-03.nii.gz").unlink()
    (paired_dataset / "FD" / "sub-03.nii.gz").mkdir()
    with pytest.raises(InputError) as info:
        paired_folders(paired_dataset)
    assert info.value.path == str(paired_dataset / "FD" / "sub-03.nii.gz")
    assert "is a folder, not a scan file" in info.value.problem
    with pytest.raises(InputError, match="is a folder, not a scan file"):
        clean_folder(paired_dataset / "FD")
    (paired_dataset / "FD" / "sub-04.nii").mkdir()
    with pytest.raises(InputError, match="folders named like scans, not scan files: sub-03.nii.gz, sub-04.nii"):
        list_scans(paired_dataset / "FD")
    assert [p.name for p in scan_named_folders(paired_dataset / "FD")] == ["sub-03.nii.gz", "sub-04.nii"]
    assert list(list_scans(paired_dataset / "FD", folders_named_like_scans="skip")) == ["sub-01", "sub-02"]
    with pytest.raises(ValueError, match="folders_named_like_scans must be 'raise' or 'skip'"):
        list_scans(paired_dataset / "FD", folders_named_like_scans="ignore")


def test_clean_folder_points_image_and_label_at_the_clean_scan(paired_dataset):
    items = clean_folder(paired_dataset / "FD", mask_dir=paired_dataset / "masks")
    assert len(items) == 3
    assert all(item["image"] == item["label"] and "FD" in item["image"] for item in items)
    (paired_dataset / "masks" / "sub-01.nii.gz").unlink()
    with pytest.raises(InputError, match="no mask for sub-01.nii.gz"):
        clean_folder(paired_dataset / "FD", mask_dir=paired_dataset / "masks")


def test_load_datalist_resolves_relative_paths_against_the_json_folder(paired_dataset):
    datalist = {
        "training": [
            {"image": "gaussian15/sub-01.nii.gz", "label": "FD/sub-01.nii.gz"},
            {"image": "gaussian15/sub-02.nii.gz", "label": "FD/sub-02.nii.gz", "subject": "S2"},
        ],
        "test": ["gaussian15/sub-03.nii.gz"],
    }
    path = paired_dataset / "datalist.json"
    path.write_text(json.dumps(datalist))
    items = load_datalist(path)
    assert items[0]["image"] == str(paired_dataset / "gaussian15/sub-01.nii.gz")
    assert [item["subject"] for item in items] == ["sub-01", "S2"]
    assert load_datalist(path, key="test") == [
        {"image": str(paired_dataset / "gaussian15/sub-03.nii.gz"), "subject": "sub-03"}
    ]
    moved = paired_dataset.parent / "lists" / "datalist.json"
    moved.parent.mkdir()
    moved.write_text(json.dumps(datalist))
    assert load_datalist(moved, base_dir=paired_dataset)[1]["label"] == str(paired_dataset / "FD/sub-02.nii.gz")


def test_load_datalist_keeps_integer_labels(paired_dataset):
    path = paired_dataset / "cls.json"
    path.write_text(json.dumps({"training": [{"image": "FD/sub-01.nii.gz", "label": 1}]}))
    assert load_datalist(path)[0]["label"] == 1


def test_load_datalist_names_every_missing_file_and_bad_structure(paired_dataset):
    path = paired_dataset / "datalist.json"
    path.write_text(
        json.dumps(
            {
                "training": [
                    {"image": "gaussian15/sub-01.nii.gz", "label": "FD/gone.nii.gz"},
                    {"image": "nowhere.nii.gz", "label": "FD/sub-02.nii.gz"},
                ]
            }
        )
    )
    with pytest.raises(InputError) as info:
        load_datalist(path)
    assert "[0].label=" in str(info.value) and "FD/gone.nii.gz" in str(info.value)
    assert "[1].image=" in str(info.value) and "nowhere.nii.gz" in str(info.value)
    with pytest.raises(InputError, match="no list under key 'validation'"):
        load_datalist(path, key="validation")
    path.write_text(json.dumps({"training": [{"label": "FD/sub-01.nii.gz"}]}))
    with pytest.raises(InputError, match="without an 'image' entry"):
        load_datalist(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        load_datalist(path)


def test_load_subjects_csv_reads_labels_files_splits_and_extra_columns(subjects_csv):
    items = load_subjects_csv(subjects_csv)
    assert [item["subject"] for item in items] == [f"sub-0{i}" for i in range(1, 7)]
    assert [item["label"] for item in items] == [0, 1, 0, 1, 0, 1]
    assert items[0]["image"] == str(subjects_csv.parent / "scans" / "sub-01.nii.gz")
    assert items[4]["split"] == "val" and items[0]["age"] == 60.0 and items[1]["sex"] == "F"


def test_load_subjects_csv_maps_class_names(tmp_path, nifti_volumes):
    csv = tmp_path / "s.csv"
    csv.write_text("subject_id,label,age\nsub-01,CN,70\nsub-02,AD,\nsub-03,1,71\n")
    items = load_subjects_csv(csv, class_names=["CN", "AD"], image_dir=tmp_path / "scans")
    assert [item["label"] for item in items] == [0, 1, 1]
    assert items[0]["image"].endswith("scans/sub-01.nii.gz") and math.isnan(items[1]["age"])


def test_load_subjects_csv_lists_every_problem_in_one_error(tmp_path, nifti_volumes):
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "subject_id,label,split\n"
        "sub-01,CN,train\n"
        "sub-02,MCI,train\n"
        "sub-01,AD,val\n"
        "sub-03,7,holdout\n"
        "sub-04,AD,test\n"
        ",CN,train\n"
    )
    with pytest.raises(InputError) as info:
        load_subjects_csv(csv, class_names=["CN", "AD"], image_dir=tmp_path / "scans")
    message = str(info.value)
    assert info.value.path == str(csv)
    assert "empty subject_id on line 7" in message
    assert "duplicate subject_id: sub-01 (line 2, line 4)" in message
    assert "unknown label MCI (sub-02), 7 (sub-03)" in message and "allowed: CN, AD or 0..1" in message
    assert "invalid split holdout (sub-03)" in message
    assert "subjects without a scan: sub-04" in message


def test_load_subjects_csv_refuses_missing_columns_and_files(tmp_path, subjects_csv):
    csv = tmp_path / "cols.csv"
    csv.write_text("id,diagnosis\nsub-01,0\n")
    with pytest.raises(InputError, match=r"missing columns: subject_id, label, path \(or image"):
        load_subjects_csv(csv)
    (subjects_csv.parent / "scans" / "sub-02.nii.gz").unlink()
    with pytest.raises(InputError, match=r"subjects without a scan: sub-02 \(.*scans/sub-02.nii.gz\)"):
        load_subjects_csv(subjects_csv)
    assert len(load_subjects_csv(subjects_csv, require_files=False)) == 6
    csv.write_text("subject_id,label,path\nsub-01,-1,x.nii\nsub-02,0.5,x.nii\n")
    with pytest.raises(InputError, match=r"unknown label -1 \(sub-01\), 0.5 \(sub-02\)"):
        load_subjects_csv(csv, require_files=False)
