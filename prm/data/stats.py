"""Counts over stepwise examples: records, steps, labels by value, and breakdowns by extra keys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from prm.data.stepwise import StepwiseExample


def label_key(label: float | None) -> str:
    """How a label is counted: "1.0", "0.0", "null", or "soft" for values strictly between."""
    if label is None:
        return "null"
    if label in (0.0, 1.0):
        return str(float(label))
    return "soft"


def dataset_stats(examples: Iterable[StepwiseExample]) -> dict[str, Any]:
    """Records, steps, labels by value, steps per record, and per-difficulty/source breakdowns."""
    n = steps = 0
    labels: Counter[str] = Counter()
    lengths: Counter[int] = Counter()
    sources: Counter[str] = Counter()
    by_difficulty: dict[Any, Counter[str]] = {}
    correct = Counter[str]()
    for ex in examples:
        n += 1
        steps += len(ex.completions)
        lengths[len(ex.completions)] += 1
        labels.update(label_key(lab) for lab in ex.labels)
        sources[str(ex.extra.get("source", "unknown"))] += 1
        if "correct" in ex.extra:
            correct["correct" if ex.extra["correct"] else "wrong"] += 1
        if "difficulty" in ex.extra:
            d = by_difficulty.setdefault(ex.extra["difficulty"], Counter())
            d["records"] += 1
            d["correct"] += bool(ex.extra.get("correct", False))
            d["process_correct"] += bool(ex.extra.get("process_correct", False))
    stats: dict[str, Any] = {
        "records": n,
        "steps": steps,
        "labels": dict(sorted(labels.items())),
        "steps_per_record": {"min": min(lengths, default=0), "max": max(lengths, default=0),
                             "mean": steps / n if n else 0.0},
        "sources": dict(sources),
    }
    if correct:
        stats["correct_rate"] = correct["correct"] / max(1, correct["correct"] + correct["wrong"])
    if by_difficulty:
        stats["by_difficulty"] = {
            str(k): {"records": c["records"], "correct_rate": c["correct"] / c["records"],
                     "process_correct_rate": c["process_correct"] / c["records"]}
            for k, c in sorted(by_difficulty.items())
        }
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable table of ``dataset_stats``."""
    spr = stats["steps_per_record"]
    lines = [
        f"records: {stats['records']}",
        f"steps:   {stats['steps']}  (per record: min {spr['min']}, mean {spr['mean']:.2f}, max {spr['max']})",
        "labels:  " + ", ".join(f"{k}: {v}" for k, v in stats["labels"].items()),
        "sources: " + ", ".join(f"{k}: {v}" for k, v in stats["sources"].items()),
    ]
    if "correct_rate" in stats:
        lines.append(f"final answer correct: {stats['correct_rate']:.3f}")
    if "by_difficulty" in stats:
        lines.append("difficulty  records  answer-correct  process-correct")
        for k, d in stats["by_difficulty"].items():
            lines.append(f"{k:>10}  {d['records']:>7}  {d['correct_rate']:>14.3f}  {d['process_correct_rate']:>15.3f}")
    return "\n".join(lines)
