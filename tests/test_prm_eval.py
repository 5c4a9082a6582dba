"""``prm-eval``: metrics of a scorer on labelled sampled solutions, checked with the exact oracle and a scripted scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO
from prm.data.arith import ARITH_FORMAT, Problem
from prm.data.stepwise import write_stepwise
from prm.scoring.base import ScorerBase
from prm.worlds import ArithWorld, Task, label_example

P1 = Problem("p1", 3, (("+", 4), ("*", 2)), modulus=10)  # 3+4=7, 7*2=4
P2 = Problem("p2", 5, (("-", 1), ("*", 3)), modulus=10)  # 5-1=4, 4*3=2
SOLUTIONS = {
    "p1": ["3+4=7\n7*2=4\n# Answer: 4", "3+4=8\n8*2=6\n# Answer: 6", "3+4=7\n7*2=5\n# Answer: 5"],
    "p2": ["5-1=4\n4*3=2\n# Answer: 2", "5-1=3\n3*3=9\n# Answer: 9"],
}


def _samples(path: Path) -> None:
    examples = []
    world = ArithWorld(fmt=ARITH_FORMAT)
    for problem in (P1, P2):
        task = Task(problem.id, problem.prompt, str(problem.answer), problem.difficulty, problem)
        for j, text in enumerate(SOLUTIONS[problem.id]):
            examples.append(label_example(world, task, text, sample=j, logprob=-float(j)))
    write_stepwise(path, examples)


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="prm_eval", overrides=[
            f"data.path={tmp_path / 'samples.jsonl'}", f"run_dir={tmp_path / 'eval'}", "progress=false", *overrides])


class FirstStepDoubter(ScorerBase):
    """Scripted: every first step scores 0.4, later steps 0.9 (tracks position, not correctness)."""

    def score(self, problems, candidates):  # type: ignore[no-untyped-def]
        return [[[0.4 if i == 0 else 0.9 for i in range(len(steps))] for steps in cands] for cands in candidates]


def test_oracle_is_perfect_on_exact_labels(tmp_path: Path) -> None:
    from prm.prm_eval import run

    _samples(tmp_path / "samples.jsonl")
    summary = run(_cfg(tmp_path, "scorer=oracle"))
    steps = summary["steps"]
    assert steps["labelled_steps"] == 15 and steps["auroc"] == 1.0 and steps["local_auroc"] == 1.0
    assert steps["ece"] == 0.0
    assert summary["within_problem_auroc"]["min"] == {"auroc": 1.0, "problems": 2}
    sel = summary["selection"]["all"]
    assert sel["ns"][-1] == 3 or sel["ns"][-1] == 2
    best = sel["methods"]["best_of_n"]["mean"]
    assert best[0] == pytest.approx((1 / 3 + 1 / 2) / 2)  # N=1: mean correctness per problem
    assert (tmp_path / "eval" / "selection.png").exists() and (tmp_path / "eval" / "reliability.png").exists()
    lines = (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()
    assert [json.loads(x)["step_scores"] for x in lines[:2]] == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_a_position_tracker_has_no_within_problem_signal(tmp_path: Path) -> None:
    from prm.prm_eval import run

    _samples(tmp_path / "samples.jsonl")
    summary = run(_cfg(tmp_path, "threshold=0.5"), scorer=FirstStepDoubter())
    assert summary["within_problem_auroc"]["min"]["auroc"] == 0.5
    fe = summary["first_error"]
    # predicted first error is always step 0: right for the two solutions wrong at step 0,
    # wrong for the one wrong at step 1 and for the two error-free ones
    assert fe["error_accuracy"] == pytest.approx(2 / 3) and fe["correct_accuracy"] == 0.0


def test_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    from prm.data.errors import DataError
    from prm.prm_eval import run

    with pytest.raises(DataError, match="samples.jsonl: file not found"):
        run(_cfg(tmp_path, "scorer=oracle"))
