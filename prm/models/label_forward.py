"""A PRM's logits at its label positions only, with the last layer run only where a label is read.

Training and validating a PRM read one logit per labelled step (the step's last token), a few
percent of the tokens. Every layer but the last must still run on every token (later tokens'
keys and values depend on them), but the last layer's output is read only at the label
positions: there it needs keys and values of every token and nothing else. ``label_logits``
runs the backbone without its last layer, then that layer's key/value projection on every
token and its queries, attention output, MLP, the final norm and the head only at the label
positions: exactly the logits of the full forward at those positions (up to float rounding),
for a fraction of the last layer's cost (on the 2-layer benchmark PRM of
``benchmarks/trl_prm.py``, most of a layer; on a deep model about one layer in n).

Implemented for GPT-2 token-classification models (the arithmetic world's PRMs, and any local
GPT-2 checkpoint), padded (``attention_mask``) or packed (``position_ids`` restarting at 0) batches;
any other model, a model wrapped for several processes (DDP), or a batch without a label takes
the plain full forward, with the same result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def supports_label_forward(model: torch.nn.Module) -> bool:
    """Whether ``label_logits`` can run ``model``'s last layer at the label positions only."""
    config = getattr(model, "config", None)
    transformer = getattr(model, "transformer", None)
    return (
        getattr(config, "model_type", None) == "gpt2"
        and isinstance(getattr(model, "classifier", None), torch.nn.Module)
        and isinstance(getattr(transformer, "h", None), torch.nn.ModuleList)
        and len(transformer.h) >= 1
        and isinstance(getattr(model, "dropout", None), torch.nn.Module)
        and not getattr(config, "add_cross_attention", False)
    )


@contextmanager
def _without_last_layer(transformer: torch.nn.Module) -> Iterator[None]:
    """The backbone with its last block and final norm taken out (put back on exit, whatever happens)."""
    blocks, norm = transformer.h, transformer.ln_f
    transformer.h = torch.nn.ModuleList(list(blocks)[:-1])
    transformer.ln_f = torch.nn.Identity()
    try:
        yield
    finally:
        transformer.h, transformer.ln_f = blocks, norm


def _full(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"), use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out
    return logits.squeeze(-1)[mask] if logits.dim() == 3 and logits.size(-1) == 1 else logits[mask]


def label_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The model's logit at every position where ``mask`` (``[batch, tokens]``, bool) is true, in row-major
    order (``logits[mask]`` of the full forward). ``batch``: ``input_ids`` with ``attention_mask``
    (right padding) or ``position_ids`` (packed rows, see ``prm.prm_loss.prm_collate``)."""
    if not supports_label_forward(model) or not bool(mask.any()):
        return _full(model, batch, mask)
    ids = batch["input_ids"]
    attention_mask, position_ids = batch.get("attention_mask"), batch.get("position_ids")
    transformer = model.transformer
    last = transformer.h[-1]
    attn = last.attn
    with _without_last_layer(transformer):
        hidden = transformer(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).last_hidden_state  # the last block's input, every token
    b, t, d = hidden.shape
    heads = attn.num_heads
    # The label positions, grouped per row: qpos[row, r] = the r-th label column of the row.
    rows, cols = mask.nonzero(as_tuple=True)
    counts = mask.sum(1)
    width = int(counts.max().item())
    rank = torch.arange(rows.numel(), device=ids.device) - (torch.cumsum(counts, 0) - counts)[rows]
    qpos = torch.zeros((b, width), dtype=torch.long, device=ids.device)
    qpos[rows, rank] = cols
    used = torch.zeros((b, width), dtype=torch.bool, device=ids.device)
    used[rows, rank] = True
    # What each label's query may see: earlier or same positions, real tokens, its own packed example.
    keys = torch.arange(t, device=ids.device)
    visible = keys[None, None, :] <= qpos[:, :, None]
    if attention_mask is not None:
        visible = visible & attention_mask.bool()[:, None, :]
    if position_ids is not None:
        segment = torch.cumsum((position_ids == 0).long(), dim=1)
        visible = visible & (segment[:, None, :] == segment.gather(1, qpos)[:, :, None])

    x = last.ln_1(hidden)
    weight, bias = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: [d, 3d], y = x @ W + b
    kv = torch.addmm(bias[d:], x.reshape(-1, d), weight[:, d:]).view(b, t, 2, heads, d // heads)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    picked = torch.arange(b, device=ids.device)[:, None]
    q = torch.addmm(bias[:d], x[picked, qpos].reshape(-1, d), weight[:, :d]).view(b, width, heads, d // heads)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=visible[:, None],
                                         dropout_p=attn.attn_dropout.p if model.training else 0.0,
                                         scale=attn.scaling)
    out = attn.resid_dropout(attn.c_proj(out.transpose(1, 2).reshape(b, width, d)))
    h = hidden[picked, qpos] + out
    h = h + last.mlp(last.ln_2(h))
    logits = model.classifier(model.dropout(transformer.ln_f(h)))
    return logits.squeeze(-1)[used]
