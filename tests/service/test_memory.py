"""service/memory.py: clip-sized buffers freed out of order (as the forward thread frees the decode threads'
clips) stay resident under glibc's raised mmap threshold, and leave the process after `release_free_memory`,
which the worker calls after each forward pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter: free one 16 MB mapping (glibc then raises its mmap threshold to 16 MB), allocate
# 60 buffers of 4 MB (a clip's size), free every other one, maybe release: the share of them given back.
PROBE = """
import os, sys
import numpy as np
from service.memory import release_free_memory

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

big = np.ones(16 << 17)  # 16 MB
del big
bufs = [np.ones(4 << 17) for _ in range(60)]  # 60 x 4 MB, touched
peak = rss()
del bufs[::2]
if sys.argv[1] == "release":
    assert release_free_memory()
print((peak - rss()) / (30 * (4 << 20)))  # the share of the 30 freed buffers returned to the OS
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_clip_sized_buffers_leave_the_process_once_released() -> None:
    def returned(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())

    assert returned("release") > 0.9
    assert returned("keep") < 0.1  # the control: glibc keeps them after the threshold has risen


def test_the_worker_releases_memory_after_each_forward_pass(client, monkeypatch, tmp_path) -> None:
    """The embedded worker calls `release_free_memory` once a batch's clips are freed."""
    import service.encoding.worker as worker_module
    from tests.service.conftest import ingest
    from tests.service.media import ffmpeg

    video = tmp_path / "memory.mp4"  # content of its own (the shared service keeps one video per content)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=88x72:rate=5:duration=3", "-vf", "hue=h=137", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(video))
    calls: list[int] = []
    monkeypatch.setattr(worker_module, "release_free_memory", lambda: calls.append(1) or True)
    ingest(client, video)
    assert calls
