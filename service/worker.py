"""The encoder worker: takes work from the broker, decodes ahead of the model, micro-batches clips.

Three stages run concurrently:

1. the feeder thread `take`s items from the broker and submits their decoding to a thread pool
   (`decode_threads`); at most `prefetch` decoded-or-decoding items wait for the model;
2. the pool decodes + samples + preprocesses (`VideoEncoder.decode`) while the model works;
3. the runner thread gathers clips of the items in arrival order into batches of up to `batch_size`
   clips, waiting at most `max_wait_ms` for a partial batch to fill, runs one forward pass per batch
   under `torch.inference_mode`;
4. the committer thread finishes each item once all its clips are embedded: an ingest job is indexed
   (one durable add) and then marked done; a synchronous request gets its reply. Its fsyncs do not
   stall the model.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from service.broker import Broker, InferenceResult, InferenceTask, IngestJob, WorkItem
from service.catalog import Catalog, metadata_text
from service.encoder import DecodedVideo, VideoEncoder
from service.errors import TRANSIENT_ERRORS, ServiceError, to_service_error
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Work:
    item: WorkItem
    decoded: DecodedVideo
    t_taken: float
    timings: dict[str, float]
    emb: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    next_clip: int = 0

    @property
    def remaining(self) -> int:
        return len(self.decoded.segments) - self.next_clip


class EncoderWorker:
    def __init__(self, encoder: VideoEncoder, broker: Broker, catalog: Catalog, settings: Settings,
                 metrics: ServiceMetrics | None = None) -> None:
        self.encoder = encoder
        self.broker = broker
        self.catalog = catalog
        self.settings = settings
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="drca-decode")
        self._ready: queue.Queue[tuple[WorkItem, Future | None, float]] = queue.Queue(maxsize=settings.prefetch)
        self._done: queue.Queue[_Work | None] = queue.Queue(maxsize=4 * settings.prefetch)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._committer: threading.Thread | None = None

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.broker.register_worker()
        self._threads = [
            threading.Thread(target=self._feed, name="drca-feeder", daemon=True),
            threading.Thread(target=self._run, name="drca-encoder", daemon=True),
        ]
        self._committer = threading.Thread(target=self._commit, name="drca-committer", daemon=True)
        for t in [*self._threads, self._committer]:
            t.start()
        if self.metrics:
            self.metrics.worker_up.set(1)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, finish what was taken, then return."""
        self.broker.unregister_worker()
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        self._done.put(None)
        if self._committer is not None:
            self._committer.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=False)
        if self.metrics:
            self.metrics.worker_up.set(0)

    @property
    def alive(self) -> bool:
        threads = [*self._threads, self._committer]
        return bool(self._threads) and all(t is not None and t.is_alive() for t in threads)

    # stage 1: take + submit decoding --------------------------------------------------------------
    def _feed(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.broker.take(timeout_s=0.2)
                if item is None:
                    continue
                if isinstance(item, IngestJob):
                    try:
                        started = self.catalog.start(item)
                    except Exception as e:  # e.g. Redis unreachable: released for another delivery
                        self._finish_error(item, e, {})
                        continue
                    if not started:
                        self.broker.ack(item)  # deleted while queued, finished, or run by another worker
                        continue
                fut = None
                path = item.path if isinstance(item, IngestJob) else item.request.video_path
                if path is not None:
                    query = isinstance(item, InferenceTask) and item.request.kind == "embed_video"
                    fut = self._pool.submit(self._decode, path, query)
                t0 = time.perf_counter()
                while not self._stop.is_set():
                    try:
                        self._ready.put((item, fut, t0), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                else:
                    self._finish_error(item, ServiceError("the worker is shutting down", status=503,
                                                          code="worker_unavailable"), {})
            except Exception:  # keep feeding: one bad item must not stop the worker
                log.exception("feeder error")

    def _decode(self, path: str, query: bool = False) -> tuple[DecodedVideo, float]:
        t0 = time.perf_counter()
        decoded = self.encoder.decode(path, query=query)
        dt = time.perf_counter() - t0
        if self.metrics:
            self.metrics.decode_seconds.observe(dt)
        return decoded, dt

    # stage 3: batch + forward + finish ----------------------------------------------------------
    def _run(self) -> None:
        pending: deque[_Work] = deque()
        deadline = 0.0
        max_wait = self.settings.max_wait_ms / 1000
        while True:
            stopping = self._stop.is_set()
            if stopping and not pending and self._ready.empty():
                return
            timeout = 0.2 if not pending else max(0.0, deadline - time.perf_counter())
            got = None
            with contextlib.suppress(queue.Empty):
                got = self._ready.get(timeout=timeout) if timeout > 0 else self._ready.get_nowait()
            if got is not None:
                work = self._resolve(*got)
                if work is not None:
                    if not pending:
                        deadline = time.perf_counter() + max_wait
                    pending.append(work)
            clips = sum(w.remaining for w in pending)
            if pending and (clips >= self.settings.batch_size or got is None or stopping):
                self._forward(pending)

    def _resolve(self, item: WorkItem, fut: Future | None, t_taken: float) -> _Work | None:
        """Wait for the item's decoding; text requests are answered here (no video to decode)."""
        timings: dict[str, float] = {}
        try:
            if isinstance(item, InferenceTask) and item.request.kind == "embed_text":
                sent, proj = self.encoder.embed_text(list(item.request.texts))
                self.broker.reply(item, InferenceResult(sentence=sent, projected=proj))
                return None
            assert fut is not None
            decoded, dt = fut.result()
            timings["decode_s"] = round(dt, 4)
            return _Work(item, decoded, time.perf_counter(), timings)
        except Exception as e:  # a bad video fails its own item only
            self._finish_error(item, e, timings)
            return None

    def _forward(self, pending: deque[_Work]) -> None:
        """One forward pass over up to `batch_size` clips from the front of `pending`."""
        take: list[tuple[_Work, int, int]] = []
        n = 0
        for w in pending:
            if n >= self.settings.batch_size:
                break
            k = min(w.remaining, self.settings.batch_size - n)
            take.append((w, w.next_clip, w.next_clip + k))
            n += k
        clips = torch.cat([w.decoded.clips[a:b] for w, a, b in take])  # (N, C, T, H, W)
        t0 = time.perf_counter()
        try:
            emb, probs = self.encoder.forward(clips)
        except Exception as e:
            log.exception("forward pass failed on %d clips", n)
            for w, _, _ in take:
                pending.remove(w)
                self._finish_error(w.item, e, w.timings)
            return
        dt = time.perf_counter() - t0
        if self.metrics:
            self.metrics.batch_clips.observe(n)
            self.metrics.forward_seconds.observe(dt)
        i = 0
        for w, a, b in take:
            w.emb.append(emb[i : i + b - a])
            if probs is not None:
                w.probs.append(probs[i : i + b - a])
            w.timings["forward_s"] = round(w.timings.get("forward_s", 0.0) + dt * (b - a) / n, 4)
            w.next_clip = b
            i += b - a
        while pending and pending[0].remaining == 0:
            self._done.put(pending.popleft())

    # stage 4: index + mark done / reply ---------------------------------------------------------
    def _commit(self) -> None:
        while (w := self._done.get()) is not None:
            self._finish(w)

    def _finish(self, w: _Work) -> None:
        vectors = np.concatenate(w.emb).astype(np.float32)
        seg_probs = np.concatenate(w.probs) if w.probs else None
        video_probs = seg_probs.mean(axis=0) if seg_probs is not None else None  # mean of segment probs
        try:
            if isinstance(w.item, IngestJob):
                text_emb = self._metadata_embedding(w.item)
                self.catalog.complete(
                    w.item, w.decoded.segments, vectors, video_probs, self.encoder.class_names,
                    w.decoded.duration, text_emb, {**w.timings},
                )
                self.broker.ack(w.item)
                if self.metrics:
                    self.metrics.jobs_finished.labels("done").inc()
            else:
                self.broker.reply(w.item, InferenceResult(
                    probs=video_probs, vectors=vectors, segments=w.decoded.segments, duration=w.decoded.duration,
                    views=w.decoded.views, boxes=w.decoded.boxes))
        except Exception as e:
            self._finish_error(w.item, e, w.timings)

    def _metadata_embedding(self, job: IngestJob) -> np.ndarray | None:
        if self.encoder.text_encoder is None:
            return None
        text = metadata_text(self.catalog.get_video(job.video_id))
        if not text:
            return None
        sent, _ = self.encoder.embed_text([text])
        return sent[0]

    def _finish_error(self, item: WorkItem, exc: BaseException, timings: dict[str, float]) -> None:
        err = to_service_error(exc)
        if isinstance(item, IngestJob) and isinstance(exc, TRANSIENT_ERRORS):
            # Redis is gone for longer than the client retries: record nothing, let another delivery redo it
            log.warning("job %d not finished (%s); it will be delivered again", item.job_id, exc)
            with contextlib.suppress(Exception):
                self.broker.release(item)
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
