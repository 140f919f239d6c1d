"""The study's hypotheses as data: a grid's ``claims`` section, parsed and checked against the grid.

Each claim has ``says`` (the hypothesis in words), ``source`` (which seed write-up says it, and where), an
optional ``margin`` in percentage points, an optional ``equivalence`` bound (the smallest effect of interest, in
pp, default ``DEFAULT_EQUIVALENCE_PP``, the margin for a claim with one: a difference whose 90% interval lies
inside +-bound is reported as "no effect >= bound"), a ``group`` (``seeds``: a seed write-up's claim, the default; ``grid``: a question of the grid
itself, such as a control), an optional ``seed_setting`` (what the seed measured it on: ``backbone``,
``resolution``, ``train_images``, ``epochs``, each a value or text such as "not stated"), and one of three shapes:

    finetune_beats_frozen: {better: L2, worse: L1}                         level vs level (their reference configs)
    augment_helps: {axis: augment, better: strong, worse: none}            arm vs arm within one axis
    rigid_beat_organic: {level: L4, better: [ship, truck], worse: [cat]}   groups of classes, in one level's reference

``claims`` maps ids to claims (a list of claims that each carry an ``id`` is read the same way). A grid that
``extends`` another replaces claims by id; ``null`` removes one. A claim about an axis the extending grid
removes stays, marked ``not_in_grid`` with the reason, so the report lists it as not measured here instead of
dropping it. The report gives each claim a verdict (``ablations.report.tables.claims_table``); nothing here chooses or
trains anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pipeline.errors import UserError

KEYS = {"id", "says", "source", "better", "worse", "axis", "level", "margin", "not_in_grid", "equivalence", "group",
        "seed_setting"}
GROUPS = {"seeds": "the seed write-ups' claims", "grid": "this grid's own questions (no seed made them)"}
DEFAULT_EQUIVALENCE_PP = 1.0  # the smallest effect of interest when a claim declares none
SETTING_KEYS = ("backbone", "resolution", "train_images", "epochs")


class ClaimError(UserError, ValueError):
    """A claim that cannot be read or names something the grid does not have; one line."""


@dataclass(frozen=True)
class Claim:
    id: str
    says: str
    source: str
    better: str | tuple[str, ...]
    worse: str | tuple[str, ...]
    axis: str | None = None
    level: str | None = None
    margin: float = 0.0  # percentage points
    not_in_grid: str = ""  # why this grid cannot measure it (an axis a grid that extends another removed)
    equivalence: float = DEFAULT_EQUIVALENCE_PP  # pp: smaller true differences are "no effect"
    group: str = "seeds"  # a key of GROUPS
    seed_setting: tuple[tuple[str, str], ...] = ()  # (key, value) in SETTING_KEYS order: what the seed ran

    @property
    def kind(self) -> str:
        """'arms' (within an axis), 'classes' (groups of classes) or 'levels'."""
        if self.axis is not None:
            return "arms"
        return "classes" if isinstance(self.better, tuple) else "levels"

    def compared(self) -> str:
        """What is measured, better minus worse: 'L2 reference − L1 reference'."""
        if self.kind == "arms":
            out = f"{self.axis}: {self.better} − {self.worse}"
        elif self.kind == "classes":
            out = (f"{self.level} reference: mean recall of {', '.join(self.better)} − of {', '.join(self.worse)}")
        else:
            out = f"{self.better} reference − {self.worse} reference"
        return out + (f" (margin {self.margin:g} pp)" if self.margin else "")


def arm_name(value: Any) -> str:
    """An arm as a grid names it: floats in %g (1.0e-3 -> '0.001'), everything else as text."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def as_mapping(value: Any) -> dict[str, dict | None]:
    """``claims`` as {id: claim or None}: a mapping as it is, a list of claims by their ``id``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): (dict(v) if isinstance(v, Mapping) else v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, dict | None] = {}
        for i, c in enumerate(value):
            if not isinstance(c, Mapping) or "id" not in c:
                raise ClaimError(f"claims: entry {i + 1} needs an 'id'")
            cid = str(c["id"])
            if cid in out:
                raise ClaimError(f"claims: id {cid!r} is declared twice")
            out[cid] = {k: v for k, v in c.items() if k != "id"}
        return out
    raise ClaimError(f"claims: expected a mapping of id -> claim (or a list), got {type(value).__name__}")


def parse(value: Any) -> list[Claim]:
    """The claims of a grid spec's ``claims`` section, checked for shape (not yet against the grid)."""
    return [_parse_one(cid, c) for cid, c in as_mapping(value).items() if c is not None]


def _parse_one(cid: str, c: Any) -> Claim:
    where = f"claim {cid!r}"
    if not isinstance(c, Mapping):
        raise ClaimError(f"{where}: expected a mapping with says, source, better and worse")
    unknown = set(c) - KEYS
    if unknown:
        raise ClaimError(f"{where}: unknown key(s) {sorted(unknown)}; a claim has {sorted(KEYS - {'id'})}")
    for key in ("says", "source"):
        if not isinstance(c.get(key), str) or not c[key].strip():
            raise ClaimError(f"{where}: '{key}' must be a non-empty text")
    if "better" not in c or "worse" not in c:
        raise ClaimError(f"{where}: needs 'better' and 'worse'")
    better, worse = c["better"], c["worse"]
    margin = c.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 100:
        raise ClaimError(f"{where}: 'margin' must be a number of percentage points in [0, 100)")
    absent = c.get("not_in_grid", "")
    if not isinstance(absent, str):
        raise ClaimError(f"{where}: 'not_in_grid' is a reason, in words")
    bound = c.get("equivalence", DEFAULT_EQUIVALENCE_PP)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < 100:
        raise ClaimError(f"{where}: 'equivalence' must be a number of percentage points in (0, 100)")
    group = c.get("group", "seeds")
    if group not in GROUPS:
        raise ClaimError(f"{where}: 'group' must be one of {sorted(GROUPS)}, got {group!r}")
    common = dict(id=cid, says=c["says"].strip(), source=c["source"].strip(), margin=float(margin),
                  not_in_grid=absent.strip(), equivalence=float(bound), group=group,
                  seed_setting=_seed_setting(where, c.get("seed_setting")))
    if isinstance(better, list) or isinstance(worse, list):
        if not (isinstance(better, list) and isinstance(worse, list) and better and worse):
            raise ClaimError(f"{where}: a class claim gives non-empty lists of classes for both 'better' and 'worse'")
        if "axis" in c or not isinstance(c.get("level"), str):
            raise ClaimError(f"{where}: a class claim names the 'level' whose reference config it measures")
        b, w = tuple(str(x) for x in better), tuple(str(x) for x in worse)
        if set(b) & set(w):
            raise ClaimError(f"{where}: class(es) {sorted(set(b) & set(w))} on both sides")
        return Claim(better=b, worse=w, level=c["level"], **common)
    if "level" in c:
        raise ClaimError(f"{where}: 'level' is for class claims; a level claim names the levels as better/worse")
    axis = c.get("axis")
    if axis is not None and not isinstance(axis, str):
        raise ClaimError(f"{where}: 'axis' must be an axis name")
    b, w = arm_name(better), arm_name(worse)
    if b == w:
        raise ClaimError(f"{where}: 'better' and 'worse' are both {b!r}")
    return Claim(better=b, worse=w, axis=axis, **common)


def _seed_setting(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or set(value) - set(SETTING_KEYS):
        raise ClaimError(f"{where}: 'seed_setting' is a mapping with some of {list(SETTING_KEYS)}")
    return tuple((k, str(value[k]).strip()) for k in SETTING_KEYS if k in value)


NOT_TESTABLE = "not testable here (classes absent)"


def absent_classes(claim: Claim, classes: Iterable[str]) -> list[str]:
    """The classes a class claim names that the data does not have (compared without case); none for other
    claims. Such a claim is listed as ``NOT_TESTABLE`` (``not_testable``), neither an error nor dropped: a grid's
    class claims name CIFAR-10's classes, and a run on other data cannot test them."""
    if claim.kind != "classes":
        return []
    have = {str(c).lower() for c in classes}
    return [c for c in (*claim.better, *claim.worse) if c.lower() not in have]


def not_testable(absent: Iterable[str]) -> str:
    """The verdict of a claim whose classes are absent: 'not testable here (classes absent): ship, truck'."""
    return f"{NOT_TESTABLE}: {', '.join(absent)}"


def check(claims: Iterable[Claim], levels: Iterable[str], axis_arms: Mapping[str, Iterable[str]],
          classes: Iterable[str]) -> None:
    """Every level, axis, arm and class a claim names exists in the grid (one-line ``ClaimError`` if not)."""
    levels, classes = list(levels), list(classes)
    for c in claims:
        where = f"claim {c.id!r}"
        if c.not_in_grid:  # listed, not measured
            continue
        if c.kind == "levels":
            for lv in (c.better, c.worse):
                if lv not in levels:
                    raise ClaimError(f"{where}: unknown level {lv!r}; the grid has {levels}")
        elif c.kind == "arms":
            if c.axis not in axis_arms:
                raise ClaimError(f"{where}: unknown axis {c.axis!r}; the grid has {sorted(axis_arms)}")
            arms = list(axis_arms[c.axis])
            for arm in (c.better, c.worse):
                if arm not in arms:
                    raise ClaimError(f"{where}: axis {c.axis!r} has no arm {arm!r}; its arms are {arms}")
        else:
            if c.level not in levels:
                raise ClaimError(f"{where}: unknown level {c.level!r}; the grid has {levels}")
            bad = [k for k in (*c.better, *c.worse) if k not in classes]
            if bad:
                raise ClaimError(f"{where}: unknown class(es) {bad}; the classes are {classes}")
