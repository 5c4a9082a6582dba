"""Policy losses: clipped surrogate, k3 KL, aggregation, log-probs and entropy on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rl.losses import aggregate, clipped_policy_loss, entropy_from_logits, k3_kl, kl_penalty, token_logprobs

LN2, LN3 = math.log(2), math.log(3)
ADV = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_ratio_one_gives_minus_the_mean_advantage() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -1.0]])
    # token: -(1 - 2 + 3 + .5) / 4 = -.625; sequence: -((2 / 3 + .5) / 2) = -.5833333
    loss, stats = clipped_policy_loss(logp, logp, ADV, MASK)
    assert loss.item() == pytest.approx(-0.625)
    assert stats["ratio_mean"].item() == pytest.approx(1.0) and stats["clip_fraction"].item() == 0.0
    loss, _ = clipped_policy_loss(logp, logp, ADV, MASK, aggregation="sequence")
    assert loss.item() == pytest.approx(-0.5833333)


def clip_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ratios 1.5, 1.5, .5, .5 with advantages +1, -1, +1, -1."""
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_()
    return new, old, torch.tensor([[1.0, -1.0, 1.0, -1.0]]), torch.ones(1, 4, dtype=torch.bool)


def test_clipping_for_positive_and_negative_advantages() -> None:
    new, old, adv, mask = clip_case()
    # per token -min(r A, clip(r) A): -min(1.5, 1.2) = -1.2 (clipped), -min(-1.5, -1.2) = 1.5,
    # -min(.5, .8) = -.5, -min(-.5, -.8) = .8 (clipped); mean .6 / 4 = .15
    loss, stats = clipped_policy_loss(new, old, adv, mask)
    assert loss.item() == pytest.approx(0.15)
    assert stats["clip_fraction"].item() == pytest.approx(0.5) and stats["ratio_mean"].item() == pytest.approx(1.0)
    # clip-higher (DAPO): eps_high .28 lets the first token reach 1.28: (-1.28 + 1.5 - .5 + .8) / 4 = .13
    loss, _ = clipped_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(0.13)


def test_clipped_tokens_get_no_gradient() -> None:
    new, old, adv, mask = clip_case()
    loss, _ = clipped_policy_loss(new, old, adv, mask)
    loss.backward()
    # d(-r A)/d logp = -r A on unclipped tokens, / 4 tokens: -(1.5 * -1) / 4 = .375, -(.5 * 1) / 4 = -.125
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 0.375, -0.125, 0.0]]))


def test_token_and_sequence_aggregation_differ_on_unequal_lengths() -> None:
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    assert aggregate(per_token, mask, "token").item() == pytest.approx(9 / 5)  # (4 + 5) / 5 tokens
    assert aggregate(per_token, mask, "sequence").item() == pytest.approx(3.0)  # (1 + 5) / 2 sequences
    with pytest.raises(ValueError):
        aggregate(per_token, mask, "batch")  # type: ignore[arg-type]


def test_masked_rows_never_give_nan() -> None:
    inf, nan = float("inf"), float("nan")
    logp = torch.tensor([[-1.0, -2.0], [-inf, nan]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0], [nan, -inf]])
    adv = torch.tensor([[1.0, 3.0], [nan, inf]])
    mask = torch.tensor([[True, True], [False, False]])
    for aggregation in ("token", "sequence"):
        loss, stats = clipped_policy_loss(logp, old, adv, mask, aggregation=aggregation)
        kl = kl_penalty(logp, old, mask, aggregation=aggregation)
        assert loss.item() == pytest.approx(-2.0) and kl.item() == 0.0  # the masked row adds nothing
        logp.grad = None
        (loss + kl).backward()
        assert torch.isfinite(logp.grad).all() and logp.grad[1].tolist() == [0.0, 0.0]
        assert torch.isfinite(stats["ratio_mean"]) and torch.isfinite(stats["clip_fraction"])
    empty = torch.zeros(2, 2, dtype=torch.bool)  # no valid token at all: 0, differentiable
    loss, stats = clipped_policy_loss(logp, old, adv, empty, aggregation="sequence")
    assert loss.item() == 0.0 and stats["ratio_mean"].item() == 0.0
    loss.backward()


def test_k3_kl_known_values() -> None:
    # d = ref - new: 0 -> 0; ln 2 -> 2 - ln 2 - 1 = .3068528; -ln 2 -> .5 + ln 2 - 1 = .1931472
    new = torch.tensor([[-1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.0, LN2, -LN2]])
    torch.testing.assert_close(k3_kl(new, ref), torch.tensor([[0.0, 0.3068528, 0.1931472]]))
    assert kl_penalty(new, new, torch.ones(1, 3, dtype=torch.bool)).item() == 0.0
    mask = torch.tensor([[True, True, False]])
    assert kl_penalty(new, ref, mask).item() == pytest.approx(0.3068528 / 2)
    assert (k3_kl(torch.randn(1000) * 1e-4, torch.randn(1000) * 1e-4) >= 0).all()


def test_token_logprobs_and_entropy_by_hand() -> None:
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])  # softmax [.5, .5] and [.75, .25]
    lp = token_logprobs(logits, torch.tensor([[0, 1]]))
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.5), math.log(0.25)]]))
    # H([.75, .25]) = .75 * .2876821 + .25 * 1.3862944 = .5623351; uniform over 4: ln 4
    ent = entropy_from_logits(torch.tensor([[LN3, 0.0, -float("inf")], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(ent, torch.tensor([0.5623351, math.log(3)]))


def test_token_logprobs_chunks_match_log_softmax_and_backprop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, requires_grad=True)
    ids = torch.randint(0, 7, (3, 5), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    chunked = token_logprobs(logits, ids, chunk_elements=10)  # one row of 7 at a time
    torch.testing.assert_close(chunked, expected)
    assert token_logprobs(logits.bfloat16(), ids).dtype == torch.float32
    grad = torch.autograd.grad(chunked.sum(), logits)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), logits)[0])
    torch.testing.assert_close(entropy_from_logits(logits, chunk_elements=10), entropy_from_logits(logits))
