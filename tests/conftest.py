"""Shared test fixtures: where the shared data (``../shared`` beside the repository) lives; one torch thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRM_SHARED_DIR", REPO.parent / "shared"))
PRM800K_SAMPLE = SHARED / "data" / "prm800k_sample.jsonl"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run no slower on one thread, and far faster when other jobs share the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
