"""``prm-data`` subcommands and the first ``prm-demo`` stage, end to end on small files."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import PRM800K_SAMPLE
from prm.cli.data import main
from prm.data.arith import generate_problems
from prm.data.prm800k import read_prm800k
from prm.data.problems import read_problems
from prm.data.stepwise import read_stepwise

SAMPLE = PRM800K_SAMPLE


def test_arith_writes_labelled_solutions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.jsonl"
    assert main(["arith", str(out), "--n", "40", "--seed", "3", "--samples-per-problem", "2", "--max-ops", "3"]) == 0
    examples = read_stepwise(out)
    assert len(examples) == 80
    assert all(2 <= ex.extra["difficulty"] <= 3 for ex in examples)
    assert all(len(ex.labels) == len(ex.completions) for ex in examples)
    assert "records: 80" in capsys.readouterr().out
    again = tmp_path / "again.jsonl"
    main(["arith", str(again), "--n", "40", "--seed", "3", "--samples-per-problem", "2", "--max-ops", "3"])
    assert again.read_text() == out.read_text()


def test_arith_problems_only_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "problems.jsonl"
    assert main(["arith", str(out), "--n", "5", "--seed", "7", "--problems-only"]) == 0
    records = read_problems(out)
    truth = generate_problems(5, seed=7)
    assert [r.id for r in records] == [p.id for p in truth]
    assert [r.answer for r in records] == [str(p.answer) for p in truth]
    assert [r.problem for r in records] == [p.prompt for p in truth]


def test_convert_then_validate_prm800k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prm800k.jsonl"
    assert main(["convert", str(SAMPLE), str(out), "--neutral", "drop"]) == 0
    examples = read_stepwise(out)
    assert len(examples) == 17
    assert sum(ex.labels.count(None) for ex in examples) == 18  # the 18 chosen steps rated 0
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    assert "format stepwise, 17 valid record(s)" in capsys.readouterr().out
    assert main(["stats", str(SAMPLE), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == 17 and stats["steps"] == 147


def test_validate_reports_every_problem_with_location(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "a", "completions": ["x"], "labels": [1.0]}\n'
        '{"prompt": "b", "completions": ["x"], "labels": [2]}\n'
        "not json\n"
        '{"prompt": "c", "completions": ["x", "y"], "labels": [1.0]}\n'
        '{"completions": ["x"], "labels": [0.0]}\n'
    )
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "4 invalid record(s)" in err
    assert f"{bad}:2: field 'labels[0]'" in err
    assert f"{bad}:3: invalid JSON" in err
    assert f"{bad}:4: field 'labels'" in err
    assert f"{bad}:5: field 'prompt'" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty file"), ('{"foo": 1}\n', "unrecognised record")],
)
def test_validate_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(content)
    assert main(["validate", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_missing_file_and_bad_knob_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl: file not found" in capsys.readouterr().err
    assert main(["arith", str(tmp_path / "x.jsonl"), "--slip-rate", "2"]) == 1
    assert "slip_rate" in capsys.readouterr().err


def test_convert_skip_invalid_counts_skipped_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = SAMPLE.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(broken), str(out)]) == 1
    assert f"{broken}:2: invalid JSON" in capsys.readouterr().err
    assert main(["convert", str(broken), str(out), "--skip-invalid"]) == 0
    assert "skipped 1 invalid line(s)" in capsys.readouterr().err
    assert len(read_stepwise(out)) == 2


STEPWISE_LINES = ['{"prompt": "p", "completions": ["a", "b"], "labels": [1.0, 0.0]}',
                  '{"prompt": "q", "completions": ["c"], "labels": [null]}']
PROBLEM_LINES = ['{"id": "a", "problem": "1+1?", "answer": "2"}', '{"id": "b", "problem": "2+2?", "answer": 4}']


@pytest.mark.parametrize(
    ("fmt", "lines", "read", "expected"),
    [
        ("stepwise", STEPWISE_LINES, read_stepwise, 2),
        ("problems", PROBLEM_LINES, read_problems, 2),
        ("prm800k", SAMPLE.read_text(encoding="utf-8").splitlines()[:3], read_prm800k, 3),
    ],
)
def test_byte_order_mark_is_valid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str, lines: list[str],
    read: Callable[[Path], list[Any]], expected: int,
) -> None:
    """A JSONL file saved with a UTF-8 byte-order mark and CRLF line ends (as some Windows editors do)."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    assert len(read(path)) == expected
    assert main(["validate", str(path)]) == 0  # format auto-detected from the first line
    assert f"format {fmt}, {expected} valid record(s)" in capsys.readouterr().out
    assert main(["validate", str(path), "--format", fmt]) == 0
    assert main(["stats", str(path)]) == 0
    if fmt == "prm800k":
        out = tmp_path / "converted.jsonl"
        assert main(["convert", str(path), str(out)]) == 0
        assert len(read_stepwise(out)) == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "b", "problem": "2+2?", "answer": "  "}', "field 'answer': empty reference answer"),
        ('{"id": "b", "problem": "2+2?", "answer": NaN}', "field 'answer': expected a finite number"),
        ('{"id": "b", "problem": "2+2?", "answer": true}', "field 'answer': expected a string or number"),
    ],
)
def test_a_problem_file_with_an_unusable_answer_names_its_line(tmp_path: Path, line: str, message: str) -> None:
    """An empty or non-finite reference answer would grade every solution wrong: an error, not a silent run."""
    path = tmp_path / "problems.jsonl"
    path.write_text(PROBLEM_LINES[0] + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:2: {message}".replace("(", r"\(").replace(")", r"\)")):
        read_problems(path)
