"""Batched sessions: one forward pass for several `StreamingEngine`s that share one model.

Each session keeps its own `SinkCache` (its own slots, length, sinks, pinned block, evictions);
a batched step runs their pending tokens through the model together, so on a GPU one pass over
the weights serves many live meetings instead of one. Results equal calling each engine alone
(within float rounding of batched matmuls), and the engines' state afterwards is the same.

Only the engines' public step API is used (`chunks`, `feed_ids`, `fork_prompt`, `pick`, `pin`...).
API (each batched_* call takes every engine's lock, in a fixed order, for the whole call; engines must
be distinct and share one model object):

    batched_feed(engines, texts) -> list[int]
        == [engine.feed(text) for ...]: tokens fed per session.
    batched_complete(engines, instructions, max_new_tokens) -> list[str]
        == [engine.complete(instruction, n) for ...]: forks, decoded together, rolled back.
        `max_new_tokens` is one int for all or one per session.
    batched_ask(engines, questions, max_new_tokens=None) -> list[str]
    batched_summarize(engines, max_new_tokens=None) -> list[str]  (pins like engine.summarize)

How one step works (`forward_batch`): every session's new tokens are one row, right-padded with
its own last token at its own last slot (so a padded query is a copy of the last real one and
`logits_to_keep=1` yields each row's last logits). Positions are each session's cache slots. A
per-layer view writes each row's real tokens into that session's buffers and hands attention its
pre-RoPE keys and values gathered into one [batch, heads, longest, dim] block, rotated once; the
masks of `attention_masks()` hide each row's empty slots (and keep sliding-window layers
sliding). Padded keys are never written, so nothing of another row or of padding reaches a cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from livesum.llm.engine import SUMMARY_INSTRUCTION, StreamingEngine
from livesum.llm.sink_cache import CacheFullError, SinkCache, SinkLayer, attention_masks


class _BatchLayer(CacheLayerMixin):
    """One decoder layer of several sessions' sink caches seen as one batch for one forward."""

    is_sliding = False
    is_compileable = False

    def __init__(self, layers: list[SinkLayer], starts: list[int], counts: list[int], slots: torch.Tensor,
                 read_length: int) -> None:
        super().__init__()
        self.layers, self.starts, self.counts, self.read_length = layers, starts, counts, read_length
        self.slots = slots
        self.table = max((layer.table for layer in layers), key=lambda table: table.capacity)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to allocate: the sessions' layers own the buffers."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-rotate the batch's keys at once (each row for its slots), write each row's real tokens into
        its session's buffers and gather every session's cache into one block: the copies go as two
        multi-tensor kernels (`_foreach_copy_`), not one launch per session."""
        batch, heads, _, head_dim = key_states.shape
        pre_keys = self.table.unrotate(key_states, self.slots)
        targets: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        for row, (layer, start, count) in enumerate(zip(self.layers, self.starts, self.counts)):
            if not layer.is_initialized:
                layer.lazy_initialization(key_states[row:row + 1], value_states[row:row + 1])
            if start + count > layer.capacity:
                raise CacheFullError(f"sink cache full: {start + count} entries needed, capacity {layer.capacity}")
            targets += [layer.keys[:, :, start:start + count], layer.values[:, :, start:start + count]]
            sources += [pre_keys[row:row + 1, :, :count], value_states[row:row + 1, :, :count]]
            if layer.rotated is not None:
                targets.append(layer.rotated[:, :, start:start + count])
                sources.append(key_states[row:row + 1, :, :count])
            layer.length = start + count
        torch._foreach_copy_(targets, sources)
        # Where every session keeps its keys rotated (`keep_rotated_keys`), attention gets those: rotating
        # the whole gathered block at each step cost more the more rows a step has.
        rotated = all(layer.rotated is not None for layer in self.layers)
        # Only the slots past a row's own length are zeroed (masked, but never left as stale memory that
        # could hold a NaN); zeroing the whole block first wrote every entry twice: a sixth of a 4-row
        # decode step of the 1.5B model on 2 cores.
        keys = key_states.new_empty((batch, heads, self.read_length, head_dim))
        values = value_states.new_empty((batch, heads, self.read_length, value_states.shape[-1]))
        targets, sources, tails = [], [], []
        for row, layer in enumerate(self.layers):
            end = layer.length
            targets += [keys[row:row + 1, :, :end], values[row:row + 1, :, :end]]
            sources += [(layer.rotated if rotated else layer.keys)[:, :, :end], layer.values[:, :, :end]]
            if end < self.read_length:
                tails += [keys[row:row + 1, :, end:], values[row:row + 1, :, end:]]
        torch._foreach_copy_(targets, sources)
        if tails:
            torch._foreach_zero_(tails)
        return (keys if rotated else self.table.rotate(keys, 0)), values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.read_length, 0

    def get_seq_length(self) -> int:
        return max(self.starts)

    def get_max_length(self) -> int:
        return self.table.capacity


# On the CPU a padded row of a batched forward costs what a real one does: the notes' five fork prompts
# (24-110 tokens, the default model, 2 threads) took 4.7 s padded into one forward, 3.1 s one at a
# time, and 2.8 s as two forwards of like widths. Nor do long chunks gain from sharing a forward (two
# 110-token prompts: 1.90 s together, 1.94 s one after the other), while a forward cannot be preempted:
# a question that comes meanwhile waits for it. On CUDA a few more rows are nearly free: all join.
CPU_MAX_PADDING = 0.25  # share of a shared prefill forward's rows that may be padding
CPU_MAX_SHARED_ROWS = 128  # rows of a shared prefill forward, padding included: about a second here


def may_share_forward(widths: Sequence[int], device: torch.device) -> bool:
    """Whether chunks of these token counts should run as one forward: always on CUDA; on the CPU while
    padding is at most CPU_MAX_PADDING of the forward's rows and they are CPU_MAX_SHARED_ROWS at most."""
    if device.type == "cuda":
        return True
    rows = len(widths) * max(widths)
    return rows <= CPU_MAX_SHARED_ROWS and 1 - sum(widths) / rows <= CPU_MAX_PADDING


def rows_of_like_width(widths: Sequence[int], device: torch.device, anchor: int | None = None) -> list[int]:
    """Which rows (by their token counts) run in one forward with row `anchor` (the widest by default),
    in their given order: the closest widths first, each while `may_share_forward`. The others wait
    for a later forward."""
    if anchor is None:
        anchor = widths.index(max(widths))
    chosen = [anchor]
    for index in sorted(range(len(widths)), key=lambda i: abs(widths[i] - widths[anchor])):
        if index != anchor and may_share_forward([widths[i] for i in [*chosen, index]], device):
            chosen.append(index)
    return sorted(chosen)


@torch.inference_mode()
def forward_batch(model, caches: Sequence[SinkCache], chunks: Sequence[list[int]],
                  every_logit: bool = False) -> list[torch.Tensor]:
    """Run each session's `chunk` at its next cache slots in one forward; each one's last logits (float32),
    or with `every_logit` the logits of each of its tokens ([len(chunk), vocab]: a decode step with drafts).

    The caller has made room (`make_room`) or checked the free room (forks); every chunk is non-empty.
    """
    if len(caches) != len(chunks) or not chunks or not all(chunks):
        raise ValueError("one non-empty chunk per cache")
    device = next(model.parameters()).device
    if len(caches) == 1:  # the engine's own single-session path: no padding, gather or custom mask
        cache, chunk = caches[0], chunks[0]
        out = model(input_ids=torch.tensor([chunk], device=device), position_ids=cache.positions(len(chunk), device),
                    cache=cache, use_cache=True, logits_to_keep=len(chunk) if every_logit else 1)
        return [out.logits[0].float() if every_logit else out.logits[0, -1].float()]
    starts = [cache.length for cache in caches]
    counts = [len(chunk) for chunk in chunks]
    width = max(counts)
    input_ids = torch.tensor([chunk + [chunk[-1]] * (width - len(chunk)) for chunk in chunks], device=device)
    slots = torch.tensor([[start + min(column, count - 1) for column in range(width)]
                          for start, count in zip(starts, counts)], device=device)
    visible = torch.tensor([start + count for start, count in zip(starts, counts)], device=device)
    read_length = int(visible.max())
    masks = attention_masks(model.config, slots, visible, read_length, next(model.parameters()).dtype)
    view = Cache(layers=[
        _BatchLayer([cache.layers[index] for cache in caches], starts, counts, slots, read_length)
        for index in range(len(caches[0].layers))
    ])
    out = model(input_ids=input_ids, position_ids=slots, attention_mask=masks, cache=view,
                use_cache=True, logits_to_keep=width if every_logit else 1)
    if every_logit:  # right-padded: each row's own tokens are its first columns
        return [out.logits[row, :count].float() for row, count in enumerate(counts)]
    return list(out.logits[:, -1].float().unbind(0))


@contextmanager
def _locked(engines: Sequence[StreamingEngine]) -> Iterator[None]:
    """Every engine's lock, in one global order (no deadlock with another batched call)."""
    if len({id(engine) for engine in engines}) != len(engines):
        raise ValueError("an engine appears twice in one batch")
    if any(engine.model is not engines[0].model for engine in engines):
        raise ValueError("batched sessions must share one model")
    with ExitStack() as stack:
        for engine in sorted(engines, key=id):
            stack.enter_context(engine.lock)
        yield


def _ingest_batch(engines: Sequence[StreamingEngine], token_lists: Sequence[list[int]]) -> None:
    """Chunked prefill of live tokens, round by round, evicting before each chunk as `_ingest` does."""
    chunked = [engine.chunks(ids) for engine, ids in zip(engines, token_lists)]
    for round_index in range(max((len(chunks) for chunks in chunked), default=0)):
        rows = [row for row, chunks in enumerate(chunked) if round_index < len(chunks)]
        for row in rows:
            engines[row].cache.make_room(len(chunked[row][round_index]))
        forward_batch(engines[0].model, [engines[row].cache for row in rows],
                      [chunked[row][round_index] for row in rows])
        for row in rows:
            engines[row].ingested()


def batched_feed(engines: Sequence[StreamingEngine], texts: Sequence[str]) -> list[int]:
    """`engine.feed(text)` for every pair, in shared forwards; tokens fed per session."""
    if len(engines) != len(texts):
        raise ValueError("one text per engine")
    if not engines:
        return []
    with _locked(engines):
        prepared = [engine.feed_ids(text) for engine, text in zip(engines, texts)]
        _ingest_batch(engines, [ids for ids, _ in prepared])
        for engine, (ids, text) in zip(engines, prepared):
            engine.fed(ids, text)
        return [len(ids) for ids, _ in prepared]


def _prefill_forks(engines: Sequence[StreamingEngine], prompts: Sequence[list[int]]) -> list[torch.Tensor]:
    """Each fork prompt behind its live cache, chunk rounds batched; the last logits of each."""
    chunked = [engine.chunks(prompt) for engine, prompt in zip(engines, prompts)]
    last: list[torch.Tensor | None] = [None] * len(engines)
    for round_index in range(max(len(chunks) for chunks in chunked)):
        rows = [row for row, chunks in enumerate(chunked) if round_index < len(chunks)]
        logits = forward_batch(engines[0].model, [engines[row].cache for row in rows],
                               [chunked[row][round_index] for row in rows])
        for row, row_logits in zip(rows, logits):
            last[row] = row_logits
    return last  # type: ignore[return-value]


def _generate_batch(engines: Sequence[StreamingEngine], prompts: Sequence[list[int]], limits: Sequence[int]) -> list[list[int]]:
    """Greedy answers of every fork, one shared forward per step (the same steps as `_generate`)."""
    logits = _prefill_forks(engines, prompts)
    answers: list[list[int]] = [[] for _ in engines]
    active = [row for row, limit in enumerate(limits) if limit > 0]
    while active:
        stepping: list[int] = []
        for row in active:
            engine, answer = engines[row], answers[row]
            token = engine.pick(answer, logits[row])
            if token in engine.stop_ids:
                continue
            answer.append(token)
            if len(answer) < limits[row]:
                stepping.append(row)
        if stepping:
            step_logits = forward_batch(engines[0].model, [engines[row].cache for row in stepping],
                                        [[answers[row][-1]] for row in stepping])
            for row, row_logits in zip(stepping, step_logits):
                logits[row] = row_logits
        active = stepping
    return answers


def batched_complete(engines: Sequence[StreamingEngine], instructions: Sequence[str],
                     max_new_tokens: int | Sequence[int]) -> list[str]:
    """`engine.complete(instruction, n)` for every pair, decoded together; every cache rolled back exactly."""
    with _locked(engines):
        return _complete_locked(engines, instructions, max_new_tokens)


def _complete_locked(engines: Sequence[StreamingEngine], instructions: Sequence[str],
                     max_new_tokens: int | Sequence[int]) -> list[str]:
    if len(engines) != len(instructions):
        raise ValueError("one instruction per engine")
    if not engines:
        return []
    limits = [max_new_tokens] * len(engines) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(engines):
        raise ValueError("one max_new_tokens per engine")
    forks = [engine.fork_prompt(instruction, limit) for engine, instruction, limit in zip(engines, instructions, limits)]
    marks = [engine.cache.length for engine in engines]
    try:
        answers = _generate_batch(engines, [prompt for prompt, _ in forks], [limit for _, limit in forks])
    finally:
        for engine, mark in zip(engines, marks):
            engine.cache.truncate(mark)
    return [engine.decode(answer) for engine, answer in zip(engines, answers)]


def batched_ask(engines: Sequence[StreamingEngine], questions: Sequence[str], max_new_tokens: int | None = None) -> list[str]:
    """`engine.ask(question)` for every pair (questions cut to `max_question_tokens` as there)."""
    with _locked(engines):
        instructions = [engine.question_instruction(question) for engine, question in zip(engines, questions)]
        limits = [max_new_tokens or engine.config.max_answer_tokens for engine in engines]
        return _complete_locked(engines, instructions, limits)


def batched_summarize(engines: Sequence[StreamingEngine], max_new_tokens: int | None = None) -> list[str]:
    """`engine.summarize()` for every engine: forks decoded together, then each pins its own if configured."""
    with _locked(engines):
        limits = [max_new_tokens or engine.config.max_summary_tokens for engine in engines]
        summaries = _complete_locked(engines, [SUMMARY_INSTRUCTION] * len(engines), limits)
        for engine, summary in zip(engines, summaries):
            if engine.config.pin_summary and summary:
                engine.pin(summary)
        return summaries
