"""Small statistics for comparing trained models. Pure functions of numpy arrays; scipy where it has the function.

Two sources of uncertainty, and a difference is called higher or lower only when it holds against both:

* seeds (training randomness): ``t_test`` on the per-seed paired differences (n - 1 degrees of freedom), and
  ``mean_ci`` / ``paired_diff_ci`` for t-based confidence intervals over seeds;
* the test sample (which images happen to be in the test set): ``paired_bootstrap`` resamples test images of
  the seed-averaged difference, ``class_group_bootstrap`` does so within each class for a difference between
  groups of classes, and ``mcnemar_exact`` tests one seed's two models on the same images.

``seed_image_test`` puts them together: its ``p_both`` is the larger of the two p-values (an intersection-union
test: significant only when both are), ``holm`` corrects a family of them, and ``verdict`` reads the result.
``min_detectable_effect`` says how large a difference the seed test can detect at a given n and seed variance.

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


def _boot_summary(boot: np.ndarray, diff: float, confidence: float, null: float) -> tuple[float, float, float, float]:
    """(diff, lo, hi, p): percentile CI, and the two-sided p of ``null`` (share of replicates of the
    null-centred statistic at least as far from ``null`` as the observed one, (k + 1) / (n_boot + 1))."""
    alpha = 1 - confidence
    lo, hi = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    k = int(np.sum(np.abs(boot - diff) >= abs(diff - null) - 1e-12))
    return diff, lo, hi, min(float((k + 1) / (boot.size + 1)), 1.0)


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, seed: int = 0,
                     confidence: float = 0.95, null: float = 0.0) -> tuple[float, float, float, float]:
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
                          null: float = 0.0) -> tuple[float, float, float, float]:
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


def seed_image_test(seed_diffs: dict[int, float], boot: tuple[float, float, float, float] | None,
                    boot_seeds: int = 0, mcnemar: Iterable[tuple[int, int, int, float]] = (),
                    null: float = 0.0, confidence: float = 0.95) -> dict[str, Any]:
    """One comparison, as flat columns for a table.

    seed_diffs: {seed: difference} (A - B on that seed); boot: the image bootstrap of the seed-averaged
    difference (``paired_bootstrap`` or ``class_group_bootstrap``) over ``boot_seeds`` seeds, or None;
    mcnemar: (seed, n01, n10, p) per seed. ``p_both`` = max(p_seed, boot_p): the difference is significant
    only when the seed t-test and the image bootstrap both are (NaN when either is missing). With fewer than
    MIN_SEEDS seeds there is no t-interval and no seed p-value (NaN): the per-seed differences stand alone."""
    seeds = sorted(s for s, v in seed_diffs.items() if np.isfinite(v))
    diff, half, p_seed = t_test([seed_diffs[s] for s in seeds], null, confidence)
    if len(seeds) < MIN_SEEDS:
        half, p_seed = math.nan, math.nan
    out: dict[str, Any] = {"paired_seeds": len(seeds), "diff": diff, "diff_ci": half, "p_seed": p_seed,
                           **{f"diff_seed{s}": float(seed_diffs[s]) for s in seeds},
                           "boot_seeds": boot_seeds if boot else 0, "boot_diff": math.nan, "boot_lo": math.nan,
                           "boot_hi": math.nan, "boot_p": math.nan}
    if boot:
        out.update(zip(("boot_diff", "boot_lo", "boot_hi", "boot_p"), boot))
    for s, n01, n10, p in mcnemar:
        out.update({f"mcnemar_seed{s}_n01": n01, f"mcnemar_seed{s}_n10": n10, f"mcnemar_seed{s}_p": p})
    out["p_both"] = max(p_seed, out["boot_p"]) if np.isfinite(p_seed) and np.isfinite(out["boot_p"]) else math.nan
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
