"""One owner of the language model for the whole process.

A causal LM on a CPU (or one GPU) does one thing at a time, and several streams share it: the
`LmScheduler` runs every model call of every session on its own worker thread, most urgent first
(questions, then transcript feeds, then rolling summaries and notes), so a question is answered
before a backlog of summaries, and the event loop never waits on the model.
"""

from __future__ import annotations

import asyncio
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


_STOP = _Job(priority=1 << 30, sequence=0, function=lambda: None, args=(), loop=None, future=None)  # type: ignore[arg-type]


class LmScheduler:
    """Runs blocking model calls on one daemon thread, by priority, FIFO within a priority."""

    def __init__(self, name: str = "livesum-lm") -> None:
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._sequence = itertools.count(1)
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.busy_seconds = 0.0

    async def run(self, priority: Priority, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on the LM thread; its result or exception comes back here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._start()
        self._jobs.put(_Job(int(priority), next(self._sequence), function, args, loop, future))
        return await future

    @property
    def pending(self) -> int:
        return self._jobs.qsize()

    def close(self) -> None:
        """Let the worker finish the queued jobs and stop."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(_STOP)
                self._thread = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            if job.future.cancelled() or job.loop.is_closed():
                continue  # its caller went away: nobody wants the answer
            began = time.perf_counter()
            try:
                result = job.function(*job.args)
            except BaseException as error:  # handed to the caller, never kills the worker
                self._settle(job, error=error)
            else:
                self._settle(job, result=result)
            finally:
                self.busy_seconds += time.perf_counter() - began

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
