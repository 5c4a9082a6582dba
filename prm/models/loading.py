"""Build tiny GPT-style models from a config, or load any local Hugging Face model directory.

``load_causal_lm`` is the one way the project gets a causal LM: a dict/config with ``path``
loads a saved directory (ours or any Hugging Face model on disk, never from a hub at run time
unless the user allows it); without ``path`` a tiny GPT-2 style model is built from scratch.

Every model the project builds or loads (here and in ``prm.models.prm_model``) goes through
``fuse_activations``: GPT-2's ``gelu_new`` (the tanh approximation of GELU written as five
elementwise torch ops, each with its own autograd node) is replaced by torch's one fused kernel of
the same function (``F.gelu(approximate="tanh")``, equal to float rounding, ~1e-7). On the tiny
models of the arithmetic world the activation was a third of the forward time and more of the
backward; the saved config is untouched, so a checkpoint reloads as before anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

from prm.models.tokenizer import build_char_tokenizer

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a config string (fp32, bf16, fp16 or their long names) or a dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (one of {sorted(DTYPES)})")
    return DTYPES[dtype]


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Replace unfused tanh-GELU modules (``gelu_new``, ``gelu_fast``, GELUTanh's python path) by torch's
    fused ``gelu(approximate="tanh")`` in place (see the module docstring); returns ``model``."""
    slow = (NewGELUActivation, FastGELUActivation)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, slow) or (isinstance(child, GELUTanh) and child.act == child._gelu_tanh_python):
                setattr(parent, name, GELUTanh())
    return model


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message says which path and why."""


@dataclass
class TinyGPTConfig:
    """Size of a GPT-2 style model built from nothing (defaults: ~0.4M parameters)."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256
    dropout: float = 0.0


def tiny_gpt_config(vocab_size: int, size: TinyGPTConfig | None = None, **special_ids: int | None) -> GPT2Config:
    """A ``GPT2Config`` of the given size for a vocabulary (pass pad/bos/eos token ids as keywords)."""
    size = size or TinyGPTConfig()
    if size.n_embd % size.n_head:
        raise ValueError(f"n_embd ({size.n_embd}) must be divisible by n_head ({size.n_head})")
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=size.n_positions,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        resid_pdrop=size.dropout,
        embd_pdrop=size.dropout,
        attn_pdrop=size.dropout,
        **{k: v for k, v in special_ids.items() if v is not None},
    )


def build_tiny_gpt(tokenizer: PreTrainedTokenizerBase, size: TinyGPTConfig | None = None, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised tiny GPT-2 for ``tokenizer`` (deterministic per seed)."""
    config = tiny_gpt_config(
        len(tokenizer),
        size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fuse_activations(AutoModelForCausalLM.from_config(config))


def check_model_dir(path: str | Path) -> Path:
    """Fail clearly unless ``path`` is a directory holding a Hugging Face ``config.json``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model directory {p} does not exist")
    if not p.is_dir():
        raise ModelLoadError(f"model path {p} is a file, expected a model directory")
    if not (p / "config.json").exists():
        raise ModelLoadError(f"{p} is not a Hugging Face model directory (no config.json in it)")
    return p


def load_tokenizer(path: str | Path | None) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory, or build the character tokenizer when ``path`` is None."""
    if path is None:
        return build_char_tokenizer()
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"tokenizer directory {p} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load a tokenizer from {p}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    path: str | Path | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    size: TinyGPTConfig | None = None,
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (and its tokenizer) from a local directory, or build a tiny one from scratch.

    With ``path``: ``AutoModelForCausalLM.from_pretrained`` (local files only) and the tokenizer
    saved beside it (or ``tokenizer`` if given). Without: the character tokenizer (or ``tokenizer``)
    and a tiny GPT of ``size``.
    """
    dtype = as_dtype(dtype)
    if path is None:
        tok = tokenizer or build_char_tokenizer()
        return build_tiny_gpt(tok, size, seed=seed).to(dtype), tok
    p = check_model_dir(path)
    tok = tokenizer or load_tokenizer(p)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load a causal LM from {p}: {e}") from e
    return fuse_activations(model), tok


def model_and_tokenizer(
    owner: str,
    model_or_path: Any,
    tokenizer: PreTrainedTokenizerBase | None,
    dtype: str | torch.dtype | None,
    load: Callable[[Path, torch.dtype], tuple[PreTrainedModel, PreTrainedTokenizerBase]],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A loaded model with its tokenizer, or ``load(path, dtype)`` for a model directory.

    ``dtype`` None keeps a loaded model's dtype (fp32 when loading). A directory's own tokenizer
    is used unless ``tokenizer`` is given; a loaded model needs its tokenizer passed with it.
    ``owner`` names the caller in the errors.
    """
    if model_or_path is None:
        raise ValueError(f"{owner} needs a model or a model directory (got None)")
    if isinstance(model_or_path, (str, Path)):
        model, tok = load(Path(model_or_path), as_dtype(dtype or "fp32"))
        return model, tokenizer or tok
    if tokenizer is None:
        raise ValueError(f"{owner}: pass the tokenizer together with a loaded model")
    return (model_or_path.to(as_dtype(dtype)) if dtype is not None else model_or_path), tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """``save_pretrained`` the model with its tokenizer beside it, so any tool can load the directory."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(p))
    tokenizer.save_pretrained(str(p))
    return p


def parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters (each tied tensor counted once)."""
    return sum(p.numel() for p in model.parameters())
