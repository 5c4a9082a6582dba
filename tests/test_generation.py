"""Generation backends: exact texts at stop strings, exact token counts, greedy = HF generate, seeds.

Tiny random (or briefly fitted) GPTs over the character tokenizer and a tiny byte-level BPE
tokenizer, and tiny Llama / Qwen2 models (rotary positions, grouped-query attention) for the KV
cache; everything runs on CPU in seconds. The vLLM test is marked ``gpu`` and skips without vLLM.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from conftest import bpe_tokenizer
from prm.models.loading import TinyGPTConfig, build_tiny_gpt, load_causal_lm, save_model
from prm.models.tokenizer import build_char_tokenizer
from search.generation import Generation, GenerationStats, Generator, HFGenerator, cut_at_stop, prompt_token_count

SIZE = TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128)
PROMPTS = ["Q: 1+2\n", "Q: 3*4-5+6\n", "ab", "Q: 9*9*9*9*9*9*9\n"]  # different lengths: left padding


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one torch thread


def _fit(model: torch.nn.Module, ids: list[list[int]], steps: int, lr: float = 3e-2) -> None:
    """A few Adam steps of next-token training so the model favours the characters in ``ids``."""
    width = min(len(x) for x in ids)
    data = torch.tensor([x[:width] for x in ids])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def random_lm():
    return load_causal_lm(size=SIZE, seed=0)


@pytest.fixture(scope="module")
def steppy_lm():
    """A char model fitted for a moment to continue any test prompt with random ``12=+\\n``: stops get hit often."""
    model, tok = load_causal_lm(size=SIZE, seed=1)
    rng = random.Random(0)
    texts = [rng.choice([*PROMPTS, "12=1\n2+"]) + "".join(rng.choice("12=+\n") for _ in range(64)) for _ in range(16)]
    _fit(model, [tok(t)["input_ids"] for t in texts], steps=40)
    return model, tok


def _flat(gens: list[list[Generation]]) -> list[Generation]:
    return [s for g in gens for s in g]


def test_protocol_and_validation(random_lm) -> None:
    gen = HFGenerator(*random_lm)
    assert isinstance(gen, Generator)
    for bad in ({"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"max_new_tokens": 0}, {"stop": [""]}):
        with pytest.raises(ValueError):
            gen.generate(["a"], **bad)
    with pytest.raises(ValueError, match="tokenizer"):
        HFGenerator(random_lm[0])
    assert gen.generate([]) == []


def test_cut_at_stop() -> None:
    assert cut_at_stop("ab=1c=1", ["=1"]) == ("ab=1", "=1")
    assert cut_at_stop("ab.\n\nc", [".\n", "\n"]) == ("ab.\n", ".\n")  # earliest end wins
    assert cut_at_stop("x=1\n", ["\n", "=1"]) == ("x=1", "=1")
    assert cut_at_stop("abc", ["\n"]) is None


def test_greedy_equals_hf_generate_per_prompt(random_lm) -> None:
    model, tok = random_lm
    gens = HFGenerator(model, tok, batch_size=3).generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=40)
    for prompt, samples in zip(PROMPTS, gens):
        enc = tok(prompt, return_tensors="pt")
        ref = model.generate(**enc, do_sample=False, max_new_tokens=40, pad_token_id=tok.pad_token_id)
        want = ref[0, enc.input_ids.shape[1]:].tolist()
        assert [s.token_ids for s in samples] == [want, want]
        assert samples[0].text == tok.decode(want)



@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_style_models_decode_like_generate(arch: str) -> None:
    """The cache goes through the same keyword for rotary, grouped-query models: left-padded batches
    of greedy rows equal ``generate`` per prompt, and no deprecated keyword is passed on the way."""
    tok = build_char_tokenizer()
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        gens = HFGenerator(model, tok, batch_size=3).generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=30)
    for prompt, samples in zip(PROMPTS, gens):
        enc = tok(prompt, return_tensors="pt")
        ref = model.generate(**enc, do_sample=False, max_new_tokens=30, pad_token_id=tok.pad_token_id)
        want = ref[0, enc.input_ids.shape[1]:].tolist()
        assert [s.token_ids for s in samples] == [want, want]
    assert len({tuple(s.token_ids) for s in _flat(gens)}) > 1  # the prompts really lead to different texts

def test_greedy_with_eos_matches_generate() -> None:
    """A model that often emits EOS: greedy rows end at EOS exactly like generate (EOS counted, not in text)."""
    model, tok = load_causal_lm(size=SIZE, seed=2)
    stream = [*tok("ab")["input_ids"], tok.eos_token_id] * 400
    _fit(model, [stream[i : i + 48] for i in range(0, 48 * 20, 48)], steps=40)
    prompts = ["ab", "abab", "a", "Q: 1+2\n"]
    gens = HFGenerator(model, tok).generate(prompts, temperature=0.0, max_new_tokens=30)
    reasons = set()
    for prompt, (s,) in zip(prompts, gens):
        enc = tok(prompt, return_tensors="pt")
        ref = model.generate(**enc, do_sample=False, max_new_tokens=30, pad_token_id=tok.pad_token_id)
        assert s.token_ids == ref[0, enc.input_ids.shape[1]:].tolist()
        reasons.add(s.finish_reason)
        if s.finish_reason == "eos":
            assert s.token_ids[-1] == tok.eos_token_id and "<eos>" not in s.text
            assert s.generated_tokens == len(s.text) + 1
    assert "eos" in reasons


def test_seed_reproducible(random_lm) -> None:
    gen = HFGenerator(*random_lm)
    texts = lambda seed: [s.text for s in _flat(gen.generate(PROMPTS, n=3, max_new_tokens=20, seed=seed))]  # noqa: E731
    assert texts(7) == texts(7)
    assert texts(7) != texts(8)


def test_per_prompt_seeds_make_a_prompts_samples_independent_of_the_batch(steppy_lm) -> None:
    # Two processes sharing out a rollout's prompts must draw what one process draws: with one seed per
    # prompt, a prompt's samples are the same alone, in another order, in other chunks, at another batch size.
    gen = HFGenerator(*steppy_lm, batch_size=64)
    seeds = [11, 22, 33, 44]
    together = gen.generate(PROMPTS[:4], n=3, max_new_tokens=24, stop=["\n"], seed=seeds)
    texts = [[(s.text, s.token_ids) for s in g] for g in together]
    assert len({t for g in texts for t, _ in g}) > 4  # really sampled
    for i in range(4):
        (alone,) = HFGenerator(*steppy_lm, batch_size=3).generate([PROMPTS[i]], n=3, max_new_tokens=24, stop=["\n"],
                                                                   seed=[seeds[i]])
        assert [(s.text, s.token_ids) for s in alone] == texts[i]
        for a, b in zip(alone, together[i]):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    backwards = gen.generate(PROMPTS[:4][::-1], n=3, max_new_tokens=24, stop=["\n"], seed=seeds[::-1])
    assert [[(s.text, s.token_ids) for s in g] for g in backwards][::-1] == texts
    other = gen.generate(PROMPTS[:4], n=3, max_new_tokens=24, stop=["\n"], seed=[5, 22, 33, 44])
    assert [(s.text, s.token_ids) for s in other[0]] != texts[0]
    assert [[(s.text, s.token_ids) for s in g] for g in other[1:]] == texts[1:]
    with pytest.raises(ValueError, match="3 seeds for 4 prompts"):
        gen.generate(PROMPTS[:4], seed=[1, 2, 3])


def test_sampling_by_uniforms_inverts_the_distribution() -> None:
    from search.generation.hf import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.0, 0.25, 0.25]] * 5))  # token 1 has probability 0
    u = torch.tensor([0.0, 0.49, 0.5, 0.74, 0.999], dtype=torch.float64)
    tok, lp = sample_next(logits, 1.0, 1.0, None, u)
    assert tok.tolist() == [0, 0, 2, 2, 3]
    assert torch.allclose(lp, torch.log(torch.tensor([0.5, 0.5, 0.25, 0.25, 0.25])))
    tok, _ = sample_next(logits, 1.0, 0.5, None, u)  # top-p 0.5 keeps token 0 only
    assert tok.tolist() == [0] * 5


def test_samples_of_one_prompt_differ(random_lm) -> None:
    (samples,) = HFGenerator(*random_lm).generate(["Q: 1+2\n"], n=8, temperature=1.0, max_new_tokens=20, seed=0)
    assert len({s.text for s in samples}) == 8


@pytest.mark.parametrize("stop", ["\n", "=1"])
def test_stop_strings_end_samples_exactly(steppy_lm, stop: str) -> None:
    model, tok = steppy_lm
    gens = HFGenerator(model, tok, batch_size=16).generate(PROMPTS, n=8, max_new_tokens=60, stop=[stop], seed=3)
    stopped = [s for s in _flat(gens) if s.finish_reason == stop]
    assert len(stopped) >= 16
    for s in _flat(gens):
        assert s.text == tok.decode(s.token_ids[:-1] if s.finish_reason == "eos" else s.token_ids)
        assert s.generated_tokens == len(s.token_ids)
        if s.finish_reason == stop:
            assert s.text.endswith(stop) and s.text.find(stop) == len(s.text) - len(stop)
        else:
            assert stop not in s.text and s.finish_reason in ("eos", "length")
            assert s.finish_reason == "eos" or s.generated_tokens == 60


def test_several_stops_first_one_wins(steppy_lm) -> None:
    gens = HFGenerator(*steppy_lm).generate(PROMPTS, n=8, max_new_tokens=60, stop=["\n", "=1"], seed=4)
    for s in _flat(gens):
        if s.stopped:
            assert s.text.endswith(s.finish_reason)
            assert cut_at_stop(s.text, ["\n", "=1"]) == (s.text, s.finish_reason)


def test_token_counts_hand_checked(steppy_lm) -> None:
    """Char tokenizer: a prompt costs BOS + len(prompt) tokens, a continuation without specials len(text)."""
    model, tok = steppy_lm
    gen = HFGenerator(model, tok)
    prompts = ["Q: 1+2\n", "12=1\n2+"]  # 7 and 7 characters
    gens = gen.generate(prompts, n=4, max_new_tokens=30, stop=["\n"], seed=5)
    for prompt, samples in zip(prompts, gens):
        assert [s.prompt_tokens for s in samples] == [1 + len(prompt), 0, 0, 0]
        assert prompt_token_count(samples) == 1 + len(prompt)
        for s in samples:
            if s.finish_reason == "\n" and all(i >= 4 for i in s.token_ids):  # no special token produced
                assert s.generated_tokens == len(s.text)
    assert gen.stats.calls == 1 and gen.stats.samples == 8
    assert gen.stats.prompt_tokens == 16
    assert gen.stats.generated_tokens == sum(s.generated_tokens for s in _flat(gens))


def test_prefill_once_and_finished_rows_cost_nothing(steppy_lm) -> None:
    """One prefill per prompt (not per sample); decode forwards only carry unfinished rows."""
    model, tok = steppy_lm
    shapes: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        for fraction in (0.0, 0.25):
            shapes.clear()
            gen = HFGenerator(model, tok, compact_fraction=fraction)
            gens = gen.generate(PROMPTS, n=6, max_new_tokens=40, stop=["\n"], seed=6)
            assert shapes[0] == (len(PROMPTS), 1 + max(len(p) for p in PROMPTS))  # BOS + characters
            decode_rows = [b for b, t in shapes[1:]]
            assert all(t == 1 for _, t in shapes[1:])
            assert decode_rows == sorted(decode_rows, reverse=True)  # the batch only shrinks
            useful = sum(s.generated_tokens for s in _flat(gens)) - len(PROMPTS) * 6  # first tokens: from the prefill
            if fraction == 0.0:
                assert sum(decode_rows) == useful  # finished rows leave at once
            else:
                assert useful < sum(decode_rows) <= useful / (1 - fraction)
                assert gen.stats.generated_tokens == useful + len(PROMPTS) * 6  # carried rows are not counted
    finally:
        hook.remove()


def test_logprob_is_sum_of_token_logprobs(random_lm) -> None:
    model, tok = random_lm
    gens = HFGenerator(model, tok).generate(PROMPTS[:2], n=2, temperature=1.0, max_new_tokens=15, seed=9)
    with torch.no_grad():
        for prompt, samples in zip(PROMPTS, gens):
            p = tok(prompt)["input_ids"]
            for s in samples:
                ids = torch.tensor([p + s.token_ids])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                want = sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(s.token_ids))
                assert s.logprob == pytest.approx(want, abs=1e-3)


def test_top_p_keeps_only_the_nucleus(random_lm) -> None:
    model, tok = random_lm
    (samples,) = HFGenerator(model, tok).generate(["ab"], n=32, top_p=1e-6, max_new_tokens=1, seed=0)
    (greedy,) = HFGenerator(model, tok).generate(["ab"], temperature=0.0, max_new_tokens=1)
    assert {s.text for s in samples} == {greedy[0].text}
    assert all(s.logprob == pytest.approx(0.0, abs=1e-6) for s in samples)  # a one-token distribution


def test_from_pretrained_and_context_limit(tmp_path: Path, random_lm) -> None:
    model, tok = random_lm
    save_model(model, tok, tmp_path / "m")
    gen = HFGenerator.from_pretrained(tmp_path / "m")
    (samples,) = gen.generate(["x" * 120], n=2, max_new_tokens=50, seed=0)  # BOS + 120 of 128 positions: 7 left
    assert samples[0].prompt_tokens == 121
    assert all(s.generated_tokens == 7 or s.finish_reason == "eos" for s in samples)
    with pytest.raises(ValueError, match="no room"):
        gen.generate(["x" * 127])


def test_rows_finished_at_the_context_limit_wait_without_overflowing_positions(random_lm) -> None:
    # One prompt reaches the context limit long before the other finishes; with compaction off, its finished row keeps
    # running until the batch ends and must not index past the model's position table.
    gen = HFGenerator(*random_lm, compact_fraction=0.9)  # 2 of 4 rows finished: no compaction
    out = gen.generate(["x" * 120, "y"], n=2, max_new_tokens=60, seed=0)
    assert all(s.generated_tokens <= 7 for s in out[0])


def test_stats_accumulate() -> None:
    stats = GenerationStats()
    gens = [[Generation("a\n", "\n", 5, 2), Generation("b", "eos", 0, 2)]]
    stats.add(gens, 0.5)
    stats.add(gens, 0.5)
    assert (stats.calls, stats.prompts, stats.samples, stats.prompt_tokens, stats.generated_tokens) == (2, 2, 4, 10, 8)
    assert stats.generated_tokens_per_s == pytest.approx(8.0)


# -- a byte-level BPE tokenizer whose tokens merge the stop string with more characters -------------------


@pytest.fixture(scope="module")
def bpe_lm():
    rng = random.Random(0)
    corpus = ["".join(rng.choice(["ab.\n\n", "cd.\n", "e.\n\n\n", "ab", ".\n", "\n\n"]) for _ in range(40))
              for _ in range(200)]
    tok = bpe_tokenizer(corpus)
    model = build_tiny_gpt(tok, SIZE, seed=0)
    _fit(model, [tok(t)["input_ids"][:40] for t in corpus[:32]], steps=40)
    return model, tok


def test_bpe_tokens_merging_the_stop_string(bpe_lm) -> None:
    model, tok = bpe_lm
    vocab_texts = {tok.decode([i]) for i in range(len(tok))}
    assert {".\n\n", "\n\n"} <= vocab_texts  # merged tokens exist
    gen = HFGenerator(model, tok)
    for stop in (".\n", "\n\n"):
        gens = gen.generate(["ab", "cd.\n", "e"], n=16, max_new_tokens=40, stop=[stop], seed=1)
        stopped = [s for s in _flat(gens) if s.finish_reason == stop]
        assert len(stopped) >= 8
        for s in stopped:
            full = tok.decode(s.token_ids)
            assert s.text.endswith(stop) and s.text.find(stop) == len(s.text) - len(stop)
            assert full.startswith(s.text)  # cut inside the last token at most
            assert stop not in tok.decode(s.token_ids[:-1])  # the last token completed the stop
        if stop == ".\n":  # some sample hit the stop through a token carrying more characters
            assert any(tok.decode(s.token_ids) != s.text for s in stopped)


# -- vLLM: the output conversion runs anywhere, the engine only on a GPU ---------------------------------


def test_vllm_outputs_convert_to_generations(random_lm) -> None:
    from types import SimpleNamespace as NS

    from search.generation.vllm_backend import request_to_generations

    _, tok = random_lm
    eos = tok.eos_token_id
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    lp = lambda xs: [{t: NS(logprob=-0.5)} for t in xs]  # noqa: E731
    outs = [  # vLLM may list completions out of order: index says which sample it is
        NS(index=1, text="1+2=3<eos>", token_ids=ids("1+2=3") + [eos], finish_reason="stop", stop_reason=None,
           cumulative_logprob=-2.0, logprobs=None),
        NS(index=0, text="1+2=3\n", token_ids=ids("1+2=3\n"), finish_reason="stop", stop_reason="\n",
           cumulative_logprob=None, logprobs=lp(ids("1+2=3\n"))),
        NS(index=2, text="1+2", token_ids=ids("1+2"), finish_reason="length", stop_reason=None,
           cumulative_logprob=-1.0, logprobs=None),
    ]
    request = NS(prompt_token_ids=tok("Q: 1+2\n")["input_ids"], outputs=outs, num_cached_tokens=0)
    gens = request_to_generations(request, tok.decode)
    assert [(g.text, g.finish_reason, g.prompt_tokens, g.generated_tokens) for g in gens] == [
        ("1+2=3\n", "\n", 8, 6), ("1+2=3", "eos", 0, 6), ("1+2", "length", 0, 3)]  # BOS + 7 characters
    assert [g.logprob for g in gens] == [pytest.approx(-3.0), -2.0, -1.0]


def test_vllm_missing_says_how_to_install() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        from search.generation import VLLMGenerator

        with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
            VLLMGenerator("/nonexistent")
    else:
        pytest.skip("vLLM is installed")


def test_vllm_weight_updates_reach_the_model_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``in_process`` the engine is built with V1 multiprocessing off (and the variable restored after), and
    ``update_weights`` hands every detached tensor to the model's ``load_weights``, then drops the prefix cache.
    A stand-in ``vllm`` module: what is checked is what the backend asks of vLLM, not vLLM itself."""
    from types import SimpleNamespace as NS

    from search.generation import vllm_backend

    seen: dict[str, object] = {}

    class FakeLLM:
        def __init__(self, **kwargs: object) -> None:
            seen["multiprocessing"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
            seen["kwargs"] = kwargs
            self.model = NS(load_weights=lambda weights: seen.setdefault("loaded", list(weights)))

        def get_tokenizer(self) -> object:
            return None

        def apply_model(self, func):  # noqa: ANN001, ANN201
            return [func(self.model)]

        def reset_prefix_cache(self) -> None:
            seen["reset"] = True

    monkeypatch.setattr(vllm_backend, "_import_vllm", lambda: NS(LLM=FakeLLM))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    engine = vllm_backend.VLLMGenerator(model_path="policy", in_process=True, enforce_eager=True)
    assert seen["multiprocessing"] == "0" and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert "in_process" not in seen["kwargs"] and seen["kwargs"]["enforce_eager"] is True  # type: ignore[index]
    weight = torch.ones(2, requires_grad=True)
    engine.update_weights([("lm_head.weight", weight)])
    (name, tensor), = seen["loaded"]  # type: ignore[misc]
    assert name == "lm_head.weight" and not tensor.requires_grad and torch.equal(tensor, weight.detach())
    assert seen["reset"] is True
    vllm_backend.VLLMGenerator(model_path="policy")  # the default leaves the engine's own process model
    assert seen["multiprocessing"] == "1"


# -- vLLM (GPU only) ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_vllm_generator_matches_protocol(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from search.generation import VLLMGenerator

    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=2, n_embd=64, n_head=2, n_positions=256), seed=0)
    save_model(model, tok, tmp_path / "m")
    gen = VLLMGenerator(str(tmp_path / "m"), dtype="float32", gpu_memory_utilization=0.2, seed=0)
    assert isinstance(gen, Generator)
    gens = gen.generate(PROMPTS, n=4, max_new_tokens=40, stop=["\n"], seed=0)
    for prompt, samples in zip(PROMPTS, gens):
        assert [s.prompt_tokens for s in samples] == [len(tok(prompt)["input_ids"]), 0, 0, 0]
        for s in samples:
            assert s.generated_tokens == len(s.token_ids) and s.logprob is not None
            if s.finish_reason == "\n":
                assert s.text.endswith("\n") and s.text.count("\n") == 1
    greedy = gen.generate(PROMPTS, temperature=0.0, max_new_tokens=20)
    hf = HFGenerator(model, tok).generate(PROMPTS, temperature=0.0, max_new_tokens=20)
    agree = sum(a[0].token_ids == b[0].token_ids for a, b in zip(greedy, hf))
    assert agree >= len(PROMPTS) - 1  # fp32 on both; ties may differ on one
    again = gen.generate(PROMPTS, n=4, max_new_tokens=40, stop=["\n"], seed=0)
    assert [s.text for s in _flat(again)] == [s.text for s in _flat(gens)]  # per-request seed
