"""Stepwise JSONL: read, write, validate with located errors, and load as a ``datasets.Dataset``."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from prm.data.errors import DataError, SkipReport
from prm.data.stepwise import StepwiseExample, load_stepwise_dataset, read_stepwise, write_stepwise

EXAMPLES = [
    StepwiseExample("Q: 1+2\n", ["1+2=3"], [1.0], {"answer": "3", "id": "a"}),
    StepwiseExample("Q: 2*3\n", ["2*3=5", "oops"], [0.0, None], {"answer": "6", "id": "b", "difficulty": 1}),
    StepwiseExample("prompt", ["s1", "s2", "s3"], [1.0, 0.5, 0.25]),
]


def test_round_trip_keeps_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    assert write_stepwise(path, EXAMPLES) == 3
    back = read_stepwise(path)
    assert [e.to_dict() for e in back] == [e.to_dict() for e in EXAMPLES]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_loads_as_a_datasets_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_stepwise(path, EXAMPLES[:2])
    ds = load_stepwise_dataset(path)
    assert ds.num_rows == 2
    assert ds[0]["completions"] == ["1+2=3"] and ds[1]["labels"] == [0.0, None]
    assert ds[1]["id"] == "b"


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('{"prompt": 3, "completions": [], "labels": []}', "field 'prompt'"),
        ('{"prompt": "p", "completions": "abc", "labels": []}', "field 'completions'"),
        ('{"prompt": "p", "completions": ["a"], "labels": [1.5]}', "field 'labels[0]'"),
        ('{"prompt": "p", "completions": ["a"], "labels": ["x"]}', "field 'labels[0]'"),
        ('{"prompt": "p", "completions": ["a", "b"], "labels": [1.0]}', "field 'labels'"),
        ('{"prompt": "p", "labels": []}', "field 'completions'"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"prompt": "p", "completions": ["a"], "labels": [1.0]', "invalid JSON"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, line: str, where: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "completions": ["a"], "labels": [1]}\n\n' + line + "\n")
    with pytest.raises(DataError) as info:
        read_stepwise(path)
    assert str(info.value).startswith(f"{path}:3")
    assert where in str(info.value)


def test_skip_invalid_counts_what_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"prompt": "ok", "completions": ["a"], "labels": [1]}\n'
        "{broken\n"
        '{"prompt": "p", "completions": ["a"], "labels": [7]}\n'
        '{"prompt": "ok2", "completions": [], "labels": []}\n'
    )
    report = SkipReport()
    got = read_stepwise(path, skip_invalid=True, report=report)
    assert [e.prompt for e in got] == ["ok", "ok2"]
    assert report.skipped == 2
    assert [e.line for e in report.errors] == [2, 3]
    assert "skipped 2 invalid line(s)" in report.summary()


def test_missing_empty_and_directory_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_stepwise(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty file"):
        read_stepwise(empty)
    with pytest.raises(DataError, match="is a directory"):
        read_stepwise(tmp_path)


def test_byte_order_mark_crlf_and_trailing_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"  # as some Windows editors save it
    lines = [json.dumps(ex.to_dict()) for ex in EXAMPLES]
    path.write_bytes(codecs.BOM_UTF8 + ("\r\n".join(lines) + "\r\n\r\n\r\n").encode("utf-8"))
    back = read_stepwise(path)
    assert [e.to_dict() for e in back] == [e.to_dict() for e in EXAMPLES]
