"""Interop without this package: stepwise files load with ``datasets`` as TRL's stepwise supervision, and a PRM saved
by ``prm.models.prm_model.save_prm`` loads and scores with plain ``transformers`` (the README's ``## Interop`` lines).

TRL is not installed and not needed: its ``PRMTrainer.tokenize_row`` (trl/trainer/prm_trainer.py, Apache-2.0) is
transcribed below, without truncation, to show that a TRL PRM trained on our files labels the same tokens as ours.
"""

from __future__ import annotations

import re
from itertools import chain
from pathlib import Path
from typing import Any

import datasets
import pytest
from transformers import PreTrainedTokenizerBase

from conftest import REPO
from prm.data.arith import generate_dataset
from prm.data.stepwise import StepwiseExample, write_stepwise
from prm.models.loading import TinyGPTConfig
from prm.models.prm_inputs import encode_steps
from prm.models.prm_model import build_prm, save_prm
from prm.models.tokenizer import build_char_tokenizer
from prm.scoring.prm_scorer import PRMScorer


LIST_FEATURES = tuple(getattr(datasets, name) for name in ("Sequence", "List") if hasattr(datasets, name))


def _load(path: Path, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


def _leaf_dtype(feature: Any) -> str:
    """``string`` for ``Value("string")``, ``float64`` for ``List(Value("float64"))`` (or ``Sequence``)."""
    return feature.dtype if isinstance(feature, datasets.Value) else _leaf_dtype(feature.feature)


def test_stepwise_files_load_with_datasets_as_trl_stepwise_supervision(tmp_path: Path) -> None:
    examples = generate_dataset(6, seed=0)  # exactly labelled arithmetic solutions, extra keys (id, answer, ...)
    examples.append(StepwiseExample("Q: 1+1\n", ["1+1=2", "# Answer: 2"], [None, 0.5], {"id": "soft", "source": "mc"}))
    write_stepwise(tmp_path / "train.jsonl", examples)
    ds = _load(tmp_path / "train.jsonl", tmp_path / "cache")
    assert len(ds) == len(examples)
    assert ds.column_names[:3] == ["prompt", "completions", "labels"]  # TRL's columns, first, extra keys after
    assert {"id", "answer", "difficulty", "correct"} <= set(ds.column_names)
    assert isinstance(ds.features["prompt"], datasets.Value) and ds.features["prompt"].dtype == "string"
    assert isinstance(ds.features["completions"], LIST_FEATURES)
    assert _leaf_dtype(ds.features["completions"]) == "string"
    assert isinstance(ds.features["labels"], LIST_FEATURES)
    assert _leaf_dtype(ds.features["labels"]) == "float64"
    for row, ex in zip(ds, examples):
        assert (row["prompt"], row["completions"], row["labels"]) == (ex.prompt, ex.completions, ex.labels)
        assert len(row["completions"]) == len(row["labels"])


def trl_tokenize_row(features: dict[str, Any], tokenizer: PreTrainedTokenizerBase,
                     step_separator: str = "\n") -> dict[str, list[int]]:
    """TRL's ``PRMTrainer.tokenize_row`` without truncation: BOS + prompt, each completion + separator, the label
    (``int(label)``) on each completion's last token (its separator), -100 everywhere else."""
    prompt_ids = tokenizer(features["prompt"], add_special_tokens=False)["input_ids"]
    completions_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in features["completions"]]
    labels = [int(label) for label in features["labels"]]
    separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
    completions_ids = [c + separator_ids for c in completions_ids]
    labels = [[-100] * (len(c) - 1) + [label] for c, label in zip(completions_ids, labels)]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    return {"input_ids": prompt_ids + list(chain(*completions_ids)),
            "labels": [-100] * len(prompt_ids) + list(chain(*labels))}


def test_trl_trains_on_our_files_with_the_labels_on_the_tokens_ours_uses(tmp_path: Path) -> None:
    """With hard labels (TRL casts each with ``int()``: unlabelled or soft steps must be dropped or rounded first)."""
    write_stepwise(tmp_path / "train.jsonl", generate_dataset(8, seed=1))
    tok = build_char_tokenizer()
    ds = _load(tmp_path / "train.jsonl", tmp_path / "cache")
    trl = ds.map(trl_tokenize_row, fn_kwargs={"tokenizer": tok}, remove_columns=ds.column_names)
    for row, features in zip(trl, ds):
        ours = encode_steps(tok, features["prompt"], features["completions"])
        assert row["input_ids"] == ours.input_ids
        assert [i for i, lab in enumerate(row["labels"]) if lab != -100] == ours.positions
        assert [lab for lab in row["labels"] if lab != -100] == [int(x) for x in features["labels"]]


def readme_interop_blocks() -> list[str]:
    """The python blocks of the README's ``## Interop`` section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Interop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def saved_prm(tmp_path: Path) -> Path:
    """A tiny PRM built and saved by our code (``build_prm`` + ``save_prm``)."""
    model, tok = build_prm(size=TinyGPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128), seed=3)
    return save_prm(model, tok, tmp_path / "prm")


def test_a_saved_prm_scores_with_plain_transformers_as_prm_scorer_does(saved_prm: Path) -> None:
    """The README's lines (AutoTokenizer + AutoModelForTokenClassification, nothing from this package) give the
    scores ``PRMScorer`` gives."""
    (block,) = [b for b in readme_interop_blocks() if "AutoModelForTokenClassification" in b]
    assert "prm." not in block and "search." not in block  # plain transformers and torch only
    ns: dict[str, Any] = {}
    exec(block.replace("runs/prm/model", str(saved_prm)), ns)  # noqa: S102 - the README's own lines
    theirs = ns["scores"]
    ours = PRMScorer(str(saved_prm)).score([ns["prompt"]], [[ns["steps"]]])[0][0]
    assert len(theirs) == len(ns["steps"]) == 3
    assert theirs == pytest.approx(ours, abs=1e-5)
    assert max(theirs) - min(theirs) > 1e-4, theirs  # distinct scores: the comparison says something


def test_the_readme_loads_a_stepwise_file_with_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = [b for b in readme_interop_blocks() if "load_dataset" in b]
    examples = generate_dataset(3, seed=2)
    write_stepwise(tmp_path / "samples.jsonl", examples)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the user's cache
    ns: dict[str, Any] = {}
    exec(block.replace("runs/sample/samples.jsonl", str(tmp_path / "samples.jsonl")), ns)  # noqa: S102
    assert ns["ds"][0]["completions"] == examples[0].completions and ns["ds"][0]["labels"] == examples[0].labels
