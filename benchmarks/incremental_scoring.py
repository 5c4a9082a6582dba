"""PRM tokens and wall time of scoring a step-level beam search: from scratch vs. KV-cached incremental.

Workload (per problem length): ``--problems`` arithmetic problems with exactly L operations, a
Snell-style beam search of ``--beams`` candidates per round (keep ``--beams // --expand`` prefixes,
expand each ``--expand`` times), L step rounds plus one answer round. Candidate steps come from the
exact solutions, each corrupted (result off by 1..3) with probability ``--corrupt``, later steps
continuing from the written value; which prefixes survive is a seeded random choice, so all
variants score exactly the same tree (no policy, no trained PRM needed). Variants:

- ``a per-prefix``: every round, each candidate prefix re-scored from scratch, one forward each;
- ``b batched``: every round, all candidates re-scored from scratch in one batched ``score`` call;
- ``c incremental``: ``start`` once, then one ``extend`` call per round: only the new step's
  tokens run, on the parents' KV caches.

``PRM tok / final tok``: PRM tokens run per token of the last round's candidates (prompt and
steps), i.e. per token a single scoring of the final beams would cost. The PRM is a tiny 2-layer
128-dim GPT (untrained: timing only). Usage::

    python benchmarks/incremental_scoring.py [--lengths 4 8] [--problems 16] [--beams 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from prm.data.arith import ArithConfig, format_step, generate_problems
from prm.models.loading import TinyGPTConfig
from prm.models.prm_model import build_prm
from prm.scoring import PRMScorer


@dataclass
class Node:
    problem: int
    parent: int | None  # index in the previous round (None: the root)
    steps: list[str]
    value: int  # the running value as written


def build_tree(length: int, n_problems: int, beams: int, expand: int, corrupt: float, seed: int):
    """Problems and, per round, the candidate nodes (each round's parents are kept nodes of the last)."""
    problems = generate_problems(n_problems, ArithConfig(min_ops=length, max_ops=length), seed=seed)
    rng = random.Random(seed)

    def step_after(node: Node, k: int) -> tuple[str, int]:
        p = problems[node.problem]
        if k == len(p.ops):
            return f"# Answer: {node.value}", node.value
        op, b = p.ops[k]
        true = {"+": node.value + b, "-": node.value - b, "*": node.value * b}[op] % 10
        result = (true + rng.choice([-3, -2, -1, 1, 2, 3])) % 10 if rng.random() < corrupt else true
        return format_step(node.value, op, b, result), result

    rounds: list[list[Node]] = []
    parents: list[tuple[int | None, Node]] = [(None, Node(i, None, [], p.start)) for i, p in enumerate(problems)]
    per_parent = beams
    for k in range(length + 1):
        nodes = []
        for j, parent in parents:
            for _ in range(per_parent):
                step, value = step_after(parent, k)
                nodes.append(Node(parent.problem, j, [*parent.steps, step], value))
        rounds.append(nodes)
        kept = []
        for i in range(n_problems):  # keep beams // expand per problem
            mine = [n for n in range(len(nodes)) if nodes[n].problem == i]
            kept += sorted(rng.sample(mine, beams // expand))
        parents = [(n, nodes[n]) for n in kept]
        per_parent = expand
    return [p.prompt for p in problems], rounds


def run_per_prefix(scorer: PRMScorer, prompts, rounds) -> list[list[float]]:
    return [[scorer.score([prompts[n.problem]], [[n.steps]])[0][0][-1] for n in nodes] for nodes in rounds]


def run_batched(scorer: PRMScorer, prompts, rounds) -> list[list[float]]:
    out = []
    for nodes in rounds:
        scores = scorer.score([prompts[n.problem] for n in nodes], [[n.steps] for n in nodes])
        out.append([s[0][-1] for s in scores])
    return out


def run_incremental(scorer: PRMScorer, prompts, rounds) -> list[list[float]]:
    handles = scorer.start(prompts)
    out = []
    for k, nodes in enumerate(rounds):
        parents = [handles[n.problem] if k == 0 else handles[n.parent] for n in nodes]
        scores, handles = scorer.extend(parents, [n.steps[-1] for n in nodes])
        out.append(scores)
        # the search drops every candidate it does not keep: only kept handles stay referenced
        if k + 1 < len(rounds):
            keep = {n.parent for n in rounds[k + 1]}
            handles = [h if i in keep else None for i, h in enumerate(handles)]  # type: ignore[misc]
    return out


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (problem length, variant); ``PRM tok / final tok`` divides the PRM tokens run by
    the tokens of the last round's candidates (prompt and all steps: what scoring them once costs)."""
    torch.set_num_threads(args.threads)
    model, tok = build_prm(size=TinyGPTConfig(n_layer=2, n_embd=128, n_head=4, n_positions=256), seed=0)
    variants = [("a per-prefix", run_per_prefix, 1), ("b batched", run_batched, args.batch_size),
                ("c incremental", run_incremental, args.batch_size)]
    rows = []
    for length in args.lengths:
        prompts, rounds = build_tree(length, args.problems, args.beams, args.expand, args.corrupt, args.seed)
        final = PRMScorer(model, tok, batch_size=args.batch_size, device=args.device)
        final.score([prompts[n.problem] for n in rounds[-1]], [[n.steps] for n in rounds[-1]])  # also a warm-up
        final_tokens = final.stats.tokens_processed
        results = {}
        for name, fn, bs in variants:
            scorer = PRMScorer(model, tok, batch_size=bs, device=args.device)
            t0 = time.perf_counter()
            scores = fn(scorer, prompts, rounds)
            results[name] = (scores, scorer.stats.tokens_processed, time.perf_counter() - t0, scorer.stats.calls)
        base = [v for r in results["b batched"][0] for v in r]
        _, c_tokens, c_time, _ = results["c incremental"]
        for name, (scores, tokens, wall, calls) in results.items():
            diff = max(abs(x - y) for x, y in zip([v for r in scores for v in r], base))
            rows.append({"ops": length, "variant": name, "scorer calls": calls, "PRM tokens": tokens,
                         "PRM tok / final tok": round(tokens / final_tokens, 2), "wall s": round(wall, 2),
                         "tokens/s": round(tokens / wall), "tokens vs c": f"{tokens / c_tokens:.2f}x",
                         "time vs c": f"{wall / c_time:.2f}x", "max diff vs b": f"{diff:.1e}"})
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--beams", type=int, default=16)
    ap.add_argument("--expand", type=int, default=4)
    ap.add_argument("--corrupt", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def run(quick: bool) -> list[dict[str, Any]]:
    """For ``benchmarks/run_all.py``: the default workload (``quick``: 8 problems, 4 operations only)."""
    return measure(parser().parse_args(["--problems", "8", "--lengths", "4"] if quick else []))


def main() -> None:
    args = parser().parse_args()
    print(f"{args.problems} problems x {args.beams} beams (keep {args.beams // args.expand}, expand {args.expand}), "
          f"steps + 1 answer round, {args.threads} thread(s), device {args.device}")
    rows = measure(args)
    print("| " + " | ".join(rows[0]) + " |")
    print("|---" * len(rows[0]) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
