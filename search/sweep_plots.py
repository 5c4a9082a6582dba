"""Compute-vs-accuracy plots of a sweep: accuracy against N, generated tokens and FLOPs per problem.

Input: the rows of ``sweep.csv`` (``search.sweep.cell_row``, or ``search.sweep.read_table``) and
optionally the compute-optimal curve (``search.compute_optimal.compute_optimal``'s ``curve`` rows).
Cells that are not ``done`` are left out; seeds of one (strategy, N) are averaged, with +-1 standard
error over seeds shaded when there are several. Every point carries a 95% interval over problems as an
error bar: the row's own (``acc_<rule>[_d<group>]_lo`` / ``_hi`` columns, averaged over seeds) where the
sweep wrote one, else the binomial normal approximation ``1.96 * sqrt(p (1 - p) / n)`` from the
accuracy ``p`` and the problem count ``n`` of the row (``problems`` / ``problems_d<group>``; per seed,
not pooled over seeds), clipped to [0, 1]. It is an approximation (a 95% bootstrap over problems needs
the per-problem results, which ``sweep.csv`` does not hold) and has zero width at an accuracy of 0 or 1.
Log-scale axes keep their labels legible: N is labelled at its values; tokens and FLOPs at every decade
(or every few decades), at 1-2-5 or at 1..9 per decade, whichever is coarsest with two labels among the
values, in engineering notation (``20``, ``5k``, ``2G``), with no minor tick labels. Each figure has one
panel for all problems and one per difficulty (the ``problems_d<group>`` columns); the compute-optimal
curve is a dashed black line. Figures are ``matplotlib.figure.Figure`` objects (no pyplot, no display
needed; a notebook shows them inline) and are written with ``prm.evaluation.plots.save_figure`` (atomic
PNG).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, NullFormatter

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


def interval(row: Mapping[str, Any], rule: str = "headline", group: str = "all") -> tuple[float, float] | None:
    """A row's 95% interval of accuracy: its ``<acc column>_lo`` / ``_hi`` values, else the binomial normal
    approximation from its accuracy and problem count (see the module docstring); None without either."""
    col = acc_column(rule, group)
    lo, hi = _num(row.get(f"{col}_lo")), _num(row.get(f"{col}_hi"))
    if lo is not None and hi is not None:
        return lo, hi
    p, n = _num(row.get(col)), _num(row.get("problems" if group == "all" else f"problems_d{group}"))
    if p is None or not n:
        return None
    half = 1.96 * math.sqrt(max(p * (1.0 - p), 0.0) / n)
    return max(0.0, p - half), min(1.0, p + half)


def series(rows: Sequence[Mapping[str, Any]], x: str = "n", group: str = "all",
           rule: str = "headline") -> dict[str, dict[str, list[float]]]:
    """Per strategy (first-seen order): N, x, mean accuracy, its standard error over seeds and its 95% interval
    over problems (``lo``, ``hi``: ``interval`` averaged over seeds; NaN where a row has none), by N.

    Points whose x or accuracy is missing (no FLOPs count, no problem of that difficulty) are left out.
    """
    xc, yc = x_column(x, group), acc_column(rule, group)
    nan = float("nan")
    points: dict[str, dict[int, list[tuple[float, float, float, float]]]] = {}
    for r in rows:
        if r.get("status") != "done":
            continue
        xv, yv = _num(r.get(xc)), _num(r.get(yc))
        if group != "all" and not _num(r.get(f"problems_d{group}")):
            continue
        if xv is None or yv is None:
            continue
        lo, hi = interval(r, rule, group) or (nan, nan)
        points.setdefault(str(r["strategy"]), {}).setdefault(int(r["n"]), []).append((xv, yv, lo, hi))
    out = {}
    for strategy, by_n in points.items():
        s: dict[str, list[float]] = {"n": [], "x": [], "mean": [], "se": [], "lo": [], "hi": []}
        for n in sorted(by_n):
            xs, ys, los, his = zip(*by_n[n])
            mean = sum(ys) / len(ys)
            var = sum((y - mean) ** 2 for y in ys) / (len(ys) - 1) if len(ys) > 1 else float("nan")
            s["n"].append(float(n))
            s["x"].append(sum(xs) / len(xs))
            s["mean"].append(mean)
            s["se"].append(math.sqrt(var / len(ys)) if len(ys) > 1 else float("nan"))
            s["lo"].append(sum(los) / len(los))
            s["hi"].append(sum(his) / len(his))
        out[strategy] = s
    return out


def log_x_axis(ax: Axes, values: Sequence[float], base: int) -> None:
    """A log-scale x axis with legible labels (see the module docstring): N (base 2) at its values; tokens and
    FLOPs (base 10) at the coarsest of every decade (every few decades: at most 7 labels; over two decades or
    more), 1-2-5 per decade or 1..9 per decade that puts two labels or more among the values, else at the
    smallest and largest value; never minor tick labels."""
    ax.set_xscale("log", base=base)
    ax.xaxis.set_minor_formatter(NullFormatter())
    values = sorted(set(values))
    if base == 2:
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.set_xticklabels([str(int(t)) if t == int(t) else f"{t:g}" for t in values])
        return
    lo, hi = values[0], values[-1]
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    stride = max(1, math.ceil((last - first + 1) / 7))
    options = [[10.0 ** k for k in range(first, last + 1, stride)]] if math.log10(hi / lo) >= 2 else []
    options += [[m * 10.0 ** k for k in range(first, last + 1) for m in subs] for subs in ((1, 2, 5), range(1, 10))]
    for ticks in options:
        inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(inside) >= 2:
            ax.xaxis.set_major_locator(FixedLocator(inside))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
            return
    ax.xaxis.set_major_locator(FixedLocator([lo, hi] if hi > lo else [lo]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v, 1)))


def _short(v: float, places: int | None = None) -> str:
    """A tick label: plain below 1000 (``20``, ``0.5``), engineering notation above (``5k``, ``2G``)."""
    if abs(v) < 1000:
        return f"{v:.3g}" if places is not None else f"{v:g}"
    return EngFormatter(sep="", places=places).format_eng(v)


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
            if any(not math.isnan(v) for v in s["lo"]):  # the 95% interval over problems of every point
                err = [[max(0.0, m - v) for m, v in zip(s["mean"], s["lo"])],
                       [max(0.0, v - m) for m, v in zip(s["mean"], s["hi"])]]
                ax.errorbar(s["x"], s["mean"], yerr=err, fmt="none", ecolor=line.get_color(), elinewidth=1.2,
                            capsize=0, alpha=0.7)  # no caps: ax.lines keeps one line per strategy
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
            log_x_axis(ax, sorted(ticks), base)
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


__all__ = ["X_AXES", "accuracy_figure", "acc_column", "groups_of", "interval", "log_x_axis", "optimal_points",
           "plot_sweep", "series", "x_column"]
