"""``prm-distill``: distil test-time search back into the policy (expert iteration).

Reads top to bottom (``run``):

1. the search results to learn from (``results``: ``prm-search`` run directories, sweep cells or
   ``results.jsonl`` files) and the world (``data``, ``problems``) whose step format the prompts
   take and whose held-out split the student must never see;
2. one training example per problem (``build_examples``): the candidate the final rule ``rule``
   chose (``record["chosen"][rule]``), its full solution text after the policy prompt, kept when
   the filter lets it through:

   - ``correct``: its answer is the reference answer (needs reference answers: a results file whose
     problems have none is an error naming the file and its problem file);
   - ``min_score``: its aggregated PRM score is at least ``min_score``;
   - ``majority``: its answer is (tied for) the most frequent among the problem's finished
     candidates, shared by at least ``min_agreement`` of them (no reference needed, ``prm.voting``);
   - ``none``: every chosen candidate that gives an answer.

   Error records and problems without a finished candidate are skipped and counted; a chosen
   candidate without an answer is never an example. A problem found in several results files gives
   the example of the first file that yields one. Problems of the world's held-out split
   (``prm.worlds.heldout``: the arithmetic world's hash split) or of ``heldout_files`` (evaluation
   problem files) are refused unless ``allow_heldout``. Nothing kept is an error with the counts per
   reason;
3. ``distill_data.jsonl`` (prompt + completion records that ``prm-sft`` reads, with where each came
   from), rewritten only when it changed;
4. the student (``student``: a model directory, e.g. the policy itself; null: a tiny GPT from
   scratch) fine-tuned by ``rl.sft.run`` on a composed ``prm-sft`` config (``data=stepwise`` on that
   file, ``sft.*`` knobs merged over it) in ``run_dir/student``, a ``prm.runs`` stage: an unchanged
   stage (same config, same data, same student weights) is reused, an interrupted one resumes;
5. ``summary.json``: the counts, the data file and the student model.

The default flow searches TRAINING problems: ``prm-search split=train problem_seed=<seed> ...`` (its
default split is ``test``, the evaluation problems), then ``prm-distill results=[<search run_dir>]``.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from prm.data.errors import DataError
from prm.io import atomic_write_text, read_resumable_jsonl, write_json, write_jsonl
from prm.models.loading import ModelLoadError
from prm.runs import cached_stage, model_fingerprint
from prm.steps import StepFormat, policy_prompt
from prm.voting import answer_classes
from prm.worlds import World, heldout, make_world
from prm.worlds.files import problem_texts
from rl import sft
from search.candidates import FINAL_RULES

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
RESULTS, DATA, SUMMARY, STUDENT = "results.jsonl", "distill_data.jsonl", "summary.json", "student"
FILTERS: tuple[str, ...] = ("correct", "min_score", "majority", "none")
KEPT = "kept"
SKIP_REASONS: tuple[str, ...] = ("error", "no_finished", "duplicate")  # not the filter's doing
DROP_REASONS: tuple[str, ...] = ("no_answer", "incorrect", "below_min_score", "not_majority")


class DistillError(ValueError):
    """A results file or setting prm-distill cannot use; the message says which and why."""


# ---------------------------------------------------------------- reading search results


def results_file(source: str | Path) -> Path:
    """``results.jsonl`` of a prm-search run directory or sweep cell, or the file itself."""
    p = Path(source).expanduser()
    path = p / RESULTS if p.is_dir() else p
    if not path.is_file():
        raise DistillError(f"no search results at {p} (give a prm-search run_dir, a sweep cell or a results.jsonl)")
    return path


def problem_file_of(path: Path) -> str | None:
    """The problem file (``problems``) recorded in the search run's ``config.yaml``, if any."""
    cfg_path = path.parent / "config.yaml"
    if not cfg_path.is_file():
        return None
    found = OmegaConf.select(OmegaConf.load(cfg_path), "problems", default=None)
    return None if found is None else str(found)


def heldout_test(world: World, files: Sequence[str | Path] = ()) -> Callable[[str], bool]:
    """Whether a problem text is an evaluation problem: in the world's held-out split (a world with a
    hash split, ``holdout_fraction``: the arithmetic world) or in one of ``files`` (by problem text)."""
    fraction = getattr(world, "holdout_fraction", None)
    banned: set[str] = set()
    for f in files:
        banned |= problem_texts(f)

    def test(text: str) -> bool:
        return (fraction is not None and heldout(text, float(fraction))) or " ".join(text.split()) in banned

    return test


def agreement(candidates: Sequence[Mapping[str, Any]], index: int) -> tuple[bool, float]:
    """Whether candidate ``index``'s answer is (tied for) the most frequent equivalent answer among
    ``candidates``, and the share of candidates giving it (``prm.voting.answer_classes``)."""
    classes = answer_classes([c.get("answer") for c in candidates])
    mine = next((m for m in classes if index in m), [])
    biggest = max((len(m) for m in classes), default=0)
    return bool(mine) and len(mine) == biggest, len(mine) / max(1, len(candidates))


def judge(record: Mapping[str, Any], rule: str, filt: str, min_score: float,
          min_agreement: float) -> tuple[dict[str, Any] | None, str]:
    """The chosen candidate of one search record and why it is kept (``KEPT``) or not (a reason)."""
    if record.get("error"):
        return None, "error"
    cands = record.get("candidates") or []
    if not cands:
        return None, "no_finished"
    index = (record.get("chosen") or {}).get(rule, {}).get("index")
    if index is None:  # a voting rule finds no answer to vote for
        return None, "no_answer"
    cand = cands[index]
    if cand.get("answer") is None or not str(cand.get("answer")).strip():
        return cand, "no_answer"
    if filt == "correct" and not cand.get("correct"):
        return cand, "incorrect"
    if filt == "min_score" and not float(cand.get("score", float("-inf"))) >= min_score:
        return cand, "below_min_score"
    if filt == "majority":
        agrees, share = agreement(cands, index)
        if not agrees or share < min_agreement:
            return cand, "not_majority"
    return cand, KEPT


def _has_reference(record: Mapping[str, Any]) -> bool:
    answer = record.get("answer")
    return answer is not None and str(answer).strip() != ""


def build_examples(sources: Sequence[Path], fmt: StepFormat, *, rule: str = "weighted_majority",
                   filt: str = "correct", min_score: float = 0.5, min_agreement: float = 0.0,
                   is_heldout: Callable[[str], bool] | None = None,
                   allow_heldout: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One example per problem of the results files (see the module docstring) and the counts:
    ``problems`` (distinct problems read), ``kept`` (examples), per record read the reason it gave
    no example (``SKIP_REASONS``, ``DROP_REASONS``), ``heldout`` (kept evaluation problems, only with
    ``allow_heldout``) and ``kept_correct`` (kept examples whose answer is right, where a reference
    exists: the precision of ``min_score`` and ``majority``)."""
    if rule not in FINAL_RULES:
        raise DistillError(f"rule={rule!r} is not a final rule (one of {', '.join(FINAL_RULES)})")
    if filt not in FILTERS:
        raise DistillError(f"filter={filt!r} is not a filter (one of {', '.join(FILTERS)})")
    if filt == "majority" and not 0.0 <= min_agreement <= 1.0:
        raise DistillError(f"min_agreement={min_agreement} must be a fraction in [0, 1]")
    records = [(path, rec) for path in sources for rec in read_resumable_jsonl(path)]
    _check_sources(records, filt, is_heldout, allow_heldout)
    counts: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    done: set[str] = set()
    seen: set[str] = set()
    for path, rec in records:
        key = " ".join(str(rec["prompt"]).split())
        seen.add(key)
        if key in done:
            counts["duplicate"] += 1
            continue
        cand, why = judge(rec, rule, filt, min_score, min_agreement)
        counts[why] += 1
        if why != KEPT or cand is None:
            continue
        done.add(key)
        counts["heldout"] += bool(is_heldout and is_heldout(rec["prompt"]))
        counts["kept_correct"] += bool(cand.get("correct")) if _has_reference(rec) else 0
        examples.append({
            "prompt": policy_prompt(rec["prompt"], fmt), "completion": cand["text"], "id": rec.get("id"),
            "answer": rec.get("answer"), "given_answer": cand.get("answer"), "correct": cand.get("correct"),
            "score": cand.get("score"), "difficulty": rec.get("difficulty"), "rule": rule, "source": str(path),
        })
    counts_out: dict[str, Any] = {"problems": len(seen), KEPT: len(examples),
                                  **{k: counts[k] for k in (*SKIP_REASONS, *DROP_REASONS)},
                                  "heldout": counts["heldout"], "kept_correct": counts["kept_correct"]}
    if not examples:
        raise DistillError(
            f"nothing to train on: no problem's chosen candidate ({rule}) passed filter={filt} "
            f"({', '.join(f'{k}: {v}' for k, v in counts_out.items() if k not in (KEPT, 'kept_correct'))}) "
            f"in {', '.join(map(str, sources))}")
    return examples, counts_out


def _check_sources(records: Sequence[tuple[Path, Mapping[str, Any]]], filt: str,
                   is_heldout: Callable[[str], bool] | None, allow_heldout: bool) -> None:
    """Refuse records that are no search results, evaluation problems (unless allowed) and, for
    ``filter=correct``, problems without a reference answer."""
    for path, rec in records:
        if not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("candidates"), list):
            raise DistillError(f"{path}: a record without a prompt or candidates list: not prm-search results")
    if is_heldout is not None and not allow_heldout:
        bad: dict[Path, list[str]] = {}
        for path, rec in records:
            if is_heldout(str(rec["prompt"])):
                bad.setdefault(path, []).append(str(rec.get("id")))
        if bad:
            where = "; ".join(f"{p}: {len(ids)} problems (e.g. {', '.join(ids[:3])})" for p, ids in bad.items())
            raise DistillError(f"results hold held-out (evaluation) problems, which must never train the student: "
                               f"{where}. Search training problems (prm-search split=train) or set allow_heldout=true")
    if filt == "correct":
        for path, rec in records:
            if not rec.get("error") and not _has_reference(rec):
                problems = problem_file_of(path)
                raise DistillError(
                    f"filter=correct needs reference answers, but problem {rec.get('id')!r} in {path} has none"
                    + (f" (problem file {problems})" if problems else "")
                    + ": use filter=majority or filter=min_score, or give the problems their answers")


# ---------------------------------------------------------------- the student


@contextmanager
def _hydra_conf() -> Iterator[None]:
    """Compose from ``conf/``: inside a Hydra app its own context, else a temporary one."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        yield


def sft_config(cfg: DictConfig, data_path: Path, stage_dir: Path) -> DictConfig:
    """prm-sft's config for the student: ``data=stepwise`` on the distillation data, the student model
    (``model=hf_local`` at ``student``, or the tiny GPT from scratch), then ``cfg.sft`` merged over it
    (an unknown key is an error)."""
    groups = ["data=stepwise"] + ([] if cfg.student is None else ["model=hf_local"])
    with _hydra_conf():
        base = compose(config_name="sft", overrides=groups)
    values: dict[str, Any] = {"run_dir": str(stage_dir), "seed": int(cfg.seed), "eval_problems": 0,
                              "data": {"path": str(data_path)},
                              "logger": OmegaConf.to_container(cfg.logger, resolve=True)}
    if cfg.student is not None:
        values["model"] = {"path": str(cfg.student), "dtype": str(cfg.student_dtype)}
    OmegaConf.set_struct(base, True)
    try:
        return OmegaConf.merge(base, values, OmegaConf.to_container(cfg.sft, resolve=True))  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - omegaconf's key errors: a typo in sft.*
        raise DistillError(f"sft: {e}") from None


def file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()


def train_student(cfg: DictConfig, data_path: Path, run_dir: Path) -> dict[str, Any]:
    """Fine-tune the student on the data (``rl.sft.run``), reusing a finished identical stage."""
    stage_dir = run_dir / STUDENT
    sft_cfg = sft_config(cfg, data_path, stage_dir)
    resolved = OmegaConf.to_container(sft_cfg, resolve=True)
    assert isinstance(resolved, dict)
    resolved["train"].pop("progress", None)  # a progress bar does not change the student
    key = {"sft": resolved, "data": file_digest(data_path), "student_fingerprint": model_fingerprint(cfg.student)}
    return cached_stage(stage_dir, key, lambda: sft.run(sft_cfg), "[distill] student", "prm-sft")  # same data, config, start


# ---------------------------------------------------------------- the app


def run(cfg: DictConfig) -> dict[str, Any]:
    """Everything ``prm-distill`` does, callable in-process; returns the summary it writes."""
    if not cfg.results:
        raise DistillError("no search results given: results=[<prm-search run_dir>, ...]")
    results = cfg.results if isinstance(cfg.results, Sequence) and not isinstance(cfg.results, str) else [cfg.results]
    sources = [results_file(str(s)) for s in results]
    world = make_world(cfg.data, cfg.get("problems"))
    is_heldout = heldout_test(world, list(cfg.heldout_files or []))
    examples, counts = build_examples(sources, world.fmt, rule=str(cfg.rule), filt=str(cfg.filter),
                                      min_score=float(cfg.min_score), min_agreement=float(cfg.min_agreement),
                                      is_heldout=is_heldout, allow_heldout=bool(cfg.allow_heldout))
    print(f"[distill] {counts[KEPT]} examples from {counts['problems']} problems (rule {cfg.rule}, filter {cfg.filter}); "
          + ", ".join(f"{k} {counts[k]}" for k in (*SKIP_REASONS, *DROP_REASONS) if counts[k]))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    data_path = run_dir / DATA
    if not data_path.exists() or read_resumable_jsonl(data_path) != examples:  # unchanged: the stage is reused
        write_jsonl(data_path, examples)
    student = train_student(cfg, data_path, run_dir)
    summary = {"sources": [str(s) for s in sources], "rule": cfg.rule, "filter": cfg.filter, "counts": counts,
               "data": str(data_path), "student_from": None if cfg.student is None else str(cfg.student),
               "student_model": student.get("model_dir"), "sft": student}
    write_json(run_dir / SUMMARY, summary)
    print(f"[distill] student saved to {student.get('model_dir')}; summary in {run_dir / SUMMARY}")
    return summary


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="distill")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (DistillError, DataError, ModelLoadError, sft.SFTConfigError) as e:
        print(f"prm-distill: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
