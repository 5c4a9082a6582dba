"""vLLM in RL (GPU only): the engine samples with the policy's NEW weights after each update.

Skipped without a CUDA GPU and vLLM (``pip install -e '.[vllm]'``); CI has neither.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


def _needs_vllm() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("vllm")


def test_vllm_engine_gets_the_updated_weights(tmp_path: Path) -> None:
    _needs_vllm()
    from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
    from search.generation.hf import HFGenerator
    from search.generation.vllm_backend import VLLMGenerator

    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=64, n_head=2, n_positions=128), seed=0)
    path = save_model(model, tok, tmp_path / "policy")
    engine = VLLMGenerator(model_path=str(path), dtype="fp32", gpu_memory_utilization=0.2, enforce_eager=True)
    prompts = ["Q: 1+2\n", "Q: 3*4-5\n"]
    greedy = dict(n=1, temperature=0.0, max_new_tokens=16)
    before = [g[0].text for g in engine.generate(prompts, **greedy)]
    assert before == [g[0].text for g in HFGenerator(model, tok).generate(prompts, **greedy)]
    with torch.no_grad():  # an "update": new weights that change the greedy continuation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    expected = [g[0].text for g in HFGenerator(model, tok).generate(prompts, **greedy)]
    assert expected != before
    engine.update_weights(model.state_dict().items())
    assert [g[0].text for g in engine.generate(prompts, **greedy)] == expected


def test_prm_rl_samples_with_vllm(tmp_path: Path) -> None:
    _needs_vllm()
    from hydra import compose, initialize_config_dir

    from prm.models.loading import TinyGPTConfig, load_causal_lm, save_model
    from rl.grpo import CONF_DIR, run

    model, tok = load_causal_lm(size=TinyGPTConfig(n_layer=1, n_embd=64, n_head=2, n_positions=128), seed=0)
    policy = save_model(model, tok, tmp_path / "policy")
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="rl", overrides=[
            f"policy={policy}", f"run_dir={tmp_path / 'rl'}", "rl.generator=vllm", "rl.vllm.dtype=fp32",
            "+rl.vllm.enforce_eager=true", "rl.n_train_problems=100", "rl.prompts_per_step=4", "rl.group_size=4",
            "rl.max_new_tokens=24", "monitor.n_problems=4", "monitor.samples=2", "train.max_steps=2",
            "train.eval_every=2", "train.save_every=0", "train.progress=false", "train.lr=1e-2"])
    summary = run(cfg)
    assert summary["step"] == 2
