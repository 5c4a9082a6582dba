"""Scorers: one P(on track) per step, behind one protocol (``Scorer``), for best-of-N and step-level search.

``base`` holds the protocol, the incremental ``Prefix`` handles, ``ScorerStats`` and ``aggregate``;
``prm_scorer`` the trained PRM (batched, KV-cached incremental scoring; published conventions in
``conventions``); ``baselines`` the arithmetic oracle, outcome-only, random and policy-likelihood
scorers. Model-backed classes are imported lazily, so ``import prm.scoring`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prm.scoring.base import AGGREGATIONS, Prefix, Scorer, ScorerBase, ScorerStats, aggregate

if TYPE_CHECKING:
    from prm.scoring.baselines import LikelihoodScorer, OracleScorer, OutcomeScorer, RandomScorer
    from prm.scoring.conventions import Convention
    from prm.scoring.prm_scorer import PRMScorer

_LAZY = {
    "PRMScorer": "prm.scoring.prm_scorer",
    "Convention": "prm.scoring.conventions",
    "LikelihoodScorer": "prm.scoring.baselines",
    "OracleScorer": "prm.scoring.baselines",
    "OutcomeScorer": "prm.scoring.baselines",
    "RandomScorer": "prm.scoring.baselines",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATIONS", "Convention", "LikelihoodScorer", "OracleScorer", "OutcomeScorer", "PRMScorer", "Prefix",
    "RandomScorer", "Scorer", "ScorerBase", "ScorerStats", "aggregate",
]
