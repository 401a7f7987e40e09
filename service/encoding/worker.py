"""The encoder worker: takes work from the broker, decodes ahead of the model in bounded chunks,
micro-batches clips, and serves synchronous requests before ingestion.

Every video (an ingest job's, or a classify / video-query upload) is decoded in chunks of `batch_size`
segments (`Settings.batch_size_for`: 4 on OpenVINO, 16 on torch unless set), never all at once, so a
worker's memory does not grow with a video's length:

1. the feeder thread `take`s items from the broker: synchronous requests always, ingest jobs only while
   it holds fewer than `prefetch` (so a queue of long videos cannot fill it);
2. `decode_threads` decode threads open each video (probe, decoder, segment plan: `VideoEncoder.open`)
   and decode one chunk at a time, synchronous requests first, while at most `decode_ahead_clips`
   decoded clips wait for the model;
3. the runner thread gathers clips (synchronous requests' first, then jobs' in arrival order) into
   batches of up to `batch_size`, waiting at most `max_wait_ms` for a partial batch to fill, and runs one
   forward pass per batch under `torch.inference_mode`; the text thread answers text requests (MiniLM and
   the text head) beside it, so a text query never waits for the batch in the model;
4. a synchronous request gets its reply from the runner as soon as all its segments are embedded; the
   committer thread finishes each ingest job: indexed (one durable add of all its segments, at most
   `max_segments`) and then marked done. Its fsyncs do not stall the model.

So a classify or video query issued while a long video ingests waits for at most the chunk being decoded
and the batch in the model, not for the whole video; a text query waits for neither. In the embedded
service the gateway also says which queries are in flight (`service.priority.QueriesInFlight`): while any
is, ingest work is held back between steps (no ingest chunk decoded, no batch of ingest clips forwarded,
no ingest job committed), for at most `ingest_yield_max_s` without a break, so the query's work in the
gateway (index search, scoring) does not share the cores with ingest either.

An ingest job carries the segment plan the gateway made when it validated the upload (`IngestJob.plan`):
the worker opens the stored file on it, without probing or planning it again, and reads the video's
record once (when it marks the job running).

The worker embeds with the active generation's encoder (service/active.py). An online reindex
(service/reindex.py, `OnlineReindex`) queues reindex jobs (`IngestJob.generation` set) on the same
broker: they go through the same stages with the reindex's encoder (a batch never mixes two encoders)
and are committed by the reindex into its new generation. Queries do not hold them back: while clips of
both encoders wait, the two take turns at the forward pass (`_take_batch`), so a reindex finishes under
any query load and a query waits for at most one reindex batch. After the switch, the active encoder is
the new one; an ordinary job embedded by the old encoder is not committed into the new generation but
released and embedded again. A query's reply names the checkpoint that embedded it
(`InferenceResult.checkpoint`), so that its search uses that checkpoint's generation (service/search.py).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from indexer import Span
from service.active import Active
from service.backends.store import VideoRecord
from service.broker import Broker, InferenceResult, InferenceTask, IngestJob, WorkItem
from service.catalog import Catalog, metadata_text
from service.encoding.encoder import OpenedVideo, VideoEncoder, resolve_device
from service.encoding.inference import resolve_batch_size
from service.encoding.plan import VideoPlan
from service.errors import TRANSIENT_ERRORS, ServiceError, to_service_error
from service.memory import release_free_memory
from service.metrics import ServiceMetrics
from service.priority import QueriesInFlight, lower_thread_priority
from service.settings import Settings

log = logging.getLogger(__name__)


class ReindexJobs(Protocol):
    """The reindex jobs' side of an online reindex (service/reindex.py): which encoder embeds a job (None:
    not wanted any more), and where its result or failure goes."""

    def encoder_for(self, job: IngestJob) -> VideoEncoder | None: ...
    def complete(self, job: IngestJob, segments: list[Span], vectors: np.ndarray, probs: np.ndarray | None,
                 class_names: list[str], duration: float) -> None: ...
    def failed(self, job: IngestJob, reason: str) -> None: ...


class _NoReindex:
    """A worker without an online reindex (scale-out): a reindex job is never wanted."""

    def encoder_for(self, job: IngestJob) -> VideoEncoder | None:
        return None

    def complete(self, job, segments, vectors, probs, class_names, duration) -> None:
        raise AssertionError("no reindex job is taken without an online reindex")

    def failed(self, job: IngestJob, reason: str) -> None:
        """Nothing waits for it."""


NO_REINDEX = _NoReindex()


@dataclass(eq=False)
class _Work:
    """One video in the worker: its decoded chunks waiting for the model, and its embeddings so far."""

    item: WorkItem
    path: str
    encoder: VideoEncoder  # the model this item is embedded with (the current one, or a reindex's)
    plan: VideoPlan | None = None  # the upload's segment plan (made by the gateway), when it has one
    record: VideoRecord | None = None  # an ingest job's video, as read when the job was started
    checkpoint: str | None = None  # a request's: the sha256 of `encoder`'s checkpoint (its reply names it)
    timings: dict[str, float] = field(default_factory=dict)
    video: OpenedVideo | None = None  # opened by the first decode thread that takes it
    next_decode: int = 0  # next row to decode (a segment in one view; one view unless a query)
    chunks: deque[torch.Tensor] = field(default_factory=deque)  # decoded clips, in segment order
    offset: int = 0  # clips of chunks[0] already forwarded
    forwarded: int = 0  # rows embedded
    busy: bool = False  # a decode thread is working on it
    failed: bool = False  # failed and out of its lane (a decode thread may still hold it)
    emb: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    decode_s: float = 0.0  # opening and decoding its chunks, all stages (split in `video.times`)
    view_clips: dict[str, int] = field(default_factory=dict)  # clips forwarded, by view

    @property
    def stage_path(self) -> str:
        """Its path in the profile (`drca_stage_seconds`): ingest, reindex, query (a video query) or classify."""
        if isinstance(self.item, IngestJob):
            return "ingest" if self.item.generation is None else "reindex"
        return "query" if self.query else "classify"

    def decode_timings(self) -> dict[str, float]:
        """Seconds spent opening the video, decoding its frames, preprocessing and on the views, so far."""
        t = self.video.times if self.video is not None else None
        if t is None:
            return {"decode_s": round(self.decode_s, 4)}
        return {"open_s": round(t.open, 4), "decode_s": round(t.decode, 4), "preprocess_s": round(t.preprocess, 4),
                "views_s": round(t.views, 4)}

    @property
    def sync(self) -> bool:
        return isinstance(self.item, InferenceTask)

    @property
    def yields(self) -> bool:
        """An ordinary ingest job: held back while queries are in flight. A reindex job is not (it shares
        the model with queries in turns instead: `EncoderWorker._take_batch`), nor is a request."""
        return isinstance(self.item, IngestJob) and self.item.generation is None

    @property
    def query(self) -> bool:
        """A video query: embedded in the `query_views` too (rows are segments x views)."""
        return isinstance(self.item, InferenceTask) and self.item.request.kind == "embed_video"

    @property
    def needs_decode(self) -> bool:
        return not self.busy and not self.failed and (
            self.video is None or self.next_decode < len(self.video.segments))

    @property
    def buffered(self) -> int:
        return sum(len(c) for c in self.chunks) - self.offset

    @property
    def complete(self) -> bool:
        return self.video is not None and self.forwarded == len(self.video.segments)


class EncoderWorker:
    """`active`: the generation whose encoder embeds (service/active.py); `reindex`: the online reindex
    whose jobs this worker embeds and hands back (`NO_REINDEX` without one); `queries`: the gateway's
    queries in flight (embedded service), which ingest work waits for."""

    def __init__(self, active: Active, broker: Broker, catalog: Catalog, settings: Settings,
                 metrics: ServiceMetrics | None = None, queries: QueriesInFlight | None = None,
                 reindex: ReindexJobs = NO_REINDEX) -> None:
        self.active = active
        self.broker = broker
        self.catalog = catalog
        self.settings = settings
        self.metrics = metrics
        self.reindex = reindex
        self._cond = threading.Condition()
        self._sync: deque[_Work] = deque()  # synchronous video requests, in arrival order
        self._jobs: deque[_Work] = deque()  # ingest jobs, in arrival order
        self._texts: queue.Queue[InferenceTask | None] = queue.Queue()  # text requests (None: stop)
        self.batch_size = resolve_batch_size(settings, resolve_device(settings.device))  # clips per forward pass
        self._batches = 0  # forward passes so far
        self._last_batch: dict[int, int] = {}  # id(encoder) -> its latest forward pass (`_take_batch`)
        self._held_jobs = 0  # taken and not yet finished (lanes + committer)
        self._clips = 0  # decoded clips waiting for the model, plus those being decoded (reserved)
        self.peak_clips = 0  # the most that were ever held (reported by tests and benchmarks)
        self._first_ready: float | None = None  # when the oldest waiting clip became available
        self._done: queue.Queue[_Work | None] = queue.Queue()
        self._stop = threading.Event()  # stop taking work
        self._draining = False  # taken work is finished, then the threads end
        self._threads: list[threading.Thread] = []
        self._committer: threading.Thread | None = None
        self.queries = queries
        self.ingest_holds = 0  # times an ingest step waited for queries in flight (tests, benchmarks)
        if queries is not None:
            queries.add_listener(self._wake)

    @property
    def encoder(self) -> VideoEncoder:
        """The active generation's encoder: what new work is embedded with."""
        return self.active.current.encoder

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.broker.register_worker()
        def lowered(loop: Callable[[], None]) -> Callable[[], None]:
            """`loop` on a thread below the gateway's CPU priority (`worker_nice`, service/priority.py)."""
            def run() -> None:
                lower_thread_priority(self.settings.worker_nice)
                loop()
            return run

        self._threads = [
            threading.Thread(target=lowered(self._feed), name="drca-feeder", daemon=True),
            threading.Thread(target=lowered(self._run), name="drca-encoder", daemon=True),
            threading.Thread(target=self._text_loop, name="drca-text", daemon=True),  # the gateway's priority
            *(threading.Thread(target=lowered(self._decode_loop), name=f"drca-decode-{i}", daemon=True)
              for i in range(self.settings.decode_threads)),
        ]
        self._committer = threading.Thread(target=lowered(self._commit), name="drca-committer", daemon=True)
        for t in [*self._threads, self._committer]:
            t.start()
        if self.metrics:
            self.metrics.worker_up.set(1)
            s = self.settings
            self.metrics.encoder_info.info({**self.encoder.describe(), "batch_size": str(self.batch_size),
                                            "decode_threads": str(s.decode_threads), "max_wait_ms": f"{s.max_wait_ms:g}"})

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, finish what was taken, then return."""
        self.broker.unregister_worker()
        self._stop.set()
        self._threads[0].join(timeout_s)  # the feeder: nothing new after this
        self._texts.put(None)  # the text thread ends after the requests taken
        with self._cond:
            self._draining = True
            self._cond.notify_all()
        for t in self._threads[1:]:
            t.join(timeout_s)
        self._done.put(None)
        if self._committer is not None:
            self._committer.join(timeout_s)
        if self.metrics:
            self.metrics.worker_up.set(0)

    @property
    def alive(self) -> bool:
        threads = [*self._threads, self._committer]
        return bool(self._threads) and all(t is not None and t.is_alive() for t in threads)

    # stage 1: take --------------------------------------------------------------------------------
    def _feed(self) -> None:
        while not self._stop.is_set():
            try:
                with self._cond:
                    jobs_ok = self._held_jobs < self.settings.prefetch
                # holding `prefetch` jobs: only requests, and look again soon (a job may finish any time)
                item = self.broker.take(timeout_s=0.2 if jobs_ok else 0.02, jobs=jobs_ok)
                if item is None:
                    continue
                if isinstance(item, IngestJob):
                    with self._cond:
                        self._held_jobs += 1
                    if item.generation is not None:  # a reindex job: the video stays indexed meanwhile
                        encoder = self.reindex.encoder_for(item)
                        if encoder is None:
                            self._job_finished()
                            self.broker.ack(item)  # not wanted (any more): taken off the queue
                            continue
                        with self._cond:
                            self._jobs.append(_Work(item, item.path, encoder))
                            self._cond.notify_all()
                        continue
                    try:
                        record = self.catalog.start(item)
                    except Exception as e:  # e.g. Redis unreachable: released for another delivery
                        self._finish_error(item, e, {})
                        continue
                    if record is None:
                        self._job_finished()
                        self.broker.ack(item)  # deleted while queued, finished, or run by another worker
                        continue
                    with self._cond:
                        self._jobs.append(_Work(item, item.path, self.encoder, item.plan, record))
                        self._cond.notify_all()
                elif item.request.kind == "embed_text":
                    self._texts.put(item)
                elif item.request.video_path is None:
                    self._finish_error(item, ServiceError("the request names no video", status=422,
                                                          code="invalid_input"), {})
                else:
                    current = self.active.current
                    with self._cond:
                        self._sync.append(_Work(item, item.request.video_path, current.encoder,
                                                checkpoint=current.checkpoint.sha256))
                        self._cond.notify_all()
            except Exception:  # keep feeding: one bad item must not stop the worker
                log.exception("feeder error")

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _hold_s(self) -> float:
        """How long ingest work should still wait for the queries in flight (0: go on)."""
        return self.queries.hold_s() if self.queries is not None else 0.0

    def _lanes(self) -> Iterator[_Work]:
        """Synchronous requests first, then jobs, each in arrival order (lock held)."""
        yield from self._sync
        yield from self._jobs

    def _fail(self, w: _Work, exc: BaseException) -> None:
        """Fail one item: out of its lane now; its decoder is closed by whoever holds it last."""
        with self._cond:
            w.failed = True
            self._remove(w)
            busy = w.busy
        if not busy:
            self._close(w)
        self._finish_error(w.item, exc, {**w.timings, **w.decode_timings()})

    def _remove(self, w: _Work) -> None:
        """Take a finished or failed item out of its lane, releasing its decoded clips (lock held)."""
        lane = self._sync if w.sync else self._jobs
        with contextlib.suppress(ValueError):
            lane.remove(w)
        self._clips -= w.buffered
        w.chunks.clear()
        w.offset = 0
        if self.metrics:
            self.metrics.worker_clips.set(self._clips)
        self._cond.notify_all()

    # stage 2: decode in chunks ----------------------------------------------------------------------
    def _pick_decode(self) -> tuple[_Work, int] | None:
        """The item to decode a chunk of next, and how many clips it reserves (lock held). A chunk is
        `batch_size` segments; jobs wait while `decode_ahead_clips` are held, synchronous requests may
        go one chunk past it (so they never wait behind a full buffer of job clips). An encoder with no
        clip decoded or being decoded (an online reindex's, behind a stream of queries) goes first, so that
        it has clips ready when its turn at the model comes (`_take_batch`)."""
        chunk = self.batch_size
        held = self._hold_s() > 0
        lanes = list(self._lanes())
        supplied: list[VideoEncoder] = []
        for w in lanes:
            if (w.busy or w.chunks) and not any(w.encoder is e for e in supplied):
                supplied.append(w.encoder)
        unsupplied = [w for w in lanes if not any(w.encoder is e for e in supplied)]
        for w in [*unsupplied, *lanes]:
            if not w.needs_decode or len(w.chunks) >= 2:
                continue
            if held and w.yields:  # a query is in flight: no ingest decoding (a reindex job goes on)
                self.ingest_holds += 1
                continue
            n = chunk if w.video is None else min(chunk, len(w.video.segments) - w.next_decode)
            cap = self.settings.decode_ahead_clips + (chunk if w.sync else 0)
            if self._clips + n <= cap or self._clips == 0:
                return w, n
        return None

    def _decode_loop(self) -> None:
        while True:
            with self._cond:
                picked = self._pick_decode()
                while picked is None:
                    if self._draining and not any(w.needs_decode or w.busy for w in self._lanes()):
                        return
                    self._cond.wait(min(0.2, self._hold_s() or 0.2))
                    picked = self._pick_decode()
                w, reserved = picked
                w.busy = True
                self._clips += reserved
            try:
                t0 = time.perf_counter()
                if w.video is None:
                    w.video = w.encoder.open(w.path, query=w.query, plan=w.plan)
                start = w.next_decode
                stop = min(start + self.batch_size, len(w.video.segments))
                clips = w.video.clips(start, stop)
                dt = time.perf_counter() - t0
            except Exception as e:  # a bad video fails its own item only
                with self._cond:
                    w.busy = False
                    self._clips -= reserved
                    already = w.failed
                if already:
                    self._close(w)
                else:
                    self._fail(w, e)
                continue
            with self._cond:
                w.busy = False
                if w.failed:  # failed meanwhile (its batch's forward pass): drop the chunk
                    self._clips -= reserved
                    self._cond.notify_all()
                    self._close(w)
                    continue
                w.decode_s += dt
                w.next_decode = stop
                w.chunks.append(clips)
                self._clips += len(clips) - reserved
                self.peak_clips = max(self.peak_clips, self._clips)
                if self._first_ready is None:
                    self._first_ready = time.perf_counter()
                if self.metrics:
                    self.metrics.worker_clips.set(self._clips)
                self._cond.notify_all()
            if stop == len(w.video.segments):
                self._close(w)
                if self.metrics:
                    self.metrics.decode_seconds.observe(w.decode_s)

    @staticmethod
    def _close(w: _Work) -> None:
        if w.video is not None:
            with contextlib.suppress(Exception):
                w.video.close()

    # stage 3: batch + forward (text requests: their own thread) -------------------------------------
    def _run(self) -> None:
        max_wait = self.settings.max_wait_ms / 1000
        while True:
            with self._cond:
                while True:
                    hold = self._hold_s()
                    # a query in flight: no ordinary ingest clips go to the model (requests' and reindex jobs' do)
                    lanes = [w for w in self._lanes() if not (hold and w.yields)]
                    ready = sum(w.buffered for w in lanes)
                    if ready:
                        more_coming = any(w.busy or w.needs_decode for w in lanes)
                        waited = time.perf_counter() - (self._first_ready or 0.0)
                        if ready >= self.batch_size or not more_coming or waited >= max_wait:
                            batch = self._take_batch(lanes)
                            break
                        self._cond.wait(max(0.0, max_wait - waited))
                        continue
                    if hold and any(w.buffered for w in self._jobs):
                        self.ingest_holds += 1
                        self._cond.wait(hold)
                        continue
                    if self._draining and not self._sync and not self._jobs:
                        return
                    self._cond.wait(0.2)
            self._forward(batch)

    def _take_batch(self, lanes: list[_Work]) -> list[tuple[_Work, torch.Tensor]]:
        """Up to `batch_size` decoded clips of these lanes, in their order (synchronous requests' first),
        all for one encoder (lock held): the first lane's with clips, unless clips of another encoder (an
        online reindex's, beside the current model's) wait too and that encoder ran the last batch. Then the
        encoder that waited longest goes: two models take turns at the forward pass, so queries never
        starve a reindex and a query waits for at most one reindex batch."""
        take: list[tuple[_Work, torch.Tensor]] = []
        n = 0
        waiting: list[VideoEncoder] = []  # the encoders with clips, in lane order
        for w in lanes:
            if w.chunks and not any(w.encoder is e for e in waiting):
                waiting.append(w.encoder)
        encoder = waiting[0]
        if len(waiting) > 1 and self._last_batch.get(id(encoder)) == self._batches:
            encoder = min(waiting[1:], key=lambda e: self._last_batch.get(id(e), -1))
        self._batches += 1
        self._last_batch[id(encoder)] = self._batches
        for w in lanes:
            while w.encoder is encoder and w.chunks and n < self.batch_size:
                head = w.chunks[0]
                k = min(len(head) - w.offset, self.batch_size - n)
                take.append((w, head[w.offset : w.offset + k]))
                w.offset += k
                n += k
                if w.offset == len(head):
                    w.chunks.popleft()
                    w.offset = 0
        self._clips -= n
        self._first_ready = time.perf_counter() if any(w.chunks for w in self._lanes()) else None
        if self.metrics:
            self.metrics.worker_clips.set(self._clips)
        self._cond.notify_all()
        return take

    def _text_loop(self) -> None:
        """Text requests, on their own thread: a text query never waits for the batch in the model."""
        while (task := self._texts.get()) is not None:
            self._embed_text(task)

    def _embed_text(self, task: InferenceTask) -> None:
        try:
            current = self.active.current
            sent, proj = current.encoder.embed_text(list(task.request.texts))
            self.broker.reply(task, InferenceResult(sentence=sent, projected=proj,
                                                    checkpoint=current.checkpoint.sha256))
        except Exception as e:
            self._finish_error(task, e, {})

    def _forward(self, take: list[tuple[_Work, torch.Tensor]]) -> None:
        """One forward pass over the clips taken; an item whose segments are all embedded is committed."""
        clips = torch.cat([c for _, c in take])  # (N, C, T, H, W)
        n = len(clips)
        t0 = time.perf_counter()
        try:
            emb, probs = take[0][0].encoder.forward(clips)
        except Exception as e:
            log.exception("forward pass failed on %d clips", n)
            for w in {id(w): w for w, _ in take}.values():
                self._fail(w, e)
            return
        dt = time.perf_counter() - t0
        parts = [(w, len(c)) for w, c in take]
        take.clear()  # the batch's clips are freed here, and leave the process (service/memory.py)
        del clips
        release_free_memory()
        if self.metrics:
            self.metrics.batch_clips.observe(n)
            self.metrics.forward_seconds.observe(dt)
        i = 0
        finished = []
        with self._cond:
            for w, k in parts:
                w.emb.append(emb[i : i + k])
                if probs is not None:
                    w.probs.append(probs[i : i + k])
                w.timings["forward_s"] = w.timings.get("forward_s", 0.0) + dt * k / n  # its share of the batch
                views = w.video.views[w.forwarded : w.forwarded + k] if w.video.views else ["original"] * k
                for v in views:
                    w.view_clips[v] = w.view_clips.get(v, 0) + 1
                w.forwarded += k
                i += k
                if w.complete and w not in finished:
                    finished.append(w)
            for w in finished:
                self._remove(w)
        for w in finished:
            w.timings.update(self._stage_times(w))
            if w.sync:
                self._finish(w)  # the reply, now: nothing to write, and never queued behind an ingest commit
            else:
                self._done.put(w)

    @staticmethod
    def _stage_times(w: _Work) -> dict[str, float]:
        """Its decoding and forward times, split by stage (unrounded: the metrics sum them)."""
        t = w.video.times
        return {"open_s": t.open, "decode_s": t.decode, "preprocess_s": t.preprocess, "views_s": t.views,
                "forward_s": w.timings.get("forward_s", 0.0)}

    def _observe(self, w: _Work, extra: dict[str, float] | None = None) -> None:
        """Its stage times and clips into the profile metrics (`drca_stage_seconds`, `drca_encoder_clips`)."""
        if self.metrics is None:
            return
        path = w.stage_path
        for key, seconds in {**self._stage_times(w), **(extra or {})}.items():
            self.metrics.stage_seconds.labels(path, key.removesuffix("_s")).observe(seconds)
        for view, n in w.view_clips.items():
            self.metrics.encoder_clips.labels(path, view).inc(n)

    # stage 4: index + mark done / reply ---------------------------------------------------------
    def _commit(self) -> None:
        while (w := self._done.get()) is not None:
            with self._cond:
                while w.yields and (hold := self._hold_s()) > 0:  # a query in flight: its index search goes first
                    self.ingest_holds += 1
                    self._cond.wait(hold)
            self._finish(w)

    def _finish(self, w: _Work) -> None:
        vectors = np.concatenate(w.emb).astype(np.float32)
        seg_probs = np.concatenate(w.probs) if w.probs else None
        video_probs = seg_probs.mean(axis=0) if seg_probs is not None else None  # mean of segment probs
        try:
            if isinstance(w.item, IngestJob) and w.item.generation is not None:
                self.reindex.complete(w.item, w.video.segments, vectors, video_probs, w.encoder.class_names,
                                      w.video.duration)
                self.broker.ack(w.item)
                self._job_finished()
                self._observe(w)
            elif isinstance(w.item, IngestJob):
                t0 = time.perf_counter()
                text_emb = self._metadata_embedding(w.record)
                text_s = time.perf_counter() - t0
                timings = {k: round(v, 4) for k, v in w.timings.items()} | {"text_s": round(text_s, 4)}
                committed = self.catalog.complete(
                    w.item, w.video.segments, vectors, video_probs, w.encoder.class_names,
                    w.video.duration, text_emb, timings, still_current=lambda: w.encoder is self.encoder,
                    before_done=lambda t: self._observe(w, {"text_s": text_s, "index_s": t["index_s"],
                                                            "commit_s": t["commit_s"]}),
                )
                if not committed:  # a reindex switched models meanwhile: embed it again with the new one
                    log.info("job %d was embedded by the previous model; queued again", w.item.job_id)
                    self.broker.release(w.item)
                    self._job_finished()
                    return
                self.broker.ack(w.item)
                self._job_finished()
                if self.metrics:
                    self.metrics.jobs_finished.labels("done").inc()
            else:
                self._observe(w)  # before the reply: whoever has the answer sees its stages recorded
                self.broker.reply(w.item, InferenceResult(
                    probs=video_probs, vectors=vectors, segments=w.video.segments, duration=w.video.duration,
                    views=w.video.views, boxes=w.video.boxes, checkpoint=w.checkpoint))
        except Exception as e:
            self._finish_error(w.item, e, w.timings)

    def _job_finished(self) -> None:
        with self._cond:
            self._held_jobs -= 1
            self._cond.notify_all()

    def _metadata_embedding(self, record: VideoRecord) -> np.ndarray | None:
        encoder = self.encoder
        if encoder.text_encoder is None:
            return None
        text = metadata_text(record)
        if not text:
            return None
        sent, _ = encoder.embed_text([text])
        return sent[0]

    def _finish_error(self, item: WorkItem, exc: BaseException, timings: dict[str, float]) -> None:
        err = to_service_error(exc)
        timings = {k: round(v, 4) for k, v in timings.items()}
        if isinstance(item, IngestJob):
            self._job_finished()
        if isinstance(item, IngestJob) and isinstance(exc, TRANSIENT_ERRORS):
            # Redis is gone for longer than the client retries: record nothing, let another delivery redo it
            log.warning("job %d not finished (%s); it will be delivered again", item.job_id, exc)
            with contextlib.suppress(Exception):
                self.broker.release(item)
            return
        if isinstance(item, IngestJob) and item.generation is not None:
            reason = f"{type(exc).__name__}: {exc}"
            self.reindex.failed(item, reason)
            self.broker.fail(item, reason)
            return
        if err.status >= 500 and not isinstance(exc, ServiceError):
            log.error("work item failed: %s: %s", type(exc).__name__, exc)
        try:
            if isinstance(item, IngestJob):
                reason = err.message if err.status < 500 else f"internal error: {type(exc).__name__}: {exc}"
                self.catalog.fail(item, reason, timings)
                self.broker.fail(item, reason)
                if self.metrics:
                    self.metrics.jobs_finished.labels("failed").inc()
            else:
                self.broker.reply(item, None, err)
        except Exception:
            log.exception("could not record the failure of %s", item)
