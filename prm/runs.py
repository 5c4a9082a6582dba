"""Run directories: cached pipeline stages, resume identities and model fingerprints.

A resumable run (prm-search, a sweep cell, prm-sample) records ``identity.json``: what must not
change between a run and its resumption, including a fingerprint of every model directory it reads
(``model_fingerprint``: config and weights), so a model retrained at the same path never reuses
old results (``check_identity``).


A stage writes its outputs into its own folder and, last, ``stage.json`` with the config it ran
with. A later run with the same config reuses the outputs; a different config (or a stage that
crashed before writing ``stage.json``) runs again. ``begin_stage`` records the config a stage starts
with (``stage.started.json``): an interrupted stage with the same config resumes in place (its
checkpoints), while a folder left by a different config is moved aside first, so a new run never
resumes another config's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prm.io import write_json

IDENTITY = "identity.json"
_EDGE = 1 << 20  # bytes hashed at each end of a large weight file

MARKER = "stage.json"
STARTED = "stage.started.json"


def _recorded_config(path: Path) -> Any:
    try:
        return json.loads(path.read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def begin_stage(stage_dir: str | Path, config: dict[str, Any]) -> Path | None:
    """Prepare ``stage_dir`` for a run with ``config``; returns where a different config's folder went.

    A folder whose finished or started marker records another config is renamed ``<name>.old-<k>``
    (kept, not deleted); one started with this same config is left to resume.
    """
    d = Path(stage_dir)
    wanted = json.loads(json.dumps(config))
    recorded = [c for c in (_recorded_config(d / STARTED), _recorded_config(d / MARKER)) if c is not None]
    moved = None
    if any(c != wanted for c in recorded):
        k = 1
        while d.with_name(f"{d.name}.old-{k}").exists():
            k += 1
        moved = d.rename(d.with_name(f"{d.name}.old-{k}"))
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / STARTED, {"config": wanted})
    return moved


def stage_done(stage_dir: str | Path, config: dict[str, Any]) -> bool:
    """Whether ``stage_dir`` holds a finished stage run with exactly this config."""
    marker = Path(stage_dir) / MARKER
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text())["config"] == json.loads(json.dumps(config))
    except (json.JSONDecodeError, KeyError):
        return False


def mark_stage_done(stage_dir: str | Path, config: dict[str, Any], **info: Any) -> None:
    """Record that the stage finished with this config (call after all its outputs are written)."""
    write_json(Path(stage_dir) / MARKER, {"config": config, **info})


def stage_info(stage_dir: str | Path) -> dict[str, Any]:
    """What ``mark_stage_done`` recorded for a finished stage."""
    return json.loads((Path(stage_dir) / MARKER).read_text())


def cached_stage(stage_dir: str | Path, config: dict[str, Any], run: Callable[[], dict[str, Any]], label: str,
                 what: str = "") -> dict[str, Any]:
    """``run()``'s summary, or the recorded one when ``stage_dir`` finished with exactly ``config``; a folder of
    another config is moved aside first. ``label`` prefixes the messages (e.g. ``"[demo] sft"``); ``what`` says
    what runs. The summary and the wall time are recorded with the config."""
    stage_dir = Path(stage_dir)
    if stage_done(stage_dir, config):
        print(f"{label}: reusing {stage_dir}")
        return stage_info(stage_dir)["summary"]
    moved = begin_stage(stage_dir, config)
    if moved is not None:
        print(f"{label}: its config changed; the previous run was moved to {moved}")
    print(f"{label}: running{f' ({what})' if what else ''} in {stage_dir}")
    t0 = time.perf_counter()
    summary = run()
    mark_stage_done(stage_dir, config, summary=summary, wall_time_s=time.perf_counter() - t0)
    return summary


def model_fingerprint(path: str | Path | None) -> str | None:
    """A short hash of a model directory's contents: its config/format/tokenizer JSON files in full
    and each weight file's size with its first and last MiB (changed weights change both ends of a
    safetensors file in practice; a full hash of a multi-GB checkpoint would cost minutes). None
    for None or a path that is not a directory (a hub name, a model object)."""
    if path is None:
        return None
    d = Path(str(path)).expanduser()
    if not d.is_dir():
        return None
    h = hashlib.blake2b(digest_size=12)
    for f in sorted(d.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        rel = f.relative_to(d).as_posix()
        if f.suffix == ".json" or f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".model", ".txt"):
            size = f.stat().st_size
            h.update(f"{rel}\x1f{size}\x1e".encode())
            with f.open("rb") as fh:
                if size <= 2 * _EDGE:
                    h.update(fh.read())
                else:
                    h.update(fh.read(_EDGE))
                    fh.seek(size - _EDGE)
                    h.update(fh.read(_EDGE))
    return h.hexdigest()


def check_identity(run_dir: str | Path, ident: dict[str, Any], what: str = "results") -> None:
    """Refuse to resume ``run_dir`` when its ``identity.json`` differs from ``ident``; else record ``ident``."""
    path = Path(run_dir) / IDENTITY
    ident = json.loads(json.dumps(ident, default=str))
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        if changed:
            raise ValueError(f"{run_dir} holds results of a different run ({what}; {', '.join(changed)} changed: "
                             f"{ {k: old.get(k) for k in changed} } -> { {k: ident.get(k) for k in changed} }); "
                             f"use another run_dir or delete it")
    write_json(path, ident)
