"""``prm-sft``: supervised fine-tuning of a causal LM on prompt + solution pairs.

Reads top to bottom: compose the config, build or load the model, read the data (the arithmetic
world's training solutions with injected errors by default; any stepwise JSONL file; or a plain
JSONL of ``prompt`` + ``completion``/``solution``), encode each pair as
``prompt solution eos`` (the prompt with the tokenizer's own special tokens, so BOS where the
tokenizer adds one, as the generators do) with the loss on the solution and the EOS only, hold out a
validation split, train with the project's one loop (``prm.train.loop``), and write the model in
Hugging Face format to ``run_dir/model`` with ``summary.json`` beside it (on the arithmetic
world: greedy accuracy on held-out problems). Re-running in the same ``run_dir`` resumes.

    prm-sft                                              # tiny GPT on the arithmetic world
    prm-sft data=stepwise data.path=runs/demo/data/train.jsonl
    prm-sft model=hf_local model.path=/models/qwen-0.5b model.dtype=fp32 train.max_steps=100
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prm.data.arith import ARITH_FORMAT, sample_training_solution, solution_text
from prm.data.errors import DataError
from prm.data.stepwise import StepwiseExample, read_jsonl
from prm.io import atomic_write_text, write_json
from prm.models.loading import ModelLoadError, TinyGPTConfig, load_causal_lm, load_tokenizer, parameter_count
from prm.steps import (
    PLAIN, TAGGED, StepFormat, is_answer_step, join_solution, policy_prompt, save_step_format, solution_prefix,
)
from prm.train.batching import IGNORE_INDEX, pad_collate
from prm.train.loop import LOSS_WEIGHT, TrainConfig, load_metrics, train
from prm.worlds import ArithWorld, Task, World, make_world
from search.generation.hf import HFGenerator

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
FORMATS = {"plain": PLAIN, "tagged": TAGGED, "arith": ARITH_FORMAT}


class SFTConfigError(ValueError):
    """A config value prm-sft cannot use; the message names the key."""


@dataclass
class Pair:
    """One SFT example: the prompt (no loss) and the solution the model learns to write."""

    prompt: str
    solution: str
    task: Task | None = None  # the world's task (arithmetic world)


def require(node: DictConfig, key: str, where: str, what: str) -> None:
    """Fail clearly when a mandatory value (``???``) was not given on the command line."""
    if OmegaConf.is_missing(node, key):
        raise SFTConfigError(f"{where}.{key} is not set: give {what}")


# ---------------------------------------------------------------- formats and prompts


def step_format(name: str, *, arith: bool = False) -> StepFormat:
    """The solution format named in config; ``plain`` in the arithmetic world means ``# Answer: N``."""
    if name not in FORMATS:
        raise SFTConfigError(f"data.format={name!r} is not a format (choose from {sorted(FORMATS)})")
    return ARITH_FORMAT if arith and name == "plain" else FORMATS[name]


# ---------------------------------------------------------------- data


def arith_pairs(data_cfg: DictConfig) -> tuple[list[Pair], ArithWorld]:
    """The world's training problems (never a held-out one), each with ``samples_per_problem``
    training solutions with injected errors."""
    try:
        world = make_world(data_cfg)
    except (TypeError, ValueError) as e:
        raise SFTConfigError(str(e)) from e
    assert isinstance(world, ArithWorld)
    rng = random.Random(f"sft-solutions-{data_cfg.seed}")
    draw = world.problems("train", int(data_cfg.n_problems), int(data_cfg.seed))
    print(f"[sft] training problems: {draw.report()}")
    pairs = [
        Pair(t.prompt, sample_training_solution(t.data, world.config, rng, world.fmt), t)
        for t in draw.tasks
        for _ in range(int(data_cfg.get("samples_per_problem", 1)))
    ]
    return pairs, world


def parse_pair(obj: Any, line: int, *, path: str | Path, fmt: StepFormat, only_on_track: bool) -> Pair | None:
    """A stepwise record (steps joined in ``fmt``) or a ``prompt`` + ``completion``/``solution`` record."""
    if isinstance(obj, dict) and "completions" in obj:
        ex = StepwiseExample.from_dict(obj, path=path, line=line)
        if only_on_track and not all(lab == 1.0 for lab in ex.labels):
            return None
        answer = ex.extra.get("answer")
        if ex.completions and is_answer_step(ex.completions[-1], fmt):  # the answer is the last step
            solution = solution_prefix(ex.completions[:-1], fmt) + ex.completions[-1]
        elif answer is not None:
            solution = join_solution(ex.completions, str(answer), fmt)
        else:
            solution = fmt.separator.join(ex.completions)
        return Pair(policy_prompt(ex.prompt, fmt), solution)
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    if not isinstance(obj.get("prompt"), str):
        raise DataError("missing or non-string field (need prompt + completions, or prompt + completion/solution)",
                        path=path, line=line, field="prompt")
    key = "completion" if "completion" in obj else "solution" if "solution" in obj else None
    if key is None:
        raise DataError("no 'completions', 'completion' or 'solution' field", path=path, line=line, field="completion")
    if not isinstance(obj[key], str):
        raise DataError(f"expected a string, got {type(obj[key]).__name__}", path=path, line=line, field=key)
    return Pair(obj["prompt"], obj[key])


def jsonl_pairs(data_cfg: DictConfig, only_on_track: bool) -> tuple[list[Pair], StepFormat]:
    """Pairs from a stepwise or prompt/completion JSONL file (``data.path``)."""
    fmt = step_format(data_cfg.get("format", "plain"))
    require(data_cfg, "path", "data", "a JSONL file, e.g. data.path=runs/demo/data/train.jsonl")
    path = Path(str(data_cfg.path)).expanduser()
    parsed = read_jsonl(path, lambda obj, line: parse_pair(obj, line, path=path, fmt=fmt, only_on_track=only_on_track),
                        skip_invalid=bool(data_cfg.get("skip_invalid", False)))
    pairs = [p for p in parsed if p is not None]
    if not pairs:
        raise DataError("no usable records (only_on_track dropped them all)", path=path)
    return pairs, fmt


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded held-out split; at least one validation example when there are two or more."""
    if not 0 <= val_fraction < 1:
        raise SFTConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    order = list(range(len(pairs)))
    random.Random(f"sft-split-{seed}").shuffle(order)
    n_val = round(len(pairs) * val_fraction)
    if val_fraction > 0 and len(pairs) >= 2:
        n_val = max(1, n_val)
    val = sorted(order[:n_val])
    train_idx = sorted(order[n_val:])
    return [pairs[i] for i in train_idx], [pairs[i] for i in val]


# ---------------------------------------------------------------- encoding and loss


def prompt_ids(tok: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt with the tokenizer's own special tokens (BOS where it adds one), as the
    generators encode prompts; an EOS the tokenizer appends to every text is dropped."""
    ids = list(tok(prompt, add_special_tokens=True).input_ids)
    if ids and tok.eos_token_id is not None and ids[-1] == tok.eos_token_id:
        ids = ids[:-1]
    return ids


def encode_pair(tok: PreTrainedTokenizerBase, pair: Pair, max_length: int | None) -> dict[str, list[int]] | None:
    """``input_ids`` = prompt solution eos; ``labels`` = -100 on the prompt, the ids elsewhere.

    The prompt and the solution are tokenized separately (the model learns to continue exactly
    the prompt tokens a generator feeds it). Too long: cut at ``max_length``; None when no
    solution token is left.
    """
    if tok.eos_token_id is None:
        raise ModelLoadError("the tokenizer has no EOS token: SFT needs one to teach the model to stop")
    head = prompt_ids(tok, pair.prompt)
    tail = [*tok(pair.solution, add_special_tokens=False).input_ids, tok.eos_token_id]
    ids = head + tail
    labels = [IGNORE_INDEX] * len(head) + tail
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mean next-token cross-entropy over the labelled (solution + EOS) tokens; also token accuracy."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    n = mask.sum().clamp(min=1)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum") / n
    with torch.no_grad():
        acc = ((logits.argmax(-1) == labels) & mask).sum() / n
    return loss, {"token_acc": acc, LOSS_WEIGHT: n}  # the mean is over target tokens


# ---------------------------------------------------------------- model


def build_model(model_cfg: DictConfig, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny GPT from the sizes in config (``path: null``) or any local Hugging Face model directory."""
    require(model_cfg, "path", "model", "a model directory, e.g. model.path=/models/my-lm")
    tok = load_tokenizer(model_cfg.tokenizer) if model_cfg.get("tokenizer") else None
    path = model_cfg.path
    if path is None:
        sizes = {k: model_cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "dropout") if k in model_cfg}
        try:
            size = TinyGPTConfig(**sizes)
            return load_causal_lm(tokenizer=tok, size=size, dtype=model_cfg.get("dtype", "fp32"), seed=seed)
        except ValueError as e:
            raise SFTConfigError(f"model: {e}") from e
    return load_causal_lm(path, tokenizer=tok, dtype=model_cfg.get("dtype", "fp32"))


def context_length(model: PreTrainedModel) -> int | None:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


# ---------------------------------------------------------------- greedy accuracy (arithmetic world)


def greedy_accuracy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, world: World, tasks: Sequence[Task],
                    *, batch_size: int = 256) -> float:
    """Share of tasks whose greedy solution (the project's HF generator) the world grades right."""
    if not tasks:
        return float("nan")
    was_training = model.training
    device = next(model.parameters()).device
    gen = HFGenerator(model, tok, device=device, batch_size=batch_size)
    # room for a correct solution with the widest numbers, and a few tokens more
    longest = max(len(tok(solution_text(t.data, world.fmt) + "9" * 2 * (t.difficulty or 1),
                          add_special_tokens=False).input_ids) for t in tasks)
    outs = gen.generate([policy_prompt(t.prompt, world.fmt) for t in tasks], n=1, temperature=0.0,
                        max_new_tokens=longest + 8)
    model.train(was_training)
    return sum(world.grade(t, g[0].text) for t, g in zip(tasks, outs)) / len(tasks)


# ---------------------------------------------------------------- the app


def run(cfg: DictConfig) -> dict[str, Any]:
    """Everything ``prm-sft`` does, callable in-process; returns the summary it writes."""
    OmegaConf.set_struct(cfg, True)
    run_dir = Path(cfg.run_dir)
    try:
        train_cfg = TrainConfig.from_dict(OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise SFTConfigError(f"train: {e}") from e
    if train_cfg.batching == "packed":
        raise SFTConfigError("train.batching=packed is prm-train's (its collate packs); prm-sft: bucketed, windowed "
                             "or random")

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    model, tok = build_model(cfg.model, int(cfg.seed))
    print(f"[sft] model: {parameter_count(model):,} parameters ({type(model).__name__})")

    source = cfg.data.get("source")
    world: ArithWorld | None = None
    if source == "arith":
        pairs, world = arith_pairs(cfg.data)
        fmt = world.fmt
    elif source in ("stepwise", "jsonl"):
        pairs, fmt = jsonl_pairs(cfg.data, bool(cfg.only_on_track))
    else:
        raise SFTConfigError(f"data source {source!r} is not supported by prm-sft (use data=arith or data=stepwise)")
    if not pairs:
        raise DataError(f"the dataset is empty (data.source={source}"
                        + (f", data.n_problems={cfg.data.n_problems})" if source == "arith" else ")"))
    train_pairs, val_pairs = split_pairs(pairs, float(cfg.val_fraction), int(cfg.data.get("seed", 0)))
    if not train_pairs:
        raise DataError(f"no training examples left after holding out val_fraction={cfg.val_fraction}")

    max_length = cfg.max_length or context_length(model)
    encoded = [encode_pair(tok, p, max_length) for p in train_pairs]
    train_data = [e for e in encoded if e is not None]
    val_data = [e for e in (encode_pair(tok, p, max_length) for p in val_pairs) if e is not None]
    cut = sum(e["labels"][-1] != tok.eos_token_id for e in train_data) + len(encoded) - len(train_data)
    if cut:
        print(f"[sft] {cut} training example(s) longer than max_length={max_length} were cut "
              f"({len(encoded) - len(train_data)} dropped: no solution token left)")
    if not train_data:
        raise DataError(f"no training example keeps a solution token within max_length={max_length}")
    print(f"[sft] {len(train_data)} training / {len(val_data)} validation examples "
          f"(mean length {sum(len(e['input_ids']) for e in train_data) / len(train_data):.1f} tokens)")

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    result = train(
        model, sft_loss, train_data, train_cfg,
        collate=pad_collate(pad), run_dir=run_dir, eval_data=val_data or None, tokenizer=tok,
        logger_cfg=OmegaConf.to_container(cfg.logger, resolve=True),  # type: ignore[arg-type]
        run_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )

    save_step_format(result.model_dir, fmt)  # the format the policy writes (benchmarks and tools read it)
    last: dict[str, Any] = {}
    for row in load_metrics(run_dir):  # the latest value of every metric, over resumed sessions too
        last.update(row)
    last.pop("step", None)
    summary: dict[str, Any] = {
        "step": result.step,
        "stopped_by": result.stopped_by,
        "elapsed_s": round(result.elapsed_s, 1),
        "mean_tokens_per_s": round(last.get("tokens", 0) / result.elapsed_s, 1) if result.elapsed_s else None,
        "n_train": len(train_data),
        "n_val": len(val_data),
        "parameters": parameter_count(model),
        "model_dir": str(result.model_dir),
        **last,
    }
    if source == "arith" and int(cfg.eval_problems) > 0:
        assert world is not None
        held_out = world.problems("test", int(cfg.eval_problems), int(cfg.data.seed) + 1_000_003).tasks
        acc = greedy_accuracy(model, tok, world, held_out)
        summary["greedy_accuracy"] = acc
        summary["n_eval_problems"] = len(held_out)
        print(f"[sft] greedy accuracy on {len(held_out)} held-out problems: {acc:.3f}")
    write_json(run_dir / "summary.json", summary)
    print(f"[sft] model saved to {result.model_dir}; summary in {run_dir / 'summary.json'}")
    return summary


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="sft")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (DataError, ModelLoadError, SFTConfigError) as e:
        print(f"prm-sft: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
