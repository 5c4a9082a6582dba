"""Hugging Face backend of the ``Generator`` protocol: batched sampling with a KV cache, fast on CPU.

How one call runs (per chunk of prompts, ``batch_size // n`` prompts at a time, prompts sorted by
length so chunks carry little padding):

1. tokenize, left-pad (attention mask, position ids counted from each prompt's first real token);
2. prefill ONCE per prompt (with ``reuse_cache``, only the tokens the prefix cache does not hold;
   see below), then ``repeat_interleave`` the cache and the last logits ``n`` times;
3. decode token by token with plain forward calls on the cache (for full-attention models a
   ``prm.models.growing_cache.GrowingCache`` with room reserved for every token the call can
   sample, so a step writes its keys/values in place instead of re-copying the whole cache: 1.7-1.9x
   faster on a bare decode loop of 512 rows x 100 tokens on CPU, 1.1x on a whole ``prm-sample``,
   where attention over the buffers' strided views gives much of it back): greedy at temperature 0,
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

**Prefix cache** (``reuse_cache=True``, inside a ``cache_scope()`` block, which starts and ends
with an empty cache; outside one nothing is stored or reused): the generator keeps the
keys/values of the token sequences it has run (each prompt, and each sample's prompt + sampled
tokens) in a ``PrefixCache``, a trie of KV segments over token ids, and a later prompt that starts
with stored tokens prefills only the rest. Step-by-step search sends ``prompt + text`` next round, so a continued candidate
prefills one token (the last sampled token, whose keys/values were never computed) plus any new
text. Prompts are always tokenized whole, exactly as without the cache, and the cache is used
only for the longest stored *token* prefix of those ids: where a BPE tokenizer re-tokenizes
``prompt + text`` differently from the sampled ids (merges across the boundary), the differing
tail is simply prefilled again. So the model sees the same tokens at the same positions with or
without the cache and samples the same tokens with the same seed (logits agree to float
rounding: the reused keys/values were computed in another batch, with other padding). In a
chunk, each row's reused keys/values are left-padded to the longest reused length and its new
tokens are left-padded to the longest new length (the mask has a hole between them; positions
continue each row's own prefix), so every row ends in the last column as before. The cache holds
at most ``cache_tokens`` tokens (least recently used branches are dropped after each call) and
is also dropped whenever the model's weights changed since it was filled (their in-place version
counters moved, e.g. an optimizer step). ``Generation.cached_prompt_tokens``
(first sample of a prompt) and ``stats.cached_prompt_tokens`` count the reused prompt tokens;
``prompt_tokens`` keeps counting every prompt token. The reused keys/values use the plain
full-attention ``DynamicCache`` layout, like ``prm.scoring.prm_scorer``'s incremental scoring, whose
segment chains (``prm.models.kv_segments``) this cache shares.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from prm.models.loading import load_causal_lm, model_and_tokenizer
from prm.models.growing_cache import GrowingCache
from prm.models.kv_segments import Segment, common_prefix, pieces
from search.generation.base import (
    FINISH_EOS,
    FINISH_LENGTH,
    Generation,
    GenerationStats,
    check_generate_args,
    cut_at_stop,
)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-probability under the distribution it was drawn from.

    Greedy (argmax, log-prob under the unscaled model) at ``temperature == 0``; otherwise softmax
    of ``logits / temperature`` restricted to the smallest top-probability set whose mass reaches
    ``top_p`` (the most likely token is always kept), renormalised. Drawn with ``generator``, or,
    given ``uniforms`` (one number in [0, 1) per row), by inverting each row's cumulative
    distribution at its number: a row's token then depends on its own number only, not on the
    other rows of the batch (per-prompt seeds).
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
    if uniforms is not None:
        cdf = logp.exp().double().cumsum(-1)
        at = (uniforms.to(cdf)[:, None] * cdf[:, -1:]).contiguous()
        tok = torch.searchsorted(cdf, at, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    else:
        tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def sample_seed(prompt_seed: int, sample: int) -> int:
    """The seed of sample ``sample`` of a prompt whose own seed is ``prompt_seed`` (per-prompt seeding)."""
    h = hashlib.blake2b(f"{prompt_seed}\x1f{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


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


@dataclass(eq=False)
class _Node(Segment):
    """A trie node: the keys/values of its tokens ``ids`` (positions ``[start, start + len(ids))``)."""

    ids: list[int] = field(default_factory=list)
    children: dict[int, _Node] = field(default_factory=dict)  # by first token id
    used: int = 0  # the clock of the call that last matched or added it


class PrefixCache:
    """A bounded trie of KV segments keyed by token ids: the prefixes a generator has run.

    A path from a root spells a token sequence; each node holds the keys/values of its own tokens
    (per layer ``[heads, tokens, head_dim]``) and points to its parent, so sequences that share a
    prefix share its memory. ``match`` says how many leading tokens of a sequence are stored,
    ``add`` stores the rest of a sequence from their keys/values, ``evict`` drops the least
    recently used leaves until at most ``max_tokens`` tokens are stored.
    """

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"cache_tokens must be >= 0 (got {max_tokens})")
        self.max_tokens = max_tokens
        self.roots: dict[int, _Node] = {}
        self.tokens = 0  # stored tokens (the sum of the nodes' lengths)
        self.clock = 0

    def clear(self) -> None:
        self.roots, self.tokens = {}, 0

    def match(self, ids: Sequence[int]) -> tuple[_Node | None, int]:
        """The deepest node on ``ids``' path and how many leading tokens of ``ids`` the trie holds
        (``pieces(node, count)`` gives their segments; the node may hold more tokens than matched)."""
        node, at, children = None, 0, self.roots
        while at < len(ids) and (child := children.get(ids[at])) is not None:
            k = common_prefix(child.ids, ids[at : at + len(child.ids)])
            child.used = self.clock
            node, at = child, at + k
            if k < len(child.ids):
                break
            children = child.children
        return node, at

    def add(self, ids: Sequence[int], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
            offset: int) -> None:
        """Store ``ids`` given the keys/values of ``ids[offset:]`` (per layer ``[heads, tokens, head_dim]``,
        copied); the trie must already hold ``ids[:offset]``."""
        node, at = self.match(ids)
        if at < offset:
            raise RuntimeError(f"the prefix cache lost {offset - at} tokens it was to extend")
        if at == len(ids):
            return
        if node is not None and at < node.start + len(node.ids):
            self._split(node, at - node.start)
        skip = at - offset
        child = _Node(parent=node, start=at, keys=[k[:, skip:].clone() for k in keys],
                      values=[v[:, skip:].clone() for v in values], ids=list(ids[at:]), used=self.clock)
        (node.children if node is not None else self.roots)[child.ids[0]] = child
        self.tokens += len(child.ids)

    @staticmethod
    def _split(node: _Node, k: int) -> None:
        """Keep the first ``k`` tokens in ``node``; the rest (and its children) move to a new child."""
        tail = _Node(parent=node, start=node.start + k, keys=[x[:, k:].clone() for x in node.keys],
                     values=[x[:, k:].clone() for x in node.values], ids=node.ids[k:], children=node.children,
                     used=node.used)
        for c in tail.children.values():
            c.parent = tail
        node.keys, node.values = [x[:, :k].clone() for x in node.keys], [x[:, :k].clone() for x in node.values]
        node.ids, node.children = node.ids[:k], {tail.ids[0]: tail}

    def evict(self) -> None:
        """Drop least recently used leaves until at most ``max_tokens`` tokens are stored."""
        while self.tokens > self.max_tokens:
            for leaf in sorted(self._leaves(), key=lambda n: n.used):
                parent = leaf.parent
                del (parent.children if isinstance(parent, _Node) else self.roots)[leaf.ids[0]]
                self.tokens -= len(leaf.ids)
                if self.tokens <= self.max_tokens:
                    break

    def _leaves(self) -> Iterator[_Node]:
        todo = list(self.roots.values())
        while todo:
            node = todo.pop()
            todo.extend(node.children.values())
            if not node.children:
                yield node


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
    ``reuse_cache``: inside ``cache_scope()``, keep a ``PrefixCache`` of at most ``cache_tokens``
    tokens across calls (see the module docstring); False: never.
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
        reuse_cache: bool = True,
        cache_tokens: int = 65536,
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
        self.reuse_cache = reuse_cache
        self.cache = PrefixCache(cache_tokens)
        self._in_scope = False
        self._cache_weights: int | None = None  # the weights' version when the cache was filled
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
        # Full attention in every layer: keys/values may live in reserved buffers (``GrowingCache``) and be reused.
        self._full_attention = all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or [])
        if reuse_cache and not self._full_attention:
            raise ValueError(f"reuse_cache needs full attention in every layer; this model has layer types "
                             f"{sorted(set(cfg.layer_types))}: set reuse_cache=False (generator.reuse_cache=false)")
        self._vocab_texts: list[tuple[str, str]] | None = None
        self._stop_tables: dict[tuple[str, ...], _StopTable] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFGenerator:
        """A generator over a local model directory (``save_pretrained`` layout with its tokenizer)."""
        return cls(path, **kwargs)

    @contextlib.contextmanager
    def cache_scope(self) -> Iterator[None]:
        """Calls in this block reuse each other's prefixes (with ``reuse_cache``); it starts and ends empty."""
        self.cache.clear()
        outer, self._in_scope = self._in_scope, True
        try:
            yield
        finally:
            self._in_scope = outer
            self.cache.clear()

    def _weights_version(self) -> int:
        """Changes whenever a parameter is modified in place (optimizer steps, ``load_state_dict``)."""
        return sum(p._version for p in self.model.parameters())

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
        seed: int | Sequence[int] | None = None,
    ) -> list[list[Generation]]:
        """``n`` continuations per prompt; see ``search.generation.base.Generator``.

        ``seed`` a sequence: one seed per prompt; sample j of prompt i draws from its own generator
        (``sample_seed(seed[i], j)``), so its tokens do not depend on which other prompts share the
        call, the chunking or the batch size (up to float rounding of the batched forward pass).
        """
        stops = check_generate_args(n, temperature, top_p, max_new_tokens, stop)
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        start = time.perf_counter()
        per_prompt: list[int] | None = None
        if seed is not None and not isinstance(seed, int):
            per_prompt = [int(x) for x in seed]
            if len(per_prompt) != len(prompts):
                raise ValueError(f"{len(per_prompt)} seeds for {len(prompts)} prompts")
            seed = 0
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        gen = torch.Generator(device=self.device).manual_seed(seed)
        encoded = self.encode(prompts)
        results: list[list[Generation]] = [[] for _ in prompts]
        store = self._store() if self.reuse_cache and self._in_scope else None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for chunk in self.batches([len(ids) for ids in encoded], n):
                    row_gens = None if per_prompt is None else [
                        torch.Generator(device="cpu").manual_seed(sample_seed(per_prompt[i], j))
                        for i in chunk for j in range(n)]
                    outs = self._generate_chunk([encoded[i] for i in chunk], n, temperature, top_p,
                                                max_new_tokens, stops, gen, store, row_gens)
                    for i, samples in zip(chunk, outs):
                        results[i] = samples
        finally:
            self.model.train(was_training)
            if store is not None:
                store.evict()
        self.stats.add(results, time.perf_counter() - start)
        return results

    def _store(self) -> PrefixCache:
        """The prefix cache for this call: emptied if the weights changed since it was filled."""
        version = self._weights_version()
        if version != self._cache_weights:
            self.cache.clear()
            self._cache_weights = version
        self.cache.clock += 1
        return self.cache

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
        store: PrefixCache | None = None,
        row_gens: list[torch.Generator] | None = None,
    ) -> list[list[Generation]]:
        dev = self.device
        n_prompts = len(prompt_ids)
        # Reuse the stored keys/values of each prompt's longest stored prefix, always leaving at
        # least its last token to run (its logits start the samples). Row r of the prefill reads
        # [pad | its c reused tokens] (past columns, in the cache) + [pad | its new tokens] (width).
        reused = [store.match(ids[:-1]) for ids in prompt_ids] if store is not None else [(None, 0)] * n_prompts
        past = max(c for _, c in reused)
        width = max(len(ids) - c for ids, (_, c) in zip(prompt_ids, reused))
        input_ids = torch.full((n_prompts, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n_prompts, past + width), dtype=torch.long)
        pos = torch.zeros((n_prompts, width), dtype=torch.long)
        for r, (ids, (_, c)) in enumerate(zip(prompt_ids, reused)):
            new = len(ids) - c
            input_ids[r, width - new:] = torch.tensor(ids[c:], dtype=torch.long)
            attn[r, past - c : past] = 1
            attn[r, past + width - new:] = 1
            pos[r, width - new:] = torch.arange(c, len(ids))
        input_ids, attn, pos = input_ids.to(dev), attn.to(dev), pos.to(dev)

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

        # prefill once per prompt (only the tokens the prefix cache does not hold), into a cache with
        # room for every token this call can sample (decoding then writes in place: no re-copying)
        if past:  # the reused tokens first, then the new prompt tokens and the samples
            cache = self._past(reused, past, width + steps + 1 if self._full_attention else None)
        else:  # the prompt tokens first, then the samples
            cache = GrowingCache(reserve=steps + 1) if self._full_attention else None
        logits, cache = self._forward(input_ids, attn, pos, cache)
        start = past + width  # the cache column of the first sampled token's keys/values
        if store is not None:
            for r, (ids, (_, c)) in enumerate(zip(prompt_ids, reused)):
                store.add(ids, *self._kv(cache, r, start - (len(ids) - c), start), offset=c)
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
        sample_of = rows.clone()  # the sample each batch row decodes, finished or not
        alive = torch.ones(rows_total, dtype=torch.bool, device=dev)
        tokens = torch.full((rows_total + 1, steps), self.pad_id, dtype=torch.long, device=dev)
        logprob = torch.zeros(rows_total + 1, dtype=torch.float64, device=dev)
        length = torch.zeros(rows_total + 1, dtype=torch.long, device=dev)
        reason: list[str] = [FINISH_LENGTH] * rows_total

        for t in range(steps):
            uniforms = None
            if row_gens is not None and temperature > 0:  # one draw per live sample from its own generator
                uniforms = torch.tensor([float(torch.rand((), generator=row_gens[s])) if s < rows_total else 0.0
                                         for s in rows.tolist()], dtype=torch.float64)
            nxt, lp = sample_next(logits, temperature, top_p, gen, uniforms)
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
                    if store is not None:
                        self._store_samples(store, cache, (~alive).nonzero().flatten(), sample_of, prompt_ids, n,
                                            tokens, length, start)
                    keep = alive.nonzero().flatten()
                    cache.batch_select_indices(keep)
                    rows, sample_of, nxt, attn, pos, limit, alive = (
                        x[keep] for x in (rows, sample_of, nxt, attn, pos, limit, alive))
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
            pos = pos + 1
            if self.max_positions is not None:  # rows that finished at the context limit wait for compaction here;
                pos = pos.clamp(max=self.max_positions - 1)  # their outputs are dropped, live rows never reach it
            logits, cache = self._forward(nxt[:, None], attn, pos, cache)
        if store is not None:
            self._store_samples(store, cache, torch.arange(len(sample_of), device=dev), sample_of, prompt_ids, n,
                                tokens, length, start)

        return self._collect(prompt_ids, n, tokens[:-1].cpu(), length[:-1].cpu(), logprob[:-1].cpu(), reason, stops,
                             [c for _, c in reused])

    # -- the prefix cache ------------------------------------------------------------------------
    @staticmethod
    def _kv(cache: Any, row: int, begin: int, end: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One batch row's keys and values of cache columns ``[begin, end)``, per layer (views)."""
        return ([layer.keys[row, :, begin:end] for layer in cache.layers],
                [layer.values[row, :, begin:end] for layer in cache.layers])

    @staticmethod
    def _past(reused: Sequence[tuple[_Node | None, int]], past: int, reserve: int | None = None) -> DynamicCache:
        """The rows' reused keys/values (``reused``: the node and token count ``PrefixCache.match``
        gave), each left-padded to ``past`` tokens, as one batched cache (a ``GrowingCache`` with
        room for ``reserve`` more tokens, or a plain ``DynamicCache`` when ``reserve`` is None).

        Gathered with one concatenation and one indexed copy per layer (not one copy per row and
        segment): the segments of all rows are listed once, their tokens' destination slots
        (row, column) computed once."""
        ref = next(node for node, c in reused if c > 0)
        assert ref is not None
        segs: list[tuple[Segment, int]] = []
        slots: list[torch.Tensor] = []
        for r, (node, c) in enumerate(reused):
            if c > 0:
                segs += pieces(node, c)
                slots.append(torch.arange(r * past + past - c, (r + 1) * past))
        index = torch.cat(slots).to(ref.keys[0].device)
        heads, dim = ref.keys[0].shape[0], ref.keys[0].shape[2]
        layers = []
        for li in range(len(ref.keys)):
            pair = []
            for kind in ("keys", "values"):
                src = torch.cat([getattr(seg, kind)[li][:, :take] for seg, take in segs], dim=1)  # [heads, tokens, dim]
                flat = src.new_zeros((len(reused) * past, heads, dim))
                flat[index] = src.transpose(0, 1)
                pair.append(flat.view(len(reused), past, heads, dim).transpose(1, 2).contiguous())
            layers.append((pair[0], pair[1]))
        return DynamicCache(ddp_cache_data=layers) if reserve is None else GrowingCache(layers, reserve=reserve)

    @classmethod
    def _store_samples(cls, store: PrefixCache, cache: Any, batch_rows: torch.Tensor, sample_of: torch.Tensor,
                       prompt_ids: list[list[int]], n: int, tokens: torch.Tensor, length: torch.Tensor,
                       start: int) -> None:
        """Store prompt + sampled tokens of the samples in ``batch_rows`` (all but the last sampled
        token, which was never run); their prompts are already stored."""
        for j, s in zip(batch_rows.tolist(), sample_of[batch_rows].tolist()):
            ran = int(length[s]) - 1
            if ran > 0:
                ids = prompt_ids[s // n]
                store.add(ids + tokens[s, :ran].tolist(), *cls._kv(cache, j, start, start + ran), offset=len(ids))

    def _hit(self, table: _StopTable, tok_id: int, ids: list[int], stops: list[str]) -> str | None:
        """The stop string that the token just sampled completed, if any."""
        if tok_id in table.exact:
            return table.exact[tok_id]
        found = cut_at_stop(self.tokenizer.decode(ids), stops)
        return None if found is None else found[1]

    def _collect(self, prompt_ids: list[list[int]], n: int, tokens: torch.Tensor, length: torch.Tensor,
                 logprob: torch.Tensor, reason: list[str], stops: list[str],
                 cached: list[int]) -> list[list[Generation]]:
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
                                          generated_tokens=len(ids[s]), logprob=float(logprob[s]), token_ids=ids[s],
                                          cached_prompt_tokens=cached[p] if k == 0 else 0))
            out.append(samples)
        return out


__all__ = ["HFGenerator", "PrefixCache", "sample_next"]
