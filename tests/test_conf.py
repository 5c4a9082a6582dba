"""Every config file under conf/ composes (recursively), each group option through a primary config; every primary
config belongs to a console entry point, writes one run directory and logs nowhere by default.
(Experiment files, ``conf/experiment/``, are composed with their own primary config by ``test_experiments.py``.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUP_FILES = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml")
                     if p.parent != CONF and p.relative_to(CONF).parts[0] != "experiment")

# Values a user must supply (``???``) get a placeholder so the rest of the file is checked too.
REQUIRED_PLACEHOLDERS = {"data.path": "/tmp/data.jsonl", "model.path": "/tmp/model"}


def _overrides_for_missing(cfg_overrides: list[str], primary: str) -> list[str]:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=primary, overrides=cfg_overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    unknown = [k for k in missing if k not in REQUIRED_PLACEHOLDERS]
    assert not unknown, f"required values without a test placeholder: {unknown}"
    return [f"{k}={REQUIRED_PLACEHOLDERS[k]}" for k in missing]


def _primary_with_group(group: str) -> tuple[str, bool]:
    """A primary config whose defaults list names ``group`` (or the first one, adding the group)."""
    for name in PRIMARIES:
        text = (CONF / f"{name}.yaml").read_text()
        if f"- {group}:" in text or f"- {group}@" in text:
            return name, True
    return PRIMARIES[0], False


def entry_point_configs() -> dict[str, str]:
    """Console entry point -> the ``config_name`` of its ``@hydra.main`` (entry points that are no Hydra app: left
    out)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    out = {}
    for name, target in scripts.items():
        module = target.split(":")[0]
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        found = re.search(r"@hydra\.main\([^)]*config_name=\"(\w+)\"", source)
        if found:
            out[name] = found.group(1)
    return out


def test_every_primary_config_is_an_entry_points_and_every_entry_point_has_its_config() -> None:
    configs = entry_point_configs()
    assert {"prm-train", "prm-eval", "prm-search", "prm-sweep", "prm-demo"} <= set(configs)
    assert set(configs.values()) == set(PRIMARIES), (
        f"entry points without a config: {sorted(set(configs.values()) - set(PRIMARIES))}; "
        f"configs no entry point reads: {sorted(set(PRIMARIES) - set(configs.values()))}")


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_config_composes_to_one_run_directory_and_no_logger(primary: str) -> None:
    """DESIGN 4: every run writes one directory (``run_dir``: Hydra's own files go under it, in ``hydra/``, and the
    working directory stays where the user launched); Weights & Biases is off unless asked for."""
    extra = _overrides_for_missing([], primary)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=primary, overrides=extra, return_hydra_config=True)
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra")
    OmegaConf.resolve(OmegaConf.create(plain))  # every interpolation resolves
    assert cfg.run_dir and cfg.hydra.run.dir == cfg.run_dir
    assert cfg.hydra.output_subdir == "hydra" and cfg.hydra.job.chdir is False
    assert cfg.logger.name == "none"


@pytest.mark.parametrize("rel", GROUP_FILES, ids=str)
def test_group_option_composes(rel: Path) -> None:
    group = str(rel.parent).replace("\\", "/")
    option = rel.stem
    if group.startswith("hydra/"):  # Hydra's own groups (hydra/launcher): override its default, read cfg.hydra
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name=PRIMARIES[0], overrides=[f"{group}={option}"], return_hydra_config=True)
        node = OmegaConf.select(cfg, group.replace("/", "."))
        assert node is not None, f"{rel} did not land under '{group}'"
        OmegaConf.to_container(node, resolve=True)
        return
    primary, has_group = _primary_with_group(group.split("/")[0])
    overrides = [f"{group}={option}" if has_group else f"+{group}={option}"]
    overrides += _overrides_for_missing(overrides, primary)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=primary, overrides=overrides)
    OmegaConf.resolve(cfg)
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert node is not None, f"{rel} did not land under '{group}'"


@pytest.mark.parametrize("fmt", ["plain", "tagged"])
def test_default_sampling_budgets_fit_the_default_worlds_longest_solution(fmt: str) -> None:
    """prm-sample's and prm-rl's max_new_tokens must hold a whole right solution of the longest default problem in
    either format (the character tokenizer: one token per character, plus EOS); 64 cut tagged solutions of 4+
    operations before their answer, which silently turned the tagged demo's samples and RL rewards into failures."""
    from prm.data.arith import solution_text
    from prm.worlds import make_world

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        sample = compose(config_name="sample", overrides=[f"data.format={fmt}"])
        rl = compose(config_name="rl", overrides=[f"data.format={fmt}"])
    world = make_world(sample.data)
    draw = world.problems("train", 300, 0)
    longest = max(len(solution_text(t.data, world.fmt)) for t in draw.tasks) + 1  # + EOS
    assert world.fmt.style == fmt
    assert longest <= int(sample.max_new_tokens) and longest <= int(rl.rl.max_new_tokens), longest
