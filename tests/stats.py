"""Goodness-of-fit for the sampling tests: Pearson's chi-square with an exact p-value.

No scipy: the chi-square survival function has a closed form for integer degrees of
freedom (a Poisson tail for even dof, plus an erfc term for odd dof).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 1e-3
"""Significance level of every goodness-of-fit test in the suite. The tests are seeded, so
each is a fixed computation; ALPHA bounds how unlucky a correct sampler would have to be
with the chosen seeds for its test to fail."""


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square with `dof` (a positive integer) degrees of freedom."""
    assert dof >= 1 and x >= 0
    half = x / 2
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, dof // 2):
            term *= half / i
            total += term
        return math.exp(-half) * total
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(half) / math.gamma(1.5)
    for i in range(dof // 2):
        total += math.exp(-half) * term
        term *= half / (i + 1.5)
    return total


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float
    noncentrality: float  # expected excess of the statistic under `alternative` (0 without one)


def chi_square(counts: np.ndarray, probs: np.ndarray, alternative: np.ndarray | None = None,
               min_expected: float = 5.0) -> ChiSquare:
    """Pearson's test that `counts` (one per category) were drawn from `probs`.

    Categories expected fewer than `min_expected` times are pooled into one, so the
    chi-square approximation holds. `alternative`, a distribution the sampler must not
    produce, gives the noncentrality n * sum((a - p)^2 / p): how far above its
    degrees of freedom the statistic would land under it (the test's power).
    """
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    assert counts.shape == probs.shape and abs(probs.sum() - 1) < 1e-9
    n = counts.sum()
    outside = counts[probs == 0].sum()
    assert outside == 0, f"{outside:.0f} samples fell outside the support of p"
    big = probs * n >= min_expected
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(probs[big], probs[~big].sum()) * n
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = len(expected) - 1
    noncentrality = 0.0
    if alternative is not None:
        alt = np.append(alternative[big], alternative[~big].sum())[keep]
        noncentrality = float(n * ((alt - expected / n) ** 2 / (expected / n)).sum())
    return ChiSquare(statistic, dof, chi2_sf(statistic, dof) if dof else 1.0, noncentrality)


def chi2_threshold(dof: int, alpha: float = ALPHA) -> float:
    """The statistic above which the test rejects at level alpha (bisection on chi2_sf)."""
    low, high = 0.0, dof + 100.0 * math.sqrt(2 * dof) + 100
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if chi2_sf(mid, dof) > alpha else (low, mid)
    return high


def assert_pairs_follow(pairs, cells: list[tuple], exact: np.ndarray, wrongs: dict[str, np.ndarray]) -> None:
    """The (t1, t2) pairs drawn fit `exact` over `cells`, and the test has power against each wrong
    distribution: under one, the statistic would average dof + noncentrality, far past the threshold."""
    index = {cell: i for i, cell in enumerate(cells)}
    counts = np.zeros(len(cells))
    for pair in pairs:
        counts[index[tuple(pair)]] += 1
    fit = chi_square(counts, exact)
    assert fit.p_value > ALPHA, fit
    for name, wrong in wrongs.items():
        power = chi_square(counts, exact, alternative=wrong)
        assert power.dof + power.noncentrality > 2 * chi2_threshold(power.dof), (name, power)
