"""A ``DynamicCache`` that decodes without re-copying its past: keys/values live in reserved buffers.

Hugging Face's ``DynamicLayer.update`` concatenates the new keys/values onto the old ones, so every
decoding step copies the whole cache (``[batch, heads, tokens so far, head_dim]`` per layer): the
cost of a sample grows with the square of its length, and on a CPU it was about a fifth of all
sampling time (a py-spy profile of ``prm-sample`` on the demo's policy: ``DynamicLayer.update``
23%, attention itself 20%). ``GrowingLayer`` keeps each layer's keys/values in a buffer with room
for ``reserve`` more tokens, writes each step's new ones in place and exposes the filled part as a
view, so a step copies only its own tokens; the buffer grows (by half again) only when it is full.

It is a ``DynamicCache`` in everything else: ``keys``/``values`` are ``[batch, heads, tokens,
head_dim]`` tensors (views of the buffers), ``get_seq_length``, masks, ``batch_select_indices``
(applied to the buffer, so the reserve survives a compaction), ``batch_repeat_interleave``,
``crop`` and ``reorder_cache`` behave the same, and the model sees the same numbers (attention
reads the same keys and values; only their memory layout differs). Used by
``search.generation.hf.HFGenerator`` for full-attention models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """One layer's keys/values in a buffer with room for ``reserve`` tokens beyond its first update
    (module docstring); past that the buffer grows by half."""

    def __init__(self, reserve: int = 0) -> None:
        super().__init__()
        if reserve < 0:
            raise ValueError(f"reserve must be >= 0 (got {reserve})")
        self.reserve = reserve
        self.length = 0
        self._keys: torch.Tensor | None = None  # [batch, heads, capacity, head_dim]
        self._values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._keys is None or self._values is None:
            self._grow(end + self.reserve, key_states, value_states)  # the first tokens, and room for the reserve
        elif end > self._keys.shape[-2]:
            self._grow(end + end // 2, key_states, value_states)
        assert self._keys is not None and self._values is not None
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self._expose(end)
        return self.keys, self.values

    def _grow(self, capacity: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """New buffers of ``capacity`` tokens holding the tokens stored so far."""
        kb = key_states.new_empty((*key_states.shape[:2], capacity, key_states.shape[-1]))
        vb = value_states.new_empty((*value_states.shape[:2], capacity, value_states.shape[-1]))
        if self.length:
            kb[:, :, : self.length] = self.keys
            vb[:, :, : self.length] = self.values
        self._keys, self._values = kb, vb

    def _expose(self, length: int) -> None:
        assert self._keys is not None and self._values is not None
        self.length = length
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._keys is not None and self._values is not None and self.length > 0:
            self._keys = self._keys.index_select(0, indices.to(self._keys.device))
            self._values = self._values.index_select(0, indices.to(self._values.device))
            self._expose(self.length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times in a row; only the filled tokens are copied, not the reserve."""
        if self._keys is not None and self._values is not None and self.length > 0:
            bufs = []
            for buf in (self._keys, self._values):
                new = buf.new_empty((buf.shape[0] * repeats, *buf.shape[1:]))
                new.view(buf.shape[0], repeats, *buf.shape[1:])[:, :, :, : self.length] = buf[:, None, :, : self.length]
                bufs.append(new)
            self._keys, self._values = bufs
            self._expose(self.length)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if tokens_to_remove < 0 and self.is_initialized:
            self._expose(self.keys.shape[-2])

    def reset(self) -> None:
        super().reset()
        self._keys = self._values = None
        self.length = 0


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` of ``GrowingLayer``s (one per model layer, created as the model reaches them).

    ``data``: per layer ``(keys, values)`` to start from (copied into the buffers), as
    ``DynamicCache(ddp_cache_data=...)``; ``reserve``: room for this many tokens per layer beyond ``data``
    (or beyond the first tokens the model writes).
    """

    def __init__(self, data: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None, *, reserve: int = 0) -> None:
        if data is None:
            super(DynamicCache, self).__init__(layer_class_to_replicate=lambda: GrowingLayer(reserve))  # type: ignore[arg-type]
            return
        layers = [GrowingLayer(reserve) for _ in data]
        super(DynamicCache, self).__init__(layers=layers)  # type: ignore[arg-type]
        for layer, (k, v) in zip(layers, data):
            layer.update(k, v)


__all__ = ["GrowingCache", "GrowingLayer"]
