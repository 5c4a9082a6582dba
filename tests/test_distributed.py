"""Two processes train exactly as one at the same global batch (DDP over gloo on this CPU).

Each entry point runs twice as a subprocess: one process at batch B, and
``accelerate launch --multi_gpu --num_processes 2`` at B/2 per process (on a machine without a GPU
the loop asks accelerate for a CPU process group, so this is the plain DDP path on gloo). The
final weights must agree to float tolerance: the global batch is dealt row by row and each loss
is rescaled by its share of the global count of what it averages (``prm.train.loop``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from prm.io import read_resumable_jsonl

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(module: str, args: list[str], processes: int, timeout: int = 240) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    if processes == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", module, *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _max_difference(a: Path, b: Path) -> tuple[float, float]:
    """(largest absolute difference between the two models' weights, largest weight)."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return (max(float((wa[k] - wb[k]).abs().max()) for k in wa), max(float(wa[k].abs().max()) for k in wa))


def _equal_runs(tmp_path: Path, module: str, args: list[str], batch: int, max_steps: int = 20,
                batch_key: str = "train.batch_size", per_process: bool = True) -> None:
    args = [*args, f"train.max_steps={max_steps}"]
    _launch(module, [f"run_dir={tmp_path / 'one'}", *args, f"{batch_key}={batch}"], 1)
    _launch(module, [f"run_dir={tmp_path / 'two'}", *args, f"{batch_key}={batch // 2 if per_process else batch}"], 2)
    diff, scale = _max_difference(tmp_path / "one" / "model", tmp_path / "two" / "model")
    assert diff < 1e-4 * max(1.0, scale), f"2 processes moved the weights by {diff:g} from 1 process"
    # the processes shared the work out: together they saw as many tokens as the one process (not twice as many)
    tokens = [[r["tokens"] for r in read_resumable_jsonl(tmp_path / side / "metrics.jsonl") if "tokens" in r][-1]
              for side in ("one", "two")]
    assert tokens[0] == tokens[1] > 0
    # both really trained to the last step (runs that never stepped would agree too)
    for side in ("one", "two"):
        steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / side / "checkpoints").glob("step-*"))
        assert steps and steps[-1] == max_steps


COMMON = ["train.warmup_steps=2", "train.eval_every=0", "train.save_every=0", "train.progress=false",
          "train.max_time_s=null"]


def test_prm_train_on_two_processes_equals_one(tmp_path: Path) -> None:
    # 285 training examples at a global batch of 16: the epoch's last batch (13) is dealt unevenly too
    _equal_runs(tmp_path, "prm.prm_train", ["data=arith", "data.n_problems=300", *COMMON], 16)


@pytest.mark.slow
def test_sft_on_two_processes_equals_one(tmp_path: Path) -> None:
    _equal_runs(tmp_path, "rl.sft", ["data.n_problems=300", "train.max_steps=20", "eval_problems=0", *COMMON], 16)



@pytest.mark.slow
def test_rl_on_two_processes_equals_one(tmp_path: Path) -> None:
    """prm-rl: each process samples its share of a rollout's prompts, each prompt with its own seed, so the two
    processes together draw exactly the samples one process draws (``rl.prompts_per_step`` is global)."""
    from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model

    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=96), seed=0)
    policy = save_model(model, tok, tmp_path / "policy")
    args = [f"policy={policy}", "rl.n_train_problems=200", "rl.group_size=4", "rl.max_new_tokens=24",
            "monitor.n_problems=4", "monitor.samples=2", "train.save_every=0", "train.eval_every=0",
            "train.progress=false", "train.lr=1e-2", "rl.ppo_epochs=2", "~reward.outcome",
            "+reward.digits={_target_: rl.rewards.FunctionReward, function: test_grpo.digit_share, weight: 1.0}"]
    _equal_runs(tmp_path, "rl.grpo", args, 4, max_steps=4, batch_key="rl.prompts_per_step", per_process=False)
    trained = load_file(tmp_path / "one" / "model" / "model.safetensors")
    start = load_file(policy / "model.safetensors")
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 1e-3  # RL moved the policy
