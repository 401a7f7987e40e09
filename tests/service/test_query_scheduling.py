"""Issue 27, G5 and G6: how the encoder worker shares the model between queries, ingest and an online
reindex. Fake encoders, so that every test is ordered by events (forward passes counted, a forward pass
held on an event), never by a clock.

- G5: queries never starve an online reindex: its jobs are not held back by queries in flight, and while
  clips of both models wait, the two take turns at the forward pass;
- G6: a text query is answered while an ingest batch is in the model (text requests have their own
  thread), and the ingest batch is small where that costs nothing (OpenVINO: `batch_size` resolved per
  runtime, one default in service/settings.py).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from indexer import Span
from media.segments import DecodeTimes
from service.broker import InferenceRequest, IngestJob, InProcessBroker
from service.encoding.inference import resolve_batch_size
from service.encoding.worker import EncoderWorker
from service.priority import QueriesInFlight
from service.settings import DEFAULT_BATCH_SIZE_OPENVINO, DEFAULT_BATCH_SIZE_TORCH, Settings
from tests.service.test_broker_worker import FakeCatalog, serving
from tests.waiting import wait_until

GENERATION = "index.new"  # the online reindex's generation (the reindex jobs name it)


class Model:
    """A fake model: every forward pass is recorded (by model name) in the shared `log`, and may be held by
    `before_forward` (a callable of the pass's index in the log). Its videos have `segments` segments;
    the chunks decoded so far are counted."""

    class_names = ["a", "b"]
    text_encoder = None

    def __init__(self, name: str, log: list[str], cond: threading.Condition, segments: int) -> None:
        self.name, self.log, self.cond, self.segments = name, log, cond, segments
        self.decoded = 0  # chunks decoded, all videos
        self.before_forward = lambda i: None
        self.before_decode = lambda: None

    def open(self, path: str, query: bool = False, plan=None) -> Video:
        return Video(self)

    def forward(self, clips: torch.Tensor):
        with self.cond:
            i = len(self.log)
        self.before_forward(i)
        with self.cond:
            self.log.append(self.name)
            self.cond.notify_all()
        n = len(clips)
        return np.ones((n, 4), np.float32), np.full((n, 2), 0.5, np.float32)

    def embed_text(self, texts: list[str]):
        return np.ones((len(texts), 3), np.float32), np.ones((len(texts), 4), np.float32)

    def count(self) -> int:
        with self.cond:
            return self.log.count(self.name)


class Video:
    views = None
    boxes = None

    def __init__(self, model: Model) -> None:
        self.model = model
        self.segments = [Span(i, i + 1) for i in range(model.segments)]
        self.duration = float(model.segments)
        self.times = DecodeTimes()

    def clips(self, start: int, stop: int) -> torch.Tensor:
        self.model.before_decode()
        with self.model.cond:
            self.model.decoded += 1
            self.model.cond.notify_all()
        return torch.zeros(stop - start, 3, 2, 4, 4)

    def close(self) -> None:
        pass


class Reindex:
    """The reindex side the worker talks to (`ReindexJobs`): every job is embedded by `model`."""

    def __init__(self, model: Model, jobs: int) -> None:
        self.model, self.jobs = model, jobs
        self.done: dict[int, int] = {}
        self.finished = threading.Event()

    def encoder_for(self, job: IngestJob) -> Model | None:
        return self.model if job.generation == GENERATION else None

    def complete(self, job, segments, vectors, probs, class_names, duration) -> None:
        self.done[job.video_id] = len(segments)
        if len(self.done) == self.jobs:
            self.finished.set()

    def failed(self, job, reason: str) -> None:
        raise AssertionError(reason)


def _settings(tmp_path, **kw) -> Settings:
    return Settings(checkpoint=tmp_path, data_dir=tmp_path, **{"batch_size": 4, "max_wait_ms": 5,
                                                               "decode_threads": 2, **kw})


# G5 ---------------------------------------------------------------------------------------------------------
def test_g5_an_online_reindex_finishes_under_continuous_query_loops(tmp_path):
    """4 video-query loops and a query held in flight for the whole test (a hold that never runs out: the
    queries' clock is frozen) while an online reindex of 3 videos runs. The reindex finishes, and within a
    bounded number of query batches (counted, not timed); before, none of its jobs was ever decoded or
    forwarded while a query was in flight, and the query model's clips always went first."""
    settings = _settings(tmp_path, ingest_yield_max_s=60)
    queries = QueriesInFlight(settings.ingest_yield_max_s, clock=lambda: 0.0)
    log: list[str] = []
    cond = threading.Condition()
    current, new = Model("query", log, cond, segments=8), Model("reindex", log, cond, segments=8)
    reindex = Reindex(new, jobs=3)
    broker = InProcessBroker()
    worker = EncoderWorker(serving(current), broker, FakeCatalog(), settings, queries=queries, reindex=reindex)
    limit = [1 << 30]  # query batches after which the loops give up (set when the reindex starts)
    stop = threading.Event()
    answered = [0] * 4
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        try:
            while not stop.is_set() and current.count() < limit[0]:
                with queries.serving():
                    res = broker.infer(InferenceRequest("embed_video", video_path=f"q{i}.mp4"), 30)
                assert res.vectors.shape == (8, 4)
                answered[i] += 1
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    worker.start()
    queries.enter()  # a query in flight from before the reindex until its end
    loops = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
    try:
        for t in loops:
            t.start()
        wait_until(lambda: all(answered), 20, "the query loops under way")
        with cond:
            start = len(log)
            limit[0] = log.count("query") + 400  # a starved reindex: the loops stop 400 query batches on
        for vid in range(3):
            broker.enqueue(IngestJob(0, vid, f"v{vid}.mp4", generation=GENERATION))
        wait_until(lambda: reindex.finished.is_set() or current.count() >= limit[0] or errors, 120,
                   "the reindex finished, or the query loops at their limit")
        finished = reindex.finished.is_set()
        with cond:
            order = log[start:]
    finally:
        stop.set()
        for t in loops:
            t.join(30)
        queries.exit()
        worker.stop()
    assert not errors, errors
    assert finished, f"reindex starved: {order.count('reindex')} of its batches in {len(order)} forward passes"
    assert reindex.done == {0: 8, 1: 8, 2: 8} and order.count("reindex") == 6  # 3 videos x 2 batches
    # from the start of the reindex to its last batch: a few query batches per reindex batch (typically
    # 1 or 2: the models take turns while both have clips; test_g5_two_models_take_turns_at_the_forward_pass)
    last = max(i for i, name in enumerate(order) if name == "reindex")
    assert order[:last].count("query") <= 100, order


def test_g5_two_models_take_turns_at_the_forward_pass(tmp_path):
    """A long query video (6 batches) and a reindex job (2 batches), every chunk of both decoded in time
    (each query forward pass waits until the query's next chunk is decoded). While both have clips waiting
    the models alternate: query, reindex, query, reindex, then the rest of the query. Before, the query
    model (the first lane's) took every batch while it had clips, and the reindex waited for all six."""
    settings = _settings(tmp_path)
    log: list[str] = []
    cond = threading.Condition()
    current, new = Model("query", log, cond, segments=24), Model("reindex", log, cond, segments=8)

    in_model = threading.Event()

    def waiting(model: Model) -> int:
        """Decoded chunks of `model`'s videos in the worker's lanes, by its own state."""
        with worker._cond:  # noqa: SLF001
            return sum(len(w.chunks) for w in worker._lanes() if w.encoder is model)  # noqa: SLF001

    def query_pass(i: int) -> None:
        in_model.set()
        with cond:  # the first pass waits for the reindex's chunks; each waits for the query's next chunk
            nth = log.count("query")
            ok = cond.wait_for(lambda: current.decoded >= min(6, nth + 2) and new.decoded >= (0 if nth else 2), 20)
        assert ok, (current.decoded, new.decoded)
        # decoded is not yet waiting: the worker puts a chunk in its lane after the decode returns
        wait_until(lambda: waiting(current) >= (nth < 5) and waiting(new) >= (0 if nth else 2), 20,
                   "the decoded chunks in the worker's lanes")

    current.before_forward = query_pass
    reindex = Reindex(new, jobs=1)
    broker = InProcessBroker()
    worker = EncoderWorker(serving(current), broker, FakeCatalog(), settings, reindex=reindex)
    worker.start()
    answer: dict = {}
    try:
        asker = threading.Thread(target=lambda: answer.setdefault(
            "r", broker.infer(InferenceRequest("embed_video", video_path="long-query.mp4"), 30)))
        asker.start()
        assert in_model.wait(20)  # the query's first batch is in the model before the reindex job comes
        broker.enqueue(IngestJob(0, 7, "v7.mp4", generation=GENERATION))
        asker.join(30)
        assert reindex.finished.wait(30)
    finally:
        worker.stop()
    assert answer["r"].vectors.shape == (24, 4) and reindex.done == {7: 8}
    assert log == ["query", "reindex", "query", "reindex", "query", "query", "query", "query"], log


def test_g5_a_reindex_job_is_decoded_beside_a_stream_of_queries(tmp_path):
    """Decoding is the bottleneck (one decode thread, and each decode waits until the model has forwarded
    all but one of the chunks decoded before it): 6 queries and a reindex job wait at once. The reindex's
    chunk is decoded next, so its batch is among the model's first three; before, every query chunk was
    decoded first (synchronous lanes first) and the reindex had nothing for its turn at the model."""
    settings = _settings(tmp_path, decode_threads=1)
    log: list[str] = []
    cond = threading.Condition()
    current, new = Model("query", log, cond, segments=8), Model("reindex", log, cond, segments=4)
    go = [False]

    def decode_behind_the_model() -> None:
        with cond:
            done = current.decoded + new.decoded
            assert cond.wait_for(lambda: go[0] and len(log) >= done - 1, 20), (done, log)

    current.before_decode = new.before_decode = decode_behind_the_model
    reindex = Reindex(new, jobs=1)
    broker = InProcessBroker()
    worker = EncoderWorker(serving(current), broker, FakeCatalog(), settings, reindex=reindex)
    worker.start()
    answers: list = []
    askers = [threading.Thread(target=lambda i=i: answers.append(
        broker.infer(InferenceRequest("embed_video", video_path=f"q{i}.mp4"), 30))) for i in range(6)]
    try:
        for t in askers:
            t.start()
        broker.enqueue(IngestJob(0, 3, "v3.mp4", generation=GENERATION))

        def all_in_the_worker() -> bool:
            with worker._cond:  # noqa: SLF001
                return len(worker._sync) == 6 and len(worker._jobs) == 1  # noqa: SLF001

        wait_until(all_in_the_worker, 20, "the 6 queries and the reindex job in the worker")
        with cond:
            go[0] = True
            cond.notify_all()
        for t in askers:
            t.join(30)
        assert reindex.finished.wait(30)
    finally:
        with cond:
            go[0] = True
            cond.notify_all()
        worker.stop()
    assert len(answers) == 6 and reindex.done == {3: 4}
    assert log.count("query") == 12 and log.index("reindex") <= 2, log


# G6 ---------------------------------------------------------------------------------------------------------
class BlockedModel(Model):
    """Its forward pass holds until `gate` is set; `in_model` says one has started."""

    def __init__(self, log: list[str], cond: threading.Condition, segments: int) -> None:
        super().__init__("ingest", log, cond, segments)
        self.gate, self.in_model = threading.Event(), threading.Event()
        self.texts_while_in_model = 0

    def forward(self, clips: torch.Tensor):
        self.in_model.set()
        assert self.gate.wait(30)
        return super().forward(clips)

    def embed_text(self, texts: list[str]):
        if self.in_model.is_set() and not self.gate.is_set():
            self.texts_while_in_model += 1
        return super().embed_text(texts)


def test_g6_a_text_query_is_answered_while_an_ingest_batch_is_in_the_model(tmp_path):
    """An ingest batch is in the model, held there by an event the test sets only after the text query's
    answer has come: the answer comes (its embedding ran while the batch was in the model). Before, text
    requests were answered by the encoder thread between forward passes, so this one waited for the batch
    (and here, for ever)."""
    settings = _settings(tmp_path)
    log: list[str] = []
    model = BlockedModel(log, threading.Condition(), segments=8)
    cat, broker = FakeCatalog(), InProcessBroker()
    cat.expected = 1
    worker = EncoderWorker(serving(model), broker, cat, settings)
    worker.start()
    try:
        broker.enqueue(IngestJob(0, 0, "long.mp4"))
        assert model.in_model.wait(20), "the ingest batch never reached the model"
        res = broker.infer(InferenceRequest("embed_text", texts=("a dog on a beach",)), 20)
        assert res.sentence.shape == (1, 3) and res.projected.shape == (1, 4)
        assert not model.gate.is_set() and model.texts_while_in_model == 1
        assert res.checkpoint == "0" * 64  # the reply names the checkpoint that embedded it (G9)
        model.gate.set()
        assert cat.all_done.wait(20)
    finally:
        model.gate.set()
        worker.stop()
    assert cat.done[0][0] == 8 and log == ["ingest", "ingest"]


def test_g6_the_batch_size_follows_the_runtime_unless_set(tmp_path, monkeypatch):
    """`batch_size` unset: OpenVINO (the CPU default) forwards 4 clips at a time, torch 16; a value set by
    the user (keyword or DRCA_BATCH_SIZE) is used for both. The worker batches and decodes in that size."""
    assert Settings().batch_size is None
    assert (DEFAULT_BATCH_SIZE_OPENVINO, DEFAULT_BATCH_SIZE_TORCH) == (4, 16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_batch_size(Settings(), cpu) == 4  # auto on a CPU: OpenVINO
    assert resolve_batch_size(Settings(runtime="openvino"), cpu) == 4
    assert resolve_batch_size(Settings(runtime="torch"), cpu) == 16
    assert resolve_batch_size(Settings(), cuda) == 16  # auto on CUDA: torch
    assert resolve_batch_size(Settings(batch_size=8), cpu) == resolve_batch_size(Settings(batch_size=8), cuda) == 8
    monkeypatch.setenv("DRCA_BATCH_SIZE", "2")
    assert Settings().batch_size_for("openvino") == Settings().batch_size_for("torch") == 2
    monkeypatch.delenv("DRCA_BATCH_SIZE")
    with pytest.raises(ValueError):
        Settings(batch_size=0)

    # the worker: a 16-segment ingest job goes through the model 4 clips at a time, in chunks of 4
    settings = Settings(checkpoint=tmp_path, data_dir=tmp_path, device="cpu", runtime="openvino", max_wait_ms=5)
    log: list[str] = []
    model = Model("ingest", log, threading.Condition(), segments=16)
    sizes: list[int] = []
    forward = model.forward

    def recorded(clips: torch.Tensor):
        sizes.append(len(clips))
        return forward(clips)

    model.forward = recorded
    cat, broker = FakeCatalog(), InProcessBroker()
    cat.expected = 1
    worker = EncoderWorker(serving(model), broker, cat, settings)
    assert worker.batch_size == 4
    worker.start()
    try:
        broker.enqueue(IngestJob(0, 0, "v.mp4"))
        assert cat.all_done.wait(20)
    finally:
        worker.stop()
    assert sizes == [4, 4, 4, 4] and model.decoded == 4 and cat.done[0][0] == 16
