"""Evaluation metrics, selection curves, ProcessBench records and plots: hand-computed cases."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from prm.data.errors import DataError, SkipReport
from prm.data.stepwise import StepwiseExample
from prm.evaluation.metrics import (
    accuracy_f1,
    auroc,
    choose_threshold,
    expected_calibration_error,
    first_error_metrics,
    first_error_prediction,
    local_auroc,
    reliability_bins,
    step_auroc,
    within_problem_auroc,
)
from prm.evaluation.plots import plot_reliability, plot_selection_curves
from prm.evaluation.processbench import (
    ProcessBenchExample,
    first_error_index,
    read_processbench,
    stepwise_to_processbench,
)
from prm.evaluation.selection import (
    SampledProblem,
    default_ns,
    group_indices,
    per_problem_selection,
    selection_by_group,
    selection_curves,
)
from prm.voting import vote

# --------------------------------------------------------------------------- AUROC


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_hand_cases_with_ties_and_one_class() -> None:
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # positive 0.5 ties both negatives (1/2 + 1/2), positive 0.9 beats both: 3 of 4 pairs
    assert auroc([0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1]) == pytest.approx(0.75)
    assert auroc([0.3, 0.3, 0.3], [True, False, True]) == pytest.approx(0.5)
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(auroc([0.2, 0.4], [1, 1]))
    with pytest.raises(ValueError, match="binarise"):
        auroc([0.2, 0.4], [0.5, 1.0])


def test_auroc_matches_brute_force_pair_count() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = np.round(rng.random(n), 1)  # many ties
        labels = rng.integers(0, 2, n)
        if labels.min() == labels.max():
            continue
        assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))


def test_accuracy_f1_reports_both_classes() -> None:
    m = accuracy_f1([0.9, 0.8, 0.3, 0.6, 0.2, 0.1], [1, 1, 1, 0, 0, 1], threshold=0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["neg_precision"] == pytest.approx(1 / 3) and m["neg_recall"] == pytest.approx(0.5)
    assert m["neg_f1"] == pytest.approx(0.4)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    none_negative = accuracy_f1([0.9, 0.7], [1, 1])
    assert math.isnan(none_negative["neg_recall"]) and none_negative["f1"] == 1.0


def test_ece_and_reliability_bins_hand_case() -> None:
    probs, labels = [0.15, 0.25, 0.85, 0.95], [0, 1, 1, 1]
    assert expected_calibration_error(probs, labels) == pytest.approx((0.15 + 0.75 + 0.15 + 0.05) / 4)
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.5 * 0.3 + 0.5 * 0.1)
    bins = reliability_bins(probs + [1.0], labels + [1], n_bins=2)
    assert bins["count"] == [2, 3] and bins["edges"] == [0.0, 0.5, 1.0]
    assert bins["confidence"] == pytest.approx([0.2, 0.9333333333])
    assert bins["accuracy"] == pytest.approx([0.5, 1.0])
    empty = reliability_bins([0.95], [1], n_bins=4)
    assert empty["count"] == [0, 0, 0, 1] and math.isnan(empty["accuracy"][0])
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [1])


def test_within_problem_auroc_sees_through_difficulty_only_scores() -> None:
    # the notes' failure mode: every solution of a problem gets the same score, set by difficulty
    easy = [(0.9, True)] * 4 + [(0.9, False)]
    hard = [(0.1, True)] + [(0.1, False)] * 4
    solved = [(0.95, True), (0.95, True)]  # one class only: does not count
    groups = [easy, hard, solved]
    flat = [pair for g in groups for pair in g]
    assert auroc([s for s, _ in flat], [c for _, c in flat]) == pytest.approx(30 / 35)
    result = within_problem_auroc(groups)
    assert result.auroc == pytest.approx(0.5) and result.n == 2
    value, n = result  # unpacks as (auroc, problems counted)
    assert (value, n) == (result.auroc, 2)


def test_within_problem_auroc_weighting_and_empty() -> None:
    a = [(0.9, 1), (0.8, 1), (0.1, 0)]  # AUROC 1, 2 pairs
    b = [(0.2, 1), (0.7, 0)]  # AUROC 0, 1 pair
    assert within_problem_auroc([a, b]).auroc == pytest.approx(0.5)
    assert within_problem_auroc([a, b], weight="pairs").auroc == pytest.approx(2 / 3)
    nothing = within_problem_auroc([[(0.5, 1)], []])
    assert math.isnan(nothing.auroc) and nothing.n == 0


def test_local_auroc_keeps_steps_up_to_the_first_error() -> None:
    scores = [[0.9, 0.8, 0.2, 0.7], [0.6, 0.95], [0.7, 0.3]]
    labels = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0], [None, 0.0]]
    local = local_auroc(scores, labels)
    assert local.auroc == 1.0 and local.n == 4  # .9 .8 against .2 .6
    overall = step_auroc(scores, labels)
    assert overall.auroc == pytest.approx(8 / 10) and overall.n == 7
    with pytest.raises(ValueError, match="solution 0: 1 step scores but 2 labels"):
        local_auroc([[0.5]], [[1.0, 0.0]])


# --------------------------------------------------------------------------- first error


def test_first_error_prediction() -> None:
    assert first_error_prediction([0.9, 0.4, 0.2], 0.5) == 1
    assert first_error_prediction([0.9, 0.8], 0.5) == -1
    assert first_error_prediction([0.5, 0.49], 0.5) == 1  # strictly below
    assert first_error_prediction([], 0.5) == -1


def test_first_error_metrics_hand_case() -> None:
    m = first_error_metrics([1, 2, -1, -1, 0], [1, 1, -1, 2, -1])
    assert m["error_accuracy"] == pytest.approx(1 / 3) and m["correct_accuracy"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.4)
    assert (m["n_error"], m["n_correct"]) == (3, 2)
    assert first_error_metrics([0, -1], [0, -1])["f1"] == 1.0
    assert first_error_metrics([-1, -1], [0, -1])["f1"] == 0.0
    assert math.isnan(first_error_metrics([-1], [-1])["f1"])


def test_choose_threshold_maximises_f1() -> None:
    steps = [[0.9, 0.3, 0.2], [0.8, 0.6], [0.7, 0.45, 0.1]]
    true = [1, -1, 2]
    # every prediction is right exactly for thresholds in (0.3, 0.45]
    t = choose_threshold(steps, true)
    assert t == pytest.approx(0.31)
    preds = [first_error_prediction(s, t) for s in steps]
    assert first_error_metrics(preds, true)["f1"] == 1.0
    assert choose_threshold(steps, true, grid=[0.2, 0.4, 0.7]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="both"):
        choose_threshold(steps[:1], true[:1])


# --------------------------------------------------------------------------- selection


def methods_at(curves: dict, n: int) -> dict[str, float]:
    j = curves["ns"].index(n)
    return {m: v["mean"][j] for m, v in curves["methods"].items()}


def test_selection_k2_n1_is_mean_correctness_and_n_k_is_the_full_vote() -> None:
    p1 = SampledProblem(scores=[0.9, 0.1], answers=["1", "2"], correct=[True, False])
    p2 = SampledProblem(scores=[0.2, 0.8], answers=["3", "3"], correct=[True, True])
    curves = selection_curves([p1, p2], ns=[1, 2], draws=100, seed=0)
    assert all(v == pytest.approx(0.75) for v in methods_at(curves, 1).values())
    at2 = methods_at(curves, 2)
    assert at2 == {"random": 0.75, "pass": 1.0, "majority": 1.0, "best_of_n": 1.0, "weighted_majority": 1.0}
    assert curves["problems"] == 2 and curves["draws"] == 100


def test_selection_exact_hand_case() -> None:
    p = SampledProblem(scores=[0.2, 0.9, 0.3, 0.4], answers=["5", "7", "5.0", None],
                       correct=[True, False, True, False])
    assert p.class_ids.tolist() == [0, 1, 0, -1]  # "5" and "5.0" are one answer
    curves = selection_curves([p], ns=[1, 2, 4])
    assert methods_at(curves, 4) == {"random": 0.5, "pass": 1.0, "majority": 1.0, "best_of_n": 0.0,
                                     "weighted_majority": 0.0}
    at2 = methods_at(curves, 2)  # all 6 pairs, by hand
    assert at2["best_of_n"] == pytest.approx(1 / 6)
    assert at2["majority"] == pytest.approx(4 / 6)
    assert at2["weighted_majority"] == pytest.approx(3 / 6)
    assert at2["pass"] == pytest.approx(5 / 6)
    assert at2["random"] == pytest.approx(0.5)
    assert math.isnan(curves["methods"]["pass"]["se"][0])  # one problem: no standard error


def test_selection_ties_nan_scores_and_extra_scores() -> None:
    tie = SampledProblem(scores=[0.5, 0.5], answers=["1", "2"], correct=[False, True],
                         extra_scores={"likelihood": [-1.0, -0.5]})
    missing = SampledProblem(scores=[float("nan"), 0.1], answers=[None, "2"], correct=[True, False],
                             extra_scores={"likelihood": [-2.0, -3.0]})
    at2 = methods_at(selection_curves([tie], ns=[2]), 2)
    assert at2["best_of_n"] == 0.0  # tie: the earliest sample
    assert at2["weighted_majority"] == 0.0 and at2["majority"] == 0.0  # tied classes: the earliest
    assert at2["best_of_n/likelihood"] == 1.0
    at2 = methods_at(selection_curves([missing], ns=[2]), 2)
    assert at2["best_of_n"] == 0.0  # a NaN score is never preferred
    assert at2["majority"] == 0.0  # the missing answer never votes
    assert at2["best_of_n/likelihood"] == 1.0
    with pytest.raises(ValueError, match="extra scores"):
        per_problem_selection([tie, SampledProblem([0.1], ["1"], [True])], ns=[1])
    with pytest.raises(ValueError, match="N=3 is outside"):
        selection_curves([tie], ns=[3])


def test_selection_votes_agree_with_search_voting() -> None:
    rng = np.random.default_rng(1)
    pool = ["1", "2", "3", None]
    problems = []
    for _ in range(15):
        k = 6
        problems.append(SampledProblem(
            scores=rng.integers(0, 5, k) / 4,  # exact binary fractions, many ties
            answers=[pool[i] for i in rng.integers(0, 4, k)],
            correct=rng.random(k) < 0.4,
        ))
    ns, values = per_problem_selection(problems, ns=[1, 2, 3, 6], draws=100)
    for i, p in enumerate(problems):
        for j, n in enumerate(ns):
            subsets = list(itertools.combinations(range(p.k), n))  # C(6, n) <= 100: all of them
            expect = {"majority": 0.0, "weighted_majority": 0.0, "best_of_n": 0.0}
            for sub in subsets:
                ans = [p.answers[s] for s in sub]
                for name, v in (("majority", vote(ans)), ("weighted_majority", vote(ans, [p.scores[s] for s in sub]))):
                    expect[name] += v.index is not None and bool(p.correct[sub[v.index]])
                best = max(range(n), key=lambda a: (p.scores[sub[a]], -a))
                expect["best_of_n"] += bool(p.correct[sub[best]])
            for name, total in expect.items():
                assert values[name][i, j] == pytest.approx(total / len(subsets)), (i, n, name)


def test_selection_random_draws_are_seeded_and_grouped() -> None:
    rng = np.random.default_rng(2)
    problems = [
        SampledProblem(scores=rng.random(16), answers=[str(a) for a in rng.integers(0, 4, 16)],
                       correct=rng.random(16) < 0.3)
        for _ in range(6)
    ]
    a = selection_curves(problems, draws=50, seed=3)
    assert a["ns"] == default_ns(16) == [1, 2, 4, 8, 16]
    assert a == selection_curves(problems, draws=50, seed=3)
    assert a != selection_curves(problems, draws=50, seed=4)
    mean_correct = np.mean([p.correct.mean() for p in problems])
    assert a["methods"]["random"]["mean"][0] == pytest.approx(mean_correct)  # N=1 is exact
    assert a["methods"]["random"]["mean"][2] == pytest.approx(mean_correct, abs=0.05)
    pass_curve = a["methods"]["pass"]["mean"]
    assert all(x <= y + 1e-12 for x, y in zip(pass_curve, pass_curve[1:]))

    groups = group_indices([4, 2, 4, 2, None, 2])
    assert groups == {"2": [1, 3, 5], "4": [0, 2], "None": [4], "all": [0, 1, 2, 3, 4, 5]}
    by = selection_by_group(problems, groups, draws=50, seed=3)
    assert by["all"]["methods"] == a["methods"] and by["2"]["problems"] == 3
    # standard error over problems: two problems scoring 1 and 0
    two = [SampledProblem([0.5], ["1"], [True]), SampledProblem([0.5], ["1"], [False])]
    se = selection_curves(two, ns=[1])["methods"]["random"]["se"][0]
    assert se == pytest.approx(0.5)


# --------------------------------------------------------------------------- ProcessBench


GOOD = {"id": "gsm8k-0", "generator": "Qwen2-7B-Instruct", "problem": "1+1?", "steps": ["a", "b", "c"],
        "label": 1, "final_answer_correct": False, "source": "x"}


def test_read_processbench_jsonl_and_json_list(tmp_path: Path) -> None:
    lines = tmp_path / "pb.jsonl"
    ok = {**GOOD, "id": "gsm8k-1", "label": -1, "final_answer_correct": True}
    lines.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(ok) + "\n")
    recs = read_processbench(lines)
    assert [r.label for r in recs] == [1, -1] and recs[0].extra == {"source": "x"}
    assert recs[0].to_dict() == GOOD
    listed = tmp_path / "pb.json"
    listed.write_text(json.dumps([GOOD, ok], indent=2))
    assert [r.id for r in read_processbench(listed)] == ["gsm8k-0", "gsm8k-1"]


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "label"}, "label", "missing required field"),
        ({**GOOD, "label": 3}, "label", "outside -1..2"),
        ({**GOOD, "label": True}, "label", "integer"),
        ({**GOOD, "steps": ["a", 1]}, "steps", "list of strings"),
        ({**GOOD, "final_answer_correct": "yes"}, "final_answer_correct", "true, false or null"),
        ({**GOOD, "generator": 5}, "generator", "string or null"),
    ],
)
def test_processbench_bad_records_are_located(tmp_path: Path, record: dict, field: str, message: str) -> None:
    lines = tmp_path / "bad.jsonl"
    lines.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=message) as info:
        read_processbench(lines)
    assert (info.value.path, info.value.line, info.value.field) == (str(lines), 2, field)
    listed = tmp_path / "bad.json"
    listed.write_text(json.dumps([GOOD, record]))
    with pytest.raises(DataError, match=message) as info:
        read_processbench(listed)
    assert info.value.field == f"[1].{field}" and str(listed) in str(info.value)


def test_processbench_skip_invalid_and_broken_files(tmp_path: Path) -> None:
    lines = tmp_path / "mixed.jsonl"
    lines.write_text(json.dumps(GOOD) + "\n{not json\n" + json.dumps([1]) + "\n")
    report = SkipReport()
    assert len(read_processbench(lines, skip_invalid=True, report=report)) == 1
    assert report.skipped == 2 and report.errors[0].line == 2
    broken = tmp_path / "broken.json"
    broken.write_text("[\n" + json.dumps(GOOD) + ",\n")
    with pytest.raises(DataError, match="invalid JSON"):
        read_processbench(broken)
    with pytest.raises(DataError, match="file not found"):
        read_processbench(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="no records"):
        read_processbench(tmp_path / "empty.json")


def test_stepwise_first_errors_and_conversion() -> None:
    assert first_error_index([1.0, 1.0, 0.0, None]) == 2  # unlabelled after the error: irrelevant
    assert first_error_index([1.0, 1.0]) == -1
    assert first_error_index([1.0, None, 0.0]) is None  # unknown
    assert first_error_index([1.0, 0.3], threshold=0.5) == 1
    with pytest.raises(ValueError, match="soft label"):
        first_error_index([0.7])
    examples = [
        StepwiseExample("Q1", ["a", "b", "c"], [1.0, 0.0, 0.0], {"id": "p1", "sample": 3, "correct": False,
                                                                  "source": "arith", "difficulty": 2}),
        StepwiseExample("Q2", ["a"], [None], {"id": "p2"}),
        StepwiseExample("Q3", ["a", "b"], [1.0, 1.0], {"correct": True}),
    ]
    report = SkipReport()
    recs = stepwise_to_processbench(examples, report=report)
    assert report.skipped == 1 and "examples[1]" in report.errors[0].describe()
    assert [(r.id, r.label, r.final_answer_correct, r.generator) for r in recs] == [
        ("p1/3", 1, False, "arith"), ("2", -1, True, None)]
    assert recs[0].extra == {"sample": 3, "difficulty": 2}
    with pytest.raises(DataError, match="soft label"):
        stepwise_to_processbench([StepwiseExample("Q", ["a"], [0.5])])
    back = ProcessBenchExample.from_dict(GOOD).to_stepwise()
    assert back.labels == [1.0, 0.0, None] and back.prompt == "1+1?"
    assert first_error_index(back.labels) == 1
    assert ProcessBenchExample.from_dict({**GOOD, "label": -1}).to_stepwise().labels == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- plots


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.random(200)
    bins = reliability_bins(probs, rng.random(200) < probs)
    p = SampledProblem(scores=[0.2, 0.9, 0.3, 0.4], answers=["5", "7", "5", None], correct=[True, False, True, False])
    curves = selection_curves([p, p], ns=[1, 2, 4])
    out = tmp_path / "plots"
    for path in (plot_reliability(bins, out / "reliability.png"), plot_selection_curves(curves, out / "bon.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(f.name for f in out.iterdir()) == ["bon.png", "reliability.png"]  # no temp files left
