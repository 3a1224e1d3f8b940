"""The study's statistics (:mod:`pipeline.evaluation.stats`): coverage checked by simulation, TOST, the verdict rule.

Each test is built to fail when the statistics are wrong in a way a reviewer would catch: a t interval with the wrong
degrees of freedom, a bootstrap that ignores its level or never resamples seeds, an unpaired difference, an
equivalence claim without an equivalence test. Simulations use a fixed RNG seed and binomial tolerances of about 3.5
standard errors, so they are deterministic and fast.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t, ttest_1samp

from pipeline.evaluation import stats


def _null_tables(rng: np.random.Generator, repeats: int, seeds: int, items: int, seed_sd: float, item_sd: float):
    """``(repeats, seeds, items)`` paired differences with no true difference: a seed offset plus item noise."""
    return rng.normal(0.0, seed_sd, (repeats, seeds, 1)) + rng.normal(0.0, item_sd, (repeats, seeds, items))


def _tolerance(p: float, repeats: int) -> float:
    return 3.5 * np.sqrt(p * (1 - p) / repeats)


# ---------------------------------------------------------------- t interval over seeds


@pytest.mark.parametrize("seeds", [3, 5])
def test_seed_t_interval_covers_at_its_level_when_seed_variance_dominates(seeds):
    """95 % t interval over seeds, no true difference: 0 is excluded in 5 % of 2000 repeats (df = seeds - 1).

    With 3 seeds a normal quantile (or df = 3) would exclude 0 in about 19 % (9 %) of repeats, outside the tolerance.
    """
    repeats = 2000
    tables = _null_tables(np.random.default_rng(seeds), repeats, seeds, 8, seed_sd=1.0, item_sd=0.1)
    bounds = np.array([stats.seed_t_interval(table, 0.95)[1:] for table in tables])
    excluded = np.mean((bounds[:, 0] > 0) | (bounds[:, 1] < 0))
    assert abs(excluded - 0.05) < _tolerance(0.05, repeats), excluded


def test_seed_t_interval_is_scipys_t_interval_on_the_seed_means():
    table = np.random.default_rng(3).normal(0.2, 1.0, (6, 5))
    means = table.mean(axis=1)
    expected = t.interval(0.9, 5, loc=means.mean(), scale=means.std(ddof=1) / np.sqrt(6))
    estimate, low, high = stats.seed_t_interval(table, 0.9)
    assert estimate == pytest.approx(table.mean())
    assert (low, high) == pytest.approx(expected)
    assert stats.seed_t_interval(means, 0.9) == pytest.approx((estimate, low, high))  # one value per seed
    assert np.isnan(stats.seed_t_interval(table[:1], 0.9)[1])  # one seed: no interval


def test_three_seed_percentile_bootstrap_under_covers_where_the_t_interval_does_not():
    """The issue's finding, reproduced: 3 seeds, seed variance dominating, no true difference, 300 repeats.

    A percentile bootstrap is never wider than the seeds' spread, so its nominal 99.7 % interval excludes 0 whenever
    the 3 seed means share a sign (25 % of repeats, less the volumes' noise). The 99.7 % t interval (2 df) does not.
    """
    repeats = 300
    tables = _null_tables(np.random.default_rng(7), repeats, 3, 8, seed_sd=1.0, item_sd=0.3)
    boot, t_excluded = 0, 0
    for table in tables:
        _, low, high = stats.mean_interval(table, level=0.997, n_resamples=200)
        boot += low > 0 or high < 0
        _, low, high = stats.seed_t_interval(table, 0.997)
        t_excluded += low > 0 or high < 0
    assert boot / repeats > 0.10  # nominal 0.003
    assert t_excluded / repeats < 0.003 + _tolerance(0.003, repeats)


# ---------------------------------------------------------------- the bootstrap


def _seed_only_table(seeds: int) -> np.ndarray:
    """Seed means spread by seed, every volume equal within a seed: only resampling seeds gives an interval."""
    offsets = np.random.default_rng(11).normal(0.0, 1.0, seeds)
    return np.repeat(offsets[:, None], 6, axis=1)


def test_the_bootstrap_resamples_seeds():
    table = _seed_only_table(20)
    _, t_low, t_high = stats.seed_t_interval(table, 0.95)
    for _, low, high in (
        stats.mean_interval(table, level=0.95, n_resamples=1000),  # vectorised
        stats.bootstrap(lambda r, c: float(table[np.ix_(r, c)].mean()), *table.shape, 0.95, 1000),  # generic
    ):
        assert 0.7 < (high - low) / (t_high - t_low) < 1.3  # a bootstrap that kept every seed would have width 0


def test_the_bootstrap_honours_its_level():
    table = _seed_only_table(20)
    widths = {}
    for level in (0.5, 0.95, 0.997):
        _, low, high = stats.mean_interval(table, level=level, n_resamples=2000)
        _, t_low, t_high = stats.seed_t_interval(table, level)
        widths[level] = high - low
        assert 0.7 < widths[level] / (t_high - t_low) < 1.3, level
    assert widths[0.5] < 0.6 * widths[0.95] and widths[0.95] < widths[0.997]


def test_the_bootstrap_covers_with_twenty_seeds():
    """With 20 seeds the two-level percentile bootstrap's 95 % interval excludes a true 0 in about 5 % of repeats."""
    repeats = 200
    tables = _null_tables(np.random.default_rng(5), repeats, 20, 6, seed_sd=1.0, item_sd=0.3)
    excluded = 0
    for table in tables:
        _, low, high = stats.mean_interval(table, level=0.95, n_resamples=300)
        excluded += low > 0 or high < 0
    assert excluded / repeats < 0.05 + _tolerance(0.05, repeats)


def test_the_bootstrap_reports_its_monte_carlo_error():
    table = _seed_only_table(10) + 0.3
    result = stats.bootstrap_interval(
        lambda r, c: float(table[np.ix_(r, c)].mean()), *table.shape, level=0.95, n_resamples=1000
    )
    assert result.resamples == 1000 and all(0 < se < 0.2 for se in result.bound_se)
    assert result.zero_tail_se == pytest.approx(np.sqrt(result.zero_tail * (1 - result.zero_tail) / 1000))
    assert stats.bootstrap(lambda r, c: float(table[np.ix_(r, c)].mean()), 10, 6, 0.95, 1000) == (
        result.estimate,
        result.low,
        result.high,
    )
    near = stats.BootstrapInterval(0.1, 0.001, 0.2, 0.95, 2000, (0.01, 0.01), 0.024, 0.0034)
    far = stats.BootstrapInterval(1.0, 0.5, 1.5, 0.95, 2000, (0.01, 0.01), 0.0, 0.0005)
    assert near.near_bound and not far.near_bound


# ---------------------------------------------------------------- equivalence (TOST)


def test_tost_p_value_is_the_larger_of_two_one_sided_t_tests():
    means = np.random.default_rng(4).normal(0.02, 0.05, 8)
    lower = ttest_1samp(means, -0.1, alternative="greater").pvalue
    upper = ttest_1samp(means, 0.1, alternative="less").pvalue
    p, equivalent = stats.equivalence_test(means, 0.1, alpha=0.05)
    assert p == pytest.approx(max(lower, upper)) and equivalent == (p < 0.05)


def test_tost_keeps_its_size_at_the_margin():
    """A true difference exactly at the margin is declared equivalent in at most alpha of 2000 repeats."""
    repeats = 2000
    tables = 0.1 + _null_tables(np.random.default_rng(9), repeats, 5, 4, seed_sd=0.05, item_sd=0.01)
    equivalent = np.mean([stats.equivalence_test(table, 0.1, alpha=0.05)[1] for table in tables])
    assert equivalent < 0.05 + _tolerance(0.05, repeats)


def test_equivalent_data_within_the_margin_read_equivalent():
    rng = np.random.default_rng(2)
    base = rng.normal(30.0, 2.0, (10, 6))
    arm = base + rng.normal(0.01, 0.02, (10, 1))  # a seed-level difference well inside +-0.1 dB
    result = stats.paired_contrast(arm, base, margin=0.1, level=0.95, n_resamples=500)
    assert result["verdict"] == "equivalent" and result["tost_p"] < 0.05
    assert result["seeds"] == 10 and result["margin"] == 0.1


def test_a_wide_interval_is_inconclusive_never_no_difference():
    """The issue's case: an estimate near 0 with an interval like [-0.8, +0.4] dB is no evidence of no difference."""
    base = np.random.default_rng(6).normal(30.0, 2.0, (3, 8))
    arm = base + np.array([[-0.8], [0.4], [0.2]])
    result = stats.paired_contrast(arm, base, margin=0.1, level=0.95, n_resamples=500)
    assert abs(result["estimate"]) < 0.1
    assert result["verdict"] == "inconclusive" and result["tost_p"] > 0.05


# ---------------------------------------------------------------- the verdict rule and pairing


@pytest.mark.parametrize(
    ("low", "high", "p", "expected"),
    [
        (0.2, 0.8, 0.9, "better"),
        (-0.8, -0.2, 0.9, "worse"),
        (-0.05, 0.05, 0.01, "equivalent"),
        (-0.82, 0.40, 0.6, "inconclusive"),
        (-0.05, 0.05, float("nan"), "inconclusive"),  # no equivalence test, no equivalence claim
        (float("nan"), float("nan"), float("nan"), "inconclusive"),
    ],
)
def test_verdict_follows_the_stated_rule(low, high, p, expected):
    assert stats.verdict(low, high, p, alpha=0.05) == expected


def test_a_paired_contrast_cancels_what_seeds_and_volumes_share_and_keeps_its_sign():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 3.0, (5, 1)) + rng.normal(30.0, 3.0, (5, 8))  # large seed and volume effects ...
    better = stats.paired_contrast(base + 0.5, base, margin=0.1, n_resamples=200)
    assert better["t_interval"] == pytest.approx([0.5, 0.5]) and better["bootstrap_interval"] == pytest.approx(
        [0.5, 0.5]
    )
    assert better["verdict"] == "better"  # ... cancel when paired
    assert stats.paired_contrast(base - 0.5, base, margin=0.1, n_resamples=200)["verdict"] == "worse"


def test_verdict_needs_both_intervals_to_exclude_zero():
    table = np.array([[0.3], [0.35], [0.32], [0.31], [0.33]])
    narrow = stats.bootstrap_interval(lambda r, c: float(table[np.ix_(r, c)].mean()), 5, 1, 0.95, 200)
    wide = stats.BootstrapInterval(narrow.estimate, -0.1, 0.7, 0.95, 200, (0.0, 0.0), 0.1, 0.02)
    assert stats.contrast_summary(table, narrow, 0.05)["verdict"] == "better"
    assert stats.contrast_summary(table, wide, 0.05)["verdict"] == "inconclusive"


def test_seeds_that_agree_on_few_items_are_not_equivalent_when_the_items_leave_it_open():
    """TOST over seeds rejects (every seed has the same mean), the items' bootstrap does not: inconclusive."""
    table = np.tile([[-0.6, 0.6, -0.3, 0.3]], (5, 1))  # mean 0 on every seed, but +-0.6 dB between volumes
    interval = stats.bootstrap_interval(lambda r, c: float(table[np.ix_(r, c)].mean()), 5, 4, 0.95, 500)
    result = stats.contrast_summary(table, interval, margin=0.1)
    assert result["tost_p"] < 0.05 and not result["bootstrap_within_margin"]
    assert result["verdict"] == "inconclusive"


def test_equivalence_arguments_are_checked():
    with pytest.raises(ValueError, match="margin"):
        stats.equivalence_test(np.zeros((3, 2)), 0.0)
    with pytest.raises(ValueError, match="alpha"):
        stats.equivalence_test(np.zeros((3, 2)), 0.1, alpha=0.6)
    with pytest.raises(ValueError, match="level"):
        stats.seed_t_interval(np.zeros((3, 2)), 1.0)
