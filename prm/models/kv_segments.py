"""Key/value caches as trees of segments: the memory layout shared by incremental PRM scoring
(``prm.scoring.prm_scorer``) and the HF generator's prefix cache (``search.generation.hf``).

A ``Segment`` holds the keys/values of a run of consecutive tokens and points to the segment of
the tokens before it, so sequences that share a prefix share its memory; ``pieces`` lists the
segments (and how many tokens of each) that make up a sequence's first ``need`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class Segment:
    """Keys/values of tokens ``[start, start + n)``; the parent chain holds tokens ``[0, start)``."""

    parent: Segment | None
    start: int
    keys: list[torch.Tensor]  # per layer [heads, n, head_dim]
    values: list[torch.Tensor]


def pieces(seg: Segment | None, need: int) -> list[tuple[Segment, int]]:
    """The segments (and how many of each one's tokens) that make up tokens ``[0, need)``, in order."""
    out: list[tuple[Segment, int]] = []
    while need > 0:
        if seg is None:
            raise RuntimeError("KV segment chain shorter than the tokens it should cover")
        if seg.start < need:
            out.append((seg, need - seg.start))
            need = seg.start
        seg = seg.parent
    return out[::-1]


__all__ = ["Segment", "common_prefix", "pieces"]
