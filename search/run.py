"""``prm-search``: one test-time search strategy on a problem set, every token counted, resumable.

Reads top to bottom (``run``):

1. the step format, the problems (the arithmetic world, or a problem file such as MATH-500 with
   ``problems=path``), the strategy and the loop settings from ``cfg.search`` (all checked before
   any model loads: an unknown strategy, a budget n not divisible by m, a problem without an
   answer fail at once with a clear message);
2. the run directory: ``config.yaml`` (resolved), ``identity.json`` (what must not change
   between a run and its resumption), and ``results.jsonl`` read back: problems already there are
   skipped, a torn last line from a crash is dropped, records of failed problems are retried
   (``retry_errors``);
3. the generator (the policy at ``policy``) and the scorer, then the problems in fixed chunks of
   ``problems_per_call`` searched together (``search.loop``), each chunk with its own seed, so a
   resumed run draws exactly what an uninterrupted one would. Each problem's record is appended
   to ``results.jsonl`` when its chunk finishes. Only an expected per-problem failure (a
   generation or grading error, ``ProblemFailure``) is isolated: the chunk is retried one problem
   at a time, and a problem that still fails is recorded with an ``error`` field while the run
   goes on. Any other exception (a programming error, a scorer failure) stops the run with its
   traceback.
4. ``summary.json``: accuracy of each final rule (and pass@candidates), overall and by
   difficulty; compute totals and means per problem (``search.accounting``), FLOPs, wall time.
   Error records are excluded from accuracies and compute means and counted in ``errors``.

A record (one line per problem): ``id``, ``index``, ``prompt``, ``answer`` (reference),
``difficulty``; ``candidates`` (every finished candidate: text, steps, step scores, aggregated
score, search values, answer, correctness, finish reason, round, tokens); ``unfinished`` (beams
open at the round limit); ``chosen`` (per final rule: index, answer, correctness); ``correct`` (per
rule) and ``pass``; ``rounds``; ``compute`` and ``flops``; ``wall_time_s`` (the chunk's wall time
split evenly over its problems); ``error`` (None, or the failure of a problem; such a record
takes no part in accuracy or compute).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import inspect

from hydra.utils import get_class

from prm.io import atomic_write_text, read_resumable_jsonl, write_json, write_jsonl
from prm.runs import check_identity, model_fingerprint
from prm.scoring.base import Scorer
from prm.worlds import Task, World, by_difficulty, world_and_tasks
from search.accounting import Compute, ModelSizes, model_sizes, total
from search.generation.base import Generator, result_settings
from search.loop import FINAL_RULES, GenerationError, SearchResult, SearchSettings, derive_seed, search
from search.strategies import Strategy, make_strategy

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
RESULTS, SUMMARY = "results.jsonl", "summary.json"
SETTINGS_KEYS = {f.name for f in fields(SearchSettings)} - {"seed"}


def build_search(search_cfg: Any, seed: int = 0) -> tuple[Strategy, SearchSettings]:
    """The strategy (``name`` + its knobs) and the loop settings from one ``search`` config node."""
    node = dict(OmegaConf.to_container(search_cfg, resolve=True) if isinstance(search_cfg, DictConfig) else search_cfg)
    name = node.pop("name", None)
    if not name:
        raise ValueError("the search config needs a strategy name (search.name)")
    settings = SearchSettings(seed=seed, **{k: node.pop(k) for k in list(node) if k in SETTINGS_KEYS})
    return make_strategy(str(name), **node), settings


class GradingError(RuntimeError):
    """Grading a problem's candidates failed (an expected per-problem failure)."""


ProblemFailure = (GenerationError, GradingError)
"""The failures that become a problem's error record; everything else stops the run."""


def identity(cfg: DictConfig) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote ``results.jsonl``: the search, the
    problems, the generator and scorer settings, and the contents of the model directories read."""
    scorer = OmegaConf.to_container(cfg.scorer, resolve=True)
    generator = OmegaConf.to_container(cfg.generator, resolve=True)
    assert isinstance(scorer, dict) and isinstance(generator, dict)
    return json.loads(json.dumps({
        "search": OmegaConf.to_container(cfg.search, resolve=True), "seed": cfg.seed, "policy": str(cfg.policy),
        "policy_fingerprint": model_fingerprint(cfg.policy),
        "scorer": scorer, "scorer_fingerprint": model_fingerprint(scorer.get("model_or_path")),
        "generator": result_settings(generator),
        "problems": cfg.problems, "split": cfg.get("split"), "n_problems": cfg.get("n_problems"),
        "problem_seed": cfg.problem_seed, "problems_per_call": cfg.problems_per_call,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
    }, default=str))


def read_results(path: Path, retry_errors: bool) -> dict[str, dict[str, Any]]:
    """Records by problem id (``prm.io.read_resumable_jsonl``: a torn last line from a crash is cut
    off the file); with ``retry_errors`` the records of failed problems are dropped, from the file too."""
    recs = read_resumable_jsonl(path, repair=True)
    kept = [r for r in recs if not (retry_errors and r.get("error"))]
    if len(kept) < len(recs):
        write_jsonl(path, kept)
    return {r["id"]: r for r in kept}


def check_scorer_config(cfg: DictConfig) -> None:
    """Fail before any model loads when a model-backed scorer has no model to load."""
    target = str(cfg.scorer.get("_target_", ""))
    if target.endswith("PRMScorer") and cfg.scorer.get("model_or_path") is None:
        raise ValueError("this scorer needs its model: set scorer.model_or_path=<PRM directory> "
                         "(or use scorer=oracle | outcome | random | likelihood)")


def make_generator(cfg: DictConfig) -> Generator:
    if cfg.policy is None:
        raise ValueError("no policy: set policy=<model directory>")
    return instantiate(cfg.generator, model_or_path=str(cfg.policy))


def make_scorer(cfg: DictConfig, generator: Generator, world: World) -> Scorer:
    """The configured scorer; the likelihood baseline reuses the loaded policy, and a scorer that
    takes a ``world`` (oracle, outcome) gets this run's."""
    target = str(cfg.scorer.get("_target_", ""))
    kwargs: dict[str, Any] = {}
    if target.endswith("LikelihoodScorer") and cfg.scorer.get("model_or_path") is None:
        model = getattr(generator, "model", None)
        kwargs = ({"model_or_path": model, "tokenizer": generator.tokenizer}  # type: ignore[attr-defined]
                  if model is not None else {"model_or_path": str(cfg.policy)})
    if target and "world" in inspect.signature(get_class(target)).parameters:
        kwargs["world"] = world
    return instantiate(cfg.scorer, _convert_="all", **kwargs)


def problem_record(world: World, task: Task, index: int, res: SearchResult, sizes: ModelSizes,
                   wall_time_s: float) -> dict[str, Any]:
    """One problem's line of ``results.jsonl`` (see the module docstring)."""
    try:
        graded = [world.grade(task, c.text) for c in res.finished]
    except Exception as e:  # noqa: BLE001 - any failure of the grader is this problem's grading error
        raise GradingError(f"grading problem {task.id} failed: {type(e).__name__}: {e}") from e
    cands = [{**c.to_dict(), "correct": bool(ok)} for c, ok in zip(res.finished, graded)]
    chosen = {rule: {"index": i, "answer": None if i is None else cands[i]["answer"],
                     "correct": i is not None and cands[i]["correct"]} for rule, i in res.chosen.items()}
    return {
        **_head(task, index), "candidates": cands, "unfinished": [c.to_dict() for c in res.unfinished],
        "chosen": chosen, "correct": {rule: chosen[rule]["correct"] for rule in FINAL_RULES},
        "pass": any(c["correct"] for c in cands), "rounds": res.rounds, "compute": res.compute.as_dict(),
        "flops": sizes.flops(res.compute), "wall_time_s": wall_time_s, "error": None,
    }


def error_record(task: Task, index: int, error: BaseException) -> dict[str, Any]:
    return {
        **_head(task, index), "candidates": [], "unfinished": [],
        "chosen": {rule: {"index": None, "answer": None, "correct": False} for rule in FINAL_RULES},
        "correct": dict.fromkeys(FINAL_RULES, False), "pass": False, "rounds": 0,
        "compute": Compute().as_dict(), "flops": 0.0, "wall_time_s": 0.0,
        "error": f"{type(error).__name__}: {error}",
    }


def _head(task: Task, index: int) -> dict[str, Any]:
    return {"id": task.id, "index": index, "prompt": task.prompt, "answer": task.answer, "difficulty": task.difficulty}


def append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append records line by line and flush (a crash loses at most the chunk in progress)."""
    with path.open("a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()


def search_chunk(world: World, tasks: Sequence[Task], generator: Generator, scorer: Scorer, strategy: Strategy,
                 settings: SearchSettings) -> list[SearchResult]:
    """Search a chunk of problems together."""
    return search([t.prompt for t in tasks], generator, scorer, strategy, settings, world.fmt,
                  answer_of=lambda i, text: world.answer(tasks[i], text))


def summarise(tasks: Sequence[Task], records: dict[str, dict[str, Any]], strategy: Strategy) -> dict[str, Any]:
    """Accuracy per final rule by difficulty, compute totals and means, FLOPs, wall time."""
    accuracy: dict[str, dict[str, float]] = {}
    for group, idx in by_difficulty(tasks).items():
        recs = [records[tasks[i].id] for i in idx if tasks[i].id in records and not records[tasks[i].id].get("error")]
        row: dict[str, float] = {"problems": len(recs)}
        for rule in (*FINAL_RULES, "pass"):
            hits = sum(bool(r["pass"] if rule == "pass" else r["correct"][rule]) for r in recs)
            row[rule] = hits / len(recs) if recs else 0.0
        row["headline"] = row[strategy.final]
        accuracy[group] = row
    every = [records[t.id] for t in tasks if t.id in records]
    recs = [r for r in every if not r.get("error")]
    tot = total(Compute.from_dict(r["compute"]) for r in recs)
    flops = [r["flops"] for r in recs]
    flops_total = None if any(f is None for f in flops) else float(sum(flops))
    k = max(1, len(recs))
    return {
        "strategy": strategy.describe(), "final": strategy.final, "n": strategy.n,
        "problems": len(recs), "errors": len(every) - len(recs),
        "accuracy": accuracy,
        "compute": {"total": tot.as_dict(), "per_problem": {key: v / k for key, v in tot.as_dict().items()}},
        "flops": {"total": flops_total, "per_problem": None if flops_total is None else flops_total / k},
        "wall_time_s": sum(float(r.get("wall_time_s") or 0.0) for r in recs),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The headline table: accuracy per final rule by difficulty, then compute."""
    cols = [*FINAL_RULES, "pass"]
    lines = [f"{summary['strategy']['name']} n={summary['n']} (final: {summary['final']})",
             f"{'difficulty':>10} {'problems':>8} " + " ".join(f"{c:>17}" for c in cols)]
    for group, row in summary["accuracy"].items():
        lines.append(f"{group:>10} {int(row['problems']):>8} " + " ".join(f"{row[c]:>17.3f}" for c in cols))
    c, f = summary["compute"]["per_problem"], summary["flops"]["per_problem"]
    lines.append(f"per problem: {c['generated_tokens']:.0f} generated ({c['rollout_tokens']:.0f} rollout), "
                 f"{c['prompt_tokens']:.0f} prompt, {c['prm_tokens']:.0f} PRM tokens"
                 + (f", {f:.3g} FLOPs" if f is not None else "") + f"; errors {summary['errors']}")
    return "\n".join(lines)


def log_summary(cfg: DictConfig, summary: dict[str, Any], run_dir: Path) -> None:
    """With ``logger=wandb`` (offline by default): the headline numbers as one logged row."""
    if cfg.logger.get("name", "none") != "wandb":
        return
    import wandb  # lazily: only runs that ask for it pay the import

    run = wandb.init(project=cfg.logger.get("project", "prm-lab"), entity=cfg.logger.get("entity"),
                     mode=cfg.logger.get("mode", "offline"), tags=list(cfg.logger.get("tags") or []),
                     dir=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    row = {f"accuracy/{g}/{rule}": v for g, r in summary["accuracy"].items() for rule, v in r.items()}
    row.update({f"compute/{k}": v for k, v in summary["compute"]["total"].items()})
    if summary["flops"]["total"] is not None:
        row["compute/flops"] = summary["flops"]["total"]
    run.log(row)
    run.finish()


def run(cfg: DictConfig, generator: Generator | None = None, scorer: Scorer | None = None) -> dict[str, Any]:
    """Search every problem not yet in ``run_dir/results.jsonl``, then summarise; returns the summary."""
    world, draw = world_and_tasks(cfg)
    tasks = draw.tasks
    if not tasks:
        raise ValueError("no problems to search")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"problem ids must be unique (repeated: {dup}); results are resumed by id")
    strategy, _ = build_search(cfg.search)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_identity(run_dir, identity(cfg), "search results")
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    results_path = run_dir / RESULTS
    records = read_results(results_path, cfg.retry_errors)
    todo = [t for t in tasks if t.id not in records]
    if records:
        print(f"[search] resuming: {len(tasks) - len(todo)} problems done, {len(todo)} to go")

    start = time.perf_counter()
    sizes = ModelSizes()
    if todo:
        if scorer is None:
            check_scorer_config(cfg)
        generator = generator or make_generator(cfg)
        scorer = scorer or make_scorer(cfg, generator, world)
        acc = cfg.get("accounting") or {}
        sizes = model_sizes(generator, scorer, acc.get("policy_params"), acc.get("prm_params"))
        chunk = cfg.problems_per_call
        with tqdm(total=len(todo), desc=f"search ({strategy.name})", unit="problem", disable=not cfg.progress) as bar:
            for c in range(0, len(tasks), chunk):
                part = tasks[c : c + chunk]
                if all(t.id in records for t in part):
                    continue
                new = _search_part(world, part, c, cfg.seed, generator, scorer, cfg.search, sizes)
                new = [rec for rec in new if rec["id"] not in records]
                append_records(results_path, new)
                records.update((rec["id"], rec) for rec in new)
                bar.update(len(new))

    summary = summarise(tasks, records, strategy)
    summary.update({"policy": str(cfg.policy), "scorer": str(cfg.scorer.get("_target_")),
                    "removed_overlap": draw.removed_overlap, "removed_duplicates": draw.removed_duplicates,
                    "params": sizes.as_dict() if todo else _previous_params(run_dir),
                    "this_run": {"problems": len(todo), "wall_time_s": time.perf_counter() - start}})
    write_json(run_dir / SUMMARY, summary)
    print(format_summary(summary))
    print(f"[search] {results_path}; summary in {run_dir / SUMMARY}")
    log_summary(cfg, summary, run_dir)
    return summary


def _search_part(world: World, part: Sequence[Task], first: int, seed: int, generator: Generator, scorer: Scorer,
                 search_cfg: Any, sizes: ModelSizes) -> list[dict[str, Any]]:
    """Records of a chunk; after a ``ProblemFailure``, each problem alone, one that still fails as an
    error record. Other exceptions propagate."""
    strategy, settings = build_search(search_cfg, derive_seed(seed, "chunk", first))
    t0 = time.perf_counter()
    try:
        results = search_chunk(world, part, generator, scorer, strategy, settings)
        share = (time.perf_counter() - t0) / len(part)
        return [problem_record(world, t, first + i, r, sizes, share) for i, (t, r) in enumerate(zip(part, results))]
    except ProblemFailure as e:
        if len(part) > 1:
            return [rec for i, t in enumerate(part)
                    for rec in _search_part(world, [t], first + i, seed, generator, scorer, search_cfg, sizes)]
        tqdm.write(f"[search] problem {part[0].id} failed: {e}")
        return [error_record(part[0], first, e)]


def _previous_params(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("params")
    except (OSError, ValueError):
        return None


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="search")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
