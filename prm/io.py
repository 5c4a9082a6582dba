"""Crash-safe files: whole files are written to a temporary name and renamed into place, and
JSONL files appended line by line are read back whatever a crash left (:func:`read_resumable_jsonl`)."""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write one JSON document (indented)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Atomically write dicts as JSONL; returns the number written."""
    lines = [json.dumps(rec, ensure_ascii=False) + "\n" for rec in records]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def _decode_object(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, or None when it is not valid UTF-8 JSON or not an object."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return None
    return obj if isinstance(obj, dict) else None


def read_resumable_jsonl(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL file appended one line at a time (results, samples, metrics), as a
    crashed or killed run left it.

    - A missing file, an empty one or one of blank lines only gives ``[]``.
    - Every non-blank line must be one JSON object. Blank lines, CRLF line ends and a UTF-8
      byte-order mark are accepted.
    - The last non-blank line, when it is not a JSON object (a write torn by the crash: cut
      short, even mid-character), is dropped. A complete last object that only lacks its
      newline is kept.
    - Any other line that is not a JSON object raises ``ValueError`` naming ``path:line``
      (1-based): it cannot come from a torn append, so the file is not silently cut.
    - With ``repair``, the file is then cut back to the end of its last complete line (removing
      the torn line) and a missing final newline is added, so that appending afterwards gives
      valid JSONL. Without ``repair`` the file is never written.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    lines = data[bom:].split(b"\n")  # the last piece is b"" or a line without its newline
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    records: list[dict[str, Any]] = []
    start = end = bom  # end: byte offset just past the last record's line
    torn = unterminated = False
    for i, raw in enumerate(lines):
        line_start, start = start, start + len(raw) + 1
        if not raw.strip():
            continue
        obj = _decode_object(raw)
        if obj is None:
            if i == last:
                torn = True
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object, and not the last line (so not a torn "
                             f"write from a crash): fix or delete that line")
        records.append(obj)
        unterminated = i == len(lines) - 1
        end = line_start + len(raw) + (0 if unterminated else 1)
    if repair and (torn or unterminated):
        with path.open("r+b") as f:
            f.truncate(end)
            if unterminated:
                f.seek(end)
                f.write(b"\n")
    return records


def plain_mapping(config: Any) -> dict[str, Any]:
    """A config node (an OmegaConf ``DictConfig``, resolved) or any mapping as a plain ``dict``."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        out = OmegaConf.to_container(config, resolve=True)
        if not isinstance(out, dict):
            raise TypeError(f"expected a mapping config, got {type(out).__name__}")
        return out  # type: ignore[return-value]
    return dict(config)
