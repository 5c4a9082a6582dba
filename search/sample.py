"""``prm-sample``: sample k solutions per problem from a policy, label them, and measure the policy.

Writes, in ``run_dir``:

- ``samples.jsonl``: one labelled stepwise example per sample (problem id, sample index, the
  solution's correctness, its log-likelihood and token counts) — the PRM's training data in the
  arithmetic world. Appended problem by problem; an interrupted run resumes after the last
  complete problem.
- ``greedy.jsonl``: the greedy (temperature 0) solution of each problem, when ``greedy`` is on.
- ``summary.json``: by difficulty and overall, greedy accuracy, sampled accuracy, majority@k,
  pass@k and best-of-k by the policy's own likelihood, with the generation compute spent.

``labeller``: ``exact`` (default) labels each step with the world's exact labels (none for problem
files); ``mc`` with Monte-Carlo rollouts by the same policy (``search/mc_labels.py``, knobs in
``mc``): ``labels`` are the hard or soft MC labels, the exact ones move to ``exact_labels``, and
the summary reports the MC compute (policy tokens per label) and, with exact labels, the label
quality against k. The greedy solutions keep exact labels (they only measure the policy).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from prm.data.stepwise import StepwiseExample, read_stepwise
from prm.evaluation.metrics import bootstrap_ci
from prm.io import read_resumable_jsonl, write_json, write_jsonl
from prm.runs import check_identity, model_fingerprint
from prm.steps import policy_prompt
from prm.voting import vote
from prm.worlds import Task, World, by_difficulty, label_example, world_and_tasks
from search.generation.base import Generation, Generator, result_settings
from search.mc_labels import MCSettings, format_quality, label_quality, mc_compute, mc_label

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def identity(cfg: DictConfig) -> dict[str, Any]:
    """What a resumed sampling run must share with the run that wrote ``samples.jsonl``: the
    problems, the sampling settings, the generator and the policy's contents."""
    keys = ("problems", "split", "n_problems", "problem_seed", "k", "temperature", "top_p", "max_new_tokens",
            "greedy", "prompts_per_call", "seed")
    ident = {**{k: cfg.get(k) for k in keys}, "data": OmegaConf.to_container(cfg.data, resolve=True),
             "generator": result_settings(OmegaConf.to_container(cfg.generator, resolve=True)),  # type: ignore[arg-type]
             "policy": str(cfg.policy), "policy_fingerprint": model_fingerprint(cfg.policy)}
    mc = mc_settings(cfg)
    if mc is not None:  # exact-label runs keep the identity they always had
        ident.update(labeller="mc", mc=vars(mc))
    return ident


def mc_settings(cfg: DictConfig) -> MCSettings | None:
    """The Monte-Carlo labeller's settings (``labeller=mc``), or None for exact labels."""
    labeller = cfg.get("labeller") or "exact"
    if labeller not in ("exact", "mc"):
        raise ValueError(f"labeller must be exact or mc (got {labeller!r})")
    if labeller == "exact":
        return None
    knobs = OmegaConf.to_container(cfg.mc, resolve=True) if cfg.get("mc") else {}
    return MCSettings.from_config(knobs)  # type: ignore[arg-type]


def done_ids(path: Path, k: int) -> set[str]:
    """Ids of problems whose k samples are all in ``path`` (a crash mid-problem redoes that problem)."""
    counts: dict[str, int] = {}
    for rec in read_resumable_jsonl(path):
        counts[rec["id"]] = counts.get(rec["id"], 0) + 1
    return {pid for pid, c in counts.items() if c >= k}


def truncate_to_complete(path: Path, keep: set[str]) -> None:
    """Drop lines of problems not in ``keep`` (partially written before a crash) and any torn last line."""
    if path.exists():
        write_jsonl(path, [rec for rec in read_resumable_jsonl(path) if rec["id"] in keep])


def label_samples(world: World, task: Task, gens: Sequence[Generation], **extra: Any) -> list[StepwiseExample]:
    """Label each sample of one problem, keeping its generation's compute and likelihood."""
    return [
        label_example(world, task, g.text, sample=j, logprob=g.logprob, generated_tokens=g.generated_tokens,
                   prompt_tokens=g.prompt_tokens, finish_reason=g.finish_reason, **extra)
        for j, g in enumerate(gens)
    ]


def per_problem_policy(tasks: Sequence[Task], samples: dict[str, list[StepwiseExample]],
                       greedy: dict[str, StepwiseExample]) -> dict[str, list[float]]:
    """Per problem (in task order): greedy, sampled accuracy, majority@k, pass@k, likelihood best-of-k."""
    out: dict[str, list[float]] = {"sampled": [], "majority": [], "pass": [], "likelihood_best": []}
    if greedy:
        out["greedy"] = []
    for t in tasks:
        ss = samples[t.id]
        correct = [bool(s.extra["correct"]) for s in ss]
        out["sampled"].append(sum(correct) / len(correct))
        out["pass"].append(float(any(correct)))
        v = vote([s.extra.get("given_answer") for s in ss])
        out["majority"].append(float(v.index is not None and correct[v.index]))
        lls = [s.extra.get("logprob") if s.extra.get("logprob") is not None else float("-inf") for s in ss]
        out["likelihood_best"].append(float(correct[max(range(len(ss)), key=lambda j: lls[j])]))
        if greedy:
            out["greedy"].append(float(bool(greedy[t.id].extra["correct"])))
    return out


def policy_metrics(tasks: Sequence[Task], samples: dict[str, list[StepwiseExample]],
                   greedy: dict[str, StepwiseExample]) -> dict[str, dict[str, float]]:
    """Per difficulty and overall: greedy, sampled accuracy, majority@k, pass@k, likelihood best-of-k."""
    values = per_problem_policy(tasks, samples, greedy)
    out: dict[str, dict[str, float]] = {}
    for group, idx in by_difficulty(tasks).items():
        row = {"problems": float(len(idx))}
        row.update({k: sum(v[i] for i in idx) / max(1, len(idx)) for k, v in values.items()})
        out[group] = row
    return out


def policy_intervals(tasks: Sequence[Task], samples: dict[str, list[StepwiseExample]],
                     greedy: dict[str, StepwiseExample]) -> dict[str, dict[str, list[float]]]:
    """95% bootstrap intervals over problems of every ``policy_metrics`` number, per difficulty."""
    values = per_problem_policy(tasks, samples, greedy)
    return {group: {k: list(bootstrap_ci([v[i] for i in idx])) for k, v in values.items()}
            for group, idx in by_difficulty(tasks).items()}


def format_metrics(metrics: dict[str, dict[str, float]], k: int) -> str:
    """The summary table: one row per difficulty."""
    cols = [c for c in ("greedy", "sampled", "majority", "pass", "likelihood_best") if c in metrics["all"]]
    names = {"greedy": "greedy", "sampled": "sampled", "majority": f"maj@{k}", "pass": f"pass@{k}",
             "likelihood_best": f"loglik-best@{k}"}
    lines = ["difficulty  problems  " + "  ".join(f"{names[c]:>13}" for c in cols)]
    for group, row in metrics.items():
        lines.append(f"{group:>10}  {int(row['problems']):>8}  " + "  ".join(f"{row[c]:>13.3f}" for c in cols))
    return "\n".join(lines)


def append_jsonl(path: Path, examples: Sequence[StepwiseExample]) -> None:
    """Append examples line by line and flush, so a crash loses at most the problem in progress."""
    with path.open("a", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
        f.flush()


def run(cfg: DictConfig, generator: Generator | None = None) -> dict[str, Any]:
    """Sample, label and summarise; resumes from what ``run_dir`` already holds."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world, draw = world_and_tasks(cfg)
    fmt, tasks = world.fmt, draw.tasks
    if not tasks:
        raise ValueError("no problems to sample")
    check_identity(run_dir, identity(cfg), "samples")
    samples_path, greedy_path = run_dir / "samples.jsonl", run_dir / "greedy.jsonl"
    done = done_ids(samples_path, cfg.k)
    if cfg.greedy:
        done &= done_ids(greedy_path, 1)
        truncate_to_complete(greedy_path, done)
    truncate_to_complete(samples_path, done)
    todo = [t for t in tasks if t.id not in done]
    mc = mc_settings(cfg)
    if done:
        print(f"[sample] resuming: {len(done)} problems done, {len(todo)} to go")
    generator = generator or instantiate(cfg.generator, model_or_path=cfg.policy)
    before = (generator.stats.generated_tokens, generator.stats.prompt_tokens)
    mc_spent = [0, 0]  # generated, prompt tokens of MC labelling in this run
    start = time.perf_counter()
    chunk = cfg.prompts_per_call
    with tqdm(total=len(todo), desc="sampling", unit="problem", disable=not cfg.progress) as bar:
        # Fixed chunks with a seed per chunk: a resumed run samples exactly what an uninterrupted one would.
        for c in range(0, len(tasks), chunk):
            part = tasks[c : c + chunk]
            if all(t.id in done for t in part):
                continue
            prompts = [policy_prompt(t.prompt, fmt) for t in part]
            seed = cfg.seed * 1_000_003 + c
            gens = generator.generate(prompts, n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_new_tokens=cfg.max_new_tokens, seed=seed)
            greedy = (generator.generate(prompts, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens)
                      if cfg.greedy else None)
            labelled = [label_samples(world, t, gens[i]) for i, t in enumerate(part)]
            if mc is not None:  # the whole chunk, done problems included: a resumed run makes the same calls
                mc_before = (generator.stats.generated_tokens, generator.stats.prompt_tokens)
                labelled = mc_label(world, generator, part, labelled, mc, seed=cfg.seed, chunk=c)
                mc_spent[0] += generator.stats.generated_tokens - mc_before[0]
                mc_spent[1] += generator.stats.prompt_tokens - mc_before[1]
            for i, t in enumerate(part):
                if t.id in done:
                    continue
                if greedy is not None:
                    append_jsonl(greedy_path, label_samples(world, t, greedy[i], greedy=True))
                append_jsonl(samples_path, labelled[i])
                bar.update(1)
    elapsed = time.perf_counter() - start
    generated = generator.stats.generated_tokens - before[0]
    prompt_tokens = generator.stats.prompt_tokens - before[1]
    samples: dict[str, list[StepwiseExample]] = {}
    for ex in read_stepwise(samples_path):
        samples.setdefault(ex.extra["id"], []).append(ex)
    greedy_by_id = {ex.extra["id"]: ex for ex in read_stepwise(greedy_path)} if cfg.greedy else {}
    metrics = policy_metrics(tasks, samples, greedy_by_id)
    summary = {
        "policy": str(cfg.policy), "k": cfg.k, "temperature": cfg.temperature, "problems": len(tasks),
        "ci95": policy_intervals(tasks, samples, greedy_by_id),
        "split": cfg.get("split") or "test", "removed_overlap": draw.removed_overlap,
        "removed_duplicates": draw.removed_duplicates,
        "metrics": metrics,
        "this_run": {"problems_sampled": len(todo), "wall_time_s": elapsed,
                     "generated_tokens": generated, "prompt_tokens": prompt_tokens,
                     "generated_tokens_per_s": generated / elapsed if elapsed > 0 else 0.0},
    }
    if mc is not None:
        summary["this_run"].update(mc_generated_tokens=mc_spent[0], mc_prompt_tokens=mc_spent[1])
        summary["mc"] = mc_summary([ex for t in tasks for ex in samples[t.id]], mc, world.exact_labels)
    write_json(run_dir / "summary.json", summary)
    print(format_metrics(metrics, cfg.k))
    if mc is not None:
        cost = summary["mc"]["compute"]
        print(f"[sample] MC labels (k={mc.k}, {mc.label}): {cost['policy_tokens']} policy tokens, "
              f"{cost['tokens_per_label']:.1f} per label ({cost['tokens_per_rollout_label']:.1f} per rolled-out label)")
        if "quality" in summary["mc"]:
            print(format_quality(summary["mc"]["quality"]))
    print(f"[sample] {samples_path} ({sum(len(v) for v in samples.values())} labelled samples); "
          f"summary in {run_dir / 'summary.json'}")
    return summary


def mc_summary(examples: Sequence[StepwiseExample], mc: MCSettings, exact: bool) -> dict[str, Any]:
    """The MC labels' settings and compute over every sample on file, and, where the world has exact
    labels, their quality against k (``search.mc_labels.label_quality``)."""
    out: dict[str, Any] = {**vars(mc), "compute": mc_compute(examples)}
    if exact and examples:
        out["quality"] = label_quality(examples)
    return out


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
