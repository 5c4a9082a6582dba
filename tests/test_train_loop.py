"""The training loop and batching: schedules, padding, exact resume after a crash, budgets, loggers."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prm.models.loading import TinyGPTConfig, load_causal_lm
from prm.train import TrainConfig, load_metrics, lr_factor, pad_collate, padding_fraction, plan_batches, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


TINY = TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64, dropout=0.1)  # dropout: RNG matters


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
    return loss, {"n_labels": float((labels != -100).sum())}


def toy_data(n: int, seed: int = 0, lo: int = 5, hi: int = 30) -> list[dict[str, list[int]]]:
    """Sequences of a learnable pattern (counting up mod 20) with varied lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, length = rng.randrange(20), rng.randint(lo, hi)
        ids = [4 + (start + i) % 20 for i in range(length)]
        out.append({"input_ids": ids, "labels": ids})
    return out


def fresh_model(seed: int = 0) -> torch.nn.Module:
    return load_causal_lm(size=TINY, seed=seed)[0]


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ config and schedule


def test_lr_schedule_warmup_then_decay() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=4, max_steps=14, schedule="cosine", min_lr_ratio=0.1)
    f = [lr_factor(s, cfg, 14) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(f[4:], f[5:]))
    assert lr_factor(14, cfg, 14) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = TrainConfig(lr=1.0, warmup_steps=0, max_steps=10, schedule="linear", min_lr_ratio=0.0)
    assert [lr_factor(s, lin, 10) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    const = TrainConfig(lr=1.0, warmup_steps=2, max_steps=10, schedule="constant")
    assert [lr_factor(s, const, 10) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]


def test_train_config_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown train option.*'lrr'"):
        TrainConfig.from_dict({"lrr": 1, "max_steps": 3})
    with pytest.raises(ValueError, match="schedule='cosin'"):
        TrainConfig(max_steps=3, schedule="cosin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neither max_steps nor epochs"):
        TrainConfig()


# ------------------------------------------------------------------ batching


def test_bucketing_reduces_padding_and_loses_no_example() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(2000)]
    for epoch in (0, 1):
        bucketed = plan_batches(lengths, batch_size=16, seed=3, epoch=epoch)
        plain = plan_batches(lengths, batch_size=16, seed=3, epoch=epoch, strategy="random")
        for plan in (bucketed, plain):
            assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        assert padding_fraction(bucketed, lengths) < 0.05 < 0.3 < padding_fraction(plain, lengths)
    assert plan_batches(lengths, batch_size=16, seed=3, epoch=1) == plan_batches(lengths, batch_size=16, seed=3, epoch=1)
    assert plan_batches(lengths, batch_size=16, seed=3, epoch=0) != plan_batches(lengths, batch_size=16, seed=3, epoch=1)
    # the first batches of a bucketed epoch are not simply the shortest ones
    firsts = [max(lengths[i] for i in b) for b in plan_batches(lengths, batch_size=16, seed=3)[:10]]
    assert max(firsts) - min(firsts) > 50


def test_token_budget_batches() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(5, 100) for _ in range(500)] + [300]  # one example longer than the budget
    plan = plan_batches(lengths, max_tokens=256, seed=0)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for b in plan:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 256
    assert padding_fraction(plan, lengths) < padding_fraction(plan_batches(lengths, max_tokens=256, strategy="random"), lengths)


def test_pad_collate() -> None:
    batch = pad_collate(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


# ------------------------------------------------------------------ the loop


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(lr=3e-3, max_steps=12, batch_size=8, grad_accum=2, warmup_steps=2, save_every=4,
                                   log_every=1, eval_every=3, keep_checkpoints=2, seed=7, progress=False)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data, held = toy_data(40), toy_data(8, seed=1)  # 5 micro-batches per epoch: steps straddle epochs
    collate = pad_collate(0)

    whole = fresh_model()
    ref = train(whole, lm_loss, data, _cfg(), collate=collate, run_dir=tmp_path / "whole", eval_data=held)
    assert ref.step == 12 and ref.stopped_by == "max_steps" and ref.resumed_from is None

    def crash_after_6(state, row) -> None:  # noqa: ANN001
        if state.step == 6:
            raise Crash

    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(fresh_model(), lm_loss, data, _cfg(), collate=collate, run_dir=run_dir, eval_data=held,
              callbacks=[crash_after_6])
    assert [r["step"] for r in load_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    (run_dir / "checkpoints" / ".tmp-step-8").mkdir()  # a checkpoint half-written when the crash came
    again = fresh_model(seed=123)  # whatever it starts from, the checkpoint decides
    res = train(again, lm_loss, data, _cfg(), collate=collate, run_dir=run_dir, eval_data=held)
    assert res.resumed_from == 4 and res.step == 12

    ref_params, got = params(whole), params(again)
    assert ref_params.keys() == got.keys()
    for k in ref_params:
        assert torch.allclose(ref_params[k], got[k], atol=1e-6), k
    rows = load_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, 13))  # no step twice: lines after the checkpoint were dropped
    ref_rows = load_metrics(tmp_path / "whole")
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], abs=1e-6)
    assert rows[-1]["eval/loss"] == pytest.approx(ref_rows[-1]["eval/loss"], abs=1e-6)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-12", "step-8"]  # the last two, no temporary leftovers
    state = json.loads((run_dir / "checkpoints" / "step-12" / "trainer_state.json").read_text())["state"]
    assert state["step"] == 12 and state["tokens"] == rows[-1]["tokens"] == ref_rows[-1]["tokens"]

    # a finished run started again does no more work and keeps its metrics
    done = train(fresh_model(), lm_loss, data, _cfg(), collate=collate, run_dir=run_dir, eval_data=held)
    assert done.stopped_by == "already_done" and done.step == 12
    assert [r["step"] for r in load_metrics(run_dir)] == steps


def test_loss_falls_and_metrics_are_logged(tmp_path: Path) -> None:
    data = toy_data(64)
    res = train(fresh_model(), lm_loss, data, _cfg(max_steps=40, grad_accum=1, save_every=0, log_every=10,
                                                   eval_every=0, lr=1e-2),
                collate=pad_collate(0), run_dir=tmp_path, eval_data=toy_data(8, seed=2))
    rows = load_metrics(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    for key in ("lr", "grad_norm", "tokens_per_s", "padding_frac", "n_labels", "epoch", "tokens", "eval/loss"):
        assert key in rows[-1], key
    assert "eval/loss" not in rows[0]  # eval_every=0: only at the end
    assert res.model_dir is not None and (res.model_dir / "config.json").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-40"]


def test_epochs_bf16_and_token_budget(tmp_path: Path) -> None:
    data = toy_data(30)
    res = train(fresh_model(), lm_loss, data,
                TrainConfig(epochs=2, batch_size=None, max_tokens=160, mixed_precision="bf16", log_every=1,
                            progress=False),
                collate=pad_collate(0), run_dir=tmp_path, save_final_model=False)
    n_batches = len(plan_batches([len(d["input_ids"]) for d in data], max_tokens=160))
    assert res.step == 2 * n_batches
    assert all(math.isfinite(r["loss"]) for r in load_metrics(tmp_path))
    assert res.model_dir is None and not (tmp_path / "model").exists()


def test_wall_clock_budget_stops_cleanly_with_a_checkpoint(tmp_path: Path) -> None:
    slow_calls = []

    def slow_loss(model, batch):  # noqa: ANN001, ANN202
        slow_calls.append(1)
        import time

        time.sleep(0.05)
        return lm_loss(model, batch)

    cfg = _cfg(max_steps=1000, max_time_s=0.5, save_every=0, eval_every=0, log_every=100)
    res = train(fresh_model(), slow_loss, toy_data(40), cfg, collate=pad_collate(0), run_dir=tmp_path)
    assert res.stopped_by == "max_time" and 0 < res.step < 1000
    assert res.checkpoint_dir == tmp_path / "checkpoints" / f"step-{res.step}"
    assert load_metrics(tmp_path)[-1]["step"] == res.step  # the pending window was logged
    again = train(fresh_model(), slow_loss, toy_data(40), cfg, collate=pad_collate(0), run_dir=tmp_path)
    assert again.step == res.step and again.stopped_by == "max_time"  # the budget is spent


def test_wandb_offline_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(fresh_model(), lm_loss, toy_data(16), _cfg(max_steps=2, save_every=0, grad_accum=1),
          collate=pad_collate(0), run_dir=tmp_path, save_final_model=False,
          logger_cfg={"name": "wandb", "project": "prm-test", "mode": "offline"}, run_config={"x": 1})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert (tmp_path / "wandb_id.txt").read_text().strip() in runs[0].name


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="training dataset is empty"):
        train(fresh_model(), lm_loss, [], _cfg(), collate=pad_collate(0), run_dir=tmp_path)
