"""service/memory.py: with glibc's mmap threshold fixed, clip-sized buffers freed out of order leave the
process; with the dynamic threshold raised (as the first freed clip raises it), they stay resident."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter: free one 16 MB mapping (glibc then raises its mmap threshold to 16 MB), maybe fix
# the threshold, allocate 60 buffers of 4 MB (a clip's size) and free every other one: the RSS given back.
PROBE = """
import os, sys
import numpy as np
from service.memory import return_large_buffers_to_the_os

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

big = np.ones(16 << 17)  # 16 MB
del big
if sys.argv[1] == "fixed":
    assert return_large_buffers_to_the_os()
bufs = [np.ones(4 << 17) for _ in range(60)]  # 60 x 4 MB, touched
peak = rss()
del bufs[::2]
print((peak - rss()) / (30 * (4 << 20)))  # the share of the 30 freed buffers returned to the OS
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_clip_sized_buffers_leave_the_process_only_with_the_threshold_fixed() -> None:
    def returned(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())

    assert returned("fixed") > 0.9
    assert returned("dynamic") < 0.1  # the control: glibc's default behaviour after a large free
