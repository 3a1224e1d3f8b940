"""benchmarks.synth_compare's summary: per-recipe means with 95 % t-intervals and paired seed differences."""

from __future__ import annotations

import json

import pytest

from benchmarks.synth_compare import summarise


def test_summary_pairs_seeds_and_gives_t_intervals(tmp_path, capsys):
    paths = []
    for seed, (demo, synth) in enumerate([(28.0, 29.0), (28.5, 30.0), (29.0, 29.5)]):
        for recipe, value in (("demo", demo), ("synth", synth)):
            scores = [{"set": "real", "volume": "a", "psnr": value, "psnr_volume": value - 1, "noisy": 24.0}]
            path = tmp_path / f"{recipe}_{seed}.json"
            path.write_text(json.dumps({"recipe": recipe, "seed": seed, "scores": scores}))
            paths.append(str(path))
    result = summarise(paths)
    demo = next(r for r in result["rows"] if r["recipe"] == "demo" and r["metric"] == "psnr")
    assert demo["mean"] == pytest.approx(28.5) and demo["ci95"] == pytest.approx(4.303 * 0.5 / 3**0.5)
    diff = next(d for d in result["differences"] if d["metric"] == "psnr")
    assert diff["seeds"] == 3 and diff["mean"] == pytest.approx(1.0)  # paired differences 1.0, 1.5, 0.5
    assert diff["ci95"] == pytest.approx(4.303 * 0.5 / 3**0.5)
    assert "synth - demo" in capsys.readouterr().out


@pytest.mark.slow  # bf16 by design: emulated, and slow, on a CPU without native bf16
def test_train_recipe_runs_on_the_pipelines_trainer_for_its_cpu_budget(monkeypatch):
    from monai.engines import SupervisedTrainer

    from benchmarks import synth_compare

    built = []
    original = synth_compare.build_denoise_trainer

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(synth_compare, "build_denoise_trainer", spy)
    _, log = synth_compare.train_recipe("synth", 0, 1.0, cohort=None)
    assert isinstance(built[0], SupervisedTrainer) and log["steps"] == built[0].state.iteration >= 1
    assert log["cpu_s"] >= 1.0 and log["last50_l1"] > 0 and log["last50_identity_l1"] > 0
