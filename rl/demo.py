"""``prm-demo``: the end-to-end job on the arithmetic world, every stage cached in its run directory.

Stages so far: generate the world's problems with solutions carrying injected errors, label every
step exactly, and print the dataset's statistics. Later issues add policy SFT, sampling, PRM
training and evaluation, and the search sweep. Re-running reuses what is already in ``run_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from prm.data.arith import ARITH_FORMAT, ArithConfig, generate_dataset
from prm.data.stats import dataset_stats, format_stats
from prm.data.stepwise import read_stepwise, write_stepwise
from prm.io import write_json
from prm.runs import mark_stage_done, stage_done
from prm.steps import StepFormat

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def stage_data(cfg: DictConfig, run_dir: Path) -> Path:
    """Generate and label the arithmetic-world training data; reused while ``data`` config is unchanged."""
    stage_dir = run_dir / "data"
    out = stage_dir / "train.jsonl"
    data_cfg: dict[str, Any] = OmegaConf.to_container(cfg.data, resolve=True)  # type: ignore[assignment]
    if stage_done(stage_dir, data_cfg) and out.exists():
        print(f"[data] reusing {out}")
        return out
    fmt = ARITH_FORMAT if cfg.data.format == "plain" else StepFormat(style="tagged")
    examples = generate_dataset(
        cfg.data.n_problems, ArithConfig.from_dict(OmegaConf.to_container(cfg.data.world, resolve=True)), cfg.data.seed,
        samples_per_problem=cfg.data.samples_per_problem, fmt=fmt,
    )
    write_stepwise(out, examples)
    mark_stage_done(stage_dir, data_cfg, records=len(examples))
    print(f"[data] wrote {len(examples)} labelled solutions to {out}")
    return out


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="demo")
def main(cfg: DictConfig) -> None:
    if cfg.data.source != "arith":
        raise SystemExit(f"prm-demo runs on the arithmetic world (data=arith), got data.source={cfg.data.source!r}")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data_path = stage_data(cfg, run_dir)
    stats = dataset_stats(read_stepwise(data_path))
    print(format_stats(stats))
    write_json(run_dir / "summary.json", {"data": stats})
    print(f"[demo] summary written to {run_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
