"""Rewards as graders: every grader on hand-written arithmetic solutions, with hand-computed values.

The problem ``Q: 7+5*3-4`` (mod 10) has the steps ``7+5=2``, ``2*3=6``, ``6-4=2`` and the answer 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prm.scoring.base import ScorerStats
from prm.steps import solution_steps, step_end_chars
from prm.worlds import Task, World, make_world
from rl.rewards import (
    FormatReward,
    FunctionReward,
    OracleProcessReward,
    OutcomeReward,
    ProcessReward,
    RankedListReward,
    Reward,
    Rollout,
    as_trl_reward,
    make_rewards,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "reward"
PROMPT = "Q: 7+5*3-4\n"
OTHER = "Q: 3+4\n"  # 3+4=7, answer 7

RIGHT = "<reasoning>\n7+5=2\n2*3=6\n6-4=2\n</reasoning>\n<answer>2</answer>"
WRONG = "<reasoning>\n7+5=2\n2*3=6\n6-4=3\n</reasoning>\n<answer>3</answer>"
PREMATURE = "<reasoning>\n7+5=2\n</reasoning>\n<answer>2</answer>"  # right by luck: 2 is the answer
NO_ANSWER = "<reasoning>\n7+5=2\n2*3=6\n"  # cut off (or stopped) before answering
MALFORMED = "7+5=2\n2*3=6\n6-4=2\n<answer>2</answer>"  # no reasoning tags
EMPTY = ""
OTHER_RIGHT = "<reasoning>\n3+4=7\n</reasoning>\n<answer>7</answer>"


@pytest.fixture(scope="module")
def world() -> World:
    return make_world({"source": "arith", "format": "tagged"})


def rollouts(world: World, *completions: str, prompt: str = PROMPT) -> list[Rollout]:
    return [Rollout(world.task(prompt), c, world.fmt) for c in completions]


def test_rollout_steps_and_answer_step(world: World) -> None:
    right, cut, empty = rollouts(world, RIGHT, NO_ANSWER, EMPTY)
    assert right.steps == solution_steps(RIGHT, world.fmt)
    assert right.steps == ["7+5=2", "2*3=6", "6-4=2", "</reasoning>\n<answer>2</answer>"]
    assert right.has_answer_step
    assert cut.steps == ["7+5=2", "2*3=6"] and not cut.has_answer_step
    assert empty.steps == [] and not empty.has_answer_step


# ------------------------------------------------------------------ outcome and format


def test_outcome_reward(world: World) -> None:
    reward = OutcomeReward(world)
    batch = rollouts(world, RIGHT, WRONG, PREMATURE, NO_ANSWER, MALFORMED, EMPTY)
    values = reward(batch)
    assert values == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert isinstance(reward, Reward) and reward.kind == "outcome"
    assert reward.metrics(batch, values) == {"outcome/mean": 0.5, "outcome/ungraded": 0.0}


def test_format_reward_tagged(world: World) -> None:
    texts = [
        RIGHT, WRONG, PREMATURE,                                  # well-formed: 1.0 whatever the answer
        "  \n" + RIGHT + "\n\n",                                  # whitespace around: still well-formed
        NO_ANSWER, MALFORMED, EMPTY,                              # no closed reasoning: 0.0
        "<reasoning>\n\n</reasoning>\n<answer>2</answer>",        # no reasoning step: 0.0
        "<reasoning>\n7+5=2\n<answer>2</answer>\n</reasoning>\n<answer>2</answer>",  # a tag inside: 0.0
        "<reasoning>\n7+5=2\n</reasoning>\n<answer> </answer>",   # empty answer: partial
        "<reasoning>\n7+5=2\n</reasoning>\n",                     # no answer: partial
        RIGHT + "\nthanks",                                       # text after </answer>: partial
        RIGHT + "<answer>3</answer>",                             # two answers: partial
        "<reasoning>\n7+5=2\n</reasoning>\n<answer>2",            # unclosed answer: partial
    ]
    batch = rollouts(world, *texts)
    assert FormatReward()(batch) == [1.0] * 4 + [0.0] * 5 + [0.0] * 5
    assert FormatReward(partial=0.5)(batch) == [1.0] * 4 + [0.0] * 5 + [0.5] * 5
    assert FormatReward(fmt_style="plain")(rollouts(world, RIGHT)) == [0.0]  # no "# Answer" line


def test_format_reward_plain() -> None:
    world = make_world({"source": "arith"})  # plain: "# Answer: N"
    batch = rollouts(world, "7+5=2\n2*3=6\n6-4=2\n# Answer: 2", "7+5=2\n# Answer: 9", "# Answer:", "7+5=2\n2*3=6", "")
    assert FormatReward()(batch) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert FormatReward(fmt_style="plain", partial=0.5)(batch) == [1.0, 1.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="fmt_style"):
        FormatReward(fmt_style="xml")  # type: ignore[arg-type]


# ------------------------------------------------------------------ process: a scripted scorer and the oracle


class FakeScorer:
    """Scores each step from a fixed table (0.5 for anything else, e.g. answer steps); records its calls."""

    TABLE: ClassVar[dict[str, float]] = {"7+5=2": 0.9, "2*3=6": 0.8, "6-4=2": 0.7, "6-4=3": 0.6, "3+4=7": 0.4}

    def __init__(self, nan_for: str | None = None, drop_last: bool = False) -> None:
        self.stats = ScorerStats()
        self.aggregation = "min"
        self.calls: list[tuple[list[str], list[list[list[str]]]]] = []
        self.nan_for = nan_for
        self.drop_last = drop_last

    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        self.calls.append((list(problems), [[list(s) for s in c] for c in candidates]))
        out = [[[math.nan if s == self.nan_for else self.TABLE.get(s, 0.5) for s in steps] for steps in cands]
               for cands in candidates]
        return [[row[:-1] for row in rows] for rows in out] if self.drop_last else out

    def start(self, problems: Sequence[str]) -> list[Any]:
        raise NotImplementedError

    def extend(self, parents: Sequence[Any], new_steps: Sequence[str]) -> tuple[list[float], list[Any]]:
        raise NotImplementedError


def test_process_reward_batches_by_problem_and_scores_unfinished_as_failure(world: World) -> None:
    batch = [*rollouts(world, RIGHT, NO_ANSWER), *rollouts(world, OTHER_RIGHT, prompt=OTHER),
             *rollouts(world, EMPTY, PREMATURE)]
    scorer = FakeScorer()
    reward = ProcessReward(scorer)
    values = reward(batch)
    assert values == [[0.9, 0.8, 0.7, 0.5], [0.9, 0.0], [0.4, 0.5], [], [0.9, 0.5]]
    assert scorer.calls == [([PROMPT, OTHER], [[batch[0].steps, batch[1].steps, batch[4].steps], [batch[2].steps]])]
    for r, v in zip(batch, values):  # one value per step end: the caller's token positions line up
        assert v is not None and len(v) == len(step_end_chars(r.completion, world.fmt)) == len(r.steps)
    assert reward.metrics(batch, values) == pytest.approx({
        "process/mean": (2.9 / 4 + 0.45 + 0.45 + 0.7) / 4,  # per-sample mean step reward, samples with steps
        "process/min": (0.5 + 0.0 + 0.4 + 0.5) / 4,
        "process/steps": (4 + 2 + 2 + 0 + 2) / 5,
        "process/unfinished": 2 / 5,                       # NO_ANSWER and EMPTY
        "process/ungraded": 0.0,
    })
    assert ProcessReward(FakeScorer(), unfinished=None)(batch)[1] == [0.9, 0.8]  # plain PRM scores
    assert ProcessReward(FakeScorer(), unfinished=-1.0)(batch)[1] == [0.9, -1.0]


def test_process_reward_ungraded_and_scorer_mistakes(world: World) -> None:
    batch = rollouts(world, RIGHT, WRONG, EMPTY)
    reward = ProcessReward(FakeScorer(nan_for="6-4=3"), name="prm")
    values = reward(batch)
    assert values[0] == [0.9, 0.8, 0.7, 0.5] and values[2] == []
    assert values[1] is not None and math.isnan(values[1][2])
    metrics = reward.metrics(batch, values)
    assert metrics["prm/ungraded"] == 1.0 and metrics["prm/mean"] == pytest.approx(2.9 / 4)
    with pytest.raises(ValueError, match="3 scores for 4 steps"):
        ProcessReward(FakeScorer(drop_last=True))(batch)
    scorer = FakeScorer()
    assert ProcessReward(scorer)(rollouts(world, EMPTY, EMPTY)) == [[], []] and scorer.calls == []


def test_oracle_process_reward_is_the_worlds_labels(world: World) -> None:
    batch = rollouts(world, RIGHT, WRONG, PREMATURE, NO_ANSWER, MALFORMED, EMPTY)
    plain = OracleProcessReward(world, unfinished=None)(batch)
    assert plain == [world.step_labels(r.task, r.steps) for r in batch]
    assert plain == [[1.0] * 4, [1.0, 1.0, 0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0] * 4, []]
    reward = OracleProcessReward(world)
    values = reward(batch)
    assert values[3] == [1.0, 0.0]  # two right steps, no answer: a failure
    assert values[:3] == plain[:3] and values[4:] == plain[4:]
    assert reward.metrics(batch, values)["oracle/min"] == pytest.approx(2 / 5)  # RIGHT, MALFORMED of 5 with steps


def file_world(tmp_path: Path) -> World:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"problem": "What is 1+1?", "answer": "2"}) + "\n")
    return make_world({"source": "problems", "format": "tagged"}, problems=path)


def test_oracle_on_a_world_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'problems' world has none"):
        OracleProcessReward(file_world(tmp_path))
    with pytest.raises(ValueError, match="reward 'oracle'.*'problems' world has none"):
        make_rewards(OmegaConf.load(CONF / "oracle.yaml"), world=file_world(tmp_path))


# ------------------------------------------------------------------ ranked list


def answer_list(items: str) -> str:
    return f"<reasoning>\n7+5=2\n</reasoning>\n<answer>{items}</answer>"


def test_ranked_list_credit_and_top_k(world: World) -> None:
    texts = [answer_list("2, 5, 7"), answer_list("5,2,7"), answer_list("1, 3, 4, 02"), answer_list("1, 3"), NO_ANSWER]
    batch = rollouts(world, *texts)
    reciprocal = RankedListReward(world)
    assert [reciprocal.rank(r) for r in batch] == [1, 2, 4, None, None]
    assert reciprocal(batch) == [1.0, 0.5, 0.25, 0.0, 0.0]
    assert RankedListReward(world, schedule="linear", k=3)(batch) == pytest.approx([1.0, 2 / 3, 0.0, 0.0, 0.0])
    assert RankedListReward(world, schedule=[1.0, 0.5, 0.25])(batch) == [1.0, 0.5, 0.0, 0.0, 0.0]
    values = reciprocal(batch)
    assert reciprocal.metrics(batch, values) == pytest.approx({
        "ranked_list/mean": 1.75 / 5, "ranked_list/ungraded": 0.0,
        "ranked_list/top1": 1 / 5, "ranked_list/top3": 2 / 5, "ranked_list/top_max": 3 / 5,
    })
    newline = rollouts(world, answer_list("5\n2"), answer_list("5; 2"))
    assert RankedListReward(world)(newline) == [0.5, 0.0]  # "5; 2" is one item with the default separator
    assert RankedListReward(world, separator=";")(newline) == [0.5, 0.5]
    with pytest.raises(ValueError, match="schedule"):
        RankedListReward(world, schedule="harmonic")


def test_ranked_list_without_a_world_reads_the_answer_tag(world: World) -> None:
    task = Task("d1", "Which disease?", "cystic fibrosis")
    batch = [Rollout(task, f"<reasoning>\nthink\n</reasoning>\n<answer>{a}</answer>", world.fmt)
             for a in ("Marfan syndrome, Cystic Fibrosis", "cystic fibrosis", "gout")]
    assert RankedListReward(schedule=[1.0, 0.5])(batch) == [0.5, 1.0, 0.0]


# ------------------------------------------------------------------ user functions with TRL's signature

SEEN: dict[str, Any] = {}


def answer_tag_reward(prompts: list[str], completions: list[str], answer: list[str],
                      **kwargs: Any) -> list[float | None]:
    """A TRL-style reward: 1.0 for the right answer tag, None (ungraded) without any answer tag."""
    SEEN.update(prompts=prompts, answer=answer, **kwargs)
    return [None if "<answer>" not in c else float(f"<answer>{a}</answer>" in c) for c, a in zip(completions, answer)]


def test_function_reward_with_trl_signature(world: World) -> None:
    batch = rollouts(world, RIGHT, WRONG, NO_ANSWER)
    for function in (answer_tag_reward, f"{__name__}:answer_tag_reward", f"{__name__}.answer_tag_reward"):
        reward = FunctionReward(function)
        values = reward(batch)
        assert values == [1.0, 0.0, None]
        assert reward.name == "answer_tag_reward" and reward.kind == "outcome"
        assert reward.metrics(batch, values) == {"answer_tag_reward/mean": 0.5, "answer_tag_reward/ungraded": 1.0}
    assert SEEN["prompts"] == [PROMPT] * 3 and SEEN["answer"] == ["2"] * 3 and SEEN["task_id"] == [batch[0].task.id] * 3
    assert SEEN["steps"] == [r.steps for r in batch]


def test_function_reward_checks_what_the_function_returns(world: World) -> None:
    batch = rollouts(world, RIGHT, NO_ANSWER)
    def short(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [1.0]

    with pytest.raises(ValueError, match=r"reward function '.*short' returned 1 values for 2 completions"):
        FunctionReward(short)(batch)
    process = FunctionReward(lambda prompts, completions, steps, **kw: [[1.0] * len(s) for s in steps], kind="process",
                             name="ones")
    assert process(batch) == [[1.0] * 4, [1.0, 1.0]]
    wrong_steps = FunctionReward(lambda prompts, completions, **kw: [[1.0], [1.0]], kind="process")
    with pytest.raises(ValueError, match="1 step values for completion 0, which has 4 steps"):
        wrong_steps(batch)
    with pytest.raises(ImportError):
        FunctionReward("no_such_module_here:fn")


# ------------------------------------------------------------------ building graders from configs


def test_every_preset_builds(world: World) -> None:
    built = {p.stem: make_rewards(OmegaConf.load(p), world=world, scorer=FakeScorer())
             for p in sorted(CONF.glob("*.yaml"))}
    summary = {k: [(r.name, r.kind, type(r).__name__, w) for r, w in v] for k, v in built.items()}
    assert summary == {
        "format": [("outcome", "outcome", "OutcomeReward", 1.0), ("format", "outcome", "FormatReward", 0.2)],
        "oracle": [("outcome", "outcome", "OutcomeReward", 1.0), ("oracle", "process", "OracleProcessReward", 0.2)],
        "outcome": [("outcome", "outcome", "OutcomeReward", 1.0)],
        "prm": [("outcome", "outcome", "OutcomeReward", 1.0), ("prm", "process", "ProcessReward", 0.2)],
        "prm_baseline": [("outcome", "outcome", "OutcomeReward", 1.0), ("prm", "process", "ProcessReward", 0.5)],
        "prm_only": [("prm", "process", "ProcessReward", 1.0)],
    }
    batch = rollouts(world, RIGHT, NO_ANSWER)
    for rewards in built.values():  # the RL loop's use: call each grader on a batch, log its metrics
        for reward, _ in rewards:
            values = reward(batch)
            assert len(values) == len(batch) and f"{reward.name}/ungraded" in reward.metrics(batch, values)


def test_make_rewards_injection_names_and_factories(world: World) -> None:
    made: list[FakeScorer] = []

    def factory() -> FakeScorer:
        made.append(FakeScorer())
        return made[-1]

    assert make_rewards({"outcome": {"_target_": "rl.rewards.OutcomeReward"}}, world=world, scorer=factory)[0][1] == 1.0
    assert made == []  # no process grader: the PRM is never built
    rewards = make_rewards({"a": {"_target_": "process", "weight": 0.5}, "b": {"_target_": "ProcessReward"},
                            "format": {"weight": 2}, "dropped": None}, world=world, scorer=factory)
    assert [(r.name, w) for r, w in rewards] == [("a", 0.5), ("b", 1.0), ("format", 2.0)]
    assert len(made) == 1 and all(r.scorer is made[0] for r, _ in rewards[:2])  # type: ignore[attr-defined]
    ranked = make_rewards({"rank": {"_target_": "ranked_list", "schedule": [1.0, 0.5], "k": 2}}, world=world)
    assert ranked[0][0].world is world  # type: ignore[attr-defined]
    graders = instantiate({"_target_": "rl.rewards.FormatReward", "partial": 0.5})  # plain Hydra works too
    assert graders.partial == 0.5


def test_make_rewards_errors_are_clear(world: World) -> None:
    with pytest.raises(ValueError, match=r"reward 'foo': unknown grader 'nonsense'; known graders: outcome \(rl"):
        make_rewards({"foo": {"_target_": "nonsense", "weight": 1.0}}, world=world)
    with pytest.raises(ValueError, match="reward 'mystery': unknown grader 'mystery'.*ranked_list"):
        make_rewards({"mystery": {"weight": 1.0}}, world=world)
    with pytest.raises(ValueError, match="reward 'x': cannot import _target_ 'rl.rewards.Nope'.*known graders"):
        make_rewards({"x": {"_target_": "rl.rewards.Nope"}}, world=world)
    with pytest.raises(ValueError, match="'fn': _target_ .* is not a grader class.*FunctionReward"):
        make_rewards({"fn": {"_target_": f"{__name__}.answer_tag_reward"}}, world=world)
    with pytest.raises(ValueError, match="reward 'outcome' \\(OutcomeReward\\):.*unexpected keyword.*'partial'"):
        make_rewards({"outcome": {"_target_": "outcome", "partial": 0.5}}, world=world)
    with pytest.raises(ValueError, match=r"reward 'prm' \(ProcessReward\) needs a scorer"):
        make_rewards({"prm": {"_target_": "process"}}, world=world)
    with pytest.raises(ValueError, match=r"reward 'outcome' \(OutcomeReward\) needs a world"):
        make_rewards({"outcome": {"weight": 1}})
    with pytest.raises(ValueError, match="weight must be a number"):
        make_rewards({"outcome": {"weight": "heavy"}}, world=world)
    with pytest.raises(ValueError, match="no reward configured"):
        make_rewards({"outcome": None}, world=world)


# ------------------------------------------------------------------ as TRL reward functions


def test_as_trl_reward_called_as_trl_calls_it(world: World) -> None:
    prompts = [PROMPT, PROMPT, PROMPT, " " + OTHER]
    completions = [RIGHT, WRONG, NO_ANSWER, OTHER_RIGHT]
    columns = {"answer": ["2", "2", "2", "7"], "difficulty": [3, 3, 3, 1]}  # dataset columns, passed by TRL
    outcome = as_trl_reward(OutcomeReward(world), world)
    assert outcome.__name__ == "outcome"
    assert outcome(prompts=prompts, completions=completions, completion_ids=[[1], [2], [3], [4]], trainer_state=None,
                   **columns) == [1.0, 0.0, 0.0, 1.0]
    oracle = OracleProcessReward(world)
    kwargs = {"prompts": [*prompts, PROMPT], "completions": [*completions, EMPTY], "completion_ids": [[1]] * 5,
              **columns}
    assert as_trl_reward(oracle, world)(**kwargs) == [1.0, 0.0, 0.0, 1.0, 0.0]  # min; no steps: 0.0
    assert as_trl_reward(oracle, world, aggregation="mean")(**kwargs) == [1.0, 0.5, 0.5, 1.0, 0.0]
    ungraded = as_trl_reward(FunctionReward(answer_tag_reward), world)
    assert ungraded(prompts=prompts, completions=completions, completion_ids=[[1]] * 4) == [1.0, 0.0, None, 1.0]
    nan = as_trl_reward(ProcessReward(FakeScorer(nan_for="6-4=3")), world)
    assert nan(prompts=prompts[:2], completions=completions[:2]) == [0.5, None]
    chat = outcome(prompts=[[{"role": "user", "content": PROMPT}]],
                   completions=[[{"role": "assistant", "content": RIGHT}]], completion_ids=[[1]])
    assert chat == [1.0]
    with pytest.raises(ValueError, match="aggregation"):
        as_trl_reward(oracle, world, aggregation="max")
