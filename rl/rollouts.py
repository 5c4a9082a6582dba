"""RL rollouts as a batch source for the training loop: prompts, samples, rewards, advantages.

``RolloutSource`` implements ``prm.train.loop.BatchSource``. Every ``ppo_epochs`` optimizer steps
it draws ``prompts_per_step`` training problems of the world (a seeded draw per rollout), samples
``group_size`` completions of each from the LIVE policy through the ``Generator`` protocol, grades
them with the configured rewards and turns the rewards into per-token advantages
(``rl.advantages``); the same batch then serves ``ppo_epochs`` optimisation passes (PPO's clipped
surrogate; one pass = plain policy gradient).

How rewards become advantages (``AdvantageConfig``): rewards of one kind are combined by their
weights (outcome: a weighted mean of the scalar graders; process: a weighted mean of the step
graders), each kind is normalised within its group (outcome: GRPO, Dr. GRPO or RLOO; process:
DeepSeekMath's summed credit or PURE's min-form credit), and the token advantage is
``W_outcome * A_outcome + W_process * A_process`` with ``W_kind`` the sum of that kind's weights.
``process=baseline`` (with ``outcome=dr_grpo``) uses the process scores as a critic instead of a
reward: ``A_process`` moves the outcome's baseline from the group mean towards the score after
the previous step (``rl.advantages.baseline_advantages``; ``baseline_centred``: by the score's
difference from the group's mean score at the same depth, the PRM's ranking only).
A sample that a grader could not grade (None/NaN) is masked out of the loss.

Step rewards sit on each step's last token, found with ``prm.steps.step_end_chars`` on the
policy's own sampled tokens (``token_char_ends`` maps every sampled token to the characters it
decodes to, so BPE tokens that cross a step boundary are handled).

With ``refresh`` (``rl.prm_refresh.PRMRefresh``) the PRM trains further on the policy's own
rollouts every few batches, before the batch is sampled. The state (rollout counter, the pending
batch, the refreshed PRM) is checkpointed, so a resumed run continues with
exactly the rollouts an uninterrupted one draws: the prompts and the sampling seed of rollout
``k`` depend only on (seed, k) and the weights at that point.

Several processes (``accelerate launch``) share out each rollout's prompts (process r takes
prompts r, r + P, ...; ``prompts_per_step`` is the global count) and sample each prompt with its
own seed (its place in the rollout), so together they draw exactly the samples one process draws;
advantages are per group (one prompt), so they stay on the process that drew it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prm.steps import policy_prompt, step_end_chars, step_end_token_indices
from prm.train.batching import split_by_length
from prm.worlds import Task, World
from rl.advantages import (
    baseline_advantages,
    grpo_advantages,
    min_form_advantages,
    process_advantages,
    rloo_advantages,
)
from rl.losses import token_logprobs
from rl.prm_refresh import PRMRefresh
from rl.rewards import Reward, Rollout
from search.generation.base import Generation, Generator
from search.generation.hf import HFGenerator
from search.loop import derive_seed


@dataclass(frozen=True)
class AdvantageConfig:
    """How rewards become advantages (see the module docstring)."""

    outcome: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    process: Literal["sum", "min", "baseline", "baseline_centred"] = "sum"  # DeepSeekMath | PURE | the PRM as a critic

    def __post_init__(self) -> None:
        if self.outcome not in ("grpo", "dr_grpo", "rloo"):
            raise ValueError(f"advantage.outcome must be grpo, dr_grpo or rloo (got {self.outcome!r})")
        if self.process not in ("sum", "min", "baseline", "baseline_centred"):
            raise ValueError(f"advantage.process must be sum, min, baseline or baseline_centred (got {self.process!r})")
        if self.process.startswith("baseline") and self.outcome != "dr_grpo":
            raise ValueError(f"advantage.process={self.process} moves Dr. GRPO's baseline (R - mean, not divided by the "
                             f"group's std) towards the PRM's values: set advantage.outcome=dr_grpo (got "
                             f"{self.outcome!r})")


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling knobs of one rollout batch."""

    prompts_per_step: int = 32
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    ppo_epochs: int = 1
    seed: int = 0
    splits: int = 1  # forwards over the batch in pieces of neighbouring lengths (policy_logits)

    def __post_init__(self) -> None:
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "ppo_epochs", "splits"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"rl.{name} must be >= 1 (got {getattr(self, name)})")


def token_char_ends(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """(start, end) characters of ``text`` that each sampled token decodes to (cumulative decoding,
    so multi-byte and merged tokens are exact); tokens past ``text`` (EOS) get an empty span."""
    spans, prev = [], 0
    for k in range(len(ids)):
        now = min(len(tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=False)), len(text))
        spans.append((prev, max(prev, now)))
        prev = max(prev, now)
    return spans


def step_end_tokens(tokenizer: PreTrainedTokenizerBase, gen: Generation, fmt: Any) -> tuple[list[int], list[int]]:
    """Completion-token index of each labelled step's last token (the answer step's included), and
    which steps those are: when one merged token ends several steps, it carries the LAST of them
    (the earlier steps get no reward of their own; their tokens fall to the later step)."""
    ends = step_end_chars(gen.text, fmt)
    if not ends or not gen.token_ids:
        return [], []
    spans = token_char_ends(tokenizer, gen.token_ids, gen.text)
    tokens: list[int] = []
    steps: list[int] = []
    for j, t in enumerate(step_end_token_indices(spans, ends)):
        if tokens and t <= tokens[-1]:
            tokens.pop()
            steps.pop()
        tokens.append(t)
        steps.append(j)
    return tokens, steps


def process_share() -> tuple[int, int]:
    """(this process's rank, the number of processes) of the running torch.distributed group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def combine(values: list[list[Any]], weights: list[float]) -> list[Any]:
    """Per sample, the weighted mean of several graders' values (None if any grader gave None/NaN)."""
    total = sum(weights)
    out: list[Any] = []
    for per_grader in zip(*values):
        if any(v is None for v in per_grader):
            out.append(None)
        elif isinstance(per_grader[0], list):
            if len({len(v) for v in per_grader}) != 1:
                raise ValueError("process graders returned different numbers of steps for one sample")
            steps = [sum(w * float(x) for w, x in zip(weights, col)) / total for col in zip(*per_grader)]
            out.append(None if any(s != s for s in steps) else steps)
        else:
            v = sum(w * float(x) for w, x in zip(weights, per_grader)) / total
            out.append(None if v != v else v)
    return out


class RolloutSource:
    """Rollout batches from the live policy (see the module docstring); a ``BatchSource``."""

    def __init__(self, world: World, tasks: Sequence[Task], tokenizer: PreTrainedTokenizerBase,
                 rewards: Sequence[tuple[Reward, float]], rollout: RolloutConfig, advantage: AdvantageConfig,
                 ref_model: PreTrainedModel | None = None, generator_batch_size: int = 512,
                 refresh: PRMRefresh | None = None, make_engine: Callable[[], Any] | None = None) -> None:
        if not tasks:
            raise ValueError("no training problems for RL")
        if not rewards:
            raise ValueError("no rewards: configure at least one grader (reward=outcome)")
        if rollout.prompts_per_step > len(tasks):
            raise ValueError(f"rl.prompts_per_step={rollout.prompts_per_step} exceeds the {len(tasks)} training problems")
        self.world, self.tasks, self.tokenizer = world, list(tasks), tokenizer
        self.rewards, self.cfg, self.adv = list(rewards), rollout, advantage
        self.ref_model = ref_model
        self.refresh = refresh
        self.generator_batch_size = generator_batch_size
        self.rollouts_done = 0
        self.batch: dict[str, Any] | None = None
        self.make_engine = make_engine  # e.g. a VLLMGenerator on the policy's directory (``update_weights``)
        self._generator: Generator | None = None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    # -- BatchSource ---------------------------------------------------------------------------
    def next_batch(self, model: torch.nn.Module, step: int, micro: int) -> dict[str, Any]:
        if self.batch is None or (step % self.cfg.ppo_epochs == 0 and micro == 0):
            self.batch = self.make_batch(model)  # type: ignore[arg-type]
        return self.batch

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts_done": self.rollouts_done, "batch": self.batch,
                "refresh": self.refresh.state_dict() if self.refresh is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts_done = int(state["rollouts_done"])
        self.batch = state.get("batch")
        if self.refresh is not None and state.get("refresh") is not None:
            self.refresh.load_state_dict(state["refresh"])

    # -- one rollout batch ---------------------------------------------------------------------
    def prompts_for(self, k: int) -> list[Task]:
        """The problems of rollout ``k``: a seeded draw without replacement, a function of (seed, k)."""
        rng = random.Random(derive_seed(self.cfg.seed, "rl-prompts", k))
        return [self.tasks[i] for i in rng.sample(range(len(self.tasks)), self.cfg.prompts_per_step)]

    def generator(self, model: PreTrainedModel) -> Generator:
        """The live policy's sampler: the HF backend on the model itself, or the configured engine (vLLM) with
        the model's current weights loaded before every rollout."""
        if self.make_engine is not None:
            if self._generator is None:
                self._generator = self.make_engine()
            self._generator.update_weights(model.state_dict().items())  # type: ignore[union-attr]
            return self._generator
        if self._generator is None or self._generator.model is not model:  # type: ignore[union-attr]
            self._generator = HFGenerator(model, self.tokenizer, device=next(model.parameters()).device,
                                          batch_size=self.generator_batch_size)
        return self._generator

    def make_batch(self, model: PreTrainedModel) -> dict[str, Any]:
        """Sample, grade and score one rollout batch (tensors on CPU; the loop moves them)."""
        k, cfg, fmt = self.rollouts_done, self.cfg, self.world.fmt
        metrics: dict[str, float] = {}
        if self.refresh is not None and self.refresh.due(k):  # before sampling: part of the seeded sequence
            metrics.update(self.refresh.refresh())
        everyone = self.prompts_for(k)
        rank, world = process_share()
        if len(everyone) < world:
            raise ValueError(f"rl.prompts_per_step={len(everyone)} cannot feed {world} processes")
        mine = range(rank, len(everyone), world)  # this process's share; each prompt seeded by its place in the rollout
        tasks = [everyone[i] for i in mine]
        gen = self.generator(model)
        prompts = [policy_prompt(t.prompt, fmt) for t in tasks]
        samples = gen.generate(prompts, n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.max_new_tokens,
                               seed=[derive_seed(cfg.seed, "rl-sample", k, i) for i in mine])
        prompt_ids = gen.encode(prompts) if isinstance(gen, HFGenerator) else [  # an engine tokenizes as the tokenizer does
            list(x) for x in self.tokenizer(list(prompts))["input_ids"]]
        flat = [(t, p_ids, g) for t, p_ids, gs in zip(tasks, prompt_ids, samples) for g in gs]
        rollouts = [Rollout(task=t, completion=g.text, fmt=fmt) for t, _, g in flat]
        outcome, process, w_out, w_proc = self._grade(rollouts, metrics)
        if self.refresh is not None:
            self.refresh.add(rollouts)

        n = len(flat)
        lengths = [len(g.token_ids or []) for _, _, g in flat]
        adv = torch.zeros(n, max(lengths, default=0) or 1)
        valid = torch.ones(n, dtype=torch.bool)
        if outcome is not None:
            a, ok = self._outcome_advantages(outcome)
            adv += w_out * a[:, None] * (torch.arange(adv.shape[1])[None, :] < torch.tensor(lengths)[:, None])
            valid &= ok
        if process is not None:  # step rewards go on each step's last token: locate them on the policy's own tokens
            located = [step_end_tokens(self.tokenizer, g, fmt) for _, _, g in flat]
            ends = [e for e, _ in located]
            for i, (steps, (e, kept)) in enumerate(zip(process, located)):
                if steps is None:
                    continue
                if len(steps) != len(rollouts[i].steps) or (kept and kept[-1] >= len(steps)):
                    raise RuntimeError(f"sample {i}: {len(steps)} step rewards for {len(rollouts[i].steps)} steps "
                                       f"(the grader and prm.steps disagree on the steps of {flat[i][2].text!r})")
                process[i] = [steps[j] for j in kept]
            if self.adv.process.startswith("baseline"):  # the PRM as a critic of the outcome reward (rl.advantages)
                if outcome is None:
                    raise ValueError(f"advantage.process={self.adv.process} needs an outcome reward (the PRM is "
                                     "its baseline)")
                a, mask = baseline_advantages(process, ends, lengths, cfg.group_size, outcome, max_len=adv.shape[1],
                                              centred=self.adv.process == "baseline_centred")
            else:
                fn = process_advantages if self.adv.process == "sum" else min_form_advantages
                a, mask = fn(process, ends, lengths, cfg.group_size, max_len=adv.shape[1])
            adv += w_proc * a
            valid &= mask.any(dim=1) | (torch.tensor(lengths) == 0)

        batch = self._tensors(flat, adv, valid, model)
        self.rollouts_done += 1
        metrics.update({
            "rollout/completion_tokens": sum(lengths) / max(1, n),
            "rollout/steps": sum(len(r.steps) for r in rollouts) / max(1, n),
            "rollout/masked": float((~valid).sum()) / max(1, n),
        })
        batch["_metrics"] = metrics
        return batch

    def _grade(self, rollouts: list[Rollout], metrics: dict[str, float]
               ) -> tuple[list[Any] | None, list[Any] | None, float, float]:
        by_kind: dict[str, tuple[list[list[Any]], list[float]]] = {"outcome": ([], []), "process": ([], [])}
        for reward, weight in self.rewards:
            values = reward(rollouts)
            metrics.update({f"reward/{k}": float(v) for k, v in reward.metrics(rollouts, values).items()})
            by_kind[reward.kind][0].append(list(values))
            by_kind[reward.kind][1].append(float(weight))
        out = {kind: (combine(vals, ws) if vals else None, sum(ws)) for kind, (vals, ws) in by_kind.items()}
        return out["outcome"][0], out["process"][0], out["outcome"][1], out["process"][1]

    def _outcome_advantages(self, rewards: list[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.cfg.group_size
        if self.adv.outcome == "rloo":
            return rloo_advantages(rewards, g)
        return grpo_advantages(rewards, g, scale_by_std=self.adv.outcome == "grpo")

    def _tensors(self, flat: list[tuple[Task, list[int], Generation]], adv: torch.Tensor, valid: torch.Tensor,
                 model: PreTrainedModel) -> dict[str, Any]:
        """Right-padded prompt+completion ids, the completion mask, advantages, the sampling policy's log-probs
        (only with several PPO passes: with one the loss's own are the same numbers) and the reference's (with a KL
        penalty), all aligned with ``input_ids`` (position t of a per-token tensor is about token t)."""
        seqs = [list(p) + list(g.token_ids or []) for _, p, g in flat]
        width = max(len(s) for s in seqs)
        n = len(seqs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        comp = torch.zeros((n, width), dtype=torch.bool)
        advantages = torch.zeros((n, width))
        for r, ((_, p, g), s) in enumerate(zip(flat, seqs)):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            attn[r, : len(s)] = 1
            c = len(g.token_ids or [])
            if c and bool(valid[r]):
                comp[r, len(p) : len(p) + c] = True
                advantages[r, len(p) : len(p) + c] = adv[r, :c]
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp,
                                 "advantages": advantages}
        if self.cfg.ppo_epochs > 1:  # one pass: the sampling policy IS the policy being differentiated (ratio 1)
            batch["old_logprobs"] = sequence_logprobs(model, ids, attn, splits=self.cfg.splits)
        if self.ref_model is not None:
            batch["ref_logprobs"] = sequence_logprobs(self.ref_model, ids, attn, splits=self.cfg.splits)
        return batch


def policy_logits(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, splits: int = 1) -> torch.Tensor:
    """The policy's logits ``[rows, tokens, vocab]`` of a right-padded batch, the forward run as ``splits``
    pieces of neighbouring lengths (``prm.train.batching.split_by_length``), each cut to its own longest row:
    the same logits at every real position (causal attention never reads the padding after a token), less
    padding computed (padding past a piece's longest row gets 0). One piece for a model wrapped for several processes (DDP
    takes one forward per backward)."""
    if splits <= 1 or ids.shape[0] < 2 or isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model(input_ids=ids, attention_mask=attn).logits
    lengths = attn.sum(1).tolist()
    pieces = split_by_length(list(range(len(lengths))), lengths, splits)
    width = ids.shape[1]
    parts = []
    for rows in pieces:
        w = max(1, max(lengths[i] for i in rows))
        at = torch.tensor(rows, device=ids.device)
        logits = model(input_ids=ids[at, :w], attention_mask=attn[at, :w]).logits
        parts.append(torch.nn.functional.pad(logits, (0, 0, 0, width - w)))
    order = torch.tensor([i for rows in pieces for i in rows], device=ids.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=ids.device)
    return torch.cat(parts)[inverse]


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, chunk: int = 64,
                      splits: int = 1) -> torch.Tensor:
    """Log-prob of every token given the ones before it (position 0: 0.0), in chunks of rows (each run as
    ``policy_logits`` pieces), on CPU."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = torch.zeros(ids.shape, dtype=torch.float32)
    try:
        for lo in range(0, ids.shape[0], chunk):
            x, m = ids[lo : lo + chunk].to(device), attn[lo : lo + chunk].to(device)
            logits = policy_logits(model, x, m, splits)
            out[lo : lo + chunk, 1:] = token_logprobs(logits[:, :-1], x[:, 1:]).float().cpu()
    finally:
        model.train(was)
    return out


def metrics_of(batch: Mapping[str, Any]) -> dict[str, float]:
    """The rollout metrics a batch carries (rewards, lengths, masked share)."""
    return dict(batch.get("_metrics") or {})
