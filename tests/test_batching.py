"""Windowed and packed batching: every example once, deterministic per (seed, epoch), several lengths per
batch at little padding, and an exact resume with each; packed rows give exactly the unpacked loss and gradients."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from prm.train import TrainConfig, pad_collate, padding_fraction, plan_batches, train
from prm.train.batching import pack_rows, split_by_length
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
    with pytest.raises(ValueError, match="unknown batching strategy 'stacked'"):
        plan_batches([3, 4], batch_size=1, strategy="stacked")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_batches must be >= 1"):
        plan_batches([3, 4], batch_size=1, strategy="windowed", chunk_batches=0)
    with pytest.raises(ValueError, match="chunk_batches=0"):
        TrainConfig(max_steps=3, batching="windowed", chunk_batches=0)
    with pytest.raises(ValueError, match="batching='stacked'"):
        TrainConfig(max_steps=3, batching="stacked")  # type: ignore[arg-type]


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


# ------------------------------------------------------------------------------------------ packed
def test_pack_rows_places_every_example_once_within_capacity() -> None:
    lengths = kinds_lengths(200, seed=3) + [90]
    rows = pack_rows(lengths)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 180 for r in rows) and all(r == sorted(r) for r in rows)
    assert rows == pack_rows(lengths)
    assert len(rows) < len(lengths) / 2.5  # rows of twice the longest: two to five examples each
    assert pack_rows([5, 50, 3], capacity=10) == [[1], [0, 2]]  # too long: a row of its own
    # a shuffled batch packed has less padding than the same batch padded, and about bucketed's
    plan = plan_batches(lengths, batch_size=32, seed=1, strategy="packed")
    assert plan == plan_batches(lengths, batch_size=32, seed=1, strategy="random")
    assert padding_fraction(plan, lengths, packed=True) < 0.5 * padding_fraction(plan, lengths)


def _examples(n: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 40, (1,), generator=g))
        ids = torch.randint(4, vocab, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "positions": [length // 2, length - 1],
                    "targets": [float(torch.rand((), generator=g) > 0.5), None]})
    return out


def _prm(kind: str, seed: int = 0):  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForTokenClassification

    from prm.models.loading import TinyGPTConfig
    from prm.models.prm_model import build_prm

    if kind == "gpt2":
        model, tok = build_prm(size=TinyGPTConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), seed=seed)
        return model, tok.pad_token_id, len(tok)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=128, num_labels=1, pad_token_id=0,
                      classifier_dropout=0.0)
    return LlamaForTokenClassification(cfg), 0, 40


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_packed_batches_give_the_unpacked_loss_and_gradients(kind: str) -> None:
    from prm.prm_loss import PRMLoss, check_packing, prm_collate

    model, pad, vocab = _prm(kind)
    examples = _examples(12, vocab)
    check_packing(model, pad, examples)
    padded, packed = prm_collate(pad)(examples), prm_collate(pad, pack=True)(examples)
    assert packed["input_ids"].shape[0] < len(examples) and "attention_mask" not in packed
    assert int(packed["token_mask"].sum()) == int(padded["attention_mask"].sum())
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        loss, metrics = PRMLoss()(model, batch)
        loss.backward()
        grads.append((float(loss), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for k, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][k], g, rtol=1e-4, atol=1e-6)


def test_a_model_that_ignores_packing_is_refused() -> None:
    from prm.prm_loss import check_packing

    model, pad, vocab = _prm("gpt2")
    forward = model.forward

    def no_positions(*args, position_ids=None, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return forward(*args, **kwargs)  # drops the restarting positions: attention crosses examples

    model.forward = no_positions
    with pytest.raises(ValueError, match="does not keep packed examples apart"):
        check_packing(model, pad, _examples(4, vocab))


def test_packed_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from prm.prm_loss import PRMLoss, prm_collate

    whole, pad, vocab = _prm("gpt2")
    data = _examples(40, vocab, seed=1)
    cfg = _cfg(batching="packed", eval_every=0)
    collate = prm_collate(pad, pack=True)
    ref = train(whole, PRMLoss(), data, cfg, collate=collate, run_dir=tmp_path / "whole")
    assert ref.step == 12

    def crash_after_6(state, row) -> None:  # noqa: ANN001
        if state.step == 6:
            raise Crash

    with pytest.raises(Crash):
        train(_prm("gpt2")[0], PRMLoss(), data, cfg, collate=collate, run_dir=tmp_path / "crashed",
              callbacks=[crash_after_6])
    again = _prm("gpt2", seed=123)[0]  # other weights: the checkpoint must restore them
    res = train(again, PRMLoss(), data, cfg, collate=collate, run_dir=tmp_path / "crashed")
    assert res.resumed_from == 4 and res.step == 12
    ref_params, got = params(whole), params(again)
    for k in ref_params:
        assert torch.allclose(ref_params[k], got[k], atol=1e-6), k


def per_example_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss averaged within each sequence, then over sequences (a mean over examples)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = (labels != -100).float()
    return ((tok * mask).sum(1) / mask.sum(1).clamp(min=1)).mean(), {}


def test_split_by_length_cuts_a_batch_into_pieces_of_neighbouring_lengths() -> None:
    lengths = kinds_lengths(1000, seed=2)
    shuffled = plan_batches(lengths, batch_size=64, seed=4, strategy="random")
    cut = [split_by_length(b, lengths, 4) for b in shuffled]
    for batch, pieces in zip(shuffled, cut):
        assert sorted(i for p in pieces for i in p) == sorted(batch)  # the step takes exactly its batch
        assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(pieces, pieces[1:]))
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    assert padding_fraction([p for ps in cut for p in ps], lengths) < 0.5 * padding_fraction(shuffled, lengths)
    assert split_by_length([5, 6, 7], lengths, 4, min_size=2) == [[5, 6, 7]]  # too few for two pieces of 2
    assert [len(p) for p in split_by_length(list(range(9)), lengths, 4, min_size=2)] == [3, 2, 2, 2]
    with pytest.raises(ValueError, match="parts must be >= 1"):
        split_by_length([1], lengths, 0)
    with pytest.raises(ValueError, match="splits=0"):
        TrainConfig(max_steps=3, splits=0)


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def test_splits_train_exactly_as_the_whole_batch_and_resume_exactly(tmp_path: Path) -> None:
    data = toy_data(40, lo=5, hi=60)
    whole_batch = no_dropout(fresh_model())
    train(whole_batch, per_example_loss, data, _cfg(batching="random", eval_every=0), collate=pad_collate(0),
          run_dir=tmp_path / "one")
    split = no_dropout(fresh_model())
    cfg = _cfg(batching="random", splits=3, eval_every=0)
    train(split, per_example_loss, data, cfg, collate=pad_collate(0), run_dir=tmp_path / "split")
    ref, got = params(whole_batch), params(split)
    assert all(torch.allclose(ref[k], got[k], atol=1e-5) for k in ref)  # the same steps, in smaller pieces

    def crash_after_6(state, row) -> None:  # noqa: ANN001
        if state.step == 6:
            raise Crash

    with pytest.raises(Crash):
        train(no_dropout(fresh_model()), per_example_loss, data, cfg, collate=pad_collate(0), run_dir=tmp_path / "cut",
              callbacks=[crash_after_6])
    again = no_dropout(fresh_model(seed=123))
    res = train(again, per_example_loss, data, cfg, collate=pad_collate(0), run_dir=tmp_path / "cut")
    assert res.resumed_from == 4 and res.step == 12
    ref, got = params(split), params(again)
    assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)
