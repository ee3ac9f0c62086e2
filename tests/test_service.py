"""The LM service: one worker thread for every model operation, a forward at a time, most urgent first.

The ordering tests use plain call jobs; the preemption, fairness and stall tests run real forks of the
real SmolLM2 on the worker thread.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

import livesum.llm.service as service_module
from livesum.compute import SHARE
from livesum.config import EngineConfig
from livesum.llm.batched import forward_batch, may_share_forward, rows_of_like_width
from livesum.llm.engine import ForkRequest, StreamingEngine
from livesum.llm.service import LmService, Priority

MEETING = (
    "Anna: Good morning everyone, let's start with the roof. We had two quotes, Hartley and Baines. "
    "Ben: Hartley is fourteen thousand two hundred, Baines is sixteen thousand eight hundred. "
    "Anna: Then we go with Hartley. Ben, could you ring them on Monday? Ben: Sure, I'll call them Monday morning. "
    "Carla: I will send the minutes to the residents by Friday. "
)
LONG_INSTRUCTION = "Write out, one per line, every word of the meeting above in order, with its speaker."


async def occupy(service: LmService, priority: Priority = Priority.FEED) -> tuple[asyncio.Future, threading.Event]:
    """A job that holds the worker until the returned gate is set; returns once the worker is inside it."""
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(timeout=30)

    job = asyncio.wrap_future(service.submit_call(priority, hold))
    assert await asyncio.to_thread(started.wait, 30), "the worker never took the job"
    return job, gate


async def test_a_question_overtakes_queued_summaries_and_feeds() -> None:
    service = LmService()
    order: list[str] = []

    def job(name: str) -> str:
        order.append(name)
        return name

    first, gate = await occupy(service, Priority.SUMMARY)
    queued = [  # submitted in this order while the worker is busy
        asyncio.wrap_future(service.submit_call(Priority.SUMMARY, job, "summary")),
        asyncio.wrap_future(service.submit_call(Priority.FEED, job, "feed 1")),
        asyncio.wrap_future(service.submit_call(Priority.FEED, job, "feed 2")),
        asyncio.wrap_future(service.submit_call(Priority.QUESTION, job, "question")),
    ]
    gate.set()
    await first
    assert await asyncio.gather(*queued) == ["summary", "feed 1", "feed 2", "question"]
    assert order == ["question", "feed 1", "feed 2", "summary"]
    service.close(wait=True)


async def test_every_call_runs_on_the_one_worker_thread_and_errors_reach_the_caller() -> None:
    service = LmService()
    threads = await asyncio.gather(*(service.run(Priority.FEED, threading.get_ident) for _ in range(5)))
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()

    def broken() -> None:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        await service.run(Priority.QUESTION, broken)
    assert await service.run(Priority.FEED, lambda: "still serving") == "still serving"
    service.close(wait=True)


class UnstartableRun:
    """A run whose first step cannot even be prepared (a snapshot or a prompt that fails)."""

    done = live = decoding = False
    result = None

    def want(self) -> None:
        raise MemoryError("no room for the fork's snapshot")

    def close(self) -> None:
        pass


async def test_a_run_that_cannot_start_fails_its_caller_and_the_worker_serves_on() -> None:
    service = LmService()
    with pytest.raises(MemoryError, match="snapshot"):
        await asyncio.wait_for(asyncio.wrap_future(service.submit_runs(Priority.SUMMARY, object(), [UnstartableRun()])), 30)
    assert await asyncio.wait_for(service.run(Priority.FEED, lambda: "still serving"), 30) == "still serving"
    service.close(wait=True)


async def test_a_failure_of_the_scheduling_itself_fails_every_waiting_caller_instead_of_hanging() -> None:
    service = LmService()
    running, gate = await occupy(service)
    waiting = asyncio.wrap_future(service.submit_call(Priority.SUMMARY, lambda: "never"))

    def broken_ranking() -> None:
        raise AssertionError("a scheduling bug")

    service._ranked = broken_ranking  # type: ignore[method-assign]  # the bug, planted in the next turn
    gate.set()
    assert await asyncio.wait_for(running, 30) is None
    with pytest.raises(RuntimeError, match="LM worker failed"):
        await asyncio.wait_for(waiting, 30)
    del service._ranked  # fixed: the next submission gets a fresh worker
    assert await asyncio.wait_for(service.run(Priority.FEED, lambda: "back"), 30) == "back"
    service.close(wait=True)


async def test_a_caller_that_went_away_is_skipped() -> None:
    service = LmService()
    ran: list[str] = []
    blocker, gate = await occupy(service)
    submitted = service.submit_call(Priority.FEED, ran.append, "abandoned")
    asyncio.wrap_future(submitted).cancel()  # the caller goes away (its await is cancelled)...
    await asyncio.sleep(0)  # ...and one turn of the loop later, so is the job's own future
    assert submitted.cancelled()
    gate.set()
    await blocker
    await service.run(Priority.FEED, ran.append, "kept")
    assert ran == ["kept"]
    service.close(wait=True)


async def test_close_with_wait_returns_once_the_worker_has_stopped() -> None:
    service = LmService()
    started, release = threading.Event(), threading.Event()
    workers: list[threading.Thread] = []

    def running() -> None:
        workers.append(threading.current_thread())
        started.set()
        release.wait(timeout=30)

    job = asyncio.create_task(service.run(Priority.FEED, running))
    await asyncio.to_thread(started.wait, 30)
    closing = asyncio.create_task(asyncio.to_thread(service.close, True))
    await asyncio.wait({closing}, timeout=0.1)
    assert not closing.done()  # still inside the job, a tenth of a second on
    release.set()
    await closing
    assert not workers[0].is_alive()
    await job


# -- real forks of SmolLM2 -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(model_cache):
    """In float32 with int4 decode copies, prefilling from the float32 weights: a row's result then does not
    depend on how many rows share its forward, so schedules can be compared token for token (the float16
    prefill copies round a row differently by the forward's row count, as bfloat16 does: docs/engine.md)."""
    from livesum.models import load_language_model

    return load_language_model("smollm2-135m", model_cache, device="cpu", dtype="float32", prefill_weights="full")


@pytest.fixture(scope="module")
def smollm2_bfloat16(model_cache):
    """As the default profile runs where the CPU computes bfloat16: the model and the int4 kernel in one
    dtype, the arrangement that gets prompt-lookup drafts (livesum.llm.compact)."""
    from livesum.models import load_language_model

    return load_language_model("smollm2-135m", model_cache, device="cpu", dtype="bfloat16")


def engine_on(loaded, window: int = 512, draft_tokens: int = 3) -> StreamingEngine:
    model, tokenizer = loaded
    engine = StreamingEngine(model, tokenizer, EngineConfig(window=window, evict_chunk=64, prefill_chunk=64, fork_room=512,
                                                            draft_tokens=draft_tokens))
    engine.feed(MEETING)
    return engine


@pytest.mark.slow
async def test_a_question_overtakes_a_running_extraction_and_the_extraction_resumes_exactly(smollm2) -> None:
    engine = engine_on(smollm2)
    alone = engine.complete(LONG_INSTRUCTION, 160, structured=True)  # the reference, with nothing in its way
    question = "Who will call Hartley?"
    alone_answer = engine.ask(question)
    service = LmService()
    progress: list[str] = []
    extraction_run = engine.fork_run(LONG_INSTRUCTION, 160, structured=True, on_text=progress.append)
    extraction = asyncio.ensure_future(service.fork(Priority.SUMMARY, engine, extraction_run))
    while len(progress) < 10:  # the extraction is decoding
        await asyncio.sleep(0.01)
    answer = await service.ask(engine, question)
    assert not extraction.done(), "the question waited for the whole extraction"
    assert answer == alone_answer
    assert await extraction == alone  # parked and put back exactly: the same tokens as alone
    assert extraction_run.restarts == 0
    assert engine.cache.length == engine.cache_length  # rolled back to the live stream
    service.close(wait=True)


@pytest.mark.slow
async def test_a_question_is_answered_after_the_feeds_sent_before_it(smollm2) -> None:
    engine = engine_on(smollm2)
    service = LmService()
    blocker, gate = await occupy(service, Priority.NOTES)  # the model is busy meanwhile
    before = engine.tokens_seen
    feed = asyncio.create_task(service.feed(engine, " Anna: One more thing: the builder we chose is Hartley and Sons."))
    await asyncio.sleep(0)  # one turn of the loop: the task submits its feed before awaiting it
    seen_when_answering: list[int] = []
    ask = asyncio.create_task(service.ask(engine, "Which builder did they choose?",
                                          on_text=lambda text: seen_when_answering.append(engine.tokens_seen)))
    await asyncio.sleep(0)
    gate.set()
    await blocker
    fed = await feed
    await ask
    assert fed > 0 and seen_when_answering and seen_when_answering[0] == before + fed  # the feed was in first
    service.close(wait=True)


@pytest.mark.slow
async def test_a_flood_of_questions_from_one_session_leaves_another_sessions_feeds_on_time(smollm2) -> None:
    flooder, other = engine_on(smollm2), engine_on(smollm2)
    service = LmService()
    questions = [asyncio.create_task(service.ask(flooder, f"What did Ben say about the roof, part {n}?", session="a"))
                 for n in range(8)]
    await asyncio.sleep(0)  # one turn of the loop: every task submits its question before awaiting it
    fed_at = []
    for n in range(5):
        await service.feed(other, f" Dan: Note number {n} for the record.", session="b")
        fed_at.append(time.monotonic())
    finished = []
    for question in asyncio.as_completed(questions):
        await question
        finished.append(time.monotonic())
    assert fed_at[-1] < finished[-2], "the other session's feeds waited behind the whole flood"
    service.close(wait=True)


@pytest.mark.slow
async def test_a_real_fork_on_the_worker_never_stalls_the_event_loop(smollm2) -> None:
    engine = engine_on(smollm2)
    service = LmService()
    stalls: list[float] = []
    running = True

    async def watchdog() -> None:
        while running:
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            _ = engine.cache_length, engine.tokens_seen  # what the status line reads
            stalls.append(time.perf_counter() - began - 0.01)

    dog = asyncio.create_task(watchdog())
    notes = asyncio.to_thread(service.blocking(engine, Priority.NOTES).complete_many, [
        ForkRequest(LONG_INSTRUCTION, 96, structured=True), ForkRequest("Give this meeting a short title.", 16)])
    summary = service.summarize(engine, 64)
    feeds = [service.feed(engine, f" Dan: note {n}.") for n in range(3)]
    outputs, text, *_ = await asyncio.gather(notes, summary, *feeds)
    running = False
    await dog
    assert all(outputs) and text
    assert len(stalls) > 20 and max(stalls) < 0.1, f"event loop stalled {max(stalls) * 1000:.0f} ms"
    service.close(wait=True)


@pytest.mark.slow
def test_forks_decoded_together_give_the_same_answers_as_one_after_another(smollm2) -> None:
    engine = engine_on(smollm2)
    requests = [ForkRequest(LONG_INSTRUCTION, 48, structured=True), ForkRequest("Give this meeting a short title.", 16),
                ForkRequest("Who will send the minutes?", 32)]
    alone = [engine.complete(r.instruction, r.max_new_tokens, structured=r.structured) for r in requests]
    length = engine.cache.length
    assert engine.complete_many(requests) == alone
    assert engine.cache.length == length


def test_prompt_chunks_share_a_forward_on_the_cpu_only_when_their_widths_are_alike() -> None:
    """The notes' five fork prompts of the default model (measured widths): the three short ones together,
    the two extraction prompts one at a time (together they would hold the model twice as long, for no
    gain); on CUDA, where a padded row is nearly free, all five."""
    widths = [96, 110, 25, 24, 27]
    cpu = torch.device("cpu")
    assert rows_of_like_width(widths, cpu) == [1]  # the widest first
    assert rows_of_like_width(widths, cpu, anchor=3) == [2, 3, 4]
    assert rows_of_like_width(widths, torch.device("cuda"), anchor=1) == [0, 1, 2, 3, 4]
    assert may_share_forward([40, 40, 32], cpu)
    assert not may_share_forward([64, 30], cpu)  # half of it padding
    assert not may_share_forward([100, 100], cpu)  # alike, but too long a forward


@pytest.mark.slow
def test_a_groups_prompts_of_unlike_widths_run_in_forwards_of_like_widths_with_the_same_answers(
        smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the service (as the notes at the end go): no prefill forward pads a short prompt to a
    long one's width, and the answers are those of one fork after another."""
    engine = engine_on(smollm2)
    requests = [ForkRequest(LONG_INSTRUCTION, 24, structured=True), ForkRequest("Give this meeting a short title.", 12),
                ForkRequest("Who will send the minutes?", 16)]
    alone = [engine.complete(r.instruction, r.max_new_tokens, structured=r.structured) for r in requests]
    prefills: list[list[int]] = []

    def recorded(model, caches, chunks, **options):
        if max(len(chunk) for chunk in chunks) > 1 and not options.get("every_logit"):  # not a step with drafts
            prefills.append([len(chunk) for chunk in chunks])
        return forward_batch(model, caches, chunks, **options)

    monkeypatch.setattr(service_module, "forward_batch", recorded)
    service = LmService()
    try:
        together = service.blocking(engine, Priority.NOTES, session="s", account=None).complete_many(requests)
    finally:
        service.close()
    assert together == alone
    assert len(prefills) >= 2 and all(may_share_forward(widths, torch.device("cpu")) for widths in prefills)
    assert sorted(width for widths in prefills for width in widths) == sorted(
        len(engine.fork_prompt(r.instruction, r.max_new_tokens)[0]) for r in requests)  # each prompt once, whole


@pytest.mark.slow
def test_a_draft_is_what_followed_the_answers_last_words_where_they_were_said(smollm2) -> None:
    engine = engine_on(smollm2)
    assert engine.decode(engine.draft(engine.encode("So we go with"), 3)).startswith("Hartley")
    assert engine.draft(engine.encode("purple elephants dance"), 3) == []  # never said
    assert engine.draft(engine.encode("So we go with"), 0) == []


@pytest.mark.slow
def test_forks_with_drafts_give_the_same_answers_in_fewer_forwards(smollm2_bfloat16, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the service, SmolLM2 in bfloat16 with its int4 decode weights (spare rows under their limit):
    a group of forks and a streamed question, with prompt-lookup drafts and without; greedy either way,
    so the very same answers, and what the drafts save is forwards."""
    requests = [ForkRequest(LONG_INSTRUCTION, 40, structured=True), ForkRequest("Who will call Hartley, and when?", 24)]
    question = "How much was the Hartley quote?"
    forwards = {"drafts": 0}

    def counted(model, caches, chunks, **options):
        forwards["drafts"] += bool(options.get("every_logit"))
        forwards[label] = forwards.get(label, 0) + 1
        return forward_batch(model, caches, chunks, **options)

    monkeypatch.setattr(service_module, "forward_batch", counted)
    results = {}
    for label, drafts in (("plain", 0), ("drafted", 3)):
        engine = engine_on(smollm2_bfloat16, draft_tokens=drafts)
        streamed: list[str] = []
        service = LmService()
        try:
            group = service.blocking(engine, Priority.NOTES, session="s", account=None).complete_many(requests)
            answer = service.submit_runs(Priority.QUESTION, engine, [engine.question_run(question, on_text=streamed.append)]).result(60)
        finally:
            service.close()
        results[label] = (group, answer, streamed[-1])
    assert results["drafted"] == results["plain"]
    assert results["plain"][1] == results["plain"][2]  # the streamed text ends as the answer
    assert forwards["drafts"] > 0 and forwards["drafted"] < forwards["plain"]


def test_recognition_holds_back_while_a_question_waits_for_its_prompt_and_not_after(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service tells the cores' share when a question waits for its prompt: while its prompt runs,
    a speech-recognition call about to start holds back (livesum.compute); once the answer decodes, or
    for any other fork, it does not."""
    steps: list[tuple[str, int, bool]] = []
    phase = "question"

    def recorded(model, caches, chunks, **options):
        steps.append((phase, max(len(chunk) for chunk in chunks), SHARE.question_waiting))
        return forward_batch(model, caches, chunks, **options)

    monkeypatch.setattr(service_module, "forward_batch", recorded)
    engine = engine_on(smollm2, draft_tokens=0)
    service = LmService()
    try:
        service.submit_runs(Priority.QUESTION, engine, [engine.question_run("Who will call Hartley?")]).result(60)
        phase = "title"
        service.blocking(engine, Priority.NOTES, session="s", account=None).complete("Give this meeting a short title.", 8)
    finally:
        service.close(wait=True)
    question_prompt = [held for name, width, held in steps if name == "question" and width > 1]
    question_decode = [held for name, width, held in steps if name == "question" and width == 1]
    title = [held for name, _, held in steps if name == "title"]
    assert question_prompt and all(question_prompt)
    assert question_decode and not any(question_decode)
    assert title and not any(title) and not SHARE.question_waiting


@pytest.mark.slow
async def test_an_empty_feed_is_answered_without_the_model(smollm2) -> None:
    engine = engine_on(smollm2)
    service = LmService()
    assert await service.feed(engine, "") == 0
    service.close(wait=True)
