"""The report's tables, built from a loaded run (``RunData``): each builder returns a ``Table`` (one numeric frame
plus its column spec, see ``ablations.report.tablespec``), and ``compare``, the paired comparison behind them.

How sure a difference is (see ``ablations.stats``): a difference between two configs is measured per seed (the
same seed trains both) and on the same test images. Its interval and test cover both sources of noise: the
spread of the per-seed differences (training) and the paired bootstrap over test images (the test sample),
their variances added (``stats.seed_image_test``'s ``p_both``). The ablation, TTA and ensemble tables are
exploratory: Holm's correction runs within each table, over its rows that are not claims; a row that makes the
same comparison as a claim (the confirmatory family, ``claimtable``) shows the claim's verdict instead. With
fewer than ``MIN_SEEDS`` seeds there is no verdict. The exact McNemar test per seed is shown beside them.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from ablations import stats as S
from ablations.plan.claims import arm_name
from ablations.plan.compared import Key
from ablations.report.comparisons import ClaimIndex, Pair, Side
from ablations.report.rundata import RunData
from ablations.report.tablespec import (
    EMPTY,
    Col,
    Table,
    adaptive_columns,
    comparison_columns,
    fmt_value,
    number,
    pct,
    pct_text,
    per_seed,
    per_seed_diff,
    seed_values,
    text,
)
from ablations.stats import finite
from ablations.store.best import normalise_trials

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
    """What 'inconclusive' means for one table: the minimum detectable effect of the seeds-and-images test at its
    n, seed variance and test-image noise (the image part enters as sqrt(n) * its standard error added to the
    seed SD, so that SD / sqrt(n) is the both-sources standard error; n - 1 df, conservative)."""
    samples = [list(seed_values(r, "diff").values()) for r in rows]
    samples = [x for x in samples if x]
    if not samples:
        return ""
    ns = [len(x) for x in samples]
    n = int(np.median(ns))
    n_txt = f"n = {n} seeds" + (f" (the median; {min(ns)} to {max(ns)} here)" if min(ns) != max(ns) else "")
    sd, df = S.pooled_sd(samples)
    ses = [r["boot_se"] for r in rows if finite(r.get("boot_se"))]
    se_img = float(np.median(ses)) if ses else math.nan
    z = _st.norm.ppf(1 - S.ALPHA / 2)
    img = (z + _st.norm.ppf(POWER)) * se_img if finite(se_img) else math.nan
    img_txt = f"; the test images alone resolve about {img * 100:.1f} pp" if finite(img) else ""
    if not finite(sd):
        return (f"Seed-to-seed variation unknown with {n} seed: no verdicts (rerun with 3 or more seeds)"
                f"{img_txt}.")
    sd_txt = f"SD of a per-seed difference {sd * 100:.1f} pp (pooled over {len(samples)} comparison(s), {df} df)"
    img_sd = f", test-image SE {se_img * 100:.2f} pp (median)" if finite(se_img) else ""
    power = f"{POWER:.0%} power, two-sided {S.ALPHA:.0%}"

    def mde(k: int, alpha: float = S.ALPHA) -> float:
        total = math.sqrt(sd ** 2 + k * se_img ** 2) if finite(se_img) else sd
        return S.min_detectable_effect(total, k, alpha) * 100

    if n < S.MIN_SEEDS:
        return (f"No verdicts with {n} seeds. {sd_txt}{img_sd}: 3 seeds would detect about {mde(3):.1f} pp and 5 "
                f"seeds about {mde(5):.1f} pp ({power}){img_txt}.")
    m = sum(1 for r in rows if r.get("paired_seeds", 0) >= S.MIN_SEEDS and finite(r.get("p_both")))
    holm_txt = f"; Holm's first step over {m} comparisons (5%/{m}) needs {mde(n, S.ALPHA / m):.1f} pp" if m > 1 else ""
    return (f"Minimum detectable effect ({power}, seeds and test images): {mde(n):.1f} pp at {n_txt}, "
            f"{sd_txt}{img_sd}{holm_txt}{img_txt}. Smaller true differences are likely to come out inconclusive.")


def _with_verdicts(rows: list[dict], claimed: ClaimIndex | None = None, what: str = "comparisons") -> str:
    """One exploratory family: Holm over the rows that hold a comparison and are not a claim's; a row whose
    ``pair`` a claim measures shows the claim's verdict and Holm-adjusted p. Returns the note that names the
    family."""
    claimed = claimed or ClaimIndex()
    family, as_claims = [], []
    for r in rows:
        if "p_both" not in r:
            continue
        found = claimed.find(r["pair"]) if r.get("pair") is not None else []
        if not found:
            family.append(r)
        else:
            r.update(verdict="; ".join(v.text() for v in found), p_holm=found[0].p_holm,
                     claim=" ".join(v.claim for v in found))
            as_claims += [v.claim for v in found]
    S.family_verdicts(family)
    for r in rows:
        r.pop("pair", None)  # a value for the lookup, not a column
    note = f"Exploratory: Holm over the {what} of this table ({len(family)})"
    if as_claims:
        note += (f"; {len(as_claims)} row(s) make the same comparison as a claim ({', '.join(as_claims)}) and show its "
                 f"verdict (the confirmatory family, see Claims)")
    return note + "."


# ============================================================================ tables


LEVEL_COLUMNS = [
    Col("Level", text("level")),
    Col("What", text("description"), note=True),
    Col("Best config (by val)", lambda r: r["best_config"] if isinstance(r.get("best_config"), str)
        else f"no finished trial yet ({r.get('status_counts')})"),
    Col("Configs searched", lambda r: (f"{r['configs_finished']:.0f}" if r["configs_finished"] == r["configs_planned"]
                                       else f"{r['configs_finished']:.0f} of {r['configs_planned']:.0f}")
        if finite(r.get("configs_planned")) else EMPTY),
    Col("Seeds", lambda r: str(int(r["seeds"])) if finite(r.get("seeds")) else "0"),
    Col("Val acc %", per_seed("val_acc")),
    Col("Test acc % (no TTA)", per_seed("test_acc")),
    Col("Test acc % with TTA", lambda r: f"{per_seed('test_acc_tta')(r)} ({r['tta']})"
        if finite(r.get("test_acc_tta_mean")) else EMPTY),  # its label names the mode (``level_table``)
    Col("Macro-F1", number("macro_f1_mean", ".3f")),
    Col("Trainable params", number("trainable_params", ",.0f"), md=False),
    Col("Time/trial (s)", number("seconds_per_trial", ".0f")),
    Col("Seed write-ups reported", text("reported", ""), note=True),
]


def level_table(run: RunData, adaptive=None) -> Table:
    """Each level's best config (by validation), with how many configs the choice was made among, and the level's
    reference recipe in a row of its own beneath it where the best is another config. ``adaptive`` (an
    --until-decided run): a column with the verdicts that involve the level's configs, by how their seeds stopped
    and the seeds they used."""
    rows = []
    for lv in run.levels:
        lrows = run.df[(run.df["level"] == lv) & run.df["competes"]]
        configs = list(dict.fromkeys(lrows["config_id"]))
        done = [c for c in configs if run.seeds(c, lv)]
        cid = run.best.get(lv)
        row: dict[str, Any] = {"level": lv, "role": "best", "description": run.level_labels.get(lv, ""),
                               "configs_finished": len(done), "configs_planned": len(configs),
                               "best_config": None, "reported": run.reported.get(lv, "")}
        if cid is None:
            row["status_counts"] = ", ".join(f"{n} {k}" for k, n in run.status_counts(lrows).items())
            rows.append(row)
            continue
        rows.append({**row, **_level_config_row(run, lv, cid)})
        ref = run.reference_config(lv)
        if ref is not None and ref != cid and run.seeds(ref, lv):
            rows.append({"level": f"{lv} (reference)", "role": "reference recipe", "description": "",
                         "reported": "", **_level_config_row(run, lv, ref)})
    common = _common_tta(run, rows)
    columns = [Col(f"Test acc % with {common} TTA (every level)", per_seed("test_acc_tta")) if c.label ==
               "Test acc % with TTA" else c for c in LEVEL_COLUMNS] if common != "none" else \
        [c for c in LEVEL_COLUMNS if c.label != "Test acc % with TTA"]
    for row in rows:
        if common != "none" and row.get("config_id"):
            seeds = run.seeds(row["config_id"], row["config_level"])
            row.update(tta=common, **summary("test_acc_tta", {s: run.acc(t, "test", common) for s, t in seeds.items()}))
    if adaptive is not None:
        for row in rows:
            configs = set(run.df[run.df["level"].astype(str) == row["config_level"]]["config_id"].astype(str)) \
                if row.get("config_level") else set()
            row["adaptive_verdicts"] = adaptive.level_summary(configs) if row["role"] == "best" else ""
        return Table("levels", pd.DataFrame(rows),
                     [*columns[:-1], Col("Verdicts around this level (anytime-valid): how their seeds stopped",
                                         text("adaptive_verdicts"), note=True), columns[-1]])
    return Table("levels", pd.DataFrame(rows), columns)


def _level_config_row(run: RunData, lv: str, cid: str) -> dict[str, Any]:
    """One config's numbers in the level table: accuracy over its seeds, F1, parameters, time per trial."""
    seeds = run.seeds(cid, lv)
    tids = list(seeds.values())
    row = dict(best_config=run.config_name(lv, cid), config_id=cid, config_level=lv, trial_ids=" ".join(tids),
               seeds=len(tids), **summary("val_acc", {s: run.acc(t, "val") for s, t in seeds.items()}),
               **summary("test_acc", {s: run.acc(t) for s, t in seeds.items()}),
               own_tta=str(run.config_values(cid).get("tta", "none")))
    f1 = [run.value(t, "macro_f1") for t in tids]
    row["macro_f1_mean"] = float(np.nanmean(f1)) if any(finite(x) for x in f1) else math.nan
    row["trainable_params"] = run.value(tids[0], "trainable_params")
    row["seconds_per_trial"] = next((float(np.nanmean(v)) for col in TIME_COLUMNS
                                     for v in [[run.value(t, col) for t in tids]] if any(finite(x) for x in v)),
                                    math.nan)
    return row


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
                   name: str | None = None, adaptive=None, claimed: ClaimIndex | None = None) -> tuple[Table, str]:
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
            row.update(compare(run, seeds, ref_seeds, a["mode"], ref["mode"], n_boot),
                       pair=Pair(Side(a["config_id"], a["mode"]), Side(ref["config_id"], ref["mode"])))
        rows.append(row)
    family = _with_verdicts(rows, claimed, "arms compared with the reference")
    if adaptive is not None:
        for r in rows:
            if "p_both" in r:
                adaptive.apply(r, Key(axis, r["arm"]))
    columns = [Col("Arm", lambda r: (f"{r['level']}'s reference recipe" if r["arm"] == "reference" else r["arm"])
                   + (" (reference)" if r["is_reference"] else "")),
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
        table.notes = [n for n in [family, mde_note([r for r in rows if "p_both" in r and not r.get("claim")])] if n]
    what = "; evaluation only: same trained models, TTA modes from stored logits" if is_eval else ""
    title = f"{axis} (around {level}{what})"
    return table, title


GAIN_COLUMNS = comparison_columns("Gain, pp (95% CI over seeds only)")


def tta_table(run: RunData, n_boot: int = N_BOOT, claimed: ClaimIndex | None = None) -> Table:
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
                             **summary("test_acc_mode", accs), **compare(run, seeds, seeds, mode, "none", n_boot),
                             "pair": Pair(Side(cid, mode), Side(cid, "none"))})
    family = _with_verdicts(rows, claimed, "TTA gains")
    table = Table("tta", pd.DataFrame(rows),
                  [Col("Config", text("config")), Col("TTA mode", text("mode")), Col("Seeds", text("seeds")),
                   Col("No TTA %", per_seed("test_acc_none")), Col("With TTA %", per_seed("test_acc_mode")),
                   *GAIN_COLUMNS])
    table.notes = [n for n in [family, mde_note([r for r in rows if not r.get("claim")])] if n]
    return table


def ensemble_specs(run: RunData) -> list[tuple[str, list[tuple[str, str]], str]]:
    """[(name, [(level, config_id), ...], why)] from the grid spec's 'ensembles', or all levels' best."""
    from ablations.plan.grids import ensembles_of

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
    Col("Gain, pp (95% CI over seeds only)", _ensemble_gain), *GAIN_COLUMNS[1:]]


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
    family = _with_verdicts([r for r in rows if not r["one_ensemble"]], what="ensemble gains")
    table = Table("ensembles", pd.DataFrame(rows), ENSEMBLE_COLUMNS)
    table.notes = [n for n in [family if len(rows) else "", mde_note([r for r in rows if not r["one_ensemble"]])] if n]
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
