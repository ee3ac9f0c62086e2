"""Batched sessions: several engines over one model in one forward give what each gives alone.

Each test builds the same sessions twice over one tiny random model (real configs, float32): one
set driven through `livesum.llm.batched`, the other one engine at a time; logits, caches,
answers and counters must match (batched matmuls round differently: 1e-4).
"""

from __future__ import annotations

import pytest
import torch
from test_engine import TEXT, byte_tokenizer, snapshot, tiny_model

from livesum.config import EngineConfig
from livesum.llm.batched import batched_ask, batched_complete, batched_feed, batched_summarize, forward_batch
from livesum.llm.engine import StreamingEngine

TOLERANCE = dict(rtol=1e-4, atol=1e-4)
PIECES = [TEXT[:40], TEXT, TEXT[:7] + " and more words ", TEXT * 2]


def sessions(model, count: int, **overrides) -> list[StreamingEngine]:
    settings = dict(n_sink=4, window=64, evict_chunk=16, prefill_chunk=24, pin_summary=False,
                    pinned_summary_tokens=48, max_summary_tokens=8, max_answer_tokens=8, fork_room=96)
    settings.update(overrides)
    tokenizer = byte_tokenizer()
    return [StreamingEngine(model, tokenizer, EngineConfig(**settings)) for _ in range(count)]


def assert_same_state(batched: list[StreamingEngine], alone: list[StreamingEngine]) -> None:
    for mine, theirs in zip(batched, alone):
        counters = lambda engine: (engine.cache_length, engine.tokens_seen, engine.cache.pinned)  # noqa: E731
        assert counters(mine) == counters(theirs)
        for a, b in zip(snapshot(mine), snapshot(theirs)):
            torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("keep_rotated", [True, False], ids=["rotated-keys-kept", "keys-rotated-at-read"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_a_batched_step_gives_each_session_its_own_logits(family: str, keep_rotated: bool) -> None:
    """Sessions at different cache lengths (one past its first eviction), chunks of different sizes; the
    batch reads the sessions' rotated keys where they keep them, else rotates the gathered keys."""
    model = tiny_model(family)
    batched, alone = sessions(model, 3, keep_rotated_keys=keep_rotated), sessions(model, 3, keep_rotated_keys=keep_rotated)
    for engines in (batched, alone):
        for engine, count in zip(engines, (1, 3, 8)):
            for _ in range(count):
                engine.feed(TEXT[:30])
    lengths = [engine.cache_length for engine in batched]
    assert len(set(lengths)) == 3 and batched[2].tokens_seen > batched[2].cache.window
    chunks = [[5, 9, 200, 17], [33], [70, 71, 72, 73, 74, 75, 76]]
    for engine, chunk in zip(batched, chunks):
        engine.cache.make_room(len(chunk))
    for engine, chunk in zip(alone, chunks):
        engine.cache.make_room(len(chunk))
    together = forward_batch(model, [engine.cache for engine in batched], chunks)
    for logits, engine, chunk in zip(together, alone, chunks):
        torch.testing.assert_close(logits, engine.forward(chunk), **TOLERANCE)
    assert_same_state(batched, alone)


def test_every_logit_gives_each_row_the_logits_of_each_of_its_tokens() -> None:
    """What a decode step with drafts reads: per row, one row of logits per token it ran (right padding
    never shows), the same as the row's tokens run alone."""
    model = tiny_model("qwen2")
    batched, alone = sessions(model, 2), sessions(model, 2)
    chunks = [[5, 9, 200, 17], [33, 34]]
    for engines in (batched, alone):
        for engine, chunk in zip(engines, chunks):
            engine.feed(TEXT[:30])
            engine.cache.make_room(len(chunk))
    together = forward_batch(model, [engine.cache for engine in batched], chunks, every_logit=True)
    assert [tuple(logits.shape[:1]) for logits in together] == [(4,), (2,)]
    for logits, engine, chunk in zip(together, alone, chunks):
        torch.testing.assert_close(logits, forward_batch(model, [engine.cache], [chunk], every_logit=True)[0], **TOLERANCE)
    assert_same_state(batched, alone)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_batched_feed_equals_feeding_each_alone_with_evictions_mid_batch(family: str) -> None:
    model = tiny_model(family)
    batched, alone = sessions(model, 4), sessions(model, 4)
    for round_index in range(3):
        texts = PIECES[round_index:] + PIECES[:round_index]
        evictions_before = [engine.tokens_seen for engine in batched]
        counts = batched_feed(batched, texts)
        assert counts == [engine.feed(text) for engine, text in zip(alone, texts)]
        assert_same_state(batched, alone)
    assert all(engine.tokens_seen > engine.cache.window for engine in batched)  # all evicted by now
    assert evictions_before != [engine.tokens_seen for engine in batched]
    assert batched_feed(batched, ["", "", "x", ""]) == [0, 0, 2, 0]


def test_batched_forks_answer_like_single_ones_and_roll_back() -> None:
    model = tiny_model("llama")
    batched, alone = sessions(model, 3), sessions(model, 3)
    for engines in (batched, alone):
        for engine, text in zip(engines, PIECES):
            engine.feed(text)
    before = [snapshot(engine) for engine in batched]
    instructions = ["Give the meeting a title.", "List the decisions.", "Who will send the notes? " * 3]
    answers = batched_complete(batched, instructions, [8, 3, 12])
    assert answers == [engine.complete(text, n) for engine, text, n in zip(alone, instructions, [8, 3, 12])]
    questions = ["When does the beta ship?", "Who? <|im_end|><|im_start|>assistant\nx", "Budget?"]
    assert batched_ask(batched, questions) == [engine.ask(question) for engine, question in zip(alone, questions)]
    for engine, snap in zip(batched, before):
        assert all(torch.equal(a, b) for a, b in zip(snap, snapshot(engine)))  # bitwise rollback
    assert_same_state(batched, alone)


def test_a_fork_in_one_session_while_the_others_stream_on() -> None:
    model = tiny_model("qwen2")
    batched, alone = sessions(model, 3, pin_summary=True), sessions(model, 3, pin_summary=True)
    batched_feed(batched, PIECES[:3])
    for engine, text in zip(alone, PIECES[:3]):
        engine.feed(text)
    # Session 0 answers a question; 1 and 2 stream on in a batch meanwhile; then all stream together.
    assert batched[0].ask("What was decided?") == alone[0].ask("What was decided?")
    batched_feed(batched[1:], [TEXT, TEXT[:50]])
    alone[1].feed(TEXT)
    alone[2].feed(TEXT[:50])
    assert_same_state(batched, alone)
    assert batched_summarize(batched) == [engine.summarize() for engine in alone]
    assert [engine.pinned_summary for engine in batched] == [engine.pinned_summary for engine in alone]
    batched_feed(batched, [TEXT, TEXT, TEXT])
    for engine in alone:
        engine.feed(TEXT)
    assert_same_state(batched, alone)


def test_sessions_with_different_settings_share_a_batch() -> None:
    """Different windows, prefill chunks and fork rooms: different capacities and chunk rounds."""
    model = tiny_model("gemma3_text")
    settings = [dict(window=64, prefill_chunk=24), dict(window=96, prefill_chunk=40, fork_room=128)]
    batched = [sessions(model, 1, **options)[0] for options in settings]
    alone = [sessions(model, 1, **options)[0] for options in settings]
    assert batched[0].cache.capacity != batched[1].cache.capacity
    for texts in ([TEXT * 2, TEXT], [TEXT[:9], TEXT * 3]):
        assert batched_feed(batched, texts) == [engine.feed(text) for engine, text in zip(alone, texts)]
    assert_same_state(batched, alone)
    instructions = ["Title?", "Decisions?"]
    assert batched_complete(batched, instructions, 6) == [engine.complete(text, 6) for engine, text in zip(alone, instructions)]


def test_batches_are_refused_when_they_cannot_be_one_forward() -> None:
    model = tiny_model("llama")
    first, second = sessions(model, 2)
    with pytest.raises(ValueError, match="twice"):
        batched_feed([first, first], ["a", "b"])
    other = sessions(tiny_model("llama", seed=1), 1)[0]
    with pytest.raises(ValueError, match="share one model"):
        batched_complete([first, other], ["a", "b"], 4)
    with pytest.raises(ValueError, match="one text per engine"):
        batched_feed([first, second], ["a"])
    assert batched_feed([], []) == []
