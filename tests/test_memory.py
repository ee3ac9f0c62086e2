"""Freed heap memory goes back to the system (glibc's malloc_trim), and the allocator is held to few arenas
(tune_allocator): both keep a long stream's RSS level."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import psutil
import pytest

from livesum.memory import release_free_memory

GLIBC_ONLY = pytest.mark.skipif(platform.system() != "Linux" or "libc" not in (ctypes.util.find_library("c") or ""),
                                reason="glibc only")


@GLIBC_ONLY
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


ARENAS_AFTER_THREADS = """
import ctypes, os, sys, tempfile, threading
from livesum.config import MemoryConfig
from livesum.memory import tune_allocator

arenas, threshold_kib = int(sys.argv[1]), int(sys.argv[2])
if arenas or threshold_kib:
    assert tune_allocator(MemoryConfig(malloc_arenas=arenas, mmap_threshold_kib=threshold_kib))
kept = []
together = threading.Barrier(8)
def allocate():
    kept.append([bytearray(4096) for _ in range(64)])
    together.wait()  # all alive at once: a finished thread's arena would be handed to the next one
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.fopen.restype = ctypes.c_void_p
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
heaps = open(path).read().count("<heap nr=")
mapped = []
for _ in range(2):  # the same 8 MiB block twice: mapped on its own both times, or put in an arena the second time
    block = bytearray(8 << 20)
    mapped.append(libc.mallinfo2().hblks)
    del block
print(heaps, mapped[1] - libc.mallinfo2().hblks)
"""


def arenas_and_mapping(arenas: int, threshold_kib: int) -> tuple[int, int]:
    run = subprocess.run([sys.executable, "-c", ARENAS_AFTER_THREADS, str(arenas), str(threshold_kib)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    heaps, second_block_mapped = run.stdout.split()
    return int(heaps), int(second_block_mapped)


@GLIBC_ONLY
def test_the_allocator_is_held_to_few_arenas_and_big_blocks_stay_mapped_on_their_own() -> None:
    """Eight threads that allocate get eight arenas from glibc by default, two once tuned; glibc raises its
    mmap threshold past a freed 8 MiB block (the next one goes into an arena), a fixed threshold does not."""
    default_heaps, default_second_mapped = arenas_and_mapping(0, 0)
    tuned_heaps, tuned_second_mapped = arenas_and_mapping(2, 4096)
    assert default_heaps >= 8 and default_second_mapped == 0
    assert tuned_heaps == 2 and tuned_second_mapped == 1
