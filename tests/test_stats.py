"""ablations.stats against values worked out by hand, and the bootstrap against a literal implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ablations import stats as S


def test_mean_ci_known_sample():
    # mean 3, sd 1.5811, t(0.975, df=4) = 2.7764: half-width 2.7764 * 1.5811 / sqrt(5) = 1.9632
    m, h = S.mean_ci([1, 2, 3, 4, 5])
    assert m == pytest.approx(3.0)
    assert h == pytest.approx(2.7764451 * 1.5811388 / math.sqrt(5), rel=1e-6)
    assert h == pytest.approx(1.963, abs=5e-4)


def test_mean_ci_one_value_and_nans():
    m, h = S.mean_ci([0.7])
    assert m == pytest.approx(0.7) and math.isnan(h)
    m, h = S.mean_ci([])
    assert math.isnan(m) and math.isnan(h)
    m, h = S.mean_ci([1.0, float("nan"), 3.0])  # NaN ignored: n = 2, t(0.975, 1) = 12.706
    assert m == pytest.approx(2.0)
    assert h == pytest.approx(12.7062047 * math.sqrt(2) / math.sqrt(2), rel=1e-6)


def test_mean_ci_other_confidence():
    # 90%: t(0.95, df=4) = 2.1318
    _, h = S.mean_ci([1, 2, 3, 4, 5], confidence=0.90)
    assert h == pytest.approx(2.1318468 * 1.5811388 / math.sqrt(5), rel=1e-6)


def test_paired_diff_ci_by_hand():
    # differences 0.02, 0.03, 0.04: mean 0.03, sd 0.01, t(0.975, 2) = 4.3027 -> 4.3027 * 0.01 / sqrt(3) = 0.024842
    d, h = S.paired_diff_ci([0.80, 0.82, 0.84], [0.78, 0.79, 0.80])
    assert d == pytest.approx(0.03)
    assert h == pytest.approx(4.3026527 * 0.01 / math.sqrt(3), rel=1e-6)
    # pairing matters: the unpaired CIs of each sample are much wider than the paired one
    assert h < S.mean_ci([0.80, 0.82, 0.84])[1]
    with pytest.raises(ValueError):
        S.paired_diff_ci([1, 2], [1, 2, 3])


def _pair(n01: int, n10: int, n11: int = 0, n00: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([False] * n01 + [True] * n10 + [True] * n11 + [False] * n00)
    b = np.array([True] * n01 + [False] * n10 + [True] * n11 + [False] * n00)
    return a, b


def test_mcnemar_exact_known_table():
    # 1 vs 9 discordant pairs: P(X <= 1) for Binomial(10, 1/2) = 11/1024; two-sided: 22/1024 = 0.021484
    a, b = _pair(1, 9, n11=50, n00=7)  # concordant pairs do not change the test
    n01, n10, p = S.mcnemar_exact(a, b)
    assert (n01, n10) == (1, 9)
    assert p == pytest.approx(2 * 11 / 1024, rel=1e-9)
    assert S.mcnemar_exact(b, a) == (9, 1, pytest.approx(p))
    # balanced discordance: p = 1; no discordance at all: p = 1
    assert S.mcnemar_exact(*_pair(5, 5))[2] == pytest.approx(1.0)
    assert S.mcnemar_exact(*_pair(0, 0, n11=10)) == (0, 0, 1.0)
    # 0 vs 6: 2 / 64
    assert S.mcnemar_exact(*_pair(0, 6))[2] == pytest.approx(2 / 64)


def test_paired_bootstrap_reproducible_and_exact_statistic():
    rng = np.random.default_rng(1)
    a = rng.random((3, 500)) < 0.8
    b = rng.random((3, 500)) < 0.7
    r1 = S.paired_bootstrap(a, b, n_boot=2000, seed=7)
    r2 = S.paired_bootstrap(a, b, n_boot=2000, seed=7)
    assert r1 == r2
    r3 = S.paired_bootstrap(a, b, n_boot=2000, seed=8)
    assert r3[0] == r1[0] and (r3[1], r3[2]) != (r1[1], r1[2])
    # the statistic is the seed-averaged accuracy difference
    assert r1[0] == pytest.approx(float(np.mean(a.mean(1) - b.mean(1))))
    d, lo, hi, p = r1
    assert lo < d < hi and p < 0.001
    # one seed given as a 1-D array equals the same seed as a (1, images) array
    assert S.paired_bootstrap(a[0], b[0], n_boot=500, seed=3) == S.paired_bootstrap(a[:1], b[:1], n_boot=500, seed=3)


def test_paired_bootstrap_identical_models():
    a = np.random.default_rng(0).random((2, 300)) < 0.6
    d, lo, hi, p = S.paired_bootstrap(a, a.copy(), n_boot=1000, seed=0)
    assert (d, lo, hi) == (0.0, 0.0, 0.0) and p == pytest.approx(1.0)
    assert not S.significant(lo, hi)


def test_paired_bootstrap_matches_literal_index_resampling():
    """The multinomial shortcut has the distribution of resampling image indices: compare with the literal way."""
    rng = np.random.default_rng(5)
    a = rng.random((3, 400)) < 0.75
    b = rng.random((3, 400)) < 0.70
    d, lo, hi, _ = S.paired_bootstrap(a, b, n_boot=20000, seed=11)
    lit = np.random.default_rng(99)
    reps = []
    for _ in range(4000):
        idx = lit.integers(0, 400, 400)
        reps.append(np.mean(a[:, idx].mean(1) - b[:, idx].mean(1)))
    lo2, hi2 = np.quantile(reps, [0.025, 0.975])
    assert lo == pytest.approx(lo2, abs=0.006)
    assert hi == pytest.approx(hi2, abs=0.006)


def test_paired_bootstrap_ci_covers_true_difference():
    """Over many synthetic test sets the 95% CI covers the true accuracy difference about 95% of the time."""
    rng = np.random.default_rng(2024)
    true_diff = 0.80 - 0.74
    covered = 0
    reps = 200
    for i in range(reps):
        a = rng.random((2, 600)) < 0.80
        b = rng.random((2, 600)) < 0.74
        _, lo, hi, _ = S.paired_bootstrap(a, b, n_boot=1000, seed=i)
        covered += lo <= true_diff <= hi
    assert 0.88 <= covered / reps <= 0.995, covered


def test_paired_bootstrap_detects_real_difference_only():
    rng = np.random.default_rng(3)
    base = rng.random((2, 1000)) < 0.7
    better = base | (rng.random((2, 1000)) < 0.2)  # fixes some errors, never breaks a correct one
    _, lo, hi, p = S.paired_bootstrap(better, base, n_boot=2000, seed=0)
    assert S.significant(lo, hi) and lo > 0 and p < 0.01
    noise = rng.random((2, 1000)) < 0.7  # same accuracy, different errors
    _, lo, hi, p = S.paired_bootstrap(noise, base, n_boot=2000, seed=0)
    assert lo < 0.03 and hi > -0.03


def test_shape_checks():
    with pytest.raises(ValueError):
        S.paired_bootstrap(np.ones((2, 5), bool), np.ones((3, 5), bool))
    with pytest.raises(ValueError):
        S.mcnemar_exact(np.ones(4, bool), np.ones(5, bool))


def test_formatting():
    assert S.fmt_pm(0.9342, 0.0061) == "93.4 ± 0.6"
    assert S.fmt_pm(0.9342, float("nan"), n=1) == "93.4 (n=1, no CI)"
    assert S.fmt_pm(float("nan"), 0.1) == "–"
    assert S.fmt_p(0.0004) == "<0.001" and S.fmt_p(0.0214) == "0.021" and S.fmt_p(0.5) == "0.50"
    assert S.significant(0.001, 0.02) and S.significant(-0.03, -0.01) and not S.significant(-0.01, 0.02)
