"""The HF generator's prefix cache (``reuse_cache``): the same search with and without it, only new text prefilled.

A tiny character policy fitted for a moment on arithmetic solutions (so steps end at the step stop and some
solutions reach an answer) runs beam and lookahead search twice with the same seed: with the cache every
candidate, score and token count equals the uncached run, and each continuation prefills exactly one token
(the last sampled token, whose keys/values were never computed). A small cache stays under its budget and
still gives the same result; a byte-level BPE tokenizer whose re-tokenization of ``prompt + text`` differs
from the sampled ids reuses exactly the longest stored token prefix; changed weights drop the cache.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import SimpleNamespace as NS

import pytest
import torch

from conftest import bpe_tokenizer
from prm.data.arith import ARITH_FORMAT, ArithConfig, generate_problems, sample_training_solution
from prm.models.loading import TinyGPTConfig, build_tiny_gpt, load_causal_lm
from prm.models.prm_model import build_prm
from prm.models.kv_segments import common_prefix
from prm.scoring.prm_scorer import PRMScorer
from search.accounting import Compute
from search.generation import Generation, GenerationStats, HFGenerator, cache_scope
from search.generation.hf import PrefixCache
from search.generation.vllm_backend import request_to_generations
from search.loop import SearchResult, SearchSettings, search
from search.strategies import make_strategy

SIZE = TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=256)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one torch thread


def _fit(model: torch.nn.Module, rows: list[list[int]], pad: int, steps: int, lr: float = 1e-2) -> None:
    """A few AdamW steps of next-token training on ``rows`` (right-padded, padding ignored)."""
    width = max(map(len, rows))
    x = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def policy():
    """A char policy that writes arithmetic-looking steps ending with "\\n" and sometimes an answer."""
    model, tok = load_causal_lm(size=SIZE, seed=0)
    cfg, rng = ArithConfig(max_ops=3), random.Random(0)
    texts = [p.prompt + sample_training_solution(p, cfg, rng) for p in generate_problems(64, cfg, seed=5)]
    _fit(model, [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts], tok.pad_token_id, steps=60)
    return model, tok


@pytest.fixture(scope="module")
def prm():
    model, tok = build_prm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=256), seed=0)
    return PRMScorer(model, tok, aggregation="min")


PROBLEMS = [p.prompt for p in generate_problems(3, ArithConfig(max_ops=3), seed=77)]


class Recorder(HFGenerator):
    """An ``HFGenerator`` that remembers, per call, its prompts, their results and the cache size after it."""

    calls: list[tuple[list[str], list[list[Generation]], int]]

    def generate(self, prompts: Sequence[str], **kw) -> list[list[Generation]]:  # type: ignore[no-untyped-def, override]
        out = super().generate(prompts, **kw)
        self.calls = [*getattr(self, "calls", []), (list(prompts), out, self.cache.tokens)]
        return out


def _search(policy, prm, strategy: str, reuse: bool, cache_tokens: int = 65536,
            **kw: int | float) -> tuple[list[SearchResult], Recorder]:
    gen = Recorder(*policy, reuse_cache=reuse, cache_tokens=cache_tokens, batch_size=64)
    settings = SearchSettings(max_step_tokens=12, max_solution_tokens=40, max_rounds=5, seed=3)
    results = search(PROBLEMS, gen, prm, make_strategy(strategy, **kw), settings, ARITH_FORMAT)
    return results, gen


def _outcome(results: list[SearchResult]) -> list[tuple]:
    """Everything a search decides and counts, except the prefix cache's share of the prompt tokens."""
    def cand(c) -> tuple:  # type: ignore[no-untyped-def]
        return (c.text, c.step_scores, c.values, c.score, c.value, c.generated_tokens, c.rollout_tokens,
                c.finish_reason, c.answer)

    def compute(c: Compute) -> tuple:
        return (c.prompt_tokens, c.generated_tokens, c.rollout_tokens, c.prm_tokens, c.samples)

    return [([cand(c) for c in r.finished], [cand(c) for c in r.unfinished], r.chosen, r.rounds, compute(r.compute))
            for r in results]


def _check_prefill(gen: Recorder, results: list[SearchResult], max_ratio: float) -> None:
    """The first call prefills the problem prompts whole; every later prompt continues a text the
    generator ran, so it prefills one token. The per-problem counts add up to the generator's."""
    prompts, gens, _ = gen.calls[0]
    assert [g[0].cached_prompt_tokens for g in gens] == [0] * len(prompts)
    for prompts, gens, _ in gen.calls[1:]:
        assert [g[0].prompt_tokens - g[0].cached_prompt_tokens for g in gens] == [1] * len(prompts)
    stats = gen.stats
    assert stats.prefilled_tokens == sum(len(gen.encode([p])[0]) for p in gen.calls[0][0]) + sum(
        len(prompts) for prompts, _, _ in gen.calls[1:])
    assert sum(r.compute.cached_prompt_tokens for r in results) == stats.cached_prompt_tokens
    assert sum(r.compute.prefilled_tokens for r in results) == stats.prefilled_tokens
    assert stats.prefilled_tokens < max_ratio * stats.generated_tokens < stats.prompt_tokens
    assert gen.cache.tokens == 0  # the search emptied it when it finished


# Prefilled per generated token: beam search prefills one token per kept beam (N/M prompts) per round for N
# samples of a step (~6 tokens here); lookahead adds one n=1 rollout prompt per candidate, so about
# (1/M + 1) / 2 tokens per step's worth of generated tokens.
@pytest.mark.parametrize(("strategy", "kw", "max_ratio"), [("beam", {"n": 8, "m": 2}, 0.1),
                                                           ("lookahead", {"n": 8, "m": 2, "rollout_steps": 1}, 0.15)])
def test_search_with_the_cache_equals_search_without_and_prefills_only_new_text(policy, prm, strategy, kw,
                                                                                 max_ratio) -> None:
    plain, plain_gen = _search(policy, prm, strategy, reuse=False, **kw)
    cached, cached_gen = _search(policy, prm, strategy, reuse=True, **kw)
    assert _outcome(cached) == _outcome(plain)
    assert plain_gen.stats.cached_prompt_tokens == 0 and all(r.compute.cached_prompt_tokens == 0 for r in plain)
    assert sum(r.rounds for r in cached) >= 3 * 3 and sum(len(r.finished) for r in cached) > 0
    assert any(c.answer is not None for r in cached for c in r.finished)  # the policy does reach answers
    _check_prefill(cached_gen, cached, max_ratio)
    assert cached[0].compute.as_dict()["prefilled_tokens"] == cached[0].compute.prefilled_tokens


def test_a_small_cache_stays_bounded_and_changes_nothing(policy, prm) -> None:
    plain, _ = _search(policy, prm, "beam", reuse=False, n=8, m=2)
    small, gen = _search(policy, prm, "beam", reuse=True, cache_tokens=150, n=8, m=2)
    _, big = _search(policy, prm, "beam", reuse=True, n=8, m=2)
    assert _outcome(small) == _outcome(plain)
    assert all(tokens <= 150 for _, _, tokens in gen.calls) and max(tokens for _, _, tokens in big.calls) > 300
    assert 0 < gen.stats.cached_prompt_tokens < big.stats.cached_prompt_tokens  # evicted prefixes are run again


def test_prefix_cache_trie_matches_splits_and_evicts() -> None:
    kv = lambda n, v: ([torch.full((1, n, 2), float(v))], [torch.full((1, n, 2), -float(v))])  # noqa: E731
    cache = PrefixCache(max_tokens=6)
    cache.add([1, 2, 3, 4], *kv(4, 1), offset=0)
    cache.clock += 1
    cache.add([1, 2, 5], *kv(1, 2), offset=2)  # splits [1 2 3 4] after [1 2]
    assert cache.tokens == 5
    node, count = cache.match([1, 2, 3, 9])
    assert count == 3 and node is not None and node.ids == [3, 4] and node.parent is not None
    assert node.parent.ids == [1, 2] and sorted(node.parent.children) == [3, 5]  # type: ignore[attr-defined]
    cache.add([1, 2, 5], *kv(1, 3), offset=2)  # already stored: nothing added
    assert cache.tokens == 5
    cache.clock += 1
    cache.add([7, 8], *kv(2, 4), offset=0)
    cache.match([1, 2, 5])  # touches [1 2] and [5]: [3 4] is now the least recently used leaf
    cache.evict()
    assert cache.tokens == 5 and cache.match([1, 2, 3, 4])[1] == 2 and cache.match([7, 8])[1] == 2
    node, count = cache.match([1, 2, 5])
    assert count == 3 and node is not None and float(node.keys[0][0, 0, 0]) == 2.0


# -- a byte-level BPE tokenizer: re-tokenizing prompt + text differs from the sampled ids ------------------


@pytest.fixture(scope="module")
def bpe_lm():
    rng = random.Random(0)
    corpus = ["".join(rng.choice(["ab.\n\n", "cd.\n", "e.\n\n\n", "ab", ".\n", "\n\n", "ba"]) for _ in range(40))
              for _ in range(200)]
    tok = bpe_tokenizer(corpus)
    model = build_tiny_gpt(tok, SIZE, seed=0)
    _fit(model, [tok(t)["input_ids"][:40] for t in corpus[:32]], tok.pad_token_id, steps=40, lr=3e-2)
    return model, tok


def _stepwise(gen: HFGenerator, rounds: int, texts: Sequence[str] = ("ab", "cd.\n", "e"),
              stop: str = ".\n") -> list[list[tuple[str, str, list[int] | None]]]:
    """Prompts continued step by step (stop ".\\n", which BPE tokens such as ".\\n\\n" complete with more text)."""
    texts, out = list(texts), []
    for r in range(rounds):
        gens = gen.generate(texts, n=2, max_new_tokens=12, stop=[stop], seed=r)
        out.append([(t, s.text, s.token_ids) for t, samples in zip(texts, gens) for s in samples])
        texts = [t + text for t, text, _ in out[-1] if text][:6]
    return out


def test_bpe_retokenization_differs_and_the_cache_reuses_only_matching_tokens(bpe_lm) -> None:
    model, tok = bpe_lm
    plain = _stepwise(HFGenerator(model, tok, reuse_cache=False), rounds=4)
    gen = Recorder(model, tok)
    with cache_scope(gen):
        assert _stepwise(gen, rounds=4) == plain
    # re-tokenizing prompt + text is not the prompt's ids followed by the sampled ids somewhere
    assert any(tok(p + text)["input_ids"] != tok(p)["input_ids"] + ids
               for row in plain for p, text, ids in row if ids is not None and tok.decode(ids) == text)
    stored: list[list[int]] = []  # everything the generator ran: each prompt, each prompt + sampled tokens but the last
    diverged = 0
    for prompts, gens, _ in gen.calls:
        for p, samples in zip(prompts, gens):
            ids = gen.encode([p])[0]
            best = max((common_prefix(ids, s) for s in stored), default=0)
            assert samples[0].cached_prompt_tokens == min(best, len(ids) - 1)  # exactly the longest stored prefix
            diverged += best < len(ids) - 1
        for p, samples in zip(prompts, gens):
            ids = gen.encode([p])[0]
            stored += [ids] + [ids + (s.token_ids or [])[:-1] for s in samples]
    assert diverged > 0 and gen.stats.cached_prompt_tokens > 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rotary_grouped_query_models_give_the_same_samples_with_the_cache(arch: str) -> None:
    """Rotary positions continue each row's own prefix across the reused keys/values and the padding hole."""
    from prm.models.tokenizer import build_char_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = build_char_tokenizer()
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    texts, stop = ("Q: 1+2\n", "Q: 3*4-5+6\n", "ab"), "1"
    plain = _stepwise(HFGenerator(model, tok, reuse_cache=False), 4, texts, stop)
    gen = Recorder(model, tok)
    with cache_scope(gen):
        assert _stepwise(gen, 4, texts, stop) == plain
    first = sum(len(gen.encode([t])[0]) for t in texts)  # then one token per continued text
    assert gen.stats.prefilled_tokens == first + sum(len(prompts) for prompts, _, _ in gen.calls[1:])


# -- the cache's lifetime ---------------------------------------------------------------------------------


def test_the_cache_lives_in_a_scope_and_dies_with_changed_weights() -> None:
    model, tok = load_causal_lm(size=SIZE, seed=3)
    gen = HFGenerator(model, tok)
    (first,) = gen.generate(["Q: 1+2\n"], max_new_tokens=8, seed=0)
    text = "Q: 1+2\n" + first[0].text
    cached = lambda: gen.generate([text], max_new_tokens=4, seed=0)[0][0].cached_prompt_tokens  # noqa: E731
    assert cached() == 0 and gen.cache.tokens == 0  # outside a scope: nothing stored, nothing reused
    with cache_scope(gen):
        assert cached() == 0 and cached() == len(gen.encode([text])[0]) - 1
        with torch.no_grad():
            next(model.parameters()).mul_(1.0)  # an in-place update (as an optimizer step makes)
        assert cached() == 0 and cached() > 0
    assert gen.cache.tokens == 0 and cached() == 0
    with cache_scope(object()):  # a generator without a cache: nothing to do
        pass
    off = HFGenerator(model, tok, reuse_cache=False)
    with cache_scope(off):
        off.generate([text, text], max_new_tokens=4, seed=0)
        assert off.cache.tokens == 0 and off.stats.cached_prompt_tokens == 0


def test_cached_tokens_are_counted_per_prompt_and_in_stats() -> None:
    stats = GenerationStats()
    stats.add([[Generation("a", "eos", 10, 2, cached_prompt_tokens=7), Generation("b", "eos", 0, 3)]], 1.0)
    assert (stats.prompt_tokens, stats.cached_prompt_tokens, stats.prefilled_tokens) == (10, 7, 3)
    assert stats.as_dict()["prefilled_tokens"] == 3
    request = NS(prompt_token_ids=[1, 2, 3, 4], num_cached_tokens=3, outputs=[
        NS(index=1, text="x", token_ids=[5], finish_reason="length", stop_reason=None, cumulative_logprob=-1.0),
        NS(index=0, text="y", token_ids=[6], finish_reason="length", stop_reason=None, cumulative_logprob=-1.0)])
    gens = request_to_generations(request, lambda ids: "")
    assert [(g.text, g.prompt_tokens, g.cached_prompt_tokens) for g in gens] == [("y", 4, 3), ("x", 0, 0)]
    assert Compute.from_dict({"prompt_tokens": 5}).as_dict()["prefilled_tokens"] == 5  # old records read fine
