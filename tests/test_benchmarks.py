"""Smoke tests: every benchmark runs end to end in its ``--quick`` mode and writes the JSON fields it promises.

They check the scripts' wiring on the tiniest settings, not their speed: no timing is asserted (the machine is
shared), figures are checked only for being finite and in their ranges. ``tests/conftest.py`` makes ``precision:
auto`` resolve as on a CPU without native bf16, so the scripts' defaults leave emulated bf16 out here on every CPU.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import _common, classical, gpu, inference, loading, quality, quality_report, throughput
from pipeline.evaluation.metrics import masked_psnr, masked_ssim


def _load(path):
    data = json.loads(path.read_text())
    assert {"benchmark", "quick", "rows" if "rows" in data else "summary"} <= set(data)
    return data


# ---------------------------------------------------------------- shared helpers


def test_benchmarks_score_with_the_pipeline_metrics():
    """benchmarks.classical reports the pipeline's masked PSNR/SSIM (Gaussian window), not a copy of its own."""
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.8, (24, 24, 24)).astype(np.float32)
    mask = np.zeros(clean.shape, bool)
    mask[4:20, 4:20, 4:20] = True
    noisy = clean + rng.normal(0, 15 / 255, clean.shape).astype(np.float32)
    case = {"noise": "gaussian", "volume": "v", "noisy": noisy, "clean": clean, "mask": mask}
    rows = classical.evaluate_methods(
        [case], {"gaussian": (noisy, clean, mask)}, quick=True, skip=classical.METHODS[1:]
    )
    assert rows[0]["psnr"] == round(masked_psnr(noisy, clean, mask), 2)
    assert rows[0]["ssim"] == round(masked_ssim(noisy, clean, mask), 4)
    assert rows[0]["psnr"] == pytest.approx(20 * math.log10(255 / 15), abs=0.15)


def test_noisy_copy_statistics_and_seeding():
    clean = np.full((32, 32, 32), 0.5, np.float32)
    gauss = _common.noisy_copy(clean, "gaussian", seed=1)
    assert gauss.dtype == np.float32
    assert np.std(gauss - clean) == pytest.approx(15 / 255, rel=0.03)
    poisson = _common.noisy_copy(clean, "poisson", seed=1)
    scale = _common.poisson_scale()
    assert poisson.mean() == pytest.approx(0.5, rel=0.01)
    assert poisson.var() == pytest.approx(0.5 / scale, rel=0.05)
    np.testing.assert_array_equal(gauss, _common.noisy_copy(clean, "gaussian", seed=1))
    assert not np.array_equal(gauss, _common.noisy_copy(clean, "gaussian", seed=2))
    with pytest.raises(ValueError, match="kind"):
        _common.noisy_copy(clean, "speckle", seed=0)


def test_template_is_the_cohort_template_on_the_whole_grid():
    from pipeline.data.cohort import load_template as cohort_template

    t1, mask = _common.load_template()
    assert t1.shape == mask.shape == (197, 233, 189) and mask.dtype == bool
    assert t1.min() >= 0 and t1.max() == 1.0
    cropped = cohort_template()
    low = np.round(np.linalg.solve(cohort_template(margin=None).affine, cropped.affine)[:3, 3]).astype(int)
    box = tuple(slice(lo, lo + n) for lo, n in zip(low, cropped.t1.shape))
    np.testing.assert_array_equal(t1[box], cropped.t1)  # the demo cohort's template is a crop of the same arrays


@pytest.mark.parametrize("name", ["unet", "basicunet", "flexibleunet", "resunet3d"])
def test_build_denoiser_is_the_registry_network(name):
    from networks import get_network

    small = _common.build_denoiser(name, "small")
    default = _common.build_denoiser(name)
    expected = get_network(name, **(_common.bundle_resunet_config() if name == "resunet3d" else {}))
    assert type(default) is type(expected) is type(small)
    shapes = [p.shape for p in default.state_dict().values()]
    assert shapes == [p.shape for p in expected.state_dict().values()]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in default.parameters())


def test_center_crop_stays_inside_and_build_denoiser_validates():
    vol = np.zeros((40, 50, 30))
    sl = _common.center_crop(vol, 24, center=(0, 49, 15))
    assert vol[sl].shape == (24, 24, 24)
    with pytest.raises(ValueError, match="size"):
        _common.center_crop(vol, 31)
    with pytest.raises(ValueError, match="name"):
        _common.build_denoiser("vnet")
    with pytest.raises(ValueError, match="size"):
        _common.build_denoiser("unet", "huge")


def test_real_scan_is_shipped_scaled_and_masked():
    volume, mask, info = _common.load_real_scan()
    assert volume.shape == mask.shape == (33, 41, 25)
    assert volume.min() >= 0 and volume.max() <= 1
    assert 0.1 < mask.mean() < 0.9
    assert 0 < info["own_noise_sigma_255"] < 255


# ---------------------------------------------------------------- the scripts


def test_classical_quick(tmp_path, capsys):
    out = tmp_path / "classical.json"
    classical.main(["--quick", "--skip", "bm4d", "nl_means", "--out", str(out)])
    data = _load(out)
    assert data["machine"]["logical_cpus"] >= 1
    methods = {r["method"] for r in data["rows"]}
    assert {"noisy", "gaussian", "median", "curvature_flow", "tv"} == methods
    by = {(r["method"], r["noise"]): r for r in data["rows"]}
    assert by[("noisy", "gaussian")]["psnr"] == pytest.approx(24.6, abs=0.3)  # sigma 15/255 in a [0, 1] range
    for kind in ("gaussian", "poisson"):  # every filter beats the noisy input
        assert by[("tv", kind)]["psnr"] > by[("noisy", kind)]["psnr"]
    assert "| method |" in capsys.readouterr().out


def test_throughput_quick(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    throughput.main(["--quick", "--networks", "unet", "--out", str(out)])
    data = _load(out)
    # auto resolves to fp32 here (conftest): the default variants and ceilings leave emulated bf16 out
    assert set(data["ceiling_gflops"]) == {"ncdhw", "channels_last_3d"}
    assert all(v > 0 for v in data["ceiling_gflops"].values())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"fp32", "channels_last_3d"} and data["setup"]["variants"] == ["fp32", "channels_last_3d"]
    for row in rows.values():
        assert row["gflop_per_step"] > 0 and row["samples_per_s"] > 0 and 0 < row["fraction_of_ceiling"]
    assert rows["fp32"]["gflop_per_step"] == pytest.approx(rows["channels_last_3d"]["gflop_per_step"])
    assert (rows["fp32"]["ceiling"], rows["channels_last_3d"]["ceiling"]) == ("ncdhw", "channels_last_3d")
    assert any("ceiling" in k for k in data["ratios"])
    assert (
        data["setup"]["precision_note"].startswith("auto -> fp32")
        and "bf16 variants skipped" in data["setup"]["precision_note"]
    )
    printed = capsys.readouterr().out
    assert printed.startswith("benchmarks.throughput: training steps of unet in fp32, channels_last_3d")
    assert "\n  expected: about " in printed and "\n  CPU: " in printed and "\n  precision: auto -> fp32" in printed
    assert "[1/6] conv3d ceiling ncdhw (start)" in printed and "[6/6] conv3d ceiling channels_last_3d (end)" in printed
    assert data["machine"]["cpu_description"] in printed


def test_throughput_measures_bf16_by_default_only_with_native_bf16():
    assert throughput.default_variants("bf16") == list(throughput.VARIANTS)
    assert throughput.default_variants("fp32") == ["fp32", "channels_last_3d"]
    assert {throughput.CEILINGS[throughput.VARIANTS[v][:2]] for v in throughput.VARIANTS} == set(
        throughput.CEILINGS.values()
    )


def test_progress_prints_a_line_per_step_with_the_time_left(capsys):
    progress = _common.Progress(3)
    progress.step("first")
    progress.step("second")
    progress.step("third")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["[1/3] first", "[2/3] second", "[3/3] third"]
    assert "left)" in lines[0] and "left" not in lines[2] and lines[2].endswith("elapsed)")
    with pytest.raises(ValueError, match="total"):
        _common.Progress(0)


def test_expected_duration_names_both_measured_kinds_of_cpu():
    from pipeline.utils.precision import HardwareReport

    avx2 = HardwareReport(cpu_kernels="AVX2", cpu_flags=frozenset({"avx2"}), logical_cpus=2)
    amx = HardwareReport(cpu_kernels="AVX512", cpu_flags=frozenset({"avx512f", "amx_bf16"}), logical_cpus=4)
    text = _common.expected_duration(30, 600, avx2)
    assert text.startswith("about 10.0 min here (2 idle cores: 30 s with native bf16, 10.0 min with AVX2 only)")
    assert _common.expected_duration(30, 600, amx).startswith("about 15 s here")  # twice the cores


def test_flop_count_of_a_convolution_is_exact():
    import torch

    conv = torch.nn.Conv3d(2, 3, 3, padding=1, bias=False)
    x = torch.randn(1, 2, 4, 4, 4)
    assert throughput.count_flops(lambda: conv(x)) == 2 * 3 * 2 * 27 * 64


@pytest.mark.slow
def test_inference_quick_runs_the_bundle_path_in_a_subprocess(tmp_path):
    out = tmp_path / "inference.json"
    inference.main(["--quick", "--knobs", "pipeline", "--scans", "0", "--out", str(out)])
    data = _load(out)
    assert [r["config"] for r in data["rows"]] == ["pipeline"]
    row = data["rows"][0]
    assert row["seconds_per_scan"] > 0
    assert row["peak_rss_gib"] >= row["rss_before_gib"] > 0.05  # a torch process holds > 50 MiB
    assert data["ratios"]["pipeline seconds per scan"] > 0
    assert data["partial"] is False


def test_inference_worker_direct_knobs():
    # one window per scan: the knobs' wiring, not their speed (bf16 is emulated, and slow, on a CPU without it)
    cfg = dict(inference.BASELINE, size="small", shape=[16, 16, 16], roi=16, scans=2, channels_last=True, bf16=True)
    res = inference.run_worker(cfg)
    assert len(res["seconds"]) == 2 and min(res["seconds"]) > 0
    assert res["peak_rss_gib"] >= res["rss_before_gib"] > 0.05


@pytest.mark.slow
def test_loading_quick(tmp_path):
    out = tmp_path / "loading.json"
    loading.main(["--quick", "--out", str(out)])
    data = _load(out)
    assert [r["loader"] for r in data["rows"]] == [
        "Dataset + DataLoader, 0 workers",
        "CacheDataset + ThreadDataLoader, 0 workers",
    ]
    assert all(r["samples_per_s"] > 0 and r["ratio_to_step_rate"] > 0 for r in data["rows"])
    assert data["step"]["samples_per_s"] > 0 and set(data["steps"]) == {"fp32"}  # bf16: native only (conftest)
    assert data["step"]["samples_per_s"] == max(r["samples_per_s"] for r in data["steps"].values())


@pytest.mark.slow
def test_quality_quick(tmp_path, capsys):
    out = tmp_path / "quality.json"
    skip = ["bm4d", "nl_means", "median", "curvature_flow"]
    args = ["--quick", "--networks", "resunet3d", "--resunet-minutes", "0.03", "--skip", *skip, "--out", str(out)]
    quality.main(args)
    data = _load(out)
    methods = [r["method"] for r in data["summary"]]
    assert methods == ["noisy", "gaussian", "tv", "resunet3d (0.02 min)", "resunet3d (0.03 min)"]
    long_run = [r for r in data["curves"] if r["run"] == "resunet3d (0.03 min)"]
    assert [r["minutes"] for r in long_run] == [0.03] and long_run[0]["steps"] >= 1
    for row in data["summary"]:
        for key in ("g15_psnr", "poi_psnr", "ric_psnr", "real_g15_psnr", "real_poi_psnr", "real_ric_psnr"):
            assert math.isfinite(row[key])
    for rows in (data["classical_rows"], data["network_rows"]):  # every noise kind on every volume, Rician included
        volumes = {*data["setup"]["test_subjects"], "real_scan"}
        assert {(r["noise"], r["volume"]) for r in rows} == {(k, v) for k in quality.NOISES for v in volumes}
    assert set(data["setup"]["noise"]) == set(data["setup"]["training_noise"]) == {"gaussian", "poisson", "rician"}
    assert data["curves"][0]["steps"] >= 1
    assert {r["precision"] for r in data["curves"]} == {"fp32"} == {data["setup"]["precision"]}  # auto, conftest
    assert data["setup"]["real_scan"]["path"].endswith("anatomical.nii")
    assert {r["volume"] for r in data["network_rows"]} == {*data["setup"]["test_subjects"], "real_scan"}
    printed = capsys.readouterr().out
    assert "benchmarks.quality: a 5-subject cohort at 4 mm" in printed and "precision: auto -> fp32" in printed
    assert "[1/2] training resunet3d for 0.02 cpu min (fp32" in printed
    assert "mean test PSNR gaussian" in printed and " poisson " in printed and " rician " in printed


def test_quality_ratios_compare_the_longest_resunet_with_bm4d_and_the_same_budget_with_monai():
    summary = [
        {"method": "bm4d", "g15_psnr": 31.0, "poi_psnr": 30.0, "ric_psnr": 30.5, "g15_s": 60.0, "g15_cpu_s": 60.0},
        {"method": "unet (10 min)", "g15_psnr": 29.0, "poi_psnr": 29.5, "ric_psnr": 29.0},
        {"method": "resunet3d (10 min)", "g15_psnr": 29.5, "poi_psnr": 29.4, "ric_psnr": 29.25}
        | {"g15_s": 3.0, "g15_cpu_s": 6.0},
        {"method": "resunet3d (60 min)", "g15_psnr": 32.5, "poi_psnr": 29.9, "ric_psnr": 30.75}
        | {"g15_s": 2.0, "g15_cpu_s": 4.0},
    ]
    ratios = quality_report.ratios(summary, 10)
    assert ratios["resunet3d (60 min) - BM4D, Gaussian 15 (target >= +1 dB)"] == "+1.50 dB, met"
    assert ratios["resunet3d (60 min) - BM4D, Poisson (target >= +0 dB)"] == "-0.10 dB, missed"
    assert ratios["resunet3d (60 min) - BM4D, Rician 15 (target >= +0 dB)"] == "+0.25 dB, met"
    assert ratios["resunet3d (10 min) - unet (10 min), Gaussian 15 (target >= +0 dB)"] == "+0.50 dB, met"
    assert ratios["resunet3d (10 min) - unet (10 min), Poisson (target >= +0 dB)"] == "-0.10 dB, missed"
    assert ratios["resunet3d (10 min) - unet (10 min), Rician 15 (target >= +0 dB)"] == "+0.25 dB, met"
    assert ratios["bm4d seconds / ResUnet3D seconds per volume (target >= 20x)"].startswith("30.0x wall (15.0x CPU")


def test_quality_training_loader_needs_whole_volumes_per_batch():
    with pytest.raises(ValueError, match="divide batch"):
        quality._training_loader([], patch=16, batch=4, seed=0, samples=3)


def test_quality_training_loader_noises_a_third_of_the_volumes_each_gaussian_poisson_and_rician(nifti_volumes):
    from transforms.noise import RandGaussianNoise255d, RandPoissonNoised, RandRicianNoised

    items = [{"image": str(path)} for path in nifti_volumes]
    loader = quality._training_loader(items, patch=16, batch=2, seed=0, samples=2)
    datasets = loader.dataset.datasets
    assert [len(d) for d in datasets] == [len(items)] * 3
    kinds = [[type(t) for t in d.transform.transforms if "Noise" in type(t).__name__] for d in datasets]
    assert kinds == [[RandGaussianNoise255d], [RandPoissonNoised], [RandRicianNoised]]
    assert [noise for noise, _ in quality.TRAINING_NOISE] == ["gaussian", "poisson", "rician"]
    assert dict(quality.TRAINING_NOISE)["rician"] == (5.0, 30.0)


def test_quality_cases_add_a_seeded_rician_copy_of_each_scaled_clean_volume(tmp_path):
    from pipeline.data.cohort import CohortParameters, build_cohort
    from transforms.intensity import robust_max

    cohort = build_cohort(tmp_path / "cohort", n_subjects=5, seed=3, params=CohortParameters(spacing=8.0))
    cases, tuning, _, test_ids = quality._cohort_cases(cohort, seed=7)
    assert set(tuning) == {"gaussian", "poisson", "rician"}
    by = {(c["noise"], c["volume"]): c for c in cases}
    assert set(by) == {(k, s) for k in ("gaussian", "poisson", "rician") for s in test_ids}
    for subject in test_ids:
        rician, gaussian = by["rician", subject], by["gaussian", subject]
        np.testing.assert_array_equal(rician["clean"], gaussian["clean"])
        assert robust_max(rician["clean"]) == pytest.approx(1.0)
        assert rician["noisy"].shape == rician["clean"].shape and rician["noisy"].dtype == np.float32
        assert np.all(rician["noisy"] >= 0) and not np.allclose(rician["noisy"], gaussian["noisy"])
        residual = (rician["noisy"] - rician["clean"])[rician["clean"] > 0.5]  # bright: Rician ~ Gaussian there
        assert np.std(residual) == pytest.approx(15 / 255, rel=0.2)
    again, _, _, _ = quality._cohort_cases(cohort, seed=7)
    other, _, _, _ = quality._cohort_cases(cohort, seed=8)
    first = next(i for i, c in enumerate(cases) if c["noise"] == "rician")
    np.testing.assert_array_equal(again[first]["noisy"], cases[first]["noisy"])
    assert not np.array_equal(other[first]["noisy"], cases[first]["noisy"])
    real, _ = quality._real_cases(0)
    noisy = {c["noise"]: c["noisy"] for c in real}
    assert list(noisy) == ["gaussian", "poisson", "rician"]
    assert np.all(noisy["rician"] >= 0) and not np.allclose(noisy["rician"], noisy["gaussian"])


@pytest.mark.slow
def test_gpu_script_runs_on_the_cpu_and_writes_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    gpu.main(["--quick", "--no-compile", "--networks", "unet", "--device", "cpu"])
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert json.loads(capsys.readouterr().out) == data
    assert {"conv3d_ceiling", "training", "inference", "total_s"} <= set(data)
    assert all("error" not in row for row in data["training"])
    assert {row["precision"] for row in data["training"]} == {"fp32"}  # bf16 is not native here (conftest)
    assert {row["precision"] for row in data["conv3d_ceiling"]} == {"fp32"}
    assert [r["roi"] for r in data["inference"]] == [16, 24]


def test_inference_worker_runs_the_network_through_onnxruntime():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cfg = dict(inference.BASELINE, size="small", shape=[20, 24, 20], roi=16, sw_batch_size=2, onnx=True)
    res = inference.run_worker(cfg)
    assert len(res["seconds"]) == 1 and res["seconds"][0] > 0


def test_report_summarises_results_and_flags_partial_runs(tmp_path, capsys):
    from benchmarks import report

    rows = [{"config": "pipeline", "seconds_per_scan": 2.0, "speedup_vs_baseline": 1.0, "peak_rss_gib": 1.5}]
    data = {"benchmark": "inference", "partial": True, "machine": {"cpu": "X"}, "rows": rows, "ratios": {"r": 1}}
    (tmp_path / "inference.json").write_text(json.dumps(data))
    (tmp_path / "broken.json").write_text("{")
    text = report.main(["--results", str(tmp_path)])
    assert "PARTIAL" in text and "| pipeline | 2 | 1 | 1.5 |" in text and "- r: 1" in text
    assert "### broken\nunreadable" in text
    assert text in capsys.readouterr().out


def test_quality_training_stops_with_diverged_on_a_non_finite_loss(nifti_volumes):
    items = [{"image": str(path)} for path in nifti_volumes]
    with pytest.raises(quality.Diverged, match="non-finite loss at step 2"):
        quality.train_with_checkpoints(
            "unet", "small", items, [], [5.0], patch=16, batch=2, seed=0, lr=float("inf"), samples=2
        )


def test_quality_trains_with_the_pipelines_supervised_trainer_and_scores_at_each_checkpoint(
    nifti_volumes, monkeypatch, capsys
):
    from monai.engines import SupervisedTrainer

    from pipeline.training import handlers
    from pipeline.training.handlers import NonFiniteLossGuard, TimeBudget

    built = []
    original = quality.build_denoise_trainer

    def spy(*args, **kwargs):
        trainer = original(*args, **kwargs)
        built.append((trainer, kwargs))
        return trainer

    monkeypatch.setattr(quality, "build_denoise_trainer", spy)

    class Clock:  # each reading 0.05 s later: a loaded machine cannot squeeze the budget into one step
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 0.05
            return cls.now

    monkeypatch.setattr(handlers, "time", Clock)
    items = [{"image": str(path)} for path in nifti_volumes]
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.8, (24, 24, 24)).astype(np.float32)
    noisy = clean + rng.normal(0, 15 / 255, clean.shape).astype(np.float32)
    cases = [
        {"noise": kind, "volume": "v", "noisy": noisy, "clean": clean, "mask": np.ones(clean.shape, bool)}
        for kind in ("gaussian", "poisson", "rician")
    ]
    marks = [0.002, 0.004]  # wall minutes: 0.12 and 0.24 s, 3 and 5 steps of the fake clock
    rows = quality.train_with_checkpoints(
        "unet", "small", items, cases, marks, patch=16, batch=2, seed=0, clock="wall", lr=1e-3, samples=2
    )
    ((trainer, kwargs),) = built
    assert isinstance(trainer, SupervisedTrainer) and kwargs["precision"] == "fp32"
    handlers = kwargs["train_handlers"]
    assert [type(h) for h in handlers] == [NonFiniteLossGuard, TimeBudget]
    assert trainer.optimizer.param_groups[0]["lr"] < 1e-3  # annealed by the clock
    assert [r["minutes"] for r in rows] == [0.002] * 3 + [0.004] * 3
    assert [r["noise"] for r in rows] == ["gaussian", "poisson", "rician"] * 2
    first, last = rows[0], rows[-1]
    assert first["steps"] == 3 and last["steps"] == trainer.state.iteration == 5
    assert math.isfinite(last["loss"]) and last["clock"] == "wall" and last["network"] == "unet"
    assert handlers[1].elapsed_s >= 0.004 * 60
    printed = capsys.readouterr().out
    assert printed.count("unet            0.00 min") == 2 and "mean test PSNR gaussian" in printed
    assert " poisson " in printed and " rician " in printed


def test_quality_retries_a_diverged_network_at_a_lower_lr_then_in_float32():
    assert quality._attempts("bf16", 3e-3) == [("bf16", 3e-3), ("bf16", 1e-3), ("fp32", 3e-3), ("fp32", 1e-3)]
    assert [p for p, _ in quality._attempts("fp32", 3e-3)] == ["fp32"] * 3


def test_the_tissue_noise_benchmark_scores_both_estimates_on_a_generated_head(tmp_path):
    from benchmarks import tissue_noise
    from benchmarks.tables import RENDERERS

    out = tmp_path / "tissue_noise.json"
    result = tissue_noise.main(["--heads", "1", "--levels", "15", "--out", str(out)])
    (row,) = result["rows"]
    assert row["level"] == 15 and row["noise"] == "gaussian" and out.exists()
    assert 0.9 < row["tissue_ratio"] < 1.1 and 0.9 < row["haar_ratio"] < 1.3
    assert "weak-texture patches" in RENDERERS["tissue_noise"](result)


def test_the_layout_benchmark_times_four_ways_with_the_same_output(tmp_path):
    from benchmarks import layout_speed

    result = layout_speed.main(["--batch", "2", "--repeats", "1", "--out", str(tmp_path / "layout.json")])
    rows = result["rows"]
    assert len(rows) == 4 and rows[0]["speed-up"] == 1 and all(r["ms per window"] > 0 for r in rows)
    assert all(float(r["max |output - torch's|"]) < 1e-3 for r in rows)
