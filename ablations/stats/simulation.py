"""Simulations of the adaptive-seed procedure of ``ablations.stats.sequential``, with no training: synthetic studies with
known per-seed effects and seed-to-seed noise, vectorised over studies (numpy and scipy; seconds).

* ``looks_fpr``: one comparison under the null, one look per added seed. The chance that *some* look calls a
  difference, for the naive rule (the fixed-sample t-test of ``ablations.stats`` at every look) and for the
  anytime-valid one. "Some look" is the worst any stopping rule limited to these looks can do.
* ``simulate_study`` / ``study_error``: the whole loop of ``plan_round``: K arms against one shared reference,
  validation and test accuracies of the same models correlated, seeds added on validation until decided or the
  cap, verdicts on test. Family-wise error of the test verdicts over the arms without an effect.
* ``adaptive_one`` / ``design_matched``: how many seeds the rule needs for a real effect, against a fixed design
  of equal power (see ``design_matched`` for how power is matched).
* ``bench_sequential``: all of it at a larger scale, with figures (``python -m ablations.bench --only sequential``).

Effects are in units of the SD of a per-seed difference (delta = mu / sigma).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _st

from ablations.stats import ALPHA, t_test_power
from ablations.stats import sequential as Q

# ============================================================================ building blocks


def holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values along the last axis (every entry finite): ``stats.holm`` row by row, vectorised."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, -1)
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * sorted_p), axis=-1)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, -1)
    return out


def _at(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """a[..., n - 1] per entry (the value after n seeds)."""
    return np.take_along_axis(a, (np.asarray(n) - 1)[..., None], -1)[..., 0]


def naive_look_p(d: np.ndarray) -> np.ndarray:
    """Two-sided fixed-sample t-test p (``stats.t_test``) after every prefix n = 1..L of the last axis (1 at n = 1)."""
    n = np.arange(1, d.shape[-1] + 1, dtype=np.float64)
    sy, syy = np.cumsum(d, -1), np.cumsum(d * d, -1)
    mean = sy / n
    var = np.maximum(syy - n * mean * mean, 0.0) / np.maximum(n - 1, 1.0)
    t = np.abs(mean) / np.sqrt(np.maximum(var, 1e-300) / n)
    return np.where(n >= 2, 2 * _st.t.sf(t, np.maximum(n - 1, 1.0)), 1.0)


def fixed_power(n: int, delta: float, alpha: float = ALPHA) -> float:
    """Exact power of the fixed two-sided one-sample t-test with n seeds at standardised effect delta."""
    return t_test_power(delta, n, alpha)


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# ============================================================================ (a) repeated looks under the null


def procedures(cap: int, start: int = 3, paths: int = Q.NULL_PATHS) -> dict[str, Q.Procedure]:
    """The two procedures compared: the mixture e-process (no horizon) and the repeated t-test with horizon cap
    (calibrated on ``paths`` null paths)."""
    return {"mixture": Q.MixtureT(), "repeated_t": Q.RepeatedT(cap, start, paths)}


def looks_fpr(studies: int = 4000, start: int = 3, cap: int = 10, seed: int = 0, alpha: float = ALPHA,
              paths: int = Q.NULL_PATHS) -> dict[str, Any]:
    """One comparison, mu = 0, one look at every n in start..cap. For each number of looks k: the share of studies
    in which some look among the first k called a difference, naive (fixed t-test p < alpha) and for each procedure
    (Holm over the two one-sided hypotheses: p^+ or p^- <= alpha/2)."""
    d = np.random.default_rng(seed).standard_normal((studies, cap))
    looks = list(range(start, cap + 1))
    calls = {"naive": naive_look_p(d) < alpha}
    for name, proc in procedures(cap, start, paths).items():
        p_hi, p_lo = proc.look_p(d)
        calls[name] = np.minimum(p_hi, p_lo) <= alpha / 2
    out: dict[str, Any] = {"studies": studies, "seeds_at_look": looks}
    for name, c in calls.items():
        some = np.logical_or.accumulate(c[:, start - 1:], axis=-1)  # some look so far
        out[name] = some.mean(0).tolist()
    return out


# ============================================================================ the whole loop: a study


def draw_study(studies: int, effects, cap: int, rho: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test accuracies (studies, 1 + K configs, cap seeds), in units of the seed SD of one config
    (a difference of two configs then has SD sqrt 2: effects are given per difference and scaled). Config 0 is the
    shared reference; arm k has mean effects[k] * sqrt 2 on both splits. Each model's validation and test accuracy
    share a seed effect: their correlation is rho."""
    rng = np.random.default_rng(seed)
    k = len(effects)
    mu = np.concatenate([[0.0], np.asarray(effects, dtype=np.float64) * math.sqrt(2)])[None, :, None]
    model = rng.standard_normal((studies, k + 1, cap))
    val = mu + math.sqrt(rho) * model + math.sqrt(1 - rho) * rng.standard_normal(model.shape)
    test = mu + math.sqrt(rho) * model + math.sqrt(1 - rho) * rng.standard_normal(model.shape)
    return val, test


class _Looks:
    """Per-look p-values of differences d (studies, K, seeds) computed once, read at any n (studies, K)."""

    def __init__(self, d: np.ndarray, procedure: Q.Procedure | None):
        self.naive = procedure is None
        self.p = (naive_look_p(d), np.sign(np.cumsum(d, -1))) if self.naive else procedure.look_p(d)

    def calls(self, n: np.ndarray, alpha: float) -> np.ndarray:
        """+1 / -1 / 0 per (study, comparison) at n seeds each. A procedure: Holm over the 2K one-sided p-values;
        naive: Holm over the K two-sided t-test p-values (``stats.family_verdicts``), sign of the mean."""
        a, b = (_at(x, n) for x in self.p)
        if self.naive:
            return np.where(holm_rows(a) < alpha, b, 0).astype(int)
        adj = holm_rows(np.concatenate([a, b], -1))
        a_hi, a_lo = adj[..., :n.shape[-1]], adj[..., n.shape[-1]:]
        return np.where(np.minimum(a_hi, a_lo) <= alpha, np.where(a_hi <= a_lo, 1, -1), 0)


def simulate_study(val: np.ndarray, test: np.ndarray, procedure: Q.Procedure | None, start: int = 3, cap: int = 10,
                   alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """``plan_round``'s loop, vectorised: arms 1..K against reference 0, the planned ``start`` seeds, then rounds
    that give every comparison open on validation its next paired seed (the arm gets it; the reference too when it
    lacks it) until none is open under the cap. Returns n (studies, K) seeds per comparison, rounds, the
    validation calls at the end, the test calls (+1 / -1 / 0) and the seeds trained per config. ``procedure``
    None: the naive rule (fixed t-tests with Holm at every look)."""
    studies, configs, _ = val.shape
    k = configs - 1
    n_arm = np.full((studies, k), start)
    n_ref = np.full(studies, start)
    looks_val = _Looks(val[:, 1:] - val[:, :1], procedure)
    rounds = np.zeros(studies, int)
    while True:
        calls = looks_val.calls(n_arm, alpha)
        want = (calls == 0) & (n_arm < cap)
        if not want.any():
            break
        ref_needs = (want & (n_arm == n_ref[:, None])).any(-1)
        n_arm = n_arm + want
        n_ref = n_ref + ref_needs
        rounds += want.any(-1)
    return {"n": n_arm, "n_ref": n_ref, "rounds": rounds, "val_calls": calls,
            "test_calls": _Looks(test[:, 1:] - test[:, :1], procedure).calls(n_arm, alpha)}


def study_error(studies: int = 2000, effects=(0.0, 0.0, 0.0, 0.0), start: int = 3, cap: int = 10, rho: float = 0.9,
                seed: int = 0, alpha: float = ALPHA, paths: int = Q.NULL_PATHS) -> dict[str, Any]:
    """Family-wise error of the test verdicts (any call on an arm without an effect, or a call in the wrong
    direction) for each procedure's loop and for the naive one (fixed t-tests with Holm at every look, on
    validation and on test), the same studies for all; mean seeds per comparison and the share called."""
    val, test = draw_study(studies, effects, cap, rho, seed)
    truth = np.sign(np.asarray(effects))[None, :]
    out: dict[str, Any] = {"studies": studies, "effects": list(map(float, effects)), "rho": rho, "cap": cap}
    for name, proc in {**procedures(cap, start, paths), "naive": None}.items():
        r = simulate_study(val, test, proc, start, cap, alpha)
        wrong = (r["test_calls"] != 0) & (r["test_calls"] != truth)
        out[name] = {"fwer": float(wrong.any(-1).mean()), "mean_seeds": r["n"].mean(0).tolist(),
                     "called": (r["test_calls"] != 0).mean(0).tolist()}
    return out


# ============================================================================ (b) seeds needed for a real effect


def adaptive_one(delta: float, procedure: Q.Procedure, studies: int = 4000, start: int = 3, cap: int = 10,
                 seed: int = 0, alpha: float = ALPHA) -> dict[str, float]:
    """One comparison with effect delta: the adaptive rule (no validation noise: the decision and the verdict on
    the same differences), looks from ``start`` seeds to the cap. Power (a call in the right direction by the cap)
    and the mean number of seeds used."""
    d = np.random.default_rng(seed).standard_normal((studies, cap)) + delta
    p_hi, p_lo = (p[:, start - 1:] for p in procedure.look_p(d))
    hit = np.minimum(p_hi, p_lo) <= alpha / 2
    called = hit.any(-1)
    first = np.argmax(hit, -1)
    used = np.where(called, start + first, cap)
    up = np.take_along_axis(p_hi <= p_lo, first[:, None], -1)[:, 0]
    right = called & (delta != 0) & (up == (delta > 0))
    return {"delta": delta, "cap": cap, "power": float(right.mean()), "called": float(called.mean()),
            "mean_seeds": float(used.mean()), "studies": studies}


def design_matched(kind: str = "mixture", design_delta: float = 1.0, target_power: float = 0.8,
                   deltas=(1.0, 1.5, 2.0, 3.0), studies: int = 4000, start: int = 3, seed: int = 0,
                   max_cap: int = 40, alpha: float = ALPHA, paths: int = Q.NULL_PATHS) -> dict[str, Any]:
    """The adaptive rule against a fixed design of equal power, matched as sequential designs are compared:

    * the fixed design is sized for the smallest effect of interest ``design_delta``: the fewest seeds n_fixed
      whose fixed t-test reaches ``target_power`` there (exact power, noncentral t);
    * the adaptive rule (``kind``: 'mixture' or 'repeated_t', whose horizon is the cap) gets the smallest cap from
      n_fixed up at which its simulated power at ``design_delta`` is at least the fixed design's (equal power where
      the design is sized; a smaller cap could only use fewer seeds, so starting there favours the fixed design);
    * then, for each true effect, the mean seeds the adaptive rule uses against n_fixed, and both powers.

    Also ``oracle_fixed_n``: the fewest seeds a fixed design would need for the adaptive rule's power at that
    effect (capped at 95%) if it knew the effect in advance (a bound no design that must fix n beforehand has)."""
    n_fixed = next(n for n in range(2, 200) if fixed_power(n, design_delta, alpha) >= target_power)
    p_fixed = fixed_power(n_fixed, design_delta, alpha)
    def run(delta: float, cap: int) -> dict[str, float]:
        return adaptive_one(delta, procedures(cap, start, paths)[kind], studies, start, cap, seed, alpha)

    cap = next((c for c in range(max(start, n_fixed), max_cap + 1) if run(design_delta, c)["power"] >= p_fixed),
               max_cap)
    rows = []
    for delta in deltas:
        a = run(delta, cap)
        target = min(a["power"], 0.95)
        oracle = next((n for n in range(2, 200) if fixed_power(n, delta, alpha) >= target), None)
        rows.append({**a, "fixed_seeds": n_fixed, "fixed_power": fixed_power(n_fixed, delta, alpha),
                     "oracle_fixed_n": oracle})
    return {"kind": kind, "design_delta": design_delta, "target_power": target_power, "fixed_seeds": n_fixed,
            "fixed_power_at_design": p_fixed, "adaptive_cap": cap, "rows": rows}


# ============================================================================ the benchmark


def bench_sequential(out: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The simulations at scale, and two figures in ``out``: sequential_fpr.png (false-positive rate against the
    number of looks, naive and both procedures) and sequential_seeds.png (mean seeds and power against the effect,
    with fixed designs of equal power)."""
    t0 = time.perf_counter()
    n1, n2 = (2000, 500) if quick else (40000, 8000)
    deltas = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]
    rep: dict[str, Any] = {
        "alpha": ALPHA, "prior_g": Q.PRIOR_G,
        "looks": looks_fpr(n1, start=3, cap=20, seed=seed),
        "study_null": study_error(n2, (0.0, 0.0, 0.0, 0.0), seed=seed + 1),
        "study_mixed": study_error(n2, (0.0, 0.0, 1.5, 3.0), seed=seed + 2),
        "designs": [design_matched(kind, dd, 0.8, deltas, n2, seed=seed + 3)
                    for kind in ("mixture", "repeated_t") for dd in (1.0, 1.5)],
        "cap10": {kind: [adaptive_one(d, proc, n2, 3, 10, seed + 4) for d in [0.0] + deltas]
                  for kind, proc in procedures(10).items()},
        "critical_t": {kind: {n: proc.critical_t(n, ALPHA / 2) for n in range(3, 11)}
                       for kind, proc in procedures(10).items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    rep["figures"] = [_fig_fpr(rep["looks"], rep["study_null"], out / "sequential_fpr.png").name,
                      _fig_seeds(rep["designs"], rep["cap10"], out / "sequential_seeds.png").name]
    rep["seconds"] = time.perf_counter() - t0
    return rep


LABELS = {"naive": "naive: fixed t-test at every look", "mixture": "mixture e-process (default, no horizon)",
          "repeated_t": "repeated t-test, horizon = cap"}
COLORS = {"naive": "tab:red", "mixture": "tab:blue", "repeated_t": "tab:green"}


def _figure(w: float, h: float, cols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig, fig.subplots(1, cols)


def _fig_fpr(looks: dict, study: dict, path: Path) -> Path:
    fig, ax = _figure(7, 4.4)
    k = np.arange(1, len(looks["seeds_at_look"]) + 1)
    se = 1.96 * binomial_se(ALPHA, looks["studies"])
    ax.axhspan(ALPHA - se, ALPHA + se, color="0.9", label=f"5% ± simulation error ({looks['studies']} studies)")
    ax.axhline(ALPHA, color="0.5", lw=1)
    for name in ("naive", "mixture", "repeated_t"):
        ax.plot(k, looks[name], "o-", ms=3, color=COLORS[name], label=LABELS[name] + ", one comparison")
        ax.plot([study["cap"] - 2], [study[name]["fwer"]], "*", ms=11, color=COLORS[name])
    ax.plot([], [], "k*", label=f"whole loop, cap {study['cap']}: 4 null arms, seeds added on validation, "
            "family-wise error on test")
    ax.set_xticks(k, [f"{k_}\n{n}" for k_, n in zip(k, looks["seeds_at_look"])], fontsize=7)
    ax.set_xlabel("number of looks (one per added seed) / seeds at the last look")
    ax.set_ylabel("false-positive rate: some look calls a difference")
    ax.set_ylim(0, max(looks["naive"]) * 1.1)
    ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, format="png", dpi=110)
    return path


def _fig_seeds(designs: list[dict], cap10: dict, path: Path) -> Path:
    fig, (ax, bx) = _figure(12, 4.6, 2)
    for kind, rows in cap10.items():
        x = [r["delta"] for r in rows]
        ax.plot(x, [r["mean_seeds"] for r in rows], "o-", color=COLORS[kind], label=f"{LABELS[kind]}, cap 10")
        bx.plot(x[1:], [r["power"] for r in rows[1:]], "o-", color=COLORS[kind], label=f"{LABELS[kind]}, cap 10")
    for dz, style in zip(designs, ("s--", "^--", "s:", "^:")):
        x = [r["delta"] for r in dz["rows"]]
        ax.plot(x, [r["mean_seeds"] for r in dz["rows"]], style, color=COLORS[dz["kind"]], ms=4,
                label=f"{dz['kind']}, cap {dz['adaptive_cap']}: power of the fixed {dz['fixed_seeds']} seeds "
                      f"at {dz['design_delta']:g}")
    for dz, ls in zip(designs[:2], ("--", ":")):
        ax.axhline(dz["fixed_seeds"], color="0.4", lw=1, ls="--")
        ax.annotate(f"fixed design, {dz['target_power']:.0%} power at {dz['design_delta']:g}: {dz['fixed_seeds']} seeds",
                    (0.0, dz["fixed_seeds"] + 0.15), fontsize=7, color="0.3")
        bx.plot([r["delta"] for r in dz["rows"]], [r["fixed_power"] for r in dz["rows"]], "k", ls=ls, lw=1,
                label=f"fixed design, {dz['fixed_seeds']} seeds, one t-test")
    for a in (ax, bx):
        a.set_xlabel("true effect / SD of a per-seed difference")
        a.legend(fontsize=6)
    ax.set_ylabel("mean seeds per config")
    bx.set_ylabel("power (a call in the right direction)")
    fig.savefig(path, format="png", dpi=110)
    return path


def markdown(rep: dict[str, Any]) -> list[str]:
    """BENCH.md lines of the ``sequential`` section."""
    lk = rep["looks"]
    lines = ["## Adaptive seeds: the decision procedure simulated (no training)", "",
             f"alpha {rep['alpha']:g}; mixture prior g = {rep['prior_g']:g}; effects in SDs of a per-seed difference. "
             f"{lk['studies']} null studies of one comparison, one look per added seed from 3 seeds; the share in "
             "which some look called a difference:", "",
             "| looks | seeds | naive repeated t-test | mixture e-process | repeated t-test (horizon 20) |",
             "|---|---|---|---|---|"]
    for i in sorted({0, 1, 3, 7, len(lk["naive"]) - 1}):
        lines.append(f"| {i + 1} | {lk['seeds_at_look'][i]} | {lk['naive'][i]:.3f} | {lk['mixture'][i]:.3f} | "
                     f"{lk['repeated_t'][i]:.3f} |")
    for key, what in (("study_null", "4 null arms"), ("study_mixed", "2 null arms and effects 1.5 and 3")):
        s = rep[key]
        lines += ["", f"Whole loop, {what} against one reference, seeds added on validation (val/test correlation "
                  f"{s['rho']:g}, planned 3 seeds, cap {s['cap']}, {s['studies']} studies):", "",
                  "| rule | family-wise error on test | mean seeds per arm | share called per arm |", "|---|---|---|---|"]
        lines += [f"| {LABELS[k]} | **{s[k]['fwer']:.4f}** | " + ", ".join(f"{x:.2f}" for x in s[k]["mean_seeds"])
                  + " | " + ", ".join(f"{x:.3f}" for x in s[k]["called"]) + " |" for k in ("naive", "mixture",
                                                                                          "repeated_t")]
    for dz in rep["designs"]:
        lines += ["", f"{LABELS[dz['kind']]} against a fixed design sized for {dz['target_power']:.0%} power at "
                  f"effect {dz['design_delta']:g} ({dz['fixed_seeds']} seeds, power {dz['fixed_power_at_design']:.3f}"
                  f"); adaptive cap {dz['adaptive_cap']}, the smallest with at least that power there:", "",
                  "| effect | adaptive mean seeds | adaptive power | fixed seeds | fixed power | oracle fixed n |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['delta']:g} | {r['mean_seeds']:.2f} | {r['power']:.3f} | {r['fixed_seeds']} | "
                  f"{r['fixed_power']:.3f} | {r['oracle_fixed_n']} |" for r in dz["rows"]]
    ct = rep["critical_t"]
    lines += ["", "|t| a one-sided call needs at n seeds, one comparison (alpha/2 per side): "
              + "; ".join(f"n = {n}: mixture {ct['mixture'][n]:.2f}, repeated-t {ct['repeated_t'][n]:.2f}, fixed "
                          f"{float(_st.t.ppf(1 - ALPHA / 2, n - 1)):.2f}" for n in (4, 6, 10)) + ".", "",
              "Figures: " + ", ".join(f"`{p}`" for p in rep["figures"]) + f" ({rep['seconds']:.0f} s).", ""]
    return lines
