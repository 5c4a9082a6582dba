"""The PRM's logits at label positions only (the last layer run only there): exactly the full forward's logits
and gradients, padded or packed, GPT-2 or the fallback; validation reads the same numbers."""

from __future__ import annotations

import random

import pytest
import torch
from test_batching import _prm

from prm.models.label_forward import _without_last_layer, label_logits, supports_label_forward
from prm.prm_loss import IGNORE_LABEL, PRMLoss, bce_on_labels, prm_collate, token_logits_of
from prm.prm_train import predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def examples(n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Varied lengths; a few labelled positions each (some unlabelled: None), one example without any."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(6, 40)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        positions = [] if i == 3 else sorted(rng.sample(range(length), rng.randint(1, min(5, length))))
        out.append({"input_ids": ids, "positions": positions,
                    "targets": [None if rng.random() < 0.2 else float(rng.random() < 0.5) for _ in positions]})
    return out


def with_random_head(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    head = getattr(model, "classifier", None) or model.score
    torch.nn.init.normal_(head.weight, std=0.5)  # a fresh head is near zero: differences would hide
    return model


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("pack", [False, True])
def test_label_logits_equal_the_full_forward_and_its_gradients(kind: str, pack: bool) -> None:
    model, pad, vocab = _prm(kind)
    model = with_random_head(model)
    assert supports_label_forward(model) == (kind == "gpt2")  # llama: the full forward, same numbers
    batch = prm_collate(pad, pack=pack)(examples(10, vocab))
    mask = batch["labels"] != IGNORE_LABEL
    got = []
    for fn in (lambda: token_logits_of(model, batch)[mask], lambda: label_logits(model, batch, mask)):
        model.zero_grad()
        x = fn()
        (x * torch.linspace(-1, 1, x.numel())).sum().backward()
        got.append((x.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (full, g_full), (fast, g_fast) = got
    assert fast.shape == (int(mask.sum()),)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert set(g_fast) == set(g_full)  # every parameter, the last layer's included, gets its gradient
    for k in g_full:
        torch.testing.assert_close(g_fast[k], g_full[k], rtol=1e-3, atol=1e-5)  # float sums in another order
    # the loss the loop trains on is the one over the full forward's logits
    loss, metrics = PRMLoss(pos_weight=2.0)(model, batch)
    ref, ref_metrics = bce_on_labels(token_logits_of(model, batch), batch["labels"], pos_weight=2.0)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    assert float(metrics["labelled_steps"]) == float(ref_metrics["labelled_steps"]) == int(mask.sum())


def test_validation_reads_the_full_forward_at_every_position() -> None:
    model, pad, vocab = _prm("gpt2")
    model = with_random_head(model)
    data = examples(9, vocab, seed=3)
    data[0] = {**data[0], "positions": [4, 2, 4], "targets": [1.0, None, 0.0]}  # out of order, repeated
    got = predict_logits(model, data, pad, batch_size=4)
    with torch.no_grad():
        for ex, values in zip(data, got):
            full = token_logits_of(model, prm_collate(pad)([ex]))[0]
            assert values == pytest.approx(full[ex["positions"]].tolist(), abs=1e-5)
    assert got[3] == []


def test_the_backbone_gets_its_last_layer_back_whatever_happens() -> None:
    model, _, _ = _prm("gpt2")
    blocks, norm = model.transformer.h, model.transformer.ln_f
    with pytest.raises(RuntimeError):
        with _without_last_layer(model.transformer):
            assert len(model.transformer.h) == len(blocks) - 1
            raise RuntimeError
    assert model.transformer.h is blocks and model.transformer.ln_f is norm
    assert not supports_label_forward(torch.nn.parallel.DistributedDataParallel.__new__(
        torch.nn.parallel.DistributedDataParallel))  # wrapped for several processes: the full forward
