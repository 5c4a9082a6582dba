"""prm-train: the loss sits on step-end tokens only, data handling, a tiny PRM that learns, the app end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification, AutoTokenizer

from prm.data.arith import ArithConfig, generate_dataset
from prm.data.errors import DataError
from prm.data.stepwise import StepwiseExample, write_stepwise
from prm.evaluation.metrics import auroc
from prm.io import write_jsonl
from prm.models.loading import ModelLoadError, TinyGPTConfig, build_tiny_gpt, save_model
from prm.models.prm_model import build_prm
from prm.models.tokenizer import build_char_tokenizer
from prm.prm_loss import IGNORE_LABEL, PRMLoss, bce_on_labels, class_weights, prm_collate
from prm.prm_train import (
    CONF_DIR,
    PRMTrainConfigError,
    build_model,
    encode_examples,
    problem_groups,
    run,
    split_by_problem,
    step_metrics,
)
from prm.steps import StepFormat, load_step_format
from prm.train import load_metrics
from tests.conftest import PRM800K_SAMPLE

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "/work/venv/bin/python" if Path("/work/venv/bin/python").exists() else sys.executable
SIZE = TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64)
TINY_MODEL = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_positions=64"]
TINY_TRAIN = [
    "train.max_steps=3", "train.batch_size=8", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
    "train.save_every=0", "train.max_time_s=null", "train.progress=false",
]
TINY = TINY_MODEL + TINY_TRAIN
# An easy world: step checking is a small lookup and there are no systematic mistakes.
EASY = ArithConfig(min_ops=2, max_ops=3, modulus=5, operand_min=1, operand_max=4, slip_rate=0.3,
                   systematic_rate=0.0, num_systematic=0)
NL = "\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def cfg_of(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="prm_train", overrides=list(overrides))


def bce(x: float, y: float, w_pos: float = 1.0, w_neg: float = 1.0) -> float:
    s = 1.0 / (1.0 + math.exp(-x))
    return -(w_pos * y * math.log(s) + w_neg * (1 - y) * math.log(1 - s))


@pytest.fixture(scope="module")
def easy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "easy.jsonl"
    write_stepwise(path, generate_dataset(60, EASY, seed=3, samples_per_problem=2))
    return path


# ------------------------------------------------------------------ the loss


def test_loss_sits_exactly_on_step_end_tokens() -> None:
    tok = build_char_tokenizer()
    ex = StepwiseExample("Q: 1+2*3\n", ["1+2=3", "3*3=4"], [1.0, 0.0])
    data, _ = encode_examples(tok, [ex, StepwiseExample("Q: 2+2\n", ["2+2=4"], [1.0])], StepFormat(), None)
    # the label tokens are the newlines right after each step (char tokenizer: one token per character)
    ids, (p0, p1) = data[0]["input_ids"], data[0]["positions"]
    assert data[0]["targets"] == [1.0, 0.0] and len(ids) == p1 + 1
    assert tok.decode(ids[p0 - 5 : p0 + 1]) == "1+2=3\n" and tok.decode(ids[p1 - 5 : p1 + 1]) == "3*3=4\n"
    (q0,) = data[1]["positions"]
    assert tok.decode(data[1]["input_ids"][q0 - 5 : q0 + 1]) == "2+2=4\n"
    batch = prm_collate(tok.pad_token_id)(data)
    assert batch["labels"].shape == batch["input_ids"].shape == (2, len(ids))
    labelled = (batch["labels"] != IGNORE_LABEL).nonzero().tolist()
    assert labelled == [[0, p0], [0, p1], [1, q0]]
    assert batch["labels"][0, p0] == 1.0 and batch["labels"][0, p1] == 0.0 and batch["labels"][1, q0] == 1.0

    model, _ = build_prm(None, size=SIZE, seed=1)
    loss, metrics = PRMLoss()(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
    x = logits.detach()
    hand = (bce(x[0, p0].item(), 1.0) + bce(x[0, p1].item(), 0.0) + bce(x[1, q0].item(), 1.0)) / 3
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    assert float(metrics["labelled_steps"]) == 3 and float(metrics["frac_pos"]) == pytest.approx(2 / 3)
    want_acc = (int(x[0, p0] >= 0) + int(x[0, p1] < 0) + int(x[1, q0] >= 0)) / 3
    assert float(metrics["step_acc"]) == pytest.approx(want_acc)

    # a logit anywhere else (other tokens, padding) does not move the loss; one at a label does
    base = bce_on_labels(x, batch["labels"])[0].item()
    for row, col in [(0, p0 - 1), (0, p0 + 1), (0, 3), (1, q0 + 2), (1, q0 - 1)]:  # q0 + 2: padding
        moved = x.clone()
        moved[row, col] += 5.0
        assert bce_on_labels(moved, batch["labels"])[0].item() == pytest.approx(base, abs=1e-7)
    for row, col in [(0, p0), (0, p1), (1, q0)]:
        moved = x.clone()
        moved[row, col] += 1.0
        assert abs(bce_on_labels(moved, batch["labels"])[0].item() - base) > 1e-3
    # and the gradient is zero everywhere except the label tokens
    leaf = x.clone().requires_grad_(True)
    bce_on_labels(leaf, batch["labels"])[0].backward()
    assert (leaf.grad != 0).nonzero().tolist() == labelled


def test_soft_and_unlabelled_steps() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.7], [1.5, 0.0, -0.4, 9.0]])
    labels = torch.full_like(logits, IGNORE_LABEL)
    labels[0, 1], labels[0, 3], labels[1, 2] = 0.25, 1.0, 0.6
    loss, m = bce_on_labels(logits, labels)
    hand = (bce(-1.2, 0.25) + bce(0.7, 1.0) + bce(-0.4, 0.6)) / 3
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    assert loss.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([-1.2, 0.7, -0.4]), torch.tensor([0.25, 1.0, 0.6])).item(), rel=1e-6)
    assert float(m["frac_pos"]) == pytest.approx((0.25 + 1.0 + 0.6) / 3)
    assert float(m["step_acc"]) == pytest.approx(2 / 3)  # -1.2 vs 0.25: right; 0.7 vs 1: right; -0.4 vs 0.6: wrong

    # None labels never reach the batch: the loss is the BCE of the labelled steps only
    tok = build_char_tokenizer()
    ex = StepwiseExample("Q: 1+1\n", ["1+1=2", "2+1=3", "3+1=9"], [1.0, None, 0.0])
    data, st = encode_examples(tok, [ex], StepFormat(), None)
    assert data[0]["targets"] == [1.0, None, 0.0] and st.labelled == 2 and st.unlabelled == 1
    batch = prm_collate(tok.pad_token_id)(data)
    assert (batch["labels"] != IGNORE_LABEL).sum().item() == 2
    assert batch["labels"][0, data[0]["positions"][1]].item() == IGNORE_LABEL
    g = torch.randn(batch["labels"].shape)
    p = data[0]["positions"]
    assert bce_on_labels(g, batch["labels"])[0].item() == pytest.approx(
        (bce(g[0, p[0]].item(), 1.0) + bce(g[0, p[2]].item(), 0.0)) / 2, rel=1e-5)


def test_a_batch_without_labels_gives_zero_loss_with_a_graph() -> None:
    tok = build_char_tokenizer()
    model, _ = build_prm(None, size=SIZE, seed=0)
    data, _ = encode_examples(tok, [StepwiseExample("Q: 1+1\n", ["1+1=2"], [1.0])], StepFormat(), None)
    data[0]["targets"] = [None]
    batch = prm_collate(tok.pad_token_id)(data)
    loss, metrics = PRMLoss()(model, batch)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and not torch.isnan(g).any() and g.abs().sum() == 0 for g in grads)
    assert all(float(v) == 0.0 for v in metrics.values())


def test_class_weights() -> None:
    logits = torch.tensor([[0.5, 0.0, -1.0, 2.0]])
    labels = torch.tensor([[1.0, IGNORE_LABEL, 0.0, 1.0]])
    plain = bce_on_labels(logits, labels)[0].item()
    weighted = bce_on_labels(logits, labels, pos_weight=3.0)[0].item()
    assert weighted == pytest.approx((bce(0.5, 1, 3) + bce(-1.0, 0, 3) + bce(2.0, 1, 3)) / 3, rel=1e-6)
    assert weighted > plain
    assert weighted == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0]), pos_weight=torch.tensor(3.0)).item(), rel=1e-6)
    # balance: N / (2 N_class), here 4 labelled targets (None ignored), 3 positive, 1 negative
    w_pos, w_neg = class_weights([1.0, 1.0, None, 0.0, 1.0], balance=True)
    assert (w_pos, w_neg) == pytest.approx((4 / 6, 4 / 2))
    balanced = bce_on_labels(logits, labels, pos_weight=w_pos, neg_weight=w_neg)[0].item()
    assert balanced == pytest.approx((bce(0.5, 1, w_pos, w_neg) + bce(-1.0, 0, w_pos, w_neg)
                                      + bce(2.0, 1, w_pos, w_neg)) / 3, rel=1e-6)
    assert class_weights([0.5, 0.5], balance=True) == (1.0, 1.0)  # soft: half and half
    assert class_weights([1.0, 1.0], balance=True) == (1.0, 1.0)  # one class: nothing to balance
    assert class_weights([1.0, 0.0]) == (1.0, 1.0) and class_weights([1.0], pos_weight=2.0) == (2.0, 1.0)
    with pytest.raises(ValueError, match="not both"):
        class_weights([1.0], pos_weight=2.0, balance=True)


# ------------------------------------------------------------------ data


def test_truncation_keeps_fitting_labels_and_drops_examples_with_none_left() -> None:
    tok = build_char_tokenizer()
    long = StepwiseExample("Q: 1+1+1\n", ["1+1=2", "2+1=3"], [1.0, 0.0])
    late = StepwiseExample("Q: 1+1+1\n", ["1+1=2", "2+1=3"], [None, 1.0])  # its only label is on step 2
    fits = StepwiseExample("Q: 1\n", ["1=1"], [1.0])
    unlabelled = StepwiseExample("Q: 2\n", ["2=2"], [None])
    full, _ = encode_examples(tok, [long, fits], StepFormat(), None)
    p0, p1 = full[0]["positions"]
    cut = p1  # keeps the first step's label token (p0 < cut), loses the second's (p1 >= cut)
    assert len(full[1]["input_ids"]) <= cut
    data, st = encode_examples(tok, [long, late, fits, unlabelled], StepFormat(), max_length=cut)
    assert [len(d["input_ids"]) for d in data] == [cut, len(full[1]["input_ids"])]
    assert data[0]["input_ids"] == full[0]["input_ids"][:cut]
    assert data[0]["positions"] == [p0] and data[0]["targets"] == [1.0]
    assert (st.examples, st.used, st.truncated, st.dropped_no_label, st.dropped_by_truncation, st.lost_labels) == (
        4, 2, 2, 2, 1, 2)
    assert (st.labelled, st.positive, st.negative, st.soft, st.unlabelled) == (2, 2, 0, 0, 0)
    none_fit, st = encode_examples(tok, [long], StepFormat(), max_length=p0)
    assert none_fit == [] and st.dropped_no_label == 1 and st.lost_labels == 2


def test_the_validation_split_never_shares_a_problem() -> None:
    examples = generate_dataset(200, EASY, seed=5, samples_per_problem=3)
    for seed in range(4):
        train_ex, val_ex = split_by_problem(examples, 0.2, seed)
        assert len(train_ex) + len(val_ex) == 600
        assert not {e.extra["id"] for e in train_ex} & {e.extra["id"] for e in val_ex}
        assert not {e.prompt for e in train_ex} & {e.prompt for e in val_ex}  # duplicate prompts stay together
        assert 0.1 < len(val_ex) / 600 < 0.3
    assert split_by_problem(examples, 0.2, 1) == split_by_problem(examples, 0.2, 1)
    assert split_by_problem(examples, 0.2, 1) != split_by_problem(examples, 0.2, 2)
    # without ids the prompt is the problem; an id links different prompts; at least one of each side
    no_ids = [StepwiseExample(p, ["a"], [1.0]) for p in ["x", "y", "x", "z", "y"]]
    assert problem_groups(no_ids) == [0, 1, 0, 2, 1]
    linked = [StepwiseExample("x", ["a"], [1.0], {"id": 7}), StepwiseExample("y", ["a"], [1.0], {"id": 7})]
    assert problem_groups(linked) == [0, 0]
    tr, va = split_by_problem(no_ids, 0.01, 0)
    assert len({e.prompt for e in va}) == 1 and not {e.prompt for e in tr} & {e.prompt for e in va}
    assert split_by_problem(no_ids, 0.0, 0) == (no_ids, [])
    with pytest.raises(PRMTrainConfigError, match="val_fraction"):
        split_by_problem(no_ids, 1.0, 0)


def test_step_metrics_by_hand() -> None:
    data = [{"targets": [1.0, 0.0, None]}, {"targets": [1.0]}]
    m = step_metrics([[2.0, -1.0, 5.0], [-0.5]], data)
    assert m["steps"] == 3
    assert m["loss"] == pytest.approx((bce(2.0, 1) + bce(-1.0, 0) + bce(-0.5, 1)) / 3)
    assert m["step_acc"] == pytest.approx(2 / 3)
    assert m["step_auroc"] == 1.0  # both positives (2.0, -0.5) above the negative (-1.0)
    assert m["local_auroc"] == 1.0


# ------------------------------------------------------------------ a tiny PRM learns

# Step checking that a tiny model learns from step labels alone in a few hundred steps: one
# operator, operands 1..2 (10 facts mod 5). With {+,-,*} and operands 1..4 a PRM from scratch
# (1-2 layers, 32-128 dims) stayed at the position baseline for 3000 steps: a step check is a
# three-way interaction (left, right, result) and one BCE bit per step gives it no gradient.
LEARNABLE = ArithConfig(min_ops=2, max_ops=5, modulus=5, operand_min=1, operand_max=2, operators=("+",),
                        slip_rate=0.3, systematic_rate=0.0, num_systematic=0)


def _learn(tmp_path: Path, *overrides: str, seed: int = 0) -> tuple[dict, float]:
    examples = generate_dataset(3000, LEARNABLE, seed=seed, samples_per_problem=2)
    path = tmp_path / "learnable.jsonl"
    write_stepwise(path, examples)
    s = run(cfg_of(*TINY_MODEL, *TINY_TRAIN, f"data.path={path}", f"run_dir={tmp_path / 'run'}", "val_fraction=0.2",
                   f"seed={seed}", f"split_seed={seed}", "train.batch_size=64", "train.lr=3e-3", "train.warmup_steps=10",
                   "train.log_every=100", *overrides))
    _, val = split_by_problem(examples, 0.2, seed)
    position = auroc([-i for e in val for i in range(len(e.labels))], [y for e in val for y in e.labels])
    return s, position


def test_a_tiny_prm_learns_to_check_steps(tmp_path: Path) -> None:
    s, position = _learn(tmp_path, "train.max_steps=400")
    assert s["step"] == 400 and s["n_val"] > 500
    # "later steps are more often off track" alone gives ~0.70 here; the PRM checks the arithmetic
    assert 0.65 < position < 0.75
    assert s["val_step_auroc"] > 0.8 and s["val_step_auroc"] > position + 0.1, (s, position)
    # among steps whose earlier steps are right every step slips with the same probability, so only
    # checking the step itself ranks them
    assert s["val_local_auroc"] > 0.75, s
    assert s["val_loss"] < 0.5 and s["val_step_acc"] > 0.75, s


@pytest.mark.slow
def test_a_bigger_prm_trained_longer_checks_steps_well(tmp_path: Path) -> None:
    # Since the answer is a labelled step, validation includes answer steps, whose label depends on every earlier
    # step: measured step AUROC 0.834 and local AUROC 0.782 after 1500 steps (0.844 step AUROC after 2500, val
    # loss rising: longer training overfits 3000 problems), against 0.691 for step position alone. Before, without
    # answer steps, 0.85 / 0.8 held. The bounds keep a margin for thread-count numerics.
    # Measured with length-bucketed batches; with prm-train's default windowed batches this from-scratch run reached
    # 0.786 step AUROC (one seed; from the policy's backbone, windowed batches did better: benchmarks/README.md).
    # The end point is chaotic (1500 steps overfit 3000 problems: val loss ~1): fourteen runs differing only in float
    # rounding (the label-position forward against the full one; lr 3e-3 or 1e-3, changed by 1e-7 relative) ended at
    # step AUROC 0.774-0.878 and local AUROC 0.705-0.830 (2026-12-02, stop 19; this exact run: 0.774 / 0.705), so the
    # bounds sit below that spread.
    s, position = _learn(tmp_path, "model.n_layer=2", "model.n_embd=64", "train.max_steps=1500", "train.batching=bucketed",
                         "train.splits=1", seed=3)
    assert s["val_step_auroc"] > 0.75 and s["val_step_auroc"] > position + 0.06, (s["val_step_auroc"], position)
    assert s["val_local_auroc"] > 0.68, s["val_local_auroc"]


# ------------------------------------------------------------------ the app


def test_app_tiny_run_writes_a_reloadable_prm_and_summary(tmp_path: Path, easy_file: Path) -> None:
    run_dir = tmp_path / "run"
    s = run(cfg_of(*TINY, f"data.path={easy_file}", f"run_dir={run_dir}", "val_fraction=0.2"))
    assert s["step"] == 3 and s["n_train"] + s["n_val"] == 120 and s["dropped_no_label"] == 0
    assert s["train_data"]["labelled"] + s["val_data"]["labelled"] > 120
    saved = json.loads((run_dir / "train_summary.json").read_text())
    for key in ("n_train", "n_val", "dropped_no_label", "truncated", "train_loss", "val_loss", "val_step_acc",
                "val_step_auroc", "train_data", "val_data"):
        assert key in saved, key
    assert 0 <= saved["val_step_acc"] <= 1 and 0 <= saved["val_step_auroc"] <= 1 and saved["val_loss"] > 0
    assert (run_dir / "config.yaml").exists() and load_metrics(run_dir)[-1]["step"] == 3

    model = AutoModelForTokenClassification.from_pretrained(str(run_dir / "model"))
    tok = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    assert model.config.num_labels == 1
    ids = torch.tensor([tok("Q: 1+2\n\n1+2=3\n").input_ids])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 1)


def test_config_defaults_and_data_sources(tmp_path: Path) -> None:
    cfg = cfg_of()
    assert cfg.data.path == "runs/sample/samples.jsonl" and cfg.init_from is None and cfg.run_dir == "runs/prm"
    assert cfg.model.n_layer >= 1 and cfg.logger.name == "none" and cfg.train.lr == 1e-3
    assert "prm800k_sample" in str(cfg_of("data=prm800k").data.path)  # the group keeps its own path
    # data=arith: the world's solutions, labelled exactly (and bf16 autocast on CPU)
    s = run(cfg_of(*TINY, "data=arith", "data.n_problems=30", "data.world.max_ops=3", "train.mixed_precision=bf16",
                   f"run_dir={tmp_path / 'a'}"))
    assert s["n_train"] + s["n_val"] == 30 and s["step"] == 3 and math.isfinite(s["train_loss"])


@pytest.mark.skipif(not PRM800K_SAMPLE.exists(), reason="shared PRM800K sample not found")
def test_prm800k_directly_with_truncation_counted(tmp_path: Path) -> None:
    s = run(cfg_of(*TINY, "model.n_positions=512", "max_length=256", "data=prm800k", f"data.path={PRM800K_SAMPLE}",
                   "val_fraction=0",
                   f"run_dir={tmp_path / 'p'}"))
    assert s["n_train"] > 0 and s["dropped_no_label"] > 0 and s["truncated"] > 0 and s["train_data"]["lost_labels"] > 0
    assert s["n_train"] + s["dropped_no_label"] == s["train_data"]["examples"] == 17
    assert s["val_step_auroc"] is None and s["n_val"] == 0


def test_init_from_a_policy_copies_its_backbone(tmp_path: Path, easy_file: Path) -> None:
    tok = build_char_tokenizer()
    policy = build_tiny_gpt(tok, SIZE, seed=11)
    save_model(policy, tok, tmp_path / "policy")
    model, _ = build_model(cfg_of(*TINY, f"init_from={tmp_path / 'policy'}"))
    prm_state, lm_state = model.state_dict(), policy.state_dict()
    backbone = [k for k in lm_state if k.startswith("transformer.")]
    assert backbone and all(torch.equal(prm_state[k], lm_state[k]) for k in backbone)
    scratch, _ = build_model(cfg_of(*TINY))
    assert not torch.equal(scratch.state_dict()["transformer.wte.weight"], lm_state["transformer.wte.weight"])
    # through the app: trains and saves
    s = run(cfg_of(*TINY, f"init_from={tmp_path / 'policy'}", f"data.path={easy_file}", f"run_dir={tmp_path / 'r'}"))
    assert s["init_from"] == str(tmp_path / "policy") and (tmp_path / "r" / "model" / "tokenizer.json").exists()


def test_resume_after_a_kill_gives_the_same_parameters(tmp_path: Path, easy_file: Path) -> None:
    args = [*TINY_MODEL, *TINY_TRAIN, "train.max_steps=6", "train.save_every=3", f"data.path={easy_file}"]
    run(cfg_of(*args, f"run_dir={tmp_path / 'whole'}"))

    class Killed(Exception):
        pass

    def kill(state, row) -> None:  # type: ignore[no-untyped-def]
        if state.step == 4:  # one step after the checkpoint at 3
            raise Killed

    with pytest.raises(Killed):
        run(cfg_of(*args, f"run_dir={tmp_path / 'cut'}"), callbacks=[kill])
    assert not (tmp_path / "cut" / "model").exists()
    s = run(cfg_of(*args, f"run_dir={tmp_path / 'cut'}"))
    assert s["step"] == 6 and s["resumed_from"] == 3
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_bad_inputs_fail_clearly(tmp_path: Path, easy_file: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        run(cfg_of(*TINY, f"data.path={tmp_path / 'nope.jsonl'}", f"run_dir={tmp_path / 'r'}"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        run(cfg_of(*TINY, f"data.path={empty}", f"run_dir={tmp_path / 'r'}"))
    unlabelled = tmp_path / "unlabelled.jsonl"
    write_jsonl(unlabelled, [{"prompt": "Q: 1\n", "completions": ["1=1"], "labels": [None]}] * 3)
    with pytest.raises(DataError, match="no training example keeps a labelled step"):
        run(cfg_of(*TINY, f"data.path={unlabelled}", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(ConfigCompositionException) as err:
        cfg_of("train.lrr=1")
    assert "lrr" in str(err.value) + str(err.value.__cause__)
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        run(cfg_of(*TINY, f"init_from={not_a_model}", f"data.path={easy_file}", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(PRMTrainConfigError, match="not both"):
        run(cfg_of(*TINY, "pos_weight=2", "balance=true", f"data.path={easy_file}", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(PRMTrainConfigError, match="max_length=100 exceeds"):
        run(cfg_of(*TINY, "max_length=100", f"data.path={easy_file}", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(PRMTrainConfigError, match="model.path is not set"):
        run(cfg_of(*TINY_TRAIN, "model=hf_local", f"data.path={easy_file}", f"run_dir={tmp_path / 'r'}"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([PYTHON, "-m", "prm.prm_train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_tiny_run(tmp_path: Path, easy_file: Path) -> None:
    run_dir = tmp_path / "cli"
    ok = _cli(*TINY, f"data.path={easy_file}", f"run_dir={run_dir}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((run_dir / "train_summary.json").read_text())["step"] == 3
    assert (run_dir / "hydra" / "config.yaml").exists() and (run_dir / "model" / "config.json").exists()
    assert load_step_format(run_dir / "model") == StepFormat()  # the PRM records the format it was trained on
    assert "dropped (no label left)" in ok.stdout



def test_main_reports_errors_without_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from prm.prm_train import main

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    missing = tmp_path / "missing.jsonl"
    monkeypatch.setattr(sys, "argv", ["prm-train", *TINY, f"data.path={missing}", f"run_dir={tmp_path / 'm'}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "prm-train: error:" in err and "missing.jsonl: file not found" in err
    assert "Traceback" not in err
    monkeypatch.setattr(sys, "argv", ["prm-train", *TINY, "train.lrr=1", f"run_dir={tmp_path / 't'}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code != 0 and "lrr" in capsys.readouterr().err
