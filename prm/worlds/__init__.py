"""Worlds: where tasks come from (``World``), built from the ``data`` config by ``make_world``.

- ``ArithWorld``: the built-in arithmetic world, exact labels for every step (``data=arith``);
- ``FileWorld``: a problem file (MATH-500 style or PRM800K records), graded by answer.

``make_world`` is the only place that decides which world a config means.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prm.data.arith import ARITH_FORMAT, ArithConfig
from prm.io import plain_mapping
from prm.steps import PLAIN, TAGGED, StepFormat
from prm.worlds.arith import ArithWorld
from prm.worlds.base import (
    SPLITS,
    ProblemDraw,
    Task,
    World,
    by_difficulty,
    heldout,
    label_example,
)
from prm.worlds.files import FileWorld


def world_format(data: Mapping[str, Any]) -> StepFormat:
    """The step format of a ``data`` config: ``format: plain | tagged`` (the arithmetic world's plain
    answer line is ``# Answer: N``, PRM800K's ``# Answer\\n\\nN``)."""
    name = data.get("format", "plain") or "plain"
    if name not in ("plain", "tagged"):
        raise ValueError(f"data.format must be plain or tagged (got {name!r})")
    if name == "tagged":
        return TAGGED
    return ARITH_FORMAT if data.get("source") == "arith" else PLAIN


def make_world(data: Mapping[str, Any], problems: str | Path | None = None) -> World:
    """The world a ``data`` config (and an optional problem file, ``problems=path``) describes."""
    d = plain_mapping(data)
    fmt = world_format(d)
    if d.get("source") == "arith":
        try:
            config = ArithConfig.from_dict(d.get("world") or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"data.world: {e}") from e
        return ArithWorld(config, fmt, float(d.get("holdout_fraction", 0.1)), problems)
    if problems is None:
        raise ValueError(f"data.source={d.get('source')!r} has no problems of its own: give a problem file "
                         "(problems=<JSONL with problem, answer>) or use data=arith")
    return FileWorld(problems, fmt, d.get("exclude") or ())


def world_and_tasks(cfg: Mapping[str, Any], log: Any = print) -> tuple[World, ProblemDraw]:
    """An entry point's world and problems: ``data`` (+ ``problems``, a problem file, then all of
    its problems), ``split`` (default ``test``), ``n_problems`` and ``problem_seed``; logs the draw
    (how many problems were removed as overlapping training problems or duplicates)."""
    world = make_world(cfg["data"], cfg.get("problems"))
    n = cfg.get("n_problems") if cfg.get("problems") is None else None
    draw = world.problems(str(cfg.get("split") or "test"), None if n is None else int(n), int(cfg.get("problem_seed") or 0))
    log(f"[{world.name}] {cfg.get('split') or 'test'} split: {draw.report()}")
    return world, draw


__all__ = ["SPLITS", "ArithWorld", "FileWorld", "ProblemDraw", "Task", "World", "by_difficulty", "heldout",
           "label_example", "make_world", "world_and_tasks", "world_format"]
