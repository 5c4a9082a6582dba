"""First errors by kind in the arithmetic world: each kind named exactly, AUROCs hand-checked."""

from __future__ import annotations

import math

import pytest

from prm.data.arith import ArithConfig, Problem, systematic_facts, step_error_kind, to_stepwise
from prm.evaluation.error_kinds import first_errors_by_kind

CFG = ArithConfig()
FACTS = systematic_facts(CFG)


def _fact_problem() -> tuple[Problem, str, str]:
    """A problem whose first step is a systematic fact; its right and its systematic first step."""
    (left, op, right), wrong = sorted(FACTS.items())[0]
    other = "+" if op != "+" else "-"
    problem = Problem(id="p", start=left, ops=((op, right), (other, 1)), modulus=10)
    true = problem.true_steps[0]
    return problem, true, f"{left}{op}{right}={wrong}"


def test_each_kind_is_named() -> None:
    problem, true, systematic = _fact_problem()
    left, op, right = problem.start, *problem.ops[0]
    value = problem.values[1]
    slip = next(f"{left}{op}{right}={r}" for r in range(10) if r not in (value, FACTS[(left, op, right)]))
    assert step_error_kind(problem, systematic, 0, CFG) == "systematic"
    assert step_error_kind(problem, slip, 0, CFG) == "slip"
    assert step_error_kind(problem, f"{(left + 1) % 10}{op}{right}={value}", 0, CFG) == "copy"
    assert step_error_kind(problem, f"{left}{op}{(right + 1) % 10}={value}", 0, CFG) == "copy"
    assert step_error_kind(problem, "seven plus two", 0, CFG) == "malformed"
    assert step_error_kind(problem, "1+1=2", 2, CFG) == "extra"
    # the answer step: premature, or not the result of the right steps before it
    assert step_error_kind(problem, f"# Answer: {problem.values[1]}", 1, CFG) == "answer"
    assert step_error_kind(problem, f"# Answer: {(problem.answer + 1) % 10}", 2, CFG) == "answer"
    with pytest.raises(ValueError, match="is right"):
        step_error_kind(problem, f"# Answer: {problem.answer}", 2, CFG)
    # without systematic facts in the world, the same wrong result is a slip
    assert step_error_kind(problem, systematic, 0, ArithConfig(num_systematic=0)) == "slip"
    with pytest.raises(ValueError, match="is right"):
        step_error_kind(problem, true, 0, CFG)


def test_first_errors_by_kind_pools_right_steps_and_first_errors_only() -> None:
    problem, true, systematic = _fact_problem()
    second = problem.true_steps[1]
    texts = [
        f"{true}\n{second}\n# Answer: {problem.answer}",       # right, right
        f"{systematic}\n{second}\n# Answer: {problem.answer}",  # systematic at 0 (step 1 is not counted)
        f"{true}\nhello\n# Answer: 3",                           # right, malformed
    ]
    examples = [to_stepwise(problem, t, id="p") for t in texts]
    scores = [[0.9, 0.8, 0.95], [0.85, 0.1, 0.2], [0.7, 0.75, 0.3]]  # the answer step is scored too
    out = first_errors_by_kind(examples, scores, CFG)
    # right steps: all three of the first solution (its answer step included) and the third's first step
    assert out["right_steps"] == 4 and out["mean_right_score"] == pytest.approx((0.9 + 0.8 + 0.95 + 0.7) / 4)
    sys_ = out["kinds"]["systematic"]
    assert sys_["n"] == 1 and sys_["mean_score"] == pytest.approx(0.85)
    assert sys_["auroc"] == pytest.approx(2 / 4)  # the right 0.9 and 0.95 score above it
    mal = out["kinds"]["malformed"]
    assert mal["n"] == 1 and mal["auroc"] == pytest.approx(3 / 4)  # right 0.9, 0.8 and 0.95 score above 0.75
    assert out["kinds"]["all"]["n"] == 2 and out["kinds"]["all"]["auroc"] == pytest.approx(5 / 8)
    assert "slip" not in out["kinds"]


def test_first_errors_by_kind_rejects_mismatched_scores() -> None:
    problem, true, _ = _fact_problem()
    ex = to_stepwise(problem, f"{true}\n# Answer: 1", id="p")
    with pytest.raises(ValueError, match="2 steps but 3 scores"):
        first_errors_by_kind([ex], [[0.5, 0.5, 0.5]], CFG)
    with pytest.raises(ValueError, match="1 examples but 0"):
        first_errors_by_kind([ex], [], CFG)
    assert math.isnan(first_errors_by_kind([], [], CFG)["mean_right_score"])
