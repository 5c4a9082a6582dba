"""Baseline scorers: the exact arithmetic oracle, outcome-only, random, and the policy's own likelihood.

All implement the ``Scorer`` protocol; their incremental ``extend`` re-scores the child's whole
step list (``ScorerBase.extend``), which costs nothing for the first three and one forward pass
per child for the likelihood baseline (counted honestly in ``stats.tokens_processed``).

- ``OracleScorer``: exact labels in the arithmetic world. Problems are arithmetic prompts
  (``"Q: 7+5*3-4"``, surrounding whitespace ignored). An arithmetic step scores 1.0 iff it and every
  earlier step are exactly right (``prm.data.arith`` semantics). An answer step (``# Answer: 2``,
  or ``<answer>2</answer>`` / ``</reasoning>`` in the tagged format) scores 1.0 iff every
  earlier step is right, every operation was done, and the answer (if it has one) is the
  problem's; every step after the answer scores 0.0.
- ``OutcomeScorer``: only the final answer matters. A finished candidate (one with an answer
  step) gives EVERY step the answer's correctness (1.0 / 0.0, ``prm.grading.grade_answer``
  against the reference); an unfinished one gives every step 0.5 (unknown). Reference answers
  come from ``answers`` (problem text -> answer), else, for arithmetic prompts, from the world.
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

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prm.data.arith import Problem, parse_int, parse_step
from prm.grading import grade_answer
from prm.models.loading import load_causal_lm, model_and_tokenizer
from prm.scoring.base import ScorerBase, Timer, check_score_args, eval_inference
from prm.steps import REASONING_CLOSE, StepFormat, is_answer_step, policy_prompt, solution_prefix, split_solution


def _fmt(style: str, separator: str) -> StepFormat:
    return StepFormat(style=style, separator=separator, answer_joiner=": ")  # type: ignore[arg-type]


class _ArithProblems:
    """Parses arithmetic prompts once each."""

    def __init__(self, modulus: int | None) -> None:
        self.modulus = modulus
        self._cache: dict[str, Problem] = {}

    def __call__(self, prompt: str) -> Problem:
        if prompt not in self._cache:
            self._cache[prompt] = Problem.from_prompt(prompt.strip(), modulus=self.modulus)
        return self._cache[prompt]


def _answer_of(step: str, fmt: StepFormat) -> str | None:
    """The answer written in an answer step (None for a bare ``</reasoning>``)."""
    if fmt.style == "tagged" and step.strip().startswith(REASONING_CLOSE) and "<answer>" not in step:
        return None
    parsed = split_solution(step, fmt)
    return parsed.answer if parsed.answer is not None else ""


def oracle_labels(problem: Problem, steps: Sequence[str], fmt: StepFormat) -> list[float]:
    """Exact per-step labels of a step list (see ``OracleScorer``)."""
    values, ops = problem.values, problem.ops
    labels: list[float] = []
    on_track, done, n_arith = True, False, 0
    for step in steps:
        if done or not on_track:
            on_track = False
        elif is_answer_step(step, fmt):
            answer = _answer_of(step, fmt)
            on_track = n_arith == len(ops) and (answer is None or parse_int(answer) == problem.answer)
            done = answer is not None
        else:
            k = n_arith
            on_track = k < len(ops) and parse_step(step) == (values[k], ops[k][0], ops[k][1], values[k + 1])
            n_arith += 1
        labels.append(1.0 if on_track else 0.0)
    return labels


class OracleScorer(ScorerBase):
    """Exact step labels in the arithmetic world (see the module docstring); no model, no tokens."""

    def __init__(self, modulus: int | None = 10, style: str = "plain", separator: str = "\n",
                 aggregation: str = "min") -> None:
        super().__init__(aggregation)
        self.fmt = _fmt(style, separator)
        self.problems = _ArithProblems(modulus)

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        check_score_args(problems, candidates)
        with Timer(self.stats):
            out = [[oracle_labels(self.problems(p), steps, self.fmt) for steps in cands]
                   for p, cands in zip(problems, candidates)]
            self.stats.steps_scored += sum(len(s) for c in out for s in c)
        return out


class OutcomeScorer(ScorerBase):
    """Outcome-only scores: every step gets the final answer's correctness, 0.5 while unfinished."""

    def __init__(self, answers: Mapping[str, str] | None = None, modulus: int | None = 10, style: str = "plain",
                 separator: str = "\n", unfinished_score: float = 0.5, aggregation: str = "last") -> None:
        super().__init__(aggregation)
        self.answers = {k: str(v) for k, v in (answers or {}).items()}
        self.fmt = _fmt(style, separator)
        self.unfinished_score = float(unfinished_score)
        self.problems = _ArithProblems(modulus)

    def reference(self, problem: str) -> str:
        for key in (problem, problem.strip()):
            if key in self.answers:
                return self.answers[key]
        try:
            return str(self.problems(problem).answer)
        except ValueError:
            raise KeyError(f"no reference answer for problem {problem[:80]!r}: pass answers={{problem: answer}}") from None

    def _outcome(self, problem: str, steps: Sequence[str]) -> float:
        for step in steps:
            if is_answer_step(step, self.fmt):
                answer = _answer_of(step, self.fmt)
                if answer is not None:
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


__all__ = ["LikelihoodScorer", "OracleScorer", "OutcomeScorer", "RandomScorer", "oracle_labels"]
