"""The documentation: the site builds in strict mode, every link resolves, and every rendered figure is its JSON's.

``mkdocs build --strict`` fails on a broken link or anchor between pages; the README, which the site does not build,
has its links checked here. The results blocks (``<!-- results:NAME -->``) must equal what ``python -m
benchmarks.report --render`` makes of ``docs/results/NAME.json``, so a figure typed over, or a JSON re-recorded
without rendering, fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def nav_pages() -> list[str]:
    """The site's pages in the order of ``mkdocs.yml``'s navigation (paths relative to the repository)."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [f"docs/{page}" for entry in nav for page in entry.values()]


def _anchors(markdown: str) -> set[str]:
    """The heading anchors a page gets (Python-Markdown's toc slugs), outside fenced code."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(slugify(line.lstrip("#").strip().replace("`", ""), "-"))
    return anchors


def test_the_site_builds_in_strict_mode(tmp_path):
    """A broken link or anchor, a page missing from the navigation or a Markdown error fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "inference" / "index.html").is_file()


def test_every_page_is_in_the_navigation():
    assert sorted(nav_pages()) == sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))


def test_the_readme_links_resolve():
    """Every relative link of the README names a file of the repository, and its anchor a heading there."""
    text = (ROOT / "README.md").read_text()
    links = [link for link in _LINK.findall(text) if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README.md links to {link}: no such file"
        if anchor:
            assert anchor in _anchors(target.read_text()), f"README.md links to {link}: no such heading"


def test_the_readme_stays_short_and_starts_with_the_two_commands():
    from tests.test_readme_commands import readme_commands

    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    assert [c.words for c in readme_commands("README.md")[:2]] == [["make", "demo"], ["make", "test"]]


def test_every_results_block_is_what_its_json_renders():
    """Run ``python -m benchmarks.report --render`` (after ``--record``) when this fails."""
    stale = report.render_pages(ROOT, check=True)
    assert not stale, f"results blocks differ from docs/results: {[str(p.relative_to(ROOT)) for p in stale]}"


def test_every_recorded_result_is_shown_on_a_page():
    shown = {name for page in report._pages(ROOT) for name in report.page_blocks(page.read_text())}
    recorded = {path.stem for path in (ROOT / "docs" / "results").glob("*.json")}
    assert shown == recorded, f"recorded but not shown: {recorded - shown}; shown but not recorded: {shown - recorded}"


def test_the_parameter_table_is_the_commands_output():
    from benchmarks.networks_speed import parameter_table

    assert parameter_table() in (ROOT / "docs" / "networks.md").read_text()


# ------------------------------------------------------------------------------------------ the renderer itself
_MACHINE = {"date_utc": "2026-12-07 01:00", "cpu_description": "AMD EPYC, 2 logical CPUs", "torch": "2.13.0"}


def _write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_render_rewrites_a_stale_block_and_check_reports_it(tmp_path):
    results = tmp_path / "docs" / "results"
    rows = [
        {"method": m, "noise": n, "psnr": p, "ssim": 0.9, "seconds": 1.0}
        for m, p in (("noisy", 24.6), ("nl_means", 33.6))
        for n in ("gaussian", "poisson")
    ]
    _write(results, "classical", {"benchmark": "classical", "machine": _MACHINE, "rows": rows})
    page = tmp_path / "docs" / "page.md"
    page.write_text("before\n<!-- results:classical -->\n| typed | by hand |\n<!-- /results -->\nafter\n")
    (tmp_path / "README.md").write_text("no blocks\n")

    assert report.render_pages(tmp_path, check=True) == [page]
    assert "typed" in page.read_text()  # check writes nothing
    assert report.render_pages(tmp_path) == [page]
    text = page.read_text()
    assert text.startswith("before\n<!-- results:classical -->\n") and text.endswith("<!-- /results -->\nafter\n")
    assert "| nl_means | 33.60 | 0.900 | 1.00 | 33.60 | 0.900 | 1.00 |" in text
    assert "| noisy | 24.60 | 0.900 | - |" in text  # the noisy input has no time
    assert "measured 2026-12-07 01:00 UTC on AMD EPYC, 2 logical CPUs, torch 2.13.0" in text
    assert report.render_pages(tmp_path, check=True) == []


def test_adding_a_result_takes_one_json_and_one_marker(tmp_path):
    """The lead's real-scan benchmark: its JSON recorded, one marker on a page, and the table is there."""
    rows = [
        {"scan": s, "noise": "gaussian", "level": lv, "method": m, "psnr_head": p + lv / 10, "psnr_whole": p}
        for s in ("a", "b")
        for lv in (5.0, 15.0)
        for m, p in (("noisy", 25.0), ("demo-s0", 27.0))
    ]
    data = {"benchmark": "real_scans", "machine": _MACHINE, "rows": rows, "ratios": {"demo-s0 - NL means": "-1.9"}}
    written = tmp_path / "benchmarks" / "results" / "real_scans.json"
    _write(written.parent, "real_scans", data)
    results = tmp_path / "docs" / "results"
    assert report.record([written], results) == [results / "real_scans.json"]
    body = report.render_block("real_scans", results)
    assert "| demo-s0 | 27.50 | 28.50 | 28.00 / 27.00 |" in body and "- demo-s0 - NL means: -1.9" in body


def test_a_benchmark_without_its_own_renderer_gets_the_summary_tables(tmp_path):
    rows = [{"config": "pipeline", "seconds_per_scan": 3.5, "peak_rss_gib": 1.58}]
    _write(tmp_path, "inference", {"benchmark": "inference", "machine": _MACHINE, "rows": rows, "quick": True})
    body = report.render_block("inference", tmp_path)
    assert "| pipeline | 3.5 | 1.58 |" in body and "a --quick smoke run" in body


def test_a_block_without_its_json_fails_with_the_file_named(tmp_path):
    with pytest.raises(report.ResultsBlockError, match="no .*missing.json"):
        report.render_text("<!-- results:missing -->\n<!-- /results -->\n", tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(report.ResultsBlockError, match="not JSON"):
        report.render_block("bad", tmp_path)
    with pytest.raises(report.ResultsBlockError, match="no 'machine'"):
        (tmp_path / "plain.json").write_text("{}")
        report.record([tmp_path / "plain.json"], tmp_path / "out")


def test_an_example_marker_inside_a_code_block_is_no_block(tmp_path):
    text = "```text\n<!-- results:example -->\n<!-- /results -->\n```\n"
    assert report.page_blocks(text) == [] and report.render_text(text, tmp_path) == text


def test_a_transcribed_result_says_where_it_came_from_and_renders_its_tables_and_notes(tmp_path):
    table = {"title": "old runs", "columns": ["what", "s"], "rows": [["step", 1.93], ["a | b", "-"]]}
    data = {"benchmark": "transcribed", "source": "docs/old.md", "machine": _MACHINE, "tables": [table]}
    _write(tmp_path, "old", {**data, "notes": ["one seed only"]})
    body = report.render_block("old", tmp_path)
    assert "transcribed from docs/old.md, not re-measured: measured 2026-12-07 01:00 UTC on AMD EPYC" in body
    assert "**old runs**" in body and "| step | 1.93 |" in body and "| a \\| b | - |" in body
    assert body.rstrip().endswith("- one seed only")


def _demo(classification: dict, floor: object) -> dict:
    quality = {"psnr_brain": 30.81, "psnr_volume": 33.9, "ssim_brain": 0.951, "seconds": 2.5}
    return {
        "started": "2026-12-07T01:00:00+00:00",
        "machine": {"processor": "x86_64", "torch": "2.13.0"},
        "total_wall_s": 984.0,
        "stages": [{"name": "train the denoiser", "wall_s": 570.0, "cpu_s": 1100.0}],
        "denoising": {m: {"mean": quality, "per_volume": [quality] * 6} for m in ("noisy", "resunet3d")},
        "classification": classification,
        "logistic_floor_balanced_accuracy": floor,
    }


def test_the_demo_renders_every_classification_figure_with_its_interval_whatever_the_json_holds(tmp_path):
    """The classification rows are generic: a new metric, or a floor with intervals, renders without a code change."""
    scratch = {"balanced_accuracy": 0.75, "balanced_accuracy_interval": [0.5, 1.0], "auc": 0.8, "n": 12}
    scratch |= {"sensitivity": [0.7, 0.4, 0.9], "subjects": {"sub-001": {"label": 1}}}
    floor = {"balanced_accuracy": 0.78, "balanced_accuracy_interval": [0.6, 0.9], "auc": 0.81}
    _write(tmp_path, "demo", _demo({"scratch": scratch}, floor))
    body = report.render_block("demo", tmp_path)
    assert "**16.4 minutes** wall; stages: train the denoiser 9.5 min." in body
    assert "Denoising, mean of the 6 held-out volumes:" in body and "| noisy | 30.81 | 33.90 | 0.951 | - |" in body
    assert "| classifier | balanced accuracy | auc | n | sensitivity |" in body
    assert "| ResNet from scratch | 0.75 [0.50, 1.00] | 0.80 | 12 | 0.70 [0.40, 0.90] |" in body
    assert "| logistic-regression floor | 0.78 [0.60, 0.90] | 0.81 | - | - |" in body
    assert "measured 2026-12-07T01:00:00+00:00 on x86_64" in body  # the demo's own JSON: no CPU model yet


def test_the_summary_draws_one_row_from_each_result_with_its_date_and_cpu(tmp_path):
    _write(tmp_path, "demo", {**_demo({"scratch": {"balanced_accuracy": 0.67}}, 0.78), "quick": True})
    targets = [{"target": "default - noisy input, every level", "value": 1.94, "met": True}]
    targets.append({"target": "|SURE gain - true gain|", "value": 2.1, "met": False, "margin": -1.6})
    targets.append({"target": "BM4D seconds / default seconds", "value": 24.15, "met": True, "margin": 4.15})
    targets.append({"target": "after site adaptation, default - BM4D, mean", "value": -0.41, "met": False})
    _write(tmp_path, "real", {"benchmark": "real_scans", "machine": _MACHINE, "targets": targets})
    summary = [{"method": "bm4d", "g15_psnr": 31.51}, {"method": "resunet3d (1 min)", "g15_psnr": 28.6}]
    summary.append({"method": "resunet3d (60 min)", "g15_psnr": 31.37})
    _write(tmp_path, "quality", {"benchmark": "quality", "machine": _MACHINE, "summary": summary})
    _write(tmp_path, "gpu", {"benchmark": "transcribed", "source": "x", "machine": _MACHINE, "headline": "0.21 s"})
    rows = [
        {"what": "demo", "link": "docs/a.md", "result": "demo", "headline": "denoising"},
        {"what": "demo classification", "result": "demo", "headline": "classification"},
        {"what": "real heads", "result": "real", "headline": "targets"},
        {"what": "adapted", "result": "real", "headline": "adaptation"},
        {"what": "cohort", "result": "quality", "headline": "bm4d_target"},
        {"what": "GPU", "result": "gpu", "headline": "headline"},
    ]
    _write(tmp_path, "summary", {"benchmark": "summary", "rows": rows})
    body = report.render_block("summary", tmp_path)
    assert "| [demo](docs/a.md) | noisy 30.8, **ResUnet3D 30.8** | 2026-12-07, x86_64, a quick run |" in body
    assert "| demo classification | ResNet from scratch: balanced accuracy 0.67; logistic-regression floor:" in body
    real = "| real heads | default - noisy input, every level: +1.94 dB (met); |SURE gain - true gain|: +2.10 dB"
    assert real.replace("|SURE", "\\|SURE").replace("gain|", "gain\\|") + " (**missed by 1.60 dB**);" in body
    assert "BM4D seconds / default seconds: 24.1x (met) | 2026-12-07, AMD EPYC" in body
    assert "| adapted | after site adaptation, default - BM4D, mean: -0.41 dB (**missed**) |" in body
    assert "| cohort | resunet3d (60 min) - BM4D (target >= +1 dB): -0.14 dB (**missed by 1.14 dB**) |" in body
    assert "| GPU | 0.21 s | 2026-12-07, AMD EPYC; transcribed, not re-measured |" in body
    _write(tmp_path, "summary", {"benchmark": "summary", "rows": [{**rows[0], "headline": "speed"}]})
    with pytest.raises(report.ResultsBlockError, match="no headline"):
        report.render_block("summary", tmp_path)


def _study() -> dict:
    """A small result of ``pipeline.study``'s shape (``pipeline/study/report.py``)."""
    diff = {"estimate": -0.5, "t_interval": [-0.9, -0.1], "bootstrap_interval": [-0.8, -0.2], "margin": 0.1}
    diff.update(level=0.9967, seeds=5, tost_p=0.9)
    arms = [{"arm": "baseline", "question": "q", "psnr_brain": 28.0, "cpu_seconds": 50.0}]
    arms += [
        {"arm": name, "question": "q", "psnr_brain": 27.5, "cpu_seconds": 60.0, "diff_psnr_brain": {**diff, **extra}}
        for name, extra in (
            ("depth_18", {"verdict": "worse"}),
            ("lr_x3", {"verdict": "inconclusive", "underpowered": True}),
        )
    ]
    auc = {"random": [0.7, 0.6, 0.8], "denoiser_x0.25": [0.72, 0.6, 0.8], "denoiser": [0.75, 0.65, 0.85]}
    rows = [{"encoder": "logistic floor", "evaluation": "voxels", "size": "small", "seeds": 1, "auc": [0.7, 0.6, 0.8]}]
    rows += [
        {"encoder": kind, "evaluation": ev, "size": "small", "seeds": 10, "auc": value, "balanced_accuracy": value}
        for ev in ("probe", "finetune")
        for kind, value in auc.items()
    ]
    contrast = {"encoder": "denoiser", "evaluation": "probe", "size": "small", "answer": "inconclusive"}
    contrast["diff_auc"] = {"estimate": 0.05, "bootstrap_interval": [-0.05, 0.15], "verdict": "inconclusive"}
    machine = {"processor": "x86_64", "python": "3.11.7"}
    return {
        "command": "python -m pipeline.study",
        "machine": machine,
        "arms": arms,
        "longer": [],
        "transfer": {"rows": rows, "contrasts": [contrast], "level": 0.9875},
    }


def test_the_study_renders_its_verdicts_and_its_plots_are_the_same_bytes_every_time(tmp_path):
    results = tmp_path / "docs" / "results"
    _write(results, "study", _study())
    body = report.render_block("study", results)
    assert "| q | depth_18 | 27.50 | -0.50 [-0.80, -0.20], t [-0.90, -0.10] | 0.900 | worse | 60 |" in body
    assert "5 seeds; 99.67 % intervals, Bonferroni" in body and "±0.1 dB" in body
    assert "| inconclusive (underpowered) |" in body and "| random, probe, small | 10 | 0.70 [0.60, 0.80] |" in body
    assert "| denoiser | probe | small | +0.05 [-0.05, +0.15] | - | inconclusive |" in body
    for plot in ("forest", "transfer"):
        caption, png = report.render_figure("study", plot, results)
        assert png.startswith(b"\x89PNG") and caption
        assert report.render_figure("study", plot, results)[1] == png
    with pytest.raises(report.ResultsBlockError, match="has no plot 'slices'"):
        report.render_figure("study", "slices", results)


def test_the_summary_groups_the_study_arms_by_verdict_and_counts_the_transfer_answers(tmp_path):
    _write(tmp_path, "study", _study())
    rows = [{"what": "study", "result": "study", "headline": "verdicts"}]
    _write(tmp_path, "summary", {"benchmark": "summary", "rows": rows})
    body = report.render_block("summary", tmp_path)
    assert "(a) inconclusive: lr_x3; worse: depth_18 (5 seeds)" in body
    assert "(b) denoising pretraining vs a random encoder, 1 AUC contrasts: 1 inconclusive |" in body


def test_check_fails_when_an_image_is_stale_and_render_rewrites_it(tmp_path):
    results = tmp_path / "docs" / "results"
    _write(results, "study", _study())
    (tmp_path / "README.md").write_text("<!-- figure:study:forest -->\n<!-- /figure -->\n")
    (tmp_path / "docs" / "page.md").write_text("<!-- figure:study:transfer -->\n<!-- /figure -->\n")
    images = tmp_path / "docs" / "images"
    stale = report.render_pages(tmp_path, check=True)
    assert stale == [tmp_path / "README.md", tmp_path / "docs" / "page.md"] + [
        images / "study-forest.png",
        images / "study-transfer.png",
    ]
    assert not images.exists()  # check writes nothing
    report.render_pages(tmp_path)
    assert "![study, forest](docs/images/study-forest.png)" in (tmp_path / "README.md").read_text()
    assert "![study, transfer](images/study-transfer.png)" in (tmp_path / "docs" / "page.md").read_text()
    assert report.render_pages(tmp_path, check=True) == []
    (images / "study-forest.png").write_bytes(b"typed over")
    assert report.render_pages(tmp_path, check=True) == [images / "study-forest.png"]
    study = _study()
    study["arms"][1]["diff_psnr_brain"]["estimate"] = -0.4  # a re-recorded result, not rendered again
    _write(results, "study", study)
    assert images / "study-forest.png" in report.render_pages(tmp_path, check=True)


def test_the_real_head_slices_come_from_the_npz_beside_the_json(tmp_path):
    import numpy as np

    from benchmarks.figures import slices

    volume = np.zeros((12, 10, 8), np.float32)
    volume[3:9, 2:8, 2:6] = 1.0
    cut = slices({"noisy": volume + 0.1, "denoised": volume, "clean": volume}, volume > 0)
    assert cut["clean"].shape == (10, 10) and cut["clean"].dtype == np.float16  # the head box plus 2 voxels
    np.savez_compressed(tmp_path / "head.npz", **cut)
    data = {"benchmark": "figures", "machine": _MACHINE, "slices_file": "head.npz", "psnr_head": {"noisy": 20.0}}
    _write(tmp_path, "head", {**data, "noise": {"kind": "Gaussian", "level_255": 15.0}})
    caption, png = report.render_figure("head", "slices", tmp_path)
    assert "Gaussian noise of 15/255 added" in caption and png.startswith(b"\x89PNG")


def test_record_as_names_the_demo_result(tmp_path):
    source = tmp_path / "demo" / "results.json"
    _write(source.parent, "results", _demo({}, 0.5))
    assert report.record([source], tmp_path / "out", name="demo") == [tmp_path / "out" / "demo.json"]
    with pytest.raises(report.ResultsBlockError, match="one file at a time"):
        report.record([source, source], tmp_path / "out", name="demo")


def test_every_committed_image_is_shown_on_a_page():
    shown = set()
    for page in report._pages(ROOT):
        shown |= {
            f"{m.group('name')}-{m.group('plot')}.png" for m in report._blocks(page.read_text()) if m.group("plot")
        }
    assert {p.name for p in (ROOT / "docs" / "images").glob("*.png")} == shown


def test_the_study_block_states_its_rule_only_for_contrasts_made_under_it():
    from benchmarks.tables import render_table

    def arms(diff: dict) -> dict:
        return {"arms": [{"arm": "baseline", "psnr_brain": 27.7}, {"arm": "norm_none", "diff_psnr_brain": diff}]}

    new = {"estimate": -0.6, "bootstrap_interval": [-1.2, 0.1], "level": 0.9967, "seeds": 5, "margin": 0.1}
    table = render_table(arms({**new, "verdict": "inconclusive"}), "study")
    assert "5 seeds; 99.67 % intervals" in table and "margin ±0.1 dB, fixed before the run" in table
    old = {k: new[k] for k in ("estimate", "bootstrap_interval", "level")}  # the 3-seed run: no t, no TOST
    table = render_table(arms({**old, "verdict": "inconclusive"}), "study")
    assert "-0.60 [-1.20, +0.10]" in table and "fixed before the run" not in table and "nan" not in table
