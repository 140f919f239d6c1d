"""The report of an ``--until-decided`` run: one anytime-valid verdict per claim and axis arm, on test.

``StudyVerdicts.of(run)`` rebuilds the run's comparisons from its plan (``plan.compared.comparisons_from_plan``: every
claim and every axis arm, one family), measures each on the test set (per-seed differences on the seeds both
sides finished, and the paired image bootstrap of their mean at those seeds) and hands them to
``sequential.verdicts`` with the settings and the stop reason run.json recorded (``adaptive``). Holm runs over the
whole family, so a verdict here depends on every comparison of the study, not only on its table's.

The claims table, the ablation tables and the level table take these verdicts (``apply``, ``level_summary``):
each row shows the seeds the verdict used and how its seeds stopped (decided early, decided at the cap, open at
the cap, open at the budget, open on test though decided on validation). Runs without ``adaptive`` in run.json
never come here: their report is the fixed-sample one.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ablations import stats as S
from ablations.plan import grids
from ablations.plan.claims import NOT_TESTABLE
from ablations.plan.compared import Key, comparisons_from_plan
from ablations.report.claimtable import NotMeasured, class_claim_data
from ablations.report.rundata import RunData
from ablations.report.tables import BOOT_SEED, CONFIDENCE
from ablations.stats import sequential as Q
from ablations.stats.sequential import Settings

CLAIM_WORDS = {Q.HIGHER: "confirmed", Q.LOWER: "contradicted", Q.OPEN: S.INCONCLUSIVE}
AXIS_WORDS = {Q.HIGHER: "higher", Q.LOWER: "lower", Q.OPEN: S.INCONCLUSIVE}
STOPS = {"decided": "every comparison was decided on validation",
         "max_seeds": "the comparisons still open had reached the cap",
         "budget": "the next round did not fit in the budget",
         None: "not yet: the run has not finished adding seeds"}


def run_plan(run: RunData) -> grids.Plan:
    """The plan run.json holds (the grown one), with the grid's claims."""
    meta = run.meta
    rows = meta.get("plan") or []
    return grids.Plan(grid=str(meta.get("grid")), spec=run.spec,
                      points=grids.points_from_rows(rows, int(meta.get("id_schema", 1))),
                      eval_axes=tuple(meta.get("eval_axes") or ()), claims=tuple(run.claims))


@dataclass
class Measured:
    diffs: dict[int, float]
    image_p: tuple[float, float]  # (higher, lower); NaN when the test logits of some seed are missing
    available: int = 0  # paired seeds the run has (more than ``diffs`` holds beyond a horizon)


def measure(run: RunData, c: Q.Comparison, claims: dict[str, Any], n_boot: int,
            limit: float = math.inf) -> Measured:
    """One comparison on test: per-seed differences (better minus worse) on the seeds both sides finished (the
    first ``limit`` of them in seed order: a procedure's horizon), and the image bootstrap's one-sided p-values at
    those seeds (``sequential.image_p_from``)."""
    if c.worse is None:  # a class claim
        try:
            data = class_claim_data(run, claims[c.better.class_claim])
        except NotMeasured:
            return Measured({}, (math.nan, math.nan))
        values = dict(list(data.values.items())[:int(min(limit, len(data.values)))])
        if data.correct is None or len(data.correct) < len(data.values):
            return Measured(values, (math.nan, math.nan), len(data.values))
        data = dataclasses.replace(data, values=values, correct=data.correct[:len(values)])
        return Measured(values, Q.image_p_from(lambda null: data.bootstrap(n_boot, null), c.margin),
                        len(data.values))
    (ca, ma), (cb, mb) = (c.better.config_id, c.better.mode), (c.worse.config_id, c.worse.mode)
    a, b = run.seeds(ca), run.seeds(cb)
    paired = {}
    for s in sorted(set(a) & set(b)):
        d = run.acc(a[s], "test", ma) - run.acc(b[s], "test", mb)
        if S.finite(d):
            paired[s] = float(d)
    diffs = dict(list(paired.items())[:int(min(limit, len(paired)))])
    xa = [run.correct(a[s], "test", ma) for s in diffs]
    xb = [run.correct(b[s], "test", mb) for s in diffs]
    if not diffs or any(x is None for x in (*xa, *xb)):
        return Measured(diffs, (math.nan, math.nan), len(paired))
    A, B = np.stack(xa), np.stack(xb)

    def boot(null: float):
        return S.paired_bootstrap(A, B, n_boot=n_boot, seed=BOOT_SEED, confidence=CONFIDENCE, null=null)

    return Measured(diffs, Q.image_p_from(boot, c.margin), len(paired))


@dataclass
class StudyVerdicts:
    """The anytime-valid verdicts of an adaptive run, by comparison (``plan.compared.Key``)."""

    settings: Settings
    record: dict
    comparisons: list[Q.Comparison]
    verdicts: dict[Key, Q.Verdict]
    measured: dict[Key, Measured]

    @classmethod
    def of(cls, run: RunData, n_boot: int) -> "StudyVerdicts | None":
        record = run.meta.get("adaptive")
        if not record:
            return None
        settings = Settings.from_meta(record)
        comps = comparisons_from_plan(run_plan(run))
        claims = {c.id: c for c in run.claims}
        keys = {str(c.id): c.id for c in comps}  # run.json names them as text
        measured = {c.id: measure(run, c, claims, n_boot, settings.horizon) for c in comps}
        rows = Q.verdicts({k: m.diffs for k, m in measured.items()}, comps,
                          {k: m.image_p for k, m in measured.items()}, max_seeds=settings.max_seeds,
                          stop_reason=record.get("stop_reason"),
                          val_decided=[keys[k] for k in record.get("decided_on_validation", ()) if k in keys],
                          alpha=settings.alpha, procedure=settings.procedure)
        return cls(settings, record, comps, {v.id: v for v in rows}, measured)

    # ------------------------------------------------------------------ rows of the tables

    def apply(self, row: dict[str, Any], key: Key) -> None:
        """A table row (a claim's, or an axis arm's) takes the anytime-valid verdict of comparison ``key``:
        its p-values, Holm over the whole study, the verdict, the seeds it used and how they stopped."""
        claim = key.kind == "claim"
        v = self.verdicts.get(key)
        if v is None or v.n == 0:
            row.update(seeds_used=0, status="not measured", p_holm=math.nan)
            kept = str(row.get("verdict", "")).startswith(("not measured", NOT_TESTABLE))
            row["verdict"] = row.get("verdict") if kept else "not measured"
            return
        words = CLAIM_WORDS if claim else AXIS_WORDS
        verdict = words[v.verdict]
        if v.verdict == Q.OPEN and not S.finite(v.p_image):
            verdict = S.UNTESTED
        row.update(seeds_used=v.n, status=v.status, p_seed_anytime=v.p_seed, p_image_one_sided=v.p_image,
                   p_holm=v.p_holm, cs_lo=v.cs_lo, cs_hi=v.cs_hi, verdict=verdict)

    def level_summary(self, configs: set[str]) -> str:
        """The verdicts that involve any of ``configs`` (a level's), counted by how their seeds stopped, with the
        seeds they used: '2 decided early (4-5 seeds); 1 open at the cap (8 seeds)'."""
        groups: dict[str, list[int]] = {}
        for c in self.comparisons:
            v = self.verdicts.get(c.id)
            if v is None or v.n == 0 or not set(c.trained()) & configs:
                continue
            groups.setdefault(v.status, []).append(v.n)
        parts = []
        for status, ns in groups.items():
            seeds = f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}"
            parts.append(f"{len(ns)} {status} ({seeds} seeds)")
        return "; ".join(parts)

    # ------------------------------------------------------------------ the method section

    def method_lines(self) -> list[str]:
        r = self.record
        budget = f"{r['budget_hours']:g} h" if r.get("budget_hours") else "none"
        planned = r.get("planned_seeds")
        planned = "/".join(map(str, planned)) if isinstance(planned, list) else planned
        decided = sum(v.verdict != Q.OPEN for v in self.verdicts.values())
        beyond = []
        if math.isfinite(self.settings.horizon) and any(m.available > self.settings.horizon
                                                         for m in self.measured.values()):
            beyond = [f"* Seeds beyond the repeated t-test's horizon ({self.settings.max_seeds}), added by a later run, "
                      "are not used: its guarantee holds up to the horizon only."]
        return [
            f"This run added seeds adaptively (`--until-decided`): planned {planned} seed(s) per config, cap "
            f"{self.settings.max_seeds} seeds (`--max-seeds`), budget {budget}; {r.get('rounds', 0)} round(s); "
            f"stopped: {STOPS.get(r.get('stop_reason'), r.get('stop_reason'))}. The claims table, the ablation "
            f"tables and the level table show the verdicts of this procedure ({decided} of {len(self.verdicts)} "
            f"called on test), each with the seeds it used and how its seeds stopped.", "",
            *Q.method_lines(self.settings.procedure, self.settings.alpha, family=len(self.comparisons)), *beyond,
            "* The TTA and ensemble tables below keep the fixed-sample rule of the next section: their numbers of "
            "seeds were chosen by this procedure on other comparisons, so their p-values are descriptive here.", ""]
