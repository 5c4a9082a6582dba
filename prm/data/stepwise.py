"""Stepwise examples: the internal and exchange format (TRL's stepwise-supervision JSONL).

One JSON object per line: ``{"prompt": str, "completions": [str, ...], "labels": [float, ...]}``,
one label per step in [0, 1] (1.0 = still on track after this step, 0.0 = not; in between =
soft labels). Extra keys (answer, source, ids, difficulty, correctness, ...) are kept in
``extra`` and written back unchanged.

**Which labels a reward model trains on** (``relabel``, ``LABEL_CHOICES``; prm-train's ``labels``):

- ``process``: the record's own ``labels``, unchanged (whatever made them: exact, MC, people);
- ``exact`` / ``mc_hard`` / ``mc_soft``: the per-step lists a ``prm-sample labeller=mc`` record
  carries beside its ``labels`` (``exact_labels``: the world's exact labels; ``mc_hard``: any
  rollout right; ``mc_soft``: the fraction right), so one sampled file trains all three;
- ``outcome_all``: every step carries the final answer's correctness (an outcome-supervised
  reward model, ORM, as Lightman et al. 2023 train it); ``outcome_last``: only the last step
  carries it, the others are unlabelled (``None``: not trained on).

**The outcome** (``outcome_label``) is the record's ``correct`` field (``prm-sample`` and the
arithmetic world write it: the final answer equals the reference, graded on the solution's text,
whatever the steps before it). Without that field, the label of a last step that is an answer step
(``prm.steps.is_answer_step``) stands in for it: the answer is a labelled step by the project's
convention, and its label is 1.0 iff the steps and the answer are right, so it differs from the
outcome only where a right answer follows a wrong step (0.0 there: a stricter outcome, never a
looser one; PRM800K's rating of its answer step is this case). A record with neither, e.g. a
solution cut off before its answer, has no outcome: a ``DataError`` naming its file, line and
field ``correct``.
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
from prm.steps import PLAIN, StepFormat, is_answer_step

REQUIRED = ("prompt", "completions", "labels")
T = TypeVar("T")
LABEL_CHOICES = ("process", "exact", "mc_hard", "mc_soft", "outcome_all", "outcome_last")
"""What ``relabel`` can train on (see the module docstring)."""
OUTCOME_CHOICES = ("outcome_all", "outcome_last")
STEP_LABEL_KEYS = {"exact": "exact_labels", "mc_hard": "mc_hard", "mc_soft": "mc_soft"}
"""The extra key holding each per-step label list a Monte-Carlo-labelled record carries."""


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
        clean = clean_labels(labels, len(completions), "labels", path=path, line=line)
        extra = {k: v for k, v in obj.items() if k not in REQUIRED}
        return cls(prompt=prompt, completions=list(completions), labels=clean, extra=extra)


def clean_labels(
    labels: Any, n_steps: int, key: str, *, path: str | Path | None = None, line: int | None = None
) -> list[float | None]:
    """Validate one label per step (a number in [0, 1], a bool, or null) as floats; errors name ``key``."""
    if not isinstance(labels, list):
        raise DataError("expected a list of numbers", path=path, line=line, field=key)
    clean: list[float | None] = []
    for i, lab in enumerate(labels):
        if lab is None:
            clean.append(None)
            continue
        if isinstance(lab, bool):
            lab = float(lab)
        if not isinstance(lab, (int, float)) or math.isnan(lab) or not 0.0 <= lab <= 1.0:
            raise DataError(f"label {lab!r} is not a number in [0, 1] or null", path=path, line=line,
                            field=f"{key}[{i}]")
        clean.append(float(lab))
    if len(clean) != n_steps:
        raise DataError(f"{n_steps} completions but {len(clean)} labels", path=path, line=line, field=key)
    return clean


def outcome_label(ex: StepwiseExample, fmt: StepFormat = PLAIN) -> tuple[float, str]:
    """The final answer's correctness as a label, and where it came from (``"correct"`` or
    ``"answer_step_label"``); see the module docstring. Raises ``DataError`` (field ``correct``)
    when the record has no outcome."""
    correct = ex.extra.get("correct")
    if correct is not None:
        if isinstance(correct, (bool, int, float)) and correct in (0, 1):
            return float(correct), "correct"
        raise DataError(f"expected true/false (the final answer's correctness), got {correct!r}", field="correct")
    if ex.completions and is_answer_step(ex.completions[-1], fmt) and ex.labels[-1] is not None:
        return float(ex.labels[-1]), "answer_step_label"
    raise DataError("no outcome to train on: the record has no 'correct' field (the final answer's correctness) "
                    "and its last step is not a labelled answer step", field="correct")


def relabel(ex: StepwiseExample, how: str, fmt: StepFormat = PLAIN) -> StepwiseExample:
    """``ex`` with the labels ``how`` (one of ``LABEL_CHOICES``) trains on; ``process`` returns ``ex`` itself.

    Raises ``DataError`` naming the missing or bad field (``correct``, ``exact_labels``, ``mc_hard``,
    ``mc_soft``); readers add the file and line (``read_stepwise(..., transform=...)``).
    """
    if how == "process":
        return ex
    labels: list[float | None]
    if how in STEP_LABEL_KEYS:
        key = STEP_LABEL_KEYS[how]
        if key not in ex.extra:
            raise DataError(f"labels={how} needs the per-step list {key!r} (written by prm-sample labeller=mc)",
                            field=key)
        labels = clean_labels(ex.extra[key], len(ex.completions), key)
    elif how in OUTCOME_CHOICES:
        labels = []  # a record without steps has nothing to label
        if ex.completions:
            outcome: float | None = outcome_label(ex, fmt)[0]
            n = len(ex.completions)
            labels = [outcome] * n if how == "outcome_all" else [*([None] * (n - 1)), outcome]
    else:
        raise ValueError(f"unknown labels {how!r} (one of {', '.join(LABEL_CHOICES)})")
    return StepwiseExample(ex.prompt, list(ex.completions), labels, dict(ex.extra))


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
    path: str | Path,
    *,
    skip_invalid: bool = False,
    report: SkipReport | None = None,
    transform: Callable[[StepwiseExample], StepwiseExample] | None = None,
) -> list[StepwiseExample]:
    """Read and validate a stepwise JSONL file (see ``read_jsonl`` for errors and skipping).

    ``transform`` (e.g. ``lambda ex: relabel(ex, "outcome_all")``) is applied to each record as it
    is read, so its errors name the record's file and line (and are skipped with ``skip_invalid``).
    """

    def parse(obj: Any, line: int) -> StepwiseExample:
        ex = StepwiseExample.from_dict(obj, path=path, line=line)
        return transform(ex) if transform is not None else ex

    return read_jsonl(path, parse, skip_invalid=skip_invalid, report=report)


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
