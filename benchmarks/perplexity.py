"""Perplexity of SmolLM2 on a long real English text: the StreamingLLM paper's table, ours.

Text: "The Adventures of Sherlock Holmes" (Project Gutenberg #1661, public domain), which Debian
ships as test data of a Go package: `apt-get install golang-github-pierrec-lz4-dev` puts it at
/usr/share/gocode/src/github.com/pierrec/lz4/testdata/pg1661.txt (~140k SmolLM2 tokens).

Methods, all at the same cache size S (default 512 entries), text fed in chunks of C tokens:
- dense: plain transformers DynamicCache over independent blocks of the model's 8k context (a
  token sees up to 8k predecessors: the quality ceiling, at 16x the cache);
- window: the sink cache with n_sink = 0 (evict the oldest, no sinks);
- recompute: sliding window with re-computation: each chunk re-encodes the S - C preceding tokens
  from scratch at positions 0.., so every token sees exactly what a streaming token sees, minus the
  sinks (O(N*S): scored on every k-th chunk with --recompute-every, which the table states);
- streaming: the sink cache, n_sink sinks + window, as the engine runs it.
Eviction happens in whole chunks (evict_chunk = C), so before each chunk the cache holds S - C
entries and a chunk's tokens see S - C .. S - 1 predecessors, in every method but dense.
Perplexities are over the tokens after the first S (where all methods agree anyway).

    .venv/bin/python benchmarks/perplexity.py --tokens 65536 --write-docs
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livesum.llm.sink_cache import SinkCache  # noqa: E402
from livesum.models import load_language_model  # noqa: E402

TEXT_CANDIDATES = (
    Path("/usr/share/gocode/src/github.com/pierrec/lz4/testdata/pg1661.txt"),
    Path("/usr/share/gocode/src/github.com/bkaradzic/go-lz4/testdata/pg1661.txt"),
)
INSTALL_HINT = "apt-get install golang-github-pierrec-lz4-dev  (ships Project Gutenberg #1661 as test data)"
DOC = REPO / "docs" / "engine.md"
TABLE_BEGIN, TABLE_END = "<!-- perplexity:begin -->", "<!-- perplexity:end -->"


def load_text() -> str:
    for path in TEXT_CANDIDATES:
        if path.is_file():
            text = path.read_text(encoding="utf-8-sig")
            start = text.find("*** START OF")
            end = text.find("*** END OF")
            body = text[text.index("\n", start) + 1:end] if start >= 0 and end > start else text
            return re.sub(r"\n{3,}", "\n\n", body).strip()
    raise SystemExit(f"the benchmark text is not installed: {INSTALL_HINT}")


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


@torch.inference_mode()
def score_sink(model, ids: torch.Tensor, n_sink: int, size: int, chunk: int) -> torch.Tensor:
    """NLL of every token after the first, streaming through a sink cache of `size` entries."""
    cache = SinkCache(model, n_sink=n_sink, window=size - n_sink, evict_chunk=chunk)
    nll = torch.full((len(ids),), float("nan"))
    previous: torch.Tensor | None = None
    for start in range(0, len(ids), chunk):
        block = ids[start:start + chunk]
        cache.make_room(len(block))
        logits = model(input_ids=block[None], position_ids=cache.positions(len(block)), cache=cache,
                       use_cache=True).logits[0]
        if previous is not None:
            nll[start] = token_nll(previous[None], block[:1])[0]
        nll[start + 1:start + len(block)] = token_nll(logits[:-1], block[1:])
        previous = logits[-1]
    return nll


@torch.inference_mode()
def score_recompute(model, ids: torch.Tensor, size: int, chunk: int, every: int) -> torch.Tensor:
    """Sliding window with re-computation: chunk k (every `every`-th) re-encodes its S - C predecessors."""
    nll = torch.full((len(ids),), float("nan"))
    for index, start in enumerate(range(0, len(ids), chunk)):
        if index % every:
            continue
        begin = max(0, start - (size - chunk))
        block = ids[begin:start + chunk]
        logits = model(input_ids=block[None], use_cache=False).logits[0]
        first = start - begin  # logits[first - 1] predicts ids[start]
        lo = max(first, 1)
        nll[begin + lo:begin + len(block)] = token_nll(logits[lo - 1:-1], block[lo:])
    return nll


@torch.inference_mode()
def score_dense(model, ids: torch.Tensor, context: int, chunk: int) -> torch.Tensor:
    """Plain dense cache over independent blocks of `context` tokens (chunked prefill inside a block)."""
    nll = torch.full((len(ids),), float("nan"))
    for begin in range(0, len(ids), context):
        cache = DynamicCache(config=model.config)
        previous = None
        for start in range(begin, min(begin + context, len(ids)), chunk):
            block = ids[start:min(start + chunk, begin + context, len(ids))]
            logits = model(input_ids=block[None], cache=cache, use_cache=True).logits[0]
            if previous is not None:
                nll[start] = token_nll(previous[None], block[:1])[0]
            nll[start + 1:start + len(block)] = token_nll(logits[:-1], block[1:])
            previous = logits[-1]
    return nll


def perplexity(nll: torch.Tensor, mask: torch.Tensor) -> float:
    values = nll[mask & ~nll.isnan()]
    return math.exp(values.mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "livesum")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--size", type=int, default=512, help="cache entries S for window/recompute/streaming")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=64, help="prefill and eviction chunk C")
    parser.add_argument("--recompute-every", type=int, default=4, help="score recompute on every k-th chunk")
    parser.add_argument("--dense-context", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true", help=f"put the table into {DOC.relative_to(REPO)}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_language_model(args.model, args.cache_dir, device="cpu", dtype="float32")
    ids = torch.tensor(tokenizer(load_text(), add_special_tokens=False)["input_ids"][:args.tokens])
    print(f"{len(ids)} tokens of Sherlock Holmes; cache S={args.size}, chunk C={args.chunk}", flush=True)

    results: dict[str, torch.Tensor] = {}
    runs = {
        "dense": lambda: score_dense(model, ids, args.dense_context, 512),
        "window": lambda: score_sink(model, ids, 0, args.size, args.chunk),
        "recompute": lambda: score_recompute(model, ids, args.size, args.chunk, args.recompute_every),
        "streaming": lambda: score_sink(model, ids, args.sinks, args.size, args.chunk),
    }
    for name, run in runs.items():
        began = time.perf_counter()
        results[name] = run()
        print(f"{name}: {time.perf_counter() - began:.0f} s", flush=True)

    after = torch.arange(len(ids)) >= args.size
    subset = after & ~results["recompute"].isnan()
    rows = [
        ("dense, 8k context blocks (DynamicCache)", "dense", f"up to {args.dense_context}"),
        ("window only, no sinks", "window", f"{args.size}"),
        ("sliding window with re-computation", "recompute", f"{args.size}"),
        (f"streaming: {args.sinks} sinks + window", "streaming", f"{args.size}"),
    ]
    lines = [
        f"| method | cache | PPL, all {int(after.sum())} tokens | PPL, recompute subset ({int(subset.sum())} tokens) |",
        "| --- | --- | --- | --- |",
    ]
    for label, key, cache in rows:
        full = "n/a (subset only)" if key == "recompute" else f"{perplexity(results[key], after):.2f}"
        lines.append(f"| {label} | {cache} | {full} | {perplexity(results[key], subset):.2f} |")
    stream, recompute = perplexity(results["streaming"], subset), perplexity(results["recompute"], subset)
    lines.append("")
    lines.append(f"Streaming vs recompute on the same tokens: {100 * (stream / recompute - 1):+.1f}%. "
                 f"Command: `.venv/bin/python benchmarks/perplexity.py --tokens {args.tokens} --size {args.size} "
                 f"--chunk {args.chunk} --recompute-every {args.recompute_every}` "
                 f"({torch.get_num_threads()} CPU threads, float32).")
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        doc = DOC.read_text()
        begin, end = doc.index(TABLE_BEGIN) + len(TABLE_BEGIN), doc.index(TABLE_END)
        DOC.write_text(doc[:begin] + "\n" + table + "\n" + doc[end:])


if __name__ == "__main__":
    main()
