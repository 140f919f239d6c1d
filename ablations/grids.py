"""Grids as data, and their expansion into trial configs.

A grid is a ``base`` config, four ``levels`` (each a small delta on the one before, as in the seeds),
and ``axes``. An axis sweeps config keys around one level's reference config:

    {"around": "L2", "key": "lr", "values": [3e-5, 1e-4, 3e-4, 1e-3]}          one key
    {"around": "L2", "cross": {"augment": [...], "train_stages": [...]}}       keys swept together
    {"around": "L3", "arms": {"se": {"head": "se"}, "cnn": {...}}}            named deltas
    {"around": "L4", "key": "tta", "values": [...], "eval": true}             evaluation only: no new trials

Every point runs once per seed. The same config reached twice (e.g. an axis arm equal to its level's
reference) has one trial id and runs once; each way of reaching it is a row ("membership") of the plan.

Grids are YAML files: the built-in ones live in ``ablations/builtin_grids/`` (``--grid full``), a user's
own is passed by path (``--grid my_grid.yaml``; JSON works too). Other sections: ``seeds`` (default
number of seeds), ``base`` (config keys shared by every level), ``ensembles`` (formed by the reporter
from stored logits: ``{name: {axis: AXIS}}`` or ``{name: {levels: [L2, L3]}}``), ``reported`` (the seed
write-ups' numbers per level, shown beside ours), ``run_levels`` (the levels to run by default), and
``extends: OTHER`` (start from another grid and replace or extend its parts, see ``merge_specs``).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.augment import TTA_MODES
from pipeline.config import DATA_KEYS, ConfigError, TrialConfig, coerce, from_dict
from pipeline.errors import UserError, one_line
from pipeline.ids import ID_SCHEMA


class GridError(UserError, ValueError):
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

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_grids"
SECTIONS = {"description", "seeds", "base", "levels", "axes", "ensembles", "reported", "run_levels"}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


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
    schema: int = ID_SCHEMA  # the trial-id schema of the results folder it runs in (pipeline.ids)

    @cached_property
    def trial_id(self) -> str:
        return self.config.trial_id_in(self.schema)

    @cached_property
    def config_id(self) -> str:
        return self.config.config_id_in(self.schema)

    def row(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "config_id": self.config_id, "level": self.level, "axis": self.axis,
                "arm": self.arm, "seed": self.seed, "is_reference": self.is_reference, **self.config.to_dict()}


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

    @property
    def schema(self) -> int:
        return self.points[0].schema if self.points else ID_SCHEMA

    def under_schema(self, schema: int) -> "Plan":
        """The same plan with trial ids of another id schema (a results folder keeps the one it was made with)."""
        return dataclasses.replace(self, points=[dataclasses.replace(p, schema=schema) for p in self.points])


def load_spec(name_or_path: str) -> tuple[str, dict]:
    """A built-in grid by name, or a grid file (.yaml/.yml/.json); ``extends`` chains are merged."""
    return _load(name_or_path, seen=())


def _read_file(path: Path, shown: str) -> dict:
    if not path.is_file():
        raise GridError(f"grid file not found: {shown}")
    try:
        if path.suffix.lower() == ".json":
            spec = json.loads(path.read_text())
        else:
            import yaml

            spec = yaml.safe_load(path.read_text())
    except Exception as e:
        raise GridError(f"cannot parse grid file {shown}: {one_line(e)}") from None
    if not isinstance(spec, dict):
        raise GridError(f"grid file {shown} must hold a mapping")
    return spec


def _load(name_or_path: str, seen: tuple[str, ...], base_dir: Path | None = None) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if base_dir is not None and not path.is_absolute() and not path.exists():
            path = base_dir / path
        name, spec = path.stem, _read_file(path, name_or_path)
    elif (BUILTIN_DIR / f"{name_or_path}.yaml").is_file():
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        name, spec = name_or_path, _read_file(path, name_or_path)
    else:
        raise GridError(f"unknown grid {name_or_path!r}; built-in grids: {', '.join(builtin_names())} "
                        f"(or a .yaml/.json grid file)")
    key = str(path.resolve())
    if key in seen:
        raise GridError(f"grid {name!r}: 'extends' forms a cycle")
    parent_name = spec.pop("extends", None)
    if parent_name is None:
        return name, spec
    _, parent = _load(str(parent_name), (*seen, key), base_dir=path.parent)
    return name, merge_specs(parent, spec)


def merge_specs(parent: dict, child: dict) -> dict:
    """``child`` on top of ``parent``: base keys and level ``set`` keys are updated one by one; axes,
    ensembles and reported texts are replaced by name (a null value removes one); other keys replace."""
    out = copy.deepcopy(parent)
    for key, value in child.items():
        if key == "base":
            out["base"] = {**(parent.get("base") or {}), **(value or {})}
        elif key == "levels":
            levels = out.setdefault("levels", {})
            for lv, ls in (value or {}).items():
                old = levels.get(lv) or {}
                new = {**old, **{k: v for k, v in (ls or {}).items() if k != "set"}}
                new["set"] = {**(old.get("set") or {}), **((ls or {}).get("set") or {})}
                levels[lv] = new
        elif key in ("axes", "ensembles", "reported"):
            merged = {**(parent.get(key) or {}), **(value or {})}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            out[key] = copy.deepcopy(value)
    return out


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
    unknown = set(spec) - SECTIONS
    if unknown:
        raise GridError(f"grid {name!r}: unknown section(s) {sorted(unknown)}")
    level_specs = spec.get("levels") or {}
    axis_specs = spec.get("axes") or {}
    if not isinstance(level_specs, dict) or not level_specs:
        raise GridError(f"grid {name!r}: needs a 'levels' mapping")
    if not isinstance(axis_specs, dict):
        raise GridError(f"grid {name!r}: 'axes' must be a mapping")
    n_seeds = seeds if seeds is not None else int(spec.get("seeds", 1))
    levels = levels or spec.get("run_levels")
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
    ref_cfg = {lv: _config(refs[lv], f"level {lv!r}") for lv in wanted_levels}

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

    for ens_name, ens in (spec.get("ensembles") or {}).items():
        ok = isinstance(ens, dict) and len(ens) == 1 and (
            (isinstance(ens.get("axis"), str) and ens["axis"] in axis_specs)
            or (isinstance(ens.get("levels"), list) and ens["levels"] and set(ens["levels"]) <= set(level_specs)))
        if not ok:
            raise GridError(f"ensemble {ens_name!r}: give either 'axis: <axis of this grid>' or "
                            f"'levels: [<levels of this grid>]'")

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
