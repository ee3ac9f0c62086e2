"""The attention-sink KV cache of StreamingLLM (Xiao et al. 2023, section 3.2) on transformers' Cache API.

Layout of every layer's buffers (one preallocated block, slot index == RoPE position):

    [0, n_sink)                  attention sinks: the prompt head (system prompt, turn opening), never evicted
    [n_sink, n_sink + pinned)    the pinned rolling summary (optional, re-encoded when it changes)
    [.., length)                 the rolling window of the most recent tokens
    [length, capacity)           free: room for the next prefill chunk and for a fork (prompt + answer)

Positions are cache slots, not places in the stream: the model is always called with
`position_ids = length .. length + q - 1`, so a query never sees an angle larger than `capacity`,
whether the stream is 4 thousand or 4 billion tokens long. Float32 RoPE angles lose whole
radians past 2^24 positions; here they never get there.

Each layer stores every key once, *before* RoPE, and rotates the whole cache for its slots at
read time (the reference implementation's scheme). The model hands `update()` keys already
rotated for the slots we passed; they are un-rotated once, on arrival, in float32 with the
model's own cos/sin for those slots (any `attention_scaling` divided out). Attention then reads
`keys * cos + rotate_half(keys) * sin` for slots 0..length-1, with the model's formula,
tables and dtype, into a transient tensor (one layer at a time).

Why not re-rotate the stored rotated keys by the shift, as transformers' old SinkCache did:
every shift rounds again, in bf16 the slow RoPE channels stop moving and error piles up over the
millions of shifts of a long stream (perplexity up by tens of percent on Qwen-family models).
Here a key is one un-rotation and one rotation away from the model's own value, at any stream
length, and moving a key (eviction, a new pinned summary) is a plain copy with nothing to
re-rotate. The price is one elementwise rotation of the cached keys per layer and step, small
next to attention itself (measured in docs/engine.md); keeping a second, rotated copy would
avoid it at 50% more key memory, which is the wrong trade for a cache meant to stay small.

Eviction drops `evict_chunk` tokens at a time from the front of the window: one copy of the
remaining window (pre-RoPE keys and values), then the writes continue at the new end. No
`torch.cat`, no reallocation ever: the buffers and RoPE tables are allocated once, at the
capacity fixed at construction (a fork must fit the free room; the engine cuts it to fit), so a
captured CUDA graph can keep pointing at them. A fork (summary, question) writes behind `length`
and is rolled back by setting `length` back; the slots before it are never written during a
fork, so the rollback is exact, bit for bit.

Static mode (`set_static`, for CUDA graphs): writes go to a device tensor of slots and attention
reads a fixed `read_length` (a bucket, not the whole capacity); the caller passes the masks of
`attention_masks()`, one per layer type, so sliding-window layers keep their window there too.

Supported: Llama (SmolLM2), Mistral, Qwen2, Qwen3, Gemma, Gemma2 and Gemma3 text models, all
of which apply rotate-half RoPE over the whole head with `model.model.rotary_emb`. Sliding-window
layers (Gemma2/3, Mistral, Qwen2 with `use_sliding_window`) keep their window in cache positions
through transformers' own masks: they see the last `sliding_window` cache entries, as in a dense
run they see the last `sliding_window` tokens. Gemma3's per-layer-type RoPE (local base 10k,
global 1M) gets one table per type. Anything else is refused with `UnsupportedModelError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


class UnsupportedModelError(ValueError):
    """The model's attention or position encoding does not fit the sink cache."""


class CacheFullError(RuntimeError):
    """A write would run past the cache's capacity (the engine reserves room before writing)."""


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotate-half of Llama-style RoPE: (x1, x2) -> (-x2, x1) over the two halves of the head."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryTable:
    """cos/sin of one RoPE flavour for slots 0..capacity-1, computed by the model's own rotary module.

    `cos`/`sin` are in the model's dtype, exactly what its attention multiplies keys with, so a key
    rotated here for slot p equals the one the model would produce at position p. `unrotate_*`
    are float32 and invert that rotation (divided by cos^2 + sin^2, which also removes the
    `attention_scaling` of YaRN-style RoPE).
    """

    def __init__(self, rotary: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 dtype: torch.dtype, device: torch.device, capacity: int) -> None:
        """Tables for slots 0..capacity-1, computed once: they never grow (a graph may point at them)."""
        self.dtype, self.device, self.capacity = dtype, device, capacity
        positions = torch.arange(capacity, device=device)[None]
        cos, sin = rotary(torch.empty(0, dtype=dtype, device=device), positions)
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()
        cos32, sin32 = self.cos.float(), self.sin.float()
        norm = cos32 * cos32 + sin32 * sin32
        self.unrotate_cos, self.unrotate_sin = cos32 / norm, sin32 / norm

    def rotate(self, pre_keys: torch.Tensor, start: int) -> torch.Tensor:
        """Keys rotated for slots start.. (the model's formula, in its dtype)."""
        end = start + pre_keys.shape[-2]
        return pre_keys * self.cos[start:end] + rotate_half(pre_keys) * self.sin[start:end]

    def unrotate(self, keys: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """The pre-RoPE keys behind keys the model rotated for slots start.. (computed in float32).

        `start` may be a tensor of slots, [q] for one sequence (static mode: no host value is read
        inside a CUDA graph) or [batch, q] for batched sessions, one row of slots per sequence.
        """
        if isinstance(start, torch.Tensor):
            cos, sin = self.unrotate_cos[start], self.unrotate_sin[start]
            if start.dim() == 2:  # [batch, q, dim] -> [batch, 1, q, dim], across the heads
                cos, sin = cos[:, None], sin[:, None]
        else:
            end = start + keys.shape[-2]
            cos, sin = self.unrotate_cos[start:end], self.unrotate_sin[start:end]
        keys32 = keys.float()
        return (keys32 * cos - rotate_half(keys32) * sin).to(keys.dtype)


class SinkLayer(CacheLayerMixin):
    """One layer's sink cache: preallocated pre-RoPE keys and values; see the module doc.

    `keys` holds every key once, *before* RoPE; attention gets them rotated for their slots at read.
    With `keep_rotated`, a second buffer keeps each key as the model rotated it for its slot, so a read
    is a view instead of a rotation of the whole cache (measured: ~15 ms of a 135 ms decode step of the
    1.5B model on 2 CPU cores); entries that move (eviction, a new pinned block) are rotated again for
    their new slots from the pre-RoPE keys, once per move. Costs 50% more key memory.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int, table: RotaryTable, keep_rotated: bool = False) -> None:
        super().__init__()
        self.capacity, self.table, self.keep_rotated = capacity, table, keep_rotated
        self.length = 0
        self.static_slots: torch.Tensor | None = None
        self.static_read = 0
        self.rotated: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        _, heads, _, head_dim = key_states.shape
        shape = (1, heads, self.capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros((*shape[:3], value_states.shape[-1]), dtype=self.dtype, device=self.device)
        self.rotated = torch.zeros(shape, dtype=self.dtype, device=self.device) if self.keep_rotated else None
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.static_slots is not None:
            slots = self.static_slots
            self.keys.index_copy_(2, slots, self.table.unrotate(key_states, slots))
            self.values.index_copy_(2, slots, value_states)
            if self.rotated is not None:
                self.rotated.index_copy_(2, slots, key_states)
            return self.rotated_keys(self.static_read), self.values[:, :, :self.static_read]
        end = self.write(key_states, value_states, self.length)
        self.length = end
        return self.rotated_keys(end), self.values[:, :, :end]

    def write(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int) -> int:
        """Store keys the model rotated for slots start.. (un-rotated) and their values; returns the end."""
        end = start + key_states.shape[-2]
        if end > self.capacity:
            raise CacheFullError(f"sink cache full: {end} entries needed, capacity {self.capacity}")
        self.keys[:, :, start:end] = self.table.unrotate(key_states, start)
        self.values[:, :, start:end] = value_states
        if self.rotated is not None:
            self.rotated[:, :, start:end] = key_states
        return end

    def rotated_keys(self, end: int) -> torch.Tensor:
        """Keys of slots 0..end-1 rotated for those slots: what attention reads (a view with
        `keep_rotated`, else a transient tensor)."""
        if self.rotated is not None:
            return self.rotated[:, :, :end]
        return self.table.rotate(self.keys[:, :, :end], 0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0

    @torch.inference_mode()
    def move(self, source: int, target: int, count: int) -> None:
        """Move `count` entries from slot `source` to slot `target`: a plain copy, since keys are pre-RoPE
        (the rotated copies, if kept, are rotated again for their new slots)."""
        if not self.is_initialized or count <= 0 or source == target:
            return
        for buffer in (self.keys, self.values):
            buffer[:, :, target:target + count] = buffer[:, :, source:source + count].clone()
        if self.rotated is not None:
            self.rotated[:, :, target:target + count] = self.table.rotate(self.keys[:, :, target:target + count], target)

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        return (self.keys, self.values) if self.rotated is None else (self.keys, self.values, self.rotated)

    @torch.inference_mode()
    def copy_out(self, start: int, count: int) -> tuple[torch.Tensor, ...] | None:
        """A copy of slots start..start+count-1 (a backup to restore after a failed re-encode)."""
        if not self.is_initialized or count <= 0:
            return None
        return tuple(buffer[:, :, start:start + count].clone() for buffer in self._buffers())

    @torch.inference_mode()
    def copy_in(self, start: int, saved: tuple[torch.Tensor, ...] | None) -> None:
        """Put a `copy_out` back at the same slots, exactly."""
        if saved is not None:
            count = saved[0].shape[-2]
            for buffer, part in zip(self._buffers(), saved):
                buffer[:, :, start:start + count] = part


def rotary_tables(model: PreTrainedModel, capacity: int) -> list[RotaryTable]:
    """One RotaryTable per decoder layer (shared between layers of a type), or UnsupportedModelError."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = " (load the text-only Gemma3ForCausalLM)" if model_type == "gemma3" else ""
        raise UnsupportedModelError(
            f"the StreamingLLM sink cache does not support model type {model_type!r}{hint}: it needs a decoder "
            f"with rotate-half RoPE over the whole head; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError(f"{model_type}: partial RoPE (partial_rotary_factor != 1) is not supported")
    layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
    unknown = sorted(set(layer_types) - set(SUPPORTED_LAYER_TYPES))
    if unknown:
        raise UnsupportedModelError(f"{model_type}: layer types {unknown} are not supported by the sink cache")
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None:
        raise UnsupportedModelError(f"{model_type}: no rotary embedding module at model.model.rotary_emb")
    parameter = next(model.parameters())
    per_type = "layer_type" in inspect.signature(rotary.forward).parameters
    tables: dict[str, RotaryTable] = {}
    for layer_type in set(layer_types) if per_type else {"all"}:
        if per_type:
            function = lambda x, positions, kind=layer_type: rotary(x, positions, kind)  # noqa: E731
        else:
            function = rotary
        tables[layer_type] = RotaryTable(function, parameter.dtype, parameter.device, capacity)
    return [tables[kind if per_type else "all"] for kind in layer_types]


def attention_masks(config, query_slots: torch.Tensor, visible: torch.Tensor, read_length: int,
                    dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive 4D masks over cache slots for queries at `query_slots` [batch, q] of caches holding
    `visible` [batch] entries (after this step's writes), reading `read_length` slots.

    A query at slot p sees slots k <= p that hold entries (k < visible), and a sliding-window layer
    only those with k > p - sliding_window: transformers' own rule, over cache slots. A model
    with several layer types gets a dict keyed by type (its forward picks each layer's mask), one
    with a single type a tensor. Additive (0 / dtype min) so eager and SDPA attention both take it.
    Built from tensors only, so it can run inside a CUDA graph.
    """
    slots = torch.arange(read_length, device=query_slots.device)
    query = query_slots[:, None, :, None]
    allowed = (slots <= query) & (slots < visible[:, None, None, None])
    window = getattr(config, "sliding_window", None)
    layer_types = list(getattr(config, "layer_types", None) or [])
    if not layer_types:  # Mistral: every layer slides when sliding_window is set
        layer_types = ["sliding_attention" if window else "full_attention"]
    minimum = torch.finfo(dtype).min

    def additive(kind: str) -> torch.Tensor:
        keep = allowed & (slots > query - window) if kind == "sliding_attention" and window else allowed
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, minimum)

    kinds = sorted(set(layer_types))
    if len(kinds) == 1:
        return additive(kinds[0])
    return {kind: additive(kind) for kind in kinds}


class SinkCache(Cache):
    """StreamingLLM cache: n_sink sinks + pinned block + rolling window + free room, static buffers.

    The model must be called with `position_ids = positions(q)` (slots, see the module doc); the
    owner makes room with `make_room(q)` before ingesting and rolls forks back with `truncate()`.
    Capacity is fixed at construction: nothing here ever reallocates.
    """

    def __init__(self, model: PreTrainedModel, *, n_sink: int, window: int, evict_chunk: int,
                 pinned_capacity: int = 0, room: int = 0, keep_rotated: bool = False) -> None:
        if window < 1 or evict_chunk < 1 or n_sink < 0 or pinned_capacity < 0 or room < 0:
            raise ValueError("sink cache sizes must be positive")
        capacity = n_sink + pinned_capacity + window + room
        self.tables = rotary_tables(model, capacity)
        self.n_sink, self.window, self.evict_chunk = n_sink, window, evict_chunk
        self.pinned_capacity = pinned_capacity
        self.pinned = 0
        super().__init__(layers=[SinkLayer(capacity, table, keep_rotated) for table in self.tables])

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    @property
    def free(self) -> int:
        """Slots behind `length` still free: what a fork's prompt and answer must fit in."""
        return self.capacity - self.length

    @property
    def live_limit(self) -> int:
        """Most entries the stream itself keeps: sinks + pinned summary + window."""
        return self.n_sink + self.pinned + self.window

    @property
    def window_length(self) -> int:
        return max(self.length - self.n_sink - self.pinned, 0)

    def positions(self, count: int, device: torch.device | None = None) -> torch.Tensor:
        """`position_ids` for the next `count` tokens: the slots they will be written to."""
        return torch.arange(self.length, self.length + count, device=device)[None]

    def _set_length(self, length: int) -> None:
        for layer in self.layers:
            layer.length = length

    def set_static(self, slots: torch.Tensor | None, read_length: int = 0) -> None:
        """Static mode (for CUDA graphs): writes go to the device tensor `slots`, attention reads slots
        0..read_length-1, so shapes and addresses never change; the caller passes the masks of
        `attention_masks()` and calls `advance()` after each step. `None` returns to the dynamic mode."""
        if slots is not None and not 0 < read_length <= self.capacity:
            raise ValueError(f"static read length {read_length} outside 1..{self.capacity}")
        for layer in self.layers:
            layer.static_slots, layer.static_read = slots, read_length

    def advance(self, count: int) -> None:
        """Count `count` entries written in static mode (host-side bookkeeping a graph replay skips)."""
        if self.length + count > self.capacity:
            raise CacheFullError(f"sink cache full: {self.length + count} entries needed, capacity {self.capacity}")
        self._set_length(self.length + count)

    def make_room(self, count: int) -> int:
        """Evict whole `evict_chunk`s from the front of the window so `count` more tokens stay within the
        live limit; returns the number of tokens evicted."""
        if count > self.window:
            raise ValueError(f"{count} tokens at once do not fit a window of {self.window}")
        overflow = self.length + count - self.live_limit
        if overflow <= 0:
            return 0
        evict = min(-(-overflow // self.evict_chunk) * self.evict_chunk, self.window_length)
        start = self.n_sink + self.pinned
        keep = self.window_length - evict
        for layer in self.layers:
            layer.move(start + evict, start, keep)
        self._set_length(self.length - evict)
        return evict

    def truncate(self, length: int) -> None:
        """Roll back to `length` entries (end of a fork): nothing is copied, later slots are just free."""
        if not self.n_sink + self.pinned <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} entries to {length}")
        self._set_length(length)

    @torch.inference_mode()
    def snapshot(self, length: int, room: int) -> SinkCache:
        """A copy of this cache's first `length` entries with `room` free slots behind them: a fork written
        there never touches this cache (several forks off one moment of the stream decode side by side)."""
        if not self.n_sink + self.pinned <= length <= self.length:
            raise ValueError(f"cannot snapshot {length} entries of a cache of {self.length}")
        copy = SinkCache.__new__(SinkCache)
        Cache.__init__(copy, layers=[SinkLayer(length + room, layer.table, layer.keep_rotated) for layer in self.layers])
        copy.tables, copy.n_sink, copy.window, copy.evict_chunk = self.tables, self.n_sink, self.window, self.evict_chunk
        copy.pinned_capacity, copy.pinned = self.pinned_capacity, self.pinned
        for mine, theirs in zip(copy.layers, self.layers):
            if theirs.is_initialized:
                mine.lazy_initialization(theirs.keys[:, :, :1], theirs.values[:, :, :1])
                for target, source in zip(mine._buffers(), theirs._buffers()):
                    target[:, :, :length] = source[:, :, :length]
            mine.length = length
        return copy

    def save_tail(self, start: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """A copy of the entries from `start` to the end (a parked fork), to `restore_tail` later."""
        return [layer.copy_out(start, self.length - start) for layer in self.layers]

    def restore_tail(self, start: int, saved: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        """Put entries saved by `save_tail(start)` back behind `start`, exactly; the length follows them."""
        count = next((pair[0].shape[-2] for pair in saved if pair is not None), 0)
        if start + count > self.capacity:
            raise CacheFullError(f"sink cache full: {start + count} entries needed, capacity {self.capacity}")
        for layer, pair in zip(self.layers, saved):
            layer.copy_in(start, pair)
        self._set_length(start + count)

    def replace_pinned(self, count: int, encode: Callable[[], None]) -> None:
        """Swap the pinned block for `count` new tokens that `encode()` feeds through the model.

        The window moves to start right after the new block (a plain copy of pre-RoPE keys); the
        write position is set right behind the sinks while `encode` runs, so the new block attends
        to the sinks only, then the length is restored over the moved window. Only the block is
        encoded again, never the window. Exception-safe: if `encode` raises (or writes too few
        tokens), the old block (backed up, at most `pinned_capacity` slots) and the window are put
        back exactly as they were, and the error propagates.
        """
        if count > self.pinned_capacity:
            raise ValueError(f"pinned block of {count} tokens exceeds its {self.pinned_capacity} reserved")
        if self.length < self.n_sink:
            raise ValueError("nothing to pin behind: the sinks are not filled yet")
        window = self.window_length
        old_start, new_start = self.n_sink + self.pinned, self.n_sink + count
        backups = [layer.copy_out(self.n_sink, self.pinned) for layer in self.layers]
        for layer in self.layers:
            layer.move(old_start, new_start, window)
        self._set_length(self.n_sink)
        try:
            encode()
            if self.length != new_start:
                raise RuntimeError(f"pinned encode wrote {self.length - self.n_sink} tokens, expected {count}")
        except BaseException:
            for layer, backup in zip(self.layers, backups):
                layer.move(new_start, old_start, window)
                layer.copy_in(self.n_sink, backup)
            self._set_length(old_start + window)
            raise
        self.pinned = count
        self._set_length(new_start + window)
