"""Hugging Face backend of the ``Generator`` protocol: batched sampling with a KV cache, fast on CPU.

How one call runs (per chunk of prompts, ``batch_size // n`` prompts at a time, prompts sorted by
length so chunks carry little padding):

1. tokenize, left-pad (attention mask, position ids counted from each prompt's first real token);
2. prefill ONCE per prompt, then ``repeat_interleave`` the cache and the last logits ``n`` times;
3. decode token by token with plain forward calls on the ``DynamicCache``: greedy at temperature 0,
   else temperature/top-p sampling from a ``torch.Generator`` seeded by ``seed``;
4. a sample ends at EOS, at a stop string, or at ``max_new_tokens`` (or the model's context);
   finished rows are dropped from the batch and the cache (``batch_select_indices``) once they
   are ``compact_fraction`` of the batch (default 0.1; 0 drops them at once), so they cost
   (almost) nothing afterwards.

Stop strings are found without per-token Python work on every row: once per stop set the
vocabulary is scanned for *candidate* tokens (those whose text, decoded after an ordinary token,
contains the last character of a stop string, or an undecodable byte). Only rows that just
sampled a candidate are examined: a candidate whose text *is* a stop string ends the row at once
(the character tokenizer's ``"\\n"``); otherwise the row's continuation is decoded and searched.
The text is cut right after the first occurrence of the stop string (a BPE token such as ``".\\n\\n"``
may complete the stop ``".\\n"`` and carry more characters: they are dropped from the text, the
token is counted).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prm.models.loading import load_causal_lm, model_and_tokenizer
from search.generation.base import (
    FINISH_EOS,
    FINISH_LENGTH,
    Generation,
    GenerationStats,
    check_generate_args,
    cut_at_stop,
)

def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-probability under the distribution it was drawn from.

    Greedy (argmax, log-prob under the unscaled model) at ``temperature == 0``; otherwise softmax
    of ``logits / temperature`` restricted to the smallest top-probability set whose mass reaches
    ``top_p`` (the most likely token is always kept), renormalised.
    """
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    logp = torch.log_softmax(logits, -1)
    tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


class _StopTable:
    """Per stop set: which token ids may complete a stop, and which ones are a stop by themselves."""

    def __init__(self, stops: Sequence[str], texts: Sequence[tuple[str, str]], vocab_size: int) -> None:
        lasts = {s[-1] for s in stops}
        self.candidate = torch.zeros(vocab_size, dtype=torch.bool)
        self.exact: dict[int, str] = {}
        for i, (in_context, alone) in enumerate(texts[:vocab_size]):
            both = in_context + alone
            if "\ufffd" in both or any(c in both for c in lasts):
                self.candidate[i] = True
                if in_context == alone and in_context in stops:
                    self.exact[i] = in_context


class HFGenerator:
    """The ``Generator`` protocol over a Hugging Face causal LM (see the module docstring).

    ``model_or_path``: a loaded model (then ``tokenizer`` is required) or a local model directory
    (loaded with ``prm.models.loading.load_causal_lm``, tokenizer saved beside it).
    ``dtype``: None keeps a given model's dtype (fp32 when loading a path); else the model is cast.
    ``batch_size``: the most sequences decoded together; a chunk holds ``max(1, batch_size // n)``
    prompts. ``add_special_tokens``: passed to the tokenizer for prompts (adds BOS for models whose
    tokenizer does, the character tokenizer included: a prompt costs ``1 + len(prompt)`` tokens there).
    ``compact_fraction``: finished rows leave the batch and the KV cache as soon as they make up
    this fraction of it (0: at every step where a row finishes). Each compaction copies the cache,
    so waiting for a few finished rows is faster (about 10% at 0.1 on CPU); the rows carried
    meanwhile cost at most that fraction of a decode step and are never counted.
    """

    def __init__(
        self,
        model_or_path: PreTrainedModel | str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 512,
        add_special_tokens: bool = True,
        compact_fraction: float = 0.1,
    ) -> None:
        model, tokenizer = model_and_tokenizer(
            "HFGenerator", model_or_path, tokenizer, dtype,
            lambda path, dt: load_causal_lm(path, tokenizer=tokenizer, dtype=dt))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if not 0.0 <= compact_fraction < 1.0:
            raise ValueError(f"compact_fraction must be in [0, 1) (got {compact_fraction})")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.add_special_tokens = add_special_tokens
        self.compact_fraction = compact_fraction
        self.stats = GenerationStats()

        gen_cfg = getattr(model, "generation_config", None)
        eos = gen_cfg.eos_token_id if gen_cfg is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        self.pad_id = int(pad)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_positions: int | None = getattr(cfg, "max_position_embeddings", None)
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._vocab_texts: list[tuple[str, str]] | None = None
        self._stop_tables: dict[tuple[str, ...], _StopTable] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFGenerator:
        """A generator over a local model directory (``save_pretrained`` layout with its tokenizer)."""
        return cls(path, **kwargs)

    # ----------------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[list[Generation]]:
        """``n`` continuations per prompt; see ``search.generation.base.Generator``."""
        stops = check_generate_args(n, temperature, top_p, max_new_tokens, stop)
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        start = time.perf_counter()
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        gen = torch.Generator(device=self.device).manual_seed(seed)
        encoded = self.encode(prompts)
        results: list[list[Generation]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for chunk in self.batches([len(ids) for ids in encoded], n):
                    outs = self._generate_chunk([encoded[i] for i in chunk], n, temperature, top_p,
                                                max_new_tokens, stops, gen)
                    for i, samples in zip(chunk, outs):
                        results[i] = samples
        finally:
            self.model.train(was_training)
        self.stats.add(results, time.perf_counter() - start)
        return results

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt (never empty: an empty prompt becomes BOS if there is one)."""
        if not prompts:
            return []
        ids = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        out = []
        for p, x in zip(prompts, ids):
            if not x:
                if self.tokenizer.bos_token_id is None:
                    raise ValueError(f"prompt {p!r} has no tokens and the tokenizer has no BOS token")
                x = [self.tokenizer.bos_token_id]
            out.append(list(x))
        return out

    def batches(self, lengths: Sequence[int], n: int) -> list[list[int]]:
        """Prompt indices per chunk: sorted by token length, ``max(1, batch_size // n)`` per chunk."""
        per = max(1, self.batch_size // n)
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        return [order[i : i + per] for i in range(0, len(order), per)]

    # ----------------------------------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Any) -> tuple[torch.Tensor, Any]:
        kw = {"logits_to_keep": 1} if self._keep_arg else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True, **kw)
        return out.logits[:, -1, :].float(), out.cache

    def _stop_table(self, stops: Sequence[str], vocab_size: int) -> _StopTable:
        key = tuple(stops)
        if key not in self._stop_tables:
            if self._vocab_texts is None:
                self._vocab_texts = self._token_texts()
            self._stop_tables[key] = _StopTable(stops, self._vocab_texts, vocab_size)
        return self._stop_tables[key]

    def _token_texts(self) -> list[tuple[str, str]]:
        """Per token id: (its text decoded after an ordinary token, its text decoded alone)."""
        tok = self.tokenizer
        size = max(len(tok), self.model.get_output_embeddings().weight.shape[0])
        anchor_ids = tok("a", add_special_tokens=False)["input_ids"][-1:]
        anchor = tok.decode(anchor_ids)
        alone = tok.batch_decode([[i] for i in range(len(tok))])
        paired = tok.batch_decode([[*anchor_ids, i] for i in range(len(tok))])
        in_context = [p[len(anchor):] if p.startswith(anchor) else a for p, a in zip(paired, alone)]
        pad = [("", "")] * (size - len(tok))
        return list(zip(in_context, alone)) + pad

    def _generate_chunk(
        self,
        prompt_ids: list[list[int]],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        stops: list[str],
        gen: torch.Generator,
    ) -> list[list[Generation]]:
        dev = self.device
        n_prompts, width = len(prompt_ids), max(len(x) for x in prompt_ids)
        input_ids = torch.full((n_prompts, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n_prompts, width), dtype=torch.long)
        for r, ids in enumerate(prompt_ids):
            input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attn[r, width - len(ids):] = 1
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)

        # Per-row limit: max_new_tokens, or the model's context for position-embedding models.
        plens = torch.tensor([len(x) for x in prompt_ids], device=dev)
        limit = torch.full((n_prompts,), max_new_tokens, device=dev)
        if self.max_positions is not None:
            room = self.max_positions - plens
            if int(room.min()) < 1:
                raise ValueError(f"a prompt of {int(plens.max())} tokens leaves no room in the model's "
                                 f"context of {self.max_positions} positions")
            limit = torch.minimum(limit, room)
        steps = int(limit.max())

        logits, cache = self._forward(input_ids, attn, pos, None)  # prefill once per prompt
        rows_total = n_prompts * n
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits, attn, pos, limit = (t.repeat_interleave(n, 0) for t in (logits, attn, pos, limit))
        pos = pos[:, -1:]

        vocab = logits.shape[-1]
        eos_mask = torch.zeros(vocab, dtype=torch.bool, device=dev)
        eos_mask[[i for i in self.eos_ids if i < vocab]] = True
        table = self._stop_table(stops, vocab) if stops else None
        candidate = table.candidate.to(dev) if table is not None else None

        # Row r of the batch decodes sample rows[r]; a finished row writes into the spare sample
        # ``rows_total`` until the batch is compacted (when finished rows reach ``compact_fraction``).
        rows = torch.arange(rows_total, device=dev)
        alive = torch.ones(rows_total, dtype=torch.bool, device=dev)
        tokens = torch.full((rows_total + 1, steps), self.pad_id, dtype=torch.long, device=dev)
        logprob = torch.zeros(rows_total + 1, dtype=torch.float64, device=dev)
        length = torch.zeros(rows_total + 1, dtype=torch.long, device=dev)
        reason: list[str] = [FINISH_LENGTH] * rows_total

        for t in range(steps):
            nxt, lp = sample_next(logits, temperature, top_p, gen)
            tokens[rows, t] = nxt
            logprob[rows] += lp.double()
            is_eos = eos_mask[nxt] & alive
            done = is_eos | ((limit <= t + 1) & alive)
            if candidate is not None:
                hits = candidate[nxt] & alive & ~is_eos
                if bool(hits.any()):
                    for j in hits.nonzero().flatten().tolist():
                        s, tok_id = int(rows[j]), int(nxt[j])
                        hit = self._hit(table, tok_id, tokens[s, : t + 1].tolist(), stops)
                        if hit is not None:
                            reason[s] = hit
                            done[j] = True
            if bool(done.any()):
                length[rows[done]] = t + 1
                for s in rows[is_eos].tolist():
                    reason[s] = FINISH_EOS
                alive &= ~done
                rows = torch.where(alive, rows, rows_total)
                live = int(alive.sum())
                if live == 0:
                    break
                if alive.numel() - live >= max(1.0, self.compact_fraction * alive.numel()):
                    keep = alive.nonzero().flatten()
                    cache.batch_select_indices(keep)
                    rows, nxt, attn, pos, limit, alive = (x[keep] for x in (rows, nxt, attn, pos, limit, alive))
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
            pos = pos + 1
            logits, cache = self._forward(nxt[:, None], attn, pos, cache)

        return self._collect(prompt_ids, n, tokens[:-1].cpu(), length[:-1].cpu(), logprob[:-1].cpu(), reason, stops)

    def _hit(self, table: _StopTable, tok_id: int, ids: list[int], stops: list[str]) -> str | None:
        """The stop string that the token just sampled completed, if any."""
        if tok_id in table.exact:
            return table.exact[tok_id]
        found = cut_at_stop(self.tokenizer.decode(ids), stops)
        return None if found is None else found[1]

    def _collect(self, prompt_ids: list[list[int]], n: int, tokens: torch.Tensor, length: torch.Tensor,
                 logprob: torch.Tensor, reason: list[str], stops: list[str]) -> list[list[Generation]]:
        ids = [tokens[s, : int(length[s])].tolist() for s in range(tokens.shape[0])]
        texts = self.tokenizer.batch_decode([x[:-1] if r == FINISH_EOS else x for x, r in zip(ids, reason)])
        out: list[list[Generation]] = []
        for p, plen in enumerate(len(x) for x in prompt_ids):
            samples = []
            for k in range(n):
                s = p * n + k
                text = texts[s]
                if reason[s] not in (FINISH_EOS, FINISH_LENGTH):
                    cut = cut_at_stop(text, stops)
                    if cut is not None:
                        text = cut[0]
                samples.append(Generation(text=text, finish_reason=reason[s], prompt_tokens=plen if k == 0 else 0,
                                          generated_tokens=len(ids[s]), logprob=float(logprob[s]), token_ids=ids[s]))
            out.append(samples)
        return out


__all__ = ["HFGenerator", "sample_next"]
