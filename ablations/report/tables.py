"""The report's tables, built from a loaded run (``RunData``): each builder returns a ``Table`` (one numeric frame
plus its column spec, see ``ablations.report.tablespec``), and ``compare``, the paired comparison behind them.

How sure a difference is (see ``ablations.stats``): a difference between two configs is measured per seed (the
same seed trains both) and on the same test images. It is called higher or lower only when it holds across
seeds AND test images: the t-test on the per-seed differences (n - 1 df) and the paired bootstrap over test
images of the seed-averaged difference must both reject 0 (p_both = the larger p), after Holm's correction within
the table (each ablation axis is its own table). With fewer than ``MIN_SEEDS`` seeds there is no verdict. The
exact McNemar test per seed is shown beside them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from .. import stats as S
from ..claims import Claim, absent_classes, arm_name, not_testable
from ..stats import finite
from .rundata import RunData, normalise_trials
from .tablespec import (
    EMPTY,
    Col,
    Table,
    adaptive_columns,
    boot_ci,
    comparison_columns,
    fmt_value,
    number,
    p_value,
    pct,
    pct_text,
    per_seed,
    per_seed_diff,
    seed_values,
    text,
)

N_BOOT = 10000
BOOT_SEED = 0
CONFIDENCE = 0.95
POWER = 0.8
TIME_COLUMNS = ("trial_seconds", "train_seconds")


# ============================================================================ comparisons


def summary(prefix: str, values: dict[int, float]) -> dict[str, Any]:
    """``<prefix>_mean``, ``<prefix>_ci`` (t-interval over seeds, NaN below MIN_SEEDS seeds: an interval from
    one or two seeds is not printed anywhere) and ``<prefix>_seed<s>`` of per-seed values."""
    vals = {s: v for s, v in values.items() if finite(v)}
    m, h = S.mean_ci(list(vals.values()), CONFIDENCE)
    h = h if len(vals) >= S.MIN_SEEDS else math.nan
    return {f"{prefix}_mean": m, f"{prefix}_ci": h, **{f"{prefix}_seed{s}": v for s, v in vals.items()}}


def compare(run: RunData, a: dict[int, str], b: dict[int, str], mode_a: str = "none", mode_b: str = "none",
            n_boot: int = N_BOOT, null: float = 0.0) -> dict[str, Any]:
    """A (arm) minus B (reference) on the seeds both finished: per-seed differences and their t-test, the paired
    image bootstrap of the seed-averaged difference and McNemar per seed (``stats.seed_image_test`` columns)."""
    common = sorted(set(a) & set(b))
    diffs = {s: run.acc(a[s], "test", mode_a) - run.acc(b[s], "test", mode_b) for s in common}
    pairs = [(s, run.correct(a[s], "test", mode_a), run.correct(b[s], "test", mode_b)) for s in common]
    pairs = [(s, x, y) for s, x, y in pairs if x is not None and y is not None]  # seeds with stored logits
    return image_test(diffs, pairs, n_boot, null)


def image_test(diffs: dict[int, float], pairs: list[tuple[int, np.ndarray, np.ndarray]], n_boot: int,
               null: float = 0.0) -> dict[str, Any]:
    """``stats.seed_image_test`` of per-seed differences and (seed, correct_a, correct_b) image pairs."""
    boot = None
    if pairs:
        boot = S.paired_bootstrap(np.stack([x for _, x, _ in pairs]), np.stack([y for _, _, y in pairs]),
                                  n_boot=n_boot, seed=BOOT_SEED, confidence=CONFIDENCE, null=null)
    mcn = [(s, *S.mcnemar_exact(x, y)) for s, x, y in pairs]
    return S.seed_image_test(diffs, boot, len(pairs), mcn, null, CONFIDENCE)


def mde_note(rows: list[dict]) -> str:
    """What 'inconclusive' means for one table: the minimum detectable effect at its n and seed variance."""
    samples = [list(seed_values(r, "diff").values()) for r in rows]
    samples = [x for x in samples if x]
    if not samples:
        return ""
    ns = [len(x) for x in samples]
    n = int(np.median(ns))
    n_txt = f"n = {n} seeds" + (f" (the median; {min(ns)} to {max(ns)} here)" if min(ns) != max(ns) else "")
    sd, df = S.pooled_sd(samples)
    halves = [(r["boot_hi"] - r["boot_lo"]) / 2 for r in rows if finite(r.get("boot_lo")) and finite(r.get("boot_hi"))]
    z = _st.norm.ppf(1 - S.ALPHA / 2)
    img = ((z + _st.norm.ppf(POWER)) * float(np.median(halves)) / z) if halves else math.nan
    img_txt = f"; the test images alone resolve about {img * 100:.1f} pp" if finite(img) else ""
    if not finite(sd):
        return (f"Seed-to-seed variation unknown with {n} seed: no verdicts (rerun with 3 or more seeds)"
                f"{img_txt}.")
    sd_txt = f"SD of a per-seed difference {sd * 100:.1f} pp (pooled over {len(samples)} comparison(s), {df} df)"
    power = f"{POWER:.0%} power, two-sided {S.ALPHA:.0%}"
    if n < S.MIN_SEEDS:
        return (f"No verdicts with {n} seeds. {sd_txt}: 3 seeds would detect about "
                f"{S.min_detectable_effect(sd, 3) * 100:.1f} pp and 5 seeds about "
                f"{S.min_detectable_effect(sd, 5) * 100:.1f} pp ({power}){img_txt}.")
    m = sum(1 for r in rows if r.get("paired_seeds", 0) >= S.MIN_SEEDS and finite(r.get("p_both")))
    holm_txt = (f"; Holm's first step over {m} comparisons (5%/{m}) needs "
                f"{S.min_detectable_effect(sd, n, S.ALPHA / m) * 100:.1f} pp" if m > 1 else "")
    return (f"Minimum detectable effect ({power}): {S.min_detectable_effect(sd, n) * 100:.1f} pp at {n_txt}, "
            f"{sd_txt}{holm_txt}{img_txt}. Smaller true differences are likely to come out inconclusive.")


def _with_verdicts(rows: list[dict]) -> list[dict]:
    """Holm over the rows that hold a comparison (one family); the others keep their own verdict."""
    family = [r for r in rows if "p_both" in r]
    S.family_verdicts(family)
    return rows


# ============================================================================ tables


LEVEL_COLUMNS = [
    Col("Level", text("level")),
    Col("What", text("description"), note=True),
    Col("Best config (by val)", lambda r: r["best_config"] if isinstance(r.get("best_config"), str)
        else f"no finished trial yet ({r.get('status_counts')})"),
    Col("Seeds", lambda r: str(int(r["seeds"])) if finite(r.get("seeds")) else "0"),
    Col("Val acc %", per_seed("val_acc")),
    Col("Test acc % (no TTA)", per_seed("test_acc")),
    Col("Test acc % with TTA", lambda r: f"{per_seed('test_acc_tta')(r)} ({r['tta']})"
        if finite(r.get("test_acc_tta_mean")) else EMPTY),  # its label names the mode (``level_table``)
    Col("Macro-F1", number("macro_f1_mean", ".3f")),
    Col("Trainable params", number("trainable_params", ",.0f")),
    Col("Time/trial (s)", number("seconds_per_trial", ".0f")),
    Col("Configs done", lambda r: f"{r['configs_finished']}/{r['configs_planned']}", md=False),
    Col("Seed write-ups reported", text("reported", ""), note=True),
]


def level_table(run: RunData, adaptive=None) -> Table:
    """Each level's best config (by validation). ``adaptive`` (an --until-decided run): a column with the
    verdicts that involve the level's configs, by how their seeds stopped and the seeds they used."""
    rows = []
    for lv in run.levels:
        lrows = run.df[(run.df["level"] == lv) & run.df["competes"]]
        configs = list(dict.fromkeys(lrows["config_id"]))
        done = [c for c in configs if run.seeds(c, lv)]
        cid = run.best.get(lv)
        row: dict[str, Any] = {"level": lv, "description": run.level_labels.get(lv, ""),
                               "configs_finished": len(done), "configs_planned": len(configs),
                               "best_config": None, "reported": run.reported.get(lv, "")}
        if cid is None:
            row["status_counts"] = ", ".join(f"{n} {k}" for k, n in run.status_counts(lrows).items())
            rows.append(row)
            continue
        seeds = run.seeds(cid, lv)
        tids = list(seeds.values())
        row.update(best_config=run.config_name(lv, cid), config_id=cid, trial_ids=" ".join(tids), seeds=len(tids),
                   **summary("val_acc", {s: run.acc(t, "val") for s, t in seeds.items()}),
                   **summary("test_acc", {s: run.acc(t) for s, t in seeds.items()}),
                   own_tta=str(run.config_values(cid).get("tta", "none")))
        f1 = [run.value(t, "macro_f1") for t in tids]
        row["macro_f1_mean"] = float(np.nanmean(f1)) if any(finite(x) for x in f1) else math.nan
        row["trainable_params"] = run.value(tids[0], "trainable_params")
        row["seconds_per_trial"] = next((float(np.nanmean(v)) for col in TIME_COLUMNS
                                         for v in [[run.value(t, col) for t in tids]] if any(finite(x) for x in v)),
                                        math.nan)
        rows.append(row)
    common = _common_tta(run, rows)
    columns = [Col(f"Test acc % with {common} TTA (every level)", per_seed("test_acc_tta")) if c.label ==
               "Test acc % with TTA" else c for c in LEVEL_COLUMNS] if common != "none" else \
        [c for c in LEVEL_COLUMNS if c.label != "Test acc % with TTA"]
    for row in rows:
        if common != "none" and row.get("config_id"):
            seeds = run.seeds(row["config_id"], row["level"])
            row.update(tta=common, **summary("test_acc_tta", {s: run.acc(t, "test", common) for s, t in seeds.items()}))
    if adaptive is not None:
        for row in rows:
            configs = set(run.df[run.df["level"].astype(str) == row["level"]]["config_id"].astype(str))
            row["adaptive_verdicts"] = adaptive.level_summary(configs)
        return Table("levels", pd.DataFrame(rows),
                     [*columns[:-1], Col("Verdicts around this level (anytime-valid): how their seeds stopped",
                                         text("adaptive_verdicts"), note=True), columns[-1]])
    return Table("levels", pd.DataFrame(rows), columns)


def _common_tta(run: RunData, rows: list[dict]) -> str:
    """The widest TTA mode that every level's best config evaluated (the modes nest: none, flip, flip_crops), so
    that the level table compares every level with the same test-time views; 'none' if some level has no view
    beyond the plain one. A level without a finished config does not narrow it."""
    from pipeline.registry import TTA_MODES

    order = list(TTA_MODES)
    own = [r["own_tta"] for r in rows if r.get("config_id")]
    return min(own, key=order.index) if own else "none"


def _differences(ref: dict, other: dict, limit: int = 6) -> str:
    diff = [f"{k}={fmt_value(other[k])}" for k in other if k in ref and not _same(ref[k], other[k])]
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


def _axis_arms(run: RunData, axis: str, level: str) -> tuple[list[dict], dict | None]:
    """The arms of one axis around one level, in plan order, and its reference arm (added when the axis has
    none: no TTA for a TTA axis, else the level's reference config)."""
    sub = run.df[(run.df["axis"] == axis) & (run.df["level"].astype(str) == level)]
    is_eval = axis in run.eval_axes
    arms = []
    for arm in dict.fromkeys(sub["arm"].astype(str)):
        r = sub[sub["arm"].astype(str) == arm]
        arms.append({"arm": arm, "config_id": str(r["config_id"].iloc[0]), "mode": arm if is_eval else "none",
                     "is_ref": bool(r["is_reference"].any()),
                     "statuses": r.drop_duplicates("trial_id")["status"].value_counts().to_dict()})
    ref = next((a for a in arms if a["is_ref"]), None)
    if ref is None and is_eval:  # TTA axis without a 'none' arm: compare with no TTA anyway
        ref = {"arm": "none (no TTA)", "config_id": arms[0]["config_id"], "mode": "none", "is_ref": True,
               "statuses": {}}
        arms.insert(0, ref)
    if ref is None and run.reference_config(level) is not None:
        ref = {"arm": f"{level} reference", "config_id": run.reference_config(level), "mode": "none",
               "is_ref": True, "statuses": {}}
        arms.insert(0, ref)
    return arms, ref


def _reference_text(r) -> str:
    return {"reference": "reference", "no reference": "no reference"}.get(r.get("verdict"), EMPTY)


def ablation_table(run: RunData, axis: str, level: str | None = None, n_boot: int = N_BOOT,
                   name: str | None = None, adaptive=None) -> tuple[Table, str]:
    """One axis: every arm's accuracy and its seed-and-image comparison with the axis's reference arm.
    ``adaptive`` (an --until-decided run): the anytime-valid verdicts, Holm over the whole study."""
    if level is None:
        level = str(run.df[run.df["axis"] == axis]["level"].iloc[0])
    is_eval = axis in run.eval_axes
    arms, ref = _axis_arms(run, axis, level)
    reported = {arm_name(k): float(v) / 100 for k, v in (run.axis_spec(axis).get("reported") or {}).items()}
    ref_vals = run.config_values(ref["config_id"]) if ref else {}
    ref_seeds = run.seeds(ref["config_id"], level) if ref else {}
    rows = []
    for a in arms:
        seeds = run.seeds(a["config_id"], level)
        same_as_ref = ref is not None and a["config_id"] == ref["config_id"] and a["mode"] == ref["mode"]
        pending = {k: v for k, v in a["statuses"].items() if k != "finished"}
        row = {"axis": axis, "level": level, "arm": a["arm"], "config_id": a["config_id"], "tta_mode": a["mode"],
               "is_reference": same_as_ref,
               "changes": "" if (is_eval or same_as_ref) else _differences(ref_vals, run.config_values(a["config_id"])),
               "seeds": len(seeds), "pending": ", ".join(f"{v} {k}" for k, v in pending.items()),
               **summary("val_acc", {s: run.acc(t, "val", a["mode"]) for s, t in seeds.items()}),
               **summary("test_acc", {s: run.acc(t, "test", a["mode"]) for s, t in seeds.items()})}
        if reported:
            row["reported_test_acc"] = reported.get(a["arm"], math.nan)
        if same_as_ref or ref is None:
            row["verdict"] = "reference" if same_as_ref else "no reference"
        else:
            row.update(compare(run, seeds, ref_seeds, a["mode"], ref["mode"], n_boot))
        rows.append(row)
    _with_verdicts(rows)
    if adaptive is not None:
        for r in rows:
            if "p_both" in r:
                adaptive.apply(r, f"{axis}/{r['arm']}")
    columns = [Col("Arm", lambda r: r["arm"] + (" (reference)" if r["is_reference"] else "")),
               Col("Changes vs reference", text("changes"), note=True),
               Col("Seeds", lambda r: f"{r['seeds']}" + (f" ({r['pending']})" if r.get("pending") else "")),
               Col("Val acc %", per_seed("val_acc")), Col("Test acc %", per_seed("test_acc"))]
    if reported:
        columns.append(Col("Write-up's test acc % (their single run)", pct("reported_test_acc", 2)))
    if adaptive is not None:
        columns += adaptive_columns(reference_text=_reference_text)
    else:
        columns += comparison_columns(reference_text=_reference_text)
    table = Table(name or f"ablation_{axis}", pd.DataFrame(rows), columns)
    if adaptive is None:
        table.notes = [n for n in [mde_note([r for r in rows if "p_both" in r])] if n]
    what = "; evaluation only: same trained models, TTA modes from stored logits" if is_eval else ""
    title = f"{axis} (around {level}{what})"
    return table, title


GAIN_COLUMNS = comparison_columns("Gain, pp (over seeds)")


def tta_table(run: RunData, n_boot: int = N_BOOT) -> Table:
    from pipeline.registry import TTA_MODES

    rows, seen = [], set()
    for lv in run.levels:
        for cid in dict.fromkeys(run.fin[run.fin["level"] == lv]["config_id"]):
            if cid in seen:
                continue
            seen.add(cid)
            seeds = run.seeds(cid, lv)
            for mode in TTA_MODES:
                accs = {s: run.acc(t, "test", mode) for s, t in seeds.items()}
                if mode == "none" or not any(finite(x) for x in accs.values()):
                    continue
                rows.append({"config": run.config_name(lv, cid), "config_id": cid, "mode": mode, "seeds": len(seeds),
                             **summary("test_acc_none", {s: run.acc(t, "test", "none") for s, t in seeds.items()}),
                             **summary("test_acc_mode", accs), **compare(run, seeds, seeds, mode, "none", n_boot)})
    _with_verdicts(rows)
    table = Table("tta", pd.DataFrame(rows),
                  [Col("Config", text("config")), Col("TTA mode", text("mode")), Col("Seeds", text("seeds")),
                   Col("No TTA %", per_seed("test_acc_none")), Col("With TTA %", per_seed("test_acc_mode")),
                   *GAIN_COLUMNS])
    table.notes = [n for n in [mde_note(rows)] if n]
    return table


def ensemble_specs(run: RunData) -> list[tuple[str, list[tuple[str, str]], str]]:
    """[(name, [(level, config_id), ...], why)] from the grid spec's 'ensembles', or all levels' best."""
    from ..grids import ensembles_of

    out = []
    for name, e in ensembles_of(run.spec, [lv for lv in run.levels if lv in run.best]).items():
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


ONE_ENSEMBLE = "no verdict: one ensemble (images only)"


def _ensemble_gain(r) -> str:
    if r.get("one_ensemble"):
        return f"{pct_text(r.get('boot_diff'), signed=True)} (one ensemble)"
    return per_seed_diff()(r)


ENSEMBLE_COLUMNS = [
    Col("Ensemble", text("ensemble")), Col("Combination", text("combination")),
    Col("Members", text("members"), note=True),
    Col("Seeds", text("seeds")),
    Col("Ensemble test %", lambda r: f"{pct_text(r['test_acc_mean'])} (one ensemble)" if r.get("one_ensemble")
        else per_seed("test_acc")(r)),
    Col("Best member (by val)", text("best_member"), note=True),
    Col("Best member test %", per_seed("best_member_test")),
    Col("Gain, pp (over seeds)", _ensemble_gain), *GAIN_COLUMNS[1:]]


def ensemble_table(run: RunData, n_boot: int = N_BOOT) -> Table:
    from pipeline.evaluate import soft_vote

    rows: list[dict] = []
    y = None if run.labels is None else run.labels["test"]
    if y is None:
        return Table("ensembles", pd.DataFrame(rows), ENSEMBLE_COLUMNS)

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
        best = int(np.argmax([v if finite(v) else -1.0 for v in val_means]))
        best_correct = {s: run.correct(seed_maps[members[best]][s]) for s in usable}
        for kind in ("soft vote", "val-weighted soft vote"):
            ens = {}
            for s in usable:
                scores = [run.scores(seed_maps[m][s]) for m in members]
                w = None if kind == "soft vote" else [run.acc(seed_maps[m][s], "val") for m in members]
                if w is not None and not all(finite(x) and x > 0 for x in w):
                    raise ValueError(f"ensemble {name!r}: a member has no validation accuracy for seed {s}")
                ens[s] = soft_vote(scores, w).argmax(1) == y
            acc = {s: float(ens[s].mean()) for s in usable}
            best_acc = {s: float(best_correct[s].mean()) for s in usable}
            rows.append({"ensemble": name, "combination": kind, "members": "; ".join(names), "seeds": len(usable),
                         "one_ensemble": False, **summary("test_acc", acc), "best_member": names[best],
                         **summary("best_member_test", best_acc),
                         **image_test({s: acc[s] - best_acc[s] for s in usable},
                                      [(s, ens[s], best_correct[s]) for s in usable], n_boot)})

    for lv in run.levels:  # seed ensembles: all seeds of each level's best config
        cid = run.best.get(lv)
        if cid is None:
            continue
        seeds = {s: t for s, t in run.seeds(cid, lv).items() if run.correct(t) is not None}
        if len(seeds) < 2:
            continue
        ens_c = soft_vote([run.scores(t) for t in seeds.values()]).argmax(1) == y
        vals = {s: run.acc(t, "val") for s, t in seeds.items()}
        bs = max(vals, key=lambda s: (vals[s] if finite(vals[s]) else -1, -s))
        best_c = run.correct(seeds[bs])
        cname = run.config_name(lv, cid)
        boot = S.paired_bootstrap(ens_c, best_c, n_boot=n_boot, seed=BOOT_SEED, confidence=CONFIDENCE)
        rows.append({"ensemble": f"seeds of {cname}", "combination": "soft vote", "one_ensemble": True,
                     "members": f"{len(seeds)} seeds ({', '.join(map(str, seeds))})", "seeds": len(seeds),
                     "test_acc_mean": float(ens_c.mean()), "best_member": f"seed {bs}",
                     "best_member_test_mean": float(best_c.mean()), f"best_member_test_seed{bs}": float(best_c.mean()),
                     **S.seed_image_test({}, boot, 1, [(bs, *S.mcnemar_exact(ens_c, best_c))]),
                     "paired_seeds": 0, "verdict": ONE_ENSEMBLE})
    _with_verdicts([r for r in rows if not r["one_ensemble"]])
    table = Table("ensembles", pd.DataFrame(rows), ENSEMBLE_COLUMNS)
    table.notes = [n for n in [mde_note([r for r in rows if not r["one_ensemble"]])] if n]
    return table


PER_CLASS_COLUMNS = [Col("Class", text("class")), Col("Precision %", pct("precision")),
                     Col("Recall = accuracy %", pct("recall")), Col("F1 %", pct("f1")),
                     Col("Images", number("support", ".0f"))]
PAIR_COLUMNS = [Col("Level", text("level")), Col("Pair", lambda r: f"{r['class_a']} ↔ {r['class_b']}"),
                Col("Confusions", text("confusions")), Col("a→b / b→a", lambda r: f"{r['a_as_b']} / {r['b_as_a']}"),
                Col("% of the pair's images", pct("share_of_pair_images"))]


def per_class_tables(run: RunData) -> tuple[Table, Table, dict]:
    """Per-class precision/recall/F1 of each level's best config, pooled over its seeds (one sub-table per
    config); the hardest class pairs; and the confusion matrices for the figure."""
    from pipeline.evaluate import confusion, per_class

    rows, pairs, confusions = [], [], {}
    y = None if run.labels is None else run.labels["test"]
    for lv in run.levels:
        cid = run.best.get(lv)
        if cid is None:
            continue
        seeds = run.seeds(cid, lv)
        name = run.config_name(lv, cid)
        have = {s: sc for s, sc in ((s, run.scores(t)) for s, t in seeds.items()) if sc is not None}
        if have and y is not None and all(len(sc) == len(y) for sc in have.values()):
            pc = per_class(np.concatenate(list(have.values())), np.tile(y, len(have)), run.classes)
            cm = sum(confusion(sc, y, len(run.classes)) for sc in have.values())
            confusions[lv] = (name, cm, len(have))
            rows += [{"level": lv, "config": name, "class": cls, "seeds_pooled": len(have),
                      "precision": pc["precision"][i], "recall": pc["recall"][i], "f1": pc["f1"][i],
                      "support": int(pc["support"][i])} for i, cls in enumerate(run.classes)]
            pairs += _hardest_pairs(run.classes, cm, lv, name)
        else:  # no logits: recall per class from trials.parquet
            cols = [run.class_column(i, c) for i, c in enumerate(run.classes)]
            if not any(cols):
                continue
            run.notes.append(f"per-class results of {name}: no stored logits; recall from trials.parquet only "
                             f"(mean over seeds), no precision/F1/confusion.")
            for i, cls in enumerate(run.classes):
                vals = [run.value(t, cols[i]) for t in seeds.values()] if cols[i] else []
                rows.append({"level": lv, "config": name, "class": cls, "seeds_pooled": 0, "precision": math.nan,
                             "recall": float(np.nanmean(vals)) if any(finite(v) for v in vals) else math.nan,
                             "f1": math.nan, "support": math.nan})
    return (Table("per_class", pd.DataFrame(rows), PER_CLASS_COLUMNS, group="config"),
            Table("confusion_pairs", pd.DataFrame(pairs), PAIR_COLUMNS), confusions)


def _hardest_pairs(classes, cm: np.ndarray, lv: str, name: str, top: int = 5) -> list[dict]:
    sym = cm + cm.T
    iu = np.triu_indices(len(classes), 1)
    out = []
    for k in np.argsort(-sym[iu], kind="stable")[:top]:
        i, j = iu[0][k], iu[1][k]
        if sym[i, j] == 0:
            break
        n_ij = int(cm[i].sum() + cm[j].sum())
        out.append({"level": lv, "config": name, "class_a": classes[i], "class_b": classes[j],
                    "confusions": int(sym[i, j]), "a_as_b": int(cm[i, j]), "b_as_a": int(cm[j, i]),
                    "share_of_pair_images": sym[i, j] / n_ij if n_ij else math.nan})
    return out


TRIAL_METRICS = {"val_acc": Col("val acc %", pct("val_acc")), "test_acc": Col("test acc %", pct("test_acc")),
                 "macro_f1": Col("macro_f1", number("macro_f1", ".3f")),
                 "trainable_params": Col("trainable_params", number("trainable_params", ",.0f")),
                 **{c: Col(c, number(c, ".0f")) for c in TIME_COLUMNS}}


def trials_table(df: pd.DataFrame) -> Table:
    """One row per trial (not per plan point): where it appears in the plan, status, error, main metrics."""
    df = normalise_trials(df)
    head = [Col("trial_id", text("trial_id")), Col("plan", text("plan"), note=True), Col("seed", text("seed")),
            Col("status", text("status"))]
    if not len(df):
        return Table("trials", pd.DataFrame(columns=["trial_id", "status"]), head)
    member = (df["level"].astype(str) + "/" + df["axis"].astype(str) + "=" + df["arm"].astype(str))
    member = member.str.replace("/reference=reference", "/reference", regex=False)
    plan = member.groupby(df["trial_id"], sort=False).agg(lambda s: "; ".join(dict.fromkeys(s)))
    first = df.drop_duplicates("trial_id").set_index("trial_id")
    out = pd.DataFrame({"trial_id": first.index, "plan": plan.reindex(first.index).values,
                        "seed": first["seed"].values, "status": first["status"].values})
    for c in TRIAL_METRICS:
        if c in first:
            out[c] = first[c].values
    out["error"] = first["error"].values if "error" in first else None
    columns = head + [col for c, col in TRIAL_METRICS.items() if c in out] + [Col("error", text("error", ""),
                                                                                    note=True)]
    return Table("trials", out.reset_index(drop=True), columns)


# ============================================================================ claims


class NotMeasured(Exception):
    """A claim this run cannot measure (its level, axis or arm is not in the run, or nothing finished)."""


def measure_claim(run: RunData, claim: Claim, n_boot: int = N_BOOT, null: float = 0.0) -> dict[str, Any]:
    """The claim's difference, better minus worse, with its seed and image tests (against ``null``)."""
    if claim.kind == "classes":
        return _measure_classes(run, claim, n_boot, null)
    if claim.kind == "levels":
        sides = []
        for lv in (claim.better, claim.worse):
            cid = run.reference_config(lv)
            if cid is None:
                raise NotMeasured(f"level {lv} is not in this run")
            sides.append((run.seeds(cid, lv), "none"))
    else:
        sides = []
        for arm in (claim.better, claim.worse):
            found = run.arm_config(claim.axis, arm)
            if found is None:
                raise NotMeasured(f"axis {claim.axis} has no arm {arm} in this run")
            lv, cid, mode = found
            sides.append((run.seeds(cid, lv), mode))
    (a, mode_a), (b, mode_b) = sides
    if not set(a) & set(b):
        raise NotMeasured("no seed where both sides finished")
    return compare(run, a, b, mode_a, mode_b, n_boot, null)


@dataclass
class ClassClaimData:
    """A class claim's measurements on test: per-seed differences of mean recalls, and the seeds' correct-image
    arrays (seeds x images, None without stored logits) for the bootstrap."""

    values: dict[int, float]
    correct: np.ndarray | None
    labels: np.ndarray | None
    better: list[int]
    worse: list[int]

    def bootstrap(self, n_boot: int, null: float = 0.0) -> tuple[float, float, float, float] | None:
        if self.correct is None:
            return None
        return S.class_group_bootstrap(self.correct, self.labels, self.better, self.worse, n_boot=n_boot,
                                       seed=BOOT_SEED, confidence=CONFIDENCE, null=null)


def class_claim_data(run: RunData, claim: Claim) -> ClassClaimData:
    cid = run.reference_config(claim.level)
    if cid is None:
        raise NotMeasured(f"level {claim.level} is not in this run")
    index = {c.lower(): i for i, c in enumerate(run.classes)}
    missing = [c for c in (*claim.better, *claim.worse) if c.lower() not in index]
    if missing:
        raise NotMeasured(f"class(es) {', '.join(missing)} not in this run's data")
    better, worse = [index[c.lower()] for c in claim.better], [index[c.lower()] for c in claim.worse]
    seeds = run.seeds(cid, claim.level)
    correct = {s: run.correct(t) for s, t in seeds.items()}
    correct = {s: c for s, c in correct.items() if c is not None and run.labels is not None}
    # per seed from the per-class accuracies in trials.parquet (the same recalls the logits give), else the logits
    cols = [run.class_column(i, c) for i, c in enumerate(run.classes)]
    recall = {s: [run.value(t, col) if col else math.nan for col in cols] for s, t in seeds.items()}
    values = {s: float(np.mean([r[k] for k in better]) - np.mean([r[k] for k in worse]))
              for s, r in recall.items() if all(finite(r[k]) for k in (*better, *worse))}
    stacked = y = None
    if correct:
        y, stacked = run.labels["test"], np.stack(list(correct.values()))
        values = {**dict(zip(correct, S.class_group_values(stacked, y, better, worse).tolist())), **values}
    if not values:
        raise NotMeasured("no per-class accuracies or stored test logits of its config")
    return ClassClaimData(dict(sorted(values.items())), stacked, y, better, worse)


def _measure_classes(run: RunData, claim: Claim, n_boot: int, null: float) -> dict[str, Any]:
    data = class_claim_data(run, claim)
    boot_seeds = 0 if data.correct is None else len(data.correct)
    return S.seed_image_test(data.values, data.bootstrap(n_boot, null), boot_seeds, (), null, CONFIDENCE)


CLAIM_VERDICTS = {"higher": "confirmed", "lower": "contradicted"}
CLAIM_COLUMNS = [Col("Claim", text("claim")), Col("Says", text("says"), note=True),
                 Col("Source", text("source"), note=True), Col("Measures (better − worse)", text("compared"), note=True),
                 Col("Δ, pp (over seeds)", per_seed_diff()), Col("95% CI over test images, pp (bootstrap)", boot_ci),
                 Col("p seeds (t)", p_value("p_seed")), Col("p images (bootstrap)", p_value("boot_p")),
                 Col("p Holm", p_value("p_holm")), Col("Verdict", text("verdict"))]


ADAPTIVE_CLAIM_COLUMNS = [*CLAIM_COLUMNS[:4], *adaptive_columns("Δ, pp (over seeds)")]


def claims_table(run: RunData, n_boot: int = N_BOOT, adaptive=None) -> Table:
    """Every claim of the grid with its measured difference and verdict: confirmed (significant in the claimed
    direction and beyond its margin), contradicted (significant the other way), inconclusive, or no verdict
    (fewer than MIN_SEEDS seeds, or not measured). Holm over the claims that have a verdict. ``adaptive``
    (``adaptive_report.StudyVerdicts``, an --until-decided run): the verdicts of its anytime-valid procedure,
    with the seeds each used."""
    rows, measured = [], []
    for c in run.claims:
        row: dict[str, Any] = {"claim": c.id, "says": c.says, "source": c.source, "kind": c.kind,
                               "compared": c.compared(), "margin_pp": c.margin, "null_pp": 0.0}
        if c.not_in_grid:
            row["verdict"] = f"not in this grid ({c.not_in_grid})"
            rows.append(row)
            continue
        if absent_classes(c, run.classes):
            row["verdict"] = not_testable(absent_classes(c, run.classes))
            rows.append(row)
            continue
        try:
            row.update(measure_claim(run, c, n_boot))
            margin = c.margin / 100
            if margin and finite(row["diff"]) and row["diff"] > margin:  # test beyond the margin, not beyond 0
                row.update(measure_claim(run, c, n_boot, null=margin), null_pp=c.margin)
            measured.append(row)
        except NotMeasured as e:
            row["verdict"] = f"not measured: {e}"
        rows.append(row)
    S.family_verdicts(measured)
    for r in measured:
        v = CLAIM_VERDICTS.get(r["verdict"], r["verdict"])
        if v == "confirmed" and r["null_pp"] == 0 and r["margin_pp"]:
            v = f"{S.INCONCLUSIVE} (higher, not beyond the {r['margin_pp']:g} pp margin)"
        r["verdict"] = v
    if adaptive is not None:
        for r in rows:
            adaptive.apply(r, f"claim/{r['claim']}", claim=True)
        return Table("claims", pd.DataFrame(rows), ADAPTIVE_CLAIM_COLUMNS)
    table = Table("claims", pd.DataFrame(rows), CLAIM_COLUMNS)
    table.notes = [n for n in [mde_note(measured)] if n]
    return table
