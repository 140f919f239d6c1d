"""What a comparison is, as a value: two sides (a config evaluated with a TTA mode), A minus B.

The report measures some comparisons in more than one table: the claims (the confirmatory family) and the
exploratory tables (an ablation axis, the TTA table) can hold the same pair of trained models. ``ClaimIndex``
lets an exploratory table find the claim that measures its row, so that one comparison has one verdict: the
claim's, wherever the comparison appears.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a config (its id, the same for every seed) and the TTA mode it is evaluated in."""

    config_id: str
    mode: str = "none"


@dataclass(frozen=True)
class Pair:
    """A comparison, ``a`` minus ``b``."""

    a: Side
    b: Side

    def reversed(self) -> "Pair":
        return Pair(self.b, self.a)


@dataclass(frozen=True)
class ClaimVerdict:
    """What an exploratory row that measures a claim shows in place of its own verdict."""

    claim: str
    verdict: str
    p_holm: float
    family: str  # the claim's family, in words

    def text(self) -> str:
        return f"{self.verdict} (claim {self.claim})"


@dataclass
class ClaimIndex:
    """The measured claims by the pair they compare (better minus worse); several claims may measure one pair
    (in either direction, or with different margins)."""

    by_pair: dict[Pair, list[ClaimVerdict]] = field(default_factory=dict)

    def add(self, pair: Pair, verdict: ClaimVerdict) -> None:
        self.by_pair.setdefault(pair, []).append(verdict)

    def find(self, pair: Pair) -> list[ClaimVerdict]:
        """The claims that measure ``pair`` in either orientation (A − B or B − A: the same two models)."""
        return [*self.by_pair.get(pair, []), *self.by_pair.get(pair.reversed(), [])]
