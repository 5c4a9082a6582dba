"""The one training loop: SFT now, PRM training and RL later (any model, any loss function).

``train(model, loss_fn, train_data, cfg, collate=..., run_dir=...)`` runs AdamW with warm-up and
a cosine/linear/constant schedule, gradient accumulation, clipping and optional bf16 autocast,
on ``accelerate`` (a single process on CPU; ``accelerate launch`` spreads it over GPUs unchanged).
``loss_fn(model, batch) -> (loss, metrics)`` is the only thing a caller writes.

The data is a fixed dataset (batched here by ``prm.train.batching``, one order per epoch) or a
``BatchSource``: a stream that makes each micro-batch from the live model (RL rollouts); its
state (counters, RNG, a pending rollout batch) is saved in every checkpoint and restored on
resume. ``evaluate(model) -> metrics`` replaces the loss on ``eval_data`` when given (RL's
held-out monitor), logged with the ``eval/`` prefix at the same steps.

A run owns one directory::

    run_dir/metrics.jsonl              one line per logged step (train and eval metrics together)
    run_dir/checkpoints/step-N/        model, optimizer, scheduler, RNG states, trainer_state.json
    run_dir/model/                     the final model (``save_pretrained``, tokenizer beside it)

Checkpoints are written to a temporary directory and renamed into place, and the last
``keep_checkpoints`` are kept. Started again in the same ``run_dir``, a run resumes from its
last complete checkpoint and ends with the same parameters as an uninterrupted run: the data
order is a function of ``(seed, epoch)`` only, resume skips exactly the batches already
consumed, and every RNG state is restored. Metric lines written after that checkpoint are
dropped, so ``metrics.jsonl`` never repeats a step.

Several processes (``accelerate launch --num_processes P``) train exactly as one process at the
same global batch: each global batch (``batch_size`` x P examples, or ``max_tokens`` x P
padded tokens, planned as one process would, then cut into its ``splits`` micro-batches of
neighbouring lengths, each weighted by its share of the batch's examples) is dealt to the
processes row by row, and a loss
that reports what its mean is over (``LOSS_WEIGHT`` in its metrics: labelled steps, target
tokens, sequences) is rescaled by its share of the global count before DDP averages the
gradients, so the update is the global mean's gradient whatever the shares hold. A global batch
smaller than P examples (the last of an epoch at most) is skipped. A ``BatchSource`` deals its
own share (``rl.rollouts`` splits each rollout's prompts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from prm.io import atomic_write_text, read_resumable_jsonl, write_json, write_jsonl
from prm.train.batching import TRAIN_STRATEGIES, padding_fraction, plan_batches, split_by_length

Batch = Any
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, Mapping[str, Any]]]
Callback = Callable[["TrainState", dict[str, float]], None]
SOURCE_FILE = "batch_source.pt"


@runtime_checkable
class BatchSource(Protocol):
    """A stream of training micro-batches made from the live model (e.g. RL rollouts).

    ``next_batch(model, step, micro)`` returns the collated batch (a mapping of tensors) for
    optimizer step ``step`` (0-based) and micro-batch ``micro`` of its accumulation, on this
    process; ``state_dict`` / ``load_state_dict`` carry everything needed to continue exactly
    (checkpointed with the model).
    """

    def next_batch(self, model: torch.nn.Module, step: int, micro: int) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

LOSS_WEIGHT = "loss_weight"  # a loss_fn metric: how many units (labelled steps, tokens, sequences) its mean is over
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Every knob of the loop. Steps are optimizer steps (each ``grad_accum`` batches, each batch run as up
    to ``splits`` micro-batches of neighbouring lengths)."""

    lr: float = 3e-4
    weight_decay: float = 0.1  # on matrices only (not biases, norms)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # after warm-up
    min_lr_ratio: float = 0.1  # cosine/linear decay to lr * min_lr_ratio at max_steps
    max_steps: int | None = None  # None: epochs * optimizer steps per epoch
    epochs: float | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0  # None or 0: no clipping (the norm is still logged)
    batch_size: int | None = 32  # examples per batch (per process) ...
    max_tokens: int | None = None  # ... or padded tokens per batch (with batch_size: both limits)
    batching: Literal["bucketed", "windowed", "random", "packed"] = "bucketed"  # see prm.train.batching
    splits: int = 1  # each batch runs as this many micro-batches cut by length (same step, less padding)
    chunk_batches: int | None = None  # bucketed/windowed: batches' worth sorted together (None: 64/2)
    mixed_precision: Literal["no", "bf16"] = "no"
    eval_every: int = 0  # steps; 0: only at the end
    eval_batch_size: int | None = None  # None: batch_size
    save_every: int = 0  # steps; 0: only at the end (and when max_time_s runs out)
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    max_time_s: float | None = None  # training wall-clock budget, summed over resumed sessions
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        problems = []
        if self.schedule not in ("cosine", "linear", "constant"):
            problems.append(f"schedule={self.schedule!r} (cosine, linear or constant)")
        if self.mixed_precision not in ("no", "bf16"):
            problems.append(f"mixed_precision={self.mixed_precision!r} (no or bf16)")
        if self.batching not in TRAIN_STRATEGIES:
            problems.append(f"batching={self.batching!r} ({', '.join(TRAIN_STRATEGIES)})")
        if self.chunk_batches is not None and self.chunk_batches < 1:
            problems.append(f"chunk_batches={self.chunk_batches} (must be >= 1)")
        if self.max_steps is None and self.epochs is None:
            problems.append("neither max_steps nor epochs is set")
        if self.max_steps is not None and self.max_steps < 0:
            problems.append(f"max_steps={self.max_steps} (must be >= 0)")
        if self.epochs is not None and self.epochs <= 0:
            problems.append(f"epochs={self.epochs} (must be > 0)")
        if self.batch_size is None and self.max_tokens is None:
            problems.append("neither batch_size nor max_tokens is set")
        for name in ("grad_accum", "splits", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        for name in ("warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} (must be >= 0)")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"lr={self.lr}, min_lr_ratio={self.min_lr_ratio} (lr > 0, ratio in [0, 1])")
        if len(self.betas) != 2:
            problems.append(f"betas={self.betas} (two numbers)")
        if problems:
            raise ValueError("bad TrainConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain mapping (e.g. a Hydra ``train:`` block); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train option(s) {unknown}; known options: {sorted(known)}")
        return cls(**dict(values))


@dataclass
class TrainState:
    """Where a run is: the optimizer step and the next micro-batch (epoch, index in the epoch)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0  # training time of all sessions so far
    tokens: int = 0  # real (non-padding) tokens trained on so far


@dataclass
class TrainResult:
    """What ``train`` returns: the final step, the last metrics and where things were written."""

    step: int
    metrics: dict[str, float]
    run_dir: Path
    model_dir: Path | None
    checkpoint_dir: Path | None
    stopped_by: Literal["max_steps", "max_time", "already_done"]
    resumed_from: int | None = None
    elapsed_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def lr_factor(step: int, cfg: TrainConfig, max_steps: int) -> float:
    """Multiplier of ``cfg.lr`` for the optimizer step ``step`` (0-based): warm-up, then decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def default_length(example: Any) -> int:
    """Length of an example for batching: ``len(example["input_ids"])`` or ``len(example)``."""
    if isinstance(example, Mapping) and "input_ids" in example:
        return len(example["input_ids"])
    return len(example)


class MetricsLogger:
    """Console lines, ``metrics.jsonl`` (appended line by line) and, if configured, W&B (offline)."""

    def __init__(self, run_dir: Path, logger_cfg: Mapping[str, Any] | None, config: Mapping[str, Any] | None,
                 enabled: bool, resume_step: int) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.wandb_run = None
        if not enabled:
            return
        self._truncate(resume_step)
        logger_cfg = dict(logger_cfg or {})
        if logger_cfg.get("name", "none") == "wandb":
            self.wandb_run = self._init_wandb(run_dir, logger_cfg, config)

    def _truncate(self, resume_step: int) -> None:
        """Drop lines logged after the checkpoint we resume from (they will be logged again), and
        a line torn by a crash."""
        if not self.path.exists():
            return
        rows = read_resumable_jsonl(self.path)
        write_jsonl(self.path, (row for row in rows if row.get("step", 0) <= resume_step))

    @staticmethod
    def _init_wandb(run_dir: Path, logger_cfg: Mapping[str, Any], config: Mapping[str, Any] | None) -> Any:
        import wandb  # lazily: only runs that ask for it pay the import

        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id)
        return wandb.init(
            project=logger_cfg.get("project", "prm-lab"),
            entity=logger_cfg.get("entity"),
            mode=logger_cfg.get("mode", "offline"),
            tags=list(logger_cfg.get("tags") or []),
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            config=dict(config or {}),
        )

    def log(self, step: int, row: dict[str, float], console: bool = True) -> None:
        if not self.enabled:
            return
        line = {"step": step, **row}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if console:
            shown = " | ".join(f"{k} {_fmt(v)}" for k, v in row.items())
            tqdm.write(f"step {step} | {shown}")
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _fmt(v: float) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1):
        return str(int(v))
    return f"{v:.4g}"


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step-N`` with a trainer state), oldest first."""
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists():
                try:
                    found.append((int(p.name.removeprefix("step-")), p))
                except ValueError:
                    continue
    return sorted(found)


def _to_float(v: Any) -> float:
    return float(v.detach().float().mean().item()) if isinstance(v, torch.Tensor) else float(v)


class _Window:
    """Sums of per-micro-batch numbers between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.tokens = 0
        self.positions = 0
        self.pending_tokens = 0  # not yet added to TrainState.tokens
        self.grad_norm = 0.0
        self.lr = 0.0
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, loss: float, metrics: Mapping[str, Any], batch: Batch) -> None:
        self.count += 1
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + _to_float(v)
        mask = batch.get("token_mask", batch.get("attention_mask")) if isinstance(batch, Mapping) else None
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if mask is not None:
            real, positions = int(mask.sum().item()), mask.numel()
        elif ids is not None:
            real = positions = ids.numel()
        else:
            real = positions = 0
        self.tokens += real
        self.positions += positions
        self.pending_tokens += real


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where the parameters' device has one (4x faster steps on CPU), else the default."""
    try:
        return torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 fused=True)
    except (RuntimeError, ValueError):  # AdamW writes its options into the groups: build them anew
        return torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Sequence[Any] | BatchSource,
    cfg: TrainConfig,
    *,
    collate: Callable[[list[Any]], Batch] | None = None,
    run_dir: str | Path,
    eval_data: Sequence[Any] | None = None,
    tokenizer: Any = None,
    length_of: Callable[[Any], int] = default_length,
    logger_cfg: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    save_final_model: bool = True,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    eval_at_start: bool = False,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with ``loss_fn``; resume from ``run_dir`` if it has a checkpoint.

    ``collate(examples) -> batch`` (a mapping of tensors, moved to the device here);
    ``length_of(example)`` orders examples into batches of similar length; ``loss_fn(model,
    batch)`` returns the mean loss and extra metrics (numbers or tensors), averaged and logged.
    ``callbacks(state, metrics)`` run after every optimizer step (after its periodic checkpoint;
    the final checkpoint comes after the last callback). Raising from one stops the run (as a crash
    would: the next run resumes from the last checkpoint).
    ``evaluate(model)``: metrics logged as ``eval/*`` instead of the loss on ``eval_data``;
    ``eval_at_start``: also evaluate before the first step of a fresh run (logged at step 0).
    ``run_config`` is recorded by W&B. The final model goes to ``run_dir/model`` with
    ``save_pretrained`` (and ``tokenizer`` beside it) unless ``save_final_model`` is False.
    """
    run_dir = Path(run_dir)
    source = train_data if isinstance(train_data, BatchSource) else None
    if source is None and len(train_data) == 0:  # type: ignore[arg-type]
        raise ValueError("the training dataset is empty")
    if source is None and collate is None:
        raise ValueError("a fixed dataset needs collate")
    if source is not None and cfg.max_steps is None:
        raise ValueError("a stream of batches needs max_steps (it has no epochs)")
    # Mixed precision is our own autocast below, so any state is fine. Without a GPU, processes started by
    # torchrun / ``accelerate launch --multi_gpu`` join one CPU (gloo) group; accelerate needs cpu=True for that.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    ckpt_root = run_dir / "checkpoints"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_root.mkdir(exist_ok=True)
        for stale in ckpt_root.glob(".tmp-*"):  # a checkpoint interrupted while being written
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)

    lengths = [length_of(ex) for ex in train_data] if source is None else []  # type: ignore[union-attr]

    global_size = cfg.batch_size * world if cfg.batch_size is not None else None
    global_tokens = cfg.max_tokens * world if cfg.max_tokens is not None else None

    def epoch_plan(epoch: int) -> list[list[int]]:
        """One epoch of GLOBAL batches (what one process at the global batch would take)."""
        plan = plan_batches(lengths, batch_size=global_size, max_tokens=global_tokens,
                            seed=cfg.seed, epoch=epoch, strategy=cfg.batching, chunk_batches=cfg.chunk_batches)
        if not any(len(b) >= world for b in plan):
            raise ValueError(f"no batch of the epoch has an example for each of {world} processes; "
                             f"more data or a larger batch")
        return plan

    def pieces(batch: list[int]) -> list[list[int]]:
        """A global batch as its GLOBAL micro-batches: ``splits`` pieces of neighbouring lengths, each with
        at least one example per process (every process runs the same number of pieces)."""
        return split_by_length(batch, lengths, cfg.splits, min_size=world) if cfg.splits > 1 else [batch]

    first_plan = epoch_plan(0) if source is None else []
    micro_per_epoch = max(1, len(first_plan))
    if main and source is None:
        shuffled = plan_batches(lengths, batch_size=global_size, max_tokens=global_tokens, seed=cfg.seed,
                                strategy="random")
        run = [p for b in first_plan for p in pieces(b)]
        split = f", each in up to {cfg.splits} micro-batches by length" if cfg.splits > 1 else ""
        tqdm.write(f"[train] {len(train_data)} examples, {len(first_plan)} batches per epoch{split}; padding "
                   f"{padding_fraction(run, lengths, packed=cfg.batching == 'packed'):.1%} "
                   f"({cfg.batching}; plain shuffled batches: "
                   f"{padding_fraction(shuffled, lengths):.1%})")
    max_steps = cfg.max_steps
    if max_steps is None:
        assert cfg.epochs is not None
        max_steps = max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))

    optimizer = _adamw(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, max_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    state = TrainState()
    resumed_from = None
    done = _checkpoints(ckpt_root)
    if done:
        step_done, path = done[-1]
        with _quiet_accelerate():
            accelerator.load_state(str(path))
        saved = json.loads((path / STATE_FILE).read_text())
        state = TrainState(**saved["state"])
        if source is not None:
            source.load_state_dict(torch.load(path / f"{SOURCE_FILE}.{rank}", weights_only=False))
        _warn_config_change(saved.get("config", {}), cfg, main)
        resumed_from = state.step
        if main:
            tqdm.write(f"[train] resuming from {path} (step {state.step}, epoch {state.epoch}, "
                       f"batch {state.batch_in_epoch})")
    logger = MetricsLogger(run_dir, logger_cfg, run_config, main, state.step)

    def stream(epoch: int, index: int) -> Iterator[tuple[int, int, list[tuple[list[int], float]]]]:
        """(epoch, batch index, [(this process's share of a micro-batch, the micro-batch's share of the batch)])."""
        while True:
            plan = epoch_plan(epoch)
            while index < len(plan):
                if len(plan[index]) >= world:  # else too small to deal: every process skips it
                    cut = pieces(plan[index])
                    yield epoch, index, [(p[rank::world], len(p) / len(plan[index])) for p in cut]
                index += 1
            epoch, index = epoch + 1, 0

    def global_share(weight: Any) -> float:
        """``P x local units / global units``: DDP's mean over processes then gives the global mean's gradient."""
        if world == 1 or weight is None:
            return 1.0
        units = torch.tensor([_to_float(weight)], dtype=torch.float64, device=accelerator.device)
        total = float(accelerator.reduce(units.clone(), reduction="sum").item())
        return world * float(units.item()) / total if total > 0 else 0.0

    def to_device(batch: Batch) -> Batch:
        if isinstance(batch, Mapping):
            return {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return batch

    autocast = (lambda: torch.autocast(accelerator.device.type, dtype=torch.bfloat16)) \
        if cfg.mixed_precision == "bf16" else contextlib.nullcontext

    def run_eval() -> dict[str, float]:
        """Metrics averaged over eval examples (each batch weighted by its size), on every process's share;
        or ``evaluate``'s metrics."""
        if evaluate is not None:
            bare = accelerator.unwrap_model(model)
            was = bare.training
            bare.eval()
            try:
                return {f"eval/{k}": float(v) for k, v in evaluate(bare).items()}
            finally:
                bare.train(was)
        assert eval_data is not None and collate is not None
        bare = accelerator.unwrap_model(model)  # forward only: no DDP collectives, shares may differ
        bare.eval()
        eval_lengths = [length_of(ex) for ex in eval_data]
        plan = plan_batches(eval_lengths, batch_size=cfg.eval_batch_size or cfg.batch_size,
                            max_tokens=cfg.max_tokens, strategy="sorted")
        sums: dict[str, float] = {}
        with torch.no_grad():
            for idxs in plan[rank::world]:
                batch = to_device(collate([eval_data[i] for i in idxs]))
                with autocast():
                    loss, metrics = loss_fn(bare, batch)
                metrics = {k: v for k, v in metrics.items() if k != LOSS_WEIGHT}
                for k, v in {"loss": loss, **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + _to_float(v) * len(idxs)
        n = len(eval_data)
        keys = sorted(sums) if sums else ["loss"]
        totals = torch.tensor([sums.get(k, 0.0) for k in keys], device=accelerator.device, dtype=torch.float64)
        totals = accelerator.reduce(totals, reduction="sum")
        bare.train()
        return {f"eval/{k}": float(t) / n for k, t in zip(keys, totals.tolist())}

    def save_checkpoint() -> Path:
        final = ckpt_root / f"step-{state.step}"
        if final.exists():
            return final
        tmp = ckpt_root / f".tmp-step-{state.step}"
        flush_tokens()
        accelerator.wait_for_everyone()
        with _quiet_accelerate():
            accelerator.save_state(str(tmp), safe_serialization=False)
        if source is not None:
            torch.save(source.state_dict(), tmp / f"{SOURCE_FILE}.{rank}")
        accelerator.wait_for_everyone()
        if main:
            write_json(tmp / STATE_FILE, {"state": dataclasses.asdict(state), "config": _jsonable(cfg)})
            os.replace(tmp, final)
            for _, old in _checkpoints(ckpt_root)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def flush_tokens() -> None:
        pending = torch.tensor([float(window.pending_tokens)], dtype=torch.float64, device=accelerator.device)
        state.tokens += int(accelerator.reduce(pending, reduction="sum").item())
        window.pending_tokens = 0

    def train_row(window: _Window) -> dict[str, float]:
        row = _window_metrics(window, accelerator, world)
        flush_tokens()
        row["lr"] = window.lr
        row["epoch"] = state.epoch + state.batch_in_epoch / max(1, micro_per_epoch)
        row["tokens"] = state.tokens
        return row

    def log_row(row: dict[str, float]) -> None:
        logger.log(state.step, row)
        last_metrics.update(row)
        history.append({"step": state.step, **row})

    params = [p for p in model.parameters() if p.requires_grad]
    data = stream(state.epoch, state.batch_in_epoch) if source is None else None
    evaluating = bool(eval_data) or evaluate is not None
    window = _Window()
    last_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    stopped_by: Literal["max_steps", "max_time", "already_done"] = "already_done" if state.step >= max_steps else "max_steps"
    session_start = time.perf_counter()
    elapsed_before = state.elapsed_s
    bar = tqdm(total=max_steps, initial=state.step, disable=not (cfg.progress and main), desc="train",
               dynamic_ncols=True)
    last_checkpoint: Path | None = done[-1][1] if done else None
    model.train()
    if eval_at_start and evaluating and state.step == 0 and resumed_from is None:
        log_row(run_eval())  # step 0: the starting point of every curve

    try:
        while state.step < max_steps:
            if cfg.max_time_s is not None and _out_of_time(accelerator, elapsed_before + time.perf_counter()
                                                           - session_start, cfg.max_time_s):
                stopped_by = "max_time"
                break
            for micro in range(cfg.grad_accum):
                if source is not None:
                    epoch, index = 0, state.batch_in_epoch
                    parts: list[tuple[Any, float]] = [
                        (source.next_batch(accelerator.unwrap_model(model), state.step, micro), 1.0)]
                else:
                    assert data is not None and collate is not None
                    epoch, index, parts = next(data)  # a piece counts by its share of the batch's examples
                for j, (part, weight) in enumerate(parts):
                    batch = to_device(part if source is not None else
                                      collate([train_data[i] for i in part]))  # type: ignore[index]
                    sync = micro == cfg.grad_accum - 1 and j == len(parts) - 1
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                        with autocast():
                            loss, metrics = loss_fn(model, batch)
                        metrics = dict(metrics)
                        share = global_share(metrics.pop(LOSS_WEIGHT, None))
                        accelerator.backward(loss * share * weight / cfg.grad_accum)
                    window.add(float(loss.detach().float().item()), metrics, batch)
                state.epoch, state.batch_in_epoch = epoch, index + 1
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            window.lr = scheduler.get_last_lr()[0]  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            window.steps += 1
            window.grad_norm += _to_float(grad_norm)
            now = time.perf_counter()
            state.elapsed_s = elapsed_before + now - session_start
            bar.update(1)

            final = state.step >= max_steps
            row: dict[str, float] = {}
            if state.step % cfg.log_every == 0 or final:
                row.update(train_row(window))
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if evaluating and ((cfg.eval_every and state.step % cfg.eval_every == 0) or final):
                row.update(run_eval())
            if row:
                log_row(row)
            if cfg.save_every and state.step % cfg.save_every == 0 and not final:
                last_checkpoint = save_checkpoint()
            for cb in callbacks:
                cb(state, row)
            if "loss" in row:  # the next window starts after eval and checkpointing
                window = _Window()
    except BaseException:  # a crash or an interrupt: leave the run directory for a resume
        bar.close()
        logger.close()
        raise
    bar.close()

    if stopped_by != "already_done":
        if window.count:  # the time budget ended between two log lines: log what is pending
            row = train_row(window)
            if evaluating:
                row.update(run_eval())
            log_row(row)
        last_checkpoint = save_checkpoint()
        if main:
            tqdm.write(f"[train] stopped at step {state.step}/{max_steps} ({stopped_by}); checkpoint {last_checkpoint}")
    logger.close()

    model_dir = None
    if save_final_model:
        model_dir = run_dir / "model"
        if main:
            _save_final(accelerator.unwrap_model(model), tokenizer, model_dir)
        accelerator.wait_for_everyone()
    return TrainResult(step=state.step, metrics=last_metrics, run_dir=run_dir, model_dir=model_dir,
                       checkpoint_dir=last_checkpoint, stopped_by=stopped_by, resumed_from=resumed_from,
                       elapsed_s=state.elapsed_s, history=history)


def _window_metrics(window: _Window, accelerator: Accelerator, world: int) -> dict[str, float]:
    """Averages over the window (across processes), tokens/s and the padding fraction."""
    keys = sorted(window.sums)
    local = [window.sums[k] / max(1, window.count) for k in keys]
    vec = torch.tensor([*local, window.tokens, window.positions], dtype=torch.float64, device=accelerator.device)
    vec = accelerator.reduce(vec, reduction="sum")
    values = vec.tolist()
    seconds = max(1e-9, time.perf_counter() - window.start)
    out = {k: v / world for k, v in zip(keys, values[: len(keys)])}
    tokens, positions = values[-2], values[-1]
    out["grad_norm"] = window.grad_norm / max(1, window.steps)
    out["tokens_per_s"] = tokens / seconds
    if positions:
        out["padding_frac"] = 1.0 - tokens / positions
    return out


@contextlib.contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """Silence accelerate's per-file INFO lines while saving or loading a checkpoint."""
    log = logging.getLogger("accelerate")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _out_of_time(accelerator: Accelerator, elapsed: float, budget: float) -> bool:
    """Every process agrees (the slowest clock decides), so no process waits for a stopped one."""
    flag = torch.tensor([1.0 if elapsed >= budget else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    return bool(flag.item() > 0)


def _jsonable(cfg: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["betas"] = list(d["betas"])
    return d


def _warn_config_change(saved: Mapping[str, Any], cfg: TrainConfig, main: bool) -> None:
    """Resuming with other data-order knobs cannot reproduce the original run: say so."""
    now = _jsonable(cfg)
    order_knobs = ("seed", "batch_size", "max_tokens", "grad_accum", "batching", "chunk_batches", "splits")
    changed = [k for k in order_knobs if k in saved and saved[k] != now[k]]
    if changed and main:
        tqdm.write(f"[train] warning: resuming with changed {changed}: the data order differs from the original run")


def _save_final(model: Any, tokenizer: Any, path: Path) -> None:
    """``save_pretrained`` into a temporary directory, then swap it in for ``path``."""
    from prm.models.loading import save_model

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if tokenizer is not None:
        save_model(model, tokenizer, tmp)
    else:
        model.save_pretrained(str(tmp))
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (empty if none; a line torn by a crash is left out)."""
    return read_resumable_jsonl(Path(run_dir) / METRICS_FILE)
