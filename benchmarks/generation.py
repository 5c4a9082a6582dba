"""Generated tokens per second: ``HFGenerator`` against plain ``model.generate`` on the same work.

Workload: 64 arithmetic-world problems x 16 samples at temperature 1, same prompt chunks for
both (``HFGenerator.batches``: prompts sorted by length, ``batch_size // 16`` per chunk):

- ``full``: whole solutions, each sample ends at EOS (or ``--max-new-tokens``);
- ``step``: one step per sample (stop at the step separator ``"\\n"``);
- ``stepwise``: whole solutions written step by step, as a step-level search does: round 1 samples
  16 first steps per problem, each later round continues every unfinished prefix by one step
  (n=1), until the answer line, EOS or ``--rounds``. Prompt tokens grow every round.

``model.generate`` stops rows at EOS (and at the newline token for step rows, via
``eos_token_id=[eos, newline]``) but keeps finished rows in its batch and prefills every
returned sequence separately. Only useful tokens are counted for it: up to and including the
first EOS / newline. Usage::

    python benchmarks/generation.py [MODEL_DIR] [--train-steps 300] [--threads 1]

Without MODEL_DIR an untrained 2-layer 128-dim character GPT is built (``--train-steps N``
first fits it for N steps on arithmetic solutions so that lengths look like a real policy's).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from prm.data.arith import ARITH_FORMAT, ArithConfig, generate_problems, sample_training_solution
from prm.models.loading import TinyGPTConfig, load_causal_lm
from prm.steps import is_answer_step
from search.generation import HFGenerator

STOP = ARITH_FORMAT.step_stop


def train(model: torch.nn.Module, tok, steps: int, batch: int = 64, seed: int = 0) -> None:
    """Fit the policy on arithmetic solutions with injected errors (prompt + solution + EOS)."""
    cfg, rng = ArithConfig(), random.Random(seed)
    problems = generate_problems(4096, cfg, seed=seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        texts = [p.prompt + sample_training_solution(p, cfg, rng) for p in rng.sample(problems, batch)]
        ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
        width = max(map(len, ids))
        x = torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in ids])
        labels = torch.tensor([row + [-100] * (width - len(row)) for row in ids])
        loss = model(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 100 == 0 or i == steps - 1:
            print(f"  train step {i:4d}  loss {loss.item():.3f}")
    model.eval()


def hf_generate(model, tok, gen: HFGenerator, stop_newline: bool) -> Callable[..., list[list[tuple[str, str]]]]:
    """``model.generate`` over the same chunks as ``gen``; returns (text, finish) per sample."""
    eos, newline = tok.eos_token_id, tok.convert_tokens_to_ids(STOP)
    ends = [eos, newline] if stop_newline else [eos]
    counter = {"tokens": 0}

    def run(prompts: Sequence[str], n: int, max_new_tokens: int, seed: int) -> list[list[tuple[str, str]]]:
        torch.manual_seed(seed)
        out: list[list[tuple[str, str]]] = [[] for _ in prompts]
        encoded = [tok(p)["input_ids"] for p in prompts]
        for chunk in gen.batches([len(x) for x in encoded], n):
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in chunk])
            mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(encoded[i]) for i in chunk])[:, None])
            with torch.inference_mode():
                seqs = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=1.0,
                                      top_p=1.0, top_k=0, num_return_sequences=n, max_new_tokens=max_new_tokens,
                                      eos_token_id=ends, pad_token_id=tok.pad_token_id)
            for r, row in enumerate(seqs[:, width:].tolist()):
                cut = next((k + 1 for k, t in enumerate(row) if t in ends), len(row))
                counter["tokens"] += cut
                finish = "length" if cut == len(row) and row[-1] not in ends else ("eos" if row[cut - 1] == eos else STOP)
                text = tok.decode(row[: cut - 1] if finish == "eos" else row[:cut])
                out[chunk[r // n]].append((text, finish))
        return out

    run.counter = counter  # type: ignore[attr-defined]
    return run


def ours(gen: HFGenerator, stop_newline: bool) -> Callable[..., list[list[tuple[str, str]]]]:
    def run(prompts: Sequence[str], n: int, max_new_tokens: int, seed: int) -> list[list[tuple[str, str]]]:
        gens = gen.generate(prompts, n=n, temperature=1.0, max_new_tokens=max_new_tokens,
                            stop=[STOP] if stop_newline else [], seed=seed)
        return [[(s.text, s.finish_reason) for s in g] for g in gens]

    return run


def stepwise(run: Callable, prompts: list[str], n: int, max_step_tokens: int, rounds: int) -> None:
    """Write solutions one step per call: n first steps per prompt, then one step per open prefix."""
    prefixes = [p for p in prompts]
    first = True
    for r in range(rounds):
        outs = run(prefixes, n if first else 1, max_step_tokens, seed=100 + r)
        nxt = []
        for prefix, samples in zip(prefixes, outs):
            for text, finish in samples:
                if finish == STOP and not is_answer_step(text, ARITH_FORMAT):
                    nxt.append(prefix + text)
        prefixes, first = nxt, False
        if not prefixes:
            break


def measure(label: str, work: Callable[[Callable], None], ours_run: Callable, theirs_run: Callable,
            gen: HFGenerator) -> dict:
    gen.stats.reset()
    t0 = time.perf_counter()
    work(ours_run)
    t_ours = time.perf_counter() - t0
    ours_tokens, prompt_tokens = gen.stats.generated_tokens, gen.stats.prompt_tokens
    theirs_run.counter["tokens"] = 0
    t0 = time.perf_counter()
    work(theirs_run)
    t_theirs = time.perf_counter() - t0
    theirs_tokens = theirs_run.counter["tokens"]
    return {"workload": label, "ours_tok": ours_tokens, "ours_s": t_ours, "theirs_tok": theirs_tokens,
            "theirs_s": t_theirs, "prompt_tok": prompt_tokens}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", help="a policy directory (default: a fresh 2x128 char GPT)")
    ap.add_argument("--train-steps", type=int, default=0, help="fit the fresh model first (0 = untrained)")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--step-tokens", type=int, default=24, help="max tokens of one step")
    ap.add_argument("--rounds", type=int, default=8, help="stepwise: most steps per solution")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (0 = torch's default; on a busy machine more threads than free "
                         "cores make tiny models much slower)")
    return ap


def measure_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The three workloads, each run by ``HFGenerator`` and by ``model.generate``; one row each."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model_dir:
        model, tok = load_causal_lm(args.model_dir)
    else:
        model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=2, n_embd=128, n_head=4), seed=0)
        if args.train_steps:
            print(f"training the fresh policy for {args.train_steps} steps ...")
            train(model, tok, args.train_steps)
    model.eval()
    gen = HFGenerator(model, tok, batch_size=args.batch_size)
    prompts = [p.prompt for p in generate_problems(args.problems, ArithConfig(), seed=12345)]
    n, m = args.samples, args.max_new_tokens
    measured = [
        measure("full (EOS)", lambda run: run(prompts, n, m, 0), ours(gen, False), hf_generate(model, tok, gen, False), gen),
        measure("one step (\\n)", lambda run: run(prompts, n, args.step_tokens, 0), ours(gen, True),
                hf_generate(model, tok, gen, True), gen),
        measure("stepwise (\\n)", lambda run: stepwise(run, prompts, n, args.step_tokens, args.rounds), ours(gen, True),
                hf_generate(model, tok, gen, True), gen),
    ]
    rows = []
    for r in measured:
        a, b = r["ours_tok"] / r["ours_s"], r["theirs_tok"] / r["theirs_s"]
        rows.append({"workload": r["workload"], "HFGenerator tok/s": round(a), "generate tok/s": round(b),
                     "ratio": round(a / b, 2), "tokens (ours / generate)": f"{r['ours_tok']:,} / {r['theirs_tok']:,}",
                     "prompt tok (ours)": r["prompt_tok"], "s (ours / generate)": f"{r['ours_s']:.2f} / {r['theirs_s']:.2f}"})
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """For ``benchmarks/run_all.py``: the demo's trained policy if there is one, else a fresh model
    (``quick``: 16 problems x 16 samples; otherwise the defaults, 64 x 16)."""
    from trained_policy import trained_policy

    policy, _ = trained_policy()
    argv = ([policy] if policy else []) + (["--problems", "16"] if quick else [])
    return measure_all(parser().parse_args(argv))


def main() -> None:
    args = parser().parse_args()
    rows = measure_all(args)
    policy = args.model_dir or f"fresh 2x128 char GPT, {args.train_steps} train steps"
    print(f"\npolicy: {policy}; {args.problems} problems x {args.samples} samples, T=1, batch_size {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    head = f"| {'workload':<15} | {'HFGenerator tok/s':>17} | {'generate tok/s':>14} | {'ratio':>5} | " \
           f"{'tokens (ours / generate)':>24} | {'prompt tok (ours)':>17} | {'s (ours / generate)':>19} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['workload']:<15} | {r['HFGenerator tok/s']:>17,} | {r['generate tok/s']:>14,} | {r['ratio']:>5.2f} | "
              f"{r['tokens (ours / generate)']:>24} | {r['prompt tok (ours)']:>17,} | {r['s (ours / generate)']:>19} |")


if __name__ == "__main__":
    main()
