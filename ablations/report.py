"""``python -m ablations.report results/<run>``: tables, statistics and figures from a results folder.

Writes ``REPORT.md`` (level comparison first), every table again as ``tables/<name>.csv`` (numbers, accuracies
as fractions) and ``tables/<name>.md`` (GitHub markdown, percentages), and PNG figures under ``figures/``.

Works on a partial or still-running run: unfinished and failed trials are listed as such, tables use what has
finished, and anything missing (logits, labels, weights, data for Grad-CAM) is named in the report instead of
stopping it. Choices are made on validation accuracy only; the test set is only ever measured.

How sure a difference is (see ``ablations.stats``): per-seed accuracies give a t-based 95% CI over seeds; the
same test images give paired tests: an exact McNemar test per seed and a paired bootstrap over test images of
the seed-averaged difference. A difference counts as significant when the bootstrap 95% CI excludes 0.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import stats as S
from .results import RunFolder, RunFolderError, atomic_write, atomic_write_text, now

N_BOOT = 10000
BOOT_SEED = 0
CONFIDENCE = 0.95
GRADCAM_PER_CLASS = 3
ORDINAL = {"train_stages": ("0", "1", "2", "3", "4", "all")}
NUMERIC_KEYS = ("lr", "weight_decay", "dropout", "resolution", "epochs", "label_smoothing", "mix_alpha", "hidden",
                "batch_size", "backbone_lr_mult", "freeze_epochs", "train_stages", "train_per_class")
LOG_KEYS = ("lr", "weight_decay", "backbone_lr_mult")
TIME_COLUMNS = ("trial_seconds", "train_seconds")
LOGITS_CACHE = 24  # trials whose logits stay in memory at once


# ============================================================================ public helpers (used by run.py)


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished trials."""
    if not len(df) or "status" not in df:
        return df.iloc[0:0]
    return df[df["status"] == "finished"]


def best_config_ids(df: pd.DataFrame) -> dict[str, str]:
    """Each level's best config: highest mean validation accuracy over its finished seeds (never test).

    Ties go to the level's reference config, then to the config with more finished seeds, then plan order.
    """
    df = _normalise(df)
    fin = finished(df)
    if not len(fin) or "val_acc" not in fin:
        return {}
    fin = fin[np.isfinite(pd.to_numeric(fin["val_acc"], errors="coerce"))]
    if not len(fin):
        return {}
    fin = fin.assign(_order=np.arange(len(fin)), val_acc=pd.to_numeric(fin["val_acc"]))
    per_seed = fin.drop_duplicates(["level", "config_id", "seed"])
    g = per_seed.groupby(["level", "config_id"], sort=False)
    cand = pd.DataFrame({"val": g["val_acc"].mean(), "n": g["seed"].nunique(), "order": g["_order"].min()})
    refs = fin.groupby(["level", "config_id"], sort=False)["is_reference"].any()
    cand["ref"] = refs.reindex(cand.index).fillna(False).astype(bool)
    cand = cand.reset_index().sort_values(["level", "val", "ref", "n", "order"],
                                          ascending=[True, False, False, False, True])
    return {lv: str(g_.iloc[0]["config_id"]) for lv, g_ in cand.groupby("level", sort=False)}


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


# ============================================================================ loading a run


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Fill columns an older or partial trials.parquet may lack."""
    if not len(df):
        return df
    df = df.copy()
    for col, default in (("level", "?"), ("axis", "reference"), ("arm", "reference"), ("seed", 0),
                         ("status", "pending"), ("error", None)):
        if col not in df:
            df[col] = default
    if "is_reference" not in df:
        df["is_reference"] = df["axis"] == "reference"
    df["is_reference"] = df["is_reference"].fillna(False).astype(bool)
    if "config_id" not in df:
        df["config_id"] = [_config_id_of(r) for r in df.to_dict("records")]
    df["config_id"] = df["config_id"].fillna(df["trial_id"])
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    return df


def _config_id_of(row: dict) -> str:
    try:
        from pipeline.config import TrialConfig

        keys = TrialConfig.__dataclass_fields__
        return TrialConfig(**{k: row[k] for k in keys if k in row}).replace(seed=0).trial_id
    except Exception:
        return str(row["trial_id"])


def _config_keys() -> list[str]:
    from pipeline.config import EXECUTION_KEYS, TrialConfig

    return [k for k in TrialConfig.__dataclass_fields__ if k not in EXECUTION_KEYS and k != "seed"]


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


class RunData:
    """A results folder loaded for reporting, with what is missing recorded in ``notes``."""

    def __init__(self, run_dir: str | Path):
        self.folder = RunFolder(run_dir)
        self.meta = self.folder.read_meta()  # RunFolderError: not a results folder at all
        self.notes: list[str] = []
        self.spec = self.meta.get("grid_spec") or {}
        self.eval_axes = set(self.meta.get("eval_axes") or [])
        try:
            self.df = _normalise(self.folder.read_trials())
        except Exception as e:
            self.notes.append(f"trials.parquet unreadable ({type(e).__name__}: {e}); no trial tables.")
            self.df = pd.DataFrame()
        self.fin = finished(self.df)
        self.trials = (self.df.drop_duplicates("trial_id").set_index("trial_id", drop=False)
                       if len(self.df) else pd.DataFrame())
        self.labels: dict[str, np.ndarray] | None = None
        classes = self.meta.get("data", {}).get("classes") or []
        if (self.folder.path / "labels.npz").exists():
            try:
                self.labels, classes = self.folder.read_labels()
            except Exception as e:
                self.notes.append(f"labels.npz unreadable ({type(e).__name__}: {e}): paired tests, per-class "
                                  f"results and ensembles need it and are skipped.")
        else:
            self.notes.append("labels.npz missing: paired tests, per-class results and ensembles need it "
                              "and are skipped.")
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        try:
            self.epochs = self.folder.read_epochs()
        except Exception as e:
            self.notes.append(f"epochs.parquet unreadable ({type(e).__name__}: {e}); no learning curves.")
            self.epochs = pd.DataFrame()
        self._logits: OrderedDict[str, Any] = OrderedDict()  # a few trials' logits (LRU); they can be large
        self._correct: dict[tuple[str, str, str], np.ndarray | None] = {}
        self.missing_logits: set[str] = set()
        self.levels = self._level_order()
        try:
            self.best = best_config_ids(self.df) if len(self.df) else {}
        except Exception as e:  # a malformed trials table: list the trials, skip the comparisons
            self.notes.append(f"cannot choose the levels' best configs ({type(e).__name__}: {e}).")
            self.best = {}
        from . import grids

        self.reported = {**grids.SEED_REPORTED, **{str(k): str(v) for k, v in (self.spec.get("reported") or {}).items()}}
        self.level_labels = dict(grids.LEVEL_LABELS)
        for lv, ls in (self.spec.get("levels") or {}).items():  # a grid may describe its own levels
            if isinstance(ls, dict) and ls.get("description"):
                self.level_labels[str(lv)] = str(ls["description"])

    # ------------------------------------------------------------------ structure

    def _level_order(self) -> list[str]:
        order = [str(lv) for lv in (self.spec.get("levels") or {})]
        if len(self.df):
            order += [str(lv) for lv in self.df["level"] if str(lv) not in order]
        present = set(self.df["level"].astype(str)) if len(self.df) else set()
        return [lv for lv in dict.fromkeys(order) if lv in present]

    def axes(self) -> list[tuple[str, str]]:
        """(axis, level) pairs in plan order (an axis normally sweeps around one level)."""
        if not len(self.df):
            return []
        pairs = zip(self.df["axis"].astype(str), self.df["level"].astype(str))
        return [(a, lv) for a, lv in dict.fromkeys(pairs) if a != "reference"]

    def seeds(self, config_id: str, level: str | None = None) -> dict[int, str]:
        """Finished seeds of a config: {seed: trial_id}."""
        f = self.fin[self.fin["config_id"] == config_id]
        if level is not None:
            f = f[f["level"] == level]
        f = f.drop_duplicates("seed").sort_values("seed")
        return {int(s): str(t) for s, t in zip(f["seed"], f["trial_id"])}

    def config_values(self, config_id: str) -> dict[str, Any]:
        rows = self.df[self.df["config_id"] == config_id]
        if not len(rows):
            return {}
        r = rows.iloc[0]
        return {k: r[k] for k in _config_keys() if k in rows}

    def config_name(self, level: str, config_id: str) -> str:
        """'L2 reference', 'L2 lr=0.0001', 'L3 architecture=scratch_cnn'."""
        rows = self.df[(self.df["config_id"] == config_id) & (self.df["level"] == level)]
        if rows["is_reference"].any():
            return f"{level} reference"
        rows = rows[~rows["axis"].isin(self.eval_axes)]
        if len(rows):
            r = rows.iloc[0]
            return f"{level} {r['axis']}={r['arm']}"
        return f"{level} {config_id}"

    def value(self, tid: str, col: str) -> float:
        if tid not in self.trials.index or col not in self.trials:
            return math.nan
        v = self.trials.at[tid, col]
        return float(v) if _finite(v) else math.nan

    def status_counts(self, rows: pd.DataFrame | None = None) -> dict[str, int]:
        rows = self.df if rows is None else rows
        if not len(rows):
            return {}
        return rows.drop_duplicates("trial_id")["status"].astype(str).value_counts().to_dict()

    # ------------------------------------------------------------------ logits and accuracies

    def logits(self, tid: str):
        if tid in self._logits:
            self._logits.move_to_end(tid)
            return self._logits[tid]
        path = self.folder.logits_path(tid)
        value = None
        if not path.exists():
            self.missing_logits.add(tid)
        else:
            try:
                value = self.folder.read_logits(tid)
            except Exception as e:
                self.notes.append(f"logits/{tid}.npz unreadable ({type(e).__name__}: {e}).")
        self._logits[tid] = value
        if len(self._logits) > LOGITS_CACHE:
            self._logits.popitem(last=False)
        return value

    def scores(self, tid: str, split: str = "test", mode: str = "none") -> np.ndarray | None:
        """Logits (mode none) or TTA-combined probabilities of one trial, or None when unavailable."""
        lg = self.logits(tid)
        if lg is None or split not in lg:
            return None
        if mode == "none":
            return lg[split].get("none")
        from pipeline.evaluate import combine_views

        try:
            return combine_views(lg[split], mode)
        except KeyError:
            return None

    def correct(self, tid: str, split: str = "test", mode: str = "none") -> np.ndarray | None:
        key = (tid, split, mode)
        if key not in self._correct:
            self._correct[key] = self._compute_correct(tid, split, mode)
        return self._correct[key]

    def _compute_correct(self, tid: str, split: str, mode: str) -> np.ndarray | None:
        s = self.scores(tid, split, mode)
        y = None if self.labels is None else self.labels.get(split)
        if s is None or y is None:
            return None
        if len(s) != len(y):
            note = f"logits/{tid}.npz has {len(s)} {split} rows but labels.npz {len(y)}: ignored."
            if note not in self.notes:
                self.notes.append(note)
            return None
        return s.argmax(1) == y

    def acc(self, tid: str, split: str = "test", mode: str = "none") -> float:
        """Accuracy from trials.parquet (``test_acc``, ``test_acc_<mode>``), else from the stored logits."""
        v = self.value(tid, f"{split}_acc" if mode == "none" else f"{split}_acc_{mode}")
        if not _finite(v) and mode == "none":
            v = self.value(tid, f"{split}_acc_none")
        if not _finite(v):
            c = self.correct(tid, split, mode)
            v = float(c.mean()) if c is not None else math.nan
        return v

    def class_column(self, i: int, cls: str) -> str | None:
        for col in (f"test_acc_{cls}", f"test_acc_{i}"):
            if col in self.trials:
                return col
        return None


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
    out["boot_seeds"] = len(pairs)
    if not pairs:
        return out
    for s, x, y in pairs:
        n01, n10, p = S.mcnemar_exact(x, y)
        out["mcnemar"].append((s, n01, n10, p))
    d, lo, hi, p = S.paired_bootstrap(np.stack([x for _, x, _ in pairs]), np.stack([y for _, _, y in pairs]),
                                      n_boot=n_boot, seed=BOOT_SEED, confidence=CONFIDENCE)
    out.update(boot_diff=d, boot_lo=lo, boot_hi=hi, boot_p=p, significant=S.significant(lo, hi))
    return out


def _verdict(cmp: dict) -> str:
    if cmp["significant"] is None:
        return "untested"
    if not cmp["significant"]:
        return "≈ not significant"
    return "higher" if cmp["boot_diff"] > 0 else "lower"


def _cmp_columns(cmp: dict) -> dict[str, Any]:
    """Numeric columns of a comparison for the CSVs."""
    row = {"paired_seeds": cmp["paired_seeds"], "boot_seeds": cmp.get("boot_seeds", cmp["paired_seeds"]),
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
        if cmp.get("boot_seeds", cmp["paired_seeds"]) < cmp["paired_seeds"]:
            boot += f" ({cmp['boot_seeds']} seed(s) with logits)"
    else:
        boot = "–"
    mc = ", ".join(f"{S.fmt_p(p)} ({n10}:{n01})" for _, n01, n10, p in cmp["mcnemar"]) or "–"
    return {"Δ vs ref, pp (seed 95% CI)": seed_diff, "Δ bootstrap 95% CI, pp": boot,
            "p (bootstrap)": S.fmt_p(cmp["boot_p"]), "McNemar p per seed (won:lost)": mc,
            "vs ref": _verdict(cmp)}


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
                             "With TTA %": mstr, "Gain, pp (seed 95% CI)": cd["Δ vs ref, pp (seed 95% CI)"],
                             "Gain bootstrap 95% CI, pp": cd["Δ bootstrap 95% CI, pp"],
                             "p (bootstrap)": cd["p (bootstrap)"],
                             "McNemar p per seed (won:lost)": cd["McNemar p per seed (won:lost)"],
                             "vs no TTA": cd["vs ref"]})
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
        a = np.stack([ens_correct[s] for s in seeds])
        b = np.stack([best_correct[s] for s in seeds])
        d, lo, hi, p = S.paired_bootstrap(a, b, n_boot=n_boot, seed=BOOT_SEED, confidence=CONFIDENCE)
        mc = [(s, *S.mcnemar_exact(ens_correct[s], best_correct[s])) for s in seeds]
        cmp = {"paired_seeds": len(seeds), "diff": diff, "diff_ci": dci, "boot_diff": d, "boot_lo": lo,
               "boot_hi": hi, "boot_p": p, "mcnemar": mc, "significant": S.significant(lo, hi)}
        num.append({"ensemble": name, "combination": kind, "members": members_txt, "seeds": n_seeds,
                    "test_acc_mean": em, "test_acc_ci": eh, "best_member": best_name, "best_member_test_mean": bm,
                    "best_member_test_ci": bh, **_cmp_columns(cmp)})
        cd = _cmp_display(cmp)
        if ens_acc is not None:  # a seed ensemble: one number on each side, no CI over seeds
            cd["Δ vs ref, pp (seed 95% CI)"] = f"{diff * 100:+.1f} (one ensemble)"
            bstr = _pct(bm)
        disp.append({"Ensemble": name, "Combination": kind, "Members": members_txt, "Seeds": str(n_seeds),
                     "Ensemble test %": estr, "Best member (by val)": best_name, "Best member test %": bstr,
                     "Gain, pp (seed 95% CI)": cd["Δ vs ref, pp (seed 95% CI)"],
                     "Gain bootstrap 95% CI, pp": cd["Δ bootstrap 95% CI, pp"], "p (bootstrap)": cd["p (bootstrap)"],
                     "McNemar p per seed (won:lost)": cd["McNemar p per seed (won:lost)"],
                     "vs best member": cd["vs ref"]})

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


# ============================================================================ figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _save_fig(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def fig_learning_curves(run: RunData, path: Path) -> bool:
    from matplotlib.ticker import MaxNLocator

    ep = run.epochs
    if not len(ep) or "trial_id" not in ep:
        return False
    levels = [lv for lv in run.levels if lv in run.best]
    if not levels:
        return False
    fig = _figure(3.6 * len(levels), 6)
    axes = fig.subplots(2, len(levels), squeeze=False)
    drawn = False
    for j, lv in enumerate(levels):
        tids = list(run.seeds(run.best[lv], lv).values())
        e = ep[ep["trial_id"].isin(tids)]
        ax_acc, ax_loss = axes[0][j], axes[1][j]
        ax_acc.set_title(f"{run.config_name(lv, run.best[lv])}\n(mean of {e['trial_id'].nunique()} seed(s))",
                         fontsize=9)
        if not len(e):
            ax_acc.text(0.5, 0.5, "no epochs recorded", ha="center", transform=ax_acc.transAxes)
            continue
        g = e.groupby("epoch")
        for ax, metrics, label in ((ax_acc, ("train_acc", "val_acc"), "accuracy"),
                                   (ax_loss, ("train_loss", "val_loss"), "loss")):
            for m, style in zip(metrics, ("-", "--")):
                if m not in e:
                    continue
                mean, lo, hi = g[m].mean(), g[m].min(), g[m].max()
                ax.plot(mean.index, mean.values, style, marker="o", ms=3, label=m.split("_")[0])
                if e["trial_id"].nunique() > 1:
                    ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
                drawn = True
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if drawn:
        fig.suptitle("Learning curves of each level's best config (band: min-max over seeds)", fontsize=10)
        _save_fig(fig, path)
    return drawn


def fig_confusions(run: RunData, confusions: dict, path: Path) -> bool:
    if not confusions:
        return False
    n = len(confusions)
    k = len(run.classes)
    cols = n if n <= 2 else 2
    nrows = math.ceil(n / cols)
    fig = _figure(4.8 * cols, 4.8 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, (lv, (name, cm, n_seeds)) in zip(axes, confusions.items()):
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), run.classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), run.classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}\n(% of each true class, {n_seeds} seed(s) pooled)", fontsize=9)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if norm[i, j] >= 0.01:
                        ax.text(j, i, f"{norm[i, j] * 100:.0f}", ha="center", va="center", fontsize=6,
                                color="white" if norm[i, j] > 0.5 else "black")
    _save_fig(fig, path)
    return True


def fig_per_class_f1(run: RunData, pc: pd.DataFrame, path: Path) -> bool:
    if not len(pc) or not pc["f1"].notna().any():
        return False
    levels = [lv for lv in dict.fromkeys(pc["level"]) if pc[pc["level"] == lv]["f1"].notna().any()]
    k = len(run.classes)
    fig = _figure(max(7, 0.9 * k), 4)
    ax = fig.subplots()
    width = 0.8 / len(levels)
    for i, lv in enumerate(levels):
        sub = pc[pc["level"] == lv].set_index("class").reindex(run.classes)
        ax.bar(np.arange(k) + (i - (len(levels) - 1) / 2) * width, sub["f1"].values, width,
               label=sub["config"].dropna().iloc[0])
    ax.set_xticks(range(k), run.classes, rotation=30, fontsize=8)
    ax.set_ylabel("F1 (test, seeds pooled)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Per-class F1 of each level's best config", fontsize=10)
    _save_fig(fig, path)
    return True


def fig_axis(run: RunData, axis: str, num: pd.DataFrame, path: Path) -> bool:
    """Accuracy against a numeric axis (lr on a log scale, train_stages in order 0..4, all) with CI bars."""
    if axis in run.eval_axes or not len(num):
        return False
    rows = num[num["seeds"] > 0]
    if len(rows) < 2:
        return False
    vals = {cid: run.config_values(cid) for cid in rows["config_id"]}
    keys = [k for k in _config_keys() if len({_fmt_value(v.get(k)) for v in vals.values()}) > 1]
    spec = (run.spec.get("axes") or {}).get(axis) or {}
    if isinstance(spec, dict) and "key" in spec:
        swept = [str(spec["key"])]
    elif isinstance(spec, dict) and isinstance(spec.get("cross"), dict):
        swept = [str(k) for k in spec["cross"]]
    else:  # named arms: only when they change one numeric key
        swept = keys if len(keys) == 1 else []
    xkey = next((k for k in swept if k in NUMERIC_KEYS and k in keys), None)
    if xkey is None:
        return False
    others = [k for k in keys if k != xkey]

    present = {str(v.get(xkey)) for v in vals.values()}
    order = [o for o in ORDINAL.get(xkey, ()) if o in present]  # ordinal keys: the values swept, in order

    def xpos(v):
        if xkey in ORDINAL:
            return order.index(str(v)) if str(v) in order else math.nan
        return float(v)

    fig = _figure(6, 4)
    ax = fig.subplots()
    groups: dict[str, list] = {}
    for _, r in rows.iterrows():
        v = vals[r["config_id"]]
        label = ", ".join(f"{k}={_fmt_value(v.get(k))}" for k in others) or "test"
        groups.setdefault(label, []).append((xpos(v.get(xkey)), r["test_acc_mean"], r["test_acc_ci"]))
    for label, pts in groups.items():
        pts = sorted(p for p in pts if _finite(p[0]))
        if not pts:
            continue
        x, m, h = (np.array(t, dtype=float) for t in zip(*pts))
        ax.errorbar(x, m * 100, yerr=np.where(np.isfinite(h), h * 100, 0), marker="o", capsize=4,
                    label=label if others else "test accuracy (95% CI over seeds)")
    if xkey in ORDINAL:
        ax.set_xticks(range(len(order)), order)
    elif xkey in LOG_KEYS and all(float(v.get(xkey)) > 0 for v in vals.values()):
        ax.set_xscale("log")
    ref = rows[rows["is_reference"]]
    if len(ref) and _finite(ref["test_acc_mean"].iloc[0]):
        ax.axhline(ref["test_acc_mean"].iloc[0] * 100, color="gray", ls=":", lw=1, label="reference")
    ax.set_xlabel(xkey + (" (trained top stages)" if xkey == "train_stages" else ""))
    ax.set_ylabel("test accuracy % (no TTA)")
    ax.set_title(f"axis {axis} around {rows['level'].iloc[0]}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_fig(fig, path)
    return True


# ============================================================================ Grad-CAM


def _test_images(run: RunData):
    """The run's test images (uint8), rebuilt from its data settings and checked against labels.npz."""
    from pipeline import data as D

    d = run.meta.get("data") or {}
    source = d.get("source")
    if not source:
        raise _Skip("run.json names no data source")
    if source == "torchvision" and not D.was_cached(source):
        raise _Skip("the torchvision CIFAR-10 cache is absent on this machine (the report does not download)")
    if source != "torchvision" and not Path(source).exists() and not D.was_cached(source):
        raise _Skip(f"data source {source} is not on this machine")
    try:
        ds = D.load(source)
        splits = D.make_splits(ds, val_size=int(d.get("val_size", 5000)), split_seed=int(d.get("split_seed", 0)),
                               train_per_class=int(d.get("train_per_class", 0)),
                               test_per_class=int(d.get("test_per_class", 0)))
    except D.DataError as e:
        raise _Skip(f"cannot load the test images ({e})") from None
    if run.labels is None:
        raise _Skip("labels.npz is missing (needed to check the rebuilt test images)")
    if not np.array_equal(splits.test_y, run.labels["test"]):
        raise _Skip("the test images rebuilt from run.json do not match labels.npz")
    return splits.test_x, splits.test_y


class _Skip(Exception):
    """A figure that cannot be made, with the reason for the report."""


def _load_model(run: RunData, tid: str, num_classes: int):
    import torch

    from pipeline.config import TrialConfig
    from pipeline.models import ModelError, build_model

    path = run.folder.model_path(tid)
    if not path.exists():
        raise _Skip(f"no saved weights (models/{tid}.pt)")
    d = torch.load(path, map_location="cpu", weights_only=False)
    fields = TrialConfig.__dataclass_fields__
    cfg = TrialConfig(**{k: v for k, v in d["config"].items() if k in fields}).replace(device="cpu")
    try:
        model = build_model(cfg, num_classes)
    except ModelError as e:
        raise _Skip(f"cannot rebuild the model ({e})") from None
    missing, unexpected = model.load_state_dict(d["state"], strict=False)
    if unexpected:
        raise _Skip(f"saved weights do not fit the model (unexpected {unexpected[:2]})")
    return model.eval(), cfg


def fig_gradcam(run: RunData, level: str, images, path: Path,
                per_class: int = GRADCAM_PER_CLASS) -> tuple[str, int, int]:
    """A grid of test images (per_class per class) with the Grad-CAM map of the predicted class overlaid.

    Returns (trial_id, agree, shown): how many of the shown images the rebuilt model predicts as the stored
    logits do (a check that the saved weights were restored correctly)."""
    import torch

    from pipeline.interpret import gradcam
    from pipeline.train import Inputs

    cid = run.best[level]
    seeds = run.seeds(cid, level)
    tid = next((t for t in seeds.values() if run.folder.model_path(t).exists()), None)
    if tid is None:
        raise _Skip("no saved weights for any seed (models/ keeps each level's best config by default)")
    test_x, test_y = images
    k = len(run.classes)
    model, cfg = _load_model(run, tid, k)
    idx = np.concatenate([np.flatnonzero(test_y == c)[:per_class] for c in range(k)])
    xb = torch.from_numpy(np.ascontiguousarray(test_x[idx]))
    x = Inputs(cfg, torch.device("cpu"))(xb)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    stored = run.scores(tid)
    agree = int((stored[idx].argmax(1) == pred).sum()) if stored is not None else -1
    heat = gradcam(model, x).numpy()
    cam_h, cam_w = gradcam(model, x[:1], upsample=False).shape[-2:]
    fig = _figure(1.5 * k, 1.65 * per_class + 0.6)
    axes = fig.subplots(per_class, k, squeeze=False)
    for n, i in enumerate(idx):
        c, r = int(test_y[i]), n % per_class
        ax = axes[r][c]
        ax.imshow(test_x[i].transpose(1, 2, 0), extent=(0, 1, 1, 0), interpolation="bilinear")
        flat = not heat[n].max() > 0
        if not flat:
            ax.imshow(heat[n], cmap="jet", alpha=0.45, extent=(0, 1, 1, 0), vmin=0, vmax=1)
        ok = pred[n] == c
        ax.set_title(("✓ " if ok else "✗ ") + run.classes[pred[n]] + (" (flat map)" if flat else ""), fontsize=7,
                     color="green" if ok else "red")
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.text(0.5, 1.35, run.classes[c], ha="center", fontsize=8, fontweight="bold", transform=ax.transAxes)
    fig.suptitle(f"Grad-CAM, {run.config_name(level, cid)} (trial {tid}, seed "
                 f"{next(s for s, t in seeds.items() if t == tid)})\n{cfg.resolution} px input, "
                 f"{cam_h}x{cam_w} map upsampled; titles: predicted class", fontsize=9)
    _save_fig(fig, path)
    return tid, agree, len(idx)


# ============================================================================ writing


def _md(df: pd.DataFrame) -> str:
    if not len(df):
        return "_(empty)_"
    clean = df.copy()
    for c in clean.columns:
        clean[c] = clean[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                else re.sub(r"\s+", " ", str(v)).replace("|", "\\|"))
    clean.columns = [str(c).replace("|", "\\|") for c in clean.columns]
    return clean.to_markdown(index=False, disable_numparse=True)


class _Writer:
    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.tables = folder.path / "tables"
        self.figures = folder.path / "figures"
        self.written: set[Path] = set()

    def table(self, name: str, num: pd.DataFrame, disp: pd.DataFrame | str) -> str:
        csv = self.tables / f"{name}.csv"
        md_text = disp if isinstance(disp, str) else _md(disp)
        atomic_write(csv, lambda tmp: num.to_csv(tmp, index=False))
        atomic_write_text(self.tables / f"{name}.md", md_text + "\n")
        self.written |= {csv, self.tables / f"{name}.md"}
        return md_text

    def figure(self, name: str) -> Path:
        p = self.figures / f"{name}.png"
        self.written.add(p)
        return p

    def make_figure(self, name: str, draw: Callable[[Path], bool], alt: str) -> list[str]:
        """Draw a figure; the markdown lines that link it, or none when it could not be drawn."""
        p = self.figure(name)
        if draw(p):
            return [f"![{alt}]({self.link(p)})", ""]
        self.written.discard(p)
        return []

    def link(self, p: Path) -> str:
        return p.relative_to(self.folder.path).as_posix()

    def prune(self) -> None:
        """Remove tables and figures an earlier report wrote that this one did not (a stale file misleads)."""
        for d, suffixes in ((self.tables, (".csv", ".md")), (self.figures, (".png",))):
            if d.exists():
                for f in d.iterdir():
                    if f.is_file() and f.suffix in suffixes and f not in self.written:
                        f.unlink()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "axis"


def write_report(run_dir: str | Path, *, figures: bool = True, gradcam: bool = True, n_boot: int = N_BOOT) -> Path:
    """Write REPORT.md, tables/ and figures/ for a results folder; returns the path of REPORT.md."""
    run = RunData(run_dir)
    w = _Writer(run.folder)
    meta, out = run.meta, []
    problems: list[str] = []

    def section(title: str, fn: Callable[[], list[str]]) -> None:
        """A failure in one section is reported in its place; the rest of the report is still written."""
        try:
            out.extend(fn())
        except Exception as e:  # noqa: BLE001 - the report must not die on one bad table
            tb = traceback.format_exc(limit=3)
            print(f"ablations.report: section {title!r} failed:\n{tb}", file=sys.stderr)
            problems.append(f"{title}: {type(e).__name__}: {e}")
            out.extend([f"_{title}: could not be computed ({type(e).__name__}: {e})._", ""])

    # ---------------------------------------------------------------- header
    d = meta.get("data") or {}
    sizes = d.get("sizes") or {}
    out += [f"# Ablation report: {meta.get('grid')}", ""]
    counts = run.status_counts()
    n_trials = sum(counts.values())
    if meta.get("finished"):
        state = f"Run finished {meta.get('finished')} (started {meta.get('started')})."
    else:
        state = (f"**Run not finished** (started {meta.get('started')}; still running or interrupted): tables use the "
                 f"{counts.get('finished', 0)} finished of {n_trials} trials.")
    status_line = ", ".join(f"{counts[k]} {k}" for k in ("finished", "failed", "running", "pending") if k in counts)
    others = [k for k in counts if k not in ("finished", "failed", "running", "pending")]
    status_line += "".join(f", {counts[k]} {k}" for k in others)
    out += [state + f" Trials: {status_line or 'none recorded yet'}.", ""]
    tpc = int(d.get("test_per_class") or 0)
    n_test = sizes.get("test", len(run.labels["test"]) if run.labels is not None else None)
    if tpc > 0:
        test_txt = (f"**Test set: a class-balanced subset**, the first {tpc} test images of each class "
                    f"({n_test} images), not the full official test set; accuracies are on this subset.")
    else:
        test_txt = f"Test set: the full official test set ({n_test} images)."
    sub_txt = f", {d['train_per_class']} training images per class" if d.get("train_per_class") else ""
    out += [f"Data `{d.get('source')}`: train {sizes.get('train', '?')}{sub_txt}, validation {sizes.get('val', '?')} "
            f"(stratified split of the training set, split seed {d.get('split_seed')}), test {n_test}. "
            f"{test_txt}", "",
            f"Run folder `{run.folder.path}`; report written {now()}.", ""]

    if not len(run.df):
        out += ["No trials recorded yet (trials.parquet is missing or empty).", ""]
    # ---------------------------------------------------------------- level comparison (first)
    if len(run.df):
        def levels():
            num, disp = level_table(run)
            lines = ["## Level comparison", "",
                     "Each level's best config is chosen on mean **validation** accuracy over its finished seeds "
                     "(never on test). Test accuracy: mean ± 95% CI over seeds (t-distribution); \"n=1, no CI\" "
                     "for one seed. \"With TTA\" uses the config's own TTA mode. The last column is what the seed "
                     "write-ups reported for that level (their own single runs, other setups: for orientation, "
                     "not a paired comparison).", "",
                     w.table("levels", num, disp), ""]
            return lines
        section("Level comparison", levels)

        out += ["## How sure is each difference", "",
                f"* **Seeds**: \"seed 95% CI\" is the t-interval of the mean paired difference over the seeds "
                f"both arms finished (training randomness; n/a with one seed, very wide with two).",
                f"* **Test images**: the paired bootstrap resamples test images ({n_boot} replicates, "
                f"random seed {BOOT_SEED}, same images for both arms and all seeds) and recomputes the "
                f"seed-averaged accuracy difference; its 95% percentile interval and two-sided p-value are shown. "
                f"The exact McNemar test (two-sided binomial on the images only one of the two gets right) is "
                f"given per seed, with won:lost counts of those images. These tests measure how sure a difference "
                f"is on this test sample for these trained models; seed-to-seed variation is in the seed CI.",
                "* **Rule**: an arm differs significantly from its reference when the bootstrap 95% CI of the "
                "difference excludes 0; otherwise it is marked \"≈ not significant\". No correction for multiple "
                "comparisons: among many arms, about 1 in 20 true nulls will look significant.",
                "* Differences are in percentage points (pp), arm minus reference. Ablations compare accuracy "
                "without TTA unless the axis is a TTA axis.", ""]

        # ------------------------------------------------------------ ablations
        axes = run.axes()
        if axes:
            out += ["## Ablations", ""]
        multi = {a for a, _ in axes if sum(1 for b, _ in axes if b == a) > 1}
        for ax, lv in axes:
            def abl(ax=ax, lv=lv):
                num, disp, title = ablation_table(run, ax, lv, n_boot)
                slug = _slug(f"{ax}_{lv}" if ax in multi else ax)
                lines = [f"### Axis {title}", "", w.table(f"ablation_{slug}", num, disp), ""]
                if figures:
                    lines += w.make_figure(f"axis_{slug}", lambda p: fig_axis(run, ax, num, p),
                                           f"accuracy against {ax}")
                return lines
            section(f"Axis {ax}", abl)

        # ------------------------------------------------------------ TTA
        def tta():
            num, disp = tta_table(run, n_boot)
            if not len(num):
                return ["## Test-time augmentation", "", "No finished config evaluated more than one TTA mode.", ""]
            return ["## Test-time augmentation", "",
                    "Gain of each TTA mode over no TTA for every config that evaluated it (same trained models, "
                    "modes combined from the stored per-view logits).", "", w.table("tta", num, disp), ""]
        section("TTA", tta)

        # ------------------------------------------------------------ ensembles
        def ens():
            if run.labels is None:
                return ["## Ensembles", "", "Skipped: labels.npz is missing.", ""]
            num, disp = ensemble_table(run, n_boot)
            lines = ["## Ensembles", "",
                     "Formed from stored test logits (no TTA), never by training again. Per seed: soft vote = mean "
                     "of member softmax probabilities; val-weighted = weights proportional to each member's "
                     "validation accuracy. The best member is chosen on validation; gain = ensemble minus best "
                     "member, with the same paired tests. Seed ensembles soft-vote all seeds of one config: one "
                     "number, no CI over seeds (the best member is its best seed on validation).", ""]
            if not len(num):
                return lines + ["No ensemble could be formed yet (see Notes).", ""]
            return lines + [w.table("ensembles", num, disp), ""]
        section("Ensembles", ens)

        # ------------------------------------------------------------ per class
        confusions: dict = {}

        def per_cls():
            nonlocal confusions
            num, disp, pairs, confusions = per_class_tables(run)
            if not len(num):
                return ["## Per-class results", "", "No finished level yet.", ""]
            lines = ["## Per-class results", "",
                     "Each level's best config; precision, recall and F1 **pooled over its seeds** (the predictions "
                     "of all its seeds together, each test image counted once per seed). Per-class accuracy is the "
                     "recall (share of that class's images classified correctly).", ""]
            md_parts = []
            for lv, t in disp.items():
                name = num[num["level"] == lv]["config"].iloc[0]
                md_parts += [f"### {name}", "", _md(t), ""]
            w.table("per_class", num, "\n".join(md_parts))
            lines += md_parts
            if len(pairs):
                pd_disp = pd.DataFrame({"Level": pairs["level"], "Pair": pairs["class_a"] + " ↔ " + pairs["class_b"],
                                        "Confusions": pairs["confusions"].astype(str),
                                        "a→b / b→a": pairs["a_as_b"].astype(str) + " / " + pairs["b_as_a"].astype(str),
                                        "% of the pair's images": pairs["share_of_pair_images"].map(_pct)})
                lines += ["### Hardest class pairs", "",
                          "Largest symmetric off-diagonal counts of the confusion matrix (seeds pooled), top 5 per "
                          "level.", "", w.table("confusion_pairs", pairs, pd_disp), ""]
            if figures:
                lines += w.make_figure("per_class_f1", lambda p: fig_per_class_f1(run, num, p), "per-class F1")
                lines += w.make_figure("confusion", lambda p: fig_confusions(run, confusions, p),
                                       "confusion matrices")
            return lines
        section("Per-class results", per_cls)

        # ------------------------------------------------------------ learning curves, Grad-CAM
        if figures:
            def curves():
                link = w.make_figure("learning_curves", lambda p: fig_learning_curves(run, p), "learning curves")
                if link:
                    return ["## Learning curves", ""] + link
                return ["## Learning curves", "", "No epochs recorded for the levels' best configs yet.", ""]
            section("Learning curves", curves)

        if figures and gradcam and run.best:
            def cams():
                lines = ["## Grad-CAM", "",
                         f"First {GRADCAM_PER_CLASS} test images of each class, heat map of the predicted class on "
                         f"the last backbone stage (Grad-CAM); titles are predictions (✓ right, ✗ wrong).", ""]
                with_weights = [lv for lv, cid in run.best.items()
                                if any(run.folder.model_path(t).exists() for t in run.seeds(cid, lv).values())]
                if not with_weights:
                    return lines + ["Grad-CAM skipped: no saved weights of any level's best config in models/ "
                                    "(ablations.run --keep-models best or all keeps them).", ""]
                try:
                    images = _test_images(run)
                except _Skip as e:
                    return lines + [f"Grad-CAM skipped: {e}.", ""]
                for lv in run.levels:
                    if lv not in run.best:
                        continue
                    p = w.figure(f"gradcam_{_slug(lv)}")
                    try:
                        tid, agree, shown = fig_gradcam(run, lv, images, p)
                        check = ("" if agree < 0 else
                                 f" The rebuilt model (trial {tid}) makes the stored predictions on {agree} of the "
                                 f"{shown} images shown" + ("." if agree == shown else
                                                            ": **the saved weights may not match the trial**."))
                        lines += [f"![Grad-CAM {lv}]({w.link(p)})", ""] + ([check.strip(), ""] if check else [])
                    except _Skip as e:
                        w.written.discard(p)
                        lines += [f"Grad-CAM for {run.config_name(lv, run.best[lv])} skipped: {e}.", ""]
                return lines
            section("Grad-CAM", cams)

        # ------------------------------------------------------------ trials
        def trials():
            t = trials_table(run.df)
            disp = t.copy()
            for c in ("val_acc", "test_acc"):
                if c in disp:
                    disp[c] = disp[c].map(_pct)
            if "macro_f1" in disp:
                disp["macro_f1"] = disp["macro_f1"].map(lambda v: f"{v:.3f}" if _finite(v) else "")
            if "trainable_params" in disp:
                disp["trainable_params"] = disp["trainable_params"].map(lambda v: f"{v:,.0f}" if _finite(v) else "")
            for c in TIME_COLUMNS:
                if c in disp:
                    disp[c] = disp[c].map(lambda v: f"{v:.0f}" if _finite(v) else "")
            disp = disp.rename(columns={"val_acc": "val acc %", "test_acc": "test acc %"})
            return ["## Trials", "", f"Counts by status (unique trials): {status_line or 'none'}.", "",
                    w.table("trials", t, disp), ""]
        section("Trials", trials)

    # ---------------------------------------------------------------- what is missing
    notes = list(dict.fromkeys(run.notes))
    fin_missing = sorted(t for t in run.missing_logits if t in set(run.fin["trial_id"]))
    if fin_missing:
        notes.append(f"stored logits missing for {len(fin_missing)} finished trial(s) ({', '.join(fin_missing[:8])}"
                     f"{' …' if len(fin_missing) > 8 else ''}): their accuracies come from trials.parquet; paired "
                     f"tests and ensembles involving them are skipped.")
    if problems:
        notes += [f"section failed: {p}" for p in problems]
    if notes:
        out += ["## Notes: what is missing", ""] + [f"* {n}" for n in notes] + [""]

    path = run.folder.path / "REPORT.md"
    atomic_write_text(path, "\n".join(out).rstrip() + "\n")
    w.written.add(path)
    w.prune()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a results folder written by ablations.run")
    p.add_argument("--no-figures", action="store_true", help="tables only (no PNGs, no Grad-CAM)")
    p.add_argument("--no-gradcam", action="store_true", help="skip Grad-CAM (needs the models and the data)")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates of the paired tests")
    args = p.parse_args(argv)
    if not Path(args.run_dir).is_dir():
        print(f"error: {args.run_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        print(write_report(args.run_dir, figures=not args.no_figures, gradcam=not args.no_gradcam,
                           n_boot=max(args.n_boot, 100)))
    except RunFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
