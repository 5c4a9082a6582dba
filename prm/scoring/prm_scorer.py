"""``PRMScorer``: a trained PRM behind the ``Scorer`` protocol, batched, with incremental KV-cached scoring.

**Whole candidates** (``score``): each (problem, candidate) is encoded once (``StepReader.encode``;
for our PRMs that is ``prm.models.prm_inputs.encode_steps``), sequences are sorted by length and
run ``batch_size`` at a time, right-padded with an attention mask; ALL steps of a candidate are
read from ONE forward pass at their label tokens. A step whose label token does not fit in
``max_length`` (default: the model's context) gets the score of the last step that fits
(``truncated_score``, default 0.5, when none does) and is counted in ``stats.truncated_steps``.

**Incremental** (``start`` / ``extend``): a handle's ``state`` holds the prefix's token ids and
its KV cache. To score a child, the child's full text is tokenized again (always correct, also
for BPE tokenizers whose merges cross the step boundary) and the cache is reused for the longest
common token prefix with the parent (capped before the new label token); only the remaining
tokens are run, so a character-tokenized child costs exactly ``len(new_step) + len(separator)``
tokens. The children of one round are batched: the reused caches are left-padded to a common
length, the new chunks right-padded, the attention mask covers [parent cache | new tokens] and
position ids continue each row's own prefix. Results equal ``score`` on the child's full step
list up to float rounding (~1e-6). ``stats.tokens_processed`` counts only tokens actually run
(``cached_tokens`` the reused ones, ``padding_tokens`` the padding).

**Memory**: the cache is stored as a tree of segments: a child keeps only the keys/values of the
tokens it added (on the model's device) and a reference to its parent's segment, so beams that
share a prefix share its memory, and the total is the number of distinct prefix tokens alive in
the search tree (``layers x 2 x kv_dim`` values each) rather than beams x length. Dropping a
handle frees its segment once no descendant references it; keeping a handle keeps all its
ancestors' segments. Each batched call copies the reused caches into one padded tensor (a copy
of ``reused tokens x layers x 2 x kv_dim`` values, much cheaper than recomputing them). The
cache is the plain full-attention ``DynamicCache`` layout.
A handle from another scorer is refused; a handle without state (built by hand) is scored from
scratch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from prm.models.kv_segments import Segment, common_prefix, pieces
from prm.models.loading import ModelLoadError, check_model_dir, load_causal_lm, load_tokenizer, model_and_tokenizer
from prm.models.prm_inputs import EncodedSteps
from prm.models.prm_model import load_prm
from prm.scoring.base import (
    Prefix,
    ScorerBase,
    Timer,
    check_aggregation,
    check_extend_args,
    check_score_args,
    eval_inference,
)
from prm.scoring.conventions import Convention, StepReader
from prm.steps import StepFormat, load_step_format

def load_scoring_model(path: str | Path, kind: str, dtype: torch.dtype = torch.float32,
                       trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a PRM directory for a convention: a token-classification model, or a causal LM (lm_tag).

    With ``trust_remote_code`` a model that only maps ``AutoModel`` (Qwen2.5-Math-PRM's
    ``Qwen2ForProcessRewardModel``) loads through ``AutoModel`` when the token-classification
    class does not fit.
    """
    if kind == "lm_tag":
        return load_causal_lm(path, dtype=dtype)
    try:
        return load_prm(path, dtype=dtype)
    except ModelLoadError:
        if not trust_remote_code:
            raise
    p = check_model_dir(path)
    model = AutoModel.from_pretrained(str(p), dtype=dtype, trust_remote_code=True, local_files_only=True)
    return model, load_tokenizer(p)


def saved_aggregation(model: PreTrainedModel) -> str | None:
    """The aggregation saved in a PRM's config by prm-train (``prm_aggregation``; None when there is none)."""
    how = getattr(model.config, "prm_aggregation", None)
    return str(how) if how else None


@dataclass(eq=False)
class _State:
    """What a PRM handle keeps: the prefix's token ids and the KV cache covering all of them."""

    owner: object
    ids: list[int]
    kv: Segment | None


@dataclass(eq=False)
class _Row:
    """One sequence of an incremental batch: reuse ``reuse`` cached tokens, run ``ids[reuse:]``."""

    parent_kv: Segment | None
    reuse: int
    ids: list[int]
    read: int | None  # index of the label token within the new tokens
    prob: float = 0.0
    kv: Segment | None = field(default=None, repr=False)

    @property
    def new(self) -> list[int]:
        return self.ids[self.reuse:]


def _chunks(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield list(order[i : i + size])


class PRMScorer(ScorerBase):
    """A PRM as a ``Scorer`` (see the module docstring).

    ``model_or_path``: a loaded model (then ``tokenizer`` is required) or a local model directory.
    ``convention``: ``token_head`` (ours), ``lm_tag`` (Math-Shepherd), ``two_class``
    (Qwen2.5-Math-PRM), or a ``Convention``; the string knobs (``separator``, ``tag``,
    ``step_sep``, ``prompt_sep``, ``good_token``, ``bad_token``, ``chat_template``,
    ``system_prompt``) fill it. ``dtype``: None keeps a given model's dtype (fp32 when loading).
    ``max_length``: token limit per sequence (None: the model's ``max_position_embeddings``).
    ``separator`` / ``style``: None reads the format saved with the PRM (``step_format.json``,
    written by prm-train; ``"\n"`` when there is none); a value that differs from the saved
    format is a clear error, never a silent re-split.
    ``aggregation``: None takes the one saved with the model (``prm_aggregation`` in its config:
    prm-train writes ``last`` for an outcome reward model), else ``min``; a value given wins.
    """

    def __init__(
        self,
        model_or_path: PreTrainedModel | str | Path | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        convention: str | Convention = "token_head",
        aggregation: str | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        truncated_score: float = 0.5,
        separator: str | None = None,
        style: str | None = None,
        tag: str = " ки",
        step_sep: str = "\n",
        prompt_sep: str = " ",
        good_token: str = "+",
        bad_token: str = "-",
        good_token_id: int | None = None,
        bad_token_id: int | None = None,
        chat_template: bool = False,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if aggregation is not None:
            check_aggregation(aggregation)  # fail before loading anything
        saved = load_step_format(model_or_path if isinstance(model_or_path, (str, Path)) else
                                 getattr(getattr(model_or_path, "config", None), "_name_or_path", None))
        self.saved_format = saved
        if saved is not None:
            wanted = StepFormat(style=style or saved.style, separator=separator or saved.separator,  # type: ignore[arg-type]
                                answer_marker=saved.answer_marker)
            if saved.mismatch(wanted):
                raise ValueError(f"this PRM was trained on steps in another format than configured "
                                 f"({'; '.join(saved.mismatch(wanted))}; trained vs configured): score it with "
                                 f"its own format (leave scorer.separator / scorer.style unset) or retrain it")
            separator, style = saved.separator, saved.style
        conv = convention if isinstance(convention, Convention) else Convention(
            convention, separator=separator or "\n", style=style or "plain", tag=tag, step_sep=step_sep,
            prompt_sep=prompt_sep,
            good_token=good_token, bad_token=bad_token, good_token_id=good_token_id, bad_token_id=bad_token_id,
            chat_template=chat_template, system_prompt=system_prompt)
        model, tokenizer = model_and_tokenizer(
            "PRMScorer", model_or_path, tokenizer, dtype,
            lambda path, dt: load_scoring_model(path, conv.kind, dt, trust_remote_code))
        super().__init__(aggregation or saved_aggregation(model) or "min")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if not 0.0 <= truncated_score <= 1.0:
            raise ValueError(f"truncated_score must be in [0, 1] (got {truncated_score})")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.convention = conv
        self.reader = StepReader(self.model, tokenizer, conv)
        self.batch_size = batch_size
        self.truncated_score = float(truncated_score)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_positions: int | None = getattr(cfg, "max_position_embeddings", None)
        self.max_length = max_length if max_length is not None else self.max_positions
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self._token = object()  # marks handles made by this scorer

    # -- whole candidates ------------------------------------------------------------------------
    def score(self, problems: Sequence[str], candidates: Sequence[Sequence[Sequence[str]]]) -> list[list[list[float]]]:
        """One forward pass per candidate (batched): ``scores[i][j][k]`` at each step's label token."""
        check_score_args(problems, candidates)
        out: list[list[list[float]]] = [[[] for _ in cands] for cands in candidates]
        with Timer(self.stats), self._inference():
            rows: list[tuple[int, int, EncodedSteps]] = []
            for i, (prompt, cands) in enumerate(zip(problems, candidates)):
                for j, steps in enumerate(cands):
                    if len(steps):
                        rows.append((i, j, self.reader.encode(prompt, list(steps), self.max_length)))
            order = sorted(range(len(rows)), key=lambda r: len(rows[r][2].input_ids))
            for chunk in _chunks(order, self.batch_size):
                encs = [rows[r][2] for r in chunk]
                probs = self._forward_full([e.input_ids for e in encs])
                for r, enc, p in zip(chunk, encs, probs):
                    i, j, _ = rows[r]
                    out[i][j] = self._with_truncated(p[enc.positions].tolist(), enc.total_steps)
        return out

    def _with_truncated(self, kept: list[float], total: int) -> list[float]:
        missing = total - len(kept)
        self.stats.steps_scored += total
        self.stats.truncated_steps += missing
        fill = kept[-1] if kept else self.truncated_score
        return kept + [fill] * missing

    def _forward_full(self, seqs: list[list[int]]) -> torch.Tensor:
        """Right-padded forward of whole sequences; P(on track) per token ``[batch, tokens]`` on CPU."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        real = sum(len(s) for s in seqs)
        self.stats.tokens_processed += real
        self.stats.padding_tokens += ids.numel() - real
        dev = self.device
        probs, _ = self.reader.probs(ids.to(dev), mask.to(dev), position_ids=pos.to(dev))
        return probs.cpu()

    # -- incremental -----------------------------------------------------------------------------
    def start(self, problems: Sequence[str]) -> list[Prefix]:
        """Root handles: each prompt (with what precedes the first step) is run once and cached."""
        if isinstance(problems, str):
            raise TypeError("problems must be a sequence of strings, not one string")
        with Timer(self.stats), self._inference():
            rows = [_Row(None, 0, self.reader.encode(p, [], self.max_length).input_ids, None) for p in problems]
            self._advance(rows)
        return [Prefix(i, p, (), (), _State(self._token, row.ids, row.kv)) for i, (p, row) in
                enumerate(zip(problems, rows))]

    def extend(self, parents: Sequence[Prefix], new_steps: Sequence[str]) -> tuple[list[float], list[Prefix]]:
        """Score each parent + one new step, running only the tokens its cache does not cover."""
        check_extend_args(parents, new_steps)
        scores: list[float] = [0.0] * len(parents)
        states: list[_State | None] = [None] * len(parents)
        with Timer(self.stats), self._inference():
            rows: dict[int, _Row] = {}
            for r, (parent, step) in enumerate(zip(parents, new_steps)):
                pstate = self._state_of(parent)
                enc = self.reader.encode(parent.problem, [*parent.steps, step], self.max_length)
                self.stats.steps_scored += 1
                if enc.kept < enc.total_steps:  # the new step's label token is cut off
                    self.stats.truncated_steps += 1
                    scores[r] = parent.scores[-1] if parent.scores else self.truncated_score
                    states[r] = pstate
                    continue
                label = enc.positions[-1]
                reuse = min(common_prefix(pstate.ids, enc.input_ids), label) if pstate is not None else 0
                rows[r] = _Row(pstate.kv if pstate is not None else None, reuse, enc.input_ids, label - reuse)
            self._advance(list(rows.values()))
            for r, row in rows.items():
                scores[r] = row.prob
                states[r] = _State(self._token, row.ids, row.kv)
        children = [p.child(s, v, st) for p, s, v, st in zip(parents, new_steps, scores, states)]
        return scores, children

    def _state_of(self, handle: Prefix) -> _State | None:
        state = handle.state
        if state is None:
            return None
        if not isinstance(state, _State) or state.owner is not self._token:
            raise ValueError("this handle was made by another scorer; start from this scorer's own handles")
        return state

    def _advance(self, rows: list[_Row]) -> None:
        """Run each row's new tokens on its reused cache (batched); set ``prob`` and the new ``kv``."""
        order = sorted(range(len(rows)), key=lambda r: (rows[r].reuse, len(rows[r].new)))
        for chunk in _chunks(order, self.batch_size):
            self._advance_chunk([rows[r] for r in chunk])

    def _advance_chunk(self, rows: list[_Row]) -> None:
        dev, n_rows = self.device, len(rows)
        past = max(r.reuse for r in rows)
        width = max(len(r.new) for r in rows)
        ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, past + width), dtype=torch.long)
        pos = torch.zeros((n_rows, width), dtype=torch.long)
        for b, row in enumerate(rows):
            n = len(row.new)
            ids[b, :n] = torch.tensor(row.new, dtype=torch.long)
            mask[b, past - row.reuse : past + n] = 1
            pos[b, :n] = torch.arange(row.reuse, row.reuse + n)
        cache = self._padded_cache(rows, past) if past > 0 else None
        real = sum(len(r.new) for r in rows)
        self.stats.tokens_processed += real
        self.stats.cached_tokens += sum(r.reuse for r in rows)
        self.stats.padding_tokens += ids.numel() - real
        probs, out_cache = self.reader.probs(ids.to(dev), mask.to(dev), position_ids=pos.to(dev),
                                             cache=cache, use_cache=True)
        if out_cache is None or out_cache.get_seq_length() != past + width:
            raise RuntimeError(f"{type(self.model).__name__} returned no KV cache of the {past} reused + {width} new "
                               f"tokens; incremental scoring needs its forward to take and extend ``cache``")
        layers = out_cache.layers
        probs = probs.cpu()
        for b, row in enumerate(rows):
            n = len(row.new)
            if row.read is not None:
                row.prob = float(probs[b, row.read])
            row.kv = Segment(
                parent=row.parent_kv if row.reuse > 0 else None,
                start=row.reuse,
                keys=[layer.keys[b, :, past : past + n].clone() for layer in layers],
                values=[layer.values[b, :, past : past + n].clone() for layer in layers],
            )

    def _padded_cache(self, rows: list[_Row], past: int) -> DynamicCache:
        """The rows' reused keys/values, left-padded to ``past`` tokens, as one batched cache."""
        ref = next(r.parent_kv for r in rows if r.reuse > 0)
        assert ref is not None
        keys = [k.new_zeros((len(rows), k.shape[0], past, k.shape[2])) for k in ref.keys]
        values = [v.new_zeros((len(rows), v.shape[0], past, v.shape[2])) for v in ref.values]
        groups: dict[tuple[int, int], list[int]] = {}  # rows sharing a parent prefix are gathered once
        for b, row in enumerate(rows):
            if row.reuse > 0:
                groups.setdefault((id(row.parent_kv), row.reuse), []).append(b)
        for members in groups.values():
            row = rows[members[0]]
            parts_of = pieces(row.parent_kv, row.reuse)
            idx = torch.tensor(members, device=keys[0].device)
            for dst, src in ((keys, "keys"), (values, "values")):
                for li in range(len(dst)):
                    parts = [getattr(seg, src)[li][:, :take] for seg, take in parts_of]
                    whole = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
                    dst[li][idx, :, past - row.reuse :] = whole.unsqueeze(0).expand(len(members), *whole.shape)
        return DynamicCache(ddp_cache_data=list(zip(keys, values)))

    def _inference(self) -> contextlib.AbstractContextManager[None]:
        return eval_inference(self.model)


__all__ = ["PRMScorer", "load_scoring_model", "saved_aggregation"]
