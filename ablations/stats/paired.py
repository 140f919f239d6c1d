"""Small statistics for comparing trained models. Pure functions of numpy arrays; scipy where it has the function.

Two sources of uncertainty, and a difference is called higher or lower only when it holds against both:

* seeds (training randomness): ``t_test`` on the per-seed paired differences (n - 1 degrees of freedom), and
  ``mean_ci`` / ``paired_diff_ci`` for t-based confidence intervals over seeds;
* the test sample (which images happen to be in the test set): ``paired_bootstrap`` resamples test images of
  the seed-averaged difference, ``class_group_bootstrap`` does so within each class for a difference between
  groups of classes, and ``mcnemar_exact`` tests one seed's two models on the same images.

Every seed is evaluated on the same test images, so the spread of the per-seed differences holds the training
noise but not the test sample's; the image bootstrap holds the test sample's noise but not the training noise.
``seed_image_test`` puts them together: the variance of the mean difference is the sum of the two
(``both_sources``: standard error sqrt(s^2/n + se_images^2), n - 1 degrees of freedom), which gives
the headline interval (``ci_lo``/``ci_hi``, 95%; ``ci90_lo``/``ci90_hi``) and the test ``p_both``. ``holm``
corrects a family of them, ``verdict`` reads the result, ``tost`` tests equivalence within a bound (two one-sided
tests on the same standard error). ``min_detectable_effect`` says how large a difference the seed test can detect
at a given n and seed variance.

``correct_*`` arrays are booleans: (images,) for one seed, or (seeds, images) with row s of both arrays
from the same seed (paired).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import integrate as _integrate
from scipy import optimize as _opt
from scipy import stats as _st

ALPHA = 0.05
MIN_SEEDS = 3  # the seed t-test needs at least this many seeds before a difference gets a verdict
NEEDS_SEEDS = f"needs ≥ {MIN_SEEDS} seeds"
INCONCLUSIVE = "inconclusive"
UNTESTED = "untested (no stored test logits)"


def finite(x) -> bool:
    """A real, finite number (not None, NaN, inf or text)."""
    try:
        return x is not None and not isinstance(x, str) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _finite_values(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval (NaN half-width for n < 2).

    NaN values are ignored. For [1, 2, 3, 4, 5]: (3.0, 2.776 * 1.5811 / sqrt(5) = 1.963).
    """
    v = _finite_values(values)
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


def t_test(diffs, null: float = 0.0, confidence: float = 0.95) -> tuple[float, float, float]:
    """One-sample t-test of per-seed differences against ``null`` (n - 1 degrees of freedom).

    Returns (mean, CI half-width, two-sided p); half-width and p are NaN for fewer than 2 values. Seeds that
    agree exactly (SD 0) give p = 0 when the mean differs from ``null`` and p = 1 when it equals it.
    For [0.02, 0.03, 0.04]: t = 0.03 / (0.01 / sqrt 3) = 5.196 with 2 df, p = 0.0351.
    """
    v = _finite_values(diffs)
    mean, half = mean_ci(v, confidence)
    if v.size < 2:
        return mean, half, math.nan
    sd = float(v.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return mean, half, 1.0 if math.isclose(mean, null, abs_tol=1e-12) else 0.0
    t = (mean - null) / (sd / math.sqrt(v.size))
    return mean, half, float(2 * _st.t.sf(abs(t), df=v.size - 1))


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


def _resampled_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the mean of ``d`` (values per image), resampling images with replacement.

    ``d`` takes few distinct values (per-image correctness averaged over a few seeds), so drawing n image
    indices with replacement is the same, in distribution, as drawing multinomial counts of those values:
    exact, and O(n_boot * values) instead of O(n_boot * images)."""
    n = d.size
    values, counts = np.unique(np.round(d, 12), return_counts=True)
    return rng.multinomial(n, counts / n, size=n_boot) @ values / n


class Bootstrap(tuple):
    """An image bootstrap's result: the tuple (diff, lo, hi, p), and ``se``, the standard deviation of its
    replicates (the standard error of the difference from the test sample alone)."""

    def __new__(cls, diff: float, lo: float, hi: float, p: float, se: float):
        out = super().__new__(cls, (diff, lo, hi, p))
        out.se = se
        return out

    diff = property(lambda self: self[0])
    lo = property(lambda self: self[1])
    hi = property(lambda self: self[2])
    p = property(lambda self: self[3])


def _boot_summary(boot: np.ndarray, diff: float, confidence: float, null: float) -> Bootstrap:
    """(diff, lo, hi, p) and se: percentile CI, the two-sided p of ``null`` (share of replicates of the
    null-centred statistic at least as far from ``null`` as the observed one, (k + 1) / (n_boot + 1)), and the
    replicates' standard deviation."""
    alpha = 1 - confidence
    lo, hi = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    k = int(np.sum(np.abs(boot - diff) >= abs(diff - null) - 1e-12))
    se = float(boot.std(ddof=1)) if boot.size > 1 else math.nan
    return Bootstrap(diff, lo, hi, min(float((k + 1) / (boot.size + 1)), 1.0), se)


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, seed: int = 0,
                     confidence: float = 0.95, null: float = 0.0) -> Bootstrap:
    """Paired bootstrap over test images of the seed-averaged accuracy difference A - B.

    correct_a, correct_b: (images,) or (seeds, images), row s of both from seed s. Each replicate draws
    image indices with replacement (the same indices for every seed and for both models) and recomputes
    mean over seeds of (acc_A - acc_B). Returns (diff, lo, hi, p): the observed difference, the percentile
    CI and a two-sided p-value of ``null`` (share of replicates of the null-centred statistic at least as
    far from ``null`` as the observed one, (k + 1) / (n_boot + 1)). Reproducible for a given ``seed``.
    """
    a, b = _check_pair(correct_a, correct_b)
    d = (a.astype(np.float64) - b.astype(np.float64)).mean(axis=0)  # per image, averaged over seeds
    boot = _resampled_means(d, n_boot, np.random.default_rng(seed))
    return _boot_summary(boot, float(d.mean()), confidence, null)


def class_group_values(correct, labels, better: Sequence[int], worse: Sequence[int]) -> np.ndarray:
    """Per seed: mean recall (per-class accuracy) over the ``better`` classes minus that over the ``worse``.

    correct: (seeds, images) or (images,); labels: (images,) class indices. Each class counts equally."""
    c = _as_2d(correct).astype(np.float64)
    y = np.asarray(labels)
    recall = {k: c[:, y == k].mean(axis=1) for k in (*better, *worse)}
    return np.mean([recall[k] for k in better], axis=0) - np.mean([recall[k] for k in worse], axis=0)


def class_group_bootstrap(correct, labels, better: Sequence[int], worse: Sequence[int], n_boot: int = 10000,
                          seed: int = 0, confidence: float = 0.95,
                          null: float = 0.0) -> Bootstrap:
    """Bootstrap over test images of the seed-averaged ``class_group_values``: the images of each class are
    resampled within their class (the class sizes are fixed by the test set's design). Returns
    (diff, lo, hi, p) as ``paired_bootstrap`` does."""
    c = _as_2d(correct).astype(np.float64)
    y = np.asarray(labels)
    if c.shape[1] != y.size:
        raise ValueError(f"{c.shape[1]} images but {y.size} labels")
    missing = [k for k in (*better, *worse) if not np.any(y == k)]
    if missing or not better or not worse:
        raise ValueError(f"class group without test images: {missing or 'empty group'}")
    rng = np.random.default_rng(seed)
    per_image = c.mean(axis=0)
    boot = {k: _resampled_means(per_image[y == k], n_boot, rng) for k in (*better, *worse)}
    reps = np.mean([boot[k] for k in better], axis=0) - np.mean([boot[k] for k in worse], axis=0)
    diff = float(class_group_values(c, y, better, worse).mean())
    return _boot_summary(reps, diff, confidence, null)


def both_sources(seed_diffs, se_images: float) -> tuple[float, float, float]:
    """(mean, se, df) of the mean per-seed difference with both sources of noise: se^2 = s^2 / n + se_images^2
    (s: the SD of the per-seed differences, training noise; se_images: the image bootstrap's standard error,
    test-sample noise), with the seeds' n - 1 degrees of freedom. n - 1 rather than Welch-Satterthwaite's larger
    number: the seed variance is estimated from n numbers, and with 3 seeds a larger df would trust it; with n - 1
    the interval is at least as wide as the seeds' alone, and wider than the images' alone. se and df are NaN for
    fewer than 2 seeds or an unknown se_images. Worked by hand: differences 1, 2, 3 and se_images 0.5:
    s^2 / n = 1/3, se = sqrt(1/3 + 1/4) = 0.7638, df = 2."""
    v = _finite_values(seed_diffs)
    mean = float(v.mean()) if v.size else math.nan
    if v.size < 2 or not finite(se_images):
        return mean, math.nan, math.nan
    se2 = float(v.var(ddof=1)) / v.size + float(se_images) ** 2
    return mean, math.sqrt(se2), float(v.size - 1)


def _t_quantile(q: float, df: float) -> float:
    return float(_st.norm.ppf(q) if not np.isfinite(df) else _st.t.ppf(q, df))


def _t_sf(x: float, df: float) -> float:
    return float(_st.norm.sf(x) if not np.isfinite(df) else _st.t.sf(x, df))


def t_interval(mean: float, se: float, df: float, confidence: float = 0.95) -> tuple[float, float]:
    """mean -/+ t_{df}(1/2 + confidence/2) * se; NaN ends when se or df is unknown."""
    if not (finite(mean) and finite(se)) or not df > 0:
        return math.nan, math.nan
    half = _t_quantile(0.5 + confidence / 2, df) * se
    return mean - half, mean + half


def t_p(mean: float, se: float, df: float, null: float = 0.0) -> float:
    """Two-sided p of ``null`` for a mean with standard error ``se`` and ``df`` degrees of freedom. A zero se
    (every source tied) gives 0 when the mean differs from ``null`` and 1 when it equals it."""
    if not (finite(mean) and finite(se)) or not df > 0:
        return math.nan
    if se <= 1e-12:
        return 1.0 if math.isclose(mean, null, abs_tol=1e-12) else 0.0
    return min(1.0, 2 * _t_sf(abs(mean - null) / se, df))


def tost(mean: float, se: float, df: float, bound: float) -> float:
    """Two one-sided tests of equivalence within +-``bound``: the larger of the p-values of 'the difference is
    at most -bound' and 'at least +bound'. p < alpha exactly when the (1 - 2 alpha) interval (90% for 5%) lies
    inside (-bound, +bound). Worked by hand: mean 0.2, se 0.3, df inf, bound 1: max(sf(4), sf(2.667)) =
    0.0038."""
    if not (finite(mean) and finite(se) and finite(bound)) or not df > 0 or bound <= 0:
        return math.nan
    if se <= 1e-12:
        return 0.0 if abs(mean) < bound else 1.0
    return max(_t_sf((mean + bound) / se, df), _t_sf((bound - mean) / se, df))


def seed_image_test(seed_diffs: dict[int, float], boot: Bootstrap | None,
                    boot_seeds: int = 0, mcnemar: Iterable[tuple[int, int, int, float]] = (),
                    null: float = 0.0, confidence: float = 0.95) -> dict[str, Any]:
    """One comparison, as flat columns for a table.

    seed_diffs: {seed: difference} (A - B on that seed); boot: the image bootstrap of the seed-averaged
    difference (``paired_bootstrap`` or ``class_group_bootstrap``) over ``boot_seeds`` seeds, or None;
    mcnemar: (seed, n01, n10, p) per seed.

    Columns: the seed t-test alone (``diff_ci``, ``p_seed``), the image bootstrap alone (``boot_lo``/``boot_hi``,
    ``boot_p``, ``boot_se``), and both sources together (``both_sources``): ``se_both``, ``df_both``, the
    ``confidence`` interval ``ci_lo``/``ci_hi``, the 1 - 2 ALPHA (90%) interval ``ci90_lo``/``ci90_hi`` (equivalence), and
    ``p_both``, the two-sided p of ``null``, which the verdicts use. With fewer than MIN_SEEDS seeds there is
    no interval and no p-value (NaN): the per-seed differences stand alone; without a bootstrap (no stored
    logits) the both-sources columns are NaN."""
    seeds = sorted(s for s, v in seed_diffs.items() if np.isfinite(v))
    values = [seed_diffs[s] for s in seeds]
    diff, half, p_seed = t_test(values, null, confidence)
    if len(seeds) < MIN_SEEDS:
        half, p_seed = math.nan, math.nan
    out: dict[str, Any] = {"paired_seeds": len(seeds), "diff": diff, "diff_ci": half, "p_seed": p_seed,
                           **{f"diff_seed{s}": float(seed_diffs[s]) for s in seeds},
                           "boot_seeds": boot_seeds if boot else 0, "boot_diff": math.nan, "boot_lo": math.nan,
                           "boot_hi": math.nan, "boot_p": math.nan, "boot_se": math.nan}
    if boot:
        out.update(zip(("boot_diff", "boot_lo", "boot_hi", "boot_p"), boot), boot_se=getattr(boot, "se", math.nan))
    for s, n01, n10, p in mcnemar:
        out.update({f"mcnemar_seed{s}_n01": n01, f"mcnemar_seed{s}_n10": n10, f"mcnemar_seed{s}_p": p})
    mean, se, df = both_sources(values, out["boot_se"]) if len(seeds) >= MIN_SEEDS else (diff, math.nan, math.nan)
    lo, hi = t_interval(mean, se, df, confidence)
    lo90, hi90 = t_interval(mean, se, df, 1 - 2 * ALPHA)  # inside +-bound exactly when tost(...) < ALPHA
    out.update(se_both=se, df_both=df, ci_lo=lo, ci_hi=hi, ci90_lo=lo90, ci90_hi=hi90, p_both=t_p(mean, se, df, null))
    return out


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaN entries are not part of the family
    and stay NaN. [0.01, 0.04, 0.03, 0.005] -> [0.03, 0.06, 0.06, 0.02]."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    running = 0.0
    for k, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def verdict(n_seeds: int, diff: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """'higher' / 'lower' when the corrected p_both is below alpha, 'inconclusive' otherwise; no verdict
    (NEEDS_SEEDS) with fewer than MIN_SEEDS seeds, UNTESTED when the image test could not be run (no logits)."""
    if n_seeds < MIN_SEEDS:
        return NEEDS_SEEDS
    if p_adjusted is None or not np.isfinite(p_adjusted):
        return UNTESTED
    if p_adjusted < alpha:
        return "higher" if diff > 0 else "lower"
    return INCONCLUSIVE


def family_verdicts(rows: list[dict[str, Any]], alpha: float = ALPHA) -> None:
    """Holm over one family of comparisons (``seed_image_test`` rows, changed in place): rows with at least
    MIN_SEEDS seeds and a finite p_both are the family; every row gets ``p_holm`` and ``verdict``."""
    eligible = [r for r in rows if r["paired_seeds"] >= MIN_SEEDS and np.isfinite(r["p_both"])]
    for r, p in zip(eligible, holm([r["p_both"] for r in eligible])):
        r["p_holm"] = float(p)
    for r in rows:
        r.setdefault("p_holm", math.nan)
        r["verdict"] = verdict(r["paired_seeds"], r["diff"], r["p_holm"], alpha)


def min_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true mean difference the two-sided one-sample t-test (n - 1 df) detects with the given
    power, for per-seed differences with standard deviation ``sd`` (exact, from the noncentral t).
    For large n it approaches (z_{1-alpha/2} + z_power) * sd / sqrt(n). NaN for n < 2 or an unknown sd."""
    if n < 2 or sd is None or not np.isfinite(sd):
        return math.nan
    return float(sd) * _unit_mde(int(n), float(alpha), float(power))


@functools.lru_cache(maxsize=256)
def _unit_mde(n: int, alpha: float, power: float) -> float:
    """``min_detectable_effect`` for sd = 1 (it scales linearly with sd)."""
    df = n - 1
    crit = float(_st.t.ppf(1 - alpha / 2, df))

    def shortfall(delta: float) -> float:
        return _t_power(delta * math.sqrt(n), df, crit) - power

    hi = 1.0
    while shortfall(hi) < 0 and hi < 1e6:
        hi *= 2
    return float(_opt.brentq(shortfall, 0.0, hi, xtol=1e-10))


def t_test_power(delta: float, n: int, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided one-sample t-test (n - 1 df) at a true mean of ``delta`` SDs."""
    return _t_power(delta * math.sqrt(n), n - 1, float(_st.t.ppf(1 - alpha / 2, n - 1)))


def _t_power(nc: float, df: int, crit: float) -> float:
    """P(|T'| > crit) for a noncentral t with ``df`` degrees of freedom and noncentrality ``nc``, integrated
    over the chi-square of its denominator (scipy's ``nct`` returns NaN for large nc at 1 df)."""
    def integrand(v: float) -> float:
        s = math.sqrt(v / df)
        return float((_st.norm.sf(crit * s - nc) + _st.norm.cdf(-crit * s - nc)) * _st.chi2.pdf(v, df))

    lo, hi = _st.chi2.ppf(1e-12, df), _st.chi2.isf(1e-12, df)  # where the chi-square has its mass
    return float(_integrate.quad(integrand, lo, hi, limit=200)[0])


def pooled_sd(samples: Iterable[Sequence[float]]) -> tuple[float, int]:
    """Pooled standard deviation of several samples (each around its own mean) and its degrees of freedom."""
    ss, df = 0.0, 0
    for s in samples:
        v = _finite_values(s)
        if v.size >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            df += v.size - 1
    return (math.sqrt(ss / df), df) if df else (math.nan, 0)



def fmt_pm(mean: float, half: float, scale: float = 100.0, digits: int = 1, n: int | None = None) -> str:
    """'93.4 ± 0.6' (percent by default); 'n=1, no CI' style when the half-width is undefined. A half-width
    that rounds to zero is never printed as '± 0.0': exactly 0 (tied seeds) says so, a tiny one gets digits."""
    if mean is None or not np.isfinite(mean):
        return "–"
    m = f"{mean * scale:.{digits}f}"
    if half is None or not np.isfinite(half):
        return f"{m} (n=1, no CI)" if n == 1 else m
    if half * scale >= 0.5 * 10 ** -digits:
        return f"{m} ± {half * scale:.{digits}f}"
    if half <= 1e-12:
        return f"{m} (seeds tied)"
    return f"{m} ± {half * scale:.1g}"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"
