"""How a PRM reads steps: our token head, and the published Math-Shepherd and Qwen2.5-Math-PRM styles.

A convention says which text the PRM reads, on which token each step's score lives, and how the
model's output there becomes P(on track):

- ``token_head`` (ours, ``prm.models.prm_model``): the text and label tokens are
  ``prm.models.prm_inputs.encode_steps`` (prompt, separator, each step followed by the
  separator; the label on the token holding the separator); a token-classification head with one
  logit, score = sigmoid(logit).
- ``lm_tag`` (Math-Shepherd): a causal LM reads ``prompt + prompt_sep + step_sep.join(step + tag)``
  (Math-Shepherd: ``question + " " + "Step 1: ... ки\\nStep 2: ... ки"``); at the token holding the
  tag's last character the next-token logits of the ``good`` and ``bad`` tokens ("+" / "-") are
  renormalised: score = softmax([logit_good, logit_bad])[0]. Only the two rows of the LM head are
  applied (exactly the model's logits for a plain linear LM head; models that scale or soft-cap
  their logits are not supported).
- ``two_class`` (Qwen2.5-Math-PRM): the steps are joined by a separator token
  (``step + "<extra_0>"`` for each step, ``step_sep=""``), optionally inside the tokenizer's chat
  template (system prompt, the problem as the user turn, the steps as the assistant turn); a
  token-classification head with two classes, score = softmax(logits)[1] at the separators.

The label token of a tag is the token that holds its last character (found through the
tokenizer's offsets, as for our separator), so a tag that is one special token, or several
ordinary ones, both work. A text longer than ``max_length`` is cut on the right and steps whose
label token is cut are dropped, exactly as ``encode_steps`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from prm.models.prm_inputs import EncodedSteps, encode_steps, encode_text
from prm.models.prm_model import prm_head
from prm.steps import StepFormat

CONVENTIONS: tuple[str, ...] = ("token_head", "lm_tag", "two_class")


@dataclass(frozen=True)
class Convention:
    """Which text a PRM reads and how its output becomes a step score (see the module docstring).

    ``separator``: token_head only, the step separator of ``prm.steps``. The other fields are for
    ``lm_tag`` / ``two_class``: ``tag`` follows every step, ``step_sep`` goes between one step's
    tag and the next step, ``prompt_sep`` between the prompt and the first step; ``good_token`` /
    ``bad_token`` (lm_tag) are single tokens (or give their ids); ``chat_template`` wraps the
    prompt and steps in the tokenizer's chat template, with ``system_prompt`` if set.
    """

    kind: str = "token_head"
    separator: str = "\n"
    style: str = "plain"  # token_head: the solution format (tagged PRMs read the open <reasoning> tag too)
    tag: str = " ки"
    step_sep: str = "\n"
    prompt_sep: str = " "
    good_token: str = "+"
    bad_token: str = "-"
    good_token_id: int | None = None
    bad_token_id: int | None = None
    chat_template: bool = False
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in CONVENTIONS:
            raise ValueError(f"unknown PRM convention {self.kind!r} (one of {', '.join(CONVENTIONS)})")
        if self.kind != "token_head" and not self.tag:
            raise ValueError(f"the {self.kind} convention needs a non-empty step tag")

    @property
    def fmt(self) -> StepFormat:
        """The step format a token_head PRM reads (``prm.steps.scoring_text``): style and separator."""
        return StepFormat(style=self.style, separator=self.separator)  # type: ignore[arg-type]


MATH_SHEPHERD = Convention("lm_tag", tag=" ки", step_sep="\n", prompt_sep=" ", good_token="+", bad_token="-")
QWEN_PRM = Convention("two_class", tag="<extra_0>", step_sep="", prompt_sep="", chat_template=True,
                      system_prompt="Please reason step by step, and put your final answer within \\boxed{}.")


def tagged_text(conv: Convention, prompt: str, steps: Sequence[str],
                tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[str, list[int]]:
    """The text an ``lm_tag`` / ``two_class`` PRM reads and, per step, the index of its tag's last character."""
    ends, parts, at = [], [], 0
    for k, step in enumerate(steps):
        piece = (conv.step_sep if k else "") + step + conv.tag
        parts.append(piece)
        at += len(piece)
        ends.append(at - 1)
    content = "".join(parts)
    if not conv.chat_template:
        head = prompt + conv.prompt_sep
        return head + content, [len(head) + e for e in ends]
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=true needs a tokenizer with a chat template")
    messages = [{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": content}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if not content:
        return text, []
    base = text.rfind(content)
    if base == -1:
        raise ValueError("the chat template changed the assistant text; cannot locate the step tags")
    return text, [base + e for e in ends]


def encode(conv: Convention, tokenizer: PreTrainedTokenizerBase, prompt: str, steps: Sequence[str],
           max_length: int | None = None) -> EncodedSteps:
    """Token ids and label positions of one solution under ``conv`` (token_head: ``encode_steps``)."""
    if conv.kind == "token_head":
        return encode_steps(tokenizer, prompt, steps, conv.fmt, max_length)
    text, end_chars = tagged_text(conv, prompt, steps, tokenizer)
    return encode_text(tokenizer, text, end_chars, len(steps), max_length, add_special_tokens=not conv.chat_template)


def _token_id(tokenizer: PreTrainedTokenizerBase, text: str, given: int | None, what: str) -> int:
    if given is not None:
        return int(given)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    raise ValueError(f"the {what} token {text!r} is not one token for this tokenizer ({ids}); set {what}_token_id")


class StepReader:
    """A model read under a convention: ``encode`` texts, and ``probs`` = per-token P(on track)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conv: Convention) -> None:
        self.model, self.tokenizer, self.conv = model, tokenizer, conv
        labels = getattr(model.config, "num_labels", None)
        if conv.kind == "token_head" and labels != 1:
            raise ValueError(f"the token_head convention needs a head with 1 label (the model has {labels})")
        if conv.kind == "two_class" and labels != 2:
            raise ValueError(f"the two_class convention needs a head with 2 labels (the model has {labels})")
        if conv.kind != "lm_tag":
            self._head = prm_head(model)
        else:
            lm_head = model.get_output_embeddings()
            if lm_head is None:
                raise ValueError("the lm_tag convention needs a causal LM (the model has no output embeddings)")
            good = _token_id(tokenizer, conv.good_token, conv.good_token_id, "good")
            bad = _token_id(tokenizer, conv.bad_token, conv.bad_token_id, "bad")
            self.token_ids = (good, bad)
            self._lm_head = lm_head

    def encode(self, prompt: str, steps: Sequence[str], max_length: int | None = None) -> EncodedSteps:
        return encode(self.conv, self.tokenizer, prompt, steps, max_length)

    def probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
              position_ids: torch.Tensor | None = None, cache: Cache | None = None,
              use_cache: bool = False) -> tuple[torch.Tensor, Cache | None]:
        """P(on track) at every token ``[batch, tokens]`` (float32) and the KV cache when ``use_cache``.

        One backbone pass (``cache``: the keys/values of the tokens before ``input_ids``), then the
        convention's read-out: the two LM-head rows (``lm_tag``) or the token-classification head.
        """
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    cache=cache, use_cache=use_cache)
        hidden, kv = out.last_hidden_state, (out.cache if use_cache else None)
        if self.conv.kind == "lm_tag":
            idx = torch.tensor(self.token_ids, device=input_ids.device)
            weight = self._lm_head.weight.index_select(0, idx)
            bias = self._lm_head.bias.index_select(0, idx) if getattr(self._lm_head, "bias", None) is not None else None
            return F.linear(hidden, weight, bias).float().softmax(-1)[..., 0], kv
        logits = self._head(hidden).float()
        if self.conv.kind == "two_class":
            return logits.softmax(-1)[..., 1], kv
        return torch.sigmoid(logits[..., 0]), kv


__all__ = ["CONVENTIONS", "MATH_SHEPHERD", "QWEN_PRM", "Convention", "StepReader", "encode", "tagged_text"]
