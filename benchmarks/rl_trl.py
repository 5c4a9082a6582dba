"""``prm-rl`` against TRL's ``GRPOTrainer``: outcome GRPO on the same policy, prompts and knobs, in one run.

Workload (issue 10): the arithmetic world's training problems (``prm.worlds.make_world`` with the
``rl`` config's ``data``, ``world.problems("train", ...)``), each prompt exactly as prm-rl builds it
(``prm.steps.policy_prompt``), the outcome reward (the world's grade; for TRL
``rl.rewards.as_trl_reward(OutcomeReward(world))``), ``--prompts-per-step`` x ``--group-size``
completions per optimizer step at temperature 1 (top-p 1, no top-k), ``--max-new-tokens``, a
constant ``--lr`` without warm-up, AdamW betas (0.9, 0.95), eps 1e-8, no weight decay, gradient
clipping 1.0, no KL (beta 0), one optimisation pass per rollout batch (ratio 1), group-normalised
advantages ``(r - mean) / (unbiased std + 1e-4)`` in both, the loss averaged over all completion
tokens of the batch (prm-rl ``rl.aggregation=token``; TRL ``loss_type="dapo"``, which with one
process and one micro-batch per step is the same mean), fp32 on CPU, ``--steps`` optimizer steps.

Two policies, each trained once with the project's SFT and cached under ``--out/policies``:

- ``gpt2``: ``prm-sft``'s tiny GPT-2 (``conf/model/tiny_gpt.yaml``: absolute position embeddings);
- ``llama``: a freshly initialised tiny ``LlamaForCausalLM`` of about the same size (rotary
  positions; the project's character tokenizer) saved with ``save_pretrained`` and trained by
  ``prm-sft model=hf_local model.path=DIR model.dtype=fp32`` with the same SFT knobs.

Why both (``shared/notes/rl-calibration.md``): TRL computes the training log-probs of left-padded
prompt+completion batches without position ids, so a model with absolute position embeddings is
trained on shifted positions; a rotary model only sees relative positions.

Runs: prm-rl in-process (``rl.grpo.run`` on a composed Hydra ``rl`` config, run directory under
``--out/rl``; its own monitor shrunk to one problem, since both frameworks are evaluated alike
afterwards), then TRL's ``GRPOTrainer`` (``use_vllm=False``, no logging, saving or reporting) on a
``datasets.Dataset`` of the same training problems (a ``prompt`` column of plain strings).

Columns: ``s/step`` is the mean wall time of optimizer steps 2..N (generation, grading,
log-probs, backward, optimizer), from the training loop's own clock for prm-rl (``elapsed_s`` after
each step, via a loop callback) and from a ``TrainerCallback.on_step_end`` clock for TRL; step 1
(warm-up, and prm-rl's start-of-run monitor) and all evaluation are outside it. ``speed`` is TRL's
s/step over prm-rl's (above 1: prm-rl is faster). Accuracies come AFTER training from the same call
for both final policies (``rl.monitor.Monitor``, no PRM, on ``--eval-problems`` held-out problems,
greedy and ``--eval-samples`` samples at temperature 1 with a fixed seed), each with a 95% bootstrap
interval over problems (``prm.evaluation.metrics.bootstrap_ci`` inside the monitor); ``start`` is
the SFT policy's greedy accuracy, measured the same way.

TRL is for this benchmark only, never a project dependency::

    pip install --no-deps "trl==1.13.0"
    OMP_NUM_THREADS=1 python benchmarks/rl_trl.py --quick
    OMP_NUM_THREADS=1 python benchmarks/rl_trl.py            # 50 steps x 16 prompts x 8, ~11 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from prm.models.loading import load_causal_lm, parameter_count, save_model
from prm.models.tokenizer import build_char_tokenizer
from prm.steps import policy_prompt
from prm.worlds import Task, World, make_world
from rl import grpo, sft
from rl.monitor import Monitor
from rl.rewards import OutcomeReward, as_trl_reward

CONF_DIR = grpo.CONF_DIR
POLICIES = ("gpt2", "llama")
QUICK = {"steps": 5, "prompts_per_step": 8, "group_size": 4, "eval_problems": 100, "eval_samples": 2}
DEFAULTS = {"steps": 50, "prompts_per_step": 16, "group_size": 8, "eval_problems": 300, "eval_samples": 4,
            "sft_steps": 400}


@dataclass
class Trained:
    """One framework's RL run: the final policy and the wall time after each optimizer step."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    step_ends: list[float]  # seconds since a fixed origin, one per optimizer step

    def seconds_per_step(self) -> float:
        """Mean wall time of steps 2..N (step 1 carries warm-up and, for prm-rl, the start monitor)."""
        ends = self.step_ends
        if len(ends) < 2:
            return float("nan")
        return (ends[-1] - ends[0]) / (len(ends) - 1)


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """Swallow stdout/stderr and warnings of a framework unless ``--verbose``."""
    if verbose:
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def compose_cfg(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """A project config (``conf/<config_name>.yaml``) composed with Hydra overrides, as the tests do."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


# ---------------------------------------------------------------- policies (SFT, cached)


def llama_init(path: Path, seed: int) -> Path:
    """A freshly initialised tiny Llama (rotary) sized like the tiny GPT-2, with the character tokenizer."""
    if (path / "config.json").exists():
        return path
    tok = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return save_model(model, tok, path)


def policy_dir(name: str, args: argparse.Namespace) -> Path:
    """The SFT policy ``name`` (``gpt2`` or ``llama``), trained by ``prm-sft`` unless cached."""
    root = Path(args.out) / "policies"
    run_dir = root / f"{name}-sft{args.sft_steps}"
    if (run_dir / "summary.json").exists() and (run_dir / "model" / "config.json").exists():
        return run_dir / "model"
    model = [] if name == "gpt2" else ["model=hf_local", f"model.path={llama_init(root / 'llama-init', args.seed)}",
                                       "model.dtype=fp32"]
    cfg = compose_cfg("sft", [*model, f"run_dir={run_dir}", f"threads={args.threads}", f"seed={args.seed}",
                              f"train.max_steps={args.sft_steps}", "train.max_time_s=null", "train.progress=false",
                              "train.save_every=0", "train.eval_every=0"])
    print(f"[bench] training the {name} policy with prm-sft ({args.sft_steps} steps, cached in {run_dir}) ...")
    with quiet(args.verbose):
        summary = sft.run(cfg)
    print(f"[bench] {name} policy: SFT greedy accuracy {summary.get('greedy_accuracy')} "
          f"({summary.get('n_eval_problems')} problems), {summary['elapsed_s']} s")
    return run_dir / "model"


# ---------------------------------------------------------------- prm-rl


def rl_overrides(args: argparse.Namespace, policy: Path, run_dir: Path) -> list[str]:
    """The ``rl`` config of the benchmark (the TRL side copies these knobs)."""
    return [
        f"policy={policy}", f"run_dir={run_dir}", f"threads={args.threads}", "reward=outcome",
        f"rl.prompts_per_step={args.prompts_per_step}", f"rl.group_size={args.group_size}", "rl.temperature=1.0",
        "rl.top_p=1.0", f"rl.max_new_tokens={args.max_new_tokens}", "rl.ppo_epochs=1", "rl.kl_coef=0.0",
        "rl.aggregation=token", "rl.advantage.outcome=grpo", f"rl.seed={args.seed}",
        f"rl.n_train_problems={args.train_problems}",
        "monitor.n_problems=1", "monitor.samples=1", "monitor.prm=false",  # evaluated after training, as TRL's
        f"train.lr={args.lr}", "train.schedule=constant", "train.warmup_steps=0", "train.weight_decay=0.0",
        "train.betas=[0.9,0.95]", "train.eps=1e-8", "train.max_grad_norm=1.0", "train.grad_accum=1",
        f"train.max_steps={args.steps}", "train.eval_every=0", "train.save_every=0", f"train.log_every={args.steps}",
        f"train.seed={args.seed}", "train.max_time_s=null", "train.progress=false", "train.mixed_precision=no",
    ]


def run_prm_rl(args: argparse.Namespace, policy: Path, run_dir: Path) -> Trained:
    """``rl.grpo.run`` in-process on a fresh run directory; the loop's clock after each step."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a finished run would be skipped
    cfg = compose_cfg("rl", rl_overrides(args, policy, run_dir))
    ends: list[float] = []

    def on_step(state: Any, row: dict[str, float]) -> None:
        ends.append(float(state.elapsed_s))  # set right after optimizer.step(), before any evaluation

    with quiet(args.verbose):
        summary = grpo.run(cfg, callbacks=[on_step])
        model, tok = load_causal_lm(summary["model_dir"])
    return Trained(model, tok, ends)


# ---------------------------------------------------------------- TRL


def import_trl() -> Any:
    """The ``trl`` module, or exit with the install line (TRL is never a project dependency)."""
    try:
        import trl
    except ImportError:
        sys.exit('TRL is not installed: pip install --no-deps "trl==1.13.0"')
    return trl


def step_clock(ends: list[float]) -> Any:
    """A ``TrainerCallback`` appending ``time.perf_counter()`` at every optimizer step's end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_end(self, *a: Any, **kw: Any) -> None:
            ends.append(time.perf_counter())

    return StepClock()


def trl_config(args: argparse.Namespace, output_dir: Path) -> Any:
    """``GRPOConfig`` with prm-rl's knobs: one optimizer step = one generation batch of P x G completions."""
    trl = import_trl()
    batch = args.prompts_per_step * args.group_size
    return trl.GRPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=args.group_size, generation_batch_size=batch, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
        beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=False, max_steps=args.steps, use_vllm=False, bf16=False, fp16=False,
        use_cpu=True, report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        log_completions=False, seed=args.seed, data_seed=args.seed, dataloader_num_workers=0,
    )


def run_trl(args: argparse.Namespace, policy: Path, world: World, tasks: Sequence[Task], output_dir: Path) -> Trained:
    """TRL's ``GRPOTrainer`` on the same policy, prompts and reward; a clock after each optimizer step."""
    trl = import_trl()
    from datasets import Dataset

    dataset = Dataset.from_dict({"prompt": [policy_prompt(t.prompt, world.fmt) for t in tasks]})
    ends: list[float] = []
    with quiet(args.verbose):
        model, tok = load_causal_lm(str(policy))  # the loader prm-rl uses (fp32)
        trainer = trl.GRPOTrainer(model=model, reward_funcs=[as_trl_reward(OutcomeReward(world), world)],
                                  args=trl_config(args, output_dir), train_dataset=dataset, processing_class=tok,
                                  callbacks=[step_clock(ends)])
        trainer.train()
    model = trainer.model.eval()
    return Trained(model, tok, ends)


# ---------------------------------------------------------------- evaluation and table


def evaluate(model: PreTrainedModel, tok: PreTrainedTokenizerBase, monitor_of: Any) -> dict[str, float]:
    """The project's held-out monitor (no PRM) on a policy, in eval mode: the same call for both frameworks."""
    was = model.training
    model.eval()
    out = monitor_of(tok)(model)
    model.train(was)
    return out


def fmt_ci(row: dict[str, Any], key: str) -> str:
    """``value [lo, hi]`` of a monitor metric."""
    return f"{row[key]:.3f} [{row[key + '_lo']:.3f}, {row[key + '_hi']:.3f}]"


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nsettings: {args.steps} steps x {args.prompts_per_step} prompts x {args.group_size} samples, "
          f"max new tokens {args.max_new_tokens}, lr {args.lr:g} constant, beta 0, 1 iteration, "
          f"{args.threads} thread(s), seed {args.seed}; eval: {args.eval_problems} held-out problems, greedy and "
          f"{args.eval_samples} samples at T=1; 95% bootstrap CI over problems")
    head = ("policy", "framework", "s/step", "speed (TRL/ours)", "start greedy", "greedy acc [95% CI]",
            "sampled acc [95% CI]", "tokens/completion")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (r["policy"], r["framework"], f"{r['s_per_step']:.3f}", f"{r['speed_vs_trl']:.2f}x",
                 f"{r['start_greedy_accuracy']:.3f}", fmt_ci(r, "greedy_accuracy"), fmt_ci(r, "sampled_accuracy"),
                 f"{r['completion_tokens']:.1f}")
        print("| " + " | ".join(cells) + " |")


def compare(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both frameworks on policy ``name``: two table rows."""
    policy = policy_dir(name, args)
    cfg = compose_cfg("rl", rl_overrides(args, policy, Path(args.out) / "rl" / name))
    world = make_world(cfg.data)
    train_tasks = world.problems("train", int(cfg.rl.n_train_problems), int(cfg.rl.problem_seed)).tasks
    held_out = world.problems("test", args.eval_problems, int(cfg.monitor.problem_seed)).tasks

    def monitor_of(tok: PreTrainedTokenizerBase) -> Monitor:
        return Monitor(world, held_out, tok, None, samples=args.eval_samples, temperature=1.0,
                       max_new_tokens=args.max_new_tokens, seed=args.seed)

    with quiet(args.verbose):
        start_model, start_tok = load_causal_lm(str(policy))
    print(f"[bench] {name}: {parameter_count(start_model):,} parameters ({type(start_model).__name__}), "
          f"{len(train_tasks)} training problems, {len(held_out)} held-out")
    start = evaluate(start_model, start_tok, monitor_of)
    results: dict[str, Trained] = {}
    call_s: dict[str, float] = {}
    for framework in ("prm-rl", "trl"):
        t0 = time.perf_counter()
        if framework == "prm-rl":
            results[framework] = run_prm_rl(args, policy, Path(args.out) / "rl" / name)
        else:
            results[framework] = run_trl(args, policy, world, train_tasks, Path(args.out) / "trl" / name)
        call_s[framework] = time.perf_counter() - t0
        print(f"[bench] {name} {framework}: {len(results[framework].step_ends)} steps, "
              f"{results[framework].seconds_per_step():.3f} s/step, whole call {call_s[framework]:.1f} s")
    ours = results["prm-rl"].seconds_per_step()
    rows: list[dict[str, Any]] = []
    for framework, trained in results.items():
        acc = evaluate(trained.model, trained.tokenizer, monitor_of)
        rows.append({
            "policy": name, "framework": framework, "steps": len(trained.step_ends),
            "s_per_step": trained.seconds_per_step(), "call_s": call_s[framework],
            "speed_vs_trl": results["trl"].seconds_per_step() / ours,
            "start_greedy_accuracy": start["greedy_accuracy"],
            **{k: acc[k] for k in ("greedy_accuracy", "greedy_accuracy_lo", "greedy_accuracy_hi", "sampled_accuracy",
                                   "sampled_accuracy_lo", "sampled_accuracy_hi", "completion_tokens")},
        })
    return rows


# ---------------------------------------------------------------- entry points


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; unset sizes come from ``DEFAULTS`` (or ``QUICK`` with ``--quick``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK} unless given")
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULTS['steps']})")
    p.add_argument("--prompts-per-step", type=int, help=f"default {DEFAULTS['prompts_per_step']}")
    p.add_argument("--group-size", type=int, help=f"completions per prompt (default {DEFAULTS['group_size']})")
    p.add_argument("--eval-problems", type=int, help=f"held-out problems (default {DEFAULTS['eval_problems']})")
    p.add_argument("--eval-samples", type=int, help=f"sampled completions per problem (default "
                                                    f"{DEFAULTS['eval_samples']})")
    p.add_argument("--sft-steps", type=int, help=f"prm-sft steps of each policy, cached per value (default "
                                                 f"{DEFAULTS['sft_steps']}, also with --quick)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-4, help="constant (default: %(default)s)")
    p.add_argument("--train-problems", type=int, default=20000,
                   help="the pool prompts are drawn from (both; default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="(default: both)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--out", default="runs/bench_rl_trl",
                   help="cached policies and run directories (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="show the frameworks' own output")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run(quick: bool, argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every comparison of the command line ``argv`` (``--quick`` added when ``quick``); the table rows."""
    args = parse_args([*(argv or []), *(["--quick"] if quick else [])])
    import_trl()
    torch.set_num_threads(args.threads)
    rows = [row for name in args.policies for row in compare(name, args)]
    print_table(rows, args)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    run("--quick" in argv, [a for a in argv if a != "--quick"])


if __name__ == "__main__":
    main()
