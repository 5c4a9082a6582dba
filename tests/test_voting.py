"""Majority and weighted-majority voting: hand-computed cases, equivalent answers, ties, missing answers."""

from __future__ import annotations

from prm.voting import answer_classes, vote


def test_majority_counts_equivalent_answers_together() -> None:
    answers = ["\\frac{1}{2}", "3", "0.5", "1/2", "3", None]
    assert answer_classes(answers) == [[0, 2, 3], [1, 4]]
    result = vote(answers)
    assert result.answer == "\\frac{1}{2}" and result.weight == 3 and result.index == 0


def test_weighted_majority_sums_scores_per_answer() -> None:
    answers = ["7", "8", "8", "7", "9"]
    scores = [0.5, 0.3, 0.3, 0.2, 0.95]  # 7: 0.7, 8: 0.6, 9: 0.95
    result = vote(answers, scores)
    assert result.answer == "9" and abs(result.weight - 0.95) < 1e-12
    assert vote(answers).answer == "7"  # 2 vs 2 votes: the first-seen class wins the tie


def test_ties_go_to_the_earliest_class() -> None:
    assert vote(["4", "5", "5", "4"]).answer == "4"
    assert vote(["5", "4", "4", "5"]).answer == "5"
    assert vote(["1", "2"], [0.5, 0.5]).answer == "1"


def test_missing_answers_never_vote() -> None:
    assert vote([None, None, "  "]).answer is None
    result = vote([None, "2", None])
    assert result.answer == "2" and result.index == 1 and result.weight == 1


def test_weights_must_match_answers() -> None:
    import pytest

    with pytest.raises(ValueError, match="2 answers but 1 weights"):
        vote(["1", "2"], [1.0])
