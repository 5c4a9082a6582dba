"""``report.md`` for a demo run: the policy, the PRM, the baselines and the sweep, as tables and plots.

Every accuracy carries a 95% bootstrap interval over problems (``prm.evaluation.metrics.bootstrap_ci``),
recomputed here from the stages' per-problem files (samples, step scores, search records), so a
report over stages cached by an older version still gets them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prm.data.stepwise import StepwiseExample, read_stepwise
from prm.evaluation.metrics import bootstrap_ci
from prm.io import atomic_write_text, read_resumable_jsonl
from prm.worlds import Task
from search.mc_labels import format_quality


def _f(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and x == x else "n/a"


def _ci(mean: Any, ci: Any) -> str:
    """``0.568 [0.524, 0.612]``: a mean with its 95% interval."""
    if ci is None or not isinstance(mean, (int, float)) or mean != mean:
        return _f(mean)
    return f"{_f(mean)} [{_f(ci[0])}, {_f(ci[1])}]"


def _samples_by_problem(path: Path) -> tuple[list[Task], dict[str, list[StepwiseExample]]]:
    by_id: dict[str, list[StepwiseExample]] = {}
    for ex in read_stepwise(path):
        by_id.setdefault(str(ex.extra["id"]), []).append(ex)
    tasks = [Task(i, exs[0].prompt, str(exs[0].extra.get("answer")), exs[0].extra.get("difficulty"))
             for i, exs in by_id.items()]
    return tasks, by_id


def policy_table(run_dir: Path, test: dict[str, Any]) -> list[str]:
    """Greedy, sampled, majority, pass and likelihood best-of-k by difficulty, with 95% intervals."""
    from search.sample import policy_intervals, policy_metrics

    k = test["k"]
    tasks, samples = _samples_by_problem(run_dir / "test" / "samples.jsonl")
    greedy_path = run_dir / "test" / "greedy.jsonl"
    greedy = {str(ex.extra["id"]): ex for ex in read_stepwise(greedy_path)} if greedy_path.exists() else {}
    metrics, ci = policy_metrics(tasks, samples, greedy), policy_intervals(tasks, samples, greedy)
    lines = [f"| difficulty | problems | greedy | sampled (T=1) | majority@{k} | pass@{k} | likelihood best-of-{k} |",
             "|---|---|---|---|---|---|---|"]
    for group, m in metrics.items():
        c = ci[group]
        lines.append(f"| {group} | {int(m['problems'])} | {_ci(m.get('greedy'), c.get('greedy'))} | "
                     f"{_ci(m['sampled'], c['sampled'])} | {_ci(m['majority'], c['majority'])} | "
                     f"{_ci(m['pass'], c['pass'])} | {_ci(m['likelihood_best'], c['likelihood_best'])} |")
    return lines


def selection_with_intervals(run_dir: Path, stage: str, aggregation: str) -> dict[str, Any]:
    """prm-eval's best-of-N curves for one eval stage, recomputed from its scores (with 95% intervals)."""
    from prm.prm_eval import problem_groups, selection_eval

    examples = read_stepwise(run_dir / "test" / "samples.jsonl")
    scores = [rec["step_scores"] for rec in read_resumable_jsonl(run_dir / stage / "scores.jsonl")]
    return selection_eval(examples, scores, problem_groups(examples), aggregation, draws=100, seed=0)


def headline_table(evals: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """At N = all samples: each scorer's best-of-N and weighted majority, majority, pass, with intervals
    (``evals``: name -> (the eval stage's summary, its ``selection_with_intervals``))."""
    lines = ["| scorer | within-problem AUROC | best-of-N | weighted majority | majority | pass@N |",
             "|---|---|---|---|---|---|"]
    for name, (e, selection) in evals.items():
        agg = e["aggregation"]
        sel = selection["all"]
        n = sel["ns"][-1]
        cell = {m: _ci(v["mean"][-1], v.get("ci95", [None])[-1]) for m, v in sel["methods"].items()}
        lines.append(f"| {name} ({agg}, N={n}) | {_f(e['within_problem_auroc'][agg]['auroc'])} | {cell['best_of_n']} | "
                     f"{cell['weighted_majority']} | {cell['majority']} | {cell['pass']} |")
    return lines


def prm_table(evals: dict[str, dict[str, Any]]) -> list[str]:
    """Step, local and within-problem AUROC, calibration and first-error numbers per scorer."""
    lines = ["| scorer | step AUROC | local AUROC | within-problem AUROC | ECE | first-error F1 |",
             "|---|---|---|---|---|---|"]
    for name, e in evals.items():
        st, fe = e["steps"], e["first_error"]
        within = e["within_problem_auroc"][e["aggregation"]]["auroc"]
        lines.append(f"| {name} | {_f(st.get('auroc'))} | {_f(st.get('local_auroc'))} | {_f(within)} | "
                     f"{_f(st.get('ece'))} | {_f(fe.get('f1'))} |")
    return lines


def error_kind_table(kinds: dict[str, dict[str, Any]]) -> list[str]:
    """Per kind of first error: how many, and each scorer's AUROC against right steps (mean score)."""
    names = list(kinds)
    order: list[str] = []
    for k in kinds.values():
        order += [kind for kind in k["kinds"] if kind not in order]
    lines = ["| first error | steps | " + " | ".join(f"{n} AUROC (mean score)" for n in names) + " |",
             "|---" * (len(names) + 2) + "|"]
    first = next(iter(kinds.values()), {"right_steps": 0})
    lines.append(f"| (right steps) | {first['right_steps']} | "
                 + " | ".join(f"- ({_f(kinds[n].get('mean_right_score'))})" for n in names) + " |")
    for kind in order:
        cells = []
        for n in names:
            k = kinds[n]["kinds"].get(kind)
            cells.append(f"{_f(k['auroc'])} ({_f(k['mean_score'])})" if k else "n/a")
        count = next(kinds[n]["kinds"][kind]["n"] for n in names if kind in kinds[n]["kinds"])
        lines.append(f"| {kind} | {count} | " + " | ".join(cells) + " |")
    return lines


def selection_table(sel: dict[str, Any]) -> list[str]:
    """Best-of-N accuracy (pre-sampled solutions) by method and N, by difficulty."""
    lines: list[str] = []
    for group, curves in sel.items():
        ns = curves["ns"]
        lines += [f"**{'all problems' if group == 'all' else f'difficulty {group}'}** ({curves['problems']} problems)", "",
                  "| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---" * (len(ns) + 1) + "|"]
        for method, vals in curves["methods"].items():
            cis = vals.get("ci95") or [None] * len(vals["mean"])
            lines.append(f"| {method} | " + " | ".join(_ci(v, c) for v, c in zip(vals["mean"], cis)) + " |")
        lines.append("")
    return lines


def cell_intervals(cell_dir: Path, final: str) -> dict[str, tuple[float, float]]:
    """95% intervals of each final rule's accuracy (and pass) over a cell's problems (error records excluded)."""
    recs = [r for r in read_resumable_jsonl(cell_dir / "results.jsonl") if not r.get("error")]
    out = {f"acc_{rule}": bootstrap_ci([float(bool(r["correct"][rule])) for r in recs])
           for rule in ("prm", "majority", "weighted_majority")}
    out["acc_pass"] = bootstrap_ci([float(bool(r["pass"])) for r in recs])
    out["acc_headline"] = out[f"acc_{final}"]
    return out


def sweep_table(csv_path: Path) -> list[str]:
    """Accuracy (each final rule, with 95% intervals) and compute per strategy and budget, from the sweep's CSV."""
    if not csv_path.exists():
        return ["(no sweep table)"]
    with csv_path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "done"]
    for r in rows:
        r["_ci"] = cell_intervals(csv_path.parent / "cells" / r["cell"], r.get("final") or "prm")  # type: ignore[assignment]
    cols = [("strategy", "strategy"), ("n", "N"), ("acc_headline", "accuracy"), ("acc_prm", "PRM best"),
            ("acc_majority", "majority"), ("acc_weighted_majority", "PRM-weighted majority"), ("acc_pass", "pass@N"),
            ("generated_tokens_per_problem", "generated tok/problem"), ("prm_tokens_per_problem", "PRM tok/problem"),
            ("flops_per_problem", "FLOPs/problem"), ("wall_time_s", "wall s"), ("_x_bon", "wall / best-of-N's")]
    bon = {r["n"]: float(r["wall_time_s"]) for r in rows if r.get("strategy") == "best_of_n" and r.get("wall_time_s")}
    for r in rows:  # wall time against best-of-N's at the same N (same problems, same machine, one run)
        wall, ref = r.get("wall_time_s"), bon.get(r["n"])
        r["_x_bon"] = f"{float(wall) / ref:.2f}x" if wall and ref else ""
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|---" * len(cols) + "|"]
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key, "")
            try:
                num = float(v)
                cells.append(f"{num:.3g}" if "tok" in key or "flops" in key or key == "wall_time_s"
                             else _ci(num, r["_ci"].get(key)) if "acc" in key else v)  # type: ignore[union-attr]
            except ValueError:
                cells.append(v)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def rl_table(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Per RL stage and monitored step: true held-out accuracy (95% intervals), process correctness, PRM reward."""
    lines = ["| RL stage | step | greedy accuracy | sampled accuracy | every step right | PRM reward | PRM - true |",
             "|---|---|---|---|---|---|---|"]
    for name, summary in stages.items():
        for m in summary.get("monitor", []):
            ci = {k: (m.get(f"{k}_lo"), m.get(f"{k}_hi")) for k in ("greedy_accuracy", "sampled_accuracy")}
            lines.append(f"| {name} | {m.get('step')} | {_ci(m.get('greedy_accuracy'), ci['greedy_accuracy'])} | "
                         f"{_ci(m.get('sampled_accuracy'), ci['sampled_accuracy'])} | {_f(m.get('process_correct'))} | "
                         f"{_f(m.get('prm_reward'))} | {_f(m.get('prm_gap'))} |")
    return lines


def mc_section(summary: dict[str, Any]) -> list[str]:
    """Monte-Carlo labels against the exact ones (``search.mc_labels.format_quality``'s table)."""
    quality = (summary.get("mc") or {}).get("quality")
    if not quality or not quality.get("by_k"):
        return []
    return ["### Monte-Carlo step labels against the exact labels", "",
            "Hard label: any of k completions from the step's prefix reaches the right answer (Math-Shepherd's HE); "
            "soft: the fraction that does. A false positive is a wrong step from which the policy still reached the "
            "right answer; intervals are 95% bootstrap intervals over problems.", "",
            "```", format_quality(quality), "```", ""]


def distill_table(run_dir: Path, summaries: dict[str, Any]) -> list[str]:
    """Policy greedy, the teacher system and the distilled student on the same held-out problems (95% intervals)."""
    rows = [("policy (greedy)", "distill_eval_policy"), ("teacher: policy + PRM search", "distill_eval_teacher"),
            ("student after one round (greedy)", "distill_eval_student")]
    acc: dict[str, float] = {}
    lines = ["| model | held-out accuracy | generated tokens/problem | PRM tokens/problem |", "|---|---|---|---|"]
    for label, stage in rows:
        summary = summaries[stage]
        acc[stage] = float(summary["accuracy"]["all"]["headline"])
        ci = cell_intervals(run_dir / stage, summary["final"])["acc_headline"]
        per = summary["compute"]["per_problem"]
        lines.append(f"| {label} | {_ci(acc[stage], ci)} | {_f(per.get('generated_tokens'))} | "
                     f"{_f(per.get('prm_tokens'))} |")
    base, teacher, student = acc["distill_eval_policy"], acc["distill_eval_teacher"], acc["distill_eval_student"]
    counts = summaries["distill"]["counts"]
    kept = f"{(student - base) / (teacher - base):.2f}" if teacher != base else "n/a"
    return [*lines, "", f"Distilled examples: {counts.get('kept')} of {counts.get('problems')} training problems "
            f"(filter {summaries['distill'].get('filter')}); share of the teacher's gain the student keeps at greedy "
            f"cost: {kept} ((student - policy) / (teacher - policy), one seed)."]


def write_report(run_dir: Path, summaries: dict[str, Any], cfg: DictConfig) -> Path:
    """Write ``run_dir/report.md`` from the stages' summaries; returns its path."""
    sft = summaries["sft"]
    stages = {"PRM": "eval_prm", "policy likelihood": "eval_likelihood", "oracle (exact labels)": "eval_oracle"}
    selections = {name: selection_with_intervals(run_dir, st, summaries[st]["aggregation"]) for name, st in stages.items()}
    plots = sorted(p for p in run_dir.rglob("*.png") if "checkpoints" not in p.parts)
    lines = [
        "# prm-demo report", "",
        "World: " + ", ".join(f"{k}={v}" for k, v in OmegaConf.to_container(cfg.data.world, resolve=True).items()), "",
        "## Policy", "",
        f"{sft.get('parameters', 'n/a')} parameters, trained {sft.get('elapsed_s', 0):.0f} s "
        f"({sft.get('step', 'n/a')} steps, {sft.get('mean_tokens_per_s', 0):.0f} tokens/s).", "",
        *policy_table(run_dir, summaries["test"]), "",
        "## PRM", "",
        f"Trained from the policy's backbone on {summaries['prm'].get('n_train', 'n/a')} labelled samples; "
        f"validation step AUROC {_f(summaries['prm'].get('val_step_auroc'))}.", "",
        *prm_table({"PRM": summaries["eval_prm"], "policy likelihood": summaries["eval_likelihood"],
                    "oracle (exact labels)": summaries["eval_oracle"]}), "",
        "### Each scorer ranking all held-out samples of a problem (95% bootstrap intervals over problems)", "",
        "The oracle ranks by exact step labels, the answer step included: it is the upper bound of every scorer.", "",
        *headline_table({name: (summaries[st], selections[name]) for name, st in stages.items()}), "",
        "### What each scorer catches: first-error steps by kind", "",
        "AUROC of the score at each kind's first-error steps against every right step with right steps "
        "before it: the policy's likelihood spots random slips, the PRM must add the systematic mistakes "
        "the policy makes confidently.", "",
        *error_kind_table(summaries["error_kinds"]), "",
        *(mc_section(summaries["mc_labels"]) if "mc_labels" in summaries else []),
        "### Best-of-N over the held-out samples (PRM ranking, majority, weighted majority, likelihood, oracle)", "",
        *selection_table(selections["PRM"]), "",
        "## Search sweep", "",
        *sweep_table(run_dir / "sweep" / "sweep.csv"), "",
        *(["## Distillation: search back into the policy (one round of expert iteration)", "",
            *(distill_table(run_dir, summaries) if "distill_eval_student" in summaries
              else [f"Skipped: {summaries['distill'].get('skipped')}"]), ""] if "distill" in summaries else []),
        *(["## RL from the SFT policy (held-out monitor)", "",
            "Equal rollouts per stage. The PRM's reward next to true accuracy: a PRM being gamed shows its reward "
            "rising while true accuracy and exact process correctness fall.", "",
            *rl_table({k: v for k, v in summaries.items() if k.startswith("rl_")}), ""]
          if any(k.startswith("rl_") for k in summaries) else []),
        "## Plots", "",
        *[f"![{p.stem}]({os.path.relpath(p, run_dir)})" for p in plots], "",
    ]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))
