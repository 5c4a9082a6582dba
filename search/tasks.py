"""Tasks: problems a policy is asked, and how a sampled solution is labelled and graded.

An arithmetic-world task labels every step exactly (``prm.data.arith.label_solution``); any other
task (a problem file with reference answers, e.g. MATH-500) grades the final answer by
equivalence (``prm.grading``) and leaves step labels unset (``None``) for other labellers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prm.data.arith import ArithConfig, Problem, generate_problems, to_stepwise
from prm.data.problems import read_problems
from prm.data.stepwise import StepwiseExample
from prm.grading import extract_answer, grade_answer
from prm.steps import StepFormat, split_solution


@dataclass(frozen=True)
class Task:
    """One problem: its id, the prompt the policy continues, the reference answer, its difficulty."""

    id: str
    prompt: str
    answer: str
    difficulty: int | None = None
    arith: Problem | None = None

    def label(self, text: str, fmt: StepFormat, **extra: Any) -> StepwiseExample:
        """A stepwise example of the solution ``text``; extra keys ``correct`` (the answer is right)
        and ``given_answer`` (the answer it wrote, None when missing)."""
        parsed = split_solution(text, fmt)
        given = parsed.answer or None
        if self.arith is not None:
            return to_stepwise(self.arith, text, fmt, given_answer=given, **extra)
        given = given if given is not None else extract_answer(text)
        return StepwiseExample(
            prompt=self.prompt,
            completions=list(parsed.steps),
            labels=[None] * len(parsed.steps),
            extra={"id": self.id, "answer": self.answer, "difficulty": self.difficulty,
                   "correct": grade_answer(given, self.answer), "given_answer": given, **extra},
        )


def arith_tasks(n: int, world: ArithConfig, seed: int) -> list[Task]:
    """``n`` arithmetic-world problems (deterministic per seed)."""
    return [Task(p.id, p.prompt, str(p.answer), p.difficulty, p) for p in generate_problems(n, world, seed)]


def file_tasks(path: str | Path, world: ArithConfig | None = None) -> list[Task]:
    """Tasks from a problem file; arithmetic-world records (``source: arith``) keep their exact labeller."""
    tasks = []
    for rec in read_problems(path):
        problem = None
        if rec.extra.get("source") == "arith":
            problem = Problem.from_prompt(rec.problem, modulus=(world or ArithConfig()).modulus, id=rec.id)
        difficulty = rec.extra.get("difficulty", rec.extra.get("level"))
        tasks.append(Task(rec.id, rec.problem, rec.answer, difficulty if isinstance(difficulty, int) else None, problem))
    return tasks


def by_difficulty(tasks: Sequence[Task]) -> dict[str, list[int]]:
    """Task indices grouped by difficulty (as strings, sorted), plus ``"all"``."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(str(t.difficulty), []).append(i)
    ordered = dict(sorted(groups.items(), key=lambda kv: (kv[0] == "None", kv[0].zfill(4))))
    return {**ordered, "all": list(range(len(tasks)))}
