"""BatchNormRefresh: the running statistics become those of fresh training batches, before each validation only."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from pipeline.training.handlers import BatchNormRefresh


def make_network() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2))


def test_statistics_are_re_estimated_every_interval_epochs_from_the_loader():
    torch.manual_seed(0)
    network = make_network().eval()
    loader = [{"image": 3.0 + torch.randn(2, 1, 6, 6, 6)} for _ in range(50)]
    refresh = BatchNormRefresh(network, loader, batches=20, interval=2)
    trainer = Engine(lambda engine, batch: None)
    refresh.attach(trainer)
    norm = network[1]
    norm.running_mean.fill_(-100.0)  # as if the last batch had been an outlier
    trainer.run([0], max_epochs=1)
    assert float(norm.running_mean.abs().max()) == 100.0  # epoch 1: not a refresh epoch
    trainer.run([0], max_epochs=2)
    expected = network[0](torch.cat([b["image"] for b in loader[:20]])).detach().mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(norm.running_mean, expected, rtol=1e-4, atol=1e-4)
    assert norm.momentum == 0.1 and not network.training  # momentum and mode restored


def test_zero_batches_turns_it_off_and_bad_values_are_refused():
    network = make_network()
    trainer = Engine(lambda engine, batch: None)
    BatchNormRefresh(network, [], batches=0).attach(trainer)
    trainer.run([0], max_epochs=1)  # an empty loader is never read
    with pytest.raises(ValueError, match="batches"):
        BatchNormRefresh(network, [], batches=-1)
    with pytest.raises(ValueError, match="interval"):
        BatchNormRefresh(network, [], interval=0)
