"""Process vs outcome supervision, exact vs Monte-Carlo labels: one reward-model recipe, four label sets.

On the arithmetic world, with the same policy, the same sampled training solutions, the same
backbone initialisation (``init_from`` = the policy) and the same number of optimizer steps, a
reward model is trained (``prm.prm_train.run``) on each label set of ONE ``prm-sample
labeller=mc`` file (it carries every label set side by side; ``prm.data.stepwise.relabel``):

- ``exact``: the world's exact step labels (process supervision, the ceiling of labelling);
- ``mc_hard`` / ``mc_soft``: Monte-Carlo labels from ``--k`` rollouts per step (Math-Shepherd's
  hard "any rollout right" and soft "fraction right");
- ``outcome_all``: an outcome reward model (ORM, Lightman et al. 2023): every step labelled with
  the final answer's correctness; scored by its last step (the aggregation it saves);
- ``outcome_last`` (optional, ``--variants``): the outcome on the final step only.

Each is evaluated (``prm.prm_eval.run``) on the same held-out sampled solutions (exact labels):
step AUROC, within-problem AUROC at the model's own aggregation (process models: ``min``; ORMs:
``last``), first-error F1, and best-of-N accuracy at N = 4 and 16 by PRM argmax (95% bootstrap
intervals over problems, ``prm.evaluation.metrics.bootstrap_ci``), beside majority vote (the
baseline), PRM-weighted majority, pass@N and the exact oracle. Every stage is cached in ``--out``
(``rl.demo.run_stage``): a re-run with the same settings only prints the table; results go to
``--out/results.json``. Usage::

    OMP_NUM_THREADS=1 python benchmarks/reward_models.py --quick --policy runs/sft/model     # ~3 min
    OMP_NUM_THREADS=1 python benchmarks/reward_models.py --policy runs/sft/model --problems 2500 --samples 4 \
        --k 4 --test-problems 250 --steps 400 --lr 5e-4 --seeds 0 1                       # ~17 min a seed

Measured (one seed, the second line; 2 busy CPU cores): with 10k training solutions every reward
model is weak (within-problem AUROC 0.51-0.54) and PRM argmax selection falls below majority vote
for all four label sets, so the label sets cannot be told apart by selection; step AUROC against
exact labels orders them exact 0.77 > MC hard 0.69 > outcome 0.64 > MC soft 0.62.

Without ``--policy`` a policy is trained first (``prm-sft``, ``--sft-steps``; a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from hydra import initialize_config_dir
from omegaconf import DictConfig

from prm import prm_eval, prm_train
from prm.data.stepwise import StepwiseExample, read_stepwise
from prm.evaluation.metrics import bootstrap_ci
from prm.evaluation.selection import SampledProblem, per_problem_selection
from prm.io import write_json
from prm.runs import stage_info
from prm.scoring.base import aggregate
from rl import sft
from rl.demo import run_stage
from search import sample

CONF = str(Path(__file__).resolve().parents[1] / "conf")
VARIANTS = ("exact", "mc_hard", "mc_soft", "outcome_all")
NS = (4, 16)
SHOWN = ("best_of_n", "weighted_majority", "majority", "pass", "best_of_n/oracle")


def stage(name: str, config: str, overrides: list[str], fn: Callable[[DictConfig], dict[str, Any]], out: Path,
          after: tuple[str, ...] = ()) -> dict[str, Any]:
    """``rl.demo.run_stage`` with the stage's own printing sent to ``out/<name>.log``."""
    t0 = time.perf_counter()
    with (out / f"{name}.log").open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        summary = run_stage(name, config, overrides, fn, out, after=after)
    print(f"[reward-models] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return summary


def at_n(selection: dict[str, Any], method: str, n: int) -> dict[str, Any]:
    """Mean and 95% interval of one selection method at N (over all problems)."""
    curves = selection["all"]
    j = curves["ns"].index(n)
    m = curves["methods"][method]
    return {"mean": m["mean"][j], "ci95": m["ci95"][j]}


def eval_row(summary: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """The numbers reported for one trained reward model."""
    agg = summary["aggregation"]
    return {
        "aggregation": agg,
        "val_step_auroc": train.get("val_step_auroc"),
        "step_auroc": summary["steps"].get("auroc"),
        "within_problem_auroc": summary["within_problem_auroc"][agg]["auroc"],
        "within_problem_auroc_by_aggregation": {k: v["auroc"] for k, v in summary["within_problem_auroc"].items()},
        "first_error_f1": summary["first_error"].get("f1"),
        "selection": {m: {n: at_n(summary["selection"], m, n) for n in NS} for m in SHOWN},
    }


def per_problem_best_of_n(out: Path, name: str, aggregation: str,
                          examples: Sequence[StepwiseExample]) -> dict[str, np.ndarray]:
    """Per held-out problem, the expected best-of-N accuracy (N in ``NS``) of one model's ranking and of
    majority vote, from its evaluation's ``scores.jsonl`` (one line per example) with the evaluation's
    own draws and seed (so the means equal its summary's)."""
    with (out / f"eval_{name}" / "scores.jsonl").open(encoding="utf-8") as f:
        scores = [json.loads(line)["step_scores"] for line in f]
    cfg = stage_info(out / f"eval_{name}")["config"]
    problems = [SampledProblem(scores=[aggregate(scores[i], aggregation) for i in idx],
                               answers=[examples[i].extra.get("given_answer") for i in idx],
                               correct=[bool(examples[i].extra["correct"]) for i in idx])
                for idx in prm_eval.problem_groups(examples).values()]
    _, values = per_problem_selection(problems, NS, int(cfg["draws"]), int(cfg["seed"]))
    return {"best_of_n": values["best_of_n"], "majority": values["majority"]}


def paired_differences(out: Path, rows: dict[str, dict[str, Any]], reference: str) -> dict[str, Any]:
    """Best-of-N accuracy differences over the same problems, with 95% bootstrap intervals: each model
    against majority vote, and against the ``reference`` label set's model of the same seed."""
    examples = read_stepwise(out / "test_samples" / "samples.jsonl")
    values = {name: per_problem_best_of_n(out, name, row["aggregation"], examples) for name, row in rows.items()}

    def diff(a: np.ndarray, b: np.ndarray) -> dict[int, dict[str, Any]]:
        return {n: {"mean": float((a[:, j] - b[:, j]).mean()), "ci95": list(bootstrap_ci(a[:, j] - b[:, j]))}
                for j, n in enumerate(NS)}

    result: dict[str, Any] = {}
    for name, row in rows.items():
        v = values[name]
        ref = f"{reference}-s{row['seed']}"
        result[name] = {"vs_majority": diff(v["best_of_n"], v["majority"])}
        if ref in values and ref != name:
            result[name][f"vs_{reference}"] = diff(v["best_of_n"], values[ref]["best_of_n"])
    return result


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Policy, samples, one reward model per (variant, seed), their evaluations; returns the results."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = [f"max_new_tokens={args.max_new_tokens}", "progress=false"]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        if args.policy is None:
            stage("sft", "sft", [f"train.max_steps={args.sft_steps}", "train.progress=false", "threads=1"], sft.run, out)
            policy = str(out / "sft" / "model")
        else:
            policy = str(args.policy)
        train_samples = stage("train_samples", "sample", [
            f"policy={policy}", "split=train", f"n_problems={args.problems}", f"k={args.samples}", "greedy=false",
            "labeller=mc", f"mc.k={args.k}", "mc.label=hard", f"seed={args.sample_seed}", *common], sample.run, out)
        test_samples = stage("test_samples", "sample", [
            f"policy={policy}", "split=test", f"n_problems={args.test_problems}", f"k={max(NS)}", "greedy=false",
            f"seed={args.sample_seed}", *common], sample.run, out)
        rows: dict[str, dict[str, Any]] = {}
        for variant in args.variants:
            for seed in args.seeds:
                name = f"{variant}-s{seed}"
                train = stage(f"rm_{name}", "prm_train", [
                    f"init_from={policy}", f"data.path={out / 'train_samples' / 'samples.jsonl'}",
                    f"labels={variant}", f"seed={seed}", f"train.seed={seed}", f"train.max_steps={args.steps}",
                    f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", "train.max_time_s=null",
                    "train.progress=false", "train.eval_every=0", f"extra_layers={args.extra_layers}",
                    *args.train_overrides],
                    prm_train.run, out)
                evaluated = stage(f"eval_{name}", "prm_eval", [
                    f"scorer.model_or_path={out / f'rm_{name}' / 'model'}", "scorer.aggregation=null",
                    f"data.path={out / 'test_samples' / 'samples.jsonl'}", "progress=false"],
                    prm_eval.run, out, after=(f"rm_{name}",))
                rows[name] = {"variant": variant, "seed": seed, **eval_row(evaluated, train)}
    mc = train_samples["mc"]
    by_k = mc.get("quality", {}).get("by_k", {})  # int keys when fresh, str keys when read back from JSON
    return {
        "settings": {"policy": policy, "train_problems": args.problems, "samples_per_problem": args.samples,
                     "mc_k": args.k, "test_problems": args.test_problems, "test_samples_per_problem": max(NS),
                     "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seeds": list(args.seeds),
                     "extra_layers": args.extra_layers, "variants": list(args.variants)},
        "policy_accuracy": {"train_sampled": train_samples["metrics"]["all"]["sampled"],
                            "test_sampled": test_samples["metrics"]["all"]["sampled"]},
        "mc_compute": mc["compute"],
        "mc_quality_at_k": by_k.get(args.k, by_k.get(str(args.k))),
        "rows": rows,
        "paired": paired_differences(out, rows, reference=args.variants[0]),
    }


def _ci(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['mean']:.3f} [{lo:.3f},{hi:.3f}]"


def format_table(results: dict[str, Any]) -> str:
    """One row per reward model, then the baselines (the same for every model)."""
    s = results["settings"]
    head = (f"policy {s['policy']}; train: {s['train_problems']} problems x {s['samples_per_problem']} samples, "
            f"MC k={s['mc_k']}; test: {s['test_problems']} problems x {s['test_samples_per_problem']} samples; "
            f"{s['steps']} steps x batch {s['batch_size']}; seeds {s['seeds']}")
    cols = (f"{'labels':<13} {'seed':>4} {'agg':>4} {'stepAUC':>7} {'wpAUROC':>7} {'FE-F1':>6}  "
            f"{'best-of-4 (95% CI)':<21}  {'best-of-16 (95% CI)':<21}  {'wmaj@4':>6} {'wmaj@16':>7}")
    lines = [head, cols]
    first = None
    for row in results["rows"].values():
        first = first or row
        sel = row["selection"]
        fe = row["first_error_f1"]
        lines.append(f"{row['variant']:<13} {row['seed']:>4} {row['aggregation']:>4} {row['step_auroc']:>7.3f} "
                     f"{row['within_problem_auroc']:>7.3f} {fe if fe is None else f'{fe:.3f}':>6}  "
                     f"{_ci(sel['best_of_n'][4]):<21}  {_ci(sel['best_of_n'][16]):<21}  "
                     f"{sel['weighted_majority'][4]['mean']:>6.3f} {sel['weighted_majority'][16]['mean']:>7.3f}")
    if first is not None:
        for method, name in (("majority", "majority vote"), ("pass", "pass@N"), ("best_of_n/oracle", "oracle")):
            sel = first["selection"][method]
            lines.append(f"{name:<13} {'':>4} {'':>4} {'':>7} {'':>7} {'':>6}  {_ci(sel[4]):<21}  {_ci(sel[16]):<21}")
    ref = results["settings"]["variants"][0]
    lines.append(f"\nbest-of-N accuracy differences on the same problems (95% bootstrap CI): "
                 f"vs majority vote, and vs the {ref} model")
    for name, d in results["paired"].items():
        parts = [f"vs majority @4 {_ci(d['vs_majority'][4])} @16 {_ci(d['vs_majority'][16])}"]
        if f"vs_{ref}" in d:
            parts.append(f"vs {ref} @4 {_ci(d[f'vs_{ref}'][4])} @16 {_ci(d[f'vs_{ref}'][16])}")
        lines.append(f"  {name:<16} " + "   ".join(parts))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, help="a trained policy directory (default: train one with prm-sft)")
    ap.add_argument("--out", type=Path, default=Path("runs/reward_models"))
    ap.add_argument("--quick", action="store_true", help="a small run (a few minutes): fewer problems and steps")
    ap.add_argument("--problems", type=int, default=300, help="training problems sampled")
    ap.add_argument("--samples", type=int, default=4, help="sampled solutions per training problem")
    ap.add_argument("--k", type=int, default=8, help="Monte-Carlo completions per step prefix")
    ap.add_argument("--test-problems", type=int, default=200, help="held-out problems (16 samples each)")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps per reward model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--extra-layers", type=int, default=0, help="fresh layers on the policy's backbone")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="reward-model seeds (init and data order)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS),
                    choices=["exact", "mc_hard", "mc_soft", "outcome_all", "outcome_last", "process"])
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sft-steps", type=int, default=600, help="without --policy: SFT steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more prm-train overrides for every reward model, e.g. train.batching=bucketed")
    args = ap.parse_args(argv)
    if args.quick:
        args.problems, args.samples, args.k = min(args.problems, 60), min(args.samples, 4), min(args.k, 4)
        args.test_problems, args.steps = min(args.test_problems, 60), min(args.steps, 100)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # the fresh head's "newly initialized" report, once per model
    transformers.logging.disable_progress_bar()
    t0 = time.perf_counter()
    results = run_all(args)
    results["wall_time_s"] = round(time.perf_counter() - t0, 1)
    write_json(args.out / "results.json", results)
    print()
    print(format_table(results))
    print(f"\n[reward-models] results in {args.out / 'results.json'} ({results['wall_time_s']:.0f} s)")
    q = results.get("mc_quality_at_k")
    if q:
        print(f"MC labels at k={args.k} vs exact (rolled-out steps): hard accuracy {q['hard_accuracy']:.3f}, "
              f"soft AUROC {q['soft_auroc']:.3f}, false-positive rate {q['false_positive_rate']:.3f}; "
              f"{results['mc_compute']['policy_tokens']} policy tokens for the labels")
    print(json.dumps(results["policy_accuracy"]))


if __name__ == "__main__":
    main()
