"""Scorers: one-pass PRM scoring, batching, KV-cached incremental scoring, published conventions, baselines."""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForTokenClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForTokenClassification,
)

from prm.worlds import make_world
from prm.data.arith import ArithConfig, Problem, generate_dataset, label_solution
from prm.data.stepwise import StepwiseExample
from prm.models.kv_segments import common_prefix
from prm.models.loading import TinyGPTConfig, build_tiny_gpt, tiny_gpt_config
from prm.models.prm_inputs import encode_steps
from prm.models.prm_model import build_prm, save_prm
from prm.models.tokenizer import build_char_tokenizer
from prm.scoring import (
    LikelihoodScorer,
    OracleScorer,
    OutcomeScorer,
    PRMScorer,
    Prefix,
    RandomScorer,
    Scorer,
    ScorerStats,
    aggregate,
)
from prm.scoring.conventions import Convention, tagged_text
from prm.steps import PLAIN, scoring_text

CONF = Path(__file__).resolve().parents[1] / "conf" / "scorer"
SIZE = TinyGPTConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one torch thread


def _flat(x):
    return [v for a in x for b in a for v in b]


# -- problems and tokenizers --------------------------------------------------------------------------

P1, P2, P3 = "Q: 1+2*3\n", "Q: 4-1\n", "Q: 7+5*3-4\n"
CANDIDATES = [
    [["1+2=3", "3*3=9", "# Answer: 9"], ["1+2=4"], ["1+2=3", "3*3=0", "# Answer: 0"], []],
    [["4-1=3", "# Answer: 3"]],
    [["7+5=2", "2*3=6", "6-4=2", "# Answer: 2"], ["7+5=12"]],
]


def _bpe(use_regex: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on arithmetic solutions; without the regex its merges cross step boundaries."""
    rng = random.Random(0)
    corpus = []
    for ex in generate_dataset(150, ArithConfig(max_ops=4), seed=3):
        steps = list(ex.completions)
        if rng.random() < 0.5:
            steps = steps[:-1]
        corpus.append(scoring_text(ex.prompt, steps)[0])
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def char_prm():
    model, tok = build_prm(size=SIZE, seed=0)
    return model.eval(), tok


@pytest.fixture(scope="module", params=["char", "bpe_regex", "bpe_merging"])
def any_prm(request):
    if request.param == "char":
        model, tok = build_prm(size=SIZE, seed=0)
    else:
        model, tok = build_prm(tokenizer=_bpe(request.param == "bpe_regex"), size=SIZE, seed=0)
    return request.param, model.eval(), tok


# -- aggregation and the protocol ---------------------------------------------------------------------


def test_aggregate_by_hand() -> None:
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "prod") == pytest.approx(0.36)
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    for how in ("last", "min", "prod", "mean"):
        assert aggregate([], how) == 0.0
        assert aggregate([0.25], how) == 0.25
    assert aggregate([], "min", empty=0.5) == 0.5
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(s, "max")


def test_every_scorer_is_a_scorer(char_prm) -> None:
    model, tok = char_prm
    policy = build_tiny_gpt(tok, SIZE, seed=1)
    scorers = [PRMScorer(model, tok), OracleScorer(), OutcomeScorer(), RandomScorer(), LikelihoodScorer(policy, tok)]
    for s in scorers:
        assert isinstance(s, Scorer) and isinstance(s.stats, ScorerStats)
    assert not isinstance(object(), Scorer)

    class NoIncremental:
        stats, aggregation = ScorerStats(), "min"

        def score(self, problems, candidates):
            return []

    assert not isinstance(NoIncremental(), Scorer)


# -- whole candidates -----------------------------------------------------------------------------------


def test_one_pass_equals_each_prefix_scored_separately(any_prm) -> None:
    kind, model, tok = any_prm
    if kind == "bpe_merging":
        pytest.skip("merges across the separator: a prefix's own text tokenizes differently (scores follow the text)")
    scorer = PRMScorer(model, tok, batch_size=1)
    full = scorer.score([P1, P2, P3], CANDIDATES)
    for i, (prompt, cands) in enumerate(zip([P1, P2, P3], CANDIDATES)):
        for j, steps in enumerate(cands):
            assert len(full[i][j]) == len(steps)
            for k in range(len(steps)):
                alone = scorer.score([prompt], [[steps[: k + 1]]])[0][0]
                assert alone[-1] == pytest.approx(full[i][j][k], abs=1e-5)
    assert all(0.0 <= v <= 1.0 for v in _flat(full))
    assert len(set(round(v, 6) for v in _flat(full))) > 5  # a random PRM: scores differ by position


def test_scores_are_read_at_encode_steps_positions(char_prm) -> None:
    model, tok = char_prm
    steps = CANDIDATES[0][0]
    got = PRMScorer(model, tok).score([P1], [[steps]])[0][0]
    enc = encode_steps(tok, P1, steps, PLAIN)
    with torch.inference_mode():
        logits = model(torch.tensor([enc.input_ids])).logits[0, :, 0]
    assert got == pytest.approx(torch.sigmoid(logits[enc.positions]).tolist(), abs=1e-6)


def test_batching_with_different_lengths_equals_one_by_one(any_prm) -> None:
    _, model, tok = any_prm
    batched = PRMScorer(model, tok, batch_size=4)
    single = PRMScorer(model, tok, batch_size=1)
    got = batched.score([P1, P2, P3], CANDIDATES)
    want = [[single.score([p], [[c]])[0][0] for c in cands] for p, cands in zip([P1, P2, P3], CANDIDATES)]
    assert got[0][3] == [] and len(_flat(got)) == 14
    assert _flat(got) == pytest.approx(_flat(want), abs=1e-5)
    assert batched.stats.tokens_processed == single.stats.tokens_processed  # padding is not counted
    assert batched.stats.padding_tokens > 0 and batched.stats.steps_scored == 14


def test_truncated_steps_get_the_last_score_that_fits(char_prm) -> None:
    model, tok = char_prm
    steps = ["1+2=3", "3*3=9", "# Answer: 9"]
    # BOS + "Q: 1+2*3\n" = 10 tokens; step 1's separator is token 15, step 2's token 21
    cut = PRMScorer(model, tok, max_length=20)
    full = PRMScorer(model, tok).score([P1], [[steps]])[0][0]
    got = cut.score([P1], [[steps, ["x" * 30]]])[0]
    assert got[0] == pytest.approx([full[0]] * 3, abs=1e-6)
    assert got[1] == [0.5]
    assert cut.stats.truncated_steps == 3 and cut.stats.tokens_processed == 40
    # incremental: the same fallbacks, and nothing is run for a step that does not fit
    roots = cut.start([P1])
    s1, c1 = cut.extend(roots, ["1+2=3"])
    before = cut.stats.tokens_processed
    s2, c2 = cut.extend(c1, ["3*3=9"])
    assert s2 == pytest.approx([s1[0]]) and cut.stats.tokens_processed == before


# -- incremental scoring --------------------------------------------------------------------------------


def test_incremental_tree_equals_full_scoring_and_counts_only_new_tokens(char_prm) -> None:
    model, tok = char_prm
    scorer = PRMScorer(model, tok, batch_size=8)
    full = PRMScorer(model, tok)
    roots = scorer.start([P1, P2])
    # BOS + prompt (which already ends with the separator): (1 + 9) + (1 + 7)
    assert scorer.stats.tokens_processed == 18 and scorer.stats.cached_tokens == 0
    assert all(r.steps == () and r.scores == () for r in roots)

    s1, c1 = scorer.extend([roots[0], roots[0], roots[1]], ["1+2=3", "1+2=4", "4-1=3"])
    assert scorer.stats.tokens_processed == 18 + 3 * 6  # each new step + its separator
    s2, c2 = scorer.extend([c1[0], c1[0], c1[2]], ["3*3=9", "3*3=0", "# Answer: 3"])
    assert scorer.stats.tokens_processed == 36 + 6 + 6 + 12
    del c1  # a pruned beam: its children still hold what they need
    s3, c3 = scorer.extend([c2[0]], ["# Answer: 9"])
    assert scorer.stats.tokens_processed == 60 + 12
    assert scorer.stats.cached_tokens == 10 * 2 + 8 + (16 * 2 + 14) + 22

    for child in [*c2, *c3]:
        want = full.score([child.problem], [[list(child.steps)]])[0][0]
        assert list(child.scores) == pytest.approx(want, abs=1e-5)
    assert s3[0] == c3[0].scores[-1] and s2 == [c.scores[-1] for c in c2]
    assert c3[0].steps == ("1+2=3", "3*3=9", "# Answer: 9") and c3[0].problem_idx == 0
    # a child stores only the keys/values of its own new tokens
    assert [k.shape[1] for k in c3[0].state.kv.keys] == [12, 12]
    assert c3[0].state.kv.start == 10 + 6 + 6


def test_incremental_equals_full_scoring_with_bpe(any_prm) -> None:
    kind, model, tok = any_prm
    scorer = PRMScorer(model, tok, batch_size=5)
    full = PRMScorer(model, tok)
    problems = [p.prompt for p in [Problem("a", 7, (("+", 5), ("*", 3), ("-", 4))), Problem("b", 3, (("*", 3),))]]
    rng = random.Random(0)
    handles = scorer.start(problems)
    expected_tokens = sum(len(encode_steps(tok, p, []).input_ids) for p in problems)
    assert scorer.stats.tokens_processed == expected_tokens
    recomputed = 0
    for _ in range(3):
        parents = [h for h in handles for _ in range(2)]
        steps = [f"{rng.randint(0, 9)}{rng.choice('+-*')}{rng.randint(0, 9)}={rng.randint(0, 99)}" for _ in parents]
        scores, handles = scorer.extend(parents, steps)
        for parent, child, v in zip(parents, handles, scores):
            enc = encode_steps(tok, child.problem, list(child.steps))
            old = encode_steps(tok, parent.problem, list(parent.steps)).input_ids
            reuse = min(common_prefix(old, enc.input_ids), enc.positions[-1])
            recomputed += len(old) - reuse
            expected_tokens += len(enc.input_ids) - reuse
            want = full.score([child.problem], [[list(child.steps)]])[0][0][-1]
            assert v == pytest.approx(want, abs=1e-5)
    assert scorer.stats.tokens_processed == expected_tokens
    if kind == "bpe_merging":
        assert recomputed > 0  # the boundary merge really happened and was recomputed
    else:
        assert recomputed == 0


def test_handles_by_hand_and_from_another_scorer(char_prm) -> None:
    model, tok = char_prm
    a, b = PRMScorer(model, tok), PRMScorer(model, tok)
    by_hand = Prefix(0, P1, ("1+2=3",), (0.5,))
    scores, [child] = a.extend([by_hand], ["3*3=9"])
    assert scores[0] == pytest.approx(a.score([P1], [[["1+2=3", "3*3=9"]]])[0][0][-1], abs=1e-5)
    assert child.scores[0] == 0.5  # the hand-made parent's scores are kept as given
    with pytest.raises(ValueError, match="another scorer"):
        b.extend([child], ["# Answer: 9"])
    with pytest.raises(ValueError, match="2 parents but 1"):
        a.extend([child, child], ["x"])
    assert a.extend([], []) == ([], [])


# -- published conventions ------------------------------------------------------------------------------


def _token_reader_gpt(model, tok, tag_token: str, logit_gap: float, rows: tuple[int, ...]) -> None:
    """Make the output at a position depend only on its token: ``logit_gap`` between head ``rows`` at the tag token, 0 elsewhere."""
    with torch.no_grad():
        for block in model.transformer.h:  # every block adds nothing to the residual stream
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        wte = model.transformer.wte.weight
        wte.zero_()
        tag_id = tok.convert_tokens_to_ids(tag_token)
        v = torch.tensor([(-1.0) ** i for i in range(wte.shape[1])])
        wte[tag_id] = v
        h = model.transformer.ln_f(v)  # the hidden state at the tag token (zero elsewhere, up to the LN bias = 0)
        head = model.lm_head if isinstance(model, GPT2LMHeadModel) else model.classifier
        head.weight.zero_()
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
        good, bad = rows
        head.weight[good] = logit_gap * h / h.dot(h)
        if isinstance(model, GPT2LMHeadModel):
            head.weight[tok.convert_tokens_to_ids("7")] = 30.0 * h / h.dot(h)  # a big logit outside {good, bad}


def test_math_shepherd_convention_reads_the_tag_and_renormalises() -> None:
    tok = build_char_tokenizer(extra_chars="ки")
    config = tiny_gpt_config(len(tok), SIZE, pad_token_id=tok.pad_token_id)
    config.tie_word_embeddings = False
    model = GPT2LMHeadModel(config).eval()
    good, bad = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    _token_reader_gpt(model, tok, "и", math.log(4.0), (good, bad))  # P(good) = 4 / (4 + 1) at the tag
    scorer = PRMScorer(model, tok, convention="lm_tag", tag=" ки", step_sep="\n", prompt_sep=" ")
    text, ends = tagged_text(scorer.convention, "Q: 1+2", ["1+2=3", "3*3=9"])
    assert text == "Q: 1+2 1+2=3 ки\n3*3=9 ки" and [text[e] for e in ends] == ["и", "и"]
    got = scorer.score(["Q: 1+2"], [[["1+2=3", "3*3=9"], ["x"]]])[0]
    assert _flat([got]) == pytest.approx([0.8, 0.8, 0.8], abs=1e-6)
    swapped = PRMScorer(model, tok, convention="lm_tag", good_token="-", bad_token="+")
    assert swapped.score(["Q"], [[["a", "b"]]])[0][0] == pytest.approx([0.2, 0.2], abs=1e-6)
    off_tag = PRMScorer(model, tok, convention="lm_tag", tag=" к")  # the tag token "к" carries no signal
    assert off_tag.score(["Q"], [[["a"]]])[0][0] == pytest.approx([0.5], abs=1e-6)


def test_qwen_two_class_convention_reads_class_one_at_separators() -> None:
    tok = build_char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    config = tiny_gpt_config(len(tok), SIZE, pad_token_id=tok.pad_token_id)
    config.num_labels = 2
    model = GPT2ForTokenClassification(config).eval()
    _token_reader_gpt(model, tok, "<extra_0>", math.log(9.0), (1, 0))  # softmax(...)[1] = 0.9 at separators
    for chat in (False, True):
        scorer = PRMScorer(model, tok, convention="two_class", tag="<extra_0>", step_sep="", prompt_sep="",
                           chat_template=chat, system_prompt="Be exact." if chat else None)
        enc = scorer.reader.encode("Q: 1+2", ["1+2=3", "3*3=9"])
        assert [tok.convert_ids_to_tokens(enc.input_ids[p]) for p in enc.positions] == ["<extra_0>"] * 2
        got = scorer.score(["Q: 1+2"], [[["1+2=3", "3*3=9", "# Answer: 9"]]])[0][0]
        assert got == pytest.approx([0.9, 0.9, 0.9], abs=1e-6)
    text, _ = tagged_text(scorer.convention, "Q", ["a", "b"], tok)
    assert text == "<system>Be exact.\n<user>Q\n<assistant>a<extra_0>b<extra_0>\n"


@pytest.mark.parametrize("kind", ["lm_tag", "two_class"])
def test_conventions_incremental_equals_full(kind: str) -> None:
    tok = build_char_tokenizer(extra_chars="ки")
    config = tiny_gpt_config(len(tok), SIZE, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if kind == "lm_tag":
        model = GPT2LMHeadModel(config).eval()
    else:
        config.num_labels = 2
        model = GPT2ForTokenClassification(config).eval()
    scorer = PRMScorer(model, tok, convention=kind)
    roots = scorer.start([P1, P2])
    s1, c1 = scorer.extend([roots[0], roots[1], roots[0]], ["1+2=3", "4-1=3", "1+2=4"])
    before = scorer.stats.tokens_processed
    s2, c2 = scorer.extend([c1[0], c1[1]], ["3*3=9", "# Answer: 3"])
    if kind == "lm_tag":  # each child adds step_sep + step + tag
        assert scorer.stats.tokens_processed - before == len("\n3*3=9 ки") + len("\n# Answer: 3 ки")
    for child in [*c1, *c2]:
        want = scorer.score([child.problem], [[list(child.steps)]])[0][0]
        assert list(child.scores) == pytest.approx(want, abs=1e-5)
    if kind == "two_class":  # a 2-class head is not our 1-logit head, and vice versa
        with pytest.raises(ValueError, match="head with 1 label"):
            PRMScorer(model, tok, convention="token_head")
        with pytest.raises(ValueError, match="head with 2 labels"):
            PRMScorer(build_prm(size=SIZE)[0], tok, convention="two_class")
    else:
        with pytest.raises(ValueError, match="needs a causal LM"):
            PRMScorer(build_prm(size=SIZE)[0], tok, convention="lm_tag")



@pytest.mark.parametrize(("arch", "kind"), [("llama", "token_head"), ("qwen2", "token_head"), ("llama", "lm_tag"),
                                            ("qwen2", "two_class")])
def test_llama_style_incremental_equals_full(arch: str, kind: str) -> None:
    """Rotary, grouped-query PRMs (head ``score``) take the same cache: left-padded reused caches of
    different lengths give the scores of a full pass, and no deprecated keyword is passed on the way."""
    tok = build_char_tokenizer(extra_chars="ки")
    config_cls, lm_cls, head_cls = {"llama": (LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification),
                                    "qwen2": (Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification)}[arch]
    config = config_cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        pad_token_id=tok.pad_token_id, num_labels=2 if kind == "two_class" else 1)
    torch.manual_seed(0)
    model = (lm_cls if kind == "lm_tag" else head_cls)(config).eval()
    scorer = PRMScorer(model, tok, convention=kind, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        roots = scorer.start([P1, P2, P3])
        _, c1 = scorer.extend([roots[0], roots[1], roots[0], roots[2]], ["1+2=3", "4-1=3", "1+2=4", "7+5=2"])
        _, c2 = scorer.extend([c1[1], c1[0], c1[3], c1[2]], ["# Answer: 3", "3*3=9", "2*3=6", "4*3=12"])
    assert scorer.stats.cached_tokens > 0
    full = PRMScorer(model, tok, convention=kind)
    got, want = [], []
    for child in [*c1, *c2]:
        got += child.scores
        want += full.score([child.problem], [[list(child.steps)]])[0][0]
    assert got == pytest.approx(want, abs=1e-5)
    assert len({round(v, 5) for v in got}) > 3  # a random PRM: the scores differ, so a wrong cache would show

# -- baselines --------------------------------------------------------------------------------------------


def test_oracle_on_hand_written_solutions() -> None:
    oracle = OracleScorer()  # the arithmetic world (plain, mod 10)
    # 7 +5 -> 2, *3 -> 6, -4 -> 2
    cands = [
        ["7+5=2", "2*3=6", "6-4=2", "# Answer: 2"],
        ["7+5=2", "2*3=7", "7-4=3", "# Answer: 3"],
        ["7+5=2", "# Answer: 2"],  # answers before doing every operation
        ["7+5=2", "2*3=6", "6-4=2", "# Answer: 5"],
        ["7+5=2", "2*3=6", "6-4=2", "# Answer: 2", "2+0=2"],
        ["hello", "2*3=6"],
        [" 7+5=2 ", "2*3=06"],  # numbers compare by value, whitespace is ignored
        [],
    ]
    got = oracle.score([P3], [cands])[0]
    assert got == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 0], [1, 1, 1, 0], [1, 1, 1, 1, 0], [0, 0], [1, 1], []]
    problem = Problem.from_prompt(P3.strip())
    for steps in cands[:4]:  # exactly the world's labeller on the same text
        assert got[cands.index(steps)] == label_solution(problem, "\n".join(steps)).step_labels
    tagged = OracleScorer(world={"source": "arith", "format": "tagged"})
    assert tagged.score([P3], [[["7+5=2", "2*3=6", "6-4=2", "</reasoning>\n<answer>2</answer>"],
                                ["7+5=2", "</reasoning>"], ["7+5=2", "2*3=6", "6-4=2", "<answer>3</answer>"],
                                ["7+5=2", "2*3=6", "6-4=2", "</reasoning>"]]])[0] == [
        [1, 1, 1, 1], [1, 0], [1, 1, 1, 0], [1, 1, 1, 0]]
    roots = oracle.start([P3])
    s, c = oracle.extend([roots[0], roots[0]], ["7+5=2", "7+5=3"])
    s2, _ = oracle.extend([c[0], c[1]], ["2*3=6", "3*3=9"])
    assert s == [1.0, 0.0] and s2 == [1.0, 0.0] and oracle.stats.tokens_processed == 0
    with pytest.raises(KeyError, match="not an arithmetic prompt"):
        oracle.score(["What is 2+2?"], [[["4"]]])


def test_oracle_needs_a_world_with_exact_labels(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text('{"problem": "What is 2+2?", "answer": "4"}\n')
    with pytest.raises(ValueError, match="needs a world with exact step labels"):
        OracleScorer(world=make_world({"source": "prm800k"}, problems=path))


def test_a_prm_knows_its_step_format(tmp_path: Path, char_prm) -> None:
    """The format saved beside a PRM round-trips; scoring it with another one is a clear error."""
    from prm.steps import StepFormat, load_step_format, save_step_format

    model, tok = char_prm
    d = save_prm(model, tok, tmp_path / "prm")
    fmt = StepFormat(separator="\n\n")
    save_step_format(d, fmt)
    assert load_step_format(d) == fmt
    scorer = PRMScorer(str(d))
    assert scorer.convention.separator == "\n\n" and scorer.saved_format == fmt  # read, not the default "\n"
    with pytest.raises(ValueError, match="trained on steps in another format"):
        PRMScorer(str(d), separator="\n")
    with pytest.raises(ValueError, match="style"):
        PRMScorer(str(d), style="tagged")
    assert PRMScorer(str(d), separator="\n\n", style="plain").convention.separator == "\n\n"


def test_a_tagged_prm_scores_exactly_what_it_was_trained_on(tmp_path: Path, char_prm) -> None:
    """A PRM saved with the tagged format reads the policy's own text (open tag included) in the scorer, whole and
    incremental, exactly as prm-train encoded it: the same tokens, the same label positions, the same scores."""
    from prm.prm_train import encode_examples, predict_logits
    from prm.steps import TAGGED, save_step_format

    model, tok = char_prm
    d = save_prm(model, tok, tmp_path / "prm")
    save_step_format(d, TAGGED)
    scorer = PRMScorer(str(d))
    assert scorer.convention.fmt == TAGGED
    steps = ["7+5=2", "2*3=6", "</reasoning>\n<answer>6</answer>"]
    ex = StepwiseExample(prompt=P3, completions=steps, labels=[1.0, 1.0, 1.0])
    enc, _ = encode_examples(tok, [ex], TAGGED, None)
    assert tok.decode(enc[0]["input_ids"]).startswith(tok.bos_token + P3 + "<reasoning>\n7+5=2\n")
    assert scorer.reader.encode(P3, steps).input_ids == enc[0]["input_ids"]
    trained = [1.0 / (1.0 + math.exp(-x)) for x, t in zip(predict_logits(model, enc, tok.pad_token_id)[0],
                                                      enc[0]["targets"]) if t is not None]
    whole = scorer.score([P3], [[steps]])[0][0]
    handle = scorer.start([P3])[0]
    for step in steps:
        _, (handle,) = scorer.extend([handle], [step])
    assert whole == pytest.approx(trained, abs=1e-5) and list(handle.scores) == pytest.approx(trained, abs=1e-5)


def test_outcome_scores_every_step_by_the_answer() -> None:
    outcome = OutcomeScorer(answers={"What is 2+2?": "4"})
    got = outcome.score([P3, "What is 2+2?"], [
        [["7+5=2", "2*3=6", "# Answer: 2"], ["7+5=2", "# Answer: 3"], ["7+5=2", "2*3=6"]],
        [["2+2 is 4", "# Answer: 4"], ["# Answer: 5"]],
    ])
    assert got == [[[1.0] * 3, [0.0] * 2, [0.5] * 2], [[1.0, 1.0], [0.0]]]
    _, [c] = outcome.extend(outcome.start(["What is 2+2?"]), ["2+2 is 4"])
    assert c.scores == (0.5,) and outcome.extend([c], ["# Answer: 4"])[0] == [1.0]
    with pytest.raises(KeyError, match="no reference answer"):
        outcome.score(["unknown"], [[["# Answer: 1"]]])


def test_random_is_deterministic_and_batching_independent() -> None:
    a, b = RandomScorer(seed=1), RandomScorer(seed=1)
    x = a.score([P1, P2], [[["s1", "s2"], ["s1"]], [["s1"]]])
    assert x == b.score([P1, P2], [[["s1", "s2"], ["s1"]], [["s1"]]])
    assert x[0][0][0] == x[0][1][0] != x[1][0][0]  # same (problem, steps) -> same score
    assert b.score([P1], [[["s1", "s2"]]])[0][0] == x[0][0]
    assert RandomScorer(seed=2).score([P1], [[["s1"]]])[0][0] != x[0][1]
    assert all(0.0 <= v < 1.0 for v in _flat(x))
    _, [c] = a.extend(a.start([P1]), ["s1"])
    assert a.extend([c], ["s2"])[0] == [x[0][0][1]]


def test_likelihood_is_the_mean_token_probability_of_each_step() -> None:
    tok = build_char_tokenizer()
    policy = build_tiny_gpt(tok, SIZE, seed=2).eval()
    scorer = LikelihoodScorer(policy, tok, batch_size=2)
    steps = ["1+2=3", "3*3=9"]
    got = scorer.score([P1, P2], [[steps, ["1+2=4"]], [["4-1=3", "# Answer: 3"]]])
    ids = [tok.bos_token_id] + tok(P1 + "1+2=3\n3*3=9\n", add_special_tokens=False).input_ids
    with torch.inference_mode():
        lp = torch.log_softmax(policy(torch.tensor([ids])).logits[0], -1)
    token_lp = [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]  # token t predicted at t - 1
    first = len(P1)  # the first step's characters start at token 1 + len(P1)
    want = [math.exp(sum(token_lp[first : first + 6]) / 6), math.exp(sum(token_lp[first + 6 : first + 12]) / 6)]
    assert got[0][0] == pytest.approx(want, abs=1e-5)
    one = LikelihoodScorer(policy, tok, batch_size=1)
    assert _flat(got) == pytest.approx(_flat(one.score([P1, P2], [[steps, ["1+2=4"]], [["4-1=3", "# Answer: 3"]]])),
                                       abs=1e-5)
    assert scorer.stats.tokens_processed == (1 + 9 + 12) + (1 + 9 + 6) + (1 + 7 + 18)


# -- loading and configs -----------------------------------------------------------------------------------


def test_configs_instantiate(tmp_path: Path, char_prm) -> None:
    model, tok = char_prm
    save_prm(model, tok, tmp_path / "prm")

    def make(name: str, **kw):
        root = OmegaConf.create({"scorer": OmegaConf.load(CONF / f"{name}.yaml"), "data": {"world": {"modulus": 7}}})
        return instantiate(root.scorer, **kw)

    for name, cls in [("oracle", OracleScorer), ("outcome", OutcomeScorer), ("random", RandomScorer)]:
        assert isinstance(make(name), cls)
    assert make("oracle").world.config.modulus == 7  # the world's modulus
    prm = make("prm", model_or_path=str(tmp_path / "prm"))
    assert isinstance(prm, PRMScorer) and prm.max_length == SIZE.n_positions
    direct = PRMScorer(model, tok).score([P1], [CANDIDATES[0][:1]])
    assert _flat(prm.score([P1], [CANDIDATES[0][:1]])) == pytest.approx(_flat(direct), abs=1e-6)
    with pytest.raises(Exception, match="needs a model"):
        make("prm")
    assert OmegaConf.load(CONF / "math_shepherd.yaml").convention == "lm_tag"
    assert OmegaConf.load(CONF / "qwen_prm.yaml").convention == "two_class"
    assert tagged_text(Convention("two_class", tag="<extra_0>", step_sep="", prompt_sep=""), "Q", ["a"])[0] == \
        "Qa<extra_0>"
