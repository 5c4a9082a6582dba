"""The arithmetic world: multi-step integer arithmetic with an exact checker for every step.

A problem is a start value and a chain of ``(operator, operand)`` pairs, evaluated strictly left
to right on a running value (no precedence), by default modulo 10 so that checking a step is a
small lookup a tiny model can learn (see ``shared/notes/arith-calibration.md``). Exact formats::

    prompt     "Q: 7+5*3-4\\n"          "Q: ", the start, then operator+operand pairs, no spaces
    solution   "7+5=2\\n2*3=6\\n6-4=2\\n# Answer: 2"                  (plain, ``ARITH_FORMAT``)
    tagged     "<reasoning>\\n7+5=2\\n2*3=6\\n6-4=2\\n</reasoning>\\n<answer>2</answer>"

One step per line, ``{left}{op}{right}={result}``: ``left`` is the running value before the step
(the start for the first step), ``op right`` the problem's next operation, ``result`` the running
value after it (reduced mod the modulus; with ``modulus=None`` negative values are written with a
leading ``-``). The modulus is not in the prompt: it is a property of the world
(``Problem.modulus``), fixed per dataset. Splitting and joining go through ``prm.steps``.

Training solutions (``sample_training_solution``) carry injected errors of two kinds: random
slips (a result off by 1..``max_slip``) and systematic mistakes (a fixed, seeded set of facts
``(left, op, right)`` with a fixed wrong result, written with probability ``systematic_rate``).
Later steps continue consistently from the written (wrong) value, and the answer is the last
written value.

``label_solution`` is the exact labeller for any text (``label_steps`` for a step list): a step
is on track (1.0) iff it and every earlier step are well-formed and exactly right against the
problem; from the first bad step on every label is 0.0. The answer is a labelled step (the last):
1.0 iff every operation was done right in order and the answer equals the result. Numbers compare
by value; whitespace around a step or answer is ignored.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cached_property, lru_cache
from itertools import count, islice
from typing import Any

from prm.data.stepwise import StepwiseExample
from prm.steps import ParsedSolution, StepFormat, is_answer_step, join_solution, split_solution

ARITH_FORMAT = StepFormat(answer_joiner=": ")
"""Plain steps then ``# Answer: N``, e.g. ``7+5=2\\n2*3=6\\n# Answer: 6``."""

OPERATORS: tuple[str, ...] = ("+", "-", "*")
PROMPT_PREFIX = "Q: "
_APPLY: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_NUM = r"-?[0-9]{1,30}"  # ASCII digits only; bounded so int() never hits the digit limit
_STEP_RE = re.compile(rf"({_NUM})([+*-])([0-9]{{1,30}})=({_NUM})")
_NUM_RE = re.compile(_NUM)
_PROMPT_RE = re.compile(r"Q: ([0-9]{1,30})((?:[+*-][0-9]{1,30})+)\s*")
_OP_RE = re.compile(r"([+*-])([0-9]+)")


def apply_op(left: int, op: str, right: int, modulus: int | None) -> int:
    """``left op right``, reduced mod ``modulus`` unless it is None."""
    value = _APPLY[op](left, right)
    return value % modulus if modulus is not None else value


def format_step(left: int, op: str, right: int, result: int) -> str:
    """The text of one step: ``format_step(7, "+", 5, 2) == "7+5=2"``."""
    return f"{left}{op}{right}={result}"


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    """``(left, op, right, result)`` of a well-formed step, else None (never raises)."""
    m = _STEP_RE.fullmatch(step.strip())
    if m is None:
        return None
    return int(m[1]), m[2], int(m[3]), int(m[4])


def parse_int(text: str | None) -> int | None:
    """An integer written as plain ASCII digits with an optional ``-``, else None."""
    if text is None:
        return None
    m = _NUM_RE.fullmatch(text.strip())
    return int(m[0]) if m else None


@dataclass(frozen=True)
class ArithConfig:
    """Knobs of the world: problem sizes, value range and the policy's injected errors."""

    min_ops: int = 2
    max_ops: int = 6
    operand_min: int = 0
    operand_max: int = 9
    modulus: int | None = 10  # None: plain integers, running value kept in [value_min, value_max]
    value_min: int = 0
    value_max: int = 999
    operators: tuple[str, ...] = OPERATORS
    slip_rate: float = 0.05  # P(a step's result is off by 1..max_slip)
    max_slip: int = 3
    systematic_rate: float = 0.6  # P(a step on a systematic fact is written with its wrong result)
    num_systematic: int = 68  # facts (left, op, right) with a fixed wrong result (modulus only)
    systematic_seed: int = 1234

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"ArithConfig.{name}: {msg} (got {getattr(self, name)!r})")

        for name in ("min_ops", "max_ops", "operand_min", "operand_max", "value_min", "value_max",
                     "max_slip", "num_systematic", "systematic_seed"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), name, "must be an integer")
        need(self.modulus is None or (isinstance(self.modulus, int) and not isinstance(self.modulus, bool)),
             "modulus", "must be an integer or None")
        object.__setattr__(self, "operators", tuple(self.operators))  # lists from configs are fine
        need(self.min_ops >= 1, "min_ops", "must be >= 1")
        need(self.max_ops >= self.min_ops, "max_ops", "must be >= min_ops")
        need(self.operand_min >= 0, "operand_min", "must be >= 0")
        need(self.operand_max >= self.operand_min, "operand_max", "must be >= operand_min")
        need(self.modulus is None or self.modulus >= 2, "modulus", "must be >= 2 or None")
        need(self.value_max > self.value_min, "value_max", "must be > value_min")
        if self.modulus is None:
            need(max(self.operand_min, self.value_min) <= min(self.operand_max, self.value_max), "value_min",
                 "no start value lies in both [operand_min, operand_max] and [value_min, value_max]")
        need(len(self.operators) > 0 and all(op in _APPLY for op in self.operators), "operators",
             f"must be a non-empty subset of {OPERATORS}")
        need(len(set(self.operators)) == len(self.operators), "operators", "must not repeat")
        for name in ("slip_rate", "systematic_rate"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, name, "must be a probability in [0, 1]")
        need(self.max_slip >= 1, "max_slip", "must be >= 1")
        need(self.num_systematic >= 0, "num_systematic", "must be >= 0")
        if self.modulus is not None:
            n_facts = self.modulus * len(self.operators) * (self.operand_max - self.operand_min + 1)
            need(self.num_systematic <= n_facts, "num_systematic", f"must be <= the {n_facts} possible facts")

    @classmethod
    def from_dict(cls, values: Any) -> ArithConfig:
        """An ArithConfig from a config mapping (e.g. ``data.world``); unknown keys are a clear error."""
        if not isinstance(values, dict):
            raise ValueError(f"ArithConfig: expected a mapping of knobs, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ArithConfig: unknown knob(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class Problem:
    """A start value and operations applied left to right; ``modulus=None`` = plain integers."""

    id: str
    start: int
    ops: tuple[tuple[str, int], ...]
    modulus: int | None = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple((op, b) for op, b in self.ops))
        for op, b in self.ops:
            if op not in _APPLY or not isinstance(b, int) or b < 0:
                raise ValueError(f"Problem {self.id!r}: bad operation {op!r} {b!r}")
        if self.start < 0:
            raise ValueError(f"Problem {self.id!r}: start must be >= 0 (got {self.start})")

    @classmethod
    def from_prompt(cls, prompt: str, modulus: int | None = 10, id: str = "") -> Problem:
        """Parse a prompt written by ``prompt`` back into a problem (ValueError if it is not one)."""
        m = _PROMPT_RE.fullmatch(prompt)
        if m is None:
            raise ValueError(f"not an arithmetic prompt: {prompt!r}")
        ops = tuple((op, int(b)) for op, b in _OP_RE.findall(m[2]))
        return cls(id=id, start=int(m[1]), ops=ops, modulus=modulus)

    @property
    def prompt(self) -> str:
        """``"Q: 7+5*3-4\\n"``: the start, then each operator and operand, then a newline."""
        body = "".join(f"{op}{b}" for op, b in self.ops)
        return f"{PROMPT_PREFIX}{self.start}{body}{ARITH_FORMAT.separator}"

    @cached_property
    def values(self) -> tuple[int, ...]:
        """Running values: the start, then the value after each operation (``len(ops) + 1``)."""
        out = [self.start]
        for op, b in self.ops:
            out.append(apply_op(out[-1], op, b, self.modulus))
        return tuple(out)

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def difficulty(self) -> int:
        """The number of operations (= steps of a correct solution)."""
        return len(self.ops)

    @cached_property
    def true_steps(self) -> tuple[str, ...]:
        """The correct steps, e.g. ``("7+5=2", "2*3=6", "6-4=2")``."""
        v = self.values
        return tuple(format_step(v[i], op, b, v[i + 1]) for i, (op, b) in enumerate(self.ops))


def generate_problems(n: int, cfg: ArithConfig | None = None, seed: int = 0) -> list[Problem]:
    """``n`` problems, deterministic per seed; difficulty uniform in [min_ops, max_ops]."""
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    return list(islice(iter_problems(cfg, seed), n))


def iter_problems(cfg: ArithConfig | None = None, seed: int = 0) -> Iterator[Problem]:
    """An endless stream of problems, deterministic per seed (``generate_problems`` takes its first n)."""
    cfg = cfg if cfg is not None else ArithConfig()
    rng = random.Random(seed)
    lo, hi = cfg.operand_min, cfg.operand_max
    for i in count():
        k = rng.randint(cfg.min_ops, cfg.max_ops)
        if cfg.modulus is not None:
            start = rng.randint(lo, hi)
            ops = tuple((rng.choice(cfg.operators), rng.randint(lo, hi)) for _ in range(k))
        else:
            start, ops = _bounded_chain(k, cfg, rng)
        yield Problem(id=f"arith-{seed}-{i}", start=start, ops=ops, modulus=cfg.modulus)


def _bounded_chain(k: int, cfg: ArithConfig, rng: random.Random) -> tuple[int, tuple[tuple[str, int], ...]]:
    """Plain integers: each operation is drawn among those keeping the value in range."""
    v = rng.randint(max(cfg.operand_min, cfg.value_min), min(cfg.operand_max, cfg.value_max))
    start, ops = v, []
    operands = range(cfg.operand_min, cfg.operand_max + 1)
    for _ in range(k):
        choices = [(op, b) for op in cfg.operators for b in operands
                   if cfg.value_min <= _APPLY[op](v, b) <= cfg.value_max]
        if not choices:
            raise ValueError(f"no operation in {cfg.operators} keeps the running value {v} in "
                             f"[value_min={cfg.value_min}, value_max={cfg.value_max}]")
        op, b = rng.choice(choices)
        ops.append((op, b))
        v = _APPLY[op](v, b)
    return start, tuple(ops)


@lru_cache(maxsize=64)
def _facts(cfg: ArithConfig) -> dict[tuple[int, str, int], int]:
    if cfg.modulus is None or cfg.num_systematic == 0:
        return {}
    m = cfg.modulus
    domain = [(a, op, b) for a in range(m) for op in sorted(cfg.operators)
              for b in range(cfg.operand_min, cfg.operand_max + 1)]
    rng = random.Random(cfg.systematic_seed)
    out: dict[tuple[int, str, int], int] = {}
    for a, op, b in rng.sample(domain, cfg.num_systematic):
        true = apply_op(a, op, b, m)
        out[(a, op, b)] = rng.choice([r for r in range(m) if r != true])
    return out


def _facts_for(problem: Problem, cfg: ArithConfig) -> dict[tuple[int, str, int], int]:
    """The world's systematic facts when the problem lives in that world (same modulus), else none."""
    return _facts(cfg) if problem.modulus is not None and problem.modulus == cfg.modulus else {}


def systematic_facts(cfg: ArithConfig) -> dict[tuple[int, str, int], int]:
    """The facts ``(left, op, right)`` the policy gets wrong, each with its fixed wrong result.

    Seeded by ``systematic_seed``; left values range over ``range(modulus)``; empty without a
    modulus. Every wrong result differs from the true one.
    """
    return dict(_facts(cfg))


@dataclass(frozen=True)
class InjectedSolution:
    """A sampled training solution and where its errors were injected."""

    steps: tuple[str, ...]
    results: tuple[int, ...]  # the written result of each step
    errors: tuple[str | None, ...]  # per step: None (right from its written left), "slip", "systematic"

    @property
    def answer(self) -> int:
        return self.results[-1]

    @property
    def first_error(self) -> int | None:
        return next((i for i, e in enumerate(self.errors) if e is not None), None)

    def text(self, fmt: StepFormat = ARITH_FORMAT) -> str:
        return join_solution(self.steps, str(self.answer), fmt)


def _slip(true: int, problem: Problem, cfg: ArithConfig, rng: random.Random) -> int:
    deltas = [d for s in (1, -1) for d in range(s, s * (cfg.max_slip + 1), s)]
    if problem.modulus is not None:
        m = problem.modulus
        return rng.choice([(true + d) % m for d in deltas if d % m != 0])
    inside = [true + d for d in deltas if cfg.value_min <= true + d <= cfg.value_max]
    return rng.choice(inside or [true + d for d in deltas])


def sample_injected(problem: Problem, cfg: ArithConfig, rng: random.Random) -> InjectedSolution:
    """One training solution with injected errors, propagated consistently to later steps."""
    facts = _facts_for(problem, cfg)
    v = problem.start
    steps: list[str] = []
    results: list[int] = []
    errors: list[str | None] = []
    for op, b in problem.ops:
        true = apply_op(v, op, b, problem.modulus)
        wrong = facts.get((v, op, b))
        kind: str | None = None
        if wrong is not None and rng.random() < cfg.systematic_rate:
            result, kind = wrong, "systematic"
        elif rng.random() < cfg.slip_rate:
            result, kind = _slip(true, problem, cfg, rng), "slip"
        else:
            result = true
        steps.append(format_step(v, op, b, result))
        results.append(result)
        errors.append(kind)
        v = result
    return InjectedSolution(tuple(steps), tuple(results), tuple(errors))


def sample_training_solution(
    problem: Problem, cfg: ArithConfig, rng: random.Random, fmt: StepFormat = ARITH_FORMAT
) -> str:
    """A solution text with injected errors (see ``sample_injected``)."""
    return sample_injected(problem, cfg, rng).text(fmt)


def solution_text(problem: Problem, fmt: StepFormat = ARITH_FORMAT) -> str:
    """The correct solution, e.g. ``"7+5=2\\n2*3=6\\n6-4=2\\n# Answer: 2"``."""
    return join_solution(problem.true_steps, str(problem.answer), fmt)


@dataclass
class ArithLabel:
    """Exact labels of one solution; ``correct`` is the outcome, ``process_correct`` the process."""

    step_labels: list[float]
    correct: bool
    answer: int | None
    first_error: int | None
    finished: bool
    process_correct: bool


def _answer_in(step: str, fmt: StepFormat) -> int | None:
    """The integer an answer step gives (None: no answer, or not an integer)."""
    return parse_int(split_solution(step, fmt).answer)


def label_steps(problem: Problem, steps: Sequence[str], fmt: StepFormat = ARITH_FORMAT) -> list[float]:
    """Exact labels of a step list as ``prm.steps.solution_steps`` splits it (never raises).

    A computation step is 1.0 iff it and every earlier step are exactly right. The answer step
    (``prm.steps.is_answer_step``) is 1.0 iff every operation was done right, in order, and its
    answer equals the result: a premature answer, one that disagrees with the last step, or a
    right answer after a wrong step is 0.0. Every step after the answer step is 0.0.
    """
    values, ops, true_steps = problem.values, problem.ops, problem.true_steps
    labels: list[float] = []
    on_track, done, n = True, False, 0
    for step in steps:
        if done or not on_track:
            on_track = False
        elif is_answer_step(step, fmt):
            on_track = n == len(ops) and _answer_in(step, fmt) == problem.answer
            done = True
        else:
            if n >= len(ops):
                on_track = False
            elif step != true_steps[n]:  # fast path for the canonical text, else compare by value
                on_track = parse_step(step) == (values[n], ops[n][0], ops[n][1], values[n + 1])
            n += 1
        labels.append(1.0 if on_track else 0.0)
    return labels


def _label_parsed(problem: Problem, parsed: ParsedSolution, fmt: StepFormat) -> ArithLabel:
    labels = label_steps(problem, parsed.labelled_steps, fmt)
    answer = parse_int(parsed.answer)
    correct = answer is not None and answer == problem.answer
    return ArithLabel(
        step_labels=labels,
        correct=correct,
        answer=answer,
        first_error=labels.index(0.0) if 0.0 in labels else None,
        finished=parsed.finished,
        process_correct=parsed.answer_step is not None and bool(labels) and labels[-1] == 1.0,
    )


def label_solution(problem: Problem, text: str, fmt: StepFormat = ARITH_FORMAT) -> ArithLabel:
    """Label any text exactly (never raises): its ``solution_steps``, the answer step included."""
    return _label_parsed(problem, split_solution(text, fmt), fmt)


ERROR_KINDS: tuple[str, ...] = ("systematic", "slip", "copy", "malformed", "extra", "answer")
"""Kinds of a wrong step (``step_error_kind``), in report order."""


def step_error_kind(problem: Problem, step: str, index: int, cfg: ArithConfig,
                    fmt: StepFormat = ARITH_FORMAT) -> str:
    """Why step ``index`` of a solution whose earlier steps are right is wrong (see ``ERROR_KINDS``).

    ``answer``: the answer step is wrong (premature, or not the result of the right steps before it);
    ``extra``: a step past the problem's last operation; ``malformed``: not ``left op right=result``;
    ``copy``: the left value or the operation is not the problem's; ``systematic``: the result is the
    fixed wrong result of one of the world's systematic facts; ``slip``: any other wrong result.
    Raises ValueError when the step is right.
    """
    if is_answer_step(step, fmt):
        if index == len(problem.ops) and _answer_in(step, fmt) == problem.answer:
            raise ValueError(f"answer step {index} ({step!r}) of {problem.id!r} is right: it has no error kind")
        return "answer"
    if index >= len(problem.ops):
        return "extra"
    got = parse_step(step)
    if got is None:
        return "malformed"
    left, op, right, result = got
    if (left, op, right) != (problem.values[index], *problem.ops[index]):
        return "copy"
    if result == problem.values[index + 1]:
        raise ValueError(f"step {index} ({step!r}) of {problem.id!r} is right: it has no error kind")
    facts = _facts_for(problem, cfg)
    return "systematic" if facts.get((left, op, right)) == result else "slip"


def to_stepwise(problem: Problem, text: str, fmt: StepFormat = ARITH_FORMAT, **extra: Any) -> StepwiseExample:
    """A labelled stepwise example of ``text``; extra keys describe the problem and the label."""
    parsed = split_solution(text, fmt)
    label = _label_parsed(problem, parsed, fmt)
    labels: list[float | None] = list(label.step_labels)
    return StepwiseExample(
        prompt=problem.prompt,
        completions=parsed.labelled_steps,
        labels=labels,
        extra={
            "id": problem.id,
            "answer": str(problem.answer),
            "difficulty": problem.difficulty,
            "correct": label.correct,
            "process_correct": label.process_correct,
            "first_error": label.first_error,
            "source": "arith",
            **extra,
        },
    )


def generate_dataset(
    n: int,
    cfg: ArithConfig | None = None,
    seed: int = 0,
    samples_per_problem: int = 1,
    fmt: StepFormat = ARITH_FORMAT,
) -> list[StepwiseExample]:
    """``n`` problems x ``samples_per_problem`` training solutions, exactly labelled."""
    cfg = cfg if cfg is not None else ArithConfig()
    if samples_per_problem < 1:
        raise ValueError(f"samples_per_problem must be >= 1 (got {samples_per_problem})")
    rng = random.Random(f"arith-solutions-{seed}")
    out: list[StepwiseExample] = []
    for problem in generate_problems(n, cfg, seed):
        for j in range(samples_per_problem):
            text = sample_training_solution(problem, cfg, rng, fmt)
            out.append(to_stepwise(problem, text, fmt, sample=j))
    return out


__all__ = [
    "ARITH_FORMAT", "ArithConfig", "ArithLabel", "InjectedSolution", "Problem", "apply_op", "format_step",
    "generate_dataset", "generate_problems", "iter_problems", "label_solution", "label_steps", "parse_int", "parse_step",
    "sample_injected", "sample_training_solution", "solution_text", "systematic_facts", "to_stepwise",
]
