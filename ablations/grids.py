"""Grids as data, and their expansion into trial configs.

A grid is a ``base`` config, four ``levels`` (each a small delta on the one before, as in the seeds),
and ``axes``. An axis sweeps config keys around one level's reference config:

    {"around": "L2", "key": "lr", "values": [3e-5, 1e-4, 3e-4, 1e-3]}          one key
    {"around": "L2", "cross": {"augment": [...], "train_stages": [...]}}       keys swept together
    {"around": "L3", "arms": {"se": {"head": "se"}, "cnn": {...}}}            named deltas
    {"around": "L4", "key": "tta", "values": [...], "eval": true}             evaluation only: no new trials

Every point runs once per seed. The same config reached twice (e.g. an axis arm equal to its level's
reference) has one trial id and runs once; each way of reaching it is a row ("membership") of the plan.
A grid can also be a YAML or JSON file with the same structure (``--grid my_grid.yaml``).
"""
from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.augment import TTA_MODES
from pipeline.config import DATA_KEYS, ConfigError, TrialConfig, coerce, from_dict


class GridError(ValueError):
    """A grid that cannot be expanded; one line for the user."""


LEVEL_NAMES = ("L1", "L2", "L3", "L4")

# Numbers the seed write-ups reported (test accuracy, their own single runs, original CIFAR-10 binaries,
# ResNet at 224 px). Shown beside ours in the level comparison; never used to choose anything.
SEED_REPORTED = {
    "L1": "80-81% (000), 93.5% (001), 82.1% (003, ResNet-50)",
    "L2": "~70% partial (000), 94.7% (001), 94.6% (003)",
    "L3": "91.7% fusion (000), 65.9% CNN from scratch (001/002), 94.6% SE (003)",
    "L4": "94.25% layer3+4 + flip TTA (000); ensembles planned, not run (003)",
}

LEVEL_LABELS = {
    "L1": "frozen pretrained backbone + linear head",
    "L2": "augmentation, dropout, weight decay, AdamW + cosine, last stage unfrozen",
    "L3": "architecture: multi-scale fusion head / SE head / CNN from scratch",
    "L4": "deeper fine-tuning, TTA, MixUp/CutMix/label smoothing, ensembles",
}

SCRATCH_CNN = {"backbone": "small_cnn", "pretrained": False, "train_stages": "all", "head": "mlp",
               "resolution": 32, "dropout": 0.5, "augment": "basic", "optimizer": "adam", "lr": 1e-3,
               "weight_decay": 1e-4, "schedule": "cosine"}

# ----------------------------------------------------------------------------- built-in grids

SMOKE = {
    "description": "one trial per level of the seeds, EfficientNet-Lite0 at 64 px on a class-balanced subset; "
                   "finishes in a few minutes on a 2-core CPU",
    "seeds": 1,
    "base": {"backbone": "efficientnet_lite0", "pretrained": True, "resolution": 64, "epochs": 3,
             "batch_size": 64, "train_per_class": 150, "val_size": 500, "test_per_class": 100},
    "levels": {
        "L1": {"set": {"train_stages": "0", "head": "linear", "optimizer": "adam", "lr": 1e-3, "epochs": 10}},
        "L2": {"from": "L1", "set": {"augment": "basic", "dropout": 0.5, "weight_decay": 1e-4, "optimizer": "adamw",
                                     "schedule": "cosine", "train_stages": "1", "epochs": 3}},
        "L3": {"from": "L2", "set": {"head": "fusion"}},
        "L4": {"from": "L3", "set": {"train_stages": "2", "tta": "flip"}},
    },
    "axes": {
        "architecture": {"around": "L3", "arms": {"fusion": {}, "scratch_cnn": {**SCRATCH_CNN, "epochs": 6}}},
        "tta": {"around": "L4", "key": "tta", "values": ["none", "flip"], "eval": True},
    },
}

BUILTIN: dict[str, dict] = {"smoke": SMOKE}


# ----------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class Point:
    """One row of the plan: a trial reached through (level, axis, arm) for one seed."""

    level: str
    axis: str
    arm: str
    seed: int
    is_reference: bool
    config: TrialConfig

    @property
    def trial_id(self) -> str:
        return self.config.trial_id

    def row(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "level": self.level, "axis": self.axis, "arm": self.arm,
                "seed": self.seed, "is_reference": self.is_reference, **self.config.to_dict()}


@dataclass
class Plan:
    grid: str
    spec: dict
    points: list[Point] = field(default_factory=list)
    eval_axes: tuple[str, ...] = ()

    def trials(self) -> dict[str, TrialConfig]:
        """Unique trials in plan order."""
        out: dict[str, TrialConfig] = {}
        for p in self.points:
            out.setdefault(p.trial_id, p.config)
        return out

    def data_settings(self) -> dict[str, Any]:
        first = next(iter(self.trials().values()))
        return {k: getattr(first, k) for k in DATA_KEYS}

    def to_json(self) -> list[dict]:
        return [p.row() for p in self.points]


def available() -> list[str]:
    return sorted(BUILTIN) + [f"{lv}" for lv in LEVEL_NAMES if lv in BUILTIN]


def load_spec(name_or_path: str) -> tuple[str, dict]:
    """A built-in grid by name, or a grid file (.yaml/.yml/.json)."""
    if name_or_path in BUILTIN:
        return name_or_path, copy.deepcopy(BUILTIN[name_or_path])
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise GridError(f"grid file not found: {name_or_path}")
        try:
            if path.suffix.lower() == ".json":
                spec = json.loads(path.read_text())
            else:
                import yaml

                spec = yaml.safe_load(path.read_text())
        except Exception as e:
            raise GridError(f"cannot parse grid file {name_or_path}: {str(e).splitlines()[0]}") from None
        if not isinstance(spec, dict):
            raise GridError(f"grid file {name_or_path} must hold a mapping")
        return path.stem, spec
    raise GridError(f"unknown grid {name_or_path!r}; built-in grids: {', '.join(sorted(BUILTIN))} "
                    f"(or a .yaml/.json grid file)")


def _config(values: dict, where: str) -> TrialConfig:
    try:
        return from_dict(values)
    except ConfigError as e:
        raise GridError(f"{where}: {e}") from None


def _coerce_all(delta: dict, where: str) -> dict:
    if not isinstance(delta, dict):
        raise GridError(f"{where}: expected a mapping of config keys, got {type(delta).__name__}")
    try:
        return {k: coerce(k, v) for k, v in delta.items()}
    except ConfigError as e:
        raise GridError(f"{where}: {e}") from None


def _arm_name(delta: dict) -> str:
    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    if len(delta) == 1:
        return fmt(next(iter(delta.values())))
    return ",".join(f"{k}={fmt(v)}" for k, v in delta.items())


def _axis_arms(name: str, axis: dict) -> dict[str, dict]:
    where = f"axis {name!r}"
    kinds = [k for k in ("key", "cross", "arms") if k in axis]
    if len(kinds) != 1:
        raise GridError(f"{where}: give exactly one of 'key'+'values', 'cross' or 'arms'")
    if "key" in axis:
        values = axis.get("values")
        if not isinstance(values, list) or not values:
            raise GridError(f"{where}: 'values' must be a non-empty list")
        deltas = [_coerce_all({axis["key"]: v}, where) for v in values]
        return {_arm_name(d): d for d in deltas}
    if "cross" in axis:
        cross = axis["cross"]
        if not isinstance(cross, dict) or not cross or not all(isinstance(v, list) and v for v in cross.values()):
            raise GridError(f"{where}: 'cross' must map keys to non-empty lists")
        keys = list(cross)
        deltas = [_coerce_all(dict(zip(keys, combo)), where) for combo in itertools.product(*cross.values())]
        return {_arm_name(d): d for d in deltas}
    arms = axis["arms"]
    if not isinstance(arms, dict) or not arms:
        raise GridError(f"{where}: 'arms' must map arm names to config deltas")
    return {str(k): _coerce_all(v or {}, f"{where} arm {k!r}") for k, v in arms.items()}


def expand(name: str, spec: dict, *, seeds: int | None = None, levels: list[str] | None = None,
           axes: list[str] | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    """Expand a grid spec into a plan of trial configs (one point per level/axis arm/seed)."""
    unknown = set(spec) - {"description", "seeds", "base", "levels", "axes", "reported", "ensembles"}
    if unknown:
        raise GridError(f"grid {name!r}: unknown section(s) {sorted(unknown)}")
    level_specs = spec.get("levels") or {}
    axis_specs = spec.get("axes") or {}
    if not isinstance(level_specs, dict) or not level_specs:
        raise GridError(f"grid {name!r}: needs a 'levels' mapping")
    if not isinstance(axis_specs, dict):
        raise GridError(f"grid {name!r}: 'axes' must be a mapping")
    n_seeds = seeds if seeds is not None else int(spec.get("seeds", 1))
    if n_seeds < 1:
        raise GridError(f"--seeds must be at least 1, got {n_seeds}")
    if levels:
        bad = [lv for lv in levels if lv not in level_specs]
        if bad:
            raise GridError(f"unknown level(s) {bad}; grid {name!r} has {list(level_specs)}")
    if axes:
        bad = [a for a in axes if a not in axis_specs]
        if bad:
            raise GridError(f"unknown axis/axes {bad}; grid {name!r} has {list(axis_specs)}")
    overrides = overrides or {}
    base = _coerce_all(spec.get("base") or {}, f"grid {name!r} base")

    # level reference configs: base + chain of level deltas + user overrides
    refs: dict[str, dict] = {}

    def resolve(lv: str, seen=()) -> dict:
        if lv in refs:
            return refs[lv]
        if lv in seen:
            raise GridError(f"grid {name!r}: level {lv!r} inherits from itself")
        ls = level_specs.get(lv)
        if not isinstance(ls, dict):
            raise GridError(f"grid {name!r}: level {lv!r} is not defined")
        parent = ls.get("from")
        values = dict(resolve(parent, (*seen, lv))) if parent else dict(base)
        values.update(_coerce_all(ls.get("set") or {}, f"level {lv!r}"))
        refs[lv] = values
        return values

    for lv in level_specs:
        resolve(lv)
    refs = {lv: {**v, **overrides} for lv, v in refs.items()}

    # evaluation axes widen the TTA their level's reference evaluates; they add no trials
    eval_axes = []
    for ax_name, ax in axis_specs.items():
        if not isinstance(ax, dict) or ax.get("around") not in level_specs:
            raise GridError(f"axis {ax_name!r}: 'around' must name a level of grid {name!r}")
        if ax.get("eval"):
            if ax.get("key") != "tta":
                raise GridError(f"axis {ax_name!r}: evaluation axes sweep 'tta' only")
            order = list(TTA_MODES)
            vals = [str(v) for v in ax.get("values") or []]
            if not vals or any(v not in order for v in vals):
                raise GridError(f"axis {ax_name!r}: tta values must be among {order}")
            lv = ax["around"]
            widest = max(vals + [refs[lv].get("tta", "none")], key=order.index)
            refs[lv]["tta"] = widest
            eval_axes.append(ax_name)

    wanted_levels = levels or list(level_specs)
    wanted_axes = axes if axes is not None else list(axis_specs)
    plan = Plan(grid=name, spec=spec, eval_axes=tuple(eval_axes))
    ref_cfg = {lv: _config(refs[lv], f"level {lv!r}") for lv in level_specs}

    def add(level, axis, arm, cfg: TrialConfig, is_ref: bool):
        for s in range(n_seeds):
            plan.points.append(Point(level, axis, arm, s, is_ref, cfg.replace(seed=s)))

    for lv in wanted_levels:
        add(lv, "reference", "reference", ref_cfg[lv], True)
    for ax_name in wanted_axes:
        ax = axis_specs[ax_name]
        lv = ax["around"]
        if lv not in wanted_levels:
            continue
        ref = ref_cfg[lv]
        if ax.get("eval"):
            for v in ax["values"]:
                add(lv, ax_name, str(v), ref, str(v) == "none")
            continue
        arms = _axis_arms(ax_name, ax)
        cfgs = {arm: _config({**refs[lv], **delta}, f"axis {ax_name!r} arm {arm!r}") for arm, delta in arms.items()}
        if not any(c.trial_id == ref.trial_id for c in cfgs.values()):
            cfgs = {"reference": ref, **cfgs}
        for arm, cfg in cfgs.items():
            add(lv, ax_name, arm, cfg, cfg.trial_id == ref.trial_id)

    settings = {tuple(getattr(c, k) for k in DATA_KEYS) for c in plan.trials().values()}
    if len(settings) > 1:
        raise GridError(f"grid {name!r}: all trials of a run must share the data settings {DATA_KEYS}")
    if not plan.points:
        raise GridError(f"grid {name!r}: the selection has no trials")
    return plan


def summarize(plan: Plan) -> list[dict[str, Any]]:
    """Counts per (level, axis): points, unique trials."""
    rows: dict[tuple[str, str], dict] = {}
    for p in plan.points:
        r = rows.setdefault((p.level, p.axis), {"level": p.level, "axis": p.axis, "arms": set(), "trials": set()})
        r["arms"].add(p.arm)
        r["trials"].add(p.trial_id)
    return [{"level": r["level"], "axis": r["axis"], "arms": len(r["arms"]), "trials": len(r["trials"])}
            for r in rows.values()]
