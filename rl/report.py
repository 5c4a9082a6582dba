"""``report.md`` for a demo run: the policy, the PRM, the baselines and the sweep, as tables and plots."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prm.io import atomic_write_text


def _f(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and x == x else "n/a"


def policy_table(test: dict[str, Any]) -> list[str]:
    """Greedy, sampled, majority, pass and likelihood best-of-k by difficulty."""
    k = test["k"]
    lines = [f"| difficulty | problems | greedy | sampled (T=1) | majority@{k} | pass@{k} | likelihood best-of-{k} |",
             "|---|---|---|---|---|---|---|"]
    for group, m in test["metrics"].items():
        lines.append(f"| {group} | {int(m['problems'])} | {_f(m.get('greedy'))} | {_f(m['sampled'])} | "
                     f"{_f(m['majority'])} | {_f(m['pass'])} | {_f(m['likelihood_best'])} |")
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
            lines.append(f"| {method} | " + " | ".join(_f(v) for v in vals["mean"]) + " |")
        lines.append("")
    return lines


def sweep_table(csv_path: Path) -> list[str]:
    """Accuracy (each final rule) and compute per strategy and budget, from the sweep's CSV."""
    if not csv_path.exists():
        return ["(no sweep table)"]
    with csv_path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "done"]
    cols = [("strategy", "strategy"), ("n", "N"), ("acc_headline", "accuracy"), ("acc_prm", "PRM best"),
            ("acc_majority", "majority"), ("acc_weighted_majority", "PRM-weighted majority"), ("acc_pass", "pass@N"),
            ("generated_tokens_per_problem", "generated tok/problem"), ("prm_tokens_per_problem", "PRM tok/problem"),
            ("flops_per_problem", "FLOPs/problem")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|---" * len(cols) + "|"]
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key, "")
            try:
                num = float(v)
                cells.append(f"{num:.3g}" if "tok" in key or "flops" in key else f"{num:.3f}" if "acc" in key else v)
            except ValueError:
                cells.append(v)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(run_dir: Path, summaries: dict[str, Any], cfg: DictConfig) -> Path:
    """Write ``run_dir/report.md`` from the stages' summaries; returns its path."""
    sft = summaries["sft"]
    plots = sorted(p for p in run_dir.rglob("*.png") if "checkpoints" not in p.parts)
    lines = [
        "# prm-demo report", "",
        "World: " + ", ".join(f"{k}={v}" for k, v in OmegaConf.to_container(cfg.data.world, resolve=True).items()), "",
        "## Policy", "",
        f"{sft.get('parameters', 'n/a')} parameters, trained {sft.get('elapsed_s', 0):.0f} s "
        f"({sft.get('step', 'n/a')} steps, {sft.get('mean_tokens_per_s', 0):.0f} tokens/s).", "",
        *policy_table(summaries["test"]), "",
        "## PRM", "",
        f"Trained from the policy's backbone on {summaries['prm'].get('n_train', 'n/a')} labelled samples; "
        f"validation step AUROC {_f(summaries['prm'].get('val_step_auroc'))}.", "",
        *prm_table({"PRM": summaries["eval_prm"], "policy likelihood": summaries["eval_likelihood"],
                    "oracle (exact labels)": summaries["eval_oracle"]}), "",
        "### What each scorer catches: first-error steps by kind", "",
        "AUROC of the score at each kind's first-error steps against every right step with right steps "
        "before it: the policy's likelihood spots random slips, the PRM must add the systematic mistakes "
        "the policy makes confidently.", "",
        *error_kind_table(summaries["error_kinds"]), "",
        "### Best-of-N over the held-out samples (PRM ranking, majority, weighted majority, likelihood, oracle)", "",
        *selection_table(summaries["eval_prm"]["selection"]), "",
        "## Search sweep", "",
        *sweep_table(run_dir / "sweep" / "sweep.csv"), "",
        "## Plots", "",
        *[f"![{p.stem}]({os.path.relpath(p, run_dir)})" for p in plots], "",
    ]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))
