"""Small statistics for comparing trained models: confidence intervals over seeds and paired tests on
the same test images. Pure functions of numpy arrays; scipy where it has the function.

Two sources of uncertainty are kept apart:

* seeds (training randomness): ``mean_ci`` and ``paired_diff_ci`` give t-based confidence intervals over
  the per-seed accuracies (n = number of seeds; no interval for one seed);
* the test sample (which images happen to be in the test set): ``mcnemar_exact`` (one seed) and
  ``paired_bootstrap`` (all seeds at once) compare two models on the *same* images.

``correct_*`` arrays are booleans: (images,) for one seed, or (seeds, images) with row s of both arrays
from the same seed (paired).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval (NaN half-width for n < 2).

    NaN values are ignored. For [1, 2, 3, 4, 5]: (3.0, 2.776 * 1.5811 / sqrt(5) = 1.963).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan
    sem = float(v.std(ddof=1)) / math.sqrt(v.size)
    t = float(_st.t.ppf(0.5 + confidence / 2, df=v.size - 1))
    return mean, t * sem


def paired_diff_ci(a, b, confidence: float = 0.95) -> tuple[float, float]:
    """Mean of the paired differences a[i] - b[i] and its t-based CI half-width (NaN for n < 2).

    Pairs with a NaN on either side are dropped.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    return mean_ci(a - b, confidence)


def _as_2d(correct) -> np.ndarray:
    c = np.asarray(correct)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2:
        raise ValueError(f"expected (images,) or (seeds, images), got shape {c.shape}")
    return c.astype(bool)


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_2d(a), _as_2d(b)
    if a.shape != b.shape:
        raise ValueError(f"paired correctness arrays differ in shape: {a.shape} vs {b.shape}")
    if a.shape[1] == 0:
        raise ValueError("no images to compare")
    return a, b


def mcnemar_exact(correct_a, correct_b) -> tuple[int, int, float]:
    """Exact McNemar test of two classifiers on the same images.

    Returns (n01, n10, p): n01 = images A gets wrong and B right, n10 = A right and B wrong, and the
    two-sided exact binomial p-value of the discordant pairs (n01 ~ Binomial(n01 + n10, 1/2) under the
    null of equal accuracy). p = 1 when there are no discordant pairs. 1 vs 9: p = 2 * 11 / 1024.
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired correctness arrays differ in shape: {a.shape} vs {b.shape}")
    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    n = n01 + n10
    if n == 0:
        return n01, n10, 1.0
    p = float(_st.binomtest(n01, n, 0.5, alternative="two-sided").pvalue)
    return n01, n10, min(p, 1.0)


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Paired bootstrap over test images of the seed-averaged accuracy difference A - B.

    correct_a, correct_b: (images,) or (seeds, images), row s of both from seed s. Each replicate draws
    image indices with replacement (the same indices for every seed and for both models) and recomputes
    mean over seeds of (acc_A - acc_B). Returns (diff, lo, hi, p): the observed difference, the percentile
    CI and a two-sided p-value (share of replicates of the null-centred statistic at least as far from 0
    as the observed one, (k + 1) / (n_boot + 1)). Reproducible for a given ``seed``.

    Implementation: the statistic is the mean over images of d_i = mean_s(a_si - b_si), which takes at most
    2 * seeds + 1 distinct values. Drawing n image indices with replacement is the same, in distribution,
    as drawing multinomial counts of those values, which is what we do: exact, and O(n_boot * values)
    instead of O(n_boot * images).
    """
    a, b = _check_pair(correct_a, correct_b)
    d = (a.astype(np.float64) - b.astype(np.float64)).mean(axis=0)  # per image, averaged over seeds
    n = d.size
    diff = float(d.mean())
    values, counts = np.unique(np.round(d, 12), return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_boot)  # (n_boot, values)
    boot = draws @ values / n
    alpha = 1 - confidence
    lo, hi = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    k = int(np.sum(np.abs(boot - diff) >= abs(diff) - 1e-12))
    p = (k + 1) / (n_boot + 1)
    return diff, lo, hi, min(float(p), 1.0)


def significant(lo: float, hi: float) -> bool:
    """The decision rule of the report: a difference is significant when its 95% CI excludes 0."""
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))


def fmt_pm(mean: float, half: float, scale: float = 100.0, digits: int = 1, n: int | None = None) -> str:
    """'93.4 ± 0.6' (percent by default); 'n=1, no CI' style when the half-width is undefined."""
    if mean is None or not np.isfinite(mean):
        return "–"
    m = f"{mean * scale:.{digits}f}"
    if half is None or not np.isfinite(half):
        return f"{m} (n=1, no CI)" if n == 1 else m
    return f"{m} ± {half * scale:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"
