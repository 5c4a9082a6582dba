"""Batches with little padding: length bucketing or windows, a padding collate, the padding fraction.

``plan_batches`` turns example lengths into one epoch's list of batches (lists of example
indices), a pure function of ``(lengths, sizes, seed, epoch)``, so a resumed run rebuilds exactly
the batches it had and skips the ones it already consumed. ``bucketed`` and ``windowed`` shuffle
the examples, sort each chunk of ``chunk_batches`` batches' worth by length, cut it into batches
and shuffle the batches: ``bucketed``'s large chunks (64 batches) give batches of one length
(least padding, but in a world where length is the kind of problem, one kind per batch);
``windowed``'s small windows (2 batches) give batches of neighbouring lengths (several kinds per
batch, padding between the two). Measured on PRM training from a trained policy
(``benchmarks/trl_prm.py``), mixing is what held-out accuracy needs: local AUROC rises from
bucketed through windows of 8, 4 and 2 batches to plain shuffled batches, and windows of 2 get
most of the way at about half of shuffled batching's padding. ``random`` is plain shuffled
batching (with the loop's ``splits``, prm-train's default); ``packed`` is the same plan of
shuffled batches, which the collate then packs (``pack_rows``: several examples per row, first-fit decreasing, so a batch keeps
shuffled batching's mix without its padding;
``prm.prm_loss.prm_collate(pack=True)`` gives the rows block-diagonal attention through restarting
position ids; on CPU the block mask costs more than the padding it saves). ``split_by_length``
cuts one batch into micro-batches of neighbouring lengths (the training loop's ``splits``): the
optimizer step still takes the whole batch, each piece is padded only to its own longest example
(a shuffled batch of 64 as 4 pieces of 16: 7% padding against 24%);
``sequential`` keeps the order and ``sorted`` sorts everything by length (both for evaluation).
A batch holds ``batch_size`` examples, or, with ``max_tokens``, as many as fit in ``max_tokens``
padded positions (longest x count; an example longer than the budget is a batch by itself).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

Strategy = Literal["bucketed", "windowed", "random", "packed", "sequential", "sorted"]
STRATEGIES: tuple[str, ...] = ("bucketed", "windowed", "random", "packed", "sequential", "sorted")
TRAIN_STRATEGIES: tuple[str, ...] = ("bucketed", "windowed", "random", "packed")  # the training loop's
CHUNK_BATCHES: dict[str, int] = {"bucketed": 64, "windowed": 2}  # batches' worth sorted together
IGNORE_INDEX = -100


def _cut(order: Sequence[int], lengths: Sequence[int], batch_size: int | None, max_tokens: int | None) -> list[list[int]]:
    """Cut ``order`` into consecutive batches by count or by padded-token budget."""
    if max_tokens is None:
        assert batch_size is not None
        return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        full = batch_size is not None and len(current) >= batch_size
        if current and (new_longest * (len(current) + 1) > max_tokens or full):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def plan_batches(
    lengths: Sequence[int],
    *,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    strategy: Strategy = "bucketed",
    chunk_batches: int | None = None,
) -> list[list[int]]:
    """One epoch of batches (lists of indices into ``lengths``); every example appears exactly once.

    Deterministic per ``(seed, epoch)``. ``bucketed`` and ``windowed`` sort within chunks of
    ``chunk_batches`` batches' worth of examples (None: the strategy's ``CHUNK_BATCHES``); larger
    chunks give less padding and fewer lengths per batch.
    """
    if batch_size is None and max_tokens is None:
        raise ValueError("give batch_size or max_tokens")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
    n = len(lengths)
    order = list(range(n))
    if strategy == "sequential":
        return _cut(order, lengths, batch_size, max_tokens)
    if strategy == "sorted":
        return _cut(sorted(order, key=lambda i: lengths[i]), lengths, batch_size, max_tokens)
    rng = random.Random(f"batches-{seed}-{epoch}")
    rng.shuffle(order)
    if strategy in ("random", "packed"):
        return _cut(order, lengths, batch_size, max_tokens)
    if strategy not in CHUNK_BATCHES:
        raise ValueError(f"unknown batching strategy {strategy!r} ({', '.join(STRATEGIES)})")
    chunk_batches = CHUNK_BATCHES[strategy] if chunk_batches is None else chunk_batches
    if chunk_batches < 1:
        raise ValueError(f"chunk_batches must be >= 1 (got {chunk_batches})")
    if batch_size is not None:
        chunk = batch_size * chunk_batches
    else:  # token budget: a chunk holds about chunk_batches batches of average-length examples
        mean = max(1, sum(lengths) // max(n, 1))
        chunk = max(1, (max_tokens or 1) // mean) * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += _cut(part, lengths, batch_size, max_tokens)
    rng.shuffle(batches)
    return batches


def split_by_length(batch: Sequence[int], lengths: Sequence[int], parts: int, *, min_size: int = 1) -> list[list[int]]:
    """``batch`` (indices into ``lengths``) sorted by length and cut into ``parts`` consecutive pieces
    whose sizes differ by at most one (fewer pieces when the batch has fewer than ``parts * min_size``
    examples; never an empty piece). Every index appears exactly once; deterministic (ties keep the
    batch's order)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1 (got {parts})")
    n = len(batch)
    k = max(1, min(parts, n // max(1, min_size)))
    if k == 1:
        return [list(batch)]
    order = sorted(batch, key=lambda i: lengths[i])
    base, extra = divmod(n, k)
    pieces, at = [], 0
    for j in range(k):
        size = base + (1 if j < extra else 0)
        pieces.append(order[at : at + size])
        at += size
    return pieces


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int], *, packed: bool = False) -> float:
    """Share of positions that would be padding when each batch is padded to its longest example
    (``packed``: when each batch is packed by ``pack_rows`` and padded to its longest row)."""
    positions = 0
    for b in batches:
        if not b:
            continue
        if packed:
            rows = pack_rows([lengths[i] for i in b])
            positions += max(sum(lengths[b[j]] for j in row) for row in rows) * len(rows)
        else:
            positions += max(lengths[i] for i in b) * len(b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / positions if positions else 0.0


def pack_rows(lengths: Sequence[int], capacity: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` grouped into rows of at most ``capacity`` tokens (None: twice the
    longest length; with the longest as capacity, lengths within a factor of two of each other, as
    in the arithmetic world, would never share a row), first-fit decreasing: longest first, each
    into the first row with room. Deterministic; every index appears exactly once, in increasing
    order within its row; a length above ``capacity`` gets a row of its own."""
    if not lengths:
        return []
    cap = 2 * max(lengths) if capacity is None else capacity
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, left in enumerate(room):
            if lengths[i] <= left:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(cap - lengths[i])
    return [sorted(r) for r in rows]


def pad_collate(pad_token_id: int, *, pad_to_multiple_of: int | None = None) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Collate examples ``{"input_ids": [...], "labels": [...]?}`` into right-padded tensors.

    Returns ``input_ids`` (padded with ``pad_token_id``), ``attention_mask`` and, when the
    examples have them, ``labels`` (padded with -100, the ignored label).
    """

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(ex["input_ids"]) for ex in examples)
        if pad_to_multiple_of:
            longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        has_labels = "labels" in examples[0]
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long) if has_labels else None
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
            if labels is not None:
                labels[row, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if labels is not None:
            out["labels"] = labels
        return out

    return collate
