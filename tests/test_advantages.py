"""GRPO-family advantages: hand-computed outcome, RLOO, process (sum-form), PURE min-form and PRM-baseline cases.

Expected numbers are written out; the arithmetic is in the comments. std is the unbiased one.
"""

from __future__ import annotations

import math

import pytest
import torch

from rl.advantages import (
    baseline_advantages,
    broadcast_to_tokens,
    grpo_advantages,
    min_form_advantages,
    mix_advantages,
    process_advantages,
    rloo_advantages,
)

S3 = math.sqrt(3) / 2  # 0.5 / sqrt(1/3)


def close(actual: torch.Tensor, expected: list, tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=0, atol=tol)


def test_grpo_hand_computed_groups() -> None:
    # [1,0,0,1]: mean .5, unbiased var (4 * .25) / 3 = 1/3, so +-.5 / .57735 = +-.8660254
    # [1,0,0,0]: mean .25, centred [.75,-.25,-.25,-.25], var (.5625 + 3 * .0625) / 3 = .25, std .5
    adv, valid = grpo_advantages(torch.tensor([[1.0, 0, 0, 1], [1, 0, 0, 0]]), eps=0.0)
    close(adv, [[S3, -S3, -S3, S3], [1.5, -0.5, -0.5, -0.5]])
    assert valid.all()


def test_grpo_default_eps_and_flat_input() -> None:
    adv, valid = grpo_advantages([1.0, 0.0, 0.0, 1.0], group_size=4)  # .5 / (.5773503 + 1e-4)
    close(adv, [0.8658754, -0.8658754, -0.8658754, 0.8658754])
    assert adv.shape == (4,) and valid.shape == (4,)


def test_dr_grpo_only_subtracts_the_mean() -> None:
    adv, _ = grpo_advantages([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]], scale_by_std=False)
    close(adv, [[0.5, -0.5, -0.5, 0.5], [0.75, -0.25, -0.25, -0.25]])


def test_all_equal_and_groups_of_one_give_exact_zeros() -> None:
    for rewards, size in [([0.1, 0.1, 0.1], 3), ([3.0, 5.0], 1), ([0.7], 1), ([1.0, 1.0, 0.0, 0.0], 2)]:
        for adv, valid in (
            grpo_advantages(rewards, size),
            grpo_advantages(rewards, size, eps=0.0),
            rloo_advantages(rewards, size),
        ):
            assert torch.equal(adv, torch.zeros(len(rewards))) and valid.all()


def test_nan_and_none_rewards_are_masked() -> None:
    # valid [1,0,0]: mean 1/3, centred [2/3,-1/3,-1/3], var (4/9 + 1/9 + 1/9) / 2 = 1/3, std .5773503
    for rewards in ([1.0, None, 0.0, 0.0], torch.tensor([1.0, float("nan"), 0.0, 0.0])):
        adv, valid = grpo_advantages(rewards, 4, eps=0.0)
        close(adv, [1.1547005, 0.0, -0.5773503, -0.5773503])
        assert valid.tolist() == [True, False, True, True]
    adv, valid = grpo_advantages([2.0, 5.0, 9.0, 0.0], 2, valid=[True, False, True, True])
    assert adv[:2].tolist() == [0.0, 0.0] and valid.tolist() == [True, False, True, True]
    adv, valid = grpo_advantages([None, None, 1.0, 0.0], 2, eps=0.0)  # a fully ungraded group
    close(adv, [0.0, 0.0, 0.7071068, -0.7071068])
    assert not torch.isnan(adv).any()


def test_rloo_subtracts_the_mean_of_the_others() -> None:
    # [1,0,0,1]: 1 - 1/3 = 2/3, 0 - 2/3; [1,0,0,0]: 1 - 0, 0 - 1/3; NaN left out: 1 - 0, 0 - (1+0)/2
    adv, _ = rloo_advantages([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    close(adv, [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [1.0, -1 / 3, -1 / 3, -1 / 3]])
    adv, valid = rloo_advantages([1.0, float("nan"), 0.0, 0.0], 4)
    close(adv, [1.0, 0.0, -0.5, -0.5])
    assert valid.tolist() == [True, False, True, True]
    adv, _ = rloo_advantages([4.0, None], 2)  # one valid sample left: nothing to compare with
    assert adv.tolist() == [0.0, 0.0]


def test_scalar_inputs_are_checked() -> None:
    with pytest.raises(ValueError):
        grpo_advantages([1.0, 0.0, 1.0], 2)
    with pytest.raises(ValueError):
        grpo_advantages([1.0, 0.0])
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(2, 3), 2)


def test_broadcast_to_tokens() -> None:
    adv, mask = broadcast_to_tokens(torch.tensor([1.5, -0.5]), [2, 3], 4)
    close(adv, [[1.5, 1.5, 0, 0], [-0.5, -0.5, -0.5, 0]])
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False]]
    adv, mask = broadcast_to_tokens(torch.tensor([[1.5, -0.5]]), [2, 1], valid=torch.tensor([True, False]))
    close(adv, [[1.5, 1.5], [0, 0]])
    assert mask.tolist() == [[True, True], [False, False]]


# Process GRPO, one group of two samples:
#   A: step rewards [1, 0] ending at tokens [2, 5], 7 completion tokens (token 6 after the last step)
#   B: step rewards [1, 1, 0] ending at tokens [1, 3, 4], 5 completion tokens (padded to 7)
# All five steps [1, 0, 1, 1, 0]: mean .6, centred [.4, -.6, .4, .4, -.6], unbiased var 1.2 / 4 = .3,
# std .5477226, so 1 -> .7302967 and 0 -> -1.0954451.
#   A suffix sums: step 0 -.3651484, step 1 -1.0954451; tokens 0-2 step 0, 3-5 step 1, 6 none
#   B suffix sums: .3651484, -.3651484, -1.0954451; tokens 0-1, 2-3, 4
PROCESS = ([[1.0, 0.0], [1.0, 1.0, 0.0]], [[2, 5], [1, 3, 4]], [7, 5])
P, Q, R = 0.3651484, 1.0954451, 0.0


def test_process_grpo_hand_computed() -> None:
    adv, mask = process_advantages(*PROCESS, group_size=2, eps=0.0)
    close(adv, [[-P, -P, -P, -Q, -Q, -Q, 0], [P, P, -P, -P, -Q, 0, 0]])
    assert mask.tolist() == [[True] * 7, [True] * 5 + [False] * 2]


def test_process_grpo_without_std() -> None:
    # centred [.4, -.6] and [.4, .4, -.6]: A suffix [-.2, -.6]; B suffix [.2, -.2, -.6]
    adv, _ = process_advantages(*PROCESS, group_size=2, scale_by_std=False, max_len=8)
    close(adv, [[-0.2, -0.2, -0.2, -0.6, -0.6, -0.6, 0, 0], [0.2, 0.2, -0.2, -0.2, -0.6, 0, 0, 0]])


def test_process_grpo_groups_are_separate() -> None:
    # group size 1: A alone [1,0] -> +-.7071068 (suffix 0, -.7071068); B alone [1,1,0]: mean 2/3,
    # centred [1/3, 1/3, -2/3], var (2/9 + 4/9) / 2 = 1/3, std .5773503 -> [.5773503, .5773503, -1.1547005]
    adv, _ = process_advantages(*PROCESS, group_size=1, eps=0.0)
    close(adv[0], [0, 0, 0, -0.7071068, -0.7071068, -0.7071068, 0])
    close(adv[1], [0, 0, -0.5773503, -0.5773503, -1.1547005, 0, 0])


def test_process_empty_steps_one_step_and_equal_rewards() -> None:
    # A has no steps (all 0, still valid); B's two steps [1, 0] are the whole group: +-.7071068
    adv, mask = process_advantages([[], [1.0, 0.0]], [[], [0, 2]], [3, 3], 2, eps=0.0)
    close(adv, [[0, 0, 0], [0, -0.7071068, -0.7071068]])
    assert mask.all()
    adv, mask = process_advantages([[0.3]], [[1]], [2], 1)  # a group of one sample with one step
    assert adv.tolist() == [[0.0, 0.0]] and mask.all()
    adv, _ = process_advantages([[0.2, 0.2], [0.2]], [[0, 1], [0]], [2, 1], 2)  # all equal
    assert torch.equal(adv, torch.zeros(2, 2))
    adv, mask = process_advantages([[], []], [[], []], [0, 0], 2)  # nothing at all
    assert adv.shape == (2, 0) and mask.shape == (2, 0)


def test_process_nan_or_missing_rewards_mask_the_sample() -> None:
    # A (NaN step) and C (None) are dropped; B's [1, 0] is the rest of the group: t0 -> 0, t1 -> -.7071068
    for bad in ([1.0, float("nan")], [1.0, None], None):
        adv, mask = process_advantages([bad, [1.0, 0.0]], [[0, 1], [0, 1]], [2, 2], 2, eps=0.0)
        close(adv, [[0, 0], [0, -0.7071068]])
        assert mask.tolist() == [[False, False], [True, True]]
    # valid=False drops A; B alone [1, 1, 0] -> [.5773503, .5773503, -1.1547005], suffix [0, -.5773503, -1.1547005]
    adv, mask = process_advantages(*PROCESS, group_size=2, valid=[False, True], eps=0.0)
    assert mask[0].tolist() == [False] * 7 and adv[0].tolist() == [0.0] * 7
    close(adv[1], [0, 0, -0.5773503, -0.5773503, -1.1547005, 0, 0])


def test_process_inputs_are_checked() -> None:
    for rewards, ends, lengths in [
        ([[1.0, 0.0]], [[2, 2]], [4]),  # not strictly increasing
        ([[1.0, 0.0]], [[3, 1]], [4]),
        ([[1.0]], [[4]], [4]),  # past the completion
        ([[1.0]], [[-1]], [4]),
        ([[1.0, 0.0]], [[1]], [4]),  # one end for two rewards
    ]:
        with pytest.raises(ValueError):
            process_advantages(rewards, ends, lengths, 1)
    with pytest.raises(ValueError):
        process_advantages([[1.0], [1.0], [1.0]], [[0], [0], [0]], [1, 1, 1], 2)
    with pytest.raises(ValueError):
        min_form_advantages([[1.0]], [[0]], [1], 1, max_len=0)


def test_min_form_hand_computed() -> None:
    # A: rewards [.5, 1] at [2, 5], 7 tokens -> suffix mins [.5, 1]
    # B: rewards [1, 0, 1] at [1, 3, 4], 5 tokens -> suffix mins [0, 0, 1]
    # all mins [.5, 1, 0, 0, 1]: mean .5, centred [0, .5, -.5, -.5, .5], var 1 / 4, std .5 -> [0, 1, -1, -1, 1]
    rewards, ends, lengths = [[0.5, 1.0], [1.0, 0.0, 1.0]], [[2, 5], [1, 3, 4]], [7, 5]
    adv, mask = min_form_advantages(rewards, ends, lengths, 2, eps=0.0)
    close(adv, [[0, 0, 0, 1, 1, 1, 0], [-1, -1, -1, -1, 1, 0, 0]])
    assert mask.tolist() == [[True] * 7, [True] * 5 + [False] * 2]
    adv, _ = min_form_advantages(rewards, ends, lengths, 2, scale_by_std=False)
    close(adv, [[0, 0, 0, 0.5, 0.5, 0.5, 0], [-0.5, -0.5, -0.5, -0.5, 0.5, 0, 0]])


def test_min_form_degenerate_cases() -> None:
    adv, mask = min_form_advantages([[], [0.9, 0.4]], [[], [0, 1]], [2, 3], 2, eps=0.0)
    # B's mins [.4, .4] are the whole group: all equal -> 0 (tokens past the last step too)
    assert torch.equal(adv, torch.zeros(2, 3)) and mask.tolist() == [[True, True, False], [True] * 3]
    # A is ungraded (None) and dropped; B's mins [0, 1] are the group: -+.7071068
    adv, mask = min_form_advantages([[1.0, None], [0.0, 1.0]], [[0, 1], [0, 1]], [2, 2], 2, eps=0.0)
    close(adv, [[0, 0], [-0.7071068, 0.7071068]])
    assert mask.tolist() == [[False, False], [True, True]]


def test_mix_weights_process_and_outcome_per_token() -> None:
    # Dr. GRPO process advantages from above; outcome +1 for A, -1 for B; weights .5 and 1
    process, pmask = process_advantages(*PROCESS, group_size=2, scale_by_std=False)
    outcome, valid = torch.tensor([1.0, -1.0]), torch.tensor([True, True])
    adv, mask = mix_advantages(process, pmask, outcome, valid, [7, 5], w_process=0.5)
    close(adv, [[0.9, 0.9, 0.9, 0.7, 0.7, 0.7, 1.0], [-0.9, -0.9, -1.1, -1.1, -1.3, 0, 0]])
    assert mask.tolist() == pmask.tolist()
    adv, mask = mix_advantages(process, pmask, torch.tensor([0.0, -1.0]), torch.tensor([False, True]), [7, 5])
    assert not mask[0].any() and adv[0].tolist() == [0.0] * 7  # invalid outcome drops the sample


def test_baseline_hand_computed() -> None:
    # group of 2, outcomes [1, 0]: mean .5
    # A: values [.9, .6, .8] at [1, 3, 4], 6 tokens: step 1 -> 0, step 2 -> .5 - .9, step 3 -> .5 - .6, token 5 -> 0
    # B: values [.3, .2] at [2, 4], 5 tokens: step 1 (tokens 0-2) -> 0, step 2 (3-4) -> .5 - .3
    values, ends, lengths, outcome = [[0.9, 0.6, 0.8], [0.3, 0.2]], [[1, 3, 4], [2, 4]], [6, 5], [1.0, 0.0]
    adv, mask = baseline_advantages(values, ends, lengths, 2, outcome)
    close(adv, [[0, 0, -0.4, -0.4, -0.1, 0], [0, 0, 0, 0.2, 0.2, 0]])
    assert mask.tolist() == [[True] * 6, [True] * 5 + [False]]
    # plus Dr. GRPO's R - mean (+.5, -.5) at weight 1: R minus the previous step's value, the group mean on step 1
    total = adv + torch.tensor([[0.5] * 6, [-0.5] * 5 + [0.0]])
    close(total, [[0.5, 0.5, 1 - 0.9, 1 - 0.9, 1 - 0.6, 0.5], [-0.5, -0.5, -0.5, 0 - 0.3, 0 - 0.3, 0]])


def test_baseline_gives_credit_where_outcomes_are_equal_and_masks_ungraded() -> None:
    # both right: GRPO gives 0; the baseline gives 1 - .4 after a step the PRM doubted (via mean 1 - .4 = .6)
    adv, _ = baseline_advantages([[0.4, 0.7], [0.9, 1.0]], [[0, 1], [0, 1]], [2, 2], 2, [1.0, 1.0])
    close(adv, [[0, 0.6], [0, 0.1]])
    # an ungraded outcome (None) masks its sample and leaves the others' mean: group mean 0 from B alone
    adv, mask = baseline_advantages([[0.5, 0.5], [0.2, 0.1]], [[0, 1], [0, 1]], [2, 2], 2, [None, 0.0])
    close(adv, [[0, 0], [0, -0.2]])
    assert mask.tolist() == [[False, False], [True, True]]
    # a NaN step value masks its sample; a sample without steps keeps the group-mean baseline (0 here)
    adv, mask = baseline_advantages([[float("nan")], []], [[0], []], [1, 2], 2, [1.0, 0.0])
    assert mask.tolist() == [[False, False], [True, True]] and torch.equal(adv, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="3 outcome rewards for 2 samples"):
        baseline_advantages([[0.5], [0.5]], [[0], [0]], [1, 1], 2, [1.0, 0.0, 1.0])


def test_centred_baseline_uses_the_groups_mean_score_at_the_same_depth() -> None:
    # A: values [.9, .6, .8] at [1, 3, 4]; B: [.3, .2] at [2, 4]; depth means after step 1: (.9 + .3) / 2 = .6,
    # after step 2: (.6 + .2) / 2 = .4 (both have it), after step 3: .8 (A alone; never a baseline)
    # A: step 2 -> .6 - .9 = -.3, step 3 -> .4 - .6 = -.2; B: step 2 -> .6 - .3 = .3
    values, ends, lengths, outcome = [[0.9, 0.6, 0.8], [0.3, 0.2]], [[1, 3, 4], [2, 4]], [6, 5], [1.0, 0.0]
    adv, mask = baseline_advantages(values, ends, lengths, 2, outcome, centred=True)
    close(adv, [[0, 0, -0.3, -0.3, -0.2, 0], [0, 0, 0, 0.3, 0.3, 0]])
    # the level of the scores does not matter, only their differences within the group at a depth
    shifted, _ = baseline_advantages([[x + 0.05 for x in v] for v in values], ends, lengths, 2, outcome, centred=True)
    close(shifted, adv.tolist())


def test_baseline_needs_dr_grpo() -> None:
    from rl.rollouts import AdvantageConfig

    AdvantageConfig(outcome="dr_grpo", process="baseline")
    with pytest.raises(ValueError, match="advantage.outcome=dr_grpo"):
        AdvantageConfig(outcome="grpo", process="baseline")
    with pytest.raises(ValueError, match="advantage.outcome=dr_grpo"):
        AdvantageConfig(outcome="rloo", process="baseline_centred")
