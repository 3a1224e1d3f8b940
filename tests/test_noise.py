"""Noise models: measured statistics, seeding, prob=0, no writes into the input, metadata kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandRicianNoise as MonaiRandRicianNoise
from scipy import stats

from transforms.noise import (
    NOISE_NAMES,
    RandGaussianNoise255,
    RandGaussianNoise255d,
    RandLowDose,
    RandPoissonNoise,
    RandPoissonNoised,
    RandRicianNoise,
    item_seed,
    make_noise,
    parse_noise_name,
)

AFFINE = torch.tensor([[0.0, -1.5, 0.0, 10.0], [0.0, 0.0, 2.0, -4.0], [-1.0, 0.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
KINDS = ("numpy", "torch", "metatensor")
LEVELS = {"gaussian": 15.0, "rician": 15.0, "poisson": 100.0, "lowdose": 0.25}


def as_kind(array: np.ndarray, kind: str):
    array = np.array(array, dtype=np.float32, copy=True)
    if kind == "numpy":
        return array
    if kind == "torch":
        return torch.as_tensor(array)
    return MetaTensor(torch.as_tensor(array), affine=AFFINE.clone(), meta={"filename_or_obj": "/data/sub-01.nii.gz"})


def constant(value: float, size: int = 48) -> np.ndarray:
    return np.full((1, size, size, size), value, dtype=np.float32)


def snapshot(img) -> np.ndarray:
    return np.array(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img, copy=True)


def values(img) -> np.ndarray:
    return img.detach().cpu().numpy().astype(np.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", [5.0, 15.0, 25.0])
def test_gaussian_sigma_within_3_percent_on_a_constant_volume(kind, level):
    out = RandGaussianNoise255(level=level).set_random_state(0)(as_kind(constant(0.5), kind))
    y = values(out)
    expected = level / 255.0
    assert abs(y.std() - expected) / expected < 0.03
    assert abs(y.mean() - 0.5) < 4 * expected / np.sqrt(y.size)


@pytest.mark.parametrize("reference", [200.0, "max", "robust"])
def test_gaussian_reference_sets_the_unit_of_the_level(reference):
    img = constant(200.0)
    y = values(RandGaussianNoise255(level=15, reference=reference).set_random_state(1)(img))
    assert abs(y.std() - 15.0 / 255.0 * 200.0) / (15.0 / 255.0 * 200.0) < 0.03


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("x", "scale"), [(0.5, 50.0), (2.0, 20.0), (0.1, 400.0)])
def test_poisson_mean_is_the_input_and_variance_is_mean_over_scale(kind, x, scale):
    y = values(RandPoissonNoise(scale=scale).set_random_state(2)(as_kind(constant(x), kind)))
    n = y.size
    expected_var = x / scale
    assert abs(y.mean() - x) < 4 * np.sqrt(expected_var / n)
    assert abs(y.var() - expected_var) / expected_var < 0.05
    counts = y * scale
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # lattice of 1/scale: real counts


def test_poisson_reference_scales_counts_and_rejects_negative_or_nan_input():
    y = values(RandPoissonNoise(scale=50.0, reference=100.0).set_random_state(3)(constant(50.0)))
    assert abs(y.var() - 50.0 * 100.0 / 50.0) / 100.0 < 0.05
    negative = constant(0.5)
    negative[0, 0, 0, 0] = -0.01
    with pytest.raises(ValueError, match="non-negative"):
        RandPoissonNoise()(negative)
    with pytest.raises(ValueError, match="non-negative"):
        RandPoissonNoised(keys="image")({"image": negative})
    nan = constant(0.5)
    nan[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        RandLowDose()(nan)


@pytest.mark.parametrize("kind", KINDS)
def test_rician_zero_signal_is_rayleigh(kind):
    y = values(RandRicianNoise(level=15).set_random_state(4)(as_kind(constant(0.0), kind)))
    sigma = 15.0 / 255.0
    assert abs(y.mean() - sigma * np.sqrt(np.pi / 2)) / (sigma * np.sqrt(np.pi / 2)) < 0.02
    assert abs(y.var() - (4 - np.pi) / 2 * sigma**2) / ((4 - np.pi) / 2 * sigma**2) < 0.05
    assert (y >= 0).all()


@pytest.mark.parametrize("signal", [0.05, 0.2, 0.6])
def test_rician_magnitude_matches_the_rice_distribution(signal):
    sigma = 20.0 / 255.0
    y = values(RandRicianNoise(level=20).set_random_state(5)(constant(signal)))
    rice = stats.rice(b=signal / sigma, scale=sigma)
    assert abs(y.mean() - rice.mean()) < 4 * rice.std() / np.sqrt(y.size)
    assert abs(y.var() - rice.var()) / rice.var() < 0.05
    assert stats.kstest(y.ravel()[::7], rice.cdf).pvalue > 1e-3


@pytest.mark.parametrize(("x", "dose"), [(0.5, 0.25), (1.0, 0.1)])
def test_low_dose_mean_and_variance_follow_binomial_thinning(x, dose):
    counts = 200.0
    y = values(RandLowDose(dose=dose, counts=counts).set_random_state(6)(constant(x)))
    expected_var = x * (1 - dose) / (dose * counts)
    assert abs(y.mean() - x) < 4 * np.sqrt(expected_var / y.size)
    assert abs(y.var() - expected_var) / expected_var < 0.06


def test_full_dose_returns_the_image_up_to_count_rounding():
    img = np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 16)).astype(np.float32)
    y = values(RandLowDose(dose=1.0, counts=1000.0).set_random_state(7)(img))
    assert np.abs(y - img).max() <= 1.0 / 1000.0 + 1e-6
    assert abs(y.mean() - img.mean()) < 1e-3


@pytest.fixture
def brain() -> np.ndarray:
    return np.random.default_rng(1).uniform(0.1, 1.0, (1, 16, 18, 20)).astype(np.float32)


@pytest.mark.parametrize("name", NOISE_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_noise_and_input_untouched(name, kind, brain):
    img = as_kind(brain, kind)
    before = snapshot(img)
    a = make_noise(name, LEVELS[name], keys=None).set_random_state(11)(img)
    b = make_noise(name, LEVELS[name], keys=None).set_random_state(11)(img)
    c = make_noise(name, LEVELS[name], keys=None).set_random_state(12)(img)
    np.testing.assert_array_equal(snapshot(img), before)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == img.shape and a.dtype == torch.float32
    assert not np.array_equal(snapshot(a), before)


@pytest.mark.parametrize("name", NOISE_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_prob_zero_is_the_identity(name, kind, brain):
    img = as_kind(brain, kind)
    out = make_noise(name, LEVELS[name], keys=None, prob=0.0)(img)
    np.testing.assert_array_equal(snapshot(out), brain)
    d = make_noise(name, LEVELS[name], prob=0.0)({"image": img})
    np.testing.assert_array_equal(snapshot(d["image"]), brain)


@pytest.mark.parametrize("name", NOISE_NAMES)
def test_metatensor_affine_and_metadata_are_kept(name, brain):
    img = as_kind(brain, "metatensor")
    out = make_noise(name, LEVELS[name], keys=None).set_random_state(0)(img)
    assert isinstance(out, MetaTensor)
    assert torch.equal(out.affine, img.affine)
    assert out.meta["filename_or_obj"] == "/data/sub-01.nii.gz"
    d = make_noise(name, LEVELS[name], keys="image").set_random_state(0)({"image": img, "label": img})
    assert isinstance(d["image"], MetaTensor) and torch.equal(d["image"].affine, img.affine)
    assert d["label"] is img  # the clean copy is left alone


def test_randomize_false_reuses_the_draws_and_randomize_draws_from_R(brain):
    noise = RandGaussianNoise255(level=10).set_random_state(3)
    noise.randomize(brain)
    assert torch.equal(noise(brain, randomize=False), noise(brain, randomize=False))
    with pytest.raises(ValueError, match="randomize"):
        noise(np.zeros((1, 4, 4, 4), dtype=np.float32), randomize=False)


def test_level_range_is_drawn_uniformly_per_call(brain):
    noise = RandGaussianNoise255(level=(5, 25)).set_random_state(0)
    drawn = []
    for _ in range(40):
        noise(brain)
        drawn.append(noise.level)
    assert all(5 <= v <= 25 for v in drawn)
    assert np.std(drawn) > 3  # uniform(5, 25) has std 5.8


def test_dict_keys_share_the_level_but_not_the_noise_field(brain):
    out = RandGaussianNoise255d(keys=("a", "b"), level=(5, 25)).set_random_state(0)({"a": brain, "b": brain})
    ra, rb = values(out["a"]) - brain, values(out["b"]) - brain
    assert not np.allclose(ra, rb)
    assert abs(ra.std() - rb.std()) / ra.std() < 0.1


def item(name: str, brain: np.ndarray) -> dict:
    return {"image": MetaTensor(torch.as_tensor(brain), meta={"filename_or_obj": name})}


@pytest.mark.parametrize("name", NOISE_NAMES)
def test_seeded_mode_depends_on_the_item_not_the_order(name, brain):
    transform = make_noise(name, LEVELS[name], seed=42)
    a_first = transform(item("/val/sub-01.nii.gz", brain))["image"]
    transform(item("/val/sub-02.nii.gz", brain))
    a_again = make_noise(name, LEVELS[name], seed=42)(item("/moved/sub-01.nii.gz", brain))["image"]
    b = transform(item("/val/sub-02.nii.gz", brain))["image"]
    other_seed = make_noise(name, LEVELS[name], seed=43)(item("/val/sub-01.nii.gz", brain))["image"]
    assert torch.equal(a_first, a_again)
    assert not torch.equal(a_first, b)
    assert not torch.equal(a_first, other_seed)


def test_seeded_mode_uses_id_key_and_explains_a_missing_identifier(brain):
    transform = make_noise("gaussian", 15, seed=1, id_key="subject")
    a = transform({"image": brain, "subject": "sub-07"})["image"]
    b = transform({"image": brain, "subject": "sub-07"})["image"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="id_key"):
        make_noise("gaussian", 15, seed=1)({"image": brain})
    assert item_seed(0, "/a/b/sub-01.nii.gz") == item_seed(0, "sub-01.nii.gz") != item_seed(1, "sub-01.nii.gz")


@pytest.mark.parametrize(
    ("name", "level", "match"),
    [
        ("speckle", 15, "gaussian"),
        ("gaussian", -1, r"\[0, 255\]"),
        ("gaussian", 300, r"\[0, 255\]"),
        ("rician", (20, 10), "low <= high"),
        ("poisson", 0, r"\(0, 1e\+09\]"),
        ("lowdose", 1.5, r"\(0, 1\]"),
        ("lowdose", 0.0, r"\(0, 1\]"),
        ("gaussian", "15", "number"),
    ],
)
def test_make_noise_rejects_bad_names_and_levels(name, level, match):
    with pytest.raises(ValueError, match=match):
        make_noise(name, level)


def test_constructor_validation_names_the_parameter():
    with pytest.raises(ValueError, match="prob"):
        RandGaussianNoise255(prob=1.5)
    with pytest.raises(ValueError, match="reference"):
        RandPoissonNoise(reference="mean")
    with pytest.raises(ValueError, match="counts"):
        RandLowDose(counts=0)
    with pytest.raises(ValueError, match="seed"):
        make_noise("gaussian", 15, seed=-1)
    with pytest.raises(ValueError, match="keys"):
        make_noise("gaussian", 15, keys=None, seed=1)


def test_make_noise_builds_the_named_class_and_parses_folder_names():
    assert isinstance(make_noise("poisson", (50, 200)), RandPoissonNoised)
    assert isinstance(make_noise("rician", 10, keys=None), RandRicianNoise)
    assert parse_noise_name("gaussian15") == ("gaussian", 15.0)
    assert parse_noise_name("lowdose_0.25") == ("lowdose", 0.25)
    assert parse_noise_name("Poisson") == ("poisson", None)
    with pytest.raises(ValueError, match="noise name"):
        parse_noise_name("FD")


def test_monai_rician_defects_that_our_replacement_avoids():
    """MONAI 1.6's RandRicianNoise: if this starts failing, MONAI fixed it and the replacement can be revisited."""
    monai_noise = MonaiRandRicianNoise(prob=1.5, std=0.1)
    assert monai_noise.prob == 1.5  # the clamped value is overwritten
    with pytest.raises(ValueError, match="prob"):
        RandRicianNoise(prob=1.5)

    x = torch.ones(2, 8, 8, 8)
    before = x.clone()
    MonaiRandRicianNoise(prob=1.0, std=0.1, channel_wise=True, sample_std=False).set_random_state(0)(x)
    assert not torch.equal(x, before)  # channel-wise mode writes into the caller's tensor
    x = before.clone()
    RandRicianNoise(level=25).set_random_state(0)(x)
    assert torch.equal(x, before)

    y = torch.ones(1, 8, 8, 8)
    monai_noise = MonaiRandRicianNoise(prob=1.0, std=0.1, sample_std=False).set_random_state(0)
    monai_noise.randomize(None)
    assert not torch.equal(monai_noise(y, randomize=False), monai_noise(y, randomize=False))  # redraws in __call__
    ours = RandRicianNoise(level=25).set_random_state(0)
    ours.randomize(y)
    assert torch.equal(ours(y, randomize=False), ours(y, randomize=False))
