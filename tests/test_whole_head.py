"""Smoke test of ``benchmarks.whole_head``: the command a user runs, timed and measured, on a small head."""

from __future__ import annotations

import json

import pytest

from benchmarks import whole_head


@pytest.mark.slow
def test_whole_head_quick_runs_the_cli_with_only_weights_and_reports_seconds_and_peak_memory(tmp_path):
    out = tmp_path / "whole_head.json"
    assert whole_head.main(["--quick", "--tiles", "32", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "whole_head" and data["quick"] and data["shape"] == [48, 48, 40]
    (row,) = data["rows"]
    assert row["returncode"] == 0 and row["output_ok"] and row["seconds"] > 0
    assert 100 < row["peak_rss_mib"] < 4096
    assert "--weights" in row["command"] and "network_def" not in row["command"]
