"""Faults fed to the scan loader, the dataset builders and ``prepare_noisy``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from tests.faults.corpus import (
    BAD_FILES,
    SHAPE,
    random_volume,
    shared_dir,
    unprivileged,
    world_writable_dir,
    write_bad_file,
    write_scan,
)
from tests.faults.harness import (
    CLEAR,
    HANDLED,
    Case,
    FaultCrash,
    FileLoss,
    FileSnapshot,
    Outcome,
    check_nifti_outputs,
    cli_line,
    disk_full,
    expect_cli_error,
    expect_error,
)
from transforms.errors import InputError

__all__ = ["CASES", "BATCH_BAD"]


def _load_bad(kind: str) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        from transforms.io import LoadScan

        _, _, words = BAD_FILES[kind]
        if kind == "unreadable":
            with world_writable_dir() as shared:
                path = write_bad_file(shared, kind)
                with unprivileged():
                    return expect_error(lambda: LoadScan()(path), InputError, [str(path)], words)
        path = write_bad_file(work, kind)
        return expect_error(lambda: LoadScan()(path), InputError, [str(path)], words)

    return check


def _load_truncated_mha(work: Path) -> Outcome:
    import SimpleITK as sitk

    from transforms.io import LoadScan

    path = work / "truncated.mha"
    sitk.WriteImage(sitk.GetImageFromArray(random_volume()), str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return expect_error(lambda: LoadScan()(path), InputError, [str(path)], ["damaged", "truncated"])


def _load_all_zero(work: Path) -> Outcome:
    from transforms.io import LoadScan

    image = LoadScan()(write_bad_file(work, "all-zero"))
    if tuple(image.shape) != (1, *SHAPE) or bool(image.any()):
        raise FaultCrash(f"an all-zero 20^3 volume loaded as shape {tuple(image.shape)}, max {float(image.max())}")
    return Outcome(HANDLED, "loads as a (1, 20, 20, 20) zero volume (it is valid data)")


def _load_int16_scaled(work: Path) -> Outcome:
    from transforms.io import LoadScan

    path = write_bad_file(work, "int16-scl-slope")
    raw = np.asanyarray(nib.load(path).dataobj.get_unscaled())
    image = LoadScan()(path)
    expected = raw.astype(np.float64) * 0.5 + 10.0
    if not np.allclose(image[0].numpy(), expected, atol=1e-4):
        raise FaultCrash("int16 data with scl_slope 0.5 / scl_inter 10 did not load as slope * raw + inter")
    return Outcome(HANDLED, "int16 voxels scaled by scl_slope/scl_inter (float32, exact)")


def _load_anisotropic(work: Path) -> Outcome:
    from transforms.io import LoadScan, canonical_transforms

    path = write_bad_file(work, "anisotropic")
    image = LoadScan()(path)
    spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    if not np.allclose(spacing, [0.2, 0.2, 12.0]):
        raise FaultCrash(f"0.2 x 0.2 x 12 mm voxels loaded with spacing {spacing}")
    resampled = canonical_transforms("image", spacing=1.0)[1]({"image": image})["image"]
    # MONAI keeps the extent between the first and last voxel centres: (n - 1) * spacing + 1 voxels of 1 mm
    new_spacing = np.linalg.norm(np.asarray(resampled.affine)[:3, :3], axis=0)
    if (
        tuple(resampled.shape) != (1, 5, 5, 61)
        or not np.allclose(new_spacing, 1.0)
        or not bool(torch.isfinite(resampled).all())
    ):
        raise FaultCrash(f"resampling 20x20x6 voxels of 0.2x0.2x12 mm to 1 mm gave {tuple(resampled.shape)}")
    return Outcome(HANDLED, "0.2x0.2x12 mm voxels kept in the affine; resampled to 1 mm: 5x5x61, finite")


def _empty_folder(work: Path) -> Outcome:
    from pipeline.data.datasets import clean_folder, list_scans, paired_folders

    empty = work / "FD"
    empty.mkdir()
    expect_error(lambda: list_scans(empty), InputError, [str(empty)], ["holds no scan"])
    expect_error(lambda: clean_folder(empty), InputError, [str(empty)], ["holds no scan"])
    write_scan(work / "gaussian15" / "sub-01.nii.gz")
    return expect_error(lambda: paired_folders(work), InputError, [str(empty)], ["holds no scan"])


def _missing_folder(work: Path) -> Outcome:
    from pipeline.data.datasets import paired_folders

    write_scan(work / "FD" / "sub-01.nii.gz")
    return expect_error(lambda: paired_folders(work), InputError, [str(work / "gaussian15")], ["does not exist"])


def _unmatched_folders(work: Path) -> Outcome:
    from pipeline.data.datasets import paired_folders

    for name in ("sub-01", "sub-02", "sub-03"):
        write_scan(work / "FD" / f"{name}.nii.gz")
    for name in ("sub-01", "sub-02", "sub-04"):
        write_scan(work / "gaussian15" / f"{name}.nii.gz")
    return expect_error(
        lambda: paired_folders(work), InputError, [str(work), "FD/sub-03.nii.gz", "gaussian15/sub-04.nii.gz"]
    )


def _folder_in_paired_data(work: Path) -> Outcome:
    from pipeline.data.datasets import paired_folders

    for name in ("sub-01", "sub-02"):
        write_scan(work / "FD" / f"{name}.nii.gz")
        write_scan(work / "gaussian15" / f"{name}.nii.gz")
    (work / "FD" / "sub-03.nii.gz").mkdir()
    write_scan(work / "gaussian15" / "sub-03.nii.gz")
    # the researcher must learn that FD/sub-03.nii.gz is a folder, not that the scan has "no match"
    return expect_error(lambda: paired_folders(work), InputError, ["sub-03.nii.gz"], ["folder", "directory"])


def _subjects_table(work: Path, rows: Sequence[str], header: str = "subject_id,label,path") -> Path:
    for name in ("s1", "s2", "s3"):
        write_scan(work / "scans" / f"{name}.nii.gz")
    csv_path = work / "subjects.csv"
    csv_path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return csv_path


def _csv_case(header: str, rows: Sequence[str], mentions: Sequence[str]) -> Callable[[Path], Outcome]:
    def check(work: Path) -> Outcome:
        from pipeline.data.datasets import load_subjects_csv

        path = _subjects_table(work, rows, header)
        return expect_error(lambda: load_subjects_csv(path), InputError, [str(path), *mentions])

    return check


def _datalist_nowhere(work: Path) -> Outcome:
    from pipeline.data.datasets import load_datalist

    path = work / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": "scans/gone.nii.gz", "label": "clean/gone.nii.gz"}]}))
    expect_error(lambda: load_datalist(work / "missing.json"), InputError, [str(work / "missing.json")])
    return expect_error(lambda: load_datalist(path), InputError, [str(path), "gone.nii.gz"], ["missing"])


def _datalist_not_json(work: Path) -> Outcome:
    from pipeline.data.datasets import load_datalist

    path = work / "datalist.json"
    path.write_text('{"training": [ {"image": "a.nii.gz", ')
    return expect_error(lambda: load_datalist(path), InputError, [str(path)], ["json"])


def _splits_file_corrupt(work: Path) -> Outcome:
    from pipeline.data.splits import load_splits

    path = work / "splits.json"
    path.write_text('{"version": 1, "train": ["s1", "s2"], "val": ')
    expect_error(lambda: load_splits(work / "missing.json"), InputError, [str(work / "missing.json")])
    return expect_error(lambda: load_splits(path), InputError, [str(path)], ["json"])


BATCH_BAD = [k for k in BAD_FILES if k not in ("unreadable", "folder-named-like-a-scan", "unsupported-extension")]


def _prepare_batch(work: Path) -> Outcome:
    from pipeline.data import prepare_noisy as pn

    clean, out = work / "clean", work / "noisy"
    write_scan(clean / "good-1.nii.gz", random_volume(seed=1))
    pn.prepare_noisy(clean, out, "gaussian", 15, seed=0)
    kept = FileSnapshot([out / "good-1.nii.gz"])
    write_scan(clean / "good-2.nii.gz", random_volume(seed=2))
    bad = {write_bad_file(clean, kind).name for kind in BATCH_BAD} | {write_bad_file(clean, "all-zero").name}
    fine = {write_bad_file(clean, kind).name for kind in ("int16-scl-slope", "anisotropic")} | {"good-2.nii.gz"}
    summary = pn.prepare_noisy(clean, out, "gaussian", 15, seed=0)
    failed = {path.name for path, _ in summary.failed}
    if failed != bad:
        raise FaultCrash(f"reported {sorted(failed)}; expected exactly the bad files {sorted(bad)}")
    if {p.name for p in summary.written} != fine or [p.name for p in summary.skipped] != ["good-1.nii.gz"]:
        raise FaultCrash(f"written {sorted(p.name for p in summary.written)}, kept {summary.skipped}")
    kept.verify()
    check_nifti_outputs(out / name for name in fine)
    for name in fine:
        if not np.allclose(nib.load(out / name).affine, nib.load(clean / name).affine):
            raise FileLoss(f"{out / name} lost the affine of {clean / name}")
    if sorted(p.name for p in out.iterdir()) != sorted(fine | {"good-1.nii.gz"}):
        raise FileLoss(f"unexpected files in {out}: {sorted(p.name for p in out.iterdir())}")
    result = expect_cli_error(
        pn.main, ["--clean-dir", str(clean), "--out-dir", str(out)], [str(clean / n) for n in bad]
    )
    kept.verify()
    return Outcome(
        HANDLED,
        f"{len(bad)} bad files reported by name, {len(fine)} written, 1 kept; exit {result.code}: "
        + cli_line(result, "truncated"),
    )


def _prepare_folder_named_like_a_scan(work: Path) -> Outcome:
    from pipeline.data import prepare_noisy as pn

    clean = work / "clean"
    write_scan(clean / "good.nii.gz")
    folder = write_bad_file(clean, "folder-named-like-a-scan")
    summary = pn.prepare_noisy(clean, work / "noisy", "gaussian", 15)
    reasons = [problem for path, problem in summary.failed if path.name == folder.name]
    if not reasons:
        raise FaultCrash(f"{folder} (a folder named like a scan) was silently skipped, not reported")
    return Outcome(CLEAR, f"{folder}: {reasons[0]}")


def _prepare_unreadable(work: Path) -> Outcome:
    from pipeline.data import prepare_noisy as pn

    with world_writable_dir() as shared:
        clean, out = shared_dir(shared / "clean"), shared_dir(shared / "noisy")
        write_scan(clean / "good.nii.gz")
        path = write_bad_file(clean, "unreadable")
        with unprivileged():
            summary = pn.prepare_noisy(clean, out, "gaussian", 15)
        reasons = [problem for p, problem in summary.failed if p == path]
        if not reasons or [p.name for p in summary.written] != ["good.nii.gz"]:
            raise FaultCrash(f"failed {summary.failed}, written {summary.written}")
        if not any(w in reasons[0].lower() for w in BAD_FILES["unreadable"][2]):
            raise FaultCrash(f"{path}: the reason {reasons[0]!r} does not say it cannot be read")
        check_nifti_outputs([out / "good.nii.gz"])
        return Outcome(HANDLED, f"{path}: {reasons[0]}; the readable file was written")


def _prepare_disk_full(work: Path) -> Outcome:
    from pipeline.data import prepare_noisy as pn

    clean, out = work / "clean", work / "noisy"
    for i in (1, 2, 3):
        write_scan(clean / f"sub-0{i}.nii.gz", random_volume(seed=i))
    pn.prepare_noisy(clean, out, "gaussian", 15, seed=0)
    victim = FileSnapshot([out / "sub-02.nii.gz"])
    with disk_full(nib, "save", "sub-02"):
        summary = pn.prepare_noisy(clean, out, "gaussian", 25, seed=1, overwrite=True)
    reasons = [problem for path, problem in summary.failed if path.name == "sub-02.nii.gz"]
    if not reasons or "space" not in reasons[0].lower():
        raise FaultCrash(f"a full disk while writing sub-02 gave failed={summary.failed}")
    if sorted(p.name for p in summary.written) != ["sub-01.nii.gz", "sub-03.nii.gz"]:
        raise FaultCrash(f"the other files were not written: {summary.written}")
    victim.verify()
    if sorted(p.name for p in out.iterdir()) != ["sub-01.nii.gz", "sub-02.nii.gz", "sub-03.nii.gz"]:
        raise FileLoss(f"a partial file was left in {out}: {sorted(p.name for p in out.iterdir())}")
    check_nifti_outputs(sorted(out.iterdir()))
    return Outcome(HANDLED, f"sub-02: {reasons[0]}; previous file intact, the others rewritten")


#: The data cases, in report order.
CASES: tuple[Case, ...] = (
    *[Case(f"load/{kind}", _load_bad(kind)) for kind in BAD_FILES],
    Case("load/truncated-mha", _load_truncated_mha),
    Case("load/all-zero", _load_all_zero),
    Case("load/int16-scl-slope", _load_int16_scaled),
    Case("load/anisotropic", _load_anisotropic),
    Case("datasets/empty-folder", _empty_folder),
    Case("datasets/missing-folder", _missing_folder),
    Case("datasets/noisy-and-clean-do-not-match", _unmatched_folders),
    Case("datasets/folder-named-like-a-scan", _folder_in_paired_data),
    Case("datasets/csv-missing-columns", _csv_case("subject_id,path", ["s1,scans/s1.nii.gz"], ["label"])),
    Case(
        "datasets/csv-unknown-label",
        _csv_case("subject_id,label,path", ["s1,0,scans/s1.nii.gz", "s2,AD,scans/s2.nii.gz"], ["AD", "label"]),
    ),
    Case(
        "datasets/csv-duplicate-id",
        _csv_case("subject_id,label,path", ["s1,0,scans/s1.nii.gz", "s1,1,scans/s2.nii.gz"], ["duplicate", "s1"]),
    ),
    Case(
        "datasets/csv-subject-without-file",
        _csv_case("subject_id,label,path", ["s1,0,scans/s1.nii.gz", "s9,1,scans/s9.nii.gz"], ["s9"]),
    ),
    Case("datasets/datalist-points-nowhere", _datalist_nowhere),
    Case("datasets/splits-file-corrupt", _splits_file_corrupt),
    Case("datasets/datalist-not-json", _datalist_not_json),
    Case("prepare_noisy/batch-with-bad-files", _prepare_batch),
    Case("prepare_noisy/folder-named-like-a-scan", _prepare_folder_named_like_a_scan),
    Case("prepare_noisy/unreadable", _prepare_unreadable),
    Case("prepare_noisy/disk-full", _prepare_disk_full),
)
