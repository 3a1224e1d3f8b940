"""The study (``python -m pipeline.study``): its statistics, its cache, its arms, its data sets, its whole run.

The statistics are checked against known values and scikit-learn (their coverage in ``tests/test_stats.py``); the
cache against a counter and a killed run; each arm must build a network whose output differs from the baseline's; the
report, on cached runs made up here, must keep the sign of a difference, pair seeds (and subjects, for AUC), refuse
unequal budgets and protocols, and flag underpowered contrasts; the run loop must plan every arm with the same steps;
the leakage guard must compare voxels, not IDs; every transfer encoder must be fine-tuned by one rule; the quick study
(every arm, every part, 2 seeds) must write a report that answers every question, and continue after a kill without
re-running finished runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.errors import LeakageError
from pipeline.evaluation import stats
from pipeline.study import plan
from pipeline.study.cache import RunCache
from pipeline.study.data import check_distinct_volumes, labelled_sets, simulated_cohort
from pipeline.study.report import arms_results, transfer_results
from pipeline.study.transfer import encoder_classifier, pooled_features, pretraining_network
from pipeline.training.batchnorm import reestimate_batchnorm

# ---------------------------------------------------------------- statistics


def test_bootstrap_of_a_constant_table_is_that_constant():
    assert stats.mean_interval(np.full((3, 5), 2.5), n_resamples=50) == (2.5, 2.5, 2.5)


def test_paired_difference_removes_what_seeds_and_volumes_share():
    rng = np.random.default_rng(0)
    base = rng.normal(30.0, 3.0, (3, 8))  # large spread between volumes ...
    est, low, high = stats.paired_difference(base + 0.5, base, n_resamples=200)
    assert est == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)  # ... cancels


def test_the_interval_widens_with_the_bonferroni_level():
    values = np.random.default_rng(1).normal(0.0, 1.0, (3, 10))
    _, low95, high95 = stats.mean_interval(values, level=0.95, n_resamples=500)
    _, low99, high99 = stats.mean_interval(values, level=stats.bonferroni_level(15), n_resamples=500)
    assert low99 <= low95 < high95 <= high99
    assert stats.bonferroni_level(4) == pytest.approx(0.9875)


def test_paired_difference_refuses_tables_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_difference(np.zeros((3, 4)), np.zeros((3, 5)))


def test_auc_and_balanced_accuracy_agree_with_scikit_learn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 40)
    scores = labels * 0.3 + rng.random(40)
    scores[:4] = 0.5  # ties
    assert stats.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    predicted = scores > 0.6
    recall = [np.mean(predicted[labels == 1]), np.mean(~predicted[labels == 0])]
    assert stats.balanced_accuracy(predicted, labels) == pytest.approx(np.mean(recall))
    assert np.isnan(stats.auc(scores, np.ones(40)))


def test_wilson_interval_of_a_known_proportion():
    low, high = stats.proportion_interval(5, 10)
    assert (round(low, 3), round(high, 3)) == (0.237, 0.763)


# ---------------------------------------------------------------- cache


def test_cache_computes_a_run_once_and_keeps_it(tmp_path):
    calls = []
    cache = RunCache(tmp_path, {"steps": 3})
    first = cache.run("arms", "baseline/seed0", lambda: calls.append(1) or {"psnr": 30.0})
    again = RunCache(tmp_path, {"steps": 3}).run("arms", "baseline/seed0", lambda: calls.append(1) or {})
    assert first == again == {"psnr": 30.0} and calls == [1]
    assert (tmp_path / "arms" / "baseline-seed0.json").is_file()


def test_a_run_killed_half_way_leaves_nothing_and_runs_again(tmp_path):
    cache = RunCache(tmp_path, {})

    def killed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("arms", "x", killed)
    assert cache.get("arms", "x") is None
    assert cache.run("arms", "x", lambda: {"done": True}) == {"done": True}


def test_cache_refuses_results_of_other_settings(tmp_path):
    RunCache(tmp_path, {"steps": 3, "seeds": 3})
    with pytest.raises(ValueError, match="steps differ"):
        RunCache(tmp_path, {"steps": 4, "seeds": 3})


def test_more_seeds_or_budgets_keep_the_cache_but_other_margins_or_steps_do_not(tmp_path):
    """A study continued with more seeds reuses its runs; a margin changed after the run is refused."""
    from pipeline.study.run import cache_stamp

    base = plan.StudySettings()
    RunCache(tmp_path, cache_stamp(base, {"lr": 1e-3}, "fp32", None))
    more = dataclasses.replace(base, seeds=7, transfer_seeds=12, pretrain_budgets=(0.25, 1.0, 4.0), bootstrap=500)
    RunCache(tmp_path, cache_stamp(more, {"lr": 1e-3}, "fp32", None))  # accepted
    for change, name in (({"margin_psnr_db": 0.2}, "margin_psnr_db"), ({"steps": 96}, "steps")):
        with pytest.raises(ValueError, match=name):
            RunCache(tmp_path, cache_stamp(dataclasses.replace(base, **change), {"lr": 1e-3}, "fp32", None))


# ---------------------------------------------------------------- plan


def test_the_baseline_is_the_bundles_default_denoiser():
    from monai.bundle import ConfigParser

    from networks import ResUnet3D
    from pipeline.bundle_files import bundle_configs

    recipe = plan.baseline_recipe()
    parser = ConfigParser()
    parser.read_config(bundle_configs("common.yaml", "train_denoise.yaml"))
    shipped = {k: v.shape for k, v in parser.get_parsed_content("network_def").state_dict().items()}
    assert {k: v.shape for k, v in ResUnet3D(**recipe["network"]).state_dict().items()} == shipped
    assert recipe["lr"] == parser.get_parsed_content("learning_rate")
    assert isinstance(parser.get_parsed_content("optimizer"), torch.optim.Adam) and recipe["optimizer"] == "adam"


def test_every_arm_changes_one_thing_and_the_networks_output():
    from pipeline.study.arms import arm_network, arm_training

    recipe = plan.baseline_recipe(norm=plan.FULL.norm)
    names = [arm.name for arm in plan.ARMS]
    assert len(names) == len(set(names)) and names[0] == "baseline"
    assert set(plan.LONGER_ARMS) <= set(names)
    x = torch.rand(1, 1, 24, 24, 24)
    torch.manual_seed(0)
    baseline = arm_network(plan.ARMS[0], recipe, 24).eval()
    with torch.no_grad():
        reference = baseline(x)
    for arm in plan.ARMS[1:]:
        assert len(arm.network) == 1 or (not arm.network and arm.training), arm.name  # SGD brings its own rate
        if arm.network:
            torch.manual_seed(0)
            network = arm_network(arm, recipe, 24).eval()
            with torch.no_grad():
                output = network(x)
            assert output.shape == x.shape
            assert not torch.allclose(output, reference), f"{arm.name} does not change the network's output"
        else:
            assert arm_training(arm, recipe) != arm_training(plan.ARMS[0], recipe), arm.name


def test_settings_refuse_a_small_set_larger_than_the_large_one():
    with pytest.raises(ValueError, match="labelled_small"):
        plan.StudySettings(labelled_train=10, labelled_small=20)


# ---------------------------------------------------------------- data and transfer


def test_cohorts_with_different_prefixes_are_different_people(tmp_path):
    first = simulated_cohort(tmp_path / "a", 4, 1, "den-", spacing=6.0)
    second = simulated_cohort(tmp_path / "b", 4, 2, "lab-", spacing=6.0, hard=True)
    assert {i["subject"] for i in first}.isdisjoint({i["subject"] for i in second})
    assert all(i["subject"].startswith("lab-") for i in second)


def test_labelled_sets_are_disjoint_and_the_small_one_balanced(tmp_path):
    items = [{"image": str(i), "label": i % 2, "subject": f"s{i}"} for i in range(16)]
    sets = labelled_sets(items, n_train=8, n_small=4, n_test=6, load=lambda path: torch.zeros(1, 2, 2, 2))
    ids = {name: {i["subject"] for i in part} for name, part in sets.items()}
    assert ids["test"].isdisjoint(ids["large"]) and ids["test"].isdisjoint(ids["val"])
    assert ids["small"] <= ids["large"] and ids["large"].isdisjoint(ids["val"])
    assert sorted(i["label"] for i in sets["small"]) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="labelled subjects"):
        labelled_sets(items[:10], n_train=8, n_small=4, n_test=6)


def test_batchnorm_statistics_are_those_of_the_new_data_and_weights_stay():
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    weights = {k: v.clone() for k, v in network.state_dict().items() if "running" not in k and "num_batches" not in k}
    data = [torch.randn(2, 1, 4, 4, 4) * 3 + 5 for _ in range(3)]
    network.eval()
    assert reestimate_batchnorm(network, data) == 1
    with torch.no_grad():
        features = torch.cat([network[0](x) for x in data])
    expected = features.transpose(0, 1).reshape(2, -1).mean(1)
    assert torch.allclose(network[1].running_mean, expected, atol=1e-5)
    assert not network.training  # mode restored
    assert all(torch.equal(network.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="no batch"):
        reestimate_batchnorm(network, [])


def test_the_denoiser_encoder_moves_into_the_classifier_and_gives_pooled_features(tmp_path):
    recipe = plan.baseline_recipe()
    torch.manual_seed(3)
    denoiser = pretraining_network(recipe)
    torch.save(denoiser.state_dict(), tmp_path / "model.pt")
    classifier = encoder_classifier("denoiser", 0, recipe, str(tmp_path / "model.pt"))
    encoder = denoiser.encoder.state_dict()
    assert all(torch.equal(classifier.state_dict()[k], v) for k, v in encoder.items() if not k.startswith("fc."))
    random = encoder_classifier("random", 0, recipe)
    assert not torch.equal(random.state_dict()["conv1.weight"], classifier.state_dict()["conv1.weight"])
    items = [{"image": torch.rand(1, 24, 24, 24), "label": 0} for _ in range(3)]
    features = pooled_features(classifier, items, batch=2)
    assert features.shape == (3, recipe["network"]["block_inplanes"][-1])
    with pytest.raises(ValueError, match="kind"):
        encoder_classifier("imagenet", 0, recipe)


# ---------------------------------------------------------------- the report on made-up runs


def _arm_runs(cache, arm, offsets, subjects=("eval-0", "eval-1", "generated-0"), steps=4, part="arms"):
    """Cache one run per seed whose PSNR/SSIM per volume is ``30 + seed effect + volume effect + offset``."""
    rng = np.random.default_rng(0)  # the same seed and volume effects for every arm: what pairing cancels
    seed_effect, volume_effect = rng.normal(0.0, 2.0, len(offsets)), rng.normal(0.0, 3.0, len(subjects))
    for seed, offset in enumerate(offsets):
        run = {
            "arm": arm,
            "seed": seed,
            "steps": steps,
            "seconds_per_step": 1.0,
            "cpu_seconds": 4.0,
            "precision": "fp32",
            "volumes": [
                {
                    "subject": subject,
                    **{m: 30.0 + seed_effect[seed] + volume_effect[k] + offset for m in ("psnr_brain", "psnr_volume")},
                    **{m: 0.8 + 0.01 * offset for m in ("ssim_brain", "ssim_volume")},
                }
                for k, subject in enumerate(subjects)
            ],
        }
        cache.run(part, f"{arm}/seed{seed}", lambda run=run: run)


def _settings(seeds):
    return plan.StudySettings(seeds=seeds, transfer_seeds=seeds, bootstrap=200)


def test_the_report_keeps_the_sign_and_pairs_seeds(tmp_path):
    cache = RunCache(tmp_path, {})
    _arm_runs(cache, "baseline", [0.0] * 5)
    _arm_runs(cache, "skip_cat", [0.3] * 5)  # better by 0.3 dB on every seed and volume
    _arm_runs(cache, "lr_x3", [-0.3] * 5)
    _arm_runs(cache, "norm_instance", [0.001, -0.002, 0.0, 0.002, -0.001])
    rows = {r["arm"]: r for r in arms_results(cache, _settings(5), n_resamples=200)}
    better, worse, same = rows["skip_cat"]["diff_psnr_brain"], rows["lr_x3"]["diff_psnr_brain"], None
    assert better["verdict"] == "better" and better["t_interval"] == pytest.approx([0.3, 0.3])
    assert worse["verdict"] == "worse" and worse["estimate"] == pytest.approx(-0.3)
    same = rows["norm_instance"]["diff_psnr_brain"]
    assert same["verdict"] == "equivalent" and same["margin"] == plan.StudySettings().margin_psnr_db
    assert not better["underpowered"] and better["seeds"] == 5 and better["level"] == stats.bonferroni_level(15)


def test_the_report_flags_underpowered_contrasts(tmp_path):
    cache = RunCache(tmp_path, {})
    _arm_runs(cache, "baseline", [0.0] * 3)
    _arm_runs(cache, "skip_cat", [0.3] * 3)
    diff = {r["arm"]: r for r in arms_results(cache, _settings(3), n_resamples=200)}["skip_cat"]["diff_psnr_brain"]
    assert diff["underpowered"] and diff["required_seeds"] == plan.MIN_SEEDS_ARMS


@pytest.mark.parametrize("what", ["steps", "volumes"])
def test_the_report_refuses_unequal_budgets_or_volumes(tmp_path, what):
    cache = RunCache(tmp_path, {})
    _arm_runs(cache, "baseline", [0.0] * 3)
    if what == "steps":
        _arm_runs(cache, "skip_cat", [0.3] * 3, steps=8)
    else:
        _arm_runs(cache, "skip_cat", [0.3] * 3, subjects=("eval-1", "eval-0", "generated-0"))
    with pytest.raises(ValueError, match="unequal"):
        arms_results(cache, _settings(3), n_resamples=50)


def _transfer_runs(cache, kind, evaluation, size, seeds, separation, protocol=None, steps=6):
    labels = [0, 1] * 10
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        prob = np.clip(np.array(labels) * separation + rng.normal(0.5 - separation / 2, 0.2, 20), 0, 1)
        run = {"subjects": [f"lab-{k}" for k in range(20)], "labels": labels, "prob": prob.tolist(), "seconds": 1.0}
        run["steps"] = steps
        if protocol is not None:
            run["protocol"] = protocol
        cache.run("transfer", f"{evaluation}/{kind}/{size}/seed{seed}", lambda run=run: run)


def test_transfer_contrasts_keep_their_sign_and_refuse_unequal_protocols(tmp_path):
    cache = RunCache(tmp_path / "a", {})
    protocol = {"encoder_lr": 1e-4, "head_lr": 1e-3, "batchnorm_reestimated": True}
    for size in ("small", "large"):
        for evaluation in ("probe", "finetune"):
            _transfer_runs(cache, "random", evaluation, size, 10, 0.1, protocol)
            _transfer_runs(cache, "denoiser", evaluation, size, 10, 0.6, protocol)
    result = transfer_results(cache, _settings(10), ["random", "denoiser"], n_resamples=100)
    assert len(result["contrasts"]) == 4 and result["level"] == stats.bonferroni_level(4)
    assert all(c["answer"] == "helps" and c["diff_auc"]["estimate"] > 0 for c in result["contrasts"])
    assert all(not c["diff_auc"]["underpowered"] and c["pretrain_budget"] == 1.0 for c in result["contrasts"])

    cache = RunCache(tmp_path / "b", {})
    _transfer_runs(cache, "random", "finetune", "small", 3, 0.1, {**protocol, "encoder_lr": 1e-3})
    _transfer_runs(cache, "denoiser", "finetune", "small", 3, 0.6, protocol)
    with pytest.raises(ValueError, match="unequal protocol"):
        transfer_results(cache, _settings(3), ["random", "denoiser"], n_resamples=50)

    cache = RunCache(tmp_path / "c", {})  # the same rule, but the pretrained encoder fine-tuned for more steps
    _transfer_runs(cache, "random", "finetune", "small", 3, 0.1, protocol, steps=6)
    _transfer_runs(cache, "denoiser", "finetune", "small", 3, 0.6, protocol, steps=12)
    with pytest.raises(ValueError, match="unequal steps"):
        transfer_results(cache, _settings(3), ["random", "denoiser"], n_resamples=50)


def test_pretraining_budgets_are_a_setting_and_each_gets_its_contrast(tmp_path):
    import dataclasses

    from pipeline.study.report import transfer_kinds
    from pipeline.study.run import _total_runs

    settings = dataclasses.replace(_settings(3), pretrain_budgets=(0.25, 1.0, 4.0))
    kinds = transfer_kinds(settings, None)
    assert kinds == ["random", "denoiser_x0.25", "denoiser", "denoiser_x4"]
    assert _total_runs(settings, ["transfer"], pretrained=False, shard=(1, 1)) == 2 + 3 * (3 + 4 * 4)
    assert _total_runs(settings, ["transfer"], pretrained=False, shard=(2, 2)) == 2 + 1 * (3 + 4 * 4)
    cache = RunCache(tmp_path, {})
    for kind in kinds:
        _transfer_runs(cache, kind, "probe", "small", 3, 0.3)
    contrasts = transfer_results(cache, settings, kinds, n_resamples=50)["contrasts"]
    assert [(c["encoder"], c["pretrain_budget"]) for c in contrasts] == [
        ("denoiser_x0.25", 0.25),
        ("denoiser", 1.0),
        ("denoiser_x4", 4.0),
    ]
    assert contrasts[0]["diff_auc"]["level"] == stats.bonferroni_level(12)
    with pytest.raises(ValueError, match="pretrain_budgets"):
        plan.StudySettings(pretrain_budgets=(0.0, 1.0))


def test_the_default_study_has_the_seeds_a_verdict_needs():
    assert plan.FULL.seeds >= plan.MIN_SEEDS_ARMS == 5 and plan.FULL.transfer_seeds >= plan.MIN_SEEDS_TRANSFER == 10
    assert plan.BUDGET_90.seeds < plan.MIN_SEEDS_ARMS  # the 90-minute budget is underpowered, and says so
    with pytest.raises(ValueError, match="margin_auc"):
        plan.StudySettings(margin_auc=0.0)


def test_the_command_line_takes_the_budget_and_refuses_bad_seeds(tmp_path, capsys):
    from pipeline.study.run import BUDGETS, main

    assert BUDGETS == {"required": plan.FULL, "90min": plan.BUDGET_90}
    with pytest.raises(SystemExit) as stopped:
        main(["--budget", "90min", "--transfer-seeds", "0", "--out", str(tmp_path)])
    assert stopped.value.code == 2 and "transfer_seeds must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_every_encoder_is_finetuned_by_the_same_rule(tmp_path, monkeypatch):
    """Random and denoiser-pretrained encoders: the same learning rates, batch-norm re-estimation, steps."""
    from pipeline.study import transfer

    seen = {}

    def fake_finetune(train, val, network, run_dir, test_data, optimizer, **kwargs):
        seen.setdefault("lrs", []).append([group["lr"] for group in optimizer.param_groups])
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = "subject,prob_1\n" + "".join(f"{i['subject']},0.5\n" for i in test_data)
        (run_dir / "predictions_test.csv").write_text(rows)

    monkeypatch.setattr(transfer, "finetune_classifier", fake_finetune)
    monkeypatch.setattr(transfer, "reestimate_batchnorm", lambda network, images: seen.setdefault("bn", []).append(1))
    recipe = plan.baseline_recipe()
    torch.save(pretraining_network(recipe).state_dict(), tmp_path / "model.pt")
    items = [{"image": torch.rand(1, 16, 16, 16), "label": k % 2, "subject": f"s{k}"} for k in range(6)]
    sets = {"small": items[:4], "val": items[4:5], "test": items[5:]}
    results = [
        transfer.finetune(
            encoder_classifier(kind, 0, recipe, weights), 0, plan.QUICK, sets, "small", tmp_path / kind, run
        )
        for kind, weights, run in (("random", None, None), ("denoiser", str(tmp_path / "model.pt"), str(tmp_path)))
    ]
    assert seen["lrs"][0] == seen["lrs"][1] == [transfer.HEAD_LR * transfer.ENCODER_LR_FACTOR, transfer.HEAD_LR]
    assert seen["bn"] == [1, 1]
    assert results[0]["protocol"] == results[1]["protocol"] and results[0]["steps"] == results[1]["steps"]


# ---------------------------------------------------------------- leakage by voxels


def test_the_leakage_guard_compares_voxels_not_ids(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        path = tmp_path / f"lab-{k}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((6, 6, 6)).astype(np.float32), np.eye(4)), path)
        paths.append(str(path))
    check_distinct_volumes({"train": paths[:2], "test": paths[2:]})
    copy = tmp_path / "eval-9.nii.gz"  # another ID, another header, the same voxels as lab-0
    nib.save(nib.Nifti1Image(np.asarray(nib.load(paths[0]).dataobj), np.diag([2.0, 2.0, 2.0, 1.0])), copy)
    with pytest.raises(LeakageError, match="eval-9"):
        check_distinct_volumes({"train": paths[:2], "test": [paths[2], str(copy)]})


# ---------------------------------------------------------------- the quick study, end to end


@pytest.mark.slow
def test_quick_study_answers_every_question_and_continues_after_a_kill(tmp_path, caplog):
    from pipeline.study.run import main

    out = tmp_path / "study"
    quick = ["--quick", "--seeds", "2", "--transfer-seeds", "2"]  # the wiring: 2 seeds keep the suite within minutes
    assert main([*quick, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    for arm in plan.ARMS[1:]:  # every question is answered, naming its arms
        assert f"`{arm.name}`" in report and arm.question in report
    assert {row["arm"] for row in results["arms"]} == {arm.name for arm in plan.ARMS}
    others = [row for row in results["arms"] if row["arm"] != "baseline"]
    assert all(row["diff_psnr_brain"]["verdict"] in stats.VERDICTS for row in others)
    assert all(row["diff_psnr_brain"]["underpowered"] for row in others)  # 2 seeds: the report says so
    assert len({row["steps"] for row in results["arms"]}) == 1  # equal budgets
    assert results["ranking"]["short"] and results["settings"]["seeds"] == 2
    contrasts = {(c["evaluation"], c["size"]) for c in results["transfer"]["contrasts"]}
    assert contrasts == {(e, s) for e in ("probe", "finetune") for s in ("small", "large")}
    finetuned = [json.loads(p.read_text()) for p in (out / "runs" / "transfer").glob("finetune-*.json")]
    assert len({json.dumps(r["protocol"], sort_keys=True) for r in finetuned}) == 1 and len(finetuned) == 8
    assert "Underpowered" in report and "TOST" in report and "no difference" not in report
    assert "skipped, no file given" in report
    assert (out / "arms.png").stat().st_size > 0

    # a kill loses only the run in progress: remove one finished run, the next call runs that one alone
    (out / "runs" / "arms" / "lr_x3-seed1.json").unlink()
    caplog.set_level(logging.INFO, logger="pipeline.study.run")
    caplog.clear()
    assert main([*quick, "--out", str(out), "--parts", "arms"]) == 0
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert len(started) == 1 and "lr_x3/seed1" in started[0]


# ---------------------------------------------------------------- mutation-style checks: equal steps, paired AUC


def test_every_arm_is_planned_with_the_same_steps_and_the_longer_ones_with_the_same_multiple(tmp_path, monkeypatch):
    """The study's run loop hands every arm one budget: a loop that gave one arm more steps fails here."""
    from pipeline.study import run as study_run

    planned: dict[tuple[str, str], set[int]] = {}

    def fake_run_arm(arm, seed, recipe, settings, train, val, evaluation, run_dir, steps):
        planned.setdefault((run_dir.parts[-3], arm.name), set()).add(steps)

    monkeypatch.setattr(study_run, "_arm_data", lambda out, settings: {"train": [], "val": [], "eval": []})
    monkeypatch.setattr(study_run, "run_arm", fake_run_arm)
    settings = plan.StudySettings(seeds=2, transfer_seeds=2, steps=12, longer_factor=3)
    study_run._run_arms(tmp_path, settings, {}, None, lambda cache, part, name, job: job(), ["arms", "longer"], (1, 1))
    short = {arm: steps for (part, arm), steps in planned.items() if part == "arms"}
    longer = {arm: steps for (part, arm), steps in planned.items() if part == "longer"}
    assert set(short) == {arm.name for arm in plan.ARMS} and set(longer) == set(plan.LONGER_ARMS)
    assert all(steps == {12} for steps in short.values()), short
    assert all(steps == {36} for steps in longer.values()), longer


def test_shards_split_the_seeds_between_them_and_write_no_report(tmp_path, monkeypatch, capsys):
    from pipeline.study import run as study_run

    monkeypatch.setattr(study_run, "_arm_data", lambda out, settings: {"train": [], "val": [], "eval": []})
    settings = plan.StudySettings(seeds=5, transfer_seeds=2)
    names = {}
    for shard in ((1, 2), (2, 2)):
        names[shard] = set()
        progress = lambda cache, part, name, job, seen=names[shard]: seen.add(name)  # noqa: E731
        study_run._run_arms(tmp_path, settings, {}, None, progress, ["arms"], shard)
    assert not names[(1, 2)] & names[(2, 2)]
    assert names[(1, 2)] | names[(2, 2)] == {f"{arm.name}/seed{s}" for arm in plan.ARMS for s in range(5)}
    assert {n.split("/")[-1] for n in names[(2, 2)]} == {"seed1", "seed3"}
    assert study_run.parse_shard("2/3") == (2, 3)
    for bad in ("3/2", "0/2", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            study_run.parse_shard(bad)
    with pytest.raises(SystemExit) as stopped:
        study_run.main(["--shard", "3/2", "--out", str(tmp_path / "s")])
    assert stopped.value.code == 2 and "--shard" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_auc_difference_is_paired_by_subject_and_seed():
    """Both encoders find the same subjects hard; the denoiser's AUC is higher by a little on every seed.

    Paired by subject, the shared difficulty cancels and the interval excludes 0; an unpaired difference (each
    encoder's subjects resampled apart) keeps it and cannot tell. A sign flip reads the gain as a loss.
    """
    from pipeline.study.report import _auc_difference

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 30)
    difficulty = rng.normal(0.0, 1.0, labels.size)  # shared by both encoders
    random_prob = np.stack([labels * 0.6 + difficulty + rng.normal(0, 0.05, labels.size) for _ in range(10)])
    denoiser_prob = random_prob + labels * 0.25  # every patient scored higher by the pretrained encoder
    diff = _auc_difference((denoiser_prob, labels), (random_prob, labels), 0.95, 300, margin=0.05)
    assert diff["estimate"] > 0 and diff["bootstrap_interval"][0] > 0 and diff["verdict"] == "better"
    half_width = (diff["bootstrap_interval"][1] - diff["bootstrap_interval"][0]) / 2
    assert half_width < 0.5 * diff["estimate"]  # an unpaired interval is wider than the gain itself here
    flipped = _auc_difference((random_prob, labels), (denoiser_prob, labels), 0.95, 300, margin=0.05)
    assert flipped["estimate"] == pytest.approx(-diff["estimate"]) and flipped["verdict"] == "worse"
