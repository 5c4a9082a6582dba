"""A character-level tokenizer built locally and saved as a normal Hugging Face tokenizer directory.

Every printable ASCII character, the newline and the tab are one token each, so step boundaries
are single tokens and nothing is ever downloaded. Encoding with special tokens (the default)
prepends ``<bos>``, as Llama-style tokenizers do; EOS is appended by whoever builds training
examples. The saved directory loads with plain
``AutoTokenizer.from_pretrained`` (a ``PreTrainedTokenizerFast`` with offsets).
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARACTERS = "\n\t" + "".join(chr(c) for c in range(32, 127))
assert set(string.digits) <= set(CHARACTERS)


def build_char_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """A character tokenizer over printable ASCII + newline/tab (+ ``extra_chars``), with pad/bos/eos/unk."""
    chars = list(dict.fromkeys(CHARACTERS + extra_chars))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    # Like Llama-style tokenizers, encoding with special tokens prepends BOS (offsets (0, 0)), so
    # training and generation agree by always using the tokenizer's own convention.
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    return tok


def save_char_tokenizer(path: str | Path, extra_chars: str = "") -> PreTrainedTokenizerFast:
    """Build the character tokenizer and ``save_pretrained`` it to ``path``."""
    tok = build_char_tokenizer(extra_chars)
    tok.save_pretrained(str(path))
    return tok
