"""The CPU cores, shared by the two kinds of model work: speech recognition and the LM.

Both run OpenMP thread pools. On a small machine two pools of all-the-cores each, busy at once,
stall each other at every barrier: measured on 2 cores (benchmarks/core_share.py, docs/engine.md),
Whisper base and the 1.5B LM side by side ran slower with two threads each than with one each. So
when the LM runs on the CPU, Whisper's pool (fixed when it loads) gets half the cores, and the LM
takes all of them for a step while no recognition is running and the other half while one is:
each gets the whole machine when it is alone, and neither waits on the other's threads.

A question is what a user waits for: while one waits for its prompt to run, a recognition call that
is about to start waits (at most `question_hold_seconds`, then not again for as long), and the prompt's
step waits as long at most for the calls already running to end, so the prompt runs on every core
instead of the half Whisper leaves. Captions pause that long; answers come sooner.

One `CoreShare` per process (`SHARE`): the models are shared by every stream of the process too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livesum.config import Settings


def cpu_cores() -> int:
    """Cores this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class CoreShare:
    """Who is using the cores now, and how many threads each kind of work should take."""

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or cpu_cores()
        self.lm_on_cpu = True
        self.fixed_lm_threads: int | None = None  # llm.threads when set
        self.question_hold_seconds = 0.0  # llm.question_hold_seconds
        self._recognizing = 0
        self._held = False  # a question waits for its prompt to run
        self._no_hold_until = 0.0  # after a hold, recognition runs at once for as long (it is never starved)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def configure(self, *, lm_on_cpu: bool, lm_threads: int = 0, question_hold_seconds: float = 0.0) -> None:
        self.lm_on_cpu = lm_on_cpu
        self.fixed_lm_threads = lm_threads or None
        self.question_hold_seconds = question_hold_seconds

    def reserve(self, cores: int) -> None:
        """Share out only `cores` of the machine: a Ray worker reserves CPUs without being pinned to them,
        and its two pools must fit in what it reserved (at most the cores it may run on)."""
        self.cores = max(1, min(cores, cpu_cores()))

    def asr_threads(self, configured: int = 0) -> int:
        """Whisper's pool: `asr.cpu_threads` when set; else half the cores when the LM computes on them
        too, all of them when it does not (off, or on a GPU)."""
        if configured:
            return configured
        return max(1, self.cores // 2) if self.lm_on_cpu else self.cores

    def asr_workers(self, threads: int) -> int:
        """Whisper calls that may run at once (CTranslate2's workers), each on `threads`: as many as the
        cores hold, so the streams of a server recognise side by side instead of queueing for one."""
        return max(1, self.cores // max(1, threads))

    def lm_threads(self) -> int:
        """The LM's threads for its next step: all cores while no recognition runs, what the running
        recognitions leave (at least one) while they do."""
        if self.fixed_lm_threads:
            return self.fixed_lm_threads
        return max(1, self.cores - self._recognizing * self.asr_threads())

    @property
    def recognizing(self) -> bool:
        return self._recognizing > 0

    @property
    def question_waiting(self) -> bool:
        """Whether a question waits for its prompt now (recognition about to start holds back)."""
        return self._held

    def hold_recognition(self, held: bool) -> None:
        """Whether a question waits for its prompt (the LM service says so as its queue changes)."""
        with self._changed:
            if held != self._held:
                self._held = held
                self._changed.notify_all()

    def _hold(self) -> float:
        """Seconds recognition may be held for a question: only where the LM shares the CPU's cores."""
        return self.question_hold_seconds if self.lm_on_cpu and not self.fixed_lm_threads else 0.0

    def clear_for_question(self) -> None:
        """Before a question's prompt step (on the LM thread): wait, at most `question_hold_seconds`, for
        the recognition calls already running to end, so the step gets every core (none start meanwhile)."""
        hold = self._hold()
        if hold > 0:
            with self._changed:
                self._changed.wait_for(lambda: self._recognizing == 0, timeout=hold)

    @contextmanager
    def recognition(self) -> Iterator[None]:
        """Around a speech-recognition call (Whisper, and the diarizer inside it); it starts once no
        question waits for its prompt, or after `question_hold_seconds` (where the LM is on the CPU)."""
        with self._changed:
            hold = self._hold()
            if hold > 0 and self._held and time.monotonic() >= self._no_hold_until:
                self._changed.wait_for(lambda: not self._held, timeout=hold)
                self._no_hold_until = time.monotonic() + hold
            self._recognizing += 1
        try:
            yield
        finally:
            with self._changed:
                self._recognizing -= 1
                self._changed.notify_all()


SHARE = CoreShare()


def recognizing(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a transcriber's push or flush) counted as speech recognition while it runs (`SHARE.recognition`)."""
    def run(*args: Any) -> Any:
        with SHARE.recognition():
            return function(*args)

    return run


def share_cores(settings: Settings) -> None:
    """Tell the process's `SHARE` where the LM computes (before Whisper loads: its pool size follows)."""
    from livesum.models import resolve_device

    on_cpu = settings.llm.enabled and resolve_device(settings.llm.device) == "cpu"
    SHARE.configure(lm_on_cpu=on_cpu, lm_threads=settings.llm.threads, question_hold_seconds=settings.llm.question_hold_seconds)


def use_lm_threads() -> int:
    """Set this thread's torch pool to what the LM should take now (on the thread that runs the LM)."""
    import torch

    wanted = SHARE.lm_threads()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


_FLUSHING = threading.local()


def flush_denormals() -> None:
    """Denormal floats become zero on this thread (once per thread; the torch pool it starts inherits it).

    SmolLM2's float32 forward meets denormals that the CPU computes in microcode: measured on 2 cores,
    a decode step took 408-578 ms with them and 59 ms flushed, a 600-token prefill 6.0 s and 1.1 s.
    bfloat16 (the default model) showed no difference. Values below 1e-38 do not change a token.
    """
    if getattr(_FLUSHING, "on", False):
        return
    import torch

    torch.set_flush_denormal(True)
    _FLUSHING.on = True
