from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.report import (
    Report,
    curves_figure,
    format_number,
    markdown_table,
    read_scalars,
    triplanar_figure,
)
from tests.conftest import smooth_volume

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


# ---------------------------------------------------------------- tables


def test_format_number_cells():
    assert format_number(3.14159) == "3.14"
    assert format_number(3.14159, 4) == "3.1416"
    assert format_number(np.float32(2.5), 1) == "2.5"
    assert format_number(7) == "7"
    assert format_number(np.int64(7)) == "7"
    assert format_number(None) == "n/a"
    assert format_number(float("nan")) == "n/a"
    assert format_number(float("inf")) == "n/a"
    assert format_number(True) == "True"
    assert format_number("sigma = 0.5") == "sigma = 0.5"


def test_markdown_table_layout_digits_and_alignment():
    text = markdown_table(
        ["method", "PSNR", "SSIM"], [["noisy", 24.6312, 0.84621], ["a|b", None, float("nan")]], [0, 2, 4]
    )
    lines = text.splitlines()
    assert lines[0] == "| method | PSNR | SSIM |"
    assert lines[1] == "| :--- | ---: | ---: |"
    assert lines[2] == "| noisy | 24.63 | 0.8462 |"
    assert lines[3] == "| a\\|b | n/a | n/a |"  # a pipe inside a cell does not split it
    assert all(line.count(" | ") == 2 for line in lines)
    assert markdown_table(["a", "b"], [[1, 2]], align="rl").splitlines()[1] == "| ---: | :--- |"


@pytest.mark.parametrize(
    ("headers", "rows", "kwargs", "message"),
    [
        (["a", "b"], [[1]], {}, "row 0 has 1 cells"),
        (["a", "b"], [[1, 2]], {"digits": [1, 2, 3]}, "digits"),
        (["a", "b"], [[1, 2]], {"align": "lc"}, "align"),
        ([], [], {}, "headers"),
    ],
)
def test_markdown_table_rejects_bad_shapes(headers, rows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        markdown_table(headers, rows, **kwargs)


# ---------------------------------------------------------------- figures


def test_triplanar_figure_writes_a_png_with_an_error_row(tmp_path):
    clean, mask = smooth_volume()
    noisy = clean + 0.05 * np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    path = triplanar_figure(
        {"noisy": noisy, "denoised": clean * 0.98, "clean": clean},
        tmp_path / "figs" / "tri.png",
        title="subject",
        error_of=("denoised", "clean"),
        mask=mask,
    )
    image = read_png(path)
    three_rows = read_png(triplanar_figure({"a": clean, "b": clean, "c": clean}, tmp_path / "three.png"))
    assert image.shape[0] > three_rows.shape[0]  # the |error| row adds height
    assert not list(tmp_path.glob("figs/.*part*"))  # no temporary file left behind


def test_triplanar_figure_rejects_bad_inputs(tmp_path):
    clean, _ = smooth_volume()
    with pytest.raises(ValueError, match="one shape"):
        triplanar_figure({"a": clean, "b": clean[:-1]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="error_of"):
        triplanar_figure({"a": clean}, tmp_path / "x.png", error_of=("a", "b"))
    with pytest.raises(ValueError, match="at least one"):
        triplanar_figure({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_curves_figure_writes_a_png_and_rejects_empty_panels(tmp_path):
    path = curves_figure(
        {"loss": {"train": [(1, 0.5), (2, 0.3), (3, 0.2)]}, "psnr": {"net": [(1, 20.0), (2, 25.0)], "none": []}},
        tmp_path / "curves.png",
        xlabels={"loss": "iteration"},
        columns=1,
    )
    assert read_png(path).shape[0] > read_png(path).shape[1]  # two panels stacked in one column
    with pytest.raises(ValueError, match="no data point"):
        curves_figure({"empty": {"a": []}}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="columns"):
        curves_figure({"a": {"b": [(0, 1.0)]}}, tmp_path / "bad.png", columns=0)


def test_read_scalars_round_trip(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    for step, value in [(1, 0.5), (2, 0.25), (3, 0.125)]:
        writer.add_scalar("train_loss", value, step)
    writer.add_scalar("psnr_brain", 27.5, 1)
    writer.close()
    scalars = read_scalars(tmp_path)
    assert scalars["train_loss"] == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert scalars["psnr_brain"] == [(1, 27.5)]
    with pytest.raises(FileNotFoundError, match="event file"):
        read_scalars(tmp_path / "nothing")


# ---------------------------------------------------------------- the document


def test_report_builds_markdown_with_relative_figures(tmp_path):
    clean, _ = smooth_volume()
    figure = triplanar_figure({"clean": clean}, tmp_path / "figures" / "a.png")
    report = Report(tmp_path / "report.md", "Title")
    report.heading("Section")
    report.paragraph("  Some text.  ")
    report.table(["a", "b"], [["x", 1.23456]], digits=[0, 3], note="a note")
    report.figure(figure, "a figure")
    path = report.write()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\n## Section\n\nSome text.\n\n| a | b |")
    assert "| x | 1.235 |" in text
    assert "*a note*" in text
    assert "![a figure](figures/a.png)" in text
    with pytest.raises(FileNotFoundError):
        report.figure(tmp_path / "missing.png", "missing")
    with pytest.raises(ValueError, match="level"):
        report.heading("bad", level=1)
