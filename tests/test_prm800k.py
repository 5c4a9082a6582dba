"""PRM800K records -> stepwise examples, checked against counts worked out by hand on the sample.

Notation in the derivations: step i of ``label.steps`` is written ``i: ratings`` with the chosen
index (``c=``) or ``H`` for a human completion; "pos/neg/drop" are the ``neutral`` settings.
A tuple is (examples, steps, labels 1.0, labels 0.0, labels None).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import PRM800K_SAMPLE
from prm.data.errors import DataError, SkipReport
from prm.data.prm800k import PRM800KOptions, looks_like_prm800k, parse_record, read_prm800k
from prm.data.stepwise import StepwiseExample

SAMPLE = PRM800K_SAMPLE

Counts = tuple[int, int, int, int, int]


def records() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def counts(examples: list[StepwiseExample]) -> Counts:
    c = Counter(lab for ex in examples for lab in ex.labels)
    return len(examples), sum(len(ex.labels) for ex in examples), c[1.0], c[0.0], c[None]


def opts(neutral: str = "positive", alternatives: bool = False, **kw: bool) -> PRM800KOptions:
    return PRM800KOptions(neutral=neutral, include_alternatives=alternatives, **kw)  # type: ignore[arg-type]


# --- Hand-checked records ------------------------------------------------------------------

# Line 4: phase 1, finish_reason "solution", two human completions.
#   0: H, ratings [0,0,0,0,0,0,0]         -> human text, 1.0; 7 alternatives rated 0, prefix 0 steps
#   1: c=2, ratings [-1,1,1,1,1,-1,1]     -> 1.0; alts: 4 rated +1 (idx 1,3,4,6), 2 rated -1 (0,5), prefix 1
#   2: c=0 [1], 3: c=0 [1]                -> 1.0, 1.0
#   4: H, ratings [-1,-1,-1,-1]           -> 1.0; 4 alternatives rated -1, prefix 4
#   5: c=6, ratings [-1,0,-1,-1,-1,-1,1]  -> 1.0 (a multi-line "# Answer" step);
#         alts: 1 rated 0, 5 rated -1, prefix 5
# Trajectory: 6 steps, all 1.0 under every setting (chosen ones are +1, humans are 1.0).
# Alternatives (pos/neg): 7+6+4+6 = 23 examples, steps 7*1+6*2+4*5+6*6 = 75, of which 75-23 = 52
#   are prefix labels (all 1.0). Final labels: +1: 4, 0: 7+1 = 8, -1: 2+4+5 = 11.
#   pos: 1.0 = 52+4+8 = 64, 0.0 = 11.   neg: 1.0 = 52+4 = 56, 0.0 = 8+11 = 19.
#   drop: rated-0 alternatives go: 6+4+5 = 15 examples, steps 6*2+4*5+5*6 = 62,
#         1.0 = (62-15)+4 = 51, 0.0 = 11.
# With alternatives the trajectory is added: +1 example, +6 steps, +6 labels 1.0.
LINE4 = {
    ("positive", False): (1, 6, 6, 0, 0),
    ("negative", False): (1, 6, 6, 0, 0),
    ("drop", False): (1, 6, 6, 0, 0),
    ("positive", True): (24, 81, 70, 11, 0),
    ("negative", True): (24, 81, 62, 19, 0),
    ("drop", True): (16, 68, 57, 11, 0),
}

# Line 3: phase 1, finish_reason "give_up", 30 steps. Chosen completions are all rated +1
# (steps 0,2,3,4,8,9,11,12,13,15,16,17,20,23,28 have a single [1]; 7: c=1, 10: c=5, 24: c=2,
# 25: c=2, each rated +1); steps 1,5,6,14,18,19,21,22,26,27 are human completions (1.0).
# Step 29 has no chosen and no human completion and all 7 ratings null: the trajectory ends
# before it (steps 0..28) and it gives no alternative (null ratings are not labels).
# Trajectory: 29 steps, all 1.0, under every setting.
# Alternatives at step i (prefix of i steps, all 1.0), as (i: #+1, #0, #-1):
#   1: 0,5,0  5: 0,5,1  6: 0,0,7  7: 1,5,0  10: 0,0,6  14: 0,4,3  18: 0,0,7  19: 0,1,6
#   21: 0,6,1  22: 0,5,2  24: 0,1,5  25: 1,0,5  26: 0,3,4  27: 0,0,4
#   -> +1: 2, 0: 35, -1: 51; 88 examples.
#   steps = sum n_i*(i+1) = 10+36+49+48+66+105+133+140+154+161+150+156+189+112 = 1509,
#   prefix labels 1509-88 = 1421 (1.0).
#   pos: 1.0 = 1421+2+35 = 1458, 0.0 = 51.   neg: 1.0 = 1421+2 = 1423, 0.0 = 35+51 = 86.
#   drop: only +1/-1 alternatives: 53 examples, steps 6+49+8+66+45+133+120+22+46+125+156+108+112
#         = 996, 1.0 = (996-53)+2 = 945, 0.0 = 51.
LINE3 = {
    ("positive", False): (1, 29, 29, 0, 0),
    ("negative", False): (1, 29, 29, 0, 0),
    ("drop", False): (1, 29, 29, 0, 0),
    ("positive", True): (89, 1538, 1487, 51, 0),
    ("negative", True): (89, 1538, 1452, 86, 0),
    ("drop", True): (54, 1025, 974, 51, 0),
}

# Line 6: phase 2 (generation 4), finish_reason "found_error".
#   0: c=0 [0]  -> pos 1.0 / neg 0.0 / drop None (text kept)
#   1: c=0 [1]  -> 1.0 (a 4-line \begin{align*} block: one step)
#   2: no chosen, no human, ratings [-1,-1,-1,1,-1] -> the first -1 (idx 0) ends it, 0.0
# Trajectory: 3 steps. pos: 1.0 x2, 0.0 x1; neg: 1.0 x1, 0.0 x2; drop: 1.0, 0.0, None.
# Alternatives at step 2 (idx 1,2,4 rated -1, idx 3 rated +1), each prefix [step0, step1]:
#   4 examples x 3 steps = 12. pos: prefix 8 x 1.0, finals 1 x 1.0 + 3 x 0.0 -> 9, 3.
#   neg: prefix 4 x 0.0 + 4 x 1.0, finals -> 1.0 = 5, 0.0 = 7.
#   drop: prefix 4 x None + 4 x 1.0, finals -> 1.0 = 5, 0.0 = 3, None = 4 (no rated-0 finals).
LINE6 = {
    ("positive", False): (1, 3, 2, 1, 0),
    ("negative", False): (1, 3, 1, 2, 0),
    ("drop", False): (1, 3, 1, 1, 1),
    ("positive", True): (5, 15, 11, 4, 0),
    ("negative", True): (5, 15, 6, 9, 0),
    ("drop", True): (5, 15, 6, 4, 5),
}

# Line 15: phase 2, "found_error"; 18 chosen steps, rated 0 at steps 4,6,11..17 (9) and +1 at
# 0,1,2,3,5,7,8,9,10 (9); step 18: ratings [-1]*5, the first ends the trajectory (0.0).
# Trajectory 19 steps. pos: 18 x 1.0 + 1 x 0.0; neg: 9 x 1.0 + 10 x 0.0; drop: 9, 1, 9 None.
# Alternatives: idx 1..4 (all -1), 4 x 19 = 76 steps, prefix 9 (+1) and 9 (0) each, final 0.0.
#   pos: 72 x 1.0, 4 x 0.0; neg: 36, 40; drop: 36 x 1.0, 4 x 0.0, 36 None.
LINE15 = {
    ("positive", False): (1, 19, 18, 1, 0),
    ("negative", False): (1, 19, 9, 10, 0),
    ("drop", False): (1, 19, 9, 1, 9),
    ("positive", True): (5, 95, 90, 5, 0),
    ("negative", True): (5, 95, 45, 50, 0),
    ("drop", True): (5, 95, 45, 5, 45),
}

HAND_CHECKED = {4: LINE4, 3: LINE3, 6: LINE6, 15: LINE15}


@pytest.mark.parametrize("line", sorted(HAND_CHECKED))
@pytest.mark.parametrize("neutral", ["positive", "negative", "drop"])
@pytest.mark.parametrize("alternatives", [False, True])
def test_hand_checked_record(line: int, neutral: str, alternatives: bool) -> None:
    obj = records()[line - 1]
    got = parse_record(obj, opts(neutral, alternatives), path=SAMPLE, line=line)
    assert counts(got) == HAND_CHECKED[line][(neutral, alternatives)]


# --- Totals over the 17 records ----------------------------------------------------------------
# Counted by hand record by record (same method as above) and summed:
# trajectories: 17 examples, 5+5+29+6+6+3+10+3+26+2+11+3+2+3+19+7+7 = 147 steps; 12 found_error
# records end in 0.0; 18 chosen steps are rated 0 (lines 6:1, 11:2, 12:2, 13:1, 15:9, 16:1, 17:2).
#   pos: 135 x 1.0, 12 x 0.0.  neg: 117, 30.  drop: 117, 12, 18 None.
# alternatives alone: pos/neg 175 examples, 2023 steps (pos 1935/88, neg 1814/209);
#   drop 123 examples, 1435 steps, 1278 x 1.0, 88 x 0.0, 69 None.
TOTALS = {
    ("positive", False): (17, 147, 135, 12, 0),
    ("negative", False): (17, 147, 117, 30, 0),
    ("drop", False): (17, 147, 117, 12, 18),
    ("positive", True): (192, 2170, 2070, 100, 0),
    ("negative", True): (192, 2170, 1931, 239, 0),
    ("drop", True): (140, 1582, 1395, 100, 87),
}


@pytest.mark.parametrize("key", sorted(TOTALS))
def test_totals_on_sample(key: tuple[str, bool]) -> None:
    neutral, alternatives = key
    assert counts(read_prm800k(SAMPLE, opts(neutral, alternatives))) == TOTALS[key]


# --- What the examples contain -------------------------------------------------------------------


def test_give_up_trajectory_uses_human_completions_and_stops() -> None:
    obj = records()[2]
    (traj,) = parse_record(obj, opts())
    steps = obj["label"]["steps"]
    assert traj.prompt == obj["question"]["problem"]
    assert traj.completions[1] == steps[1]["human_completion"]["text"]
    assert traj.completions[7] == steps[7]["completions"][1]["text"]  # chosen_completion 1
    assert traj.completions[-1] == steps[28]["completions"][0]["text"]
    assert len(traj.completions) == 29
    assert traj.extra["finish_reason"] == "give_up"
    assert traj.extra["alternative"] is False


def test_found_error_ends_with_first_negative_and_alternatives_share_prefix() -> None:
    obj = records()[5]
    examples = parse_record(obj, opts("drop", alternatives=True))
    traj, alts = examples[0], examples[1:]
    last = obj["label"]["steps"][2]["completions"]
    assert traj.completions[-1] == last[0]["text"]
    assert traj.labels == [None, 1.0, 0.0]  # rating 0 dropped from the labels, text kept
    assert [a.completions[-1] for a in alts] == [last[j]["text"] for j in (1, 2, 3, 4)]
    assert [a.labels[-1] for a in alts] == [0.0, 0.0, 1.0, 0.0]
    assert all(a.completions[:2] == traj.completions[:2] and a.extra["alternative"] for a in alts)


def test_extra_keys() -> None:
    recs = records()
    p1 = parse_record(recs[0], opts())[0].extra
    p2 = parse_record(recs[5], opts())[0].extra
    assert p1 == {
        "source": "prm800k",
        "finish_reason": "solution",
        "answer": "468",
        "phase": 1,
        "labeler": recs[0]["labeler"],
        "is_quality_control_question": False,
        "is_initial_screening_question": False,
        "alternative": False,
    }
    assert p2["phase"] == 2 and p2["finish_reason"] == "found_error" and p2["answer"] == "-\\frac{2}{3}"


def test_multiline_steps_stay_one_step() -> None:
    recs = records()
    (traj,) = parse_record(recs[0], opts())
    assert len(traj.completions) == 5
    assert traj.completions[-1] == "Exactly.\n\n# Answer\n\n468"
    (traj,) = parse_record(recs[5], opts())
    assert traj.completions[1].count("\n") == 3 and traj.completions[1].startswith("\\begin{align*}")
    assert len(traj.completions) == len(traj.labels) == 3


def test_human_completion_as_string_and_null_rating() -> None:
    obj = copy.deepcopy(records()[3])
    obj["label"]["steps"][0]["human_completion"] = "Subtract digit by digit."
    obj["label"]["steps"][2]["completions"][0]["rating"] = None
    (traj,) = parse_record(obj, opts())
    assert traj.completions[0] == "Subtract digit by digit."
    assert traj.labels == [1.0, 1.0, None, 1.0, 1.0, 1.0]


def test_quality_control_and_screening_filters(tmp_path: Path) -> None:
    recs = records()
    recs[0]["is_quality_control_question"] = True
    recs[1]["is_initial_screening_question"] = True
    path = tmp_path / "flags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    assert len(read_prm800k(path)) == 17
    assert len(read_prm800k(path, opts(drop_quality_control=True))) == 16
    assert len(read_prm800k(path, opts(drop_screening=True))) == 16
    assert len(read_prm800k(path, opts(drop_quality_control=True, drop_screening=True))) == 15
    assert parse_record(recs[0], opts(alternatives=True, drop_quality_control=True)) == []
    kept = read_prm800k(path)
    assert kept[0].extra["is_quality_control_question"] is True
    assert kept[1].extra["is_initial_screening_question"] is True


def test_looks_like_prm800k() -> None:
    assert all(looks_like_prm800k(r) for r in records())
    assert not looks_like_prm800k({"prompt": "p", "completions": ["a"], "labels": [1.0]})
    assert not looks_like_prm800k({"label": [], "question": {}})
    assert not looks_like_prm800k([1, 2])


def test_bad_neutral_option() -> None:
    with pytest.raises(ValueError, match="neutral"):
        PRM800KOptions(neutral="zero")  # type: ignore[arg-type]


# --- Malformed input ---------------------------------------------------------------------------


def _good() -> dict:
    return records()[1]


def _mutations() -> dict[str, tuple[object, str]]:
    """name -> (bad record, or a raw line as a str; the field the error must name)."""
    out: dict[str, tuple[object, str]] = {}
    r = _good()
    del r["label"]
    out["missing label"] = (r, "label")
    r = _good()
    del r["label"]["steps"]
    out["missing steps"] = (r, "label.steps")
    r = _good()
    del r["question"]["problem"]
    out["missing problem"] = (r, "question.problem")
    r = _good()
    r["label"]["steps"][2]["completions"][1]["rating"] = 2
    out["rating 2"] = (r, "label.steps[2].completions[1].rating")
    r = _good()
    r["label"]["steps"][2]["chosen_completion"] = 7
    out["chosen out of range"] = (r, "label.steps[2].chosen_completion")
    r = _good()
    del r["label"]["steps"][3]["completions"]
    out["step without completions"] = (r, "label.steps[3].completions")
    r = _good()
    r["label"]["steps"] = {"0": 1}
    out["steps not a list"] = (r, "label.steps")
    r = _good()
    r["label"]["steps"][1]["completions"][0]["text"] = 3
    out["text not a string"] = (r, "label.steps[1].completions[0].text")
    r = _good()
    r["label"]["steps"][0]["chosen_completion"] = "0"
    out["chosen not an int"] = (r, "label.steps[0].chosen_completion")
    r = _good()
    r["label"]["steps"][4]["human_completion"] = ["text"]
    out["human completion a list"] = (r, "label.steps[4].human_completion")
    r = _good()
    r["label"]["steps"][4]["completions"][0]["rating"] = True
    out["rating a boolean"] = (r, "label.steps[4].completions[0].rating")
    return out


@pytest.mark.parametrize("name", sorted(_mutations()))
def test_malformed_record_names_file_line_field(tmp_path: Path, name: str) -> None:
    bad, field = _mutations()[name]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_good()) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_prm800k(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 2, field)
    assert f"{path}:2: field '{field}'" in str(err)


def test_invalid_json_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(_good()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: invalid JSON"):
        read_prm800k(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        read_prm800k(empty)
    with pytest.raises(DataError, match="file not found"):
        read_prm800k(tmp_path / "missing.jsonl")


def test_not_an_object() -> None:
    with pytest.raises(DataError, match=r"x\.jsonl:5: field '<record>': expected an object, got a list"):
        parse_record([1], PRM800KOptions(), path="x.jsonl", line=5)


def test_skip_invalid_counts_bad_lines(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in records()[:3]]
    lines.insert(1, "{not json")
    lines.insert(3, json.dumps(_mutations()["rating 2"][0]))
    lines.append(json.dumps(_mutations()["missing label"][0]))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = SkipReport()
    examples = read_prm800k(path, skip_invalid=True, report=report)
    assert len(examples) == 3
    assert report.skipped == 3
    assert [(e.line, e.field) for e in report.errors] == [
        (2, None),
        (4, "label.steps[2].completions[1].rating"),
        (6, "label"),
    ]
