"""Tests for prm.grading: answer extraction, normalisation and equivalence grading."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.grading import extract_answer, grade_answer, normalize_answer

# (given, truth, expected): every row checked by hand.
GRADE_CASES: list[tuple[str, str, bool]] = [
    # plain integers (fast path)
    ("3", "3", True),
    ("3", "4", False),
    ("-7", "-7", True),
    ("+7", "7", True),
    ("007", "7", True),
    ("-0", "0", True),
    ("1" * 5000, "1" * 5000, True),  # beyond int()'s default 4300-digit limit
    ("1" * 5000, "1" * 4999, False),
    # dollars and text
    ("$5$", "5", True),
    ("\\$5", "5", True),
    ("\\text{5}", "5", True),
    ("\\mbox{5}", "5", True),
    ("\\mathrm{5}", "5", True),
    ("\\text{(B)}", "B", True),
    ("(B)", "B", True),
    ("\\text{(B)}", "C", False),
    ("\\text{Monday}", "monday", True),
    ("\\text{Monday}", "Tuesday", False),
    # units and words after a number
    ("5 cm", "5", True),
    ("5\\text{ cm}^2", "5", True),
    ("10cm", "10", True),
    ("12 dollars", "12", True),
    ("\\$1,000", "1000", True),
    ("7 ways", "7", True),
    ("30 degrees", "30", True),
    ("10^\\circ", "10", True),
    ("10^{\\circ}", "10", True),
    ("10^\\circ", "11", False),
    ("5\\%", "5", True),
    ("5%", "5", True),
    ("5\\%", "0.05", False),
    # spacing commands, \left \right
    ("1\\,000", "1000", True),
    ("1,\\!000", "1000", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    # variable prefixes
    ("x=3", "3", True),
    ("y = 3", "3", True),
    ("x = 3", "4", False),
    ("y = 2x + 1", "2x+1", True),
    ("x \\in [1, 2)", "[1,2)", True),
    # thousands separators versus tuples
    ("1,000", "1000", True),
    ("1,000,000", "10^6", True),
    ("1,000", "1", False),
    ("(1,2)", "(1, 2)", True),
    ("(1,2)", "(1,2,3)", False),
    ("(1,2)", "12", False),
    # fractions and roots
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac12", "1/2", True),
    ("\\tfrac{1}{2}", "\\frac12", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{1}{3}", "0.333", False),
    ("\\frac{1}{3}", "0.5", False),
    ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    # decimals
    (".5", "0.5", True),
    ("0.50", "\\frac{1}{2}", True),
    ("3.0", "3", True),
    ("2.50", "2.5", True),
    ("2.5", "2.05", False),
    # intervals: brackets must match exactly
    ("[1,2)", "(1,2)", False),
    ("[1,2)", "[1,2]", False),
    ("(1,2)", "[1,2]", False),
    ("[1,2)", "[1, 2)", True),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(\\frac{1}{2}, 1)", "(0.5, 1)", True),
    ("(2,1)", "(1,2)", False),
    # unordered answer lists and sets
    ("1, 2", "2,1", True),
    ("\\{1,2\\}", "\\{2, 1\\}", True),
    ("1, 2", "1, 3", False),
    # symbolic (math-verify)
    ("2\\pi", "6.28", False),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("\\pi r^2", "r^2\\pi", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("2^{10}", "1024", True),
    ("\\boxed{\\frac{1}{2}}", "1/2", True),
    # unions of intervals: interval by interval, brackets and every endpoint checked
    ("(-\\infty,-2)\\cup(3,\\infty)", "(-\\infty, -2) \\cup (3, \\infty)", True),
    ("(3,\\infty)\\cup(-\\infty,-2)", "(-\\infty,-2)\\cup(3,\\infty)", True),  # a set of intervals
    ("(-\\infty,-2)U(3,\\infty)", "(-\\infty,-2)\\cup(3,\\infty)", True),
    ("[\\frac{1}{2},2]\\cup(3,4]", "[0.5,2]\\cup(3,4]", True),
    ("x \\in (-\\infty,-2)\\cup(3,\\infty)", "(-\\infty,-2)\\cup(3,\\infty)", True),
    ("(-\\infty,-2)\\cup(3,\\infty)", "(-\\infty,-2]\\cup[3,\\infty)", False),  # inner brackets
    ("[1,2]\\cup(3,4]", "[1,2]\\cup[3,4]", False),
    ("[1,2]\\cup(3,4]", "[1,2]\\cup(3,5]", False),  # an inner endpoint
    ("[1,2]\\cup(3,4]", "[1,3]\\cup(3,4]", False),
    ("[1,2]\\cup(3,4]", "[1,2]\\cap(3,4]", False),  # intersection is not union
    ("[1,2]\\cup(3,4]", "[1,4]", False),
    ("[1,2]\\cup(3,4]", "[1,2]\\cup(3,4]\\cup(5,6)", False),
    ("(1,2)", "(1,2)\\cup(2,3)", False),
    # matrices: shape and every entry; a scalar factor in front is multiplied in
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{bmatrix}1\\\\2\\end{bmatrix}", True),
    ("\\begin{pmatrix}\\frac{1}{2} & 0 \\\\ 0 & 1\\end{pmatrix}", "\\begin{bmatrix}0.5&0\\\\0&1\\end{bmatrix}", True),
    ("2\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\4\\end{pmatrix}", True),
    ("-\\begin{pmatrix}1\\\\-2\\end{pmatrix}", "\\begin{pmatrix}-1\\\\2\\end{pmatrix}", True),
    ("\\frac{1}{2}\\begin{pmatrix}1\\\\\\sqrt{3}\\end{pmatrix}",
     "\\begin{pmatrix}1/2\\\\ \\frac{\\sqrt3}{2}\\end{pmatrix}", True),
    ("\\left(\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right)", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\mathbf{v} = \\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1 \\\\ 2\\end{pmatrix}", "\\begin{pmatrix}12\\end{pmatrix}", False),  # the row break
    ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),  # shape
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", False),
    ("2\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("\\begin{vmatrix}1&2\\\\3&4\\end{vmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)", False),
    # a \pm answer is the unordered pair of its two values
    ("3\\pm\\sqrt{2}", "3+\\sqrt{2}, 3-\\sqrt{2}", True),
    ("3\\pm\\sqrt{2}", "3-\\sqrt{2}, 3+\\sqrt{2}", True),
    ("\\pm 2", "2,-2", True),
    ("\\pm 2", "-2, 2", True),
    ("x = \\frac{-1\\pm\\sqrt{5}}{2}", "\\frac{-1+\\sqrt5}{2}, \\frac{-1-\\sqrt5}{2}", True),
    ("3\\pm\\sqrt{2}", "3+\\sqrt{2}", False),
    ("3\\pm\\sqrt{2}", "3+\\sqrt{2}, 3+\\sqrt{2}", False),
    ("3\\pm\\sqrt{2}", "3\\pm\\sqrt{3}", False),
    ("\\pm 2", "2", False),
    # unit text after any math expression; text-only answers stay text
    ("12\\pi \\text{ inches per second}", "12\\pi", True),
    ("5\\sqrt{2}\\text{ cm}", "5\\sqrt{2}", True),
    ("\\frac{\\pi}{2}\\mbox{ radians}", "\\frac{\\pi}{2}", True),
    ("5\\sqrt{2}\\text{ cm}", "5\\sqrt{3}", False),
    ("5\\text{ million}", "5", False),  # a word that changes the value is not a unit
    ("5 million", "5", False),
    ("\\text{(A)}", "A", True),
    ("\\text{(A)}", "B", False),
    ("\\text{Monday}", "\\text{Tuesday}", False),
    # "<variable> \in" prefixes, Greek letters included
    ("\\theta \\in [0, \\pi]", "[0,\\pi]", True),
    ("x\\in(1,2)", "(1,2)", True),
    ("\\alpha = 3", "3", True),
    ("\\theta \\in [0, \\pi]", "[0,\\pi)", False),
    # repeating decimals: the point before \overline stays, the value is exact
    ("0.\\overline{3}", "\\frac{1}{3}", True),
    ("0.1\\overline{6}", "1/6", True),
    ("1.\\overline{27}", "\\frac{14}{11}", True),
    ("-0.\\overline{9}", "-1", True),
    ("0.\\overline{3}", "0.3", False),
    ("0.10\\overline{6}", "\\frac{1}{6}", False),  # a zero before the bar is a digit, not a trailing zero
    # numbers in a base: the base counts when both sides name it; left out, the digits (or the value) count
    ("1011_2", "1011_3", False),
    ("40_9", "40_8", False),
    ("1011_2", "1011_{2}", True),
    ("\\text{1011}_2", "1011_2", True),
    ("11_2", "3_{10}", True),
    ("1011_2", "1011", True),
    ("10_2", "2", True),
    ("10_2", "3", False),
    ("A3_{11}", "113", True),
    ("x_1", "x_2", False),
    # empty and missing
    ("", "3", False),
    ("3", "", False),
    ("   ", "   ", False),
]


@pytest.mark.parametrize(("given_", "truth", "expected"), GRADE_CASES)
def test_grade_answer_table(given_: str, truth: str, expected: bool) -> None:
    assert grade_answer(given_, truth) is expected


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("$5$", "5"),
        ("\\$1,000", "1000"),
        ("\\text{(B)}", "B"),
        ("10^{\\circ}", "10"),
        ("5\\%", "5"),
        ("x = 3", "3"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("\\frac\\pi2", "\\frac{\\pi}{2}"),
        ("\\sqrt2/2", "\\sqrt{2}/2"),
        (".5", "0.5"),
        ("3.0", "3"),
        ("(1, 2)", "(1,2)"),
        ("\\left( 1,2 \\right]", "(1,2]"),
        ("\\pi r^2", "\\pi r^2"),  # the space that separates a command from a letter stays
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("2x", "2x"),  # a variable is not a unit
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),  # rows kept
        ("12\\pi \\text{ inches per second}", "12\\pi"),
        ("\\text{Monday}", "Monday"),
        ("\\theta \\in [0, \\pi]", "[0,\\pi]"),
    ],
)
def test_normalize_answer(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


def test_grade_none() -> None:
    assert grade_answer(None, "3") is False
    assert grade_answer("3", None) is False
    assert grade_answer(None, None) is False


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Step 1\nStep 2\n<answer>42</answer>", "42"),
        ("<answer> 7 ", "7"),  # unclosed tag: to the end
        ("<answer>so \\boxed{8}</answer>", "8"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("Step 1\n\n# Answer\n\n5", "5"),
        ("Step 1\n# Answer: 5\n", "5"),
        ("The sum is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("First \\boxed{1}, finally \\boxed{{2}+3}", "{2}+3"),
        ("\\fbox{9}", "9"),
        ("last \\boxed{3} then \\boxed{4", "3"),  # an unclosed box is skipped
        ("we get 3\n\nso 4\n\n", "so 4"),
        ("<answer>6</answer>\n# Answer\n\n5\n\\boxed{4}", "6"),  # priority: tag first
        ("# Answer\n\n\\boxed{5}", "5"),  # a box after the marker is unwrapped
    ],
)
def test_extract_answer(text: str, answer: str) -> None:
    assert extract_answer(text) == answer


def test_extract_answer_empty() -> None:
    assert extract_answer("") is None
    assert extract_answer("   \n\t ") is None
    assert extract_answer("Step 1\n# Answer\n") is None  # unfinished solution


JUNK = ["", "}{", "\\frac{", "\\boxed{", "{{{{", "$$$", "\\", "^^^", "\x00\xff\x13",
        "<answer>", "# Answer", "\\sqrt", "((]]", "1/0", "\\frac{1}{0}", "=" * 50]


@pytest.mark.parametrize("junk", JUNK)
def test_junk_never_raises(junk: str) -> None:
    assert extract_answer(junk) is None or isinstance(extract_answer(junk), str)
    assert isinstance(normalize_answer(junk), str)
    assert isinstance(grade_answer(junk, "1", timeout=1.0), bool)
    assert isinstance(grade_answer("1", junk, timeout=1.0), bool)


def test_non_strings_never_raise() -> None:
    assert grade_answer(3, "3") is False  # type: ignore[arg-type]
    assert extract_answer(None) is None  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_grade_answer_never_raises(a: str, b: str) -> None:
    assert isinstance(grade_answer(a, b, timeout=1.0), bool)
    assert isinstance(extract_answer(a), str | None)


def test_pathological_input_is_time_bounded() -> None:
    assert grade_answer("\\sqrt{2}", "\\frac{2}{\\sqrt{2}}") is True  # warm the worker
    timeout = 1.0
    start = time.monotonic()
    assert grade_answer("9^{9^{9^{9^{9}}}}", "1", timeout=timeout) is False
    assert time.monotonic() - start < timeout + 3.0
    # the killed worker is replaced and grading still works
    assert grade_answer("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2") is True


def test_integer_fast_path_is_fast() -> None:
    pairs = [(str(i), str(i % 7)) for i in range(10_000)]
    start = time.perf_counter()
    hits = sum(grade_answer(a, b) for a, b in pairs)
    assert time.perf_counter() - start < 1.0
    assert hits == 7
