"""Every headline ratio of the benchmarks, measured in one run on the same machine, side by side.

Sections (each a benchmark module's ``run(quick) -> list[dict]``; a module that is missing, or a
section that fails, is reported as unavailable and the others still run):

1. ``search_cache``: beam / best-of-N and lookahead / best-of-N wall time and prompt tokens per
   generated token at N=16 and 64;
2. ``incremental_scoring``: PRM tokens per final token over a beam search (re-scoring vs KV-cached);
3. ``search_throughput``: beam search (generation + scoring) against a plain batched forward pass
   of the same tokens;
4. ``trl_prm``: prm-train against TRL's PRMTrainer, time and local AUROC (needs ``trl``);
5. ``generation``: ``HFGenerator`` against ``model.generate``;
6. ``rl_trl``: prm-rl against TRL's GRPOTrainer.

Each section prints its own table as it finishes; one final table collects the headline numbers.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/run_all.py [--quick] [--only trl_prm generation ...]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
Row = dict[str, Any]


@dataclass
class Section:
    module: str  # a file in benchmarks/ with ``run(quick: bool) -> list[dict]``
    title: str
    headline: Callable[[list[Row]], list[tuple[str, str]]]  # (what, value) pairs for the final table
    needs: str | None = None  # a package the section cannot run without


def generic(rows: list[Row]) -> list[tuple[str, str]]:
    """Headlines of a section whose rows this script does not know: its ratio columns, else each whole row."""
    out = []
    for row in rows:
        label = " ".join(str(v) for k, v in row.items() if not isinstance(v, (int, float)) and "ratio" not in k)
        ratios = [f"{k} {v}" for k, v in row.items() if "ratio" in k.lower() or " vs " in k or "/" in k]
        out.append((label or "row", "; ".join(ratios) or "; ".join(f"{k} {v}" for k, v in row.items())))
    return out


def search_cache(rows: list[Row]) -> list[tuple[str, str]]:
    return [(f"{r['strategy']} N={r['n']}", f"wall {r['x_bon']:.2f}x best-of-N ({r['x_bon_per_token']:.2f}x per generated "
             f"token); prefilled / generated tok {r['prefill_per_gen']:.3f} (prompt tok {r['prompt_per_gen']:.3f}); "
             f"cache reuse on/off wall {r['x_off']:.2f}x")
            for r in rows if r["reuse_cache"]]


def rl(rows: list[Row]) -> list[tuple[str, str]]:
    return [(f"{r['policy']}, {r['framework']}", f"{r['s_per_step']:.2f} s/step (prm-rl {r['speed_vs_trl']:.2f}x TRL's "
             f"speed); greedy accuracy {r['start_greedy_accuracy']:.3f} -> {r['greedy_accuracy']:.3f}") for r in rows]


def incremental(rows: list[Row]) -> list[tuple[str, str]]:
    return [(f"{r['ops']} ops, {r['variant']}", f"{r['PRM tok / final tok']} PRM tok / final tok; time {r['time vs c']}")
            for r in rows if r["variant"] != "a per-prefix"]


def throughput(rows: list[Row]) -> list[tuple[str, str]]:
    return [(f"beam search N={r['N']}", f"{r['of raw speed']:.2f} of raw forward speed "
             f"({r['search tok/s']:,} vs policy/PRM {r['forward tok/s (policy, PRM)']} tok/s)") for r in rows]


def trl(rows: list[Row]) -> list[tuple[str, str]]:
    ours = rows[0]
    out = []
    for r in rows:
        text = (f"time {r['time ratio vs ours']:.2f}x of ours; local AUROC {r['local AUROC']:.3f} "
                f"(ours {ours['local AUROC']:.3f}); padding {r['padding']:.1%}")
        reached, ratio = r.get("s to TRL's local AUROC"), r.get("TRL's time to it / this")
        if reached is not None:  # --curve: the loop time to reach TRL's final local AUROC and stay there
            text += f"; to TRL's final local AUROC in {reached} s (TRL's time to it / this: {ratio})"
        out.append((r["trainer"], text))
    return out


def generation(rows: list[Row]) -> list[tuple[str, str]]:
    return [(r["workload"], f"{r['ratio']:.2f}x model.generate tok/s") for r in rows]


SECTIONS = [
    Section("search_cache", "beam & lookahead vs best-of-N", search_cache),
    Section("incremental_scoring", "PRM tokens per final token", incremental),
    Section("search_throughput", "search vs raw forward", throughput),
    Section("trl_prm", "prm-train vs TRL PRMTrainer", trl, needs="trl"),
    Section("generation", "HFGenerator vs model.generate", generation),
    Section("rl_trl", "prm-rl vs TRL GRPOTrainer", rl, needs="trl"),
]


def print_table(rows: list[Row]) -> None:
    if not rows:
        print("(no rows)")
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|---" * len(keys) + "|")
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |")


def run_section(section: Section, quick: bool) -> tuple[list[tuple[str, str]], float]:
    """Run one section; its headlines (or why it is unavailable) and its wall time."""
    t0 = time.perf_counter()
    if not (HERE / f"{section.module}.py").exists():
        return [("unavailable", f"benchmarks/{section.module}.py does not exist")], 0.0
    if section.needs and importlib.util.find_spec(section.needs) is None:
        return [("skipped", f"{section.needs} is not installed (pip install --no-deps \"trl==1.13.0\")")], 0.0
    try:
        rows = importlib.import_module(section.module).run(quick)
        print_table(rows)
    except Exception as err:  # noqa: BLE001  one broken section must not hide the others
        traceback.print_exc()
        return [("failed", f"{type(err).__name__}: {err}"[:200])], time.perf_counter() - t0
    try:
        return section.headline(rows), time.perf_counter() - t0
    except (KeyError, TypeError, ValueError):  # the module's columns changed: show its rows as they are
        return generic(rows), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small workloads: a few minutes in all")
    ap.add_argument("--only", nargs="*", choices=[s.module for s in SECTIONS], help="run these sections only")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    final: list[Row] = []
    for i, section in enumerate(SECTIONS, 1):
        if args.only and section.module not in args.only:
            continue
        print(f"\n## {i}. {section.title} ({section.module})\n", flush=True)
        headlines, wall = run_section(section, args.quick)
        final += [{"section": f"{i}. {section.title}", "what": what, "headline": value, "s": round(wall)}
                  for what, value in headlines]
    print(f"\n## headline ratios ({'quick' if args.quick else 'full'}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})\n")
    print_table(final)


if __name__ == "__main__":
    main()
