"""Intervals for the study: a two-level bootstrap over seeds and items, and the verdict rule stated in advance.

A difference between an arm and the baseline is paired: the same seed (initial weights, data order, noise) and the
same held-out volume or test subject. The bootstrap resamples seeds and items with replacement (two levels), so an
interval covers both the training randomness and the choice of test items. For ``m`` contrasts the intervals are
widened to ``1 - 0.05 / m`` coverage (Bonferroni).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "NO_DIFFERENCE_DB",
    "auc",
    "balanced_accuracy",
    "bonferroni_level",
    "bootstrap",
    "mean_interval",
    "paired_difference",
    "proportion_interval",
    "verdict",
]

#: Differences of PSNR smaller than this (dB) are reported as "no difference".
NO_DIFFERENCE_DB = 0.1


def bonferroni_level(contrasts: int, family: float = 0.05) -> float:
    """The per-interval coverage that keeps the family-wise error at ``family`` over ``contrasts`` intervals."""
    return 1.0 - family / max(1, int(contrasts))


def bootstrap(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_seeds: int,
    n_items: int,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """A statistic of (seed, item) data and its percentile interval, resampling seeds and items with replacement.

    Args:
        statistic: ``statistic(seed_indices, item_indices) -> float`` on the data it closes over.
        n_seeds: seeds in the data (>= 1).
        n_items: items in the data (>= 1).
        level: the interval's coverage.
        n_resamples: bootstrap resamples.
        seed: the resampling seed.

    Returns:
        ``(estimate on all the data, low, high)``.

    Raises:
        ValueError: for empty data or a level outside (0, 1).
    """
    if n_seeds < 1 or n_items < 1:
        raise ValueError(f"need at least one seed and one item, got {n_seeds} and {n_items}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    draws = np.array(
        [statistic(rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_items, n_items)) for _ in range(n_resamples)]
    )
    draws = draws[np.isfinite(draws)]
    estimate = float(statistic(np.arange(n_seeds), np.arange(n_items)))
    if draws.size == 0:
        return estimate, float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return estimate, float(low), float(high)


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
    table = _table(values)
    return bootstrap(lambda r, c: float(table[np.ix_(r, c)].mean()), *table.shape, level, n_resamples, seed)


def paired_difference(
    arm: np.ndarray, baseline: np.ndarray, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``arm - baseline`` over paired ``(seed, item)`` cells, with its interval.

    Raises:
        ValueError: if the two tables differ in shape.
    """
    arm, baseline = _table(arm), _table(baseline)
    if arm.shape != baseline.shape:
        raise ValueError(f"paired tables must have one shape, got {arm.shape} and {baseline.shape}")
    return mean_interval(arm - baseline, level, n_resamples, seed)


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


def verdict(estimate: float, low: float, high: float, margin: float = 0.0) -> str:
    """The rule stated before the study ran, for a difference ``arm - baseline`` where higher is better.

    - ``"no difference"``: the estimate is within ``+-margin`` (0.1 dB for PSNR);
    - ``"better"`` / ``"worse"``: otherwise, when the interval excludes 0;
    - ``"inconclusive"``: the interval includes 0.
    """
    if abs(estimate) < margin:
        return "no difference"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "inconclusive"


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
