"""Decode and prefill of the real default LM on this CPU: full weights vs the int4 decode weights, each
against the memory-bandwidth floor of its format, and llama.cpp on the same GGUF with the same threads.

What it runs, on the embedded Qwen2.5-Coder-1.5B (the converted cache of `livesum models prepare`):
- the engine's own path (a StreamingEngine fed real transcript text up to --context tokens, then greedy
  one-token steps off a fork, rolled back), with full weights (in the dtype livesum picks here:
  bfloat16 where the CPU computes it, else float32; --dtype to choose) and then with the int4 copies
  of livesum.llm.compact;
- the floor of each: bytes one decode step must read (every linear weight once, in its format, plus
  the K/V of the cache) / this machine's measured copy bandwidth (read + write, best of 5);
- llama.cpp (`llama-cpp-python`, built in its own environment, never a dependency of livesum) on the
  GGUF the weights come from: prefill of the same context, then one-token steps.

Build llama.cpp once, beside the project (8-10 minutes on 2 cores; a -DGGML_NATIVE=ON build died with
an illegal instruction here; on a CPU without AVX512, leave out the three -DGGML_AVX512* flags):
    python3 -m venv /tmp/llamaenv
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
        -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" /tmp/llamaenv/bin/pip install llama-cpp-python==0.3.36
Then:
    .venv/bin/python benchmarks/cpu_decode.py --threads 2 --llama-python /tmp/llamaenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livesum.config import EngineConfig, load_settings  # noqa: E402
from livesum.llm.compact import CompactLinear, compact_decode_weights  # noqa: E402
from livesum.llm.engine import StreamingEngine  # noqa: E402
from livesum.models import (  # noqa: E402
    LANGUAGE_MODELS, assemble_gguf, language_model_dir, load_language_model, packed_weights_dir,
)

TEXT_SOURCE = REPO / "samples" / "meetings"

LLAMA_SCRIPT = r"""
import json, statistics, sys, time
from llama_cpp import Llama
path, threads, context, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=context + steps + 64, n_batch=256, verbose=False)
text = sys.stdin.read()
tokens = llm.tokenize(text.encode(), add_bos=False)[:context]
began = time.perf_counter(); llm.eval(tokens); prefill = time.perf_counter() - began
times = []
for _ in range(steps + 3):  # one token a step, as decoding does (the values do not change the work)
    began = time.perf_counter(); llm.eval([tokens[-1]]); times.append(time.perf_counter() - began)
times = times[3:]
print(json.dumps({"prefill_tokens_per_s": len(tokens) / prefill, "decode_ms": 1000 * statistics.median(times), "tokens": len(tokens)}))
"""


def copy_bandwidth(megabytes: int = 512) -> float:
    source = torch.empty(megabytes << 20, dtype=torch.uint8)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - began)
    return 2 * source.numel() / best


def transcript_text() -> str:
    """Real meeting speech: the turns of the benchmark meetings' scripts, as the LM would read them."""
    import tomllib

    lines = []
    for script in sorted(TEXT_SOURCE.glob("*.toml")):
        data = tomllib.loads(script.read_text())
        for turn in data.get("turns", []):
            lines.append(f"{turn.get('speaker', '')}: {turn.get('text', '')}".strip(": "))
    return "\n".join(lines)


def read_bytes(model, engine: StreamingEngine, compact: bool) -> int:
    """Bytes one decode step reads: each linear layer's weights in the format it decodes with, the
    norms, and the cache's K/V."""
    total = 0
    for module in model.modules():
        if isinstance(module, CompactLinear) and compact:
            total += module.packed.numel() * module.packed.element_size()
            total += module.scales_and_zeros.numel() * module.scales_and_zeros.element_size()
            total += module.bias.numel() * module.bias.element_size() if module.bias is not None else 0
        elif isinstance(module, (torch.nn.Linear, CompactLinear)):
            total += sum(p.numel() * p.element_size() for p in (module.weight, module.bias) if p is not None)
    norms = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "norm" in name)
    layer = engine.cache.layers[0]
    kv = 2 * len(engine.cache.layers) * layer.keys[:, :, :engine.cache.length].numel() * layer.keys.element_size()
    return total + norms + kv


def measure(engine: StreamingEngine, steps: int) -> tuple[float, float]:
    """(median decode seconds per token off a fork, prefill tokens/s of one prefill chunk)."""
    mark = engine.cache.length
    token = engine.encode(" the")[0]
    times = []
    for _ in range(steps + 3):
        began = time.perf_counter()
        engine.forward([token])
        times.append(time.perf_counter() - began)
    engine.cache.truncate(mark)
    chunk = engine.encode(transcript_text())[:engine.prefill_chunk]
    began = time.perf_counter()
    engine.forward(chunk)
    prefill = len(chunk) / (time.perf_counter() - began)
    engine.cache.truncate(mark)
    return statistics.median(times[3:]), prefill


def gguf_file(name: str, work: Path, cache_dir: Path) -> Path:
    return assemble_gguf(name, cache_dir, work / LANGUAGE_MODELS[name].gguf_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", choices=sorted(LANGUAGE_MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=1800, help="transcript tokens in the cache while decoding")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="the full weights' dtype; auto = what livesum picks on this CPU (float32 without bfloat16 instructions)")
    parser.add_argument("--llama-python", type=Path, help="a Python with llama-cpp-python installed (see above)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "livesum-cpu-decode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings()
    cache_dir = settings.resolved_cache_dir()
    model, tokenizer = load_language_model(args.model, cache_dir, device="cpu", dtype=args.dtype, decode_weights="full")
    dtype = str(model.dtype).removeprefix("torch.")  # what "auto" resolved to on this CPU
    engine = StreamingEngine(model, tokenizer, EngineConfig(window=max(args.context + 64, 256), prefill_chunk=256))
    text = transcript_text()
    ids = engine.encode(text)
    engine.feed(engine.tokenizer.decode(ids[:args.context]))  # the context only: the whole text is ~30k tokens
    bandwidth = copy_bandwidth()
    print(f"## {args.model} on {args.threads} CPU threads, {engine.cache.length} entries in the cache\n", flush=True)
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)\n")
    print("| weights | decode ms/token | floor ms/token | x floor | prefill tokens/s |")
    print("| --- | --- | --- | --- | --- |")
    results = {}
    for label, compact in ((dtype, False), ("int4 decode copies (livesum default)", True)):
        if compact:
            compact_decode_weights(model, packed_weights_dir(language_model_dir(args.model, cache_dir), cache_dir))
        decode, prefill = measure(engine, args.steps)
        floor = read_bytes(model, engine, compact) / bandwidth
        results[label] = decode
        print(f"| {label} | {decode * 1e3:.1f} | {floor * 1e3:.1f} | {decode / floor:.2f} | {prefill:.0f} |", flush=True)
    if args.llama_python:
        args.work.mkdir(parents=True, exist_ok=True)
        path = gguf_file(args.model, args.work, cache_dir)
        done = subprocess.run([str(args.llama_python), "-c", LLAMA_SCRIPT, str(path), str(args.threads),
                               str(engine.cache.length), str(args.steps)], input=text * 4, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"\nllama.cpp failed: {done.stderr.strip()[-500:]}")
            return
        llama = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| llama.cpp {LANGUAGE_MODELS[args.model].gguf_name} ({llama['tokens']} tokens of context) | "
              f"{llama['decode_ms']:.1f} | | | {llama['prefill_tokens_per_s']:.0f} |")
        ours = results["int4 decode copies (livesum default)"] * 1e3
        print(f"\nlivesum int4 / llama.cpp decode: {ours / llama['decode_ms']:.2f}x")


if __name__ == "__main__":
    main()
