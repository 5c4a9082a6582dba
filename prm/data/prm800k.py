"""PRM800K (Lightman et al. 2023) records, exactly as released, to stepwise examples.

One released record is one labelling session: ``question.problem`` and ``label.steps``, where
each step holds the rated candidate ``completions`` (-1/0/+1, or ``null`` = not rated), the index
of the one the labeler went on with (``chosen_completion``) or, where none was good enough, a
``human_completion`` written by the labeler. The trajectory followed is:

- at each step the chosen completion, labelled by its rating;
- where none was chosen, the human completion, which is positive (1.0);
- where neither exists the trajectory ends there, except in a ``found_error`` record, where it
  ends with (and includes) the first completion rated -1 at that step, negative (0.0).

Ratings map to labels as the paper does: +1 -> 1.0, -1 -> 0.0, 0 -> ``neutral`` (1.0, 0.0, or
``None`` = unlabelled but kept as text, since later steps build on it); ``null`` -> ``None``.
A step's text is never split, even when it spans several lines (e.g. ``# Answer`` steps).
With ``include_alternatives`` every rated, non-chosen completion at a step also becomes an
example: the trajectory's prefix up to that step plus that completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prm.data.errors import DataError, SkipReport
from prm.data.stepwise import StepwiseExample, read_jsonl

SOURCE = "prm800k"
NEUTRAL_CHOICES = ("positive", "negative", "drop")


@dataclass
class PRM800KOptions:
    """How to turn PRM800K records into examples (see the module docstring)."""

    neutral: Literal["positive", "negative", "drop"] = "positive"
    include_alternatives: bool = False
    drop_quality_control: bool = False
    drop_screening: bool = False

    def __post_init__(self) -> None:
        if self.neutral not in NEUTRAL_CHOICES:
            raise ValueError(f"neutral must be one of {NEUTRAL_CHOICES}, got {self.neutral!r}")


def looks_like_prm800k(obj: Any) -> bool:
    """Whether a decoded JSON object has PRM800K's shape (``label.steps`` and ``question``)."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("label"), dict)
        and "steps" in obj["label"]
        and "question" in obj
    )


def rating_to_label(rating: int | None, neutral: str) -> float | None:
    """-1 -> 0.0, +1 -> 1.0, 0 -> by ``neutral`` (``drop`` -> None), null -> None."""
    if rating is None:
        return None
    if rating == 1:
        return 1.0
    if rating == -1:
        return 0.0
    return {"positive": 1.0, "negative": 0.0, "drop": None}[neutral]


@dataclass
class _Step:
    """One validated step: (text, rating) per completion, the chosen index, the human text."""

    completions: list[tuple[str, int | None]]
    chosen: int | None
    human: str | None


class _Checker:
    """Raises ``DataError``s located at the record's file and line."""

    def __init__(self, path: str | Path | None, line: int | None) -> None:
        self.path, self.line = path, line

    def fail(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, line=self.line, field=field)

    def get(self, obj: dict[str, Any], key: str, kind: type | tuple[type, ...], field: str) -> Any:
        if key not in obj:
            raise self.fail("missing required field", field)
        return self.of_type(obj[key], kind, field)

    def of_type(self, value: Any, kind: type | tuple[type, ...], field: str) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            expected = " or ".join(_json_name(k) for k in kinds)
            raise self.fail(f"expected {expected}, got {_json_name(type(value))}", field)
        return value


def _json_name(kind: type) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
             bool: "a boolean", type(None): "null"}  # fmt: skip
    return names.get(kind, kind.__name__)


def _parse_step(step: Any, i: int, check: _Checker) -> _Step:
    where = f"label.steps[{i}]"
    check.of_type(step, dict, where)
    raw = check.get(step, "completions", list, f"{where}.completions")
    completions: list[tuple[str, int | None]] = []
    for j, comp in enumerate(raw):
        cwhere = f"{where}.completions[{j}]"
        check.of_type(comp, dict, cwhere)
        text = check.get(comp, "text", str, f"{cwhere}.text")
        rating = comp.get("rating")
        if rating is not None and (isinstance(rating, bool) or rating not in (-1, 0, 1)):
            raise check.fail(f"rating {rating!r} is not -1, 0, 1 or null", f"{cwhere}.rating")
        completions.append((text, None if rating is None else int(rating)))
    chosen = check.of_type(step.get("chosen_completion"), (int, type(None)), f"{where}.chosen_completion")
    if chosen is not None and not 0 <= chosen < len(completions):
        raise check.fail(
            f"index {chosen} out of range for {len(completions)} completion(s)", f"{where}.chosen_completion"
        )
    human = step.get("human_completion")
    if isinstance(human, dict):
        human = check.get(human, "text", str, f"{where}.human_completion.text")
    else:
        check.of_type(human, (str, type(None)), f"{where}.human_completion")
    return _Step(completions, chosen, human)


def _phase(obj: dict[str, Any], question: dict[str, Any]) -> int | None:
    """Phase 2 records carry the pre-generated solution; phase 1 ones have ``generation: null``."""
    if "pre_generated_steps" in question:
        return 2
    if obj.get("generation") is None and not any(k.startswith("pre_generated") for k in question):
        return 1
    return None


def parse_record(
    obj: Any, opts: PRM800KOptions | None = None, *, path: str | Path | None = None, line: int | None = None
) -> list[StepwiseExample]:
    """One released PRM800K record (phase 1 or 2) to its examples: the trajectory, then
    (with ``opts.include_alternatives``) one example per rated, non-chosen completion."""
    opts = opts or PRM800KOptions()
    check = _Checker(path, line)
    check.of_type(obj, dict, "<record>")
    label = check.get(obj, "label", dict, "label")
    raw_steps = check.get(label, "steps", list, "label.steps")
    question = check.get(obj, "question", dict, "question")
    problem = check.get(question, "problem", str, "question.problem")
    finish_reason = check.of_type(label.get("finish_reason"), (str, type(None)), "label.finish_reason")
    qc = check.of_type(
        obj.get("is_quality_control_question", False), (bool, type(None)), "is_quality_control_question"
    )
    screening = check.of_type(
        obj.get("is_initial_screening_question", False), (bool, type(None)), "is_initial_screening_question"
    )
    steps = [_parse_step(s, i, check) for i, s in enumerate(raw_steps)]
    if (opts.drop_quality_control and qc) or (opts.drop_screening and screening):
        return []

    extra: dict[str, Any] = {
        "source": SOURCE,
        "finish_reason": finish_reason,
        "answer": question.get("ground_truth_answer"),
        "phase": _phase(obj, question),
        "labeler": obj.get("labeler"),
        "is_quality_control_question": bool(qc),
        "is_initial_screening_question": bool(screening),
    }

    def example(texts: list[str], labels: list[float | None], alternative: bool) -> StepwiseExample:
        return StepwiseExample(problem, texts, labels, extra={**extra, "alternative": alternative})

    texts: list[str] = []
    labels: list[float | None] = []
    alternatives: list[StepwiseExample] = []
    for step in steps:
        taken: int | None = step.chosen
        text: str | None = None
        lab: float | None = None
        ends = False
        if taken is not None:
            text, lab = step.completions[taken][0], rating_to_label(step.completions[taken][1], opts.neutral)
        elif step.human is not None:
            text, lab = step.human, 1.0
        else:  # nothing chosen, nothing written: the labeling ended at this step
            ends = True
            if finish_reason == "found_error":
                taken = next((j for j, (_, r) in enumerate(step.completions) if r == -1), None)
                if taken is not None:
                    text, lab = step.completions[taken][0], 0.0
        if opts.include_alternatives:
            for j, (alt_text, rating) in enumerate(step.completions):
                alt_label = rating_to_label(rating, opts.neutral)
                if j != taken and alt_label is not None:
                    alternatives.append(example([*texts, alt_text], [*labels, alt_label], True))
        if text is not None:
            texts.append(text)
            labels.append(lab)
        if ends:
            break
    trajectory = [example(texts, labels, False)] if texts else []
    return trajectory + alternatives


def read_prm800k(
    path: str | Path,
    opts: PRM800KOptions | None = None,
    *,
    skip_invalid: bool = False,
    report: SkipReport | None = None,
) -> list[StepwiseExample]:
    """Read a PRM800K JSONL file (as released) into stepwise examples, flattened in file order.

    Errors name the file, line and field; with ``skip_invalid`` bad lines are counted in
    ``report`` and left out (see ``read_jsonl``).
    """
    opts = opts or PRM800KOptions()
    per_record = read_jsonl(
        path,
        lambda obj, line: parse_record(obj, opts, path=path, line=line),
        skip_invalid=skip_invalid,
        report=report,
    )
    return [ex for examples in per_record for ex in examples]
