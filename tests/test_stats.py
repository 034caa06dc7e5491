"""Intervals and tests, against hand-computed and textbook values."""

import math

import pytest

from pico.stats import mcnemar_exact, paired_difference, seeds_difference, wilson


def test_wilson_by_hand_and_at_the_edges():
    lo, hi = wilson(8, 16)  # p = 0.5, n = 16: 0.5 -/+ 1.96*sqrt(.25/16 + 1.96^2/1024) / (1 + 1.96^2/16)
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 16 + z * z / (4 * 256)) / (1 + z * z / 16)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert (lo, hi) == pytest.approx((0.2800, 0.7200), abs=1e-4)  # 16 samples: a 44-point-wide interval
    assert wilson(0, 64)[0] == 0.0 and 0.05 < wilson(0, 64)[1] < 0.06
    assert wilson(64, 64)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_by_hand():
    # 1 vs 9 discordant: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11/1024
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_difference_counts_and_covers_the_truth():
    a = [True] * 12 + [True] * 9 + [False] * 2 + [False] * 4
    b = [True] * 12 + [False] * 9 + [True] * 2 + [False] * 4
    d = paired_difference(b, a)
    assert d.diff == pytest.approx(7 / 27) and d.a_only == 2 and d.b_only == 9
    assert d.lo < d.diff < d.hi and d.p_value == pytest.approx(mcnemar_exact(9, 2))
    # coverage: correlated pairs with true rates 0.3 and 0.5 on 64 items; the 95% interval covers 0.2 ~95% of runs
    import random

    rng, covered, runs = random.Random(0), 0, 2000
    for _ in range(runs):
        xs, ys = [], []
        for _ in range(64):
            u = rng.random()
            xs.append(u < 0.3)
            ys.append(u < 0.5 if rng.random() < 0.7 else rng.random() < 0.5)  # shares most of its draw with x
        r = paired_difference(xs, ys)
        covered += r.lo <= 0.2 <= r.hi
    assert 0.93 <= covered / runs <= 0.985


def test_same_outcomes_differ_by_nothing():
    d = paired_difference([True, False, True], [True, False, True])
    assert d.diff == 0 and d.p_value == 1.0 and d.lo <= 0 <= d.hi
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])


def test_seeds_difference():
    s = seeds_difference([0.1, 0.2, 0.15], [0.5, 0.55, 0.6])
    assert s.diff == pytest.approx(0.4) and s.p_value < 0.01
    assert s.std_a == pytest.approx(0.05)
    same = seeds_difference([0.3, 0.31, 0.29], [0.3, 0.29, 0.31])
    assert same.p_value > 0.9
    one = seeds_difference([0.3], [0.5])
    assert math.isnan(one.p_value) and one.diff == pytest.approx(0.2)
