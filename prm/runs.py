"""Run directories: cached pipeline stages that are redone only when their config changed.

A stage writes its outputs into its own folder and, last, ``stage.json`` with the config it ran
with. A later run with the same config reuses the outputs; a different config (or a stage that
crashed before writing ``stage.json``) runs again. ``begin_stage`` records the config a stage starts
with (``stage.started.json``): an interrupted stage with the same config resumes in place (its
checkpoints), while a folder left by a different config is moved aside first, so a new run never
resumes another config's checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prm.io import write_json

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
