"""The seam between the gateway and encoder workers.

Two kinds of work cross it:

- ingestion jobs (`IngestJob`): fire and forget from the gateway; a worker `take`s one, and `ack`s it
  only after the result is durably indexed (or `fail`s it with a reason, or `release`s it when a
  passing fault, such as Redis being unreachable, kept it from recording either);
- synchronous inference (`InferenceRequest`: classify a file, embed a query video, embed query text):
  the gateway blocks in `infer` until a worker `reply`s or the timeout passes (-> 503).

`InProcessBroker` is the embedded default (a priority queue and futures). `service.backends.redis.broker.RedisBroker`
implements the same `Broker` protocol for the scale-out deployment: every field of the messages is plain data
(strings, ints, numpy arrays), so they serialise without pickling.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from indexer import Span
from service.errors import ServiceError, WorkerUnavailable

if TYPE_CHECKING:
    from service.encoding.plan import VideoPlan


@dataclass(frozen=True)
class IngestJob:
    job_id: int
    video_id: int
    path: str  # the stored upload (content-addressed under the data dir)
    attempt: int = 1
    generation: str | None = None  # a reindex job: embed for this index generation (service/reindex.py)
    plan: VideoPlan | None = None  # the upload's segment plan, made by the route (None: the worker plans)


InferenceKind = Literal["classify", "embed_video", "embed_text"]


@dataclass(frozen=True)
class InferenceRequest:
    kind: InferenceKind
    video_path: str | None = None  # classify / embed_video
    texts: tuple[str, ...] = ()  # embed_text
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class InferenceResult:
    # classify and embed_video
    probs: np.ndarray | None = None  # (C,) video-level class probabilities (mean over segments)
    vectors: np.ndarray | None = None  # (S, E) segment embeddings, L2-normalised
    segments: list[Span] | None = None
    # embed_video: the query view of each row of `vectors` ("original", "mirrored", ...; None: all
    # "original") and each view's region of the frame, [x, y, w, h] in the video's pixels (None: all of it)
    views: list[str] | None = None
    boxes: dict[str, list[int]] | None = None
    duration: float | None = None
    # embed_text
    sentence: np.ndarray | None = None  # (N, 384) MiniLM sentence embeddings, L2-normalised
    projected: np.ndarray | None = None  # (N, E) text head output, or None without a text head
    # the sha256 of the checkpoint that embedded the query (an online reindex may switch models meanwhile:
    # a search uses the generation of that checkpoint, service/search.py); None: not said
    checkpoint: str | None = None


@dataclass
class InferenceTask:
    """What a worker receives for a synchronous request; `reply` through the broker."""

    request: InferenceRequest
    handle: object = None  # broker-specific reply address (a Future in process, a stream id in Redis)


WorkItem = IngestJob | InferenceTask


class Broker(Protocol):
    # gateway side
    def enqueue(self, job: IngestJob) -> None: ...
    def infer(self, request: InferenceRequest, timeout_s: float) -> InferenceResult: ...
    def queue_depth(self) -> int: ...
    def workers_alive(self) -> int:
        """Encoder workers taking work from this broker now."""
        ...
    # worker side
    def register_worker(self) -> None: ...
    def unregister_worker(self) -> None: ...
    def take(self, timeout_s: float, jobs: bool = True) -> WorkItem | None:
        """The next synchronous request, else (if `jobs`) the next ingest job; None after `timeout_s`."""
        ...
    def ack(self, job: IngestJob) -> None: ...
    def fail(self, job: IngestJob, reason: str) -> None: ...
    def release(self, job: IngestJob) -> None: ...
    def reply(self, task: InferenceTask, result: InferenceResult | None, error: ServiceError | None = None) -> None: ...
    def close(self) -> None: ...


class InProcessBroker:
    """Queues + futures for one process. Synchronous requests go before queued ingestion jobs."""

    def __init__(self) -> None:
        self._requests: deque[InferenceTask] = deque()
        self._jobs: deque[IngestJob] = deque()
        self._cond = threading.Condition()
        self._workers = 0
        self._closed = False

    # gateway side ------------------------------------------------------------------------------
    def enqueue(self, job: IngestJob) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()

    def infer(self, request: InferenceRequest, timeout_s: float) -> InferenceResult:
        if self._closed:
            raise WorkerUnavailable("the service is shutting down")
        if self._workers == 0:
            raise WorkerUnavailable("no encoder worker is running")
        fut: Future[InferenceResult] = Future()
        with self._cond:
            self._requests.append(InferenceTask(request, fut))
            self._cond.notify_all()
        try:
            return fut.result(timeout=timeout_s)
        except FutureTimeout:
            fut.cancel()
            raise WorkerUnavailable(f"no encoder worker answered within {timeout_s:g} s") from None

    def queue_depth(self) -> int:
        return len(self._jobs)

    def workers_alive(self) -> int:
        return self._workers

    # worker side -------------------------------------------------------------------------------
    def register_worker(self) -> None:
        with self._cond:
            self._workers += 1

    def unregister_worker(self) -> None:
        with self._cond:
            self._workers -= 1

    def take(self, timeout_s: float, jobs: bool = True) -> WorkItem | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._closed:
                while self._requests:
                    task = self._requests.popleft()
                    if task.handle.set_running_or_notify_cancel():  # type: ignore[union-attr]
                        return task
                    # the caller gave up (timeout): skip it
                if jobs and self._jobs:
                    return self._jobs.popleft()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return None

    def ack(self, job: IngestJob) -> None:
        """Nothing to do in process: the job's state lives in the metadata store."""

    def fail(self, job: IngestJob, reason: str) -> None:
        """Nothing to retry in process: a failed job is final (its state is in the metadata store)."""

    def release(self, job: IngestJob) -> None:
        """The job could not be finished for a passing reason: queue it again."""
        self.enqueue(replace(job, attempt=job.attempt + 1))

    def reply(self, task: InferenceTask, result: InferenceResult | None, error: ServiceError | None = None) -> None:
        fut: Future = task.handle  # type: ignore[assignment]
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
