"""What a reward model trains on: process labels, Monte-Carlo lists, outcome labels (an ORM), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from test_mc_labels import _labelled  # the real Monte-Carlo labeller on a scripted policy

from prm.data.arith import ArithConfig, generate_dataset
from prm.data.errors import DataError
from prm.data.stepwise import StepwiseExample, outcome_label, read_stepwise, relabel, write_stepwise
from prm.io import write_jsonl
from prm.prm_train import CONF_DIR, PRMTrainConfigError, load_examples, run
from prm.scoring.prm_scorer import PRMScorer
from prm.steps import TAGGED
from search.mc_labels import MCSettings

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread

TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_positions=64",
        "train.max_steps=3", "train.batch_size=8", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
        "train.save_every=0", "train.max_time_s=null", "train.progress=false"]
EASY = ArithConfig(min_ops=2, max_ops=3, modulus=5, operand_min=1, operand_max=4, slip_rate=0.3,
                   systematic_rate=0.0, num_systematic=0)
# a right answer reached through a wrong step: the arithmetic world's answer-step label is 0.0, the outcome right
LUCKY = StepwiseExample("Q: 3+4*2\n", ["3+4=8", "8*2=4", "# Answer: 4"], [0.0, 0.0, 0.0], {"id": "a", "correct": True})
WRONG = StepwiseExample("Q: 3+4*2\n", ["3+4=7", "7*2=6", "# Answer: 6"], [1.0, 0.0, 0.0], {"id": "a", "correct": False})


def cfg_of(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="prm_train", overrides=list(overrides))


# ------------------------------------------------------------------ the label transform


def test_outcome_labels_by_hand() -> None:
    assert relabel(LUCKY, "outcome_all").labels == [1.0, 1.0, 1.0]
    assert relabel(LUCKY, "outcome_last").labels == [None, None, 1.0]
    assert relabel(WRONG, "outcome_all").labels == [0.0, 0.0, 0.0]
    assert relabel(WRONG, "outcome_last").labels == [None, None, 0.0]
    # process labels are the record's own, untouched (the same object); steps, prompt and extra always kept
    assert relabel(LUCKY, "process") is LUCKY and LUCKY.labels == [0.0, 0.0, 0.0]
    out = relabel(WRONG, "outcome_last")
    assert (out.prompt, out.completions, out.extra) == (WRONG.prompt, WRONG.completions, WRONG.extra)
    assert out.extra is not WRONG.extra and WRONG.labels == [1.0, 0.0, 0.0]
    # 'correct' wins over the answer step's label; 0/1 integers are accepted
    assert outcome_label(LUCKY) == (1.0, "correct")
    one = StepwiseExample("Q", ["1+1=2"], [1.0], {"correct": 0})
    assert outcome_label(one) == (0.0, "correct") and relabel(one, "outcome_last").labels == [0.0]
    # no 'correct': the labelled answer step stands in (the project's convention: the answer is a labelled step)
    no_field = StepwiseExample("Q", ["1+1=2", "# Answer: 2"], [1.0, 1.0])
    assert outcome_label(no_field) == (1.0, "answer_step_label")
    assert relabel(no_field, "outcome_all").labels == [1.0, 1.0]
    tagged = StepwiseExample("Q", ["1+1=2", "</reasoning>\n<answer>3</answer>"], [1.0, 0.0])
    assert relabel(tagged, "outcome_last", TAGGED).labels == [None, 0.0]
    # a record without steps has nothing to label
    assert relabel(StepwiseExample("Q", [], []), "outcome_all").labels == []


def test_records_without_an_outcome_or_with_a_bad_one_are_clear_errors() -> None:
    cut_off = StepwiseExample("Q", ["1+1=2", "2+1=3"], [1.0, 1.0])  # no 'correct', no answer step
    unlabelled_answer = StepwiseExample("Q", ["1+1=2", "# Answer: 2"], [1.0, None])
    for ex in (cut_off, unlabelled_answer):
        for how in ("outcome_all", "outcome_last"):
            with pytest.raises(DataError, match="no outcome") as e:
                relabel(ex, how)
            assert e.value.field == "correct"
    with pytest.raises(DataError, match="true/false") as e:
        relabel(StepwiseExample("Q", ["# Answer: 2"], [1.0], {"correct": "yes"}), "outcome_all")
    assert e.value.field == "correct"
    with pytest.raises(ValueError, match="unknown labels"):
        relabel(LUCKY, "outcomes")


def test_monte_carlo_and_exact_lists_from_the_real_labeller() -> None:
    (right, wrong_path, lucky, cut), _ = _labelled(MCSettings(k=4, label="hard"))
    assert relabel(lucky, "mc_hard").labels == [1.0, 1.0, 1.0] == lucky.labels
    assert relabel(lucky, "mc_soft").labels == [0.25, 0.5, 1.0]
    assert relabel(lucky, "exact").labels == [0.0, 0.0, 0.0]
    assert relabel(wrong_path, "exact").labels == [0.0, 0.0, 0.0] and relabel(right, "exact").labels == [1.0] * 3
    # the outcome of an MC record is its 'correct', not a rolled-out label
    assert relabel(lucky, "outcome_last").labels == [None, None, 1.0]
    assert relabel(cut, "outcome_all").labels == [0.0, 0.0]  # cut off before its answer: not correct
    # an exactly labelled record has no MC lists
    with pytest.raises(DataError, match="labeller=mc") as e:
        relabel(LUCKY, "mc_soft")
    assert e.value.field == "mc_soft"
    with pytest.raises(DataError) as e:
        relabel(StepwiseExample("Q", ["a", "b"], [1.0, 1.0], {"exact_labels": [1.0]}), "exact")
    assert e.value.field == "exact_labels" and "2 completions but 1 labels" in str(e.value)


def test_the_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    good = LUCKY.to_dict()
    write_jsonl(path, [good, {"prompt": "Q", "completions": ["1+1=2", "2+1=3"], "labels": [1.0, 1.0]}, good])
    with pytest.raises(DataError) as e:
        load_examples(cfg_of(f"data.path={path}").data, "outcome_all")
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 2, "correct")
    assert f"{path}:2: field 'correct'" in str(e.value)
    # through the app too (before any model is built); skip_invalid skips the record and counts it
    with pytest.raises(DataError, match=":2: field 'correct'"):
        run(cfg_of(*TINY, f"data.path={path}", "labels=outcome_last", f"run_dir={tmp_path / 'r'}"))
    cfg = cfg_of(f"data.path={path}", "data.skip_invalid=true")
    examples, report = load_examples(cfg.data, "outcome_last")
    assert [ex.labels for ex in examples] == [[None, None, 1.0]] * 2 and report.skipped == 1
    assert read_stepwise(path, skip_invalid=True, transform=lambda ex: relabel(ex, "outcome_all"))[0].labels == [1.0] * 3
    assert load_examples(cfg.data)[0][1].labels == [1.0, 1.0]  # process: the file as it is
    with pytest.raises(PRMTrainConfigError, match="labels='outcome'"):
        load_examples(cfg.data, "outcome")
    with pytest.raises(DataError, match="<data=arith>:1: field 'mc_hard'"):
        load_examples(cfg_of("data=arith", "data.n_problems=3").data, "mc_hard")


# ------------------------------------------------------------------ an ORM end to end


@pytest.fixture(scope="module")
def easy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "easy.jsonl"
    write_stepwise(path, generate_dataset(40, EASY, seed=3, samples_per_problem=2))
    return path


def test_an_orm_trains_saves_and_scores_by_its_last_step(tmp_path: Path, easy_file: Path) -> None:
    examples = read_stepwise(easy_file)
    n_correct = sum(bool(ex.extra["correct"]) for ex in examples)
    run_dir = tmp_path / "orm"
    s = run(cfg_of(*TINY, f"data.path={easy_file}", f"run_dir={run_dir}", "val_fraction=0.2", "labels=outcome_last"))
    assert s["step"] == 3 and s["labels"] == "outcome_last" and s["outcome_from"] == {"correct": len(examples)}
    train, val = s["train_data"], s["val_data"]
    # one label per solution (its last step), all the other steps unlabelled; positives = right answers
    assert train["labelled"] == s["n_train"] and val["labelled"] == s["n_val"] and s["n_train"] + s["n_val"] == 80
    assert train["positive"] + val["positive"] == n_correct and train["unlabelled"] > 0
    saved = json.loads((run_dir / "train_summary.json").read_text())
    assert saved["labels"] == "outcome_last"

    scorer = PRMScorer(str(run_dir / "model"))  # the scorer reads the ORM's aggregation from its config
    assert scorer.model.config.prm_labels == "outcome_last" and scorer.aggregation == "last"
    ex = examples[0]
    step_scores = scorer.score([ex.prompt], [[ex.completions]])[0][0]
    assert len(step_scores) == len(ex.completions) and all(0.0 < v < 1.0 for v in step_scores)
    assert scorer.aggregate(step_scores) == step_scores[-1]
    assert PRMScorer(str(run_dir / "model"), aggregation="min").aggregation == "min"  # a given value wins
    assert PRMScorer(scorer.model, scorer.tokenizer).aggregation == "last"  # a loaded model carries it too

    # outcome_all labels every step; a process-trained PRM keeps the scorer's default (min)
    s_all = run(cfg_of(*TINY, f"data.path={easy_file}", f"run_dir={tmp_path / 'all'}", "labels=outcome_all"))
    assert s_all["train_data"]["unlabelled"] == 0 and PRMScorer(str(tmp_path / "all" / "model")).aggregation == "last"
    s_prm = run(cfg_of(*TINY, f"data.path={easy_file}", f"run_dir={tmp_path / 'prm'}"))
    assert s_prm["labels"] == "process" and s_prm["outcome_from"] is None
    prm = PRMScorer(str(tmp_path / "prm" / "model"))
    assert prm.aggregation == "min" and prm.model.config.prm_labels == "process"
