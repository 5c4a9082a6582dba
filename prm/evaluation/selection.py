"""Best-of-N selection curves over pre-sampled solutions (the PRM800K evaluation).

Each problem has K sampled solutions, each with an aggregated PRM score, an answer string and its
correctness. For every N, many subsets of N of the K samples are drawn without replacement and each
method picks one solution per subset:

- ``best_of_n``: the highest score (ties: the earliest sample of the subset);
- ``majority`` / ``weighted_majority``: ``prm.voting.vote`` over the subset's answers (by count /
  by summed score); the chosen class is right iff its first member in the subset is right;
- ``pass``: any sample of the subset is right (an upper bound); ``random``: a uniformly random
  member of the subset (the mean correctness, flat in N);
- ``best_of_n/<name>`` for every extra score (e.g. the policy's log-likelihood).

Subsets are listed in sample order, so every tie rule means "the earlier sample". When C(K, N) is
at most ``draws`` every subset is used once (exact: N=1 gives the mean correctness, N=K the
deterministic full vote); otherwise ``draws`` random subsets, seeded per (seed, problem, N), so a
problem's draws do not depend on the other problems. A missing score (NaN) is never preferred in
best-of-N and adds nothing to a weighted vote; a missing answer (None) never votes.

Answer equivalence (``answer_classes``, possibly slow graders) runs once per problem, over all K
answers; votes per subset are then counted with numpy over class ids. Means are over problems;
standard errors are over problems (std of per-problem expected accuracy / sqrt(problems)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prm.evaluation.metrics import bootstrap_ci
from prm.voting import answer_classes

BUILTIN = ("random", "pass", "majority", "best_of_n", "weighted_majority")


@dataclass(eq=False)
class SampledProblem:
    """K sampled solutions of one problem: aggregated scores, answers, correctness, extra named scores.

    ``classes`` (answer equivalence classes, as ``prm.voting.answer_classes`` returns them) is
    computed from ``answers`` when not given.
    """

    scores: Sequence[float] | np.ndarray
    answers: Sequence[str | None]
    correct: Sequence[bool] | np.ndarray
    extra_scores: Mapping[str, Sequence[float] | np.ndarray] = field(default_factory=dict)
    classes: list[list[int]] | None = None
    class_ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=float)
        self.correct = np.asarray(self.correct, dtype=bool)
        self.answers = list(self.answers)
        k = len(self.answers)
        if k == 0:
            raise ValueError("a problem needs at least one sample")
        if self.scores.shape != (k,) or self.correct.shape != (k,):
            raise ValueError(f"{k} answers but scores {self.scores.shape} and correct {self.correct.shape}")
        self.extra_scores = {name: np.asarray(v, dtype=float) for name, v in self.extra_scores.items()}
        for name, v in self.extra_scores.items():
            if v.shape != (k,):
                raise ValueError(f"{k} answers but extra score {name!r} of shape {v.shape}")
        if self.classes is None:
            self.classes = answer_classes(self.answers)
        self.class_ids = np.full(k, -1, dtype=int)
        for c, members in enumerate(self.classes):
            self.class_ids[members] = c

    @property
    def k(self) -> int:
        return len(self.answers)


def default_ns(k: int) -> list[int]:
    """1, 2, 4, ... below ``k``, then ``k``."""
    ns = [1 << i for i in range(max(k, 1).bit_length()) if (1 << i) < k]
    return ns + [k]


def _subsets(k: int, n: int, draws: int, rng_key: tuple[int, ...]) -> np.ndarray:
    """Subsets x n sample indices, each row in sample order: all subsets if few enough, else random."""
    if math.comb(k, n) <= draws:
        return np.array(list(itertools.combinations(range(k), n)), dtype=int).reshape(-1, n)
    rng = np.random.default_rng(rng_key)
    return np.sort(rng.random((draws, k)).argsort(axis=1)[:, :n], axis=1)


def _vote_correct(class_ids: np.ndarray, weights: np.ndarray | None, corr: np.ndarray, n_classes: int) -> np.ndarray:
    """Per subset row: is the winning class's first member right (False when nobody voted)?"""
    if n_classes == 0:
        return np.zeros(len(class_ids), dtype=bool)
    onehot = class_ids[:, :, None] == np.arange(n_classes)  # rows x n x classes
    present = onehot.any(axis=1)
    first = np.where(present, onehot.argmax(axis=1), class_ids.shape[1])
    total = onehot.sum(axis=1, dtype=float) if weights is None else (onehot * weights[:, :, None]).sum(axis=1)
    total = np.where(present, total, -np.inf)
    tied = present & (total == total.max(axis=1, keepdims=True))
    pos = np.where(tied, first, class_ids.shape[1]).min(axis=1)  # ties: the earliest first member
    voted = present.any(axis=1)
    rows = np.arange(len(class_ids))
    return voted & corr[rows, np.minimum(pos, class_ids.shape[1] - 1)]


def _best_correct(scores: np.ndarray, corr: np.ndarray) -> np.ndarray:
    s = np.where(np.isnan(scores), -np.inf, scores)
    return corr[np.arange(len(s)), s.argmax(axis=1)]  # argmax: the first maximum = the earliest sample


def per_problem_selection(
    problems: Sequence[SampledProblem], ns: Sequence[int] | None = None, draws: int = 100, seed: int = 0
) -> tuple[list[int], dict[str, np.ndarray]]:
    """(ns, {method: problems x len(ns) expected accuracy over the subsets}); see the module docstring."""
    if not problems:
        raise ValueError("no problems")
    if draws < 1:
        raise ValueError(f"draws must be >= 1 (got {draws})")
    ns = list(ns) if ns is not None else default_ns(min(p.k for p in problems))
    extra = list(problems[0].extra_scores)
    clash = set(BUILTIN) & {f"best_of_n/{e}" for e in extra}
    if clash:
        raise ValueError(f"extra score names clash with built-in methods: {sorted(clash)}")
    methods = [*BUILTIN, *(f"best_of_n/{e}" for e in extra)]
    out = {m: np.zeros((len(problems), len(ns))) for m in methods}
    for i, p in enumerate(problems):
        if list(p.extra_scores) != extra:
            raise ValueError(f"problem {i} has extra scores {list(p.extra_scores)}, problem 0 has {extra}")
        weights = np.where(np.isnan(p.scores), 0.0, p.scores)
        n_classes = len(p.classes or [])
        for j, n in enumerate(ns):
            if not 1 <= n <= p.k:
                raise ValueError(f"N={n} is outside 1..K={p.k} for problem {i}")
            d = _subsets(p.k, n, draws, (seed, i, n))
            corr = p.correct[d]
            out["random"][i, j] = corr.mean()
            out["pass"][i, j] = corr.any(axis=1).mean()
            out["majority"][i, j] = _vote_correct(p.class_ids[d], None, corr, n_classes).mean()
            out["weighted_majority"][i, j] = _vote_correct(p.class_ids[d], weights[d], corr, n_classes).mean()
            out["best_of_n"][i, j] = _best_correct(p.scores[d], corr).mean()
            for e in extra:
                out[f"best_of_n/{e}"][i, j] = _best_correct(p.extra_scores[e][d], corr).mean()
    return ns, out


def summarise(
    ns: Sequence[int], values: Mapping[str, np.ndarray], indices: Sequence[int] | None = None
) -> dict[str, Any]:
    """Per method and N: mean over the (selected) problems, its standard error over problems and a 95%
    bootstrap interval over problems (``ci95``: one [low, high] per N)."""
    rows = np.asarray(indices if indices is not None else range(len(next(iter(values.values())))), dtype=int)
    result: dict[str, Any] = {"ns": list(ns), "problems": int(len(rows)), "methods": {}}
    for method, v in values.items():
        sub = v[rows]
        mean = sub.mean(axis=0) if len(rows) else np.full(len(ns), np.nan)
        se = sub.std(axis=0, ddof=1) / math.sqrt(len(rows)) if len(rows) > 1 else np.full(len(ns), np.nan)
        ci = [list(bootstrap_ci(sub[:, j])) for j in range(len(ns))]
        result["methods"][method] = {"mean": mean.tolist(), "se": se.tolist(), "ci95": ci}
    return result


def selection_curves(
    problems: Sequence[SampledProblem], ns: Sequence[int] | None = None, draws: int = 100, seed: int = 0
) -> dict[str, Any]:
    """``{"ns", "problems", "draws", "seed", "methods": {method: {"mean": [...], "se": [...]}}}``."""
    ns, values = per_problem_selection(problems, ns, draws, seed)
    return {**summarise(ns, values), "draws": draws, "seed": seed}


def group_indices(keys: Sequence[Any]) -> dict[str, list[int]]:
    """Problem indices grouped by key (e.g. difficulty; numbers sorted numerically, None last), plus ``"all"``."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)

    def order(key: Any) -> tuple[int, float, str]:
        if key is None:
            return (2, 0.0, "")
        if isinstance(key, (int, float)) and not isinstance(key, bool):
            return (0, float(key), "")
        return (1, 0.0, str(key))

    return {**{str(k): groups[k] for k in sorted(groups, key=order)}, "all": list(range(len(keys)))}


def selection_by_group(
    problems: Sequence[SampledProblem],
    groups: Mapping[str, Sequence[int]],
    ns: Sequence[int] | None = None,
    draws: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``selection_curves`` per group of problem indices (same draws for every group)."""
    ns, values = per_problem_selection(problems, ns, draws, seed)
    return {name: {**summarise(ns, values, idx), "draws": draws, "seed": seed} for name, idx in groups.items()}
