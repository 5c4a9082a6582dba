"""Problem files: JSONL of problems with reference answers (MATH-500 style: ``problem``, ``answer``).

Each line: ``{"problem": str, "answer": str, "id": str (optional), ...}``; extra keys are kept.
Search reads these; ``prm-data arith --problems-only`` writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prm.data.errors import DataError, SkipReport
from prm.data.stepwise import read_jsonl


@dataclass
class ProblemRecord:
    """One problem with its reference answer."""

    id: str
    problem: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "problem": self.problem, "answer": self.answer, **self.extra}


def parse_problem(obj: Any, line: int, path: str | Path | None = None) -> ProblemRecord:
    """Validate one decoded line of a problem file."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    for key in ("problem", "answer"):
        if key not in obj or obj[key] is None:
            raise DataError("missing required field", path=path, line=line, field=key)
    if not isinstance(obj["problem"], str) or not obj["problem"].strip():
        raise DataError("expected a non-empty string", path=path, line=line, field="problem")
    if not isinstance(obj["answer"], (str, int, float)) or isinstance(obj["answer"], bool):
        raise DataError("expected a string or number", path=path, line=line, field="answer")
    if isinstance(obj["answer"], float) and not math.isfinite(obj["answer"]):
        raise DataError(f"expected a finite number, got {obj['answer']}", path=path, line=line, field="answer")
    if not str(obj["answer"]).strip():
        raise DataError("empty reference answer (every solution would be graded wrong)", path=path, line=line,
                        field="answer")
    pid = obj.get("id", obj.get("unique_id", f"line-{line}"))
    extra = {k: v for k, v in obj.items() if k not in ("id", "problem", "answer")}
    return ProblemRecord(id=str(pid), problem=obj["problem"], answer=str(obj["answer"]), extra=extra)


def looks_like_problems(obj: Any) -> bool:
    """A problem-file line has ``problem`` and ``answer`` and no step labels."""
    return isinstance(obj, dict) and "problem" in obj and "answer" in obj and "labels" not in obj


def read_problems(
    path: str | Path, *, skip_invalid: bool = False, report: SkipReport | None = None
) -> list[ProblemRecord]:
    """Read and validate a problem file; errors name the file, line and field."""
    return read_jsonl(path, lambda obj, line: parse_problem(obj, line, path), skip_invalid=skip_invalid, report=report)
