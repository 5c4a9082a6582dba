"""Advantages for GRPO-family RL with outcome and process rewards: pure tensor functions, no models.

Samples come in groups of completions of one prompt. Scalar (outcome) rewards are a
``(num_groups, group_size)`` tensor, or a flat ``(num_samples,)`` tensor or list with
``group_size``; samples of a group are contiguous (sample ``i`` is in group ``i // group_size``).

- ``grpo_advantages``: ``(r - group mean) / (group std + eps)``, or only ``r - group mean`` with
  ``scale_by_std=False`` (Dr. GRPO, Liu et al. 2025).
- ``rloo_advantages``: ``r_i`` minus the mean of the other rewards of its group (Ahmadian et al. 2024).
- ``process_advantages``: process-supervised GRPO (DeepSeekMath, Shao et al. 2024, section 4.1.3):
  ALL step rewards of a group are normalised together; a token's advantage is the sum of the
  normalised rewards of the steps ending at or after it.
- ``min_form_advantages``: PURE's min-form credit (Cheng et al. 2025, "Stop Summation: Min-Form
  Credit Assignment Is All Process Reward Model Needs for Reasoning", arXiv:2504.15275).
- ``baseline_advantages``: the PRM as a critic, not a reward (a learned baseline, as in
  actor-critic methods and Setlur et al. 2024's process advantages): a token of step ``k`` gets
  ``group mean of R - V_{k-1}``, with ``V_{k-1}`` the process score after the previous step (0 on
  the first step and after the last); added to Dr. GRPO's ``R - group mean`` with weight ``w`` it
  makes the token's advantage ``R - ((1 - w) * group mean + w * V_{k-1})``. The baseline depends
  only on tokens before the step, so the policy gradient stays unbiased whatever the PRM's errors
  (the PRM cannot be gamed: the reward is the outcome alone); a good PRM lowers its variance and
  gives credit inside groups whose outcomes are all equal, where GRPO learns nothing.
  With ``centred`` the baseline moves by ``V_{k-1}`` minus the group's mean score at the same
  depth instead: only the PRM's ranking of prefixes counts, not its level.
- ``broadcast_to_tokens`` and ``mix_advantages``: a per-sample advantage on every completion token,
  and ``w_process * process + w_outcome * outcome`` per token.

Conventions shared by every function:

- **std is the unbiased one** (Bessel's correction, ``torch.std``'s default), as DeepSeekMath's
  GRPO and TRL's ``GRPOTrainer`` compute it, so advantages match TRL's exactly. ``eps`` defaults
  to TRL's ``1e-4``.
- **Degenerate groups give exactly 0, never NaN**: a group with one valid value, or whose valid
  values are all equal, has advantage 0 everywhere (checked exactly, not through ``std + eps``).
- **Masking**: a reward that is NaN or None (a grader that could not grade the sample), or a
  sample marked False in ``valid``, is left out of its group's statistics, gets advantage 0, and
  is False in the returned mask, so the loss can drop it. For process rewards a sample is invalid
  if its step list is None or any of its step rewards is NaN/None (a partly graded solution has
  no well-defined return), and its every token is masked.
- **Steps**: per sample, its step rewards and the completion-token index at which each step ends
  (its last token, e.g. from ``prm.steps.step_end_token_indices`` made relative to the
  completion), strictly increasing and below the sample's completion length. A token belongs to
  the first step ending at or after it. Tokens after the last step's end (an unscored answer
  line, EOS) belong to no step and get process advantage 0; so does every token of a sample
  with no steps, which stays valid (its mask is True on its completion tokens).
- Token-level outputs are ``(num_samples, max_len)`` with ``max_len`` the longest completion
  unless given; padding has advantage 0 and mask False.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_EPS = 1e-4  # TRL's GRPOTrainer

Rewards = Tensor | Sequence[float | None] | Sequence[Sequence[float | None]]
Valid = Tensor | Sequence[bool] | Sequence[Sequence[bool]]
StepRewards = Sequence[Sequence[float | None] | None]
StepEnds = Sequence[Sequence[int]]
Lengths = Tensor | Sequence[int]


def _normalise(values: Tensor, groups: Tensor, num_groups: int, scale_by_std: bool, eps: float) -> Tensor:
    """``values`` minus their group's mean (divided by its unbiased std + eps); 0 in degenerate groups."""
    zeros = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    count = zeros.index_add(0, groups, torch.ones_like(values))
    mean = zeros.index_add(0, groups, values) / count.clamp(min=1)
    centered = values - mean[groups]
    hi = zeros.scatter_reduce(0, groups, values, "amax", include_self=False)
    lo = zeros.scatter_reduce(0, groups, values, "amin", include_self=False)
    centered = torch.where((hi == lo)[groups], 0.0, centered)  # one value or all equal: exactly 0
    if not scale_by_std:
        return centered
    std = (zeros.index_add(0, groups, centered**2) / (count - 1).clamp(min=1)).sqrt()
    denom = std[groups] + eps  # > 0 wherever centered != 0, even with eps = 0
    return torch.where(centered == 0, 0.0, centered / torch.where(denom > 0, denom, 1.0))


def _floats(row: Sequence[float | None] | Tensor) -> list[float]:
    return [float("nan") if v is None else float(v) for v in row]


def _as_float(values: Rewards) -> Tensor:
    """A float tensor (flat or 2-D lists, or a tensor); None becomes NaN."""
    if isinstance(values, Tensor):
        return values if values.is_floating_point() else values.to(torch.get_default_dtype())
    nested = len(values) > 0 and isinstance(values[0], Sequence | Tensor)
    rows = [_floats(row) for row in values] if nested else _floats(values)
    return torch.tensor(rows, dtype=torch.get_default_dtype())


def _grouped(
    rewards: Rewards, group_size: int | None, valid: Valid | None
) -> tuple[Tensor, Tensor, torch.Size]:
    """Rewards as (num_groups, group_size), their validity (not NaN and ``valid``), the input's shape."""
    r = _as_float(rewards)
    shape = r.shape
    if r.dim() == 1:
        if group_size is None or group_size < 1 or r.numel() % group_size:
            raise ValueError(f"flat rewards need a group_size dividing {r.numel()}, got {group_size}")
        r = r.view(-1, group_size)
    elif r.dim() != 2 or (group_size is not None and group_size != r.shape[1]):
        raise ValueError(f"rewards must be (num_groups, group_size) or flat, got shape {tuple(r.shape)}")
    ok = ~torch.isnan(r)
    if valid is not None:
        ok &= torch.as_tensor(valid, dtype=torch.bool, device=r.device).reshape(r.shape)
    return r, ok, shape


def grpo_advantages(
    rewards: Rewards,
    group_size: int | None = None,
    *,
    valid: Valid | None = None,
    scale_by_std: bool = True,
    eps: float = DEFAULT_EPS,
) -> tuple[Tensor, Tensor]:
    """Outcome GRPO advantages ``(r - mean) / (std + eps)`` per group, and the validity mask.

    ``rewards``: (num_groups, group_size), or flat with ``group_size``; NaN/None are invalid.
    ``scale_by_std=False`` only subtracts the mean (Dr. GRPO). Both outputs have the shape of
    ``rewards``; invalid samples get 0 and are False in the mask.
    """
    r, ok, shape = _grouped(rewards, group_size, valid)
    groups = torch.arange(r.shape[0], device=r.device).unsqueeze(1).expand_as(r)
    adv = torch.zeros_like(r)
    adv[ok] = _normalise(r[ok], groups[ok], r.shape[0], scale_by_std, eps)
    return adv.reshape(shape), ok.reshape(shape)


def rloo_advantages(
    rewards: Rewards, group_size: int | None = None, *, valid: Valid | None = None
) -> tuple[Tensor, Tensor]:
    """RLOO advantages: ``r_i`` minus the mean of the OTHER valid rewards of its group.

    Equals ``n / (n - 1) * (r_i - group mean)`` over the group's ``n`` valid samples; a group
    with one valid sample gives 0. Shapes and masking as ``grpo_advantages``.
    """
    r, ok, shape = _grouped(rewards, group_size, valid)
    groups = torch.arange(r.shape[0], device=r.device).unsqueeze(1).expand_as(r)
    n = ok.sum(1).to(r.dtype)
    adv = torch.zeros_like(r)
    adv[ok] = _normalise(r[ok], groups[ok], r.shape[0], False, 0.0) * (n / (n - 1).clamp(min=1))[groups[ok]]
    return adv.reshape(shape), ok.reshape(shape)


def broadcast_to_tokens(
    advantages: Tensor, lengths: Lengths, max_len: int | None = None, *, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """A per-sample advantage on each of the sample's completion tokens: (N, max_len) and its mask.

    ``advantages``: one per sample (any shape with N elements, e.g. (num_groups, group_size)).
    The mask is True on the first ``lengths[i]`` tokens of sample ``i`` (and ``valid[i]``).
    """
    adv = advantages.reshape(-1)
    lens = torch.as_tensor(lengths, dtype=torch.long, device=adv.device).reshape(-1)
    if lens.numel() != adv.numel():
        raise ValueError(f"{adv.numel()} advantages but {lens.numel()} lengths")
    mask = _token_mask(lens, max_len)
    if valid is not None:
        mask &= torch.as_tensor(valid, dtype=torch.bool, device=adv.device).reshape(-1, 1)
    return torch.where(mask, adv.unsqueeze(1), 0.0), mask


def _token_mask(lengths: Tensor, max_len: int | None) -> Tensor:
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_len is None:
        max_len = longest
    elif max_len < longest:
        raise ValueError(f"max_len {max_len} is shorter than the longest completion ({longest})")
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


def _checked_steps(
    step_rewards: StepRewards, step_ends: StepEnds, lengths: Lengths, group_size: int, valid: Valid | None
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Per-sample step rewards as tensors (NaN for missing), sample validity, and lengths; checks shapes."""
    n = len(step_rewards)
    lens = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).cpu()
    if len(step_ends) != n or lens.numel() != n:
        raise ValueError(f"{n} step-reward lists, {len(step_ends)} step-end lists, {lens.numel()} lengths")
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size {group_size} does not divide {n} samples")
    ok = torch.ones(n, dtype=torch.bool)
    if valid is not None:
        ok &= torch.as_tensor(valid, dtype=torch.bool).reshape(-1).cpu()
    rewards: list[Tensor] = []
    for i, (rs, ends) in enumerate(zip(step_rewards, step_ends)):
        if rs is None:
            ok[i] = False
            rewards.append(torch.full((len(ends),), float("nan")))
            continue
        if len(rs) != len(ends):
            raise ValueError(f"sample {i}: {len(rs)} step rewards but {len(ends)} step ends")
        length = int(lens[i])
        if any(b <= a for a, b in zip(ends, ends[1:])) or (len(ends) and not 0 <= ends[0] <= ends[-1] < length):
            raise ValueError(f"sample {i}: step ends {list(ends)} must increase strictly within [0, {length})")
        r = torch.tensor(_floats(rs), dtype=torch.get_default_dtype())
        if torch.isnan(r).any():
            ok[i] = False
        rewards.append(r)
    return rewards, ok, lens


def _normalise_steps(
    values: list[Tensor], ok: Tensor, group_size: int, scale_by_std: bool, eps: float
) -> list[Tensor]:
    """Normalise the step values of all valid samples of each group together; invalid samples get 0s."""
    keep = [i for i in range(len(values)) if ok[i]]
    out = [torch.zeros(len(v)) for v in values]
    if not keep:
        return out
    flat = torch.cat([values[i] for i in keep])
    groups = torch.cat([torch.full((len(values[i]),), i // group_size, dtype=torch.long) for i in keep])
    normed = _normalise(flat, groups, len(values) // group_size, scale_by_std, eps)
    for i, part in zip(keep, normed.split([len(values[i]) for i in keep])):
        out[i] = part
    return out


def _spread(
    step_returns: list[Tensor], step_ends: StepEnds, lengths: Tensor, ok: Tensor, max_len: int | None
) -> tuple[Tensor, Tensor]:
    """Each token gets the return of the first step ending at or after it (0 after the last step)."""
    mask = _token_mask(lengths, max_len) & ok.unsqueeze(1)
    adv = torch.zeros(mask.shape)
    positions = torch.arange(mask.shape[1])
    for i, (returns, ends) in enumerate(zip(step_returns, step_ends)):
        if ok[i] and len(ends):
            step = torch.searchsorted(torch.as_tensor(ends, dtype=torch.long), positions[: lengths[i]])
            adv[i, : lengths[i]] = torch.cat([returns, torch.zeros(1)])[step]
    return adv, mask


def process_advantages(
    step_rewards: StepRewards,
    step_ends: StepEnds,
    lengths: Lengths,
    group_size: int,
    *,
    valid: Valid | None = None,
    max_len: int | None = None,
    scale_by_std: bool = True,
    eps: float = DEFAULT_EPS,
) -> tuple[Tensor, Tensor]:
    """Process-supervised GRPO (DeepSeekMath 4.1.3): per-token advantages (N, max_len) and mask.

    Every step reward of every valid sample in a group is normalised by the group's mean and
    unbiased std over all those steps; a token's advantage is the sum of the normalised rewards
    of its sample's steps ending at or after it. See the module docstring for masking, tokens
    after the last step (0) and samples without steps (0, valid).
    """
    rewards, ok, lens = _checked_steps(step_rewards, step_ends, lengths, group_size, valid)
    normed = _normalise_steps(rewards, ok, group_size, scale_by_std, eps)
    returns = [n.flip(0).cumsum(0).flip(0) for n in normed]  # sum over the steps from j on
    return _spread(returns, step_ends, lens, ok, max_len)


def min_form_advantages(
    step_rewards: StepRewards,
    step_ends: StepEnds,
    lengths: Lengths,
    group_size: int,
    *,
    valid: Valid | None = None,
    max_len: int | None = None,
    scale_by_std: bool = True,
    eps: float = DEFAULT_EPS,
) -> tuple[Tensor, Tensor]:
    """PURE's min-form credit: per-token advantages (N, max_len) and mask.

    PURE (Cheng et al. 2025) defines a token's value as the minimum of the future process
    rewards rather than their sum, and realises it by transforming the step rewards (a
    low-temperature softmax weighting) so that the summed return approaches that minimum. Here
    the minimum is taken exactly: step ``j``'s return is ``m_j = min(r_j, ..., r_last)``; every
    ``m_j`` of every valid sample in a group is normalised by the group's mean and unbiased std
    over all those step-level returns; each token gets the normalised ``m_j`` of its own step
    (the first step ending at or after it), 0 after the last step. Masking as
    ``process_advantages``.
    """
    rewards, ok, lens = _checked_steps(step_rewards, step_ends, lengths, group_size, valid)
    mins = [r.flip(0).cummin(0).values.flip(0) if len(r) else r for r in rewards]
    returns = _normalise_steps(mins, ok, group_size, scale_by_std, eps)
    return _spread(returns, step_ends, lens, ok, max_len)


def baseline_advantages(
    step_values: StepRewards,
    step_ends: StepEnds,
    lengths: Lengths,
    group_size: int,
    outcome: Rewards,
    *,
    valid: Valid | None = None,
    max_len: int | None = None,
    centred: bool = False,
) -> tuple[Tensor, Tensor]:
    """The PRM as a critic: per-token ``group mean of R - V_{k-1}`` (N, max_len) and the mask.

    ``centred``: ``m_{k-1} - V_{k-1}`` instead, with ``m_{k-1}`` the mean of ``V_{k-1}`` over the
    group's valid samples that have a step ``k-1``: only how the PRM ranks a prefix against the
    group's other prefixes of the same depth moves the baseline, not its level (a PRM whose score
    is not a success probability, e.g. P(every step so far right), is mis-centred otherwise).

    ``step_values``: each sample's process scores (``V_k``, the score after step ``k``);
    ``outcome``: each sample's scalar reward ``R`` (flat, or (num_groups, group_size)). Tokens of
    a sample's first step, after its last step, and of a sample without steps get 0 (their
    baseline stays the group mean); a sample whose outcome or any step value is None/NaN is
    invalid (0, masked). The group mean is over the group's valid samples. Unlike the normalised
    advantages, a group whose outcomes are all equal still gets advantages here (``R - V``).
    """
    values, ok, lens = _checked_steps(step_values, step_ends, lengths, group_size, valid)
    r = _as_float(outcome).reshape(-1)
    if r.numel() != len(values):
        raise ValueError(f"{r.numel()} outcome rewards for {len(values)} samples")
    ok &= ~torch.isnan(r)
    groups = torch.arange(len(values)) // group_size
    zeros = torch.zeros(len(values) // group_size)
    count = zeros.index_add(0, groups[ok], torch.ones(int(ok.sum())))
    mean = zeros.index_add(0, groups[ok], r[ok]) / count.clamp(min=1)
    centre: dict[tuple[int, int], float] = {}
    if centred:  # the mean score after step j among the group's valid samples that have it
        sums: dict[tuple[int, int], list[float]] = {}
        for i, v in enumerate(values):
            if ok[i]:
                for j, x in enumerate(v.tolist()):
                    sums.setdefault((int(groups[i]), j), []).append(x)
        centre = {key: sum(xs) / len(xs) for key, xs in sums.items()}
    returns = []
    for i, v in enumerate(values):
        if not (ok[i] and len(v)):
            returns.append(torch.zeros(len(v)))
            continue
        level = torch.tensor([centre[(int(groups[i]), j)] for j in range(len(v) - 1)]) if centred \
            else mean[groups[i]].expand(len(v) - 1)
        returns.append(torch.cat([torch.zeros(1), level - v[:-1]]))
    return _spread(returns, step_ends, lens, ok, max_len)


def mix_advantages(
    process: Tensor,
    process_mask: Tensor,
    outcome: Tensor,
    outcome_valid: Tensor,
    lengths: Lengths,
    *,
    w_process: float = 1.0,
    w_outcome: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``w_process * process + w_outcome * outcome`` per token, and the mask.

    ``process``/``process_mask``: (N, T) from ``process_advantages`` or ``min_form_advantages``;
    ``outcome``/``outcome_valid``: one per sample (e.g. from ``grpo_advantages``), put on the
    sample's ``lengths`` completion tokens. A token is kept only where both masks hold, so a
    sample invalid for either reward is dropped.
    """
    tokens, mask = broadcast_to_tokens(outcome, lengths, process.shape[1], valid=outcome_valid)
    mask = mask & process_mask
    return torch.where(mask, w_process * process + w_outcome * tokens, 0.0), mask
