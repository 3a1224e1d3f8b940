"""Losses, optimisers and schedules: values, names in errors, only trainable parameters, warm-up shape."""

from __future__ import annotations

import pytest
import torch
from monai.losses import SSIMLoss

from pipeline.training.losses import ClassificationLoss, build_loss, class_weights
from pipeline.training.optim import WarmupPlateau, build_optimizer, build_scheduler


def volumes(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 1, 12, 12, 12, generator=g)
    return target + 0.1 * torch.randn(target.shape, generator=g), target


def test_denoise_losses_equal_their_definitions():
    pred, target = volumes()
    l1 = (pred - target).abs().mean()
    ssim = SSIMLoss(spatial_dims=3, data_range=1.0, win_size=7)(pred, target)
    assert build_loss("l1")(pred, target) == pytest.approx(l1.item())
    assert build_loss("mse")(pred, target) == pytest.approx(((pred - target) ** 2).mean().item())
    assert build_loss("ssim")(pred, target) == pytest.approx(ssim.item(), rel=1e-5)
    combined = build_loss("l1_ssim", l1_weight=0.3, ssim_weight=2.0)(pred, target)
    assert combined == pytest.approx(0.3 * l1.item() + 2.0 * ssim.item(), rel=1e-5)
    assert build_loss("L1+SSIM", ssim_weight=0.0)(pred, target) == pytest.approx(l1.item())
    assert build_loss("l1")(target, target) == 0


def test_loss_errors_list_the_allowed_names():
    with pytest.raises(ValueError, match=r"loss must be one of \['l1', 'mse', 'ssim', 'l1_ssim'\]"):
        build_loss("huber")
    with pytest.raises(ValueError, match="weights"):
        build_loss("l1_ssim", l1_weight=0, ssim_weight=0)


def test_class_weights_are_inverse_frequency():
    weights = class_weights([0, 0, 0, 1], 3)
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    logits, target = torch.randn(4, 3), torch.tensor([0, 0, 0, 1])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=weights)
    assert ClassificationLoss(weights)(logits, target.view(4, 1)) == pytest.approx(expected.item())
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_weights([0, 2], 2)


def test_optimizer_holds_only_trainable_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[0].requires_grad_(False)
    for name in ("sgd", "adam", "adamw"):
        opt = build_optimizer(net, name, lr=0.1)
        held = [p for group in opt.param_groups for p in group["params"]]
        assert len(held) == 2 and all(p.requires_grad for p in held)
    assert build_optimizer(net, "sgd", lr=0.6, momentum=0.9).param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', 'adam', 'adamw'\]"):
        build_optimizer(net, "rmsprop")
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(net[0])


def lrs(scheduler, optimizer, epochs, metric=None):
    values = []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        scheduler.step(metric) if metric is not None else scheduler.step()
    return values


def test_schedules_with_linear_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    values = lrs(build_scheduler(opt, "cosine", max_epochs=6, warmup_epochs=2, warmup_start_factor=0.5), opt, 6)
    assert values[:3] == pytest.approx([0.5, 0.75, 1.0])
    assert values[3] < values[2] and values[5] < values[4]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert lrs(build_scheduler(opt, "step", max_epochs=6, step_size=2, gamma=0.1), opt, 5) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01]
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = build_scheduler(opt, "plateau", max_epochs=10, warmup_epochs=1, plateau_patience=1, plateau_factor=0.5)
    assert isinstance(plateau, WarmupPlateau)
    values = lrs(plateau, opt, 5, metric=1.0)  # warm-up, then a metric that never improves
    assert values[0] == pytest.approx(0.1) and values[1] == pytest.approx(1.0) and values[-1] < 1.0
    restored = WarmupPlateau(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 1)
    restored.load_state_dict(plateau.state_dict())
    assert restored.steps == plateau.steps
    assert build_scheduler(opt, "none", max_epochs=3) is None
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_scheduler(opt, "cosine", max_epochs=3, warmup_epochs=3)
    with pytest.raises(ValueError, match=r"scheduler must be one of"):
        build_scheduler(opt, "onecycle")
