"""Metrics over PRM scores: AUROC (global, within-problem, local), accuracy/F1, calibration, first error.

Scores are P(on track); labels are 1 (on track / correct) or 0. Which metric answers which question
(``shared/notes/arith-calibration.md``):

- ``auroc`` over all steps or solutions is easy to inflate: scores that only track a step's
  position or a problem's difficulty rank well across problems and still cannot rerank.
- ``within_problem_auroc`` ranks each problem's own solutions: the number that decides whether
  best-of-N reranking works.
- ``local_auroc`` keeps only steps whose earlier steps are all correct: can the PRM check one step?
- ``first_error_*`` is ProcessBench's task: find the index of the first wrong step (or say none).

Undefined ratios (0/0, AUROC with one class) are NaN, never a silent 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

DEFAULT_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


class CountedAUROC(NamedTuple):
    """An AUROC and how many items counted (problems for ``within_problem_auroc``, steps for the others)."""

    auroc: float
    n: int


def _scores(x: Any, name: str = "scores") -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (got shape {a.shape})")
    if np.isnan(a).any():
        raise ValueError(f"{name} contain NaN")
    return a


def _binary(labels: Any, n: int) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{n} scores but labels of shape {a.shape}")
    if a.dtype != bool:
        a = a.astype(float)
        if not np.isin(a, (0.0, 1.0)).all():
            raise ValueError("labels must be 0/1 or bool (binarise soft labels first)")
    return a.astype(bool)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _harmonic(a: float, b: float) -> float:
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the average of their ranks."""
    order = np.argsort(x, kind="mergesort")
    _, start, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(start + (counts + 1) / 2, counts)
    return ranks


def _mann_whitney(scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(U, pairs): positive-negative pairs ranked right, ties counting 1/2, and the number of pairs."""
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    if n1 == 0 or n0 == 0:
        return 0.0, 0
    u = float(average_ranks(scores)[labels].sum()) - n1 * (n1 + 1) / 2
    return u, n1 * n0


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[Any] | np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties 1/2 (Mann-Whitney); NaN with one class."""
    s = _scores(scores)
    u, pairs = _mann_whitney(s, _binary(labels, len(s)))
    return u / pairs if pairs else float("nan")


def accuracy_f1(
    scores: Sequence[float] | np.ndarray, labels: Sequence[Any] | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Predict positive when score >= threshold; accuracy and precision/recall/F1 of BOTH classes.

    ``neg_*`` treat the negatives (wrong steps) as the class to find: what a PRM must catch.
    """
    s = _scores(scores)
    y = _binary(labels, len(s))
    pred = s >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    tn, fn = int((~pred & ~y).sum()), int((~pred & y).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    neg_precision, neg_recall = _ratio(tn, tn + fn), _ratio(tn, tn + fp)
    return {
        "n": len(s),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(s)),
        "balanced_accuracy": (recall + neg_recall) / 2,
        "precision": precision,
        "recall": recall,
        "f1": _harmonic(precision, recall),
        "neg_precision": neg_precision,
        "neg_recall": neg_recall,
        "neg_f1": _harmonic(neg_precision, neg_recall),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def reliability_bins(
    probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray, n_bins: int = 10
) -> dict[str, list[float]]:
    """Equal-width bins over [0, 1] (the last includes 1.0): mean confidence, mean label and count per bin.

    Labels may be soft (in [0, 1]); empty bins have NaN confidence and accuracy and count 0.
    """
    p = _scores(probs, "probs")
    y = np.asarray(labels, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"{len(p)} probs but labels of shape {y.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1 (got {n_bins})")
    if ((p < 0) | (p > 1)).any() or np.isnan(y).any() or ((y < 0) | (y > 1)).any():
        raise ValueError("probs and labels must lie in [0, 1]")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        acc = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": conf.tolist(),
        "accuracy": acc.tolist(),
        "count": count.astype(int).tolist(),
    }


def expected_calibration_error(
    probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray, n_bins: int = 10
) -> float:
    """Sum over bins of (bin share) x |mean label - mean confidence|; NaN for no data."""
    bins = reliability_bins(probs, labels, n_bins)
    count = np.asarray(bins["count"], dtype=float)
    if count.sum() == 0:
        return float("nan")
    keep = count > 0
    gap = np.abs(np.asarray(bins["accuracy"])[keep] - np.asarray(bins["confidence"])[keep])
    return float((count[keep] * gap).sum() / count.sum())


def within_problem_auroc(
    groups: Sequence[Sequence[tuple[float, Any]]], weight: str = "problem"
) -> CountedAUROC:
    """AUROC of each problem's own solutions (list of (score, correct) pairs), averaged over problems.

    Only problems with both a correct and a wrong solution count (``n``). ``weight="problem"``
    averages each problem's AUROC equally; ``"pairs"`` pools the within-problem pairs (problems
    with more correct-wrong pairs weigh more). Scores that only track difficulty score 0.5 here.
    """
    if weight not in ("problem", "pairs"):
        raise ValueError(f"weight must be 'problem' or 'pairs' (got {weight!r})")
    values: list[float] = []
    u_sum = pair_sum = 0.0
    for i, group in enumerate(groups):
        if len(group) == 0:
            continue
        arr = np.asarray([(float(s), float(c)) for s, c in group])
        try:
            u, pairs = _mann_whitney(_scores(arr[:, 0]), _binary(arr[:, 1], len(arr)))
        except ValueError as e:
            raise ValueError(f"problem {i}: {e}") from None
        if pairs:
            values.append(u / pairs)
            u_sum += u
            pair_sum += pairs
    if not values:
        return CountedAUROC(float("nan"), 0)
    value = float(np.mean(values)) if weight == "problem" else u_sum / pair_sum
    return CountedAUROC(value, len(values))


def _steps(
    step_scores: Sequence[Sequence[float]], step_labels: Sequence[Sequence[float | None]]
) -> Iterator[tuple[int, Sequence[float], Sequence[float | None]]]:
    if len(step_scores) != len(step_labels):
        raise ValueError(f"{len(step_scores)} score lists but {len(step_labels)} label lists")
    for i, (scores, labels) in enumerate(zip(step_scores, step_labels)):
        if len(scores) != len(labels):
            raise ValueError(f"solution {i}: {len(scores)} step scores but {len(labels)} labels")
        yield i, scores, labels


def step_auroc(
    step_scores: Sequence[Sequence[float]], step_labels: Sequence[Sequence[float | None]]
) -> CountedAUROC:
    """AUROC over every labelled step of every solution (``None`` labels skipped): the easy headline."""
    s: list[float] = []
    y: list[float] = []
    for _, scores, labels in _steps(step_scores, step_labels):
        for score, label in zip(scores, labels):
            if label is not None:
                s.append(score)
                y.append(label)
    return CountedAUROC(auroc(s, y) if s else float("nan"), len(s))


def local_auroc(
    step_scores: Sequence[Sequence[float]], step_labels: Sequence[Sequence[float | None]]
) -> CountedAUROC:
    """AUROC over the steps whose earlier steps are all labelled 1: can the PRM check one step?

    Per solution: steps up to and including the first 0 label. An unlabelled (``None``) step ends
    the solution's contribution (what follows has an unknown prefix). Labels must be 0/1/None.
    """
    s: list[float] = []
    y: list[float] = []
    for i, scores, labels in _steps(step_scores, step_labels):
        for score, label in zip(scores, labels):
            if label is None:
                break
            if label not in (0.0, 1.0):
                raise ValueError(f"solution {i}: label {label!r} is not 0/1 (binarise soft labels first)")
            s.append(score)
            y.append(label)
            if label == 0.0:
                break
    return CountedAUROC(auroc(s, y) if s else float("nan"), len(s))


def first_error_prediction(step_scores: Sequence[float] | np.ndarray, threshold: float) -> int:
    """Index of the first step scoring below ``threshold``, or -1 when none does."""
    below = np.flatnonzero(_scores(step_scores, "step_scores") < threshold)
    return int(below[0]) if len(below) else -1


def first_error_metrics(pred_indices: Sequence[int], true_indices: Sequence[int]) -> dict[str, float]:
    """ProcessBench's scores: exact-index accuracy on solutions with an error, accuracy on
    error-free ones (true -1, predicted -1), and their harmonic mean ``f1`` (NaN if a group is empty).
    """
    pred = np.asarray(pred_indices, dtype=int)
    true = np.asarray(true_indices, dtype=int)
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"{pred.shape} predictions but {true.shape} true indices")
    has_error = true != -1
    n_error, n_correct = int(has_error.sum()), int((~has_error).sum())
    error_acc = _ratio(int((pred[has_error] == true[has_error]).sum()), n_error)
    correct_acc = _ratio(int((pred[~has_error] == -1).sum()), n_correct)
    return {
        "error_accuracy": error_acc,
        "correct_accuracy": correct_acc,
        "f1": _harmonic(error_acc, correct_acc),
        "n_error": n_error,
        "n_correct": n_correct,
    }


def _prefix_minima(step_scores_list: Sequence[Sequence[float]]) -> np.ndarray:
    """Solutions x steps matrix of running minima, padded with +inf (a missing step never flags)."""
    width = max((len(s) for s in step_scores_list), default=0)
    pm = np.full((len(step_scores_list), max(width, 1)), np.inf)
    for i, scores in enumerate(step_scores_list):
        if len(scores):
            pm[i, : len(scores)] = np.minimum.accumulate(_scores(scores, f"step_scores[{i}]"))
    return pm


def choose_threshold(
    step_scores_list: Sequence[Sequence[float]],
    true_indices: Sequence[int],
    grid: Sequence[float] | np.ndarray = DEFAULT_GRID,
) -> float:
    """The grid threshold maximising first-error F1 on these (validation) solutions; the smallest on ties."""
    true = np.asarray(true_indices, dtype=int)
    if len(true) != len(step_scores_list):
        raise ValueError(f"{len(step_scores_list)} solutions but {len(true)} true indices")
    has_error = true != -1
    if has_error.all() or not has_error.any():
        raise ValueError("choosing a threshold needs solutions both with and without an error")
    pm = _prefix_minima(step_scores_list)
    best_t, best_f1 = float("nan"), -1.0
    for t in np.asarray(grid, dtype=float):
        flags = pm < t
        pred = np.where(flags.any(axis=1), flags.argmax(axis=1), -1)
        f1 = _harmonic(float((pred[has_error] == true[has_error]).mean()), float((pred[~has_error] == -1).mean()))
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t


def bootstrap_ci(values: Sequence[float] | np.ndarray, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over problems (``values``: one number per problem,
    e.g. 1/0 correctness or an expected accuracy); NaN values are dropped; (nan, nan) with none left."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))
