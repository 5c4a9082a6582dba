"""``prm-demo``: the end-to-end job on the arithmetic world, every stage cached in its run directory.

Stages (each the same code as its own entry point, run in-process on a composed config):

1. ``sft``        train the policy from scratch on solutions with injected errors (``prm-sft``)
2. ``prm_data``   sample k solutions per training problem and label every step exactly (``prm-sample``)
3. ``test``       sample 16 solutions per held-out problem: the policy's own accuracy table
4. ``prm``        train the PRM from the policy's backbone (``prm-train``)
5. ``eval_*``     evaluate the PRM, the exact oracle and the policy-likelihood reranker (``prm-eval``),
                  and which kinds of first error (systematic, slip, ...) the PRM and the likelihood catch;
   ``mc_labels``  Monte-Carlo step labels of training samples against the exact ones, k = 1, 2, 4
                  (``prm-sample labeller=mc``)
6. ``sweep``      greedy, majority, best-of-N, weighted best-of-N, beam and lookahead at budgets up to 64
                  (``prm-sweep``)
7. ``distill*``  one round of expert iteration (``prm-distill``): the teacher (policy + PRM search) on
                  training problems, the policy fine-tuned on its correct choices, and policy, teacher and
                  student on the same held-out problems
8. ``rl_*``       RL from the SFT policy at equal rollouts (``prm-rl``), one stage per entry of
                  ``stages.rl``: outcome-only GRPO, the PRM alone as the reward (gamed: its reward rises
                  while true accuracy falls), and a process reward that is not gamed
9. ``report.md``  the tables and plots

A stage whose config is unchanged is reused (``prm.runs``); an interrupted stage resumes where
its own entry point does. The world's knobs are the ``data`` group's (``conf/data/arith.yaml``)
and reach every stage from here, so one override changes the whole pipeline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from prm.runs import cached_stage, stage_info

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def world_overrides(cfg: DictConfig) -> list[str]:
    """``data.world.*`` and ``data.format`` overrides that carry this run's world to every stage."""
    world = OmegaConf.to_container(cfg.data.world, resolve=True)
    assert isinstance(world, dict)
    return [f"data.format={cfg.data.format}", *(f"data.world.{k}={_override_value(v)}" for k, v in world.items())]


def _override_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(f"'{x}'" for x in v) + "]"
    return str(v)


def run_stage(name: str, config_name: str, overrides: list[str], fn: Callable[[DictConfig], dict[str, Any]],
              run_dir: Path, after: tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose a stage's config, run it unless an identical run finished, return its summary.

    A stage's identity is its own config plus the recorded configs of the stages it reads (``after``):
    a retrained PRM at the same path makes its evaluation and sweep run again.
    """
    stage_dir = run_dir / name
    cfg = compose(config_name=config_name, overrides=[f"run_dir={stage_dir}", *overrides])
    key = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(key, dict)
    key.pop("progress", None)
    if after:
        key["after"] = {a: stage_info(run_dir / a)["config"] for a in after}
    return cached_stage(stage_dir, key, lambda: fn(cfg), f"[demo] {name}", config_name)


def error_kinds(run_dir: Path, cfg: DictConfig, evals: dict[str, str]) -> dict[str, Any]:
    """First-error steps of the held-out samples by kind, per scorer (``prm.evaluation.error_kinds``)."""
    from prm.data.arith import ArithConfig
    from prm.data.stepwise import read_stepwise
    from prm.evaluation.error_kinds import first_errors_by_kind

    world = ArithConfig.from_dict(OmegaConf.to_container(cfg.data.world, resolve=True))
    examples = read_stepwise(run_dir / "test" / "samples.jsonl")
    out: dict[str, Any] = {}
    for name, stage in evals.items():
        with (run_dir / stage / "scores.jsonl").open(encoding="utf-8") as f:
            scores = [json.loads(line)["step_scores"] for line in f]
        out[name] = first_errors_by_kind(examples, scores, world)
    return out


def distill_stages(run_dir: Path, cfg: DictConfig, world: list[str], policy: str, prm_model: str) -> dict[str, Any]:
    """One round of expert iteration: the teacher searches training problems, ``prm-distill`` fine-tunes the policy on
    its correct choices; the policy (greedy), the teacher and the student (greedy) on the same held-out problems."""
    from rl import distill
    from search import run as search

    s = cfg.stages
    prm = f"scorer.model_or_path={prm_model}"
    greedy = ["search=greedy", "scorer=random"]
    out = {"distill_teacher": run_stage("distill_teacher", "search", [
        *world, f"policy={policy}", prm, *s.distill_train, *s.distill_search], search.run, run_dir, after=("sft", "prm"))}
    def distill_or_skip(stage_cfg: DictConfig) -> dict[str, Any]:
        try:
            return distill.run(stage_cfg)
        except distill.DistillError as e:  # e.g. a policy that never answers: the report says why
            print(f"[demo] distill: skipped: {e}")
            return {"skipped": str(e)}

    out["distill"] = run_stage("distill", "distill", [
        *world, f"results=[{run_dir / 'distill_teacher'}]", f"student={policy}", *s.distill], distill_or_skip, run_dir,
        after=("sft", "distill_teacher"))
    out["distill_eval_teacher"] = run_stage("distill_eval_teacher", "search", [
        *world, f"policy={policy}", prm, *s.distill_eval, *s.distill_search], search.run, run_dir, after=("sft", "prm"))
    out["distill_eval_policy"] = run_stage("distill_eval_policy", "search", [
        *world, f"policy={policy}", *s.distill_eval, *greedy], search.run, run_dir, after=("sft",))
    if "skipped" in out["distill"]:
        return out
    out["distill_eval_student"] = run_stage("distill_eval_student", "search", [
        *world, f"policy={out['distill']['student_model']}", *s.distill_eval, *greedy], search.run, run_dir,
        after=("distill",))
    return out


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="demo")
def main(cfg: DictConfig) -> None:
    from prm import prm_eval, prm_train
    from rl.report import write_report
    from rl import grpo, sft
    from search import sample, sweep

    if cfg.data.source != "arith":
        raise SystemExit(f"prm-demo runs on the arithmetic world (data=arith), got data.source={cfg.data.source!r}")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world = world_overrides(cfg)
    s = cfg.stages
    t0 = time.perf_counter()
    summaries: dict[str, Any] = {}
    summaries["sft"] = run_stage("sft", "sft", [*world, *s.sft], sft.run, run_dir)
    policy = str(run_dir / "sft" / "model")
    summaries["prm_data"] = run_stage("prm_data", "sample", [*world, f"policy={policy}", *s.prm_data], sample.run, run_dir,
                                      after=("sft",))
    summaries["test"] = run_stage("test", "sample", [*world, f"policy={policy}", *s.test], sample.run, run_dir,
                                  after=("sft",))
    summaries["prm"] = run_stage("prm", "prm_train", [
        f"init_from={policy}", f"data.path={run_dir / 'prm_data' / 'samples.jsonl'}", f"style={cfg.data.format}",
        *s.prm], prm_train.run, run_dir,
        after=("sft", "prm_data"))
    prm_model = str(run_dir / "prm" / "model")
    test_samples = f"data.path={run_dir / 'test' / 'samples.jsonl'}"
    summaries["eval_prm"] = run_stage("eval_prm", "prm_eval", [
        f"scorer.model_or_path={prm_model}", test_samples, *s.eval], prm_eval.run, run_dir, after=("prm", "test"))
    summaries["eval_oracle"] = run_stage("eval_oracle", "prm_eval", [
        "scorer=oracle", f"scorer.world.world.modulus={_override_value(cfg.data.world.modulus)}",
        f"scorer.world.format={cfg.data.format}", test_samples, *s.eval],
        prm_eval.run, run_dir, after=("test",))
    summaries["eval_likelihood"] = run_stage("eval_likelihood", "prm_eval", [
        "scorer=likelihood", f"scorer.model_or_path={policy}", f"scorer.style={cfg.data.format}", test_samples,
        *s.eval], prm_eval.run, run_dir,
        after=("sft", "test"))
    if s.get("mc_labels") is not None:
        summaries["mc_labels"] = run_stage("mc_labels", "sample", [*world, f"policy={policy}", *s.mc_labels], sample.run,
                                           run_dir, after=("sft",))
    summaries["error_kinds"] = error_kinds(run_dir, cfg, {"PRM": "eval_prm", "likelihood": "eval_likelihood"})
    summaries["sweep"] = run_stage("sweep", "sweep", [
        *world, f"policy={policy}", f"scorer.model_or_path={prm_model}", *s.sweep], sweep.run, run_dir,
        after=("sft", "prm"))
    if s.get("distill") is not None:
        summaries.update(distill_stages(run_dir, cfg, world, policy, prm_model))
    for name, overrides in (s.get("rl") or {}).items():
        summaries[name] = run_stage(name, "rl", [
            *world, f"policy={policy}", f"scorer.model_or_path={prm_model}", *s.rl_common, *overrides], grpo.run,
            run_dir, after=("sft", "prm"))
    report = write_report(run_dir, summaries, cfg)
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s; report: {report}")


if __name__ == "__main__":
    main()
