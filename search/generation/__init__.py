"""Generation backends behind one protocol (``Generator``): Hugging Face (CPU/GPU) and vLLM (GPU).

``HFGenerator`` is imported lazily and ``VLLMGenerator`` only imports vLLM when constructed, so
``import search.generation`` is cheap and never needs vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.generation.base import (
    FINISH_EOS,
    FINISH_LENGTH,
    Generation,
    GenerationStats,
    Generator,
    cache_scope,
    cached_token_count,
    cut_at_stop,
    prompt_token_count,
)

if TYPE_CHECKING:
    from search.generation.hf import HFGenerator
    from search.generation.vllm_backend import VLLMGenerator


def __getattr__(name: str) -> Any:
    if name == "HFGenerator":
        from search.generation.hf import HFGenerator

        return HFGenerator
    if name == "VLLMGenerator":
        from search.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FINISH_EOS", "FINISH_LENGTH", "Generation", "GenerationStats", "Generator", "HFGenerator", "VLLMGenerator",
    "cache_scope", "cached_token_count", "cut_at_stop", "prompt_token_count",
]
