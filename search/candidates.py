"""What the search loop and the strategies share: a ``Candidate``, an ``Expansion`` and the final rules.

``search.strategies`` reads candidates and plans expansions; ``search.loop`` makes candidates,
runs the expansions and applies the final rules (``search.loop.final_choice``). Both import
these types from here, so the dependency runs one way: loop -> strategies -> candidates.
``search.loop`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prm.scoring.base import Prefix

FINAL_RULES: tuple[str, ...] = ("prm", "majority", "weighted_majority")


@dataclass(eq=False)
class Candidate:
    """A partial or finished solution of one problem (see the module docstring).

    ``text``: the solution so far (what follows the policy prompt). ``group``: its subtree (DVTS;
    0 otherwise). ``generated_tokens`` / ``rollout_tokens``: policy tokens of its own text / of
    the lookahead rollouts that scored its steps, each summed along its path from the root.
    ``round``: the round that produced its latest step (0 for the root).
    """

    problem: int
    group: int
    prefix: Prefix
    text: str
    values: tuple[float, ...]
    value: float
    score: float
    generated_tokens: int = 0
    rollout_tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    answer: str | None = None
    round: int = 0
    tiebreak: float = 0.0  # orders equal values (a seeded uniform draw)

    @property
    def steps(self) -> tuple[str, ...]:
        return self.prefix.steps

    @property
    def step_scores(self) -> tuple[float, ...]:
        return self.prefix.scores

    def release(self) -> Candidate:
        """Drop the scorer's private state (a PRM's KV cache) once the candidate leaves the pool."""
        p = self.prefix
        self.prefix = Prefix(p.problem_idx, p.problem, p.steps, p.scores)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The record of a candidate (everything but the scorer's handle)."""
        return {
            "text": self.text, "steps": list(self.steps), "step_scores": list(self.step_scores),
            "score": self.score, "values": list(self.values), "value": self.value, "answer": self.answer,
            "finish_reason": self.finish_reason, "round": self.round, "group": self.group,
            "generated_tokens": self.generated_tokens, "rollout_tokens": self.rollout_tokens,
        }


@dataclass(frozen=True, eq=False)
class Expansion:
    """Sample ``len(groups)`` continuations of ``parent``; child ``k`` joins subtree ``groups[k]``."""

    parent: Candidate
    groups: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.groups)


__all__ = ["FINAL_RULES", "Candidate", "Expansion"]
