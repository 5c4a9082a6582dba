"""``prm-sample``: labelled samples per problem, policy metrics by hand, and resume equals an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO
from prm.data.arith import ARITH_FORMAT, ArithConfig, Problem, solution_text
from prm.data.stepwise import read_stepwise
from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from search.generation.hf import HFGenerator
from search.sample import policy_metrics, run
from prm.worlds import ArithWorld, Task, label_example

WORLD = ArithConfig(min_ops=2, max_ops=3)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), seed=0)
    return save_model(model, tok, tmp_path_factory.mktemp("policy") / "model")


def _cfg(run_dir: Path, policy: Path, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="sample", overrides=[
            f"run_dir={run_dir}", f"policy={policy}", "n_problems=6", "k=3", "prompts_per_call=2",
            "max_new_tokens=24", "progress=false", "data.world.min_ops=2", "data.world.max_ops=3", *extra])


class Crash(RuntimeError):
    pass


class CrashAfter:
    """Wraps a generator and raises on its ``calls``-th generate call (a killed run)."""

    def __init__(self, inner: HFGenerator, calls: int) -> None:
        self.inner, self.left, self.stats = inner, calls, inner.stats

    def generate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.left -= 1
        if self.left < 0:
            raise Crash
        return self.inner.generate(*args, **kwargs)


def test_samples_are_labelled_and_resume_equals_uninterrupted(tmp_path: Path, policy_dir: Path) -> None:
    full = run(_cfg(tmp_path / "full", policy_dir))
    examples = read_stepwise(tmp_path / "full" / "samples.jsonl")
    assert len(examples) == 6 * 3
    assert [e.extra["sample"] for e in examples[:3]] == [0, 1, 2]
    assert all(e.extra["generated_tokens"] > 0 and len(e.labels) == len(e.completions) for e in examples)
    assert len(read_stepwise(tmp_path / "full" / "greedy.jsonl")) == 6

    cfg = _cfg(tmp_path / "resumed", policy_dir)
    gen = HFGenerator(policy_dir)
    with pytest.raises(Crash):
        run(cfg, CrashAfter(gen, calls=3))  # chunk 1 done (2 calls), chunk 2 crashes after sampling
    resumed = run(cfg, HFGenerator(policy_dir))
    assert (tmp_path / "resumed" / "samples.jsonl").read_text() == (tmp_path / "full" / "samples.jsonl").read_text()
    assert (tmp_path / "resumed" / "greedy.jsonl").read_text() == (tmp_path / "full" / "greedy.jsonl").read_text()
    assert resumed["metrics"] == full["metrics"]
    assert resumed["this_run"]["problems_sampled"] == 4


def test_policy_metrics_by_hand() -> None:
    p1 = Problem("a", 3, (("+", 4),), modulus=10)  # answer 7
    p2 = Problem("b", 2, (("*", 3), ("+", 1)), modulus=10)  # answer 7
    tasks = [Task(p.id, p.prompt, str(p.answer), p.difficulty, p) for p in (p1, p2)]
    fmt_texts = {
        "a": ["3+4=7\n# Answer: 7", "3+4=8\n# Answer: 8", "3+4=8\n# Answer: 8"],  # 1/3 right, majority 8 wrong
        "b": ["2*3=6\n6+1=7\n# Answer: 7", "2*3=5\n5+1=6\n# Answer: 6", solution_text(p2)],  # 2/3 right
    }
    logprobs = {"a": [-1.0, -2.0, -3.0], "b": [-5.0, -1.0, -6.0]}  # likelihood picks a:right, b:wrong
    world = ArithWorld(fmt=ARITH_FORMAT)
    samples = {t.id: [label_example(world, t, x, logprob=lp) for x, lp in zip(fmt_texts[t.id], logprobs[t.id])]
               for t in tasks}
    greedy = {"a": label_example(world, tasks[0], "3+4=7\n# Answer: 7"),
              "b": label_example(world, tasks[1], "# Answer: 1")}
    m = policy_metrics(tasks, samples, greedy)
    assert m["1"] == {"problems": 1, "sampled": pytest.approx(1 / 3), "majority": 0.0, "pass": 1.0,
                      "likelihood_best": 1.0, "greedy": 1.0}
    assert m["2"]["majority"] == 1.0 and m["2"]["likelihood_best"] == 0.0 and m["2"]["greedy"] == 0.0
    assert m["all"]["sampled"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["all"]["pass"] == 1.0 and m["all"]["majority"] == 0.5


def test_problem_file_tasks_keep_the_exact_labeller(tmp_path: Path) -> None:
    from prm.cli.data import main as prm_data
    from prm.data.arith import generate_problems
    from prm.worlds import make_world

    path = tmp_path / "problems.jsonl"
    prm_data(["arith", str(path), "--n", "4", "--seed", "5", "--problems-only"])
    world = make_world({"source": "arith"}, problems=path)
    tasks = world.problems("test").tasks
    assert [t.data for t in tasks] == generate_problems(4, ArithConfig(), 5)
    ex = label_example(world, tasks[0], solution_text(tasks[0].data))
    assert ex.extra["correct"] and all(lab == 1.0 for lab in ex.labels)
    assert ex.completions[-1].startswith("# Answer")  # the answer is a labelled step


def test_held_out_problems_are_disjoint_from_every_training_draw(tmp_path: Path, policy_dir: Path) -> None:
    """prm-sample's test split never holds a problem text that a train draw (SFT, PRM data) can produce."""
    from prm.worlds import make_world

    world = make_world({"source": "arith", "world": {"min_ops": 2, "max_ops": 2}})
    test = world.problems("test", 150, 1000)
    train = {t.prompt for seed in (0, 2000) for t in world.problems("train", 3000, seed).tasks}
    assert not {t.prompt for t in test.tasks} & train
    assert len({t.prompt for t in test.tasks}) == 150  # no duplicates within the held-out set
    assert test.removed_overlap > 0 and test.removed_duplicates > 0  # counted, not silent
    summary = run(_cfg(tmp_path / "s", policy_dir, "greedy=false"))
    assert summary["removed_overlap"] > 0 and summary["split"] == "test"
