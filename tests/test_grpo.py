"""``prm-rl``: step-end tokens on the policy's own tokens, reward mixing, exact resume, and (slow) learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from conftest import REPO
from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from prm.models.tokenizer import build_char_tokenizer
from prm.steps import TAGGED, split_solution, step_end_chars
from rl.grpo import run
from rl.rollouts import combine, step_end_tokens
from search.generation.base import Generation

pytestmark = pytest.mark.usefixtures("one_thread")

TAGGED_SOLUTION = "<reasoning>\n7+5=2\n2*3=6\n6-4=2\n</reasoning>\n<answer>2</answer>"


def _bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = [f"<reasoning>\n{a}+{b}={c}\n{c}*3=4\n</reasoning>\n<answer>{c}</answer>"
              for a in range(10) for b in range(10) for c in range(3)]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_step_rewards_sit_on_each_steps_last_token_of_the_policys_own_tokens(kind: str) -> None:
    tok = build_char_tokenizer() if kind == "char" else _bpe()
    ids = tok(TAGGED_SOLUTION, add_special_tokens=False)["input_ids"]
    gen = Generation(TAGGED_SOLUTION, "eos", 0, len(ids), token_ids=list(ids))
    ends, kept = step_end_tokens(tok, gen, TAGGED)
    steps = split_solution(TAGGED_SOLUTION, TAGGED).labelled_steps
    assert len(ends) == len(steps) == 4 and ends == sorted(set(ends)) and kept == [0, 1, 2, 3]
    chars = step_end_chars(TAGGED_SOLUTION, TAGGED)
    for end, char in zip(ends, chars):  # the token at `end` decodes to text that covers the step's end char
        before = len(tok.decode(ids[:end]))
        after = len(tok.decode(ids[: end + 1]))
        assert before <= char < after
    assert ends[-1] == len(ids) - 1  # the answer step ends on the last token ("</answer>")
    if kind == "char":
        assert [TAGGED_SOLUTION[e] for e in ends] == ["\n", "\n", "\n", ">"]
    else:
        assert len(ids) < len(TAGGED_SOLUTION)  # merged tokens really cross characters


def test_a_token_that_ends_several_steps_carries_the_last_of_them() -> None:
    text = "a\nb\n"

    class OneToken:  # one token decoding to the whole text: both step ends fall in it
        def decode(self, ids, skip_special_tokens=False):  # type: ignore[no-untyped-def]
            return text if ids else ""

    ends, kept = step_end_tokens(OneToken(), Generation(text, "eos", 0, 1, token_ids=[7]), TAGGED)  # type: ignore[arg-type]
    assert (ends, kept) == ([0], [1])


def test_rewards_of_one_kind_are_combined_by_weight_and_none_masks() -> None:
    assert combine([[1.0, 0.0, None], [0.0, 1.0, 1.0]], [3.0, 1.0]) == [0.75, 0.25, None]
    assert combine([[[1.0, 0.0], None], [[0.0, 0.0], [1.0]]], [1.0, 1.0]) == [[0.5, 0.0], None]
    assert combine([[float("nan")]], [1.0]) == [None]


def digit_share(prompts: list[str], completions: list[str], **kwargs: object) -> list[float | None]:
    """A TRL-signature reward that varies even for an untrained policy (None on empty completions)."""
    return [sum(c.isdigit() for c in text) / len(text) if text else None for text in completions]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=96), seed=0)
    return save_model(model, tok, tmp_path_factory.mktemp("policy") / "model")


def _cfg(run_dir: Path, policy: Path, *extra: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="rl", overrides=[
            f"policy={policy}", f"run_dir={run_dir}", "rl.n_train_problems=200", "rl.prompts_per_step=4",
            "rl.group_size=4", "rl.max_new_tokens=24", "monitor.n_problems=6", "monitor.samples=2",
            "train.max_steps=4", "train.save_every=2", "train.eval_every=2", "train.progress=false",
            "train.lr=1e-2", "~reward.outcome",
            "+reward.digits={_target_: rl.rewards.FunctionReward, function: test_grpo.digit_share, weight: 1.0}",
            *extra])


class Crash(RuntimeError):
    pass


def test_rl_resumed_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, tiny_policy: Path) -> None:
    full = run(_cfg(tmp_path / "full", tiny_policy, "rl.ppo_epochs=2", "rl.kl_coef=0.1"))
    assert full["step"] == 4 and [m["step"] for m in full["monitor"]] == [0, 2, 4]

    def crash_at_3(state, row):  # type: ignore[no-untyped-def]
        if state.step == 3:
            raise Crash

    cfg = _cfg(tmp_path / "resumed", tiny_policy, "rl.ppo_epochs=2", "rl.kl_coef=0.1")
    with pytest.raises(Crash):
        run(cfg, callbacks=[crash_at_3])  # after the checkpoint at step 2, mid rollout batch 2
    resumed = run(cfg)
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    start = load_file(str(tiny_policy / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same rollouts, rewards and updates
    assert any(not torch.equal(a[k], start[k]) for k in a)  # and it did train
    assert resumed["monitor"][-1] == full["monitor"][-1]


def test_rl_bad_input_is_a_clear_error(tmp_path: Path, tiny_policy: Path) -> None:
    from rl.grpo import RLConfigError

    with pytest.raises(ValueError, match="unknown grader 'nope'"):
        run(_cfg(tmp_path / "a", tiny_policy, "+reward.bad={_target_: nope}"))
    with pytest.raises(RLConfigError, match="needs its PRM"):
        run(_cfg(tmp_path / "b", tiny_policy, "+reward.prm={_target_: rl.rewards.ProcessReward, weight: 0.2}"))
    with pytest.raises(RLConfigError, match="ppo_epochs"):
        run(_cfg(tmp_path / "c", tiny_policy, "rl.ppo_epochs=0"))


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prm.models.prm_model import build_prm, save_prm
    from prm.steps import save_step_format
    from prm.data.arith import ARITH_FORMAT

    model, tok = build_prm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128), seed=0)
    d = save_prm(model, tok, tmp_path_factory.mktemp("prm") / "model")
    save_step_format(d, ARITH_FORMAT)
    return d


def test_prm_refresh_learns_the_policys_samples_and_round_trips(tiny_prm: Path) -> None:
    from prm.scoring.prm_scorer import PRMScorer
    from prm.worlds import make_world
    from rl.prm_refresh import PRMRefresh
    from rl.rewards import Rollout

    world = make_world({"source": "arith"})
    task = world.task("Q: 7+5*3-4")
    texts = ["7+5=2\n2*3=6\n6-4=2\n# Answer: 2", "7+5=3\n3*3=9\n# Answer: 9", "7+5=2\n# Answer: 2"] * 4
    rollouts = [Rollout(task, t, world.fmt) for t in texts]
    scorer = PRMScorer(str(tiny_prm))
    refresh = PRMRefresh(scorer, world, every=1, steps=30, batch_size=6, lr=3e-3, seed=0)
    state0 = refresh.state_dict()
    refresh.add(rollouts)
    assert len(refresh.buffer) == 12 and refresh.due(1) and not refresh.due(0)
    stats = refresh.refresh()
    assert stats["refresh/loss_last"] < stats["refresh/loss_first"] and stats["refresh/prm_tokens"] > 0
    after = scorer.score([task.prompt], [[r.steps for r in rollouts[:3]]])[0]
    labels = [world.step_labels(task, r.steps) for r in rollouts[:3]]
    assert after[1][0] < after[0][0] and after[2][-1] < after[0][-1]  # learned: a wrong step, a premature answer
    assert labels[1][0] == 0.0 and labels[2][-1] == 0.0
    saved = refresh.state_dict()
    refresh.load_state_dict(state0)  # the weights go back exactly
    assert scorer.score([task.prompt], [[rollouts[0].steps]])[0][0] != after[0]
    refresh.load_state_dict(saved)
    assert scorer.score([task.prompt], [[rollouts[0].steps]])[0][0] == pytest.approx(after[0])
    with pytest.raises(ValueError, match="no exact labels"):
        PRMRefresh(scorer, make_world({"source": "problems"}, problems=_problem_file()))


def _problem_file() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "p.jsonl"
    path.write_text('{"problem": "What is 2+2?", "answer": "4"}\n')
    return path


def test_rl_with_a_refreshed_prm_resumes_exactly(tmp_path: Path, tiny_policy: Path, tiny_prm: Path) -> None:
    extra = ("reward=prm", f"scorer.model_or_path={tiny_prm}", "rl.prm_refresh.enabled=true", "rl.prm_refresh.every=1",
             "rl.prm_refresh.steps=2", "rl.prm_refresh.batch_size=4", "~reward.digits")
    full = run(_cfg(tmp_path / "full", tiny_policy, *extra))
    assert "prm_reward" in full["monitor"][-1]

    def crash_at_3(state, row):  # type: ignore[no-untyped-def]
        if state.step == 3:
            raise Crash

    cfg = _cfg(tmp_path / "resumed", tiny_policy, *extra)
    with pytest.raises(Crash):
        run(cfg, callbacks=[crash_at_3])
    resumed = run(cfg)
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["monitor"][-1] == full["monitor"][-1]  # the refreshed PRM's reward included


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_outcome_rl_raises_true_held_out_accuracy_not_only_its_reward(tmp_path: Path) -> None:
    """The default world's SFT policy (prm-sft's defaults but 1500 steps, about 5 minutes) writes its systematic
    mistakes confidently; 30 steps of outcome GRPO unlearn many of them: held-out accuracy rises, and so does the
    share of solutions whose every step is right (measured: greedy 0.53 -> 0.77 after 20 steps from a 1000-step
    policy; on the machine of 2026-12-02, whose CPU put the SFT loss's phase transition later, a 1000-step policy
    started at 0.31 with little entropy and 30 steps did not lift it (0.31 -> 0.255, the same before and after that
    session's changes), while a 1500-step one went 0.55 -> 0.685, sampled 0.52 -> 0.68). 1500 SFT steps put the
    policy past the transition on both machines."""
    from rl.sft import run as sft_run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        sft_cfg = compose(config_name="sft", overrides=[
            f"run_dir={tmp_path / 'sft'}", "train.max_time_s=null", "train.progress=false", "eval_problems=0",
            "train.max_steps=1500"])
    sft_run(sft_cfg)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="rl", overrides=[
            f"policy={tmp_path / 'sft' / 'model'}", f"run_dir={tmp_path / 'rl'}", "rl.n_train_problems=5000",
            "monitor.n_problems=200", "monitor.samples=4", "train.max_steps=30", "train.eval_every=30",
            "train.save_every=0", "train.progress=false"])
    summary = run(cfg)
    first, last = summary["monitor"][0], summary["monitor"][-1]
    assert (first["step"], last["step"]) == (0, 30)
    assert last["greedy_accuracy"] >= first["greedy_accuracy"] + 0.1, (first, last)
    assert last["sampled_accuracy"] >= first["sampled_accuracy"] + 0.1, (first, last)
    assert last["process_correct"] >= first["process_correct"] + 0.05, (first, last)  # right for the right reasons


def test_rl_with_the_prm_as_a_baseline_trains_and_needs_both_rewards(tmp_path: Path, tiny_policy: Path,
                                                                       tiny_prm: Path) -> None:
    from rl.grpo import RLConfigError

    base = ["reward=prm", f"scorer.model_or_path={tiny_prm}", "rl.advantage.outcome=dr_grpo",
            "rl.advantage.process=baseline", "train.max_steps=2"]
    summary = run(_cfg(tmp_path / "rl", tiny_policy, *base))
    trained = load_file(str(tmp_path / "rl" / "model" / "model.safetensors"))
    start = load_file(str(tiny_policy / "model.safetensors"))
    assert summary["step"] == 2 and any(not torch.equal(trained[k], start[k]) for k in trained)
    with pytest.raises(RLConfigError, match="needs both"):
        run(_cfg(tmp_path / "no-outcome", tiny_policy, *base, "~reward.digits"))
    with pytest.raises(RLConfigError, match="advantage.outcome=dr_grpo"):
        run(_cfg(tmp_path / "grpo", tiny_policy, *base, "rl.advantage.outcome=grpo"))


def test_a_prm_with_another_tokenizer_than_the_policy_scores_text(tmp_path: Path, tiny_policy: Path) -> None:
    """The PRM reads text, so its tokenizer may differ from the policy's (here: a BPE PRM, a character policy)."""
    from prm.data.arith import ARITH_FORMAT
    from prm.models.prm_model import build_prm, save_prm
    from prm.steps import save_step_format

    tok = _bpe()
    tok.pad_token = tok.eos_token = tok.convert_ids_to_tokens(0)
    model, tok = build_prm(tokenizer=tok, size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128))
    prm_dir = save_prm(model, tok, tmp_path / "prm")
    save_step_format(prm_dir, ARITH_FORMAT)
    text = "<reasoning>\n7+5=2\n"
    assert tok(text)["input_ids"] != build_char_tokenizer()(text, add_special_tokens=False)["input_ids"]
    summary = run(_cfg(tmp_path / "rl", tiny_policy, "reward=prm", f"scorer.model_or_path={prm_dir}", "~reward.digits",
                       "train.max_steps=2"))
    assert summary["step"] == 2 and "prm_reward" in summary["monitor"][-1]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_split_forward_gives_the_same_logits_loss_and_gradients(kind: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rl.grpo import grpo_loss
    from rl.rollouts import policy_logits, sequence_logprobs

    torch.manual_seed(0)
    if kind == "gpt2":
        model = load_causal_lm(size=TinyGPTConfig(n_layer=2, n_embd=32, n_head=2, n_positions=64), seed=0)[0]
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    g = torch.Generator().manual_seed(1)
    lengths = [7, 30, 12, 30, 3, 19, 25, 9, 16]
    ids = torch.zeros((len(lengths), 30), dtype=torch.long)
    attn = torch.zeros_like(ids)
    comp = torch.zeros(ids.shape, dtype=torch.bool)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, 40, (n,), generator=g)
        attn[r, :n] = 1
        comp[r, min(2, n - 1) : n] = True
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp,
             "advantages": torch.randn(ids.shape, generator=g)}
    full = policy_logits(model, ids, attn, 1)
    split = policy_logits(model, ids, attn, 4)
    real = attn.bool()
    torch.testing.assert_close(split[real], full[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sequence_logprobs(model, ids, attn, splits=3)[real],
                               sequence_logprobs(model, ids, attn)[real], rtol=1e-5, atol=1e-5)
    grads = []
    for splits in (1, 4):
        model.zero_grad()
        loss, metrics = grpo_loss(0.2, 0.2, 0.0, "token", splits=splits)(model, batch)
        loss.backward()
        grads.append((float(loss), float(metrics["entropy"]),
                      {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5, abs=1e-7)
    assert grads[0][1] == pytest.approx(grads[1][1], rel=1e-5)
    for k, v in grads[0][2].items():
        torch.testing.assert_close(grads[1][2][k], v, rtol=1e-3, atol=1e-6)
