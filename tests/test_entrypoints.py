"""The console scripts: each ``--help`` shows an example, and each runs the same code as ``python -m pipeline.*``."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.bundle_files import find_bundle_dir
from pipeline.entrypoints import classify_entry, demo_entry, denoise_entry


@pytest.mark.parametrize(
    ("entry", "example"),
    [
        (denoise_entry, "resunet3d-denoise scans/ --output denoised/"),
        (classify_entry, "resunet3d-classify scans/ --output predictions.csv --weights"),
        (demo_entry, "resunet3d-demo --out demo --quick"),
    ],
)
def test_help_shows_an_example(entry, example, capsys):
    with pytest.raises(SystemExit) as stop:
        entry(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and example in text


def test_unknown_options_are_refused_not_swallowed(capsys):
    with pytest.raises(SystemExit) as stop:
        denoise_entry(["scans", "--output", "out", "--overlpa", "0.3"])
    assert stop.value.code == 2 and "unrecognized arguments: --overlpa" in capsys.readouterr().err


def test_denoise_entry_with_a_bundle_dir(tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.float32).reshape(8, 8, 8), np.eye(4)), scan)
    weights = tmp_path / "identity.pt"
    torch.save({}, weights)
    args = [os.fspath(scan), "--output", os.fspath(tmp_path / "out"), "--weights", os.fspath(weights)]
    args += ["--set", "network_def={_target_: torch.nn.Identity}", "--set", "show_progress=false", "--device", "cpu"]
    assert denoise_entry([*args, "--bundle-dir", os.fspath(find_bundle_dir())]) == 0
    assert (tmp_path / "out" / "scan_denoised.nii.gz").is_file()
    assert denoise_entry([*args, "--bundle-dir", os.fspath(tmp_path)]) == 2  # no configs/ there: said in words
    assert "has no configs/common.yaml" in capsys.readouterr().err
