"""Monte-Carlo step labels against the arithmetic world's exact labels, as a function of k, with their cost.

Samples ``--samples`` solutions for each of ``--problems`` arithmetic problems with ``prm-sample
labeller=mc`` (one run at ``mc.k = --k``, hard labels), then measures the labels of the first
k' = 1, 2, 4, .. k completions of every prefix against the exact labels
(``search.mc_labels.label_quality``): accuracy and AUROC of hard and soft labels, ECE of the soft
labels, the "right answer through a wrong step" false positives, and the policy tokens spent per
label. The outcome-only labels (every step labelled with the final answer's correctness, as an ORM
is trained; no rollouts) are printed as the k = 0 reference. Usage::

    OMP_NUM_THREADS=1 python benchmarks/mc_label_quality.py --policy runs/sft/model --problems 100 --samples 2
    OMP_NUM_THREADS=1 python benchmarks/mc_label_quality.py --train-steps 300      # a tiny policy fitted here

Without ``--policy`` a 2-layer 128-dim character GPT is fitted for ``--train-steps`` steps on the
world's training solutions (errors injected), which takes about a minute on one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from prm.data.stepwise import read_stepwise
from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
from search import sample
from search.mc_labels import format_quality, label_quality

CONF = Path(__file__).resolve().parents[1] / "conf"


def fit_policy(out: Path, steps: int, batch: int = 64, seed: int = 0) -> Path:
    """A tiny character GPT fitted on the arithmetic world's training solutions (``generation.train``)."""
    from generation import train  # benchmarks/generation.py, beside this script

    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=2, n_embd=128, n_head=4, n_positions=256), seed=seed)
    train(model, tok, steps, batch=batch, seed=seed)
    return save_model(model, tok, out)


def outcome_labels(examples: list) -> str:  # type: ignore[type-arg]
    """The k = 0 reference: every rolled-out step labelled with the solution's final correctness."""
    y, o = [], []
    for ex in examples:
        for e, right in zip(ex.extra["exact_labels"], ex.extra["mc_right"], strict=True):
            if right:
                y.append(e)
                o.append(float(bool(ex.extra["correct"])))
    y_, o_ = np.array(y), np.array(o)
    neg = y_ == 0
    return (f"   0  outcome-only labels (no rollouts, 0 tokens): accuracy {(y_ == o_).mean():.3f}, "
            f"FP_rate {(o_[neg] == 1).mean() if neg.any() else float('nan'):.3f}, "
            f"FN_rate {(o_[~neg] == 0).mean() if (~neg).any() else float('nan'):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, help="a trained policy directory (default: fit a tiny one here)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--samples", type=int, default=2, help="sampled solutions per problem")
    ap.add_argument("--k", type=int, default=16, help="completions per step prefix")
    ap.add_argument("--split", default="test")
    ap.add_argument("--problem-seed", type=int, default=1000)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, help="keep the prm-sample run here (default: a temporary directory)")
    ap.add_argument("overrides", nargs="*", help="more prm-sample overrides, e.g. data.world.max_ops=4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        policy = args.policy or fit_policy(Path(tmp) / "policy", args.train_steps)
        run_dir = args.run_dir or Path(tmp) / "run"
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name="sample", overrides=[
                f"policy={policy}", f"run_dir={run_dir}", f"n_problems={args.problems}", f"k={args.samples}",
                f"split={args.split}", f"problem_seed={args.problem_seed}", f"max_new_tokens={args.max_new_tokens}",
                f"seed={args.seed}", "greedy=false", "progress=false", "labeller=mc", f"mc.k={args.k}",
                "mc.label=hard", *args.overrides])
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # prm-sample's own tables: the one below is enough
            summary = sample.run(cfg)
        elapsed = time.perf_counter() - start
        examples = read_stepwise(run_dir / "samples.jsonl")
    q = label_quality(examples)
    cost = summary["mc"]["compute"]
    print(f"\npolicy {policy}: {args.problems} problems x {args.samples} samples, sampled accuracy "
          f"{summary['metrics']['all']['sampled']:.3f}; {len(examples)} solutions, {cost['labels']} step labels "
          f"({cost['rollout_labels']} rolled out), k={args.k}: {cost['policy_tokens']} policy tokens "
          f"({cost['generated_tokens']} generated + {cost['prompt_tokens']} prompt), {elapsed:.0f} s in all\n")
    print(format_quality(q))
    print(outcome_labels(examples))


if __name__ == "__main__":
    main()
