"""Windowed batching: every example once, deterministic per (seed, epoch), several lengths per batch
at little padding, and an exact resume with it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from prm.train import TrainConfig, pad_collate, padding_fraction, plan_batches, train
from test_train_loop import Crash, _cfg, fresh_model, lm_loss, params, toy_data  # the loop tests' helpers

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def kinds_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths as in the arithmetic world: one length per kind of problem (3..7 operations), equally often."""
    rng = random.Random(seed)
    return [34 + 8 * rng.randrange(5) for _ in range(n)]


def distinct_per_batch(plan: list[list[int]], lengths: list[int]) -> float:
    return sum(len({lengths[i] for i in b}) for b in plan) / len(plan)


@pytest.mark.parametrize("sizes", [{"batch_size": 16}, {"max_tokens": 600}, {"batch_size": 16, "max_tokens": 600}])
def test_windowed_keeps_every_example_once_and_is_deterministic(sizes: dict[str, int]) -> None:
    lengths = kinds_lengths(1000) + [700]  # one example longer than the token budget
    plans = [plan_batches(lengths, seed=5, epoch=e, strategy="windowed", **sizes) for e in (0, 1)]
    for plan in plans:
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        if "max_tokens" in sizes:
            assert all(len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 600 for b in plan)
    assert plans[0] == plan_batches(lengths, seed=5, epoch=0, strategy="windowed", **sizes)
    assert plans[0] != plans[1]
    assert plans[0] != plan_batches(lengths, seed=6, epoch=0, strategy="windowed", **sizes)


def test_windowed_mixes_lengths_at_little_padding() -> None:
    lengths = kinds_lengths(4000)
    plan = {s: plan_batches(lengths, batch_size=32, seed=1, strategy=s) for s in ("bucketed", "windowed", "random")}
    pad = {s: padding_fraction(p, lengths) for s, p in plan.items()}
    mixed = {s: distinct_per_batch(p, lengths) for s, p in plan.items()}
    assert mixed["bucketed"] < 1.2 and mixed["windowed"] > 2.5  # one kind per batch against about three
    assert pad["bucketed"] < 0.01 and pad["windowed"] < 0.6 * pad["random"]
    # a larger window trades mixing for padding, towards bucketed
    wide = plan_batches(lengths, batch_size=32, seed=1, strategy="windowed", chunk_batches=16)
    assert pad["bucketed"] < padding_fraction(wide, lengths) < pad["windowed"]
    assert mixed["bucketed"] < distinct_per_batch(wide, lengths) < mixed["windowed"]
    # the order over the epoch stays random: early batches are not the shortest ones
    firsts = [max(lengths[i] for i in b) for b in plan["windowed"][:10]]
    assert max(firsts) - min(firsts) >= 16


def test_bad_batching_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown batching strategy 'packed'"):
        plan_batches([3, 4], batch_size=1, strategy="packed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_batches must be >= 1"):
        plan_batches([3, 4], batch_size=1, strategy="windowed", chunk_batches=0)
    with pytest.raises(ValueError, match="chunk_batches=0"):
        TrainConfig(max_steps=3, batching="windowed", chunk_batches=0)
    with pytest.raises(ValueError, match="batching='packed'"):
        TrainConfig(max_steps=3, batching="packed")  # type: ignore[arg-type]


def test_windowed_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = toy_data(40, lo=5, hi=60)  # 5 micro-batches per epoch: steps straddle epochs
    collate = pad_collate(0)
    cfg = _cfg(batching="windowed", chunk_batches=2, eval_every=0)

    whole = fresh_model()
    ref = train(whole, lm_loss, data, cfg, collate=collate, run_dir=tmp_path / "whole")
    assert ref.step == 12

    def crash_after_6(state, row) -> None:  # noqa: ANN001
        if state.step == 6:
            raise Crash

    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(fresh_model(), lm_loss, data, cfg, collate=collate, run_dir=run_dir, callbacks=[crash_after_6])
    again = fresh_model(seed=123)
    res = train(again, lm_loss, data, cfg, collate=collate, run_dir=run_dir)
    assert res.resumed_from == 4 and res.step == 12
    ref_params, got = params(whole), params(again)
    for k in ref_params:
        assert torch.allclose(ref_params[k], got[k], atol=1e-6), k
    # and the batches really differ from bucketed ones (same seed): the strategy is in use
    lengths = [len(d["input_ids"]) for d in data]
    assert plan_batches(lengths, batch_size=8, seed=7, strategy="windowed", chunk_batches=2) != \
        plan_batches(lengths, batch_size=8, seed=7, strategy="bucketed")
