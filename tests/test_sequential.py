"""Adaptive seeds (ablations.stats.sequential): the e-values against their defining integral, the calibration of the
repeated t-test, confidence sequences, Holm over one-sided hypotheses, the validation decision, the round planner
(both sides of a comparison, the cap, the budget, failed trials, resume), the reported verdicts and the
comparisons of a grid. No Ray, no training; simulations of the whole procedure: test_sequential_sim.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from ablations import stats as S
from ablations.stats import sequential as Q
from ablations.stats import simulation as M

ALPHA = Q.ALPHA
PATHS = 50_000  # null paths calibrating RepeatedT in these tests (the default is 200,000)


def _right_haar_bayes_factor(x, g: float, side: str) -> float:
    """The defining integral: marginal likelihood under delta ~ 2 N(0, g) on one side and sigma ~ d sigma / sigma,
    over that under delta = 0 with the same scale prior."""
    x = np.asarray(x, dtype=float)

    def lik(mu, sig):
        return float(np.prod(stats.norm.pdf(x, mu, sig)))

    def scale_marginal(delta):
        return integrate.quad(lambda s: lik(delta * s, s) / s, 0, np.inf, limit=200)[0]

    def prior(d):
        return 2 * stats.norm.pdf(d, 0, math.sqrt(g))

    lo, hi = (0, np.inf) if side == "up" else (-np.inf, 0)
    return integrate.quad(lambda d: prior(d) * scale_marginal(d), lo, hi, limit=100)[0] / scale_marginal(0.0)


def test_e_values_are_the_right_haar_bayes_factors():
    x = [0.3, 0.1, 0.5, -0.05, 0.2]
    up, down = Q.e_values(x, g=4.0)
    assert up == pytest.approx(_right_haar_bayes_factor(x, 4.0, "up"), rel=1e-6)
    assert down == pytest.approx(_right_haar_bayes_factor(x, 4.0, "down"), rel=1e-6)
    # one seed carries only its sign: E^+ = 2 F_1(sqrt g) for a positive one
    assert Q.e_values([0.7], g=4.0)[0] == pytest.approx(2 * stats.t.cdf(2.0, 1))
    # scale invariance: the seed SD cancels
    assert Q.e_values(np.asarray(x) * 37.0) == pytest.approx(Q.e_values(x))


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_mixture_e_value_has_mean_one_under_the_null(n):
    # E^+ depends on the data through t only; under the null t ~ t(n - 1): its expectation must be exactly 1
    def integrand(t):
        r = math.sqrt(n) * t / math.sqrt(t * t + n - 1)
        return float(np.exp(Q.log_e_values(n, r)[0])) * stats.t.pdf(t, n - 1)

    mean = integrate.quad(integrand, -np.inf, np.inf, limit=400)[0]
    assert mean == pytest.approx(1.0, abs=1e-6)


def test_repeated_t_with_one_look_is_the_fixed_t_test_and_is_calibrated_under_the_null():
    one_look = Q.RepeatedT(horizon=6, first_look=6, paths=PATHS)
    x = np.array([0.02, -0.015, 0.01, 0.04, -0.01, 0.015])
    t = x.mean() / (x.std(ddof=1) / math.sqrt(6))
    exact = stats.t.sf(t, 5)  # about 0.14: the calibration's Monte Carlo SE there is sqrt(p (1 - p) / paths)
    assert Q.p_values(x, procedure=one_look)[0] == pytest.approx(exact, abs=3 * M.binomial_se(exact, PATHS))
    assert one_look.critical_t(6, 0.025) == pytest.approx(stats.t.isf(0.025, 5), rel=0.02)
    # the full procedure on fresh null paths: P(p <= u) = u within simulation error, at every u
    proc = Q.RepeatedT(horizon=10, first_look=3, paths=PATHS)
    p_hi = proc.look_p(np.random.default_rng(11).standard_normal((20000, 10)))[0][:, -1]
    for u in (0.0125, 0.025, 0.05, 0.1):
        assert abs(float(np.mean(p_hi <= u)) - u) < 3 * M.binomial_se(u, 20000) + u * 0.03


def test_critical_t_confidence_sequence_and_p_values_agree():
    rng = np.random.default_rng(3)
    for proc in (Q.MixtureT(), Q.RepeatedT(10, 3, PATHS)):
        for _ in range(150):
            n = int(rng.integers(3, 11))
            x = rng.standard_normal(n) * 0.02 + rng.choice([0.0, 0.01, 0.03, -0.03])
            lo, hi = Q.confidence_sequence(x, ALPHA, proc)
            p_hi, p_lo = Q.p_values(x, procedure=proc)
            assert (lo > 0) == (p_hi <= ALPHA / 2) and (hi < 0) == (p_lo <= ALPHA / 2)
    # the mixture needs a larger t than the repeated t-test, which needs more than one fixed look
    for n in (4, 6, 10):
        fixed = stats.t.isf(ALPHA / 2, n - 1)
        assert Q.MixtureT().critical_t(n, ALPHA / 2) > Q.RepeatedT(10, 3, PATHS).critical_t(n, ALPHA / 2) > fixed
    assert Q.MixtureT().critical_t(3, ALPHA / 2) == math.inf  # 3 seeds cannot reach 40 with g = 4: 2 (1 + 3g) = 26


@pytest.mark.parametrize("proc", [Q.MixtureT(), Q.RepeatedT(10, 3, PATHS)], ids=["mixture", "repeated_t"])
def test_confidence_sequence_covers_at_every_look_at_once(proc):
    rng = np.random.default_rng(5)
    studies, mu = 1500, 0.02
    missed = 0
    for _ in range(studies):
        x = mu + 0.03 * rng.standard_normal(10)
        missed += any(not (lo <= mu <= hi) for lo, hi in (Q.confidence_sequence(x[:n], ALPHA, proc)
                                                        for n in range(2, 11)))
    assert missed / studies <= ALPHA + 3 * M.binomial_se(ALPHA, studies)


def test_holm_over_one_sided_hypotheses_by_hand():
    p_hi, p_lo = [0.001, 0.2, math.nan], [0.9, 0.004, math.nan]
    a_hi, a_lo = Q.holm_directional(p_hi, p_lo)
    # the literal step-down over the 4 finite p-values: k-th smallest times (m - k), running maximum
    flat = sorted((p, i) for i, p in enumerate(p_hi + p_lo) if not math.isnan(p))
    want, run = {}, 0.0
    for k, (p, i) in enumerate(flat):
        run = max(run, min(1.0, (len(flat) - k) * p))
        want[i] = run
    assert list(a_hi[:2]) == pytest.approx([want[0], want[1]]) and list(a_lo[:2]) == pytest.approx([want[3], want[4]])
    assert math.isnan(a_hi[2]) and math.isnan(a_lo[2])
    assert M.holm_rows(np.array([[0.001, 0.2, 0.9, 0.004]]))[0] == pytest.approx([want[0], want[1], want[3], want[4]])


# ----------------------------------------------------------------------------- decisions on validation


def _series(rng, base: float, n: int, sd: float) -> dict[int, float]:
    return {s: base + sd * float(rng.standard_normal()) for s in range(n)}


def test_decide_reads_margins_and_directions():
    rng = np.random.default_rng(0)
    ref = _series(rng, 0.80, 8, 0.01)
    arm = {s: v + 0.03 + 0.001 * float(rng.standard_normal()) for s, v in ref.items()}
    series = {"ref": ref, "arm": arm}
    comps = [Q.Comparison("plain", "arm", "ref"), Q.Comparison("margin1", "arm", "ref", margin=0.01),
             Q.Comparison("margin5", "arm", "ref", margin=0.05), Q.Comparison("reversed", "ref", "arm"),
             Q.Comparison("absent", "arm", "missing")]
    got = {d.id: d for d in Q.decide(series, comps)}
    assert [got[c].direction for c in ("plain", "margin1", "margin5", "reversed", "absent")] == \
        ["higher", "higher", "open", "lower", "open"]
    assert got["absent"].n == 0 and math.isnan(got["absent"].p_adjusted)
    # the same from the building blocks: one-sided p-values of the paired differences, Holm over the 8 measured
    diffs = [arm[s] - ref[s] for s in range(8)]
    ps = [Q.p_values(diffs, 0.0, 0.0), Q.p_values(diffs, 0.01, 0.0), Q.p_values(diffs, 0.05, 0.0),
          Q.p_values([-d for d in diffs], 0.0, 0.0)]
    a_hi, a_lo = Q.holm_directional([p[0] for p in ps], [p[1] for p in ps])
    for cid, h, lo in zip(("plain", "margin1", "margin5", "reversed"), a_hi, a_lo):
        assert got[cid].p_adjusted == pytest.approx(min(h, lo))


# ----------------------------------------------------------------------------- rounds


def _state(val, max_seeds=5, **kw) -> Q.StudyState:
    comps = [Q.Comparison("A", "A", "R"), Q.Comparison("B", "B", "R")]
    return Q.StudyState(val=val, comparisons=comps, max_seeds=max_seeds, **kw)


def _study(rng, seeds: int) -> dict[str, dict[int, float]]:
    """R the reference, A a clear +10 pp (tiny seed noise), B no effect."""
    ref = _series(rng, 0.80, seeds, 0.01)
    return {"R": ref, "A": {s: v + 0.10 + 0.001 * float(rng.standard_normal()) for s, v in ref.items()},
            "B": {s: v + 0.01 * float(rng.standard_normal()) for s, v in ref.items()}}


def test_rounds_give_open_comparisons_a_seed_on_both_sides_until_decided_or_the_cap():
    rng = np.random.default_rng(1)
    val = _study(rng, 3)
    rp = Q.plan_round(_state(val))
    # 3 seeds cannot decide anything with the mixture: both open, the arms and the reference get seed 3
    assert rp.stop_reason is None and rp.open == ["A", "B"] and rp.add_seeds == {"A": 3, "B": 3, "R": 3}
    assert rp.decisions == Q.decide(val, _state(val).comparisons) and rp == Q.plan_round(_state(val))  # pure
    full = _study(np.random.default_rng(1), 5)
    val4 = {k: {s: v for s, v in full[k].items() if s < 4} for k in full}
    rp = Q.plan_round(_state(val4, round=1))
    assert rp.round == 2 and rp.decided == ["A"] and rp.add_seeds == {"B": 4, "R": 4}
    assert "1 of 2 verdicts open" in rp.line()
    rp = Q.plan_round(_state(full, round=2))
    assert rp.stop_reason == "max_seeds" and rp.at_cap == ["B"] and not rp.add_seeds
    # a reference that already has the seed from another comparison trains nothing new
    val_r = {**val, "R": {**val["R"], 3: 0.8}}
    assert Q.plan_round(_state(val_r)).add_seeds == {"A": 3, "B": 3}
    # a failed trial (NaN, still tried) is not retried: the pair moves on to the next seed
    val_f = {**val, "A": {**val["A"], 3: math.nan}, "R": {**val["R"], 3: 0.8}}
    assert Q.plan_round(_state(val_f)).add_seeds == {"A": 4, "B": 3, "R": 4}
    tried = {k: set(v) for k, v in full.items()}
    assert Q.rounds_done(tried, {k: 3 for k in tried}) == 2
    with pytest.raises(ValueError, match="horizon"):
        Q.plan_round(_state(val, max_seeds=12, procedure=Q.RepeatedT(10, 3, PATHS)))


def test_rounds_honour_the_budget_closest_to_a_decision_first():
    val = _study(np.random.default_rng(2), 3)
    d = {x.id: x for x in Q.decide(val, _state(val).comparisons)}
    first = min("AB", key=lambda c: d[c].p_adjusted)
    rp = Q.plan_round(_state(val, budget_hours=2.5, cost_hours=1.0))
    # the first comparison takes its arm and the reference (2 h); the other would add its arm (1 h more)
    assert rp.add_seeds == {first: 3, "R": 3} and rp.deferred == [c for c in "AB" if c != first]
    assert rp.cost_hours == pytest.approx(2.0) and rp.stop_reason is None
    rp = Q.plan_round(_state(val, budget_hours=2.5, spent_hours=1.0, cost_hours={"A": 1.0, "B": 1.0, "R": 1.0}))
    assert not rp.add_seeds and rp.stop_reason == "budget" and "over the budget" in rp.line()


def test_worst_case_puts_every_compared_config_at_the_cap():
    planned = {"R": 3, "A": 3, "B": 3, "X": 3}
    cost = {"R": 0.5, "A": 1.0, "B": 1.0, "X": 9.0}
    wc = Q.worst_case(_state({}).comparisons, planned, 8, cost)
    assert wc.seeds == {"R": 8, "A": 8, "B": 8, "X": 3}  # X takes part in no comparison
    assert (wc.planned_trials, wc.trials, wc.added_trials) == (12, 27, 15)
    assert wc.hours == pytest.approx(sum((8 - 3) * cost[k] for k in "RAB"))
    assert "27 trials (12 planned + 15 added" in wc.line()


# ----------------------------------------------------------------------------- reported verdicts


def test_verdicts_status_and_the_image_condition():
    rng = np.random.default_rng(4)
    clear = {s: 0.05 + 0.002 * float(rng.standard_normal()) for s in range(6)}
    null = {s: 0.01 * float(rng.standard_normal()) for s in range(10)}
    comps = [Q.Comparison("clear", "a", "r"), Q.Comparison("null", "b", "r"), Q.Comparison("short", "c", "r")]
    diffs = {"clear": clear, "null": null, "short": {s: null[s] for s in range(4)}}
    v = {x.id: x for x in Q.verdicts(diffs, comps, max_seeds=10, stop_reason="budget", val_decided=["short"])}
    assert (v["clear"].verdict, v["clear"].status, v["clear"].n) == ("higher", "decided early", 6)
    assert v["clear"].cs_lo > 0 and v["clear"].cs_lo < v["clear"].diff < v["clear"].cs_hi
    assert (v["null"].verdict, v["null"].status) == ("open", "open at the cap")
    assert v["short"].status == "open on test, decided on validation"
    assert Q.status("open", 7, 10, "budget") == "open at the budget" and Q.status("lower", 10, 10) == "decided at the cap"
    # the image bootstrap is a necessary condition: a large image p blocks the call the seeds make
    blocked = Q.verdicts(diffs, comps, {"clear": (0.3, 1.0)}, max_seeds=10)[0]
    assert blocked.verdict == "open" and blocked.p_image == 0.3 and blocked.p_seed == v["clear"].p_seed
    # image p-values from the paired bootstrap: +6 pp on 1,000 images
    b = np.r_[np.ones(700, bool), np.zeros(300, bool)]
    a = b.copy()
    a[700:760] = True
    p_hi, p_lo = Q.image_p_from(lambda c: S.paired_bootstrap(a, b, n_boot=2000, null=c))
    assert p_hi < 0.001 and p_lo == 1.0
    assert Q.image_p_from(lambda c: S.paired_bootstrap(a, b, n_boot=2000, null=c), margin=0.10) == (1.0, 1.0)


def test_comparisons_from_the_smoke_grid():
    from ablations.plan import grids

    plan = grids.expand(*grids.load_spec("smoke"))
    ref = {p.level: p.config_id for p in plan.points if p.axis == "reference"}
    scratch = next(p.config_id for p in plan.points if p.arm == "scratch_cnn")
    from ablations.plan.compared import Key, Series, comparisons_from_plan

    got = {c.id: c for c in comparisons_from_plan(plan)}
    assert set(got) == {Key("architecture", "scratch_cnn"), Key("tta", "flip"), Key(claim="finetune_beats_frozen"),
                        Key(claim="transfer_beats_scratch"), Key(claim="flip_tta_helps")}
    assert {str(k) for k in got} >= {"tta/flip", "claim/flip_tta_helps"}  # as run.json and the report name them
    arch = got[Key("architecture", "scratch_cnn")]
    assert (arch.better, arch.worse) == (Series(scratch), Series(ref["L3"]))
    flip = got[Key("tta", "flip")]
    assert (flip.better, flip.worse, flip.trained()) == (Series(ref["L4"], "flip"), Series(ref["L4"]), (ref["L4"],))
    t = got[Key(claim="transfer_beats_scratch")]
    assert (t.better, t.worse, t.kind) == (Series(ref["L3"]), Series(scratch), "claim")
    assert t.margin == pytest.approx(next(c.margin for c in plan.claims if c.id == "transfer_beats_scratch") / 100)
    f = got[Key(claim="finetune_beats_frozen")]
    assert (f.better, f.worse) == (Series(ref["L2"]), Series(ref["L1"]))


@pytest.mark.parametrize("proc", [Q.MixtureT(), Q.RepeatedT(10, 3, PATHS)], ids=["mixture", "repeated_t"])
def test_method_text_names_the_procedure_and_its_price(proc):
    text = "\n".join(Q.method_lines(proc, family=3))
    assert proc.name in text and "Holm" in text and "validation" in text and "i.i.d. Gaussian" in text
    assert f"6: {proc.critical_t(6, ALPHA / 6):.2f}" in text and f"6: {stats.t.ppf(1 - ALPHA / 6, 5):.2f}" in text
