"""The analysis notebooks run in a real Jupyter kernel on tiny run directories; the sweep plots they show have legible
log-scale axes and an interval on every point.

Each notebook is executed by ``nbclient`` with kernel ``python3``, resolved to a kernelspec written for this test
that runs THIS interpreter (``sys.executable -m ipykernel_launcher``, first on ``JUPYTER_PATH``): the venv's own
python and packages, whatever other kernels the machine has, and nothing installed with ``ipykernel install``.
A probe cell appended to the executed copy (never saved) reports what the notebook built.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hydra import compose, initialize_config_dir
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from nbclient import NotebookClient

from prm.data.arith import ARITH_FORMAT, Problem
from prm.data.stepwise import write_stepwise
from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from prm.worlds import ArithWorld, Task, label_example
from search.sweep_plots import accuracy_figure, interval, series

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
NOTEBOOKS = REPO / "notebooks"


# ------------------------------------------------------------------------------------------ the kernel
@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The kernel name ``python3``, running this interpreter (see the module docstring)."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (this venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, not a headless one
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return "python3"


def execute(name: str, kernel_name: str, probe: str) -> tuple[nbformat.NotebookNode, dict[str, Any]]:
    """Run every cell of ``notebooks/<name>`` in a kernel started in ``notebooks/``, then ``probe`` (code whose last
    line prints a JSON object); returns the executed notebook and the probe's object."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), f"{name}: saved with outputs"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    NotebookClient(nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    out = [o for o in nb.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout"]
    return nb, json.loads("".join(o.text for o in out).strip().splitlines()[-1])


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


# ------------------------------------------------------------------------------------------ a tiny sweep
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """``prm-sweep`` in-process: best-of-N and beam (M=2) at N = 1, 2 on 4 arithmetic problems, a tiny untrained
    policy, the oracle scorer (beam at N=1 is skipped)."""
    from search.sweep import run

    tmp = tmp_path_factory.mktemp("sweep_nb")
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128), seed=0)
    policy = save_model(model, tok, tmp / "policy")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="sweep", overrides=[
            f"policy={policy}", f"run_dir={tmp / 'sweep'}", "scorer=oracle", "n_problems=4", "problems_per_call=2",
            "data.world.max_ops=3", "sweep.only=[best_of_n,beam]", "sweep.strategies.beam.m=2", "sweep.budgets=[1,2]",
            "sweep.common.max_step_tokens=8", "sweep.common.max_solution_tokens=16", "sweep.common.max_rounds=3",
            "progress=false"])
    run(cfg)
    return tmp / "sweep"


SWEEP_PROBE = """import json, sys
figs = {"fig_n": fig_n, "fig_tokens": fig_tokens, "fig_flops": fig_flops}
print(json.dumps({"prefix": sys.prefix, "rows": len(rows), "figures": {
    name: [{"lines": [line.get_label() for line in ax.lines], "errorbars": len(ax.containers)}
           for ax in fig.axes if ax.get_visible()] for name, fig in figs.items()}}))"""


@pytest.mark.slow
def test_the_sweep_notebook_runs_in_a_kernel(sweep_dir: Path, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_DIR", str(sweep_dir))
    nb, probe = execute("sweep_analysis.ipynb", kernel, SWEEP_PROBE)
    assert probe["prefix"] == sys.prefix  # the venv's python ran it
    assert probe["rows"] == 4  # best_of_n N1, N2; beam N1 (skipped), N2
    for name, axes in probe["figures"].items():
        assert len(axes) == 3, name  # all problems, difficulty 2 and 3
        assert set(axes[0]["lines"]) == {"best_of_n", "beam", "compute-optimal"}, name
        assert axes[0]["errorbars"] == 2, name  # every point of both strategies has its interval
    code = [c for c in nb.cells[:-1] if c.cell_type == "code"]
    assert "best_of_n" in _text(code[1])  # the sweep table
    assert [_images(c) for c in code[2:5]] == [1, 1, 1]  # each figure shown below its cell
    assert "difficulty: field" in _text(code[5])  # the compute-optimal table


# ------------------------------------------------------------------------------------------ a tiny prm-eval
P1 = Problem("p1", 3, (("+", 4), ("*", 2)), modulus=10)  # 3+4=7, 7*2=4
P2 = Problem("p2", 5, (("-", 1), ("*", 3)), modulus=10)  # 5-1=4, 4*3=2
SOLUTIONS = {
    "p1": ["3+4=7\n7*2=4\n# Answer: 4", "3+4=8\n8*2=6\n# Answer: 6", "3+4=7\n7*2=5\n# Answer: 5"],
    "p2": ["5-1=4\n4*3=2\n# Answer: 2", "5-1=3\n3*3=9\n# Answer: 9", "5-1=4\n4*3=2\n# Answer: 2"],
}


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prm-eval scorer=oracle`` in-process on 6 exactly labelled arithmetic solutions of 2 problems."""
    from prm.prm_eval import run

    tmp = tmp_path_factory.mktemp("eval_nb")
    world = ArithWorld(fmt=ARITH_FORMAT)
    examples = []
    for problem in (P1, P2):
        task = Task(problem.id, problem.prompt, str(problem.answer), problem.difficulty, problem)
        examples += [label_example(world, task, text, sample=j, logprob=-float(j))
                     for j, text in enumerate(SOLUTIONS[problem.id])]
    write_stepwise(tmp / "samples.jsonl", examples)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="prm_eval", overrides=[
            f"data.path={tmp / 'samples.jsonl'}", f"run_dir={tmp / 'eval'}", "scorer=oracle", "progress=false"])
    run(cfg)
    return tmp / "eval"


EVAL_PROBE = """import json, sys
ax_rel = fig_reliability.axes[0]
sel = {ax.get_title(): {c.get_label(): [list(seg[:, 1]) for seg in c.lines[2][0].get_segments()]
                        for c in ax.containers} for ax in fig_selection.axes}
print(json.dumps({"prefix": sys.prefix, "bars": [p.get_height() for p in ax_rel.patches], "selection": sel}))"""


@pytest.mark.slow
def test_the_prm_eval_notebook_runs_in_a_kernel(eval_dir: Path, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = json.loads((eval_dir / "summary.json").read_text())
    monkeypatch.setenv("EVAL_DIR", str(eval_dir))
    nb, probe = execute("prm_eval_analysis.ipynb", kernel, EVAL_PROBE)
    assert probe["prefix"] == sys.prefix
    bins = summary["steps"]["reliability"]
    heights = [h for h in probe["bars"] if not math.isnan(h)]
    assert heights == [a for a in bins["accuracy"] if not math.isnan(a)] == [0.0, 1.0]  # the oracle: 0s and 1s
    curves = summary["selection"]["all"]
    panel = probe["selection"]["all problems (2)"]
    assert set(panel) == set(curves["methods"])
    for method, row in curves["methods"].items():  # each point's error bar spans its ci95
        assert [v for seg in panel[method] for v in sorted(seg)] == pytest.approx(
            [v for ci in row["ci95"] for v in sorted(ci)])
    code = [c for c in nb.cells[:-1] if c.cell_type == "code"]
    assert "within-problem AUROC" in _text(code[1])  # the headline summary
    assert [_images(c) for c in code[2:4]] == [1, 1]
    assert "error_accuracy" in _text(code[4]) and "within-problem AUROC ( min): 1.000" in _text(code[4])


# ------------------------------------------------------------------------------------------ a tiny prm-rl run
def digit_share(prompts: list[str], completions: list[str], **kwargs: object) -> list[float | None]:
    """A TRL-signature reward that varies even for an untrained policy (None on empty completions)."""
    return [sum(c.isdigit() for c in text) / len(text) if text else None for text in completions]


@pytest.fixture(scope="module")
def rl_dir(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """``prm-rl`` in-process: 4 steps of a tiny untrained policy on 20 arithmetic problems, rewarded by outcome and
    by the share of digits (so rewards vary), a PPO-style second epoch and a KL penalty; a tiny untrained PRM gives
    the monitor its reward on 4 held-out problems at steps 0, 2 and 4."""
    from prm.models.prm_model import build_prm, save_prm
    from prm.steps import save_step_format
    from rl.grpo import run

    tmp = tmp_path_factory.mktemp("rl_nb")
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=96), seed=0)
    policy = save_model(model, tok, tmp / "policy")
    prm, prm_tok = build_prm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128), seed=0)
    prm_dir = save_prm(prm, prm_tok, tmp / "prm")
    save_step_format(prm_dir, ARITH_FORMAT)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="rl", overrides=[
            f"policy={policy}", f"run_dir={tmp / 'rl'}", f"scorer.model_or_path={prm_dir}", "rl.n_train_problems=20",
            "rl.prompts_per_step=2", "rl.group_size=4", "rl.max_new_tokens=24", "rl.ppo_epochs=2", "rl.kl_coef=0.1",
            "monitor.n_problems=4", "monitor.samples=2", "train.max_steps=4", "train.eval_every=2",
            "train.save_every=0", "train.log_every=1", "train.lr=1e-2", "train.progress=false",
            "+reward.digits={_target_: rl.rewards.FunctionReward, function: test_notebooks.digit_share, weight: 1.0}"])
    run(cfg)
    return tmp / "rl"


RL_PROBE = """import json, sys
def floats(values):
    return [float(v) for v in values]
def panel(ax):
    lines = {line.get_label(): [floats(line.get_xdata()), floats(line.get_ydata())]
             for line in ax.lines if not line.get_label().startswith("_")}
    bars = {c.get_label(): {"x": floats(c.lines[0].get_xdata()), "y": floats(c.lines[0].get_ydata()),
                            "spans": [sorted(floats(seg[:, 1])) for seg in c.lines[2][0].get_segments()]}
            for c in ax.containers}
    return {"lines": lines, "bars": bars}
figs = {"fig_monitor": fig_monitor, "fig_training": fig_training}
print(json.dumps({"prefix": sys.prefix, "monitor": len(monitor), "training": len(training), "figures": {
    name: {ax.get_title(): panel(ax) for ax in fig.axes if ax.get_visible()} for name, fig in figs.items()}}))"""


@pytest.mark.slow
def test_the_rl_notebook_runs_in_a_kernel(rl_dir: Path, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prm.io import read_resumable_jsonl

    summary = json.loads((rl_dir / "summary.json").read_text())
    metrics = read_resumable_jsonl(rl_dir / "metrics.jsonl")
    assert [r["step"] for r in metrics if "eval/greedy_accuracy" in r] == [m["step"] for m in summary["monitor"]]
    # An untrained policy is right nowhere, so every interval is [0, 0]: give the monitor's accuracies distinct
    # values and intervals to see each error bar span its own row's; then tear the last line as a killed run would.
    for i, row in enumerate(r for r in metrics if "eval/greedy_accuracy" in r):
        for j, key in enumerate(("eval/greedy_accuracy", "eval/sampled_accuracy")):
            acc = 0.2 + 0.25 * i + 0.1 * j
            row.update({key: acc, f"{key}_lo": acc - 0.05 * (i + 1), f"{key}_hi": acc + 0.02 * (i + j + 2)})
    (rl_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics) + '{"step": 5, "loss": 0.')
    evals = [r for r in metrics if "eval/greedy_accuracy" in r]
    train = [r for r in metrics if "loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and [r["step"] for r in train] == [1, 2, 3, 4]
    monkeypatch.setenv("RL_DIR", str(rl_dir))
    nb, probe = execute("rl_analysis.ipynb", kernel, RL_PROBE)
    assert probe["prefix"] == sys.prefix
    assert (probe["monitor"], probe["training"]) == (3, 4)

    def column(rows: list[dict[str, Any]], key: str) -> list[list[float]]:
        return [[float(r["step"]) for r in rows], [float(r[key]) for r in rows]]

    monitor = probe["figures"]["fig_monitor"]
    acc = monitor["true accuracy vs the PRM's reward"]
    assert set(acc["bars"]) == {"true accuracy (greedy)", "true accuracy (sampled)"}
    for label, key in (("true accuracy (greedy)", "greedy_accuracy"), ("true accuracy (sampled)", "sampled_accuracy")):
        bars = acc["bars"][label]  # one point per monitor row, its error bar spanning the row's 95% interval
        assert [bars["x"], bars["y"]] == column(evals, f"eval/{key}")
        assert [v for span in bars["spans"] for v in span] == pytest.approx(
            [v for r in evals for v in (r[f"eval/{key}_lo"], r[f"eval/{key}_hi"])])
    assert acc["lines"]["PRM reward (sampled)"] == column(evals, "eval/prm_reward")
    gap = monitor["the PRM's gap to true accuracy"]["lines"]
    assert gap["PRM reward - sampled accuracy"] == column(evals, "eval/prm_gap")
    process = monitor["process correctness"]["lines"]
    assert process["every step right (sampled)"] == column(evals, "eval/process_correct")
    assert process["finished with an answer (sampled)"] == column(evals, "eval/format_rate")

    training = probe["figures"]["fig_training"]
    rewards = training["training rewards"]["lines"]
    assert set(rewards) == {"outcome (outcome, weight 1)", "digits (outcome, weight 1)"}
    assert rewards["digits (outcome, weight 1)"] == column(train, "reward/digits/mean")
    assert rewards["outcome (outcome, weight 1)"] == column(train, "reward/outcome/mean")
    assert training["policy entropy"]["lines"]["entropy (nats per token)"] == column(train, "entropy")
    length = training["completion length (tokens)"]["lines"]
    assert length["rollouts"] == column(train, "rollout/completion_tokens")
    assert length["held-out (sampled)"] == column(evals, "eval/completion_tokens")
    assert training["completion length (steps)"]["lines"]["rollouts"] == column(train, "rollout/steps")
    assert training["loss"]["lines"]["loss"] == column(train, "loss")
    kl = training["KL and clipping"]["lines"]
    assert kl["KL to the reference"] == column(train, "kl") and kl["clipped tokens"] == column(train, "clip_fraction")

    code = [c for c in nb.cells[:-1] if c.cell_type == "code"]
    assert "rewards: outcome (outcome, weight 1), digits (outcome, weight 1)" in _text(code[1])  # the headline
    assert _text(code[1]).count(f"| {rl_dir.name} |") == 3  # the monitor table: one row per monitored step
    assert [_images(c) for c in code[2:4]] == [1, 1]  # each figure shown below its cell


# ------------------------------------------------------------------------------------------ the sweep plots
def _rows(tokens: list[float], flops_per_token: float = 2e6) -> list[dict[str, Any]]:
    """Done cells of two strategies at N = 1, 2, 4, ... with the given generated tokens per problem."""
    rows = []
    for strategy, scale in (("best_of_n", 1.0), ("beam", 1.7)):
        for k, t in enumerate(tokens):
            acc = min(1.0, 0.2 + 0.07 * k * scale)
            rows.append({"strategy": strategy, "n": 2 ** k, "seed": 0, "status": "done", "problems": 200,
                         "acc_headline": acc, "generated_tokens_per_problem": t * scale,
                         "flops_per_problem": t * scale * flops_per_token})
    return rows


def _labels(fig: Any) -> list[list[tuple[str, Any]]]:
    """Per visible panel, the visible non-empty x tick labels (major and minor) with their drawn extents."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in (a for a in fig.axes if a.get_visible()):
        ticks = [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks()]
        lo, hi = sorted(ax.get_xlim())
        labels = [t.label1 for t in ticks if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]
        out.append([(lab.get_text(), lab.get_window_extent(renderer)) for lab in labels])
    return out


@pytest.mark.parametrize("tokens", [
    [12.0, 17.0, 23.0, 31.0, 44.0],  # under one decade: once every minor tick was labelled, overlapping
    [20.0 * 2 ** k for k in range(9)],  # 2.4 decades
    [3.0 * 4 ** k for k in range(12)],  # 6.6 decades
], ids=["narrow", "medium", "wide"])
@pytest.mark.parametrize("x", ["generated_tokens", "flops"])
def test_log_axes_have_a_few_labels_that_do_not_overlap(tokens: list[float], x: str) -> None:
    for labels in _labels(accuracy_figure(_rows(tokens), x)):
        assert 2 <= len(labels) <= 8, [t for t, _ in labels]
        boxes = sorted((box for _, box in labels), key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [t for t, _ in labels]


def test_the_budget_axis_is_labelled_at_each_n() -> None:
    (labels,) = _labels(accuracy_figure(_rows([10.0 * 2 ** k for k in range(9)]), "n"))
    assert [t for t, _ in labels] == [str(2 ** k) for k in range(9)]


def test_every_point_has_a_95_percent_interval_over_problems() -> None:
    row = {"acc_headline": 0.3, "problems": 200, "acc_headline_d2": 0.5, "problems_d2": 50}
    half = 1.96 * math.sqrt(0.3 * 0.7 / 200)
    assert interval(row) == pytest.approx((0.3 - half, 0.3 + half))
    half_d2 = 1.96 * math.sqrt(0.5 * 0.5 / 50)
    assert interval(row, group="2") == pytest.approx((0.5 - half_d2, 0.5 + half_d2))
    assert interval({"acc_headline": 0.0, "problems": 10}) == (0.0, 0.0)  # the approximation's known blind spot
    assert interval({"acc_headline": 0.3, "problems": 0}) is None
    assert interval({**row, "acc_headline_lo": 0.21, "acc_headline_hi": 0.38}) == (0.21, 0.38)  # the row's own

    rows = _rows([10.0, 20.0, 40.0])
    rows.append({**rows[0], "seed": 1, "acc_headline": 0.4})  # a second seed of best_of_n at N=1: intervals averaged
    s = series(rows, "n")["best_of_n"]
    first = [interval(r) for r in (rows[0], rows[-1])]
    assert (s["lo"][0], s["hi"][0]) == pytest.approx(tuple(sum(v) / 2 for v in zip(*first)))
    for x in ("n", "generated_tokens", "flops"):
        ax = accuracy_figure(rows, x).axes[0]
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 2  # one per strategy
        spans = [float(v) for seg in bars[1].lines[2][0].get_segments() for v in seg[:, 1]]
        beam = series(rows, x)["beam"]
        assert spans == pytest.approx([v for pair in zip(beam["lo"], beam["hi"]) for v in pair])
