"""The LM service: one owner of the model and of every session's cache, advancing work a forward at a time.

A causal LM on a CPU (or one GPU) does one thing at a time and every stream shares it. Every model
operation is a resumable run (`FeedRun`, `ForkRun`: livesum.llm.engine) that the service's one worker
thread advances one forward per step, so no job holds the model for longer than one prefill chunk
or one token, and the event loop never waits on the model (it only posts jobs and awaits futures).

Each step the worker picks the most urgent eligible job:

    score = priority level - seconds waited / AGING_SECONDS + the session's recent LM seconds / SHARE_SECONDS

lower first: questions (0) before feeds (1) before rolling summaries (2) before notes (3), a job that
waits gains a level every AGING_SECONDS since it last had a step (nothing starves, and a long job
that keeps getting steps does not climb above a new question), and a session that has had the model
lately yields to the others (one client's flood of questions cannot hold back another session's
feeds). Its one-token decode rows go into one batched forward with the ready decode rows of other
jobs (each row its own cache), up to `max_decode_rows`; its feed chunk with other sessions' feed
chunks: on a GPU one pass over the weights then serves them all.

One live operation per engine at a time (a feed, or a fork on the live cache), except that a
question preempts a running live fork of its own session between tokens (the fork is parked, see
`ForkRun.park`). A question is answered on everything transcribed before it was asked: its session's
feeds queued before it run first, at the question's priority. Forks of a group (`fork_many`) run on
snapshots of the cache and never block the session's feeds. While a question waits for its prompt
to run, speech recognition holds back its next call (`CoreShare.hold_recognition`) and the prompt's
step waits for the calls already running (`CoreShare.clear_for_question`), so the prompt gets every
core of the CPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from livesum.compute import SHARE, flush_denormals, use_lm_threads
from livesum.llm.batched import forward_batch, may_share_forward, rows_of_like_width
from livesum.llm.engine import FeedRun, ForkRequest, ForkRun, StreamingEngine

log = logging.getLogger(__name__)

AGING_SECONDS = 5.0  # a waiting job gains one priority level per this many seconds
SHARE_SECONDS = 2.0  # a session loses one priority level per this many seconds of recent LM time
SHARE_HALF_LIFE = 10.0  # how fast a session's recent LM time is forgotten
MAX_FEED_BATCH = 16  # sessions whose feed chunks run in one forward at most


class Priority(IntEnum):
    """Lower runs first."""

    QUESTION = 0
    FEED = 1
    SUMMARY = 2
    NOTES = 3


Run = FeedRun | ForkRun


@dataclass(eq=False)
class _Job:
    priority: int
    sequence: int
    session: object
    future: concurrent.futures.Future
    engine: StreamingEngine | None = None
    runs: list[Run] = field(default_factory=list)
    function: Callable[[], Any] | None = None  # a plain call on the LM thread (engine creation...)
    account: Callable[[float], None] | None = None
    waiting_since: float = field(default_factory=time.monotonic)  # submitted, or last given a step
    promoted: bool = False  # a feed that a later question of its session waits for

    @property
    def live(self) -> bool:
        return any(run.live for run in self.runs)

    @property
    def level(self) -> int:
        return int(Priority.QUESTION) if self.promoted else self.priority

    @property
    def is_question(self) -> bool:
        return self.priority == Priority.QUESTION

    @property
    def prompting(self) -> bool:
        """A question whose answer has not begun: its prompt (or its session's feeds before it) still to run."""
        return self.is_question and any(isinstance(run, ForkRun) and not run.decoding for run in self.pending())

    def pending(self) -> list[Run]:
        return [run for run in self.runs if not run.done]


class LmService:
    """Runs every model operation of every session on one worker thread, a forward at a time."""

    def __init__(self, name: str = "livesum-lm", max_decode_rows: int = 32) -> None:
        self.max_decode_rows = max_decode_rows
        self._name = name
        self._jobs: list[_Job] = []
        self._sequence = itertools.count(1)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._open: dict[int, _Job] = {}  # engine id -> the live job it is running
        self._parked: dict[int, list[_Job]] = {}  # engine id -> live jobs a question set aside
        self._usage: dict[int, tuple[float, float]] = {}  # session id -> (recent LM seconds, when)
        self._closing_runs: list[Run] = []  # runs of abandoned jobs, closed outside the lock

    # -- submitting (any thread) ----------------------------------------------------------------

    def submit_runs(self, priority: Priority, engine: StreamingEngine, runs: list[Run], *, session: object = None,
                    account: Callable[[float], None] | None = None) -> concurrent.futures.Future:
        """Advance `runs` (of one engine) to the end; the future gets the result of one run, or a list for several."""
        job = _Job(int(priority), next(self._sequence), session if session is not None else engine,
                   concurrent.futures.Future(), engine=engine, runs=runs, account=account)
        if not job.pending():  # nothing to run (an empty feed)
            results = [run.result for run in runs]
            job.future.set_result(results[0] if len(results) == 1 else results)
            return job.future
        return self._post(job)

    def submit_call(self, priority: Priority, function: Callable[..., Any], *args: Any, session: object = None,
                    account: Callable[[float], None] | None = None, engine: Any = None) -> concurrent.futures.Future:
        """`function(*args)` on the LM thread as one step (short calls: engine creation; engines that
        have no step API). With `engine`, a question call still waits for the feeds of that engine
        submitted before it."""
        job = _Job(int(priority), next(self._sequence), session if session is not None else engine, concurrent.futures.Future(),
                   engine=engine, function=lambda: function(*args), account=account)
        return self._post(job)

    @property
    def queue_depth(self) -> int:
        """Jobs submitted and not yet settled (waiting or running), for /metrics."""
        return len(self._jobs)

    def on_worker(self) -> bool:
        """Whether the caller is this service's own worker thread (which must never wait on a job)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _post(self, job: _Job) -> concurrent.futures.Future:
        with self._wake:
            if self._closing:
                raise RuntimeError("the LM service is closed")
            self._jobs.append(job)
            if job.prompting:  # recognition about to start holds back from now, not from the worker's next turn
                SHARE.hold_recognition(True)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return job.future

    # -- async API (the event loop) -----------------------------------------------------------------

    async def run(self, priority: Priority, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on the LM thread, as one step."""
        return await asyncio.wrap_future(self.submit_call(priority, function, *args))

    def submit_feed(self, engine: Any, text: str, *, session: object = None,
                    account: Callable[[float], None] | None = None) -> concurrent.futures.Future:
        """Transcript into `engine`'s cache, a prefill chunk per step; the future gets the tokens fed.
        Queued at once: a question submitted after it is answered on this text."""
        if not isinstance(engine, StreamingEngine):  # any other engine: one blocking call
            return self.submit_call(Priority.FEED, engine.feed, text, session=session, account=account, engine=engine)
        return self.submit_runs(Priority.FEED, engine, [engine.feed_run(text)], session=session, account=account)

    async def feed(self, engine: Any, text: str, *, session: object = None,
                   account: Callable[[float], None] | None = None) -> int:
        """`submit_feed`, awaited."""
        return await asyncio.wrap_future(self.submit_feed(engine, text, session=session, account=account))

    async def summarize(self, engine: Any, max_new_tokens: int | None = None, *, session: object = None,
                        account: Callable[[float], None] | None = None) -> str:
        """A rolling summary off `engine`'s live cache (pinned if the engine pins summaries)."""
        if not isinstance(engine, StreamingEngine):
            return await self._called(Priority.SUMMARY, engine.summarize, (max_new_tokens,), session, account)
        return await self._runs(Priority.SUMMARY, engine, [engine.summary_run(max_new_tokens)], session, account)

    async def ask(self, engine: Any, question: str, context: str = "", *, on_text: Callable[[str], None] | None = None,
                  session: object = None, account: Callable[[float], None] | None = None) -> str:
        """An answer off the live cache, ahead of other work; `on_text` (on the LM thread) gets the text
        so far after each token."""
        if not isinstance(engine, StreamingEngine):
            return await asyncio.wrap_future(self.submit_call(Priority.QUESTION, engine.ask, question, None, context,
                                                              session=session, account=account, engine=engine))
        run = engine.question_run(question, None, context, on_text=on_text)
        return await self._runs(Priority.QUESTION, engine, [run], session, account)

    async def fork(self, priority: Priority, engine: StreamingEngine, run: ForkRun, *, session: object = None,
                   account: Callable[[float], None] | None = None) -> str:
        """Any fork the engine made (`fork_run`, `summary_run`, `question_run`); its text."""
        return await self._runs(priority, engine, [run], session, account)

    def blocking(self, engine: Any, priority: Priority, *, session: object = None,
                 account: Callable[[float], None] | None = None) -> ServedEngine:
        """`engine` as the blocking calls minutes make (from a worker thread, never this service's own)."""
        return ServedEngine(self, engine, priority, session, account)

    async def _runs(self, priority: Priority, engine: StreamingEngine, runs: list[Run], session: object,
                    account: Callable[[float], None] | None) -> Any:
        return await asyncio.wrap_future(self.submit_runs(priority, engine, runs, session=session, account=account))

    async def _called(self, priority: Priority, function: Callable[..., Any], args: tuple, session: object,
                      account: Callable[[float], None] | None) -> Any:
        return await asyncio.wrap_future(self.submit_call(priority, function, *args, session=session, account=account))

    def cancel_queued(self) -> int:
        """Cancel every job still queued or running: the work a hurried exit gave up (notes past their
        deadline), so the threads blocked on it return and `close` need not finish it. The number cancelled."""
        with self._wake:
            jobs = list(self._jobs)
        return sum(job.future.cancel() for job in jobs)

    def close(self, wait: bool = False) -> None:
        """Finish the queued jobs and stop; `wait` blocks until the worker has (a process about to exit
        must not leave it inside a torch call)."""
        with self._wake:
            self._closing = True
            thread = self._thread
            self._wake.notify()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker's loop; should it ever fail, every waiting caller hears why instead of waiting
        forever, and the next submission starts a fresh worker."""
        try:
            self._serve()
        except BaseException as error:  # a bug in the scheduling itself: never a hang
            log.exception("the LM worker failed")
            with self._wake:
                jobs, self._jobs, self._open, self._parked = list(self._jobs), [], {}, {}
                self._thread = None
            failure = RuntimeError(f"the LM worker failed: {error!r}")
            for job in jobs:
                self._settle(job, error=failure)

    def _serve(self) -> None:
        while True:
            with self._wake:
                self._drop_cancelled()
                while not self._jobs and not self._closing:
                    self._wake.wait()
                    self._drop_cancelled()
                finished = not self._jobs
                if finished:
                    self._thread = None
                ranked = self._ranked()
                SHARE.hold_recognition(any(job.prompting for job in self._jobs))
                closing, self._closing_runs = self._closing_runs, []
            for run in closing:  # freeing a fork's snapshot takes a moment: never under the lock
                run.close()
            if finished:
                return
            if not ranked:  # everything waits on something (cannot happen with a consistent queue)
                time.sleep(0.001)
                continue
            # Outside the lock: starting a fork (a cache snapshot, a prompt to encode) or putting a parked
            # one back takes milliseconds, and a submitter (the event loop) must never wait for that.
            try:
                first, rows = self._choose(ranked)
            except Exception as error:  # a run that cannot start (its snapshot, its prompt): its caller hears
                log.debug("LM job could not start", exc_info=True)
                self._settle(ranked[0], error=error)
                continue
            self._step(first, rows)

    def _drop_cancelled(self) -> None:
        """Abandoned jobs out of the queue (under the lock); their runs are closed by the next `_work` turn."""
        for job in [job for job in self._jobs if job.future.cancelled()]:
            self._retire(job)
            self._closing_runs.extend(job.runs)

    def _score(self, job: _Job, now: float) -> tuple[float, int]:
        recent, when = self._usage.get(id(job.session), (0.0, now))
        recent *= math.exp(-(now - when) / SHARE_HALF_LIFE * math.log(2))
        return job.level - (now - job.waiting_since) / AGING_SECONDS + recent / SHARE_SECONDS, job.sequence

    def _eligible(self, job: _Job) -> bool:
        if job.is_question and job.engine is not None and any(
                other.engine is job.engine and other.priority == Priority.FEED and other.sequence < job.sequence
                for other in self._jobs):
            return False  # its session's earlier feeds first (they are promoted meanwhile)
        if job.function is not None or not job.live:
            return True
        key = id(job.engine)
        open_job = self._open.get(key)
        if open_job is job:
            return True
        if job.is_question:
            return open_job is None or open_job.priority not in (Priority.QUESTION, Priority.FEED)
        if open_job is None:
            return not self._parked.get(key)
        # a feed that a question waits for may set a running live fork aside; nothing else may
        return job.promoted and open_job.priority not in (Priority.QUESTION, Priority.FEED)

    def _ranked(self) -> list[_Job]:
        """The eligible jobs, most urgent first (under the lock: it reads the queue)."""
        for question in (job for job in self._jobs if job.is_question and job.engine is not None):
            for feed in self._jobs:
                if feed.engine is question.engine and feed.priority == Priority.FEED and feed.sequence < question.sequence:
                    feed.promoted = True
        now = time.monotonic()
        return sorted((job for job in self._jobs if self._eligible(job)), key=lambda job: self._score(job, now))

    def _choose(self, ranked: list[_Job]) -> tuple[_Job, list[tuple[_Job, Run]]]:
        """The job to advance and the rows of this step (its own, plus others' that batch with them)."""
        first = ranked[0]
        if first.function is not None:
            return first, []
        self._take(first)
        rows = [(first, run) for run in first.pending()]
        wants = [run.want() for _, run in rows]
        device = first.engine.device
        widths = [len(tokens) for _, tokens in wants if len(tokens) > 1]  # prompt or feed chunks
        if widths:
            rows = [row for row, (_, tokens) in zip(rows, wants) if len(tokens) > 1]
            if first.priority != Priority.FEED:  # a group's prompts: those of like widths, the widest first
                return first, [rows[i] for i in rows_of_like_width(widths, device)]
            width = MAX_FEED_BATCH
            kind = FeedRun
        else:
            # int4 decode weights serve a few rows only (livesum.llm.compact): more would take the full weights
            width, kind = getattr(first.engine.model, "livesum_decode_rows", self.max_decode_rows), ForkRun
            rows = sorted(rows, key=lambda row: len(getattr(row[1], "answer", ())))[:width]  # furthest behind first
        caches = {id(run.cache) for _, run in rows}
        for other in ranked[1:]:
            if len(rows) >= width:
                break
            if other.function is not None or other.engine is None or other.engine.model is not first.engine.model:
                continue
            if kind is FeedRun and (other.priority != Priority.FEED or self._open.get(id(other.engine)) not in (None, other)):
                continue
            for run in other.pending():
                if len(rows) >= width or id(run.cache) in caches or not isinstance(run, kind):
                    continue
                if kind is FeedRun and not may_share_forward([*widths, len(run.pending[0])], device):
                    continue  # its chunk is too unlike the others': it waits for a forward of its own
                if kind is ForkRun and not run.decoding:
                    continue  # only forks already decoding join a decode batch
                if kind is FeedRun:
                    self._take(other)
                    widths.append(len(run.pending[0]))
                rows.append((other, run))
                caches.add(id(run.cache))
        if kind is ForkRun:
            self._grant_drafts(first.engine.model, [run for _, run in rows])
        return first, rows

    @staticmethod
    def _grant_drafts(model: Any, runs: list[Run]) -> None:
        """Rows the int4 decode weights still serve at their speed (livesum.llm.compact: up to 4 rows cost
        about 1.5x one) go to prompt-lookup drafts, the same number per fork, so no row is padded past the
        limit: one fork checks 3 drafts, two forks 1 each. Full weights, and int4 copies of a float32
        model: none (not measured to pay; would not give the same answers)."""
        rows = getattr(model, "livesum_draft_rows", 0)
        spare = rows // len(runs) - 1 if rows else 0
        for run in runs:
            if isinstance(run, ForkRun):
                run.draft_tokens = max(0, min(spare, run.engine.config.draft_tokens))

    def _take(self, job: _Job) -> None:
        """Make `job` the running live job of its engine, parking a fork it preempts."""
        if not job.live:
            return
        key = id(job.engine)
        open_job = self._open.get(key)
        if open_job is job:
            return
        if open_job is not None:
            for run in open_job.runs:
                run.park()
            self._parked.setdefault(key, []).append(open_job)
        self._open[key] = job

    def _step(self, first: _Job, rows: list[tuple[_Job, Run]]) -> None:
        began = time.perf_counter()
        jobs = list(dict.fromkeys([first, *(job for job, _ in rows)]))
        try:
            flush_denormals()
            if first.prompting:  # what a user waits for: the recognition calls running end first (bounded)
                SHARE.clear_for_question()
            use_lm_threads()  # all the cores, or half of them while speech recognition runs (livesum.compute)
            if first.function is not None:
                result = first.function()
                self._settle(first, result=result)
            else:
                wants = [run.want() for _, run in rows]
                drafts = any(isinstance(run, ForkRun) and run.drafted for _, run in rows)
                logits = forward_batch(first.engine.model, [cache for cache, _ in wants], [tokens for _, tokens in wants],
                                       every_logit=drafts)
                for (_, run), row_logits in zip(rows, logits):
                    run.accept(row_logits)
                for job in jobs:
                    if not job.pending():
                        results = [run.result for run in job.runs]
                        self._settle(job, result=results[0] if len(results) == 1 else results)
        except BaseException as error:  # handed to the callers, never kills the worker
            log.debug("LM step failed", exc_info=True)
            for job in jobs:
                self._settle(job, error=error)
        finally:
            self._account(jobs, time.perf_counter() - began)

    def _account(self, jobs: list[_Job], elapsed: float) -> None:
        now = time.monotonic()
        share = elapsed / len(jobs)
        for job in jobs:
            job.waiting_since = now  # aging counts the wait since the last step, not since submission
            recent, when = self._usage.get(id(job.session), (0.0, now))
            self._usage[id(job.session)] = (recent * math.exp(-(now - when) / SHARE_HALF_LIFE * math.log(2)) + share, now)
            if len(self._usage) > 256:  # forget sessions idle for a minute (a long-running server sees many)
                self._usage = {key: value for key, value in self._usage.items() if now - value[1] < 60.0}
            if job.account is not None:
                try:
                    job.account(share)
                except Exception:  # noqa: BLE001 - bookkeeping must not stop the model
                    pass

    def _settle(self, job: _Job, result: Any = None, error: BaseException | None = None) -> None:
        with self._wake:
            self._retire(job)
        for run in job.runs:
            run.close()
        if job.future.cancelled():
            return
        try:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            pass

    def _retire(self, job: _Job) -> None:
        """Remove a finished, failed or abandoned job (its runs are closed by the caller, outside the lock);
        its engine goes back to what a question set aside."""
        if job in self._jobs:
            self._jobs.remove(job)
        if job.engine is None:
            return
        key = id(job.engine)
        parked = self._parked.get(key, [])
        if job in parked:
            parked.remove(job)
        if self._open.get(key) is job:
            del self._open[key]
            if parked:
                self._open[key] = parked.pop()
        if not parked:
            self._parked.pop(key, None)


class ServedEngine:
    """A session's engine as blocking calls that go through the LM service (for minutes, which run in a
    worker thread): each call is a job of the given priority, advanced a token at a time like any other
    (an engine without the step API: one call on the LM thread)."""

    def __init__(self, service: LmService, engine: Any, priority: Priority, session: object,
                 account: Callable[[float], None] | None) -> None:
        self.service, self.engine, self.priority = service, engine, priority
        self.session, self.account = session, account
        self.stepped = isinstance(engine, StreamingEngine)

    def _wait(self, runs: list[Run]) -> Any:
        self._not_on_worker()
        return self.service.submit_runs(self.priority, self.engine, runs, session=self.session, account=self.account).result()

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        self._not_on_worker()
        return self.service.submit_call(self.priority, function, *args, session=self.session, account=self.account).result()

    def _not_on_worker(self) -> None:
        if self.service.on_worker():
            raise RuntimeError("a blocking model call on the LM service's own thread would wait on itself")

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str:
        if not self.stepped:
            return self._call(lambda: self.engine.complete(instruction, max_new_tokens, structured=structured))
        return self._wait([self.engine.fork_run(instruction, max_new_tokens, structured=structured)])

    def complete_many(self, requests: Sequence[ForkRequest]) -> list[str]:
        """Forks off one moment of the stream, decoded side by side on snapshots of the cache."""
        if not requests:
            return []
        if not self.stepped:
            return [self.complete(r.instruction, r.max_new_tokens, structured=r.structured) for r in requests]
        results = self._wait(self.engine.fork_group(requests))
        return [results or ""] if len(requests) == 1 else [text or "" for text in results]

    def summarize(self, max_new_tokens: int | None = None) -> str:
        if not self.stepped:
            return self._call(self.engine.summarize, max_new_tokens)
        return self._wait([self.engine.summary_run(max_new_tokens)])
