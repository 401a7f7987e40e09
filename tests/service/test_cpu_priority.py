"""The worker's work runs below the gateway's in CPU priority (`Settings.worker_nice`, service/priority.py),
and an online reindex's driver does not read the whole catalog each time a video settles
(service/reindex.py, `OnlineReindex._step`): both kept searches answering during a reindex of 1,000
videos (benchmarks/results/index_reindex.json), where the driver's listings held the GIL for most of it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.broker import InProcessBroker
from service.encoding.encoder import VideoEncoder
from service.encoding.worker import EncoderWorker
from service.priority import at_lower_priority, lower_thread_priority
from service.reindex import OnlineReindex
from tests.service.conftest import make_settings
from tests.service.test_broker_worker import FakeCatalog, serving
from tests.service.test_query_scheduling import Model, _settings
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux's")


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_lower_thread_priority_lowers_the_calling_thread_only():
    base = nice_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def low() -> None:
        lower_thread_priority(5)
        seen["low"] = nice_of(threading.get_native_id())
        child = threading.Thread(target=lambda: seen.__setitem__("child", nice_of(threading.get_native_id())))
        child.start()
        child.join()

    t = threading.Thread(target=low)
    t.start()
    t.join()
    assert seen == {"low": min(19, base + 5), "child": min(19, base + 5)}  # threads it starts inherit it
    assert nice_of(threading.get_native_id()) == base  # the caller's thread is untouched


def test_at_lower_priority_returns_and_raises_on_the_calling_thread():
    base = nice_of(threading.get_native_id())
    assert at_lower_priority(lambda: nice_of(threading.get_native_id()), 3) == min(19, base + 3)
    assert at_lower_priority(lambda: nice_of(threading.get_native_id()), 0) == base  # 0: run here, as is
    with pytest.raises(ZeroDivisionError):
        at_lower_priority(lambda: 1 / 0, 3)
    assert nice_of(threading.get_native_id()) == base


def test_the_worker_threads_run_lower_and_the_text_thread_does_not(tmp_path):
    base = nice_of(threading.get_native_id())
    cond = threading.Condition()
    worker = EncoderWorker(serving(Model("m", [], cond, segments=1)), InProcessBroker(), FakeCatalog(),
                           _settings(tmp_path, worker_nice=7), queries=None)
    worker.start()
    try:
        # this worker's threads (other tests' services in this process have threads of the same names)
        threads = {t.name: t.native_id for t in [*worker._threads, worker._committer]}

        def lowered() -> bool:
            return all(nice_of(tid) == min(19, base + 7) for name, tid in threads.items() if name != "drca-text")

        wait_until(lowered, 10, "each worker thread lowered its priority")  # first thing each loop does
        assert {"drca-feeder", "drca-encoder", "drca-committer", "drca-decode-0", "drca-decode-1"} <= set(threads)
        assert nice_of(threads["drca-text"]) == base  # text queries are the gateway's: not lowered
    finally:
        worker.stop()


def test_openvino_inference_threads_inherit_the_worker_priority(checkpoint: Path, tmp_path):
    """OpenVINO starts its inference threads when the model is compiled: compiled on a lowered thread,
    they run at the worker's priority (a gateway thread would otherwise share a core evenly with them)."""
    base = nice_of(threading.get_native_id())
    settings = make_settings(checkpoint, tmp_path, runtime="openvino", worker_nice=6, text_search=False)
    before = tasks()
    encoder = VideoEncoder(settings)
    import torch

    inp = encoder.config.input
    encoder.forward(torch.zeros(1, 3, inp.num_frames, inp.img_size, inp.img_size))
    python_threads = {t.native_id for t in threading.enumerate()}
    started = tasks() - before - python_threads
    assert started, "OpenVINO started no thread of its own"
    assert {tid: nice_of(tid) for tid in started} == {tid: min(19, base + 6) for tid in started}


class CountingCatalog:
    """The catalog calls an online reindex's driver makes: `videos("indexed")` lists (and is counted),
    `count_by_status` counts."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(n))
        self.listings = 0

    def count_by_status(self, statuses):
        return {"indexed": len(self.ids)}

    def videos(self, status):
        assert status == "indexed"
        self.listings += 1
        return iter([SimpleNamespace(video_id=i, extra={"path": f"/v/{i}.mp4"}) for i in self.ids])


def test_a_settled_video_costs_a_count_not_a_listing(tmp_path):
    catalog, broker = CountingCatalog(50), InProcessBroker()
    r = OnlineReindex(make_settings(tmp_path, tmp_path), catalog, broker, active=None)
    r.state, r.target = "running", SimpleNamespace(generation="index.new")
    switched = []
    r._switch = lambda: switched.append(True) or True  # what the last step does: not under test here
    assert r._step() is False
    assert catalog.listings == 1 and r.total == 50 and len(r.in_flight) == 50
    for vid in range(49):  # 49 videos settle, one at a time, each waking the driver
        r.done.add(vid)
        r._settle(vid)
        assert r._step() is False
    assert catalog.listings == 1  # nothing could be queued: only the count was read
    catalog.ids.append(50)  # an upload indexed meanwhile: the count moved, so it is listed and queued
    assert r._step() is False
    assert catalog.listings == 2 and r.in_flight == {49, 50} and r.total == 51
    for vid in (49, 50):
        r.done.add(vid)
        r._settle(vid)
    assert r._step() is True and switched  # nothing in flight: listed once more, then the switch
    assert catalog.listings == 3
    queued = []
    while (job := broker.take(timeout_s=0)) is not None:
        queued.append(job.video_id)
    assert sorted(queued) == list(range(51))  # each video queued once
