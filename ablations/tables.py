"""The report's tables, built from a loaded run (``RunData``), and ``compare``, the paired comparison behind them.

Each builder returns the numbers (accuracies as fractions, for the CSVs) and a display frame (percentages).

How sure a difference is (see ``ablations.stats``): per-seed accuracies give a t-based 95% CI over seeds; the
same test images give paired tests: an exact McNemar test per seed and a paired bootstrap over test images of
the seed-averaged difference. A difference counts as significant when the bootstrap 95% CI excludes 0.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from . import stats as S
from .rundata import RunData, _finite, _normalise

N_BOOT = 10000
BOOT_SEED = 0
CONFIDENCE = 0.95
TIME_COLUMNS = ("trial_seconds", "train_seconds")


# ============================================================================ comparisons


def compare(run: RunData, a: dict[int, str], b: dict[int, str], mode_a: str = "none", mode_b: str = "none",
            n_boot: int = N_BOOT) -> dict[str, Any]:
    """A (arm) minus B (reference) on the seeds both finished: seed-paired CI, paired bootstrap, McNemar."""
    common = sorted(set(a) & set(b))
    out: dict[str, Any] = {"paired_seeds": len(common), "boot_seeds": 0, "diff": math.nan, "diff_ci": math.nan,
                           "boot_diff": math.nan, "boot_lo": math.nan, "boot_hi": math.nan, "boot_p": math.nan,
                           "mcnemar": [], "significant": None}
    if not common:
        return out
    acc_a = [run.acc(a[s], "test", mode_a) for s in common]
    acc_b = [run.acc(b[s], "test", mode_b) for s in common]
    out["diff"], out["diff_ci"] = S.paired_diff_ci(acc_a, acc_b, CONFIDENCE)
    pairs = [(s, run.correct(a[s], "test", mode_a), run.correct(b[s], "test", mode_b)) for s in common]
    pairs = [(s, x, y) for s, x, y in pairs if x is not None and y is not None]  # seeds with stored logits
    if pairs:
        out.update(_image_tests(pairs, n_boot))
    return out


def _image_tests(pairs: list[tuple[int, np.ndarray, np.ndarray]], n_boot: int) -> dict[str, Any]:
    """The paired tests on the same test images, for (seed, correct_a, correct_b) per seed: exact McNemar
    per seed, and the paired bootstrap of the seed-averaged accuracy difference (which decides significance)."""
    d, lo, hi, p = S.paired_bootstrap(np.stack([x for _, x, _ in pairs]), np.stack([y for _, _, y in pairs]),
                                      n_boot=n_boot, seed=BOOT_SEED, confidence=CONFIDENCE)
    return {"boot_seeds": len(pairs), "mcnemar": [(s, *S.mcnemar_exact(x, y)) for s, x, y in pairs],
            "boot_diff": d, "boot_lo": lo, "boot_hi": hi, "boot_p": p, "significant": S.significant(lo, hi)}


def _verdict(cmp: dict) -> str:
    if cmp["significant"] is None:
        return "untested"
    if not cmp["significant"]:
        return "≈ not significant"
    return "higher" if cmp["boot_diff"] > 0 else "lower"


def _cmp_columns(cmp: dict) -> dict[str, Any]:
    """Numeric columns of a comparison for the CSVs."""
    row = {"paired_seeds": cmp["paired_seeds"], "boot_seeds": cmp["boot_seeds"],
           "diff": cmp["diff"], "diff_ci": cmp["diff_ci"],
           "boot_diff": cmp["boot_diff"], "boot_lo": cmp["boot_lo"], "boot_hi": cmp["boot_hi"],
           "boot_p": cmp["boot_p"], "significant": cmp["significant"]}
    for s, n01, n10, p in cmp["mcnemar"]:
        row[f"mcnemar_seed{s}_n01"] = n01
        row[f"mcnemar_seed{s}_n10"] = n10
        row[f"mcnemar_seed{s}_p"] = p
    return row


def _cmp_display(cmp: dict) -> dict[str, str]:
    pm = "± " + (f"{cmp['diff_ci'] * 100:.1f}" if _finite(cmp["diff_ci"]) else "n/a")
    seed_diff = "–" if not _finite(cmp["diff"]) else f"{cmp['diff'] * 100:+.1f} {pm} (n={cmp['paired_seeds']})"
    if _finite(cmp["boot_lo"]):
        boot = f"[{cmp['boot_lo'] * 100:+.1f}, {cmp['boot_hi'] * 100:+.1f}]"
        if cmp["boot_seeds"] < cmp["paired_seeds"]:
            boot += f" ({cmp['boot_seeds']} seed(s) with logits)"
    else:
        boot = "–"
    mc = ", ".join(f"{S.fmt_p(p)} ({n10}:{n01})" for _, n01, n10, p in cmp["mcnemar"]) or "–"
    return {"Δ vs ref, pp (seed 95% CI)": seed_diff, "Δ bootstrap 95% CI, pp": boot,
            "p (bootstrap)": S.fmt_p(cmp["boot_p"]), "McNemar p per seed (won:lost)": mc,
            "vs ref": _verdict(cmp)}


def _as_gain(cd: dict[str, str], verdict: str) -> dict[str, str]:
    """A comparison's display columns named as a gain (TTA over no TTA, an ensemble over its best member)."""
    return {"Gain, pp (seed 95% CI)": cd["Δ vs ref, pp (seed 95% CI)"],
            "Gain bootstrap 95% CI, pp": cd["Δ bootstrap 95% CI, pp"], "p (bootstrap)": cd["p (bootstrap)"],
            "McNemar p per seed (won:lost)": cd["McNemar p per seed (won:lost)"], verdict: cd["vs ref"]}


def _pct(x: float, digits: int = 1) -> str:
    return f"{x * 100:.{digits}f}" if _finite(x) else "–"


def _mean_pm(values: list[float]) -> tuple[float, float, str]:
    vals = [v for v in values if _finite(v)]
    m, h = S.mean_ci(vals, CONFIDENCE)
    return m, h, S.fmt_pm(m, h, n=len(vals))


# ============================================================================ tables


def level_table(run: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    num, disp = [], []
    for lv in run.levels:
        rows = run.df[run.df["level"] == lv]
        configs = list(dict.fromkeys(rows["config_id"]))
        done = [c for c in configs if run.seeds(c, lv)]
        cid = run.best.get(lv)
        reported = run.reported.get(lv, "")
        base = {"level": lv, "description": run.level_labels.get(lv, ""), "configs_finished": len(done),
                "configs_planned": len(configs)}
        if cid is None:
            counts = ", ".join(f"{n} {k}" for k, n in run.status_counts(rows).items())
            num.append({**base, "best_config": None, "reported": reported})
            disp.append({"Level": lv, "What": base["description"],
                         "Best config (by val)": f"no finished trial yet ({counts})", "Seeds": "0",
                         "Val acc %": "–", "Test acc % (no TTA)": "–", "Test acc % with TTA": "–",
                         "Macro-F1": "–", "Trainable params": "–", "Time/trial (s)": "–",
                         "Configs done": f"{len(done)}/{len(configs)}", "Seed write-ups reported": reported})
            continue
        seeds = run.seeds(cid, lv)
        tids = list(seeds.values())
        test = [run.acc(t) for t in tids]
        val = [run.acc(t, "val") for t in tids]
        tm, th, tstr = _mean_pm(test)
        vm, vh, vstr = _mean_pm(val)
        tta = str(run.config_values(cid).get("tta", "none"))
        if tta != "none":
            am, ah, astr = _mean_pm([run.acc(t, "test", tta) for t in tids])
            astr = f"{astr} ({tta})"
        else:
            am, ah, astr = math.nan, math.nan, "–"
        f1 = [run.value(t, "macro_f1") for t in tids]
        f1m = float(np.nanmean(f1)) if any(_finite(x) for x in f1) else math.nan
        params = run.value(tids[0], "trainable_params")
        secs = math.nan
        for col in TIME_COLUMNS:
            vals = [run.value(t, col) for t in tids]
            if any(_finite(x) for x in vals):
                secs = float(np.nanmean(vals))
                break
        name = run.config_name(lv, cid)
        num.append({**base, "best_config": name, "config_id": cid, "trial_ids": " ".join(tids),
                    "seeds": len(tids), "val_acc_mean": vm, "val_acc_ci": vh, "test_acc_mean": tm,
                    "test_acc_ci": th, "tta": tta, "test_acc_tta_mean": am, "test_acc_tta_ci": ah,
                    "macro_f1_mean": f1m, "trainable_params": params, "seconds_per_trial": secs,
                    "reported": reported})
        disp.append({"Level": lv, "What": base["description"], "Best config (by val)": name,
                     "Seeds": str(len(tids)), "Val acc %": vstr, "Test acc % (no TTA)": tstr,
                     "Test acc % with TTA": astr, "Macro-F1": f"{f1m:.3f}" if _finite(f1m) else "–",
                     "Trainable params": f"{params:,.0f}" if _finite(params) else "–",
                     "Time/trial (s)": f"{secs:.0f}" if _finite(secs) else "–",
                     "Configs done": f"{len(done)}/{len(configs)}", "Seed write-ups reported": reported})
    return pd.DataFrame(num), pd.DataFrame(disp)


def _differences(ref: dict, other: dict, limit: int = 6) -> str:
    diff = [f"{k}={_fmt_value(other[k])}" for k in other if k in ref and not _same(ref[k], other[k])]
    if len(diff) > limit:
        diff = diff[:limit] + [f"… (+{len(diff) - limit})"]
    return ", ".join(diff)


def _same(a, b) -> bool:
    try:
        if isinstance(a, float) or isinstance(b, float):
            return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        pass
    return str(a) == str(b)


def _fmt_value(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def ablation_table(run: RunData, axis: str, level: str | None = None,
                   n_boot: int = N_BOOT) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """One axis: every arm's mean ± CI and its paired comparison with the axis's reference arm."""
    sub = run.df[run.df["axis"] == axis]
    level = str(sub["level"].iloc[0]) if level is None else level
    sub = sub[sub["level"].astype(str) == level]
    is_eval = axis in run.eval_axes
    arms = []
    for arm in dict.fromkeys(sub["arm"].astype(str)):
        r = sub[sub["arm"].astype(str) == arm]
        cid = str(r["config_id"].iloc[0])
        arms.append({"arm": arm, "config_id": cid, "mode": arm if is_eval else "none",
                     "is_ref": bool(r["is_reference"].any()),
                     "statuses": r.drop_duplicates("trial_id")["status"].value_counts().to_dict()})
    ref = next((a for a in arms if a["is_ref"]), None)
    if ref is None and is_eval:  # TTA axis without a 'none' arm: compare with no TTA anyway
        ref = {"arm": "none (no TTA)", "config_id": arms[0]["config_id"], "mode": "none", "is_ref": True,
               "statuses": {}, "synthetic": True}
        arms.insert(0, ref)
    if ref is None:
        lv_ref = run.df[(run.df["level"] == level) & (run.df["axis"] == "reference")]
        if len(lv_ref):
            ref = {"arm": f"{level} reference", "config_id": str(lv_ref["config_id"].iloc[0]), "mode": "none",
                   "is_ref": True, "statuses": {}, "synthetic": True}
            arms.insert(0, ref)
    ref_vals = run.config_values(ref["config_id"]) if ref else {}
    ref_seeds = run.seeds(ref["config_id"], level) if ref else {}
    num, disp = [], []
    for a in arms:
        seeds = run.seeds(a["config_id"], level)
        tids = list(seeds.values())
        test = [run.acc(t, "test", a["mode"]) for t in tids]
        val = [run.acc(t, "val", a["mode"]) for t in tids]
        tm, th, tstr = _mean_pm(test)
        vm, _, vstr = _mean_pm(val)
        same_as_ref = ref is not None and a["config_id"] == ref["config_id"] and a["mode"] == ref["mode"]
        changes = "" if (is_eval or same_as_ref) else _differences(ref_vals, run.config_values(a["config_id"]))
        pending = {k: v for k, v in a["statuses"].items() if k != "finished"}
        seeds_str = str(len(tids)) + (" (" + ", ".join(f"{v} {k}" for k, v in pending.items()) + ")"
                                      if pending else "")
        row = {"axis": axis, "level": level, "arm": a["arm"], "config_id": a["config_id"],
               "tta_mode": a["mode"], "is_reference": same_as_ref, "changes": changes, "seeds": len(tids),
               "val_acc_mean": vm, "test_acc_mean": tm, "test_acc_ci": th}
        d = {"Arm": a["arm"] + (" (reference)" if same_as_ref else ""), "Changes vs reference": changes or "–",
             "Seeds": seeds_str, "Val acc %": vstr, "Test acc %": tstr}
        if same_as_ref or ref is None:
            cmp_num = {}
            cmp_disp = {"Δ vs ref, pp (seed 95% CI)": "reference" if same_as_ref else "no reference",
                        "Δ bootstrap 95% CI, pp": "–", "p (bootstrap)": "–",
                        "McNemar p per seed (won:lost)": "–", "vs ref": "reference" if same_as_ref else "–"}
        else:
            cmp = compare(run, seeds, ref_seeds, a["mode"], ref["mode"], n_boot)
            cmp_num, cmp_disp = _cmp_columns(cmp), _cmp_display(cmp)
        num.append({**row, **cmp_num})
        disp.append({**d, **cmp_disp})
    title = f"{axis} (around {level}{'; evaluation only: same trained models, TTA modes from stored logits' if is_eval else ''})"
    return pd.DataFrame(num), pd.DataFrame(disp), title


def tta_table(run: RunData, n_boot: int = N_BOOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pipeline.augment import TTA_MODES

    num, disp = [], []
    seen = set()
    for lv in run.levels:
        for cid in dict.fromkeys(run.fin[run.fin["level"] == lv]["config_id"]):
            if cid in seen:
                continue
            seen.add(cid)
            seeds = run.seeds(cid, lv)
            for mode in TTA_MODES:
                if mode == "none":
                    continue
                accs = [run.acc(t, "test", mode) for t in seeds.values()]
                if not any(_finite(x) for x in accs):
                    continue
                cmp = compare(run, seeds, seeds, mode, "none", n_boot)
                bm, bh, bstr = _mean_pm([run.acc(t, "test", "none") for t in seeds.values()])
                mm, mh, mstr = _mean_pm(accs)
                name = run.config_name(lv, cid)
                num.append({"config": name, "config_id": cid, "mode": mode, "seeds": len(seeds),
                            "test_acc_none_mean": bm, "test_acc_mode_mean": mm, "test_acc_mode_ci": mh,
                            **_cmp_columns(cmp)})
                cd = _cmp_display(cmp)
                disp.append({"Config": name, "TTA mode": mode, "Seeds": str(len(seeds)), "No TTA %": bstr,
                             "With TTA %": mstr, **_as_gain(cd, "vs no TTA")})
    return pd.DataFrame(num), pd.DataFrame(disp)


def ensemble_specs(run: RunData) -> list[tuple[str, list[tuple[str, str]], str]]:
    """[(name, [(level, config_id), ...], why)] from the grid spec's 'ensembles', or all levels' best."""
    spec = run.spec.get("ensembles") or {}
    out = []
    if not spec:
        spec = {"best of each level": {"levels": [lv for lv in run.levels if lv in run.best]}}
    for name, e in spec.items():
        e = e or {}
        if "axis" in e:
            ax = str(e["axis"])
            if ax in run.eval_axes:
                run.notes.append(f"ensemble {name!r}: axis {ax!r} is evaluation-only (one trained model per seed); "
                                 f"see the TTA table instead.")
                continue
            sub = run.fin[run.fin["axis"] == ax]
            members = [(str(lv), str(c)) for lv, c in dict.fromkeys(zip(sub["level"], sub["config_id"]))]
            out.append((str(name), members, f"every finished arm of axis {ax}"))
        elif "levels" in e:
            members = [(lv, run.best[lv]) for lv in e["levels"] if lv in run.best]
            missing = [lv for lv in e["levels"] if lv not in run.best]
            if missing:
                run.notes.append(f"ensemble {name!r}: no finished config yet for level(s) {', '.join(missing)}.")
            out.append((str(name), members, "best config of " + ", ".join(lv for lv, _ in members)))
        else:
            run.notes.append(f"ensemble {name!r}: needs 'axis' or 'levels'; skipped.")
    return out


def _one_per_config(members: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep the first (level, config_id) of each config: the same config reached from two levels is one member."""
    out, seen = [], set()
    for lv, cid in members:
        if cid not in seen:
            seen.add(cid)
            out.append((lv, cid))
    return out


def ensemble_table(run: RunData, n_boot: int = N_BOOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pipeline.evaluate import soft_vote

    num, disp = [], []
    y = None if run.labels is None else run.labels["test"]
    if y is None:
        return pd.DataFrame(num), pd.DataFrame(disp)

    def add(name, kind, members_txt, n_seeds, ens_correct, best_name, best_correct, best_test, ens_acc):
        """ens_correct/best_correct: {seed: bool array}."""
        seeds = sorted(ens_correct)
        ea = [float(ens_correct[s].mean()) for s in seeds]
        em, eh, estr = _mean_pm(ea) if ens_acc is None else (ens_acc, math.nan, f"{ens_acc * 100:.1f} (one ensemble)")
        bm, bh, bstr = _mean_pm(best_test)
        if ens_acc is None:
            diff, dci = S.paired_diff_ci(ea, [float(best_correct[s].mean()) for s in seeds], CONFIDENCE)
        else:
            diff, dci = ens_acc - bm, math.nan
        cmp = {"paired_seeds": len(seeds), "diff": diff, "diff_ci": dci,
               **_image_tests([(s, ens_correct[s], best_correct[s]) for s in seeds], n_boot)}
        num.append({"ensemble": name, "combination": kind, "members": members_txt, "seeds": n_seeds,
                    "test_acc_mean": em, "test_acc_ci": eh, "best_member": best_name, "best_member_test_mean": bm,
                    "best_member_test_ci": bh, **_cmp_columns(cmp)})
        cd = _cmp_display(cmp)
        if ens_acc is not None:  # a seed ensemble: one number on each side, no CI over seeds
            cd["Δ vs ref, pp (seed 95% CI)"] = f"{diff * 100:+.1f} (one ensemble)"
            bstr = _pct(bm)
        disp.append({"Ensemble": name, "Combination": kind, "Members": members_txt, "Seeds": str(n_seeds),
                     "Ensemble test %": estr, "Best member (by val)": best_name, "Best member test %": bstr,
                     **_as_gain(cd, "vs best member")})

    for name, members, why in ensemble_specs(run):
        members = _one_per_config(members)
        if len({c for _, c in members}) < 2:
            run.notes.append(f"ensemble {name!r} ({why}): fewer than 2 finished members; skipped.")
            continue
        seed_maps = {m: run.seeds(m[1], m[0]) for m in members}
        common = sorted(set.intersection(*(set(s) for s in seed_maps.values())))
        usable = [s for s in common if all(run.correct(seed_maps[m][s]) is not None for m in members)]
        if not usable:
            run.notes.append(f"ensemble {name!r}: no seed where every member finished with stored logits; skipped.")
            continue
        names = [run.config_name(lv, c) for lv, c in members]
        val_means = [np.mean([run.acc(seed_maps[m][s], "val") for s in usable]) for m in members]
        best = int(np.argmax([v if _finite(v) else -1.0 for v in val_means]))
        best_m = members[best]
        best_correct = {s: run.correct(seed_maps[best_m][s]) for s in usable}
        best_test = [float(best_correct[s].mean()) for s in usable]
        for kind in ("soft vote", "val-weighted soft vote"):
            ens = {}
            for s in usable:
                scores = [run.scores(seed_maps[m][s]) for m in members]
                w = None if kind == "soft vote" else [run.acc(seed_maps[m][s], "val") for m in members]
                if w is not None and not all(_finite(x) and x > 0 for x in w):
                    raise ValueError(f"ensemble {name!r}: a member has no validation accuracy for seed {s}")
                ens[s] = soft_vote(scores, w).argmax(1) == y
            add(name, kind, "; ".join(names), len(usable), ens, names[best], best_correct, best_test, None)

    for lv in run.levels:  # seed ensembles: all seeds of each level's best config
        cid = run.best.get(lv)
        if cid is None:
            continue
        seeds = {s: t for s, t in run.seeds(cid, lv).items() if run.correct(t) is not None}
        if len(seeds) < 2:
            continue
        ens_c = soft_vote([run.scores(t) for t in seeds.values()]).argmax(1) == y
        vals = {s: run.acc(t, "val") for s, t in seeds.items()}
        bs = max(vals, key=lambda s: (vals[s] if _finite(vals[s]) else -1, -s))
        best_c = run.correct(seeds[bs])
        name = run.config_name(lv, cid)
        add(f"seeds of {name}", "soft vote", f"{len(seeds)} seeds ({', '.join(map(str, seeds))})", len(seeds),
            {bs: ens_c}, f"seed {bs}", {bs: best_c}, [float(best_c.mean())], float(ens_c.mean()))
    return pd.DataFrame(num), pd.DataFrame(disp)


def per_class_tables(run: RunData) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame, dict]:
    """Per-class precision/recall/F1 of each level's best config, pooled over its seeds; hardest pairs."""
    from pipeline.evaluate import confusion, per_class

    num, disp, pairs, confusions = [], {}, [], {}
    for lv in run.levels:
        cid = run.best.get(lv)
        if cid is None:
            continue
        seeds = run.seeds(cid, lv)
        name = run.config_name(lv, cid)
        scores = {s: run.scores(t) for s, t in seeds.items()}
        have = {s: sc for s, sc in scores.items() if sc is not None}
        y = None if run.labels is None else run.labels["test"]
        rows = []
        if have and y is not None and all(len(sc) == len(y) for sc in have.values()):
            pooled = np.concatenate(list(have.values()))
            labels = np.tile(y, len(have))
            pc = per_class(pooled, labels, run.classes)
            cm = sum(confusion(sc, y, len(run.classes)) for sc in have.values())
            confusions[lv] = (name, cm, len(have))
            for i, cls in enumerate(run.classes):
                rows.append({"level": lv, "config": name, "class": cls, "seeds_pooled": len(have),
                             "precision": pc["precision"][i], "recall": pc["recall"][i], "f1": pc["f1"][i],
                             "support": int(pc["support"][i])})
            sym = cm + cm.T
            iu = np.triu_indices(len(run.classes), 1)
            order = np.argsort(-sym[iu], kind="stable")[:5]
            for k in order:
                i, j = iu[0][k], iu[1][k]
                if sym[i, j] == 0:
                    break
                n_ij = int((cm[i].sum() + cm[j].sum()))
                pairs.append({"level": lv, "config": name, "class_a": run.classes[i], "class_b": run.classes[j],
                              "confusions": int(sym[i, j]), "a_as_b": int(cm[i, j]), "b_as_a": int(cm[j, i]),
                              "share_of_pair_images": sym[i, j] / n_ij if n_ij else math.nan})
        else:  # no logits: recall per class from trials.parquet
            cols = [run.class_column(i, c) for i, c in enumerate(run.classes)]
            if not any(cols):
                continue
            run.notes.append(f"per-class results of {name}: no stored logits; recall from trials.parquet only "
                             f"(mean over seeds), no precision/F1/confusion.")
            for i, cls in enumerate(run.classes):
                vals = [run.value(t, cols[i]) for t in seeds.values()] if cols[i] else []
                rows.append({"level": lv, "config": name, "class": cls, "seeds_pooled": 0, "precision": math.nan,
                             "recall": float(np.nanmean(vals)) if any(_finite(v) for v in vals) else math.nan,
                             "f1": math.nan, "support": math.nan})
        num += rows
        disp[lv] = pd.DataFrame([{"Class": r["class"], "Precision %": _pct(r["precision"]),
                                  "Recall = accuracy %": _pct(r["recall"]), "F1 %": _pct(r["f1"]),
                                  "Images": f"{r['support']:.0f}" if _finite(r["support"]) else "–"} for r in rows])
    return pd.DataFrame(num), disp, pd.DataFrame(pairs), confusions


def trials_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (not per plan point): where it appears in the plan, status, error, main metrics."""
    df = _normalise(df)
    if not len(df):
        return pd.DataFrame(columns=["trial_id", "status"])
    member = (df["level"].astype(str) + "/" + df["axis"].astype(str) + "=" + df["arm"].astype(str))
    member = member.str.replace("/reference=reference", "/reference", regex=False)
    plan = member.groupby(df["trial_id"], sort=False).agg(lambda s: "; ".join(dict.fromkeys(s)))
    first = df.drop_duplicates("trial_id").set_index("trial_id")
    out = pd.DataFrame({"trial_id": first.index, "plan": plan.reindex(first.index).values,
                        "seed": first["seed"].values, "status": first["status"].values})
    for c in ("val_acc", "test_acc", "macro_f1", "trainable_params", "trial_seconds", "train_seconds"):
        if c in first:
            out[c] = first[c].values
    out["error"] = first["error"].values if "error" in first else None
    return out.reset_index(drop=True)
