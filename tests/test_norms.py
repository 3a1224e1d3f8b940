"""networks.norms: the instance norm that evaluates through group_norm gives torch's instance norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from networks.norms import InstanceNorm2d, InstanceNorm3d

CASES = [(InstanceNorm3d, nn.InstanceNorm3d, (3, 4, 6, 5, 7)), (InstanceNorm2d, nn.InstanceNorm2d, (3, 4, 9, 6))]


def _pair(ours: type, theirs: type, affine: bool, track: bool = False) -> tuple[nn.Module, nn.Module]:
    reference = theirs(4, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 2.0)
            reference.bias.uniform_(-1.0, 1.0)
    norm = ours(4, affine=affine, track_running_stats=track)
    norm.load_state_dict(reference.state_dict())
    return norm, reference


@pytest.mark.parametrize("ours, theirs, shape", CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_evaluation_matches_torch_and_keeps_the_layout(ours, theirs, shape, affine):
    norm, reference = _pair(ours, theirs, affine)
    x = torch.randn(shape) * 3 + 1
    layout = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.testing.assert_close(norm(x), reference(x))
            out = norm(x.contiguous(memory_format=layout))
            torch.testing.assert_close(out, reference(x))
            assert out.is_contiguous(memory_format=layout)
            torch.testing.assert_close(norm(x[0]), reference(x[0]))  # unbatched input: torch's own handling
    assert set(norm.state_dict()) == set(reference.state_dict())
    assert isinstance(norm, theirs)


@pytest.mark.parametrize("ours, theirs, shape", CASES)
def test_training_path_and_gradients_are_torchs(ours, theirs, shape):
    norm, reference = _pair(ours, theirs, affine=True)
    x = torch.randn(shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    norm(x).pow(2).mul(torch.arange(x.numel()).reshape(shape)).sum().backward()
    reference(x2).pow(2).mul(torch.arange(x.numel()).reshape(shape)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(norm.weight.grad, reference.weight.grad)


def test_tracked_running_statistics_are_used_in_evaluation():
    norm, reference = _pair(InstanceNorm3d, nn.InstanceNorm3d, affine=True, track=True)
    x = torch.randn(2, 4, 5, 5, 5)
    norm.train(), reference.train()
    norm(x), reference(x)  # both update their running statistics
    norm.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(norm(x + 2), reference(x + 2))
        assert not torch.allclose(norm(x + 2), nn.functional.instance_norm(x + 2), atol=1e-3)


def test_scripts_and_rejects_a_wrong_channel_count():
    norm = InstanceNorm3d(4, affine=True)
    x = torch.randn(2, 4, 5, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(norm)(x), norm(x))
    with pytest.raises(ValueError, match="expected input's size"):
        norm(torch.randn(2, 3, 5, 6, 7))
