"""The LM scheduler: one thread for every model call, most urgent first, failures go to the caller."""

import asyncio
import threading

import pytest

from livesum.llm.scheduler import LmScheduler, Priority


async def test_a_question_overtakes_queued_summaries_and_feeds() -> None:
    scheduler = LmScheduler()
    gate = threading.Event()
    order: list[str] = []

    def blocking_first() -> None:
        gate.wait(timeout=30)
        order.append("first")

    def job(name: str) -> str:
        order.append(name)
        return name

    first = asyncio.create_task(scheduler.run(Priority.SUMMARY, blocking_first))
    await asyncio.sleep(0.05)  # let the worker pick it up and block
    queued = [
        asyncio.create_task(scheduler.run(Priority.SUMMARY, job, "summary")),
        asyncio.create_task(scheduler.run(Priority.FEED, job, "feed 1")),
        asyncio.create_task(scheduler.run(Priority.FEED, job, "feed 2")),
        asyncio.create_task(scheduler.run(Priority.QUESTION, job, "question")),
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await first
    assert await asyncio.gather(*queued) == ["summary", "feed 1", "feed 2", "question"]
    assert order == ["first", "question", "feed 1", "feed 2", "summary"]
    scheduler.close()


async def test_every_call_runs_on_the_one_worker_thread_and_errors_reach_the_caller() -> None:
    scheduler = LmScheduler()
    threads = await asyncio.gather(*(scheduler.run(Priority.FEED, threading.get_ident) for _ in range(5)))
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()

    def broken() -> None:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        await scheduler.run(Priority.QUESTION, broken)
    assert await scheduler.run(Priority.FEED, lambda: "still serving") == "still serving"
    scheduler.close()


async def test_a_caller_that_went_away_is_skipped() -> None:
    scheduler = LmScheduler()
    gate = threading.Event()
    ran: list[str] = []
    blocker = asyncio.create_task(scheduler.run(Priority.FEED, gate.wait, 30))
    await asyncio.sleep(0.05)
    abandoned = asyncio.create_task(scheduler.run(Priority.FEED, ran.append, "abandoned"))
    await asyncio.sleep(0.05)
    abandoned.cancel()
    gate.set()
    await blocker
    await scheduler.run(Priority.FEED, ran.append, "kept")
    assert ran == ["kept"]
    scheduler.close()


class FakeModel:
    pass


class FeedRecorder:
    """Only the scheduler's grouping is under test here; tests/test_batched.py checks batched_feed itself."""

    def __init__(self, model: object, name: str, calls: list) -> None:
        self.model, self.name, self.calls = model, name, calls

    def feed(self, text: str) -> int:
        self.calls.append(("alone", self.name))
        return len(text)


async def test_feeds_of_different_sessions_queued_together_go_in_one_batch(monkeypatch) -> None:
    from livesum.llm import batched

    calls: list = []

    def fake_batched_feed(engines, texts):
        calls.append(("batch", [engine.name for engine in engines]))
        return [len(text) for text in texts]

    monkeypatch.setattr(batched, "batched_feed", fake_batched_feed)
    scheduler = LmScheduler()
    gate = threading.Event()
    model = FakeModel()
    a, b, c = (FeedRecorder(model, name, calls) for name in "abc")
    other_model = FeedRecorder(FakeModel(), "x", calls)
    blocker = asyncio.create_task(scheduler.run(Priority.QUESTION, gate.wait, 30))
    await asyncio.sleep(0.05)
    feeds = [
        asyncio.create_task(scheduler.feed(a, "one")),
        asyncio.create_task(scheduler.feed(b, "three")),
        asyncio.create_task(scheduler.feed(a, "again")),  # same session: must wait for the next round
        asyncio.create_task(scheduler.feed(c, "xy")),
    ]
    await asyncio.sleep(0.05)
    feeds.append(asyncio.create_task(scheduler.feed(other_model, "elsewhere")))
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    assert await asyncio.gather(*feeds) == [3, 5, 5, 2, 9]
    assert calls == [("batch", ["a", "b"]), ("batch", ["a", "c"]), ("alone", "x")]
    scheduler.close()


async def test_close_with_wait_returns_once_the_worker_has_stopped() -> None:
    scheduler = LmScheduler()
    started, release = threading.Event(), threading.Event()
    workers: list[threading.Thread] = []

    def running() -> None:
        workers.append(threading.current_thread())
        started.set()
        release.wait(timeout=30)

    job = asyncio.create_task(scheduler.run(Priority.FEED, running))
    await asyncio.to_thread(started.wait, 30)
    closing = asyncio.create_task(asyncio.to_thread(scheduler.close, True))
    await asyncio.sleep(0.05)
    assert not closing.done()  # still inside the job
    release.set()
    await closing
    assert not workers[0].is_alive()
    await job
