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
from media.segments import DecodeTimes
from model.checkpoint import ModelCard
from service.active import Active, ActiveGeneration
from service.broker import InferenceRequest, InferenceResult, IngestJob, InProcessBroker
from service.encoding.worker import EncoderWorker
from service.errors import WorkerUnavailable
from service.generations import CheckpointIdentity
from service.priority import QueriesInFlight
from service.settings import Settings
from tests.waiting import wait_until


def serving(encoder) -> Active:
    """A fake encoder as the active generation's (the worker embeds with it)."""
    return Active(ActiveGeneration(CheckpointIdentity("0" * 64, 4), ModelCard(), tuple(encoder.class_names), 2,
                                   None, None, encoder))


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
    """Two segments, one chunk. Past the first batch's two chunks, a decode starts only while a forward pass
    is in the model (so decoding never simply runs ahead of it, whatever the machine's speed)."""

    segments = [Span(0, 1), Span(1, 2)]
    duration = 2.0
    views = None
    boxes = None

    def __init__(self, encoder: FakeEncoder) -> None:
        self.encoder = encoder
        self.times = DecodeTimes()  # what a real video records while it is decoded (nothing, here)

    def clips(self, start: int, stop: int) -> torch.Tensor:
        enc = self.encoder
        with enc.cond:
            if enc.decodes_started >= 2 and not enc.cond.wait_for(lambda: enc.in_model, enc.patience_s):
                enc.gave_up = True
            enc.decodes_started += 1
            enc.cond.notify_all()
        return torch.zeros(stop - start, 3, 2, 4, 4)

    def close(self) -> None:
        pass


class FakeEncoder:
    """A forward pass that starts while chunks are still to be decoded stays in the model until another
    chunk's decode has started, and records whether one did: decoding overlapped the forward pass, by the
    order of events, whatever the machine's speed. One that waits in vain (`patience_s`) records no overlap,
    and the later ones stop waiting."""

    class_names = ["a", "b"]
    text_encoder = None

    def __init__(self, chunks: int, patience_s: float = 5.0) -> None:
        self.chunks, self.patience_s = chunks, patience_s
        self.batches: list[int] = []
        # per forward pass that began with chunks left to decode: whether a decode started while it was in the model
        self.overlapped: list[bool] = []
        self.decodes_started = 0
        self.cond = threading.Condition()
        self.in_model = False
        self.gave_up = False

    def open(self, path: str, query: bool = False, plan=None) -> FakeVideo:
        return FakeVideo(self)

    def forward(self, clips: torch.Tensor):
        with self.cond:
            self.in_model = True
            self.cond.notify_all()
            before = self.decodes_started
            if before < self.chunks:
                if not self.gave_up:
                    self.gave_up = not self.cond.wait_for(lambda: self.decodes_started > before, self.patience_s)
                self.overlapped.append(self.decodes_started > before)
            self.in_model = False
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
                 still_current=None, before_done=None) -> bool:
        assert still_current is None or still_current()  # no reindex switched the model here
        self.done[job.job_id] = (len(segments), vectors)
        if len(self.done) == self.expected:
            self.all_done.set()
        return True

    def fail(self, job, reason, timings) -> None:
        raise AssertionError(reason)


def test_worker_overlaps_decode_with_forward_and_batches_clips(tmp_path):
    """8 two-segment videos: the next chunks are decoded while a batch is in the model (each forward pass
    waits for that to happen, so the order of events says it, not a clock), and clips of two videos share
    a batch of 4."""
    # all 8 jobs held at once; a few chunks wait for the model, the next ones need the room its batches make
    settings = Settings(checkpoint=tmp_path, data_dir=tmp_path, batch_size=4, max_wait_ms=200, decode_threads=2,
                        prefetch=8, decode_ahead_clips=8)
    enc, cat, broker = FakeEncoder(chunks=8), FakeCatalog(), InProcessBroker()
    cat.expected = 8
    for i in range(8):
        broker.enqueue(IngestJob(i, i, f"v{i}.mp4"))
    worker = EncoderWorker(serving(enc), broker, cat, settings)
    worker.start()
    try:
        assert cat.all_done.wait(60)
    finally:
        worker.stop()
    assert sorted(cat.done) == list(range(8)) and all(n == 2 for n, _ in cat.done.values())
    assert sum(enc.batches) == 16 and max(enc.batches) == 4  # micro-batches of 2 videos x 2 clips
    assert enc.decodes_started == 8
    # every forward pass that began with chunks left to decode had a decode start while it was in the model
    assert enc.overlapped and all(enc.overlapped) and not enc.gave_up, enc.overlapped


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
        self.times = DecodeTimes()

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
        self.lock = threading.Lock()
        self.in_model = 0  # forward passes waiting for the gate

    def open(self, path: str, query: bool = False, plan=None) -> LongVideo:
        return LongVideo(self.held, self.segments)

    def forward(self, clips: torch.Tensor):
        with self.lock:
            self.in_model += 1
        assert self.gate.wait(30)
        with self.lock:
            self.in_model -= 1
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
    worker = EncoderWorker(serving(enc), broker, cat, settings)
    worker.start()
    try:
        for i in range(4):
            broker.enqueue(IngestJob(i, i, f"long{i}.mp4"))
        wait_until(lambda: held.decoded >= settings.decode_ahead_clips, 10, "decoding under way")

        def stalled() -> bool:
            """As far as the worker goes while the model is stalled, by its own state: a batch is in the model
            (which it cannot leave while the gate is shut), every job has been taken, no chunk is being
            decoded, and the worker has no chunk it may start. Nothing changes again until the gate opens."""
            with worker._cond:  # noqa: SLF001
                jobs = list(worker._jobs)  # noqa: SLF001
                return (enc.in_model == 1 and broker.queue_depth() == 0 and len(jobs) == 4
                        and not any(w.busy for w in jobs) and worker._pick_decode() is None)  # noqa: SLF001

        wait_until(stalled, 20, "decoding stalled behind the model")
        bound = settings.decode_ahead_clips + 2 * settings.batch_size
        assert held.peak <= bound, (held.peak, bound)
        enc.gate.set()
        assert cat.all_done.wait(30)
    finally:
        enc.gate.set()
        worker.stop()
    assert all(n == 40 for n, _ in cat.done.values())


# S: queries in flight come before ingest at every step (embedded service) -----------------------------------
class StepEncoder:
    """Records each step with the number of queries in flight when it started: a chunk decoded, a forward
    pass (the first waits for `gate`), a text embedding."""

    class_names = ["a", "b"]
    text_encoder = None

    def __init__(self, queries: QueriesInFlight, segments: int) -> None:
        self.queries, self.segments = queries, segments
        self.gate = threading.Event()
        self.steps: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def record(self, step: str) -> None:
        with self.lock:
            self.steps.append((step, self.queries.count))

    def count(self, step: str) -> int:
        with self.lock:
            return sum(s == step for s, _ in self.steps)

    def open(self, path: str, query: bool = False, plan=None) -> StepVideo:
        return StepVideo(self, self.segments)

    def forward(self, clips: torch.Tensor):
        self.record("forward")
        assert self.gate.wait(30)
        n = len(clips)
        return np.ones((n, 4), np.float32), np.full((n, 2), 0.5, np.float32)

    def embed_text(self, texts: list[str]):
        self.record("text")
        return np.ones((len(texts), 3), np.float32), None


class StepVideo:
    views = None
    boxes = None

    def __init__(self, encoder: StepEncoder, n: int) -> None:
        self.encoder, self.segments, self.duration = encoder, [Span(i, i + 1) for i in range(n)], float(n)
        self.times = DecodeTimes()

    def clips(self, start: int, stop: int) -> torch.Tensor:
        self.encoder.record("decode")
        return torch.zeros(stop - start, 3, 2, 4, 4)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("segments", "stalled"), [(16, 2), (4, 1)])  # 4: the job's only batch, then its commit
def test_a_query_in_flight_is_served_before_the_next_ingest_step(tmp_path, segments, stalled):
    """An ingest job's first batch is in the model when a text query arrives (the gateway counts it in
    flight). Its embedding is served next, and no ingest chunk is decoded, forwarded or committed until the
    query has left the gateway; then the job finishes. Event-ordered: no timing is compared."""
    settings = Settings(checkpoint=tmp_path, data_dir=tmp_path, batch_size=4, max_wait_ms=5, decode_threads=2,
                        decode_ahead_clips=4, ingest_yield_max_s=60)
    queries = QueriesInFlight(settings.ingest_yield_max_s)
    enc, cat, broker = StepEncoder(queries, segments=segments), FakeCatalog(), InProcessBroker()
    cat.expected = 1
    worker = EncoderWorker(serving(enc), broker, cat, settings, queries=queries)
    worker.start()
    try:
        broker.enqueue(IngestJob(0, 0, "long.mp4"))
        # stalled: batch 1 in the model, chunk 2 decoded, chunk 3 waits for room (decode_ahead_clips)
        wait_until(lambda: enc.count("forward") == 1 and enc.count("decode") == stalled, 10, "batch 1 at the model")
        queries.enter()  # the gateway starts serving a text query
        answer: dict = {}
        asker = threading.Thread(target=lambda: answer.setdefault(
            "r", broker.infer(InferenceRequest("embed_text", texts=("a query",)), 30)))
        asker.start()
        enc.gate.set()  # batch 1 leaves the model
        asker.join(30)
        assert answer["r"].sentence.shape == (1, 3)
        # the worker is holding ingest back (or, wrongly, has gone on with it)
        first = stalled + 2  # the stalled steps, then the text
        wait_until(lambda: worker.ingest_holds > 0 or len(enc.steps) > first or cat.done, 10, "the next step")
        assert sorted(enc.steps[: first - 1]) == [("decode", 0)] * stalled + [("forward", 0)], enc.steps
        assert enc.steps[first - 1] == ("text", 1), enc.steps
        # nothing of the job while the query is in flight: no decode, no forward pass, no commit
        assert len(enc.steps) == first and not cat.done, (enc.steps, cat.done)
        queries.exit()  # the query's answer is sent
        assert cat.all_done.wait(20)
    finally:
        enc.gate.set()
        worker.stop()
    assert cat.done[0][0] == segments
    assert all(n == 0 for _, n in enc.steps[first:]), enc.steps  # the job went on once the query had left


def test_queries_hold_ingest_back_no_longer_than_the_bound(tmp_path):
    """Queries in flight without a break: ingest waits for them, then goes on beside them once they have
    been in flight for `ingest_yield_max_s` (it is never starved). The hold's clock is the test's."""
    settings = Settings(checkpoint=tmp_path, data_dir=tmp_path, batch_size=4, max_wait_ms=5, decode_threads=1,
                        ingest_yield_max_s=0.2)
    now = [0.0]
    queries = QueriesInFlight(settings.ingest_yield_max_s, clock=lambda: now[0])
    enc, cat, broker = StepEncoder(queries, segments=8), FakeCatalog(), InProcessBroker()
    enc.gate.set()
    cat.expected = 1
    worker = EncoderWorker(serving(enc), broker, cat, settings, queries=queries)
    worker.start()
    try:
        with queries.serving():  # a query in flight for the whole job
            broker.enqueue(IngestJob(0, 0, "v.mp4"))
            wait_until(lambda: worker.ingest_holds > 0, 10, "ingest held back")
            assert enc.steps == [] and not cat.done  # nothing decoded yet
            now[0] = 0.2  # the queries have been in flight for ingest_yield_max_s
            assert cat.all_done.wait(20), "ingest starved by a query that never ends"
    finally:
        worker.stop()
    assert cat.done[0][0] == 8 and enc.count("forward") == 2
