"""The worker's clip buffers and glibc's allocator.

The worker's decode threads allocate clips (a preprocessed 8-frame clip of the shipped model is 4.8 MB) and
its forward thread frees them. glibc serves an allocation above its mmap threshold (128 KiB at start) with
its own mapping, returned to the OS when freed; but the threshold is dynamic: each time such a mapping is
freed, glibc raises the threshold to its size (up to 32 MiB). After the first clip is freed, clips come out
of the allocating thread's arena instead, and freed clips there stay resident when a chunk still in use
sits above them. With the decode threads running ahead of the model, a long video's job then grew the
process by about 3 GB over 627 segments (measured in-process, `benchmarks/results/service_long_ingest.json`
for the server). Fixing the threshold at its initial value (setting it disables the adjustment) keeps every
clip its own mapping, returned when freed: the same job grew by about 0.5 GB, the size of the model's own
first buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: allocations at least this large get their own mapping, returned to the OS when freed (glibc's default
#: threshold, fixed: `mallopt` then no longer raises it)
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_large_buffers_to_the_os() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD_BYTES` for this process. False where the C library is
    not glibc (nothing to do there) or refuses."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused: freed clips may stay resident")
    return ok
