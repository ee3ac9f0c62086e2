"""Decode latency and memory of the sink cache vs tokens streamed, vs plain decoding and recompute,
and aggregate throughput of batched sessions.

A randomly initialised model of a real shape times like the real one (weights' values do not
change the work). For each checkpoint of tokens streamed (random ids, chunked prefill through the
sink cache, evicting as the engine does), it times greedy decoding off a fork (then rolls back),
and reports peak memory. At the same cache size it also times:
- plain transformers decoding: `generate()` with a DynamicCache, and a bare forward loop on one;
- sliding window with re-computation: one forward over the whole window per generated token;
- the bandwidth floor: (weight bytes + K/V bytes read per step) / measured device copy bandwidth;
- --static: the engine's own static decoder (`livesum.llm.engine.StaticDecoder`): one decode
  step captured in a CUDA graph per read bucket and replayed (CUDA), or run uncaptured (CPU);
- --rotation-cost: the same decode with the read-time key rotation skipped (wrong numbers,
  right timing): what rotating the whole cache at every read costs;
- --batched 1,2,4,...: N sessions' sink caches, each filled to the window, decoding together
  through `livesum.llm.batched.forward_batch`; aggregate tokens/s and step latency, and the same
  N sessions decoded one after another.

All of issue 10's GPU measurements, one command (about 10 minutes on an H100; prints markdown):
    python benchmarks/decode_latency.py --suite gpu
CPU (small shape):
    .venv/bin/python benchmarks/decode_latency.py --shape smollm2-135m --device cpu --cache 512 \
        --chunk 256 --streamed 2048,16384 --decode-tokens 16 --threads 1 --static --batched 1,2,4,8
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livesum.llm.batched import forward_batch  # noqa: E402
from livesum.llm.engine import StaticDecoder  # noqa: E402
from livesum.llm.sink_cache import RotaryTable, SinkCache  # noqa: E402

SHAPES = {
    "llama2-7b": (LlamaConfig, dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                                    num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0)),
    "smollm2-135m": (LlamaConfig, dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                       num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                                       rope_theta=100000.0)),
    "qwen2.5-1.5b": (Qwen2Config, dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                                       rope_theta=1000000.0)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    config_class, settings = SHAPES[shape]
    config = config_class(max_position_embeddings=1 << 16, **settings)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def timed(function: Callable[[], object], device: torch.device) -> float:
    sync(device)
    began = time.perf_counter()
    function()
    sync(device)
    return time.perf_counter() - began


def copy_bandwidth(device: torch.device, megabytes: int) -> float:
    """Bytes per second of a device-to-device copy (read + write counted), best of 5."""
    source = torch.empty(megabytes << 20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(timed(lambda: target.copy_(source), device) for _ in range(5))
    return 2 * source.numel() / best


class Streamer:
    """The engine's ingest and decode path on a SinkCache, fed random ids."""

    def __init__(self, model, device: torch.device, n_sink: int, window: int, chunk: int, room: int) -> None:
        self.model, self.device, self.chunk = model, device, chunk
        self.cache = SinkCache(model, n_sink=n_sink, window=window, evict_chunk=chunk, room=room)
        self.generator = torch.Generator().manual_seed(1)
        self.streamed = 0
        self.vocab = model.config.vocab_size

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids[None], position_ids=self.cache.positions(len(ids), self.device),
                         cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]

    def stream_to(self, total: int) -> float:
        """Feed random chunks up to `total` tokens; seconds of the last chunk (the per-chunk cost)."""
        last = 0.0
        while self.streamed < total:
            ids = torch.randint(0, self.vocab, (self.chunk,), generator=self.generator).to(self.device)
            self.cache.make_room(self.chunk)
            last = timed(lambda: self.forward(ids), self.device)
            self.streamed += self.chunk
        return last

    def decode(self, tokens: int) -> list[float]:
        """Per-token seconds of greedy decoding off a fork, rolled back afterwards."""
        mark = self.cache.length
        token = torch.zeros(1, dtype=torch.long, device=self.device)
        steps = []
        for _ in range(tokens):
            sync(self.device)
            began = time.perf_counter()
            token = self.forward(token).argmax().reshape(1)
            int(token)  # the engine reads every token on the host (stop check)
            steps.append(time.perf_counter() - began)
        self.cache.truncate(mark)
        return steps

    def decode_static(self, tokens: int, decoder: StaticDecoder) -> float:
        """Seconds per token of the engine's static decoder (CUDA graph on CUDA) off a fork, rolled back.
        The first call per read bucket captures its graph, so a warm-up decode runs first."""
        mark = self.cache.length
        decoder.decode([0], tokens, stop_ids=set())
        self.cache.truncate(mark)
        seconds = timed(lambda: decoder.decode([0], tokens + 1, stop_ids=set()), self.device)
        self.cache.truncate(mark)
        return seconds / tokens


@torch.inference_mode()
def plain_decoding(model, device: torch.device, context: int, tokens: int) -> tuple[float, float]:
    """(generate() per token, bare forward loop per token) with a DynamicCache after `context` tokens."""
    prompt = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    generate = lambda n: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # noqa: E731
    generate(2)
    per_generate = (timed(lambda: generate(tokens + 1), device) - timed(lambda: generate(1), device)) / tokens
    cache = DynamicCache(config=model.config)
    model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    token = torch.zeros((1, 1), dtype=torch.long, device=device)
    steps = []
    for _ in range(tokens):
        sync(device)
        began = time.perf_counter()
        token = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        int(token)
        steps.append(time.perf_counter() - began)
    return per_generate, statistics.median(steps)


@torch.inference_mode()
def recompute_step(model, device: torch.device, context: int, repeats: int) -> float:
    """One token of sliding window with re-computation: a fresh forward over the whole window."""
    window = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    run = lambda: model(input_ids=window, use_cache=False, logits_to_keep=1).logits.argmax()  # noqa: E731
    run()
    return statistics.median(timed(run, device) for _ in range(repeats))


@torch.inference_mode()
def batched_sessions(model, device: torch.device, window: int, counts: list[int], steps: int, chunk: int) -> list[str]:
    """Aggregate decode throughput of N sessions, each a sink cache filled to `window`, stepped together
    (one forward per step) and one after another; markdown rows."""
    rows = ["| sessions | batched step (ms) | batched tokens/s | one after another: tokens/s | speedup |",
            "| --- | --- | --- | --- | --- |"]
    print("\n".join(rows), flush=True)
    generator = torch.Generator().manual_seed(2)
    caches: list[SinkCache] = []
    for count in counts:
        while len(caches) < count:
            cache = SinkCache(model, n_sink=4, window=window - 4, evict_chunk=chunk, room=steps + 8)
            while cache.length + chunk <= cache.live_limit:
                ids = torch.randint(0, model.config.vocab_size, (chunk,), generator=generator).tolist()
                forward_batch(model, [cache], [ids])
            caches.append(cache)
        batch = caches[:count]
        marks = [cache.length for cache in batch]

        def together() -> None:
            for _ in range(steps):
                forward_batch(model, batch, [[1]] * count)

        def alone() -> None:  # the engine's single-session path
            one = torch.ones((1, 1), dtype=torch.long, device=device)
            for cache in batch:
                for _ in range(steps):
                    model(input_ids=one, position_ids=cache.positions(1, device), cache=cache,
                          use_cache=True, logits_to_keep=1)

        together()  # warm-up (allocator, kernels)
        for cache, mark in zip(batch, marks):
            cache.truncate(mark)
        batched_seconds = timed(together, device) / steps
        for cache, mark in zip(batch, marks):
            cache.truncate(mark)
        alone_seconds = timed(alone, device) / steps
        for cache, mark in zip(batch, marks):
            cache.truncate(mark)
        rows.append(f"| {count} | {batched_seconds * 1e3:.2f} | {count / batched_seconds:.1f} | "
                    f"{count / alone_seconds:.1f} | {alone_seconds / batched_seconds:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def without_rotation(function: Callable[[], float]) -> float:
    """`function()` with the read-time key rotation skipped (keys read as stored): its cost, by difference."""
    rotate = RotaryTable.rotate
    RotaryTable.rotate = lambda self, pre_keys, start: pre_keys  # type: ignore[method-assign]
    try:
        return function()
    finally:
        RotaryTable.rotate = rotate  # type: ignore[method-assign]


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (peak)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (peak)"


def measure_shape(shape: str, device: torch.device, dtype: torch.dtype, *, cache: int, sinks: int, chunk: int,
                  streamed: list[int], decode_tokens: int, static: bool, rotation_cost: bool, plain: bool,
                  batched: list[int], batched_steps: int) -> None:
    """Every measurement of one model shape, printed as it comes."""
    model = build_model(shape, device, dtype)
    config = model.config
    element = torch.finfo(dtype).bits // 8
    head_dim = config.hidden_size // config.num_attention_heads
    weight_bytes = sum(p.numel() for p in model.parameters()) * element
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * cache * element
    bandwidth = copy_bandwidth(device, 1024 if device.type == "cuda" else 256)
    floor = (weight_bytes + kv_bytes) / bandwidth
    print(f"\n## {shape} {dtype} on {device}\n\n{weight_bytes / 2**30:.2f} GiB weights, {kv_bytes / 2**20:.0f} MiB K/V "
          f"read per step at cache {cache}; copy bandwidth {bandwidth / 1e9:.1f} GB/s; floor {floor * 1e3:.2f} ms/token", flush=True)

    streamer = Streamer(model, device, sinks, cache - sinks, chunk, room=max(decode_tokens + 8, 2 * StaticDecoder.READ_BUCKET))
    decoder = StaticDecoder(model, streamer.cache) if static else None
    rows = []
    for checkpoint in streamed:
        began = time.perf_counter()
        chunk_seconds = streamer.stream_to(checkpoint)
        fed_seconds = time.perf_counter() - began
        steps = statistics.median(streamer.decode(decode_tokens))
        fast = streamer.decode_static(decode_tokens, decoder) if decoder else None
        rows.append((checkpoint, steps, fast, chunk_seconds))
        kind = "CUDA graph" if device.type == "cuda" else "static, uncaptured"
        fast_text = f", {kind} {fast * 1e3:.2f} ms/token ({fast / floor:.2f}x floor)" if fast else ""
        print(f"- streamed {streamer.streamed}: eager decode {steps * 1e3:.2f} ms/token ({steps / floor:.2f}x floor){fast_text}; "
              f"{chunk}-token chunk {chunk_seconds * 1e3:.0f} ms; cache {streamer.cache.length}/{streamer.cache.capacity} "
              f"entries; {peak_memory(device)}; fed in {fed_seconds:.0f} s", flush=True)

    first, last = rows[0], rows[-1]
    best = last[2] or last[1]
    if len(rows) > 1:
        fast_ratio = f", static {last[2] / first[2]:.3f}" if last[2] else ""
        print(f"- flatness, decode at {last[0]} / at {first[0]} tokens streamed: eager {last[1] / first[1]:.3f}{fast_ratio}; "
              f"chunk cost {last[3] / first[3]:.3f}")
    if rotation_cost:
        plain_steps = without_rotation(lambda: statistics.median(streamer.decode(decode_tokens)))
        unrotated = without_rotation(lambda: streamer.decode_static(decode_tokens, StaticDecoder(model, streamer.cache))) if decoder else None
        text = f"eager {last[1] * 1e3:.2f} vs {plain_steps * 1e3:.2f} ms/token without ({last[1] / plain_steps:.3f}x)"
        if unrotated:
            text += f"; static {last[2] * 1e3:.2f} vs {unrotated * 1e3:.2f} ms/token without ({last[2] / unrotated:.3f}x)"
        print(f"- read-time rotation of the whole cache ({cache} slots): {text}", flush=True)
    recompute = recompute_step(model, device, cache, repeats=3)
    print(f"- sliding window with re-computation at {cache}: {recompute * 1e3:.1f} ms/token; streaming decode is "
          f"{recompute / last[1]:.1f}x faster eager" + (f", {recompute / last[2]:.1f}x static" if last[2] else ""), flush=True)
    if plain:
        per_generate, per_forward = plain_decoding(model, device, cache, decode_tokens)
        print(f"- plain transformers at context {cache}: generate() {per_generate * 1e3:.2f} ms/token, bare forward "
              f"loop on a DynamicCache {per_forward * 1e3:.2f} ms/token; sink-cache engine {best * 1e3:.2f} ms/token "
              f"= {per_generate / best:.2f}x faster than generate(), {per_forward / best:.2f}x vs the bare loop", flush=True)
    del streamer, decoder
    if batched:
        print(f"\nBatched sessions, each a sink cache of {cache} entries, {batched_steps} decode steps:\n", flush=True)
        rows = batched_sessions(model, device, cache, batched, batched_steps, chunk)
        best_rate = max(float(row.split("|")[3]) for row in rows[2:])
        print(f"\nlive meetings one {device.type.upper()} can carry at {cache} slots: about {best_rate / 6:.0f} "
              f"({best_rate:.0f} tokens/s aggregate / 6 tokens/s a meeting: 4 of ingest + ~2 of summaries and answers, "
              f"all priced as decode steps, so a lower bound)", flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def gpu_suite(device: torch.device) -> None:
    """Issue 10's GPU measurements in one run (bf16, cache 4096)."""
    common = dict(sinks=4, chunk=512, decode_tokens=32, static=True)
    measure_shape("llama2-7b", device, torch.bfloat16, cache=4096, streamed=[4096, 65536, 1048576], rotation_cost=True,
                  plain=True, batched=[], batched_steps=0, **common)
    measure_shape("smollm2-135m", device, torch.bfloat16, cache=4096, streamed=[8192], rotation_cost=True, plain=True,
                  batched=[], batched_steps=0, **common)
    measure_shape("qwen2.5-1.5b", device, torch.bfloat16, cache=4096, streamed=[8192], rotation_cost=False, plain=False,
                  batched=[1, 2, 4, 8, 16, 32, 64], batched_steps=16, **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["gpu"], help="run issue 10's whole GPU measurement set")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--cache", type=int, default=4096, help="sinks + window entries (the cache size)")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=512, help="prefill and eviction chunk")
    parser.add_argument("--streamed", default="4096,65536,1048576", help="checkpoints, tokens streamed")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--static", "--cuda-graph", action="store_true",
                        help="also time the engine's static decoder (a CUDA graph on CUDA)")
    parser.add_argument("--rotation-cost", action="store_true", help="also time decoding without the read-time rotation")
    parser.add_argument("--skip-plain", action="store_true", help="skip the generate()/DynamicCache baselines")
    parser.add_argument("--batched", default="", help="session counts for the batched-sessions table, e.g. 1,2,4,8")
    parser.add_argument("--batched-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.suite == "gpu":
        if device.type != "cuda":
            parser.error("--suite gpu needs a CUDA device")
        gpu_suite(device)
        return
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    measure_shape(args.shape, device, dtype, cache=args.cache, sinks=args.sinks, chunk=args.chunk,
                  streamed=[int(value) for value in args.streamed.split(",")], decode_tokens=args.decode_tokens,
                  static=args.static, rotation_cost=args.rotation_cost, plain=not args.skip_plain,
                  batched=[int(value) for value in args.batched.split(",") if value], batched_steps=args.batched_steps)


if __name__ == "__main__":
    main()
