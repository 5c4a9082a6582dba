"""PNG plots of evaluation results: reliability diagrams and best-of-N selection curves.

Figures are drawn with matplotlib's Agg renderer through ``matplotlib.figure.Figure`` (pyplot and
its global backend are never touched, so no display is needed) and written atomically: to a
temporary file beside the target, then renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_reliability(bins: Mapping[str, Sequence[float]], path: str | Path, title: str = "Reliability") -> Path:
    """Reliability diagram from ``metrics.reliability_bins``: mean label per confidence bin vs the diagonal,
    with the number of items per bin below."""
    edges = np.asarray(bins["edges"], dtype=float)
    conf = np.asarray(bins["confidence"], dtype=float)
    acc = np.asarray(bins["accuracy"], dtype=float)
    count = np.asarray(bins["count"], dtype=float)
    width = np.diff(edges)
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    keep = count > 0
    top.bar(edges[:-1][keep], acc[keep], width=width[keep], align="edge", edgecolor="black", alpha=0.7,
            label="mean label")
    top.plot(conf[keep], acc[keep], "o", color="tab:red", markersize=4, label="(confidence, mean label)")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction positive", title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(edges[:-1], count, width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set(xlabel="predicted probability", ylabel="count")
    return save_figure(fig, path)


def plot_selection_curves(
    curves: Mapping[str, Any],
    path: str | Path,
    title: str = "Best-of-N",
    methods: Sequence[str] | None = None,
) -> Path:
    """Accuracy vs N (log2 axis) from ``selection.selection_curves``: one line per method, +-1 SE shaded."""
    ns = np.asarray(curves["ns"], dtype=float)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method in methods if methods is not None else list(curves["methods"]):
        row = curves["methods"][method]
        mean, se = np.asarray(row["mean"], dtype=float), np.asarray(row["se"], dtype=float)
        (line,) = ax.plot(ns, mean, marker="o", markersize=3, label=method)
        if np.isfinite(se).any():
            ax.fill_between(ns, mean - se, mean + se, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(int(n)) for n in ns])
    problems = curves.get("problems", "?")
    ax.set(xlabel="N (samples per problem)", ylabel="accuracy", title=f"{title} ({problems} problems)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
