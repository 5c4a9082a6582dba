"""Every config file under conf/ composes (recursively), each group option through a primary config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUP_FILES = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml") if p.parent != CONF)

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


def test_there_are_configs() -> None:
    assert PRIMARIES and GROUP_FILES


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_config_composes(primary: str) -> None:
    extra = _overrides_for_missing([], primary)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=primary, overrides=extra)
    OmegaConf.resolve(cfg)


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
