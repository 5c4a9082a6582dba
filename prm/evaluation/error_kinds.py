"""What a scorer catches in the arithmetic world: its first-error steps by kind (systematic, slip, ...).

A PRM can only add what the policy lacks (``shared/notes/arith-calibration.md``): the policy's own
likelihood spots random slips, not the systematic mistakes it makes confidently. This table shows
which kinds of first error a scorer separates from right steps: for each kind (``arith.ERROR_KINDS``),
the AUROC of the scorer's score at that kind's first-error steps against its score at every right
step whose earlier steps are right too (the "local" positives of ``metrics``), and the mean score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prm.data.arith import ERROR_KINDS, ArithConfig, Problem, step_error_kind
from prm.data.stepwise import StepwiseExample
from prm.evaluation.metrics import auroc


def first_errors_by_kind(
    examples: Sequence[StepwiseExample], step_scores: Sequence[Sequence[float]], cfg: ArithConfig
) -> dict[str, Any]:
    """``{"right_steps": n, "kinds": {kind: {"n", "mean_score", "auroc"}}}`` over arithmetic examples.

    ``step_scores[i]`` are the scores of ``examples[i]``'s steps (one per step). A kind that never
    occurs is left out; ``"all"`` pools every first error.
    """
    if len(examples) != len(step_scores):
        raise ValueError(f"{len(examples)} examples but {len(step_scores)} score lists")
    right: list[float] = []
    wrong: dict[str, list[float]] = {kind: [] for kind in ERROR_KINDS}
    for ex, scores in zip(examples, step_scores):
        if len(scores) != len(ex.completions):
            raise ValueError(f"example {ex.extra.get('id')!r}: {len(ex.completions)} steps but {len(scores)} scores")
        problem = Problem.from_prompt(ex.prompt, modulus=cfg.modulus, id=str(ex.extra.get("id", "")))
        for i, (step, label) in enumerate(zip(ex.completions, ex.labels)):
            if label is None:
                break
            if label >= 0.5:
                right.append(float(scores[i]))
                continue
            wrong[step_error_kind(problem, step, i, cfg)].append(float(scores[i]))
            break
    pooled = [s for kind in ERROR_KINDS for s in wrong[kind]]
    kinds: dict[str, dict[str, float]] = {}
    for kind, values in [*wrong.items(), ("all", pooled)]:
        if values:
            kinds[kind] = {
                "n": len(values),
                "mean_score": float(np.mean(values)),
                "auroc": auroc(right + values, [1] * len(right) + [0] * len(values)),
            }
    return {"right_steps": len(right), "mean_right_score": float(np.mean(right)) if right else float("nan"),
            "kinds": kinds}
