"""``RESUNET3D_TINY``: what it shrinks, and that it is off unless set."""

from __future__ import annotations

import pytest

from pipeline.utils import tiny


@pytest.mark.parametrize(("value", "on"), [(None, False), ("", False), ("0", False), ("1", True), ("yes", True)])
def test_enabled_reads_the_environment(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(tiny.ENV, raising=False)
    else:
        monkeypatch.setenv(tiny.ENV, value)
    assert tiny.enabled() is on


def test_bundle_overrides_set_only_keys_the_configs_define(monkeypatch):
    config = {"num_epochs": 50, "num_workers": 2, "patch_size": [32, 32, 32]}
    monkeypatch.delenv(tiny.ENV, raising=False)
    assert tiny.bundle_overrides(config) == {}
    monkeypatch.setenv(tiny.ENV, "1")
    assert tiny.bundle_overrides(config) == {"num_epochs": 1, "num_workers": 0}
    assert tiny.bundle_overrides({"num_workers": 2}) == {"num_workers": 0}  # inference configs: no epochs


def test_cohort_size_caps_subjects_and_coarsens_the_grid(monkeypatch):
    monkeypatch.delenv(tiny.ENV, raising=False)
    assert tiny.cohort_size(32, 2.0) == (32, 2.0)
    monkeypatch.setenv(tiny.ENV, "1")
    assert tiny.cohort_size(32, 2.0) == (8, 8.0)
    assert tiny.cohort_size(6, 10.0) == (6, 10.0)


def test_bundle_run_applies_the_tiny_overrides(monkeypatch):
    import monai.bundle

    import pipeline.bundle_run as bundle_run
    from tests.test_bundle import TRAIN

    seen = {}
    monkeypatch.setattr(monai.bundle, "run", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv(tiny.ENV, "1")
    bundle_run.run(config_file=TRAIN, num_epochs=40, dataset_dir="runs/cohort")
    assert seen["num_epochs"] == 1 and seen["num_workers"] == 0 and seen["dataset_dir"] == "runs/cohort"
    seen.clear()
    monkeypatch.setenv(tiny.ENV, "0")
    bundle_run.run(config_file=TRAIN, num_epochs=40)
    assert seen["num_epochs"] == 40 and "num_workers" not in seen
