"""``prm-rl``: GRPO-family RL of a policy with outcome, format and dense per-step (PRM) rewards.

Reads top to bottom (``run``):

1. the world (``data``), its training problems (``rl.n_train_problems``, never a held-out one)
   and the monitor's held-out problems;
2. the policy (``policy``: the SFT model directory) and, with a KL penalty, a frozen copy as the
   reference (none when ``rl.kl_coef`` is 0);
3. the rewards (``reward``: named graders with weights, ``rl.rewards``); the PRM scorer
   (``scorer``) is loaded only when a grader or the monitor needs it;
4. the batch source (``rl.rollouts.RolloutSource``: G samples per prompt from the live policy,
   rewards, advantages) and the loss (``grpo_loss``: PPO's clipped surrogate, optionally a k3
   KL penalty to the reference; entropy logged);
5. the shared training loop (``prm.train.loop``: accelerate, checkpoints with the rollout state,
   exact resume, metrics.jsonl, W&B offline) with the monitor (``rl.monitor``) as its evaluation
   every ``train.eval_every`` steps: held-out true accuracy, exact process correctness and the
   PRM's reward side by side;
6. ``summary.json`` and ``monitor.png`` (PRM reward and true accuracy against step).

With ``rl.prm_refresh.enabled`` the PRM trains further on the policy's own samples every
``every`` rollout batches (``rl.prm_refresh``; DeepSeekMath's iterative RL), its compute logged.

    prm-rl policy=runs/sft/model                                   # outcome GRPO
    prm-rl policy=runs/sft/model reward=prm scorer.model_or_path=runs/prm/model
    prm-rl policy=runs/sft/model reward=prm rl.advantage.process=min   # PURE's min-form credit
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prm.io import atomic_write_text, read_resumable_jsonl, write_json
from prm.models.loading import load_causal_lm, parameter_count
from prm.scoring.base import Scorer
from prm.worlds import make_world
from prm.train.loop import LOSS_WEIGHT, Callback, TrainConfig, train
from rl.losses import aggregate, clipped_policy_loss, entropy_from_logits, kl_penalty, token_logprobs
from rl.monitor import Monitor
from rl.prm_refresh import PRMRefresh
from rl.rewards import make_rewards
from rl.rollouts import AdvantageConfig, RolloutConfig, RolloutSource, metrics_of, policy_logits

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


class RLConfigError(ValueError):
    """A config value prm-rl cannot use; the message names the key."""


def grpo_loss(clip_low: float, clip_high: float, kl_coef: float, aggregation: str,  # type: ignore[no-untyped-def]
              splits: int = 1):
    """The loss of one rollout batch: clipped surrogate (+ kl_coef x k3 KL); entropy and stats logged. ``splits``:
    the forward in pieces of neighbouring lengths (``policy_logits``; the same loss, less padding)."""

    def loss_fn(model: torch.nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        ids, attn = batch["input_ids"], batch["attention_mask"]
        logits = policy_logits(model, ids, attn, splits)[:, :-1]
        logp = token_logprobs(logits, ids[:, 1:])
        mask = batch["completion_mask"][:, 1:]
        old = batch["old_logprobs"][:, 1:] if "old_logprobs" in batch else logp.detach()  # one pass: ratio 1
        loss, stats = clipped_policy_loss(logp, old, batch["advantages"][:, 1:], mask,
                                          clip_low=clip_low, clip_high=clip_high, aggregation=aggregation)  # type: ignore[arg-type]
        metrics: dict[str, Any] = {**stats, **metrics_of(batch)}
        if kl_coef:
            kl = kl_penalty(logp, batch["ref_logprobs"][:, 1:], mask, aggregation=aggregation)  # type: ignore[arg-type]
            loss = loss + kl_coef * kl
            metrics["kl"] = kl.detach()
        with torch.no_grad():
            metrics["entropy"] = aggregate(entropy_from_logits(logits.detach()), mask, "token")
            metrics[LOSS_WEIGHT] = mask.sum() if aggregation == "token" else (mask.sum(-1) > 0).sum()
        return loss, metrics

    return loss_fn


def make_scorer_factory(cfg: DictConfig):  # type: ignore[no-untyped-def]
    """A factory of the configured scorer (the PRM), called only when a reward or the monitor needs it."""
    made: list[Scorer] = []

    def factory() -> Scorer:
        if not made:
            if cfg.scorer.get("model_or_path") is None and str(cfg.scorer.get("_target_", "")).endswith("PRMScorer"):
                raise RLConfigError("a process reward needs its PRM: set scorer.model_or_path=<PRM directory>")
            made.append(instantiate(cfg.scorer, _convert_="all"))
        return made[0]

    return factory, made


def plot_monitor(run_dir: Path) -> Path | None:
    """PRM reward and true held-out accuracy against step (from metrics.jsonl)."""
    rows = [r for r in read_resumable_jsonl(run_dir / "metrics.jsonl") if "eval/sampled_accuracy" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in rows]
    for key, label in (("eval/greedy_accuracy", "true accuracy (greedy)"),
                       ("eval/sampled_accuracy", "true accuracy (sampled)"),
                       ("eval/process_correct", "every step right (sampled)"),
                       ("eval/prm_reward", "PRM reward (sampled)")):
        if key in rows[0]:
            ax.plot(steps, [r.get(key) for r in rows], marker="o", label=label)
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("held-out: true accuracy vs the PRM's reward")
    path = run_dir / "monitor.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: DictConfig, *, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Everything ``prm-rl`` does, callable in-process; returns the summary it writes."""
    OmegaConf.set_struct(cfg, True)
    run_dir = Path(cfg.run_dir)
    r = cfg.rl
    try:
        train_cfg = TrainConfig.from_dict(OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
        rollout = RolloutConfig(prompts_per_step=int(r.prompts_per_step), group_size=int(r.group_size),
                                temperature=float(r.temperature), top_p=float(r.top_p),
                                max_new_tokens=int(r.max_new_tokens), ppo_epochs=int(r.ppo_epochs), seed=int(r.seed),
                                splits=int(r.splits))
        advantage = AdvantageConfig(**OmegaConf.to_container(r.advantage, resolve=True))  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise RLConfigError(f"rl/train: {e}") from e
    if rollout.group_size < 2:
        print("[rl] warning: rl.group_size=1 gives every sample a zero group-normalised advantage: nothing is learned")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    world = make_world(cfg.data)
    train_draw = world.problems("train", int(r.n_train_problems), int(r.problem_seed))
    held_out = world.problems("test", int(cfg.monitor.n_problems), int(cfg.monitor.problem_seed))
    print(f"[rl] training problems: {train_draw.report()}; held-out: {held_out.report()}")

    model, tok = load_causal_lm(str(cfg.policy))
    print(f"[rl] policy {cfg.policy}: {parameter_count(model):,} parameters")
    ref = None
    if float(r.kl_coef) > 0:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)

    factory, made = make_scorer_factory(cfg)
    rewards = make_rewards(cfg.reward, world=world, scorer=factory)
    print("[rl] rewards: " + ", ".join(f"{rw.name} ({rw.kind}, weight {w:g})" for rw, w in rewards))
    kinds = {rw.kind for rw, _ in rewards}
    if advantage.process.startswith("baseline") and kinds != {"outcome", "process"}:
        raise RLConfigError(f"rl.advantage.process={advantage.process} uses a process reward (the PRM) as the baseline of an "
                            f"outcome reward: the reward config needs both (got {sorted(kinds)})")
    monitor_scorer = factory() if (made or cfg.monitor.prm) and cfg.scorer.get("model_or_path") else None
    refresh = None
    if cfg.rl.prm_refresh.enabled and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RLConfigError("rl.prm_refresh runs in one process (each process would refresh its own PRM on its own "
                            "share of the rollouts); launch prm-rl without accelerate for the refresh")
    if cfg.rl.prm_refresh.enabled:
        knobs = {k: v for k, v in OmegaConf.to_container(cfg.rl.prm_refresh, resolve=True).items() if k != "enabled"}  # type: ignore[union-attr]
        try:
            refresh = PRMRefresh(factory(), world, **knobs, seed=int(r.seed))
        except (TypeError, ValueError) as e:
            raise RLConfigError(str(e)) from e
        monitor_scorer = refresh.scorer  # the monitor reads the refreshed PRM too
    make_engine = None
    if str(r.get("generator", "hf")) == "vllm":  # a vLLM engine samples; the new weights are loaded before each rollout
        from search.generation.vllm_backend import VLLMGenerator

        vllm_kwargs = OmegaConf.to_container(r.vllm, resolve=True) if r.get("vllm") else {}
        make_engine = lambda: VLLMGenerator(model_path=str(cfg.policy), **vllm_kwargs)  # type: ignore[arg-type]  # noqa: E731
    elif str(r.get("generator", "hf")) != "hf":
        raise RLConfigError(f"rl.generator must be hf or vllm (got {r.generator!r})")
    source = RolloutSource(world, train_draw.tasks, tok, rewards, rollout, advantage, ref_model=ref, refresh=refresh,
                           make_engine=make_engine)
    monitor = Monitor(world, held_out.tasks, tok, monitor_scorer, samples=int(cfg.monitor.samples),
                      temperature=rollout.temperature, max_new_tokens=rollout.max_new_tokens,
                      seed=int(cfg.monitor.seed))

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    result = train(
        model, grpo_loss(float(r.clip_low), float(r.clip_high), float(r.kl_coef), str(r.aggregation),
                         splits=rollout.splits), source,
        train_cfg, run_dir=run_dir, tokenizer=tok, evaluate=monitor, eval_at_start=True,
        logger_cfg=OmegaConf.to_container(cfg.logger, resolve=True),  # type: ignore[arg-type]
        run_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        callbacks=callbacks,
    )
    history = [row for row in read_resumable_jsonl(run_dir / "metrics.jsonl") if "eval/sampled_accuracy" in row]
    plot = plot_monitor(run_dir)
    summary: dict[str, Any] = {
        "step": result.step, "stopped_by": result.stopped_by, "elapsed_s": round(result.elapsed_s, 1),
        "rewards": {rw.name: {"kind": rw.kind, "weight": w} for rw, w in rewards},
        "advantage": OmegaConf.to_container(r.advantage, resolve=True),
        "monitor": [{k.removeprefix("eval/"): v for k, v in row.items() if k == "step" or k.startswith("eval/")}
                    for row in history],
        "model_dir": str(result.model_dir), "plot": str(plot) if plot else None,
    }
    write_json(run_dir / "summary.json", summary)
    first, last = (summary["monitor"][0], summary["monitor"][-1]) if summary["monitor"] else ({}, {})
    print(f"[rl] step {result.step}: held-out greedy accuracy {first.get('greedy_accuracy')} -> "
          f"{last.get('greedy_accuracy')}, sampled {first.get('sampled_accuracy')} -> {last.get('sampled_accuracy')}"
          + (f", PRM reward {first.get('prm_reward')} -> {last.get('prm_reward')}" if "prm_reward" in last else ""))
    print(f"[rl] summary in {run_dir / 'summary.json'}")
    return json.loads(json.dumps(summary, default=str))


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="rl")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except RLConfigError as e:
        print(f"prm-rl: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
