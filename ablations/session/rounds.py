"""``--until-decided``: the adaptive rounds of a run, between the driver and the statistical core
(``ablations.stats.sequential``).

After the grid's planned seeds have run, each round asks ``sequential.plan_round`` which comparisons (every claim
and every axis arm of the plan: one Holm family) are still open **on validation accuracy**, and gives each of them
one more seed, on both sides. The rounds stop when every comparison is decided, when the open ones have reached
``--max-seeds``, or when the next round does not fit in ``--budget``. Test numbers never enter.

* The added (config, seed) pairs are ordinary plan points (``grids.Plan.with_seeds``): the same config at seed k
  is the same trial whichever run added it. The run folder's plan (run.json) grows with them before they start,
  so a resumed run (the same command, also after SIGKILL) first finishes the round it was in (its trials are
  pending like any others), then plans the next one from the trials on disk. The planner is a pure function of
  them, so it makes the plan the uninterrupted run would have made.
* A failed seed counts as tried: its comparison moves on to the next seed within the run (a resumed command
  retries failed trials, as for any run).
* The cost of one more seed of a config is the dry run's estimate (``ablations.plan.estimate``) times the session's
  ETA calibration (measured over estimated seconds of its finished trials), over the run's concurrency, in wall
  hours; a config that starts from another's model (``init_from``) adds its parent's. The budget counts the wall
  time of every session of the run.

Nothing here starts Ray: ``Rounds.run`` is handed the function that runs trials (the driver's Tune waves, or a
test's synthetic trials).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from pipeline.errors import ConfigError

from ablations.plan.compared import Series
from ablations.plan.grids import Plan
from ablations.stats import finite
from ablations.stats import sequential as Q

# the settings of the procedure (Ray-free, read by the report too) live with it; re-exported here for the CLI
from ablations.stats.sequential import DEFAULT_MAX_SEEDS, TESTS, Settings  # noqa: E402,F401
from ablations.store.ledger import Ledger


def settings_from_args(args, planned: int) -> Settings | None:
    """The flags as Settings (None without --until-decided; ``planned``: the grid's seeds per config, the repeated
    t-test's first look, at least 3); --max-seeds, --budget or --sequential-test alone is bad input."""
    if not getattr(args, "until_decided", False):
        stray = [f for f, v in (("--max-seeds", args.max_seeds), ("--budget", args.budget),
                                ("--sequential-test", args.sequential_test)) if v is not None]
        if stray:
            raise ConfigError(f"{' and '.join(stray)} only appl{'y' if len(stray) > 1 else 'ies'} with --until-decided")
        return None
    return Settings(max_seeds=args.max_seeds if args.max_seeds is not None else DEFAULT_MAX_SEEDS,
                    budget_hours=args.budget if args.budget is not None else math.inf,
                    test=args.sequential_test or "mixture", first_look=max(3, planned))


# ============================================================================ the plan's seeds


def tried_seeds(plan: Plan) -> dict[str, set[int]]:
    """{config id: its seeds in the plan}: at planning time every one of them has been tried (run, or failed)."""
    out: dict[str, set[int]] = {}
    for p in plan.points:
        out.setdefault(p.config_id, set()).add(p.seed)
    return out


def planned_seeds(plan: Plan) -> dict[str, int]:
    """{config id: number of seeds}, of a plan as the grid expands it (before any round)."""
    return {cid: len(s) for cid, s in tried_seeds(plan).items()}


def compared_configs(comparisons: Iterable[Q.Comparison]) -> list[str]:
    return list(dict.fromkeys(k for c in comparisons for k in c.trained()))


def worst_case_plan(plan: Plan, comparisons: Sequence[Q.Comparison], max_seeds: int) -> Plan:
    """The plan with every compared config at ``max_seeds`` seeds (the most the rounds can add)."""
    return plan.with_seeds({cid: range(max_seeds) for cid in compared_configs(comparisons)})


def config_hours(plan: Plan, seconds: Callable[[Any], float], scale: float) -> dict[str, float]:
    """One more seed of each config, in the budget's unit: ``seconds(config)`` (an estimate) times ``scale``
    (e.g. calibration / concurrency / 3600), plus its ``init_from`` ancestors' (they train first at that seed)."""
    configs: dict[str, Any] = {}
    for p in plan.points:
        configs.setdefault(p.config_id, p.config)
    own = {cid: seconds(c) * scale for cid, c in configs.items()}

    def total(cid: str) -> float:
        out, seen = 0.0, set()
        while cid in configs and cid not in seen:
            seen.add(cid)
            out += own[cid]
            cid = configs[cid].init_from
        return out

    return {cid: total(cid) for cid in configs}


def round_count(plan: Plan, planned: Mapping[str, int]) -> int:
    """The rounds a run has started (``sequential.rounds_done``) over the configs of the command's plan."""
    tried = tried_seeds(plan)
    return Q.rounds_done({k: s for k, s in tried.items() if k in planned}, planned)


# ============================================================================ validation series


def val_series(plan: Plan, metrics: Mapping[str, Mapping[str, Any]], comparisons: Sequence[Q.Comparison],
               class_recall: Callable[[str], Sequence[float] | None] | None = None,
               classes: Sequence[str] = ()) -> dict[Series, dict[int, float]]:
    """{series: {seed: validation value}} that ``sequential`` decides on, from the finished trials' row metrics
    (``metrics``: trial id -> metrics, finished trials only): a config's accuracy in a TTA mode (``val_acc`` or
    ``val_acc_<mode>``), and a class claim's per-seed difference of mean validation recalls
    (``class_recall(trial id)``: the per-class recalls on the validation split, in the order of ``classes``).
    Never test numbers."""
    by_config: dict[str, dict[int, str]] = {}
    for p in plan.points:
        if p.trial_id in metrics:
            by_config.setdefault(p.config_id, {})[p.seed] = p.trial_id
    out: dict[Series, dict[int, float]] = {}
    claims = {c.id: c for c in plan.claims}
    index = {str(c).lower(): i for i, c in enumerate(classes)}
    for c in comparisons:
        for key in (c.better, c.worse):
            if key is None or key in out:
                continue
            if key.class_claim:
                claim = claims.get(key.class_claim)
                if claim is None or class_recall is None or not all(k.lower() in index
                                                                     for k in (*claim.better, *claim.worse)):
                    continue
                better = [index[k.lower()] for k in claim.better]
                worse = [index[k.lower()] for k in claim.worse]
                values = {}
                for seed, tid in by_config.get(c.trained()[0], {}).items():
                    r = class_recall(tid)
                    if r is not None:
                        values[seed] = float(np.mean([r[i] for i in better]) - np.mean([r[i] for i in worse]))
                if values:
                    out[key] = values
                continue
            column = "val_acc" if key.mode == "none" else f"val_acc_{key.mode}"
            values = {s: float(metrics[t][column]) for s, t in by_config.get(key.config_id, {}).items()
                      if finite(metrics[t].get(column))}
            if values:
                out[key] = values
    return out


def recall_from_logits(read_logits: Callable[[str], Mapping | None], labels: np.ndarray,
                       n_classes: int) -> Callable[[str], list[float] | None]:
    """``class_recall`` for ``val_series``: per-class recall of a trial's stored validation logits (no TTA)."""
    cache: dict[str, list[float] | None] = {}
    y = np.asarray(labels)

    def recall(tid: str) -> list[float] | None:
        if tid not in cache:
            try:
                logits = read_logits(tid)
                pred = np.asarray(logits["val"]["none"]).argmax(1)
            except (OSError, KeyError, TypeError, ValueError):
                cache[tid] = None
            else:
                cache[tid] = None if len(pred) != len(y) else [
                    float((pred[y == k] == k).mean()) if np.any(y == k) else math.nan for k in range(n_classes)]
        return cache[tid]

    return recall


# ============================================================================ the rounds


@dataclass
class Rounds:
    """The adaptive rounds of one session of a run. ``planned``: {config id: seeds} of the command's plan (the
    grid's seeds, before rounds); ``cost_hours(plan)``: one more seed of each config, now; ``spent_hours()``: what
    the run has used of the budget so far."""

    ledger: Ledger
    settings: Settings
    planned: dict[str, int]
    comparisons: list[Q.Comparison]
    cost_hours: Callable[[Plan], Mapping[str, float]] = field(default=lambda plan: {})
    spent_hours: Callable[[], float] = field(default=lambda: 0.0)
    class_recall: Callable[[str], Sequence[float] | None] | None = None
    classes: Sequence[str] = ()
    last: Q.RoundPlan | None = None

    def state(self) -> Q.StudyState:
        """What the planner sees: the finished trials' validation numbers and every seed the plan has tried."""
        plan = self.ledger.plan
        finished = {tid: r.metrics for tid, r in self.ledger.records.items() if r.status == "finished"}
        return Q.StudyState(val=val_series(plan, finished, self.comparisons, self.class_recall, self.classes),
                            comparisons=self.comparisons, max_seeds=self.settings.max_seeds, tried=tried_seeds(plan),
                            budget_hours=self.settings.budget_hours, spent_hours=self.spent_hours(),
                            cost_hours=dict(self.cost_hours(plan)), round=round_count(plan, self.planned),
                            alpha=self.settings.alpha, procedure=self.settings.procedure)

    def next(self) -> Q.RoundPlan:
        """The next round's plan (call when every trial of the plan has ended)."""
        self.last = Q.plan_round(self.state())
        return self.last

    def run(self, run_trials: Callable[[list[str]], None], say: Callable[[str], None] = print,
            grew: Callable[[Plan, list[str]], None] = lambda plan, new: None) -> Q.RoundPlan | None:
        """Rounds until the planner stops. Each round's seeds join the plan: ``grew(plan, new trial ids)`` hears
        of them first (run.json, progress), then the ledger (its tables get the new rows), then
        ``run_trials(new trial ids)`` runs them. Returns the last plan, or None when some trial of the plan did
        not end (the run stopped; the same command continues it)."""
        while True:
            if self.ledger.with_status("pending", "running"):
                return None
            rp = self.next()
            say(rp.line())
            if rp.stop_reason:
                return rp
            plan = self.ledger.plan.with_seeds(rp.add_seeds)
            new = [tid for tid in plan.trials() if tid not in self.ledger.records]
            if not new:  # plan_round adds only seeds a config has not tried: a round always adds trials
                raise RuntimeError(f"round {rp.round} added no trial to the plan ({rp.add_seeds})")
            grew(plan, new)
            self.ledger.grow(plan)
            run_trials(new)

    def record(self) -> dict[str, Any]:
        """run.json's ``adaptive``: the settings, the rounds started, and the last round's plan (the stop reason,
        None while the run has not stopped adding seeds; the comparisons decided on validation)."""
        values = sorted(set(self.planned.values()))
        out = {**self.settings.meta(), "planned_seeds": values[0] if len(values) == 1 else values,
               "rounds": round_count(self.ledger.plan, self.planned), "comparisons": len(self.comparisons),
               "stop_reason": None, "decided_on_validation": [], "open_on_validation": []}
        rp = self.last
        if rp is not None:
            out.update(stop_reason=rp.stop_reason, decided_on_validation=[str(k) for k in rp.decided],
                       open_on_validation=[str(k) for k in (*rp.open, *rp.at_cap, *rp.deferred)])
        return out
