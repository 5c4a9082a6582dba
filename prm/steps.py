"""What a step is: the one place that knows how solutions are split into steps.

Two solution formats share one separator (default ``"\\n"``, one step per line):

- **plain**: step lines, then a final answer line that starts with ``# Answer``::

      step 1
      step 2
      # Answer

      5

  (PRM800K writes ``"# Answer\\n\\n5"``; the arithmetic world writes ``"# Answer: 5"``.)
- **tagged**: the chain of thought inside reasoning tags, then the answer in answer tags::

      <reasoning>
      step 1
      step 2
      </reasoning>
      <answer>5</answer>

**The answer is the last step** of a finished solution (PRM800K's convention): ``solution_steps``
returns the reasoning steps and then the answer step (plain: the answer line from its marker to
the end, e.g. ``# Answer: 5`` or ``# Answer\n\n5``; tagged: from ``</reasoning>``, or from
``<answer>`` when the reasoning was never closed, to the end). Training data, prm-eval, search and
RL all split with it, so a PRM scores exactly the steps it learned. A solution cut off before its
answer has no answer step; blank lines are never steps.

Splitting is tolerant of what models really write (blank lines, stray whitespace, missing or
unclosed tags, text outside tags) and never raises; joining is exact, so well-formed solutions
round-trip. The module also maps steps to characters and characters to tokens: a PRM's label
lives on the token that holds the separator ending each step (``scoring_text``,
``step_end_chars``, ``step_end_token_indices``). Search stop strings, PRM labels and RL dense
rewards all come from here; no other file hard-codes a separator.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REASONING_OPEN = "<reasoning>"
REASONING_CLOSE = "</reasoning>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"


@dataclass(frozen=True)
class StepFormat:
    """How steps and the final answer are written (see the module docstring)."""

    style: Literal["plain", "tagged"] = "plain"
    separator: str = "\n"  # between steps
    answer_marker: str = "# Answer"  # plain: the final answer line starts with this
    answer_joiner: str = "\n\n"  # plain, used by join: marker + joiner + answer

    def __post_init__(self) -> None:
        if self.style not in ("plain", "tagged"):
            raise ValueError(f"unknown step style {self.style!r} (plain or tagged)")
        if not self.separator:
            raise ValueError("the step separator must not be empty")
        if self.style == "plain" and not self.answer_marker.strip():
            raise ValueError("the plain format needs a non-blank answer marker")

    @property
    def step_stop(self) -> str:
        """The stop string that ends one generated step."""
        return self.separator

    def to_dict(self) -> dict[str, str]:
        return {"style": self.style, "separator": self.separator, "answer_marker": self.answer_marker,
                "answer_joiner": self.answer_joiner}

    def mismatch(self, other: StepFormat) -> list[str]:
        """The fields that change how steps are split (style, separator, answer marker) and differ."""
        return [f"{k}: {getattr(self, k)!r} vs {getattr(other, k)!r}" for k in ("style", "separator", "answer_marker")
                if getattr(self, k) != getattr(other, k)]


FORMAT_FILE = "step_format.json"
"""Saved beside a trained PRM's weights: the step format it was trained with."""


def save_step_format(model_dir: str | Path, fmt: StepFormat) -> Path:
    """Record the step format a model was trained with in ``model_dir/step_format.json``."""
    path = Path(model_dir) / FORMAT_FILE
    path.write_text(json.dumps(fmt.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def load_step_format(model_dir: str | Path | None) -> StepFormat | None:
    """The step format saved beside a model (None when the directory has none); bad files are clear errors."""
    if model_dir is None:
        return None
    path = Path(str(model_dir)) / FORMAT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        return StepFormat(**{k: data[k] for k in ("style", "separator", "answer_marker", "answer_joiner") if k in data})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a step format ({e})") from None


PLAIN = StepFormat()
TAGGED = StepFormat(style="tagged")


@dataclass
class ParsedSolution:
    """A solution split into its reasoning steps, its answer step and its final answer."""

    steps: list[str]  # the reasoning steps (not the answer step)
    answer: str | None  # None when there is no answer line / answer tag
    finished: bool  # a non-empty answer was found (tagged: and the reasoning was closed or never opened)
    answer_step: str | None = None  # the answer step as written (stripped); None when the answer never started

    @property
    def labelled_steps(self) -> list[str]:
        """Every step a PRM labels and scores: the reasoning steps, then the answer step if any."""
        return self.steps + ([self.answer_step] if self.answer_step is not None else [])


@dataclass(frozen=True)
class _Step:
    start: int  # first non-blank character
    end: int  # one past the last non-blank character
    end_char: int  # the separator after the step, else the step's last character


def _steps_in(text: str, lo: int, hi: int, sep: str) -> list[_Step]:
    """The non-blank lines of ``text[lo:hi]``, whitespace-stripped, with their end characters."""
    steps: list[_Step] = []
    start = lo
    while start <= hi:
        cut = text.find(sep, start, hi)
        end = hi if cut == -1 else cut
        line = text[start:end]
        body = line.strip()
        if body:
            first = start + len(line) - len(line.lstrip())
            last = first + len(body)
            steps.append(_Step(first, last, last - 1 if cut == -1 else cut))
        if cut == -1:
            break
        start = cut + len(sep)
    return steps


def _parse_plain(text: str, fmt: StepFormat) -> tuple[list[_Step], str | None, int]:
    """Steps, answer and where the answer step starts (-1: no answer line)."""
    marker, sep = fmt.answer_marker, fmt.separator
    start = 0
    while True:  # find the first line that starts (after indentation) with the marker
        cut = text.find(sep, start)
        line = text[start:] if cut == -1 else text[start:cut]
        if line.lstrip().startswith(marker):
            head = start + len(line) - len(line.lstrip())
            answer = text[head + len(marker):].strip()
            if answer.startswith(":"):
                answer = answer[1:].strip()
            return _steps_in(text, 0, start, sep), answer, head
        if cut == -1:
            return _steps_in(text, 0, len(text), sep), None, -1
        start = cut + len(sep)


def _parse_tagged(text: str, fmt: StepFormat) -> tuple[list[_Step], str | None, bool, int]:
    """Steps, answer, whether the reasoning is done, and where the answer step starts (-1: none)."""
    opened = text.find(REASONING_OPEN)
    lo = 0 if opened == -1 else opened + len(REASONING_OPEN)
    closed = text.find(REASONING_CLOSE, lo)
    answer_at = text.find(ANSWER_OPEN, lo if closed == -1 else closed + len(REASONING_CLOSE))
    hi = closed if closed != -1 else (answer_at if answer_at != -1 else len(text))
    answer = None
    if answer_at != -1:
        a_lo = answer_at + len(ANSWER_OPEN)
        a_hi = text.find(ANSWER_CLOSE, a_lo)
        answer = text[a_lo : len(text) if a_hi == -1 else a_hi].strip()
    answer_start = closed if closed != -1 else answer_at
    return _steps_in(text, lo, hi, fmt.separator), answer, closed != -1 or opened == -1, answer_start


def _parse(text: str, fmt: StepFormat) -> tuple[list[_Step], str | None, bool, _Step | None]:
    """Reasoning steps, answer, finished, and the answer step's span (None: no answer step)."""
    if fmt.style == "tagged":
        steps, answer, reasoning_done, at = _parse_tagged(text, fmt)
    else:
        (steps, answer, at), reasoning_done = _parse_plain(text, fmt), True
    answer_step = None
    if at != -1:
        body = text[at:].rstrip()
        while fmt.separator.strip() and body.endswith(fmt.separator):  # a non-blank separator left at the end
            body = body[: -len(fmt.separator)].rstrip()
        end = at + len(body)
        answer_step = _Step(at, end, end - 1)
    return steps, answer, bool(answer) and reasoning_done, answer_step


def split_solution(text: str, fmt: StepFormat = PLAIN) -> ParsedSolution:
    """Split a solution into its steps and final answer; never raises.

    Blank lines and surrounding whitespace are dropped from steps. Plain: the first line that
    starts with the answer marker begins the answer (everything after the marker, one optional
    ``:`` and surrounding whitespace removed); without it every line is a step and the solution
    is unfinished. Tagged: steps are the non-blank lines inside the reasoning (from the open tag,
    or the start, to the close tag, or the answer tag, or the end); the answer is the first
    answer tag after the reasoning, read to its close tag or the end.
    """
    steps, answer, finished, ans = _parse(text, fmt)
    return ParsedSolution([text[s.start : s.end] for s in steps], answer, finished,
                          None if ans is None else text[ans.start : ans.end])


def solution_steps(text: str, fmt: StepFormat = PLAIN) -> list[str]:
    """The steps of a solution as a PRM labels and scores them: reasoning steps, then the answer step.

    The one split used by training data, prm-eval, search and RL (see the module docstring).
    """
    return split_solution(text, fmt).labelled_steps


def join_solution(steps: Sequence[str], answer: str | None, fmt: StepFormat = PLAIN) -> str:
    """Write steps and an answer (None: an unfinished solution) in ``fmt``; inverse of split.

    Round-trips exactly for steps that are non-blank, contain no separator, no surrounding
    whitespace and (plain) do not start with the marker / (tagged) contain no tag, and answers
    without surrounding whitespace (plain: not starting with ``:``; tagged: no ``</answer>``).
    """
    sep = fmt.separator
    if fmt.style == "tagged":
        if answer is None:
            return REASONING_OPEN + sep + sep.join(steps)
        body = "".join(step + sep for step in steps)
        return f"{REASONING_OPEN}{sep}{body}{REASONING_CLOSE}{sep}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"
    lines = list(steps)
    if answer is not None:
        lines.append(fmt.answer_marker + fmt.answer_joiner + answer)
    return sep.join(lines)


def solution_prefix(steps: Sequence[str], fmt: StepFormat = PLAIN) -> str:
    """The partial solution after ``steps``, ready for the next step to be generated.

    Every step is followed by the separator (tagged: after the open reasoning tag), so a policy
    continues it with one step and the stop string ``fmt.step_stop``.
    """
    body = "".join(step + fmt.separator for step in steps)
    return REASONING_OPEN + fmt.separator + body if fmt.style == "tagged" else body


def is_answer_step(step_text: str, fmt: StepFormat = PLAIN) -> bool:
    """Whether a generated step starts the final answer (marker line, or answer/close tag)."""
    head = step_text.lstrip()
    if fmt.style == "tagged":
        return head.startswith((ANSWER_OPEN, REASONING_CLOSE))
    return head.startswith(fmt.answer_marker)


def scoring_text(prompt: str, steps: Sequence[str], fmt: StepFormat = PLAIN) -> tuple[str, list[int]]:
    """The text a PRM reads and, per step, the character index that ends it.

    The text is what the policy wrote: ``policy_prompt(prompt)`` (the prompt ending with ``sep``)
    and ``solution_prefix([])`` (tagged: the open ``<reasoning>`` tag and ``sep``; plain: nothing),
    then every step followed by ``sep`` (the tagged answer step is ``</reasoning>`` + the answer
    tags, so the whole text is the policy's own). A PRM initialised from the policy thus reads
    text at the positions and in the context its backbone learned (without the open tag, a tagged
    PRM from the demo's absolute-position GPT reached within-problem AUROC 0.60 against 0.79 for
    the plain format). A step's end index is the first character of the separator after it.
    Steps are taken as given (never split or stripped), so a multi-line PRM800K step is one step.
    """
    sep = fmt.separator
    head = policy_prompt(prompt, fmt) + solution_prefix([], fmt)
    parts, ends, length = [head], [], len(head)
    for step in steps:
        length += len(step)
        ends.append(length)
        parts += [step, sep]
        length += len(sep)
    return "".join(parts), ends


def step_end_chars(text: str, fmt: StepFormat = PLAIN, start: int = 0) -> list[int]:
    """The end-character index (in ``text``) of each step of the solution ``text[start:]``.

    Steps are those ``solution_steps`` finds, the answer step included (its last character); a
    reasoning step ends at the separator that follows it, or at its own last character when no
    separator follows. RL puts each step's reward on the token holding this character.
    """
    steps, _, _, ans = _parse(text[start:], fmt)
    return [start + s.end_char for s in (*steps, *([ans] if ans is not None else []))]


def step_end_token_indices(offsets: Sequence[tuple[int, int]], end_chars: Sequence[int]) -> list[int]:
    """Map each end character to the token that holds it, using a tokenizer's offset mapping.

    ``offsets`` are (char start, char end) per token. The chosen token is the one whose span
    contains the character (the last such one if several do, e.g. bytes of one character); if
    none does (the tokenizer dropped it), the first token that starts after it, else the last
    token before it. Empty spans (special tokens, trimmed whitespace) are ignored. Works with
    merged tokens such as ``".\\n"`` or ``"\\n\\n"``: nothing is tokenized separately.
    """
    spans = sorted((int(s), i, int(e)) for i, (s, e) in enumerate(offsets) if e > s)
    if not spans:
        raise ValueError("no token has a non-empty character span")
    starts = [s for s, _, _ in spans]
    found = []
    for char in end_chars:
        j = bisect_right(starts, char) - 1  # the last token starting at or before char
        if j >= 0 and spans[j][2] > char:
            found.append(spans[j][1])
        elif j + 1 < len(spans):
            found.append(spans[j + 1][1])
        else:
            found.append(spans[j][1])
    return found


def policy_prompt(prompt: str, fmt: StepFormat = PLAIN) -> str:
    """The text a policy continues: the prompt, ending with the step separator (added if missing)."""
    return prompt if prompt.endswith(fmt.separator) else prompt + fmt.separator
