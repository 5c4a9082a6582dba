"""The ``Generator`` protocol: continue a batch of texts, ``n`` samples each, with exact token counts.

One call is one batch of work. A prompt is the whole text so far (problem plus any earlier steps);
the continuation is sampled until a stop string, the end-of-sequence token or ``max_new_tokens``.
Step-by-step search calls ``generate(prefixes, stop=[fmt.step_stop])`` and appends each returned
``text`` to its prefix: the text is the continuation only and *includes* the stop string that
ended it, so ``prompt + text`` is the next prefix, ending exactly at the end of the stop string.

Compute accounting is exact and backend-independent:

- ``prompt_tokens``: the prompt is tokenized once and prefilled once per prompt, whatever ``n``;
  its token count is put on the **first** sample of each prompt (``gens[i][0]``) and 0 on the
  others, so summing ``prompt_tokens`` over everything a call returned gives the prompt tokens
  processed by that call (``prompt_token_count(gens[i])`` gives a prompt's count).
- ``generated_tokens``: tokens sampled for that sample, up to and including the token that
  completed the stop string or the end-of-sequence token.

- ``cached_prompt_tokens``: of a prompt's tokens, those a backend served from a prefix cache
  (KV computed by an earlier call) instead of prefilling them; on the first sample like
  ``prompt_tokens`` (0 without a cache). ``prompt_tokens - cached_prompt_tokens`` is what the
  backend really ran through the model for that prompt (``prefilled_tokens``).

``GenerationStats`` accumulates these over calls (plus wall time) on every generator's ``stats``.

**Prefix caches.** A backend may keep the KV cache of text it has processed and reuse it when a
later prompt starts with the same tokens; this changes only what is prefilled, not what is
sampled (up to float rounding: reused keys/values were computed in another batch). vLLM's
automatic prefix caching is always on. The HF backend reuses its cache only inside a
``cache_scope()`` block (a method the protocol does not require; ``cache_scope(generator)`` opens
it where there is one, else does nothing), which starts and ends with an empty cache: step-by-step
search opens one per run, so its memory and its float rounding depend on that run alone (a resumed
run repeats an uninterrupted one exactly), and callers that open none (sampling, RL rollouts) run
as if there were no cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

FINISH_EOS = "eos"
FINISH_LENGTH = "length"


@dataclass
class Generation:
    """One sampled continuation of one prompt.

    ``text``: the continuation only (never the prompt). When a stop string ended it, the text ends
    with that stop string and contains no stop string anywhere before (it is cut right after the
    first occurrence, even if the token that completed the stop also held more characters). The
    end-of-sequence token is not part of the text; other special tokens are decoded as written.
    ``finish_reason``: the stop string that ended the sample, ``"eos"`` or ``"length"``.
    ``prompt_tokens``: the prompt's token count on the first sample of a prompt, 0 on the others.
    ``generated_tokens``: sampled tokens, including the one completing the stop string / the EOS.
    ``logprob``: sum of the log-probabilities of the sampled tokens under the distribution they
    were sampled from (after temperature and top-p; under the unscaled model distribution when
    greedy), None if the backend did not compute it. At temperature 1 and top-p 1 this is the
    policy's log-likelihood of the continuation (the likelihood-reranking baseline).
    ``token_ids``: the sampled token ids (``generated_tokens`` of them), when the backend has them.
    ``cached_prompt_tokens``: of ``prompt_tokens``, those served from a prefix cache (first sample only).
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    logprob: float | None = None
    token_ids: list[int] | None = None
    cached_prompt_tokens: int = 0

    @property
    def stopped(self) -> bool:
        """Whether a stop string (not EOS or the length limit) ended this sample."""
        return self.finish_reason not in (FINISH_EOS, FINISH_LENGTH)


@dataclass
class GenerationStats:
    """Totals over generate calls: the compute a search or training run spent on its policy."""

    calls: int = 0
    prompts: int = 0
    samples: int = 0
    prompt_tokens: int = 0  # prompt tokens of the prompts sent (each prompt once per call)
    cached_prompt_tokens: int = 0  # of those, served from a prefix cache instead of prefilled
    generated_tokens: int = 0
    wall_time_s: float = 0.0

    def add(self, gens: Sequence[Sequence[Generation]], wall_time_s: float) -> None:
        """Count one call's results."""
        self.calls += 1
        self.prompts += len(gens)
        self.samples += sum(len(g) for g in gens)
        self.prompt_tokens += sum(s.prompt_tokens for g in gens for s in g)
        self.cached_prompt_tokens += sum(s.cached_prompt_tokens for g in gens for s in g)
        self.generated_tokens += sum(s.generated_tokens for g in gens for s in g)
        self.wall_time_s += wall_time_s

    def merge(self, other: GenerationStats) -> None:
        """Add another accumulator's totals to this one."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens really run through the model (not served from a prefix cache)."""
        return self.prompt_tokens - self.cached_prompt_tokens

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "prefilled_tokens": self.prefilled_tokens,
                "generated_tokens_per_s": self.generated_tokens_per_s}

    def reset(self) -> None:
        for name, value in asdict(GenerationStats()).items():
            setattr(self, name, value)


@runtime_checkable
class Generator(Protocol):
    """Continues a batch of texts; see the module docstring for the exact contract."""

    stats: GenerationStats

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
        """``n`` continuations per prompt (one list of ``n`` per prompt, in order).

        ``temperature == 0`` is greedy decoding. ``stop``: strings that end a sample (checked on
        the decoded continuation only, never across the prompt boundary). ``seed``: the same
        seed with the same arguments (and the same backend settings, e.g. batch size) gives the
        same samples; None: the HF backend draws a seed from torch's global generator (so
        ``torch.manual_seed`` makes it reproducible), vLLM uses its engine's random state. A
        sequence: one seed per prompt, each prompt's samples a function of its own seed only (not
        of the other prompts in the call: several processes sharing out a batch of prompts draw
        exactly what one process draws).
        """
        ...


# Generator settings that change speed and memory, never what is sampled: left out of a run's identity, so a run
# resumed with another setting (or started before the setting existed) continues.
SPEED_ONLY_SETTINGS = frozenset({"reuse_cache", "cache_tokens"})


def result_settings(generator_cfg: dict[str, object]) -> dict[str, object]:
    """A generator config without its model path and its speed-only settings (what decides the samples)."""
    return {k: v for k, v in generator_cfg.items() if k != "model_or_path" and k not in SPEED_ONLY_SETTINGS}


def prompt_token_count(samples: Sequence[Generation]) -> int:
    """The prompt tokens of one prompt (its samples' counts summed: the first holds it)."""
    return sum(s.prompt_tokens for s in samples)


def cached_token_count(samples: Sequence[Generation]) -> int:
    """Of one prompt's tokens, those served from a prefix cache (summed like ``prompt_token_count``)."""
    return sum(s.cached_prompt_tokens for s in samples)


def cache_scope(generator: object) -> AbstractContextManager[object]:
    """A block in which ``generator`` may reuse its prefix cache across calls (its ``cache_scope()``;
    nothing for a generator without one). The cache is empty when the block starts and ends."""
    scope = getattr(generator, "cache_scope", None)
    return scope() if callable(scope) else nullcontext()


def check_generate_args(n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str]) -> list[str]:
    """Validate the common arguments (ValueError with the bad value); return the stop strings as a list."""
    if isinstance(stop, str):
        stop = [stop]
    stops = list(stop)
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature})")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (got {top_p})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    if any(not s for s in stops):
        raise ValueError(f"stop strings must be non-empty (got {stops!r})")
    return stops


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str] | None:
    """``(text cut right after the earliest-ending stop string, that stop)``, or None if none occurs.

    Among stops ending at the same character, the longest (earliest-starting) one is reported.
    """
    best: tuple[int, int, str] | None = None  # (end, -len, stop)
    for s in stops:
        at = text.find(s)
        if at != -1:
            key = (at + len(s), -len(s), s)
            if best is None or key < best:
                best = key
    if best is None:
        return None
    return text[: best[0]], best[2]


__all__ = [
    "FINISH_EOS", "FINISH_LENGTH", "SPEED_ONLY_SETTINGS", "Generation", "GenerationStats", "Generator", "cache_scope",
    "cached_token_count", "check_generate_args", "cut_at_stop", "prompt_token_count", "result_settings",
]
