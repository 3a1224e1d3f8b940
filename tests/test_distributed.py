"""pipeline.training.distributed: the end of a torchrun run (the two-process run is in tests/test_bundle.py)."""

from __future__ import annotations

import torch.distributed as dist
import yaml

from pipeline.training.distributed import end_process_group
from tests.test_bundle import BUNDLE


def test_end_process_group_destroys_the_group_and_is_a_no_op_without_one(tmp_path, monkeypatch):
    end_process_group(settle_s=0)  # nothing initialised: nothing to do
    calls = []
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        end_process_group(settle_s=0)
        assert calls == ["barrier"]
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_multi_gpu_finalize_ends_the_process_group_through_it():
    config = yaml.safe_load((BUNDLE / "configs" / "multi_gpu_train.yaml").read_text())
    assert config["finalize"] == ["$pipeline.training.distributed.end_process_group()"]
    assert "$import pipeline.training.distributed" in config["+imports"]  # added to common.yaml's (no training)
