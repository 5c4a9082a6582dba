"""The ``Scorer`` protocol: one P(on track) per step, for whole candidates and incrementally for search.

Two ways to ask for scores, both returning values in [0, 1] (P(the solution is still on track
after this step), the meaning of a stepwise label):

- ``score(problems, candidates)``: ``candidates[i]`` are problem ``i``'s candidate solutions, each
  a list of steps; the answer is ``scores[i][j][k]`` for step ``k`` of candidate ``j`` of problem
  ``i`` (a candidate with no steps gets ``[]``). Best-of-N and evaluation use this.
- ``start(problems)`` then ``extend(parents, new_steps)``: the incremental API of step-by-step
  search. ``start`` returns one root ``Prefix`` per problem (no steps yet); each round
  ``scores, children = scorer.extend(parents, new_steps)`` scores ``parents[r]`` extended by
  ``new_steps[r]`` and returns the child handles (the same parent may appear many times: its
  children share it). ``scores[r]`` equals the last step score ``score`` would give the child's
  full step list. A ``Prefix`` is immutable; its ``state`` is private to the scorer that made it
  (the PRM keeps the prefix's KV cache there, so a child costs only its new tokens).

Handles are cheap to drop: they are plain objects holding references; a pruned beam's memory
is freed when the search drops its last reference to it (and to its descendants). See
``prm.scoring.prm_scorer`` for what a PRM handle holds.

A solution's score aggregates its step scores with ``aggregate`` (``last``, ``min``, ``prod``,
``mean``); a solution with no steps aggregates to ``empty`` (0.0 by default: no evidence that it
is on track, so it never beats a solution that has some).

Every scorer counts its compute in ``stats`` (``ScorerStats``): tokens run through a model
(PRM or policy backbone; 0 for the oracle and the random baseline), calls and wall time.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Aggregation = Literal["last", "min", "prod", "mean"]
AGGREGATIONS: tuple[str, ...] = ("last", "min", "prod", "mean")


def aggregate(step_scores: Sequence[float], how: str = "min", empty: float = 0.0) -> float:
    """One score for a solution from its step scores (``empty`` when it has no steps).

    ``last``: the final step's score; ``min``: the weakest step; ``prod``: the product (P(all
    steps on track) if the steps were independent); ``mean``: the average.
    """
    check_aggregation(how)
    if len(step_scores) == 0:
        return float(empty)
    values = [float(s) for s in step_scores]
    if how == "last":
        return values[-1]
    if how == "min":
        return min(values)
    if how == "prod":
        return math.prod(values)
    return sum(values) / len(values)


def check_aggregation(how: str) -> str:
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r} (one of {', '.join(AGGREGATIONS)})")
    return how


@dataclass
class ScorerStats:
    """Compute a scorer spent, accumulated over calls.

    ``tokens_processed``: real tokens run through the model (PRM or policy backbone; padding is
    not counted, see ``padding_tokens``); ``cached_tokens``: tokens an incremental call took from
    a parent's KV cache instead of recomputing; ``steps_scored``: step scores returned;
    ``truncated_steps``: of those, steps whose label token did not fit in ``max_length`` (they
    get a fallback score, see the scorer).
    """

    tokens_processed: int = 0
    calls: int = 0
    wall_time_s: float = 0.0
    steps_scored: int = 0
    truncated_steps: int = 0
    cached_tokens: int = 0
    padding_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Prefix:
    """A scored prefix: a problem, the steps so far and their scores (one per step).

    ``state`` belongs to the scorer that made the handle (a PRM keeps the prefix's token ids and
    KV cache there); a handle built by hand has ``state=None`` and is scored from scratch.
    """

    problem_idx: int
    problem: str
    steps: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    state: Any = field(default=None, repr=False, compare=False)

    @property
    def last_score(self) -> float | None:
        """The score of the latest step (None for a root)."""
        return self.scores[-1] if self.scores else None

    def child(self, step: str, score: float, state: Any = None) -> Prefix:
        return Prefix(self.problem_idx, self.problem, (*self.steps, step), (*self.scores, float(score)), state)


@runtime_checkable
class Scorer(Protocol):
    """Scores steps of candidate solutions (see the module docstring)."""

    stats: ScorerStats
    aggregation: str

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        """``scores[i][j][k]``: P(on track) after step ``k`` of candidate ``j`` of problem ``i``."""
        ...

    def start(self, problems: Sequence[str]) -> list[Prefix]:
        """One root handle (no steps) per problem."""
        ...

    def extend(self, parents: Sequence[Prefix], new_steps: Sequence[str]) -> tuple[list[float], list[Prefix]]:
        """Score each parent extended by one step: (the new steps' scores, the child handles)."""
        ...


def check_score_args(problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> None:
    if isinstance(problems, str):
        raise TypeError("problems must be a sequence of strings, not one string")
    if len(problems) != len(candidates):
        raise ValueError(f"{len(problems)} problems but candidates for {len(candidates)}")
    for cands in candidates:
        for steps in cands:
            if isinstance(steps, str):
                raise TypeError("each candidate must be a list of step strings, not one string")


def check_extend_args(parents: Sequence[Prefix], new_steps: Sequence[str]) -> None:
    if isinstance(new_steps, str):
        raise TypeError("new_steps must be a sequence of strings (one per parent), not one string")
    if len(parents) != len(new_steps):
        raise ValueError(f"{len(parents)} parents but {len(new_steps)} new steps")
    for p in parents:
        if not isinstance(p, Prefix):
            raise TypeError(f"parents must be Prefix handles (from start/extend), got {type(p).__name__}")


class ScorerBase:
    """Shared parts of the scorers: stats, aggregation, and an incremental API built on ``score``.

    ``extend`` here re-scores each child's whole step list with one batched ``score`` call and
    keeps no state, which is exact for any scorer; model-based scorers with a cache override it.
    """

    def __init__(self, aggregation: str = "min") -> None:
        self.aggregation = check_aggregation(aggregation)
        self.stats = ScorerStats()

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        raise NotImplementedError

    def aggregate(self, step_scores: Sequence[float]) -> float:
        """``aggregate`` with this scorer's configured ``aggregation``."""
        return aggregate(step_scores, self.aggregation)

    def start(self, problems: Sequence[str]) -> list[Prefix]:
        if isinstance(problems, str):
            raise TypeError("problems must be a sequence of strings, not one string")
        return [Prefix(i, p) for i, p in enumerate(problems)]

    def extend(self, parents: Sequence[Prefix], new_steps: Sequence[str]) -> tuple[list[float], list[Prefix]]:
        check_extend_args(parents, new_steps)
        if not parents:
            return [], []
        scores = self.score([p.problem for p in parents], [[[*p.steps, s]] for p, s in zip(parents, new_steps)])
        out = [rows[0][-1] for rows in scores]
        return out, [p.child(s, v) for p, s, v in zip(parents, new_steps, out)]


@contextlib.contextmanager
def eval_inference(model: Any) -> Iterator[None]:
    """Run ``model`` in eval mode under ``torch.inference_mode``, restoring its training flag after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


class Timer:
    """Adds one call and its wall time to ``stats`` (use as a context manager)."""

    def __init__(self, stats: ScorerStats) -> None:
        self.stats = stats

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stats.calls += 1
        self.stats.wall_time_s += time.perf_counter() - self.t0


__all__ = [
    "AGGREGATIONS", "Aggregation", "Prefix", "Scorer", "ScorerBase", "ScorerStats", "Timer", "aggregate",
    "check_aggregation", "check_extend_args", "check_score_args",
]
