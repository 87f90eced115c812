"""The statistics of the search-quality benchmark (``benchmarks/replay.py``): the interquartile mean, percentile
bootstrap intervals (of one sample's statistic, and of a paired difference), the Spearman correlation between
two halves of a table's seeds, and the two-objective hypervolume.

Every bootstrap draws from ``numpy.random.default_rng(seed)``: the same numbers give the same interval."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 2000


def iqm(xs: Sequence[float]) -> float:
    """The interquartile mean: the mean of the middle half of the sorted values (a quarter cut from each end,
    fractional values weighted, as in Agarwal et al. 2021), robust like the median, less coarse."""
    x = np.sort(np.asarray(xs, dtype=float))
    n = len(x)
    if n == 0:
        raise ValueError("iqm of no values")
    lo, hi = n / 4, 3 * n / 4  # the middle half as the interval [n/4, 3n/4) of the sorted values
    weights = np.clip(np.minimum(np.arange(1, n + 1), hi) - np.maximum(np.arange(n), lo), 0, 1)
    return float((x * weights).sum() / weights.sum())


def bootstrap_ci(xs: Sequence[float], stat: Callable[[Sequence[float]], float], seed: int = 0,
                 level: float = 0.95, resamples: int = RESAMPLES) -> list[float]:
    """The percentile bootstrap interval of ``stat`` over ``xs`` (resampled with replacement)."""
    x = np.asarray(xs, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap of no values")
    rng = np.random.default_rng(seed)
    draws = [stat(x[rng.integers(0, len(x), len(x))]) for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))]


def paired(a: Sequence[float], b: Sequence[float], seed: int = 0, level: float = 0.95,
           resamples: int = RESAMPLES) -> dict[str, object]:
    """``a`` against ``b`` pair by pair (the same search seed): the mean of ``a - b`` with its paired
    bootstrap interval (the pairs resampled together), and how often ``a`` is lower, equal, higher."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired comparison needs two equal, non-empty samples, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    ci = bootstrap_ci(d, np.mean, seed, level, resamples)
    return {"mean_difference": float(d.mean()), "ci95": ci, "excludes_zero": ci[1] < 0 or ci[0] > 0,
            "lower": int((d < 0).sum()), "equal": int((d == 0).sum()), "higher": int((d > 0).sum())}


def quartiles(xs: Sequence[float]) -> list[float]:
    """The first and third quartiles (inclusive method; one value is its own quartiles)."""
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return [q[0], q[2]]


def summary(xs: Sequence[float], seed: int = 0) -> dict[str, object]:
    """Median and IQM, each with its bootstrap 95 % interval, and the quartiles."""
    return {"median": statistics.median(xs), "median_ci95": bootstrap_ci(xs, np.median, seed),
            "iqm": iqm(xs), "iqm_ci95": bootstrap_ci(xs, iqm, seed), "iqr": quartiles(xs)}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties take their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def hypervolume(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """The area dominated by ``points`` (both objectives minimised) and bounded by ``ref``; points not
    better than ``ref`` in both objectives add nothing."""
    inside = sorted((x, y) for x, y in points if x < ref[0] and y < ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in inside:  # by the first objective, ascending: each point adds the strip its second one improves
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def anytime_grid(fractions: list[float], points: int = 20) -> list[float]:
    """The budget fractions an anytime curve is read at: ``points`` even steps up to the largest fraction,
    and the fractions themselves."""
    top = max(fractions)
    return sorted({round(top * (k + 1) / points, 6) for k in range(points)} | set(fractions))
