"""Policy-gradient losses on tensors: PPO's clipped surrogate, the k3 KL to a reference, log-probs, entropy.

Every per-token input is ``(B, T)`` with a bool ``mask`` (True = a completion token of a valid
sample). Masked positions may hold anything (padding log-probs of -inf, NaN advantages): they are
replaced before any arithmetic, so they reach neither the loss nor its gradient.

Aggregation of a per-token loss (``aggregate``):

- ``"token"``: the sum over all valid tokens of the batch / their number (DAPO's and Dr. GRPO's
  token-level mean: every token weighs the same, long answers weigh more).
- ``"sequence"``: the mean over each sequence's valid tokens, then the mean over the sequences
  that have any (the original GRPO's; every sequence weighs the same).

A sequence, or a batch, without valid tokens adds nothing and never gives NaN (an empty batch's
loss is 0, still differentiable).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token", "sequence"]


def aggregate(per_token: Tensor, mask: Tensor, aggregation: Aggregation = "token") -> Tensor:
    """A scalar from a (B, T) per-token loss over the True tokens of ``mask`` (module docstring)."""
    mask = mask.bool()
    values = torch.where(mask, per_token, 0.0)
    if aggregation == "token":
        return values.sum() / mask.sum().clamp(min=1)
    if aggregation == "sequence":
        count = mask.sum(-1)
        per_sequence = values.sum(-1) / count.clamp(min=1)
        return per_sequence.sum() / (count > 0).sum().clamp(min=1)
    raise ValueError(f"unknown aggregation {aggregation!r} (token or sequence)")


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: Aggregation = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate: ``-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)``.

    ``ratio = exp(logprobs - old_logprobs)``; ``old_logprobs`` and ``advantages`` are constants
    (detached). ``clip_high > clip_low`` is DAPO's clip-higher. Returns the aggregated loss and
    detached stats over the valid tokens: ``clip_fraction`` (tokens whose clipped term is the
    minimum, so they get no gradient: ratio above ``1 + clip_high`` with A > 0, or below
    ``1 - clip_low`` with A < 0) and ``ratio_mean`` (0 when no token is valid).
    """
    mask = mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), 0.0)
    adv = torch.where(mask, advantages.detach(), 0.0)
    ratio = torch.exp(log_ratio)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        clipped = ((ratio > 1 + clip_high) & (adv > 0)) | ((ratio < 1 - clip_low) & (adv < 0))
        stats = {
            "clip_fraction": aggregate(clipped.to(ratio.dtype), mask, "token"),
            "ratio_mean": aggregate(ratio, mask, "token"),
        }
    return loss, stats


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(policy || reference), per token: ``exp(d) - d - 1`` with
    ``d = ref_logprobs - logprobs``; unbiased for samples from the policy and >= 0 (clamped so
    rounding never makes it negative). The reference is detached."""
    d = ref_logprobs.detach() - logprobs
    return (torch.expm1(d) - d).clamp(min=0)


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, *, aggregation: Aggregation = "token"
) -> Tensor:
    """The k3 KL to a frozen reference, aggregated over the valid tokens like the policy loss."""
    mask = mask.bool()
    new = torch.where(mask, logprobs, 0.0)
    ref = torch.where(mask, ref_logprobs.detach(), 0.0)
    return aggregate(k3_kl(new, ref), mask, aggregation)


def _chunks(logits: Tensor, chunk_elements: int) -> tuple[Tensor, int]:
    """Logits as (N, V) rows, and how many rows a chunk of about ``chunk_elements`` values holds."""
    flat = logits.reshape(-1, logits.shape[-1])
    return flat, max(1, chunk_elements // max(1, flat.shape[1]))


def token_logprobs(logits: Tensor, token_ids: Tensor, *, chunk_elements: int = 1 << 24) -> Tensor:
    """``log_softmax(logits)[..., token_ids]`` per position, in float32, shape of ``token_ids``.

    ``logits``: (..., V) aligned with ``token_ids`` (...): the caller shifts (logits at position
    t score the token at t + 1). Computed as ``logit[id] - logsumexp(logits)`` a chunk of rows at
    a time, so no full (..., V) log-softmax is ever held: the transient memory is one chunk of
    about ``chunk_elements`` float32 values. Half-precision logits are upcast per chunk (and
    autograd then keeps those float32 copies for the backward pass).
    """
    flat, rows = _chunks(logits, chunk_elements)
    ids = token_ids.reshape(-1, 1)
    out = [
        part.float().gather(-1, idx).squeeze(-1) - torch.logsumexp(part.float(), dim=-1)
        for part, idx in zip(flat.split(rows), ids.split(rows))
    ]
    return (torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)).reshape(token_ids.shape)


def entropy_from_logits(logits: Tensor, *, chunk_elements: int = 1 << 24) -> Tensor:
    """Entropy (nats) of the softmax of ``logits`` (..., V) per position, in float32, a chunk at a
    time; for logging, call it under ``torch.no_grad()``."""
    flat, rows = _chunks(logits, chunk_elements)
    out = []
    for part in flat.split(rows):
        logp = torch.log_softmax(part.float(), dim=-1)
        p = logp.exp()
        out.append(-torch.where(p > 0, p * logp, 0.0).sum(-1))  # a -inf logit adds 0, not NaN
    return (torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)).reshape(logits.shape[:-1])
