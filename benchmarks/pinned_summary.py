"""Does pinning the rolling summary behind the sinks help answer questions about evicted text?

Streams the synthesized meeting's script (samples/meeting_script.toml, its exact words, so ASR
errors do not blur the comparison) into the engine with a window far shorter than the meeting,
makes a rolling summary every `--summary-every` turns, and at the end asks about each decision,
all of which were evicted long before. An answer counts when it holds the decision's keywords.
Runs twice, pin_summary on and off, same everything else.

    python benchmarks/pinned_summary.py [--window 384] [--summary-every 10]
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

from livesum.config import EngineConfig, Settings
from livesum.llm.engine import StreamingEngine
from livesum.models import load_language_model

SCRIPT = Path(__file__).resolve().parent.parent / "samples" / "meeting_script.toml"


def run(model, tokenizer, script: dict, config: EngineConfig, summary_every: int) -> dict:
    engine = StreamingEngine(model, tokenizer, config)
    began = time.perf_counter()
    for index, turn in enumerate(script["turns"], start=1):
        engine.feed(f"{turn['speaker'].capitalize()}: {turn['text'].strip()}\n")
        if config.pin_summary and index % summary_every == 0:
            engine.summarize()
    hits, answers = 0, []
    for decision in script["decisions"]:
        topic, *expected = decision["keywords"]
        answer = engine.ask(f"What did the team decide about the {topic}?")
        hit = all(word.lower() in answer.lower() for word in expected)
        hits += hit
        answers.append((decision["id"], hit, answer))
    return {
        "hits": hits,
        "answers": answers,
        "seconds": time.perf_counter() - began,
        "tokens": engine.tokens_seen,
        "pinned": engine.pinned_summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=384)
    parser.add_argument("--summary-every", type=int, default=10, help="turns between rolling summaries")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    script = tomllib.loads(SCRIPT.read_text())
    settings = Settings()
    model, tokenizer = load_language_model(args.model, settings.resolved_cache_dir(), "cpu")
    print(f"{len(script['turns'])} turns, window {args.window}, summary every {args.summary_every} turns")
    for pin in (True, False):
        config = settings.llm.engine.model_copy(update={"window": args.window, "pin_summary": pin})
        result = run(model, tokenizer, script, config, args.summary_every)
        print(f"\npin_summary={pin}: {result['hits']}/{len(script['decisions'])} decisions recalled "
              f"({result['tokens']} tokens streamed, {result['seconds']:.0f} s)")
        if result["pinned"]:
            print(f"  last pinned summary: {result['pinned']!r}")
        for decision_id, hit, answer in result["answers"]:
            print(f"  {decision_id} {'HIT ' if hit else 'miss'} {answer!r}")


if __name__ == "__main__":
    main()
