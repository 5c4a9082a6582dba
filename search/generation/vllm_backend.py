"""vLLM backend of the ``Generator`` protocol (GPU; vLLM is an optional extra, imported only here, lazily).

One ``generate`` call is one ``LLM.generate`` over all prompts with one
``SamplingParams(n, temperature, top_p, max_tokens, stop, include_stop_str_in_output=True, seed,
logprobs=0)`` per prompt, each with its own seed (``prompt_seeds``: identical prompts of one call
get different samples): vLLM prefills each prompt once for its ``n`` samples and, with prefix caching,
reuses the KV cache of prefixes seen in earlier calls (step-by-step search re-sends growing
prefixes). Counts come from the ``RequestOutput``: ``prompt_tokens = len(prompt_token_ids)`` on the
first sample of each prompt (the same accounting as the HF backend, so strategies compare across
backends); the part served from the prefix cache (``RequestOutput.num_cached_tokens``) is reported
separately, as ``cached_prompt_tokens`` on that same first sample and summed in
``stats.cached_prompt_tokens``. Prefix caching is on by default (``enable_prefix_caching=True``):
it is what makes step-by-step search prefill only new text on this backend. ``generated_tokens = len(completion.token_ids)`` (the EOS or the
token completing a stop string included). ``logprob`` is the completion's cumulative log-prob;
with the default ``logprobs_mode="processed_logprobs"`` it is taken after temperature/top-p,
like the HF backend.

RL (``update_weights``): the policy's new weights are handed to the engine's model after each update.
vLLM's V1 engine runs its core in a separate process by default, and a weight update would then be
pickled there (the function and every tensor, and recent vLLM refuses to send a function without
``VLLM_ALLOW_INSECURE_SERIALIZATION=1``); ``in_process=True`` (what ``prm-rl`` passes) builds the engine
in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while it is built, as TRL's colocated mode
also keeps vLLM in the trainer's process), so the update is a direct ``load_weights`` call on the model.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from search.generation.base import (
    FINISH_EOS,
    FINISH_LENGTH,
    Generation,
    GenerationStats,
    check_generate_args,
)

INSTALL_HINT = "vLLM is not installed: install it with pip install -e '.[vllm]' on a GPU machine"
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


def completion_to_generation(completion: Any, prompt_tokens: int, decode: Callable[[list[int]], str]) -> Generation:
    """One vLLM ``CompletionOutput`` as a ``Generation`` (duck-typed, so it is testable without vLLM).

    vLLM reports ``finish_reason`` "stop" (with ``stop_reason`` the stop string, or None / a token
    id for EOS and stop tokens) or "length". An EOS-ended text is re-decoded without its EOS token.
    """
    ids = list(completion.token_ids)
    text = completion.text
    stop_reason = getattr(completion, "stop_reason", None)
    if completion.finish_reason == "stop" and isinstance(stop_reason, str):
        reason = stop_reason
    elif completion.finish_reason == "stop":
        reason = FINISH_EOS
        text = decode(ids[:-1])
    else:
        reason = FINISH_LENGTH
    logprob = getattr(completion, "cumulative_logprob", None)
    if logprob is None and getattr(completion, "logprobs", None):
        logprob = sum(step[t].logprob for step, t in zip(completion.logprobs, ids))
    return Generation(text=text, finish_reason=reason, prompt_tokens=prompt_tokens, generated_tokens=len(ids),
                      logprob=None if logprob is None else float(logprob), token_ids=ids)


def request_to_generations(request: Any, decode: Callable[[list[int]], str]) -> list[Generation]:
    """A ``RequestOutput``'s completions in sample order; its prompt tokens (and the part of them
    served from the prefix cache, ``num_cached_tokens``) on the first one."""
    completions = sorted(request.outputs, key=lambda c: c.index)
    plen = len(request.prompt_token_ids or [])
    gens = [completion_to_generation(c, plen if k == 0 else 0, decode) for k, c in enumerate(completions)]
    if gens:
        gens[0].cached_prompt_tokens = int(getattr(request, "num_cached_tokens", 0) or 0)
    return gens


def prompt_seeds(seed: int | Sequence[int] | None, n_prompts: int) -> list[int | None]:
    """One seed per prompt of a call, derived from the call's seed and the prompt's index, so that
    identical prompts in one call (duplicate beams, DVTS subtrees) draw different samples while the
    call stays reproducible; None (unseeded) stays None; a sequence is already one seed per prompt
    (kept to vLLM's 30 bits)."""
    if seed is None:
        return [None] * n_prompts
    if not isinstance(seed, int):
        seeds = [int(x) for x in seed]
        if len(seeds) != n_prompts:
            raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
        return [x % (1 << 30) for x in seeds]
    out = []
    for i in range(n_prompts):
        h = hashlib.blake2b(f"{seed}\x1f{i}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "big") >> 34)  # 30 bits: vLLM seeds are Python ints fed to torch/numpy
    return out


class VLLMGenerator:
    """The ``Generator`` protocol over ``vllm.LLM`` (see the module docstring).

    ``model_path``: a local Hugging Face model directory (or a hub name where the machine allows
    it); ``model_or_path`` is accepted as another name for it, so entry points can instantiate
    either backend with the same keyword. Other keyword arguments go to ``vllm.LLM`` unchanged
    (``max_model_len``, ...).
    ``logprobs_mode``: None leaves vLLM's default (log-probs of the raw model distribution).
    ``in_process``: build the engine core in this process (see the module docstring; RL weight updates).
    """

    def __init__(
        self,
        model_path: str | None = None,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        tokenizer: str | None = None,
        logprobs_mode: str | None = "processed_logprobs",
        model_or_path: str | None = None,
        in_process: bool = False,
        **llm_kwargs: Any,
    ) -> None:
        model_path = model_path or model_or_path
        if not model_path:
            raise ValueError("VLLMGenerator needs model_path (a model directory)")
        vllm = _import_vllm()
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            tokenizer=tokenizer,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            dtype=_DTYPES.get(dtype, dtype),
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            **llm_kwargs,
        )
        if logprobs_mode is not None:
            kwargs["logprobs_mode"] = logprobs_mode
        self._vllm = vllm
        saved = os.environ.get(_MULTIPROCESSING)
        if in_process:
            os.environ[_MULTIPROCESSING] = "0"  # read when the engine is built
        try:
            self.llm = vllm.LLM(**kwargs)
        finally:
            if in_process:
                if saved is None:
                    os.environ.pop(_MULTIPROCESSING, None)
                else:
                    os.environ[_MULTIPROCESSING] = saved
        self.tokenizer = self.llm.get_tokenizer()
        self.stats = GenerationStats()

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        seed: int | Sequence[int] | None = None,
    ) -> list[list[Generation]]:
        """``n`` continuations per prompt; see ``search.generation.base.Generator``."""
        stops = check_generate_args(n, temperature, top_p, max_new_tokens, stop)
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        if not prompts:
            return []
        start = time.perf_counter()
        params = [self._vllm.SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_new_tokens,
            stop=stops or None,
            include_stop_str_in_output=True,
            skip_special_tokens=False,  # like the HF backend: specials stay in the text, EOS is dropped
            seed=s,
            logprobs=0,  # the sampled token's log-prob only
        ) for s in prompt_seeds(seed, len(prompts))]
        requests = self.llm.generate(list(prompts), params, use_tqdm=False)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)
        results = [request_to_generations(r, decode) for r in requests]
        self.stats.add(results, time.perf_counter() - start)
        return results

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new weights into the engine (RL: the policy after an update; names as in the Hugging Face
        model's ``state_dict``) and drop the prefix cache, whose keys/values the old weights computed. Build the
        engine with ``in_process=True`` for this (see the module docstring)."""
        weights = [(name, tensor.detach()) for name, tensor in named_tensors]
        if hasattr(self.llm, "apply_model"):  # vLLM >= 0.9: runs on every worker (in this process if in_process)
            self.llm.apply_model(lambda model: model.load_weights(weights))
        else:  # older engines: the driver worker's model (in-process executor)
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()


__all__ = ["INSTALL_HINT", "VLLMGenerator", "completion_to_generation", "prompt_seeds", "request_to_generations"]
