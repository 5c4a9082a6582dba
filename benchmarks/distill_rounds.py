"""Distillation of PRM search into the policy, round by round (expert iteration), measured on held-out problems.

Every model (the policy, then the student of each round) is evaluated on the same ``--eval-problems`` held-out
problems twice with ``prm-search``: greedy decoding (``search=greedy``, no verifier) and the teacher system (the
model + the PRM, ``search=<--search>`` at N=``--n``, default PRM-weighted best-of-16). Round k searches
``--train-problems`` TRAINING problems (``split=train``) with the teacher system on model k-1 and distils its
chosen, correct solutions into model k-1 (``prm-distill +experiment=distill_rounds``). Printed: accuracy with 95%
bootstrap intervals over problems, compute per problem (policy and PRM tokens), and the share of the teacher's
gain the student keeps, (student greedy - policy greedy) / (teacher - policy greedy). Usage::

    OMP_NUM_THREADS=1 python benchmarks/distill_rounds.py --policy runs/demo/sft/model --prm runs/demo/prm/model
    OMP_NUM_THREADS=1 python benchmarks/distill_rounds.py ... --rounds 1 --train-problems 100 --eval-problems 100
    OMP_NUM_THREADS=1 python benchmarks/distill_rounds.py ... sft.train.max_steps=300 filter=majority   (prm-distill)

Every stage is a prm-search or prm-distill run directory under ``--run-dir``: re-running the script reuses what
finished and resumes what did not. ``summary.json`` there holds the table's numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from prm.io import read_resumable_jsonl, write_json
from prm.worlds import label_example, make_world
from rl import distill
from rl.report import cell_intervals
from search import run as search

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def run_search(run_dir: Path, policy: Path, overrides: list[str]) -> dict[str, Any]:
    """One prm-search run (resumed or reused when its directory holds it); its summary and accuracy interval."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="search", overrides=[f"policy={policy}", f"run_dir={run_dir}", "progress=false",
                                                       *overrides])
    t0 = time.perf_counter()
    summary = search.run(cfg)
    ci = cell_intervals(run_dir, summary["final"])["acc_headline"]
    return {"acc": summary["accuracy"]["all"]["headline"], "ci": list(ci), "problems": summary["problems"],
            "per_problem": summary["compute"]["per_problem"], "wall_s": time.perf_counter() - t0}


def run_distill(run_dir: Path, teacher: Path, student: Path, overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="distill", overrides=["+experiment=distill_rounds", f"results=[{teacher}]",
                                                        f"student={student}", f"run_dir={run_dir}", *overrides])
    return distill.run(cfg)


def evaluate(name: str, model: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    test = ["split=test", f"n_problems={args.eval_problems}", f"problem_seed={args.eval_seed}", *args.world]
    greedy = run_search(out / "eval" / f"{name}-greedy", model, [*test, "search=greedy", "scorer=random"])
    searched = run_search(out / "eval" / f"{name}-{args.search}{args.n}", model, [
        *test, f"search={args.search}", f"search.n={args.n}", f"scorer.model_or_path={args.prm}"])
    return {"greedy": greedy, "search": searched}


def process_correct(data: Path, world_overrides: list[str]) -> float | None:
    """Share of the distilled examples whose every step is right (worlds with exact step labels), not just the answer."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        world = make_world(compose(config_name="distill", overrides=world_overrides).data)
    if not world.exact_labels:
        return None
    examples = read_resumable_jsonl(data)
    ok = [label_example(world, world.task(e["prompt"]), e["completion"]).extra["process_correct"] for e in examples]
    return sum(ok) / max(1, len(ok))


def _acc(r: dict[str, Any]) -> str:
    return f"{r['acc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def table(rows: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    base = rows[0][1]["greedy"]["acc"]
    teacher = rows[0][1]["search"]["acc"]
    lines = [f"| model | greedy acc | greedy tokens/problem | {args.search}@{args.n} acc (teacher system) "
             f"| search policy tokens/problem | search PRM tokens/problem | gain kept (greedy) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        g, s = r["greedy"], r["search"]
        kept = (g["acc"] - base) / (teacher - base) if teacher != base else float("nan")
        lines.append(f"| {name} | {_acc(g)} | {g['per_problem']['generated_tokens']:.0f} | {_acc(s)} "
                     f"| {s['per_problem']['generated_tokens']:.0f} | {s['per_problem']['prm_tokens']:.0f} "
                     f"| {'-' if name == 'policy' else f'{kept:.2f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, required=True, help="the policy (round 0): a model directory")
    ap.add_argument("--prm", type=Path, required=True, help="the PRM the teacher searches with")
    ap.add_argument("--run-dir", type=Path, default=Path("runs/distill_rounds"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--search", default="weighted_majority", help="the teacher's search preset (conf/search/)")
    ap.add_argument("--n", type=int, default=16, help="the teacher's budget N")
    ap.add_argument("--train-problems", type=int, default=300)
    ap.add_argument("--train-seed", type=int, default=3000, help="problem_seed of the training problems searched")
    ap.add_argument("--eval-problems", type=int, default=200)
    ap.add_argument("--eval-seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--world", action="append", default=[], metavar="KEY=VALUE",
                    help="a data.* override for every stage (repeat), e.g. --world data.world.max_ops=4")
    ap.add_argument("overrides", nargs="*", help="more prm-distill overrides, e.g. sft.train.max_steps=300")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.run_dir
    t0 = time.perf_counter()
    models = [("policy", args.policy.resolve())]
    rounds: list[dict[str, Any]] = []
    for k in range(1, args.rounds + 1):
        teacher_dir = out / f"round{k}" / "teacher"
        teacher = run_search(teacher_dir, models[-1][1], [
            "split=train", f"n_problems={args.train_problems}", f"problem_seed={args.train_seed}", *args.world,
            f"search={args.search}", f"search.n={args.n}", f"scorer.model_or_path={args.prm}"])
        d = run_distill(out / f"round{k}" / "distill", teacher_dir, models[-1][1], [*args.world, *args.overrides])
        rounds.append({"teacher_on_train": teacher, "counts": d["counts"], "sft_steps": d["sft"]["step"],
                       "sft_elapsed_s": d["sft"]["elapsed_s"],
                       "process_correct": process_correct(Path(d["data"]), args.world)})
        models.append((f"student round {k}", Path(d["student_model"])))
    rows = [(name, evaluate(name.replace(" ", "_"), model, args, out)) for name, model in models]
    text = table(rows, args)
    print(f"\n{args.eval_problems} held-out problems (problem_seed={args.eval_seed}); teacher = policy + PRM "
          f"{args.search}@{args.n}; gain kept = (student greedy - policy greedy) / (teacher - policy greedy)\n")
    print(text)
    for k, r in enumerate(rounds, 1):
        c, t = r["counts"], r["teacher_on_train"]
        print(f"round {k}: teacher on {t['problems']} training problems {_acc(t)} "
              f"({t['per_problem']['generated_tokens']:.0f} policy tokens/problem); kept {c['kept']} examples "
              f"(incorrect {c['incorrect']}, no answer {c['no_answer']}, no finished {c['no_finished']}; "
              f"every step right: {_share(r['process_correct'])}); "
              f"{r['sft_steps']} SFT steps in {r['sft_elapsed_s']:.0f} s")
    print(f"total {time.perf_counter() - t0:.0f} s")
    write_json(out / "summary.json", {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                                      "models": dict(rows), "table": text})


if __name__ == "__main__":
    main()
