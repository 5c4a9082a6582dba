"""Shared test fixtures: where the shared data (``../shared`` beside the repository) lives."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRM_SHARED_DIR", REPO.parent / "shared"))
PRM800K_SAMPLE = SHARED / "data" / "prm800k_sample.jsonl"
