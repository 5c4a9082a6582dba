"""ProcessBench records (find the first wrong step) and conversions from/to stepwise examples.

ProcessBench's own format, as a JSON list or JSONL, one record per solution::

    {"id": "gsm8k-0", "generator": "Qwen2-7B-Instruct", "problem": "...", "steps": ["...", ...],
     "label": 1, "final_answer_correct": false}

``label`` is the index of the first wrong step, -1 when every step is right. ``id``, ``problem``,
``steps`` and ``label`` are required; ``generator`` and ``final_answer_correct`` may be missing
or null; other keys are kept in ``extra``. Bad records raise ``DataError`` naming the file and
the line (JSONL) or the record index (``[i].field``, JSON list); ``skip_invalid`` records and
skips them instead.

From our stepwise examples (labels: 1.0 on track, 0.0 not, ``None`` unlabelled) the first error
is the first 0.0 label, -1 when all labels are 1.0. An unlabelled step before any 0.0 makes the
first error unknown (``None``): such examples are skipped by ``stepwise_to_processbench`` (and
counted in its ``SkipReport``), never guessed. Unlabelled steps after the first 0.0 do not matter.
Soft labels (strictly between 0 and 1) are an error unless a ``threshold`` is given (a label
below it is wrong).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prm.data.errors import DataError, SkipReport
from prm.data.stepwise import StepwiseExample, read_jsonl

FIELDS = ("id", "generator", "problem", "steps", "label", "final_answer_correct")


@dataclass
class ProcessBenchExample:
    """One solution: its steps and the index of its first wrong step (-1: none)."""

    id: str
    problem: str
    steps: list[str]
    label: int
    generator: str | None = None
    final_answer_correct: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "generator": self.generator,
            "problem": self.problem,
            "steps": self.steps,
            "label": self.label,
            "final_answer_correct": self.final_answer_correct,
            **self.extra,
        }

    def to_stepwise(self) -> StepwiseExample:
        """A stepwise example: 1.0 before the first wrong step, 0.0 on it, ``None`` after (not annotated)."""
        n = len(self.steps)
        first = n if self.label == -1 else self.label
        labels: list[float | None] = [1.0] * first + [0.0] * (first < n) + [None] * max(0, n - first - 1)
        extra = {k: v for k, v in self.to_dict().items() if k not in ("problem", "steps", "label")}
        return StepwiseExample(prompt=self.problem, completions=list(self.steps), labels=labels,
                               extra={**extra, "first_error": self.label})

    @classmethod
    def from_dict(
        cls, obj: Any, *, path: str | Path | None = None, line: int | None = None, index: int | None = None
    ) -> ProcessBenchExample:
        """Validate one decoded record; errors name the file, the line (or ``[index]``) and the field."""

        def error(message: str, name: str | None = None) -> DataError:
            where = name if index is None else f"[{index}]" + (f".{name}" if name else "")
            return DataError(message, path=path, line=line, field=where)

        if not isinstance(obj, dict):
            raise error(f"expected a JSON object, got {type(obj).__name__}")
        for key in ("id", "problem", "steps", "label"):
            if key not in obj:
                raise error("missing required field", key)
        rid, problem, steps, label = obj["id"], obj["problem"], obj["steps"], obj["label"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise error(f"expected a string, got {type(rid).__name__}", "id")
        if not isinstance(problem, str):
            raise error(f"expected a string, got {type(problem).__name__}", "problem")
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise error("expected a list of strings", "steps")
        if isinstance(label, bool) or not isinstance(label, int):
            raise error(f"expected an integer step index or -1, got {label!r}", "label")
        if not -1 <= label < len(steps):
            raise error(f"step index {label} outside -1..{len(steps) - 1} ({len(steps)} steps)", "label")
        generator = obj.get("generator")
        if generator is not None and not isinstance(generator, str):
            raise error(f"expected a string or null, got {type(generator).__name__}", "generator")
        fac = obj.get("final_answer_correct")
        if fac is not None and not isinstance(fac, bool):
            raise error(f"expected true, false or null, got {fac!r}", "final_answer_correct")
        return cls(
            id=str(rid),
            problem=problem,
            steps=list(steps),
            label=label,
            generator=generator,
            final_answer_correct=fac,
            extra={k: v for k, v in obj.items() if k not in FIELDS},
        )


def read_processbench(
    path: str | Path, *, skip_invalid: bool = False, report: SkipReport | None = None
) -> list[ProcessBenchExample]:
    """Read ProcessBench records from a JSON list or a JSONL file (told apart by the first character)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", path=path)
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        return read_jsonl(
            path,
            lambda obj, line: ProcessBenchExample.from_dict(obj, path=path, line=line),
            skip_invalid=skip_invalid,
            report=report,
        )
    report = report if report is not None else SkipReport()
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", path=path, line=e.lineno) from None
    out: list[ProcessBenchExample] = []
    for i, obj in enumerate(records):
        try:
            out.append(ProcessBenchExample.from_dict(obj, path=path, index=i))
        except DataError as e:
            if not skip_invalid:
                raise
            report.add(e)
    if not out and not report.skipped:
        raise DataError("no records (empty list)", path=path)
    return out


def first_error_index(labels: Iterable[float | None], threshold: float | None = None) -> int | None:
    """First wrong step of stepwise labels: index of the first 0.0, -1 if all are 1.0, ``None`` if unknown.

    Raises ``ValueError`` for a soft label when ``threshold`` is None.
    """
    for j, label in enumerate(labels):
        if label is None:
            return None
        if threshold is None:
            if label not in (0.0, 1.0):
                raise ValueError(f"soft label {label!r} at step {j}: give a threshold to binarise it")
            if label == 0.0:
                return j
        elif label < threshold:
            return j
    return -1


def stepwise_to_processbench(
    examples: Iterable[StepwiseExample], *, threshold: float | None = None, report: SkipReport | None = None
) -> list[ProcessBenchExample]:
    """ProcessBench records of stepwise examples; those with an unknown first error are skipped (in ``report``).

    The id is ``extra["id"]`` (else the example's index), with ``/<sample>`` when ``extra["sample"]``
    exists; ``generator`` is ``extra["generator"]`` or ``extra["source"]``; ``final_answer_correct``
    is ``extra["correct"]`` when it is a bool. Other extra keys are kept.
    """
    report = report if report is not None else SkipReport()
    out: list[ProcessBenchExample] = []
    for i, ex in enumerate(examples):
        try:
            first = first_error_index(ex.labels, threshold)
        except ValueError as e:
            raise DataError(str(e), field=f"examples[{i}].labels") from None
        if first is None:
            report.add(DataError("first error unknown: an unlabelled step comes before any wrong one",
                                 field=f"examples[{i}].labels"))
            continue
        rid = str(ex.extra.get("id", i)) + (f"/{ex.extra['sample']}" if "sample" in ex.extra else "")
        correct = ex.extra.get("correct")
        out.append(ProcessBenchExample(
            id=rid,
            problem=ex.prompt,
            steps=list(ex.completions),
            label=first,
            generator=ex.extra.get("generator", ex.extra.get("source")),
            final_answer_correct=correct if isinstance(correct, bool) else None,
            extra={k: v for k, v in ex.extra.items() if k not in (*FIELDS, "correct", "source")},
        ))
    return out
