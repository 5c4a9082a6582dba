"""Voting over candidate answers: majority vote and score-weighted majority, equivalence by grading.

Answers are grouped into classes of mathematically equivalent answers (``prm.grading``); a class's
weight is its number of members (majority) or the sum of their scores (weighted majority). Missing
answers (None) never vote. Ties go to the class whose first member came first among the
candidates, so the rule is deterministic and independent of dictionary order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prm.grading import grade_answer, normalize_answer


@dataclass
class VoteResult:
    """The winning answer, its class's weight, the index of its first member, and all classes."""

    answer: str | None
    weight: float
    index: int | None
    classes: list[tuple[str, float, list[int]]]


def answer_classes(answers: Sequence[str | None]) -> list[list[int]]:
    """Indices of the non-missing answers grouped into equivalence classes, in order of first appearance."""
    classes: list[list[int]] = []
    keys: dict[str, int] = {}
    for i, ans in enumerate(answers):
        if ans is None or not ans.strip():
            continue
        key = normalize_answer(ans)
        if key in keys:
            classes[keys[key]].append(i)
            continue
        for c, members in enumerate(classes):
            if grade_answer(ans, answers[members[0]]):
                classes[c].append(i)
                keys[key] = c
                break
        else:
            keys[key] = len(classes)
            classes.append([i])
    return classes


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> VoteResult:
    """Majority vote (``weights`` None) or weighted majority (sum of weights per equivalent answer)."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    classes = answer_classes(answers)
    scored = [
        (answers[m[0]] or "", float(len(m)) if weights is None else float(sum(weights[i] for i in m)), m)
        for m in classes
    ]
    if not scored:
        return VoteResult(None, 0.0, None, [])
    best = max(range(len(scored)), key=lambda c: (scored[c][1], -scored[c][2][0]))
    answer, weight, members = scored[best]
    return VoteResult(answer, weight, members[0], scored)
