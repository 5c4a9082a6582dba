"""Compute accounting for test-time search: tokens per problem and in total, and a FLOPs estimate.

What a search run counts (``Compute``), per problem and summed over problems:

- ``prompt_tokens``: policy prompt tokens sent. Every generate call counts each of its prompts
  once, whatever ``n`` (``Generation.prompt_tokens``), so a beam expanded M times in one call
  costs its prompt once; a prompt sent again in a later call (the next round, a lookahead
  rollout, an answer completion) is counted again. This is the prefill an uncached backend does,
  the same for every backend and setting.
- ``cached_prompt_tokens``: the part of ``prompt_tokens`` the backend served from its prefix cache
  (``Generation.cached_prompt_tokens``: the HF backend's ``reuse_cache``, vLLM's prefix caching)
  instead of running it; ``prefilled_tokens = prompt_tokens - cached_prompt_tokens`` is what was
  really prefilled (in ``as_dict`` too). With the cache, step-by-step search prefills about one
  token per continued candidate and round instead of its whole text.
- ``generated_tokens``: policy tokens sampled, for every sample the search drew, kept or pruned:
  expansions, answer-line completions and lookahead rollouts.
- ``rollout_tokens``: the part of ``generated_tokens`` spent on lookahead rollouts.
- ``prm_tokens``: tokens the scorer ran through its model (``ScorerStats.tokens_processed``
  deltas; 0 for the oracle and random scorers). Scorer calls batch several problems together, so
  each call's delta is apportioned to the problems of its rows in proportion to the characters
  each row adds (the new step plus the separator, the only text an incremental PRM runs), with
  integer shares that sum exactly to the delta (largest remainder). For a character-level PRM
  (one token per character, as in the arithmetic world) this is exact per problem; for other
  tokenizers it is exact in total and a close estimate per problem. Root prompts are scored one
  problem at a time (``start``), so they are always exact.
- ``samples``: expansion samples drawn (the search budget: N per round for beam search).

FLOPs: ``2 * params * tokens`` per model (the forward-pass rule of thumb, attention ignored):
``2 * policy_params * (prompt_tokens + generated_tokens) + 2 * prm_params * prm_tokens``, i.e. the
uncached work (prefix caches are not subtracted, so the estimate does not depend on the backend or
its cache setting; ``prefilled_tokens`` says how much of the prompt work a run really did). Parameter
counts come from the loaded models (``count_params``: every parameter, embeddings included,
tied tensors once) or are passed in (``ModelSizes``, e.g. for vLLM, whose model is not reachable);
an unknown count that is needed gives ``None`` rather than a wrong number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from prm.models.loading import parameter_count


@dataclass
class Compute:
    """Tokens one problem (or a whole run) cost; see the module docstring for each count."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    rollout_tokens: int = 0
    prm_tokens: int = 0
    samples: int = 0
    cached_prompt_tokens: int = 0

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens really run through the policy (not served from a prefix cache)."""
        return self.prompt_tokens - self.cached_prompt_tokens

    @property
    def policy_tokens(self) -> int:
        """Tokens through an uncached policy: prompt plus generated (the FLOPs estimate's count)."""
        return self.prompt_tokens + self.generated_tokens

    def add(self, other: Compute) -> Compute:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, int]:
        """The counts, plus ``prefilled_tokens`` (``from_dict`` ignores it)."""
        return {**asdict(self), "prefilled_tokens": self.prefilled_tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Compute:
        return cls(**{f.name: int(d.get(f.name, 0)) for f in fields(cls)})


def total(computes: Iterable[Compute]) -> Compute:
    """The sum of several ``Compute``."""
    out = Compute()
    for c in computes:
        out.add(c)
    return out


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of the policy and of the scorer's model (None: unknown; 0: no model)."""

    policy_params: int | None = None
    prm_params: int | None = None

    def flops(self, c: Compute) -> float | None:
        """Estimated FLOPs of ``c`` (None when a model that ran tokens has no known size)."""
        parts = [(self.policy_params, c.policy_tokens), (self.prm_params, c.prm_tokens)]
        if any(params is None and tokens > 0 for params, tokens in parts):
            return None
        return float(sum(2 * (params or 0) * tokens for params, tokens in parts))

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


def count_params(component: Any) -> int | None:
    """Parameters of the torch model a generator or scorer holds (``.model``).

    0 when it holds no model at all (the oracle and random scorers); None when its model is not a
    torch module it exposes (vLLM's engine).
    """
    model = getattr(component, "model", None)
    if isinstance(model, torch.nn.Module):
        return parameter_count(model)
    if model is None and not hasattr(component, "llm"):
        return 0
    return None


def model_sizes(generator: Any, scorer: Any, policy_params: int | None = None,
                prm_params: int | None = None) -> ModelSizes:
    """Sizes for the FLOPs estimate: the counts passed in, else counted from the loaded models.

    A policy always has parameters, so a generator without a countable model gives None.
    """
    return ModelSizes(
        policy_params=policy_params if policy_params is not None else (count_params(generator) or None),
        prm_params=prm_params if prm_params is not None else count_params(scorer),
    )


def apportion(amount: int, weights: Sequence[float]) -> list[int]:
    """Split an integer ``amount`` in proportion to ``weights`` into integers summing exactly to it.

    Largest remainder: floors first, then one more unit to the largest fractional parts (ties: the
    earlier index). All-zero weights split evenly the same way.
    """
    if not weights:
        if amount:
            raise ValueError(f"cannot apportion {amount} over no weights")
        return []
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0 (got {list(weights)})")
    ws = [float(w) for w in weights] if sum(weights) > 0 else [1.0] * len(weights)
    whole = sum(ws)
    exact = [amount * w / whole for w in ws]
    shares = [int(x) for x in exact]
    left = amount - sum(shares)
    order = sorted(range(len(ws)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


__all__ = ["Compute", "ModelSizes", "apportion", "count_params", "model_sizes", "total"]
