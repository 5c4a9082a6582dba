"""Hydra launchers that run: a ``prm-search`` multirun through submitit's local launcher, collected by ``prm-sweep``.

The cluster recipe of ``conf/sweep.yaml`` (one job per cell, each a ``prm-search`` run writing
``run_dir/cells/<strategy>-N<n>-s<seed>/``, then ``prm-sweep sweep.mode=collect``) runs here with
``hydra/launcher=submitit_local`` (the same plugin as ``submitit_slurm``, its jobs as local processes): two cells
(best-of-N, N = 1 and 2, PRM-weighted majority as prm-sweep's ``best_of_n`` strategy) on three arithmetic problems
with a tiny untrained policy and the oracle scorer (no PRM). The collected ``sweep.csv`` and compute-optimal table
equal those of ``prm-sweep`` running the same two cells in-process, wall times aside.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from search.sweep import run as sweep_run

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED = ["scorer=oracle", "n_problems=3", "problems_per_call=2", "data.world.max_ops=3", "progress=false"]
KNOBS = {"max_step_tokens": 8, "max_solution_tokens": 16}  # short samples: the untrained policy rambles
CELL = "best_of_n-N${search.n}-s${seed}"  # as prm-sweep names the cells of its best_of_n strategy


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128), seed=0)
    return save_model(model, tok, tmp_path_factory.mktemp("policy") / "policy")


def _sweep(run_dir: Path, *overrides: str) -> dict[str, object]:
    """``prm-sweep <overrides>`` in this process (what its console script does)."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="sweep", overrides=[f"run_dir={run_dir}", *overrides])
    return sweep_run(cfg)


def _rows(path: Path, drop: tuple[str, ...] = ("wall_time_s",)) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _records(cell: Path) -> list[dict[str, object]]:
    recs = [json.loads(line) for line in (cell / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in recs]


@pytest.mark.slow
def test_a_submitit_local_multirun_of_prm_search_collects_into_the_in_process_sweep_table(
        policy: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    inproc = tmp_path / "in_process"
    summary = _sweep(inproc, f"policy={policy}", *SHARED, "sweep.only=[best_of_n]", "sweep.budgets=[1,2]",
                     *(f"sweep.common.{k}={v}" for k, v in KNOBS.items()))
    assert summary["ran"] == ["best_of_n-N1-s0", "best_of_n-N2-s0"]

    root = tmp_path / "multirun_sweep"
    command = [sys.executable, "-m", "search.run", "-m", "hydra/launcher=submitit_local",
               "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1",
               f"hydra.sweep.dir={root}/multirun", f"hydra.sweep.subdir={CELL}", f"run_dir={root}/cells/{CELL}",
               f"policy={policy}", *SHARED, "search=weighted_majority", "search.n=1,2",
               *(f"search.{k}={v}" for k, v in KNOBS.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    cells = sorted(p.name for p in (root / "cells").iterdir())
    assert cells == ["best_of_n-N1-s0", "best_of_n-N2-s0"]
    for cell in cells:  # each job ran in its own submitit process, Hydra's job directory named as its cell
        assert (root / "multirun" / cell / "hydra" / "overrides.yaml").exists()
        assert _records(root / "cells" / cell) == _records(inproc / "cells" / cell)
    assert list((root / "multirun" / ".submitit").glob("*/*_result.pkl"))  # submitit's own results: it ran them

    collected = _sweep(root, "sweep.mode=collect", "policy=null")
    assert collected["cells"] == {"done": 2}
    assert _rows(root / "sweep.csv") == _rows(inproc / "sweep.csv")
    assert _rows(root / "compute_optimal.csv", ()) == _rows(inproc / "compute_optimal.csv", ())
    assert (root / "accuracy_vs_n.png").exists()
