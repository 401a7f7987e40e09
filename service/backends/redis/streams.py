"""How vectors reach every gateway replica in the scale-out deployment.

The stream `<prefix>:vectors` in Redis is the durable record of the index: one entry per index write,
`add` (a video's segments and L2-normalised vectors, all of them) or `delete` (a video id). Writers
(workers completing jobs, gateways deleting videos) append with `RedisVectorLog`, under the catalog lock.
Each gateway replica runs a `VectorFollower` that applies the entries in stream order to its own
`VideoIndex` (its own directory: its log and snapshots make restarts fast) and remembers the last applied
entry id in `<index dir>/stream-cursor`, written after the index write is durable. After a crash it
resumes from that cursor; entries applied twice are harmless, because an add replaces the video's
segments (an upsert by video id) and a delete of an absent video does nothing. So every replica ends up
with each video exactly once, in the state the stream's last entry for it says.

Each index generation has its own stream: `<prefix>:vectors` for the first, `<prefix>:vectors:<tag>` for one
an online reindex made (service/backends/redis/generation.py, reindex.py). Writers append to the
deployment's current generation, read under the catalog lock; a gateway's follower moves to the new stream
when the gateway switches (`VectorFollower.follow`).

With the Milvus backend (`DRCA_INDEX=milvus`) there is no replica to feed: Milvus is the one index.
`MilvusChangeLog` is then the catalog's index: a write goes into Milvus first (an upsert by primary key,
so a job taken over from a dead worker writes the same rows again, never more rows), then a short entry
(`add` with the video's segment spans, or `delete`; no vectors) is appended to `<prefix>:changes`. Every
gateway runs a `ChangeFollower` on that stream to keep its text-search table (labels and metadata
embeddings per video: what is not in Milvus) current. The stream is trimmed to about
`change_stream_maxlen` entries; a gateway that finds its cursor trimmed away rebuilds the table from the
store.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from indexer import InvalidVectors, SegmentIndex, Span, VideoIndex
from indexer.index import normalise, spans_array
from service.backends.redis.generation import DeploymentGenerations, vectors_key

log = logging.getLogger(__name__)

CURSOR_FILE = "stream-cursor"


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def add_entry(video_id: int, segments: list[Span], vectors: np.ndarray, dim: int) -> dict:
    """A vector stream's `add` entry: the video's segments and L2-normalised vectors (a bad write fails
    here, never in the replicas)."""
    vecs = normalise(vectors, dim)
    segs = spans_array(segments, len(vecs))
    return {"op": "add", "video_id": int(video_id), "segments": json.dumps(segs.tolist()),
            "vectors": vecs.astype("<f4").tobytes()}


class RedisVectorLog:
    """The catalog's index writes in Redis mode (`add_video`, `delete_video`, like `VideoIndex`).

    Each write goes to the stream of the deployment's current generation, read under the catalog lock
    (service/backends/redis/generation.py); a delete also goes to the generation an online reindex is
    filling. With followers (in a gateway: the current generation's and, during a reindex, the next
    one's), a write returns once this replica has applied it, so the gateway that deleted a video never
    returns it in a search afterwards."""

    def __init__(self, client: redis.Redis, prefix: str, dim: int, follower: VectorFollower | None = None,
                 wait_s: float = 10.0) -> None:
        self.r = client
        self.prefix = prefix
        self.dim = dim  # the first generation's; a later one's is recorded with it
        self.followers: list[VectorFollower] = [follower] if follower is not None else []
        self.wait_s = wait_s
        self.deployment = DeploymentGenerations(client, prefix)

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None:
        tag, identity = self.deployment.current()
        self._append(tag, add_entry(video_id, segments, vectors, identity.embed_dim if identity else self.dim))

    def delete_video(self, video_id: int) -> bool:
        for tag in self.deployment.live_tags():
            self._append(tag, {"op": "delete", "video_id": int(video_id)})
        return True

    def _append(self, tag: str, fields: dict) -> None:
        key = vectors_key(self.prefix, tag)
        entry = self.r.xadd(key, fields).decode()
        for follower in list(self.followers):
            if follower.key == key and not follower.wait_for(entry, self.wait_s):
                log.warning("this replica has not applied %s after %g s (it will)", entry, self.wait_s)


class StreamFollower:
    """A thread that reads one Redis stream from `cursor` on, a batch at a time (`_step`), until stopped;
    a Redis error or a bad batch is logged and retried half a second later."""

    thread_name = "drca-stream-follower"

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.r = client
        self.key = key
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def ready(self) -> bool:
        """This process's view is current enough to serve (`/readyz`)."""
        return self.alive

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except redis.RedisError as e:
                log.warning("%s: %s; retrying", self.key, e)
                self._stop.wait(0.5)
            except Exception:
                log.exception("%s follower error; retrying", self.key)
                self._stop.wait(0.5)

    def _step(self) -> None:
        raise NotImplementedError


class VectorFollower(StreamFollower):
    """Applies `<prefix>:vectors` to this replica's index, from its saved cursor on."""

    thread_name = "drca-vector-follower"

    def __init__(self, client: redis.Redis, prefix: str, index: VideoIndex,
                 on_change: Callable[[int, bool], None] | None = None, tag: str = "") -> None:
        super().__init__(client, vectors_key(prefix, tag))
        self.index = index
        self.on_change = on_change  # (video_id, added) after each applied entry: the text-search table
        self.cursor_path = Path(index.directory) / CURSOR_FILE
        self.cursor = self.cursor_path.read_text().strip() if self.cursor_path.exists() else "0-0"
        self._applied = threading.Condition()
        self._end: tuple[int, int] | None = None  # the stream's last entry when this replica started
        self._target = threading.Lock()  # held by a step: `follow` changes the stream between two steps

    @property
    def ready(self) -> bool:
        return self.alive and self.caught_up.is_set()

    def wait_for(self, entry_id: str, timeout_s: float) -> bool:
        target = _id_tuple(entry_id)
        with self._applied:
            return self._applied.wait_for(lambda: _id_tuple(self.cursor) >= target, timeout_s)

    def applied(self, entry_id: str) -> bool:
        """This replica has applied the stream up to `entry_id` (or further)."""
        with self._applied:
            return _id_tuple(self.cursor) >= _id_tuple(entry_id)

    def follow(self, other: VectorFollower) -> None:
        """Go on with `other`'s stream, index and cursor (an online reindex's next generation, now current;
        `other` is stopped first): this object stays the one the gateway's readiness checks."""
        with self._target, self._applied:
            self.key, self.index, self.cursor_path, self.cursor = other.key, other.index, other.cursor_path, other.cursor
            self._end = None
            self._applied.notify_all()

    def _step(self) -> None:
        with self._target:
            if self._end is None:
                last = self.r.xrevrange(self.key, count=1)
                self._end = _id_tuple(last[0][0].decode()) if last else (0, 0)
            got = self.r.xread({self.key: self.cursor}, count=500, block=500)
            entries = got[0][1] if got else []
            if entries:
                self._apply(entries)
            if not entries or _id_tuple(self.cursor) >= self._end:
                self.caught_up.set()

    def _apply(self, entries: list) -> None:
        adds: list[tuple[int, list[Span], np.ndarray]] = []
        changed: list[tuple[int, bool]] = []

        def flush_adds() -> None:
            if not adds:
                return
            try:
                self.index.add_videos(adds)  # one durable write for the run of adds
            except InvalidVectors:  # only a foreign writer can get here (RedisVectorLog checks): skip it
                for item in adds:
                    try:
                        self.index.add_video(*item)
                    except InvalidVectors as e:
                        log.error("vector stream: video %d has invalid vectors (%s), skipped", item[0], e)
            adds.clear()

        for entry_id, f in entries:
            try:
                op, vid = f[b"op"].decode(), int(f[b"video_id"])
                if op == "add":
                    segs = [Span(a, b) for a, b in json.loads(f[b"segments"])]
                    vecs = np.frombuffer(f[b"vectors"], dtype="<f4").reshape(len(segs), -1)
                    adds.append((vid, segs, vecs))
                    changed.append((vid, True))
                elif op == "delete":
                    flush_adds()
                    self.index.delete_video(vid)
                    changed.append((vid, False))
                else:
                    log.error("vector stream entry %s: unknown op %r, skipped", entry_id, op)
            except (KeyError, ValueError) as e:
                log.error("vector stream entry %s is malformed (%s), skipped", entry_id, e)
        flush_adds()
        last = entries[-1][0].decode()
        tmp = self.cursor_path.with_suffix(".tmp")
        tmp.write_text(last)
        os.replace(tmp, self.cursor_path)  # after the index write: the cursor never runs ahead of it
        with self._applied:
            self.cursor = last
            self._applied.notify_all()
        if self.on_change is not None:
            for vid, added in changed:
                try:
                    self.on_change(vid, added)
                except Exception:
                    log.exception("after applying video %d", vid)


class MilvusChangeLog:
    """The catalog's index writes in Redis mode with Milvus: into Milvus (durable, visible to every
    gateway's searches on return), then announced on `<prefix>:changes` for the gateways' text tables.
    Called under the catalog lock, so the stream's order is the order of the writes. A write goes into the
    deployment's current generation (`indexes(tag)`: this process's handle on it), a delete also into the
    one an online reindex is filling."""

    def __init__(self, client: redis.Redis, prefix: str, index: SegmentIndex, maxlen: int = 100_000,
                 indexes: Callable[[str], SegmentIndex] | None = None) -> None:
        self.r = client
        self.key = f"{prefix}:changes"
        self.index = index  # the generation this process started on
        self.maxlen = maxlen
        self.indexes = indexes
        self.deployment = DeploymentGenerations(client, prefix)

    def _index(self, tag: str) -> SegmentIndex:
        return self.indexes(tag) if self.indexes is not None else self.index

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None:
        self._index(self.deployment.current_tag()).add_video(video_id, segments, vectors)  # an upsert
        segs = spans_array(segments, len(vectors))
        self.r.xadd(self.key, {"op": "add", "video_id": int(video_id), "segments": json.dumps(segs.tolist())},
                    maxlen=self.maxlen, approximate=True)

    def delete_video(self, video_id: int) -> bool:
        current, *targets = self.deployment.live_tags()
        found = self._index(current).delete_video(video_id)
        for tag in targets:
            self._index(tag).delete_video(video_id)
        self.r.xadd(self.key, {"op": "delete", "video_id": int(video_id)}, maxlen=self.maxlen, approximate=True)
        return found


class ChangeFollower(StreamFollower):
    """Follows `<prefix>:changes` from the moment it starts (the text table is built from the store, which
    already holds everything before that) and calls `on_change(video_id, added)` per entry. If the stream
    was trimmed past its cursor, entries were missed: `on_gap()` (the catalog drops its text table, rebuilt
    from the store at the next text query)."""

    thread_name = "drca-change-follower"

    def __init__(self, client: redis.Redis, prefix: str, on_change: Callable[[int, bool], None] | None = None,
                 on_gap: Callable[[], None] | None = None) -> None:
        super().__init__(client, f"{prefix}:changes")
        self.on_change = on_change
        self.on_gap = on_gap
        self.cursor = "0-0"

    def start(self) -> None:
        last = self.r.xrevrange(self.key, count=1)
        self.cursor = last[0][0].decode() if last else "0-0"
        super().start()
        self.caught_up.set()

    def _step(self) -> None:
        got = self.r.xread({self.key: self.cursor}, count=500, block=500)
        entries = got[0][1] if got else []
        if not entries:
            return
        first = self.r.xrange(self.key, count=1)
        if self.cursor != "0-0" and first and _id_tuple(first[0][0].decode()) > _id_tuple(self.cursor):
            log.warning("the change stream was trimmed past this gateway's cursor; rebuilding its "
                        "text-search table from the store")
            if self.on_gap is not None:
                self.on_gap()
        for entry_id, f in entries:
            try:
                vid, added = int(f[b"video_id"]), f[b"op"] == b"add"
            except (KeyError, ValueError) as e:
                log.error("change stream entry %s is malformed (%s), skipped", entry_id, e)
                continue
            if self.on_change is not None:
                try:
                    self.on_change(vid, added)
                except Exception:
                    log.exception("after the change of video %d", vid)
        self.cursor = entries[-1][0].decode()
