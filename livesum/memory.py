"""Giving freed heap memory back to the system, so a long-running stream's RSS stays level.

glibc keeps what a process frees in its per-thread arenas for reuse. A stream allocates in many
threads (the LM's, Whisper's, the asyncio workers') in sizes that change with every fork and pass,
so the arenas fragment and RSS creeps up for hours although nothing leaks: measured with
benchmarks/soak.py (docs/server.md), one server session went from 2350 to 2580 MiB over 3.5 hours of
audio, and one `malloc_trim(0)` took it to 2210 MiB. The pipeline calls `release_free_memory` after
each rolling summary (every few minutes of audio); elsewhere than glibc it does nothing. It is not
the whole story: with it, RSS still rose 8% from 30 to 120 audio minutes (docs/server.md, "Four hours").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def release_free_memory() -> bool:
    """Return the free pages of every heap arena to the system (glibc's `malloc_trim(0)`); blocking
    (milliseconds), so call it from a worker thread. True when memory was released."""
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        return bool(trim(0))
    except OSError:
        log.debug("malloc_trim failed", exc_info=True)
        return False
