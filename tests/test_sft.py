"""prm-sft: the loss mask, data readers, a tiny model that learns arithmetic, reloading, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from prm.data.arith import ARITH_FORMAT, ArithConfig, generate_dataset
from prm.data.errors import DataError
from prm.data.stepwise import write_stepwise
from prm.io import write_jsonl
from prm.models.loading import ModelLoadError, TinyGPTConfig, load_causal_lm
from prm.steps import TAGGED, load_step_format
from prm.train import load_metrics, pad_collate
from prm.worlds import make_world
from rl.sft import CONF_DIR, Pair, SFTConfigError, encode_pair, greedy_accuracy, parse_pair, run, sft_loss

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable  # the interpreter running the tests (its environment has the project)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


# A tiny, fast run: 1 layer, 2-op problems, no eval generation.
TINY_MODEL = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_positions=64"]
TINY_DATA = ["data.n_problems=64", "data.world.min_ops=2", "data.world.max_ops=2"]
TINY_TRAIN = [
    "train.max_steps=3", "train.batch_size=16", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
    "train.save_every=0", "train.max_time_s=null", "train.progress=false", "eval_problems=0",
]
TINY = TINY_MODEL + TINY_DATA + TINY_TRAIN
# Long enough that a tiny model really learns a small world (mod 5, no systematic mistakes).
LEARN = [
    "model.n_layer=1", "model.n_embd=128", "model.n_head=8", "model.n_positions=64",
    "data.n_problems=1000", "data.world.min_ops=2", "data.world.max_ops=2", "data.world.modulus=5",
    "data.world.operand_max=4", "data.world.num_systematic=0", "data.world.systematic_rate=0",
    "data.world.slip_rate=0.05",
    "train.max_steps=300", "train.batch_size=32", "train.lr=5e-3", "train.warmup_steps=10", "train.log_every=25",
    "train.eval_every=100", "train.save_every=0", "train.max_time_s=null", "train.progress=false",
    "eval_problems=100",
]


def cfg_of(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="sft", overrides=list(overrides))


# ------------------------------------------------------------------ encoding and loss


def test_loss_mask_covers_exactly_the_solution_and_eos() -> None:
    _, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64))
    pair = Pair("Q: 1+2\n", "1+2=3\n# Answer: 3")
    enc = encode_pair(tok, pair, max_length=None)
    assert enc is not None
    chars = [tok.convert_tokens_to_ids(c) for c in pair.prompt + pair.solution]
    assert enc["input_ids"] == [tok.bos_token_id, *chars, tok.eos_token_id]
    n_head = 1 + len(pair.prompt)  # bos + 7 prompt characters
    assert enc["labels"][:n_head] == [-100] * n_head
    assert enc["labels"][n_head:] == enc["input_ids"][n_head:]
    assert tok.decode([t for t in enc["labels"] if t != -100]) == pair.solution + tok.eos_token
    # cut at max_length: still a prefix; nothing left of the solution: dropped
    assert encode_pair(tok, pair, max_length=10)["labels"] == [-100] * 8 + enc["input_ids"][8:10]  # type: ignore[index]
    assert encode_pair(tok, pair, max_length=8) is None

    # the loss averages over exactly the solution characters and eos of both examples (18 + 24)
    model, _ = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), seed=1)
    other_solution = "3*3=9\n9-1=8\n# Answer: 8"
    other = encode_pair(tok, Pair("Q: 3*3-1\n", other_solution), None)
    batch = pad_collate(tok.pad_token_id)([enc, other])  # type: ignore[list-item]
    loss, metrics = sft_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), -1)
    labelled = [(row, t) for row, ex in enumerate([enc, other])
                for t in range(len(ex["labels"])) if ex["labels"][t] != -100]
    terms = [-logp[row, t - 1, batch["input_ids"][row, t]] for row, t in labelled]
    assert len(terms) == (len(pair.solution) + 1) + (len(other_solution) + 1) == 18 + 24
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    hits = [int(logp[row, t - 1].argmax() == batch["input_ids"][row, t]) for row, t in labelled]
    assert float(metrics["token_acc"]) == pytest.approx(sum(hits) / len(hits))


def test_token_accuracy_counts_only_labelled_tokens() -> None:
    """Hand-made logits: the prompt token is predicted right, one of the two labelled tokens is."""

    class Fixed(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
            logits = torch.zeros(1, 4, 10)
            for pos, tok in enumerate([6, 7, 0, 3]):  # the token predicted after position pos
                logits[0, pos, tok] = 5.0
            return SimpleNamespace(logits=logits)

    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 7, 8]])}
    _, metrics = sft_loss(Fixed(), batch)
    assert float(metrics["token_acc"]) == 0.5  # 7 right, 8 wrong; the right guess of 6 is unlabelled


def test_jsonl_records_become_pairs(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    with_answer = {"prompt": "Q: 1+2\n", "completions": ["1+2=3"], "labels": [1.0], "answer": "3"}
    no_answer = {"prompt": "What is 2+2?", "completions": ["2+2=4", "So 4."], "labels": [1.0, 1.0]}
    assert parse_pair(with_answer, 1, path=path, fmt=ARITH_FORMAT, only_on_track=False) == Pair("Q: 1+2\n", "1+2=3\n# Answer: 3")
    assert parse_pair(with_answer, 1, path=path, fmt=TAGGED, only_on_track=False).solution == (  # type: ignore[union-attr]
        "<reasoning>\n1+2=3\n</reasoning>\n<answer>3</answer>")
    assert parse_pair(no_answer, 1, path=path, fmt=ARITH_FORMAT, only_on_track=False) == Pair(
        "What is 2+2?\n", "2+2=4\nSo 4.")
    assert parse_pair({**no_answer, "labels": [1.0, 0.0]}, 1, path=path, fmt=ARITH_FORMAT, only_on_track=True) is None
    assert parse_pair({"prompt": "p", "solution": "s"}, 1, path=path, fmt=ARITH_FORMAT, only_on_track=False) == Pair("p", "s")
    assert parse_pair({"prompt": "p", "completion": "c"}, 1, path=path, fmt=ARITH_FORMAT, only_on_track=False) == Pair("p", "c")
    with pytest.raises(DataError, match="x.jsonl:4: field 'completion'"):
        parse_pair({"prompt": "p", "text": "t"}, 4, path=path, fmt=ARITH_FORMAT, only_on_track=False)


# ------------------------------------------------------------------ a tiny model learns


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("sft_learn")
    summary = run(cfg_of(*LEARN, f"run_dir={run_dir}"))
    return run_dir, summary


def test_sft_learns_arithmetic(learned: tuple[Path, dict]) -> None:
    run_dir, summary = learned
    rows = load_metrics(run_dir)
    assert rows[-1]["step"] == 300 and rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert rows[-1]["eval/loss"] < 0.2
    # held-out problems, greedy decoding: far above both an untrained model and chance (1/5)
    assert summary["n_eval_problems"] >= 50
    assert summary["greedy_accuracy"] >= 0.6
    cfg = cfg_of(*LEARN)
    world = make_world(cfg.data)
    problems = world.problems("test", 50, seed=4242).tasks
    untrained, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=128, n_head=8, n_positions=64), seed=0)
    trained = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    before = greedy_accuracy(untrained, tok, world, problems)
    after = greedy_accuracy(trained, tok, world, problems)
    assert before <= 0.1 and after >= 0.6, (before, after)


def test_saved_model_reloads_with_auto_classes(learned: tuple[Path, dict]) -> None:
    run_dir, summary = learned
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    tok = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    assert summary["model_dir"] == str(run_dir / "model")
    ids = torch.tensor([tok("Q: 1+2*3\n").input_ids])  # the tokenizer adds its BOS itself
    out = model.generate(input_ids=ids, do_sample=False, max_new_tokens=30, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    assert out[0, -1].item() == tok.eos_token_id  # it learned to stop
    assert "# Answer:" in tok.decode(out[0], skip_special_tokens=True)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["step"] == 300 and (run_dir / "config.yaml").exists()
    assert load_step_format(run_dir / "model") == ARITH_FORMAT  # the format the policy writes, saved beside it


# ------------------------------------------------------------------ other data sources


def test_sft_on_stepwise_and_plain_jsonl(tmp_path: Path) -> None:
    stepwise = tmp_path / "steps.jsonl"
    write_stepwise(stepwise, generate_dataset(40, ArithConfig(min_ops=2, max_ops=3), seed=1))
    s = run(cfg_of(*TINY_MODEL, *TINY_TRAIN, "data=stepwise", f"data.path={stepwise}", f"run_dir={tmp_path / 'a'}", "+data.format=arith"))
    assert s["step"] == 3 and s["n_train"] + s["n_val"] == 40
    assert (tmp_path / "a" / "model" / "config.json").exists()
    assert load_step_format(tmp_path / "a" / "model") == ARITH_FORMAT

    plain = tmp_path / "plain.jsonl"
    write_jsonl(plain, [{"prompt": f"Say {i}: ", "completion": str(i)} for i in range(30)])
    s = run(cfg_of(*TINY_MODEL, *TINY_TRAIN, "data=stepwise", f"data.path={plain}", f"run_dir={tmp_path / 'b'}", "val_fraction=0.1"))
    assert s["n_train"] == 27 and s["n_val"] == 3


# ------------------------------------------------------------------ bad input


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        run(cfg_of(*TINY_MODEL, *TINY_TRAIN, "data=stepwise", f"data.path={tmp_path / 'nope.jsonl'}", f"run_dir={tmp_path / 'r'}"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SFTConfigError, match="data.path is not set"):
        run(cfg_of(*TINY_MODEL, *TINY_TRAIN, "data=stepwise", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        run(cfg_of(*TINY_MODEL, *TINY_TRAIN, "data=stepwise", f"data.path={empty}", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(DataError, match="dataset is empty"):
        run(cfg_of(*TINY, "data.n_problems=0", f"run_dir={tmp_path / 'r'}"))
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        run(cfg_of(*TINY_DATA, *TINY_TRAIN, "model=hf_local", f"model.path={not_a_model}", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(SFTConfigError, match="model.path is not set"):
        run(cfg_of(*TINY_DATA, *TINY_TRAIN, "model=hf_local", f"run_dir={tmp_path / 'r'}"))
    with pytest.raises(ConfigCompositionException) as err:
        cfg_of("train.lrr=1")
    assert "lrr" in str(err.value) + str(err.value.__cause__)
    cfg = cfg_of(*TINY)
    assert OmegaConf.is_struct(cfg)
    with pytest.raises(Exception, match="max_grad_nrm"):
        cfg.train.max_grad_nrm = 1.0
    with pytest.raises(SFTConfigError, match="schedule='cosin'"):
        run(cfg_of(*TINY, "train.schedule=cosin", f"run_dir={tmp_path / 'r'}"))


def test_fine_tune_a_saved_hf_model_directory(tmp_path: Path) -> None:
    first = tmp_path / "first"
    run(cfg_of(*TINY, f"run_dir={first}"))
    s = run(cfg_of(*TINY_DATA, *TINY_TRAIN, "model=hf_local", f"model.path={first / 'model'}", "model.dtype=fp32",
                   f"run_dir={tmp_path / 'second'}"))
    assert s["step"] == 3 and (tmp_path / "second" / "model" / "tokenizer.json").exists()


def test_rerun_in_the_same_run_dir_resumes(tmp_path: Path) -> None:
    first = run(cfg_of(*TINY, f"run_dir={tmp_path}"))
    again = run(cfg_of(*TINY, f"run_dir={tmp_path}"))  # finished: no more steps, same summary numbers
    assert again["stopped_by"] == "already_done" and again["loss"] == first["loss"]
    longer = run(cfg_of(*TINY, "train.max_steps=5", f"run_dir={tmp_path}"))
    assert longer["step"] == 5 and [r["step"] for r in load_metrics(tmp_path)] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ the command line


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([PYTHON, "-m", "rl.sft", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_tiny_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "cli"
    ok = _cli(*TINY, f"run_dir={run_dir}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 3
    assert (run_dir / "hydra" / "config.yaml").exists() and (run_dir / "model" / "config.json").exists()


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    typo = _cli(*TINY, "train.lrr=1", f"run_dir={tmp_path / 'typo'}")
    assert typo.returncode != 0 and "lrr" in typo.stderr
    missing = _cli(*TINY_MODEL, *TINY_TRAIN, "data=stepwise", f"data.path={tmp_path / 'missing.jsonl'}", f"run_dir={tmp_path / 'm'}")
    assert missing.returncode == 2
    assert "prm-sft: error:" in missing.stderr and "missing.jsonl: file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_sft_on_the_default_world(tmp_path: Path) -> None:
    """The default prm-sft (2 layers, 128 dims) on the default world, its default 1000 steps (not the
    300 s budget: on a shared machine a time budget gives anything from 225 to 850 steps). The loss falls
    through a phase transition between steps 600 and 900 whose timing moves with the data draw and the
    thread count (measured: 0.19 at step 800 of an 800-step schedule, 0.07 at step 800 and 0.03 at 1000 of
    the default 1000-step one), so the test runs the default schedule to its end. The transition's timing also
    moves with the CPU's kernels: on the machine of 2026-12-02 (same code and seed) step 1000 had train loss 0.113,
    eval loss 0.153 and greedy accuracy 0.425, hence the eval bound of 0.2 (the loss starts near 2.4)."""
    summary = run(cfg_of(f"run_dir={tmp_path}", "threads=1", "train.max_steps=1000", "train.max_time_s=null",
                         "train.progress=false"))
    assert summary["step"] == 1000
    assert summary["loss"] < 0.15 and summary["eval/loss"] < 0.2
    assert summary["greedy_accuracy"] >= 0.3  # measured 0.40-0.48 near 800 steps (systematic mistakes cap it)
