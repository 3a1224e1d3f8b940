"""The guard's second pass runs only the sliding windows that touch the head, and is exact there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from pipeline.inference.guard import SureGuard
from pipeline.inference.within import WithinMask, predict_within
from pipeline.runtime.precision import precision_settings


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 3, padding=1)
    ).eval()


class _Counted(torch.nn.Module):
    """The network, counting the windows it is given."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.windows = network, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.network(x)


def _box_mask(shape, lo, hi) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_output_in_the_mask_is_the_full_passes_with_fewer_windows(channels_last):
    x = torch.randn(1, 1, 40, 36, 30, generator=torch.Generator().manual_seed(1))
    mask = _box_mask((40, 36, 30), (5, 4, 3), (15, 12, 9))
    inferer = precision_settings(
        "fp32",
        "cpu",
        SlidingWindowInferer(16, sw_batch_size=3, overlap=0.25, mode="gaussian"),
        channels_last=channels_last,
        training=False,
    )[1]
    network = _Counted(_network())
    with torch.no_grad():
        full = inferer(x, network)
        every = network.windows
        network.windows = 0
        part = predict_within(inferer, network, x, mask)
    assert 0 < network.windows < every
    assert torch.allclose(part[0, 0][mask], full[0, 0][mask], atol=1e-5)
    assert not torch.allclose(part, full, atol=1e-3)  # outside it the skipped windows are missing


def test_a_mask_touching_every_window_and_a_simple_inferer_give_the_full_output():
    x = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(2))
    network = _network()
    everywhere = torch.ones(24, 24, 24, dtype=torch.bool)
    with torch.no_grad():
        for inferer in (SlidingWindowInferer(16, overlap=0.25), SimpleInferer()):
            assert torch.allclose(predict_within(inferer, network, x, everywhere), inferer(x, network), atol=1e-6)
        assert torch.equal(WithinMask(network)(x, torch.zeros_like(x)), torch.zeros_like(x))


def test_the_guard_passes_the_head_and_its_choice_is_unchanged():
    """The guard with a predict that skips air windows writes what it writes with one that computes them all."""
    rng = np.random.default_rng(3)
    volume = np.zeros((64, 64, 48), np.float32)
    volume[24:40, 24:40, 16:32] = 0.6  # a head in the middle, air in the corners
    noisy = torch.from_numpy(volume + rng.normal(0, 0.05, volume.shape).astype(np.float32))[None]
    inferer, network = SlidingWindowInferer(16, sw_batch_size=2, overlap=0.25, mode="gaussian"), _Counted(_network())
    seen = []

    def full(x, where=None):
        with torch.no_grad():
            return inferer(x[None], network)[0]

    def skipping(x, where=None):
        seen.append(where)
        with torch.no_grad():
            return full(x) if where is None else predict_within(inferer, network, x[None], where)[0]

    out_full, report_full = SureGuard()(noisy, full)
    every = network.windows
    network.windows = 0
    out, report = SureGuard()(noisy, skipping)
    assert seen[0] is None and seen[1].dtype == torch.bool and seen[1].shape == volume.shape and seen[1].any()
    assert network.windows < every
    assert report.choice == report_full.choice
    assert report.estimated_gain_db == pytest.approx(report_full.estimated_gain_db, abs=1e-4)
    assert torch.allclose(out, out_full, atol=1e-5)


def test_a_single_cpu_window_runs_as_a_pair_with_the_same_output():
    from pipeline.inference.within import PairSingles

    network = _Counted(_network())
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        alone = network(x)
        network.windows = 0
        paired = PairSingles(network)(x)
        assert network.windows == 2 and paired.shape == x.shape and torch.allclose(paired, alone, atol=1e-6)
        network.windows = 0
        three = torch.randn(3, 1, 16, 16, 16)
        assert torch.equal(PairSingles(network)(three), network(three)) and network.windows == 6
