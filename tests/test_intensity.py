"""robust_max and ScalePercentile: the documented statistic, exact inverse, metadata kept, input untouched."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms.intensity import ScalePercentile, ScalePercentiled, percentile_stats, robust_max

AFFINE = torch.diag(torch.tensor([1.5, -2.0, 3.0, 1.0], dtype=torch.float64))
KINDS = ("numpy", "torch", "metatensor")


def as_kind(array: np.ndarray, kind: str):
    array = np.array(array, dtype=np.float32, copy=True)
    if kind == "numpy":
        return array
    if kind == "torch":
        return torch.as_tensor(array)
    return MetaTensor(torch.as_tensor(array), affine=AFFINE.clone(), meta={"filename_or_obj": "sub-01.nii.gz"})


def snapshot(img) -> np.ndarray:
    return np.array(img.numpy() if isinstance(img, torch.Tensor) else img, copy=True)


@pytest.fixture
def head() -> np.ndarray:
    """Zero background around a block of intensities 1..N (so the non-zero percentiles are known)."""
    img = np.zeros((1, 20, 20, 20), dtype=np.float32)
    img[0, 5:15, 5:15, 5:15] = np.random.default_rng(0).permutation(np.arange(1, 1001)).reshape(10, 10, 10)
    return img


@pytest.mark.parametrize("kind", KINDS)
def test_scale_uses_the_percentiles_of_the_nonzero_voxels(kind, head):
    img = as_kind(head, kind)
    out = ScalePercentile(lower=0.5, upper=99.5)(img)
    inside = head[head != 0]
    lo, hi = np.percentile(inside, [0.5, 99.5])
    expected = np.clip((head - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(snapshot(img), head)
    assert out.dtype == torch.float32
    assert out.meta["scale_percentile"]["offsets"] == pytest.approx([lo])
    if kind == "metatensor":
        assert torch.equal(out.affine, AFFINE) and out.meta["filename_or_obj"] == "sub-01.nii.gz"


def test_whole_volume_percentiles_and_no_offset(head):
    out = ScalePercentile(lower=None, upper=99.0, nonzero=False, clip=False)(head)
    hi = np.percentile(head, 99.0)
    np.testing.assert_allclose(out.numpy(), head / hi, rtol=1e-6)
    assert float(out.max()) > 1.0  # no clipping


@pytest.mark.parametrize("clip", [False, True])
def test_inverse_is_exact_where_nothing_was_clipped(head, clip):
    scaler = ScalePercentile(lower=0.5, upper=99.5, clip=clip)
    img = as_kind(head, "metatensor")
    back = scaler.inverse(scaler(img))
    lo, hi = np.percentile(head[head != 0], [0.5, 99.5])
    inside = (head >= lo) & (head <= hi) if clip else np.ones_like(head, dtype=bool)
    np.testing.assert_allclose(back.numpy()[inside], head[inside], rtol=1e-5, atol=1e-3)
    assert torch.equal(back.affine, AFFINE) and back.applied_operations == []


def test_channels_are_scaled_separately_and_flat_channels_warn(head, caplog):
    two = np.concatenate([head, head * 10])
    out = ScalePercentile(lower=None, clip=False)(two)
    np.testing.assert_allclose(out[0].numpy(), out[1].numpy(), rtol=1e-5)
    with caplog.at_level(logging.WARNING, logger="transforms.intensity"):
        offsets, widths = percentile_stats(np.full((1, 4, 4, 4), 3.0), lower=0.5)
    assert widths == [1.0] and "no intensity spread" in caplog.text


def test_dict_version_shares_the_statistic_of_stats_key(head):
    noisy = head + np.random.default_rng(1).normal(0, 20, head.shape).astype(np.float32) * (head > 0)
    out = ScalePercentiled(keys=("image", "label"), stats_key="image", lower=None, clip=False)(
        {"image": noisy, "label": head}
    )
    width = percentile_stats(noisy, lower=None)[1][0]
    np.testing.assert_allclose(out["label"].numpy(), head / width, rtol=1e-5)
    assert out["image"].meta["scale_percentile"] == out["label"].meta["scale_percentile"]
    with pytest.raises(ValueError, match="stats_key"):
        ScalePercentiled(keys="image", stats_key="label")({"image": head})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lower": -1}, "lower"), ({"upper": 101}, "upper"), ({"lower": 50, "upper": 40}, "above lower")],
)
def test_scale_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScalePercentile(**kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_robust_max_is_the_995th_percentile_of_the_nonzero_voxels(kind, head):
    img = as_kind(head, kind)
    assert robust_max(img) == pytest.approx(np.percentile(head[head != 0], 99.5))
    assert robust_max(img) == percentile_stats(head, lower=None)[1][0]  # the value ScalePercentile maps to 1
    negative = head.copy()
    negative[0, 0, 0, 0] = -5.0  # a negative voxel (noise) counts: non-zero, not positive
    assert robust_max(negative, percentile=0) == -5.0
    np.testing.assert_array_equal(snapshot(img), head)


def test_robust_max_of_an_empty_image():
    with pytest.raises(ValueError, match="no non-zero voxel"):
        robust_max(np.zeros((4, 4, 4)))
    assert robust_max(np.zeros((4, 4, 4)), default=1.0) == 1.0
    with pytest.raises(ValueError, match="percentile"):
        robust_max(np.ones(3), percentile=101)
