"""The trained policy the search benchmarks run, and the step format it writes.

A policy trained by ``prm-sft`` records its format beside the weights (``step_format.json``);
for older policies the format is read from the SFT run's ``config.yaml`` (``data.format``), and
``ARITH_FORMAT`` (plain, ``# Answer: N``) is the default. Search with the wrong format would parse
a tagged policy's ``<reasoning>`` lines as plain steps, so every benchmark that searches with a
trained policy takes both from here.

Where the policy comes from: an explicit directory, else ``$PRM_BENCH_POLICY``, else the demo's
``runs/demo/sft/model`` when it exists, else None (the benchmark fits or builds its own).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from prm.data.arith import ARITH_FORMAT
from prm.steps import StepFormat, load_step_format
from rl.sft import step_format

DEMO_POLICY = Path(__file__).resolve().parents[1] / "runs" / "demo" / "sft" / "model"


def policy_format(model_dir: str | Path) -> StepFormat:
    """The step format a policy directory writes (see the module docstring)."""
    saved = load_step_format(model_dir)
    if saved is not None:
        return saved
    run_config = Path(model_dir).resolve().parent / "config.yaml"
    if run_config.is_file():
        name = OmegaConf.load(run_config).get("data", {}).get("format")
        if name:
            return step_format(str(name), arith=True)
    return ARITH_FORMAT


def trained_policy(explicit: str | None = None) -> tuple[str | None, StepFormat]:
    """(policy directory or None, its step format); see the module docstring for the search order."""
    path = explicit or os.environ.get("PRM_BENCH_POLICY") or (str(DEMO_POLICY) if DEMO_POLICY.is_dir() else None)
    return path, (policy_format(path) if path else ARITH_FORMAT)
