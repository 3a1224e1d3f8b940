from __future__ import annotations

import hashlib
import json
import socket

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.cohort import (
    CohortParameters,
    build_cohort,
    cohort_grid,
    load_template,
    logistic_baseline,
    main,
    simulate_subject,
)
from pipeline.data.datasets import load_subjects_csv, paired_folders
from pipeline.data.splits import splits_from_items
from transforms.errors import InputError

COARSE = CohortParameters(spacing=8.0)  # 24x24x24 volumes: the same model, fast enough for unit tests


def digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    return build_cohort(tmp_path_factory.mktemp("cohort") / "a", n_subjects=5, seed=3, params=COARSE)


def test_template_is_read_from_the_installed_package():
    template = load_template()
    assert template.t1.shape == template.gm.shape == template.mask.shape and min(template.t1.shape) > 150
    corner = template.affine @ np.array([0, 0, 0, 1.0])
    assert np.all(corner[:3] >= [-98.0, -134.0, -72.0])  # inside the MNI 2009 1 mm grid nilearn ships
    assert template.tissue_means["wm"] > template.tissue_means["gm"] > template.tissue_means["csf"]
    assert not template.t1.flags.writeable


def test_template_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the template must come from the installed nilearn package, not the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    fresh = load_template.__wrapped__()
    np.testing.assert_array_equal(fresh.gm, load_template().gm)


def test_grid_covers_the_brain_with_sides_divisible_by_eight():
    shape, affine = cohort_grid(2.0)
    assert shape == (80, 96, 80)
    np.testing.assert_allclose(np.diag(affine)[:3], 2.0)
    assert cohort_grid(8.0)[0] == (24, 24, 24)


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tiny_cohort, tmp_path):
    again = build_cohort(tmp_path / "b", n_subjects=5, seed=3, params=COARSE)
    first, second = digests(tiny_cohort.out_dir), digests(again.out_dir)
    assert first == second and len(first) == 5 * 4 + 2
    other = digests(build_cohort(tmp_path / "c", n_subjects=5, seed=4, params=COARSE, noisy=False).out_dir)
    for name in (f"clean/sub-00{i}.nii.gz" for i in range(1, 6)):
        assert other[name] != first[name]


def test_labels_are_balanced_and_severities_in_their_ranges(tiny_cohort):
    rows = tiny_cohort.subjects
    labels = [row["label"] for row in rows]
    assert sorted(labels) == [0, 0, 0, 1, 1] or sorted(labels) == [0, 0, 1, 1, 1]
    for row in rows:
        low, high = COARSE.patient_severity if row["label"] else COARSE.control_severity
        assert low <= row["severity"] <= high
    assert len({row["age"] for row in rows}) == 5


def test_files_load_with_the_expected_affine_shape_and_content(tiny_cohort):
    shape, affine = cohort_grid(8.0)
    pairs = paired_folders(tiny_cohort.out_dir, "gaussian15", "clean", mask_dir="masks")
    assert [p["subject"] for p in pairs] == [f"sub-00{i}" for i in range(1, 6)]
    for pair in pairs:
        for key in ("image", "label", "mask"):
            image = nib.load(pair[key])
            assert image.shape == shape and image.get_data_dtype() == np.float32
            np.testing.assert_allclose(image.affine, affine)
            assert image.header.get_zooms() == (8.0, 8.0, 8.0) and image.header["sform_code"] == 4
        clean = nib.load(pair["label"]).get_fdata()
        mask = nib.load(pair["mask"]).get_fdata()
        noisy = nib.load(pair["image"]).get_fdata()
        assert set(np.unique(mask)) == {0.0, 1.0} and 0.2 < mask.mean() < 0.8
        assert clean[mask == 1].mean() > 10 * max(clean[mask == 0].mean(), 1e-3)
        reference = np.percentile(clean[clean != 0], 99.5)
        assert (noisy - clean).std() / reference * 255 == pytest.approx(15, rel=0.05)
        poisson = nib.load(tiny_cohort.out_dir / "poisson" / f"{pair['subject']}.nii.gz").get_fdata()
        assert poisson.min() >= 0 and not np.array_equal(poisson, clean)


def test_subjects_csv_reads_back_with_a_disjoint_split(tiny_cohort):
    items = load_subjects_csv(tiny_cohort.subjects_csv)
    assert [item["label"] for item in items] == [row["label"] for row in tiny_cohort.subjects]
    splits = splits_from_items(items)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 5 and splits.test
    assert items[0]["image"].endswith("clean/sub-001.nii.gz") and items[0]["sex"] in ("F", "M")
    metadata = json.loads((tiny_cohort.out_dir / "cohort.json").read_text())
    assert metadata["shape"] == [24, 24, 24] and metadata["parameters"]["spacing"] == 8.0


def test_atrophy_thins_grey_matter_and_enlarges_ventricles():
    params = COARSE
    subjects = [simulate_subject(np.random.default_rng(7), severity, params) for severity in (0.0, 0.5, 1.0)]
    gm = [s.gm_volume_ml for s in subjects]
    ventricles = [s.ventricle_volume_ml for s in subjects]
    assert gm[0] > gm[1] > gm[2] and gm[2] < 0.9 * gm[0]
    assert ventricles[0] < ventricles[1] < ventricles[2] and ventricles[2] > 1.2 * ventricles[0]
    assert subjects[0].mask.shape == subjects[0].image.shape == cohort_grid(8.0)[0]
    different = simulate_subject(np.random.default_rng(8), 0.0, params)
    assert not np.allclose(different.image, subjects[0].image)


def write_cohort_folder(root, make_nifti, signal: float, n: int = 12):
    """A cohort-shaped folder (subjects.csv + clean/) whose label-1 volumes carry a bright block of ``signal``."""
    rng = np.random.default_rng(0)
    rows = ["subject_id,label,path"]
    for i in range(n):
        volume = rng.normal(1.0, 0.2, (24, 24, 24)).astype(np.float32)
        volume[4:12, 4:12, 4:12] += signal * (i % 2)
        make_nifti(root / "clean" / f"s{i:02d}.nii", volume, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
        rows.append(f"s{i:02d},{i % 2},clean/s{i:02d}.nii")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")
    return root


def test_logistic_baseline_finds_a_real_difference_and_not_a_missing_one(tmp_path, make_nifti):
    separable = write_cohort_folder(tmp_path / "signal", make_nifti, signal=1.0)
    assert logistic_baseline(separable, voxel_mm=8.0, n_folds=3) == 1.0
    chance = write_cohort_folder(tmp_path / "none", make_nifti, signal=0.0)
    assert logistic_baseline(chance, voxel_mm=8.0, n_folds=3) <= 0.75
    with pytest.raises(InputError, match="gaussian15/ does not match"):
        logistic_baseline(separable, folder="gaussian15")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": 0.5}, "spacing must be"),
        ({"patient_severity": (0.5, 0.2)}, "patient_severity must be"),
        ({"gm_loss": 1.5}, "gm_loss must be in"),
        ({"poisson_scale": 0}, "poisson_scale must be"),
    ],
)
def test_parameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CohortParameters(**kwargs)


def test_cli_builds_a_cohort_and_refuses_bad_arguments(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--subjects", "4", "--seed", "1", "--spacing", "8"]) == 0
    assert "4 subjects (2 with atrophy), 24x24x24 voxels at 8 mm" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "gaussian15").iterdir())) == 4
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--subjects", "3"])
    with pytest.raises(ValueError, match="severity must be in"):
        simulate_subject(np.random.default_rng(0), 1.5, COARSE)
