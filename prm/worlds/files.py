"""Problem files behind the ``World`` protocol: MATH-500-style JSONL or PRM800K records, graded by answer.

A line is ``{"problem", "answer"[, "id", "level", ...]}`` (``prm.data.problems``) or a PRM800K record
(its ``question.problem`` and ``question.ground_truth_answer``; a problem repeated over records is
one task). Answers are extracted from the answer step, else ``\\boxed{}`` or the last line
(``prm.grading.extract_answer``), and compared by equivalence (``prm.grading.grade_answer``). There
are no exact step labels. Overlap with training data is removed by problem text: ``exclude`` names
files (stepwise JSONL, problem files, PRM800K) whose problems must not appear among these tasks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prm.data.errors import DataError
from prm.data.problems import ProblemRecord, parse_problem
from prm.data.stepwise import read_jsonl
from prm.grading import extract_answer, grade_answer
from prm.steps import PLAIN, StepFormat, split_solution
from prm.worlds.base import ProblemDraw, Task, check_split


def _norm(text: str) -> str:
    return " ".join(text.split())


def _record(obj: Any, line: int, path: Path) -> ProblemRecord:
    """A problem-file line or a PRM800K record as a problem with its reference answer."""
    q = obj.get("question") if isinstance(obj, dict) else None
    if isinstance(q, dict) and "problem" in q:
        if not isinstance(q.get("ground_truth_answer"), str):
            raise DataError("a PRM800K record without a reference answer", path=path, line=line,
                            field="question.ground_truth_answer")
        return parse_problem({"problem": q["problem"], "answer": q["ground_truth_answer"],
                              "id": q.get("unique_id") or f"line-{line}"}, line, path)
    return parse_problem(obj, line, path)


def problem_texts(path: str | Path) -> set[str]:
    """The (whitespace-normalised) problem texts of a training file: stepwise ``prompt``, problem-file
    ``problem`` or PRM800K ``question.problem``."""
    out: set[str] = set()
    p = Path(path)
    if not p.exists():
        raise DataError("file not found (listed in data.exclude)", path=p)
    with p.open(encoding="utf-8-sig") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            q = obj.get("question")
            for text in (obj.get("prompt"), obj.get("problem"), q.get("problem") if isinstance(q, dict) else None):
                if isinstance(text, str):
                    out.add(_norm(text))
    return out


class FileWorld:
    """Problems from a file, graded by their reference answers; no exact step labels."""

    name = "problems"
    exact_labels = False

    def __init__(self, path: str | Path, fmt: StepFormat = PLAIN, exclude: Sequence[str | Path] = ()) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.exclude = [Path(e) for e in exclude]
        records = read_jsonl(self.path, lambda obj, line: _record(obj, line, self.path))
        self._records: list[ProblemRecord] = records
        self._by_prompt: dict[str, Task] = {}
        for rec in records:
            self._by_prompt.setdefault(_norm(rec.problem), self._task(rec))

    @staticmethod
    def _task(rec: ProblemRecord) -> Task:
        level = rec.extra.get("difficulty", rec.extra.get("level"))
        return Task(rec.id, rec.problem, rec.answer, level if isinstance(level, int) else None)

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> ProblemDraw:
        """The file's problems in order (any split), without texts found in ``exclude`` or repeated."""
        check_split(split)
        banned: set[str] = set()
        for path in self.exclude:
            banned |= problem_texts(path)
        tasks: list[Task] = []
        seen: set[str] = set()
        overlap = duplicates = 0
        for rec in self._records:
            key = _norm(rec.problem)
            if key in banned:
                overlap += 1
            elif key in seen:
                duplicates += 1
            else:
                seen.add(key)
                tasks.append(self._task(rec))
        return ProblemDraw(tasks if n is None else tasks[:n], overlap, duplicates)

    def task(self, prompt: str) -> Task:
        try:
            return self._by_prompt[_norm(prompt)]
        except KeyError:
            raise KeyError(f"problem not in {self.path}: {prompt[:80]!r}") from None

    def answer(self, task: Task, text: str) -> str | None:
        given = split_solution(text, self.fmt).answer or None
        return given if given is not None else extract_answer(text)

    def grade(self, task: Task, text: str) -> bool:
        return grade_answer(self.answer(task, text), task.answer)

    def step_labels(self, task: Task, steps: Sequence[str]) -> None:
        return None
