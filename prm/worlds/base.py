"""The ``World`` protocol: where tasks come from, how a solution is graded, and exact step labels.

A world is the one source of task semantics that every entry point, scorer and the RL code
share (DESIGN.md section 2): problems for a split, the step format its solutions are written in,
grading a solution text, extracting its answer, and exact step labels where they exist (the
arithmetic world) or None. No other code branches on which world it is; ``make_world``
(``prm.worlds``) builds one from the ``data`` config.

Held-out problems are disjoint from training problems by problem text (``heldout``): a world
that generates problems puts each distinct text in exactly one split, and a draw reports how
many problems it removed for overlap or duplication.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from prm.data.stepwise import StepwiseExample
from prm.steps import StepFormat, split_solution

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class Task:
    """One problem: its id, the prompt the policy continues, the reference answer, its difficulty.

    ``data`` is the world's own view of the problem (the arithmetic world's ``Problem``); only the
    world that made the task reads it.
    """

    id: str
    prompt: str
    answer: str
    difficulty: int | None = None
    data: Any = field(default=None, compare=False, repr=False)


@dataclass
class ProblemDraw:
    """Problems of one split, and how many candidates were removed on the way (with why)."""

    tasks: list[Task]
    removed_overlap: int = 0  # in another split / a training file (same problem text)
    removed_duplicates: int = 0  # the same text twice within a held-out split

    def report(self) -> str:
        return (f"{len(self.tasks)} problems ({self.removed_overlap} removed as overlapping training problems, "
                f"{self.removed_duplicates} as duplicates)")


@runtime_checkable
class World(Protocol):
    """A source of tasks (see the module docstring)."""

    name: str
    fmt: StepFormat
    exact_labels: bool  # whether ``step_labels`` returns labels (else None)

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> ProblemDraw:
        """``n`` problems (None: all there are) of ``split`` (``train`` or ``test``), deterministic per seed."""
        ...

    def task(self, prompt: str) -> Task:
        """The task whose prompt is ``prompt`` (surrounding whitespace ignored); KeyError if unknown."""
        ...

    def answer(self, task: Task, text: str) -> str | None:
        """The answer a solution text gives (None when it gives none)."""
        ...

    def grade(self, task: Task, text: str) -> bool:
        """Whether the solution's answer is the task's reference answer."""
        ...

    def step_labels(self, task: Task, steps: Sequence[str]) -> list[float] | None:
        """Exact labels of ``steps`` (as ``prm.steps.solution_steps`` splits a solution), or None."""
        ...


def heldout(text: str, fraction: float) -> bool:
    """Whether a problem text belongs to the held-out split: a fixed hash of the text, so a text is
    held out in every run, seed and process, and training draws never see it."""
    digest = hashlib.blake2b(text.strip().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")


def label_example(world: World, task: Task, text: str, **extra: Any) -> StepwiseExample:
    """A stepwise example of one solution: its ``solution_steps``, the world's exact labels (or
    unlabelled), and in ``extra`` the problem (id, answer, difficulty), ``correct``, ``given_answer``,
    and with exact labels ``process_correct`` (every step right, the answer step included) and
    ``first_error``."""
    parsed = split_solution(text, world.fmt)
    steps = parsed.labelled_steps
    exact = world.step_labels(task, steps)
    labels: list[float | None] = list(exact) if exact is not None else [None] * len(steps)
    info: dict[str, Any] = {"id": task.id, "answer": task.answer, "difficulty": task.difficulty,
                            "correct": world.grade(task, text), "given_answer": world.answer(task, text)}
    if exact is not None:
        info["process_correct"] = parsed.answer_step is not None and bool(exact) and min(exact) == 1.0
        info["first_error"] = exact.index(0.0) if 0.0 in exact else None
    info["source"] = world.name
    return StepwiseExample(prompt=task.prompt, completions=steps, labels=labels, extra={**info, **extra})


def by_difficulty(tasks: Sequence[Task]) -> dict[str, list[int]]:
    """Task indices grouped by difficulty (as strings, sorted), plus ``"all"``."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(str(t.difficulty), []).append(i)
    ordered = dict(sorted(groups.items(), key=lambda kv: (kv[0] == "None", kv[0].zfill(4))))
    return {**ordered, "all": list(range(len(tasks)))}
