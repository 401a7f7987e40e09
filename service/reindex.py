"""`drca reindex --checkpoint NEW`, offline: re-embed every indexed video into a new index generation with
a new checkpoint, recompute its labels, and switch to it atomically.

No server may run on the data dir meanwhile: the current generation is held open for the whole run (a
FAISS directory's lock, a Milvus Lite file's lock), so a server cannot start and a running one makes
this refuse. A Milvus server or cluster has no such lock: stop the service first.

Order (why a kill -9 anywhere loses and duplicates nothing; `reindex` only needs re-running):
1. the new generation `<index>.<sha12>` (FAISS) or `segments_<sha12>` (Milvus) is opened or created and
   records the new checkpoint's identity;
2. per indexed video not yet in it: decode and embed with the new checkpoint, append its labels to
   `data_dir/reindex-<generation>.labels.jsonl` (fsync'd), then ONE durable add of all its segments. A
   resumed run skips the videos that have both, so each video is added once;
3. the switch: the generation pointer (FAISS: a file replaced atomically; Milvus: the alias), then the
   labels into the store (`generations.finish_switch`, also run by every service start), then the old
   generation is dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer import SegmentIndex
from service.admin_checkpoint import CheckpointRefused, VettedCheckpoint, vet_for
from service.catalog import top_labels
from service.generations import (
    CheckpointIdentity,
    checkpoint_identity,
    finish_switch,
    index_generations,
    pending_labels_path,
    read_pending_labels,
)
from service.runtime import read_card
from service.settings import Settings
from service.store import VideoRecord
from service.store.sqlite import SQLiteMetadataStore

log = logging.getLogger(__name__)


class ReindexError(Exception):
    """Reindexing cannot start or finish (the message says why and what to do)."""


@dataclass(frozen=True)
class ReindexSummary:
    generation: str  # now current
    videos: int  # indexed videos in it
    embedded: int  # of them, embedded by this run (the rest by an earlier, interrupted one)
    seconds: float
    video_seconds: float  # duration of the videos this run embedded


def indexed_videos(store: SQLiteMetadataStore) -> list[VideoRecord]:
    out, offset = [], 0
    while page := store.list_videos(offset=offset, limit=500, status="indexed"):
        out += page
        offset += len(page)
    return out


def reindex(settings: Settings, checkpoint: Path, progress: bool = True) -> ReindexSummary:
    """Re-embed the data dir's indexed videos with `checkpoint` into a new generation and switch to it."""
    if settings.redis_url:
        raise ReindexError("offline reindex works on the embedded store; a Redis deployment is reindexed "
                           "online (not available yet)")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "reindex.lock", "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReindexError(f"another drca reindex is running on {settings.data_dir}") from None
        return _reindex(settings, checkpoint, progress)


def _reindex(settings: Settings, checkpoint: Path, progress: bool) -> ReindexSummary:
    t0 = time.perf_counter()
    _, new_dim, _ = read_card(checkpoint)
    new = checkpoint_identity(checkpoint, new_dim)
    gens = index_generations(settings, new_dim)
    store = SQLiteMetadataStore(settings.store_path)
    try:
        current = gens.current()
        recorded = CheckpointIdentity.from_metadata(gens.metadata(current)) if current else None
        target = gens.name_for(new.short)
        if current == target or (recorded is not None and recorded.sha256 == new.sha256):
            finish_switch(settings, store, current)  # a switch interrupted before the labels were written
            _drop_previous(gens, current)
            n = len(indexed_videos(store))
            log.info("the index generation %s is already made by %s", current, new.describe())
            return ReindexSummary(current, n, 0, time.perf_counter() - t0, 0.0)
        held = _hold(settings, current, recorded)  # refuses while a server runs on the data dir
        try:
            with gens.open(target) as index:
                index.set_metadata({**new.as_metadata(), "previous": current or ""})
                embedded, video_s = _fill(settings, checkpoint, store, index, target, progress)
                n = len(index)
        finally:
            if held is not None:
                held.close()
        gens.switch(target)
        log.info("switched the index to generation %s (%s)", target, new.describe())
        finish_switch(settings, store, target)
        _drop_previous(gens, target)
        return ReindexSummary(target, n, embedded, time.perf_counter() - t0, video_s)
    finally:
        store.close()
        gens.close()


def _hold(settings: Settings, current: str | None, recorded: CheckpointIdentity | None) -> SegmentIndex | None:
    """Open the current generation for the whole run: `IndexLocked` (a server holds it) stops us here."""
    if current is None:
        return None
    from indexer import IndexLocked

    dim = recorded.embed_dim if recorded is not None else read_card(settings.checkpoint)[1]
    try:
        return index_generations(settings, dim).open(current)
    except IndexLocked as e:
        raise ReindexError(f"a server is running on {settings.data_dir} ({e}); stop it first") from None


def _drop_previous(gens, current: str) -> None:
    previous = gens.metadata(current).get("previous")
    if previous and previous != current and gens.exists(previous):
        gens.drop(previous)
        log.info("dropped the previous index generation %s", previous)


def _fill(settings: Settings, checkpoint: Path, store: SQLiteMetadataStore, index: SegmentIndex, target: str,
          progress: bool) -> tuple[int, float]:
    """Embed every indexed video that the new generation lacks; (videos embedded, their seconds)."""
    from service.encoder import VideoEncoder

    labels_path = pending_labels_path(settings, target)
    done = read_pending_labels(labels_path)
    videos = indexed_videos(store)
    wanted = {v.video_id for v in videos}
    for vid in done:  # deleted by a server that ran between two attempts
        if vid not in wanted:
            index.delete_video(vid)
    todo = [v for v in videos if not (v.video_id in done and v.video_id in index)]
    log.info("reindex into %s: %d of %d videos to embed", target, len(todo), len(videos))
    if not todo:
        return 0, 0.0
    encoder = VideoEncoder(settings.model_copy(update={"checkpoint": checkpoint, "text_search": False}))
    failed: list[tuple[int, str]] = []
    video_s = 0.0
    with open(labels_path, "a") as labels_file, tqdm(total=len(todo), unit="video", desc="reindex",
                                                    disable=not progress) as bar:
        for v in todo:
            try:
                segments, vectors, probs, duration = _embed(encoder, v, settings.batch_size)
            except Exception as e:  # a file that no longer decodes: report it, switch nothing
                failed.append((v.video_id, f"{type(e).__name__}: {e}"))
                bar.update(1)
                continue
            labels = top_labels(probs, encoder.class_names, settings.stored_labels) if probs is not None else []
            labels_file.write(json.dumps({"video_id": v.video_id, "labels": [[lb.name, lb.prob] for lb in labels]})
                              + "\n")
            labels_file.flush()
            os.fsync(labels_file.fileno())  # before the add: a video in the index always has its labels
            index.add_video(v.video_id, segments, vectors)  # all segments, one durable write
            video_s += duration
            log.info("video %d: %d segments re-embedded", v.video_id, len(segments))
            bar.update(1)
    if failed:
        listed = "; ".join(f"video {vid}: {why}" for vid, why in failed[:5])
        raise ReindexError(f"{len(failed)} videos could not be re-embedded ({listed}); nothing was switched, "
                           "fix or delete them and run drca reindex again")
    return len(todo), video_s


def _embed(encoder, video: VideoRecord, batch_size: int):
    """(segments, vectors (S, E), video class probabilities (C,) | None, duration) with the new model."""
    opened = encoder.open(video.extra["path"])
    try:
        embs, probs = [], []
        for a in range(0, len(opened.segments), batch_size):
            e, p = encoder.forward(opened.clips(a, min(a + batch_size, len(opened.segments))))
            embs.append(e)
            if p is not None:
                probs.append(p)
        vectors = np.concatenate(embs).astype(np.float32)
        video_probs = np.concatenate(probs).mean(axis=0) if probs else None  # as the worker: mean of segments
        return opened.segments, vectors, video_probs, opened.duration
    finally:
        opened.close()


# --- online: a running embedded service re-embeds through its own worker and queue -------------------------

ONLINE_STATE = "reindex-online.json"  # in the data dir while an online reindex runs: what to resume
SWITCH_GRACE_S = 5.0  # the previous generation stays open this long after the switch (searches in flight)


class OnlineReindex:
    """`POST /v1/admin/reindex` (or `drca reindex --server URL --checkpoint NEW`) on the embedded service.

    1. the new generation is opened (created) and records the new checkpoint; `data_dir/reindex-online.json`
       names the checkpoint and the generation (a restart resumes from it);
    2. every indexed video the new generation lacks is queued on the service's own broker as a reindex job
       (`IngestJob.generation`); the worker embeds it with the new checkpoint's encoder, and `complete`
       appends its recomputed labels to `reindex-<generation>.labels.jsonl` (fsync'd) and adds its
       segments to the new generation, under the catalog lock. Uploads keep being indexed into the current
       generation with the current model meanwhile, and are queued for the new one too; searches keep using
       the current generation and model;
    3. when every indexed video is in the new generation (checked under the catalog lock, so no upload can
       slip in between), the switch: the generation pointer or alias, then the runtime's index, model and
       class names, then the labels into the store. The previous generation is dropped `SWITCH_GRACE_S`
       later. A job the old model embedded that commits after the switch is embedded again.

    A kill -9 at any point: the next start (with the old checkpoint before the switch, the new one after)
    resumes from the state file; videos already in the new generation with their labels are not embedded
    again."""

    def __init__(self, rt) -> None:
        self.rt = rt
        self.settings: Settings = rt.settings
        self.state_path = self.settings.data_dir / ONLINE_STATE
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "idle"  # idle | running | switched | failed
        self.checkpoint: Path | None = None
        self.identity: CheckpointIdentity | None = None
        self.generation: str | None = None
        self.error: str | None = None
        self.encoder = None  # the new checkpoint's VideoEncoder
        self.index: SegmentIndex | None = None  # the new generation
        self.done: set[int] = set()
        self.in_flight: set[int] = set()
        self.failures: dict[int, str] = {}
        self.total = 0
        self.embedded = 0
        self.video_seconds = 0.0
        self.started = 0.0
        self.seconds = 0.0

    # control ------------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            return {"state": self.state, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                    "generation": self.generation, "videos": self.total, "done": len(self.done),
                    "embedded": self.embedded, "failed": len(self.failures), "video_seconds": round(self.video_seconds, 3),
                    "seconds": round(self.seconds or (time.monotonic() - self.started if self.started else 0.0), 3),
                    "error": self.error}

    def start(self, vetted: VettedCheckpoint) -> dict:
        """Begin (or, for the same checkpoint, keep running or retry) a reindex with a checkpoint that
        `service.admin_checkpoint` accepted; `ReindexError` with the reason when it cannot."""
        checkpoint, identity = vetted.path, vetted.identity
        with self._lock:
            same = self.identity is not None and self.identity.sha256 == identity.sha256
            already = (self.state == "running" or self.state == "switched") and same  # its progress, or result
            if self.state == "running" and not same:
                raise ReindexError(f"a reindex to {self.checkpoint} is running; wait for it to switch")
            current = CheckpointIdentity.from_metadata(self.rt.index.metadata())
            if not already and current is not None and current.sha256 == identity.sha256:
                raise ReindexError(f"the index is already made by {identity.describe()}")
        if already:
            return self.status()
        if self._thread is not None:
            self._thread.join()  # the previous reindex's grace period: its old generation is dropped first
        with self._lock:
            if self.state == "running":
                raise ReindexError(f"a reindex to {self.checkpoint} is running; wait for it to switch")
            self.state, self.checkpoint, self.identity, self.error = "running", checkpoint, identity, None
            self.failures, self.in_flight, self.done = {}, set(), set()
            self.total = self.embedded = 0
            self.video_seconds, self.started, self.seconds = 0.0, time.monotonic(), 0.0
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="drca-reindex", daemon=True)
            self._thread.start()
        return self.status()

    def resume(self) -> None:
        """At start: continue an online reindex a previous run left (its state file)."""
        if not self.state_path.exists():
            return
        try:
            saved = json.loads(self.state_path.read_text())
            checkpoint = saved["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("cannot read %s (%s); the online reindex is not resumed", self.state_path, e)
            return
        current = CheckpointIdentity.from_metadata(self.rt.index.metadata())
        if self.rt.generation == saved.get("generation") or (
                current is not None and current.sha256 == saved.get("checkpoint_sha256")):
            self.state_path.unlink()  # switched before the previous run ended (labels: finish_switch at start)
            return
        try:  # the same checks as a request's checkpoint: a hostile one must not hang or crash the start
            vetted = vet_for(self.settings, checkpoint)
        except CheckpointRefused as e:
            log.error("the online reindex in %s is not resumed, and the file is removed: %s", self.state_path, e)
            self.state_path.unlink(missing_ok=True)
            return
        log.info("resuming the online reindex to %s", vetted.path)
        try:
            self.start(vetted)
        except ReindexError as e:
            log.error("the online reindex cannot resume: %s", e)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    # the worker's side --------------------------------------------------------------------------
    def wants(self, job) -> bool:
        return self.state == "running" and job.generation == self.generation and self.index is not None

    def complete(self, job, segments, vectors: np.ndarray, probs: np.ndarray | None, class_names: list[str],
                 duration: float) -> None:
        """A reindex job's result: labels (fsync'd), then the segments into the new generation."""
        from service.store import NotFound

        labels = top_labels(probs, class_names, self.settings.stored_labels) if probs is not None else []
        with self.rt.catalog.lock:
            if not self.wants(job):
                return
            try:
                self.rt.store.get_video(job.video_id)
            except NotFound:  # deleted while it was re-embedded
                self._settle(job.video_id)
                return
            with open(pending_labels_path(self.settings, self.generation), "a") as f:
                f.write(json.dumps({"video_id": job.video_id, "labels": [[lb.name, lb.prob] for lb in labels]}) + "\n")
                f.flush()
                os.fsync(f.fileno())  # before the add: a video in the new generation always has its labels
            self.index.add_video(job.video_id, segments, vectors)
            with self._lock:
                self.done.add(job.video_id)
                self.embedded += 1
                self.video_seconds += duration
            log.info("video %d: %d segments re-embedded", job.video_id, len(segments))
        self._settle(job.video_id)

    def failed(self, job, reason: str) -> None:
        with self._lock:
            self.failures[job.video_id] = reason
        self._settle(job.video_id)

    def _settle(self, video_id: int) -> None:
        with self._lock:
            self.in_flight.discard(video_id)
        self._wake.set()

    # the driver ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._prepare()
            while not self._stop.is_set():
                if self._step():
                    return
                self._wake.wait(0.5)
                self._wake.clear()
        except Exception as e:
            log.exception("online reindex failed")
            self._fail(f"{type(e).__name__}: {e}")

    def _fail(self, message: str) -> None:
        with self._lock:
            self.state, self.error = "failed", message
            self.seconds = time.monotonic() - self.started
        self.state_path.unlink(missing_ok=True)  # a failed reindex is never resumed by a restart
        if self.rt.worker is not None:
            self.rt.worker.reindex = None

    def _prepare(self) -> None:
        from indexer import wal
        from service.encoder import VideoEncoder

        identity, checkpoint = self.identity, self.checkpoint
        gens = index_generations(self.settings, identity.embed_dim)
        try:
            current = self.rt.generation
            _drop_previous(gens, current)  # left by an earlier reindex that ended before dropping it
            target = gens.name_for(identity.short)
            index = gens.open(target)
        finally:
            gens.close()
        index.set_metadata({**identity.as_metadata(), "previous": current or ""})
        wal.write_atomic(self.state_path, json.dumps({"checkpoint": str(checkpoint), "generation": target,
                                                      "checkpoint_sha256": identity.sha256}).encode())
        encoder = VideoEncoder(self.settings.model_copy(update={"checkpoint": checkpoint, "text_search": False}))
        encoder.text_encoder = self.rt.encoder.text_encoder  # MiniLM does not depend on the checkpoint
        labelled = read_pending_labels(pending_labels_path(self.settings, target))
        with self._lock:
            self.generation, self.index, self.encoder = target, index, encoder
            self.done = {vid for vid in labelled if vid in index}  # from an interrupted run
        self.rt.worker.reindex = self
        log.info("online reindex into %s with %s: %d videos already there", target, identity.describe(),
                 len(self.done))

    def _indexed(self) -> dict[int, VideoRecord]:
        return {v.video_id: v for v in indexed_videos(self.rt.store)}

    def _step(self) -> bool:
        """Queue what the new generation lacks, or switch when it lacks nothing; True when finished."""
        from service.broker import IngestJob

        wanted = self._indexed()
        with self._lock:
            self.total = len(wanted)
            if self.failures and not self.in_flight:
                listed = "; ".join(f"video {v}: {why}" for v, why in list(self.failures.items())[:5])
                message = (f"{len(self.failures)} videos could not be re-embedded ({listed}); nothing was "
                           "switched: fix or delete them and start the reindex again")
            else:
                message = None
            todo = [v for vid, v in wanted.items()
                    if vid not in self.done and vid not in self.in_flight and vid not in self.failures]
            self.in_flight.update(v.video_id for v in todo)
            idle = not todo and not self.in_flight
        if message is not None:
            self._fail(message)
            return True
        for v in todo:
            self.rt.broker.enqueue(IngestJob(0, v.video_id, str(v.extra["path"]), generation=self.generation))
        if idle and not self.failures:
            return self._switch()
        return False

    def _switch(self) -> bool:
        rt = self.rt
        with rt.catalog.lock:
            indexed = set(self._indexed())
            if not indexed <= self.done:
                return False  # an upload was indexed meanwhile: it is queued by the next step
            for vid in self.done - indexed:  # deleted while the reindex ran
                self.index.delete_video(vid)
            gens = index_generations(self.settings, self.identity.embed_dim)
            try:
                gens.switch(self.generation)
            finally:
                gens.close()
            old_index, old_generation = rt.index, rt.generation
            with self._lock:  # the status says "switched" from the moment searches use the new generation
                rt.index = rt.catalog.index = self.index
                self.state = "switched"
                self.seconds = time.monotonic() - self.started
            rt.generation = self.generation
            rt.card, rt.embed_dim, rt.clip_frames = read_card(self.checkpoint)
            rt.class_names = list(rt.card.class_names)
            rt.encoder = rt.worker.encoder = self.encoder  # queries and new uploads: the new model
            rt.worker.reindex = None
            finish_switch(self.settings, rt.store, self.generation)
            rt.catalog.reset_text_table()
        for callback in rt.on_switch:
            callback()
        self.state_path.unlink(missing_ok=True)
        log.info("switched the index to generation %s (%s): %d videos, %d embedded, %.1f s of video in %.1f s",
                 self.generation, self.identity.describe(), len(indexed), self.embedded, self.video_seconds,
                 self.seconds)
        stopped = self._stop.wait(SWITCH_GRACE_S)  # searches that began on the old generation finish first
        old_index.close()
        if not stopped:
            gens = index_generations(self.settings, old_index.dim)
            try:
                if old_generation and gens.exists(old_generation):
                    gens.drop(old_generation)
            finally:
                gens.close()
            log.info("dropped the previous index generation %s", old_generation)
        return True
