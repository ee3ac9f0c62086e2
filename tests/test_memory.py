"""Freed heap memory goes back to the system (glibc's malloc_trim), which keeps a long stream's RSS level."""

from __future__ import annotations

import ctypes.util
import platform

import psutil
import pytest

from livesum.memory import release_free_memory


@pytest.mark.skipif(platform.system() != "Linux" or "libc" not in (ctypes.util.find_library("c") or ""), reason="glibc only")
def test_freed_heap_pages_are_returned() -> None:
    """64 KiB blocks live on the heap (below glibc's mmap threshold); freeing all but the last leaves
    200 MiB free inside the heap, held in RSS until trimmed."""
    process = psutil.Process()
    blocks = [bytearray(b"x" * 65536) for _ in range(3200)]
    pin = bytearray(b"y" * 65536)  # above the freed ones: the heap cannot simply shrink from its top
    del blocks
    before = process.memory_info().rss
    assert release_free_memory()
    after = process.memory_info().rss
    assert before - after > 100 * 2**20, (before, after)
    assert pin[0] == ord("y")
