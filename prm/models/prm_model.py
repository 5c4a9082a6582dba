"""The PRM model: any causal-LM backbone with a token-classification head (one logit per token).

A PRM is a Hugging Face ``AutoModelForTokenClassification`` with ``num_labels=1`` (our own
convention: sigmoid of the logit at a step's last token = P(step on track)), so it saves and
reloads with plain ``save_pretrained`` / ``from_pretrained``. It is built from scratch (a tiny GPT
from a config), or initialised from any local causal LM directory (e.g. the policy: the backbone's
weights load, the head starts fresh). ``token_logits`` runs the backbone with an optional KV cache
and applies the head, which is what incremental scoring during search needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    Cache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prm.models.loading import (
    ModelLoadError,
    TinyGPTConfig,
    check_model_dir,
    fuse_activations,
    load_tokenizer,
    save_model,
    tiny_gpt_config,
)
from prm.models.tokenizer import build_char_tokenizer

HEAD_NAMES = ("classifier", "score")


def build_prm(
    backbone: str | Path | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    size: TinyGPTConfig | None = None,
    num_labels: int = 1,
    seed: int = 0,
    extra_layers: int = 0,
    head_dropout: float = 0.0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh PRM: from a local model directory's backbone (head new), or a tiny GPT from scratch.

    ``extra_layers`` (backbone only) stacks that many freshly initialised transformer layers on top of
    the backbone's (before its final norm): a deeper PRM that keeps everything the policy learned.
    ``head_dropout``: dropout on the head's input while training (``config.classifier_dropout``; 0 by
    default; Hugging Face's GPT-2 token classifier, as TRL's PRMTrainer loads it, uses 0.1).
    """
    if not 0.0 <= head_dropout < 1.0:
        raise ValueError(f"head_dropout={head_dropout} must be in [0, 1)")
    if extra_layers < 0 or (extra_layers and backbone is None):
        raise ValueError(f"extra_layers={extra_layers}: a non-negative number of layers added to a backbone "
                         "(from scratch, set the model's own layer count)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone is not None:
            p = check_model_dir(backbone)
            tok = tokenizer or load_tokenizer(p)
            try:
                config = AutoConfig.from_pretrained(str(p), num_labels=num_labels, local_files_only=True)
                config.classifier_dropout = head_dropout
                if extra_layers:
                    if not isinstance(getattr(config, "num_hidden_layers", None), int):
                        raise ModelLoadError(f"{p}: its config has no num_hidden_layers, so extra_layers cannot grow it")
                    config.num_hidden_layers += extra_layers  # the missing layers initialise fresh
                model = AutoModelForTokenClassification.from_pretrained(str(p), config=config, local_files_only=True)
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"could not build a PRM from the backbone in {p}: {e}") from e
        else:
            tok = tokenizer or build_char_tokenizer()
            config = tiny_gpt_config(len(tok), size, pad_token_id=tok.pad_token_id,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
            config.num_labels = num_labels
            config.classifier_dropout = head_dropout
            model = AutoModelForTokenClassification.from_config(config)
    if model.config.pad_token_id is None and tok.pad_token_id is not None:
        model.config.pad_token_id = tok.pad_token_id
    return fuse_activations(model), tok


def load_prm(path: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Reload a saved PRM (``save_prm`` or any token-classification model directory) with its tokenizer."""
    p = check_model_dir(path)
    try:
        model = AutoModelForTokenClassification.from_pretrained(str(p), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load a PRM from {p}: {e}") from e
    return fuse_activations(model), load_tokenizer(p)


def save_prm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Save the PRM in Hugging Face format with its tokenizer beside it."""
    return save_model(model, tokenizer, path)


def prm_head(model: PreTrainedModel) -> torch.nn.Module:
    """The token-classification head (``classifier`` for GPT-2, ``score`` for Llama-style models)."""
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ModelLoadError(f"{type(model).__name__} has no token-classification head ({' or '.join(HEAD_NAMES)})")


def token_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
    cache: Cache | None = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Cache | None]:
    """Per-token head logits ``[batch, tokens, num_labels]`` and the KV cache (when ``use_cache``)."""
    out = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=use_cache,
    )
    return prm_head(model)(out.last_hidden_state), (out.cache if use_cache else None)
