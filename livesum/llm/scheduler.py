"""One owner of the language model for the whole process.

A causal LM on a CPU (or one GPU) does one thing at a time, and several streams share it: the
`LmScheduler` runs every model call of every session on its own worker thread, most urgent first
(questions, then transcript feeds, then rolling summaries and notes), so a question is answered
before a backlog of summaries, and the event loop never waits on the model.

Transcript feeds of different sessions that wait together run as one batched forward
(`livesum.llm.batched.batched_feed`): on a GPU one pass over the weights then serves them all.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    """Lower runs first."""

    QUESTION = 0
    FEED = 1
    SUMMARY = 2
    NOTES = 3


@dataclass(order=True)
class _Job:
    priority: int
    sequence: int
    function: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    feed: tuple[Any, str] | None = field(default=None, compare=False)  # (engine, text): batchable with other feeds
    account: Callable[[float], None] | None = field(default=None, compare=False)  # told its share of busy seconds


MAX_BATCH = 16  # sessions fed in one forward at most

_STOP = _Job(priority=1 << 30, sequence=0, function=lambda: None, args=(), loop=None, future=None)  # type: ignore[arg-type]


class LmScheduler:
    """Runs blocking model calls on one daemon thread, by priority, FIFO within a priority."""

    def __init__(self, name: str = "livesum-lm") -> None:
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._sequence = itertools.count(1)
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, priority: Priority, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on the LM thread; its result or exception comes back here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._start()
        self._jobs.put(_Job(int(priority), next(self._sequence), function, args, loop, future))
        return await future

    async def feed(self, engine: Any, text: str, account: Callable[[float], None] | None = None) -> int:
        """`engine.feed(text)` on the LM thread, batched with other sessions' feeds queued beside it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._start()
        job = _Job(int(Priority.FEED), next(self._sequence), engine.feed, (text,), loop, future, feed=(engine, text), account=account)
        self._jobs.put(job)
        return await future

    def close(self, wait: bool = False) -> None:
        """Let the worker finish the queued jobs and stop; `wait` blocks until it has (a process
        about to exit must not leave the worker inside a torch call)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(_STOP)
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            if self._abandoned(job):
                continue
            jobs = [job, *self._feeds_beside(job)] if job.feed is not None else [job]
            began = time.perf_counter()
            try:
                if len(jobs) > 1:
                    from livesum.llm.batched import batched_feed

                    results = batched_feed([j.feed[0] for j in jobs], [j.feed[1] for j in jobs])  # type: ignore[index]
                else:
                    results = [job.function(*job.args)]
            except BaseException as error:  # handed to the callers, never kills the worker
                for each in jobs:
                    self._settle(each, error=error)
            else:
                for each, result in zip(jobs, results):
                    self._settle(each, result=result)
            finally:
                elapsed = time.perf_counter() - began
                for each in jobs:
                    if each.account is not None:
                        each.account(elapsed / len(jobs))

    @staticmethod
    def _abandoned(job: _Job) -> bool:
        return job.future.cancelled() or job.loop.is_closed()

    def _feeds_beside(self, first: _Job) -> list[_Job]:
        """Feeds queued right behind `first` for other engines of the same model, up to MAX_BATCH."""
        engine = first.feed[0]  # type: ignore[index]
        taken: list[_Job] = []
        with self._jobs.mutex:
            heap = self._jobs.queue
            while heap and len(taken) < MAX_BATCH - 1:
                candidate = heap[0]
                if candidate.feed is None:
                    break
                other = candidate.feed[0]
                model = getattr(engine, "model", None)
                if model is None or other is engine or getattr(other, "model", None) is not model:
                    break  # one batch: distinct sessions over the one same model
                if any(job.feed[0] is other for job in taken):  # type: ignore[index]
                    break
                heapq.heappop(heap)
                if not self._abandoned(candidate):
                    taken.append(candidate)
        return taken

    @staticmethod
    def _settle(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed meanwhile
            pass
