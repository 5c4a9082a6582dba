"""``prm-eval``: how good is a scorer (a trained PRM, or any baseline) on labelled sampled solutions?

Reads a stepwise JSONL of sampled solutions (``prm-sample``'s ``samples.jsonl``: problem id,
sample index, exact step labels, correctness, the answer given, the policy's log-likelihood) or a
ProcessBench file, scores every step with the configured ``Scorer`` and writes to ``run_dir``:

- ``scores.jsonl``: the step scores of every solution (appended in order);
- ``summary.json``: step level (AUROC, accuracy/F1 of both classes, ECE), local AUROC (steps
  whose earlier steps are all correct), within-problem AUROC (ranking a problem's own solutions
  by correctness) for every aggregation, first-error accuracy (threshold chosen on a validation
  half of the problems, evaluated on the other half), and best-of-N selection curves (PRM,
  majority, PRM-weighted majority, pass@N, the policy-likelihood reranker and the oracle), by
  difficulty;
- ``reliability.png`` and ``selection.png``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from prm.data.stepwise import StepwiseExample, read_stepwise
from prm.evaluation.metrics import (
    accuracy_f1,
    choose_threshold,
    expected_calibration_error,
    first_error_metrics,
    first_error_prediction,
    local_auroc,
    reliability_bins,
    step_auroc,
    within_problem_auroc,
)
from prm.evaluation.plots import plot_reliability, plot_selection_curves
from prm.evaluation.processbench import first_error_index, read_processbench
from prm.evaluation.selection import SampledProblem, group_indices, selection_by_group
from prm.io import write_json
from prm.scoring.base import AGGREGATIONS, Scorer, aggregate

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def load_examples(path: str | Path, fmt: str) -> list[StepwiseExample]:
    """Stepwise JSONL (ours) or ProcessBench (``fmt=processbench``), as stepwise examples."""
    if fmt == "processbench":
        return [ex.to_stepwise() for ex in read_processbench(path)]
    return read_stepwise(path)


def score_examples(scorer: Scorer, examples: Sequence[StepwiseExample], chunk: int, progress: bool,
                   out: Path | None = None) -> list[list[float]]:
    """Step scores of every example, ``chunk`` solutions per scorer call; appended to ``out`` as they come."""
    scores: list[list[float]] = []
    handle = out.open("w", encoding="utf-8") if out is not None else None
    try:
        for c in tqdm(range(0, len(examples), chunk), desc="scoring", disable=not progress):
            part = examples[c : c + chunk]
            got = scorer.score([ex.prompt for ex in part], [[ex.completions] for ex in part])
            for ex, per_problem in zip(part, got):
                scores.append(list(per_problem[0]))
                if handle is not None:
                    handle.write(json.dumps({"id": ex.extra.get("id"), "sample": ex.extra.get("sample"),
                                             "step_scores": scores[-1]}) + "\n")
            if handle is not None:
                handle.flush()
    finally:
        if handle is not None:
            handle.close()
    return scores


def problem_groups(examples: Sequence[StepwiseExample]) -> dict[str, list[int]]:
    """Example indices per problem (by ``id``, else by prompt), in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(str(ex.extra.get("id", ex.prompt)), []).append(i)
    return groups


def step_metrics(scores: list[list[float]], labels: list[list[float | None]], n_bins: int) -> dict[str, Any]:
    """Step-level AUROC, accuracy/F1 (both classes), calibration, and local AUROC."""
    flat = [(s, lab) for ss, ls in zip(scores, labels) for s, lab in zip(ss, ls) if lab is not None]
    if not flat:
        return {"labelled_steps": 0}
    s = np.array([f[0] for f in flat])
    y = np.array([f[1] for f in flat])
    hard = y if set(np.unique(y)) <= {0.0, 1.0} else (y >= 0.5).astype(float)
    binary_labels = [[None if lab is None else float(lab >= 0.5) for lab in ls] for ls in labels]
    return {
        "labelled_steps": len(flat),
        "auroc": step_auroc(scores, binary_labels).auroc,
        "local_auroc": local_auroc(scores, binary_labels).auroc,
        **{f"step_{k}": v for k, v in accuracy_f1(s, hard).items() if k != "threshold"},
        "ece": expected_calibration_error(s, y, n_bins),
        "reliability": reliability_bins(s, y, n_bins),
    }


def first_error_eval(scores: list[list[float]], labels: list[list[float | None]], groups: dict[str, list[int]],
                     threshold: float | None, seed: int) -> dict[str, Any]:
    """First-error accuracy; the threshold is chosen on half of the problems and scored on the other half."""
    truth = [first_error_index(ls, threshold=0.5) if ls else None for ls in labels]
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    val_keys = set(keys[: len(keys) // 2])
    val = [i for k in val_keys for i in groups[k] if truth[i] is not None]
    test = [i for k in keys if k not in val_keys for i in groups[k] if truth[i] is not None]
    if threshold is None:
        try:
            threshold = choose_threshold([scores[i] for i in val], [truth[i] for i in val])  # type: ignore[misc]
        except ValueError as e:
            return {"error": str(e)}
        chosen_on = "validation half"
    else:
        test = val + test
        chosen_on = "given"
    preds = [first_error_prediction(scores[i], threshold) for i in test]
    return {"threshold": threshold, "threshold_from": chosen_on,
            **first_error_metrics(preds, [truth[i] for i in test])}  # type: ignore[misc]


def selection_eval(examples: Sequence[StepwiseExample], scores: list[list[float]], groups: dict[str, list[int]],
                   aggregation: str, draws: int, seed: int) -> dict[str, Any]:
    """Best-of-N curves when the scorer ranks each problem's pre-sampled solutions, by difficulty."""
    problems: list[SampledProblem] = []
    difficulty: list[Any] = []
    likelihood = all(ex.extra.get("logprob") is not None for ex in examples)
    exact = all(None not in ex.labels for ex in examples)  # the oracle ranking: exact labels everywhere
    for idx in groups.values():
        exs = [examples[i] for i in idx]
        if any("correct" not in ex.extra for ex in exs):
            return {"skipped": "solutions without a 'correct' field (not sampled solutions)"}
        extra: dict[str, list[float]] = {}
        if likelihood:
            extra["likelihood"] = [float(ex.extra["logprob"]) for ex in exs]
        if exact:  # min over exact labels; a solution with no step is not on track
            extra["oracle"] = [min(ex.labels, default=0.0) for ex in exs]  # type: ignore[type-var]
        problems.append(SampledProblem(
            scores=[aggregate(scores[i], aggregation) for i in idx],
            answers=[ex.extra.get("given_answer") for ex in exs],
            correct=[bool(ex.extra["correct"]) for ex in exs],
            extra_scores=extra,
        ))
        difficulty.append(exs[0].extra.get("difficulty"))
    return selection_by_group(problems, group_indices(difficulty), draws=draws, seed=seed)


def run(cfg: DictConfig, scorer: Scorer | None = None) -> dict[str, Any]:
    """Score, measure, plot; returns the summary."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    examples = load_examples(cfg.data.path, cfg.input_format)
    scorer = scorer or instantiate(cfg.scorer)
    scores = score_examples(scorer, examples, cfg.chunk, cfg.progress, run_dir / "scores.jsonl")
    labels = [list(ex.labels) for ex in examples]
    groups = problem_groups(examples)
    steps = step_metrics(scores, labels, cfg.n_bins)
    within = {}
    for how in AGGREGATIONS:
        pairs = [[(aggregate(scores[i], how), bool(examples[i].extra.get("correct", False))) for i in idx]
                 for idx in groups.values()]
        res = within_problem_auroc(pairs)
        within[how] = {"auroc": res.auroc, "problems": res.n}
    summary: dict[str, Any] = {
        "data": str(cfg.data.path), "solutions": len(examples), "problems": len(groups),
        "aggregation": scorer.aggregation, "steps": steps, "within_problem_auroc": within,
        "first_error": first_error_eval(scores, labels, groups, cfg.threshold, cfg.seed),
        "selection": selection_eval(examples, scores, groups, scorer.aggregation, cfg.draws, cfg.seed),
        "scorer_stats": {k: v for k, v in vars(scorer.stats).items() if isinstance(v, (int, float))},
    }
    if "reliability" in steps:
        plot_reliability(steps["reliability"], run_dir / "reliability.png", title="PRM calibration (steps)")
    if "all" in summary["selection"]:
        plot_selection_curves(summary["selection"]["all"], run_dir / "selection.png",
                              title=f"Best-of-N on {len(groups)} problems")
    write_json(run_dir / "summary.json", summary)
    print(format_summary(summary))
    print(f"[prm-eval] summary in {run_dir / 'summary.json'}")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The headline numbers as text."""
    s = summary["steps"]
    lines = [f"solutions {summary['solutions']}, problems {summary['problems']}, aggregation {summary['aggregation']}"]
    if s.get("labelled_steps"):
        lines.append(f"steps: AUROC {s['auroc']:.3f}  local AUROC {s['local_auroc']:.3f}  "
                     f"acc {s['step_accuracy']:.3f}  neg-F1 {s['step_neg_f1']:.3f}  ECE {s['ece']:.3f}")
    lines.append("within-problem AUROC: " + "  ".join(
        f"{k} {v['auroc']:.3f}" for k, v in summary["within_problem_auroc"].items()))
    fe = summary["first_error"]
    if "f1" in fe:
        lines.append(f"first error: acc(error) {fe['error_accuracy']:.3f}  acc(correct) {fe['correct_accuracy']:.3f}  "
                     f"F1 {fe['f1']:.3f}  (threshold {fe['threshold']:.2f}, {fe['threshold_from']})")
    sel = summary["selection"]
    if "all" in sel:
        lines.append("selection (accuracy by N):")
        ns = sel["all"]["ns"]
        lines.append(f"  {'group':>6} {'method':>22} " + " ".join(f"{n:>6}" for n in ns))
        for group, curves in sel.items():
            for method, vals in curves["methods"].items():
                lines.append(f"  {group:>6} {method:>22} " + " ".join(f"{v:>6.3f}" for v in vals["mean"]))
    return "\n".join(lines)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="prm_eval")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
