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
    assert lo > 0 and p < 0.01
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
    # never '± 0.0': tied seeds say so, a half-width under 0.05 pp gets a significant digit
    assert S.fmt_pm(0.574, 0.0) == "57.4 (seeds tied)"
    assert S.fmt_pm(0.574, 0.0003) == "57.4 ± 0.03"
    assert S.fmt_pm(0.574, 0.0005) == "57.4 ± 0.1"


# ----------------------------------------------------------------------------- seed-aware verdicts


def test_t_test_by_hand():
    # [2, 3, 4] pp: mean 3, sd 1, t = 0.03 / (0.01 / sqrt 3) = 5.196 with 2 df: two-sided p = 0.03510
    m, h, p = S.t_test([0.02, 0.03, 0.04])
    assert m == pytest.approx(0.03) and h == pytest.approx(4.3026527 * 0.01 / math.sqrt(3), rel=1e-6)
    assert p == pytest.approx(0.035099, abs=2e-6)
    # against a null of 0.01: t = 0.02 / (0.01 / sqrt 3) = 3.464: p = 0.07418
    assert S.t_test([0.02, 0.03, 0.04], null=0.01)[2] == pytest.approx(0.074180, abs=2e-6)
    # tied seeds: p = 0 away from the null, 1 at it; one seed: no test
    assert S.t_test([0.02, 0.02, 0.02])[2] == 0.0 and S.t_test([0.0, 0.0, 0.0])[2] == 1.0
    assert math.isnan(S.t_test([0.05])[2])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert list(S.holm([0.01, 0.04, 0.03, 0.005])) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not part of the family (m = 2 here): 0.02 * 2 = 0.04, max(0.04, 0.03) = 0.04
    out = S.holm([0.02, float("nan"), 0.03])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert list(S.holm([0.6, 0.7])) == [1.0, 1.0]  # capped at 1
    assert list(S.holm([0.04])) == [0.04]  # one comparison: no correction


def test_both_sources_interval_and_test_by_hand():
    """Seeds 1, 2, 3 pp apart from 0 and an image bootstrap SE of 0.5 pp, worked by hand:
    s^2/n = 1/3 pp^2, SE^2 = 1/3 + 1/4 = 7/12 -> SE = 0.7638 pp, df = n - 1 = 2; t_{0.975, 2} = 4.3027 ->
    95% CI 2 -+ 3.2862 = [-1.286, +5.286] pp; t = 2 / 0.7638 = 2.619 -> two-sided p = 0.1201.
    The seeds alone (s/sqrt(3) = 0.577) give [-0.48, +4.48] and p = 0.074; the images alone about [1.0, 3.0]: the
    headline interval holds both."""
    mean, se, df = S.both_sources([0.01, 0.02, 0.03], 0.005)
    assert (mean, se, df) == pytest.approx((0.02, 0.0076376, 2.0), rel=1e-4)
    row = S.seed_image_test({0: 0.01, 1: 0.02, 2: 0.03}, S.Bootstrap(0.02, 0.0102, 0.0298, 0.0001, 0.005), 3)
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((-0.012862, 0.052862), rel=1e-4)
    assert row["p_both"] == pytest.approx(0.12012, rel=1e-3)
    assert row["p_seed"] == pytest.approx(0.0742, abs=1e-3)  # the seed t-test alone
    assert row["ci_lo"] <= row["diff"] - row["diff_ci"] and row["ci_lo"] < row["boot_lo"]
    # no bootstrap (no stored logits), or fewer than 3 seeds: no interval and no p
    assert math.isnan(S.seed_image_test({0: 0.01, 1: 0.02, 2: 0.03}, None)["p_both"])
    assert math.isnan(S.seed_image_test({0: 0.01, 1: 0.02}, S.Bootstrap(0.02, 0.01, 0.03, 0.01, 0.005), 2)["ci_lo"])


def test_equivalence_by_hand():
    """Seeds 0.1, 0.2, 0.3 pp, image SE 0.1 pp, bound 1 pp, worked by hand: SE^2 = 0.01/3 + 0.01 = 0.01333 ->
    SE = 0.1155 pp, df 2; t_{0.95, 2} = 2.920 -> 90% interval 0.2 -+ 0.3372 = [-0.137, +0.537] pp, inside +-1:
    equivalent; TOST p = max(sf(1.2 / 0.1155 = 10.39), sf(0.8 / 0.1155 = 6.928)) at 2 df = 0.0101."""
    row = S.seed_image_test({0: 0.001, 1: 0.002, 2: 0.003}, S.Bootstrap(0.002, 0, 0.004, 0.05, 0.001), 3)
    assert row["df_both"] == 2.0
    assert (row["ci90_lo"], row["ci90_hi"]) == pytest.approx((-0.00137171, 0.00537171), rel=1e-4)
    p = S.tost(row["diff"], row["se_both"], row["df_both"], 0.01)
    assert p == pytest.approx(0.010102, rel=1e-3)
    # the same numbers against a 0.5 pp bound: the 90% interval reaches 0.537, outside -> not equivalent
    assert S.tost(row["diff"], row["se_both"], row["df_both"], 0.005) > 0.05
    # the rule is exactly the 90% interval inside the bound: at its edge, p = 0.05
    assert S.tost(row["diff"], row["se_both"], row["df_both"], row["ci90_hi"]) == pytest.approx(0.05, rel=1e-6)
    # by hand with a known SE: mean 0.2, se 0.3, bound 1, normal: max(sf(4), sf(2.667)) = 0.0038
    assert S.tost(0.2, 0.3, math.inf, 1.0) == pytest.approx(0.0038304, rel=1e-3)


def test_family_verdicts_by_hand():
    """Holm runs over the rows with >= 3 seeds and a both-sources p (here the seeds agree closely, so the image SE
    is what is left: p_both is the 2-df t p of d / se_images)."""
    def row(d, z, seeds=3):  # z: the difference in image standard errors
        diffs = {s: d + 1e-9 * (s - 1) for s in range(seeds)}
        return S.seed_image_test(diffs, S.Bootstrap(d, d - 0.01, d + 0.01, 0.001, abs(d) / z), seeds)

    from scipy import stats as st
    zs = [st.t.isf(0.004 / 2, 2), st.t.isf(0.04 / 2, 2), st.t.isf(0.03 / 2, 2)]
    rows = [row(0.03, zs[0]), row(0.02, zs[1]), row(-0.04, zs[2]), row(0.05, 10, seeds=2)]
    assert [r["p_both"] for r in rows[:3]] == pytest.approx([0.004, 0.04, 0.03], rel=1e-3)
    S.family_verdicts(rows)
    # sorted 0.004, 0.03, 0.04 times 3, 2, 1 = 0.012, 0.06, 0.04 -> running max 0.012, 0.06, 0.06
    assert [r["p_holm"] for r in rows[:3]] == pytest.approx([0.012, 0.06, 0.06], rel=1e-3)
    assert math.isnan(rows[3]["p_holm"])
    assert [r["verdict"] for r in rows] == ["higher", "inconclusive", "inconclusive", "needs ≥ 3 seeds"]
    # each of the three alone would have been called (p < 0.05): the correction is what makes two inconclusive
    alone = [row(0.02, zs[1]), row(-0.04, zs[2])]
    for r in alone:
        S.family_verdicts([r])
    assert [r["verdict"] for r in alone] == ["higher", "lower"]


def _nested_pair(rng, n: int, base_correct: int, change: int) -> tuple[np.ndarray, np.ndarray]:
    """(arm, reference) correctness on n images: the arm fixes ``change`` of the reference's errors (change > 0)
    or breaks -change of its correct images, so every discordant image favours one side."""
    ref = np.zeros(n, bool)
    ref[rng.permutation(n)[:base_correct]] = True
    arm = ref.copy()
    pool = np.flatnonzero(~ref if change > 0 else ref)
    arm[rng.permutation(pool)[:abs(change)]] = change > 0
    return arm, ref


def _seed_run(changes: list[int], n: int = 2000, base: int = 1400, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = [_nested_pair(rng, n, base, c) for c in changes]
    a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    diffs = {s: float(a[s].mean() - b[s].mean()) for s in range(len(changes))}
    return a, b, diffs


def test_seeds_that_disagree_get_no_verdict_though_every_seed_is_significant_on_images():
    # per-seed differences +4, -3, +5 pp on 2,000 test images
    a, b, diffs = _seed_run([80, -60, 100])
    assert [round(d * 100, 6) for d in diffs.values()] == [4.0, -3.0, 5.0]
    for s in range(3):  # each seed alone: the image bootstrap excludes 0, McNemar agrees
        _, lo, hi, _ = S.paired_bootstrap(a[s], b[s], n_boot=2000, seed=s)
        assert lo > 0 or hi < 0
        assert S.mcnemar_exact(a[s], b[s])[2] < 1e-10
    boot = S.paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert boot[1] > 0  # the seed-averaged image bootstrap alone would call it higher
    row = S.seed_image_test(diffs, boot, 3)
    # the seeds do not agree: with the images' noise added the test is only less sure than the seeds' alone
    assert row["p_seed"] > 0.3 and row["p_both"] >= row["p_seed"]
    assert row["ci_lo"] < 0 < row["ci_hi"] and row["boot_lo"] > 0
    S.family_verdicts([row])
    assert row["verdict"] == "inconclusive"


def test_consistent_two_points_over_five_seeds_is_called_higher():
    a, b, diffs = _seed_run([40, 42, 38, 40, 44])  # +2.0, +2.1, +1.9, +2.0, +2.2 pp
    boot = S.paired_bootstrap(a, b, n_boot=2000, seed=0)
    row = S.seed_image_test(diffs, boot, 5)
    assert row["diff"] == pytest.approx(0.0204) and row["diff_ci"] < 0.002
    assert row["p_seed"] < 1e-4 and row["boot_p"] < 0.01
    S.family_verdicts([row])
    assert row["verdict"] == "higher"
    # the same differences with the sign flipped are called lower; with two seeds they get no verdict
    flipped = S.seed_image_test({s: -d for s, d in diffs.items()}, S.paired_bootstrap(b, a, n_boot=2000), 5)
    two = S.seed_image_test({0: diffs[0], 1: diffs[1]}, S.paired_bootstrap(a[:2], b[:2], n_boot=2000), 2)
    S.family_verdicts([flipped, two])
    assert flipped["verdict"] == "lower" and two["verdict"] == "needs ≥ 3 seeds"


def test_min_detectable_effect_has_the_power_it_claims():
    """At the returned effect the t-test (n - 1 df, two-sided 5%) rejects about 80% of the time (simulated)."""
    from scipy.stats import t as student_t

    rng = np.random.default_rng(0)
    for n in (3, 5):
        d = S.min_detectable_effect(1.0, n)
        x = rng.normal(d, 1.0, (100_000, n))
        t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
        assert np.mean(np.abs(t) > student_t.ppf(0.975, n - 1)) == pytest.approx(0.80, abs=0.01), n
    # linear in the SD; a stricter alpha needs more; large n approaches (z_0.975 + z_0.8) sd / sqrt(n)
    assert S.min_detectable_effect(0.02, 3) == pytest.approx(2 * S.min_detectable_effect(0.01, 3))
    assert S.min_detectable_effect(0.01, 3, alpha=0.0125) > S.min_detectable_effect(0.01, 3)
    assert S.min_detectable_effect(0.01, 400) == pytest.approx((1.959964 + 0.841621) * 0.01 / 20, rel=0.01)
    assert math.isnan(S.min_detectable_effect(0.01, 1)) and math.isnan(S.min_detectable_effect(float("nan"), 5))


def test_pooled_sd_by_hand():
    # samples [1, 2, 3] (ss 2) and [5, 7] (ss 2): sqrt(4 / 3); a single value adds nothing
    sd, df = S.pooled_sd([[1, 2, 3], [5, 7], [9]])
    assert df == 3 and sd == pytest.approx(math.sqrt(4 / 3))


def test_class_group_values_and_bootstrap():
    # 2 seeds, classes 0..3 with 4 images each; recall per class (seed 0): 1, .5, .25, 0; (seed 1): 1, 1, .5, .5
    y = np.repeat(np.arange(4), 4)
    c0 = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    c1 = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0], bool)
    vals = S.class_group_values(np.stack([c0, c1]), y, better=[0, 1], worse=[2, 3])
    assert list(vals) == pytest.approx([(1 + .5) / 2 - (.25 + 0) / 2, (1 + 1) / 2 - (.5 + .5) / 2])
    d, lo, hi, p = S.class_group_bootstrap(np.stack([c0, c1]), y, [0, 1], [2, 3], n_boot=4000, seed=1)
    assert d == pytest.approx(vals.mean()) and lo <= d <= hi
    # against literal resampling within each class
    rng = np.random.default_rng(7)
    big_y = np.repeat(np.arange(4), 300)
    big = rng.random((3, 1200)) < np.where(big_y < 2, 0.8, 0.6)
    _, lo, hi, _ = S.class_group_bootstrap(big, big_y, [0, 1], [2, 3], n_boot=20000, seed=3)
    reps = []
    for _ in range(3000):
        idx = np.concatenate([rng.choice(np.flatnonzero(big_y == k), 300) for k in range(4)])
        reps.append(S.class_group_values(big[:, idx], big_y[idx], [0, 1], [2, 3]).mean())
    lo2, hi2 = np.quantile(reps, [0.025, 0.975])
    assert lo == pytest.approx(lo2, abs=0.006) and hi == pytest.approx(hi2, abs=0.006)
    with pytest.raises(ValueError):
        S.class_group_bootstrap(big, big_y, [0, 9], [2])


def test_bootstrap_p_against_a_margin():
    """With a null of m the p-value asks whether the difference is beyond m: small for m well below it."""
    a, b, _ = _seed_run([100, 100, 100])  # +5 pp
    p0 = S.paired_bootstrap(a, b, n_boot=4000, seed=0)[3]
    p_below = S.paired_bootstrap(a, b, n_boot=4000, seed=0, null=0.02)[3]
    p_at = S.paired_bootstrap(a, b, n_boot=4000, seed=0, null=0.05)[3]
    assert p0 < 0.001 and p_below < 0.001 and p_at > 0.5
