"""``prm-sweep``: compute against accuracy, strategies x budgets x seeds, each cell one ``prm-search`` run.

Reads top to bottom (``run``):

1. the grid (``plan_cells``): every strategy of ``sweep.strategies`` (a label -> a search preset of
   ``conf/search/`` plus knobs; ``sweep.only`` picks some), every budget N (``sweep.budgets``, or the
   powers of two from ``min_n`` to ``max_n``) and every seed. A budget a strategy cannot take (beam
   search, lookahead and DVTS keep N/M beams: N must be divisible by M) is skipped or has its M
   clamped to the largest divisor of N not above it (``sweep.invalid: skip | clamp``); either way the
   row of that cell in ``sweep.csv`` says so (``status``/``note``). Every other bad knob fails here,
   before any model loads, as does a cell directory holding results of a different run;
2. the cells (``run_cells``): each is ``run_dir/cells/<strategy>-N<n>-s<seed>/``, written by
   ``search.run.run`` in-process with one policy and one scorer loaded once for the whole sweep. A
   finished cell (its ``summary.json`` covers every problem, with no failed problem left to retry,
   and its ``identity.json`` matches the cell's config) is skipped; an interrupted one resumes where
   its ``results.jsonl`` stops (``prm-search`` resumes within a cell);
3. ``sweep.csv`` (one row per cell, ``cell_row``; written atomically): accuracy of every final rule
   (``acc_<rule>``, ``acc_headline`` = the strategy's own final rule) overall and by difficulty
   (``acc_<rule>_d<difficulty>``), compute totals and per problem (generated, rollout, prompt and PRM
   tokens, samples, FLOPs; per difficulty too), wall time; skipped cells have a row with a note;
4. the compute-optimal curve (``search.compute_optimal``): ``compute_optimal.csv`` and in
   ``summary.json``; plots (``search.sweep_plots``): accuracy against N, generated tokens and FLOPs
   per problem, overall and per difficulty, with the compute-optimal line; with ``logger=wandb``
   (offline by default) the same to W&B: the tables, a line plot per x axis (one line per strategy)
   and the PNGs.

``sweep.mode: collect`` runs nothing: it gathers every cell directory under ``run_dir/cells/`` (for
example written by a ``prm-search`` Hydra multirun on a cluster, see ``conf/sweep.yaml``) and does
steps 3-4.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from prm.io import atomic_write_text, read_resumable_jsonl, write_json
from prm.runs import IDENTITY
from prm.scoring.base import Scorer
from search.compute_optimal import ProblemOutcome, compute_optimal, difficulty_bins, format_optimal, mean_over_seeds
from search.generation.base import Generator
from search.loop import FINAL_RULES
from search.run import (
    CONF_DIR, RESULTS, SUMMARY, build_search, check_scorer_config, identity, make_generator, make_scorer,
)
from search.run import run as search_run
from prm.worlds import world_and_tasks
from search.sweep_plots import groups_of, plot_sweep, series

CELLS, SWEEP_CSV, OPTIMAL_CSV = "cells", "sweep.csv", "compute_optimal.csv"
RULES: tuple[str, ...] = ("headline", *FINAL_RULES, "pass")
COMPUTE_KEYS = ("generated_tokens", "rollout_tokens", "prompt_tokens", "prm_tokens", "samples")
CELL_NAME = re.compile(r"^(?P<strategy>.+)-N(?P<n>\d+)-s(?P<seed>\d+)$")
LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")
TEXT_COLUMNS = frozenset({"cell", "strategy", "search", "status", "note", "final", "bin", "fold", "fallback"})


# ----------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Cell:
    """One run of the grid: a strategy label, a budget, a seed, its search config, whether it is skipped."""

    strategy: str
    n: int
    seed: int
    search: dict[str, Any] = field(default_factory=dict, compare=False)
    note: str = ""
    skipped: bool = False
    dirname: str | None = None  # a collected cell whose directory is not named as the grid names it

    @property
    def name(self) -> str:
        return self.dirname or f"{self.strategy}-N{self.n}-s{self.seed}"


def load_preset(name: str) -> dict[str, Any]:
    """A search preset, ``conf/search/<name>.yaml``, as a plain dict."""
    path = Path(CONF_DIR) / "search" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"unknown search preset {name!r} (known: {', '.join(known)})")
    return dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True))  # type: ignore[arg-type]


def strategy_nodes(sweep: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each strategy's search config: its preset (default: the label), then ``sweep.common`` (its non-null
    values), then its own knobs."""
    specs = dict(sweep.get("strategies") or {})
    only = list(sweep.get("only") or [])
    unknown = sorted(set(only) - set(specs))
    if unknown:
        raise ValueError(f"sweep.only names unknown strategies {unknown} (known: {', '.join(specs)})")
    common = {k: v for k, v in (sweep.get("common") or {}).items() if v is not None}
    nodes = {}
    for label, spec in specs.items():
        if only and label not in only:
            continue
        if not LABEL.match(str(label)):
            raise ValueError(f"strategy label {label!r}: use letters, digits and _ . + - only (it names directories)")
        spec = dict(spec or {})
        preset = spec.pop("preset", label)
        nodes[str(label)] = {**(load_preset(preset) if preset else {}), **common, **spec}
    if not nodes:
        raise ValueError("no strategies to sweep (sweep.strategies / sweep.only)")
    return nodes


def budgets(sweep: Mapping[str, Any]) -> list[int]:
    """``sweep.budgets``, or the powers of two from ``min_n`` to ``max_n``."""
    ns = sweep.get("budgets")
    if ns is None:
        lo, hi = int(sweep.get("min_n", 1)), int(sweep["max_n"])
        if lo < 1 or lo & (lo - 1) or hi < lo:
            raise ValueError(f"min_n must be a power of two and 1 <= min_n <= max_n (got {lo}, {hi})")
        ns = [1 << k for k in range(lo.bit_length() - 1, hi.bit_length()) if lo <= 1 << k <= hi]
    ns = [int(n) for n in ns]
    if not ns or any(n < 1 for n in ns) or len(set(ns)) != len(ns):
        raise ValueError(f"budgets must be distinct positive integers (got {ns})")
    return sorted(ns)


def fit_budget(node: Mapping[str, Any], n: int, invalid: str) -> tuple[dict[str, Any], str, bool]:
    """The search config of ``node`` at budget ``n``, a note, and whether the cell is skipped.

    A strategy node may cap its budgets with ``max_n`` (larger ones are skipped).
    Strategies with a beam width ``m`` need ``n % m == 0``: ``invalid="skip"`` skips the cell,
    ``"clamp"`` lowers ``m`` to the largest divisor of ``n`` not above it. Anything else the strategy
    rejects raises.
    """
    if invalid not in ("skip", "clamp"):
        raise ValueError(f"sweep.invalid must be skip or clamp (got {invalid!r})")
    node = dict(node)
    cap = node.pop("max_n", None)  # a strategy too costly at large budgets stops at its own max_n
    if cap is not None and n > int(cap):
        return {**node, "n": n}, f"skipped: n={n} > this strategy's max_n={cap}", True
    out, note = {**node, "n": n}, ""
    m = out.get("m")
    if isinstance(m, int) and m >= 1 and n % m:
        if invalid == "skip":
            return out, f"skipped: n={n} {'< m' if n < m else 'not divisible by m'}={m}", True
        out["m"] = max(d for d in range(1, m + 1) if n % d == 0)
        note = f"m clamped {m}->{out['m']}"
    build_search(out)  # any other bad knob fails now, before a model loads
    return out, note, False


def plan_cells(sweep: Mapping[str, Any]) -> list[Cell]:
    """The grid in order: strategies (config order), budgets, seeds."""
    seeds = [int(s) for s in sweep.get("seeds") or [0]]
    cells = []
    for label, node in strategy_nodes(sweep).items():
        for n in budgets(sweep):
            search, note, skipped = fit_budget(node, n, str(sweep.get("invalid", "skip")))
            cells += [Cell(label, n, s, search, note, skipped) for s in seeds]
    return cells


# ---------------------------------------------------------------------------------------- the cells
def cell_config(cfg: DictConfig, cell: Cell, run_dir: Path) -> DictConfig:
    """A ``prm-search`` config: the sweep's, with the cell's search, seed and directory, and no logger."""
    if cell.skipped:
        raise ValueError(f"cell {cell.name} is skipped ({cell.note})")
    base = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(base, dict)
    base.pop("sweep", None)
    base.update(search=dict(cell.search), seed=cell.seed, run_dir=str(run_dir / CELLS / cell.name),
                logger={"name": "none"})
    return OmegaConf.create(base)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cell_status(cell_cfg: DictConfig, n_problems: int) -> str:
    """``done`` (every problem in its summary, same identity), ``incomplete`` or ``other`` (a different run)."""
    cell_dir = Path(cell_cfg.run_dir)
    ident = _read_json(cell_dir / IDENTITY)
    if ident is not None and ident != identity(cell_cfg):
        return "other"
    summary = _read_json(cell_dir / SUMMARY)
    done = (ident is not None and summary is not None
            and summary.get("problems", 0) + summary.get("errors", 0) == n_problems)
    return "done" if done else "incomplete"


def cell_finished(cell_cfg: DictConfig, n_problems: int) -> bool:
    """Nothing left to do: done, and no failed problem a re-run would retry."""
    if cell_status(cell_cfg, n_problems) != "done":
        return False
    return not (cell_cfg.retry_errors and _read_json(Path(cell_cfg.run_dir) / SUMMARY).get("errors"))


def run_cells(cfg: DictConfig, cells: Sequence[Cell], generator: Generator | None = None,
              scorer: Scorer | None = None) -> list[str]:
    """Run every unfinished cell (loading the policy and the scorer once, when the first one needs them);
    returns the names of the cells this call ran."""
    run_dir = Path(cfg.run_dir)
    world, draw = world_and_tasks(cfg)
    tasks = draw.tasks
    configs = {c.name: cell_config(cfg, c, run_dir) for c in cells if not c.skipped}
    other = [name for name, cc in configs.items() if cell_status(cc, len(tasks)) == "other"]
    if other:
        raise ValueError(f"{run_dir / CELLS} holds results of a different run in {', '.join(other)} (the policy, "
                         f"scorer, problems or search changed); use another run_dir or delete those cells")
    todo = [name for name, cc in configs.items() if not cell_finished(cc, len(tasks))]
    print(f"[sweep] {len(cells)} cells: {len(configs) - len(todo)} done, {len(todo)} to run, "
          f"{len(cells) - len(configs)} skipped")
    for name in tqdm(todo, desc="sweep", unit="cell", disable=not cfg.progress):
        cc = configs[name]
        if generator is None:
            generator = make_generator(cc)
        if scorer is None:
            check_scorer_config(cc)
            scorer = make_scorer(cc, generator, world)
        tqdm.write(f"[sweep] cell {name}")
        search_run(cc, generator, scorer)
    return todo


# ------------------------------------------------------------------------------------ reading cells
@dataclass
class CellData:
    """What a finished cell's directory holds, reduced to what the sweep reports."""

    summary: dict[str, Any]
    config: dict[str, Any]
    outcomes: dict[str, ProblemOutcome]  # graded by the strategy's own final rule
    compute_by_group: dict[str, dict[str, float | None]]  # difficulty -> per-problem generated tokens, FLOPs


def read_cell(cell_dir: Path) -> CellData | None:
    """The cell's summary, config and per-problem outcomes; None while it has no summary."""
    summary = _read_json(cell_dir / SUMMARY)
    if summary is None:
        return None
    config_path = cell_dir / "config.yaml"
    config = (OmegaConf.to_container(OmegaConf.load(config_path), resolve=False) if config_path.exists() else {})
    rule = summary.get("final", "prm")
    outcomes: dict[str, ProblemOutcome] = {}
    groups: dict[str, list[ProblemOutcome]] = {}
    for rec in read_resumable_jsonl(cell_dir / RESULTS):
        if rec.get("error"):  # a failed problem takes no part in accuracy or compute
            continue
        o = ProblemOutcome.from_record(rec, rule)
        outcomes[o.id] = o
        groups.setdefault(str(o.difficulty), []).append(o)
    compute = {g: _per_problem(os) for g, os in groups.items()}
    return CellData(summary, config, outcomes, compute)  # type: ignore[arg-type]


def _per_problem(outcomes: Sequence[ProblemOutcome]) -> dict[str, float | None]:
    k = max(1, len(outcomes))
    flops = [o.flops for o in outcomes]
    return {"generated_tokens": sum(o.generated_tokens for o in outcomes) / k,
            "flops": None if any(f is None for f in flops) else sum(flops) / k}  # type: ignore[arg-type]


def discover_cells(run_dir: Path) -> list[Cell]:
    """Every cell directory under ``run_dir/cells`` (named ``<strategy>-N<n>-s<seed>``, else by its config)."""
    cells = []
    for d in sorted(p for p in (run_dir / CELLS).glob("*") if p.is_dir()):
        m = CELL_NAME.match(d.name)
        if m:
            cells.append(Cell(m["strategy"], int(m["n"]), int(m["seed"]), {}))
            continue
        summary = _read_json(d / SUMMARY) or {}
        conf = OmegaConf.load(d / "config.yaml") if (d / "config.yaml").exists() else OmegaConf.create()
        cells.append(Cell(d.name, int(summary.get("n") or 0), int(conf.get("seed", 0)), {}, dirname=d.name))
    return cells


def cell_row(cell: Cell, status: str, data: CellData | None) -> dict[str, Any]:
    """One row of ``sweep.csv`` (see the module docstring)."""
    search = data.config.get("search", {}) if data else cell.search
    row: dict[str, Any] = {
        "cell": cell.name, "strategy": cell.strategy, "n": cell.n,
        "seed": cell.seed, "search": search.get("name", ""), "m": search.get("m"), "status": status,
        "note": cell.note,
    }
    if data is None:
        return row
    s = data.summary
    acc = s["accuracy"]
    row.update({"final": s["final"], "problems": s["problems"], "errors": s["errors"]})
    row.update({f"acc_{rule}": acc["all"][rule] for rule in RULES})
    groups = [g for g in acc if g != "all"]
    for g in groups:
        row[f"problems_d{g}"] = acc[g]["problems"]
        row.update({f"acc_{rule}_d{g}": acc[g][rule] for rule in RULES})
    tot, per = s["compute"]["total"], s["compute"]["per_problem"]
    row.update({k: tot[k] for k in COMPUTE_KEYS})
    row.update({f"{k}_per_problem": per[k] for k in ("generated_tokens", "prompt_tokens", "prm_tokens")})
    row.update({"flops": s["flops"]["total"], "flops_per_problem": s["flops"]["per_problem"]})
    for g in groups:
        c = data.compute_by_group.get(g, {})
        row[f"generated_tokens_per_problem_d{g}"] = c.get("generated_tokens")
        row[f"flops_per_problem_d{g}"] = c.get("flops")
    row["wall_time_s"] = s["wall_time_s"]
    return row


# ------------------------------------------------------------------------------------------ tables
def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every column of ``rows`` in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r))


def sweep_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of ``sweep.csv``: the cell, overall accuracy, accuracy by difficulty, compute, wall time."""
    groups = groups_of(rows)
    cols = ["cell", "strategy", "n", "seed", "search", "m", "status", "note", "final", "problems", "errors",
            *(f"acc_{rule}" for rule in RULES)]
    for g in groups:
        cols += [f"problems_d{g}", *(f"acc_{rule}_d{g}" for rule in RULES)]
    cols += [*COMPUTE_KEYS, *(f"{k}_per_problem" for k in ("generated_tokens", "prompt_tokens", "prm_tokens")),
             "flops", "flops_per_problem"]
    for g in groups:
        cols += [f"generated_tokens_per_problem_d{g}", f"flops_per_problem_d{g}"]
    return [*cols, "wall_time_s"]


def write_table(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV, atomically; None and NaN as empty cells, floats exactly (``repr``)."""
    columns = list(columns or table_columns(rows))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell_text(r.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def _cell_text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(v) if isinstance(v, float) else str(v)


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """A CSV written by ``write_table``: text columns as str, empty cells as None, the rest as numbers."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        return [{k: _parse(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def _parse(key: str, v: str) -> Any:
    if key in TEXT_COLUMNS:
        return v
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The console table: one line per cell."""
    lines = [f"{'strategy':>18} {'N':>5} {'seed':>4} {'status':>10} {'accuracy':>8} {'gen tok/pb':>10} "
             f"{'FLOPs/pb':>9}  note"]
    for r in rows:
        acc, gen, fl = r.get("acc_headline"), r.get("generated_tokens_per_problem"), r.get("flops_per_problem")
        lines.append(f"{r['strategy']:>18} {r['n']:>5} {r['seed']:>4} {r['status']:>10} "
                     f"{'' if acc is None else f'{acc:.3f}':>8} {'' if gen is None else f'{gen:.1f}':>10} "
                     f"{'' if fl is None else f'{fl:.3g}':>9}  {r.get('note') or ''}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- compute-optimal
def optimal_from_cells(cells: Sequence[tuple[Cell, CellData]], method: str = "field", bins: int = 5,
                       seed: int = 0, cross_fit: bool = True) -> dict[str, Any] | None:
    """The compute-optimal table and curve from finished cells (see ``search.compute_optimal``)."""
    if not cells:
        return None
    runs: dict[tuple[str, int], list[dict[str, ProblemOutcome]]] = {}
    for cell, data in cells:
        runs.setdefault((cell.strategy, cell.n), []).append(data.outcomes)
    results = {key: mean_over_seeds(rs) for key, rs in runs.items()}
    sampled = [d for _, d in cells if d.summary.get("strategy", {}).get("name") == "best_of_n"]
    source = [o for d in (sampled or [d for _, d in cells]) for o in d.outcomes.values()]
    problem_bins = difficulty_bins(source, method, bins)
    out = compute_optimal(results, problem_bins, seed=seed, cross_fit=cross_fit,
                          order=list(dict.fromkeys(c.strategy for c, _ in cells)))
    sizes: dict[str, int] = {}
    for b in problem_bins.values():
        sizes[b] = sizes.get(b, 0) + 1
    return {"difficulty": method, "bins": dict(sorted(sizes.items())), "split_seed": seed, "cross_fit": cross_fit,
            **out}


def plot_curve(optimal: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The compute-optimal curve rows to draw: every bin when the bins are the difficulty field's (the plots'
    panels), else only the overall ones."""
    if not optimal:
        return []
    return [r for r in optimal["curve"] if optimal["difficulty"] == "field" or r["bin"] == "all"]


def load_sweep(run_dir: str | Path) -> dict[str, Any]:
    """What a finished sweep directory reports: ``rows`` (``sweep.csv``), ``optimal`` (the compute-optimal
    table and curve from ``summary.json``, None without one) and ``curve`` (``plot_curve``)."""
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / SUMMARY) or {}
    optimal = summary.get("compute_optimal")
    return {"rows": read_table(run_dir / SWEEP_CSV), "optimal": optimal, "curve": plot_curve(optimal)}


# ------------------------------------------------------------------------------------------ W&B
def log_wandb(cfg: DictConfig, rows: Sequence[Mapping[str, Any]], optimal: Mapping[str, Any] | None,
              plots: Sequence[Path], run_dir: Path) -> None:
    """With ``logger=wandb`` (offline by default): the sweep and compute-optimal tables, one line plot per
    x axis with a line per strategy (and the compute-optimal one), and the PNGs."""
    logger = cfg.logger
    if logger.get("name", "none") != "wandb":
        return
    import wandb  # lazily: only runs that ask for it pay the import

    run = wandb.init(project=logger.get("project", "prm-lab"), entity=logger.get("entity"),
                     mode=logger.get("mode", "offline"), tags=list(logger.get("tags") or []), dir=str(run_dir),
                     job_type="sweep", config=OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    tables = {"sweep/cells": rows}
    if optimal:
        tables["sweep/compute_optimal"] = [*optimal["table"], *optimal["curve"]]
    for key, table_rows in tables.items():
        cols = table_columns(table_rows)
        run.log({key: wandb.Table(columns=cols, data=[[_wandb_value(r.get(c)) for c in cols] for r in table_rows])})
    curve = [r for r in (optimal or {}).get("curve", []) if r["bin"] == "all"]
    for x, xname in (("n", "N"), ("generated_tokens", "generated tokens per problem"),
                     ("flops", "FLOPs per problem")):
        lines = {s: (v["x"], v["mean"]) for s, v in series(rows, x).items()}
        opt = [(r["n"] if x == "n" else r[f"{x}_per_problem"], r["eval_accuracy"]) for r in curve]
        opt = [(a, b) for a, b in opt if a is not None and b is not None]
        if opt:
            lines["compute-optimal"] = ([a for a, _ in opt], [b for _, b in opt])
        if lines:
            run.log({f"sweep/accuracy_vs_{x}": wandb.plot.line_series(
                xs=[v[0] for v in lines.values()], ys=[v[1] for v in lines.values()], keys=list(lines),
                title=f"accuracy vs {xname}", xname=xname)})
    for p in plots:
        run.log({f"sweep/plots/{p.stem}": wandb.Image(str(p))})
    run.finish()


def _wandb_value(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


# ------------------------------------------------------------------------------------------ run
def run(cfg: DictConfig, generator: Generator | None = None, scorer: Scorer | None = None) -> dict[str, Any]:
    """Run (or collect) the sweep, then write ``sweep.csv``, the compute-optimal table, plots and
    ``summary.json``; returns the summary."""
    sweep = OmegaConf.to_container(cfg.sweep, resolve=True)
    assert isinstance(sweep, dict)
    run_dir = Path(cfg.run_dir)
    mode = sweep.get("mode", "run")
    if mode == "run":
        cells = plan_cells(sweep)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        ran = run_cells(cfg, cells, generator, scorer)
        n_problems = len(world_and_tasks(cfg, log=lambda *a: None)[1].tasks)
        statuses = {c.name: "skipped" if c.skipped else cell_status(cell_config(cfg, c, run_dir), n_problems)
                    for c in cells}
    elif mode == "collect":
        cells, ran = discover_cells(run_dir), []
        statuses = {c.name: "done" if (run_dir / CELLS / c.name / SUMMARY).exists() else "incomplete"
                    for c in cells}
        if not cells:
            raise ValueError(f"no cells to collect under {run_dir / CELLS}")
    else:
        raise ValueError(f"sweep.mode must be run or collect (got {mode!r})")

    finished: list[tuple[Cell, CellData]] = []
    rows = []
    for c in cells:
        data = read_cell(run_dir / CELLS / c.name) if statuses[c.name] == "done" else None
        if data is not None:
            finished.append((c, data))
        rows.append(cell_row(c, statuses[c.name], data))
    write_table(run_dir / SWEEP_CSV, rows, sweep_columns(rows))
    print(format_table(rows))

    co = sweep.get("compute_optimal") or {}
    optimal = optimal_from_cells(finished, str(co.get("difficulty", "field")), int(co.get("bins", 5)),
                                 int(co.get("split_seed", 0)), bool(co.get("cross_fit", True)))
    if optimal:
        write_table(run_dir / OPTIMAL_CSV, [*optimal["table"], *optimal["curve"]])
        print(f"[sweep] compute-optimal (difficulty: {optimal['difficulty']}):")
        print(format_optimal(optimal["curve"]))
    plots: list[Path] = []
    if sweep.get("plots", True) and finished:
        plots = plot_sweep(rows, run_dir, optimal=plot_curve(optimal),
                           optimal_label=f"compute-optimal ({optimal['difficulty'] if optimal else ''})")
    summary = {
        "mode": mode, "cells": {s: sum(v == s for v in statuses.values()) for s in dict.fromkeys(statuses.values())},
        "ran": ran, "grid": [{"cell": c.name, "status": statuses[c.name], "note": c.note} for c in cells],
        "csv": str(run_dir / SWEEP_CSV), "plots": [str(p) for p in plots],
        "compute_optimal": optimal,
    }
    write_json(run_dir / SUMMARY, summary)
    print(f"[sweep] {run_dir / SWEEP_CSV}; plots: {', '.join(p.name for p in plots) or 'none'}")
    log_wandb(cfg, rows, optimal, plots, run_dir)
    return summary


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="sweep")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
