"""Cached stages: reused with the same config, resumed in place when interrupted, moved aside when the config changed."""

from __future__ import annotations

from pathlib import Path

from prm.runs import begin_stage, mark_stage_done, stage_done, stage_info


def test_same_config_is_reused_and_an_interrupted_one_resumes_in_place(tmp_path: Path) -> None:
    stage = tmp_path / "prm"
    cfg = {"lr": 1e-3, "steps": [1, 2]}
    assert begin_stage(stage, cfg) is None
    (stage / "checkpoint").write_text("step 200")  # interrupted here
    assert not stage_done(stage, cfg)
    assert begin_stage(stage, cfg) is None and (stage / "checkpoint").read_text() == "step 200"
    mark_stage_done(stage, cfg, summary={"auroc": 0.9})
    assert stage_done(stage, cfg) and stage_info(stage)["summary"] == {"auroc": 0.9}
    assert not stage_done(stage, {**cfg, "lr": 2e-3})


def test_a_changed_config_moves_the_old_folder_aside(tmp_path: Path) -> None:
    stage = tmp_path / "prm"
    begin_stage(stage, {"layers": 2})
    (stage / "checkpoint").write_text("2-layer step 4000")
    mark_stage_done(stage, {"layers": 2}, summary={})
    moved = begin_stage(stage, {"layers": 4})
    assert moved == tmp_path / "prm.old-1" and (moved / "checkpoint").read_text() == "2-layer step 4000"
    assert not (stage / "checkpoint").exists() and not stage_done(stage, {"layers": 4})
    # started but never finished with yet another config: moved too, next to the first
    assert begin_stage(stage, {"layers": 3}) == tmp_path / "prm.old-2"
    # a folder from before markers existed (no marker at all) is left to resume
    legacy = tmp_path / "sft"
    legacy.mkdir()
    (legacy / "checkpoint").write_text("x")
    assert begin_stage(legacy, {"a": 1}) is None and (legacy / "checkpoint").exists()
