"""`RedisMetadataStore`: the `MetadataStore` protocol on Redis, for the scale-out deployment, where
several gateway replicas and workers share one store.

Keys (all under `<prefix>:`), every record one JSON string:

    video:<id>         the video record (without its id)        ids:video, ids:job   id counters (INCR)
    videos             ZSET of every video id (upload order)    videos:<status>      ZSET per status
    by_hash, by_ext    HASH content hash / external id -> id    job:<id>             the job record
    video_jobs:<id>    LIST of the video's job ids

Each method that touches several keys writes them in one MULTI/EXEC, so a crash (of the caller or of
Redis) never leaves half a record. Check-then-write sequences (uniqueness, status transitions) are not
atomic on their own: the service runs them under its catalog lock (`service.backends.redis.broker.RedisLock`),
which every writer holds.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace as _replace

import redis

from service.backends.store import (
    JOB_TRANSITIONS,
    VIDEO_TRANSITIONS,
    DuplicateContent,
    InvalidTransition,
    JobRecord,
    JobStatus,
    Label,
    NotFound,
    VideoRecord,
)


def _video_json(v: VideoRecord) -> str:
    return json.dumps({
        "content_hash": v.content_hash, "external_id": v.external_id, "source_name": v.source_name,
        "duration": v.duration, "labels": [[lb.name, lb.prob] for lb in v.labels], "status": v.status,
        "error": v.error, "created_at": v.created_at, "extra": v.extra,
    })


def _video(video_id: int, raw: bytes | str) -> VideoRecord:
    d = json.loads(raw)
    return VideoRecord(
        video_id=video_id, content_hash=d["content_hash"], external_id=d["external_id"],
        source_name=d["source_name"], duration=d["duration"], labels=[Label(n, p) for n, p in d["labels"]],
        status=d["status"], error=d["error"], created_at=d["created_at"], extra=d["extra"],
    )


def _job_json(j: JobRecord) -> str:
    return json.dumps({"video_id": j.video_id, "status": j.status, "error": j.error,
                       "created_at": j.created_at, "timings": j.timings})


def _job(job_id: int, raw: bytes | str) -> JobRecord:
    d = json.loads(raw)
    return JobRecord(job_id, d["video_id"], d["status"], d["error"], d["created_at"], d["timings"])


class RedisMetadataStore:
    def __init__(self, client: redis.Redis, prefix: str = "drca") -> None:
        self.r = client
        self.p = prefix

    def _k(self, *parts: object) -> str:
        return ":".join([self.p, *map(str, parts)])

    # videos ---------------------------------------------------------------------------------------
    def create_video(self, content_hash, *, external_id=None, source_name=None, duration=None,
                     extra=None) -> VideoRecord:
        if len(content_hash) != 64 or any(ch not in "0123456789abcdef" for ch in content_hash):
            raise ValueError("content_hash must be a lowercase sha256 hex digest")
        if self.find_by_hash(content_hash) is not None:
            raise DuplicateContent(f"a video with content hash {content_hash} exists")
        if external_id is not None and self.find_by_external_id(external_id) is not None:
            raise DuplicateContent(f"a video with external id {external_id!r} exists")
        vid = int(self.r.incr(self._k("ids", "video")))
        v = VideoRecord(vid, content_hash, external_id, source_name, duration, [], "pending", None, time.time(),
                        extra or {})
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self._k("video", vid), _video_json(v))
            pipe.zadd(self._k("videos"), {vid: vid})
            pipe.zadd(self._k("videos", "pending"), {vid: vid})
            pipe.hset(self._k("by_hash"), content_hash, vid)
            if external_id is not None:
                pipe.hset(self._k("by_ext"), external_id, vid)
            pipe.execute()
        return v

    def get_video(self, video_id: int) -> VideoRecord:
        raw = self.r.get(self._k("video", video_id))
        if raw is None:
            raise NotFound(f"no video {video_id}")
        return _video(int(video_id), raw)

    def _find(self, field: str, value: str) -> VideoRecord | None:
        vid = self.r.hget(self._k(field), value)
        if vid is None:
            return None
        try:
            return self.get_video(int(vid))
        except NotFound:  # a pointer left by a delete that raced a crash: treat as absent
            return None

    def find_by_hash(self, content_hash: str) -> VideoRecord | None:
        return self._find("by_hash", content_hash)

    def find_by_external_id(self, external_id: str) -> VideoRecord | None:
        return self._find("by_ext", external_id)

    def list_videos(self, *, offset=0, limit=50, status=None) -> list[VideoRecord]:
        if offset < 0 or not 0 < limit <= 1000:
            raise ValueError("need offset >= 0 and 0 < limit <= 1000")
        key = self._k("videos", status) if status else self._k("videos")
        ids = [int(x) for x in self.r.zrange(key, offset, offset + limit - 1)]
        if not ids:
            return []
        raws = self.r.mget([self._k("video", i) for i in ids])
        return [_video(i, raw) for i, raw in zip(ids, raws, strict=True) if raw is not None]

    def count_videos(self, status=None) -> int:
        return int(self.r.zcard(self._k("videos", status) if status else self._k("videos")))

    def _put_video(self, old: VideoRecord, new: VideoRecord) -> VideoRecord:
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self._k("video", new.video_id), _video_json(new))
            if old.status != new.status:
                pipe.zrem(self._k("videos", old.status), new.video_id)
                pipe.zadd(self._k("videos", new.status), {new.video_id: new.video_id})
            pipe.execute()
        return new

    def set_status(self, video_id, status, error=None) -> VideoRecord:
        cur = self.get_video(video_id)
        if status not in VIDEO_TRANSITIONS[cur.status]:
            raise InvalidTransition(f"video {video_id}: {cur.status} -> {status} is not allowed")
        return self._put_video(cur, _replace(cur, status=status, error=error))

    def update_video(self, video_id, *, duration=None, labels=None, extra=None) -> VideoRecord:
        cur = self.get_video(video_id)
        new = _replace(cur, duration=cur.duration if duration is None else duration,
                       labels=cur.labels if labels is None else list(labels), extra={**cur.extra, **(extra or {})})
        return self._put_video(cur, new)

    def delete_video(self, video_id: int) -> None:
        cur = self.get_video(video_id)
        job_ids = self.r.lrange(self._k("video_jobs", video_id), 0, -1)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(self._k("video", video_id), self._k("video_jobs", video_id),
                        *[self._k("job", int(j)) for j in job_ids])
            pipe.zrem(self._k("videos"), video_id)
            pipe.zrem(self._k("videos", cur.status), video_id)
            pipe.hdel(self._k("by_hash"), cur.content_hash)
            if cur.external_id is not None:
                pipe.hdel(self._k("by_ext"), cur.external_id)
            pipe.execute()

    # jobs -----------------------------------------------------------------------------------------
    def create_job(self, video_id: int) -> JobRecord:
        self.get_video(video_id)
        jid = int(self.r.incr(self._k("ids", "job")))
        job = JobRecord(jid, int(video_id), "queued", None, time.time(), {})
        with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self._k("job", jid), _job_json(job))
            pipe.rpush(self._k("video_jobs", video_id), jid)
            pipe.execute()
        return job

    def get_job(self, job_id: int) -> JobRecord:
        raw = self.r.get(self._k("job", job_id))
        if raw is None:
            raise NotFound(f"no job {job_id}")
        return _job(int(job_id), raw)

    def set_job_status(self, job_id, status: JobStatus, error=None, timings=None) -> JobRecord:
        cur = self.get_job(job_id)
        if status not in JOB_TRANSITIONS[cur.status]:
            raise InvalidTransition(f"job {job_id}: {cur.status} -> {status} is not allowed")
        new = JobRecord(cur.job_id, cur.video_id, status, error, cur.created_at, {**cur.timings, **(timings or {})})
        self.r.set(self._k("job", job_id), _job_json(new))
        return new

    def jobs_for_video(self, video_id: int) -> list[JobRecord]:
        ids = [int(j) for j in self.r.lrange(self._k("video_jobs", video_id), 0, -1)]
        if not ids:
            return []
        raws = self.r.mget([self._k("job", j) for j in ids])
        return [_job(j, raw) for j, raw in zip(ids, raws, strict=True) if raw is not None]

    def close(self) -> None:
        """The client belongs to the caller (shared with the broker)."""
