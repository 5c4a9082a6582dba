"""Baseline scorers: the exact arithmetic oracle, outcome-only, random, and the policy's own likelihood.

All implement the ``Scorer`` protocol; their incremental ``extend`` re-scores the child's whole
step list (``ScorerBase.extend``), which costs nothing for the first three and one forward pass
per child for the likelihood baseline (counted honestly in ``stats.tokens_processed``).

- ``OracleScorer``: the world's exact step labels (``World.step_labels``; the arithmetic world:
  a step scores 1.0 iff it and every earlier step are exactly right, the answer step iff every
  operation was done right and the answer is the result; every step after the answer 0.0). A
  world without exact labels is refused.
- ``OutcomeScorer``: only the final answer matters. A candidate with an answer step gives EVERY
  step the answer's correctness (1.0 / 0.0, ``prm.grading.grade_answer`` against the reference;
  an answer step without an answer is 0.0); an unfinished one gives every step 0.5 (unknown).
  Reference answers come from ``answers`` (problem text -> answer), else from the world.
- ``RandomScorer``: a uniform [0, 1) score per step, a deterministic hash of (seed, problem,
  steps up to it), so reruns and ties reproduce and a step's score never depends on batching.
- ``LikelihoodScorer``: the policy's own confidence as a reranker. The policy reads its own text
  (``policy_prompt(problem)`` then each step followed by the separator, as it generated them);
  a step's score is exp(mean log-prob of the tokens overlapping the step and its separator),
  the geometric-mean token probability, in (0, 1]. One forward pass per candidate (batched).
  Steps past ``max_length`` get the last score that fits (0.5 when none does).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prm.grading import grade_answer
from prm.models.loading import load_causal_lm, model_and_tokenizer
from prm.scoring.base import ScorerBase, Timer, check_score_args, eval_inference
from prm.steps import StepFormat, is_answer_step, policy_prompt, solution_prefix, split_solution
from prm.worlds import Task, World, make_world


def _fmt(style: str, separator: str) -> StepFormat:
    return StepFormat(style=style, separator=separator, answer_joiner=": ")  # type: ignore[arg-type]


def _world(world: World | Mapping[str, Any] | None) -> World:
    """A world object, or one built from a ``data`` config mapping (default: the arithmetic world)."""
    if world is None:
        return make_world({"source": "arith"})
    if isinstance(world, Mapping):
        return make_world(world)
    return world


class _Tasks:
    """Looks each problem text up in the world once."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._cache: dict[str, Task] = {}

    def __call__(self, prompt: str) -> Task:
        if prompt not in self._cache:
            self._cache[prompt] = self.world.task(prompt)
        return self._cache[prompt]


class OracleScorer(ScorerBase):
    """The world's exact step labels as scores (see the module docstring); no model, no tokens.

    ``world``: a ``World`` or a ``data`` config mapping (default: the arithmetic world). A world
    without exact labels is a clear error.
    """

    def __init__(self, world: World | Mapping[str, Any] | None = None, aggregation: str = "min") -> None:
        super().__init__(aggregation)
        self.world = _world(world)
        if not self.world.exact_labels:
            raise ValueError(f"the oracle scorer needs a world with exact step labels; the {self.world.name!r} "
                             "world has none (use data=arith, or a trained PRM / the outcome scorer)")
        self.fmt = self.world.fmt
        self.tasks = _Tasks(self.world)

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        check_score_args(problems, candidates)
        with Timer(self.stats):
            out = []
            for p, cands in zip(problems, candidates):
                task = self.tasks(p)
                out.append([list(self.world.step_labels(task, steps) or []) for steps in cands])
            self.stats.steps_scored += sum(len(s) for c in out for s in c)
        return out


class OutcomeScorer(ScorerBase):
    """Outcome-only scores: every step gets the final answer's correctness, 0.5 while unfinished.

    References: ``answers`` (problem text -> answer) when given, else the world's task.
    """

    def __init__(self, answers: Mapping[str, str] | None = None, world: World | Mapping[str, Any] | None = None,
                 unfinished_score: float = 0.5, aggregation: str = "last") -> None:
        super().__init__(aggregation)
        self.answers = {k: str(v) for k, v in (answers or {}).items()}
        self.world = _world(world)
        self.fmt = self.world.fmt
        self.unfinished_score = float(unfinished_score)
        self.tasks = _Tasks(self.world)

    def reference(self, problem: str) -> str:
        for key in (problem, problem.strip()):
            if key in self.answers:
                return self.answers[key]
        try:
            return self.tasks(problem).answer
        except KeyError:
            raise KeyError(f"no reference answer for problem {problem[:80]!r}: pass answers={{problem: answer}}") from None

    def _outcome(self, problem: str, steps: Sequence[str]) -> float:
        for step in steps:
            if is_answer_step(step, self.fmt):
                answer = split_solution(step, self.fmt).answer
                if not answer:
                    return 0.0  # an answer step without an answer
                return 1.0 if grade_answer(answer, self.reference(problem)) else 0.0
        return self.unfinished_score

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        check_score_args(problems, candidates)
        with Timer(self.stats):
            out = [[[self._outcome(p, steps)] * len(steps) for steps in cands] for p, cands in zip(problems, candidates)]
            self.stats.steps_scored += sum(len(s) for c in out for s in c)
        return out


class RandomScorer(ScorerBase):
    """Uniform scores from a hash of (seed, problem, steps so far): reproducible, batching-independent."""

    def __init__(self, seed: int = 0, aggregation: str = "min") -> None:
        super().__init__(aggregation)
        self.seed = int(seed)

    def _value(self, problem: str, steps: Sequence[str]) -> float:
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self.seed}\x1e{problem}".encode())
        for s in steps:
            h.update(b"\x1f" + s.encode())
        return int.from_bytes(h.digest(), "big") / 2.0**64

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        check_score_args(problems, candidates)
        with Timer(self.stats):
            out = [[[self._value(p, steps[: k + 1]) for k in range(len(steps))] for steps in cands]
                   for p, cands in zip(problems, candidates)]
            self.stats.steps_scored += sum(len(s) for c in out for s in c)
        return out


class LikelihoodScorer(ScorerBase):
    """The policy's geometric-mean token probability per step (see the module docstring).

    ``model_or_path``: a loaded causal LM (with ``tokenizer``) or a local model directory.
    """

    def __init__(
        self,
        model_or_path: PreTrainedModel | str | Path | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        style: str = "plain",
        separator: str = "\n",
        aggregation: str = "mean",
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        truncated_score: float = 0.5,
    ) -> None:
        super().__init__(aggregation)
        if model_or_path is None:
            raise ValueError("LikelihoodScorer needs the policy: a causal LM or its model directory (got None)")
        model, tokenizer = model_and_tokenizer(
            "LikelihoodScorer", model_or_path, tokenizer, dtype, lambda path, dt: load_causal_lm(path, dtype=dt))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.fmt = _fmt(style, separator)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.truncated_score = float(truncated_score)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_length = max_length if max_length is not None else getattr(cfg, "max_position_embeddings", None)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def encode(self, problem: str, steps: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """Token ids of the policy's text and, per step, the tokens (>= 1) overlapping it and its separator."""
        text = policy_prompt(problem, self.fmt) + solution_prefix(steps, self.fmt)
        head = text[: len(text) - len("".join(s + self.fmt.separator for s in steps))]  # up to step 1
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        limit = len(ids) if self.max_length is None else min(len(ids), self.max_length)
        per_step, at = [], len(head)
        for step in steps:
            lo, hi = at, at + len(step) + len(self.fmt.separator)
            per_step.append([t for t in range(1, limit) if offsets[t][1] > offsets[t][0]
                             and offsets[t][0] < hi and offsets[t][1] > lo])
            at = hi
        return ids[:limit], per_step

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        check_score_args(problems, candidates)
        out: list[list[list[float]]] = [[[] for _ in cands] for cands in candidates]
        with Timer(self.stats), self._inference():
            rows = [(i, j, *self.encode(p, list(steps)))
                    for i, (p, cands) in enumerate(zip(problems, candidates)) for j, steps in enumerate(cands) if steps]
            order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))
            for start in range(0, len(order), self.batch_size):
                chunk = [rows[r] for r in order[start : start + self.batch_size]]
                logps = self._token_logprobs([c[2] for c in chunk])
                for (i, j, _, per_step), lp in zip(chunk, logps):
                    vals: list[float] = []
                    for toks in per_step:
                        if not toks:  # past max_length
                            vals.append(vals[-1] if vals else self.truncated_score)
                            self.stats.truncated_steps += 1
                        else:
                            vals.append(float(lp[toks].mean().exp()))
                    out[i][j] = vals
                    self.stats.steps_scored += len(vals)
        return out

    def _token_logprobs(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence, the log-prob of each token given the ones before it (index 0: 0.0)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        real = sum(len(s) for s in seqs)
        self.stats.tokens_processed += real
        self.stats.padding_tokens += ids.numel() - real
        ids_d = ids.to(self.device)
        logits = self.model(input_ids=ids_d, attention_mask=mask.to(self.device),
                            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(self.device)).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids_d[:, 1:, None]).squeeze(-1)
        lp = torch.cat([lp.new_zeros((len(seqs), 1)), lp], dim=1).cpu()
        return [lp[r, : len(s)] for r, s in enumerate(seqs)]

    def _inference(self) -> contextlib.AbstractContextManager[None]:
        return eval_inference(self.model)


__all__ = ["LikelihoodScorer", "OracleScorer", "OutcomeScorer", "RandomScorer"]
