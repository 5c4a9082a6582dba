"""The one expand -> score -> select loop of test-time search; every strategy plugs into it.

State, per problem: the candidates of the current round. A ``Candidate`` (``search.candidates``,
shared with the strategies, re-exported here) is a partial (or finished) solution: the scorer's
``Prefix`` handle (steps so far and their PRM scores, plus the PRM's KV cache for incremental
scoring), the text so far, whether it is finished and why, its answer, and the policy tokens
spent on it. All problems of a batch advance together, so each round makes one batched generate
call per distinct sample count and one scorer call per depth.
A candidate that leaves the pool drops its handle's scorer state (a PRM's KV cache), so only the
open beams hold cache memory.

A round:

1. **EXPAND**: each planned ``Expansion`` (a parent candidate and one subtree id per sample) asks
   the ``Generator`` for ``n`` continuations of ``policy prompt + parent text``: one step (stop at
   ``fmt.step_stop``) or, for best-of-N and the last round, the rest of the solution (no stop).
   The new steps are what ``prm.steps.solution_steps`` finds in the candidate's whole text beyond
   its parent's steps, the same split as the PRM's training data: blank lines are not steps, and
   the answer step (from the answer marker / ``</reasoning>`` to the end) is the last step and
   finishes the candidate. When that answer line stopped before the answer itself (PRM800K's
   ``"# Answer\\n"`` + ``"\\n5"``, or a tagged ``"</reasoning>"``), the candidate is continued to
   the end of its solution in one more call; a sample that wrote only blank lines is continued
   with the step stop (up to ``MAX_CONTINUATIONS`` times) instead of spending a round. A sample
   ending with EOS finishes the candidate too; one cut by ``max_new_tokens`` ("length") cannot be
   continued sensibly and finishes as well.
2. **SCORE**: the new steps are scored with ``scorer.extend(parents, new_steps)``, so a PRM with
   a cache runs only the new tokens (a multi-step continuation is extended step by step).
3. **LOOKAHEAD** (strategies with ``rollout_steps > 0``): each unfinished new candidate is rolled
   out up to k more steps at ``rollout_temperature``; the rollout's steps are scored incrementally
   from the candidate's handle and the PRM score at the end of the rollout becomes the candidate's
   value for its new step. Only the first step is kept; rollout tokens count as generated compute.
   Greedy rollouts of candidates with the same text are run once (``share_rollouts``).
4. **SELECT**: finished candidates leave the pool for the final choice; the strategy's
   ``select`` sees the round's candidates of one problem and returns the next expansions (which
   unfinished candidates to keep and how many samples each gets, in which subtree). Equal values
   are ordered by each candidate's ``tiebreak``, a uniform draw from the loop's seeded RNG, never
   by position, so equal scores (0/1 oracle labels, duplicate texts) do not collapse beams onto one
   lineage and a run reproduces per seed.

The loop stops when no expansion is planned or at ``max_rounds``; with ``finish_at_limit`` the
last round writes every remaining beam to the end of its solution, otherwise the beams still
open are recorded as ``unfinished`` (reason ``round_limit``) and take no part in the final choice.

Scores: ``Candidate.step_scores`` are the PRM's scores of the candidate's own steps and
``score`` their aggregate (the scorer's ``aggregation``); ``values`` are what the search ranked
by (the same numbers, except that lookahead replaces a step's score by the score at the end of
its rollout) and ``value`` their aggregate. Selection uses ``value``; the final choice among
finished candidates uses ``score``:

- ``prm``: the highest aggregated score, answer or not, as prm-eval's best-of-N (ties: the earliest
  finished candidate);
- ``majority`` / ``weighted_majority``: ``prm.voting.vote`` over the answers (by count / by the
  sum of aggregated scores per equivalent answer; ties: the class seen first).

Finished candidates are kept in the order they finished (round, then position in the round).
Compute is counted per problem (``search.accounting``), the prompt tokens a generator served from
its prefix cache included (``cached_prompt_tokens``). Each run is one ``cache_scope`` of the
generator (``search.generation.base``): each round's prompts extend the previous round's, and a
backend that keeps their keys/values (the HF backend with ``reuse_cache``) prefills only the new
text; the cache starts the run empty and is dropped at its end.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prm.scoring.base import Prefix, Scorer, aggregate
from prm.steps import PLAIN, StepFormat, policy_prompt, solution_prefix, split_solution
from prm.voting import vote
from search.accounting import Compute, apportion
from search.candidates import FINAL_RULES, Candidate, Expansion
from search.generation.base import (
    FINISH_EOS, FINISH_LENGTH, Generation, Generator, cache_scope, cached_token_count, prompt_token_count,
)
from search.strategies import Strategy

ROUND_LIMIT = "round_limit"
MAX_CONTINUATIONS = 3  # blank-only samples continued at most this many times before they cost a round


class GenerationError(RuntimeError):
    """The generator failed on a batch (a runtime, value or I/O error inside ``generate``): an
    expected per-problem failure that ``prm-search`` isolates; programming errors are not wrapped."""


@dataclass(frozen=True)
class SearchSettings:
    """Sampling and stopping knobs of the loop (the strategy decides the shape of the tree).

    ``max_step_tokens``: the most tokens of one step (and of an answer-line completion);
    ``max_solution_tokens``: of a continuation to the end (best-of-N, the last round);
    ``max_rounds``: EXPAND rounds at most; ``finish_at_limit``: the last round writes every beam to
    the end; ``share_rollouts``: candidates with the same text share one greedy lookahead rollout
    (see ``SearchLoop._lookahead``; False rolls each out); ``seed``: generate call ``c`` of a batch
    uses a seed derived from (seed, c).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_step_tokens: int = 64
    max_solution_tokens: int = 512
    max_rounds: int = 40
    finish_at_limit: bool = True
    share_rollouts: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1 (got {self.max_rounds})")
        if self.max_step_tokens < 1 or self.max_solution_tokens < 1:
            raise ValueError(f"max_step_tokens and max_solution_tokens must be >= 1 "
                             f"(got {self.max_step_tokens}, {self.max_solution_tokens})")


@dataclass
class SearchResult:
    """One problem's search: finished candidates, beams left open at the round limit, the final
    choice of each rule (an index into ``finished``, None when nothing finished / no answer), compute."""

    problem: str
    finished: list[Candidate] = field(default_factory=list)
    unfinished: list[Candidate] = field(default_factory=list)
    chosen: dict[str, int | None] = field(default_factory=dict)
    compute: Compute = field(default_factory=Compute)
    rounds: int = 0

    def chosen_answer(self, rule: str) -> str | None:
        i = self.chosen.get(rule)
        return None if i is None else self.finished[i].answer


def final_choice(finished: Sequence[Candidate], rule: str) -> int | None:
    """Index of the candidate a final rule picks among finished candidates (see the module docstring)."""
    if rule not in FINAL_RULES:
        raise ValueError(f"unknown final rule {rule!r} (one of {', '.join(FINAL_RULES)})")
    if not finished:
        return None
    if rule == "prm":
        return max(range(len(finished)), key=lambda i: (finished[i].score, -i))
    weights = [c.score for c in finished] if rule == "weighted_majority" else None
    return vote([c.answer for c in finished], weights).index


def new_steps(before: str, after: str, fmt: StepFormat = PLAIN) -> tuple[list[str], bool]:
    """The steps ``after`` (a text extending ``before``) adds beyond ``before``'s steps, as
    ``prm.steps.solution_steps`` splits both, and whether ``after`` has its answer step."""
    old = split_solution(before, fmt).labelled_steps
    new = split_solution(after, fmt)
    return new.labelled_steps[len(old):], new.answer_step is not None


def default_answer(text: str, fmt: StepFormat) -> str | None:
    """The answer written in a solution (``prm.steps.split_solution``), None when it has none."""
    return split_solution(text, fmt).answer or None


def derive_seed(*parts: int | str) -> int:
    """A 62-bit seed from several integers/strings (stable across runs and platforms)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") >> 2


@dataclass
class _Piece:
    """One sampled continuation (plus its answer-line completion, if any)."""

    text: str
    reason: str
    tokens: int


class SearchLoop:
    """Runs one strategy on a batch of problems (see the module docstring); use ``search``."""

    def __init__(self, problems: Sequence[str], generator: Generator, scorer: Scorer, strategy: Strategy,
                 settings: SearchSettings, fmt: StepFormat = PLAIN,
                 answer_of: Callable[[int, str], str | None] | None = None) -> None:
        if isinstance(problems, str):
            raise TypeError("problems must be a sequence of strings, not one string")
        self.problems = list(problems)
        self.generator, self.scorer, self.strategy = generator, scorer, strategy
        self.settings, self.fmt = settings, fmt
        self.answer_of = answer_of or (lambda i, text: default_answer(text, fmt))
        self.prompts = [policy_prompt(p, fmt) for p in self.problems]
        self.results = [SearchResult(p) for p in self.problems]
        self.calls = 0
        self.ties = random.Random(derive_seed(settings.seed, "ties"))

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> list[SearchResult]:
        """Search every problem (see the module docstring), in one cache scope of the generator."""
        with cache_scope(self.generator):
            return self._run()

    def _run(self) -> list[SearchResult]:
        strategy, settings = self.strategy, self.settings
        plans = [Expansion(self._root(i), tuple(strategy.root())) for i in range(len(self.problems))]
        for rnd in range(1, settings.max_rounds + 1):
            plans = [e for e in plans if e.n > 0]
            if not plans:
                break
            last = rnd == settings.max_rounds
            for e in plans:
                self.results[e.parent.problem].rounds = rnd
            cands = self._expand(plans, rnd, to_end=strategy.to_end or (last and settings.finish_at_limit))
            if strategy.rollout_steps > 0 and not last:  # after the last round no value is needed
                self._lookahead([c for c in cands if not c.finished])
            by_problem: dict[int, list[Candidate]] = {}
            for c in cands:
                by_problem.setdefault(c.problem, []).append(c)
                if c.finished:
                    self.results[c.problem].finished.append(c.release())
            if last or strategy.to_end:
                for c in cands:
                    if not c.finished:
                        c.finish_reason = ROUND_LIMIT
                        self.results[c.problem].unfinished.append(c.release())
                break
            plans = []
            for i, group in by_problem.items():
                plans += self._checked(strategy.select(group), group)
        for res in self.results:
            res.chosen = {rule: final_choice(res.finished, rule) for rule in FINAL_RULES}
        return self.results

    @staticmethod
    def _checked(plans: list[Expansion], round_cands: list[Candidate]) -> list[Expansion]:
        allowed = {id(c) for c in round_cands if not c.finished}
        for e in plans:
            if id(e.parent) not in allowed:
                raise RuntimeError("a strategy may only expand unfinished candidates of the current round")
        return plans

    def _root(self, i: int) -> Candidate:
        before = self.scorer.stats.tokens_processed
        root = self.scorer.start([self.problems[i]])[0]  # one problem per call: exact PRM tokens
        self.results[i].compute.prm_tokens += self.scorer.stats.tokens_processed - before
        value = aggregate([], self.scorer.aggregation)
        return Candidate(i, 0, root, solution_prefix([], self.fmt), (), value, value)

    # -- EXPAND and SCORE ------------------------------------------------------------------------
    def _expand(self, plans: list[Expansion], rnd: int, to_end: bool) -> list[Candidate]:
        pieces = self._sample([(e.parent.problem, e.parent.text, e.n) for e in plans],
                              to_end=to_end, temperature=self.settings.temperature, rollout=False)
        drafts = [(e.parent, e.groups[k], p) for e, ps in zip(plans, pieces) for k, p in enumerate(ps)]
        for e in plans:
            self.results[e.parent.problem].compute.samples += e.n
        split = [new_steps(parent.text, parent.text + p.text, self.fmt) for parent, _, p in drafts]
        step_lists = [steps for steps, _ in split]
        handles = self._score_chains([d[0].prefix for d in drafts], step_lists, [d[0].problem for d in drafts])
        cands = []
        for (parent, group, piece), (steps, answered), handle in zip(drafts, split, handles):
            values = parent.values + handle.scores[len(parent.step_scores):]
            reason = self._terminal(answered, piece.reason)
            text = parent.text + piece.text
            cands.append(Candidate(
                problem=parent.problem, group=group, prefix=handle, text=text, values=values,
                value=aggregate(values, self.scorer.aggregation),
                score=aggregate(handle.scores, self.scorer.aggregation),
                generated_tokens=parent.generated_tokens + piece.tokens, rollout_tokens=parent.rollout_tokens,
                finished=reason is not None, finish_reason=reason,
                answer=self.answer_of(parent.problem, text) if reason is not None else None, round=rnd,
                tiebreak=self.ties.random(),
            ))
        return cands

    @staticmethod
    def _terminal(answered: bool, reason: str) -> str | None:
        """Why a continuation ends its candidate (None: it goes on)."""
        if answered:
            return "answer"
        if reason == FINISH_EOS:
            return "eos"
        if reason == FINISH_LENGTH:
            return "length"
        return None

    def _score_chains(self, parents: list[Prefix], step_lists: list[list[str]], problems: list[int]) -> list[Prefix]:
        """Extend each parent by its steps, one ``extend`` call per depth; PRM tokens per problem."""
        current = list(parents)
        sep = len(self.fmt.separator)
        for depth in range(max((len(s) for s in step_lists), default=0)):
            rows = [r for r, steps in enumerate(step_lists) if len(steps) > depth]
            before = self.scorer.stats.tokens_processed
            _, children = self.scorer.extend([current[r] for r in rows], [step_lists[r][depth] for r in rows])
            shares = apportion(self.scorer.stats.tokens_processed - before,
                               [len(step_lists[r][depth]) + sep for r in rows])
            for r, child, share in zip(rows, children, shares):
                current[r] = child
                self.results[problems[r]].compute.prm_tokens += share
        return current

    # -- LOOKAHEAD -------------------------------------------------------------------------------
    def _lookahead(self, cands: list[Candidate]) -> None:
        """Roll each candidate out up to k steps; its value for its new step = the score at the end.

        A greedy rollout (``rollout_temperature`` 0) is a function of the problem and the text
        alone, so with ``share_rollouts`` candidates of one problem with the same text (siblings
        that sampled the same step, beams that converged) share one rollout and its scoring: the
        values of rolling each out, for the compute of one. Compute counts what was run (the shared
        rollout once); each sharing candidate's ``rollout_tokens`` counts the rollout that valued it.
        """
        owner = list(range(len(cands)))
        if self.settings.share_rollouts and self.strategy.rollout_temperature == 0:
            first: dict[tuple[int, str], int] = {}
            owner = [first.setdefault((c.problem, c.text), i) for i, c in enumerate(cands)]
        reps = sorted(set(owner))
        texts = [cands[i].text for i in reps]
        steps: list[list[str]] = [[] for _ in reps]
        tokens = [0] * len(reps)
        live = list(range(len(reps)))
        for _ in range(self.strategy.rollout_steps):
            if not live:
                break
            pieces = self._sample([(cands[reps[r]].problem, texts[r], 1) for r in live], to_end=False,
                                  temperature=self.strategy.rollout_temperature, rollout=True)
            still = []
            for r, (piece,) in zip(live, pieces):
                new, answered = new_steps(texts[r], texts[r] + piece.text, self.fmt)
                texts[r] += piece.text
                steps[r] += new
                tokens[r] += piece.tokens
                if self._terminal(answered, piece.reason) is None:
                    still.append(r)
            live = still
        ends = self._score_chains([cands[i].prefix for i in reps], steps, [cands[i].problem for i in reps])
        slot = {i: r for r, i in enumerate(reps)}
        for c, i in zip(cands, owner):
            r = slot[i]
            c.rollout_tokens += tokens[r]
            if steps[r]:
                c.values = (*c.values[:-1], ends[r].scores[-1])
                c.value = aggregate(c.values, self.scorer.aggregation)

    # -- generation ------------------------------------------------------------------------------
    def _sample(self, requests: list[tuple[int, str, int]], *, to_end: bool, temperature: float,
                rollout: bool) -> list[list[_Piece]]:
        """Per (problem, text so far, n): n continuations (one step, or to the end), answers completed."""
        s = self.settings
        stop = () if to_end else (self.fmt.step_stop,)
        gens = self._generate(requests, stop=stop, temperature=temperature,
                              max_new_tokens=s.max_solution_tokens if to_end else s.max_step_tokens, rollout=rollout)
        pieces = [[_Piece(g.text, g.finish_reason, g.generated_tokens) for g in samples] for samples in gens]
        for _ in range(MAX_CONTINUATIONS):
            todo = [(r, k, kind) for r, ps in enumerate(pieces) for k, p in enumerate(ps)
                    if (kind := self._unfinished_piece(requests[r][1], p)) is not None]
            if not todo:
                break
            for kind, stops, limit in (("answer", (), s.max_step_tokens), ("blank", stop, s.max_step_tokens)):
                rows = [(r, k) for r, k, kd in todo if kd == kind]
                if not rows:
                    continue
                more = self._generate([(requests[r][0], requests[r][1] + pieces[r][k].text, 1) for r, k in rows],
                                      stop=stops, temperature=temperature, max_new_tokens=limit, rollout=rollout)
                for (r, k), (g,) in zip(rows, more):
                    p = pieces[r][k]
                    p.text, p.reason, p.tokens = p.text + g.text, g.finish_reason, p.tokens + g.generated_tokens
        return pieces

    def _unfinished_piece(self, before: str, piece: _Piece) -> str | None:
        """What a stopped sample still lacks: ``answer`` (its answer step stopped before the answer
        itself), ``blank`` (it added no step, only blank lines), else None."""
        if piece.reason in (FINISH_EOS, FINISH_LENGTH):
            return None
        parsed = split_solution(before + piece.text, self.fmt)  # parsed once: steps and answer
        if parsed.answer_step is not None:
            return None if parsed.answer else "answer"
        added = len(parsed.labelled_steps) > len(split_solution(before, self.fmt).labelled_steps)
        return None if added else "blank"

    def _generate(self, requests: list[tuple[int, str, int]], *, stop: tuple[str, ...], temperature: float,
                  max_new_tokens: int, rollout: bool) -> list[list[Generation]]:
        """One generate call per distinct n (in order of first appearance); tokens counted per problem."""
        out: list[list[Generation]] = [[] for _ in requests]
        for n in dict.fromkeys(req[2] for req in requests):
            rows = [r for r, req in enumerate(requests) if req[2] == n]
            seed = derive_seed(self.settings.seed, self.calls)
            self.calls += 1
            try:
                gens = self.generator.generate([self.prompts[requests[r][0]] + requests[r][1] for r in rows], n=n,
                                               temperature=temperature, top_p=self.settings.top_p,
                                               max_new_tokens=max_new_tokens, stop=stop, seed=seed)
            except (RuntimeError, ValueError, OSError) as e:
                raise GenerationError(f"generation failed: {type(e).__name__}: {e}") from e
            if len(gens) != len(rows) or any(len(g) != n for g in gens):
                raise RuntimeError(f"the generator returned {[len(g) for g in gens]} samples for "
                                   f"{len(rows)} prompts x n={n}")
            for r, samples in zip(rows, gens):
                out[r] = samples
                c = self.results[requests[r][0]].compute
                c.prompt_tokens += prompt_token_count(samples)
                c.cached_prompt_tokens += cached_token_count(samples)
                spent = sum(g.generated_tokens for g in samples)
                c.generated_tokens += spent
                if rollout:
                    c.rollout_tokens += spent
        return out


def search(problems: Sequence[str], generator: Generator, scorer: Scorer, strategy: Strategy,
           settings: SearchSettings | None = None, fmt: StepFormat = PLAIN,
           answer_of: Callable[[int, str], str | None] | None = None) -> list[SearchResult]:
    """Run ``strategy`` on a batch of problems; one ``SearchResult`` per problem, in order.

    ``answer_of(problem index, solution text)``: the answer a finished solution gives (default:
    ``prm.steps.split_solution``'s answer).
    """
    return SearchLoop(problems, generator, scorer, strategy, settings or SearchSettings(), fmt, answer_of).run()


__all__ = [
    "FINAL_RULES", "MAX_CONTINUATIONS", "ROUND_LIMIT", "Candidate", "GenerationError", "Expansion", "SearchLoop", "SearchResult", "SearchSettings",
    "default_answer", "derive_seed", "final_choice", "new_steps", "search",
]
