"""Refreshing the PRM during RL on the current policy's own samples (DeepSeekMath's iterative RL).

A fixed PRM is an exploitable reward (``shared/notes/rl-calibration.md``): the policy drifts to
solutions the PRM never saw and scores wrongly. ``PRMRefresh`` keeps a buffer of the policy's
rollouts, labelled exactly by the world (the arithmetic world; a world without exact labels is a
clear error: Monte-Carlo labels for it are the Monte-Carlo issue's labeller), and every ``every``
rollout batches trains the PRM ``steps`` more AdamW steps on batches drawn from the newest
rollouts plus a replay of older ones (``replay`` samples kept, oldest dropped first), with the
PRM's own loss (``prm.prm_loss``: BCE at each step's label token). The compute is counted
(``prm_tokens`` trained on). Its state (PRM weights, optimizer, buffer, RNG) is part of the
rollout source's checkpointed state, so a resumed run refreshes exactly as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from prm.data.stepwise import StepwiseExample
from prm.models.prm_inputs import encode_steps
from prm.prm_loss import PRMLoss, prm_collate
from prm.worlds import World
from rl.rewards import Rollout


class PRMRefresh:
    """Keeps a labelled buffer of rollouts and trains the scorer's PRM on it (see the module docstring)."""

    def __init__(self, scorer: Any, world: World, every: int = 25, steps: int = 50, batch_size: int = 64,
                 lr: float = 2e-4, replay: int = 20000, seed: int = 0) -> None:
        if not world.exact_labels:
            raise ValueError(f"rl.prm_refresh needs labels for the policy's samples; the {world.name!r} world has no "
                             "exact labels (label them with Monte-Carlo rollouts: not wired into prm-rl yet)")
        if not hasattr(scorer, "model") or not hasattr(scorer, "tokenizer"):
            raise ValueError("rl.prm_refresh trains a PRM: the scorer must be a trained PRM (scorer=prm)")
        if every < 1 or steps < 1 or batch_size < 1:
            raise ValueError(f"rl.prm_refresh: every, steps and batch_size must be >= 1 (got {every}, {steps}, {batch_size})")
        self.scorer, self.world = scorer, world
        self.every, self.steps, self.batch_size, self.replay = every, steps, batch_size, replay
        self.rng = random.Random(seed)
        self.buffer: list[dict[str, Any]] = []
        self.new_from = 0  # buffer index where the rollouts since the last refresh start
        self.optimizer = torch.optim.AdamW([p for p in scorer.model.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=0.0)
        tok = scorer.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.collate = prm_collate(int(pad if pad is not None else 0))
        self.loss = PRMLoss(1.0, 1.0)
        self.total_tokens = 0
        self.refreshes = 0

    def add(self, rollouts: Sequence[Rollout]) -> None:
        """Label the rollouts exactly and add them to the buffer (the oldest beyond ``replay`` go)."""
        fmt = self.scorer.convention.fmt
        max_length = getattr(self.scorer, "max_length", None)
        for r in rollouts:
            labels = self.world.step_labels(r.task, r.steps) or []
            if not r.steps:
                continue
            ex = StepwiseExample(prompt=r.task.prompt, completions=list(r.steps), labels=list(labels))
            enc = encode_steps(self.scorer.tokenizer, ex.prompt, ex.completions, fmt, max_length)
            if enc.kept:
                self.buffer.append({"input_ids": enc.input_ids, "positions": enc.positions,
                                    "targets": list(labels[: enc.kept])})
        overflow = len(self.buffer) - self.replay
        if overflow > 0:
            del self.buffer[:overflow]
            self.new_from = max(0, self.new_from - overflow)

    def due(self, rollout_index: int) -> bool:
        return rollout_index > 0 and rollout_index % self.every == 0 and bool(self.buffer)

    def refresh(self) -> dict[str, float]:
        """Train the PRM ``steps`` steps: each batch half newest rollouts, half replay (when there is any)."""
        model = self.scorer.model
        device = next(model.parameters()).device
        new = list(range(self.new_from, len(self.buffer))) or list(range(len(self.buffer)))
        old = list(range(0, self.new_from))
        losses: list[float] = []
        model.train()
        try:
            for _ in range(self.steps):
                k_new = self.batch_size if not old else self.batch_size // 2
                idx = [self.rng.choice(new) for _ in range(k_new)] + [self.rng.choice(old) for _ in range(self.batch_size - k_new)]
                batch = {k: v.to(device) for k, v in self.collate([self.buffer[i] for i in idx]).items()}
                loss, _ = self.loss(model, batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                self.optimizer.step()
                losses.append(float(loss.detach()))
                self.total_tokens += sum(len(self.buffer[i]["input_ids"]) for i in idx)
        finally:
            model.eval()
        self.new_from = len(self.buffer)
        self.refreshes += 1
        return {"refresh/loss_first": losses[0], "refresh/loss_last": losses[-1], "refresh/buffer": len(self.buffer),
                "refresh/prm_tokens": self.total_tokens, "refresh/count": self.refreshes}

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.detach().clone() for k, v in self.scorer.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "buffer": self.buffer, "new_from": self.new_from,
                "rng": self.rng.getstate(), "total_tokens": self.total_tokens, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scorer.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer, self.new_from = state["buffer"], int(state["new_from"])
        self.rng.setstate(state["rng"])
        self.total_tokens, self.refreshes = int(state["total_tokens"]), int(state["refreshes"])
