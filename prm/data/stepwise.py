"""Stepwise examples: the internal and exchange format (TRL's stepwise-supervision JSONL).

One JSON object per line: ``{"prompt": str, "completions": [str, ...], "labels": [float, ...]}``,
one label per step in [0, 1] (1.0 = still on track after this step, 0.0 = not; in between =
soft labels). Extra keys (answer, source, ids, difficulty, correctness, ...) are kept in
``extra`` and written back unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prm.data.errors import DataError, SkipReport
from prm.io import write_jsonl

REQUIRED = ("prompt", "completions", "labels")
T = TypeVar("T")


@dataclass
class StepwiseExample:
    """A problem, the steps of one solution and one label per step (``None`` = unlabelled)."""

    prompt: str
    completions: list[str]
    labels: list[float | None]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.completions) != len(self.labels):
            raise DataError(
                f"{len(self.completions)} completions but {len(self.labels)} labels",
                field="labels",
            )

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completions": self.completions, "labels": self.labels, **self.extra}

    @classmethod
    def from_dict(
        cls, obj: Any, *, path: str | Path | None = None, line: int | None = None
    ) -> StepwiseExample:
        """Validate one decoded JSON object; errors name the file, line and field."""
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
        for key in REQUIRED:
            if key not in obj:
                raise DataError("missing required field", path=path, line=line, field=key)
        prompt, completions, labels = obj["prompt"], obj["completions"], obj["labels"]
        if not isinstance(prompt, str):
            raise DataError(f"expected a string, got {type(prompt).__name__}", path=path, line=line, field="prompt")
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise DataError("expected a list of strings", path=path, line=line, field="completions")
        if not isinstance(labels, list):
            raise DataError("expected a list of numbers", path=path, line=line, field="labels")
        clean: list[float | None] = []
        for i, lab in enumerate(labels):
            if lab is None:
                clean.append(None)
                continue
            if isinstance(lab, bool):
                lab = float(lab)
            if not isinstance(lab, (int, float)) or math.isnan(lab) or not 0.0 <= lab <= 1.0:
                raise DataError(
                    f"label {lab!r} is not a number in [0, 1] or null", path=path, line=line, field=f"labels[{i}]"
                )
            clean.append(float(lab))
        if len(completions) != len(clean):
            raise DataError(
                f"{len(completions)} completions but {len(clean)} labels", path=path, line=line, field="labels"
            )
        extra = {k: v for k, v in obj.items() if k not in REQUIRED}
        return cls(prompt=prompt, completions=list(completions), labels=clean, extra=extra)


def read_jsonl(
    path: str | Path,
    parse: Callable[[Any, int], T],
    *,
    skip_invalid: bool = False,
    report: SkipReport | None = None,
) -> list[T]:
    """Decode each non-blank line of a JSONL file and ``parse(obj, line_number)`` it.

    Bad JSON or a ``DataError`` from ``parse`` stops the read with that error, or, with
    ``skip_invalid``, is recorded in ``report`` and skipped. A missing or empty file is an error.
    A UTF-8 byte-order mark, CRLF line ends and blank lines (trailing ones too) are accepted.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.is_dir():
        raise DataError("is a directory, expected a JSONL file", path=path)
    report = report if report is not None else SkipReport()
    out: list[T] = []
    with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is dropped
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
                out.append(parse(obj, lineno))
            except DataError as e:
                if e.path is None:
                    e = DataError(e.message, path=path, line=lineno, field=e.field)
                if not skip_invalid:
                    raise e from None
                report.add(e)
    if not out and not report.skipped:
        raise DataError("no records (empty file)", path=path)
    return out


def read_stepwise(
    path: str | Path, *, skip_invalid: bool = False, report: SkipReport | None = None
) -> list[StepwiseExample]:
    """Read and validate a stepwise JSONL file (see ``read_jsonl`` for errors and skipping)."""
    return read_jsonl(
        path,
        lambda obj, line: StepwiseExample.from_dict(obj, path=path, line=line),
        skip_invalid=skip_invalid,
        report=report,
    )


def write_stepwise(path: str | Path, examples: Iterable[StepwiseExample]) -> int:
    """Write stepwise examples as JSONL atomically; returns the number written."""
    return write_jsonl(path, (ex.to_dict() for ex in examples))


def to_dataset(examples: list[StepwiseExample]) -> Any:
    """A ``datasets.Dataset`` with columns prompt, completions, labels and the extra keys."""
    import datasets

    return datasets.Dataset.from_list([ex.to_dict() for ex in examples])


def load_stepwise_dataset(path: str | Path, **kwargs: Any) -> Any:
    """Read and validate a stepwise JSONL file into a ``datasets.Dataset``."""
    return to_dataset(read_stepwise(path, **kwargs))
