"""The arithmetic world behind the ``World`` protocol: generated problems, exact labels for every step.

Problems come from ``prm.data.arith`` (or from a problem file of arithmetic prompts). The
held-out split is fixed by problem text (``prm.worlds.base.heldout``, ``holdout_fraction`` of all
distinct texts): ``train`` draws skip held-out texts, ``test`` draws keep only them and never
repeat one, so held-out problems never appear in any training set whatever the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prm.data.arith import ARITH_FORMAT, ArithConfig, Problem, iter_problems, label_steps, parse_int
from prm.data.errors import DataError
from prm.data.problems import read_problems
from prm.steps import StepFormat, split_solution
from prm.worlds.base import ProblemDraw, Task, check_split, heldout


def _task(p: Problem) -> Task:
    return Task(p.id, p.prompt, str(p.answer), p.difficulty, p)


class ArithWorld:
    """The built-in arithmetic world (``prm.data.arith``), exactly labelled."""

    name = "arith"
    exact_labels = True

    def __init__(self, config: ArithConfig | None = None, fmt: StepFormat = ARITH_FORMAT,
                 holdout_fraction: float = 0.1, problems_file: str | Path | None = None) -> None:
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1) (got {holdout_fraction})")
        self.config = config if config is not None else ArithConfig()
        self.fmt = fmt
        self.holdout_fraction = float(holdout_fraction)
        self.problems_file = problems_file
        self._parsed: dict[str, Task] = {}

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> ProblemDraw:
        """``n`` problems of ``split`` (a problem file: its problems, in order, whatever the split)."""
        check_split(split)
        if self.problems_file is not None:
            tasks = self._file_tasks()
            return ProblemDraw(tasks if n is None else tasks[:n])
        if n is None:
            raise ValueError("the arithmetic world generates problems: give how many (n_problems)")
        want_test = split == "test"
        tasks: list[Task] = []
        seen: set[str] = set()
        overlap = duplicates = 0
        limit = 1000 * n + 100_000
        for tried, p in enumerate(iter_problems(self.config, seed)):
            if len(tasks) == n:
                break
            if tried >= limit:
                raise ValueError(f"only {len(tasks)} of {n} distinct {split} problems found in {limit} draws: "
                                 f"the world has too few problems for this split (holdout_fraction="
                                 f"{self.holdout_fraction}); ask for fewer or widen the world")
            if heldout(p.prompt, self.holdout_fraction) != want_test:
                overlap += 1
            elif want_test and p.prompt in seen:
                duplicates += 1
            else:
                seen.add(p.prompt)
                tasks.append(_task(p))
        return ProblemDraw(tasks, overlap, duplicates)

    def _file_tasks(self) -> list[Task]:
        tasks = []
        for rec in read_problems(self.problems_file):  # type: ignore[arg-type]
            try:
                p = Problem.from_prompt(rec.problem.strip() + "\n", modulus=self.config.modulus, id=rec.id)
            except ValueError as e:
                raise DataError(f"not an arithmetic-world problem ({e}); use data=prm800k or data=stepwise "
                                "for other problem files", path=self.problems_file, field="problem") from None
            tasks.append(_task(p))
        return tasks

    def task(self, prompt: str) -> Task:
        if prompt not in self._parsed:
            try:
                p = Problem.from_prompt(prompt.strip() + "\n", modulus=self.config.modulus)
            except ValueError as e:
                raise KeyError(str(e)) from None
            self._parsed[prompt] = _task(p)
        return self._parsed[prompt]

    def answer(self, task: Task, text: str) -> str | None:
        return split_solution(text, self.fmt).answer or None

    def grade(self, task: Task, text: str) -> bool:
        got = parse_int(self.answer(task, text))
        return got is not None and str(got) == task.answer

    def step_labels(self, task: Task, steps: Sequence[str]) -> list[float]:
        problem = task.data if isinstance(task.data, Problem) else self.task(task.prompt).data
        return label_steps(problem, steps, self.fmt)
