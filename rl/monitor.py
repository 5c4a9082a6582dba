"""The RL monitor: true accuracy on held-out problems next to the PRM's opinion, to see reward hacking.

Every ``eval_every`` steps (the training loop's ``evaluate``) on the same held-out problems:

- ``greedy_accuracy`` and ``sampled_accuracy`` (``samples`` completions per problem at the
  rollout temperature), graded by the world, each with a 95% bootstrap interval over problems
  (``*_lo``, ``*_hi``);
- ``process_correct``: the share of sampled solutions whose every step is exactly right, the
  answer step included (worlds with exact labels only);
- ``prm_reward``: the PRM's mean aggregated score of the sampled solutions, and
  ``prm_predicted_accuracy`` (the same number read as P(correct)) with ``prm_gap`` =
  predicted - true sampled accuracy: a PRM being gamed shows a growing gap;
- ``format_rate`` (a finished solution with its answer), ``completion_tokens``, ``steps``.

Sampling uses a fixed seed, so two evaluations of the same weights give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prm.evaluation.metrics import bootstrap_ci
from prm.scoring.base import Scorer, aggregate
from prm.steps import policy_prompt, split_solution
from prm.worlds import Task, World, label_example
from search.generation.hf import HFGenerator


class Monitor:
    """Held-out evaluation of a policy during RL (see the module docstring); call it with the model."""

    def __init__(self, world: World, tasks: Sequence[Task], tokenizer: PreTrainedTokenizerBase,
                 scorer: Scorer | None = None, samples: int = 4, temperature: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0, batch_size: int = 512) -> None:
        if not tasks:
            raise ValueError("the monitor needs held-out problems (monitor.n_problems > 0)")
        self.world, self.tasks, self.tokenizer, self.scorer = world, list(tasks), tokenizer, scorer
        self.samples, self.temperature, self.max_new_tokens = samples, temperature, max_new_tokens
        self.seed, self.batch_size = seed, batch_size

    def __call__(self, model: PreTrainedModel) -> dict[str, float]:
        gen = HFGenerator(model, self.tokenizer, device=next(model.parameters()).device, batch_size=self.batch_size)
        fmt = self.world.fmt
        prompts = [policy_prompt(t.prompt, fmt) for t in self.tasks]
        with torch.no_grad():
            greedy = gen.generate(prompts, n=1, temperature=0.0, max_new_tokens=self.max_new_tokens)
            sampled = gen.generate(prompts, n=self.samples, temperature=self.temperature,
                                   max_new_tokens=self.max_new_tokens, seed=self.seed)
        greedy_ok = [float(self.world.grade(t, g[0].text)) for t, g in zip(self.tasks, greedy)]
        out: dict[str, float] = {"greedy_accuracy": _mean(greedy_ok)}
        pairs = [(t, s.text, s.generated_tokens) for t, ss in zip(self.tasks, sampled) for s in ss]
        examples = [label_example(self.world, t, text) for t, text, _ in pairs]
        correct = [bool(ex.extra["correct"]) for ex in examples]
        out["sampled_accuracy"] = _mean(correct)
        per_problem = [_mean(correct[i * self.samples : (i + 1) * self.samples]) for i in range(len(self.tasks))]
        for name, values in (("greedy_accuracy", greedy_ok), ("sampled_accuracy", per_problem)):
            out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_ci(values)  # 95% over problems
        if self.world.exact_labels:
            out["process_correct"] = _mean(bool(ex.extra.get("process_correct")) for ex in examples)
        out["format_rate"] = _mean(split_solution(text, fmt).finished for _, text, _ in pairs)
        out["completion_tokens"] = _mean(n for _, _, n in pairs)
        out["steps"] = _mean(len(ex.completions) for ex in examples)
        if self.scorer is not None:
            scores = self.scorer.score([t.prompt for t, _, _ in pairs], [[ex.completions] for ex in examples])
            agg = [aggregate(s[0], self.scorer.aggregation) if s[0] else 0.0 for s in scores]
            out["prm_reward"] = _mean(agg)
            out["prm_predicted_accuracy"] = out["prm_reward"]
            out["prm_gap"] = out["prm_reward"] - out["sampled_accuracy"]
        return out


def _mean(values: object) -> float:
    vals = [float(v) for v in values]  # type: ignore[attr-defined]
    return sum(vals) / len(vals) if vals else math.nan
