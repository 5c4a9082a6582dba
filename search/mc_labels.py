"""Monte-Carlo step labels (Math-Shepherd, Wang et al. 2024) and their quality against exact labels.

**Labels.** For every step prefix of a sampled solution (the solution's first ``j`` labelled steps,
``j = 1 .. len(steps)``, as ``prm.steps.solution_steps`` splits it) the policy writes ``k``
completions to the end from ``policy_prompt(task.prompt) + solution_prefix(steps[:j])``; each
completion is graded by the world, ``world.grade(task, solution_prefix(steps[:j]) + completion)``,
so any world that grades answers works (problem files included). The hard label is 1.0 when any
completion is right (Math-Shepherd's HE), the soft label the fraction right (SE).

- **The answer step** (the last labelled step of a finished solution) needs no rollouts: the
  solution is complete there, so its hard and soft label are both whether that solution's own
  answer is right (``correct``, graded on the solution's text). A solution cut off before its
  answer has no answer step: every one of its steps is rolled out, the last one included.
- **Batching.** One ``generate`` call per depth ``j``, with ``n=k``: every distinct prefix of
  that depth over all solutions of a chunk, so each prefix is prefilled once for its ``k``
  samples and prompts of one call have similar lengths (little padding). Identical prefixes (the
  same problem and the same first ``j`` steps, common among a problem's samples) are rolled out
  once and share their completions; their tokens are charged to the first occurrence in chunk
  order (problem, then sample), and the others are marked ``mc_reused``.
- **Determinism.** Completions are sampled without stop strings, at ``mc.temperature`` /
  ``mc.top_p``, up to ``mc.max_new_tokens``, with the seed ``mc_seed(seed, chunk, depth)``: the
  same chunk of solutions gives the same labels, so a resumed ``prm-sample`` equals an
  uninterrupted one.

**Output** (``mc_label``): the stepwise examples with ``labels`` = the hard or the soft labels
(``mc.label``) and extra keys, one entry per step: ``mc_hard``, ``mc_soft``, ``mc_right`` (0/1 per
completion, ``[]`` for the answer step), ``mc_completion_tokens`` (generated tokens per completion),
``mc_generated_tokens`` and ``mc_prompt_tokens`` (what labelling this step spent: 0 for the answer
step and for reused prefixes, so sums over a file are the policy compute exactly), ``mc_reused``;
and ``mc_k``, ``mc_label``, and ``exact_labels`` (the world's exact labels, when it has them).

**Quality** (``label_quality``): over rolled-out steps with exact labels, for k' = 1, 2, 4, .. k
(the first k' completions of each prefix): accuracy and AUROC of hard and soft labels, the soft
labels' calibration (ECE), and the false positives a right answer reached through a wrong step
gives (exact 0, hard 1), each with the policy tokens spent per label at that k'.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prm.data.stepwise import StepwiseExample
from prm.evaluation.metrics import accuracy_f1, auroc, expected_calibration_error
from prm.steps import is_answer_step, policy_prompt, solution_prefix
from prm.worlds import Task, World
from search.generation.base import Generator, prompt_token_count

LABELS = ("hard", "soft")


@dataclass(frozen=True)
class MCSettings:
    """How Monte-Carlo labels are made (``prm-sample labeller=mc``, the ``mc`` config block)."""

    k: int = 8  # completions per step prefix
    label: str = "hard"  # which label goes into ``labels``: hard (any right) | soft (fraction right)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64  # per completion (to the end of the solution)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"mc.k must be >= 1 (got {self.k})")
        if self.label not in LABELS:
            raise ValueError(f"mc.label must be hard or soft (got {self.label!r})")
        if self.temperature <= 0:
            raise ValueError(f"mc.temperature must be > 0: k greedy completions are one completion "
                             f"(got {self.temperature})")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MCSettings:
        known = ("k", "label", "temperature", "top_p", "max_new_tokens")
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ValueError(f"unknown mc settings {unknown} (known: {', '.join(known)})")
        return cls(**{k: cfg[k] for k in known if k in cfg})


def mc_seed(seed: int, chunk: int, depth: int) -> int:
    """The sampling seed of one labelling call: a fixed hash of (seed, chunk, depth), below 2**31."""
    digest = hashlib.blake2b(f"mc/{seed}/{chunk}/{depth}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31


@dataclass
class _Rollouts:
    right: list[int]
    completion_tokens: list[int]
    prompt_tokens: int


def mc_label(world: World, generator: Generator, tasks: Sequence[Task],
             examples: Sequence[Sequence[StepwiseExample]], settings: MCSettings, *, seed: int = 0,
             chunk: int = 0) -> list[list[StepwiseExample]]:
    """Monte-Carlo labels for the solutions of one chunk (see the module docstring).

    ``examples[i]`` are the labelled samples of ``tasks[i]`` as ``prm.worlds.label_example`` makes
    them (steps in ``completions``, the world's exact labels or None in ``labels``, ``correct``);
    returns new examples in the same order with the MC labels and keys.
    """
    if len(tasks) != len(examples):
        raise ValueError(f"{len(tasks)} tasks but {len(examples)} lists of examples")
    fmt = world.fmt
    rolled: dict[tuple[int, int], int] = {}  # (task, sample) -> the deepest prefix to roll out (all but an answer step)
    for i, exs in enumerate(examples):
        for s, ex in enumerate(exs):
            steps = ex.completions
            rolled[i, s] = len(steps) - (1 if steps and is_answer_step(steps[-1], fmt) else 0)
    results: dict[tuple[int, int, int], tuple[_Rollouts, bool]] = {}  # (task, sample, depth) -> rollouts, charged
    for depth in range(1, 1 + max(rolled.values(), default=0)):
        prompts: dict[str, int] = {}  # prompt -> index in the call
        where: list[tuple[int, int, str]] = []  # (task, sample, prompt)
        heads: list[str] = []  # the solution prefix of each distinct prompt
        owners: list[int] = []  # the task of each distinct prompt
        for (i, s), deepest in rolled.items():
            if depth > deepest:
                continue
            head = solution_prefix(examples[i][s].completions[:depth], fmt)
            prompt = policy_prompt(tasks[i].prompt, fmt) + head
            if prompt not in prompts:
                prompts[prompt] = len(heads)
                heads.append(head)
                owners.append(i)
            where.append((i, s, prompt))
        gens = generator.generate(list(prompts), n=settings.k, temperature=settings.temperature,
                                  top_p=settings.top_p, max_new_tokens=settings.max_new_tokens,
                                  seed=mc_seed(seed, chunk, depth))
        outs = [_Rollouts([int(world.grade(tasks[owner], head + g.text)) for g in samples],
                          [g.generated_tokens for g in samples], prompt_token_count(samples))
                for owner, head, samples in zip(owners, heads, gens, strict=True)]
        charged: set[str] = set()
        for i, s, prompt in where:
            results[i, s, depth] = (outs[prompts[prompt]], prompt not in charged)
            charged.add(prompt)
    return [[_labelled(ex, [results.get((i, s, j + 1)) for j in range(len(ex.completions))], world, settings)
             for s, ex in enumerate(exs)] for i, exs in enumerate(examples)]


def _labelled(ex: StepwiseExample, per_step: list[tuple[_Rollouts, bool] | None], world: World,
              settings: MCSettings) -> StepwiseExample:
    """One example with its MC labels; a step without rollouts is the answer step (label: ``correct``)."""
    correct = float(bool(ex.extra["correct"]))
    hard, soft, right, tokens, gen_spent, prompt_spent, reused = [], [], [], [], [], [], []
    for step in per_step:
        if step is None:
            hard.append(correct)
            soft.append(correct)
            right.append([])
            tokens.append([])
            gen_spent.append(0)
            prompt_spent.append(0)
            reused.append(False)
            continue
        r, charged = step
        hard.append(float(any(r.right)))
        soft.append(sum(r.right) / len(r.right))
        right.append(list(r.right))
        tokens.append(list(r.completion_tokens))
        gen_spent.append(sum(r.completion_tokens) if charged else 0)
        prompt_spent.append(r.prompt_tokens if charged else 0)
        reused.append(not charged)
    extra = {k: v for k, v in ex.extra.items() if k != "exact_labels"}
    if world.exact_labels:
        extra["exact_labels"] = list(ex.labels)
    extra.update(mc_k=settings.k, mc_label=settings.label, mc_hard=hard, mc_soft=soft, mc_right=right,
                 mc_completion_tokens=tokens, mc_generated_tokens=gen_spent, mc_prompt_tokens=prompt_spent,
                 mc_reused=reused)
    return StepwiseExample(ex.prompt, list(ex.completions), list(hard if settings.label == "hard" else soft), extra)


# ---------------------------------------------------------------------------------------- quality
def _record(ex: StepwiseExample | Mapping[str, Any]) -> Mapping[str, Any]:
    return ex.to_dict() if isinstance(ex, StepwiseExample) else ex


def mc_compute(examples: Sequence[StepwiseExample | Mapping[str, Any]], k: int | None = None) -> dict[str, float]:
    """Policy tokens spent on MC labels (at ``k`` completions per prefix: the first ``k`` of each;
    None: all), per label (every labelled step, answer steps included) and per rolled-out label."""
    generated = prompt = labels = rollout_labels = 0
    for rec in map(_record, examples):
        labels += len(rec["mc_right"])
        for right, toks, gen, ptok, reused in zip(rec["mc_right"], rec["mc_completion_tokens"],
                                                  rec["mc_generated_tokens"], rec["mc_prompt_tokens"],
                                                  rec["mc_reused"], strict=True):
            if not right:
                continue
            rollout_labels += 1
            if not reused:
                generated += gen if k is None else sum(toks[:k])
                prompt += ptok
    total = generated + prompt
    return {"labels": labels, "rollout_labels": rollout_labels, "generated_tokens": generated,
            "prompt_tokens": prompt, "policy_tokens": total,
            "tokens_per_label": total / labels if labels else float("nan"),
            "tokens_per_rollout_label": total / rollout_labels if rollout_labels else float("nan")}


def _ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval over problems of sum(num) / sum(den) (one entry per problem)."""
    keep = den > 0
    num, den = num[keep], den[keep]
    if len(den) == 0:
        return [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, len(den), size=(n_boot, len(den)))
    ratios = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1)
    return [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))]


def default_ks(k: int) -> list[int]:
    """1, 2, 4, ... up to ``k``, and ``k`` itself."""
    ks = [1 << e for e in range(k.bit_length()) if 1 << e <= k]
    return ks if ks[-1] == k else [*ks, k]


def label_quality(examples: Sequence[StepwiseExample | Mapping[str, Any]], ks: Sequence[int] | None = None,
                  n_bins: int = 10) -> dict[str, Any]:
    """MC labels against exact labels, as a function of k (see the module docstring).

    Over the rolled-out steps that have exact labels (the answer step is reported apart: its MC
    label is the answer's correctness whatever k), for each k' in ``ks`` (default 1, 2, 4, .. k)
    from the first k' completions of each prefix:

    - ``hard_accuracy``, ``hard_auroc``; ``soft_accuracy`` (soft >= 0.5), ``soft_auroc``, ``soft_ece``;
    - ``false_positive_rate``: P(hard = 1 | exact = 0), a right answer reached from a wrong step;
      ``false_positives`` (the count) and ``false_positive_share`` = P(exact = 0 | hard = 1);
      ``false_negative_rate``: P(hard = 0 | exact = 1), a right step whose completions all failed;
    - ``ci95``: 95% bootstrap intervals over problems (``id``) of the accuracies and the FP rate;
    - the cost at k' (``mc_compute``): policy tokens per label, over all examples.

    Undefined numbers (no negatives, one class) are NaN.
    """
    recs = [_record(ex) for ex in examples]
    if not recs:
        raise ValueError("no examples to measure")
    k = min(int(r["mc_k"]) for r in recs)
    ks = default_ks(k) if ks is None else [int(x) for x in ks]
    if any(not 1 <= x <= k for x in ks):
        raise ValueError(f"ks must lie in 1..{k} (the completions each prefix has); got {list(ks)}")
    rows: list[tuple[str, float, list[int]]] = []  # (problem, exact, outcomes) of rolled-out steps
    answer_rows: list[tuple[float, float]] = []  # (exact, mc) of answer steps
    for r in recs:
        exact = r.get("exact_labels")
        if exact is None:
            continue
        pid = str(r.get("id", r["prompt"]))
        for e, right, hard in zip(exact, r["mc_right"], r["mc_hard"], strict=True):
            if e is None:
                continue
            if right:
                rows.append((pid, float(e), [int(x) for x in right]))
            else:
                answer_rows.append((float(e), float(hard)))
    out: dict[str, Any] = {"k": k, "steps": len(rows), "answer_steps": _answer_quality(answer_rows), "by_k": {}}
    if not rows:
        return out
    problems, pindex = np.unique([p for p, _, _ in rows], return_inverse=True)
    y = np.array([e for _, e, _ in rows])
    out["exact_positive_rate"] = float(y.mean())

    def per_problem(v: np.ndarray) -> np.ndarray:
        return np.bincount(pindex, weights=np.asarray(v, dtype=float), minlength=len(problems))

    for kk in ks:
        soft = np.array([sum(o[:kk]) / kk for _, _, o in rows])
        hard = (soft > 0).astype(float)
        neg, pos = y == 0, y == 1
        fp = int((hard[neg] == 1).sum())
        row = {
            "hard_accuracy": float((hard == y).mean()),
            "hard_auroc": auroc(hard, y),
            "soft_accuracy": accuracy_f1(soft, y, 0.5)["accuracy"],
            "soft_auroc": auroc(soft, y),
            "soft_ece": expected_calibration_error(soft, y, n_bins),
            "false_positives": fp,
            "false_positive_rate": fp / int(neg.sum()) if neg.any() else float("nan"),
            "false_positive_share": fp / int(hard.sum()) if hard.any() else float("nan"),
            "false_negative_rate": float((hard[pos] == 0).mean()) if pos.any() else float("nan"),
            "ci95": {
                "hard_accuracy": _ratio_ci(per_problem((hard == y).astype(float)), per_problem(np.ones_like(y))),
                "soft_accuracy": _ratio_ci(per_problem(((soft >= 0.5) == (y == 1)).astype(float)),
                                           per_problem(np.ones_like(y))),
                "false_positive_rate": _ratio_ci(per_problem((hard == 1) & neg), per_problem(neg.astype(float))),
            },
        }
        cost = mc_compute(recs, kk)
        row.update(tokens_per_label=cost["tokens_per_label"], tokens_per_rollout_label=cost["tokens_per_rollout_label"],
                   policy_tokens=cost["policy_tokens"])
        out["by_k"][kk] = row
    return out


def _answer_quality(rows: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Answer steps: their MC label (the answer's correctness) against the exact one (every step right)."""
    if not rows:
        return {"n": 0, "accuracy": float("nan"), "false_positive_rate": float("nan")}
    exact = np.array([e for e, _ in rows])
    mc = np.array([m for _, m in rows])
    neg = exact == 0
    return {"n": len(rows), "accuracy": float((exact == mc).mean()),
            "false_positive_rate": float((mc[neg] == 1).mean()) if neg.any() else float("nan")}


def format_quality(q: Mapping[str, Any]) -> str:
    """The label-quality table: one row per k."""
    head = (f"MC labels vs exact labels: {q['steps']} rolled-out steps "
            f"({q.get('exact_positive_rate', float('nan')):.3f} exact positives); answer steps: "
            f"{q['answer_steps']['n']}, accuracy {q['answer_steps']['accuracy']:.3f}, "
            f"false positives {q['answer_steps']['false_positive_rate']:.3f} (right answer, wrong step)")
    cols = ("   k  hard_acc (95% CI)      hard_auroc  soft_acc  soft_auroc  soft_ece  FP_rate (95% CI)"
            "       FP_share  FN_rate  tokens/label")
    lines = [head, cols]
    for kk, r in q["by_k"].items():
        ci, fci = r["ci95"]["hard_accuracy"], r["ci95"]["false_positive_rate"]
        lines.append(f"{kk:>4}  {r['hard_accuracy']:.3f} [{ci[0]:.3f},{ci[1]:.3f}]  {r['hard_auroc']:>10.3f}  "
                     f"{r['soft_accuracy']:>8.3f}  {r['soft_auroc']:>10.3f}  {r['soft_ece']:>8.3f}  "
                     f"{r['false_positive_rate']:.3f} [{fci[0]:.3f},{fci[1]:.3f}]  {r['false_positive_share']:>8.3f}  "
                     f"{r['false_negative_rate']:>7.3f}  {r['tokens_per_label']:>12.1f}")
    return "\n".join(lines)


__all__ = ["LABELS", "MCSettings", "default_ks", "format_quality", "label_quality", "mc_compute", "mc_label", "mc_seed"]
