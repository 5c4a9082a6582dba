"""``prm-demo`` end to end on a tiny setting: every stage runs, the report is written, a re-run reuses everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

TINY = [
    "stages.sft=['data.n_problems=300','train.max_steps=30','train.max_time_s=null','model.n_layer=1',"
    "'model.n_embd=32','model.n_head=2','eval_problems=10','train.eval_every=0','train.save_every=0']",
    "stages.prm_data=['split=train','n_problems=12','k=2','greedy=false','problem_seed=2000']",
    "stages.test=['n_problems=8','k=4','problem_seed=1000']",
    "stages.mc_labels=['split=train','n_problems=4','k=2','greedy=false','problem_seed=5000','labeller=mc','mc.k=2']",
    "stages.prm=['train.max_steps=10','train.max_time_s=null','train.eval_every=0','train.save_every=0']",
    "stages.sweep=['n_problems=4','sweep.max_n=4','problems_per_call=4','sweep.strategies.dvts.m=2',"
    "'sweep.strategies.beam.m=2']",
    "stages.distill_search=['search=weighted_majority','search.n=2']",
    "stages.distill_train=['split=train','n_problems=6','problem_seed=3000']",
    "stages.distill=['+experiment=distill_rounds','sft.train.max_steps=2','sft.train.warmup_steps=0',"
    "'filter=none']",
    "stages.distill_eval=['split=test','n_problems=4','problem_seed=1000']",
    "stages.rl_common=['train.max_steps=2','train.eval_every=2','train.save_every=0','monitor.n_problems=4',"
    "'monitor.samples=2','rl.prompts_per_step=2','rl.group_size=2','rl.n_train_problems=20','train.progress=false']",
]


def _demo(run_dir: Path, *extra: str, tiny: list[str] = TINY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl.demo", f"run_dir={run_dir}", *tiny, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_runs_every_stage_then_reuses_them(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    first = _demo(run)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (run / "report.md").read_text()
    import json  # the demo's default format: chain of thought in reasoning tags, in every stage

    assert json.loads((run / "test" / "stage.json").read_text())["config"]["data"]["format"] == "tagged"
    for section in ("## Policy", "## PRM", "## Search sweep", "| majority@4 |", "within-problem AUROC",
                    "| policy likelihood |", "### What each scorer catches", "| (right steps) |",
                    "## RL from the SFT policy", "| rl_prm_only | 2 |", "oracle (exact labels) (min, N=4)",
                    "### Monte-Carlo step labels against the exact labels",
                    "## Distillation: search back into the policy", "wall / best-of-N's |"):
        assert section in report
    assert (run / "sweep" / "sweep.csv").exists() and (run / "prm" / "model" / "config.json").exists()
    second = _demo(run)
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("sft", "prm_data", "test", "prm", "eval_prm", "eval_oracle", "eval_likelihood", "mc_labels", "sweep",
                  "distill_teacher", "distill", "rl_outcome", "rl_prm_only", "rl_prm_min"):
        assert f"[demo] {stage}: reusing" in second.stdout
    # a retrained PRM (same path, new config) re-runs what reads it, moves the old run aside, reuses the rest
    third = _demo(run, tiny=[t.replace("train.max_steps=10", "train.max_steps=11") for t in TINY])
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"[demo] prm: its config changed; the previous run was moved to {run / 'prm.old-1'}" in third.stdout
    for stage in ("prm", "eval_prm", "sweep", "rl_prm_only"):
        assert f"[demo] {stage}: running" in third.stdout, stage
    for stage in ("sft", "prm_data", "test", "eval_oracle", "eval_likelihood"):
        assert f"[demo] {stage}: reusing" in third.stdout, stage
    typo = _demo(run, "stages.nope=[]")
    assert typo.returncode != 0 and "nope" in typo.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_runs_in_the_plain_format_too(tmp_path: Path) -> None:
    """The demo's default is the tagged format; ``data.format=plain`` reaches every stage: the policy, its samples, the
    PRM's saved format, search and RL."""
    import json

    run = tmp_path / "plain"
    done = _demo(run, "data.format=plain")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "prm" / "model" / "step_format.json").read_text())["style"] == "plain"
    cfg = json.loads((run / "test" / "stage.json").read_text())["config"]
    assert cfg["data"]["format"] == "plain"
    record = json.loads((run / "sweep" / "cells" / "beam-N4-s0" / "results.jsonl").read_text().splitlines()[0])
    assert not any("<reasoning>" in c["text"] for c in record["candidates"])
    assert json.loads((run / "rl_outcome" / "stage.json").read_text())["config"]["data"]["format"] == "plain"
