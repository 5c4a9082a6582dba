"""Monte-Carlo step labels: exact hard/soft labels and token counts from a scripted policy, the answer
step, shared prefixes, problem-file worlds, their quality against exact labels by hand, and
``prm-sample labeller=mc`` resumed after a crash equals an uninterrupted run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO
from prm.data.arith import ARITH_FORMAT, Problem
from prm.data.stepwise import read_stepwise
from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from prm.steps import PLAIN, is_answer_step
from prm.worlds import ArithWorld, FileWorld, Task, label_example
from search import sample
from search.generation.base import Generation, GenerationStats
from search.generation.hf import HFGenerator
from search.mc_labels import MCSettings, default_ks, label_quality, mc_compute, mc_label, mc_seed

EOS = "<eos>"


class ScriptedPolicy:
    """Completions from a script: prompt -> options; sample j takes option j % len. Tokens: a prompt
    costs len(prompt) (on its first sample only), a completion len(text) + 1 (the EOS)."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script, self.stats, self.calls = script, GenerationStats(), []

    def generate(self, prompts: Sequence[str], *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, stop: Sequence[str] = (), seed: int | None = None) -> list[list[Generation]]:
        self.calls.append({"prompts": list(prompts), "n": n, "temperature": temperature, "top_p": top_p,
                           "max_new_tokens": max_new_tokens, "stop": tuple(stop), "seed": seed})
        out = [[Generation(self.script[p][j % len(self.script[p])], "eos", len(p) if j == 0 else 0,
                           len(self.script[p][j % len(self.script[p])]) + 1) for j in range(n)] for p in prompts]
        self.stats.add(out, 0.0)
        return out


P = Problem("a", 3, (("+", 4), ("*", 2)), modulus=10)  # Q: 3+4*2 -> 3+4=7, 7*2=4, answer 4
TASK = Task(P.id, P.prompt, str(P.answer), P.difficulty, P)
SOLUTIONS = [
    "3+4=7\n7*2=4\n# Answer: 4",  # right all through
    "3+4=8\n8*2=6\n# Answer: 6",  # wrong from the first step
    "3+4=8\n8*2=4\n# Answer: 4",  # right answer through wrong steps; shares its first prefix with the one above
    "3+4=7\n7*2=4",  # cut off before its answer: both steps rolled out, both prefixes shared with the first
]
Q = P.prompt
SCRIPT = {
    Q + "3+4=7\n": ["7*2=4\n# Answer: 4", "7*2=5\n# Answer: 5", "7*2=4\n# Answer: 4", "7*2=4\n# Answer: 4"],
    Q + "3+4=8\n": ["8*2=6\n# Answer: 6", "8*2=6\n# Answer: 6", "8*2=4\n# Answer: 4", "8*2=6\n# Answer: 6"],
    Q + "3+4=7\n7*2=4\n": ["# Answer: 4"],
    Q + "3+4=8\n8*2=6\n": ["# Answer: 6"],
    Q + "3+4=8\n8*2=4\n": ["# Answer: 4", "# Answer: 3"],
}


def _tok(p: str) -> list[int]:
    return [len(x) + 1 for x in (SCRIPT[p] * 4)[:4]]


def _labelled(settings: MCSettings, seed: int = 7, chunk: int = 32) -> tuple[list, ScriptedPolicy]:
    world, gen = ArithWorld(), ScriptedPolicy(SCRIPT)
    exs = [[label_example(world, TASK, x, sample=j) for j, x in enumerate(SOLUTIONS)]]
    return mc_label(world, gen, [TASK], exs, settings, seed=seed, chunk=chunk)[0], gen


def test_hard_and_soft_labels_token_counts_and_one_call_per_depth() -> None:
    out, gen = _labelled(MCSettings(k=4, label="hard", temperature=0.7, top_p=0.9, max_new_tokens=20))
    a1, b1, a2, b2, c2 = Q + "3+4=7\n", Q + "3+4=8\n", Q + "3+4=7\n7*2=4\n", Q + "3+4=8\n8*2=6\n", Q + "3+4=8\n8*2=4\n"
    # one call per depth, every distinct prefix once (in order of first use), n = k, no stop, a seed per depth
    assert [c["prompts"] for c in gen.calls] == [[a1, b1], [a2, b2, c2]]
    assert all(c["n"] == 4 and c["stop"] == () and c["temperature"] == 0.7 and c["top_p"] == 0.9
               and c["max_new_tokens"] == 20 for c in gen.calls)
    assert [c["seed"] for c in gen.calls] == [mc_seed(7, 32, 1), mc_seed(7, 32, 2)]
    assert len({mc_seed(7, 32, 1), mc_seed(7, 32, 2), mc_seed(7, 0, 1), mc_seed(8, 32, 1)}) == 4

    right, wrong_path, lucky, cut = (e.extra for e in out)
    assert right["mc_right"] == [[1, 0, 1, 1], [1, 1, 1, 1], []]
    assert right["mc_hard"] == [1.0, 1.0, 1.0] and right["mc_soft"] == [0.75, 1.0, 1.0]
    assert wrong_path["mc_right"] == [[0, 0, 1, 0], [0, 0, 0, 0], []]
    assert wrong_path["mc_hard"] == [1.0, 0.0, 0.0] and wrong_path["mc_soft"] == [0.25, 0.0, 0.0]
    # the answer step: the solution's own correctness, no rollouts (a right answer through wrong steps: 1.0)
    assert lucky["mc_right"] == [[0, 0, 1, 0], [1, 0, 1, 0], []]
    assert lucky["mc_hard"] == [1.0, 1.0, 1.0] and lucky["mc_soft"] == [0.25, 0.5, 1.0]
    assert lucky["exact_labels"] == [0.0, 0.0, 0.0]
    # unfinished: its last step is rolled out too
    assert cut["mc_right"] == [[1, 0, 1, 1], [1, 1, 1, 1]] and cut["mc_soft"] == [0.75, 1.0]
    assert [e.labels for e in out] == [e.extra["mc_hard"] for e in out]
    assert right["exact_labels"] == [1.0, 1.0, 1.0] and cut["exact_labels"] == [1.0, 1.0]
    assert all(e.extra["mc_k"] == 4 and e.extra["mc_label"] == "hard" for e in out)
    assert [e.extra["sample"] for e in out] == [0, 1, 2, 3] and lucky["correct"] and not cut["correct"]

    # tokens: each prefix's prompt once, each completion len + 1; charged to its first user only
    assert right["mc_completion_tokens"] == [_tok(a1), _tok(a2), []]
    assert right["mc_generated_tokens"] == [sum(_tok(a1)), sum(_tok(a2)), 0]
    assert right["mc_prompt_tokens"] == [len(a1), len(a2), 0]
    assert wrong_path["mc_generated_tokens"] == [sum(_tok(b1)), sum(_tok(b2)), 0]
    assert wrong_path["mc_prompt_tokens"] == [len(b1), len(b2), 0]
    assert lucky["mc_reused"] == [True, False, False] and lucky["mc_completion_tokens"][0] == _tok(b1)
    assert lucky["mc_generated_tokens"] == [0, sum(_tok(c2)), 0] and lucky["mc_prompt_tokens"] == [0, len(c2), 0]
    assert cut["mc_reused"] == [True, True]
    assert cut["mc_generated_tokens"] == [0, 0] and cut["mc_prompt_tokens"] == [0, 0]
    spent = sum(sum(e.extra["mc_generated_tokens"]) + sum(e.extra["mc_prompt_tokens"]) for e in out)
    assert spent == gen.stats.generated_tokens + gen.stats.prompt_tokens
    cost = mc_compute(out)
    assert cost["policy_tokens"] == spent and cost["labels"] == 11 and cost["rollout_labels"] == 8
    assert cost["tokens_per_label"] == spent / 11 and cost["tokens_per_rollout_label"] == spent / 8
    assert mc_compute(out, 1)["generated_tokens"] == sum(_tok(p)[0] for p in (a1, b1, a2, b2, c2))


def test_soft_labels_and_determinism() -> None:
    soft, _ = _labelled(MCSettings(k=4, label="soft"))
    hard, _ = _labelled(MCSettings(k=4, label="hard"))
    assert [e.labels for e in soft] == [e.extra["mc_soft"] for e in soft]
    assert [e.extra for e in soft] == [{**e.extra, "mc_label": "soft"} for e in hard]
    assert soft[2].labels == [0.25, 0.5, 1.0]
    # k=2: the first two completions of each prefix
    two, gen = _labelled(MCSettings(k=2, label="soft"))
    assert two[0].extra["mc_right"] == [[1, 0], [1, 1], []] and two[0].labels == [0.5, 1.0, 1.0]
    assert two[1].labels == [0.0, 0.0, 0.0] and gen.calls[0]["n"] == 2


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="mc.label"):
        MCSettings(label="both")
    with pytest.raises(ValueError, match="mc.k"):
        MCSettings(k=0)
    with pytest.raises(ValueError, match="temperature"):
        MCSettings(temperature=0.0)
    with pytest.raises(ValueError, match="unknown mc settings"):
        MCSettings.from_config({"k": 2, "n": 3})


def test_problem_file_world_graded_by_answer_without_exact_labels(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"problem": "What is 2+2?", "answer": "4", "id": "p1"}) + "\n")
    world = FileWorld(path, PLAIN)
    task = world.problems("test").tasks[0]
    head = "What is 2+2?\n"
    gen = ScriptedPolicy({head + "2+2 is 4\n": ["# Answer\n\n4", "# Answer\n\n5"],
                          head + "2+2 is 4\nso 4\n": ["# Answer\n\n$4$", "the answer is \\boxed{4}"]})
    exs = [[label_example(world, task, "2+2 is 4\nso 4\n# Answer\n\n5")]]
    (ex,) = mc_label(world, gen, [task], exs, MCSettings(k=2, label="soft"), seed=0)[0]
    assert ex.completions == ["2+2 is 4", "so 4", "# Answer\n\n5"]
    assert ex.extra["mc_right"] == [[1, 0], [1, 1], []] and ex.labels == [0.5, 1.0, 0.0]
    assert "exact_labels" not in ex.extra


def _example(pid: str, exact, right, tokens, prompt, reused, hard_last=None) -> dict:  # type: ignore[no-untyped-def]
    hard = [float(any(r)) if r else hard_last for r in right]
    return {"prompt": pid, "completions": [f"s{j}" for j in range(len(exact))], "labels": hard, "id": pid,
            "exact_labels": exact, "mc_k": 2, "mc_right": right, "mc_hard": hard,
            "mc_completion_tokens": tokens, "mc_prompt_tokens": prompt, "mc_reused": reused,
            "mc_generated_tokens": [0 if u else sum(t) for t, u in zip(tokens, reused)]}


QUALITY = [
    _example("a", [1.0, 0.0, 0.0], [[1, 0], [0, 1], []], [[3, 5], [2, 2], []], [10, 12, 0], [False] * 3, 1.0),
    _example("b", [1.0, 1.0], [[0, 0], [1, 1]], [[4, 4], [1, 1]], [10, 14], [False, False]),
    _example("b", [1.0, 0.0, 0.0], [[0, 0], [0, 0], []], [[4, 4], [3, 3], []], [0, 14, 0], [True, False, False], 0.0),
]


def test_label_quality_by_hand() -> None:
    q = label_quality(QUALITY)
    assert q["k"] == 2 and q["steps"] == 6 and q["exact_positive_rate"] == pytest.approx(4 / 6)
    assert q["answer_steps"] == {"n": 2, "accuracy": 0.5, "false_positive_rate": 0.5}
    k1, k2 = q["by_k"][1], q["by_k"][2]
    # k=1: MC = [1, 0, 0, 1, 0, 0] against exact [1, 0, 1, 1, 1, 0]
    assert k1["hard_accuracy"] == pytest.approx(4 / 6) and k1["soft_accuracy"] == pytest.approx(4 / 6)
    assert k1["hard_auroc"] == 0.75 and k1["soft_auroc"] == 0.75
    assert k1["false_positives"] == 0 and k1["false_positive_rate"] == 0.0 and k1["false_positive_share"] == 0.0
    assert k1["false_negative_rate"] == 0.5 and k1["soft_ece"] == pytest.approx(1 / 3)
    assert k1["policy_tokens"] == 73 and k1["tokens_per_label"] == 73 / 8 and k1["tokens_per_rollout_label"] == 73 / 6
    # k=2: soft [.5, .5, 0, 1, 0, 0], hard [1, 1, 0, 1, 0, 0]: a right answer from the wrong step a2
    assert k2["hard_accuracy"] == 0.5 and k2["soft_accuracy"] == 0.5
    assert k2["hard_auroc"] == 0.5 and k2["soft_auroc"] == 0.5625
    assert k2["false_positives"] == 1 and k2["false_positive_rate"] == 0.5
    assert k2["false_positive_share"] == pytest.approx(1 / 3) and k2["false_negative_rate"] == 0.5
    assert k2["soft_ece"] == pytest.approx(1 / 3)
    assert k2["policy_tokens"] == 88 and k2["tokens_per_label"] == 11.0
    assert mc_compute(QUALITY)["policy_tokens"] == 88
    lo, hi = k2["ci95"]["hard_accuracy"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert list(label_quality(QUALITY, ks=[2])["by_k"]) == [2]
    with pytest.raises(ValueError, match="ks must lie"):
        label_quality(QUALITY, ks=[4])
    assert default_ks(16) == [1, 2, 4, 8, 16] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]


# ------------------------------------------------------------------------------- prm-sample labeller=mc
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), seed=0)
    return save_model(model, tok, tmp_path_factory.mktemp("policy") / "model")


def _cfg(run_dir: Path, policy: Path, *extra: str):  # type: ignore[no-untyped-def]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="sample", overrides=[
            f"run_dir={run_dir}", f"policy={policy}", "n_problems=4", "k=2", "prompts_per_call=2", "greedy=false",
            "max_new_tokens=24", "progress=false", "data.world.min_ops=2", "data.world.max_ops=2",
            "labeller=mc", "mc.k=3", "mc.label=soft", *extra])


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN (undefined AUROC) included


class Crash(RuntimeError):
    pass


class CrashAt:
    """Wraps a generator and raises on its ``at``-th generate call (a killed run)."""

    def __init__(self, inner: HFGenerator, at: int) -> None:
        self.inner, self.at, self.calls, self.stats = inner, at, 0, inner.stats

    def generate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return self.inner.generate(*args, **kwargs)


def test_prm_sample_mc_resumed_equals_uninterrupted(tmp_path: Path, policy_dir: Path, one_thread: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CrashAt(HFGenerator(policy_dir), at=0)
    full = sample.run(_cfg(tmp_path / "full", policy_dir), counter)
    text = (tmp_path / "full" / "samples.jsonl").read_text()
    examples = read_stepwise(tmp_path / "full" / "samples.jsonl")
    assert len(examples) == 8 and all(e.labels == e.extra["mc_soft"] for e in examples)
    assert all(len(e.extra["exact_labels"]) == len(e.labels) and e.extra["mc_k"] == 3 for e in examples)
    assert counter.calls > 2  # sampling plus at least one labelling call per chunk
    mc = full["mc"]
    assert mc["k"] == 3 and mc["label"] == "soft"
    this_run = full["this_run"]
    assert mc["compute"]["policy_tokens"] == this_run["mc_generated_tokens"] + this_run["mc_prompt_tokens"]
    assert mc["compute"]["policy_tokens"] > 0 and list(mc["quality"]["by_k"]) == [1, 2, 3]
    identity = json.loads((tmp_path / "full" / "identity.json").read_text())
    assert identity["labeller"] == "mc" and identity["mc"]["k"] == 3

    # a crash inside chunk 2's labelling calls (chunk 1 written): chunk 2 is redone
    def depths(exs) -> int:  # type: ignore[no-untyped-def]
        return max(len(e.completions) - (bool(e.completions) and is_answer_step(e.completions[-1], ARITH_FORMAT))
                   for e in exs)

    first_chunk_calls = 1 + depths(examples[:4])
    assert depths(examples[4:]) >= 1
    cfg = _cfg(tmp_path / "crash_call", policy_dir)
    with pytest.raises(Crash):
        sample.run(cfg, CrashAt(HFGenerator(policy_dir), at=first_chunk_calls + 2))
    assert len(read_stepwise(tmp_path / "crash_call" / "samples.jsonl")) == 4
    resumed = sample.run(cfg, HFGenerator(policy_dir))
    assert (tmp_path / "crash_call" / "samples.jsonl").read_text() == text
    assert resumed["this_run"]["problems_sampled"] == 2 and _same(resumed["mc"], full["mc"])

    # a crash while writing chunk 2 (its first problem on file): that chunk is sampled and labelled again
    real_append, writes = sample.append_jsonl, []

    def append_then_crash(path, exs):  # type: ignore[no-untyped-def]
        writes.append(path)
        if len(writes) == 4:
            raise Crash
        real_append(path, exs)

    cfg = _cfg(tmp_path / "crash_write", policy_dir)
    monkeypatch.setattr(sample, "append_jsonl", append_then_crash)
    with pytest.raises(Crash):
        sample.run(cfg, HFGenerator(policy_dir))
    monkeypatch.setattr(sample, "append_jsonl", real_append)
    assert len(read_stepwise(tmp_path / "crash_write" / "samples.jsonl")) == 6
    resumed = sample.run(cfg, HFGenerator(policy_dir))
    assert (tmp_path / "crash_write" / "samples.jsonl").read_text() == text
    assert resumed["this_run"]["problems_sampled"] == 1 and resumed["metrics"] == full["metrics"]

    # other MC settings are another run
    with pytest.raises(ValueError, match="different run"):
        sample.run(_cfg(tmp_path / "full", policy_dir, "mc.k=4"), HFGenerator(policy_dir))


def test_exact_labeller_keeps_its_identity_and_output(tmp_path: Path, policy_dir: Path, one_thread: None) -> None:
    cfg = _cfg(tmp_path / "exact", policy_dir, "labeller=exact")
    summary = sample.run(cfg, HFGenerator(policy_dir))
    identity = json.loads((tmp_path / "exact" / "identity.json").read_text())
    assert "labeller" not in identity and "mc" not in identity and "mc" not in summary
    ex = read_stepwise(tmp_path / "exact" / "samples.jsonl")[0]
    assert "mc_hard" not in ex.extra and "exact_labels" not in ex.extra
    with pytest.raises(ValueError, match="labeller must be"):
        sample.run(_cfg(tmp_path / "bad", policy_dir, "labeller=rollouts"), HFGenerator(policy_dir))
