"""Every experiment file (``conf/experiment/*.yaml``) composes with the primary config its header names.

Each file starts with ``# @package _global_``, then a header with its launch command(s) (``# Launch: <entry point>
... +experiment=<name> ...``) and what it needs (``# Needs:``). The test composes each launch command exactly as the
console entry point would (its primary config, the command's overrides; a multirun (``-m``) once per job of its grid:
``hydra.sweeper.params`` and comma-separated overrides), and checks that

- the command supplies every required value (no ``???`` left) and everything resolves;
- every key the experiment sets exists in what it changes (a typo is an error, not a new key): plain keys in the
  primary config and its groups, knobs of a ``_target_`` in its signature, ``train`` in ``TrainConfig``, ``search`` in
  its strategy (``build_search``: also N divisible by M), ``sweep`` in ``plan_cells``;
- every ``_target_`` is built when that needs no model (``hydra.utils.instantiate``; prm-rl's graders with
  ``rl.rewards.make_rewards``), else its class resolves (``hydra.utils.get_class``: generators and scorers that load
  a model);
- each job of a multirun writes its own ``run_dir``, Hydra's job directory named alike; a ``prm-search`` multirun
  writes cells ``<dir>/cells/<strategy>-N<n>-s<seed>`` that a second launch command
  (``prm-sweep sweep.mode=collect run_dir=<dir>``) collects;
- a model or data path from outside the project (an absolute path in the launch command) is required: without it the
  launch fails at once, never running on a default.
"""

from __future__ import annotations

import inspect
import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from test_conf import entry_point_configs  # the tests' own helper: console entry point -> primary config

from prm.data.prm800k import PRM800KOptions
from prm.scoring.baselines import RandomScorer
from prm.train.loop import TrainConfig
from prm.worlds import make_world
from rl.rewards import make_rewards
from search.run import build_search
from search.sweep import CELL_NAME, CELLS, plan_cells

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted((CONF / "experiment").glob("*.yaml"))
PRIMARY = entry_point_configs()  # console entry point -> its primary config (the config_name of its @hydra.main)
MODEL_KEYS = ("model_or_path", "model_path")  # a _target_ with one of these loads a model: resolve it only
NEW_KEYS = {"sweep_dir"}  # plain keys an experiment may add (read by its own interpolations)


# ------------------------------------------------------------------------------------------ the header
def header(path: Path) -> list[str]:
    """The comment lines at the top of a config file, without their ``#``."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def launch_commands(path: Path) -> list[list[str]]:
    """The header's launch commands (``Launch:`` and the indented command lines right after it), split like a shell."""
    out: list[list[str]] = []
    inside = False
    for raw in path.read_text().splitlines():
        if not raw.startswith("#"):
            break
        text = raw[1:].strip()
        if text.startswith("Launch:"):
            inside, text = True, text.removeprefix("Launch:").strip()
        elif not (inside and raw.startswith("#   ") and text.split()[0] in PRIMARY):
            inside = False
            continue
        out.append(shlex.split(text))
    return out


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_header_says_how_to_launch_it_and_what_it_needs(path: Path) -> None:
    lines = header(path)
    assert lines[0] == "@package _global_", f"{path.name}: the first line must be '# @package _global_'"
    commands = launch_commands(path)
    assert commands, f"{path.name}: no '# Launch: <command>' line"
    first = commands[0]
    assert first[0] in PRIMARY, f"{path.name}: {first[0]} is not a Hydra entry point"
    assert f"+experiment={path.stem}" in first, f"{path.name}: its launch command must say +experiment={path.stem}"
    assert any(line.startswith("Needs:") for line in lines), f"{path.name}: no '# Needs:' line"


def test_there_are_the_experiments_the_project_documents() -> None:
    names = {p.stem for p in EXPERIMENTS}
    assert {"prm800k_local_lm", "math500_vllm", "math500_best_of_n", "math500_beam", "math500_dvts",
            "snell_sweep_slurm"} <= names


# ------------------------------------------------------------------------------------------ composing
def _compose(primary: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=primary, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve as in a run
    return cfg


def jobs(command: list[str]) -> Iterator[list[str]]:
    """The overrides of each job a command launches: one, or (``-m``) the grid of ``hydra.sweeper.params`` and
    comma-separated overrides, as Hydra's basic sweeper expands it."""
    args = [a for a in command[1:] if a not in ("-m", "--multirun")]
    if len(args) == len(command) - 1:
        yield args
        return
    params = OmegaConf.select(_compose(PRIMARY[command[0]], _fixed(args)), "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items() if not any(_key(a) == k for a in args)] + args
    parsed = OverridesParser.create().parse_overrides(lines)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    yield from (list(job) for job in itertools.product(*choices))


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _fixed(args: list[str]) -> list[str]:
    """The overrides with each sweep (``a,b``) replaced by its first value (to read the config's own grid)."""
    parsed = OverridesParser.create().parse_overrides(args)
    return [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
            else o.input_line for o in parsed]


def _without_hydra(cfg: DictConfig) -> DictConfig:
    c = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(c, dict)
    c.pop("hydra", None)
    return OmegaConf.create(c)


def _targets(node: Any, where: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield where, node
        for k in node:
            yield from _targets(node._get_node(k), f"{where}.{k}" if where else str(k))


def _keys(node: Any, where: str = "") -> set[str]:
    """Every dotted key of a config; a ``_target_`` node counts as one key (its knobs are checked by signature)."""
    if not isinstance(node, DictConfig) or "_target_" in node:
        return {where}
    return {k for key in node for k in _keys(node._get_node(key), f"{where}.{key}" if where else str(key))} or {where}


def _check_targets(cfg: DictConfig) -> None:
    """Build (or, with a model to load, resolve) every ``_target_`` but the rewards (``_check_entry_point``)."""
    for where, node in _targets(cfg):
        if where.startswith("reward."):
            continue
        cls = get_class(node._target_)
        params = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(node) - {"_target_"} - set(params))
            assert not unknown, f"{where}: {node._target_} takes no {unknown}"
        if any(k in node for k in MODEL_KEYS):
            continue
        assert isinstance(instantiate(node, _convert_="all"), cls)


def _check_entry_point(primary: str, cfg: DictConfig) -> None:
    """What each entry point validates before it loads a model."""
    if "train" in cfg:
        TrainConfig.from_dict(OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
    if primary == "search":
        build_search(cfg.search, seed=int(cfg.seed))
    if primary == "sweep" and cfg.sweep.mode == "run":
        assert plan_cells(OmegaConf.to_container(cfg.sweep, resolve=True))  # type: ignore[arg-type]
    if cfg.data.get("source") == "prm800k":
        PRM800KOptions(neutral=cfg.data.neutral, include_alternatives=bool(cfg.data.include_alternatives))
    if "reward" in cfg:  # prm-rl's graders (rl.rewards.make_rewards), a random scorer standing in for the PRM
        world = make_world(cfg.data) if cfg.data.get("source") == "arith" else None
        assert make_rewards(cfg.reward, world=world, scorer=RandomScorer())


@pytest.fixture(autouse=True)
def no_path_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variables experiments read paths from (``${oc.env:NAME}``) are unset: the launch command
    alone must supply them."""
    for path in EXPERIMENTS:
        for name in re.findall(r"\$\{oc\.env:(\w+)\}", path.read_text()):
            monkeypatch.delenv(name, raising=False)


def _experiment_commands() -> list[tuple[str, list[str]]]:
    return [(p.stem, c) for p in EXPERIMENTS for c in launch_commands(p) if f"+experiment={p.stem}" in c]


@pytest.mark.parametrize("name,command", _experiment_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_the_launch_command_composes_and_builds_what_needs_no_model(name: str, command: list[str]) -> None:
    primary = PRIMARY[command[0]]
    grid = list(jobs(command))
    run_dirs, seen = [], set()
    for overrides in grid:
        cfg = _compose(primary, overrides)
        plain = _without_hydra(cfg)
        assert not OmegaConf.missing_keys(plain), f"{name}: the launch command leaves {OmegaConf.missing_keys(plain)}"
        OmegaConf.to_container(plain, resolve=True)  # every interpolation resolves
        choices = tuple(f"{g}={c}" for g, c in cfg.hydra.runtime.choices.items() if g != "experiment" and c is not None)
        if choices not in seen:  # the same config without the experiment (once per combination of group options)
            seen.add(choices)
            base = _compose(primary, [o for o in overrides if _key(o) != "experiment"] + list(choices))
            added = _keys(plain) - _keys(_without_hydra(base)) - NEW_KEYS
            assert not added, f"{name} sets keys its configs do not have (a typo?): {sorted(added)}"
        _check_entry_point(primary, plain)
        _check_targets(plain)
        plugins = {k: OmegaConf.to_container(cfg.hydra[k], resolve=True) for k in ("launcher", "sweeper")}
        _check_targets(OmegaConf.create({k: v for k, v in plugins.items()  # Hydra builds its own basic ones
                                         if not str(v["_target_"]).startswith("hydra._internal.")}))
        run_dirs.append(Path(cfg.run_dir))
        if len(grid) > 1:
            subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
            assert subdir == run_dirs[-1].name, f"{name}: Hydra's job directory {subdir} is not named as its run_dir"
    assert len(set(run_dirs)) == len(grid), f"{name}: jobs of its multirun share a run_dir"
    if len(grid) > 1 and primary == "search":  # prm-search cells, all under one cells/ directory, named as prm-sweep's
        assert {d.parent.name for d in run_dirs} == {CELLS} and len({d.parent for d in run_dirs}) == 1
        assert all(CELL_NAME.match(d.name) for d in run_dirs), [d.name for d in run_dirs]


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS
                                  if any(c[0] == "prm-search" and "-m" in c for c in launch_commands(p))],
                         ids=lambda p: p.stem)
def test_a_prm_search_multirun_names_the_command_that_collects_its_cells(path: Path) -> None:
    commands = launch_commands(path)
    run_cmd = next(c for c in commands if c[0] == "prm-search" and "-m" in c)
    collect = [c for c in commands if c[0] == "prm-sweep" and "sweep.mode=collect" in c]
    assert collect, f"{path.name}: no 'prm-sweep sweep.mode=collect run_dir=...' line"
    sweep_cfg = _compose("sweep", collect[0][1:])
    cell_dir = Path(_compose(PRIMARY[run_cmd[0]], next(jobs(run_cmd))).run_dir)
    assert cell_dir.parent == Path(sweep_cfg.run_dir) / CELLS


def _external_paths(command: list[str]) -> list[str]:
    """The overrides of a launch command that give a model or data path outside the project (an absolute path)."""
    return [o for o in command[1:] if "=/" in o]


@pytest.mark.parametrize("name,command", [(n, c) for n, c in _experiment_commands() if _external_paths(c)],
                         ids=lambda x: x if isinstance(x, str) else None)
def test_without_its_paths_the_launch_fails_before_anything_runs(name: str, command: list[str]) -> None:
    """The model and data paths an experiment needs from outside the project are required (``???`` from a group, or
    ``${oc.env:NAME}``: a ``???`` merged from an experiment file does not replace a primary config's default), never a
    silent default such as a tiny model of the arithmetic world."""
    paths = _external_paths(command)
    cfg = _without_hydra(_compose(PRIMARY[command[0]], [o for o in next(jobs(command)) if o not in paths]))
    for override in paths:
        key = _key(override)
        assert _unresolvable(cfg, key), f"{name}: {key} has a default"


def _unresolvable(cfg: DictConfig, key: str) -> bool:
    try:
        OmegaConf.select(cfg, key, throw_on_missing=True, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - a missing value or any resolution failure (an unset variable) counts
        return True
    return False
