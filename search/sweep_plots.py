"""Compute-vs-accuracy plots of a sweep: accuracy against N, generated tokens and FLOPs per problem.

Input: the rows of ``sweep.csv`` (``search.sweep.cell_row``, or ``search.sweep.read_table``) and
optionally the compute-optimal curve (``search.compute_optimal.compute_optimal``'s ``curve`` rows).
Cells that are not ``done`` are left out; seeds of one (strategy, N) are averaged, with +-1 standard
error shaded when there are several. Each figure has one panel for all problems and one per difficulty
(the ``problems_d<group>`` columns); the compute-optimal curve is a dashed black line. Figures are
``matplotlib.figure.Figure`` objects (no pyplot, no display needed; a notebook shows them inline) and
are written with ``prm.evaluation.plots.save_figure`` (atomic PNG).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from prm.evaluation.plots import save_figure

# x axis -> (column, label, log base)
X_AXES: dict[str, tuple[str, str, int]] = {
    "n": ("n", "N (samples per problem; per round for tree search)", 2),
    "generated_tokens": ("generated_tokens_per_problem", "generated tokens per problem", 10),
    "flops": ("flops_per_problem", "FLOPs per problem (policy + PRM)", 10),
}


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    x = float(v)
    return None if math.isnan(x) else x


def x_column(x: str, group: str = "all") -> str:
    """The ``sweep.csv`` column of an x axis for a difficulty group."""
    col = X_AXES[x][0]
    return col if group == "all" or x == "n" else f"{col}_d{group}"


def acc_column(rule: str = "headline", group: str = "all") -> str:
    return f"acc_{rule}" if group == "all" else f"acc_{rule}_d{group}"


def groups_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The difficulty groups present in the rows, sorted (``"None"`` last)."""
    found = {k.removeprefix("problems_d") for r in rows for k in r if k.startswith("problems_d")}
    return sorted(found, key=lambda g: (g == "None", g.zfill(4)))


def series(rows: Sequence[Mapping[str, Any]], x: str = "n", group: str = "all",
           rule: str = "headline") -> dict[str, dict[str, list[float]]]:
    """Per strategy (first-seen order): N, x, mean accuracy and its standard error over seeds, by N.

    Points whose x or accuracy is missing (no FLOPs count, no problem of that difficulty) are left out.
    """
    xc, yc = x_column(x, group), acc_column(rule, group)
    points: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for r in rows:
        if r.get("status") != "done":
            continue
        xv, yv = _num(r.get(xc)), _num(r.get(yc))
        if group != "all" and not _num(r.get(f"problems_d{group}")):
            continue
        if xv is None or yv is None:
            continue
        points.setdefault(str(r["strategy"]), {}).setdefault(int(r["n"]), []).append((xv, yv))
    out = {}
    for strategy, by_n in points.items():
        s: dict[str, list[float]] = {"n": [], "x": [], "mean": [], "se": []}
        for n in sorted(by_n):
            xs, ys = zip(*by_n[n])
            mean = sum(ys) / len(ys)
            var = sum((y - mean) ** 2 for y in ys) / (len(ys) - 1) if len(ys) > 1 else float("nan")
            s["n"].append(float(n))
            s["x"].append(sum(xs) / len(xs))
            s["mean"].append(mean)
            s["se"].append(math.sqrt(var / len(ys)) if len(ys) > 1 else float("nan"))
        out[strategy] = s
    return out


def optimal_points(curve: Sequence[Mapping[str, Any]] | None, x: str = "n",
                   group: str = "all") -> tuple[list[float], list[float]]:
    """The compute-optimal curve's (x, accuracy) points for a difficulty group."""
    xs, ys = [], []
    for r in curve or []:
        if str(r.get("bin")) != group:
            continue
        xv = _num(r.get("n") if x == "n" else r.get(X_AXES[x][0]))
        yv = _num(r.get("eval_accuracy"))
        if xv is not None and yv is not None:
            xs.append(xv)
            ys.append(yv)
    return xs, ys


def accuracy_figure(rows: Sequence[Mapping[str, Any]], x: str = "n", rule: str = "headline",
                    groups: Sequence[str] | None = None, optimal: Sequence[Mapping[str, Any]] | None = None,
                    optimal_label: str = "compute-optimal", title: str | None = None) -> Figure:
    """Accuracy against ``x`` (``n``, ``generated_tokens`` or ``flops``): a panel for all problems and one
    per difficulty group, a line per strategy, the compute-optimal curve dashed."""
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r} (one of {', '.join(X_AXES)})")
    panels = ["all", *(groups if groups is not None else groups_of(rows))]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    _, xlabel, base = X_AXES[x]
    for ax, group in zip(axes, panels):
        ticks: set[float] = set()
        for strategy, s in series(rows, x, group, rule).items():
            (line,) = ax.plot(s["x"], s["mean"], marker="o", markersize=3, label=strategy)
            lo = [m - e for m, e in zip(s["mean"], s["se"])]
            hi = [m + e for m, e in zip(s["mean"], s["se"])]
            if any(not math.isnan(e) for e in s["se"]):
                ax.fill_between(s["x"], lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
            ticks.update(s["x"])
        ox, oy = optimal_points(optimal, x, group)
        if ox:
            ax.plot(ox, oy, "--", color="black", marker="s", markersize=3, label=optimal_label)
            ticks.update(ox)
        if ticks and min(ticks) > 0:
            ax.set_xscale("log", base=base)
            if x == "n":
                ax.set_xticks(sorted(ticks))
                ax.set_xticklabels([str(int(t)) for t in sorted(ticks)])
        problems = next((r.get("problems" if group == "all" else f"problems_d{group}") for r in rows
                         if r.get("status") == "done"), None)
        name = "all problems" if group == "all" else f"difficulty {group}"
        ax.set(xlabel=xlabel, ylabel=f"accuracy ({rule})",
               title=name + (f" ({int(problems)})" if _num(problems) is not None else ""))
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_sweep(rows: Sequence[Mapping[str, Any]], out_dir: str | Path,
               optimal: Sequence[Mapping[str, Any]] | None = None, rule: str = "headline",
               optimal_label: str = "compute-optimal") -> list[Path]:
    """``accuracy_vs_{n,generated_tokens,flops}.png`` in ``out_dir`` (an axis no cell has values for, such
    as FLOPs without parameter counts, is left out); returns the paths written."""
    paths = []
    for x in X_AXES:
        if not any(series(rows, x, "all", rule).values()):
            continue
        fig = accuracy_figure(rows, x, rule, optimal=optimal, optimal_label=optimal_label,
                              title=f"accuracy vs {X_AXES[x][1]}")
        paths.append(save_figure(fig, Path(out_dir) / f"accuracy_vs_{x}.png"))
    return paths


__all__ = ["X_AXES", "accuracy_figure", "acc_column", "groups_of", "optimal_points", "plot_sweep", "series",
           "x_column"]
