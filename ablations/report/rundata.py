"""Reading a results folder into what the report's tables and figures need.

``RunData`` loads a run (trials, labels, epochs, logits on demand, the grid's claims) and records what is missing
in ``notes``; each level's best config is chosen by ``ablations.store.best`` (on validation only).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablations.stats import finite
from ablations.store.best import best_config_ids, finished, normalise_trials
from ablations.store.results import RunFolder

LOGITS_CACHE = 24  # trials whose logits stay in memory at once


# ============================================================================ loading a run


def config_keys() -> list[str]:
    """The config keys that make a config (not execution keys, not the seed)."""
    from pipeline.config import EXECUTION_KEYS, TrialConfig

    return [k for k in TrialConfig.__dataclass_fields__ if k not in EXECUTION_KEYS and k != "seed"]


class RunData:
    """A results folder loaded for reporting, with what is missing recorded in ``notes``."""

    def __init__(self, run_dir: str | Path):
        self.folder = RunFolder(run_dir)
        self.meta = self.folder.read_meta()  # RunFolderError: not a results folder at all
        self.notes: list[str] = []
        self.spec = self.meta.get("grid_spec") or {}
        self.eval_axes = set(self.meta.get("eval_axes") or [])
        try:
            self.df = normalise_trials(self.folder.read_trials())
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
        from ablations.plan import grids

        self.reported = {**grids.SEED_REPORTED, **{str(k): str(v) for k, v in (self.spec.get("reported") or {}).items()}}
        self.level_labels = dict(grids.LEVEL_LABELS)
        for lv, ls in (self.spec.get("levels") or {}).items():  # a grid may describe its own levels
            if isinstance(ls, dict) and ls.get("description"):
                self.level_labels[str(lv)] = str(ls["description"])
        self.claims_origin = ""  # where the claims come from, when not from this run's own grid
        self.claims = self._read_claims()

    def _read_claims(self) -> list:
        """The claims of the grid this run was made with; for a run whose run.json predates claims, those of the
        built-in grid of the same name today (claims it cannot measure say so in the report)."""
        from ablations.plan import claims, grids

        value = self.spec.get("claims")
        grid = str(self.meta.get("grid") or "")
        if value is None and grid in grids.builtin_names():
            try:
                value = grids.load_spec(grid)[1].get("claims")
            except grids.GridError as e:
                self.notes.append(f"cannot read the claims of the built-in grid {grid!r}: {e}")
                return []
            if value:
                self.claims_origin = (f"This run's run.json predates claims: these are the claims of the built-in grid "
                                      f"`{grid}` as it is today.")
        try:
            return claims.parse(value)
        except claims.ClaimError as e:
            self.notes.append(f"claims not evaluated: {e}")
            return []

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

    def axis_spec(self, axis: str) -> dict:
        spec = (self.spec.get("axes") or {}).get(axis)
        return spec if isinstance(spec, dict) else {}

    def reference_config(self, level: str) -> str | None:
        """The config id of a level's reference, or None when the level is not in this run."""
        if not len(self.df):
            return None
        rows = self.df[(self.df["level"].astype(str) == level) & (self.df["axis"] == "reference")]
        return str(rows["config_id"].iloc[0]) if len(rows) else None

    def arm_config(self, axis: str, arm: str) -> tuple[str, str, str] | None:
        """(level, config_id, TTA mode) of one arm of an axis; an evaluation-only axis's arm is a TTA mode of its
        level's reference. None when the axis or arm is not in this run."""
        if not len(self.df):
            return None
        rows = self.df[(self.df["axis"] == axis) & (self.df["arm"].astype(str) == arm)]
        if not len(rows):
            return None
        r = rows.iloc[0]
        return str(r["level"]), str(r["config_id"]), (arm if axis in self.eval_axes else "none")

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
        return {k: r[k] for k in config_keys() if k in rows}

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
        return float(v) if finite(v) else math.nan

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

    def tta_combine(self, tid: str) -> str:
        """How the trial combined its TTA views (its row's ``tta_combine``; rows without one averaged
        probabilities)."""
        if tid in self.trials.index and "tta_combine" in self.trials:
            v = self.trials.at[tid, "tta_combine"]
            if isinstance(v, str) and v:
                return v
        return "probs"

    def scores(self, tid: str, split: str = "test", mode: str = "none") -> np.ndarray | None:
        """Class probabilities of one trial (softmax of its logits, or a TTA mode's combination of its views, by
        the trial's own rule), or None when unavailable."""
        from pipeline.evaluate import combine_views, softmax

        lg = self.logits(tid)
        if lg is None or split not in lg:
            return None
        if mode == "none":
            return softmax(lg[split]["none"]) if "none" in lg[split] else None

        try:
            return combine_views(lg[split], mode, self.tta_combine(tid))
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
        if not finite(v) and mode == "none":
            v = self.value(tid, f"{split}_acc_none")
        if not finite(v):
            c = self.correct(tid, split, mode)
            v = float(c.mean()) if c is not None else math.nan
        return v

    def class_column(self, i: int, cls: str) -> str | None:
        for col in (f"test_acc_{cls}", f"test_acc_{i}"):
            if col in self.trials:
                return col
        return None
