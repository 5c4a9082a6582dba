"""Shared test fixtures: where the shared data (``../shared`` beside the repository) lives; one torch thread; a small
byte-level BPE tokenizer trained on a given corpus (for tests where tokens cross step or stop boundaries)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRM_SHARED_DIR", REPO.parent / "shared"))
PRM800K_SAMPLE = SHARED / "data" / "prm800k_sample.jsonl"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run no slower on one thread, and far faster when other jobs share the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bpe_tokenizer(corpus: list[str], vocab_size: int = 300):  # type: ignore[no-untyped-def]
    """A byte-level BPE ``PreTrainedTokenizerFast`` (``<pad>``, ``<eos>``) trained on ``corpus``: its merges cross
    newlines and stop strings, unlike the character tokenizer's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
