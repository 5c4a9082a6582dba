"""Rewards as graders: what a sampled solution earns in RL, and what each grader logs.

A ``Rollout`` is one sampled completion of a task (the text after the policy prompt) in the
world's step format; its ``steps`` are ``prm.steps.solution_steps`` of the completion (reasoning
steps, then the answer step if the solution has one). A ``Reward`` grades a batch of rollouts:

- ``kind="outcome"``: one float per rollout;
- ``kind="process"``: one list per rollout, one float per labelled step, aligned with
  ``Rollout.steps`` and so with ``prm.steps.step_end_chars`` (the caller puts step ``k``'s reward
  on the token ending step ``k``). A rollout with no steps gets ``[]``: it has no step end to put
  a reward on, so it gets no process credit (``rl.advantages`` gives it advantage 0); the outcome
  (or format) term is what punishes an empty completion.

``None`` (or NaN) means "could not grade this sample": the caller masks it (``rl.advantages``
treats None/NaN as invalid), never a NaN loss. ``metrics(rollouts, values)`` gives what to log,
at least ``<name>/mean`` and ``<name>/ungraded`` (the count of None/NaN samples).

Graders: ``OutcomeReward`` (the world's grade), ``FormatReward`` (a well-formed solution),
``ProcessReward`` (a ``Scorer``'s per-step scores, e.g. a trained PRM), ``OracleProcessReward``
(the world's exact step labels), ``RankedListReward`` (partial credit by the rank of the reference
in a ranked answer list, as OpenAI's reinforcement fine-tuning graders) and ``FunctionReward``
(any function with TRL's reward-function signature).

**An unfinished solution is a failure** for the process graders (``unfinished=0.0``): a solution
without an answer step (cut off, or stopped before answering) has its LAST step's reward
replaced by ``unfinished``; otherwise a policy learns to stop after one good-looking step
(``shared/notes/rl-calibration.md``). ``unfinished=None`` keeps the plain scores.

``make_rewards`` builds the graders of a ``reward`` config (named entries with ``_target_``,
``weight`` and plain knobs; the world and the PRM scorer are injected by the caller);
``as_trl_reward`` wraps a grader as a TRL ``GRPOTrainer`` reward function.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol, runtime_checkable

from prm.grading import grade_answer
from prm.io import plain_mapping
from prm.scoring.base import Scorer, aggregate, check_aggregation
from prm.steps import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    REASONING_CLOSE,
    REASONING_OPEN,
    ParsedSolution,
    StepFormat,
    split_solution,
)
from prm.worlds import Task, World

Kind = Literal["outcome", "process"]
OutcomeValues = list[float | None]
ProcessValues = list[list[float] | None]
Values = OutcomeValues | ProcessValues


@dataclass(frozen=True)
class Rollout:
    """One sampled completion to grade: its task, the text after the policy prompt, the step format."""

    task: Task
    completion: str
    fmt: StepFormat

    @cached_property
    def parsed(self) -> ParsedSolution:
        return split_solution(self.completion, self.fmt)

    @cached_property
    def steps(self) -> list[str]:
        """``prm.steps.solution_steps(completion, fmt)``: the reasoning steps, then the answer step if any."""
        return self.parsed.labelled_steps

    @property
    def has_answer_step(self) -> bool:
        """Whether the last step is the answer step (False: cut off or stopped before answering)."""
        return self.parsed.answer_step is not None


@runtime_checkable
class Reward(Protocol):
    """A grader of rollouts (see the module docstring)."""

    name: str
    kind: Kind

    def __call__(self, rollouts: Sequence[Rollout]) -> Values: ...

    def metrics(self, rollouts: Sequence[Rollout], values: Sequence[Any]) -> dict[str, float]: ...


def _graded(value: Any) -> bool:
    """Whether a value (a float, or a list of step floats) was graded: not None and no NaN."""
    if value is None:
        return False
    if isinstance(value, Sequence):
        return all(v is not None and not math.isnan(float(v)) for v in value)
    return not math.isnan(float(value))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def reward_metrics(name: str, kind: Kind, rollouts: Sequence[Rollout], values: Sequence[Any]) -> dict[str, float]:
    """What a grader logs: ``<name>/mean`` over graded samples and ``<name>/ungraded`` (a count).

    Process rewards also log ``<name>/min`` (the mean over samples of their weakest step reward),
    ``<name>/steps`` (the mean number of steps) and ``<name>/unfinished`` (the fraction without an
    answer step); their ``mean`` is the mean over samples of the sample's mean step reward.
    Samples without steps count in neither ``mean`` nor ``min``; a mean over nothing is NaN.
    """
    if len(values) != len(rollouts):
        raise ValueError(f"{name}: {len(values)} values for {len(rollouts)} rollouts")
    graded = [v for v in values if _graded(v)]
    out = {f"{name}/ungraded": float(len(values) - len(graded))}
    if kind == "outcome":
        return {f"{name}/mean": _mean([float(v) for v in graded]), **out}
    scored = [[float(x) for x in v] for v in graded if len(v)]
    return {
        f"{name}/mean": _mean([sum(v) / len(v) for v in scored]),
        f"{name}/min": _mean([min(v) for v in scored]),
        f"{name}/steps": _mean([len(r.steps) for r in rollouts]),
        f"{name}/unfinished": _mean([0.0 if r.has_answer_step else 1.0 for r in rollouts]),
        **out,
    }


class RewardBase:
    """Shared parts of the graders: a name, a kind and ``reward_metrics``."""

    name: str
    kind: Kind = "outcome"

    def __call__(self, rollouts: Sequence[Rollout]) -> Values:
        raise NotImplementedError

    def metrics(self, rollouts: Sequence[Rollout], values: Sequence[Any]) -> dict[str, float]:
        return reward_metrics(self.name, self.kind, rollouts, values)


def _unfinished_rule(rollout: Rollout, values: list[float], unfinished: float | None) -> list[float]:
    """A solution without an answer step gets ``unfinished`` as its last step's reward (None: unchanged)."""
    if unfinished is not None and values and not rollout.has_answer_step:
        values[-1] = float(unfinished)
    return values


class OutcomeReward(RewardBase):
    """1.0 when ``world.grade`` says the solution's answer is right, else 0.0."""

    kind: Kind = "outcome"

    def __init__(self, world: World, name: str = "outcome") -> None:
        self.world = world
        self.name = name

    def __call__(self, rollouts: Sequence[Rollout]) -> OutcomeValues:
        return [1.0 if self.world.grade(r.task, r.completion) else 0.0 for r in rollouts]


_TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
_REASONING_RE = re.compile(rf"\s*{re.escape(REASONING_OPEN)}(.*?){re.escape(REASONING_CLOSE)}", re.DOTALL)
_ANSWER_RE = re.compile(rf"\s*{re.escape(ANSWER_OPEN)}(.*?){re.escape(ANSWER_CLOSE)}\s*", re.DOTALL)


def _has_tag(text: str) -> bool:
    return any(tag in text for tag in _TAGS)


class FormatReward(RewardBase):
    """1.0 for a well-formed solution, ``partial`` for a half-formed one, else 0.0.

    ``fmt_style``: ``tagged`` or ``plain``; None (default) uses each rollout's own format.

    - tagged: (whitespace) ``<reasoning>`` at least one non-blank step ``</reasoning>``
      (whitespace) ``<answer>`` a non-empty answer ``</answer>``, then only whitespace; no tag
      inside the reasoning or the answer. ``partial``: the reasoning block is well-formed but the
      answer is missing, empty, malformed or followed by text.
    - plain: an answer line (the format's marker, e.g. ``# Answer: 2``) with a non-empty answer.
      ``partial``: an answer line with an empty answer.
    """

    kind: Kind = "outcome"

    def __init__(self, fmt_style: Literal["tagged", "plain"] | None = None, partial: float = 0.0,
                 name: str = "format") -> None:
        if fmt_style not in (None, "tagged", "plain"):
            raise ValueError(f"fmt_style must be tagged, plain or null (got {fmt_style!r})")
        self.fmt_style = fmt_style
        self.partial = float(partial)
        self.name = name

    def __call__(self, rollouts: Sequence[Rollout]) -> OutcomeValues:
        return [self.grade(r.completion, r.fmt) for r in rollouts]

    def grade(self, text: str, fmt: StepFormat) -> float:
        """The format credit of one completion written in ``fmt`` (style overridden by ``fmt_style``)."""
        if (self.fmt_style or fmt.style) == "plain":
            parsed = split_solution(text, dataclasses.replace(fmt, style="plain"))
            return 1.0 if parsed.answer else self.partial if parsed.answer_step is not None else 0.0
        reasoning = _REASONING_RE.match(text)
        if reasoning is None or _has_tag(reasoning[1]) or not any(s.strip() for s in reasoning[1].split(fmt.separator)):
            return 0.0
        answer = _ANSWER_RE.fullmatch(text, reasoning.end())
        if answer is None or _has_tag(answer[1]) or not answer[1].strip():
            return self.partial
        return 1.0


class ProcessReward(RewardBase):
    """A scorer's per-step scores (a trained PRM: P(on track) per step), with the unfinished rule.

    One batched ``scorer.score`` call per batch, rollouts grouped by problem (``task.prompt``).
    The scorer reads TEXT (the problem and the steps), so a PRM with another tokenizer than the
    policy's works. ``unfinished``: see the module docstring (None: plain scores).
    """

    kind: Kind = "process"

    def __init__(self, scorer: Scorer, unfinished: float | None = 0.0, name: str = "process") -> None:
        self.scorer = scorer
        self.unfinished = None if unfinished is None else float(unfinished)
        self.name = name

    def __call__(self, rollouts: Sequence[Rollout]) -> ProcessValues:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rollouts):
            if r.steps:  # a rollout without steps has nothing to score
                groups.setdefault(r.task.prompt, []).append(i)
        values: list[list[float]] = [[] for _ in rollouts]
        if groups:
            scores = self.scorer.score(list(groups), [[rollouts[i].steps for i in idx] for idx in groups.values()])
            if len(scores) != len(groups):
                raise ValueError(f"{self.name}: the scorer returned {len(scores)} problems for {len(groups)}")
            for idx, rows in zip(groups.values(), scores):
                if len(rows) != len(idx):
                    raise ValueError(f"{self.name}: the scorer returned {len(rows)} candidates for {len(idx)}")
                for i, row in zip(idx, rows):
                    if len(row) != len(rollouts[i].steps):
                        raise ValueError(f"{self.name}: the scorer returned {len(row)} scores for "
                                         f"{len(rollouts[i].steps)} steps (rollout {i})")
                    values[i] = [float(v) for v in row]
        return [_unfinished_rule(r, v, self.unfinished) for r, v in zip(rollouts, values)]


class OracleProcessReward(RewardBase):
    """The world's exact step labels (``world.step_labels``), with the unfinished rule.

    Only worlds with exact labels (the arithmetic world); another is a ValueError here. A sample
    the world cannot label (``step_labels`` returns None) is ungraded (None).
    """

    kind: Kind = "process"

    def __init__(self, world: World, unfinished: float | None = 0.0, name: str = "oracle") -> None:
        if not world.exact_labels:
            raise ValueError(f"OracleProcessReward needs a world with exact step labels; the {world.name!r} world "
                             "has none (use data=arith, or ProcessReward with a trained PRM)")
        self.world = world
        self.unfinished = None if unfinished is None else float(unfinished)
        self.name = name

    def __call__(self, rollouts: Sequence[Rollout]) -> ProcessValues:
        out: ProcessValues = []
        for r in rollouts:
            labels = self.world.step_labels(r.task, r.steps)
            out.append(None if labels is None else _unfinished_rule(r, [float(x) for x in labels], self.unfinished))
        return out


class RankedListReward(RewardBase):
    """Partial credit for a ranked list of answers, by the rank of the reference answer in it.

    The answer (``world.answer``, or the answer tag/line without a world) is split into items on
    ``separator`` and on newlines (blank items dropped). ``r`` is the 1-based rank of the first
    item equivalent to ``task.answer`` (``prm.grading.grade_answer``); the credit is by
    ``schedule``: ``reciprocal`` = 1/r, ``linear`` = max(0, 1 - (r-1)/k), or an explicit list
    (``schedule[r-1]``, 0 past its end); 0 when the reference is absent or there is no answer.
    Metrics: ``top1``, ``top<k>`` and ``top_max`` (anywhere in the list), fractions of samples.
    """

    kind: Kind = "outcome"

    def __init__(self, world: World | None = None, schedule: str | Sequence[float] = "reciprocal", k: int = 3,
                 separator: str = ",", name: str = "ranked_list") -> None:
        if isinstance(schedule, str) and schedule not in ("reciprocal", "linear"):
            raise ValueError(f"schedule must be reciprocal, linear or a list of credits (got {schedule!r})")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1 (got {k})")
        if not separator:
            raise ValueError("the item separator must not be empty")
        self.world = world
        self.schedule: str | list[float] = schedule if isinstance(schedule, str) else [float(c) for c in schedule]
        self.k = int(k)
        self.separator = separator
        self.name = name

    def items(self, rollout: Rollout) -> list[str]:
        """The completion's answer as a ranked list of items."""
        if self.world is not None:
            answer = self.world.answer(rollout.task, rollout.completion)
        else:
            answer = rollout.parsed.answer
        if not answer:
            return []
        parts = re.split(f"{re.escape(self.separator)}|\n", answer)
        return [p.strip() for p in parts if p.strip()]

    def rank(self, rollout: Rollout) -> int | None:
        """The 1-based rank of the reference answer in the list (None: absent)."""
        for r, item in enumerate(self.items(rollout), start=1):
            if grade_answer(item, rollout.task.answer):
                return r
        return None

    def credit(self, rank: int | None) -> float:
        if rank is None:
            return 0.0
        if self.schedule == "reciprocal":
            return 1.0 / rank
        if self.schedule == "linear":
            return max(0.0, 1.0 - (rank - 1) / self.k)
        return self.schedule[rank - 1] if rank <= len(self.schedule) else 0.0

    def __call__(self, rollouts: Sequence[Rollout]) -> OutcomeValues:
        return [self.credit(self.rank(r)) for r in rollouts]

    def metrics(self, rollouts: Sequence[Rollout], values: Sequence[Any]) -> dict[str, float]:
        ranks = [self.rank(r) for r in rollouts]  # recomputed: values alone do not give ranks
        return {
            **super().metrics(rollouts, values),
            f"{self.name}/top1": _mean([float(r == 1) for r in ranks]),
            f"{self.name}/top{self.k}": _mean([float(r is not None and r <= self.k) for r in ranks]),
            f"{self.name}/top_max": _mean([float(r is not None) for r in ranks]),
        }


def import_object(path: str) -> Any:
    """The object a dotted path names: ``pkg.module:attr`` or ``pkg.module.attr``."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ImportError(f"{path!r} is not a dotted path (pkg.module:name or pkg.module.name)")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class FunctionReward(RewardBase):
    """A user function with TRL's reward-function signature as a grader.

    ``function(prompts=[...], completions=[...], answer=[...], task_id=[...], steps=[...])``
    returns one value per completion (None: ungraded): a float for ``kind="outcome"``, a list of
    floats aligned with the rollout's ``steps`` for ``kind="process"``. ``function`` may be a
    callable or a dotted path (``pkg.module:fn`` or ``pkg.module.fn``). Like TRL's own reward
    functions, it should accept ``**kwargs`` for columns it does not use.
    """

    def __init__(self, function: str | Callable[..., Sequence[Any]], kind: Kind = "outcome",
                 name: str | None = None) -> None:
        if kind not in ("outcome", "process"):
            raise ValueError(f"kind must be outcome or process (got {kind!r})")
        self.label = function if isinstance(function, str) else getattr(function, "__qualname__", repr(function))
        self.function = import_object(function) if isinstance(function, str) else function
        if not callable(self.function):
            raise TypeError(f"reward function {self.label!r} is not callable")
        self.kind = kind
        self.name = name or getattr(self.function, "__name__", "function")

    def __call__(self, rollouts: Sequence[Rollout]) -> Values:
        out = self.function(prompts=[r.task.prompt for r in rollouts], completions=[r.completion for r in rollouts],
                            answer=[r.task.answer for r in rollouts], task_id=[r.task.id for r in rollouts],
                            steps=[list(r.steps) for r in rollouts])
        if isinstance(out, str) or not hasattr(out, "__len__") or len(out) != len(rollouts):
            got = f"{len(out)} values" if hasattr(out, "__len__") and not isinstance(out, str) else repr(out)[:80]
            raise ValueError(f"reward function {self.label!r} returned {got} for {len(rollouts)} completions")
        return [self._value(v, r, i) for i, (v, r) in enumerate(zip(out, rollouts))]

    def _value(self, value: Any, rollout: Rollout, i: int) -> Any:
        if value is None:
            return None
        try:
            if self.kind == "outcome":
                return float(value)
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            raise TypeError(f"reward function {self.label!r} returned {value!r} for completion {i}: expected "
                            f"{'a number' if self.kind == 'outcome' else 'a list of numbers'} or None") from None
        if len(values) != len(rollout.steps):
            raise ValueError(f"reward function {self.label!r} returned {len(values)} step values for completion {i}, "
                             f"which has {len(rollout.steps)} steps")
        return values


GRADERS: dict[str, type[RewardBase]] = {
    "outcome": OutcomeReward,
    "format": FormatReward,
    "process": ProcessReward,
    "oracle": OracleProcessReward,
    "ranked_list": RankedListReward,
    "function": FunctionReward,
}
"""Graders by short name; a ``_target_`` may be a short name, a class name here, or a dotted path."""


def _known() -> str:
    return ", ".join(f"{k} ({cls.__module__}.{cls.__name__})" for k, cls in GRADERS.items())


def _grader_class(entry: str, target: Any) -> type:
    """The class a reward entry's ``_target_`` names; a clear error naming the entry otherwise."""
    by_class = {cls.__name__: cls for cls in GRADERS.values()}
    if isinstance(target, str) and (target in GRADERS or target in by_class):
        return GRADERS.get(target) or by_class[target]
    if isinstance(target, str) and ("." in target or ":" in target):
        try:
            obj = import_object(target)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward {entry!r}: cannot import _target_ {target!r} ({e}); "
                             f"known graders: {_known()}") from None
        if not inspect.isclass(obj):
            raise ValueError(f"reward {entry!r}: _target_ {target!r} is not a grader class (a TRL-style function goes "
                             f"through _target_: rl.rewards.FunctionReward with function: {target})")
        return obj
    raise ValueError(f"reward {entry!r}: unknown grader {target!r}; known graders: {_known()}")


def make_rewards(configs: Mapping[str, Any], *, world: World | None = None,
                 scorer: Scorer | Callable[[], Scorer] | None = None) -> list[tuple[Reward, float]]:
    """The graders of a ``reward`` config and their weights, in config order.

    ``configs``: ``{name: {_target_: ..., weight: 1.0, knob: value, ...}}`` (a ``DictConfig`` or
    a dict). ``_target_`` is a short name (``outcome``, ``format``, ``process``, ``oracle``,
    ``ranked_list``, ``function``), a class name from this module or a dotted path to a grader
    class; without ``_target_`` the entry's name is used. ``weight`` defaults to 1.0. An entry
    set to null is skipped (``reward.format=null`` drops a grader). Each grader's ``name`` is its
    entry's name. ``world`` and ``scorer`` are passed to graders whose constructor takes them
    (unless the entry sets them); ``scorer`` may be a zero-argument factory, called once, only
    if a grader needs it (so no PRM is loaded for outcome-only RL).
    """
    entries = plain_mapping(configs)
    built: list[Any] = []  # the scorer (built once by a factory)

    def injected(key: str, entry: str, cls: type) -> Any:
        value: Any = world
        if key == "scorer":
            if not built and scorer is not None:
                built.append(scorer() if callable(scorer) and not hasattr(scorer, "score") else scorer)
            value = built[0] if built else None
        if value is None:
            raise ValueError(f"reward {entry!r} ({cls.__name__}) needs a {key}: pass make_rewards(..., {key}=...)")
        return value

    out: list[tuple[Reward, float]] = []
    for entry, spec in entries.items():
        if spec is None:
            continue
        if not isinstance(spec, Mapping):
            raise TypeError(f"reward {entry!r}: expected a mapping with _target_ and weight (got {spec!r})")
        knobs = dict(spec)
        cls = _grader_class(entry, knobs.pop("_target_", entry))
        try:
            weight = float(knobs.pop("weight", 1.0))
        except (TypeError, ValueError):
            raise ValueError(f"reward {entry!r}: weight must be a number (got {spec.get('weight')!r})") from None
        params = inspect.signature(cls).parameters
        for key, given in (("world", world), ("scorer", scorer)):
            required = key in params and params[key].default is inspect.Parameter.empty
            if key in params and key not in knobs and (required or given is not None):
                knobs[key] = injected(key, entry, cls)
        if "name" in params:
            knobs.setdefault("name", entry)
        try:
            reward = cls(**knobs)
        except (TypeError, ValueError) as e:
            accepted = ", ".join(p for p in params if p not in ("world", "scorer", "name"))
            raise ValueError(f"reward {entry!r} ({cls.__name__}): {e} (knobs: {accepted}, weight)") from e
        if not isinstance(reward, Reward) or reward.kind not in ("outcome", "process"):
            raise ValueError(f"reward {entry!r}: {cls.__name__} is not a grader (needs name, kind outcome|process, "
                             "__call__ and metrics)")
        out.append((reward, weight))
    if not out:
        raise ValueError(f"no reward configured (give at least one grader; known graders: {_known()})")
    return out


def _text(value: Any) -> str:
    """A TRL prompt or completion as text: a string, or a conversation's last message content."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[-1], Mapping):
        return str(value[-1].get("content", ""))
    raise TypeError(f"expected a string or a list of chat messages, got {type(value).__name__}")


def as_trl_reward(reward: Reward, world: World, aggregation: str = "min") -> Callable[..., list[float | None]]:
    """``reward`` as a TRL ``GRPOTrainer`` reward function.

    TRL calls ``fn(prompts=[...], completions=[...], completion_ids=[...], **dataset_columns)``;
    prompts are the tasks' prompts (``world.task`` looks them up; for a conversation, the last
    message's content), completions the sampled texts. Process rewards become one value per
    completion with ``prm.scoring.base.aggregate(steps, aggregation)`` (no steps: 0.0); None
    (ungraded, or a NaN step) stays None, which TRL ignores. The function's ``__name__`` is the
    grader's name (TRL logs rewards under it).
    """
    check_aggregation(aggregation)

    def reward_fn(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rollouts = [Rollout(world.task(_text(p)), _text(c), world.fmt) for p, c in zip(prompts, completions)]
        values = reward(rollouts)
        if reward.kind == "outcome":
            return [float(v) if _graded(v) else None for v in values]
        return [aggregate(v, aggregation) if _graded(v) else None for v in values]

    reward_fn.__name__ = reward.name
    return reward_fn


__all__ = [
    "GRADERS", "FormatReward", "FunctionReward", "Kind", "OracleProcessReward", "OutcomeReward", "OutcomeValues",
    "ProcessReward", "ProcessValues", "RankedListReward", "Reward", "RewardBase", "Rollout", "Values", "as_trl_reward",
    "import_object", "make_rewards", "reward_metrics",
]
