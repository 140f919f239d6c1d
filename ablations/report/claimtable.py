"""The claims: the grid's declared hypotheses, the report's confirmatory family.

Each claim is measured once (``measure_claims``): better minus worse on test, over seeds and test images
(``tables.compare``), in the setting the run used. Its verdict is one of

* **confirmed** / **contradicted**: the both-sources test (``stats.seed_image_test``'s ``p_both``; against the
  claim's margin where it has one) rejects after Holm's correction within the claim's group;
* **no effect ≥ X pp**: the 90% interval over seeds and test images lies inside ±X, X the claim's smallest
  effect of interest (its margin, for a claim of a margin; two one-sided tests at 5%, per claim);
* **inconclusive**: neither: what this run cannot resolve;
* no verdict: fewer than ``MIN_SEEDS`` seeds, no stored logits, not measured, not in this grid.

A verdict measured at another setting than its seed's names the setting it holds for, and so does every verdict
of the grid's own questions (they have no seed setting to stand for). The two groups (the seed
write-ups' claims, the grid's own questions) are separate families: Holm runs within each. ``ClaimIndex`` hands
the verdicts to the exploratory tables, which show a claim's verdict on the rows that make the same comparison.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ablations import stats as S
from ablations.plan.claims import GROUPS, Claim, absent_classes, not_testable
from ablations.plan.compared import Key
from ablations.report import setting as ST
from ablations.report.comparisons import ClaimIndex, ClaimVerdict, Pair, Side
from ablations.report.rundata import RunData
from ablations.report.tables import BOOT_SEED, CONFIDENCE, N_BOOT, compare, mde_note
from ablations.report.tablespec import Col, Table, adaptive_columns, boot_ci, both_ci, p_value, per_seed_diff, text
from ablations.stats import finite

CLAIM_VERDICTS = {"higher": "confirmed", "lower": "contradicted"}


class NotMeasured(Exception):
    """A claim this run cannot measure (its level, axis or arm is not in the run, or nothing finished)."""


# ============================================================================ measuring


@dataclass(frozen=True)
class ClaimSide:
    seeds: dict[int, str]  # {seed: trial id}
    config_id: str
    mode: str


def claim_sides(run: RunData, claim: Claim) -> tuple[ClaimSide, ClaimSide]:
    """The better and the worse side of a level or arm claim."""
    sides = []
    if claim.kind == "levels":
        for lv in (claim.better, claim.worse):
            cid = run.reference_config(lv)
            if cid is None:
                raise NotMeasured(f"level {lv} is not in this run")
            sides.append(ClaimSide(run.seeds(cid, lv), cid, "none"))
    else:
        for arm in (claim.better, claim.worse):
            found = run.arm_config(claim.axis, arm)
            if found is None:
                raise NotMeasured(f"axis {claim.axis} has no arm {arm} in this run")
            lv, cid, mode = found
            sides.append(ClaimSide(run.seeds(cid, lv), cid, mode))
    better, worse = sides
    if not set(better.seeds) & set(worse.seeds):
        raise NotMeasured("no seed where both sides finished")
    return better, worse


def measure_claim(run: RunData, claim: Claim, n_boot: int = N_BOOT, null: float = 0.0) -> dict[str, Any]:
    """The claim's difference, better minus worse, with its seed and image tests (against ``null``)."""
    if claim.kind == "classes":
        return _measure_classes(run, claim, n_boot, null)
    better, worse = claim_sides(run, claim)
    return compare(run, better.seeds, worse.seeds, better.mode, worse.mode, n_boot, null)


@dataclass
class ClassClaimData:
    """A class claim's measurements on test: per-seed differences of mean recalls, and the seeds' correct-image
    arrays (seeds x images, None without stored logits) for the bootstrap."""

    values: dict[int, float]
    correct: np.ndarray | None
    labels: np.ndarray | None
    better: list[int]
    worse: list[int]

    def bootstrap(self, n_boot: int, null: float = 0.0) -> S.Bootstrap | None:
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


def claim_setting(run: RunData, claim: Claim) -> ST.Setting | None:
    """The setting the claim was measured in here (None when its configs are not in the run)."""
    if claim.kind == "classes":
        cid = run.reference_config(claim.level)
        cids = [cid] if cid else []
    else:
        try:
            cids = [s.config_id for s in claim_sides(run, claim)]
        except NotMeasured:
            return None
    if not cids:
        return None
    images = (run.meta.get("data") or {}).get("sizes", {}).get("train")
    return ST.of_sides([run.config_values(c) for c in cids], images,
                       lambda parent: run.config_values(parent).get("epochs", "?"))


# ============================================================================ verdicts


@dataclass
class ClaimResult:
    claim: Claim
    row: dict[str, Any]
    pair: Pair | None  # better minus worse, for a level or arm claim that was measured


def _row(run: RunData, c: Claim) -> dict[str, Any]:
    here = claim_setting(run, c)
    seed = dict(c.seed_setting)
    return {"claim": c.id, "group": GROUPS[c.group], "says": c.says, "source": c.source, "kind": c.kind,
            "compared": c.compared(), "margin_pp": c.margin, "null_pp": 0.0,
            "equivalence_pp": c.margin or c.equivalence,  # a claim of a margin is refuted below its margin
            "setting": here.text() if here else "", "seed_setting": ST.seed_text(seed),
            # a verdict holds for its setting: said where it differs from the seed's, and always for the grid's own
            "scope": here.scope() if here and (c.group == "grid" or ST.differs(here, seed)) else ""}


def measure_claims(run: RunData, n_boot: int = N_BOOT) -> list[ClaimResult]:
    """Every claim of the run's grid, measured and given its verdict (the module's rules)."""
    results = []
    for c in run.claims:
        row, pair = _row(run, c), None
        if c.not_in_grid:
            row["verdict"] = f"not in this grid ({c.not_in_grid})"
            results.append(ClaimResult(c, row, None))
            continue
        if absent_classes(c, run.classes):  # a class claim on data without its classes: listed, not an error
            row["verdict"] = not_testable(absent_classes(c, run.classes))
            results.append(ClaimResult(c, row, None))
            continue
        try:
            row.update(measure_claim(run, c, n_boot))
            margin = c.margin / 100
            if margin and finite(row["diff"]) and row["diff"] > margin:  # test beyond the margin, not beyond 0
                row.update(measure_claim(run, c, n_boot, null=margin), null_pp=c.margin)
            if c.kind != "classes":
                better, worse = claim_sides(run, c)
                pair = Pair(Side(better.config_id, better.mode), Side(worse.config_id, worse.mode))
            row["measured"] = True
        except NotMeasured as e:
            row["verdict"] = f"not measured: {e}"
        results.append(ClaimResult(c, row, pair))
    for group in GROUPS:
        family = [r.row for r in results if r.row.get("measured") and r.claim.group == group]
        S.family_verdicts(family)
        for row in family:
            row["family"] = f"Holm over the {len(family)} measured claim(s) of {GROUPS[group]}"
    for r in results:
        if r.row.get("measured"):
            r.row["verdict"] = _verdict(r.claim, r.row)
    return results


def _verdict(c: Claim, row: dict[str, Any]) -> str:
    v = CLAIM_VERDICTS.get(row["verdict"], row["verdict"])
    if v == "confirmed" and row["null_pp"] == 0 and c.margin:
        v = f"{S.INCONCLUSIVE} (higher, not beyond the {c.margin:g} pp margin)"
    if v.startswith(S.INCONCLUSIVE):
        bound = row["equivalence_pp"]
        row["p_tost"] = S.tost(row["diff"], row.get("se_both", math.nan), row.get("df_both", math.nan), bound / 100)
        if finite(row["p_tost"]) and row["p_tost"] < S.ALPHA:
            v = f"no effect ≥ {bound:g} pp"
    if row.get("scope") and v not in (S.NEEDS_SEEDS, S.UNTESTED):
        v = f"{v} {row['scope']}"
    return v


def claim_index(results: list[ClaimResult]) -> ClaimIndex:
    index = ClaimIndex()
    for r in results:
        if r.pair is not None and r.row.get("measured"):
            index.add(r.pair, ClaimVerdict(r.claim.id, r.row["verdict"], r.row.get("p_holm", math.nan),
                                           r.row.get("family", "")))
    return index


# ============================================================================ the table


def _bound(r) -> str:
    return f"{r['equivalence_pp']:g}" if finite(r.get("equivalence_pp")) else "–"


CLAIM_COLUMNS = [Col("Claim", text("claim")), Col("Says", text("says"), note=True),
                 Col("Source", text("source"), note=True), Col("Measures (better − worse)", text("compared"), note=True),
                 Col("Setting here", text("setting"), note=True),
                 Col("Seed's setting", text("seed_setting", ""), note=True),
                 Col("Δ, pp (95% CI over seeds only)", per_seed_diff()),
                 Col("95% CI, pp (seeds and test images)", both_ci),
                 Col("95% CI, pp (test images only)", boot_ci, md=False),
                 Col("Smallest effect of interest, pp", _bound),
                 Col("p seeds (t)", p_value("p_seed"), md=False), Col("p images (bootstrap)", p_value("boot_p"), md=False),
                 Col("p seeds + images", p_value("p_both"), md=False), Col("p equivalence (TOST)", p_value("p_tost"),
                                                                          md=False),
                 Col("p Holm", p_value("p_holm")), Col("Verdict", text("verdict"))]


ADAPTIVE_CLAIM_COLUMNS = [*CLAIM_COLUMNS[:6], *adaptive_columns("Δ, pp (over seeds)")]


def claims_table(run: RunData, results: list[ClaimResult], adaptive=None) -> Table:
    """Every claim of the grid with its measured difference, setting and verdict, one sub-table per group.
    ``adaptive`` (``adaptive_report.StudyVerdicts``, an --until-decided run): the verdicts of its anytime-valid
    procedure, with the seeds each used."""
    rows = [r.row for r in results]
    if adaptive is not None:
        for r in rows:
            adaptive.apply(r, Key(claim=r["claim"]))
            if r.get("scope") and r.get("verdict") not in (S.NEEDS_SEEDS, S.UNTESTED):
                r["verdict"] = f"{r['verdict']} {r['scope']}"
        return Table("claims", pd.DataFrame(rows), ADAPTIVE_CLAIM_COLUMNS, group="group")
    table = Table("claims", pd.DataFrame(rows), CLAIM_COLUMNS, group="group")
    measured = [r for r in rows if r.get("measured")]
    table.notes = [n for n in [mde_note(measured)] if n]
    return table
