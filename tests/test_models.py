"""The character tokenizer and the tiny-model builder: saved and reloaded as plain Hugging Face objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prm.models.loading import ModelLoadError, TinyGPTConfig, load_causal_lm, load_tokenizer, parameter_count, save_model
from prm.models.tokenizer import build_char_tokenizer, save_char_tokenizer

TEXT = "Q: 7+5*3-4\n7+5=2\n2*3=6\n6-4=2\n# Answer: 2"


def test_char_tokenizer_one_token_per_character(tmp_path: Path) -> None:
    save_char_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    enc = tok(TEXT, add_special_tokens=False, return_offsets_mapping=True)
    assert len(enc["input_ids"]) == len(TEXT)
    assert enc["offset_mapping"] == [(i, i + 1) for i in range(len(TEXT))]
    assert tok.decode(enc["input_ids"]) == TEXT
    with_bos = tok(TEXT, return_offsets_mapping=True)
    assert with_bos["input_ids"] == [tok.bos_token_id, *enc["input_ids"]]
    assert with_bos["offset_mapping"][0] == (0, 0)
    newline = tok.convert_tokens_to_ids("\n")
    assert [i for i, t in enumerate(enc["input_ids"]) if t == newline] == [i for i, c in enumerate(TEXT) if c == "\n"]
    assert tok.unk_token_id not in enc["input_ids"]


def test_char_tokenizer_special_tokens_and_unknown() -> None:
    tok = build_char_tokenizer()
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    ids = [*tok("ab").input_ids, tok.eos_token_id]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    assert tok("é", add_special_tokens=False).input_ids == [tok.unk_token_id]


def test_tiny_model_saves_and_reloads_with_auto_classes(tmp_path: Path) -> None:
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), seed=3)
    assert parameter_count(model) < 50_000
    save_model(model, tok, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    plain_tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    ids = torch.tensor([plain_tok(TEXT).input_ids])
    assert torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-6)
    again, again_tok = load_causal_lm(tmp_path / "m")
    assert torch.allclose(again(ids).logits, plain(ids).logits, atol=1e-6)
    assert again_tok(TEXT).input_ids == plain_tok(TEXT).input_ids


def test_builder_is_deterministic_per_seed() -> None:
    size = TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64)
    a, _ = load_causal_lm(size=size, seed=1)
    b, _ = load_causal_lm(size=size, seed=1)
    c, _ = load_causal_lm(size=size, seed=2)
    wa, wb, wc = (m.transformer.wte.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_bad_model_paths_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    save_char_tokenizer(tmp_path / "tok_only")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_causal_lm(tmp_path / "tok_only")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_causal_lm(tmp_path / "file")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(tmp_path / "missing_tok")
    with pytest.raises(ValueError, match="divisible"):
        load_causal_lm(size=TinyGPTConfig(n_embd=30, n_head=4))


def test_any_local_hf_model_directory_loads_through_the_same_function(tmp_path: Path) -> None:
    """A non-GPT-2 architecture saved by plain transformers (as a user's hub model would be) loads too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config)
    reference.save_pretrained(str(tmp_path / "llama"))
    tok.save_pretrained(str(tmp_path / "llama"))
    model, loaded_tok = load_causal_lm(tmp_path / "llama")
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([loaded_tok(TEXT).input_ids])
    assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)


def test_loaded_models_use_the_fused_gelu_with_the_same_outputs(tmp_path: Path) -> None:
    """Every model we build or load runs torch's fused tanh-GELU; the function (and the saved config) is GPT-2's."""
    from transformers.activations import GELUTanh, NewGELUActivation

    from prm.models.prm_model import build_prm, load_prm

    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=2, n_embd=32, n_head=2), seed=0)
    assert all(isinstance(b.mlp.act, GELUTanh) for b in model.transformer.h)
    save_model(model, tok, tmp_path / "lm")
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm")).config.activation_function == "gelu_new"
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm"))
    assert isinstance(plain.transformer.h[0].mlp.act, NewGELUActivation)
    loaded, _ = load_causal_lm(tmp_path / "lm")
    assert isinstance(loaded.transformer.h[0].mlp.act, GELUTanh)
    x = torch.randint(4, len(tok), (3, 20))
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, plain(x).logits, atol=1e-5)
    prm, _ = build_prm(tmp_path / "lm", extra_layers=1)
    assert all(isinstance(b.mlp.act, GELUTanh) for b in prm.transformer.h)
    save_model(prm, tok, tmp_path / "prm")
    reloaded, _ = load_prm(tmp_path / "prm")
    assert all(isinstance(b.mlp.act, GELUTanh) for b in reloaded.transformer.h)
