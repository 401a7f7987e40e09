"""The in-process broker and the worker's pipeline (decode overlapping the forward pass, micro-batches),
with a fake encoder so timings are controlled."""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
import pytest
import torch

from indexer import Span
from service.broker import InferenceRequest, InferenceResult, IngestJob, InProcessBroker
from service.errors import WorkerUnavailable
from service.settings import Settings
from service.worker import EncoderWorker
from tests.waiting import wait_until


def test_infer_without_worker_is_503_at_once():
    b = InProcessBroker()
    t0 = time.monotonic()
    with pytest.raises(WorkerUnavailable):
        b.infer(InferenceRequest("embed_text", texts=("a",)), timeout_s=5)
    assert time.monotonic() - t0 < 1


def test_infer_times_out_and_the_late_request_is_skipped():
    b = InProcessBroker()
    b.register_worker()  # a worker that never takes anything
    with pytest.raises(WorkerUnavailable, match="within 0.2 s"):
        b.infer(InferenceRequest("embed_text", texts=("a",)), timeout_s=0.2)
    assert b.take(timeout_s=0.05) is None  # the abandoned request is dropped, not handed out


def test_requests_jump_ahead_of_jobs():
    b = InProcessBroker()
    b.register_worker()
    for i in range(3):
        b.enqueue(IngestJob(i, i, "x"))
    assert b.queue_depth() == 3
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("r", b.infer(InferenceRequest("embed_text"), 5)))
    t.start()
    wait_until(lambda: len(b._requests) == 1, 5, "the request queued after the 3 jobs")  # noqa: SLF001
    item = b.take(1)
    assert not isinstance(item, IngestJob)
    b.reply(item, InferenceResult(probs=np.ones(2)))
    t.join()
    assert result["r"].probs.tolist() == [1, 1]
    assert [b.take(1).job_id for _ in range(3)] == [0, 1, 2] and b.queue_depth() == 0


class FakeVideo:
    """Two segments; decoding a chunk takes 0.1 s."""

    segments = [Span(0, 1), Span(1, 2)]
    duration = 2.0
    views = None
    boxes = None

    def __init__(self, encoder: FakeEncoder) -> None:
        self.encoder = encoder

    def clips(self, start: int, stop: int) -> torch.Tensor:
        t0 = time.perf_counter()
        time.sleep(0.1)
        with self.encoder.lock:
            self.encoder.events.append(("decode", t0, time.perf_counter()))
        return torch.zeros(stop - start, 3, 2, 4, 4)

    def close(self) -> None:
        pass


class FakeEncoder:
    """decode: 0.1 s per video, 2 clips; forward: 0.1 s per batch. Records what overlapped."""

    class_names = ["a", "b"]
    text_encoder = None

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.events: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()

    def open(self, path: str, query: bool = False) -> FakeVideo:
        return FakeVideo(self)

    def forward(self, clips: torch.Tensor):
        t0 = time.perf_counter()
        time.sleep(0.1)
        with self.lock:
            self.events.append(("forward", t0, time.perf_counter()))
            self.batches.append(len(clips))
        n = len(clips)
        return np.ones((n, 4), np.float32), np.full((n, 2), 0.5, np.float32)


class FakeCatalog:
    def __init__(self) -> None:
        self.done: dict[int, tuple[int, np.ndarray]] = {}
        self.all_done = threading.Event()
        self.expected = 0

    def start(self, job) -> bool:
        return True

    def complete(self, job, segments, vectors, probs, class_names, duration, text_emb, timings,
                 still_current=None) -> bool:
        assert still_current is None or still_current()  # no reindex switched the model here
        self.done[job.job_id] = (len(segments), vectors)
        if len(self.done) == self.expected:
            self.all_done.set()
        return True

    def fail(self, job, reason, timings) -> None:
        raise AssertionError(reason)


def test_worker_overlaps_decode_with_forward_and_batches_clips(tmp_path):
    settings = Settings(checkpoint=tmp_path, data_dir=tmp_path, batch_size=4, max_wait_ms=200, decode_threads=2,
                        prefetch=4)
    enc, cat, broker = FakeEncoder(), FakeCatalog(), InProcessBroker()
    cat.expected = 8
    worker = EncoderWorker(enc, broker, cat, settings)
    worker.start()
    try:
        for i in range(8):
            broker.enqueue(IngestJob(i, i, f"v{i}.mp4"))
        assert cat.all_done.wait(20)
    finally:
        worker.stop()
    assert sorted(cat.done) == list(range(8)) and all(n == 2 for n, _ in cat.done.values())
    assert sum(enc.batches) == 16 and max(enc.batches) == 4  # micro-batches of 2 videos x 2 clips
    forwards = [(a, b) for k, a, b in enc.events if k == "forward"]
    decodes = [(a, b) for k, a, b in enc.events if k == "decode"]
    overlapped = sum(any(da < fb and db > fa for da, db in decodes) for fa, fb in forwards)
    assert overlapped >= len(forwards) - 1  # decoding ran while the model worked


class HeldClips:
    """Counts the decoded clip tensors still alive (not a counter of the worker's: the memory itself)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live = self.peak = self.decoded = 0

    def track(self, clips: torch.Tensor) -> torch.Tensor:
        n = len(clips)
        with self.lock:
            self.live += n
            self.decoded += n
            self.peak = max(self.peak, self.live)
        weakref.finalize(clips, self._freed, n)
        return clips

    def _freed(self, n: int) -> None:
        with self.lock:
            self.live -= n


class LongVideo:
    views = None
    boxes = None

    def __init__(self, held: HeldClips, n: int) -> None:
        self.held, self.segments, self.duration = held, [Span(i, i + 1) for i in range(n)], float(n)

    def clips(self, start: int, stop: int) -> torch.Tensor:
        return self.held.track(torch.zeros(stop - start, 3, 2, 4, 4))

    def close(self) -> None:
        pass


class GatedEncoder:
    """Every forward pass waits for `gate`, so decoded clips pile up as far as the worker lets them."""

    class_names = ["a", "b"]
    text_encoder = None

    def __init__(self, held: HeldClips, segments: int) -> None:
        self.held, self.segments, self.gate = held, segments, threading.Event()

    def open(self, path: str, query: bool = False) -> LongVideo:
        return LongVideo(self.held, self.segments)

    def forward(self, clips: torch.Tensor):
        assert self.gate.wait(30)
        n = len(clips)
        return np.ones((n, 4), np.float32), np.full((n, 2), 0.5, np.float32)


def test_decode_ahead_clips_bounds_the_clips_held_across_jobs(tmp_path):
    """4 long jobs at once, the model stalled: the decoded clips alive never pass decode_ahead_clips plus
    the two batches at the model (docs/api.md, decode_ahead_clips)."""
    settings = Settings(checkpoint=tmp_path, data_dir=tmp_path, batch_size=4, max_wait_ms=5, decode_threads=2,
                        prefetch=4, decode_ahead_clips=8)
    held = HeldClips()
    enc, cat, broker = GatedEncoder(held, segments=40), FakeCatalog(), InProcessBroker()
    cat.expected = 4
    worker = EncoderWorker(enc, broker, cat, settings)
    worker.start()
    try:
        for i in range(4):
            broker.enqueue(IngestJob(i, i, f"long{i}.mp4"))
        wait_until(lambda: held.decoded >= settings.decode_ahead_clips, 10, "decoding under way")

        def settled() -> bool:  # nothing more decoded for 0.5 s: as far as the worker goes while stalled
            now = held.decoded
            time.sleep(0.5)
            return held.decoded == now

        wait_until(settled, 20, "decoding stalled behind the model")
        bound = settings.decode_ahead_clips + 2 * settings.batch_size
        assert held.peak <= bound, (held.peak, bound)
        enc.gate.set()
        assert cat.all_done.wait(30)
    finally:
        enc.gate.set()
        worker.stop()
    assert all(n == 40 for n, _ in cat.done.values())
