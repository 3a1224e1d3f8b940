"""Masked PSNR/SSIM against MONAI's and hand computations; classification metrics against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.metrics import PSNRMetric, SSIMMetric
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from pipeline.evaluation.metrics import (
    QUALITY_KEYS,
    MaskedPSNRMetric,
    MaskedSSIMMetric,
    balanced_accuracy,
    classification_metrics,
    masked_psnr,
    masked_ssim,
    volume_quality,
)
from tests.conftest import smooth_volume


def pair(seed=0, shape=(2, 1, 16, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(shape, generator=g)
    return (y + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1), y


def test_unmasked_values_equal_monai():
    pred, y = pair()
    assert MaskedPSNRMetric()(pred, y) == pytest.approx(PSNRMetric(max_val=1.0, reduction="none")(pred, y), rel=1e-5)
    ours = MaskedSSIMMetric(kernel_size=7)(pred, y)
    monai = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=7, reduction="none")(pred, y)
    assert torch.allclose(ours, monai, atol=1e-5)


def test_masked_psnr_only_sees_the_mask():
    y = torch.zeros(1, 1, 8, 8, 8)
    pred = y.clone()
    mask = torch.zeros_like(y)
    mask[..., 2:6, 2:6, 2:6] = 1
    pred[mask.bool()] = 0.1  # error 0.1 inside the mask
    pred[..., 0, 0, 0] = 1.0  # a large error outside it
    value = MaskedPSNRMetric()(pred, y, mask=mask)
    assert value.item() == pytest.approx(20.0, abs=1e-4)  # 10*log10(1/0.01)
    whole = MaskedPSNRMetric()(pred, y).item()
    assert whole == pytest.approx(-10 * math.log10((64 * 0.01 + 1.0) / 512), abs=1e-4)
    with pytest.raises(ValueError, match="empty"):
        MaskedPSNRMetric()(pred, y, mask=torch.zeros_like(y))


def test_masked_ssim_averages_the_map_inside_the_mask():
    pred, y = pair(seed=1, shape=(1, 1, 20, 20, 20))
    pred[..., :10] = y[..., :10]  # perfect in one half
    mask_good = torch.zeros_like(y)
    mask_good[..., :7] = 1
    mask_bad = torch.zeros_like(y)
    mask_bad[..., 13:] = 1
    metric = MaskedSSIMMetric(kernel_size=5)
    good, bad, whole = (metric(pred, y, mask=mask_good), metric(pred, y, mask=mask_bad), metric(pred, y))
    assert good.item() == pytest.approx(1.0, abs=1e-4)
    assert bad.item() < whole.item() < good.item()
    assert metric(pred, y, mask=torch.ones_like(y)).item() == pytest.approx(whole.item(), abs=1e-6)


# ---------------------------------------------------------------- one volume: masked_psnr, masked_ssim, volume_quality


def test_volume_quality_identical_is_perfect():
    clean, mask = smooth_volume()
    scores = volume_quality(clean, clean, mask)
    assert set(scores) == set(QUALITY_KEYS)
    assert math.isinf(scores["psnr_brain"]) and math.isinf(scores["psnr_volume"])
    assert scores["ssim_brain"] == pytest.approx(1.0, abs=1e-5)
    assert scores["ssim_volume"] == pytest.approx(1.0, abs=1e-5)


def test_volume_quality_psnr_matches_the_noise_level():
    clean, mask = smooth_volume()
    sigma = 0.05
    noisy = clean + sigma * np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32)
    scores = volume_quality(noisy, clean, mask)
    expected = 20 * math.log10(1.0 / sigma)  # 26.02 dB
    assert scores["psnr_volume"] == pytest.approx(expected, abs=0.2)
    assert scores["psnr_brain"] == pytest.approx(expected, abs=0.3)
    assert 0 < scores["ssim_brain"] < 1 and 0 < scores["ssim_volume"] < 1
    # channel-first (1, H, W, D) inputs give the same figures
    assert volume_quality(noisy[None], clean[None], mask[None]) == pytest.approx(scores)


def test_volume_quality_brain_ignores_errors_outside_the_mask():
    clean, mask = smooth_volume()
    damaged = clean.copy()
    damaged[mask == 0] += 0.3
    scores = volume_quality(damaged, clean, mask)
    assert math.isinf(scores["psnr_brain"])
    assert scores["psnr_volume"] < 20


def test_volume_quality_rejects_bad_inputs():
    clean, mask = smooth_volume()
    with pytest.raises(ValueError, match="one shape"):
        volume_quality(clean[:-1], clean, mask)
    with pytest.raises(ValueError, match="empty"):
        volume_quality(clean, clean, np.zeros_like(mask))
    with pytest.raises(ValueError, match="3-D"):
        volume_quality(clean[0], clean[0], mask[0])


def test_volume_functions_are_the_metric_classes_on_one_volume():
    clean, mask = smooth_volume()
    noisy = clean + 0.05 * np.random.default_rng(2).standard_normal(clean.shape).astype(np.float32)
    as_batch = [torch.from_numpy(v)[None, None] for v in (noisy, clean, mask)]
    psnr = MaskedPSNRMetric()(*as_batch[:2], mask=as_batch[2]).item()
    ssim = MaskedSSIMMetric(kernel_size=7)(*as_batch[:2], mask=as_batch[2]).item()
    assert masked_psnr(noisy, clean, mask) == psnr  # the same computation, not a re-implementation
    assert masked_ssim(noisy, clean, mask) == ssim
    assert masked_psnr(torch.from_numpy(noisy), clean) == MaskedPSNRMetric()(*as_batch[:2]).item()
    mse = np.mean((noisy[mask > 0] - clean[mask > 0]) ** 2)
    assert masked_psnr(noisy, clean, mask) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert masked_psnr(noisy * 2, clean * 2, mask, data_range=2.0) == pytest.approx(psnr, abs=1e-4)
    with pytest.raises(ValueError, match="window"):
        masked_ssim(noisy[:6, :6, :6], clean[:6, :6, :6])


def test_aggregate_is_the_mean_over_items_and_resets():
    metric = MaskedPSNRMetric()
    a, b = pair(2), pair(3)
    metric(*a)
    metric(*b)
    expected = torch.cat([MaskedPSNRMetric()(*a), MaskedPSNRMetric()(*b)]).mean()
    assert metric.aggregate().item() == pytest.approx(expected.item())
    metric.reset()
    with pytest.raises(ValueError):
        metric.aggregate()
    assert math.isinf(MaskedPSNRMetric()(a[1], a[1]).max().item())


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="data_range"):
        MaskedPSNRMetric(data_range=0)
    with pytest.raises(ValueError, match="kernel_size"):
        MaskedSSIMMetric(kernel_size=4)
    with pytest.raises(ValueError, match="larger than the volume"):
        MaskedSSIMMetric(kernel_size=11)(*pair(shape=(1, 1, 8, 8, 8)))
    with pytest.raises(ValueError, match="same shape"):
        MaskedPSNRMetric()(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))


def test_classification_metrics_match_scikit_learn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 3, generator=g)
    labels = torch.tensor([0] * 15 + [1] * 10 + [2] * 5)
    engine = Engine(lambda e, batch: batch)
    metrics = classification_metrics(3)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run([{"pred": logits[i : i + 7], "label": labels[i : i + 7]} for i in range(0, 30, 7)], max_epochs=1)
    predicted = logits.argmax(1).numpy()
    probs = torch.softmax(logits, 1).numpy()
    got = engine.state.metrics
    assert got["accuracy"] == pytest.approx((predicted == labels.numpy()).mean())
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert got["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert got["confusion_matrix"].tolist() == confusion_matrix(labels, predicted).tolist()


def test_balanced_accuracy_ignores_absent_classes():
    assert balanced_accuracy(torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])) == pytest.approx((0.75 + 1.0) / 2)
    with pytest.raises(ValueError, match="square"):
        balanced_accuracy(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_classes"):
        classification_metrics(1)
