"""What a PRM reads: a problem and its steps as token ids, with the position of each step's last token.

One encoding serves training (labels go on these positions, every other token is ignored) and
scoring (scores are read at these positions), so both always agree. The text is
``prm.steps.scoring_text`` (prompt, separator, each step followed by the separator); the label
token is the token holding the separator after a step, found through the tokenizer's offsets.
A text longer than ``max_length`` is cut on the right: steps whose label token is cut are dropped
(``kept`` says how many steps survive).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from prm.steps import PLAIN, StepFormat, scoring_text, step_end_token_indices


@dataclass
class EncodedSteps:
    """Token ids of one scored solution and the index of each (kept) step's label token."""

    input_ids: list[int]
    positions: list[int]
    kept: int
    total_steps: int

    @property
    def truncated(self) -> bool:
        return self.kept < self.total_steps


def encode_steps(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    steps: Sequence[str],
    fmt: StepFormat = PLAIN,
    max_length: int | None = None,
) -> EncodedSteps:
    """Tokenize ``prompt`` + ``steps`` and locate each step's label token (see the module docstring)."""
    text, end_chars = scoring_text(prompt, steps, fmt)
    return encode_text(tokenizer, text, end_chars, len(steps), max_length)


def encode_text(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    end_chars: Sequence[int],
    total_steps: int,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> EncodedSteps:
    """Tokenize a built scoring text and map each step's end character to its token; cut at ``max_length``."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    ids: list[int] = list(enc["input_ids"])
    positions = step_end_token_indices(enc["offset_mapping"], end_chars) if end_chars else []
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
        positions = [p for p in positions if p < max_length]
    return EncodedSteps(input_ids=ids, positions=positions, kept=len(positions), total_steps=total_steps)
