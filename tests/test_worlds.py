"""Worlds: the arithmetic world's splits and exact labels, problem files, the factory, resume identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prm.data.arith import ARITH_FORMAT
from prm.runs import check_identity, model_fingerprint
from prm.worlds import ArithWorld, FileWorld, label_example, make_world
from search.generation.vllm_backend import prompt_seeds

P = "Q: 7+5*3-4\n"  # 7+5=2, 2*3=6, 6-4=2


@pytest.mark.parametrize(("text", "labels", "correct", "process"), [
    ("7+5=2\n2*3=6\n6-4=2\n# Answer: 2", [1, 1, 1, 1], True, True),
    ("7+5=2\n2*3=6\n# Answer: 6", [1, 1, 0], False, False),           # premature answer
    ("7+5=2\n2*3=6\n6-4=2\n# Answer: 9", [1, 1, 1, 0], False, False),  # disagrees with the last step
    ("7+5=3\n3*3=9\n9-4=5\n# Answer: 2", [0, 0, 0, 0], True, False),   # right answer after an error
    ("7+5=2\n2*3=6\n6-4=2", [1, 1, 1], False, False),                  # unfinished: no answer step
    ("\n7+5=2\n\n\n2*3=6\n6-4=2\n\n# Answer: 2\n", [1, 1, 1, 1], True, True),  # blank lines are not steps
])
def test_hand_written_solutions_and_their_exact_labels(text: str, labels: list[int], correct: bool,
                                                       process: bool) -> None:
    world = make_world({"source": "arith"})
    ex = label_example(world, world.task(P), text)
    assert ex.labels == labels and ex.extra["correct"] is correct and ex.extra["process_correct"] is process
    assert world.step_labels(world.task(P), ex.completions) == labels  # the oracle reads the same labels


def test_the_factory_and_formats(tmp_path: Path) -> None:
    assert make_world({"source": "arith"}).fmt == ARITH_FORMAT
    assert make_world({"source": "arith", "format": "tagged"}).fmt.style == "tagged"
    with pytest.raises(ValueError, match="has no problems of its own"):
        make_world({"source": "stepwise"})
    with pytest.raises(ValueError, match="data.world"):
        make_world({"source": "arith", "world": {"modulo": 7}})
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"problem": "What is 2+2?", "answer": "4"}) + "\n"
                    + json.dumps({"question": {"problem": "What is 3+3?", "ground_truth_answer": "6"}}) + "\n")
    world = make_world({"source": "problems"}, problems=path)
    assert isinstance(world, FileWorld) and not world.exact_labels
    tasks = world.problems("test").tasks
    assert [t.answer for t in tasks] == ["4", "6"]  # a problem file and a PRM800K record
    assert world.grade(tasks[0], "2+2 is 4\n# Answer\n\n4") and world.grade(tasks[0], "so \\boxed{4}")
    assert world.step_labels(tasks[0], ["x"]) is None
    ex = label_example(world, tasks[0], "x\n# Answer\n\n5")
    assert ex.labels == [None, None] and ex.extra["correct"] is False


def test_file_world_removes_training_problems_and_duplicates(tmp_path: Path) -> None:
    problems = tmp_path / "test.jsonl"
    problems.write_text("".join(json.dumps({"problem": p, "answer": "1"}) + "\n" for p in ("A", "B", "A", "C")))
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": " C ", "completions": ["x"], "labels": [1.0]}) + "\n")
    draw = FileWorld(problems, exclude=[train]).problems("test")
    assert [t.prompt for t in draw.tasks] == ["A", "B"] and (draw.removed_overlap, draw.removed_duplicates) == (1, 1)


def test_arith_splits_are_disjoint_and_deterministic() -> None:
    world = ArithWorld()
    test = world.problems("test", 200, 7)
    assert test.tasks == world.problems("test", 200, 7).tasks
    train = world.problems("train", 5000, 0).tasks
    assert not {t.prompt for t in test.tasks} & {t.prompt for t in train}
    with pytest.raises(ValueError, match="unknown split"):
        world.problems("val", 3)


def test_vllm_gives_each_prompt_of_a_call_its_own_seed() -> None:
    seeds = prompt_seeds(5, 4)
    assert len(set(seeds)) == 4 and seeds == prompt_seeds(5, 4) and seeds != prompt_seeds(6, 4)
    assert prompt_seeds(None, 3) == [None, None, None]


def test_a_retrained_model_at_the_same_path_changes_the_identity(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
    before = model_fingerprint(d)
    check_identity(tmp_path / "run", {"policy": str(d), "policy_fingerprint": before})
    (d / "model.safetensors").write_bytes(b"\x01" * 100)  # same path, same size, new weights
    after = model_fingerprint(d)
    assert after != before and model_fingerprint(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="policy_fingerprint changed"):
        check_identity(tmp_path / "run", {"policy": str(d), "policy_fingerprint": after})
