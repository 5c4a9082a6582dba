"""Prefill and wall time of step-by-step search with and without the HF generator's prefix cache.

Workload: arithmetic-world problems searched by best-of-N, beam search (M=4) and lookahead (k=1, M=4,
greedy rollouts) at N=16 and N=64, with the world's exact labels as the scorer (the oracle: no PRM
model, so the wall time is the policy's), each with ``reuse_cache`` on and off, same seeds. Step-by-step
search sends each candidate's whole text as the next prompt; without the cache every round prefills it
again, with it only the last sampled token (and any text the cache does not hold) is run.

Answers are not extracted (``answer_of`` gives None), so the final vote grades nothing: with a weak
policy hundreds of finished beams write many distinct answers, and ``prm.voting`` compares them
pairwise through ``prm.grading`` (math_verify, ~25 ms a pair), which would swamp the policy's time.

Columns: ``prefill/gen`` = prompt tokens really prefilled per generated token; ``prompt/gen`` = prompt
tokens sent per generated token (what an uncached backend prefills); ``wall s`` = search wall time
(the fastest of ``--repeats`` identical runs), ``gen s`` = the generator's part of it; ``x bon`` = wall
time over best-of-N's at the same N and cache
setting, and ``x bon/tok`` the same per generated token (step-level search draws more tokens than
best-of-N at the same N: N samples every round); ``x off`` = wall time over the same search without
the cache. Usage::

    OMP_NUM_THREADS=1 python benchmarks/search_cache.py [MODEL_DIR] [--quick] [--problems 8] [--train-steps 300]

Without MODEL_DIR the trained policy of ``benchmarks/trained_policy.py`` is used (``$PRM_BENCH_POLICY``
or the demo's ``runs/demo/sft/model``), searched in the step format it writes; without one (or with
``--fresh``) a fresh 2-layer 128-dim character GPT is fitted for ``--train-steps`` steps on plain
arithmetic solutions (``benchmarks/generation.py``'s ``train``). A barely trained policy writes long,
ragged steps, and every round of step-level search waits for its longest one: the fresh policy's
ratios to best-of-N are higher than the trained policy's (lookahead at N=64: 7.9x before rollouts were shared,
against 1.39x for the tagged demo policy with shared greedy rollouts, 2026-12-02; ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from prm.data.arith import ARITH_FORMAT, ArithConfig, generate_problems
from prm.models.loading import TinyGPTConfig, load_causal_lm
from prm.scoring.baselines import OracleScorer
from prm.steps import StepFormat
from search.accounting import total
from search.generation import HFGenerator
from search.loop import SearchSettings, search
from search.strategies import make_strategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import train  # noqa: E402  (the sibling benchmark's policy fitting)
from trained_policy import trained_policy  # noqa: E402

STRATEGIES: dict[str, dict[str, Any]] = {
    "best_of_n": {},
    "beam": {"m": 4},
    "lookahead": {"m": 4, "rollout_steps": 1, "rollout_temperature": 0.0},
}


def policy(model_dir: str | None, train_steps: int) -> tuple[Any, Any]:
    """A policy directory, or a fresh 2x128 char GPT fitted for ``train_steps`` steps."""
    if model_dir:
        return load_causal_lm(model_dir)
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=2, n_embd=128, n_head=4), seed=0)
    if train_steps:
        print(f"fitting a fresh 2x128 char GPT for {train_steps} steps ...")
        train(model, tok, train_steps)
    return model.eval(), tok


def measure(model: Any, tok: Any, problems: list[str], name: str, n: int, reuse: bool,
            fmt: StepFormat = ARITH_FORMAT) -> dict[str, Any]:
    """One search over ``problems``; its tokens and wall time."""
    gen = HFGenerator(model, tok, reuse_cache=reuse)
    settings = SearchSettings(max_step_tokens=24, max_solution_tokens=128, max_rounds=10, seed=0)
    strategy = make_strategy(name, n=n, **STRATEGIES[name])
    start = time.perf_counter()
    results = search(problems, gen, OracleScorer(), strategy, settings, fmt, answer_of=lambda i, text: None)
    wall = time.perf_counter() - start
    c = total(r.compute for r in results)
    return {"strategy": name, "n": n, "reuse_cache": reuse, "wall_s": wall, "gen_s": gen.stats.wall_time_s,
            "generated_tokens": c.generated_tokens,
            "prompt_tokens": c.prompt_tokens, "prefilled_tokens": c.prefilled_tokens,
            "prompt_per_gen": c.prompt_tokens / c.generated_tokens,
            "prefill_per_gen": c.prefilled_tokens / c.generated_tokens}


def measure_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (N, strategy, cache setting); rows with the wall-time ratios filled in."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = policy(args.model_dir, args.train_steps)
    fmt = args.fmt
    problems = [p.prompt for p in generate_problems(args.problems, ArithConfig(), seed=12345)]
    measure(model, tok, problems[:1], "beam", 4, True, fmt)  # warm-up: the first search pays one-off costs
    rows: list[dict[str, Any]] = []
    for n in args.n:
        for name in STRATEGIES:
            for reuse in (True, False):
                # the fastest of --repeats identical searches (same seed, same tokens): other jobs only add time
                runs = [measure(model, tok, problems, name, n, reuse, fmt) for _ in range(args.repeats)]
                rows.append(min(runs, key=lambda r: r["wall_s"]))
    by = {(r["strategy"], r["n"], r["reuse_cache"]): r for r in rows}
    for r in rows:
        bon = by[("best_of_n", r["n"], r["reuse_cache"])]
        r["x_bon"] = r["wall_s"] / bon["wall_s"]
        r["x_bon_per_token"] = r["x_bon"] * bon["generated_tokens"] / r["generated_tokens"]
        r["x_off"] = r["wall_s"] / by[(r["strategy"], r["n"], False)]["wall_s"]
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", help="a policy directory (default: $PRM_BENCH_POLICY or the demo's, "
                    "else a freshly fitted 2x128 char GPT)")
    ap.add_argument("--fresh", action="store_true", help="fit a fresh 2x128 char GPT even when a trained policy exists")
    ap.add_argument("--quick", action="store_true",
                    help="8 problems (a fresh policy: 4, fitted 150 steps), 2 repeats: about a minute")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=300, help="fit the fresh policy first (0 = untrained)")
    ap.add_argument("--n", type=int, nargs="+", default=[16, 64], help="budgets N")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="run each search this many times, keep the fastest "
                    "(default 3; --quick: 2)")
    return ap


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.model_dir, args.fmt = (None, ARITH_FORMAT) if args.fresh else trained_policy(args.model_dir)
    if args.quick:
        args.problems = min(args.problems, 4 if args.model_dir is None else 8)
        args.train_steps = min(args.train_steps, 150)
        args.repeats = min(args.repeats, 2)
    return args


def run(quick: bool) -> list[dict[str, Any]]:
    """For ``benchmarks/run_all.py``: the table's rows (``quick``: 8 problems; see ``parse``)."""
    return measure_all(parse(["--quick"] if quick else []))


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"| {'strategy':<10} | {'N':>3} | {'cache':>5} | {'generated':>9} | {'prompt':>7} | {'prefilled':>9} | "
            f"{'prompt/gen':>10} | {'prefill/gen':>11} | {'wall s':>6} | {'gen s':>6} | {'x bon':>5} | {'x bon/tok':>9} | {'x off':>5} |")
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(f"| {r['strategy']:<10} | {r['n']:>3} | {'on' if r['reuse_cache'] else 'off':>5} | "
                     f"{r['generated_tokens']:>9,} | {r['prompt_tokens']:>7,} | {r['prefilled_tokens']:>9,} | "
                     f"{r['prompt_per_gen']:>10.3f} | {r['prefill_per_gen']:>11.3f} | {r['wall_s']:>6.2f} | "
                     f"{r['gen_s']:>6.2f} | "
                     f"{r['x_bon']:>5.2f} | {r['x_bon_per_token']:>9.2f} | {r['x_off']:>5.2f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    rows = measure_all(args)
    source = (f"{args.model_dir} ({args.fmt.style} format)" if args.model_dir
              else f"fresh 2x128 char GPT, {args.train_steps} train steps")
    print(f"\npolicy: {source}; {args.problems} problems, oracle scorer, torch threads {torch.get_num_threads()}")
    print(table(rows))


if __name__ == "__main__":
    main()
