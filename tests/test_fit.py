"""One ``fit``: the three tasks go through it, its settings refuse bad values, distillation ends like classification."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

import pipeline.training.adapt as adapt
import pipeline.training.classify as classify
import pipeline.training.denoise as denoise
import pipeline.training.distill as distill_module
from networks import ResUnet3D
from pipeline.training.classify import build_classifier, classify_task
from pipeline.training.distill import distill
from pipeline.training.fit import FitSettings, Task, fit, make_optimizer, make_scheduler
from pipeline.utils.seed import seed_everything

SMALL = {"model_depth": 10, "block_inplanes": (4, 8, 16, 32)}


def separable(n: int, seed: int, prefix: str) -> list[dict]:
    """Class 1 has a bright cube in one corner, class 0 in the opposite one; 16^3 with noise."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = 0.1 * torch.rand(1, 16, 16, 16, generator=g)
        corner = slice(2, 8) if i % 2 else slice(8, 14)
        image[:, corner, corner, corner] += 0.8
        items.append({"image": image, "label": i % 2, "subject": f"{prefix}{i:02d}"})
    return items


def classifier() -> torch.nn.Module:
    seed_everything(0)
    return build_classifier("scratch", num_classes=2, **SMALL)


class _Called(Exception):
    """Raised by the spy in place of training."""


@pytest.fixture
def spy(monkeypatch):
    """Replace ``fit`` in the task modules (adaptation's too) with a recorder that stops before training."""
    calls = []

    def fake_fit(task, train_data, val_data, run_dir, settings, **kwargs):
        calls.append((task, settings, kwargs))
        raise _Called

    for module in (denoise, classify, distill_module, adapt):
        monkeypatch.setattr(module, "fit", fake_fit)
    return calls


#: A valid value for every FitSettings field, each different from every task's default.
_EVERY_FIELD = {
    "max_epochs": 7,
    "batch_size": 3,
    "optimizer": "adamw",
    "lr": 0.123,
    "momentum": 0.5,
    "weight_decay": 0.01,
    "scheduler": "step",
    "warmup_epochs": 2,
    "key_metric": "some_metric",
    "val_interval": 2,
    "checkpoint_every": 3,
    "keep_checkpoints": 4,
    "early_stop_patience": 5,
    "early_stop_min_delta": 0.25,
    "precision": "fp32",
    "channels_last": True,
    "seed": 11,
    "num_workers": 1,
    "device": "cpu",
    "resume": False,
    "progress": False,
}


def test_every_task_honours_every_fit_setting(spy, tmp_path):
    """Each wrapper hands ``fit`` every :class:`FitSettings` field it was given (none dropped, e.g. channels_last)."""
    assert set(_EVERY_FIELD) == {f.name for f in dataclasses.fields(FitSettings)}, "a new field needs a value here"
    wanted = FitSettings(**_EVERY_FIELD)
    data, val = separable(2, 0, "a"), separable(2, 1, "b")
    runs = [
        lambda **kw: denoise.train_denoiser(data, val, ResUnet3D(levels=2, **SMALL), tmp_path, **kw),
        lambda **kw: classify.finetune_classifier(data, val, classifier(), tmp_path, **kw),
        lambda **kw: distill_module.distill(data, val, classifier(), classifier(), tmp_path, **kw),
    ]
    for run in runs:
        for kwargs in (_EVERY_FIELD, {"settings": wanted}):
            with pytest.raises(_Called):
                run(**kwargs)
    assert [settings for _, settings, _ in spy] == [wanted] * 6
    for run in runs:
        with pytest.raises(TypeError, match="not a FitSettings field"):
            run(epochs=3)


def _adapt(tmp_path, **kwargs):
    """Adapt a tiny denoiser to two in-memory scans (stopped by the spy at ``fit``)."""
    from monai.data import MetaTensor

    scans = [{"image": MetaTensor(item["image"]), "subject": item["subject"]} for item in separable(2, 0, "s")]
    network = ResUnet3D(levels=2, **SMALL)
    settings = dict(patch_size=8, sigma=10.0, loss="n2s", criterion="blindspot", num_samples=1)
    return adapt.adapt_denoiser(network, scans, lambda item: item, tmp_path / "a.pt", **settings, **kwargs)


def test_adaptation_honours_every_fit_setting_it_does_not_derive(spy, tmp_path):
    """Adaptation hands ``fit`` every field given, except the two it derives from its step budget and batches."""
    assert adapt.ADAPT_DERIVED == ("max_epochs", "batch_size")
    wanted = FitSettings(**_EVERY_FIELD)
    for kwargs in (_EVERY_FIELD, {"settings": wanted}):
        with pytest.raises(_Called):
            _adapt(tmp_path, iterations=5, **kwargs)
    kept = [f.name for f in dataclasses.fields(FitSettings) if f.name not in adapt.ADAPT_DERIVED]
    for task, settings, _ in spy:
        assert task.name == "adapt" and task.build_evaluator is None
        assert {k: getattr(settings, k) for k in kept} == {k: getattr(wanted, k) for k in kept}
        assert settings.max_epochs == 5  # one scan batch per epoch: the 5 steps take 5 epochs
    assert [s.batch_size for _, s, _ in spy] == [3, 4]  # batch_size patches per step, num_samples=1 per scan
    with pytest.raises(TypeError, match="not a FitSettings field"):
        _adapt(tmp_path, epochs=3)


def test_the_three_wrappers_go_through_fit_once(spy, tmp_path):
    data = separable(2, 0, "a")
    with pytest.raises(_Called):
        denoise.train_denoiser(data, data, ResUnet3D(levels=2, **SMALL), tmp_path, max_epochs=3, lr=0.5)
    with pytest.raises(_Called):
        classify.finetune_classifier(data, separable(2, 1, "b"), classifier(), tmp_path, keep_checkpoints=2)
    with pytest.raises(_Called):
        distill_module.distill(data, separable(2, 1, "b"), classifier(), classifier(), tmp_path, keep_checkpoints=1)
    assert [task.name for task, _, _ in spy] == ["denoise", "classify", "distill"]
    assert all(isinstance(task, Task) and isinstance(settings, FitSettings) for task, settings, _ in spy)
    (_, denoise_settings, _), (_, classify_settings, _), (distill_task, distill_settings, _) = spy
    assert (denoise_settings.max_epochs, denoise_settings.lr, denoise_settings.optimizer) == (3, 0.5, "sgd")
    assert classify_settings.keep_checkpoints == 2 and distill_settings.keep_checkpoints == 1
    assert isinstance(distill_task.module, distill_module.TeacherStudent) and distill_task.network is not None
    assert all(kwargs["config"]["arguments"] for _, _, kwargs in spy)  # the wrappers' arguments are recorded


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_epochs", 0),
        ("batch_size", 0),
        ("optimizer", "lion"),
        ("lr", 0.0),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("scheduler", "cyclic"),
        ("warmup_epochs", 10),
        ("val_interval", 0),
        ("checkpoint_every", 0),
        ("keep_checkpoints", 0),
        ("early_stop_patience", 0),
        ("early_stop_min_delta", -0.1),
        ("precision", "fp8"),
        ("channels_last", "false"),
        ("num_workers", -1),
        ("seed", 1.5),
        ("resume", "yes"),
        ("progress", None),
        ("key_metric", ""),
        ("max_epochs", True),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FitSettings(**{field: value})


def test_settings_are_frozen_and_build_the_optimiser_and_schedule():
    settings = FitSettings(optimizer="sgd", lr=0.1, momentum=0.5, scheduler="cosine", max_epochs=4)
    with pytest.raises(AttributeError):
        settings.lr = 1.0  # type: ignore[misc]
    net = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(net, settings)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.5
    schedule = make_scheduler(optimizer, settings)
    assert isinstance(schedule, torch.optim.lr_scheduler.CosineAnnealingLR) and schedule.T_max == 4
    ready = torch.optim.Adam(net.parameters())
    assert make_optimizer(net, FitSettings(optimizer=ready)) is ready


def test_distillation_writes_test_metrics_and_keeps_only_the_newest_checkpoints(tmp_path):
    seed_everything(0)
    teacher, student = build_classifier("scratch", num_classes=2, **SMALL), build_classifier("scratch", 2, **SMALL)
    distill(
        separable(4, 0, "tr"), separable(2, 1, "va"), student, teacher, tmp_path, test_data=separable(2, 2, "te"),
        max_epochs=3, checkpoint_every=1, keep_checkpoints=1, precision="fp32", progress=False,
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=3.pt"]
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert set(info["test_metrics"]) >= {"accuracy", "balanced_accuracy", "auc", "confusion_matrix"}
    assert info["test_subjects"] == ["te00", "te01"] and info["task"] == "distill"
    assert (tmp_path / "predictions_test.csv").is_file() and (tmp_path / "predictions_val.csv").is_file()


def test_a_tiny_classification_runs_through_fit_directly(tmp_path):
    net = classifier()
    settings = FitSettings(max_epochs=2, batch_size=2, lr=1e-2, precision="fp32", device="cpu", progress=False)
    task = classify_task(net, num_classes=2)
    result = fit(task, separable(4, 0, "tr"), separable(2, 1, "va"), tmp_path, settings)
    assert result.epochs == 2 and len(result.losses) == 4
    assert result.best_checkpoint == tmp_path / "model.pt" and (tmp_path / "predictions_val.csv").is_file()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["key_metric"] == "balanced_accuracy"  # the task's default when the settings give none
    assert info["config"]["arguments"]["max_epochs"] == 2 and info["config"]["arguments"]["precision"] == "fp32"
    assert info["task"] == "classify" and info["test_subjects"] == []


def test_fit_refuses_overlapping_subjects_before_writing(tmp_path):
    data = separable(2, 0, "same")
    with pytest.raises(ValueError, match="same0"):
        fit(classify_task(classifier()), data, data, tmp_path / "run", FitSettings(progress=False))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", ["train_denoise.yaml", "finetune_classifier.yaml"])
def test_bundle_configs_build_their_optimiser_through_fit(config):
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    parser = ConfigParser()
    parser.read_config([os.fspath(configs / "common.yaml"), os.fspath(configs / config)])
    assert parser["optimizer"].startswith("$pipeline.training.fit.make_optimizer(")
    assert parser["lr_scheduler"].startswith("$pipeline.training.fit.make_scheduler(")
    settings = parser.get_parsed_content("fit_settings")
    assert isinstance(settings, FitSettings) and settings.max_epochs == parser["num_epochs"]
