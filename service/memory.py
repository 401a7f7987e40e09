"""The worker's clip buffers and glibc's allocator.

The worker's decode threads allocate clips (a preprocessed 8-frame clip of the shipped model is 4.8 MB) and
its forward thread frees them. glibc serves an allocation above its mmap threshold with its own mapping,
returned to the OS when freed; but the threshold is dynamic: each time such a mapping is freed, glibc raises
the threshold to its size (up to 32 MiB). After the first clip is freed, clips come out of the allocating
thread's arena instead, and freed clips there stay resident while a chunk still in use sits above them. With
the decode threads running ahead of the model, one 5,000 s video's job (627 segments) grew an embedded
service by about 3.3 GB.

So after each forward pass the worker hands the free pages of every arena back to the OS
(`release_free_memory`: glibc's `malloc_trim(0)`, which also releases whole free pages inside the heap, not
only at its top). The dynamic threshold, which spares the model's and the preprocessing's mid-sized tensors a
fresh mapping (and its page faults) on every pass, is left as it is: fixing it instead cost torch eager a
third of its ingest rate in the service benchmark.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None  # not glibc: nothing to do


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the OS (glibc's `malloc_trim(0)`). False where the C
    library has no `malloc_trim` or there was nothing to return."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
