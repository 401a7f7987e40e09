"""The online reindex of a Redis deployment (`POST /v1/admin/reindex` on any gateway): the workers re-embed
every indexed video with the new checkpoint through the job stream, the gateways keep answering from the
current generation, then every gateway switches to the new one. Its state is in Redis, so any process may
be killed and restarted (or replaced) at any point.

Keys under `<prefix>:` (with those of service/backends/redis/generation.py):

    reindex          HASH  id, state (running | switched | failed), checkpoint (its path), checkpoint_sha256,
                           embed_dim, tag (the new checkpoint's short sha), generation, previous (the current
                           tag at the start), previous_name, videos, embedded, video_seconds, started,
                           seconds, error; after the switch: switch_entry, switched_at, labels_written, dropped
    reindex:done     SET   videos in the new generation, with their labels in
    reindex:labels   HASH  video id -> its labels recomputed by the new checkpoint (JSON)
    reindex:failed   HASH  video id -> why it could not be re-embedded
    reindex:driver   the lease of the gateway that drives the reindex (its name; 3 s, renewed)

1. Start (`RedisOnlineReindex.start`, the gateway that got the request, which vetted the checkpoint: an
   allowed directory, service/admin_checkpoint.py): the hash is written with a new id, `state=running`.
2. Drive (one gateway at a time, holding the lease; another takes over within 3 s of its death): every
   indexed video neither done, failed nor queued is queued on the job stream as a reindex job
   (`IngestJob.generation` = the tag, job id = minus the video id; the queueing script skips a video that
   is queued or done, so no video is queued twice whichever gateway drives). Uploads go on being indexed
   into the current generation, and are queued for the new one once indexed.
3. Embed (`RedisReindexJobs`, in every worker): the worker loads the new checkpoint itself from the
   recorded path, vetted like the request's (so workers need the same `admin_checkpoint_dirs`) and its
   sha256 checked against the recorded one; a worker that cannot load it fails the reindex with the reason.
   A result is committed under the catalog lock, unless the video is done already (a job run twice, after
   its worker died, is committed once) or was deleted: with FAISS replicas, the vectors on the new
   generation's own stream (`<prefix>:vectors:<tag>`) and the labels, `done` and the counters in one
   MULTI/EXEC; with Milvus, the rows upserted into the new collection `segments_<tag>`, then that MULTI.
   Meanwhile every gateway fills its own replica of the new generation from that stream (FAISS) or opens
   the new collection (Milvus); searches use the current one.
4. Switch (the driver, under the catalog lock, once every indexed video is done): deletes of videos done
   then deleted, the Milvus alias, then one MULTI/EXEC writes `<prefix>:generation` (the new tag and
   checkpoint) and `state=switched` with the new stream's last entry (`switch_entry`). From that write on,
   every catalog write goes to the new generation (the writers read the generation under the catalog
   lock), and each worker embeds with the new model from its next catalog operation (`SyncedLock`; an
   ordinary job embedded by the old model is released and embedded again). Each gateway switches its
   searches (`Active.swap`) once its replica has applied the stream up to `switch_entry` (FAISS) or at once
   (Milvus), and logs it once. Then the labels go into the store, and the previous generation is dropped
   `SWITCH_GRACE_S` later (its stream or collection by the driver, each replica by its gateway).

A process started after the switch with the old checkpoint is refused (exit 2); a FAISS gateway that was
away during the switch makes the new generation current in its replica at start and fills it from the
stream.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, replace

import numpy as np
import redis

from indexer import SegmentIndex, Span
from model.checkpoint import CheckpointFiles
from service.active import Active, ActiveGeneration, identity_of
from service.admin_checkpoint import CheckpointRefused, vet_for
from service.backends.redis.broker import RedisBroker, worker_name
from service.backends.redis.generation import DeploymentGenerations, vectors_key
from service.backends.redis.streams import RedisVectorLog, VectorFollower, add_entry
from service.backends.store import Label, NotFound
from service.broker import IngestJob
from service.catalog import Catalog, top_labels
from service.errors import ServiceError
from service.generations import CheckpointIdentity, index_generations
from service.reindex import RUNNING, SWITCH_GRACE_S, ReindexError
from service.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.3  # how often every gateway and worker looks at the reindex's state
LEASE_MS = 3000  # the driver's lease: another gateway drives this long after the driver died

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _s(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class ReindexState:
    """The reindex's keys in Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.key = f"{prefix}:reindex"
        self.done = f"{prefix}:reindex:done"
        self.labels = f"{prefix}:reindex:labels"
        self.failed = f"{prefix}:reindex:failed"
        self.driver = f"{prefix}:reindex:driver"

    def read(self) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in self.r.hgetall(self.key).items()}

    def status(self) -> dict:
        """What `GET /v1/admin/reindex` answers."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.key)
            pipe.scard(self.done)
            pipe.hlen(self.failed)
            raw, done, failed = pipe.execute()
        rec = {_s(k): _s(v) for k, v in raw.items()}
        if not rec:
            return {"state": "idle", "checkpoint": None, "generation": None, "videos": 0, "done": 0, "embedded": 0,
                    "failed": 0, "video_seconds": 0.0, "seconds": 0.0, "error": None}
        seconds = float(rec["seconds"]) if rec.get("seconds") else time.time() - float(rec.get("started") or 0)
        return {"state": rec["state"], "checkpoint": rec.get("checkpoint") or None,
                "generation": rec.get("generation") or None, "videos": int(rec.get("videos") or 0),
                "done": int(done), "embedded": int(rec.get("embedded") or 0), "failed": int(failed),
                "video_seconds": round(float(rec.get("video_seconds") or 0.0), 3), "seconds": round(seconds, 3),
                "error": rec.get("error") or None}

    def fail(self, rec_id: str, message: str) -> bool:
        """Mark the reindex `rec_id` failed (if it still runs); whether it was."""
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key)
                state, current_id, started = pipe.hmget(self.key, "state", "id", "started")
                if _s(state) != "running" or _s(current_id) != rec_id:
                    return False
                pipe.multi()
                pipe.hset(self.key, mapping={"state": "failed", "error": message,
                                             "seconds": time.time() - float(_s(started) or 0)})
                pipe.execute()
            except redis.WatchError:
                return False
        log.error("the online reindex failed: %s", message)
        return True


def vet_recorded(settings: Settings, path: str, sha256: str) -> CheckpointFiles:
    """The checkpoint a reindex recorded, vetted as a request's (an allowed directory, regular files,
    bounded sizes) and read once; `CheckpointRefused` also when its weights are not the recorded ones."""
    files = vet_for(settings, path)
    if files.sha256 != sha256:
        raise CheckpointRefused("its weights changed since the reindex started (another sha256)")
    return files


def _labels_json(labels: list[Label]) -> str:
    return json.dumps([[lb.name, lb.prob] for lb in labels])


class GenerationIndexes:
    """This process's handles on the deployment's Milvus generations, by tag, opened when first asked for
    (a write after the switch, the reindex's new collection); the one it started on is given."""

    def __init__(self, start_tag: str, start_index: SegmentIndex, open_tag: Callable[[str], SegmentIndex]) -> None:
        self._open = open_tag
        self._indexes: dict[str, SegmentIndex] = {start_tag: start_index}
        self._lock = threading.Lock()

    def get(self, tag: str) -> SegmentIndex:
        with self._lock:
            index = self._indexes.get(tag)
            if index is None:
                index = self._indexes[tag] = self._open(tag)
            return index

    def retire(self, tag: str) -> None:
        with self._lock:
            index = self._indexes.pop(tag, None)
        if index is not None:
            index.close()

    def close(self) -> None:
        with self._lock:
            indexes, self._indexes = list(self._indexes.values()), {}
        for index in indexes:
            index.close()


@dataclass
class Target:
    """The new generation as this process holds it: its id, tag, and the generation it serves."""

    reindex_id: str
    tag: str
    generation: ActiveGeneration
    follower: VectorFollower | None = None  # a FAISS gateway's replica of it, fed from its stream


# the two ways vectors live: each gateway's FAISS replica fed by streams, or one Milvus ----------------------

class StreamGenerations:
    """FAISS replicas in the gateways; a generation's vectors are on its own stream."""

    def __init__(self, settings: Settings, client: redis.Redis, writer: RedisVectorLog | None = None,
                 main: VectorFollower | None = None) -> None:
        self.settings, self.r, self.prefix = settings, client, settings.redis_prefix
        self.writer, self.main = writer, main

    def name(self, tag: str) -> str:
        return f"vectors:{tag}"

    # the driver's part (the deployment's)
    def prepare(self, rec: dict[str, str], identity: CheckpointIdentity) -> None:
        """Nothing shared to create: the stream starts with its first entry."""

    def switch(self, rec: dict[str, str], gone: set[int]) -> str:
        key = vectors_key(self.prefix, rec["tag"])
        for vid in sorted(gone):  # done, then deleted (a delete during the reindex went to both already)
            self.r.xadd(key, {"op": "delete", "video_id": vid})
        last = self.r.xrevrange(key, count=1)
        return last[0][0].decode() if last else ""

    def drop(self, rec: dict[str, str]) -> None:
        self.r.delete(vectors_key(self.prefix, rec["previous"]))

    def abandon(self, rec: dict[str, str]) -> None:
        self.r.delete(vectors_key(self.prefix, rec["tag"]))

    def write(self, tag: str, video_id: int, segments: list[Span], vectors: np.ndarray, dim: int, pipe) -> None:
        """A worker's commit of a re-embedded video: its add entry, in the MULTI of its labels and `done`."""
        pipe.xadd(vectors_key(self.prefix, tag), add_entry(video_id, segments, vectors, dim))

    # this process's part
    def open_target(self, rec: dict[str, str], identity: CheckpointIdentity, gateway: bool) -> tuple[str, SegmentIndex | None, VectorFollower | None]:
        if not gateway:
            return self.name(rec["tag"]), None, None
        gens = index_generations(self.settings, identity.embed_dim)
        try:
            name = gens.name_for(rec["tag"])
            if gens.exists(name) and gens.metadata(name).get("reindex_id") != rec["id"]:
                gens.drop(name)  # left by an earlier attempt that failed: its stream is gone
            previous = gens.current()
            index = gens.open(name)
        finally:
            gens.close()
        index.set_metadata({**identity.as_metadata(), "previous": previous, "reindex_id": rec["id"]})
        follower = VectorFollower(self.r, self.prefix, index, tag=rec["tag"])
        follower.start()
        if self.writer is not None:
            self.writer.followers.append(follower)
        return name, index, follower

    def caught_up(self, target: Target, entry: str) -> bool:
        return not entry or target.follower is None or target.follower.applied(entry)

    def adopt(self, target: Target) -> None:
        """The replica's pointer, then the gateway's follower goes on with the new stream."""
        gens = index_generations(self.settings, target.generation.embed_dim)
        try:
            gens.switch(target.generation.generation)
        finally:
            gens.close()
        target.follower.stop()
        if self.writer is not None:
            self.writer.followers.remove(target.follower)
        if self.main is not None:
            self.main.follow(target.follower)

    def retire(self, old: ActiveGeneration, tag: str) -> None:
        old.index.close()
        gens = index_generations(self.settings, old.embed_dim)
        try:
            if old.generation and old.generation != gens.current() and gens.exists(old.generation):
                gens.drop(old.generation)
                log.info("dropped this replica's previous generation %s", old.generation)
        finally:
            gens.close()

    def close_target(self, target: Target, drop: bool) -> None:
        if target.follower is not None:
            target.follower.stop()
            if self.writer is not None and target.follower in self.writer.followers:
                self.writer.followers.remove(target.follower)
        if target.generation.index is not None:
            target.generation.index.close()
            if drop:
                gens = index_generations(self.settings, target.generation.embed_dim)
                try:
                    gens.drop(target.generation.generation)
                finally:
                    gens.close()


class MilvusGenerations:
    """One Milvus: the new generation is the collection `segments_<tag>`, behind the alias after the switch."""

    def __init__(self, settings: Settings, indexes: GenerationIndexes) -> None:
        self.settings = settings
        self.indexes = indexes

    def name(self, tag: str) -> str:
        gens = index_generations(self.settings, 1)
        try:
            return gens.name_for(tag)
        finally:
            gens.close()

    def prepare(self, rec: dict[str, str], identity: CheckpointIdentity) -> None:
        self.indexes.get(rec["tag"]).set_metadata({**identity.as_metadata(), "previous": rec["previous_name"],
                                                  "reindex_id": rec["id"]})

    def switch(self, rec: dict[str, str], gone: set[int]) -> str:
        index = self.indexes.get(rec["tag"])
        for vid in sorted(gone):
            index.delete_video(vid)
        gens = index_generations(self.settings, int(rec["embed_dim"]))
        try:
            gens.switch(rec["generation"])
        finally:
            gens.close()
        return ""

    def drop(self, rec: dict[str, str]) -> None:
        self.indexes.retire(rec["previous"])
        gens = index_generations(self.settings, int(rec["embed_dim"]))
        try:
            if rec["previous_name"] != gens.current():
                gens.drop(rec["previous_name"])
        finally:
            gens.close()

    def abandon(self, rec: dict[str, str]) -> None:
        self.indexes.retire(rec["tag"])
        gens = index_generations(self.settings, int(rec["embed_dim"]))
        try:
            if gens.current() != rec["generation"]:
                gens.drop(rec["generation"])
        finally:
            gens.close()

    def write(self, tag: str, video_id: int, segments: list[Span], vectors: np.ndarray, dim: int, pipe) -> None:
        self.indexes.get(tag).add_video(video_id, segments, vectors)  # an upsert: a re-run writes the same rows

    def open_target(self, rec: dict[str, str], identity: CheckpointIdentity, gateway: bool) -> tuple[str, SegmentIndex | None, VectorFollower | None]:
        return rec["generation"], self.indexes.get(rec["tag"]), None

    def caught_up(self, target: Target, entry: str) -> bool:
        return True  # one Milvus: what is in it is visible to every gateway

    def adopt(self, target: Target) -> None:
        """Nothing here: the driver moved the alias."""

    def retire(self, old: ActiveGeneration, tag: str) -> None:
        self.indexes.retire(tag)

    def close_target(self, target: Target, drop: bool) -> None:
        self.indexes.retire(target.tag)


Generations = StreamGenerations | MilvusGenerations


# the gateway's side: the route, the driver, and following the switch --------------------------------------

class RedisOnlineReindex:
    """In every gateway: `start` and `status` for the admin routes; a thread that drives the reindex while
    this gateway holds the lease, fills (FAISS) and then switches this gateway's generation."""

    def __init__(self, settings: Settings, client: redis.Redis, catalog: Catalog, broker: RedisBroker,
                 active: Active, generations: Generations, on_switch: Sequence[Callable[[], None]] = ()) -> None:
        self.settings = settings
        self.r = client
        self.catalog = catalog
        self.broker = broker
        self.active = active
        self.gens = generations
        self.on_switch = tuple(on_switch)
        self.state = ReindexState(client, settings.redis_prefix)
        self.deployment = DeploymentGenerations(client, settings.redis_prefix)
        self.name = worker_name()
        self.tag = self.deployment.current_tag()  # the generation this gateway serves
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._target: Target | None = None
        self._retiring: list[tuple[float, ActiveGeneration, str]] = []
        self._driving = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drca-reindex", daemon=True)

    # the routes ---------------------------------------------------------------------------------------
    def status(self) -> dict:
        return self.state.status()

    def answer(self, identity: CheckpointIdentity) -> dict | None:
        """What a request for the checkpoint `identity` gets without anything being started or read (as
        `service.reindex.OnlineReindex.answer`): the progress (or result) of the reindex to it, `ReindexError`
        when another runs, the previous one still retires its old generation, or the index is made by it
        already; None when a reindex to it is to be started. The messages name no path and no sha256."""
        rec = self.state.read()
        return self._answer(rec, identity)

    def _answer(self, rec: dict, identity: CheckpointIdentity) -> dict | None:
        state, same = rec.get("state"), rec.get("checkpoint_sha256") == identity.sha256
        if same and state in ("running", "switched"):
            return self.state.status()
        if state == "running":
            raise ReindexError(RUNNING)
        if state == "switched" and rec.get("dropped") != "1":
            raise ReindexError("the previous reindex is still retiring its old generation; try again in a "
                               f"few seconds ({SWITCH_GRACE_S:g} s after its switch)")
        _, current = self.deployment.current()
        current_sha = current.sha256 if current is not None else self.active.current.checkpoint.sha256
        if current_sha == identity.sha256:
            raise ReindexError("the index is already made by this checkpoint")
        return None

    def start(self, files: CheckpointFiles) -> dict:
        """Begin a reindex to `files` (vetted by the route), or answer the progress (or result) of the one
        to the same checkpoint; `ReindexError` when another runs or the index is made by it already."""
        identity = identity_of(files)
        with self.catalog.lock:
            rec = self.state.read()
            if (status := self._answer(rec, identity)) is not None:
                return status
            tag, _ = self.deployment.current()
            new_tag = identity.short
            fields = {"id": uuid.uuid4().hex, "state": "running", "checkpoint": str(files.path),
                      **identity.as_metadata(), "tag": new_tag, "generation": self.gens.name(new_tag),
                      "previous": tag, "previous_name": self.active.current.generation or "", "videos": 0,
                      "embedded": 0, "video_seconds": 0.0, "started": time.time()}
            with self.r.pipeline(transaction=True) as pipe:
                pipe.delete(self.state.key, self.state.done, self.state.labels, self.state.failed)
                pipe.hset(self.state.key, mapping=fields)
                pipe.execute()
        log.info("online reindex %s started: checkpoint %s into generation %s", fields["id"], identity.describe(),
                 fields["generation"])
        return self.state.status()

    # the thread -------------------------------------------------------------------------------------------
    def resume(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)
        with suppress(redis.RedisError):
            self._release(keys=[self.state.driver], args=[self.name])
        if self._target is not None and self._target.tag != self.tag:
            self.gens.close_target(self._target, drop=False)
        for _, old, tag in self._retiring:
            self.gens.retire(old, tag)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._step()
            except Exception:
                log.exception("online reindex step failed; retrying")

    def _step(self) -> None:
        rec = self.state.read()
        state = rec.get("state")
        if state in ("running", "switched") and rec["tag"] != self.tag:
            self._follow(rec)
        elif state == "failed" and self._target is not None and self._target.reindex_id == rec["id"]:
            self.gens.close_target(self._target, drop=True)
            self._target = None
        self._retire_due()
        if state in ("running", "switched") and self._lease():
            if state == "running":
                self._drive(rec)
            else:
                self._finish(rec)
        elif self._driving:
            self._driving = False
            self._release(keys=[self.state.driver], args=[self.name])

    def _lease(self) -> bool:
        if self.r.set(self.state.driver, self.name, nx=True, px=LEASE_MS):
            log.info("this gateway (%s) drives the online reindex", self.name)
            self._driving = True
            return True
        self._driving = bool(self._renew(keys=[self.state.driver], args=[self.name, LEASE_MS]))
        return self._driving

    # this gateway's generation ---------------------------------------------------------------------
    def _follow(self, rec: dict[str, str]) -> None:
        if self._target is None or self._target.reindex_id != rec["id"]:
            if rec.get("prepared") != "1":
                return  # the driver has not created it yet
            if self._target is not None:
                self.gens.close_target(self._target, drop=False)
                self._target = None
            identity = CheckpointIdentity.from_metadata(rec)
            try:
                files = vet_recorded(self.settings, rec["checkpoint"], rec["checkpoint_sha256"])
            except CheckpointRefused as e:
                self.state.fail(rec["id"], f"gateway {self.name} cannot read the new checkpoint: {e}")
                return
            name, index, follower = self.gens.open_target(rec, identity, gateway=True)
            self._target = Target(rec["id"], rec["tag"], ActiveGeneration.of(files, name, index, encoder=None),
                                  follower)
            log.info("this gateway follows the new generation %s while the reindex runs", name)
        if rec["state"] == "switched" and self.gens.caught_up(self._target, rec.get("switch_entry", "")):
            self._adopt()

    def _adopt(self) -> None:
        target = self._target
        self.gens.adopt(target)
        old, old_tag = self.active.swap(target.generation), self.tag
        self.tag = target.tag
        self.catalog.reset_text_table()
        for callback in self.on_switch:
            callback()
        self._retiring.append((time.monotonic() + SWITCH_GRACE_S, old, old_tag))
        log.info("this gateway serves generation %s (%s) from now on", target.generation.generation,
                 target.generation.checkpoint.describe())

    def _retire_due(self) -> None:
        now = time.monotonic()
        due = [r for r in self._retiring if r[0] <= now]
        self._retiring = [r for r in self._retiring if r[0] > now]
        for _, old, tag in due:  # searches that began on it have finished
            self.gens.retire(old, tag)

    # the driver ----------------------------------------------------------------------------------------
    def _drive(self, rec: dict[str, str]) -> None:
        if rec.get("prepared") != "1":
            self.gens.prepare(rec, CheckpointIdentity.from_metadata(rec))
            self.r.hset(self.state.key, "prepared", 1)
        queued = self.broker.queued_reindex_videos()  # read before `done`: a job acked meanwhile is done
        done = {int(v) for v in self.r.smembers(self.state.done)}
        failed = {int(k): _s(v) for k, v in self.r.hgetall(self.state.failed).items()}
        indexed = {v.video_id: v for v in self.catalog.videos("indexed")}
        self.r.hset(self.state.key, "videos", len(indexed))
        if failed and not queued:
            listed = "; ".join(f"video {v}: {why}" for v, why in list(failed.items())[:5])
            if self.state.fail(rec["id"], f"{len(failed)} videos could not be re-embedded ({listed}); nothing was "
                                          "switched: fix or delete them and start the reindex again"):
                self.gens.abandon(rec)
            return
        todo = [v for vid, v in indexed.items() if vid not in done and vid not in queued and vid not in failed]
        for v in todo:
            job = IngestJob(-v.video_id, v.video_id, str(v.extra["path"]), generation=rec["tag"])
            self.broker.enqueue_reindex(job, self.state.done)
        if not todo and not queued and not failed:
            self._switch(rec)

    def _switch(self, rec: dict[str, str]) -> None:
        with self.catalog.lock:
            indexed = {v.video_id for v in self.catalog.videos("indexed")}
            done = {int(v) for v in self.r.smembers(self.state.done)}
            now_rec = self.state.read()
            if now_rec.get("id") != rec["id"] or now_rec.get("state") != "running":
                return  # switched (or failed) already: by another gateway that took the lease meanwhile
            if not indexed <= done:
                return  # an upload was indexed meanwhile: it is queued by the next step
            entry = self.gens.switch(rec, done - indexed)
            identity = CheckpointIdentity.from_metadata(rec)
            now = time.time()
            with self.r.pipeline(transaction=True) as pipe:
                pipe.hset(self.deployment.key, mapping={"tag": rec["tag"], "name": rec["generation"],
                                                        **identity.as_metadata()})
                pipe.hset(self.state.key, mapping={"state": "switched", "switch_entry": entry, "switched_at": now,
                                                   "seconds": now - float(rec["started"])})
                pipe.execute()
            embedded = self.r.hget(self.state.key, "embedded")
            log.info("switched the deployment to generation %s (%s): %d videos, %s embedded", rec["generation"],
                     identity.describe(), len(indexed), _s(embedded))
            self._write_labels()

    def _write_labels(self) -> None:
        """The recomputed labels into the store (idempotent; under the catalog lock), then forgotten."""
        raw = self.r.hgetall(self.state.labels)
        labels = {int(k): [Label(n, p) for n, p in json.loads(v)] for k, v in raw.items()}
        self.catalog.relabel(labels)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(self.state.labels)
            pipe.hset(self.state.key, "labels_written", 1)
            pipe.execute()
        log.info("labels of %d videos from the new generation written to the store", len(labels))

    def _finish(self, rec: dict[str, str]) -> None:
        """After the switch (resumed by whichever gateway drives): the labels, then the old generation."""
        if rec.get("labels_written") != "1":
            with self.catalog.lock:
                self._write_labels()
        if rec.get("dropped") != "1" and time.time() - float(rec["switched_at"]) >= SWITCH_GRACE_S:
            self.gens.drop(rec)
            self.r.hset(self.state.key, "dropped", 1)
            log.info("dropped the previous generation %s", rec.get("previous_name") or rec.get("previous") or "(first)")


# the worker's side --------------------------------------------------------------------------------------

class _CannotLoad(Exception):
    """A worker cannot load the reindex's checkpoint (refused, or its weights do not load)."""


class SyncedLock:
    """A worker's catalog lock: once held, the worker embeds with the deployment's current model (`sync`);
    when the deployment switched to a checkpoint this worker has not loaded, the lock is let go while it
    loads it (`load`), then taken again."""

    def __init__(self, inner: AbstractContextManager, sync: Callable[[], bool], load: Callable[[], None]) -> None:
        self.inner, self.sync, self.load = inner, sync, load

    def __enter__(self) -> SyncedLock:
        while True:
            self.inner.__enter__()
            try:
                if self.sync():
                    return self
            except BaseException as e:
                self.inner.__exit__(type(e), e, e.__traceback__)
                raise
            self.inner.__exit__(None, None, None)
            self.load()

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


class RedisReindexJobs:
    """A worker's side of the online reindex (the `ReindexJobs` of service/encoding/worker.py): the new
    checkpoint's encoder for its jobs, their commits, their failures; and the switch of this worker's
    model (`sync`, called under the catalog lock through `SyncedLock`)."""

    def __init__(self, settings: Settings, client: redis.Redis, active: Active, generations: Generations) -> None:
        self.settings = settings
        self.r = client
        self.active = active
        self.gens = generations
        self.state = ReindexState(client, settings.redis_prefix)
        self.deployment = DeploymentGenerations(client, settings.redis_prefix)
        self.name = worker_name()
        self.catalog: Catalog | None = None  # set by `bind` (the catalog is built with this one's lock)
        self._target: Target | None = None
        self._staged: tuple[str, ActiveGeneration] | None = None  # (reindex id, its model) before its index opens
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drca-reindex-watch", daemon=True)

    def lock(self, inner: AbstractContextManager) -> SyncedLock:
        return SyncedLock(inner, self.sync, self.load_current)

    def bind(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)

    # loading the new checkpoint --------------------------------------------------------------------
    def _load(self, reindex_id: str, tag: str, name: str, path: str, sha256: str) -> Target:
        """The new checkpoint's generation with its encoder (loaded once per reindex); `_CannotLoad` when
        the checkpoint is refused or does not load, another exception (Milvus unreachable) when passing."""
        from service.encoding.encoder import VideoEncoder

        with self._load_lock:
            if self._target is not None and self._target.reindex_id == reindex_id:
                return self._target
            if self._staged is None or self._staged[0] != reindex_id:
                try:
                    files = vet_recorded(self.settings, path, sha256)
                    settings = self.settings.model_copy(update={"checkpoint": files.path, "text_search": False})
                    encoder = VideoEncoder(settings, files)
                except Exception as e:
                    raise _CannotLoad(f"{type(e).__name__}: {e}") from e
                encoder.text_encoder = self.active.current.encoder.text_encoder  # MiniLM: the same for both
                self._staged = (reindex_id, ActiveGeneration.of(files, name, None, encoder))  # no weight bytes kept
            generation = self._staged[1]
            rec = {"id": reindex_id, "tag": tag, "generation": name}
            _, index, _ = self.gens.open_target(rec, generation.checkpoint, gateway=False)
            self._target = Target(reindex_id, tag, replace(generation, index=index))
            log.info("worker %s loaded the new checkpoint %s for the online reindex", self.name,
                     generation.checkpoint.describe())
            return self._target

    def _load_running(self, rec: dict[str, str]) -> Target | None:
        try:
            return self._load(rec["id"], rec["tag"], rec["generation"], rec["checkpoint"], rec["checkpoint_sha256"])
        except _CannotLoad as e:  # refused, or weights that do not load: the reindex cannot go on
            self.state.fail(rec["id"], f"worker {self.name} cannot load the new checkpoint: {e}")
        except Exception as e:  # e.g. Milvus unreachable for a moment: tried again (the job is queued again)
            log.warning("worker %s cannot open the new generation yet (%s: %s); trying again", self.name,
                        type(e).__name__, e)
        return None

    def sync(self) -> bool:
        """Under the catalog lock: embed with the deployment's current checkpoint from now on; False when
        it is not loaded here (`load_current`, then again)."""
        tag, identity = self.deployment.current()
        if identity is None or identity.sha256 == self.active.current.checkpoint.sha256:
            return True
        target = self._target
        if target is None or target.generation.checkpoint.sha256 != identity.sha256:
            return False
        self.active.swap(target.generation)
        log.info("worker %s embeds with %s from now on (generation %s)", self.name, identity.describe(),
                 target.generation.generation)
        return True

    def load_current(self) -> None:
        """The deployment switched to a checkpoint this worker has not loaded: load it (outside the lock)."""
        tag, identity = self.deployment.current()
        rec = self.state.read()
        reindex_id = rec.get("id", "") if rec.get("tag") == tag else f"current-{tag}"
        try:
            name = _s(self.r.hget(self.deployment.key, "name"))
            self._load(reindex_id, tag, name, identity.path, identity.sha256)
        except Exception as e:
            raise ServiceError(f"the deployment serves checkpoint {identity.describe()}, which this worker cannot "
                               f"load: {e}", status=503, code="worker_unavailable") from None

    def _watch(self) -> None:
        """Load the new checkpoint as soon as a reindex runs; follow the switch between jobs."""
        while not self._stop.wait(POLL_S):
            try:
                rec = self.state.read()
                if rec.get("state") == "running" and (self._target is None or self._target.reindex_id != rec["id"]):
                    self._load_running(rec)
                elif rec.get("state") == "switched" and self.catalog is not None and \
                        rec.get("checkpoint_sha256") != self.active.current.checkpoint.sha256:
                    with self.catalog.lock:  # syncs
                        pass
            except Exception:
                log.exception("reindex watch failed; retrying")

    # the worker's calls (service/encoding/worker.py) ------------------------------------------------
    def encoder_for(self, job: IngestJob):
        rec = self.state.read()
        if rec.get("state") != "running" or rec.get("tag") != job.generation:
            return None  # another or a finished reindex's: not wanted (acknowledged)
        target = self._load_running(rec)
        return target.generation.encoder if target is not None else None

    def complete(self, job: IngestJob, segments: list[Span], vectors: np.ndarray, probs: np.ndarray | None,
                 class_names: list[str], duration: float) -> None:
        labels = top_labels(probs, class_names, self.settings.stored_labels) if probs is not None else []
        target = self._target
        with self.catalog.lock:
            rec = self.state.read()
            if rec.get("state") != "running" or rec.get("tag") != job.generation or target is None \
                    or target.reindex_id != rec["id"]:
                log.info("video %d: its reindex job is no longer wanted", job.video_id)
                return
            if self.r.sismember(self.state.done, job.video_id):
                log.info("video %d is in the new generation already; this second run is not committed", job.video_id)
                return
            try:
                self.catalog.get_video(job.video_id)
            except NotFound:
                log.info("video %d was deleted while it was re-embedded", job.video_id)
                return
            with self.r.pipeline(transaction=True) as pipe:
                self.gens.write(rec["tag"], job.video_id, segments, vectors, target.generation.embed_dim, pipe)
                pipe.hset(self.state.labels, job.video_id, _labels_json(labels))
                pipe.sadd(self.state.done, job.video_id)
                pipe.hincrby(self.state.key, "embedded", 1)
                pipe.hincrbyfloat(self.state.key, "video_seconds", duration)
                pipe.execute()
        log.info("video %d: %d segments re-embedded", job.video_id, len(segments))

    def failed(self, job: IngestJob, reason: str) -> None:
        rec = self.state.read()
        if rec.get("state") == "running" and rec.get("tag") == job.generation:
            self.r.hset(self.state.failed, job.video_id, reason)
            log.error("video %d could not be re-embedded: %s", job.video_id, reason)
