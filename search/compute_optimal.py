"""The compute-optimal curve (Snell et al. 2024): per difficulty bin and budget, the best strategy.

At each budget N, problems are grouped into difficulty bins; within each bin the strategy with the
best accuracy on one half of the problems (the *select* half) is chosen and scored on the other half
(the *eval* half), so the curve is not flattered by choosing on the problems it reports. Halves are
drawn per bin by problem id with a seeded hash (``split_halves``): stable across runs, platforms and
the order problems were searched in. With ``cross_fit`` (the default; Snell et al. use two-fold
cross-validation) the halves then swap roles, so every problem is scored once, by a choice made
without it, and the curve covers the same problems as each strategy's own line.

Difficulty (``difficulty_bins``):

- ``field``: the oracle's own difficulty, the problem's ``difficulty`` field (the arithmetic world's
  number of operations, MATH's level); one bin per value;
- ``pass_rate``: the oracle pass rate, the fraction of a problem's sampled candidates that are right;
- ``prm``: the verifier's predicted difficulty, the mean aggregated PRM score of its candidates
  (needs no reference answer, so it is what a deployed system could use).

The last two are binned into ``bins`` quantiles by rank (equal-count bins, ties by problem id);
bin ``"1"`` is the easiest (highest pass rate / mean score), as a higher ``difficulty`` field is
harder. Both average over the candidates of the ``best_of_n`` cells when the sweep has any
(independent samples from the policy, as Snell et al.), else over every cell's candidates.

Ties in selection go to the strategy listed first (the sweep's order). A bin whose select half is
empty (a one-problem bin) falls back to the strategy best on the whole select half (``fallback``).
Results per problem are first averaged over seeds (``mean_over_seeds``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

METHODS = ("field", "pass_rate", "prm")


@dataclass(frozen=True)
class ProblemOutcome:
    """One problem in one sweep cell: whether the strategy's headline answer was right, what it cost,
    and what the difficulty estimates need (its candidates' correctness and aggregated scores)."""

    id: str
    correct: float  # 1.0 / 0.0; a fraction once averaged over seeds
    generated_tokens: float = 0.0
    flops: float | None = None
    difficulty: int | None = None
    candidates: int = 0
    correct_candidates: int = 0
    score_sum: float = 0.0

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], rule: str) -> ProblemOutcome:
        """From a ``results.jsonl`` record of ``prm-search``, graded by the final rule ``rule``."""
        cands = rec.get("candidates") or []
        flops = rec.get("flops")
        return cls(
            id=str(rec["id"]), correct=float(bool(rec["correct"][rule])),
            generated_tokens=float(rec.get("compute", {}).get("generated_tokens", 0)),
            flops=None if flops is None else float(flops), difficulty=rec.get("difficulty"),
            candidates=len(cands), correct_candidates=sum(bool(c.get("correct")) for c in cands),
            score_sum=float(sum(float(c.get("score") or 0.0) for c in cands)),
        )


Results = Mapping[tuple[str, int], Mapping[str, ProblemOutcome]]  # (strategy, N) -> problem id -> outcome


def mean_over_seeds(runs: Sequence[Mapping[str, ProblemOutcome]]) -> dict[str, ProblemOutcome]:
    """Per problem (those every seed has): correctness and compute averaged over seeds, candidates summed."""
    if not runs:
        return {}
    ids = [i for i in runs[0] if all(i in r for r in runs[1:])]
    out = {}
    for i in ids:
        xs = [r[i] for r in runs]
        flops = [x.flops for x in xs]
        out[i] = ProblemOutcome(
            id=i, correct=sum(x.correct for x in xs) / len(xs),
            generated_tokens=sum(x.generated_tokens for x in xs) / len(xs),
            flops=None if any(f is None for f in flops) else sum(flops) / len(xs),  # type: ignore[arg-type]
            difficulty=xs[0].difficulty, candidates=sum(x.candidates for x in xs),
            correct_candidates=sum(x.correct_candidates for x in xs), score_sum=sum(x.score_sum for x in xs),
        )
    return out


def quantile_bins(values: Mapping[str, float], bins: int) -> dict[str, str]:
    """Equal-count bins by rank, highest value first: bin ``"1"`` holds the highest values."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1 (got {bins})")
    order = sorted(values, key=lambda i: (-values[i], i))
    k = len(order)
    return {i: str(1 + (r * min(bins, k)) // k) for r, i in enumerate(order)} if k else {}


def difficulty_bins(outcomes: Iterable[ProblemOutcome], method: str = "field", bins: int = 5) -> dict[str, str]:
    """Each problem's difficulty bin (see the module docstring), from its outcomes in any number of cells."""
    if method not in METHODS:
        raise ValueError(f"unknown difficulty method {method!r} (one of {', '.join(METHODS)})")
    field: dict[str, int | None] = {}
    cands: dict[str, int] = {}
    hits: dict[str, float] = {}
    for o in outcomes:
        field.setdefault(o.id, o.difficulty)
        cands[o.id] = cands.get(o.id, 0) + o.candidates
        hits[o.id] = hits.get(o.id, 0.0) + (o.correct_candidates if method == "pass_rate" else o.score_sum)
    if method == "field":
        return {i: str(d) for i, d in field.items()}
    return quantile_bins({i: hits[i] / cands[i] if cands[i] else 0.0 for i in cands}, bins)


def split_halves(ids: Iterable[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Problem ids in two halves (the first one larger by one for an odd count), by a seeded hash of the id."""
    order = sorted(set(ids), key=lambda i: (hashlib.sha256(f"{seed}:{i}".encode()).hexdigest(), i))
    half = math.ceil(len(order) / 2)
    return order[:half], order[half:]


def accuracy(outcomes: Mapping[str, ProblemOutcome], ids: Sequence[str]) -> float | None:
    """Mean correctness over ``ids`` (None for no problems)."""
    return sum(outcomes[i].correct for i in ids) / len(ids) if ids else None


def choose(at_n: Mapping[str, Mapping[str, ProblemOutcome]], ids: Sequence[str]) -> str:
    """The strategy (of ``at_n``, in its order) with the highest accuracy on ``ids``; ties (and no
    problems at all): the first."""
    if not at_n:
        raise ValueError("no strategy to choose from")
    scored = [(accuracy(outcomes, ids), -k, strategy) for k, (strategy, outcomes) in enumerate(at_n.items())]
    return max(scored, key=lambda t: (t[0] if t[0] is not None else -1.0, t[1]))[2]


def compute_optimal(results: Results, bins: Mapping[str, str], seed: int = 0, cross_fit: bool = True,
                    order: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The selection table and the curve.

    ``results``: per (strategy, N), each problem's outcome (seed-averaged); ``bins``: each problem's
    difficulty bin; ``order``: the strategies in tie-breaking order (default: first seen).

    ``table``: one row per (N, bin, fold): the strategy chosen on the fold's select half
    (``strategy``), its select and eval accuracy (None on no problems), and every strategy's eval
    accuracy (``eval_accuracy_<strategy>``), so the choice can be checked against what would have been best.
    ``curve``: one row per (N, bin) and (N, ``"all"``): the accuracy of the chosen strategies on
    every eval problem, their generated tokens and FLOPs per problem, and the choices (``strategy``,
    ``|``-joined per fold).
    """
    strategies = list(dict.fromkeys([*(order or []), *(s for s, _ in results)]))
    table: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []
    for n in sorted({n for _, n in results}):
        at_n = {s: results[(s, n)] for s in strategies if (s, n) in results}
        common = set.intersection(*(set(o) for o in at_n.values())) & set(bins)
        groups = sorted({bins[i] for i in common}, key=_bin_key)
        halves = {g: split_halves([i for i in common if bins[i] == g], seed) for g in groups}
        folds = [("a", 0, 1), ("b", 1, 0)] if cross_fit else [("a", 0, 1)]
        picked: dict[str, list[tuple[str, list[str]]]] = {g: [] for g in groups}  # bin -> (choice, eval ids)
        for fold, sel, ev in folds:
            all_select = [i for g in groups for i in halves[g][sel]]
            for g in groups:
                select_ids, eval_ids = halves[g][sel], halves[g][ev]
                fallback = not select_ids
                strategy = choose(at_n, all_select if fallback else select_ids)
                picked[g].append((strategy, eval_ids))
                table.append({
                    "n": n, "bin": g, "fold": fold, "strategy": strategy, "fallback": fallback,
                    "select_problems": len(select_ids), "select_accuracy": accuracy(at_n[strategy], select_ids),
                    "eval_problems": len(eval_ids), "eval_accuracy": accuracy(at_n[strategy], eval_ids),
                    **{f"eval_accuracy_{s}": accuracy(o, eval_ids) for s, o in at_n.items()},
                })
        for g in [*groups, "all"]:
            chosen = [(s, ids) for gg in (groups if g == "all" else [g]) for s, ids in picked[gg]]
            scored = [at_n[s][i] for s, ids in chosen for i in ids]
            flops = [o.flops for o in scored]
            k = len(scored)
            curve.append({
                "n": n, "bin": g, "fold": "all", "strategy": "|".join(s for s, _ in chosen), "eval_problems": k,
                "eval_accuracy": sum(o.correct for o in scored) / k if k else None,
                "generated_tokens_per_problem": sum(o.generated_tokens for o in scored) / k if k else None,
                "flops_per_problem": (None if any(f is None for f in flops) or not k
                                      else sum(flops) / k),  # type: ignore[arg-type]
            })
    return {"table": table, "curve": curve}


def format_optimal(curve: Sequence[Mapping[str, Any]]) -> str:
    """The curve as a console table: per N and bin, the strategies chosen (per fold) and their eval accuracy."""
    lines = [f"{'N':>5} {'bin':>6} {'problems':>8} {'accuracy':>8}  chosen (per fold)"]
    for r in curve:
        acc = r["eval_accuracy"]
        lines.append(f"{r['n']:>5} {r['bin']:>6} {r['eval_problems']:>8} "
                     f"{'' if acc is None else f'{acc:.3f}':>8}  {r['strategy']}")
    return "\n".join(lines)


def _bin_key(g: str) -> tuple[bool, str]:
    return g == "None", g.zfill(4)


__all__ = [
    "METHODS", "ProblemOutcome", "Results", "accuracy", "choose", "compute_optimal", "difficulty_bins",
    "format_optimal",
    "mean_over_seeds", "quantile_bins", "split_halves",
]
