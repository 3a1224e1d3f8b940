"""benchmarks.demo_seeds: per-seed tables and the paired differences of ResUnet3D against the classical filters."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from benchmarks.demo_seeds import _settings, collect


def fake_result(rng: np.random.Generator, gain: float) -> dict:
    """A demo ``results.json`` reduced to what collect reads: 6 test volumes, ResUnet3D ``gain`` dB above NLM."""
    methods = {"noisy": 24.6, "gaussian": 28.5, "median": 27.0, "nl_means": 30.0}
    per_method = {}
    for name, level in {**methods, "resunet3d": methods["nl_means"] + gain}.items():
        volumes = [
            {"psnr_brain": level + rng.normal(0, 0.05), "psnr_volume": level + 3 + rng.normal(0, 0.05)}
            for _ in range(6)
        ]
        mean = {k: float(np.mean([v[k] for v in volumes])) for k in volumes[0]}
        per_method[name] = {"mean": mean, "per_volume": volumes}
    return {"denoising": per_method}


def test_a_clear_gain_is_reported_as_beating_and_no_gain_is_not():
    rng = np.random.default_rng(0)
    summary = collect([fake_result(rng, 0.8) for _ in range(3)], [0, 1, 2])
    assert [row["seed"] for row in summary["per_seed"]] == [0, 1, 2]
    nlm = [d for d in summary["differences"] if d["contrast"] == "resunet3d - nl_means"]
    assert {d["region"] for d in nlm} == {"brain", "volume"}
    for row in nlm:
        assert row["low"] <= row["mean dB"] <= row["high"]
        assert abs(row["mean dB"] - 0.8) < 0.1 and row["beats"]
    even = collect([fake_result(rng, 0.0) for _ in range(3)], [0, 1, 2])
    assert not any(d["beats"] for d in even["differences"] if d["contrast"] == "resunet3d - nl_means")


def test_the_t_interval_over_seeds_widens_with_the_seed_spread_and_few_seeds_are_underpowered():
    """One seed's gain far from the others': the bootstrap over 3 seeds stays above 0, the t interval does not."""
    rng = np.random.default_rng(1)
    results = [fake_result(rng, gain) for gain in (0.9, 0.8, -0.6)]
    row = next(d for d in collect(results, [0, 1, 2])["differences"] if d["contrast"] == "resunet3d - nl_means")
    assert row["t_low"] < row["low"] and row["t_high"] > row["high"] and row["t_low"] < 0
    assert not row["beats"] and row["underpowered"]
    five = collect([fake_result(rng, 0.8) for _ in range(5)], list(range(5)))["differences"]
    assert all(d["beats"] and not d["underpowered"] for d in five if d["contrast"] == "resunet3d - nl_means")


def test_the_rendered_block_shows_the_confirmation_seeds_first_and_the_summary_only_them():
    from benchmarks.tables import HEADLINES, render_table

    rng = np.random.default_rng(2)
    data = {
        "selection": collect([fake_result(rng, 0.2) for _ in range(3)], [0, 1, 2]) | {"volumes": "val"},
        "confirmation": collect([fake_result(rng, 0.8) for _ in range(5)], [10, 11, 12, 13, 14]) | {"volumes": "test"},
    }
    text = render_table(data, "demo_seeds")
    assert (
        text.index("Confirmation seeds") < text.index("seed 10") < text.index("Selection seeds") < text.index("seed 0")
    )
    assert ", t [" in text and "(underpowered)" in text.split("Selection seeds")[1]
    headline = HEADLINES[("demo_seeds", "difference")](data)
    assert headline.startswith("+0.8") and "underpowered" not in headline


def test_set_changes_demo_settings_by_name_and_rejects_unknown_names():
    parser = argparse.ArgumentParser()
    assert _settings(parser, ["noise_range=[5, 25]", "denoise_epochs=40"]) == {
        "noise_range": [5, 25],
        "denoise_epochs": 40,
    }
    for bad in ("epochs=40", "noise_range", "noise_range=[5,"):
        with pytest.raises(SystemExit):
            _settings(parser, [bad])


def test_confirmation_seeds_must_be_fresh(capsys):
    from benchmarks.demo_seeds import main

    with pytest.raises(SystemExit):
        main(["--seeds", "0", "1", "--confirm", "1", "2"])
    assert "must not share a seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seeds", "--confirm"])
    assert "give selection --seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_scores_selection_seeds_on_validation_and_confirmation_seeds_on_test(tmp_path, capsys):
    from benchmarks.demo_seeds import main

    out = tmp_path / "seeds.json"
    result = main(["--quick", "--seeds", "0", "--confirm", "1", "--work", str(tmp_path / "runs"), "--out", str(out)])
    assert result["selection_seeds"] == [0] and result["confirmation_seeds"] == [1]
    assert result["selection"]["volumes"] == "val" and result["confirmation"]["volumes"] == "test"
    demo = json.loads((tmp_path / "runs" / "seed0" / "results.json").read_text())
    assert result["selection"]["subjects"] == [demo["cohort"]["splits"]["val"]]  # never the test subjects
    assert sorted(p.name for p in (tmp_path / "runs" / "seed0" / "denoised_val").glob("*.nii.gz")) == [
        f"{s}_denoised.nii.gz" for s in demo["cohort"]["splits"]["val"]
    ]
    assert [row["seed"] for row in result["confirmation"]["per_seed"]] == [1]
    assert json.loads(out.read_text())["confirmation_seeds"] == [1]

    # finished seeds are read back, not run again; confirmation seeds alone need no selection seed
    capsys.readouterr()
    again = main(["--quick", "--seeds", "--confirm", "1", "--work", str(tmp_path / "runs"), "--out", str(out)])
    assert "seed 1: finished in" in capsys.readouterr().out and "selection" not in again
    assert again["confirmation"]["per_seed"] == result["confirmation"]["per_seed"]
