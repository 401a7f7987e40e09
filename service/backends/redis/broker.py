"""The Redis broker (`DRCA_REDIS_URL` set): the `Broker` protocol across processes and machines.

Keys under `<prefix>:` (docs/architecture.md draws them):

- `jobs`: a Redis Stream of ingest jobs, consumer group `workers`. A worker reads a job with XREADGROUP
  and acks it (XACK + XDEL) only after the catalog has recorded the result durably. While it works, its
  heartbeat keeps its pending jobs fresh (XCLAIM to itself); a job left idle for `reclaim_idle_s` (its
  worker died) is taken over by another worker with XAUTOCLAIM. `jobs:attempts` counts deliveries per
  job: past `max_attempts` the job goes to the `jobs:dead` stream and is marked failed with the reason.
  `jobs:msg` maps a queued job to its stream entry (the gateway re-queues jobs that have none).
- `requests`: a list of synchronous inference requests (classify, query embeddings), each with a
  deadline; the answer comes back on `reply:<request id>` (BLPOP with the timeout -> 503 after it).
  Workers take requests before jobs. A request whose deadline passed is dropped unanswered.
- `workers`: ZSET worker name -> last heartbeat (Unix seconds); a worker is alive if it beat in the last
  three heartbeat intervals. `infer` answers 503 at once when no worker is alive.
- `lock:catalog`: the catalog lock (`RedisLock`), held by every writer of the metadata store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import LockError, ResponseError
from redis.retry import Retry

from indexer import Span
from service.broker import InferenceRequest, InferenceResult, InferenceTask, IngestJob, WorkItem
from service.errors import ServiceError, WorkerUnavailable
from service.settings import Settings

if TYPE_CHECKING:
    from service.encoding.plan import VideoPlan

log = logging.getLogger(__name__)

GROUP = "workers"
_BLOCK_S = 0.5  # longest single blocking call: well under the socket timeout

# One round trip: the stream entry and the job -> entry map, together. `plan`: the upload's segment plan
# (JSON; empty when the job has none).
_ENQUEUE = """
local id = redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[1], 'video_id', ARGV[2], 'path', ARGV[3], 'plan', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
"""

# An online reindex's job (service/backends/redis/reindex.py): queued unless it is queued already or its video
# is already in the new generation (KEYS[3], the reindex's done set), so that no video is queued twice, whichever
# gateway drives the reindex. Its job id is minus the video id.
_ENQUEUE_REINDEX = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[1], 'video_id', ARGV[2], 'path', ARGV[3], 'plan', '',
                      'generation', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
"""


def connect(url: str) -> redis.Redis:
    """A client that rides out a Redis restart: every command is retried for about 20 s."""
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=2, health_check_interval=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=45),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisLock:
    """The catalog lock across processes (SET NX PX with a token, released by token). A holder that dies
    frees it after `timeout_s`; catalog operations take milliseconds."""

    def __init__(self, client: redis.Redis, name: str, timeout_s: float = 10.0) -> None:
        self._lock = client.lock(name, timeout=timeout_s, sleep=0.005, blocking_timeout=60, thread_local=True)

    def __enter__(self) -> RedisLock:
        if not self._lock.acquire():
            raise ServiceError("the catalog is busy (lock not acquired in 60 s)", status=503, code="busy")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._lock.release()
        except LockError as e:  # expired (the holder stalled past the timeout) or lost with Redis' data
            log.warning("catalog lock: %s", e)


# inference results as bytes: a JSON header and the raw arrays ---------------------------------------
_ARRAYS = ("probs", "vectors", "sentence", "projected")


def encode_reply(result: InferenceResult | None, error: ServiceError | None) -> bytes:
    if error is not None:
        header: dict = {"error": {"status": error.status, "code": error.code, "message": error.message}}
        return struct.pack(">I", 0) + json.dumps(header).encode()
    assert result is not None
    header = {"arrays": {}, "duration": result.duration, "views": result.views, "boxes": result.boxes,
              "checkpoint": result.checkpoint,
              "segments": [[s.start, s.end] for s in result.segments] if result.segments is not None else None}
    blobs = []
    for name in _ARRAYS:
        arr = getattr(result, name)
        if arr is not None:
            arr = np.ascontiguousarray(arr)
            header["arrays"][name] = [arr.dtype.str, list(arr.shape)]
            blobs.append(arr.tobytes())
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + b"".join(blobs)


def decode_reply(data: bytes) -> InferenceResult:
    (n,) = struct.unpack(">I", data[:4])
    if n == 0:
        err = json.loads(data[4:])["error"]
        raise ServiceError(err["message"], status=err["status"], code=err["code"])
    header = json.loads(data[4 : 4 + n])
    offset = 4 + n
    out = InferenceResult(duration=header["duration"], views=header.get("views"), boxes=header.get("boxes"),
                          checkpoint=header.get("checkpoint"))
    if header["segments"] is not None:
        out.segments = [Span(a, b) for a, b in header["segments"]]
    for name, (dtype, shape) in header["arrays"].items():
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        setattr(out, name, np.frombuffer(data[offset : offset + size], dtype=dtype).reshape(shape).copy())
        offset += size
    return out


def _plan(entry_id: bytes, raw: bytes | None) -> VideoPlan | None:
    """The job entry's segment plan; None when it has none or it is unreadable (the worker plans then)."""
    if not raw:
        return None
    from service.encoding.plan import VideoPlan

    try:
        return VideoPlan.from_json(raw)
    except (ValueError, KeyError, TypeError) as e:
        log.warning("job entry %s: unreadable segment plan (%s); the worker plans the video itself", entry_id, e)
        return None


class RedisBroker:
    def __init__(self, client: redis.Redis, settings: Settings, name: str | None = None,
                 on_dead_letter: Callable[[IngestJob, str], None] | None = None) -> None:
        self.r = client
        self.settings = settings
        self.name = name or worker_name()
        self.on_dead_letter = on_dead_letter
        p = settings.redis_prefix
        self.k_jobs, self.k_dead, self.k_msg = f"{p}:jobs", f"{p}:jobs:dead", f"{p}:jobs:msg"
        self.k_attempts, self.k_requests, self.k_workers = f"{p}:jobs:attempts", f"{p}:requests", f"{p}:workers"
        self.k_reply = f"{p}:reply:"
        self._enqueue = client.register_script(_ENQUEUE)
        self._enqueue_reindex = client.register_script(_ENQUEUE_REINDEX)
        self._inflight: dict[int, str] = {}  # job id -> stream entry id, for the jobs this worker holds
        self._lock = threading.Lock()
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._next_reclaim = 0.0
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.k_jobs, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # gateway side ------------------------------------------------------------------------------
    def enqueue(self, job: IngestJob) -> None:
        plan = job.plan.to_json() if job.plan is not None else ""
        self._enqueue(keys=[self.k_jobs, self.k_msg], args=[job.job_id, job.video_id, job.path, plan])

    def enqueue_reindex(self, job: IngestJob, done_key: str) -> bool:
        """Queue a reindex job (`job.generation` set, `job.job_id` minus its video id) unless it is queued or
        its video is in `done_key` already; whether it was queued."""
        return bool(self._enqueue_reindex(keys=[self.k_jobs, self.k_msg, done_key],
                                          args=[job.job_id, job.video_id, job.path, job.generation]))

    def queued_reindex_videos(self) -> set[int]:
        """The videos whose reindex job is queued or being worked on."""
        return {-int(j) for j in self.r.hkeys(self.k_msg) if int(j) < 0}

    def has_message(self, job_id: int) -> bool:
        return bool(self.r.hexists(self.k_msg, job_id))

    def workers_alive(self) -> int:
        since = time.time() - 3 * self.settings.worker_heartbeat_s
        return int(self.r.zcount(self.k_workers, since, "+inf"))

    def infer(self, request: InferenceRequest, timeout_s: float) -> InferenceResult:
        if not self.workers_alive():
            raise WorkerUnavailable("no encoder worker is running")
        deadline = time.time() + timeout_s
        payload = json.dumps({"kind": request.kind, "video_path": request.video_path, "texts": list(request.texts),
                              "request_id": request.request_id, "deadline": deadline})
        reply_key = self.k_reply + request.request_id
        self.r.lpush(self.k_requests, payload)
        while (left := deadline - time.time()) > 0:
            got = self.r.blpop([reply_key], timeout=min(left, _BLOCK_S))
            if got is not None:
                return decode_reply(got[1])
        self.r.lrem(self.k_requests, 1, payload)  # nobody took it: do not leave work for a late worker
        raise WorkerUnavailable(f"no encoder worker answered within {timeout_s:g} s")

    def queue_depth(self) -> int:
        return int(self.r.xlen(self.k_jobs))  # acked entries are deleted: what is left waits or is in work

    # worker side -------------------------------------------------------------------------------
    def register_worker(self) -> None:
        self._heartbeat()
        self._beat_stop.clear()
        self._beat = threading.Thread(target=self._beat_loop, name="drca-heartbeat", daemon=True)
        self._beat.start()

    def unregister_worker(self) -> None:
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(10)
        try:
            self.r.zrem(self.k_workers, self.name)
        except redis.RedisError as e:
            log.warning("could not unregister worker %s: %s", self.name, e)

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(self.settings.worker_heartbeat_s):
            try:
                self._heartbeat()
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    def _heartbeat(self) -> None:
        """Say we are alive, and keep the jobs we hold from looking abandoned (reset their idle time)."""
        self.r.zadd(self.k_workers, {self.name: time.time()})
        with self._lock:
            held = set(self._inflight.values())
        if held:
            mine = {e["message_id"].decode() for e in self.r.xpending_range(
                self.k_jobs, GROUP, min="-", max="+", count=10_000, consumername=self.name)}
            ids = sorted(held & mine)
            if ids:
                self.r.xclaim(self.k_jobs, GROUP, self.name, 0, ids, justid=True)

    def take(self, timeout_s: float, jobs: bool = True) -> WorkItem | None:
        try:
            return self._take(timeout_s, jobs)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("the consumer group is gone (Redis lost its data?); creating it again")
            self.ensure_group()
            return None

    def _take(self, timeout_s: float, jobs: bool) -> WorkItem | None:
        deadline = time.monotonic() + timeout_s
        while True:
            item = self._request(self.r.rpop(self.k_requests))
            if item is not None:
                return item
            job = (self._reclaim() or self._read_new()) if jobs else None
            if job is not None:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            got = self.r.brpop([self.k_requests], timeout=min(left, 0.2))
            item = self._request(got[1] if got else None)
            if item is not None:
                return item

    def _request(self, raw: bytes | None) -> InferenceTask | None:
        if raw is None:
            return None
        try:
            d = json.loads(raw)
            req = InferenceRequest(d["kind"], video_path=d["video_path"], texts=tuple(d["texts"]),
                                   request_id=d["request_id"])
        except (ValueError, KeyError, TypeError) as e:
            log.error("dropping a malformed inference request: %s", e)
            return None
        if d["deadline"] <= time.time():
            return None  # the gateway has already answered 503
        return InferenceTask(req, handle=(self.k_reply + req.request_id, d["deadline"]))

    def _job(self, entry_id: bytes, fields: dict) -> IngestJob | None:
        try:
            job_id = int(fields[b"job_id"])
            video_id, path = int(fields[b"video_id"]), fields[b"path"].decode()
        except (KeyError, ValueError) as e:
            log.error("dropping a malformed job entry %s: %s", entry_id, e)
            self.r.xack(self.k_jobs, GROUP, entry_id)
            return None
        attempt = int(self.r.hincrby(self.k_attempts, job_id, 1))
        generation = fields.get(b"generation")
        job = IngestJob(job_id, video_id, path, attempt=attempt, plan=_plan(entry_id, fields.get(b"plan")),
                        generation=generation.decode() if generation is not None else None)
        with self._lock:
            self._inflight[job_id] = entry_id.decode()
        if attempt > self.settings.max_attempts:
            self._dead_letter(job, f"gave up after {attempt - 1} attempts: the worker handling it stopped "
                                   "answering each time (crashed or was killed)")
            return None
        return job

    def _read_new(self) -> IngestJob | None:
        got = self.r.xreadgroup(GROUP, self.name, {self.k_jobs: ">"}, count=1)
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                if fields:
                    return self._job(entry_id, fields)
        return None

    def _reclaim(self) -> IngestJob | None:
        """Take over one job that a silent worker has held for `reclaim_idle_s` (checked twice a second)."""
        now = time.monotonic()
        if now < self._next_reclaim:
            return None
        self._next_reclaim = now + 0.5
        res = self.r.xautoclaim(self.k_jobs, GROUP, self.name, int(self.settings.reclaim_idle_s * 1000),
                                start_id="0-0", count=1)
        for entry_id, fields in res[1]:
            if fields:
                log.info("reclaimed job entry %s from a silent worker", entry_id.decode())
                self._next_reclaim = 0.0  # there may be more
                return self._job(entry_id, fields)
        return None

    def _dead_letter(self, job: IngestJob, reason: str) -> None:
        log.error("job %d of video %d -> dead-letter stream: %s", job.job_id, job.video_id, reason)
        self.r.xadd(self.k_dead, {"job_id": job.job_id, "video_id": job.video_id, "path": job.path,
                                  "attempts": job.attempt - 1, "reason": reason})
        if self.on_dead_letter is not None:
            self.on_dead_letter(job, reason)
        self._done(job)

    def _done(self, job: IngestJob) -> None:
        with self._lock:
            entry = self._inflight.pop(job.job_id, None)
        if entry is None:
            entry = self.r.hget(self.k_msg, job.job_id)
        with self.r.pipeline(transaction=True) as pipe:
            if entry is not None:
                pipe.xack(self.k_jobs, GROUP, entry)
                pipe.xdel(self.k_jobs, entry)
            pipe.hdel(self.k_msg, job.job_id)
            pipe.hdel(self.k_attempts, job.job_id)
            pipe.execute()

    def ack(self, job: IngestJob) -> None:
        self._done(job)

    def fail(self, job: IngestJob, reason: str) -> None:
        """The catalog has recorded the failure (a bad video is final): the entry is done."""
        self._done(job)

    def release(self, job: IngestJob) -> None:
        """Stop refreshing a job that could not be finished (Redis unreachable): another delivery takes it
        after `reclaim_idle_s`, as if this worker had died."""
        with self._lock:
            self._inflight.pop(job.job_id, None)

    def reply(self, task: InferenceTask, result: InferenceResult | None, error: ServiceError | None = None) -> None:
        key, deadline = task.handle  # type: ignore[misc]
        if deadline <= time.time():
            return  # the gateway has given up
        with self.r.pipeline(transaction=True) as pipe:
            pipe.lpush(key, encode_reply(result, error))
            pipe.expire(key, 60)
            pipe.execute()

    def close(self) -> None:
        self._beat_stop.set()
