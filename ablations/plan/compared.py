"""The comparisons a plan holds, as values. ``Key`` names one: an axis arm against its axis's reference, or a claim.
``Series`` is what one side of it is measured on per seed: a config in a TTA mode, or a class claim's per-seed
difference of mean recalls of its level's reference. ``comparisons_from_plan`` lists them for the adaptive rounds
and their report; ``ablations.stats.sequential`` decides on them without knowing what they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ablations.stats.sequential import Comparison

if TYPE_CHECKING:
    from ablations.plan.grids import Plan


@dataclass(frozen=True, order=True)
class Key:
    """A comparison: ``axis``/``arm`` against the axis's reference, or the claim ``claim``."""

    axis: str = ""
    arm: str = ""
    claim: str = ""

    @property
    def kind(self) -> str:
        return "claim" if self.claim else "axis"

    def __str__(self) -> str:  # how the report and the dry run name it
        return f"claim/{self.claim}" if self.claim else f"{self.axis}/{self.arm}"


@dataclass(frozen=True, order=True)
class Series:
    """Per-seed values one side of a comparison is measured on: ``config_id`` in TTA ``mode``, or, with
    ``class_claim``, that claim's per-seed difference of mean recalls of ``config_id`` (its level's reference)."""

    config_id: str
    mode: str = "none"
    class_claim: str = ""


def comparisons_from_plan(plan: Plan) -> list[Comparison]:
    """Every axis arm against its axis's reference (an evaluation-only TTA axis: a TTA mode of the level's
    reference against no TTA) and every claim the plan can measure. Claim margins in pp become fractions."""
    pts = plan.points
    refs = {p.level: p.config_id for p in pts if p.axis == "reference"}
    arms: dict[tuple[str, str], Series] = {}  # (axis, arm) -> its series
    axis_ref: dict[str, Series] = {}  # an evaluation axis compares with no TTA, 'none' an arm or not
    for p in (p for p in pts if p.axis != "reference"):
        is_eval = p.axis in plan.eval_axes
        arms.setdefault((p.axis, p.arm), Series(p.config_id, p.arm if is_eval else "none"))
        if p.is_reference or is_eval:
            axis_ref.setdefault(p.axis, Series(p.config_id))
    for ax, side in axis_ref.items():  # claims may name an axis's reference arm 'reference'
        arms.setdefault((ax, "reference"), side)

    def comp(key: Key, a: Series, b: Series, margin: float = 0.0) -> Comparison:
        return Comparison(key, a, b, margin, tuple(dict.fromkeys((a.config_id, b.config_id))), key.kind)

    out = [comp(Key(ax, arm), side, axis_ref[ax]) for (ax, arm), side in arms.items() if side != axis_ref[ax]]
    for c in plan.claims:
        key, margin = Key(claim=c.id), c.margin / 100
        if c.kind == "levels" and c.better in refs and c.worse in refs:
            out.append(comp(key, Series(refs[c.better]), Series(refs[c.worse]), margin))
        elif c.kind == "arms" and (c.axis, c.better) in arms and (c.axis, c.worse) in arms:
            out.append(comp(key, arms[(c.axis, c.better)], arms[(c.axis, c.worse)], margin))
        elif c.kind == "classes" and c.level in refs:
            series = Series(refs[c.level], class_claim=c.id)
            out.append(Comparison(key, series, None, margin, (refs[c.level],), "claim"))
    return out
