"""Run directories: cached pipeline stages that are redone only when their config changed.

A stage writes its outputs into its own folder and, last, ``stage.json`` with the config it ran
with. A later run with the same config reuses the outputs; a different config (or a stage that
crashed before writing ``stage.json``) runs again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prm.io import write_json

MARKER = "stage.json"


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
