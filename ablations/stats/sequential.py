"""Adaptive seeds (``--until-decided``): which comparisons still need seeds, and verdicts that stay valid however
the number of seeds was chosen. Pure functions of numbers; no Ray, no training, no files.

The procedure (``MixtureT``, the default)
========================================
**An anytime-valid t-test on the per-seed paired differences** (the scale-invariant Gaussian-mixture e-process:
Grünwald, de Heide & Koolen, "Safe testing", JRSS-B 2024; Pérez-Ortiz, Lardy, de Heide & Grünwald, "E-statistics,
group invariance and anytime-valid testing", Ann. Statist. 2024; Wang & Ramdas, "Anytime-valid t-tests and
confidence sequences for Gaussian means with unknown variance", Sequential Analysis 2025).

*Model.* The differences d_1, d_2, ... of two configs trained with seeds 0, 1, 2, ... (in seed order) are i.i.d.
N(mu, sigma^2), sigma unknown: each seed is an independent draw of the training randomness, and the difference
of two accuracies over thousands of images is close to Gaussian.

*E-values.* For a null value c (0, or a claim's margin) let y_i = d_i - c and r_n = sum(y) / sqrt(sum(y^2)), a
function of the t-statistic alone (r^2 = n t^2 / (t^2 + n - 1)). The Bayes factor of the standardised effect
delta = (mu - c) / sigma against delta = 0, with the right-Haar prior d sigma / sigma on the scale (the same under
both, so the scale cancels) and a half-normal prior on delta (2 N(0, g) restricted to delta > 0 for "higher",
to delta < 0 for "lower"), has the closed form

    E_n^+ = 2 F_n(+k) B_n,  E_n^- = 2 F_n(-k) B_n,  B_n = (1 + n g)^(-1/2) lambda^(-n/2),
    lambda = (1 + n g - g r^2) / (1 + n g),  k = r sqrt(n g / ((1 + n g) lambda)),

F_n the Student t distribution function with n degrees of freedom (``log_e_values``; B_n is the two-sided
mixture of Rouder et al. 2009 at fixed g; E_1^{+-} = 2 F_1(+-sqrt g)). It is the likelihood ratio of the data's
maximal scale invariant, so under mu = c it is a nonnegative martingale with mean 1 in the filtration of that
invariant, whatever sigma is. g = ``PRIOR_G`` = 4 (prior SD of delta: 2 seed SDs) was fixed from simulation
before any study (``ablations.stats.simulation``), as a compromise between decisions at 4 seeds for large effects
and power at 10 seeds for effects of one seed SD.

*Guarantee.* By Ville's inequality, for every sigma: P(E_n^+(c) >= 1/a for some n >= 1) <= a when mu <= c
(E^+ grows with r, and r falls as the null value rises, so a smaller mu only lowers E^+(c)), and likewise for E^-
when mu >= c. The anytime-valid p-values p^+ = min(1, 1 / max_{n <= N} E_n^+(c_hi)) and p^- likewise at
c_lo, after N seeds, are therefore valid for *any* N: chosen by the validation decision rule, by the budget, by
other comparisons that share a config, or even by looking at these same numbers (the event is contained in "the
e-process ever crosses", which does not depend on how N was chosen), and with no horizon: a later run may add
seeds beyond the cap. The running intersection of the intervals it does not reject is a (1 - alpha) confidence
sequence for mu (``confidence_sequence``).

The alternative (``RepeatedT``): a horizon buys power
====================================================
When the cap is fixed before the run and never exceeded, a repeated t-test is exact and markedly stronger: at
every look n (from ``first_look`` to the horizon = the cap) the one-sided fixed t-test p; the statistic is their
running minimum and its p-value is calibrated on simulated null paths, exact because the path of t-statistics
has the same distribution for every sigma (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 11).
Same guarantee for every N <= horizon (the event is contained in "some look of the full path crosses"); none
beyond. At 10 seeds with one comparison it needs |t| >= 3.15 against the mixture's 3.97 (a fixed single look:
2.26). ``ablations.stats.simulation`` measures both.

*Decisions.* "higher" rejects mu <= margin (p^+ at c_hi = margin, 0 for an axis arm); "lower" rejects mu >= 0 (p^-
at c_lo = 0); neither: "open". **Multiple comparisons: Holm's step-down method over the 2K one-sided hypotheses
of all K comparisons of the family** (by default every claim and every axis arm of the study): Holm is valid under
any dependence, here from shared reference configs and from the random numbers of seeds, because each p is valid
on its own; for the mixture its first step is Bonferroni on the e-values (reject when E >= 2K / alpha). Every wrong call (a
"higher" where mu <= margin, a "lower" where mu >= 0) is a false rejection of one of those hypotheses, so
P(any wrong call in the family) <= alpha: family-wise error, directional errors included.

*Test images.* The report calls a difference only when it holds across seeds AND test images: the verdict
uses p_both = max(p_seed, p_image), as ``ablations.stats`` does, with p_image the paired image bootstrap of the
seed-averaged difference at the final N (``image_p_from``). This keeps the guarantee: p_both >= p_seed, so Holm on
p_both controls the seed-level error exactly as above, and the image condition can only remove calls. The image
test itself needs no anytime correction because the stopping never sees a test image: seeds are added on
validation accuracy only, so given the trained models (and hence N) the test images are still an independent
sample, as in a fixed design.

Validation decides, test reports
================================
``decide`` applies the procedure to validation accuracies; ``plan_round`` turns its open comparisons into the next
round's seeds. ``verdicts`` applies it to the test differences (what the report shows). Test numbers never enter
``decide`` or ``plan_round``. That the two splits come from the same models is harmless: the guarantee above holds
for any N, including one chosen from correlated validation numbers.

How the driver calls it
=======================
    comparisons = comparisons_from_plan(plan)                     # claims and axis arms (ablations.plan.compared)
    print(worst_case(comparisons, planned_seeds, N, cost).line())  # --dry-run: every compared config at N seeds
    ... run the planned seeds ...
    k = 0
    while True:                                                   # one adaptive round per pass
        rp = plan_round(StudyState(val=val_series(), comparisons=comparisons, max_seeds=N, tried=tried_seeds(),
                                   budget_hours=B, spent_hours=spent(), cost_hours=cost, round=k))
        print(rp.line())                                          # progress: round, verdicts still open
        if rp.stop_reason:
            break
        run_trials(rp.add_seeds); k += 1                          # ordinary (config, seed) trials
    rows = verdicts(test_diffs(), comparisons, image_p(), max_seeds=N, stop_reason=rp.stop_reason,
                    val_decided=rp.decided)                       # the report; method text: method_lines(...)

``val_series()`` gives {series: {seed: validation accuracy}} of finished trials (a config in a TTA mode, or a
class claim's per-seed recall difference: the caller's keys), ``tried_seeds()`` {config: seeds started},
``test_diffs()`` {comparison id: {seed: test difference}}. ``plan_round`` is a pure function of what has finished:
a resumed driver rebuilds the state from its trials and gets the same plan (and with running extrema and Holm
monotone in every p, a comparison once decided stays decided as seeds are added). Pass the same ``procedure`` to
``StudyState``, ``verdicts`` and ``method_lines``: ``MixtureT()`` (default) or ``RepeatedT(horizon=N,
first_look=planned seeds)``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Hashable, Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize as _opt
from scipy import stats as _st

from pipeline.errors import ConfigError

from ablations import stats as S

ALPHA = S.ALPHA
PRIOR_G = 4.0  # variance of the standardised effect under the alternative's prior (its SD: 2 seed SDs)
HIGHER, LOWER, OPEN = "higher", "lower", "open"
NULL_PATHS = 200_000  # simulated null paths that calibrate RepeatedT


# ============================================================================ the two procedures


def finite_values(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _prefix(d, null: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every prefix of the last axis (n = 1..L seeds): n, sum of y = d - null and sum of y^2."""
    y = np.asarray(d, dtype=np.float64) - null
    return np.arange(1, y.shape[-1] + 1, dtype=np.float64), np.cumsum(y, -1), np.cumsum(y * y, -1)


def log_e_values(n, r, g: float = PRIOR_G):
    """log E^+ and log E^- of the mixture e-process (module docstring) for n seeds and r = sum(y) / sqrt(sum(y^2));
    numpy arrays broadcast. n = 0 gives 0 (E = 1, no evidence)."""
    n = np.asarray(n, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    r2 = np.minimum(r * r, n)
    ng = n * g
    lam = (1.0 + ng - g * r2) / (1.0 + ng)
    log_b = -0.5 * np.log1p(ng) - 0.5 * n * np.log(lam)
    k = r * np.sqrt(ng / ((1.0 + ng) * lam))
    df = np.maximum(n, 1.0)
    up = log_b + math.log(2.0) + _st.t.logcdf(k, df)
    down = log_b + math.log(2.0) + _st.t.logcdf(-k, df)
    empty = n < 1
    return np.where(empty, 0.0, up), np.where(empty, 0.0, down)


def _r(sum_y, sum_yy):
    return np.where(sum_yy > 0, sum_y / np.sqrt(np.where(sum_yy > 0, sum_yy, 1.0)), 0.0)


def e_values(diffs, null: float = 0.0, g: float = PRIOR_G) -> tuple[float, float]:
    """(E^+, E^-) of per-seed differences against ``null`` after all of them: evidence that the mean is above /
    below it (the mixture e-process at the last seed, not its running maximum)."""
    n, sy, syy = _prefix(finite_values(diffs), null)
    if not n.size:
        return 1.0, 1.0
    up, down = log_e_values(n[-1], _r(sy[-1], syy[-1]), g)
    return float(np.exp(up)), float(np.exp(down))


@dataclass(frozen=True)
class MixtureT:
    """The anytime-valid t-test: the scale-invariant Gaussian-mixture e-process (module docstring). No horizon:
    valid at every number of seeds, including beyond any cap a run declared."""

    g: float = PRIOR_G
    horizon: float = math.inf
    name: str = "anytime-valid t-test (scale-invariant Gaussian-mixture e-process)"

    def look_p(self, d, null: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Anytime-valid (p^+, p^-) after each prefix n = 1..L of the last axis (seeds in seed order):
        min(1, 1 / the running maximum of E^+ / E^- over the looks so far). Vectorised over leading axes."""
        n, sy, syy = _prefix(d, null)
        up, down = log_e_values(n, _r(sy, syy), self.g)
        return (np.minimum(1.0, np.exp(-np.maximum.accumulate(up, -1))),
                np.minimum(1.0, np.exp(-np.maximum.accumulate(down, -1))))

    def critical_t(self, n: int, level: float) -> float:
        """The one-sided t a look at n seeds needs for p <= level; inf when n seeds cannot reach it."""
        return _mixture_critical_t(int(n), float(level), float(self.g))

    def describe(self) -> str:
        return (f"the {self.name} (Grünwald, de Heide & Koolen, *Safe testing*, JRSS-B 2024; Pérez-Ortiz et al., "
                "*E-statistics, group invariance and anytime-valid testing*, Ann. Statist. 2024; Wang & Ramdas, "
                "*Anytime-valid t-tests and confidence sequences for Gaussian means with unknown variance*). Its "
                "e-values are Bayes factors of the standardised effect with the right-Haar prior on the seed SD and a "
                f"half-normal prior of variance g = {self.g:g} on the effect, one per direction; under the null each "
                "is a nonnegative martingale, so by Ville's inequality it ever exceeds 1/a with probability at most "
                "a, at any number of seeds, without a horizon. p = 1 / (its largest value so far)")


@functools.lru_cache(maxsize=1024)
def _mixture_critical_t(n: int, level: float, g: float) -> float:
    top = math.sqrt(n)

    def gap(r: float) -> float:
        return float(log_e_values(n, r, g)[0]) + math.log(level)

    if n < 2 or gap(top) < 0:
        return math.inf
    r = float(_opt.brentq(gap, 0.0, top, xtol=1e-12))  # > 0: at r = 0, E^+ < 1
    return math.sqrt((n - 1) * r * r / (n - r * r))


@functools.lru_cache(maxsize=16)
def _null_minima(horizon: int, first_look: int, paths: int, seed: int) -> np.ndarray:
    """Sorted minima, over the looks first_look..horizon, of the one-sided t-test p-values of Gaussian null paths
    (their distribution does not depend on the mean or SD, and is the same for the lower side by symmetry: the
    calibration of RepeatedT)."""
    rng = np.random.default_rng(seed)
    out = []
    for size in np.diff(np.r_[0:paths:50_000, paths]):
        out.append(_running_t_min(rng.standard_normal((size, horizon)), 0.0, first_look, lower=False)[0][:, -1])
    return np.sort(np.concatenate(out))


def _running_t_min(d, null: float, first_look: int, lower: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The running minimum over the looks first_look..n of the one-sided fixed t-test p-values (upper, lower; lower
    None when not wanted), after every prefix n; 1 before the first look."""
    n, sy, syy = _prefix(d, null)
    mean = sy / n
    var = np.maximum(syy - n * mean * mean, 0.0) / np.maximum(n - 1, 1.0)
    se = np.sqrt(var / n)
    tied = np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0))  # seeds that agree exactly
    t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), tied)
    df = np.maximum(n - 1, 1.0)
    look = n >= max(first_look, 2)
    up = np.minimum.accumulate(np.where(look, _st.t.sf(t, df), 1.0), -1)
    return up, (np.minimum.accumulate(np.where(look, _st.t.cdf(t, df), 1.0), -1) if lower else None)


@dataclass(frozen=True)
class RepeatedT:
    """A repeated t-test with a horizon (Armitage, McPherson & Rowe 1969; exact for unknown variance as in
    Jennison & Turnbull, *Group Sequential Methods*, 2000, ch. 11): at every look n in first_look..horizon, the
    one-sided fixed t-test p; the statistic is their running minimum, and its p-value the share of simulated null
    paths (``NULL_PATHS``, fixed seed) whose minimum over all the looks is at least as small. The path of
    t-statistics has the same distribution for every seed SD, so the calibration is exact up to Monte Carlo error
    (relative SE about 4% at p = 0.0025). Valid for any stopping at or below the horizon; not beyond it."""

    horizon: int
    first_look: int = 3
    paths: int = NULL_PATHS
    seed: int = 0
    name: str = "repeated t-test with a horizon (exact Pocock-type boundary on the t-statistics)"

    def _null(self) -> np.ndarray:
        return _null_minima(int(self.horizon), int(self.first_look), int(self.paths), int(self.seed))

    def look_p(self, d, null: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(p^+, p^-) after each prefix n = 1..L (L <= horizon) of the last axis, vectorised over leading axes."""
        if np.shape(d)[-1] > self.horizon:
            raise ValueError(f"{np.shape(d)[-1]} seeds exceed the horizon {self.horizon} of this repeated t-test; "
                             "its guarantee stops there (use MixtureT, which has no horizon)")
        ref = self._null()

        def calibrated(m: np.ndarray) -> np.ndarray:
            return np.where(m < 1.0, (1.0 + np.searchsorted(ref, m, side="right")) / (ref.size + 1.0), 1.0)

        up, down = _running_t_min(d, null, self.first_look)
        return calibrated(up), calibrated(down)

    def critical_t(self, n: int, level: float) -> float:
        """The one-sided t a look at n seeds needs for p <= level (the same nominal level at every look)."""
        if n < max(self.first_look, 2) or n > self.horizon:
            return math.inf
        return _repeated_critical_t(int(n), float(level), int(self.horizon), int(self.first_look), int(self.paths),
                                    int(self.seed))

    def describe(self) -> str:
        return (f"the {self.name}, looks at {self.first_look} to {self.horizon} seeds (Armitage, McPherson & Rowe "
                "1969; exact unknown-variance calibration as in Jennison & Turnbull 2000, ch. 11): the running "
                "minimum of the one-sided fixed t-test p-values, calibrated on "
                f"{self.paths:,} simulated null paths, whose distribution is the same for every seed SD. Valid for "
                "any stopping at or below the horizon, not beyond it. p = the calibrated minimum")


@functools.lru_cache(maxsize=1024)
def _repeated_critical_t(n: int, level: float, horizon: int, first_look: int, paths: int, seed: int) -> float:
    ref = _null_minima(horizon, first_look, paths, seed)
    j = math.floor(level * (ref.size + 1)) - 1  # p <= level <=> at most j null minima <= the observed one
    return float(_st.t.isf(ref[min(j, ref.size - 1)], n - 1)) if j >= 0 else math.inf


Procedure = MixtureT | RepeatedT


def p_values(diffs, higher_null: float = 0.0, lower_null: float = 0.0,
             procedure: Procedure = MixtureT()) -> tuple[float, float]:
    """Anytime-valid one-sided p-values of per-seed differences in seed order: p^+ of mu <= higher_null, p^- of
    mu >= lower_null, after all of them."""
    v = finite_values(diffs)
    if not v.size:
        return 1.0, 1.0
    return float(procedure.look_p(v, higher_null)[0][-1]), float(procedure.look_p(v, lower_null)[1][-1])


def confidence_sequence(diffs, alpha: float = ALPHA, procedure: Procedure = MixtureT()) -> tuple[float, float]:
    """(lo, hi): the running intersection over the looks of the means that neither one-sided test rejects at
    alpha/2, a (1 - alpha) confidence sequence (it covers mu at every look at once with probability >= 1 - alpha);
    infinite ends while no look can exclude anything. Not corrected for multiplicity."""
    v = finite_values(diffs)
    _, sy, syy = _prefix(v, 0.0)
    lo, hi = -math.inf, math.inf
    for k in range(2, v.size + 1):
        crit = procedure.critical_t(k, alpha / 2)
        if np.isfinite(crit):
            mean = sy[k - 1] / k
            half = crit * math.sqrt(max(syy[k - 1] - k * mean * mean, 0.0) / (k - 1) / k)
            lo, hi = max(lo, mean - half), min(hi, mean + half)
    return lo, hi


def holm_directional(p_higher, p_lower) -> tuple[np.ndarray, np.ndarray]:
    """Holm over the 2K one-sided hypotheses (NaN entries are not in the family): adjusted (p^+, p^-)."""
    p_hi = np.asarray(p_higher, dtype=np.float64).ravel()
    adj = S.holm(np.concatenate([p_hi, np.asarray(p_lower, dtype=np.float64).ravel()]))
    return adj[:p_hi.size], adj[p_hi.size:]


# ============================================================================ comparisons


@dataclass(frozen=True)
class Comparison:
    """One difference, better minus worse, per seed, between two series of per-seed values. ``id``, ``better`` and
    ``worse`` are keys of the caller's (hashable values: ``ablations.plan.compared`` gives typed ones); ``worse``
    None: ``better`` already holds per-seed differences (a class-group claim). ``margin`` is in the values' units
    (accuracy fractions: a claim's pp / 100): "higher" means beyond it, "lower" means below 0. ``configs``: the
    trained configs that give it seeds (default: the series themselves)."""

    id: Hashable
    better: Hashable
    worse: Hashable | None = None
    margin: float = 0.0
    configs: tuple[Hashable, ...] = ()
    kind: str = "axis"  # 'axis' or 'claim'

    def trained(self) -> tuple[Hashable, ...]:
        return self.configs or tuple(s for s in (self.better, self.worse) if s is not None)


def paired(series: Mapping[str, Mapping[int, float]], c: Comparison) -> dict[int, float] | None:
    """Per-seed differences of one comparison on the seeds where both sides are finite, in seed order; None when a
    side has no series at all (not measured)."""
    if c.better not in series or (c.worse is not None and c.worse not in series):
        return None
    a, b = series[c.better], (series[c.worse] if c.worse is not None else None)
    out = {}
    for s in sorted(a):
        x = a[s] - (b.get(s, math.nan) if b is not None else 0.0)
        if S.finite(x):
            out[int(s)] = float(x)
    return out


@dataclass(frozen=True)
class Decision:
    """One comparison's call on one split: ``direction`` 'higher', 'lower' or 'open' after Holm over the family."""

    id: str
    n: int  # paired seeds
    diff: float  # their mean difference
    p_seed_higher: float  # anytime-valid p of the seeds: mu <= margin
    p_seed_lower: float  # mu >= 0
    p_higher: float  # what Holm sees: the seed p, or the larger of it and the image p where one is given
    p_lower: float
    p_adjusted: float  # Holm-adjusted, the smaller of the two directions (NaN: no paired seed)
    direction: str

    @property
    def decided(self) -> bool:
        return self.direction != OPEN

    @property
    def points_up(self) -> bool:
        """The direction the data point to: the called one, else the side with the smaller p."""
        return self.direction == HIGHER or (self.direction == OPEN and self.p_higher <= self.p_lower)


def _family(diffs: Mapping[str, Mapping[int, float] | None], comparisons: Sequence[Comparison],
            extra_p: Mapping[str, tuple[float, float]] | None, alpha: float, procedure: Procedure) -> list[Decision]:
    """The procedure on a family: per comparison its one-sided p-values on the seeds (in seed order), the larger of
    each and ``extra_p`` (the image test) where given, and Holm over all one-sided hypotheses of the comparisons
    that have at least one paired seed."""
    rows = []
    for c in comparisons:
        d = diffs.get(c.id) or {}
        vals = [d[s] for s in sorted(d)]
        if not vals:  # not measured, or no paired seed: not in the family
            rows.append((c, 0, math.nan, math.nan, math.nan, math.nan, math.nan))
            continue
        seed_hi, seed_lo = p_values(vals, c.margin, 0.0, procedure)
        p_hi, p_lo = seed_hi, seed_lo
        if extra_p is not None and c.id in extra_p:
            x_hi, x_lo = extra_p[c.id]
            p_hi, p_lo = _worse(p_hi, x_hi), _worse(p_lo, x_lo)
        rows.append((c, len(vals), float(np.mean(vals)), seed_hi, seed_lo, p_hi, p_lo))
    adj_hi, adj_lo = holm_directional([r[5] for r in rows], [r[6] for r in rows])
    out = []
    for (c, n, diff, seed_hi, seed_lo, p_hi, p_lo), a_hi, a_lo in zip(rows, adj_hi, adj_lo):
        p_adj = float(min(a_hi, a_lo)) if n else math.nan
        direction = (HIGHER if a_hi <= a_lo else LOWER) if p_adj <= alpha else OPEN
        out.append(Decision(c.id, n, diff, seed_hi, seed_lo, p_hi, p_lo, p_adj, direction))
    return out


def _worse(p: float, other: float) -> float:
    """The intersection-union p: the larger of two p-values; a missing (NaN) one counts as 1 (no call)."""
    return max(p, other if S.finite(other) else 1.0)


def decide(series: Mapping[str, Mapping[int, float]], comparisons: Sequence[Comparison], alpha: float = ALPHA,
           procedure: Procedure = MixtureT()) -> list[Decision]:
    """The validation decision: per-series per-seed **validation** accuracies -> a Decision per comparison (in
    order). One family: Holm over every measured comparison. Never pass test numbers here."""
    return _family({c.id: paired(series, c) for c in comparisons}, comparisons, None, alpha, procedure)


# ============================================================================ reported verdicts


@dataclass(frozen=True)
class Verdict:
    """What the report shows for one comparison, on test."""

    id: str
    n: int  # paired seeds used
    diff: float  # mean over seeds
    cs_lo: float  # the (1 - alpha) confidence sequence after n seeds (not corrected for multiplicity)
    cs_hi: float
    p_seed: float  # anytime-valid p of the seeds in the direction the data point to
    p_image: float  # the image bootstrap's p in that direction, NaN when not given
    p_holm: float
    verdict: str  # 'higher', 'lower' or 'open'
    status: str  # see ``status``

    def row(self) -> dict:
        return dict(self.__dict__)


def status(verdict: str, n: int, max_seeds: int, stop_reason: str | None = None,
           decided_on_validation: bool = False) -> str:
    """'decided early' (a call with fewer than max_seeds seeds), 'decided at the cap', 'open at the cap', 'open at
    the budget' (the budget stopped it below the cap), 'open on test, decided on validation' (validation stopped
    its seeds), else 'open' (the run has not finished adding seeds)."""
    if verdict != OPEN:
        return "decided early" if n < max_seeds else "decided at the cap"
    if n >= max_seeds:
        return "open at the cap"
    if decided_on_validation:
        return "open on test, decided on validation"
    return "open at the budget" if stop_reason == "budget" else OPEN


def verdicts(diffs: Mapping[str, Mapping[int, float]], comparisons: Sequence[Comparison],
             image_p: Mapping[str, tuple[float, float]] | None = None, *, max_seeds: int,
             stop_reason: str | None = None, val_decided: Collection[str] = (), alpha: float = ALPHA,
             procedure: Procedure = MixtureT()) -> list[Verdict]:
    """The reported verdicts: ``diffs`` = {comparison id: {seed: test difference}} (all the seeds the run has for
    both sides); ``image_p`` = {comparison id: (p higher, p lower)} of the image bootstrap at those seeds
    (``image_p_from``), the necessary second condition (a comparison without one is judged on seeds alone and
    shows p_image NaN). Holm over the whole list: pass the family the run planned on."""
    out = []
    for c, d in zip(comparisons, _family(diffs, comparisons, image_p, alpha, procedure)):
        vals = diffs.get(c.id) or {}
        lo, hi = confidence_sequence([vals[s] for s in sorted(vals)], alpha, procedure)
        img = (image_p or {}).get(c.id)
        up = d.points_up
        out.append(Verdict(c.id, d.n, d.diff, lo, hi, d.p_seed_higher if up else d.p_seed_lower,
                           img[0 if up else 1] if img else math.nan, d.p_adjusted, d.direction,
                           status(d.direction, d.n, max_seeds, stop_reason, c.id in val_decided)))
    return out


def image_p_from(boot: Callable[[float], tuple[float, float, float, float]], margin: float = 0.0) -> tuple[float, float]:
    """(p higher, p lower) of the image bootstrap for ``verdicts``: ``boot(null)`` returns (diff, lo, hi, p) as
    ``stats.paired_bootstrap`` / ``class_group_bootstrap`` do, e.g. ``lambda c: S.paired_bootstrap(a, b, null=c)``.
    "higher" tests against the margin, "lower" against 0; the side the difference is not on gets 1. A two-sided
    bootstrap p used for one side is conservative."""
    diff, _, _, p_hi = boot(margin)
    p_lo = p_hi if margin == 0 else boot(0.0)[3]
    return (p_hi if diff > margin else 1.0), (p_lo if diff < 0 else 1.0)


# ============================================================================ rounds


@dataclass(frozen=True)
class StudyState:
    """What the driver knows after a round has finished (every trial it started has ended: a resumed driver first
    finishes the trials of the round it was in, then plans the next).

    val: {series: {seed: validation accuracy}} (NaN or absent for a failed trial); tried: {config: seeds started,
    failed ones included} (default: the seeds of its own series in ``val``); cost_hours: estimated cost of one
    config-seed, one number or per config, in the unit of ``budget_hours`` (e.g. wall hours at the run's
    concurrency); spent_hours: what the run has used of the budget so far; procedure: MixtureT (default, no horizon)
    or RepeatedT(horizon >= max_seeds)."""

    val: Mapping[str, Mapping[int, float]]
    comparisons: Sequence[Comparison]
    max_seeds: int
    tried: Mapping[str, Collection[int]] = field(default_factory=dict)
    budget_hours: float = math.inf
    spent_hours: float = 0.0
    cost_hours: float | Mapping[str, float] = 0.0
    round: int = 0
    alpha: float = ALPHA
    procedure: Procedure = MixtureT()

    def seeds_of(self, config: str) -> set[int]:
        return {int(s) for s in self.tried.get(config, ())} | {int(s) for s in self.val.get(config, {})}

    def cost_of(self, config: str) -> float:
        c = self.cost_hours
        return float(c.get(config, 0.0) if isinstance(c, Mapping) else c)


@dataclass(frozen=True)
class RoundPlan:
    """The next round. add_seeds: {config: seed} to train now (empty when the run stops); stop_reason None (run
    add_seeds, then call plan_round again), 'decided' (no measured comparison open), 'max_seeds' (the open ones
    are at the cap) or 'budget' (open ones under the cap do not fit the budget)."""

    round: int
    add_seeds: dict[str, int]
    decided: list[str]
    open: list[str]  # open and getting seeds this round
    at_cap: list[str]  # open, no seed left under max_seeds
    deferred: list[str]  # open, under the cap, left out for the budget
    unmeasured: list[str]  # no validation series: they drive no seeds
    decisions: list[Decision]
    cost_hours: float
    stop_reason: str | None

    def line(self) -> str:
        """The progress line: round, verdicts still open, what is added."""
        n_open = len(self.open) + len(self.at_cap) + len(self.deferred)
        measured = n_open + len(self.decided)
        head = f"round {self.round}: {n_open} of {measured} verdicts open on validation"
        extra = [f"{len(x)} {w}" for x, w in ((self.at_cap, "at the cap"), (self.deferred, "over the budget")) if x]
        head += f" ({', '.join(extra)})" if extra else ""
        if self.stop_reason:
            return f"{head}; stop: {self.stop_reason}"
        return f"{head}; adding {len(self.add_seeds)} trials (~{self.cost_hours:.2f} h)"


def rounds_done(tried: Mapping[str, Collection[int]], planned: Mapping[str, int]) -> int:
    """The adaptive rounds a run has started, from its trials (for the progress line of a resumed run): the most
    seeds any config has beyond its planned ones. Every round advances the comparisons open in all earlier rounds,
    so this is exact unless a budget deferred comparisons."""
    return max((len(set(s)) - planned.get(k, 0) for k, s in tried.items()), default=0)


def next_pair_seed(state: StudyState, c: Comparison) -> int:
    """The smallest seed not yet tried by every config of the comparison (its next paired seed)."""
    common = set.intersection(*(state.seeds_of(k) for k in c.trained()))
    return next(s for s in range(len(common) + 1) if s not in common)


def plan_round(state: StudyState) -> RoundPlan:
    """Decide on validation, then give every open comparison its next paired seed: the configs of the comparison
    that lack it get it (both the arm and its reference, unless one already has it from another comparison). A
    comparison whose next seed would be >= max_seeds is at the cap. Under a budget, open comparisons are taken in
    order of their Holm-adjusted validation p (closest to a decision first) while the round's cost fits in
    budget_hours - spent_hours; the rest are deferred. Pure: the same state gives the same plan."""
    if state.max_seeds > state.procedure.horizon:
        raise ValueError(f"max_seeds {state.max_seeds} is beyond the horizon {state.procedure.horizon} of the "
                         f"{state.procedure.name}")
    decisions = decide(state.val, state.comparisons, state.alpha, state.procedure)
    decided, at_cap, unmeasured, wanting = [], [], [], []
    for c, d in zip(state.comparisons, decisions):
        if paired(state.val, c) is None:
            unmeasured.append(c.id)
        elif d.decided:
            decided.append(c.id)
        else:
            s = next_pair_seed(state, c)
            need = {k: s for k in c.trained() if s not in state.seeds_of(k)}
            (at_cap if s >= state.max_seeds else wanting).append((d, c.id, need))
    wanting.sort(key=lambda w: (w[0].p_adjusted if S.finite(w[0].p_adjusted) else 1.0, w[0].n, w[1]))
    left = state.budget_hours - state.spent_hours
    add: dict[str, int] = {}
    cost, opened, deferred = 0.0, [], []
    for _, cid, need in wanting:
        new = {k: s for k, s in need.items() if k not in add}
        extra = sum(state.cost_of(k) for k in new)
        if cost + extra > left + 1e-12:
            deferred.append(cid)
            continue
        add.update(new)
        cost += extra
        opened.append(cid)
    stop = None
    if not add:
        stop = "budget" if deferred else ("max_seeds" if at_cap else "decided")
    return RoundPlan(state.round + 1, dict(sorted(add.items())), decided, opened, [w[1] for w in at_cap],
                     deferred, unmeasured, decisions, cost, stop)


@dataclass(frozen=True)
class WorstCase:
    """--dry-run: every config of a comparison at max_seeds (the others at their planned seeds)."""

    seeds: dict[str, int]
    max_seeds: int
    planned_trials: int
    trials: int
    hours: float  # of the added trials, at the given cost per config-seed

    @property
    def added_trials(self) -> int:
        return self.trials - self.planned_trials

    def line(self) -> str:
        return (f"--until-decided worst case: {self.trials} trials ({self.planned_trials} planned + "
                f"{self.added_trials} added, every compared config at {self.max_seeds} seeds)"
                + (f", about {self.hours:.1f} h more" if self.hours else ""))


def worst_case(comparisons: Iterable[Comparison], planned: Mapping[str, int], max_seeds: int,
               cost_hours: float | Mapping[str, float] = 0.0) -> WorstCase:
    """The most the adaptive rounds can add: planned = {config: planned seeds}."""
    compared = {k for c in comparisons for k in c.trained()}
    seeds = {k: (max(n, max_seeds) if k in compared else n) for k, n in planned.items()}
    seeds.update({k: max_seeds for k in compared - set(planned)})

    def cost(k: str) -> float:
        return float(cost_hours.get(k, 0.0) if isinstance(cost_hours, Mapping) else cost_hours)

    hours = sum((seeds[k] - planned.get(k, 0)) * cost(k) for k in seeds)
    return WorstCase(seeds, max_seeds, sum(planned.values()), sum(seeds.values()), hours)


# ============================================================================ method text


def method_lines(procedure: Procedure = MixtureT(), alpha: float = ALPHA, family: int = 1,
                 ns: Sequence[int] = (3, 4, 5, 6, 8, 10)) -> list[str]:
    """The report's method section for a run with ``--until-decided`` (markdown bullets); ``family``: the number of
    comparisons Holm runs over."""
    ns = [n for n in ns if n <= procedure.horizon]
    crit = [procedure.critical_t(n, alpha / (2 * family)) for n in ns]
    crit_txt = ", ".join(f"{n}: {c:.2f}" if np.isfinite(c) else f"{n}: none" for n, c in zip(ns, crit))
    fixed = ", ".join(f"{n}: {float(_st.t.ppf(1 - alpha / (2 * family), n - 1)):.2f}" for n in ns)
    return [
        "* **Adaptive seeds.** After the planned seeds, each round adds one seed to both configs of every comparison "
        "(claim or axis arm) still open **on validation accuracy**, until it is decided, a config reaches the cap "
        "(--max-seeds) or the budget is spent. Test numbers never choose anything.",
        f"* **Why the verdicts stay valid.** Per comparison, the per-seed paired differences (in seed order) are "
        f"modelled as i.i.d. Gaussian with unknown mean and SD, and tested with {procedure.describe()}, valid "
        "however the number of seeds was chosen: by the validation rule, the budget, or other comparisons sharing a "
        "config. One-sided hypotheses: \"higher\" (beyond the margin), \"lower\" (below 0).",
        f"* **Family**: Holm's step-down method over the two one-sided hypotheses of each of the {family} "
        "comparison(s), valid under any dependence between them: the chance of any wrong \"higher\" or \"lower\" "
        f"(directional errors included) is at most {alpha:g}.",
        "* **Test images**: a verdict also needs the paired image bootstrap of the seed-averaged difference at the "
        "final seeds (p = the larger of the two, then Holm). The image test needs no correction for looking: seeds "
        "were added on validation, so the test images are an independent sample given the trained models.",
        f"* **The price of looking** (seeds: |t| needed by the first Holm step): {crit_txt}; one fixed look at that "
        f"n would need {fixed}. Status per verdict, with the seeds it used: decided early (a call below the cap), "
        "decided at the cap, open at the cap, open at the budget, or open on test though decided on validation.",
    ]


# ============================================================================ the settings of --until-decided

DEFAULT_MAX_SEEDS = 10
TESTS = {"mixture": "mixture-t", "repeated-t": "repeated-t"}  # --sequential-test -> run.json's ``procedure``


@dataclass(frozen=True)
class Settings:
    """--until-decided [--max-seeds N] [--budget HOURS] [--sequential-test T], as run.json's ``adaptive`` keeps
    them. ``test``: 'mixture' (``sequential.MixtureT``, no horizon: valid at any number of seeds, a later run may
    add more) or 'repeated-t' (``sequential.RepeatedT`` with its horizon at the cap and its first look at
    ``first_look`` seeds: more power, no guarantee beyond the cap)."""

    max_seeds: int = DEFAULT_MAX_SEEDS
    budget_hours: float = math.inf
    test: str = "mixture"
    first_look: int = 3
    g: float = PRIOR_G
    alpha: float = ALPHA

    @property
    def procedure(self) -> Procedure:
        if self.test == "repeated-t":
            return RepeatedT(horizon=self.max_seeds, first_look=self.first_look)
        return MixtureT(g=self.g)

    @property
    def horizon(self) -> float:
        return self.procedure.horizon

    def check(self, planned: int, old: Mapping[str, Any] | None = None) -> None:
        """Bad input, one line: a cap not above the planned seeds, a budget that is not positive, and, in a folder
        whose rounds ran under other settings, another test, or another horizon of the repeated t-test (choosing
        either after seeing the data would void the guarantee; the mixture's cap may change)."""
        if self.max_seeds <= planned:
            raise ConfigError(f"--max-seeds {self.max_seeds} must be above the seeds the grid plans ({planned}); "
                              f"raise it, or lower --seeds")
        if not self.budget_hours > 0:
            raise ConfigError(f"--budget must be a positive number of hours, got {self.budget_hours:g}")
        if old:
            before = Settings.from_meta(old)
            if before.test != self.test:
                raise ConfigError(f"this run's seeds were added with --sequential-test {before.test}; continue with "
                                  f"it, or start another --name")
            if self.test == "repeated-t" and (before.max_seeds, before.first_look) != (self.max_seeds,
                                                                                          self.first_look):
                raise ConfigError(f"this run's repeated t-test looks at {before.first_look} to {before.max_seeds} "
                                  f"seeds, fixed when it started; continue with --max-seeds {before.max_seeds} and "
                                  f"the same --seeds, or start another --name")

    def meta(self) -> dict[str, Any]:
        out = {"procedure": TESTS[self.test], "alpha": self.alpha, "max_seeds": self.max_seeds,
               "budget_hours": None if math.isinf(self.budget_hours) else self.budget_hours}
        return {**out, "g": self.g} if self.test == "mixture" else {**out, "first_look": self.first_look}

    @classmethod
    def from_meta(cls, d: Mapping[str, Any]) -> "Settings":
        budget = d.get("budget_hours")
        test = next(k for k, v in TESTS.items() if v == d.get("procedure", TESTS["mixture"]))
        return cls(int(d["max_seeds"]), math.inf if budget is None else float(budget), test,
                   int(d.get("first_look", 3)), float(d.get("g", PRIOR_G)), float(d.get("alpha", ALPHA)))
