"""Search strategies, registered by name: each says how the one loop (``search.loop``) grows a problem's tree.

A strategy is a small dataclass of knobs that answers the loop's questions:

- ``root()``: the subtree of each sample drawn from the root (its length is the first round's
  sample count);
- ``select(candidates)``: given one problem's candidates of the round (in order, finished ones
  included), the next ``Expansion`` s: which unfinished candidates to keep, how many samples each
  gets, in which subtree (an empty list ends the problem's search);
- ``to_end``: sample whole solutions in one round (best-of-N);
- ``rollout_steps`` / ``rollout_temperature``: lookahead before scoring;
- ``final``: the headline final rule (every rule of ``search.candidates.FINAL_RULES`` is reported).

Registered: ``best_of_n``, ``beam``, ``lookahead``, ``dvts``. Greedy decoding, majority voting
and weighted majority are ``best_of_n`` configurations (``conf/search/``). Ranking is by a
candidate's ``value`` (its aggregated step values), equal values by a seeded random draw
(``Candidate.tiebreak``), so ties never favour one lineage.

Finished beams and the budget (beam search, lookahead and DVTS share one ``select_top``):

- ``refill: true``: only unfinished candidates compete for the kept slots, and the round's budget
  is spread over the kept ones (``n // k`` samples each, one more for the first ``n % k``), so every
  round spends the full budget while any beam is open: N samples per round for beam search
  (Snell et al.; search-and-learn's beam search duplicates the active beams up to N);
- ``refill: false``: all candidates of the round compete; a finished one that makes the cut takes
  its slot and leaves, so the active beams shrink (classic beam search; search-and-learn's DVTS,
  where a subtree ends when its best candidate is finished). Each kept beam gets M samples.

Finished candidates always go to the final choice, whether they made the cut or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from search.candidates import FINAL_RULES, Candidate, Expansion


@dataclass
class Strategy:
    """Base strategy: ``n`` samples from the root, nothing kept (subclasses override ``select``)."""

    name: ClassVar[str] = ""
    to_end: ClassVar[bool] = False
    rollout_steps = 0  # plain class attributes here; lookahead makes them knobs
    rollout_temperature = 0.0

    n: int = 16
    final: str = "prm"

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"{self.name}: the budget n must be a positive integer (got {self.n!r})")
        if self.final not in FINAL_RULES:
            raise ValueError(f"{self.name}: unknown final rule {self.final!r} (one of {', '.join(FINAL_RULES)})")

    def root(self) -> tuple[int, ...]:
        return (0,) * self.n

    def select(self, candidates: Sequence[Candidate]) -> list[Expansion]:
        return []

    def describe(self) -> dict[str, Any]:
        """The strategy's name and knobs (for records and summaries)."""
        return {"name": self.name, **asdict(self)}


STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str):  # type: ignore[no-untyped-def]
    """Class decorator: register a strategy under ``name``."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return deco


def make_strategy(name: str, **knobs: Any) -> Strategy:
    """The strategy registered as ``name`` with its knobs; clear errors for unknown names or knobs."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown search strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})")
    cls = STRATEGIES[name]
    accepted = [f.name for f in fields(cls)]
    unknown = sorted(set(knobs) - set(accepted))
    if unknown:
        raise ValueError(f"strategy {name!r} has no knob {', '.join(unknown)} (its knobs: {', '.join(accepted)})")
    return cls(**knobs)


def ranked(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Highest value first; equal values in the order of their seeded ``tiebreak`` draws (never by position)."""
    return sorted(candidates, key=lambda c: (-c.value, c.tiebreak))


def spread(budget: int, k: int) -> list[int]:
    """``budget`` samples over ``k`` beams: ``budget // k`` each, one more for the first ``budget % k``."""
    return [budget // k + (1 if i < budget % k else 0) for i in range(k)]


def select_top(candidates: Sequence[Candidate], keep: int, budget: int, m: int, refill: bool) -> list[Expansion]:
    """Keep the top ``keep`` candidates and expand them (see the module docstring for ``refill``)."""
    pool = [c for c in candidates if not c.finished] if refill else list(candidates)
    kept = [c for c in ranked(pool)[:keep] if not c.finished]
    if not kept:
        return []
    counts = spread(budget, len(kept)) if refill else [m] * len(kept)
    return [Expansion(c, (c.group,) * k) for c, k in zip(kept, counts)]


@register("best_of_n")
@dataclass
class BestOfN(Strategy):
    """N whole solutions in one generate call (one round, no stop string), every step scored."""

    to_end: ClassVar[bool] = True


@dataclass
class _Beams(Strategy):
    m: int = 4  # samples per kept beam (beam width M)
    refill: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.m, int) or self.m < 1:
            raise ValueError(f"{self.name}: m must be a positive integer (got {self.m!r})")
        if self.n % self.m:
            raise ValueError(f"{self.name}: the budget n={self.n} is not divisible by m={self.m} "
                             f"(n/m beams are kept, each expanded m times)")


@register("beam")
@dataclass
class BeamSearch(_Beams):
    """Snell et al.: N samples per round; keep the top N/M by value; expand each M times."""

    def select(self, candidates: Sequence[Candidate]) -> list[Expansion]:
        return select_top(candidates, self.n // self.m, self.n, self.m, self.refill)


@register("lookahead")
@dataclass
class LookaheadSearch(BeamSearch):
    """Beam search whose candidates are valued by the PRM after ``rollout_steps`` more steps."""

    rollout_steps: int = 2  # type: ignore[assignment]
    rollout_temperature: float = 0.0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.rollout_steps, int) or self.rollout_steps < 1:
            raise ValueError(f"lookahead: rollout_steps must be a positive integer (got {self.rollout_steps!r})")
        if self.rollout_temperature < 0:
            raise ValueError(f"lookahead: rollout_temperature must be >= 0 (got {self.rollout_temperature})")


@register("dvts")
@dataclass
class DVTS(_Beams):
    """Diverse verifier tree search: N/M independent subtrees, each following its best of M candidates."""

    refill: bool = False

    def root(self) -> tuple[int, ...]:
        return tuple(g for g in range(self.n // self.m) for _ in range(self.m))

    def select(self, candidates: Sequence[Candidate]) -> list[Expansion]:
        out: list[Expansion] = []
        for g in dict.fromkeys(c.group for c in candidates):
            out += select_top([c for c in candidates if c.group == g], 1, self.m, self.m, self.refill)
        return out


__all__ = [
    "DVTS", "STRATEGIES", "BeamSearch", "BestOfN", "LookaheadSearch", "Strategy", "make_strategy", "ranked",
    "register", "select_top", "spread",
]
