"""The arithmetic world: hand-checked labels, deterministic generation, injected errors."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.data.arith import (
    ARITH_FORMAT,
    ArithConfig,
    Problem,
    apply_op,
    generate_dataset,
    generate_problems,
    label_solution,
    parse_step,
    sample_injected,
    sample_training_solution,
    solution_text,
    systematic_facts,
    to_stepwise,
)
from prm.steps import TAGGED, split_solution

# 7 +5 *3 -4 mod 10: running values 7, 2, 6, 2
P = Problem(id="p", start=7, ops=(("+", 5), ("*", 3), ("-", 4)), modulus=10)
# 3 +4 *5 +1 mod 10: running values 3, 7, 5, 6 (multiplying by 5 can erase an error)
Q = Problem(id="q", start=3, ops=(("+", 4), ("*", 5), ("+", 1)), modulus=10)


def test_problem_basics() -> None:
    assert P.prompt == "Q: 7+5*3-4\n"
    assert P.values == (7, 2, 6, 2)
    assert P.answer == 2
    assert P.difficulty == 3
    assert P.true_steps == ("7+5=2", "2*3=6", "6-4=2")
    assert solution_text(P) == "7+5=2\n2*3=6\n6-4=2\n# Answer: 2"
    assert Problem.from_prompt(P.prompt, id="p") == P
    plain = Problem(id="z", start=3, ops=(("-", 5), ("*", 4)), modulus=None)
    assert plain.values == (3, -2, -8)
    assert solution_text(plain) == "3-5=-2\n-2*4=-8\n# Answer: -8"


def lab(text: str, problem: Problem = P, fmt=ARITH_FORMAT) -> tuple:
    r = label_solution(problem, text, fmt)
    return r.step_labels, r.correct, r.answer, r.first_error, r.finished, r.process_correct


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # all correct
        ("7+5=2\n2*3=6\n6-4=2\n# Answer: 2", ([1.0, 1.0, 1.0, 1.0], True, 2, None, True, True)),
        # slip in the middle, later steps continue consistently from the wrong value
        ("7+5=2\n2*3=7\n7-4=3\n# Answer: 3", ([1.0, 0.0, 0.0, 0.0], False, 3, 1, True, False)),
        # first step wrong; the rest is right arithmetic from the wrong value: still 0.0
        ("7+5=3\n3*3=9\n9-4=5\n# Answer: 5", ([0.0, 0.0, 0.0, 0.0], False, 5, 0, True, False)),
        # a wrong step, then a step that jumps back to the true value: still 0.0
        ("7+5=2\n2*3=5\n6-4=2\n# Answer: 2", ([1.0, 0.0, 0.0, 0.0], True, 2, 1, True, False)),
        # wrong operator / wrong operand
        ("7+5=2\n2+3=5\n5-4=1\n# Answer: 1", ([1.0, 0.0, 0.0, 0.0], False, 1, 1, True, False)),
        ("7+5=2\n2*4=8\n8-4=4\n# Answer: 4", ([1.0, 0.0, 0.0, 0.0], False, 4, 1, True, False)),
        # result not reduced mod 10
        ("7+5=12\n12*3=36\n36-4=32\n# Answer: 32", ([0.0, 0.0, 0.0, 0.0], False, 32, 0, True, False)),
        # malformed lines
        ("7+5=2\n2*=6\n6-4=2\n# Answer: 2", ([1.0, 0.0, 0.0, 0.0], True, 2, 1, True, False)),
        ("7+=\n2*3=6\n6-4=2\n# Answer: 2", ([0.0, 0.0, 0.0, 0.0], True, 2, 0, True, False)),
        ("7+5=2\nhello\n# Answer: 2", ([1.0, 0.0, 0.0], True, 2, 1, True, False)),
        # missing answer
        ("7+5=2\n2*3=6\n6-4=2", ([1.0, 1.0, 1.0], False, None, None, False, False)),
        # wrong answer after correct steps: the answer step is the first error
        ("7+5=2\n2*3=6\n6-4=2\n# Answer: 5", ([1.0, 1.0, 1.0, 0.0], False, 5, 3, True, False)),
        # unparsable answers
        ("7+5=2\n2*3=6\n6-4=2\n# Answer: two", ([1.0, 1.0, 1.0, 0.0], False, None, 3, True, False)),
        ("7+5=2\n2*3=6\n6-4=2\n# Answer: " + "9" * 5000, ([1.0, 1.0, 1.0, 0.0], False, None, 3, True, False)),
        # extra step beyond the problem
        ("7+5=2\n2*3=6\n6-4=2\n2+1=3\n# Answer: 3", ([1.0, 1.0, 1.0, 0.0, 0.0], False, 3, 3, True, False)),
        ("7+5=2\n2*3=6\n6-4=2\n2+0=2\n# Answer: 2", ([1.0, 1.0, 1.0, 0.0, 0.0], True, 2, 3, True, False)),
        # too few steps, right answer (a premature answer): outcome correct, the answer step 0.0
        ("7+5=2\n2*3=6\n# Answer: 2", ([1.0, 1.0, 0.0], True, 2, 2, True, False)),
        # empty text
        ("", ([], False, None, None, False, False)),
    ],
)
def test_labels_hand_written(text: str, expected: tuple) -> None:
    assert lab(text) == expected


def test_errors_cancel_mod_10() -> None:
    assert solution_text(Q) == "3+4=7\n7*5=5\n5+1=6\n# Answer: 6"
    assert lab("3+4=7\n7*5=5\n5+1=6\n# Answer: 6", Q) == ([1.0, 1.0, 1.0, 1.0], True, 6, None, True, True)
    # 3+4 slipped to 9; 9*5 = 45 = 5 mod 10 erases it: right answer through a wrong step, the answer step 0.0
    assert lab("3+4=9\n9*5=5\n5+1=6\n# Answer: 6", Q) == ([0.0, 0.0, 0.0, 0.0], True, 6, 0, True, False)


def test_tagged_format() -> None:
    text = "<reasoning>\n7+5=2\n2*3=6\n6-4=2\n</reasoning>\n<answer>2</answer>"
    assert solution_text(P, TAGGED) == text
    assert lab(text, fmt=TAGGED) == ([1.0, 1.0, 1.0, 1.0], True, 2, None, True, True)
    bad = "<reasoning>\n7+5=2\n2*3=7\n7-4=3\n</reasoning>\n<answer>3</answer>"
    assert lab(bad, fmt=TAGGED) == ([1.0, 0.0, 0.0, 0.0], False, 3, 1, True, False)
    # the answer disagrees with the last (right) step; a reasoning closed with no answer
    assert lab(text.replace("<answer>2", "<answer>7"), fmt=TAGGED)[0] == [1.0, 1.0, 1.0, 0.0]
    assert lab("<reasoning>\n7+5=2\n2*3=6\n6-4=2\n</reasoning>\n", fmt=TAGGED)[0] == [1.0, 1.0, 1.0, 0.0]


def test_negative_values_without_modulus() -> None:
    plain = Problem(id="z", start=3, ops=(("-", 5), ("*", 4)), modulus=None)
    assert lab("3-5=-2\n-2*4=-8\n# Answer: -8", plain) == ([1.0, 1.0, 1.0], True, -8, None, True, True)
    assert lab("3-5=2\n2*4=8\n# Answer: 8", plain) == ([0.0, 0.0, 0.0], False, 8, 0, True, False)


def test_parse_step() -> None:
    assert parse_step("7+5=2") == (7, "+", 5, 2)
    assert parse_step(" -2-4=-6 ") == (-2, "-", 4, -6)
    for bad in ("7+=", "7+5", "7+-5=2", "7 + 5 = 2", "", "٣+5=8", "1" * 40 + "+1=2"):
        assert parse_step(bad) is None


TEXT_ALPHABET = "0123456789+-*= \n#Answer:<>/reasoning\t"


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=TEXT_ALPHABET)))
def test_arbitrary_text_never_raises(text: str) -> None:
    for fmt in (ARITH_FORMAT, TAGGED):
        r = label_solution(P, text, fmt)
        assert all(x in (0.0, 1.0) for x in r.step_labels)
        assert r.step_labels == sorted(r.step_labels, reverse=True)  # once off track, always off
        assert r.correct == (r.answer == P.answer)
        assert r.process_correct <= r.correct
        ex = to_stepwise(P, text, fmt)
        assert len(ex.completions) == len(ex.labels) == len(r.step_labels)


def test_to_stepwise() -> None:
    ex = to_stepwise(P, "7+5=2\n2*3=7\n7-4=3\n# Answer: 3", run="x")
    assert ex.prompt == "Q: 7+5*3-4\n"
    assert ex.completions == ["7+5=2", "2*3=7", "7-4=3", "# Answer: 3"]  # the answer is a labelled step
    assert ex.labels == [1.0, 0.0, 0.0, 0.0]
    assert ex.extra == {
        "id": "p", "answer": "2", "difficulty": 3, "correct": False, "process_correct": False,
        "first_error": 1, "source": "arith", "run": "x",
    }


# ---- generation -------------------------------------------------------------------------------


def test_generation_deterministic_per_seed() -> None:
    cfg = ArithConfig()
    a, b, c = generate_problems(200, cfg, seed=1), generate_problems(200, cfg, seed=1), generate_problems(200, cfg, 2)
    assert a == b and a != c
    assert [p.id for p in a[:2]] == ["arith-1-0", "arith-1-1"]
    assert {p.difficulty for p in a} == set(range(cfg.min_ops, cfg.max_ops + 1))
    for p in a:
        assert 0 <= p.start <= 9 and all(op in "+-*" and 0 <= x <= 9 for op, x in p.ops)
        assert all(0 <= v < 10 for v in p.values)
        assert Problem.from_prompt(p.prompt, id=p.id) == p
        assert label_solution(p, solution_text(p)).process_correct
    sols = [[sample_training_solution(p, cfg, random.Random(s)) for p in a] for s in (5, 5, 6)]
    assert sols[0] == sols[1] and sols[0] != sols[2]
    assert [e.to_dict() for e in generate_dataset(50, cfg, 3, 2)] == [e.to_dict() for e in generate_dataset(50, cfg, 3, 2)]


def test_plain_integers_stay_in_range() -> None:
    cfg = ArithConfig(modulus=None, operand_min=1, operand_max=9, value_min=0, value_max=999)
    for p in generate_problems(300, cfg, seed=0):
        assert p.modulus is None
        assert all(0 <= v <= 999 for v in p.values)
        assert label_solution(p, solution_text(p)).process_correct


def test_systematic_facts() -> None:
    cfg = ArithConfig()
    facts = systematic_facts(cfg)
    assert len(facts) == cfg.num_systematic == 68
    assert facts == systematic_facts(ArithConfig(slip_rate=0.3))  # depends on the seed, not the rates
    assert facts != systematic_facts(ArithConfig(systematic_seed=99))
    for (a, op, b), wrong in facts.items():
        assert 0 <= a < 10 and op in "+-*" and 0 <= b <= 9
        assert 0 <= wrong < 10 and wrong != apply_op(a, op, b, 10)
    facts.clear()  # a copy: the world's facts are unchanged
    assert len(systematic_facts(cfg)) == 68
    assert systematic_facts(ArithConfig(modulus=None)) == {}


def test_no_injected_errors_gives_the_correct_solution() -> None:
    cfg = ArithConfig(slip_rate=0.0, systematic_rate=0.0)
    rng = random.Random(0)
    for p in generate_problems(300, cfg, seed=0):
        assert sample_training_solution(p, cfg, rng) == solution_text(p)
        assert sample_training_solution(p, cfg, rng, TAGGED) == solution_text(p, TAGGED)


@pytest.mark.parametrize("cfg", [ArithConfig(), ArithConfig(slip_rate=0.3, systematic_rate=0.0),
                                 ArithConfig(modulus=None, slip_rate=0.2)])
def test_labeller_recovers_injected_first_error(cfg: ArithConfig) -> None:
    rng = random.Random(0)
    n_errors = 0
    for p in generate_problems(400, cfg, seed=7):
        inj = sample_injected(p, cfg, rng)
        text = inj.text()
        r = label_solution(p, text)
        assert r.first_error == inj.first_error
        assert r.process_correct == (inj.first_error is None)
        assert r.answer == inj.answer == inj.results[-1]
        n_errors += inj.first_error is not None
        steps = [parse_step(s) for s in split_solution(text, ARITH_FORMAT).steps]
        assert all(s is not None for s in steps) and len(steps) == p.difficulty
        left = p.start
        for (a, op, b, res), (pop, pb), kind in zip(steps, p.ops, inj.errors):  # type: ignore[misc]
            assert (a, op, b) == (left, pop, pb)  # continues from the previous written result
            assert (res == apply_op(a, op, b, p.modulus)) == (kind is None)
            left = res
    assert n_errors > 50


def test_empirical_error_rates() -> None:
    cfg = ArithConfig(slip_rate=0.2, systematic_rate=0.0)
    rng = random.Random(1)
    wrong = total = 0
    for p in generate_problems(5000, cfg, seed=1):
        for s in split_solution(sample_training_solution(p, cfg, rng), ARITH_FORMAT).steps:
            a, op, b, res = parse_step(s)  # type: ignore[misc]
            wrong += res != apply_op(a, op, b, 10)
            total += 1
    assert abs(wrong / total - 0.2) < 0.015

    cfg = ArithConfig(slip_rate=0.0, systematic_rate=0.6)
    facts = systematic_facts(cfg)
    hits = on_fact = 0
    for p in generate_problems(5000, cfg, seed=2):
        inj = sample_injected(p, cfg, rng)
        for s in inj.steps:
            a, op, b, res = parse_step(s)  # type: ignore[misc]
            if (a, op, b) in facts:
                on_fact += 1
                hits += res == facts[(a, op, b)]
            else:
                assert res == apply_op(a, op, b, 10)
    assert on_fact > 1000 and abs(hits / on_fact - 0.6) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_ops": 0}, "min_ops"),
        ({"min_ops": 5, "max_ops": 3}, "max_ops"),
        ({"operand_min": -1}, "operand_min"),
        ({"modulus": 1}, "modulus"),
        ({"operators": ("+", "/")}, "operators"),
        ({"operators": ()}, "operators"),
        ({"slip_rate": 1.5}, "slip_rate"),
        ({"systematic_rate": -0.1}, "systematic_rate"),
        ({"max_slip": 0}, "max_slip"),
        ({"num_systematic": 301}, "num_systematic"),
        ({"modulus": None, "value_min": 5, "value_max": 5}, "value_max"),
        ({"min_ops": 2.5}, "min_ops"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ArithConfig(**kwargs)
    assert ArithConfig(operators=["+", "*"]).operators == ("+", "*")  # type: ignore[arg-type]
