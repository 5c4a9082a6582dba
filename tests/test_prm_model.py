"""The PRM model: built from scratch or from a policy's backbone, saved/reloaded, cached forward = full forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification

from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from prm.models.prm_inputs import encode_steps
from prm.models.prm_model import build_prm, load_prm, save_prm, token_logits
from prm.models.tokenizer import build_char_tokenizer
from prm.steps import PLAIN

SIZE = TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64)


def test_prm_from_policy_keeps_backbone_and_reloads(tmp_path: Path) -> None:
    policy, tok = load_causal_lm(size=SIZE, seed=1)
    save_model(policy, tok, tmp_path / "policy")
    prm, prm_tok = build_prm(tmp_path / "policy")
    assert torch.equal(prm.transformer.wte.weight, policy.transformer.wte.weight)
    assert prm.config.num_labels == 1
    save_prm(prm, prm_tok, tmp_path / "prm")
    plain = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "prm")).eval()
    again, _ = load_prm(tmp_path / "prm")
    ids = torch.tensor([prm_tok("Q: 1+2\n1+2=3\n").input_ids])
    assert torch.allclose(plain(ids).logits, again.eval()(ids).logits)


def test_cached_forward_equals_full_forward() -> None:
    prm, tok = build_prm(size=SIZE, seed=0)
    prm.eval()
    ids = torch.tensor([tok("Q: 1+2*3\n1+2=3\n3*3=9\n").input_ids])
    with torch.inference_mode():
        full = prm(ids).logits
        head, cache = token_logits(prm, ids[:, :7], use_cache=True)
        tail, _ = token_logits(prm, ids[:, 7:], cache=cache, use_cache=True)
    assert torch.allclose(torch.cat([head, tail], dim=1), full, atol=1e-5)


def test_encode_steps_puts_positions_on_separators_and_truncates() -> None:
    tok = build_char_tokenizer()
    enc = encode_steps(tok, "Q: 1+2*3", ["1+2=3", "3*3=9"], PLAIN)
    text = "Q: 1+2*3\n1+2=3\n3*3=9\n"
    assert enc.input_ids[0] == tok.bos_token_id and len(enc.input_ids) == len(text) + 1
    # BOS shifts every character by one: the separators after the steps are chars 14 and 20.
    assert enc.positions == [15, 21]
    assert all(tok.convert_ids_to_tokens(enc.input_ids[p]) == "\n" for p in enc.positions)
    cut = encode_steps(tok, "Q: 1+2*3", ["1+2=3", "3*3=9"], PLAIN, max_length=18)
    assert cut.positions == [15] and cut.kept == 1 and cut.truncated and len(cut.input_ids) == 18


def test_extra_layers_stack_fresh_layers_on_the_backbone(tmp_path: Path) -> None:
    policy, tok = load_causal_lm(size=SIZE, seed=1)
    save_model(policy, tok, tmp_path / "policy")
    prm, prm_tok = build_prm(tmp_path / "policy", extra_layers=2, seed=0)
    assert prm.config.n_layer == 3 and len(prm.transformer.h) == 3
    src, grown = policy.transformer.h[0].state_dict(), prm.transformer.h[0].state_dict()
    assert all(torch.equal(src[k], grown[k]) for k in src)  # the policy's layer kept as it was
    assert not torch.equal(prm.transformer.h[1].attn.c_attn.weight, prm.transformer.h[0].attn.c_attn.weight)
    again, _ = build_prm(tmp_path / "policy", extra_layers=2, seed=0)  # the fresh layers are seeded
    assert torch.equal(again.transformer.h[2].mlp.c_fc.weight, prm.transformer.h[2].mlp.c_fc.weight)
    save_prm(prm, prm_tok, tmp_path / "prm")
    reloaded, _ = load_prm(tmp_path / "prm")
    ids = torch.tensor([prm_tok("Q: 1+2\n1+2=3\n").input_ids])
    assert torch.allclose(reloaded.eval()(ids).logits, prm.eval()(ids).logits)


def test_extra_layers_need_a_backbone() -> None:
    with pytest.raises(ValueError, match="extra_layers"):
        build_prm(size=SIZE, extra_layers=1)


def test_head_dropout_acts_in_training_only(tmp_path: Path) -> None:
    """``head_dropout`` (0 by default) drops the head's input while training; evaluation is deterministic,
    from scratch and from a backbone alike, and a rate outside [0, 1) is an error."""
    policy, tok = load_causal_lm(size=SIZE, seed=1)
    save_model(policy, tok, tmp_path / "policy")
    ids = torch.tensor([tok("Q: 1+2*3\n1+2=3\n3*3=9\n").input_ids])
    assert build_prm(tmp_path / "policy")[0].dropout.p == 0.0
    for prm, _ in (build_prm(tmp_path / "policy", head_dropout=0.5), build_prm(size=SIZE, head_dropout=0.5)):
        assert prm.dropout.p == 0.5
        torch.manual_seed(0)
        train = [prm.train()(ids).logits for _ in range(2)]
        assert not torch.equal(train[0], train[1])
        assert torch.equal(prm.eval()(ids).logits, prm.eval()(ids).logits)
    with pytest.raises(ValueError, match="head_dropout"):
        build_prm(size=SIZE, head_dropout=1.0)
