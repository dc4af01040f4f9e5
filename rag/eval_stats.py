"""The statistics of the experiments: intervals for rates and for paired differences.

Questions about the same document are not independent (they share its evidence), so the interval of
a paired difference comes from a bootstrap that resamples documents, not questions; the McNemar exact
test on the discordant pairs says whether two systems differ at all. A target counts as met only
when the lower bound of its 95% interval clears it (docs/design.md §7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sensible at small n and near 0 or 1)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(flags: Sequence[bool]) -> dict[str, Any]:
    """A proportion with its Wilson 95% interval and count."""
    n, k = len(flags), int(sum(flags))
    low, high = wilson_interval(k, n)
    return {"value": round(k / n, 4) if n else None, "n": n,
            "ci95": [round(low, 4), round(high, 4)] if n else None}


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: are a's and b's errors on the same questions exchangeable?"""
    from scipy.stats import binomtest

    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def clustered_difference(a: Sequence[bool], b: Sequence[bool], clusters: Sequence[str], n_boot: int = 2000,
                         seed: int = 0) -> dict[str, Any]:
    """Mean of a − b over paired questions, with a 95% bootstrap interval that resamples clusters
    (documents) with replacement, and the McNemar p-value."""
    if not a:
        return {"difference": None, "n": 0, "clusters": 0, "ci95": None, "mcnemar_p": None}
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    names = sorted(set(clusters))
    index = {name: i for i, name in enumerate(names)}
    member = np.array([index[c] for c in clusters])
    sums = np.bincount(member, weights=diffs, minlength=len(names))
    counts = np.bincount(member, minlength=len(names)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), (n_boot, len(names)))
    boots = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return {"difference": round(float(diffs.mean()), 4), "n": len(diffs), "clusters": len(names),
            "ci95": [round(float(np.percentile(boots, 2.5)), 4), round(float(np.percentile(boots, 97.5)), 4)],
            "mcnemar_p": round(mcnemar_p(a, b), 5)}
