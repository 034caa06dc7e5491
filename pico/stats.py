"""How sure a number is: intervals for pass rates and tests for differences, small and exact where it matters.

- `wilson`: the Wilson score interval of a rate (k successes of n); honest at 0, 1 and small n.
- `paired_difference`: B - A on the same items (specs), with McNemar's exact p-value (only the items where
  the two disagree carry information) and a Newcombe-Wilson interval for the difference (method 10 of
  Newcombe 1998, which accounts for the pairing).
- `seeds_difference`: runs of several seeds per side: means, spreads and Welch's t-test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sp

Z95 = 1.959963984540054


def _rounded(key: str, value):
    """Rates and differences to 5 decimals; p-values to 4 significant digits (a small p must stay visible)."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    return float(f"{value:.4g}") if key == "p_value" else round(float(value), 5)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of the rate k/n; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: of the discordant items, how unlikely is a split this uneven under H0."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * sp.binom.cdf(min(a_only, b_only), n, 0.5)))


@dataclass(frozen=True)
class PairedDifference:
    n: int  # items seen by both
    rate_a: float
    rate_b: float
    diff: float  # rate_b - rate_a
    lo: float  # 95% interval of diff
    hi: float
    a_only: int  # items A passed and B failed
    b_only: int
    p_value: float  # McNemar exact, two-sided

    def as_dict(self) -> dict:
        return {k: _rounded(k, v) for k, v in self.__dict__.items()}


def paired_difference(a: list[bool], b: list[bool]) -> PairedDifference:
    """B - A for outcomes of the same items (a[i], b[i] judge item i)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same items ({len(a)} vs {len(b)})")
    n = len(a)
    both = sum(x and y for x, y in zip(a, b))
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    neither = n - both - a_only - b_only
    if n == 0:
        return PairedDifference(0, 0.0, 0.0, 0.0, -1.0, 1.0, 0, 0, 1.0)
    pa, pb = (both + a_only) / n, (both + b_only) / n
    la, ua = wilson(both + a_only, n)
    lb, ub = wilson(both + b_only, n)
    # Newcombe's method 10: the single-rate Wilson limits, joined with the correlation of the paired outcomes
    denom = math.sqrt((both + a_only) * (neither + b_only) * (both + b_only) * (neither + a_only))
    phi = (both * neither - a_only * b_only) / denom if denom > 0 else 0.0
    d = pb - pa
    lo = d - math.sqrt(max((pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2, 0.0))
    hi = d + math.sqrt(max((ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2, 0.0))
    return PairedDifference(n, pa, pb, d, max(lo, -1.0), min(hi, 1.0), a_only, b_only, mcnemar_exact(b_only, a_only))


@dataclass(frozen=True)
class SeedsDifference:
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    std_a: float  # sample standard deviation over seeds
    std_b: float
    diff: float  # mean_b - mean_a
    p_value: float  # Welch's t-test, two-sided (nan with fewer than 2 runs a side)

    def as_dict(self) -> dict:
        return {k: _rounded(k, v) for k, v in self.__dict__.items()}


def seeds_difference(a: list[float], b: list[float]) -> SeedsDifference:
    """Mean and spread per side, and whether the means differ beyond the seed-to-seed spread."""
    def mean_std(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs) if xs else math.nan
        s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
        return m, s

    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    p = math.nan
    if len(a) > 1 and len(b) > 1:
        if sa == 0 and sb == 0:
            p = 1.0 if ma == mb else 0.0
        else:
            p = float(sp.ttest_ind(b, a, equal_var=False).pvalue)
    return SeedsDifference(len(a), len(b), ma, mb, sa, sb, mb - ma, p)
