"""Grids as data, and their expansion into trial configs.

A grid is a ``base`` config, four ``levels`` (each a small delta on the one before, as in the seeds),
and ``axes``. An axis sweeps config keys around one level's reference config:

    {"around": "L2", "key": "lr", "values": [3e-5, 1e-4, 3e-4, 1e-3]}          one key
    {"around": "L2", "cross": {"augment": [...], "train_stages": [...]}}       keys swept together
    {"around": "L3", "arms": {"se": {"head": "se"}, "cnn": {...}}}            named deltas
    {"around": "L4", "key": "tta", "values": [...], "eval": true}             evaluation only: no new trials

An axis may also carry ``reported: {arm: percent}`` (a seed write-up's test accuracy for that arm, shown beside
ours) and ``compete: false`` (its arms are not candidates for their level's best config: the seed recipes,
which rerun each write-up's own configuration, are not variants of the level they start from).

Every point runs once per seed. The same config reached twice (e.g. an axis arm equal to its level's
reference) has one trial id and runs once; each way of reaching it is a row ("membership") of the plan.

Grids are YAML files: the built-in ones live in ``ablations/plan/builtin_grids/`` (``--grid full``), a user's
own is passed by path (``--grid my_grid.yaml``; JSON works too). Other sections: ``seeds`` (default
number of seeds), ``base`` (config keys shared by every level), ``ensembles`` (formed by the reporter
from stored logits: ``{name: {axis: AXIS}}`` or ``{name: {levels: [L2, L3]}}``), ``reported`` (the seed
write-ups' numbers per level, shown beside ours), ``claims`` (the study's hypotheses, each with its source,
given a verdict in the report: see ``ablations.plan.claims``), ``run_levels`` (the levels to run by default), and
``extends: OTHER`` (start from another grid and replace or extend its parts, see ``merge_specs``).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import DATA_KEYS, ConfigError, TrialConfig, coerce, from_dict
from pipeline.data import CIFAR10_CLASSES
from pipeline.errors import UserError, one_line
from pipeline.ids import ID_SCHEMA
from pipeline.registry import TTA_MODES

from ablations.plan import claims as C


class GridError(UserError, ValueError):
    """A grid that cannot be expanded; one line for the user."""


LEVEL_NAMES = ("L1", "L2", "L3", "L4")

# Numbers the seed write-ups reported (test accuracy of their own single runs, at 224 px), by write-up:
# 000 ResNet-18 L1-L4; 001 ResNet-18 L1-L2 and a CNN from scratch as L3; 002 ResNet-50 L1-L3 (L4 planned);
# 003 only the CNN from scratch (the same write-up as 001's L3); 004 ResNet-18, no numbers. Shown beside ours
# in the level comparison; never used to choose anything.
SEED_REPORTED = {
    "L1": "~80-81% (000, ResNet-18), 93.5% (001, ResNet-18, freezing not stated), "
          "82.1% (002, ResNet-50 frozen, lr 1e-3)",
    "L2": "~70% after partial training (000), 94.7% (001, Adam 1e-4, 5 epochs), 94.6% (002, ResNet-50)",
    "L3": "91.7% fusion head (000), 94.6% SE head (002, ResNet-50), 65.9% CNN from scratch (001 and 003)",
    "L4": "94.25% layer3+4 + flip TTA (000); ensembles, MixUp, label smoothing planned, not run (002)",
}

LEVEL_LABELS = {
    "L1": "frozen pretrained backbone + linear head (002; 000 and 001 replace the head without saying what they "
          "froze)",
    "L2": "augmentation, dropout, weight decay (001), AdamW + cosine, last stage unfrozen (002)",
    "L3": "multi-scale fusion head (000); the SE head (002) and the CNN from scratch (001, 003) are arms",
    "L4": "L3's model trained on with layer3 + layer4 at half L3's rate, flip TTA (000); MixUp, label smoothing "
          "and ensembles as arms (planned in 002, not run)",
}

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_grids"
SECTIONS = {"description", "seeds", "base", "levels", "axes", "ensembles", "reported", "run_levels", "claims"}
AXIS_KEYS = {"around", "key", "values", "cross", "arms", "eval", "reported", "compete"}
CLASSES = CIFAR10_CLASSES  # what class claims may name


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
    competes: bool = True  # a candidate for its level's best config (False for the arms of a compete: false axis)
    schema: int = ID_SCHEMA  # the trial-id schema of the results folder it runs in (pipeline.ids)

    @cached_property
    def trial_id(self) -> str:
        return self.config.trial_id_in(self.schema)

    @cached_property
    def config_id(self) -> str:
        return self.config.config_id_in(self.schema)

    def row(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "config_id": self.config_id, "level": self.level, "axis": self.axis,
                "arm": self.arm, "seed": self.seed, "is_reference": self.is_reference, "competes": self.competes,
                **self.config.to_dict()}


@dataclass
class Plan:
    grid: str
    spec: dict
    points: list[Point] = field(default_factory=list)
    eval_axes: tuple[str, ...] = ()
    claims: tuple[C.Claim, ...] = ()

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

    def parents(self) -> dict[str, str]:
        """trial id -> the trial id of the trial it starts from (``init_from``), for the trials that have one."""
        by_config = {(p.config_id, p.seed): p.trial_id for p in self.points}
        out = {}
        for p in self.points:
            if p.config.init_from:
                out[p.trial_id] = by_config[(p.config.init_from, p.seed)]
        return out

    def under_schema(self, schema: int) -> "Plan":
        """The same plan with trial ids of another id schema (a results folder keeps the one it was made with)."""
        return dataclasses.replace(self, points=[dataclasses.replace(p, schema=schema) for p in self.points])

    def memberships(self) -> set[tuple[str, str, str, str]]:
        """(level, axis, arm, config id) of every point: the plan without its seeds."""
        return {(p.level, p.axis, p.arm, p.config_id) for p in self.points}

    def with_points(self, points: list[Point]) -> "Plan":
        """This plan plus ``points`` it does not hold yet (the same trial in the same role is one point)."""
        seen = {(p.trial_id, p.level, p.axis, p.arm) for p in self.points}
        new = [p for p in points if (p.trial_id, p.level, p.axis, p.arm) not in seen]
        return dataclasses.replace(self, points=[*self.points, *new])

    def with_seeds(self, seeds: dict[str, Any]) -> "Plan":
        """This plan with more seeds of some of its configs: ``{config id: seed or seeds}``. A config at a new seed
        gets a point in every role (level, axis, arm) it has in the plan, so it is an ordinary plan point: the same
        config at seed k is the same trial however it was added. A config that starts from another's trained model
        (``init_from``) brings its parent at the same seed."""
        roles: dict[str, dict[tuple[str, str, str], Point]] = {}
        for p in self.points:
            roles.setdefault(p.config_id, {}).setdefault((p.level, p.axis, p.arm), p)
        have = {(p.config_id, p.seed) for p in self.points}
        wanted = [(cid, int(s)) for cid, v in seeds.items() for s in ([v] if isinstance(v, int) else v)]
        new: list[Point] = []
        while wanted:
            cid, s = wanted.pop(0)
            if (cid, s) in have:
                continue
            if cid not in roles:
                raise KeyError(f"config {cid} is not in the plan")
            have.add((cid, s))
            for p in roles[cid].values():
                new.append(dataclasses.replace(p, seed=s, config=p.config.replace(seed=s)))
            parent = next(iter(roles[cid].values())).config.init_from
            if parent:
                wanted.append((parent, s))
        return self.with_points(new)


def points_from_rows(rows: list[dict], schema: int = ID_SCHEMA) -> list[Point]:
    """A plan's points as ``Plan.to_json`` stored them (run.json's ``plan``)."""
    return [Point(r["level"], r["axis"], r["arm"], int(r["seed"]), bool(r["is_reference"]), TrialConfig.from_row(r),
                  competes=bool(r.get("competes", True)), schema=schema) for r in rows]


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
    ensembles, reported texts and claims are replaced by name (a null value removes one; removing an axis
    removes the ensembles about it and marks the claims about it ``not_in_grid``); other keys replace."""
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
        elif key == "claims":
            merged = {**_claims_mapping(parent.get(key)), **_claims_mapping(value)}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            out[key] = copy.deepcopy(value)
    removed = {a for a, v in (child.get("axes") or {}).items() if v is None}
    if removed and out.get("claims"):  # listed as not measured here, never dropped silently
        out["claims"] = {k: ({**v, "not_in_grid": f"its axis {v['axis']!r} is not in this grid"}
                             if isinstance(v, dict) and v.get("axis") in removed else v)
                         for k, v in _claims_mapping(out["claims"]).items()}
    axes_now = set(out.get("axes") or {})
    if out.get("claims"):  # an axis declared again (cpu-extended after cpu): its claims are measured again
        out["claims"] = {k: ({kk: vv for kk, vv in v.items() if kk != "not_in_grid"}
                             if isinstance(v, dict) and v.get("not_in_grid") and v.get("axis") in axes_now else v)
                         for k, v in _claims_mapping(out["claims"]).items()}
    if removed and out.get("ensembles"):
        out["ensembles"] = {k: v for k, v in out["ensembles"].items()
                            if not (isinstance(v, dict) and v.get("axis") in removed)}
    return out


def _claims_mapping(value) -> dict:
    try:
        return C.as_mapping(value)
    except C.ClaimError as e:
        raise GridError(str(e)) from None


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


def _is_relative(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("parent")


def _relative_lr(text: str, parent_lr: float, level: str) -> float:
    """A child's learning rate relative to its parent's: 'parent', 'parent/N' or 'parent*N' (000 halved its rate
    from level 3 to level 4: 'parent/2')."""
    m = re.fullmatch(r"\s*parent\s*(?:([/*])\s*([0-9.eE+-]+))?\s*", text)
    try:
        factor = 1.0 if m is None or m.group(1) is None else float(m.group(2))
    except ValueError:
        m = None
    if m is None or factor <= 0:
        raise GridError(f"level {level!r}: lr={text!r}: write parent, parent/N or parent*N with N > 0")
    lr = parent_lr / factor if m.group(1) == "/" else parent_lr * factor
    return _coerce_all({"lr": lr}, f"level {level!r}")["lr"]


def _arm_name(delta: dict) -> str:
    if len(delta) == 1:
        return C.arm_name(next(iter(delta.values())))
    return ",".join(f"{k}={C.arm_name(v)}" for k, v in delta.items())


def _axis_arms(name: str, axis: dict) -> dict[str, dict]:
    where = f"axis {name!r}"
    unknown = set(axis) - AXIS_KEYS
    if unknown:
        raise GridError(f"{where}: unknown key(s) {sorted(unknown)}; an axis has {sorted(AXIS_KEYS)}")
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


def _ancestors(lv: str, level_specs: dict) -> list[str]:
    """The levels whose trained models ``lv`` builds on, nearest first."""
    out = []
    while isinstance(level_specs.get(lv), dict) and level_specs[lv].get("init_from"):
        lv = level_specs[lv]["init_from"]
        out.append(lv)
    return out


def _lineage(name: str, level_specs: dict) -> list[str]:
    """The levels with ``init_from``, parents before children; unknown or circular parents are refused."""
    order: list[str] = []

    def visit(lv: str, seen: tuple[str, ...]) -> None:
        ls = level_specs[lv]
        parent = ls.get("init_from") if isinstance(ls, dict) else None
        if not parent:
            return
        if parent not in level_specs:
            raise GridError(f"grid {name!r}: level {lv!r} has init_from {parent!r}, which is not one of its "
                            f"levels {list(level_specs)}")
        if parent in (*seen, lv):
            raise GridError(f"grid {name!r}: level {lv!r} starts from itself through init_from")
        visit(parent, (*seen, lv))
        if lv not in order:
            order.append(lv)

    for lv in level_specs:
        visit(lv, ())
    return order


def expand(name: str, spec: dict, *, seeds: int | None = None, levels: list[str] | None = None,
           axes: list[str] | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    """Expand a grid spec into a plan of trial configs (one point per level/axis arm/seed): the spec checked
    (``check_spec``), the levels' reference values resolved (``level_values``), evaluation axes folded into their
    level's TTA, lineage named, then one point per seed of every level reference and axis arm."""
    levels = levels or spec.get("run_levels")
    n_seeds = check_spec(name, spec, seeds, levels, axes, overrides or {})
    level_specs, axis_specs = spec["levels"], spec.get("axes") or {}
    refs = level_values(name, spec, overrides or {})
    eval_axes = _widen_for_eval_axes(name, axis_specs, level_specs, refs)
    wanted_levels = levels or list(level_specs)
    plan = Plan(grid=name, spec=spec, eval_axes=tuple(eval_axes))
    # a level that starts from another level's trained model: its configs (and its axes' arms) name the parent
    # level's reference config; the parent runs first, at the same seed
    for lv in _lineage(name, level_specs):
        refs[lv]["init_from"] = _config(refs[level_specs[lv]["init_from"]], f"level {lv!r}").config_id
    parents_needed = [p for lv in wanted_levels for p in _ancestors(lv, level_specs) if p not in wanted_levels]
    ref_cfg = {lv: _config(refs[lv], f"level {lv!r}") for lv in (*parents_needed, *wanted_levels)}

    def add(level, axis, arm, cfg: TrialConfig, is_ref: bool, competes: bool = True):
        for s in range(n_seeds):
            plan.points.append(Point(level, axis, arm, s, is_ref, cfg.replace(seed=s), competes))

    for lv in (*dict.fromkeys(parents_needed), *wanted_levels):
        add(lv, "reference", "reference", ref_cfg[lv], True)
    for ax_name in (axes if axes is not None else list(axis_specs)):
        if axis_specs[ax_name]["around"] in wanted_levels:
            for arm, cfg, is_ref, competes in _axis_points(ax_name, axis_specs[ax_name], refs, ref_cfg):
                add(axis_specs[ax_name]["around"], ax_name, arm, cfg, is_ref, competes)
    plan.claims = _checked_claims(name, spec, level_specs, axis_specs)
    settings = {tuple(getattr(c, k) for k in DATA_KEYS) for c in plan.trials().values()}
    if len(settings) > 1:
        raise GridError(f"grid {name!r}: all trials of a run must share the data settings {DATA_KEYS}")
    if not plan.points:
        raise GridError(f"grid {name!r}: the selection has no trials")
    return plan


def check_spec(name: str, spec: dict, seeds: int | None, levels: list[str] | None, axes: list[str] | None,
               overrides: dict[str, Any]) -> int:
    """A spec and a selection that can be expanded (one-line ``GridError`` otherwise); the number of seeds."""
    unknown = set(spec) - SECTIONS
    if unknown:
        raise GridError(f"grid {name!r}: unknown section(s) {sorted(unknown)}")
    level_specs, axis_specs = spec.get("levels") or {}, spec.get("axes") or {}
    if not isinstance(level_specs, dict) or not level_specs:
        raise GridError(f"grid {name!r}: needs a 'levels' mapping")
    if not isinstance(axis_specs, dict):
        raise GridError(f"grid {name!r}: 'axes' must be a mapping")
    n_seeds = seeds if seeds is not None else int(spec.get("seeds", 1))
    if n_seeds < 1:
        raise GridError(f"--seeds must be at least 1, got {n_seeds}")
    bad = [lv for lv in levels or [] if lv not in level_specs]
    if bad:
        raise GridError(f"unknown level(s) {bad}; grid {name!r} has {list(level_specs)}")
    bad = [a for a in axes or [] if a not in axis_specs]
    if bad:
        raise GridError(f"unknown axis/axes {bad}; grid {name!r} has {list(axis_specs)}")
    if "init_from" in overrides or "init_from" in (spec.get("base") or {}) or any(
            "init_from" in ((ls or {}).get("set") or {}) for ls in level_specs.values() if isinstance(ls, dict)):
        raise GridError("init_from is a level's key (a level with 'init_from: L3' starts from L3's trained "
                        "model), not a config value to set")
    for ax_name, ax in axis_specs.items():
        if not isinstance(ax, dict) or ax.get("around") not in level_specs:
            raise GridError(f"axis {ax_name!r}: 'around' must name a level of grid {name!r}")
    for ens_name, ens in (spec.get("ensembles") or {}).items():
        ok = isinstance(ens, dict) and len(ens) == 1 and (
            (isinstance(ens.get("axis"), str) and ens["axis"] in axis_specs)
            or (isinstance(ens.get("levels"), list) and ens["levels"] and set(ens["levels"]) <= set(level_specs)))
        if not ok:
            raise GridError(f"ensemble {ens_name!r}: give either 'axis: <axis of this grid>' or "
                            f"'levels: [<levels of this grid>]'")
    return n_seeds


def level_values(name: str, spec: dict, overrides: dict[str, Any]) -> dict[str, dict]:
    """Each level's reference values: the base, the chain of level deltas (``from``), a child's lr relative to its
    parent's (``lr: parent/2``), and the user's overrides on top."""
    level_specs = spec["levels"]
    base = _coerce_all(spec.get("base") or {}, f"grid {name!r} base")
    refs: dict[str, dict] = {}
    relative: dict[str, str] = {}

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
        delta = dict(ls.get("set") or {})
        if _is_relative(delta.get("lr")):  # resolved below, from the init_from parent's lr
            relative[lv] = delta.pop("lr")
        values.update(_coerce_all(delta, f"level {lv!r}"))
        refs[lv] = values
        return values

    for lv in level_specs:
        resolve(lv)
    for lv in _lineage(name, level_specs):  # parents before children
        if lv in relative:
            refs[lv]["lr"] = _relative_lr(relative.pop(lv), refs[level_specs[lv]["init_from"]]["lr"], lv)
    if relative:
        lv, text = next(iter(relative.items()))
        raise GridError(f"grid {name!r}: level {lv!r} sets lr={text!r}, relative to a parent, but has no init_from")
    return {lv: {**v, **overrides} for lv, v in refs.items()}


def _widen_for_eval_axes(name: str, axis_specs: dict, level_specs: dict, refs: dict[str, dict]) -> list[str]:
    """Evaluation axes widen the TTA their level's reference evaluates (they add no trials); their names."""
    eval_axes = []
    for ax_name, ax in axis_specs.items():
        if not ax.get("eval"):
            continue
        if ax.get("key") != "tta":
            raise GridError(f"axis {ax_name!r}: evaluation axes sweep 'tta' only")
        order = list(TTA_MODES)
        vals = [str(v) for v in ax.get("values") or []]
        if not vals or any(v not in order for v in vals):
            raise GridError(f"axis {ax_name!r}: tta values must be among {order}")
        lv = ax["around"]
        refs[lv]["tta"] = max(vals + [refs[lv].get("tta", "none")], key=order.index)
        eval_axes.append(ax_name)
    return eval_axes


def _axis_points(ax_name: str, ax: dict, refs: dict[str, dict], ref_cfg: dict[str, TrialConfig]):
    """(arm, config, is the reference, competes) of every arm of an axis around its level's reference; an
    evaluation axis's arms are TTA modes of the reference itself."""
    lv = ax["around"]
    ref = ref_cfg[lv]
    if ax.get("eval"):
        return [(str(v), ref, str(v) == "none", True) for v in ax["values"]]
    arms = _axis_arms(ax_name, ax)
    cfgs = {arm: _config({**refs[lv], **delta}, f"axis {ax_name!r} arm {arm!r}") for arm, delta in arms.items()}
    if not any(c.trial_id == ref.trial_id for c in cfgs.values()):
        cfgs = {"reference": ref, **cfgs}
    return [(arm, cfg, cfg.trial_id == ref.trial_id, bool(ax.get("compete", True))) for arm, cfg in cfgs.items()]


def axis_arm_names(name: str, axis: dict) -> list[str]:
    """The arm names an axis produces ('reference' is always there: it is added when no arm equals it)."""
    if axis.get("eval"):
        return [str(v) for v in axis.get("values") or []]
    return [*_axis_arms(name, axis), "reference"]


def _check_axis_options(name: str, axis: dict) -> None:
    if not isinstance(axis.get("compete", True), bool):
        raise GridError(f"axis {name!r}: 'compete' must be true or false")
    reported = axis.get("reported")
    if reported is None:
        return
    arms = axis_arm_names(name, axis)
    if not isinstance(reported, dict):
        raise GridError(f"axis {name!r}: 'reported' maps arms to a write-up's test accuracy in percent")
    for arm, value in reported.items():
        if C.arm_name(arm) not in arms:
            raise GridError(f"axis {name!r}: 'reported' names arm {arm!r}, which the axis does not have")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise GridError(f"axis {name!r}: reported accuracy of arm {arm!r} must be a percentage, got {value!r}")


def _checked_claims(name: str, spec: dict, level_specs: dict, axis_specs: dict) -> tuple[C.Claim, ...]:
    for ax_name, ax in axis_specs.items():
        _check_axis_options(ax_name, ax)
    try:
        claims = C.parse(spec.get("claims"))
        C.check(claims, level_specs, {a: axis_arm_names(a, ax) for a, ax in axis_specs.items()}, CLASSES)
    except C.ClaimError as e:
        raise GridError(f"grid {name!r}: {e}") from None
    return tuple(claims)


def ensembles_of(spec: dict, levels: list[str]) -> dict[str, dict]:
    """The grid's declared ensembles, or (none declared) one of the best config of each of ``levels``."""
    return dict(spec.get("ensembles") or {"best of each level": {"levels": list(levels)}})


def describe_lineage(plan: Plan) -> list[str]:
    """Which levels start from another level's trained model (``init_from``), one line each."""
    level_specs = plan.spec.get("levels") or {}
    levels = dict.fromkeys(p.level for p in plan.points)
    out = []
    for lv in levels:
        parent = (level_specs.get(lv) or {}).get("init_from")
        if parent:
            n = sum(1 for t in plan.parents())
            out.append(f"{lv} (its reference and every arm around it) starts from {parent}'s trained reference model "
                       f"of the same seed, which runs first ({n} trials wait for a parent)")
    return out


def describe_ensembles(plan: Plan) -> list[str]:
    """What ensembles the report will form from this plan's stored logits, one line each."""
    levels = list(dict.fromkeys(p.level for p in plan.points))
    axes = {}
    for p in plan.points:
        axes.setdefault(p.axis, set()).add(p.arm)
    out = []
    for name, e in ensembles_of(plan.spec, levels).items():
        if "axis" in e:
            arms = axes.get(e["axis"])
            what = (f"every arm of axis {e['axis']} ({len(arms)} arms)" if arms else
                    f"axis {e['axis']} (not in this selection: no ensemble)")
            if e["axis"] in plan.eval_axes:
                what = f"axis {e['axis']} is evaluation-only: see the TTA table instead (no ensemble)"
        else:
            present = [lv for lv in e.get("levels", []) if lv in levels]
            what = f"the best config (by validation) of {', '.join(present) or 'no level in this selection'}"
        out.append(f"{name}: {what}; soft vote and validation-weighted soft vote, per seed")
    n_seeds = len({p.seed for p in plan.points})
    if n_seeds >= 2:
        out.append(f"seeds of each level's best config ({', '.join(levels)}): soft vote of its {n_seeds} seeds")
    return out


def describe_claims(plan: Plan, classes: Sequence[str] | None = None) -> list[str]:
    """The plan's claims, one line each, the seeds' first and then the grid's own questions (Holm runs within each
    group; the latter marked so), marked where this selection cannot measure them, or (``classes``: the data's)
    the data lacks the classes they name."""
    levels = {p.level for p in plan.points}
    axes = {p.axis for p in plan.points}
    out = []
    for c in sorted(plan.claims, key=lambda c: list(C.GROUPS).index(c.group)):
        group = "" if c.group == "seeds" else "(the grid's own question) "
        need_levels = {c.level} if c.kind == "classes" else ({c.better, c.worse} if c.kind == "levels" else set())
        missing = sorted(need_levels - levels) + ([c.axis] if c.kind == "arms" and c.axis not in axes else [])
        absent = C.absent_classes(c, classes) if classes is not None else []
        note = (f" [not in this grid: {c.not_in_grid}]" if c.not_in_grid else
                f" [not in this selection: {', '.join(missing)}]" if missing else
                f" [{C.not_testable(absent)}]" if absent else "")
        out.append(f"{c.id}: {group}{c.says} -- measures {c.compared()}; source: {c.source}{note}")
    return out


def summarize(plan: Plan) -> list[dict[str, Any]]:
    """Counts per (level, axis): points, unique trials."""
    rows: dict[tuple[str, str], dict] = {}
    for p in plan.points:
        r = rows.setdefault((p.level, p.axis), {"level": p.level, "axis": p.axis, "arms": set(), "trials": set()})
        r["arms"].add(p.arm)
        r["trials"].add(p.trial_id)
    return [{"level": r["level"], "axis": r["axis"], "arms": len(r["arms"]), "trials": len(r["trials"])}
            for r in rows.values()]
