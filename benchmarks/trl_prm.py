"""Our PRM trainer (``prm-train``) against TRL's ``PRMTrainer`` on the same data, backbone and steps.

Workload: the arithmetic world (``ArithConfig()`` unless changed) gives ``--train-problems``
exactly labelled solutions with injected errors (written as stepwise JSONL, read back by both
trainers) and ``--eval-problems`` held-out ones from another seed. ONE tiny GPT-2 backbone (our
character tokenizer, ``TinyGPTConfig`` sizes, seeded) is saved to a temporary directory, or
``--backbone DIR`` (e.g. the policy, ``runs/sft/model``) is used; both trainers start from it with a
fresh token-classification head:

- ``ours``: ``prm.prm_train.run`` composed with Hydra overrides (``data=stepwise``, ``init_from``,
  no validation split, no periodic eval or checkpoint; the loop still writes one final checkpoint
  and the model, which only the ``call s`` column pays for). One logit per token, BCE at the token
  of the separator after each step, batches by ``train.batching`` and ``train.splits``
  (conf/prm_train.yaml's, or ``--batching``; ``mixed`` is ``random`` batches each run as
  ``--splits`` micro-batches cut by length, ``random`` one whole batch; ``--extra ours-bucketed
  ours-windowed ours-random`` add rows with the others, ``--windows 2 8`` rows of windowed
  batching with other window sizes).
- ``trl``: ``trl.experimental.prm.PRMTrainer`` (up to TRL 1.13; older releases export it as
  ``trl.PRMTrainer``; TRL 1.14.2 and 1.16 no longer have it) with ``PRMConfig``: the same
  max_steps, batch size, lr, warm-up, cosine-to-10% schedule (``cosine_warmup_with_min_lr``),
  AdamW betas (0.9, 0.95), weight decay 0.1, clipping 1.0, fp32, no gradient checkpointing
  (PRMConfig turns it on by default: see ``--extra trl-gradckpt``), no saving, no eval, CPU. Two
  logits per token (``num_labels=2``), cross-entropy at TRL's label positions (its own
  ``PRMTrainer.tokenize_row``), plain shuffled batches (``--extra trl-grouped``: length-grouped).

Both are scored on the same held-out examples, ours by ``sigmoid(logit)`` at ``encode_steps``
positions (what ``prm-train``'s validation and the scorer read), TRL's by
``softmax(logits)[..., 1]`` at the positions of its ``tokenize_row`` labels: step AUROC over every
labelled step, and local AUROC (``prm.evaluation.metrics.local_auroc``: only steps whose earlier
steps are right, i.e. can it check one step). The header gives both for a score that is just the
step's index (later steps are more often wrong): a PRM at that level learned the position, not
the arithmetic. The script also checks whether the two layouts give the same tokens and label
positions.

Columns: ``train wall s (loop)`` is the training loop alone (ours: ``TrainState.elapsed_s`` at
the last step; TRL: ``train_runtime`` of ``Trainer.train``); ``steps/s`` and ``time ratio vs
ours`` come from it. ``call s`` is the whole call (ours: ``run(cfg)`` with reading the JSONL,
encoding, the final checkpoint and model save; TRL: ``PRMTrainer(...)`` with its dataset
tokenization, plus ``train()``). Tokens are the real (non-padding) tokens trained on; padding is
the share of padded positions in the batches.

``--curve K``: both trainers also save a checkpoint every K steps (ours: the loop's checkpoint;
TRL: ``save_steps``, model only; the saving is inside both loop times), scored after training on
the same held-out examples: the table adds each row's curve of local AUROC against step and the
loop time it takes to reach TRL's final local AUROC and stay at or above it for the rest of the
run (time to accuracy, as MLPerf measures training), with TRL's own time to it over each row's.

Needs TRL for the benchmark only (never a project dependency)::

    pip install --no-deps "trl==1.13.0"
    OMP_NUM_THREADS=1 python benchmarks/trl_prm.py [--steps 300] [--batch-size 32] [--threads 1]
        [--extra trl-gradckpt trl-grouped ours-bucketed ours-windowed ours-random] [--windows 2 8] [--curve 100]

``run(quick)`` is the same comparison for ``benchmarks/run_all.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL's trainers ping the Hub otherwise
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from prm import prm_train
from prm.data.arith import ArithConfig, generate_dataset
from prm.data.stepwise import StepwiseExample, load_stepwise_dataset, write_stepwise
from prm.evaluation.metrics import auroc, local_auroc
from prm.models.loading import (
    TinyGPTConfig,
    build_tiny_gpt,
    fuse_activations,
    load_tokenizer,
    parameter_count,
    save_model,
)
from prm.models.prm_model import load_prm
from prm.models.tokenizer import build_char_tokenizer
from prm.prm_train import CONF_DIR, encode_examples, predict_logits
from prm.steps import StepFormat

OURS = ("bucketed", "windowed", "random", "packed", "mixed")
EXTRAS = ("trl-gradckpt", "trl-grouped", "trl-fused", *(f"ours-{s}" for s in OURS))


@dataclass
class Result:
    name: str
    steps: int
    loop_s: float
    call_s: float
    tokens: int  # real tokens trained on
    padded: int  # padded positions trained on
    scores: list[list[float]]  # P(on track) of each labelled step of each held-out example
    labels: list[list[float]]
    final_loss: float
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loop s, local AUROC), --curve

    def time_to(self, target: float) -> tuple[int, float] | None:
        """The first curve point from which every later point's local AUROC is at least ``target``
        (step, loop seconds): the time to reach it and stay; None if the curve never does."""
        reached = None
        for step, seconds, value in self.curve:
            if value >= target:
                reached = reached or (step, seconds)
            else:
                reached = None
        return reached

    def step_auroc(self) -> float:
        flat_y = np.asarray([y for r in self.labels for y in r])
        return auroc(np.asarray([x for r in self.scores for x in r]), flat_y >= 0.5)

    def local_auroc(self) -> float:
        return local_auroc(self.scores, self.labels).auroc

    @property
    def n_steps(self) -> int:
        return sum(len(r) for r in self.labels)


def train_seed(args: argparse.Namespace) -> int:
    """The seed of both trainers' initialisation (head, fresh backbone) and batch order: ``--train-seed``, else
    ``--seed`` (which always sets the data)."""
    return args.seed if args.train_seed is None else args.train_seed


def make_data(args: argparse.Namespace, world: ArithConfig) -> tuple[list[StepwiseExample], list[StepwiseExample]]:
    train = generate_dataset(args.train_problems, world, seed=args.seed)
    held_out = generate_dataset(args.eval_problems, world, seed=args.seed + 1000)
    return train, held_out


def make_backbone(args: argparse.Namespace, root: Path) -> Path:
    """``--backbone``, else a freshly initialised tiny causal LM + character tokenizer saved under ``root``."""
    if args.backbone:
        return Path(args.backbone)
    tok = build_char_tokenizer()
    size = TinyGPTConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=args.n_positions)
    return save_model(build_tiny_gpt(tok, size, seed=train_seed(args)), tok, root / "backbone")


# ---------------------------------------------------------------- ours


def train_ours(args: argparse.Namespace, data_path: Path, backbone: Path, run_dir: Path,
               held_out: list[StepwiseExample], batching: str, name: str, chunk_batches: int | None = None) -> Result:
    # mixed: each optimizer step is one shuffled batch of --batch-size, in --splits length-sorted micro-batches
    splits = args.splits if batching == "mixed" else 1
    overrides = [
        "data=stepwise", f"data.path={data_path}", f"init_from={backbone}", f"run_dir={run_dir}",
        "val_fraction=0", f"seed={train_seed(args)}",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
        f"train.warmup_steps={args.warmup}", "train.schedule=cosine", "train.min_lr_ratio=0.1",
        "train.weight_decay=0.1", "train.betas=[0.9,0.95]", "train.max_grad_norm=1.0", "train.grad_accum=1",
        f"train.batching={'random' if batching == 'mixed' else batching}", f"train.splits={splits}",
        "train.mixed_precision=no", "train.eval_every=0", "train.save_every=0",
        f"train.log_every={args.log_every}", f"train.seed={train_seed(args)}", "train.max_time_s=null",
        "train.progress=false", f"++train.chunk_batches={'null' if chunk_batches is None else chunk_batches}",
        f"head_dropout={args.head_dropout}",
    ]
    if args.curve:  # a checkpoint every --curve steps, all kept, scored after training
        overrides += [f"train.save_every={args.curve}", "train.keep_checkpoints=100000"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="prm_train", overrides=overrides)
    seen: dict[str, Any] = {"elapsed": 0.0, "tokens": 0, "padded": 0.0, "last_tokens": 0, "loss": math.nan}
    at_step: dict[int, float] = {}

    def callback(state: Any, row: dict[str, float]) -> None:
        seen["elapsed"] = state.elapsed_s
        at_step[state.step] = state.elapsed_s
        if "tokens" in row:  # a log row: tokens are cumulative, padding is the window's share
            new = row["tokens"] - seen["last_tokens"]
            seen["padded"] += new / max(1e-9, 1.0 - row.get("padding_frac", 0.0))
            seen["last_tokens"] = seen["tokens"] = int(row["tokens"])
            seen["loss"] = row["loss"]

    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        summary = prm_train.run(cfg, callbacks=[callback])
    call_s = time.perf_counter() - t0
    if args.verbose:
        print(out.getvalue(), end="")

    model, tok = load_prm(run_dir / "model")
    max_length = summary["max_length"]
    enc, st = encode_examples(tok, held_out, StepFormat(separator="\n"), max_length)
    if st.dropped_no_label or st.truncated:
        print(f"warning: {name}: {st.truncated} held-out example(s) truncated, {st.dropped_no_label} dropped")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scores, labels = score_ours(model, enc, pad)
    curve = []
    for step in sorted(s for s in at_step if args.curve and s % args.curve == 0):
        weights = run_dir / "checkpoints" / f"step-{step}" / "pytorch_model.bin"
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        curve.append((step, at_step[step], local_auroc(*score_ours(model, enc, pad)).auroc))
    return Result(name, int(summary["step"]), seen["elapsed"], call_s, seen["tokens"], round(seen["padded"]),
                  scores, labels, seen["loss"], curve)


def score_ours(model: Any, enc: list[dict[str, Any]], pad: int) -> tuple[list[list[float]], list[list[float]]]:
    """P(on track) at each labelled step of the encoded held-out examples, and the labels."""
    scores: list[list[float]] = []
    labels: list[list[float]] = []
    for lg, ex in zip(predict_logits(model, enc, pad, batch_size=256), enc):
        kept = [(1.0 / (1.0 + math.exp(-x)), float(t)) for x, t in zip(lg, ex["targets"]) if t is not None]
        scores.append([x for x, _ in kept])
        labels.append([t for _, t in kept])
    return scores, labels


# ---------------------------------------------------------------- TRL


def import_trl() -> tuple[Any, Any, str]:
    try:
        import trl
    except ImportError:
        sys.exit('TRL is not installed: pip install --no-deps "trl==1.13.0"')
    try:
        from trl.experimental.prm import PRMConfig, PRMTrainer
    except ImportError:
        try:
            from trl import PRMConfig, PRMTrainer  # older TRL
        except ImportError:
            sys.exit(f"TRL {trl.__version__} has no PRMTrainer (removed after 1.13): "
                     'pip install --no-deps "trl==1.13.0"')
    return PRMConfig, PRMTrainer, trl.__version__


def trl_layout(tokenize_row: Any, tok: Any, ex: StepwiseExample, max_length: int | None) -> dict[str, list[int]]:
    """TRL's own tokenization of one example (``PRMTrainer.tokenize_row``, eval mode)."""
    return tokenize_row({"prompt": ex.prompt, "completions": ex.completions, "labels": ex.labels}, tokenizer=tok,
                        step_separator="\n", max_length=max_length, max_completion_length=None,
                        train_on_last_step_only=False, is_eval=True)


def train_trl(args: argparse.Namespace, data_path: Path, backbone: Path, out_dir: Path,
              held_out: list[StepwiseExample], name: str, *, gradient_checkpointing: bool = False,
              grouped: bool = False, fused: bool = False) -> Result:
    from transformers import (
        AutoModelForTokenClassification,
        DataCollatorForTokenClassification,
        TrainerCallback,
    )

    PRMConfig, PRMTrainer, _ = import_trl()
    tok = load_tokenizer(backbone)
    train_ds = load_stepwise_dataset(data_path).select_columns(["prompt", "completions", "labels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_seed(args))
        model = AutoModelForTokenClassification.from_pretrained(str(backbone), num_labels=2, local_files_only=True)
    if fused:  # the fused GELU that every model of ours gets (prm.models.loading.fuse_activations)
        fuse_activations(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    max_length = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    extra: dict[str, Any] = {"train_sampling_strategy": "group_by_length"} if grouped else {}
    # transformers 5 renamed gradient checkpointing (PRMConfig still turns the old name on by default)
    fields = getattr(PRMConfig, "__dataclass_fields__", {})
    extra["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = \
        gradient_checkpointing
    config = PRMConfig(
        output_dir=str(out_dir), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup, lr_scheduler_type="cosine_warmup_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-8, max_grad_norm=1.0, gradient_accumulation_steps=1, step_separator="\n",
        train_on_last_step_only=False, max_length=max_length, report_to="none",
        save_strategy="steps" if args.curve else "no", save_steps=args.curve or 500, save_only_model=True,
        eval_strategy="no", logging_steps=args.log_every, use_cpu=True, bf16=False, fp16=False,
        disable_tqdm=True, seed=train_seed(args), data_seed=train_seed(args),
        dataloader_num_workers=0, **extra,
    )
    counts = {"tokens": 0, "padded": 0}
    base_collate = DataCollatorForTokenClassification(tok)

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = base_collate(features)
        counts["tokens"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["input_ids"].numel()
        return batch

    at_step: dict[int, float] = {}

    class Clock(TrainerCallback):
        """Loop seconds at every optimizer step (from the start of training, as ``train_runtime``)."""

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, *a: Any, **k: Any) -> None:
            at_step[state.global_step] = time.perf_counter() - self.start

    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = PRMTrainer(model=model, args=config, data_collator=collate, train_dataset=train_ds,
                             processing_class=tok, callbacks=[Clock()])
        result = trainer.train()
    call_s = time.perf_counter() - t0
    if args.verbose:
        print(out.getvalue(), end="")

    rows = [trl_layout(PRMTrainer.tokenize_row, tok, ex, max_length) for ex in held_out]
    scores, labels = score_trl(trainer.model.eval(), tok, rows)
    curve = []
    for step in sorted(s for s in at_step if args.curve and s % args.curve == 0):
        saved = AutoModelForTokenClassification.from_pretrained(str(out_dir / f"checkpoint-{step}"),
                                                                local_files_only=True).eval()
        curve.append((step, at_step[step], local_auroc(*score_trl(saved, tok, rows)).auroc))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return Result(name, int(result.global_step), float(result.metrics["train_runtime"]), call_s, counts["tokens"],
                  counts["padded"], scores, labels, losses[-1] if losses else math.nan, curve)


def score_trl(model: Any, tok: Any, rows: list[dict[str, list[int]]]) -> tuple[list[list[float]], list[list[float]]]:
    """``softmax(logits)[..., 1]`` at TRL's label positions of each held-out row, and the labels."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    by_example: dict[int, tuple[list[float], list[float]]] = {}
    with torch.no_grad():
        for start in range(0, len(order), 256):
            idxs = order[start : start + 256]
            longest = max(len(rows[i]["input_ids"]) for i in idxs)
            ids = torch.full((len(idxs), longest), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(idxs):
                n = len(rows[i]["input_ids"])
                ids[r, :n] = torch.tensor(rows[i]["input_ids"])
                mask[r, :n] = 1
            probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)[..., 1]
            for r, i in enumerate(idxs):
                pos = [p for p, lab in enumerate(rows[i]["labels"]) if lab != -100]
                by_example[i] = (probs[r, pos].tolist(), [float(rows[i]["labels"][p]) for p in pos])
    return [by_example[i][0] for i in range(len(rows))], [by_example[i][1] for i in range(len(rows))]


def compare_layouts(backbone: Path, held_out: list[StepwiseExample], max_length: int | None) -> str:
    """How many held-out examples get the same token ids and label positions from both encodings."""
    _, PRMTrainer, _ = import_trl()
    tok = load_tokenizer(backbone)
    ours, _ = encode_examples(tok, held_out, StepFormat(separator="\n"), max_length)
    if len(ours) != len(held_out):
        return "layouts: some held-out examples dropped by our encoding (not compared)"
    same_ids = same_pos = 0
    for ex, enc in zip(held_out, ours):
        row = trl_layout(PRMTrainer.tokenize_row, tok, ex, max_length)
        same_ids += row["input_ids"] == enc["input_ids"]
        same_pos += [p for p, lab in enumerate(row["labels"]) if lab != -100] == enc["positions"]
    return (f"layouts on the {len(held_out)} held-out examples: same token ids {same_ids}, "
            f"same label positions {same_pos}")


# ---------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of each trainer")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=30, help="linear warm-up steps, then cosine to 10%% of lr")
    ap.add_argument("--train-problems", type=int, default=3000)
    ap.add_argument("--eval-problems", type=int, default=300)
    ap.add_argument("--backbone", default=None, help="a causal LM directory with its tokenizer (default: a fresh "
                    "tiny GPT-2 of the sizes below)")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-positions", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--splits", type=int, default=None,
                    help="batching=mixed: length-sorted micro-batches per step (default conf/prm_train.yaml's "
                         "train.splits when above 1, else 4)")
    ap.add_argument("--seed", type=int, default=0, help="the data's seed, and the trainers' unless --train-seed")
    ap.add_argument("--head-dropout", type=float, default=0.0,
                    help="our PRM's dropout on the head's input (TRL's GPT-2 token classifier has 0.1)")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="the trainers' initialisation and batch-order seed (default: --seed); data stays --seed's")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--batching", default=None, choices=OURS,
                    help="batching of the first (reference) row: default conf/prm_train.yaml's train.batching")
    ap.add_argument("--extra", nargs="*", default=[], choices=EXTRAS,
                    help="more rows: TRL with gradient checkpointing (PRMConfig's default), TRL with "
                    "length-grouped sampling, TRL on the fused GELU our models get, ours with another batching strategy")
    ap.add_argument("--windows", nargs="*", type=int, default=[],
                    help="more rows: ours with windowed batching sorting N batches' worth together (default 2)")
    ap.add_argument("--curve", type=int, default=0,
                    help="every this many steps, a checkpoint of each trainer scored after training: the loop time "
                         "each takes to reach TRL's final local AUROC (and stay there); divides --steps")
    ap.add_argument("--verbose", action="store_true", help="show both trainers' own logs")
    return ap


def default_batching() -> tuple[str, int]:
    """The row name of conf/prm_train.yaml's ``train.batching`` (``mixed`` for random batches with
    ``train.splits`` above 1: what ``prm-train`` uses unless told otherwise) and its splits."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        train = compose(config_name="prm_train").train
    splits = int(train.get("splits", 1))
    return ("mixed" if train.batching == "random" and splits > 1 else str(train.batching)), splits


def measure(args: argparse.Namespace) -> tuple[list[Result], list[str]]:
    """Train every row on the same data and backbone; the results (ours first) and the header lines."""
    if args.curve and (args.curve < 0 or args.steps % args.curve):
        sys.exit(f"--curve {args.curve} must divide --steps {args.steps} (the final step is a point of the curve)")
    torch.set_num_threads(args.threads)
    if not args.verbose:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    _, _, trl_version = import_trl()
    world = ArithConfig()
    conf_batching, conf_splits = default_batching()
    batching = args.batching or conf_batching
    if args.splits is None:
        args.splits = conf_splits if conf_splits > 1 else 4
    if args.splits < 1:
        sys.exit(f"--splits {args.splits} must be at least 1")

    with tempfile.TemporaryDirectory(prefix="trl-prm-bench-") as tmp:
        root = Path(tmp)
        train_ex, held_out = make_data(args, world)
        data_path = root / "train.jsonl"
        write_stepwise(data_path, train_ex)
        backbone = make_backbone(args, root)
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(str(backbone), local_files_only=True)
        context = getattr(lm.config, "n_positions", None) or getattr(lm.config, "max_position_embeddings", None)
        shape = f"{lm.config.model_type}, {parameter_count(lm):,} parameters, context {context}"
        del lm
        label = f"ours ({batching}, {args.splits} splits)" if batching == "mixed" else f"ours ({batching})"
        results = [train_ours(args, data_path, backbone, root / "ours", held_out, batching, label)]
        results.append(train_trl(args, data_path, backbone, root / "trl", held_out, "trl"))
        if "trl-gradckpt" in args.extra:
            results.append(train_trl(args, data_path, backbone, root / "trl-gc", held_out, "trl, grad ckpt",
                                     gradient_checkpointing=True))
        if "trl-fused" in args.extra:
            results.append(train_trl(args, data_path, backbone, root / "trl-fused", held_out, "trl, fused GELU",
                                     fused=True))
        if "trl-grouped" in args.extra:
            results.append(train_trl(args, data_path, backbone, root / "trl-grp", held_out, "trl, group_by_length",
                                     grouped=True))
        for strategy in OURS:
            if f"ours-{strategy}" in args.extra and strategy != batching:
                results.append(train_ours(args, data_path, backbone, root / f"ours-{strategy}", held_out, strategy,
                                          f"ours ({strategy})"))
        for window in args.windows:
            results.append(train_ours(args, data_path, backbone, root / f"ours-w{window}", held_out, "windowed",
                                      f"ours (windowed, {window} batches)", chunk_batches=window))
        layouts = compare_layouts(backbone, held_out, context)

    size = (f"--backbone {args.backbone} ({shape})" if args.backbone else
            f"fresh tiny GPT-2 {args.n_layer} layers x {args.n_embd} ({args.n_head} heads; {shape})")
    first = results[0]
    n_pos = sum(y >= 0.5 for r in first.labels for y in r)
    # what the step's position alone gives (later steps are more often wrong): a model at this
    # level has learned the position prior, not the arithmetic
    prior = Result("step index", 0, 0, 0, 0, 0, [[-float(i) for i in range(len(r))] for r in first.labels],
                   first.labels, math.nan)
    header = [
        f"world ArithConfig() defaults; {args.train_problems} train problems (seed {args.seed}), "
        f"{args.eval_problems} held-out (seed {args.seed + 1000}), 1 injected-error solution each; "
        f"backbone {size}; trainers' seed {train_seed(args)}; our head dropout {args.head_dropout:g}; "
        f"{args.steps} steps x {args.batch_size}, "
        f"lr {args.lr:g}, warm-up {args.warmup}, cosine to 10%, AdamW (0.9, 0.95) wd 0.1, clip 1.0, fp32; "
        f"{args.threads} thread(s) "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); torch {torch.__version__}, TRL {trl_version}",
        f"held-out: {first.n_steps} labelled steps ({n_pos} on track); {layouts}; "
        f"step-index-only baseline: step AUROC {prior.step_auroc():.4f}, local AUROC {prior.local_auroc():.4f}",
    ]
    return results, header


def rows(results: list[Result], batch_size: int) -> list[dict[str, Any]]:
    """One dict per trainer: the table's columns (times relative to the first row, ours). With
    ``--curve``: the loop time each trainer takes to reach TRL's final local AUROC and stay at or
    above it, and TRL's time to it over each row's."""
    base = results[0].loop_s
    trl_row = next((r for r in results if r.name == "trl"), None)
    target = trl_row.local_auroc() if trl_row is not None and trl_row.curve else None
    trl_to = trl_row.time_to(target) if trl_row is not None and target is not None else None
    out = []
    for r in results:
        note = "" if r.n_steps == results[0].n_steps else f" ({r.n_steps} steps!)"
        out.append({
            "trainer": r.name, "steps": r.steps, "batch": batch_size, "train wall s (loop)": round(r.loop_s, 1),
            "steps/s": round(r.steps / r.loop_s, 2), "call s": round(r.call_s, 1), "tokens": r.tokens,
            "padding": 1.0 - r.tokens / r.padded if r.padded else float("nan"), "final train loss": r.final_loss,
            "step AUROC": f"{r.step_auroc():.4f}{note}", "local AUROC": round(r.local_auroc(), 4),
            "time ratio vs ours": round(r.loop_s / base, 2),
        })
        if target is not None and r.curve:
            reached = r.time_to(target)
            out[-1].update({
                "steps to TRL's local AUROC": reached[0] if reached else "never",
                "s to TRL's local AUROC": round(reached[1], 1) if reached else "never",
                "TRL's time to it / this": round(trl_to[1] / reached[1], 2) if reached and trl_to else "n/a",
                "curve (step: local AUROC)": " ".join(f"{s}:{v:.3f}" for s, _, v in r.curve),
            })
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """prm-train (default batching) against TRL's PRMTrainer, for ``benchmarks/run_all.py``.

    Starts from the trained policy of ``benchmarks/trained_policy.py`` (``$PRM_BENCH_POLICY``, else
    the demo's ``runs/demo/sft/model``), else a fresh tiny GPT-2 (then local AUROC is near 0.5 for both).
    ``quick``: 200 steps x 32 on 3000 problems; otherwise 1000 steps x 64 on 16000. Both score a
    checkpoint every 100 steps (``--curve``): the time each takes to reach TRL's final local AUROC.
    """
    from trained_policy import trained_policy

    policy, _ = trained_policy()
    argv = ["--steps", "200", "--train-problems", "3000", "--curve", "100"] if quick else \
        ["--steps", "1000", "--batch-size", "64", "--train-problems", "16000", "--eval-problems", "500", "--curve", "100"]
    if policy:
        argv += ["--backbone", policy]
    args = parser().parse_args(argv)
    results, header = measure(args)
    print("\n".join(header))
    return rows(results, args.batch_size)


def main() -> None:
    args = parser().parse_args()
    results, header = measure(args)
    print("\n".join(header))
    print()
    table = rows(results, args.batch_size)
    print("| " + " | ".join(table[0]) + " |")
    print("|---" * len(table[0]) + "|")
    for row in table:
        cells = [f"{v:.1%}" if k == "padding" else f"{v:.4f}" if k == "final train loss" else
                 f"{v:.2f}x" if k == "time ratio vs ours" else f"{v:,}" if k == "tokens" else str(v)
                 for k, v in row.items()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
