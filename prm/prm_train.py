"""``prm-train``: train a process reward model with BCE on each step's label token.

Reads top to bottom: compose the config, build the PRM (a tiny GPT from scratch, or the backbone
of a causal LM directory, ``init_from``, e.g. the policy at ``runs/sft/model``, with a fresh
one-logit head), read stepwise examples (any stepwise JSONL: ``prm-sample``'s labelled samples by
default, converted PRM800K, TRL stepwise datasets; PRM800K as released with ``data=prm800k``; or
the arithmetic world's exactly labelled training solutions with ``data=arith``), split off a
validation set BY PROBLEM, encode with ``prm.models.prm_inputs.encode_steps`` (the one encoding
the scorer also uses; too-long examples keep the labels of the steps that fit, and an example
with no label left is dropped and counted), train with the project's one loop
(``prm.train.loop``: resume, checkpoints, metrics, bf16, accelerate) and the loss of
``prm.prm_loss``, and write the PRM in Hugging Face format to ``run_dir/model`` (tokenizer beside
it) and ``run_dir/train_summary.json`` (data counts, final losses, validation step accuracy and
AUROC). Re-running in the same ``run_dir`` resumes.

``labels`` chooses what the model is trained on (``prm.data.stepwise.relabel``): ``process`` (the
data's own step labels), ``exact`` / ``mc_hard`` / ``mc_soft`` (the per-step lists a
``prm-sample labeller=mc`` file carries), or outcome supervision, an ORM (Lightman et al. 2023):
``outcome_all`` (every step carries the final answer's correctness) or ``outcome_last`` (only the
last step does). The choice is saved in the model's config (``prm_labels``), and for an ORM the
aggregation its scores call for (``prm_aggregation: last``, the score of the final step), which
``PRMScorer`` uses when it is given no aggregation.

    prm-train                                             # runs/sample/samples.jsonl, tiny PRM
    prm-train init_from=runs/sft/model                    # start from the policy's backbone
    prm-train data.path=runs/prm_data/samples.jsonl balance=true
    prm-train data=prm800k data.path=/data/prm800k/phase2_train.jsonl init_from=/models/my-lm
    prm-train data.path=runs/mc_data/samples.jsonl labels=mc_soft     # soft Monte-Carlo labels
    prm-train labels=outcome_all init_from=runs/sft/model run_dir=runs/orm   # an outcome reward model
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prm.data.arith import ArithConfig, generate_dataset
from prm.data.errors import DataError, SkipReport
from prm.data.prm800k import PRM800KOptions, parse_record
from prm.data.stepwise import (
    LABEL_CHOICES,
    OUTCOME_CHOICES,
    StepwiseExample,
    outcome_label,
    read_jsonl,
    read_stepwise,
    relabel,
)
from prm.evaluation.metrics import auroc, local_auroc
from prm.io import atomic_write_text, write_json
from prm.models.label_forward import label_logits
from prm.models.loading import ModelLoadError, TinyGPTConfig, load_tokenizer, parameter_count
from prm.models.prm_inputs import encode_steps
from prm.models.prm_model import build_prm
from prm.prm_loss import PRMLoss, check_packing, class_weights, flat_targets, prm_collate
from prm.steps import PLAIN, StepFormat, save_step_format
from prm.train.loop import Callback, TrainConfig, train

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
SUMMARY_FILE = "train_summary.json"


class PRMTrainConfigError(ValueError):
    """A config value prm-train cannot use; the message names the key."""


def require(node: DictConfig, key: str, where: str, what: str) -> None:
    """Fail clearly when a mandatory value (``???``) was not given (``key in node`` is False for those)."""
    if key in node.keys() and OmegaConf.is_missing(node, key):
        raise PRMTrainConfigError(f"{where}.{key} is not set: give {what}")


# ---------------------------------------------------------------- data


def load_examples(data_cfg: DictConfig, labels: str = "process",
                  fmt: StepFormat = PLAIN) -> tuple[list[StepwiseExample], SkipReport]:
    """The stepwise examples of the ``data`` group (``stepwise`` JSONL, ``prm800k`` or ``arith``) with
    the ``labels`` to train on (``prm.data.stepwise.relabel``, applied as each record is read, so a
    record that lacks them is an error naming its file, line and field)."""
    if labels not in LABEL_CHOICES:
        raise PRMTrainConfigError(f"labels={labels!r} is not one of {', '.join(LABEL_CHOICES)}")
    source = data_cfg.get("source")
    report = SkipReport()
    skip = bool(data_cfg.get("skip_invalid", False))
    if source == "arith":
        world: dict[str, Any] = OmegaConf.to_container(data_cfg.world, resolve=True)  # type: ignore[assignment]
        try:
            cfg = ArithConfig.from_dict(world)
        except (TypeError, ValueError) as e:
            raise PRMTrainConfigError(f"data.world: {e}") from e
        generated = generate_dataset(int(data_cfg.n_problems), cfg, int(data_cfg.seed),
                                     int(data_cfg.get("samples_per_problem", 1)))
        out = []
        for i, ex in enumerate(generated):
            try:
                out.append(relabel(ex, labels, fmt))
            except DataError as e:
                raise DataError(e.message, path="<data=arith>", line=i + 1, field=e.field) from None
        return out, report
    if source not in ("stepwise", "prm800k"):
        raise PRMTrainConfigError(f"data.source={source!r} is not supported by prm-train "
                                  "(use data=stepwise, data=prm800k or data=arith)")
    require(data_cfg, "path", "data", "a JSONL file, e.g. data.path=runs/sample/samples.jsonl")
    path = Path(str(data_cfg.path)).expanduser()
    if not path.exists():
        hint = " (make it with prm-sample, or point data.path at a stepwise JSONL file)" if source == "stepwise" else ""
        raise DataError(f"file not found{hint}", path=path)
    if source == "prm800k":
        try:
            opts = PRM800KOptions(neutral=data_cfg.get("neutral", "positive"),
                                  include_alternatives=bool(data_cfg.get("include_alternatives", False)),
                                  drop_quality_control=bool(data_cfg.get("drop_quality_control", False)),
                                  drop_screening=bool(data_cfg.get("drop_screening", False)))
        except ValueError as e:
            raise PRMTrainConfigError(f"data: {e}") from e
        per_line = read_jsonl(path, lambda obj, line: [relabel(ex, labels, fmt) for ex in
                                                       parse_record(obj, opts, path=path, line=line)],
                              skip_invalid=skip, report=report)
        examples = [ex for exs in per_line for ex in exs]
    else:
        examples = read_stepwise(path, skip_invalid=skip, report=report, transform=lambda ex: relabel(ex, labels, fmt))
    if not examples:
        raise DataError("no usable records", path=path)
    return examples, report


def outcome_sources(examples: Sequence[StepwiseExample], fmt: StepFormat) -> dict[str, int]:
    """How many examples took their outcome from each source (``prm.data.stepwise.outcome_label``)."""
    counts: dict[str, int] = {}
    for ex in examples:
        if ex.completions:
            source = outcome_label(ex, fmt)[1]
            counts[source] = counts.get(source, 0) + 1
    return counts


def problem_groups(examples: Sequence[StepwiseExample]) -> list[int]:
    """A problem index per example: examples sharing ``extra["id"]`` OR the prompt text are one problem."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(k: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    keys_of = []
    for ex in examples:
        keys = [("prompt", ex.prompt)]
        if ex.extra.get("id") is not None:
            keys.append(("id", str(ex.extra["id"])))
        for k in keys[1:]:
            a, b = find(keys[0]), find(k)
            if a != b:
                parent[b] = a
        keys_of.append(keys[0])
    index: dict[tuple[str, str], int] = {}
    return [index.setdefault(find(k), len(index)) for k in keys_of]


def split_by_problem(examples: Sequence[StepwiseExample], val_fraction: float,
                     seed: int) -> tuple[list[StepwiseExample], list[StepwiseExample]]:
    """A seeded train/validation split of whole problems (``problem_groups``), never one problem on both sides.

    ``round(problems * val_fraction)`` problems go to validation (at least one when
    ``val_fraction > 0`` and there are two or more problems; never all of them).
    """
    if not 0 <= val_fraction < 1:
        raise PRMTrainConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    groups = problem_groups(examples)
    n_groups = max(groups, default=-1) + 1
    n_val = round(n_groups * val_fraction)
    if val_fraction > 0 and n_groups >= 2:
        n_val = min(max(1, n_val), n_groups - 1)
    order = list(range(n_groups))
    random.Random(f"prm-split-{seed}").shuffle(order)
    held_out = set(order[:n_val])
    train_ex = [ex for ex, g in zip(examples, groups) if g not in held_out]
    val_ex = [ex for ex, g in zip(examples, groups) if g in held_out]
    return train_ex, val_ex


@dataclass
class EncodeStats:
    """What encoding did to one split."""

    examples: int = 0  # read
    used: int = 0  # kept for training/eval
    truncated: int = 0  # at least one step cut by max_length (used or dropped)
    dropped_no_label: int = 0  # no labelled step left: dropped
    dropped_by_truncation: int = 0  # ... of which had labels before the cut
    lost_labels: int = 0  # labelled steps cut by max_length
    labelled: int = 0  # labelled steps kept
    positive: int = 0  # kept targets >= 0.5 (soft ones included)
    negative: int = 0
    soft: int = 0  # kept targets strictly between 0 and 1
    unlabelled: int = 0  # kept steps without a label (ignored by the loss)


def encode_examples(tok: PreTrainedTokenizerBase, examples: Sequence[StepwiseExample], fmt: StepFormat,
                    max_length: int | None) -> tuple[list[dict[str, Any]], EncodeStats]:
    """``{"input_ids", "positions", "targets"}`` per example (``encode_steps``), dropping those with no label left."""
    out: list[dict[str, Any]] = []
    st = EncodeStats(examples=len(examples))
    for ex in examples:
        enc = encode_steps(tok, ex.prompt, ex.completions, fmt, max_length)
        targets = list(ex.labels[: enc.kept])
        lost = sum(lab is not None for lab in ex.labels[enc.kept :])
        st.truncated += enc.truncated
        st.lost_labels += lost
        if all(t is None for t in targets):
            st.dropped_no_label += 1
            st.dropped_by_truncation += lost > 0
            continue
        out.append({"input_ids": enc.input_ids, "positions": enc.positions, "targets": targets})
        for t in targets:
            if t is None:
                st.unlabelled += 1
                continue
            st.labelled += 1
            st.positive += t >= 0.5
            st.negative += t < 0.5
            st.soft += 0.0 < t < 1.0
    st.used = len(out)
    return out, st


# ---------------------------------------------------------------- model


def backbone_dir(cfg: DictConfig) -> str | None:
    """The causal LM directory that initialises the PRM: ``init_from``, else ``model.path`` (None: scratch)."""
    model_cfg = cfg.model
    init_from = cfg.get("init_from")
    if not init_from:
        require(model_cfg, "path", "model", "a model directory, e.g. model.path=/models/my-lm (or init_from=...)")
    path = None if "path" not in model_cfg.keys() or OmegaConf.is_missing(model_cfg, "path") else model_cfg.path
    if init_from and path and str(init_from) != str(path):
        raise PRMTrainConfigError(f"init_from={init_from} and model.path={path} disagree: give one")
    return str(init_from or path) if (init_from or path) else None


def build_model(cfg: DictConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The PRM: ``backbone_dir`` with a fresh one-logit head, else a tiny GPT of the model group's sizes.

    Weights are trained in fp32 whatever ``model.dtype`` says (``train.mixed_precision=bf16``
    autocasts the forward pass).
    """
    model_cfg = cfg.model
    backbone = backbone_dir(cfg)
    tok = load_tokenizer(model_cfg.tokenizer) if model_cfg.get("tokenizer") else None
    size = None
    if backbone is None:
        sizes = {k: model_cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "dropout") if k in model_cfg}
        size = TinyGPTConfig(**sizes)
    try:
        model, tok = build_prm(backbone, tokenizer=tok, size=size, seed=int(cfg.seed),
                               extra_layers=int(cfg.get("extra_layers") or 0),
                               head_dropout=float(cfg.get("head_dropout") or 0.0))
    except ModelLoadError:  # a ValueError too: keep its own type and message
        raise
    except ValueError as e:  # impossible sizes (n_embd not divisible by n_head, ...)
        raise PRMTrainConfigError(f"model: {e}") from e
    return model.float(), tok


def context_length(model: PreTrainedModel) -> int | None:
    c = model.config
    return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: Sequence[dict[str, Any]], pad_token_id: int, *,
                   batch_size: int = 64, bf16: bool = False) -> list[list[float]]:
    """The PRM's logit at every kept step of every encoded example (batched by length)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = prm_collate(pad_token_id)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    out: list[list[float]] = [[] for _ in data]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    for start in range(0, len(order), batch_size):
        idxs = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([data[i] for i in idxs]).items()}
        mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for row, i in enumerate(idxs):
            mask[row, data[i]["positions"]] = True
        with autocast():
            values = label_logits(model, batch, mask).float().tolist()  # row-major: by row, then position
        at = 0
        for row, i in enumerate(idxs):
            read = sorted(set(data[i]["positions"]))
            by_position = dict(zip(read, values[at : at + len(read)]))
            at += len(read)
            out[i] = [by_position[p] for p in data[i]["positions"]]
    model.train(was_training)
    return out


def step_metrics(logits: Sequence[Sequence[float]], data: Sequence[dict[str, Any]],
                 pos_weight: float = 1.0, neg_weight: float = 1.0) -> dict[str, float]:
    """Loss (as trained), accuracy at 0.5, step AUROC (targets >= 0.5 positive) and local AUROC (hard labels)."""
    xs, ys = [], []
    for lg, ex in zip(logits, data):
        for x, t in zip(lg, ex["targets"]):
            if t is not None:
                xs.append(x)
                ys.append(t)
    if not xs:
        return {"loss": math.nan, "step_acc": math.nan, "step_auroc": math.nan, "steps": 0}
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    log_s, log_1ms = -np.logaddexp(0.0, -x), -np.logaddexp(0.0, x)
    loss = float(np.mean(-(pos_weight * y * log_s + neg_weight * (1 - y) * log_1ms)))
    scores = 1.0 / (1.0 + np.exp(-x))
    out = {"loss": loss, "step_acc": float(np.mean((x >= 0) == (y >= 0.5))),
           "step_auroc": auroc(scores, y >= 0.5), "steps": len(xs)}
    if np.isin(y, (0.0, 1.0)).all():
        per_scores = [[1.0 / (1.0 + math.exp(-v)) for v in lg] for lg in logits]
        out["local_auroc"] = local_auroc(per_scores, [ex["targets"] for ex in data]).auroc
    return out


def _clean(v: Any) -> Any:
    """JSON-safe numbers: NaN becomes null."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# ---------------------------------------------------------------- the app


def run(cfg: DictConfig, *, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Everything ``prm-train`` does, callable in-process; returns the summary it writes."""
    OmegaConf.set_struct(cfg, True)
    main_process = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    log = print if main_process else (lambda *a, **k: None)
    run_dir = Path(cfg.run_dir)
    try:
        train_cfg = TrainConfig.from_dict(OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise PRMTrainConfigError(f"train: {e}") from e
    try:
        fmt = StepFormat(style=str(cfg.get("style", "plain")), separator=str(cfg.separator),  # type: ignore[arg-type]
                         answer_marker=str(cfg.get("answer_marker", "# Answer")))
    except ValueError as e:
        raise PRMTrainConfigError(f"separator: {e}") from e

    # data first: a wrong path fails before any model is built
    labels = str(cfg.get("labels") or "process")
    examples, report = load_examples(cfg.data, labels, fmt)
    if report.skipped:
        log(f"[prm-train] {report.summary()}")
    train_ex, val_ex = split_by_problem(examples, float(cfg.val_fraction), int(cfg.split_seed))

    model, tok = build_model(cfg)
    model.config.prm_labels = labels  # saved with the model: what it learned to predict ...
    if labels in OUTCOME_CHOICES:  # ... and, for an ORM, the aggregation PRMScorer uses by default
        model.config.prm_aggregation = "last"
    backbone = backbone_dir(cfg)
    log(f"[prm-train] PRM: {parameter_count(model):,} parameters ({type(model).__name__}), "
        f"{'backbone from ' + backbone if backbone else 'from scratch'}")
    context = context_length(model)
    max_length = int(cfg.max_length) if cfg.max_length is not None else context
    if max_length is not None and context is not None and max_length > context:
        raise PRMTrainConfigError(f"max_length={max_length} exceeds the model's context of {context} tokens")

    train_data, train_st = encode_examples(tok, train_ex, fmt, max_length)
    val_data, val_st = encode_examples(tok, val_ex, fmt, max_length)
    for name, st in (("train", train_st), ("val", val_st)):
        if st.truncated or st.dropped_no_label:
            log(f"[prm-train] {name}: {st.truncated} example(s) longer than max_length={max_length} were cut "
                f"({st.lost_labels} label(s) lost); {st.dropped_no_label} dropped with no label left")
    if not train_data:
        raise DataError(f"no training example keeps a labelled step (of {train_st.examples}; "
                        f"max_length={max_length}, {train_st.dropped_by_truncation} cut, "
                        f"{train_st.dropped_no_label - train_st.dropped_by_truncation} unlabelled)")
    log(f"[prm-train] {len(train_data)} training / {len(val_data)} validation examples; training steps: "
        f"{train_st.labelled} labelled ({train_st.positive} positive, {train_st.negative} negative, "
        f"{train_st.soft} soft), {train_st.unlabelled} unlabelled; labels={labels}")
    sources = outcome_sources(examples, fmt) if labels in OUTCOME_CHOICES else None
    if sources is not None and sources.get("answer_step_label"):
        log(f"[prm-train] outcomes: {sources.get('correct', 0)} from the records' 'correct' field, "
            f"{sources['answer_step_label']} from the answer step's label (no 'correct' field)")

    pos_cfg = cfg.get("pos_weight")
    try:
        w_pos, w_neg = class_weights(flat_targets(train_data), pos_weight=None if pos_cfg is None else float(pos_cfg),
                                     balance=bool(cfg.balance))
    except ValueError as e:
        raise PRMTrainConfigError(str(e)) from e
    if (w_pos, w_neg) != (1.0, 1.0):
        log(f"[prm-train] class weights: positive {w_pos:.3f}, negative {w_neg:.3f}")
    loss_fn = PRMLoss(w_pos, w_neg)

    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    packed = train_cfg.batching == "packed"
    if packed:
        try:
            check_packing(model, pad, train_data)
        except ValueError as e:
            raise PRMTrainConfigError(str(e)) from e
    result = train(
        model, loss_fn, train_data, train_cfg,
        collate=prm_collate(pad, pack=packed), run_dir=run_dir, eval_data=val_data or None, tokenizer=tok,
        logger_cfg=OmegaConf.to_container(cfg.logger, resolve=True),  # type: ignore[arg-type]
        run_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        callbacks=callbacks,
    )

    summary: dict[str, Any] = {
        "step": result.step,
        "stopped_by": result.stopped_by,
        "resumed_from": result.resumed_from,
        "elapsed_s": round(result.elapsed_s, 1),
        "parameters": parameter_count(model),
        "init_from": backbone,
        "labels": labels,
        "outcome_from": sources,
        "model_dir": str(result.model_dir),
        "max_length": max_length,
        "n_train": len(train_data),
        "n_val": len(val_data),
        "dropped_no_label": train_st.dropped_no_label + val_st.dropped_no_label,
        "truncated": train_st.truncated + val_st.truncated,
        "skipped_invalid": report.skipped,
        "class_weights": {"positive": w_pos, "negative": w_neg},
        "train_data": asdict(train_st),
        "val_data": asdict(val_st),
        "train_loss": result.metrics.get("loss"),
    }
    if main_process:
        save_step_format(result.model_dir, fmt)  # scorers read the PRM's format from here
        bf16 = train_cfg.mixed_precision == "bf16"
        batch = train_cfg.eval_batch_size or train_cfg.batch_size or 64
        if val_data:
            m = step_metrics(predict_logits(model, val_data, pad, batch_size=batch, bf16=bf16), val_data, w_pos, w_neg)
            summary.update({f"val_{k}": v for k, v in m.items()})
        else:
            summary.update({"val_loss": None, "val_step_acc": None, "val_step_auroc": None})
        summary = _clean(summary)
        write_json(run_dir / SUMMARY_FILE, summary)
        shown = ", ".join(f"{k} {summary[k]:.4f}" if isinstance(summary.get(k), float) else f"{k} {summary.get(k)}"
                          for k in ("train_loss", "val_loss", "val_step_acc", "val_step_auroc"))
        log(f"[prm-train] step {result.step} ({result.stopped_by}): {shown}; "
            f"{summary['n_train']} train / {summary['n_val']} val examples used, "
            f"{summary['dropped_no_label']} dropped (no label left), {summary['truncated']} truncated")
        log(f"[prm-train] PRM saved to {result.model_dir}; summary in {run_dir / SUMMARY_FILE}")
    return summary


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="prm_train")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (DataError, ModelLoadError, PRMTrainConfigError) as e:
        print(f"prm-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
