"""Intervals for the study: a t interval over seeds, a two-level bootstrap, an equivalence test, and the verdict rule.

A difference between an arm and the baseline is paired: the same seed (initial weights, data order, noise) and the
same held-out volume or test subject. Two intervals are read side by side:

- :func:`seed_t_interval`: the per-seed mean differences get a Student t interval with ``n_seeds - 1`` degrees of
  freedom. Its coverage of the training randomness is exact for normal seed means and checked by simulation;
- :func:`bootstrap_interval`: resamples seeds and items with replacement (two levels), so it also covers the choice
  of test items, but with few seeds it under-covers (a percentile interval is never wider than the seeds' spread).

A verdict (:func:`verdict`) says *better*/*worse* only when both intervals exclude 0, *equivalent* only when the
equivalence test (:func:`equivalence_test`, TOST over seeds) rejects a difference as large as a margin fixed before
the run, and *inconclusive* otherwise. For ``m`` contrasts the intervals are widened to ``1 - 0.05 / m`` coverage
(Bonferroni) and the TOST runs at ``0.05 / m``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "MC_BATCHES",
    "NO_DIFFERENCE_DB",
    "VERDICTS",
    "BootstrapInterval",
    "auc",
    "balanced_accuracy",
    "bonferroni_level",
    "bootstrap",
    "bootstrap_interval",
    "contrast_summary",
    "equivalence_test",
    "mean_interval",
    "paired_contrast",
    "paired_difference",
    "proportion_interval",
    "seed_t_interval",
    "verdict",
]

#: The default equivalence margin of a PSNR difference (dB), fixed before any run
#: (:attr:`pipeline.study.plan.StudySettings.margin_psnr_db`).
NO_DIFFERENCE_DB = 0.1
#: Every verdict :func:`verdict` can give.
VERDICTS = ("better", "worse", "equivalent", "inconclusive")


def bonferroni_level(contrasts: int, family: float = 0.05) -> float:
    """The per-interval coverage that keeps the family-wise error at ``family`` over ``contrasts`` intervals."""
    return 1.0 - family / max(1, int(contrasts))


@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap interval with its Monte-Carlo error.

    Attributes:
        estimate: the statistic on all the data.
        low: the interval's lower bound.
        high: the interval's upper bound.
        level: its nominal coverage.
        resamples: finite bootstrap draws the bounds were read from.
        bound_se: Monte-Carlo standard errors of ``(low, high)``: the spread of the bounds of
            :data:`MC_BATCHES` disjoint batches of the draws, divided by ``sqrt(MC_BATCHES)`` (a slight
            overestimate: each batch's bound is noisier than the whole's); NaN with fewer than 20 draws.
        zero_tail: the fraction of draws on the far side of 0 from the estimate (the interval excludes 0 when this
            is below ``(1 - level) / 2``).
        zero_tail_se: its binomial Monte-Carlo standard error, ``sqrt(p (1 - p) / resamples)`` (``p`` at least
            ``1 / resamples``).
    """

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    bound_se: tuple[float, float]
    zero_tail: float
    zero_tail_se: float

    @property
    def near_bound(self) -> bool:
        """Whether the verdict on 0 could flip with another resampling seed (within 2 Monte-Carlo SE of the tail)."""
        tail = (1.0 - self.level) / 2.0
        return bool(abs(self.zero_tail - tail) <= 2.0 * self.zero_tail_se)


#: Batches the bootstrap draws are split into to estimate the Monte-Carlo error of the bounds.
MC_BATCHES = 10


def bootstrap_interval(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_seeds: int,
    n_items: int,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> BootstrapInterval:
    """A statistic of (seed, item) data and its percentile interval, resampling seeds and items with replacement.

    The percentile interval is never wider than the spread of the seeds' own values, so with few seeds it
    under-covers: with 3 seeds whose spread dominates, a nominal 95 % (or 99.7 %) interval excludes a true 0 in
    about 25 % of repeats (``tests/test_study.py`` simulates it). Read it beside :func:`seed_t_interval`.

    Args:
        statistic: ``statistic(seed_indices, item_indices) -> float`` on the data it closes over.
        n_seeds: seeds in the data (>= 1).
        n_items: items in the data (>= 1).
        level: the interval's coverage.
        n_resamples: bootstrap resamples.
        seed: the resampling seed.

    Returns:
        The interval with its Monte-Carlo error (NaN bounds when no draw is finite).

    Raises:
        ValueError: for empty data or a level outside (0, 1).
    """
    _check_bootstrap(n_seeds, n_items, level)
    rng = np.random.default_rng(seed)
    draws = np.array(
        [statistic(rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_items, n_items)) for _ in range(n_resamples)]
    )
    return _percentile_interval(draws, float(statistic(np.arange(n_seeds), np.arange(n_items))), level)


def _check_bootstrap(n_seeds: int, n_items: int, level: float) -> None:
    if n_seeds < 1 or n_items < 1:
        raise ValueError(f"need at least one seed and one item, got {n_seeds} and {n_items}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _percentile_interval(draws: np.ndarray, estimate: float, level: float) -> BootstrapInterval:
    """The percentile interval of bootstrap ``draws`` (non-finite ones dropped) with its Monte-Carlo error."""
    draws = draws[np.isfinite(draws)]
    nan = float("nan")
    if draws.size == 0:
        return BootstrapInterval(estimate, nan, nan, level, 0, (nan, nan), nan, nan)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    per_batch = draws.size // MC_BATCHES
    if per_batch > 1:
        batches = draws[: per_batch * MC_BATCHES].reshape(MC_BATCHES, per_batch)
        spread = np.std(np.quantile(batches, [tail, 1.0 - tail], axis=1), axis=1, ddof=1) / np.sqrt(MC_BATCHES)
    else:
        spread = np.array([nan, nan])
    far = draws <= 0.0 if estimate > 0 else draws >= 0.0
    zero_tail = float(far.mean())
    p = max(zero_tail, 1.0 / draws.size)
    return BootstrapInterval(
        estimate,
        float(low),
        float(high),
        level,
        int(draws.size),
        (float(spread[0]), float(spread[1])),
        zero_tail,
        float(np.sqrt(p * (1.0 - p) / draws.size)),
    )


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``(resamples, n)``: how often each of ``n`` indices occurs in each row of ``indices``."""
    offsets = indices + n * np.arange(indices.shape[0])[:, None]
    return np.bincount(offsets.ravel(), minlength=indices.shape[0] * n).reshape(-1, n).astype(np.float64)


def _mean_bootstrap(table: np.ndarray, level: float, n_resamples: int, seed: int) -> BootstrapInterval:
    """:func:`bootstrap_interval` of a table's mean, vectorised: a resample's mean is ``ws @ table @ wi / (n m)``.

    ``ws`` and ``wi`` count how often each seed and each item is drawn (with replacement), so the draws are the
    same two-level bootstrap as the generic loop's, computed at once.
    """
    n_seeds, n_items = table.shape
    _check_bootstrap(n_seeds, n_items, level)
    rng = np.random.default_rng(seed)
    seed_counts = _counts(rng.integers(0, n_seeds, (n_resamples, n_seeds)), n_seeds)
    item_counts = _counts(rng.integers(0, n_items, (n_resamples, n_items)), n_items)
    draws = np.einsum("bi,ij,bj->b", seed_counts, table, item_counts) / (n_seeds * n_items)
    return _percentile_interval(draws, float(table.mean()), level)


def bootstrap(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_seeds: int,
    n_items: int,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of :func:`bootstrap_interval` (same arguments and errors)."""
    result = bootstrap_interval(statistic, n_seeds, n_items, level, n_resamples, seed)
    return result.estimate, result.low, result.high


def _table(values: np.ndarray) -> np.ndarray:
    table = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if table.size == 0 or not np.isfinite(table).all():
        raise ValueError(f"values must be a non-empty finite (seeds, items) table, got shape {table.shape}")
    return table


def mean_interval(
    values: np.ndarray, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a ``(seeds, items)`` table with its two-level bootstrap interval.

    Raises:
        ValueError: for an empty table or non-finite values.
    """
    result = _mean_bootstrap(_table(values), level, n_resamples, seed)
    return result.estimate, result.low, result.high


def paired_difference(
    arm: np.ndarray, baseline: np.ndarray, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``arm - baseline`` over paired ``(seed, item)`` cells, with its interval.

    Raises:
        ValueError: if the two tables differ in shape.
    """
    return mean_interval(_paired(arm, baseline), level, n_resamples, seed)


def _paired(arm: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """``arm - baseline`` cell by cell, refusing tables of different shapes."""
    arm, baseline = _table(arm), _table(baseline)
    if arm.shape != baseline.shape:
        raise ValueError(f"paired tables must have one shape, got {arm.shape} and {baseline.shape}")
    return arm - baseline


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (Mann-Whitney, ties count one half); NaN with one class only."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positive, negative = scores[labels], scores[~labels]
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(greater / (positive.size * negative.size))


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the per-class recalls of binary predictions; NaN with one class only."""
    predicted, labels = np.asarray(predicted).astype(bool), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(0.5 * (predicted[labels].mean() + (~predicted[~labels]).mean()))


def _seed_means(differences: np.ndarray) -> np.ndarray:
    """Per-seed means of a ``(seeds, items)`` table (a 1-D input is one value per seed)."""
    values = np.asarray(differences, dtype=np.float64)
    table = _table(values[:, None] if values.ndim == 1 else values)
    return table.mean(axis=1)


def seed_t_interval(differences: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a ``(seeds, items)`` table of paired differences with a t interval over the seeds.

    Each seed's differences are averaged over the items, and the ``n`` seed means get a Student t interval with
    ``n - 1`` degrees of freedom. Seeds are the independent replicates (the items are shared by every seed), so this
    interval covers the training randomness for these test items at its nominal level however large the seed
    variance (``tests/test_study.py`` checks it by simulation); :func:`paired_difference` also resamples the items.

    Args:
        differences: ``arm - baseline`` per (seed, item), or one value per seed (1-D).
        level: the interval's coverage.

    Returns:
        ``(mean, low, high)``; the bounds are NaN with fewer than 2 seeds.

    Raises:
        ValueError: for an empty or non-finite table or a level outside (0, 1).
    """
    from scipy.stats import t

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    means = _seed_means(differences)
    estimate, n = float(means.mean()), means.size
    if n < 2:
        return estimate, float("nan"), float("nan")
    half = float(t.ppf(0.5 + level / 2.0, n - 1)) * float(means.std(ddof=1)) / np.sqrt(n)
    return estimate, float(estimate - half), float(estimate + half)


def equivalence_test(differences: np.ndarray, margin: float, alpha: float = 0.05) -> tuple[float, bool]:
    """Two one-sided t tests (TOST) over the seeds: is the mean difference within ``(-margin, +margin)``?

    The null hypothesis is non-equivalence (``|mean| >= margin``); it is rejected at ``alpha`` when both one-sided
    tests reject, i.e. when the ``1 - 2 alpha`` t interval over the seeds lies inside the margin. The margin must be
    fixed before the data are seen (:class:`pipeline.study.plan.StudySettings` holds the study's).

    Args:
        differences: ``arm - baseline`` per (seed, item), or one value per seed (1-D).
        margin: the equivalence margin (> 0), in the difference's units.
        alpha: the test's level.

    Returns:
        ``(p_value, equivalent)``: the larger of the two one-sided p-values, and whether it is below ``alpha``.
        With fewer than 2 seeds the p-value is 1 (nothing can be shown).

    Raises:
        ValueError: for a margin <= 0, an alpha outside (0, 0.5), or an empty or non-finite table.
    """
    from scipy.stats import t

    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    means = _seed_means(differences)
    n, mean = means.size, float(means.mean())
    if n < 2:
        return 1.0, False
    se = float(means.std(ddof=1)) / np.sqrt(n)
    if se == 0.0:
        p = 0.0 if abs(mean) < margin else 1.0
    else:
        p_lower = float(t.sf((mean + margin) / se, n - 1))  # H0: mean <= -margin
        p_upper = float(t.cdf((mean - margin) / se, n - 1))  # H0: mean >= +margin
        p = max(p_lower, p_upper)
    return p, bool(p < alpha)


def verdict(low: float, high: float, equivalence_p: float = float("nan"), alpha: float = 0.05) -> str:
    """The rule stated before the study ran, for a difference ``arm - baseline`` where higher is better.

    - ``"better"`` / ``"worse"``: the interval ``[low, high]`` excludes 0 (above / below); this comes first, so a
      small difference that is both real and within the margin reads as better or worse;
    - ``"equivalent"``: otherwise, when the equivalence test (:func:`equivalence_test`) rejects non-equivalence,
      ``equivalence_p < alpha``;
    - ``"inconclusive"``: otherwise (a NaN bound or p-value never supports a claim).

    There is no "no difference" without an equivalence test: a point estimate near 0 with a wide interval is
    inconclusive.
    """
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if equivalence_p < alpha:
        return "equivalent"
    return "inconclusive"


def contrast_summary(differences: np.ndarray, interval: BootstrapInterval, margin: float) -> dict[str, Any]:
    """Every figure a verdict rests on: t interval over seeds, bootstrap interval, TOST and the verdict.

    The verdict reads the hull of the two intervals: *better*/*worse* only when both exclude 0, *equivalent* only
    when the TOST at ``1 - interval.level`` (the same family-wise level as the interval) rejects and the bootstrap
    interval also lies inside ``+-margin``. The TOST works on the seed means only, so with seeds that agree on a few
    test items it can reject while the items alone leave the difference wide open; the bootstrap gate keeps such
    a contrast inconclusive.

    Args:
        differences: ``arm - baseline`` per (seed, item), or one value per seed (1-D), for the t interval and TOST.
        interval: the bootstrap of the same difference (its level is the contrast's).
        margin: the equivalence margin fixed before the run.

    Returns:
        ``{"estimate", "t_interval", "bootstrap_interval", "level", "seeds", "margin", "tost_p", "tost_alpha",
        "bootstrap_within_margin", "verdict", "bootstrap": {"resamples", "bound_se", "zero_tail", "zero_tail_se",
        "near_bound"}}``.
    """
    level = interval.level
    estimate, t_low, t_high = seed_t_interval(differences, level)
    alpha = min(1.0 - level, 0.49)
    p, _ = equivalence_test(differences, margin, alpha)
    bounds = (t_low, t_high, interval.low, interval.high)
    low, high = (float("nan"),) * 2 if any(np.isnan(bounds)) else (min(t_low, interval.low), max(t_high, interval.high))
    inside = bool(-margin < interval.low and interval.high < margin)
    return {
        "estimate": estimate,
        "t_interval": [t_low, t_high],
        "bootstrap_interval": [interval.low, interval.high],
        "level": level,
        "seeds": int(_seed_means(differences).size),
        "margin": margin,
        "tost_p": p,
        "tost_alpha": alpha,
        "bootstrap_within_margin": inside,
        "verdict": verdict(low, high, p if inside else float("nan"), alpha),
        "bootstrap": {
            "resamples": interval.resamples,
            "bound_se": list(interval.bound_se),
            "zero_tail": interval.zero_tail,
            "zero_tail_se": interval.zero_tail_se,
            "near_bound": interval.near_bound,
        },
    }


def paired_contrast(
    arm: np.ndarray,
    baseline: np.ndarray,
    margin: float,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`contrast_summary` of the mean of ``arm - baseline`` over paired ``(seed, item)`` cells.

    Raises:
        ValueError: if the two tables differ in shape, or are empty or non-finite.
    """
    table = _paired(arm, baseline)
    return contrast_summary(table, _mean_bootstrap(table, level, n_resamples, seed), margin)


def proportion_interval(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    Raises:
        ValueError: for ``total < 1`` or ``successes`` outside ``[0, total]``.
    """
    from scipy.stats import norm

    if total < 1 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total and total >= 1, got {successes}/{total}")
    z = float(norm.ppf(0.5 + level / 2.0))
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(centre - half), float(centre + half)
