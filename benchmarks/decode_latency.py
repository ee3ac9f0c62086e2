"""Decode latency and memory of the sink cache vs tokens streamed, vs plain decoding and recompute.

A randomly initialised model of a real shape times like the real one (weights' values do not
change the work). For each checkpoint of tokens streamed (random ids, chunked prefill through the
sink cache, evicting as the engine does), it times greedy decoding off a fork (then rolls back),
and reports peak memory. At the same cache size it also times:
- plain transformers decoding: `generate()` with a DynamicCache, and a bare forward loop on one;
- sliding window with re-computation: one forward over the whole window per generated token;
- the bandwidth floor: (weight bytes + K/V bytes read per step) / measured device copy bandwidth;
- with --cuda-graph (CUDA only): the same decode step captured once in a CUDA graph over the
  sink cache's static mode (fixed shapes and addresses), replayed per token.

GPU (the issue's target):
    python benchmarks/decode_latency.py --shape llama2-7b --device cuda --cache 4096 \
        --streamed 4096,65536,1048576 --cuda-graph
CPU (exercised here, small shape):
    .venv/bin/python benchmarks/decode_latency.py --shape smollm2-135m --device cpu --cache 512 \
        --chunk 256 --streamed 2048,16384 --decode-tokens 16 --threads 1
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
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livesum.llm.sink_cache import SinkCache  # noqa: E402

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    config = LlamaConfig(max_position_embeddings=1 << 16, **SHAPES[shape])
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
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
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

    @torch.inference_mode()
    def decode_graph(self, tokens: int) -> list[float]:
        """The same greedy steps replayed from one CUDA graph over the cache's static mode."""
        cache, device = self.cache, self.device
        mark = cache.length
        ids = torch.zeros((1, 1), dtype=torch.long, device=device)
        slots = torch.full((1,), mark, dtype=torch.long, device=device)
        mask = (torch.arange(cache.capacity, device=device) <= mark)[None, None, None]
        cache.set_static(slots)

        def step() -> torch.Tensor:
            return self.model(input_ids=ids, position_ids=slots[None], attention_mask=mask, past_key_values=cache,
                              use_cache=True, logits_to_keep=1).logits

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()  # warm-up writes to slot `mark` only: harmless, rewritten below
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = step()
        steps = []
        for index in range(tokens):
            sync(device)
            began = time.perf_counter()
            slots.fill_(mark + index)
            mask[..., mark + index] = True
            graph.replay()
            ids.copy_(logits[0, -1].argmax().reshape(1, 1))
            int(ids)
            cache.advance(1)
            steps.append(time.perf_counter() - began)
        cache.set_static(None)
        cache.truncate(mark)
        return steps


@torch.inference_mode()
def plain_decoding(model, device: torch.device, context: int, tokens: int) -> tuple[float, float]:
    """(generate() per token, bare forward loop per token) with a DynamicCache after `context` tokens."""
    prompt = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    generate = lambda n: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # noqa: E731
    generate(2)
    per_generate = (timed(lambda: generate(tokens + 1), device) - timed(lambda: generate(1), device)) / tokens
    cache = DynamicCache(config=model.config)
    model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = torch.zeros((1, 1), dtype=torch.long, device=device)
    steps = []
    for _ in range(tokens):
        sync(device)
        began = time.perf_counter()
        token = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
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


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (peak)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (peak)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--cache", type=int, default=4096, help="sinks + window entries (the cache size)")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=512, help="prefill and eviction chunk")
    parser.add_argument("--streamed", default="4096,65536,1048576", help="checkpoints, tokens streamed")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--skip-plain", action="store_true", help="skip the generate()/DynamicCache baselines")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.cuda_graph and device.type != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    model = build_model(args.shape, device, dtype)
    config = model.config
    element = torch.finfo(dtype).bits // 8
    head_dim = config.hidden_size // config.num_attention_heads
    weight_bytes = sum(p.numel() for p in model.parameters()) * element
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * args.cache * element
    bandwidth = copy_bandwidth(device, 1024 if device.type == "cuda" else 256)
    floor = (weight_bytes + kv_bytes) / bandwidth
    print(f"# {args.shape} {dtype} on {device}: {weight_bytes / 2**30:.2f} GiB weights, {kv_bytes / 2**20:.0f} MiB K/V "
          f"read per step at cache {args.cache}; copy bandwidth {bandwidth / 1e9:.1f} GB/s; floor {floor * 1e3:.2f} ms/token")

    streamer = Streamer(model, device, args.sinks, args.cache - args.sinks, args.chunk, room=args.decode_tokens + 8)
    rows = []
    for checkpoint in (int(value) for value in args.streamed.split(",")):
        began = time.perf_counter()
        chunk_seconds = streamer.stream_to(checkpoint)
        fed_seconds = time.perf_counter() - began
        steps = statistics.median(streamer.decode(args.decode_tokens))
        graph = statistics.median(streamer.decode_graph(args.decode_tokens)) if args.cuda_graph else None
        rows.append((checkpoint, steps, graph, chunk_seconds))
        graph_text = f", CUDA graph {graph * 1e3:.2f} ms/token ({graph / floor:.2f}x floor)" if graph else ""
        print(f"streamed {streamer.streamed}: decode {steps * 1e3:.2f} ms/token ({steps / floor:.2f}x floor){graph_text}; "
              f"{args.chunk}-token chunk {chunk_seconds * 1e3:.0f} ms; cache {streamer.cache.length}/{streamer.cache.capacity} "
              f"entries; {peak_memory(device)}; fed in {fed_seconds:.0f} s", flush=True)

    first, last = rows[0], rows[-1]
    print(f"flatness: decode at {last[0]} / at {first[0]} tokens = {last[1] / first[1]:.3f}; "
          f"chunk cost ratio {last[3] / first[3]:.3f}")
    recompute = recompute_step(model, device, args.cache, repeats=3)
    print(f"sliding window with re-computation at {args.cache}: {recompute * 1e3:.1f} ms/token; "
          f"streaming decode is {recompute / last[1]:.1f}x faster"
          + (f", {recompute / last[2]:.1f}x with the CUDA graph" if last[2] else ""))
    if not args.skip_plain:
        per_generate, per_forward = plain_decoding(model, device, args.cache, args.decode_tokens)
        print(f"plain transformers at context {args.cache}: generate() {per_generate * 1e3:.2f} ms/token, bare forward "
              f"loop on a DynamicCache {per_forward * 1e3:.2f} ms/token; sink-cache engine loop {last[1] * 1e3:.2f} ms/token "
              f"= {per_generate / last[1]:.2f}x faster than generate(), {per_forward / last[1]:.2f}x vs the bare loop")


if __name__ == "__main__":
    main()
