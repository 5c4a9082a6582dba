"""prm-distill: examples from hand-made search results (the chosen candidate per rule, each filter, skipped
problems, clear errors, held-out problems refused) and one tiny end-to-end run that trains a student and reuses it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from prm.data.arith import ARITH_FORMAT
from prm.io import write_jsonl
from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from prm.steps import policy_prompt
from prm.worlds import Task, make_world
from rl.distill import CONF_DIR, DistillError, build_examples, heldout_test, results_file, run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread

WORLD = make_world({"source": "arith", "world": {"min_ops": 2, "max_ops": 2}})
TRAIN = WORLD.problems("train", 8, seed=7).tasks
TEST = WORLD.problems("test", 1, seed=7).tasks


def cand(text: str, answer: str | None, correct: bool, score: float) -> dict[str, Any]:
    return {"text": text, "answer": answer, "correct": correct, "score": score, "finish_reason": "eos"}


def record(task: Task, cands: list[dict[str, Any]], prm: int | None = 0, majority: int | None = 0,
           weighted: int | None = 0, answer: str | None = "default", error: str | None = None) -> dict[str, Any]:
    """A prm-search record: ``chosen`` per final rule as given (the tests fix it by hand)."""
    chosen = {rule: {"index": i, "answer": None if i is None else cands[i]["answer"],
                     "correct": i is not None and cands[i]["correct"]}
              for rule, i in (("prm", prm), ("majority", majority), ("weighted_majority", weighted))}
    return {"id": task.id, "prompt": task.prompt, "answer": task.answer if answer == "default" else answer,
            "difficulty": task.difficulty, "candidates": cands, "chosen": chosen, "error": error}


def results(tmp_path: Path, records: list[dict[str, Any]], name: str = "search") -> Path:
    path = tmp_path / name / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, records)
    return path


def three(task: Task) -> list[dict[str, Any]]:
    """Candidates answering a, a, b: right, right (low score), wrong (high score)."""
    right, wrong = task.answer, str((int(task.answer) + 1) % 10)
    return [cand("A\n# Answer: " + right, right, True, 0.6), cand("B\n# Answer: " + right, right, True, 0.2),
            cand("C\n# Answer: " + wrong, wrong, False, 0.9)]


def build(paths: list[Path], **kw: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return build_examples(paths, ARITH_FORMAT, is_heldout=heldout_test(WORLD), **kw)


# ------------------------------------------------------------------------------------------ examples
@pytest.mark.parametrize("rule,index", [("prm", 2), ("majority", 0), ("weighted_majority", 1)])
def test_the_example_is_the_candidate_the_rule_chose(tmp_path: Path, rule: str, index: int) -> None:
    t = TRAIN[0]
    path = results(tmp_path, [record(t, three(t), prm=2, majority=0, weighted=1)])
    examples, counts = build([path], rule=rule, filt="none")
    assert len(examples) == 1 and counts["kept"] == 1 and counts["problems"] == 1
    ex = examples[0]
    assert ex["prompt"] == policy_prompt(t.prompt, ARITH_FORMAT) and ex["completion"] == three(t)[index]["text"]
    assert ex["id"] == t.id and ex["rule"] == rule and ex["source"] == str(path)


def test_each_filter_keeps_what_it_should(tmp_path: Path) -> None:
    a, b, c = TRAIN[:3]
    path = results(tmp_path, [record(a, three(a), prm=2, weighted=0, majority=0),   # prm picks the wrong one
                              record(b, three(b), prm=0, weighted=2, majority=2),   # a minority answer
                              record(c, three(c), prm=1, weighted=1, majority=1)])  # right, score 0.2
    def kept(rule: str, filt: str, **kw: Any) -> list[str]:
        return [e["id"] for e in build([path], rule=rule, filt=filt, **kw)[0]]

    assert kept("prm", "correct") == [b.id, c.id]
    assert build([path], rule="prm", filt="correct")[1]["incorrect"] == 1
    assert kept("prm", "min_score", min_score=0.5) == [a.id, b.id]  # 0.9, 0.6 pass; 0.2 does not
    assert build([path], rule="prm", filt="min_score", min_score=0.5)[1]["below_min_score"] == 1
    assert kept("majority", "majority") == [a.id, c.id]  # b's chosen answer is the minority one
    assert kept("majority", "majority", min_agreement=0.6) == [a.id, c.id]  # 2 of 3 agree
    with pytest.raises(DistillError, match="nothing to train on.*not_majority: 3"):  # 2 of 3 < 0.7
        build([path], rule="majority", filt="majority", min_agreement=0.7)
    assert kept("prm", "none") == [a.id, b.id, c.id]
    examples, counts = build([path], rule="prm", filt="none")
    assert counts["kept_correct"] == 2 and [e["correct"] for e in examples] == [False, True, True]


def test_unfinished_failed_and_answerless_problems_are_skipped_and_counted(tmp_path: Path) -> None:
    a, b, c, d, e = TRAIN[:5]
    path = results(tmp_path, [
        record(a, [], prm=None, majority=None, weighted=None),                     # no finished candidate
        record(b, [], prm=None, majority=None, weighted=None, error="GenerationError: boom"),
        record(c, [cand("7+1=8\n", None, False, 0.9)], weighted=0),                 # cut off before its answer
        record(d, [cand("7+1=8\n", None, False, 0.9)], weighted=None),              # no answer to vote for
        record(e, three(e)),
    ])
    examples, counts = build([path], filt="none")
    assert [ex["id"] for ex in examples] == [e.id]
    assert {k: counts[k] for k in ("problems", "kept", "no_finished", "error", "no_answer")} == {
        "problems": 5, "kept": 1, "no_finished": 1, "error": 1, "no_answer": 2}


def test_nothing_left_is_an_error_with_the_counts_per_reason(tmp_path: Path) -> None:
    a, b = TRAIN[:2]
    path = results(tmp_path, [record(a, three(a), weighted=2), record(b, [], None, None, None)])
    with pytest.raises(DistillError, match=r"nothing to train on.*no_finished: 1.*incorrect: 1"):
        build([path], filt="correct")


def test_the_correct_filter_without_reference_answers_names_the_file(tmp_path: Path) -> None:
    a = TRAIN[0]
    path = results(tmp_path, [record(a, three(a), answer=None)])
    (path.parent / "config.yaml").write_text("problems: /data/no_answers.jsonl\n")
    with pytest.raises(DistillError, match=rf"reference answers.*{re.escape(str(path))}.*/data/no_answers\.jsonl"):
        build([path], filt="correct")
    examples, _ = build([path], filt="majority")  # no reference needed
    assert len(examples) == 1


def test_held_out_problems_are_refused_unless_allowed(tmp_path: Path) -> None:
    a, t = TRAIN[0], TEST[0]
    path = results(tmp_path, [record(a, three(a)), record(t, three(t))])
    with pytest.raises(DistillError, match=rf"held-out.*{re.escape(str(path))}: 1 problems \(e\.g\. {t.id}\).*split=train"):
        build([path])
    examples, counts = build([path], allow_heldout=True)
    assert len(examples) == 2 and counts["heldout"] == 1


def test_evaluation_problem_files_are_held_out_too(tmp_path: Path) -> None:
    a, b = TRAIN[:2]
    evaluation = tmp_path / "eval.jsonl"
    write_jsonl(evaluation, [{"problem": "  " + b.prompt, "answer": b.answer}])
    test = heldout_test(WORLD, [evaluation])
    assert not test(a.prompt) and test(b.prompt) and test(TEST[0].prompt)


def test_a_problem_in_several_files_gives_one_example(tmp_path: Path) -> None:
    a, b = TRAIN[:2]
    first = results(tmp_path, [record(a, three(a), weighted=2), record(b, three(b))], "one")
    second = results(tmp_path, [record(a, three(a), weighted=1), record(b, three(b), weighted=1)], "two")
    examples, counts = build([first, second])
    assert [(e["id"], e["source"]) for e in examples] == [(b.id, str(first)), (a.id, str(second))]
    assert counts["problems"] == 2 and counts["duplicate"] == 1 and counts["incorrect"] == 1


def test_bad_settings_and_files_fail_clearly(tmp_path: Path) -> None:
    path = results(tmp_path, [record(TRAIN[0], three(TRAIN[0]))])
    with pytest.raises(DistillError, match="no search results at"):
        results_file(tmp_path / "nowhere")
    assert results_file(path.parent) == path
    other = results(tmp_path, [{"prompt": "Q: 1+1\n", "completions": ["1+1=2"], "labels": [1.0]}], "stepwise")
    with pytest.raises(DistillError, match="not prm-search results"):
        build([other])
    with pytest.raises(DistillError, match="not a final rule"):
        build([path], rule="best")
    with pytest.raises(DistillError, match="not a filter"):
        build([path], filt="right")


# ------------------------------------------------------------------------------------------ end to end
def cfg_of(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="distill", overrides=list(overrides))


TINY_SFT = ["sft.threads=1", "sft.val_fraction=0", "sft.train.max_steps=3", "sft.train.batch_size=4",
            "sft.train.warmup_steps=0", "sft.train.eval_every=0", "sft.train.save_every=0", "sft.train.log_every=1",
            "sft.train.progress=false"]


def test_a_tiny_run_trains_the_student_and_a_rerun_reuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), seed=0)
    policy = save_model(model, tok, tmp_path / "policy")
    recs = []
    for t in TRAIN[:6]:
        right = t.answer
        good = cand(f"1+1=2\n# Answer: {right}", right, True, 0.8)
        recs.append(record(t, [good, cand("1+1=2\n# Answer: x", "x", False, 0.1)], weighted=0))
    recs.append(record(TRAIN[6], [], None, None, None))
    path = results(tmp_path, recs)
    overrides = [f"results=[{path.parent}]", f"student={policy}", f"run_dir={tmp_path / 'distill'}",
                 "data.world.min_ops=2", "data.world.max_ops=2", *TINY_SFT]
    cfg = cfg_of(*overrides)
    summary = run(cfg)
    out = tmp_path / "distill"
    assert summary["counts"]["kept"] == 6 and summary["counts"]["no_finished"] == 1
    assert json.loads((out / "summary.json").read_text())["counts"] == summary["counts"]
    lines = (out / "distill_data.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["completion"] == recs[0]["candidates"][0]["text"]
    student = out / "student" / "model"
    assert summary["student_model"] == str(student) and (student / "config.json").exists()
    assert summary["sft"]["step"] == 3 and summary["sft"]["n_train"] == 6
    weights = next(student.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()

    again = run(cfg)  # same results, config and starting model: nothing is trained again
    assert "student: reusing" in capsys.readouterr().out
    assert again["counts"] == summary["counts"] and weights.stat().st_mtime_ns == stamp

    changed = run(cfg_of(*overrides, "sft.train.max_steps=4"))  # another config: trained again, the old run kept aside
    assert changed["sft"]["step"] == 4 and (out / "student.old-1" / "model" / weights.name).exists()
