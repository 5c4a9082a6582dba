"""``GrowingCache``: decoding into reserved buffers gives exactly a ``DynamicCache``'s results, in place.

A tiny GPT-2 (absolute positions) and a tiny Llama (rotary) decode greedily token by token from a
padded batch, once with HF's concatenating ``DynamicCache`` and once with ``GrowingCache``, through
the operations the generator uses (prefill from given keys/values, ``batch_repeat_interleave``,
``batch_select_indices`` to drop finished rows, growth past the reserve): same logits to float
rounding, same tokens; within the reserve a step never reallocates the buffers.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from prm.models.growing_cache import GrowingCache, GrowingLayer
from prm.models.loading import TinyGPTConfig, load_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")


def _models() -> dict[str, torch.nn.Module]:
    gpt, tok = load_causal_lm(size=TinyGPTConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), seed=0)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128))
    return {"gpt2": gpt.eval(), "llama": llama.eval()}


MODELS = _models()


def _decode(model: torch.nn.Module, growing: bool, reserve: int) -> tuple[list[torch.Tensor], list[int]]:
    """Prefill 3 left-padded rows from keys/values computed by a first call, repeat each row twice,
    decode 12 steps greedily, dropping rows 1 and 4 after step 5; logits of every step."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 30, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        first = model(input_ids=ids[:, :6], attention_mask=mask[:, :6], position_ids=pos[:, :6], use_cache=True).cache
        data = [(layer.keys, layer.values) for layer in first.layers]
        cache = GrowingCache(data, reserve=reserve) if growing else DynamicCache(ddp_cache_data=data)
        out = model(input_ids=ids[:, 6:], attention_mask=mask, position_ids=pos[:, 6:], cache=cache, use_cache=True)
        cache, logits = out.cache, [out.logits[:, -1]]
        cache.batch_repeat_interleave(2)
        attn, last = mask.repeat_interleave(2, 0), pos[:, -1:].repeat_interleave(2, 0)
        nxt = logits[0].repeat_interleave(2, 0).argmax(-1)
        ptrs = []
        for t in range(12):
            if t == 5:
                keep = torch.tensor([0, 2, 3, 5])
                cache.batch_select_indices(keep)
                attn, last, nxt = attn[keep], last[keep], nxt[keep]
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], 1)
            last = last + 1
            out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=last, cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits[:, -1])
            nxt = out.logits[:, -1].argmax(-1)
            layer = cache.layers[0]
            ptrs.append(layer._keys.data_ptr() if isinstance(layer, GrowingLayer) else -1)
        assert cache.get_seq_length() == 9 + 12
    return logits, ptrs


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("reserve", [0, 40])
def test_growing_cache_decodes_exactly_as_the_dynamic_cache(name: str, reserve: int) -> None:
    model = MODELS[name]
    want, _ = _decode(model, growing=False, reserve=reserve)
    got, ptrs = _decode(model, growing=True, reserve=reserve)
    assert len(got) == len(want) == 13
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    if reserve:  # room for every token: the buffers move only at the compaction (step 5)
        assert len(set(ptrs[:5])) == 1 and len(set(ptrs[5:])) == 1


def test_growing_layer_grows_past_its_reserve_and_keeps_its_tokens() -> None:
    layer = GrowingLayer(reserve=2)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    layer.update(k, -k)
    for i in range(5):  # 2 fit the reserve, then the buffer grows
        step = torch.full((2, 1, 1, 2), float(100 + i))
        keys, values = layer.update(step, -step)
    assert keys.shape == (2, 1, 8, 2) and layer.get_seq_length() == 8
    torch.testing.assert_close(keys[:, :, :3], k)
    torch.testing.assert_close(values[:, :, 3:, 0], -torch.tensor([100.0, 101, 102, 103, 104]).expand(2, 1, 5))
    layer.crop(-3)
    assert layer.get_seq_length() == 5
    step = torch.full((2, 1, 1, 2), 7.0)
    keys, _ = layer.update(step, step)
    assert keys.shape[-2] == 6 and float(keys[0, 0, 5, 0]) == 7.0 and float(keys[0, 0, 4, 0]) == 101.0
    with pytest.raises(ValueError, match="reserve"):
        GrowingLayer(reserve=-1)
