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
