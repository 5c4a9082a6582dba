"""Tests for prm.steps: splitting, joining, and step ends in characters and tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BatchEncoding, PreTrainedTokenizerFast

from prm.steps import (
    PLAIN,
    TAGGED,
    ParsedSolution,
    StepFormat,
    is_answer_step,
    join_solution,
    policy_prompt,
    scoring_text,
    solution_prefix,
    split_solution,
    step_end_chars,
    step_end_token_indices,
)

ARITH = StepFormat(answer_joiner=": ")

# ----------------------------------------------------------------------------- formats


def test_format_defaults_and_validation() -> None:
    assert PLAIN.step_stop == "\n" and TAGGED.step_stop == "\n"
    assert StepFormat(separator="\n\n").step_stop == "\n\n"
    with pytest.raises(ValueError):
        StepFormat(separator="")
    with pytest.raises(ValueError):
        StepFormat(style="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StepFormat(answer_marker=" ")


# ----------------------------------------------------------------------------- plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # PRM800K writes the answer two lines below the marker
        ("Add 3 and 4.\nThe sum is 7.\n# Answer\n\n7", ParsedSolution(["Add 3 and 4.", "The sum is 7."], "7", True, '# Answer\n\n7')),
        # the arithmetic world writes it on the marker line
        ("3+4=7\n7*2=14\n# Answer: 14", ParsedSolution(["3+4=7", "7*2=14"], "14", True, '# Answer: 14')),
        ("a\n# Answer:14", ParsedSolution(["a"], "14", True, '# Answer:14')),
        ("a\n# Answer 14", ParsedSolution(["a"], "14", True, '# Answer 14')),
        # trailing whitespace, blank lines, indentation, CRLF
        ("a  \n\n\n  b\t\n# Answer:  5  \n\n", ParsedSolution(["a", "b"], "5", True, '# Answer:  5')),
        ("a\r\nb\r\n# Answer: 5\r\n", ParsedSolution(["a", "b"], "5", True, '# Answer: 5')),
        ("a\n   # Answer\n\n5", ParsedSolution(["a"], "5", True, '# Answer\n\n5')),
        # unfinished: no marker, every line is a step
        ("a\nb\n", ParsedSolution(["a", "b"], None, False, None)),
        ("a\nb", ParsedSolution(["a", "b"], None, False, None)),
        ("", ParsedSolution([], None, False, None)),
        ("\n \n", ParsedSolution([], None, False, None)),
        # marker written, answer not yet: an (empty) answer but not finished
        ("a\n# Answer", ParsedSolution(["a"], "", False, '# Answer')),
        ("a\n# Answer\n\n", ParsedSolution(["a"], "", False, '# Answer')),
        # only the answer; a multi-line answer; the first marker line wins
        ("# Answer\n\n5", ParsedSolution([], "5", True, '# Answer\n\n5')),
        ("a\n# Answer\n\n5\n6", ParsedSolution(["a"], "5\n6", True, '# Answer\n\n5\n6')),
        ("a\n# Answer: 1\n# Answer: 2", ParsedSolution(["a"], "1\n# Answer: 2", True, '# Answer: 1\n# Answer: 2')),
        # the marker must start the line
        ("x # Answer: 3", ParsedSolution(["x # Answer: 3"], None, False, None)),
    ],
)
def test_split_plain(text: str, expected: ParsedSolution) -> None:
    assert split_solution(text) == expected


def test_split_plain_custom_separator_and_marker() -> None:
    fmt = StepFormat(separator="\n\n", answer_marker="The answer is", answer_joiner=" ")
    assert split_solution("a\nb\n\nc\n\nThe answer is 5", fmt) == ParsedSolution(["a\nb", "c"], "5", True, "The answer is 5")
    assert join_solution(["a", "c"], "5", fmt) == "a\n\nc\n\nThe answer is 5"


def test_join_plain() -> None:
    assert join_solution(["a", "b"], "7") == "a\nb\n# Answer\n\n7"
    assert join_solution(["a", "b"], "7", ARITH) == "a\nb\n# Answer: 7"
    assert join_solution(["a", "b"], None) == "a\nb"
    assert join_solution([], "7") == "# Answer\n\n7"
    assert join_solution([], None) == ""


# ----------------------------------------------------------------------------- tagged


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<reasoning>\na\nb\n</reasoning>\n<answer>5</answer>", ParsedSolution(["a", "b"], "5", True, '</reasoning>\n<answer>5</answer>')),
        # whitespace, empty lines, text outside the tags
        (
            "Sure!\n<reasoning>\n\n  a  \n\n b\n</reasoning>\nso:\n<answer> 5 </answer>\nbye",
            ParsedSolution(["a", "b"], "5", True, "</reasoning>\nso:\n<answer> 5 </answer>\nbye"),
        ),
        ("<reasoning>a\nb</reasoning><answer>5</answer>", ParsedSolution(["a", "b"], "5", True, '</reasoning><answer>5</answer>')),
        # missing open tag
        ("a\nb\n</reasoning>\n<answer>5</answer>", ParsedSolution(["a", "b"], "5", True, '</reasoning>\n<answer>5</answer>')),
        # missing both reasoning tags
        ("a\nb\n<answer>5</answer>", ParsedSolution(["a", "b"], "5", True, '<answer>5</answer>')),
        # missing close tag: the reasoning runs to the answer, but it is not finished
        ("<reasoning>\na\nb\n<answer>5</answer>", ParsedSolution(["a", "b"], "5", False, '<answer>5</answer>')),
        # unclosed answer: read to the end
        ("<reasoning>\na\n</reasoning>\n<answer>12\n", ParsedSolution(["a"], "12", True, '</reasoning>\n<answer>12')),
        # missing answer
        ("<reasoning>\na\nb\n</reasoning>\n", ParsedSolution(["a", "b"], None, False, '</reasoning>')),
        ("<reasoning>\na\nb", ParsedSolution(["a", "b"], None, False, None)),
        ("a\nb", ParsedSolution(["a", "b"], None, False, None)),
        ("", ParsedSolution([], None, False, None)),
        # empty answer
        ("<reasoning>\na\n</reasoning>\n<answer> </answer>", ParsedSolution(["a"], "", False, '</reasoning>\n<answer> </answer>')),
        # only an answer
        ("<answer>5</answer>", ParsedSolution([], "5", True, '<answer>5</answer>')),
    ],
)
def test_split_tagged(text: str, expected: ParsedSolution) -> None:
    assert split_solution(text, TAGGED) == expected


def test_join_tagged() -> None:
    assert join_solution(["a", "b"], "5", TAGGED) == "<reasoning>\na\nb\n</reasoning>\n<answer>5</answer>"
    assert join_solution([], "5", TAGGED) == "<reasoning>\n</reasoning>\n<answer>5</answer>"
    assert join_solution(["a", "b"], None, TAGGED) == "<reasoning>\na\nb"
    assert join_solution([], None, TAGGED) == "<reasoning>\n"


# ----------------------------------------------------------------------------- helpers for search


def test_is_answer_step() -> None:
    assert is_answer_step("# Answer")
    assert is_answer_step("  # Answer: 5", ARITH)
    assert not is_answer_step("3+4=7")
    assert not is_answer_step("<answer>5</answer>")
    assert is_answer_step("<answer>5</answer>", TAGGED)
    assert is_answer_step("</reasoning>", TAGGED)
    assert not is_answer_step("# Answer: 5", TAGGED)
    assert not is_answer_step("a", TAGGED)


def test_solution_prefix_continues_to_the_same_solution() -> None:
    assert solution_prefix(["a", "b"]) == "a\nb\n"
    assert solution_prefix([]) == ""
    assert solution_prefix(["a"], TAGGED) == "<reasoning>\na\n"
    # a policy that writes one more step then the answer lands on join_solution's text
    assert solution_prefix(["a"]) + "b\n# Answer\n\n5" == join_solution(["a", "b"], "5")
    assert solution_prefix(["a"], TAGGED) + "b\n</reasoning>\n<answer>5</answer>" == join_solution(
        ["a", "b"], "5", TAGGED
    )


# ----------------------------------------------------------------------------- step ends in characters


def test_scoring_text() -> None:
    text, ends = scoring_text("Q?", ["a", "bc"])
    assert text == "Q?\na\nbc\n"
    assert ends == [4, 7]
    assert [text[e] for e in ends] == ["\n", "\n"]
    # steps are taken as given: a PRM800K answer step with newlines is one step
    text, ends = scoring_text("Q?", ["a", "# Answer\n\n5"])
    assert text == "Q?\na\n# Answer\n\n5\n" and ends == [4, len(text) - 1]
    text, ends = scoring_text("Q", ["a"], StepFormat(separator=" ки\n"))
    assert text == "Q ки\na ки\n" and ends == [6]
    assert scoring_text("Q", []) == ("Q\n", [])


def test_tagged_scoring_text_is_the_policys_own_text() -> None:
    """A tagged PRM reads exactly what the policy wrote (open tag included), labels at each step's separator."""
    solution = join_solution(["1+2=3", "3*3=9"], "9", TAGGED)
    parsed = split_solution(solution, TAGGED)
    text, ends = scoring_text("Q: 1+2*3", parsed.labelled_steps, TAGGED)
    assert text == policy_prompt("Q: 1+2*3", TAGGED) + solution + "\n"
    assert text.startswith("Q: 1+2*3\n<reasoning>\n1+2=3\n")
    assert [text[e] for e in ends] == ["\n"] * 3 and text[: ends[-1]].endswith("<answer>9</answer>")
    assert scoring_text("Q", [], TAGGED) == ("Q\n<reasoning>\n", [])


def test_step_end_chars() -> None:
    text = "a\n\nbb  \n# Answer: 5"
    assert step_end_chars(text) == [1, 7, 18]  # the answer is a step: it ends on its last character
    assert step_end_chars("a\nbb") == [1, 3]  # nothing after the last step: its last char
    assert step_end_chars("a\nbb  ") == [1, 3]
    prompt = "Q?\n"
    assert step_end_chars(prompt + text, start=len(prompt)) == [4, 10, 21]
    tagged = "<reasoning>\na\nbb\n</reasoning>\n<answer>5</answer>"
    assert step_end_chars(tagged, TAGGED) == [13, 16, 47]
    assert [tagged[e] for e in step_end_chars(tagged, TAGGED)] == ["\n", "\n", ">"]
    assert step_end_chars("<reasoning>a\nbb</reasoning>", TAGGED) == [12, 14, 26]


def test_step_end_chars_agrees_with_scoring_text() -> None:
    steps = ["Add 3 and 4.", "The sum is 7."]
    text, ends = scoring_text("Q?", steps)
    assert step_end_chars(text, start=len("Q?\n")) == ends


# ----------------------------------------------------------------------------- step ends in tokens


def test_step_end_token_indices_on_hand_offsets() -> None:
    # a special token first, a merged ".\n" token, whitespace dropped between tokens
    offsets = [(0, 0), (0, 2), (2, 4), (5, 7), (7, 8), (0, 0)]
    assert step_end_token_indices(offsets, [0, 3, 7]) == [1, 2, 4]
    assert step_end_token_indices(offsets, [4]) == [3]  # no token holds it: the next one
    assert step_end_token_indices(offsets, [9]) == [4]  # nothing after it: the last one before
    assert step_end_token_indices([(0, 1), (0, 1), (1, 2)], [0]) == [1]  # bytes of one character
    assert step_end_token_indices(offsets, []) == []
    with pytest.raises(ValueError):
        step_end_token_indices([(0, 0)], [0])


def _char_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    chars = sorted(set("".join(texts)))
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


BPE_CORPUS = [
    "Add 3 and 4.\nThe sum is 7.\nSo x is 7.\n# Answer\n\n7",
    "Step a\n\nstep b\n\nstep c\n\n",
    "x = 2\n\ny = 5\n\nz = 9\n\n# Answer: 9",
    "Q?\nThen the sum is 7.\nThe end.\n",
] * 20


def _bpe_tokenizer(trim_offsets: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # no regex split: merges may cross the separator (".\n", "\n\n", "\nTh", ...)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(BPE_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


# (prompt, solution, format): the solution starts after the prompt
TOKEN_CASES = [
    ("Q?\n", "The sum is 7.\nSo x is 3.\n\nThen y = 4\n\n# Answer\n\n7", PLAIN),
    ("Q?\n", "x = 7\n\ny = 5.\nz = 9\n# Answer: 9", PLAIN),
    ("Q?\n", "Add 3 and 4.\nThe sum is 7.\nThe end.\n", PLAIN),
    ("Q?\n", "<reasoning>\nAdd 3 and 4.\nThe sum is 7.\n</reasoning>\n<answer>7</answer>", TAGGED),
]


def _chosen_tokens(
    tok: PreTrainedTokenizerFast, prompt: str, solution: str, fmt: StepFormat
) -> tuple[BatchEncoding, list[int], list[int]]:
    """Tokenize prompt + solution; return the encoding, the step-end chars and their tokens."""
    text = prompt + solution
    enc = tok(text, return_offsets_mapping=True)
    ends = step_end_chars(text, fmt, start=len(prompt))
    chosen = step_end_token_indices(enc["offset_mapping"], ends)
    return enc, ends, chosen


@pytest.mark.parametrize(("prompt", "solution", "fmt"), TOKEN_CASES)
def test_step_end_tokens_char_level(prompt: str, solution: str, fmt: StepFormat) -> None:
    tok = _char_tokenizer([prompt + solution])
    enc, ends, chosen = _chosen_tokens(tok, prompt, solution, fmt)
    text = prompt + solution
    assert enc["offset_mapping"] == [(i, i + 1) for i in range(len(text))]  # one char per token
    parsed = split_solution(solution, fmt)
    assert len(ends) == len(parsed.labelled_steps)
    assert chosen == ends
    n = len(parsed.steps)
    assert all(tok.decode([enc["input_ids"][i]]) == "\n" for i in chosen[:n])  # reasoning steps: the separator
    if parsed.answer_step is not None:  # the answer step: its own last character
        assert tok.decode([enc["input_ids"][chosen[n]]]) == parsed.answer_step[-1] and chosen[n] == len(text) - 1


@pytest.mark.parametrize("trim_offsets", [False, True])
def test_step_end_tokens_bpe(trim_offsets: bool) -> None:
    tok = _bpe_tokenizer(trim_offsets)
    decoded_chosen: list[str] = []
    for prompt, solution, fmt in TOKEN_CASES:
        enc, ends, chosen = _chosen_tokens(tok, prompt, solution, fmt)
        offsets = enc["offset_mapping"]
        parsed = split_solution(solution, fmt)
        assert len(ends) == len(parsed.labelled_steps) > 0
        if parsed.answer_step is not None:  # the answer step's reward sits on the token of its last character
            end, i = ends[-1], chosen[-1]
            assert [j for j, (s, e) in enumerate(offsets) if s <= end < e] == [i] == [len(offsets) - 1]
        for end, i in zip(ends[: len(parsed.steps)], chosen):
            assert (prompt + solution)[end] == "\n"
            holders = [j for j, (s, e) in enumerate(offsets) if s <= end < e]
            assert holders == [i]  # exactly the token that contains the separator
            piece = tok.decode([enc["input_ids"][i]])
            assert "\n" in piece
            decoded_chosen.append(piece)
    # the tokenizer really merges the separator with its neighbours: "7.\n" and "\n\n" are single tokens
    assert any(len(p) > 2 and p.endswith(".\n") for p in decoded_chosen)
    assert "\n\n" in decoded_chosen


def test_bpe_offsets_round_trip_scoring_text() -> None:
    tok = _bpe_tokenizer(trim_offsets=False)
    text, ends = scoring_text("Add 3 and 4.", ["The sum is 7.", "So x is 7.", "# Answer\n\n7"])
    enc = tok(text, return_offsets_mapping=True)
    chosen = step_end_token_indices(enc["offset_mapping"], ends)
    assert chosen == sorted(chosen) and len(set(chosen)) == len(chosen)
    assert chosen[-1] == len(enc["input_ids"]) - 1  # the last step ends on the final separator
    for end, i in zip(ends, chosen):
        s, e = enc["offset_mapping"][i]
        assert s <= end < e and "\n" in tok.decode([enc["input_ids"][i]])


# ----------------------------------------------------------------------------- properties

TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))
SMALL_ALPHABET = st.sampled_from(list("ab7 =+.:#<>/\t") + ["é", "中"])
# well-formed steps: non-blank, no separator, no surrounding whitespace, no marker, no tags
STEP = (
    st.text(SMALL_ALPHABET, min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda s: s and "\n" not in s and not s.startswith("# Answer") and not any(t in s for t in TAGS))
)
ANSWER = st.text(st.one_of(SMALL_ALPHABET, st.just("\n")), max_size=8).map(str.strip)
PLAIN_ANSWER = st.none() | ANSWER.filter(lambda a: not a.startswith(":"))
TAGGED_ANSWER = st.none() | ANSWER.filter(lambda a: "</answer>" not in a)
FRAGMENTS = st.sampled_from([*TAGS, "\n", "\n\n", " ", "# Answer", ":", "a", "7"])
ANY_TEXT = st.lists(st.one_of(FRAGMENTS, st.text(ALPHABET, max_size=5)), max_size=20).map("".join)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(STEP, max_size=6), answer=PLAIN_ANSWER, fmt=st.sampled_from([PLAIN, ARITH]))
def test_plain_round_trip(steps: list[str], answer: str | None, fmt: StepFormat) -> None:
    text = join_solution(steps, answer, fmt)
    parsed = split_solution(text, fmt)
    assert (parsed.steps, parsed.answer) == (steps, answer)
    assert parsed.finished == bool(answer)
    assert join_solution(parsed.steps, parsed.answer, fmt) == text


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(STEP, max_size=6), answer=TAGGED_ANSWER)
def test_tagged_round_trip(steps: list[str], answer: str | None) -> None:
    text = join_solution(steps, answer, TAGGED)
    parsed = split_solution(text, TAGGED)
    assert (parsed.steps, parsed.answer) == (steps, answer)
    assert parsed.finished == bool(answer)
    assert join_solution(parsed.steps, parsed.answer, TAGGED) == text


@settings(max_examples=100, deadline=None)
@given(prompt=st.text(SMALL_ALPHABET, max_size=10), steps=st.lists(STEP, max_size=6))
def test_scoring_text_ends_match_split(prompt: str, steps: list[str]) -> None:
    text, ends = scoring_text(prompt, steps)
    assert all(text[e] == "\n" for e in ends)
    start = len(prompt) + 1
    assert split_solution(text[start:]).steps == steps
    assert step_end_chars(text, start=start) == ends


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT, fmt=st.sampled_from([PLAIN, ARITH, TAGGED]))
def test_split_never_raises(text: str, fmt: StepFormat) -> None:
    parsed = split_solution(text, fmt)
    assert all(s and s == s.strip() and "\n" not in s for s in parsed.steps)
    assert parsed.finished <= bool(parsed.answer)
    ends = step_end_chars(text, fmt)
    steps = parsed.labelled_steps
    assert len(ends) == len(steps) and (parsed.answer_step or "x") == (parsed.answer_step or "x").strip()
    assert ends == sorted(ends) and all(0 <= e < len(text) for e in ends)
    for end, step in zip(ends, steps):
        assert text[end] == "\n" or text[end] == step[-1]
    # a prefix before the solution shifts every end by its length
    assert step_end_chars("P\n" + text, fmt, start=2) == [e + 2 for e in ends]
    if fmt.style == "plain":  # what split returns is well-formed: joining it loses no step
        assert split_solution(join_solution(parsed.steps, parsed.answer, fmt), fmt).steps == parsed.steps
