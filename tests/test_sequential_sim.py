"""Simulations of the adaptive-seed procedure (ablations.stats.simulation), numpy only, fixed seeds, seconds: false
positives under repeated looks (naive repeated t-test against both anytime-valid procedures, one comparison and
the whole validation-driven loop), seeds needed for a real effect against a fixed design of equal power, and the
vectorised simulation checked against the real planner."""
from __future__ import annotations

import pytest

from ablations.stats import sequential as Q
from ablations.stats import simulation as M

ALPHA = Q.ALPHA
PATHS = 50_000  # null paths calibrating RepeatedT in these tests (the default is 200,000)


def test_repeated_looks_inflate_the_naive_test_but_not_the_anytime_valid_ones():
    studies = 4000
    r = M.looks_fpr(studies, start=3, cap=10, seed=0, paths=PATHS)
    bound = ALPHA + 3 * M.binomial_se(ALPHA, studies)
    assert abs(r["naive"][0] - ALPHA) < 3 * M.binomial_se(ALPHA, studies)  # one look: the fixed test is exact
    assert r["naive"][-1] > bound  # 8 looks: well above 5%
    assert all(b >= a for a, b in zip(r["naive"], r["naive"][1:]))
    for name in ("mixture", "repeated_t"):
        assert max(r[name]) <= bound, (name, r[name])


def test_the_whole_loop_keeps_the_family_wise_error_on_test():
    # 4 null arms against one reference, seeds added on validation (correlated with test) up to the cap
    studies = 3000
    r = M.study_error(studies, (0.0, 0.0, 0.0, 0.0), cap=10, seed=1, paths=PATHS)
    bound = ALPHA + 3 * M.binomial_se(ALPHA, studies)
    assert r["mixture"]["fwer"] <= bound and r["repeated_t"]["fwer"] <= bound
    assert r["naive"]["fwer"] > ALPHA + 2 * M.binomial_se(ALPHA, studies)
    assert min(r["mixture"]["mean_seeds"]) > 9.5  # null arms keep getting seeds until the cap


@pytest.mark.parametrize("kind, deltas", [("mixture", (1.5, 2.0, 3.0)), ("repeated_t", (1.0, 1.5, 2.0, 3.0))])
def test_a_real_effect_needs_fewer_seeds_than_a_fixed_design_of_equal_power(kind, deltas):
    # the fixed design: 80% power at one seed SD (10 seeds); the adaptive cap: the smallest with at least its
    # power there. Then at these effects the adaptive rule uses fewer seeds on average, with at least that power.
    studies = 4000
    r = M.design_matched(kind, 1.0, 0.8, deltas, studies, seed=3, paths=PATHS)
    assert r["fixed_seeds"] == next(n for n in range(2, 50) if M.fixed_power(n, 1.0) >= 0.8)
    for row in r["rows"]:
        assert row["mean_seeds"] < r["fixed_seeds"], row
        assert row["power"] >= row["fixed_power"] - 3 * M.binomial_se(row["fixed_power"], studies), row


def test_the_vectorised_simulation_is_the_planner():
    # the same synthetic studies through plan_round / verdicts and through simulate_study: same seeds, same calls
    cap, start = 8, 3
    val, test = M.draw_study(12, (0.0, 1.5, 4.0), cap, rho=0.8, seed=7)
    for proc in (Q.MixtureT(), Q.RepeatedT(cap, start, PATHS)):
        sim = M.simulate_study(val, test, proc, start, cap)
        for i in range(val.shape[0]):
            names = ["R", "A1", "A2", "A3"]
            comps = [Q.Comparison(a, a, "R") for a in names[1:]]
            tried = {k: set(range(start)) for k in names}
            while True:
                series = {k: {s: float(val[i, j, s]) for s in tried[k]} for j, k in enumerate(names)}
                rp = Q.plan_round(Q.StudyState(series, comps, cap, tried=tried, procedure=proc))
                if rp.stop_reason:
                    break
                for k, s in rp.add_seeds.items():
                    tried[k].add(s)
            n = [len(tried[a]) for a in names[1:]]
            assert n == list(sim["n"][i]) and len(tried["R"]) == sim["n_ref"][i]
            calls = {"higher": 1, "lower": -1, "open": 0}
            assert [calls[d.direction] for d in rp.decisions] == list(sim["val_calls"][i])
            diffs = {a: {s: float(test[i, j + 1, s] - test[i, 0, s]) for s in tried[a]} for j, a in enumerate(names[1:])}
            got = [calls[v.verdict] for v in Q.verdicts(diffs, comps, max_seeds=cap, procedure=proc)]
            assert got == list(sim["test_calls"][i])


def test_fixed_power_is_the_power_behind_the_minimum_detectable_effect():
    from ablations import stats as S

    for n in (3, 6, 10):
        assert M.fixed_power(n, S.min_detectable_effect(1.0, n)) == pytest.approx(0.8, abs=1e-6)
