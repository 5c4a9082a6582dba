"""prm-sweep: the grid, resumable cells, sweep.csv and plots, the compute-optimal choice, the launcher config,
the analysis notebook."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import search.sweep as sweep_mod
from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from search.compute_optimal import (
    ProblemOutcome, compute_optimal, difficulty_bins, mean_over_seeds, quantile_bins, split_halves,
)
from search.run import make_generator
from search.sweep import Cell, budgets, fit_budget, plan_cells, read_table, run

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
NOTEBOOK = REPO / "notebooks" / "sweep_analysis.ipynb"
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


class Killed(BaseException):
    """A kill of the whole process (not an ``Exception``: prm-search must not record it as a failed problem)."""


class Wrapped:
    """A generator that counts its calls and can be killed on the k-th one, or on the first one after
    ``kill_when()`` holds; everything else is the real one's."""

    def __init__(self, inner: Any, kill_at: int | None = None, kill_when: Callable[[], bool] | None = None) -> None:
        self.inner, self.kill_at, self.kill_when, self.calls = inner, kill_at, kill_when, 0

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.kill_at or (self.kill_when is not None and self.kill_when()):
            raise Killed(f"killed at generate call {self.calls}")
        return self.inner.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ------------------------------------------------------------------------------------------ the grid
def _sweep(**kw: Any) -> dict[str, Any]:
    base = {"strategies": {"best_of_n": {}, "beam": {"m": 4}, "dvts": {"m": 2}}, "max_n": 8, "invalid": "skip"}
    return {**base, **kw}


def test_budgets_are_powers_of_two_or_explicit() -> None:
    assert budgets({"max_n": 256}) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert budgets({"min_n": 4, "max_n": 20}) == [4, 8, 16]
    assert budgets({"budgets": [16, 3, 1]}) == [1, 3, 16]
    for bad in ({"min_n": 3, "max_n": 8}, {"budgets": [0, 2]}, {"budgets": [2, 2]}):
        with pytest.raises(ValueError):
            budgets(bad)


def test_plan_skips_or_clamps_budgets_a_strategy_cannot_take_and_says_so() -> None:
    cells = plan_cells(_sweep(seeds=[0, 1]))
    assert [c.name for c in cells[:4]] == ["best_of_n-N1-s0", "best_of_n-N1-s1", "best_of_n-N2-s0", "best_of_n-N2-s1"]
    beam = {c.n: c for c in cells if c.strategy == "beam" and c.seed == 0}
    assert [n for n, c in beam.items() if c.skipped] == [1, 2]
    assert beam[1].note == "skipped: n=1 < m=4" and beam[2].note == "skipped: n=2 < m=4"
    assert not beam[4].skipped and beam[8].search["m"] == 4 and beam[8].note == ""
    assert beam[8].search["name"] == "beam" and beam[8].search["n"] == 8  # the preset, at the cell's budget
    dvts = {c.n: c for c in cells if c.strategy == "dvts" and c.seed == 0}
    assert [n for n, c in dvts.items() if c.skipped] == [1]

    clamped = {c.n: c for c in plan_cells(_sweep(invalid="clamp")) if c.strategy == "beam"}
    assert not any(c.skipped for c in clamped.values())
    assert {n: c.search["m"] for n, c in clamped.items()} == {1: 1, 2: 2, 4: 4, 8: 4}
    assert clamped[2].note == "m clamped 4->2" and clamped[4].note == ""
    node = {"name": "beam", "m": 4}
    assert fit_budget(node, 6, "skip")[1:] == ("skipped: n=6 not divisible by m=4", True)
    assert fit_budget(node, 6, "clamp")[0]["m"] == 3  # the largest divisor of 6 not above 4


def test_plan_options_and_bad_grids_fail_before_any_model_loads() -> None:
    only = plan_cells(_sweep(only=["beam"], common={"max_rounds": 7, "temperature": None}, budgets=[4]))
    assert [(c.name, c.search["max_rounds"]) for c in only] == [("beam-N4-s0", 7)]
    labelled = plan_cells({"strategies": {"maj": {"preset": "majority"}}, "budgets": [2]})
    assert labelled[0].name == "maj-N2-s0" and labelled[0].search["final"] == "majority"
    with pytest.raises(ValueError, match="unknown strategies"):
        plan_cells(_sweep(only=["nope"]))
    with pytest.raises(ValueError, match="unknown search preset 'nope'"):
        plan_cells({"strategies": {"x": {"preset": "nope"}}, "max_n": 2})
    with pytest.raises(ValueError, match="has no knob"):
        plan_cells({"strategies": {"best_of_n": {"m": 2}}, "max_n": 2})
    with pytest.raises(ValueError, match="skip or clamp"):
        plan_cells(_sweep(invalid="round"))
    with pytest.raises(ValueError, match="letters, digits"):
        plan_cells({"strategies": {"a/b": {"preset": "beam"}}, "max_n": 4})


# --------------------------------------------------------------------------------- compute-optimal
def _o(pid: str, correct: float, difficulty: int | None = None, tokens: float = 10.0, **kw: Any) -> ProblemOutcome:
    return ProblemOutcome(pid, correct, generated_tokens=tokens, flops=2 * tokens, difficulty=difficulty, **kw)


def test_compute_optimal_picks_per_bin_the_strategy_best_on_the_select_half() -> None:
    easy, hard = [f"e{i}" for i in range(8)], [f"h{i}" for i in range(8)]
    bins = {**dict.fromkeys(easy, "1"), **dict.fromkeys(hard, "2")}
    ea, eb = split_halves(easy, seed=3)
    ha, hb = split_halves(hard, seed=3)
    assert sorted(ea + eb) == sorted(easy) and len(ea) == len(eb) == 4 and not set(ea) & set(eb)
    assert split_halves(reversed(easy), seed=3) == (ea, eb) and split_halves(easy, seed=4) != (ea, eb)
    # N=4: bon is right on the easy problems, beam on the hard ones (beam costs 3x the tokens)
    # N=8: on the easy bin, bon is right only on half a, beam only on half b: the choice made on one half
    #      is wrong on the other (no peeking), whatever the fold
    results = {
        ("bon", 4): {**{i: _o(i, 1.0) for i in easy}, **{i: _o(i, 0.0) for i in hard}},
        ("beam", 4): {**{i: _o(i, 0.0, tokens=30) for i in easy}, **{i: _o(i, 1.0, tokens=30) for i in hard}},
        ("bon", 8): {**{i: _o(i, float(i in ea)) for i in easy}, **{i: _o(i, 0.0) for i in hard}},
        ("beam", 8): {**{i: _o(i, float(i in eb)) for i in easy}, **{i: _o(i, 0.0) for i in hard}},
    }
    out = compute_optimal(results, bins, seed=3, cross_fit=True, order=["bon", "beam"])
    table = {(r["n"], r["bin"], r["fold"]): r for r in out["table"]}
    assert {k: r["strategy"] for k, r in table.items()} == {
        (4, "1", "a"): "bon", (4, "1", "b"): "bon", (4, "2", "a"): "beam", (4, "2", "b"): "beam",
        (8, "1", "a"): "bon", (8, "1", "b"): "beam",
        (8, "2", "a"): "bon", (8, "2", "b"): "bon",  # a tie (all wrong): the first strategy in order
    }
    r = table[(4, "2", "a")]
    assert (r["select_problems"], r["select_accuracy"], r["eval_problems"], r["eval_accuracy"]) == (4, 1.0, 4, 1.0)
    assert (r["eval_accuracy_bon"], r["eval_accuracy_beam"]) == (0.0, 1.0)
    assert table[(8, "1", "a")]["select_accuracy"] == 1.0 and table[(8, "1", "a")]["eval_accuracy"] == 0.0
    curve = {(r["n"], r["bin"]): r for r in out["curve"]}
    assert curve[(4, "all")]["eval_accuracy"] == 1.0 and curve[(4, "all")]["eval_problems"] == 16
    assert curve[(4, "all")]["generated_tokens_per_problem"] == 20.0  # half at 10 tokens, half at 30
    assert curve[(4, "all")]["flops_per_problem"] == 40.0
    assert curve[(4, "1")]["strategy"] == "bon|bon" and curve[(4, "2")]["strategy"] == "beam|beam"
    assert curve[(8, "1")]["eval_accuracy"] == 0.0 and curve[(8, "all")]["eval_accuracy"] == 0.0

    one_fold = compute_optimal(results, bins, seed=3, cross_fit=False)
    assert {r["fold"] for r in one_fold["table"]} == {"a"}
    assert {(r["n"], r["bin"]): r["eval_problems"] for r in one_fold["curve"]}[(4, "all")] == 8


def test_compute_optimal_only_compares_strategies_that_ran_and_falls_back_for_a_tiny_bin() -> None:
    bins = {"p0": "1", "p1": "1", "p2": "1", "p3": "2"}
    results = {
        ("bon", 2): {p: _o(p, 1.0 if p in ("p0", "p1", "p2") else 0.0) for p in bins},
        ("bon", 4): {p: _o(p, 0.0) for p in bins},
        ("beam", 4): {p: _o(p, 1.0) for p in bins},  # beam has no N=2 cell (skipped)
    }
    out = compute_optimal(results, bins, seed=0)
    by = {(r["n"], r["bin"], r["fold"]): r for r in out["table"]}
    assert {r["strategy"] for r in out["table"] if r["n"] == 2} == {"bon"}
    assert "eval_accuracy_beam" not in by[(2, "1", "a")]
    tiny = [by[(4, "2", f)] for f in ("a", "b")]  # one problem: one fold selects on nothing
    assert sorted(r["fallback"] for r in tiny) == [False, True]
    assert all(r["strategy"] == "beam" for r in tiny)
    assert [r["eval_accuracy"] for r in tiny if r["eval_problems"] == 0] == [None]
    lone = compute_optimal({("bon", 1): {"p": _o("p", 0.0)}, ("beam", 1): {"p": _o("p", 1.0)}}, {"p": "1"})
    assert [(r["fold"], r["strategy"], r["fallback"]) for r in lone["table"]] == [  # fold b selects on nothing
        ("a", "beam", False), ("b", "bon", True)]
    assert lone["curve"][-1]["eval_accuracy"] == 0.0 and lone["curve"][-1]["eval_problems"] == 1


def test_difficulty_bins_from_the_field_the_pass_rate_or_the_prm() -> None:
    outs = [_o("a", 1, 2, candidates=4, correct_candidates=4, score_sum=0.4),
            _o("b", 0, 5, candidates=4, correct_candidates=0, score_sum=3.6),
            _o("c", 1, 3, candidates=4, correct_candidates=2, score_sum=2.0),
            _o("d", 1, 3, candidates=4, correct_candidates=1, score_sum=1.0),
            _o("a", 1, 2, candidates=4, correct_candidates=4, score_sum=0.4)]  # a second cell of problem a
    assert difficulty_bins(outs, "field") == {"a": "2", "b": "5", "c": "3", "d": "3"}
    assert difficulty_bins(outs, "pass_rate", bins=2) == {"a": "1", "c": "1", "d": "2", "b": "2"}  # 1 = easiest
    assert difficulty_bins(outs, "prm", bins=4) == {"b": "1", "c": "2", "d": "3", "a": "4"}
    assert quantile_bins({f"p{i}": float(i) for i in range(10)}, 5) == {
        f"p{i}": str(5 - i // 2) for i in range(10)}
    assert quantile_bins({"x": 1.0, "y": 1.0}, 5) == {"x": "1", "y": "2"}  # never more bins than problems
    with pytest.raises(ValueError, match="unknown difficulty method"):
        difficulty_bins(outs, "vibes")
    seeds = mean_over_seeds([{"a": _o("a", 1.0, tokens=10)}, {"a": _o("a", 0.0, tokens=20), "b": _o("b", 1.0)}])
    assert list(seeds) == ["a"] and seeds["a"].correct == 0.5 and seeds["a"].generated_tokens == 15.0


# ----------------------------------------------------------------------------------- a tiny sweep
@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128), seed=0)
    return save_model(model, tok, tmp_path_factory.mktemp("policy") / "policy")


def _cfg(policy: Path, run_dir: Path, *extra: str):  # type: ignore[no-untyped-def]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="sweep", overrides=[
            f"policy={policy}", f"run_dir={run_dir}", "scorer=oracle", "n_problems=4", "problems_per_call=2",
            "data.world.max_ops=3", "sweep.only=[best_of_n,beam]", "sweep.strategies.beam.m=2", "sweep.max_n=4",
            "sweep.common.max_rounds=3",
            "sweep.common.max_step_tokens=8", "sweep.common.max_solution_tokens=16", "progress=false", *extra])


def _csv(path: Path, drop: tuple[str, ...] = ("wall_time_s",)) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory: pytest.TempPathFactory, policy: Path) -> dict[str, Any]:
    """An uninterrupted sweep (2 strategies x N in 1, 2, 4 x 1 seed, 4 problems), the policy loaded by the sweep,
    with the W&B logger (offline); records the generate calls each cell took."""
    run_dir = tmp_path_factory.mktemp("full") / "sweep"
    loads: list[Wrapped] = []
    calls_after: dict[str, int] = {}

    def counted_generator(cfg):  # type: ignore[no-untyped-def]
        loads.append(Wrapped(make_generator(cfg)))
        return loads[-1]

    def counted_run(cfg, generator, scorer):  # type: ignore[no-untyped-def]
        out = real_run(cfg, generator, scorer)
        calls_after[Path(cfg.run_dir).name] = generator.calls
        return out

    mp = pytest.MonkeyPatch()
    real_run = sweep_mod.search_run
    mp.setattr(sweep_mod, "make_generator", counted_generator)
    mp.setattr(sweep_mod, "search_run", counted_run)
    mp.setenv("WANDB_SILENT", "true")
    try:
        summary = run(_cfg(policy, run_dir, "logger=wandb", "logger.project=prm-test"))
    finally:
        mp.undo()
    return {"dir": run_dir, "summary": summary, "loads": len(loads), "calls_after": calls_after}


def test_a_tiny_sweep_writes_the_csv_the_compute_optimal_table_and_plots(full_sweep: dict[str, Any]) -> None:
    run_dir, summary = full_sweep["dir"], full_sweep["summary"]
    assert full_sweep["loads"] == 1  # one policy for every cell
    rows = read_table(run_dir / "sweep.csv")
    assert [(r["strategy"], r["n"], r["seed"], r["status"]) for r in rows] == [
        ("best_of_n", 1, 0, "done"), ("best_of_n", 2, 0, "done"), ("best_of_n", 4, 0, "done"),
        ("beam", 1, 0, "skipped"), ("beam", 2, 0, "done"), ("beam", 4, 0, "done")]
    assert rows[3]["note"] == "skipped: n=1 < m=2" and rows[3]["acc_headline"] is None
    assert summary["cells"] == {"done": 5, "skipped": 1} and summary["ran"] == [
        "best_of_n-N1-s0", "best_of_n-N2-s0", "best_of_n-N4-s0", "beam-N2-s0", "beam-N4-s0"]
    for r in (r for r in rows if r["status"] == "done"):
        cell = json.loads((run_dir / "cells" / r["cell"] / "summary.json").read_text())
        recs = [json.loads(x) for x in (run_dir / "cells" / r["cell"] / "results.jsonl").read_text().splitlines()]
        assert r["problems"] == 4 and r["errors"] == 0 and r["final"] == "weighted_majority"
        assert r["acc_headline"] == cell["accuracy"]["all"]["weighted_majority"]
        assert r["acc_majority_d2"] == cell["accuracy"]["2"]["majority"]
        assert r["problems_d2"] + r["problems_d3"] == 4
        for key in ("generated_tokens", "prompt_tokens", "prm_tokens", "samples"):
            assert r[key] == sum(x["compute"][key] for x in recs)
        assert r["prm_tokens"] == 0 and r["generated_tokens"] > 0  # the oracle runs no model
        assert r["flops"] == pytest.approx(sum(x["flops"] for x in recs)) and r["flops_per_problem"] == r["flops"] / 4
        d2 = [x for x in recs if x["difficulty"] == 2]
        assert r["generated_tokens_per_problem_d2"] == sum(x["compute"]["generated_tokens"] for x in d2) / len(d2)
        assert r["wall_time_s"] > 0
    assert rows[2]["samples"] == 4 * 4 and rows[4]["m"] == 2  # best-of-4 draws 4 samples per problem
    for name in ("accuracy_vs_n", "accuracy_vs_generated_tokens", "accuracy_vs_flops"):
        assert (run_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    optimal = read_table(run_dir / "compute_optimal.csv")
    curve = {(r["n"], r["bin"]): r for r in optimal if r["fold"] == "all"}
    assert set(curve) == {(n, b) for n in (1, 2, 4) for b in ("2", "3", "all")}
    assert all(r["eval_problems"] == 4 for (n, b), r in curve.items() if b == "all")
    assert {r["strategy"] for r in optimal if r["n"] == 1 and r["fold"] != "all"} == {"best_of_n"}  # beam skipped
    assert (summary["compute_optimal"]["difficulty"], summary["compute_optimal"]["bins"]) == ("field", {"2": 2, "3": 2})
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_a_killed_sweep_resumes_without_redoing_finished_cells(full_sweep: dict[str, Any], policy: Path,
                                                               tmp_path: Path) -> None:
    run_dir, calls = tmp_path / "sweep", full_sweep["calls_after"]
    generator = make_generator(_cfg(policy, run_dir))
    partial = run_dir / "cells" / "beam-N2-s0"
    killer = Wrapped(generator, kill_when=(partial / "results.jsonl").exists)  # beam-N2 has done its first chunk
    with pytest.raises(Killed):
        run(_cfg(policy, run_dir), killer)
    assert calls["best_of_n-N4-s0"] < killer.calls <= calls["beam-N2-s0"]  # killed inside beam-N2
    done = ["best_of_n-N1-s0", "best_of_n-N2-s0", "best_of_n-N4-s0"]
    assert all((run_dir / "cells" / c / "summary.json").exists() for c in done)
    assert not (partial / "summary.json").exists()
    assert len((partial / "results.jsonl").read_text().splitlines()) == 2
    assert not (run_dir / "sweep.csv").exists()
    stamps = {c: [(p.name, p.stat().st_mtime_ns) for p in sorted((run_dir / "cells" / c).iterdir())] for c in done}

    again = Wrapped(generator)
    summary = run(_cfg(policy, run_dir), again)
    assert summary["ran"] == ["beam-N2-s0", "beam-N4-s0"]
    # the finished cells are not redone, nor the first chunk of beam-N2: fewer calls than both beam cells took
    assert 0 < again.calls < calls["beam-N4-s0"] - calls["best_of_n-N4-s0"]
    assert stamps == {c: [(p.name, p.stat().st_mtime_ns) for p in sorted((run_dir / "cells" / c).iterdir())]
                      for c in done}
    assert _csv(run_dir / "sweep.csv") == _csv(full_sweep["dir"] / "sweep.csv")
    assert _csv(run_dir / "compute_optimal.csv", ()) == _csv(full_sweep["dir"] / "compute_optimal.csv", ())

    idle = Wrapped(generator, kill_at=1)  # everything is finished: a re-run generates nothing
    assert run(_cfg(policy, run_dir), idle)["ran"] == [] and idle.calls == 0
    assert _csv(run_dir / "sweep.csv") == _csv(full_sweep["dir"] / "sweep.csv")

    with pytest.raises(ValueError, match="holds results of a different run in best_of_n-N1-s0"):
        run(_cfg(policy, run_dir, "sweep.common.temperature=0.5"), idle)


def test_collect_mode_reports_the_cells_on_disk_without_a_model(full_sweep: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "collected"
    for cell in (full_sweep["dir"] / "cells").iterdir():  # as a prm-search multirun would leave them
        dest = run_dir / "cells" / cell.name
        dest.mkdir(parents=True)
        for f in ("results.jsonl", "summary.json", "config.yaml", "identity.json"):
            (dest / f).write_bytes((cell / f).read_bytes())
    (run_dir / "cells" / "beam-N8-s0").mkdir()  # started, never finished
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="sweep", overrides=[f"run_dir={run_dir}", "sweep.mode=collect", "policy=null"])
    summary = run(cfg, Wrapped(None, kill_at=1))
    rows = {r["cell"]: r for r in _csv(run_dir / "sweep.csv")}
    full = {r["cell"]: r for r in _csv(full_sweep["dir"] / "sweep.csv")}
    assert rows.pop("beam-N8-s0")["status"] == "incomplete" and summary["cells"] == {"done": 5, "incomplete": 1}
    assert rows == {c: r for c, r in full.items() if r["status"] == "done"}
    assert (run_dir / "accuracy_vs_n.png").exists()


# --------------------------------------------------------------------------------- the launcher
def test_the_slurm_launcher_config_composes_for_prm_search_and_prm_sweep() -> None:
    for primary in ("search", "sweep"):
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name=primary, return_hydra_config=True, overrides=[
                "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                "search=dvts" if primary == "search" else "sweep.max_n=8",
                "run_dir=runs/sweep/cells/${hydra:runtime.choices.search}-N${search.n}-s${seed}"
                if primary == "search" else "run_dir=runs/sweep"])
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        assert launcher["_target_"] == SLURM
        assert (launcher["partition"], launcher["timeout_min"], launcher["gpus_per_node"]) == ("gpu", 30, 1)
        assert launcher["submitit_folder"].endswith("/.submitit/%j")
        if primary == "search":  # the run_dir the header documents for a multirun names cells as prm-sweep does
            HydraConfig.instance().set_config(cfg)
            assert cfg.run_dir == "runs/sweep/cells/dvts-N16-s0"


def test_the_slurm_launcher_config_matches_the_plugin() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="sweep", return_hydra_config=True, overrides=["hydra/launcher=submitit_slurm"])
    keys = set(cfg.hydra.launcher)
    assert keys <= set(OmegaConf.structured(SlurmQueueConf)), keys - set(OmegaConf.structured(SlurmQueueConf))
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"


# --------------------------------------------------------------------------------- the notebook
def test_the_analysis_notebook_runs_on_a_sweep(full_sweep: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast check in this process: the code cells run in order in one namespace (tests/test_notebooks.py runs them
    in a real kernel, slow)."""
    nb = json.loads(NOTEBOOK.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] for c in nb["cells"] if c["cell_type"] == "code")  # saved without outputs
    monkeypatch.setenv("SWEEP_DIR", str(full_sweep["dir"]))
    monkeypatch.chdir(NOTEBOOK.parent)
    ns: dict[str, Any] = {"__name__": "__main__"}
    for i, src in enumerate(code):
        exec(compile(src, f"{NOTEBOOK.name}[{i}]", "exec"), ns)  # noqa: S102 - our own notebook
    assert ns["SWEEP_DIR"] == full_sweep["dir"] and len(ns["rows"]) == 6
    for name in ("fig_n", "fig_tokens", "fig_flops"):
        axes = [ax for ax in ns[name].axes if ax.get_visible()]
        assert len(axes) == 3 and all(ax.lines for ax in axes)  # all problems, difficulty 2 and 3
    labels = {line.get_label() for line in ns["fig_n"].axes[0].lines}
    assert labels == {"best_of_n", "beam", "compute-optimal"}


def test_cells_name_their_directories() -> None:
    assert Cell("beam", 16, 2).name == "beam-N16-s2"
    assert Cell("x", 1, 0, dirname="custom").name == "custom"
    assert os.sep not in Cell("a.b+c-d", 4, 0).name


def test_a_strategy_can_cap_its_budgets() -> None:
    from search.sweep import fit_budget

    node = {"preset": "lookahead", "m": 4, "rollout_steps": 1, "max_n": 16}
    _, note, skipped = fit_budget({k: v for k, v in node.items() if k != "preset"}, 64, "skip")
    assert skipped and "max_n=16" in note
    search, note, skipped = fit_budget({"name": "lookahead", "m": 4, "rollout_steps": 1, "max_n": 16}, 16, "skip")
    assert not skipped and note == "" and "max_n" not in search and search["n"] == 16
