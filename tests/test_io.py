"""prm.io: atomic writes, and reading back a JSONL file appended line by line after a crash."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

import pytest

from prm.io import read_resumable_jsonl, write_jsonl

A, B = {"id": "a", "x": 1}, {"id": "b", "x": [2, 3]}
COMPLETE = json.dumps(A) + "\n" + json.dumps(B) + "\n"


def test_write_jsonl_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"
    assert write_jsonl(path, [A, B]) == 2
    assert read_resumable_jsonl(path) == [A, B]
    assert not list(path.parent.glob(".*.tmp")), "no temporary file left behind"


def test_missing_and_empty_files_give_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    assert read_resumable_jsonl(missing) == []
    assert read_resumable_jsonl(missing, repair=True) == []
    assert not missing.exists(), "repair does not create a file"
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert read_resumable_jsonl(empty) == []
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n \r\n\n")
    assert read_resumable_jsonl(blank) == []


@pytest.mark.parametrize(
    "torn",
    [b'{"id": "c", "x"', b'{"id": "c', b"{", b'{"id": "\xc3', b"\x00\x00\x00", b'[1, 2]', b'{"id": "c"} x\n'],
    ids=["mid-value", "mid-string", "one-brace", "mid-character", "zeros", "not-an-object", "junk-with-newline"],
)
def test_torn_last_line_is_dropped(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(COMPLETE.encode() + torn)
    before = path.read_bytes()
    assert read_resumable_jsonl(path) == [A, B]
    assert path.read_bytes() == before, "without repair the file is left as it is"


def test_torn_last_line_before_trailing_blank_lines_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(COMPLETE.encode() + b'{"id": "c"\n\n\n')
    assert read_resumable_jsonl(path) == [A, B]


def test_file_of_only_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a", "x": ')
    assert read_resumable_jsonl(path) == []
    assert read_resumable_jsonl(path, repair=True) == []
    assert path.read_bytes() == b""


def test_bad_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(A) + "\n\nnot json\n" + json.dumps(B) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: not a JSON object"):
        read_resumable_jsonl(path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3:"):
        read_resumable_jsonl(path, repair=True)
    assert "not json" in path.read_text(encoding="utf-8"), "a bad middle line is never cut silently"


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(COMPLETE.rstrip("\n"), encoding="utf-8")
    assert read_resumable_jsonl(path) == [A, B]


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + COMPLETE.replace("\n", "\r\n").encode() + b"\r\n")
    assert read_resumable_jsonl(path) == [A, B]


@pytest.mark.parametrize(
    "tail", [b'{"id": "c", "x"', b""], ids=["torn-line", "lost-newline"]
)
def test_repair_then_append_stays_valid_jsonl(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "r.jsonl"
    body = COMPLETE.encode() if tail else COMPLETE.rstrip("\n").encode()  # lost-newline: no final "\n"
    path.write_bytes(body + tail)
    assert read_resumable_jsonl(path, repair=True) == [A, B]
    assert path.read_bytes() == COMPLETE.encode()
    c = {"id": "c", "x": None}
    with path.open("a", encoding="utf-8") as f:  # what a resumed run does next
        f.write(json.dumps(c) + "\n")
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [A, B, c]
    assert read_resumable_jsonl(path, repair=True) == [A, B, c]
    assert path.read_bytes() == (COMPLETE + json.dumps(c) + "\n").encode(), "a sound file is not rewritten"


def test_repair_keeps_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = codecs.BOM_UTF8 + COMPLETE.replace("\n", "\r\n").encode()
    path.write_bytes(good + b'{"id"')
    assert read_resumable_jsonl(path, repair=True) == [A, B]
    assert path.read_bytes() == good
