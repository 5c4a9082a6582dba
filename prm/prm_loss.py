"""The PRM's loss: binary cross-entropy with logits on each step's label token, nothing else.

A batch (``prm_collate``) holds ``input_ids``, ``attention_mask`` and ``labels``: a float tensor
the shape of ``input_ids`` that is ``IGNORE_LABEL`` (-100) everywhere except on the label token of
each labelled step (``prm.models.prm_inputs.encode_steps``), where it is the target in [0, 1]
(hard 0/1 or soft). Unlabelled steps (``None``) are never written, so they are ignored too.

``bce_on_labels`` averages ``-(w_pos * y * log s + w_neg * (1 - y) * log(1 - s))`` over the
labelled positions (``s = sigmoid(logit)``; with ``w_pos = w_neg = 1`` this is PyTorch's
``binary_cross_entropy_with_logits``; ``w_pos`` alone is its ``pos_weight``). The mean divides by
the number of labelled positions, not by the weights. ``class_weights`` gives the weights from
config: a ``pos_weight``, or ``balance`` (inverse class frequency on the training labels, scaled
so the average weight is 1). A batch without a labelled position has loss 0 that still carries
a gradient graph (never NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from prm.models.label_forward import label_logits
from prm.train.batching import pack_rows
from prm.train.loop import LOSS_WEIGHT

IGNORE_LABEL = -100.0


def prm_collate(pad_token_id: int, *, pack: bool = False,
                pack_length: int | None = None) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Collate encoded examples ``{"input_ids", "positions", "targets"}`` into right-padded tensors.

    ``labels[row, positions[j]] = targets[j]`` for every target that is not None; every other
    position (other tokens, unlabelled steps, padding) is ``IGNORE_LABEL``.

    ``pack``: several examples per row (``prm.train.batching.pack_rows``, rows of at most
    ``pack_length`` tokens, None: twice the batch's longest example), no ``attention_mask`` but
    ``position_ids`` that restart at 0 for each example (and for the filler after the last), from
    which Hugging Face models build block-diagonal causal attention: each example sees exactly
    what it would see alone, so the logits and the loss are those of the unpacked batch, with
    little padding. ``token_mask`` marks the real tokens (for counting). Needs a model that packs by
    position ids (``check_packing``).
    """

    def packed(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = pack_rows([len(ex["input_ids"]) for ex in examples], pack_length)
        width = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        real = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_LABEL, dtype=torch.float32)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                ex = examples[i]
                n = len(ex["input_ids"])
                ids[r, at : at + n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
                pos[r, at : at + n] = torch.arange(n)
                real[r, at : at + n] = 1
                for p, target in zip(ex["positions"], ex["targets"]):
                    if target is not None:
                        labels[r, at + p] = float(target)
                at += n
            pos[r, at:] = torch.arange(width - at)
            ids[r, at:] = ids[r, 0]  # a segment of its own, never labelled (not the pad id: HF would warn of padding)
        return {"input_ids": ids, "position_ids": pos, "token_mask": real, "labels": labels}

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if pack:
            return packed(examples)
        longest = max(len(ex["input_ids"]) for ex in examples)
        ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_LABEL, dtype=torch.float32)
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
            for pos, target in zip(ex["positions"], ex["targets"]):
                if target is not None:
                    labels[row, pos] = float(target)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def bce_on_labels(
    logits: torch.Tensor, labels: torch.Tensor, *, pos_weight: float = 1.0, neg_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted BCE over the positions where ``labels != IGNORE_LABEL`` (see the module docstring).

    ``logits``: ``[batch, tokens]`` or ``[batch, tokens, 1]``. Metrics: ``step_acc`` (sigmoid >= 0.5
    against target >= 0.5), ``frac_pos`` (mean target), ``labelled_steps`` (count); all 0 when
    nothing is labelled.
    """
    if logits.dim() == 3:
        if logits.size(-1) != 1:
            raise ValueError(f"a PRM has one logit per token (got {logits.size(-1)})")
        logits = logits.squeeze(-1)
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
    mask = labels != IGNORE_LABEL
    return bce_on_steps(logits[mask], labels[mask], pos_weight=pos_weight, neg_weight=neg_weight)


def bce_on_steps(
    x: torch.Tensor, y: torch.Tensor, *, pos_weight: float = 1.0, neg_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``bce_on_labels`` on the labelled positions' logits ``x`` and targets ``y`` (flat, same length). Without
    a label the loss is 0 with a graph (``x.sum() * 0``: backward() gives zero gradients), all metrics 0."""
    n = y.numel()
    if n == 0:
        none = torch.zeros((), device=x.device)
        return x.sum() * 0.0, {"step_acc": none, "frac_pos": none, "labelled_steps": none}
    x = x.float()
    y = y.float()
    per_step = -(pos_weight * y * F.logsigmoid(x) + neg_weight * (1.0 - y) * F.logsigmoid(-x))
    loss = per_step.sum() / n
    with torch.no_grad():
        acc = ((x >= 0) == (y >= 0.5)).float().mean()
        metrics = {"step_acc": acc, "frac_pos": y.mean(), "labelled_steps": torch.tensor(float(n))}
    return loss, metrics


def token_logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's per-token logit ``[batch, tokens]`` (a token-classification model, one label),
    for a padded batch (``attention_mask``) or a packed one (``position_ids``, see ``prm_collate``).
    No KV cache is built (``use_cache=False``: training and scoring whole texts never reuse one)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"), use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out
    return logits.squeeze(-1) if logits.dim() == 3 else logits


def check_packing(model: torch.nn.Module, pad_token_id: int, examples: Sequence[dict[str, Any]]) -> None:
    """Raise ``ValueError`` unless the model gives packed examples (``prm_collate(pack=True)``)
    exactly the logits it gives them alone: a model that ignores position-id packing would let
    examples attend to each other and train on the wrong inputs without any error."""
    pair = list(examples[:2])
    if len(pair) < 2:
        return
    pair = [{**ex, "input_ids": list(ex["input_ids"][:32]), "positions": [], "targets": []} for ex in pair]
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            packed = token_logits_of(model, prm_collate(pad_token_id, pack=True,
                                                        pack_length=sum(len(ex["input_ids"]) for ex in pair))(pair))
            alone = [token_logits_of(model, prm_collate(pad_token_id)([ex]))[0] for ex in pair]
    finally:
        model.train(was_training)
    first = len(pair[0]["input_ids"])
    got = [packed[0, :first], packed[0, first : first + len(pair[1]["input_ids"])]]
    if packed.shape[0] != 1 or not all(torch.allclose(g, a, atol=1e-4, rtol=1e-3) for g, a in zip(got, alone)):
        raise ValueError(f"{type(model).__name__} does not keep packed examples apart (its attention ignores "
                         "position-id packing): use train.batching=windowed, bucketed or random")


@dataclass(frozen=True)
class PRMLoss:
    """``loss_fn(model, batch)`` for ``prm.train.loop.train``: ``bce_on_labels`` on the model's logits at the
    labelled positions (``prm.models.label_forward.label_logits``: the last layer runs only there)."""

    pos_weight: float = 1.0
    neg_weight: float = 1.0

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        labels = batch["labels"]
        mask = labels != IGNORE_LABEL
        x = label_logits(model, batch, mask)  # no label: the full forward's empty selection (a graph, loss 0)
        if x.dim() != 1:
            raise ValueError(f"a PRM has one logit per token (got logits of shape {tuple(x.shape)} at the "
                             f"{int(mask.sum())} labelled steps)")
        loss, metrics = bce_on_steps(x, labels[mask], pos_weight=self.pos_weight, neg_weight=self.neg_weight)
        return loss, {**metrics, LOSS_WEIGHT: metrics["labelled_steps"]}  # the mean is over labelled steps


def class_weights(targets: Iterable[float | None], *, pos_weight: float | None = None,
                  balance: bool = False) -> tuple[float, float]:
    """``(w_pos, w_neg)`` from config: ``(pos_weight, 1)``, inverse frequency (``balance``), or ``(1, 1)``.

    Balanced: ``w_pos = N / (2 N_pos)``, ``w_neg = N / (2 N_neg)`` over the labelled targets (a
    soft target ``y`` counts ``y`` positive and ``1 - y`` negative), so the mean weight is 1. With
    one class absent there is nothing to balance: ``(1, 1)``.
    """
    if balance and pos_weight is not None:
        raise ValueError("give pos_weight or balance=true, not both")
    if pos_weight is not None:
        if not pos_weight > 0:
            raise ValueError(f"pos_weight={pos_weight} must be > 0")
        return float(pos_weight), 1.0
    if not balance:
        return 1.0, 1.0
    ys = [float(y) for y in targets if y is not None]
    n_pos = sum(ys)
    n_neg = len(ys) - n_pos
    if n_pos <= 0 or n_neg <= 0:
        return 1.0, 1.0
    return len(ys) / (2 * n_pos), len(ys) / (2 * n_neg)


def flat_targets(examples: Sequence[dict[str, Any]]) -> list[float | None]:
    """Every step target of encoded examples, in order (None = unlabelled)."""
    return [t for ex in examples for t in ex["targets"]]
