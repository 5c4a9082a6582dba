"""Search throughput against the models' raw forward speed: how close generation plus scoring come.

Workload: ``--problems`` arithmetic problems searched by beam search (N samples per round, keep
N/4, expand 4 times) with ``HFGenerator`` (the policy) and ``PRMScorer`` (incremental, KV-cached)
on one thread. The search's compute (``search.accounting.Compute``: policy tokens = prompt
tokens prefilled + tokens generated, PRM tokens) is then replayed as a plain batched forward pass
of each model over sequences of the same length: the finished solutions, sorted by length and
cut into batches of ``--batch-size``, one ``model(input_ids, attention_mask)`` call each, no
cache, no sampling (best of 3 passes). Raw time = policy tokens / policy forward tokens per second + PRM tokens /
PRM forward tokens per second; ``of raw speed`` = raw time / search time (1.0: the search runs
its tokens as fast as a bare forward pass; generation is one token per step, so well below).

The policy is ``--policy DIR``, else the trained policy of ``benchmarks/trained_policy.py``
(``$PRM_BENCH_POLICY`` or the demo's ``runs/demo/sft/model``), searched in the step format it writes,
else a fresh 2-layer 128-dim GPT; the PRM is a fresh tiny PRM of the same size (timing only: its
scores do not matter here). Usage::

    OMP_NUM_THREADS=1 python benchmarks/search_throughput.py [--problems 16] [--n 16 64] [--policy DIR]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from prm.data.arith import ArithConfig, generate_problems
from prm.models.loading import TinyGPTConfig, load_causal_lm
from prm.models.prm_model import build_prm
from prm.scoring import PRMScorer
from search.accounting import Compute, total
from search.generation import HFGenerator
from search.loop import SearchSettings, search
from search.strategies import make_strategy
from trained_policy import trained_policy  # benchmarks/ (this script's folder) is on sys.path

TINY = TinyGPTConfig(n_layer=2, n_embd=128, n_head=4, n_positions=256)


def forward_rate(model: torch.nn.Module, sequences: list[list[int]], pad: int, batch_size: int,
                 repeats: int = 3) -> float:
    """Real tokens per second of plain batched forward passes over ``sequences`` (sorted, right-padded);
    the best of ``repeats`` passes (the model's raw speed, least disturbed by other jobs)."""
    order = sorted(sequences, key=len)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(map(len, chunk))
        batches.append((torch.tensor([s + [pad] * (width - len(s)) for s in chunk]),
                        torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])))
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
            best = min(best, time.perf_counter() - t0)
    return sum(map(len, order)) / best


def measure(problems: int, budgets: list[int], policy_dir: str | None, batch_size: int = 256,
            seed: int = 0) -> list[dict[str, Any]]:
    """One row per budget N: the beam search's tokens and time against a raw forward pass of them."""
    policy_dir, fmt = trained_policy(policy_dir)
    policy, tok = load_causal_lm(policy_dir) if policy_dir else load_causal_lm(size=TINY, seed=seed)
    prm_model, prm_tok = build_prm(size=TINY, seed=seed)
    policy.eval()
    prm_model.eval()
    prompts = [p.prompt for p in generate_problems(problems, ArithConfig(), seed=12345)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for n in budgets:
        generator = HFGenerator(policy, tok, batch_size=512)
        scorer = PRMScorer(prm_model, prm_tok, batch_size=batch_size)
        settings = SearchSettings(max_step_tokens=24, max_solution_tokens=96, max_rounds=12, seed=seed)
        t0 = time.perf_counter()
        results = search(prompts, generator, scorer, make_strategy("beam", n=n, m=4), settings, fmt)
        search_s = time.perf_counter() - t0
        spent: Compute = total(r.compute for r in results)
        texts = [prompts[i] + c.text for i, r in enumerate(results) for c in r.finished]
        seqs = [tok(t)["input_ids"] for t in texts] or [tok(p)["input_ids"] for p in prompts]
        policy_rate = forward_rate(policy, seqs, pad, batch_size)
        prm_rate = forward_rate(prm_model, seqs, pad, batch_size)
        policy_tokens = spent.policy_tokens + spent.rollout_tokens
        raw_s = policy_tokens / policy_rate + spent.prm_tokens / prm_rate
        rows.append({"N": n, "problems": problems, "policy tokens": policy_tokens, "PRM tokens": spent.prm_tokens,
                     "search s": round(search_s, 2), "raw forward s": round(raw_s, 2),
                     "search tok/s": round((policy_tokens + spent.prm_tokens) / search_s),
                     "forward tok/s (policy, PRM)": f"{policy_rate:,.0f}, {prm_rate:,.0f}",
                     "of raw speed": round(raw_s / search_s, 3)})
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """For ``benchmarks/run_all.py``: N=16 (and 64 unless ``quick``) on 8 (16) problems."""
    return measure(8 if quick else 16, [16] if quick else [16, 64], None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--n", type=int, nargs="+", default=[16, 64], help="beam search budgets")
    ap.add_argument("--policy", default=None, help="policy directory (default: $PRM_BENCH_POLICY or the demo's, "
                    "else a fresh tiny GPT)")
    ap.add_argument("--batch-size", type=int, default=256, help="sequences per forward pass")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.problems, args.n, args.policy, args.batch_size)
    print("| " + " | ".join(rows[0]) + " |")
    print("|---" * len(rows[0]) + "|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
