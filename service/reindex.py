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
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer import SegmentIndex
from model.checkpoint import CheckpointError, CheckpointFiles, read_config_and_card
from service.active import Active, ActiveGeneration, identity_of
from service.admin_checkpoint import vet_for
from service.backends import backend_class
from service.backends.sqlite import SQLiteMetadataStore
from service.backends.store import NotFound, VideoRecord
from service.broker import Broker, IngestJob
from service.catalog import Catalog, top_labels
from service.generations import (
    SHA256_HEX,
    SHORT,
    CheckpointIdentity,
    DataDirDamaged,
    append_pending_labels,
    finish_switch,
    index_generations,
    pending_labels_path,
    read_pending_labels,
)
from service.settings import Settings
from service.storage import VideoStorage

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


class _NoVectorWrites:
    """The offline reindex's catalog reads records and writes labels; its vectors go into the new
    generation directly, never through the catalog."""

    def add_video(self, video_id, segments, vectors) -> None:
        raise AssertionError("the offline reindex writes no vectors through the catalog")

    def delete_video(self, video_id: int) -> bool:
        raise AssertionError("the offline reindex deletes no vectors through the catalog")


def reindex(settings: Settings, checkpoint: CheckpointFiles, progress: bool = True) -> ReindexSummary:
    """Re-embed the data dir's indexed videos with `checkpoint` (NEW, read once with its weights:
    `read_serving_checkpoint`) into a new generation and switch to it."""
    if not backend_class(settings).workers_in_process:
        raise ReindexError("offline reindex works on the embedded store; a Redis deployment is reindexed "
                           "online: drca reindex --server GATEWAY_URL --checkpoint NEW")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "reindex.lock", "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReindexError(f"another drca reindex is running on {settings.data_dir}") from None
        return _reindex(settings, checkpoint, progress)


def _reindex(settings: Settings, checkpoint: CheckpointFiles, progress: bool) -> ReindexSummary:
    t0 = time.perf_counter()
    new = identity_of(checkpoint)
    gens = index_generations(settings, new.embed_dim)
    store = SQLiteMetadataStore(settings.store_path)
    catalog = Catalog(store, _NoVectorWrites(), VideoStorage(settings.videos_dir))
    try:
        current = gens.current()
        recorded = CheckpointIdentity.from_metadata(gens.metadata(current)) if current else None
        target = gens.name_for(new.short)
        if current == target or (recorded is not None and recorded.sha256 == new.sha256):
            finish_switch(settings, catalog, current)  # a switch interrupted before the labels were written
            _drop_previous(gens, current)
            n = sum(1 for _ in catalog.videos("indexed"))
            log.info("the index generation %s is already made by %s", current, new.describe())
            return ReindexSummary(current, n, 0, time.perf_counter() - t0, 0.0)
        held = _hold(settings, current, recorded)  # refuses while a server runs on the data dir
        try:
            with gens.open(target) as index:
                index.set_metadata({**new.as_metadata(), "previous": current or ""})
                embedded, video_s = _fill(settings, checkpoint, catalog, index, target, progress)
                n = len(index)
        finally:
            if held is not None:
                held.close()
        gens.switch(target)
        log.info("switched the index to generation %s (%s)", target, new.describe())
        finish_switch(settings, catalog, target)
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

    # an index from before identities were recorded: its size is the serving checkpoint's (config only)
    dim = recorded.embed_dim if recorded is not None else read_config_and_card(settings.checkpoint)[0].head.embed_dim
    try:
        return index_generations(settings, dim).open(current)
    except IndexLocked as e:
        raise ReindexError(f"a server is running on {settings.data_dir} ({e}); stop it first") from None


def _drop_previous(gens, current: str) -> None:
    previous = gens.metadata(current).get("previous")
    if previous and previous != current and gens.exists(previous):
        gens.drop(previous)
        log.info("dropped the previous index generation %s", previous)


def _fill(settings: Settings, checkpoint: CheckpointFiles, catalog: Catalog, index: SegmentIndex, target: str,
          progress: bool) -> tuple[int, float]:
    """Embed every indexed video that the new generation lacks; (videos embedded, their seconds)."""
    from service.encoding.encoder import VideoEncoder

    labels_path = pending_labels_path(settings, target)
    done = read_pending_labels(labels_path)
    videos = list(catalog.videos("indexed"))
    wanted = {v.video_id for v in videos}
    for vid in done:  # deleted by a server that ran between two attempts
        if vid not in wanted:
            index.delete_video(vid)
    todo = [v for v in videos if not (v.video_id in done and v.video_id in index)]
    log.info("reindex into %s: %d of %d videos to embed", target, len(todo), len(videos))
    if not todo:
        return 0, 0.0
    encoder = VideoEncoder(settings.model_copy(update={"checkpoint": checkpoint.path, "text_search": False}),
                           checkpoint)
    failed: list[tuple[int, str]] = []
    video_s = 0.0
    with tqdm(total=len(todo), unit="video", desc="reindex", disable=not progress) as bar:
        for v in todo:
            try:
                segments, vectors, probs, duration = _embed(encoder, v, encoder.batch_size)
            except Exception as e:  # a file that no longer decodes: report it, switch nothing
                failed.append((v.video_id, f"{type(e).__name__}: {e}"))
                bar.update(1)
                continue
            labels = top_labels(probs, encoder.class_names, settings.stored_labels) if probs is not None else []
            append_pending_labels(labels_path, v.video_id, labels)  # fsync'd before the add
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
RUNNING = "another reindex is running (GET /v1/admin/reindex says how far it is); wait for it to switch or fail"
_PATH = re.compile(r"(?<![\w.~])(?:/[^\s/:'\"(),;\[\]]+)+/?")  # an absolute path in a message


def without_paths(message: str) -> str:
    """`message` with each absolute path cut to its last component (`/srv/ckpt/x/model.safetensors` ->
    `model.safetensors`): what a client is told of a failure names no directory of the server."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", message)


def read_online_state(settings: Settings) -> dict[str, str] | None:
    """The state file an online reindex left in the data dir (None: none), read when the service is built,
    before it serves: `DataDirDamaged` (`drca serve` exits 2 with it) when it is not what `_prepare` writes."""
    path = settings.data_dir / ONLINE_STATE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise DataDirDamaged(f"{path} cannot be read as an online reindex's state ({str(e)[:120]}); remove "
                             "it to start without resuming that reindex") from None
    fields = ("checkpoint", "generation", "checkpoint_sha256")
    if not isinstance(saved, dict) or not all(isinstance(saved.get(f), str) for f in fields):
        raise DataDirDamaged(f"{path} is not an online reindex's state (a JSON object of the strings "
                             f"{', '.join(fields)}); remove it to start without resuming that reindex")
    return {f: saved[f] for f in fields}


class OnlineReindex:
    """`POST /v1/admin/reindex` (or `drca reindex --server URL --checkpoint NEW`) on the embedded service.

    1. the new checkpoint is read once (its identity, card and the weights its encoder is loaded from);
       the new generation is opened (created) and records it; `data_dir/reindex-online.json` names the
       checkpoint and the generation (a restart resumes from it);
    2. every indexed video the new generation lacks is queued on the service's own broker as a reindex job
       (`IngestJob.generation`); the worker embeds it with the new checkpoint's encoder, and `complete`
       appends its recomputed labels to `reindex-<generation>.labels.jsonl` (fsync'd) and adds its
       segments to the new generation, under the catalog lock. Uploads keep being indexed into the current
       generation with the current model meanwhile, and are queued for the new one too; searches keep using
       the current generation and model;
    3. when every indexed video is in the new generation (checked under the catalog lock, so no upload can
       slip in between), the switch: the generation pointer or alias, then the active generation (index,
       model, card and class names together) replaced in one assignment (`Active.swap`), then the labels
       into the store. The previous generation is dropped `SWITCH_GRACE_S` later. A job the old model
       embedded that commits after the switch is embedded again.

    A kill -9 at any point: the next start (with the old checkpoint before the switch, the new one after)
    resumes from the state file; videos already in the new generation with their labels are not embedded
    again."""

    def __init__(self, settings: Settings, catalog: Catalog, broker: Broker, active: Active,
                 on_switch: Sequence[Callable[[], None]] = (), saved: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.broker = broker
        self.active = active
        self.on_switch = tuple(on_switch)  # called after a switch (the search service forgets its concept bank)
        self.state_path = self.settings.data_dir / ONLINE_STATE
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "idle"  # idle | running | switched | failed
        self.checkpoint: Path | None = None
        self.identity: CheckpointIdentity | None = None
        self._files: CheckpointFiles | None = None  # NEW, read by `start`, until its encoder is loaded
        self.generation: str | None = None  # the new generation's name, from the start of a reindex
        self.target: ActiveGeneration | None = None  # the new generation with its encoder, once prepared
        self.error: str | None = None
        self._saved = saved  # the state file a previous run left (`read_online_state`): `resume` takes it
        self.done: set[int] = set()
        self.in_flight: set[int] = set()
        self.failures: dict[int, str] = {}
        self.total = 0  # indexed videos at the driver's last listing (`_step`)
        self.embedded = 0
        self.video_seconds = 0.0
        self.started = 0.0
        self.seconds = 0.0

    # control ------------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            return {"state": self.state, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                    "generation": self.generation, "videos": self.total,
                    "done": len(self.done), "embedded": self.embedded, "failed": len(self.failures),
                    "video_seconds": round(self.video_seconds, 3),
                    "seconds": round(self.seconds or (time.monotonic() - self.started if self.started else 0.0), 3),
                    "error": self.error}

    def answer(self, identity: CheckpointIdentity) -> dict | None:
        """What a request for the checkpoint `identity` gets without anything being started or read: the
        progress (or result) when it is the reindex running (or switched), `ReindexError` when another one
        runs or the index is already made by it; None when a reindex to it is to be started. The messages
        name neither a server path nor a checkpoint's sha256."""
        with self._lock:
            same = self.identity is not None and self.identity.sha256 == identity.sha256
            already = (self.state == "running" or self.state == "switched") and same  # its progress, or result
            if self.state == "running" and not same:
                raise ReindexError(RUNNING)
            current = CheckpointIdentity.from_metadata(self.active.current.index.metadata())
            if not already and current is not None and current.sha256 == identity.sha256:
                raise ReindexError("the index is already made by this checkpoint")
        return self.status() if already else None

    def start(self, files: CheckpointFiles) -> dict:
        """Begin (or, for the same checkpoint, keep running or retry) a reindex with a checkpoint read once
        with its weights (`service.admin_checkpoint` vetted it); `ReindexError` with the reason when it
        cannot."""
        checkpoint, identity = files.path, identity_of(files)
        if (status := self.answer(identity)) is not None:
            return status
        if files.weights is None:
            raise ValueError("a reindex starts from a checkpoint read with its weights")
        if self._thread is not None:
            self._thread.join()  # the previous reindex's grace period: its old generation is dropped first
        gens = index_generations(self.settings, identity.embed_dim)
        try:
            generation = gens.name_for(identity.short)  # named in the status from the first answer on
        finally:
            gens.close()
        with self._lock:
            if self.state == "running":
                raise ReindexError(RUNNING)
            self.state, self.checkpoint, self.identity, self.error = "running", checkpoint, identity, None
            self._files, self.target, self.generation = files, None, generation
            self.failures, self.in_flight, self.done = {}, set(), set()
            self.total = self.embedded = 0
            self.video_seconds, self.started, self.seconds = 0.0, time.monotonic(), 0.0
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="drca-reindex", daemon=True)
            self._thread.start()
        return self.status()

    def resume(self) -> None:
        """At start: continue the online reindex a previous run left (`read_online_state`), or drop what it
        left when its checkpoint is refused now."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        active = self.active.current
        current = CheckpointIdentity.from_metadata(active.index.metadata())
        if active.generation == saved["generation"] or (
                current is not None and current.sha256 == saved["checkpoint_sha256"]):
            self.state_path.unlink()  # switched before the previous run ended (labels: finish_switch at start)
            return
        try:  # the same checks as a request's checkpoint: a hostile one must not hang or crash the start
            vetted = vet_for(self.settings, saved["checkpoint"])
        except (CheckpointError, OSError) as e:  # refused (or unreadable): never resumed
            log.error("the online reindex in %s is not resumed, and the file is removed: %s", self.state_path, e)
            self._abandon(saved)
            return
        log.info("resuming the online reindex to %s", vetted.path)
        try:
            self.start(vetted)
        except ReindexError as e:
            log.error("the online reindex cannot resume, and %s is removed: %s", self.state_path, e)
            self._abandon(saved)

    def _abandon(self, saved: dict[str, str]) -> None:
        """Remove the state file, and the generation it names when that is the one a reindex to its
        checkpoint fills (never another: the file may have been edited)."""
        self.state_path.unlink(missing_ok=True)
        sha256, generation = saved["checkpoint_sha256"], saved["generation"]
        if not SHA256_HEX.fullmatch(sha256):
            return
        gens = index_generations(self.settings, self.active.current.index.dim)
        try:
            ours = generation == gens.name_for(sha256[:SHORT])
        finally:
            gens.close()
        if ours:
            self._discard(generation, self.active.current.index.dim)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    # the worker's side --------------------------------------------------------------------------
    def _wanted(self, job: IngestJob) -> ActiveGeneration | None:
        target = self.target
        if self.state == "running" and target is not None and job.generation == target.generation:
            return target
        return None

    def encoder_for(self, job: IngestJob):
        """The new checkpoint's encoder for one of this reindex's jobs; None when it is not wanted (another
        or a finished reindex's)."""
        target = self._wanted(job)
        return target.encoder if target is not None else None

    def complete(self, job: IngestJob, segments, vectors: np.ndarray, probs: np.ndarray | None,
                 class_names: list[str], duration: float) -> None:
        """A reindex job's result: labels (fsync'd), then the segments into the new generation."""
        labels = top_labels(probs, class_names, self.settings.stored_labels) if probs is not None else []
        with self.catalog.lock:
            target = self._wanted(job)
            if target is None:
                return
            try:
                self.catalog.get_video(job.video_id)
            except NotFound:  # deleted while it was re-embedded
                self._settle(job.video_id)
                return
            append_pending_labels(pending_labels_path(self.settings, target.generation), job.video_id, labels)
            target.index.add_video(job.video_id, segments, vectors)
            with self._lock:
                self.done.add(job.video_id)
                self.embedded += 1
                self.video_seconds += duration
            log.info("video %d: %d segments re-embedded", job.video_id, len(segments))
        self._settle(job.video_id)

    def failed(self, job: IngestJob, reason: str) -> None:
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
        """Nothing of a failed reindex stays: its new generation is closed and dropped, its labels and the
        state file removed (a restart never tries it again); the status says why, without server paths."""
        with self.catalog.lock, self._lock:  # no `complete` adds to the new generation meanwhile, nor after
            if self.state == "switched":  # failed after the switch (dropping the old generation): it stands
                self.error = without_paths(message)
                return
            target, self.target, self._files = self.target, None, None  # no job of it is wanted any more
        try:
            if target is not None:
                target.index.close()
            self.state_path.unlink(missing_ok=True)
            self._discard(self.generation, self.identity.embed_dim)
        finally:  # "failed" once it is cleared: whoever sees it finds nothing of it left
            with self._lock:
                self.state, self.error = "failed", without_paths(message)
                self.seconds = time.monotonic() - self.started

    def _discard(self, generation: str | None, embed_dim: int) -> None:
        """Drop the generation a reindex was filling (never the current one) and its pending labels."""
        if not generation:
            return
        gens = index_generations(self.settings, embed_dim)
        try:
            current = (self.active.current.generation, gens.current())  # a pointer moved before the swap too
            if generation not in current and gens.exists(generation):
                gens.drop(generation)
                log.info("dropped the index generation %s of the failed reindex", generation)
        except Exception:  # the failure is reported either way; what is left is dropped by the next attempt
            log.exception("cannot drop the index generation %s of the failed reindex", generation)
        finally:
            gens.close()
        pending_labels_path(self.settings, generation).unlink(missing_ok=True)

    def _prepare(self) -> None:
        from indexer import wal
        from service.encoding.encoder import VideoEncoder

        identity, checkpoint, files = self.identity, self.checkpoint, self._files
        gens = index_generations(self.settings, identity.embed_dim)
        try:
            current = self.active.current.generation
            _drop_previous(gens, current)  # left by an earlier reindex that ended before dropping it
            target = self.generation
            index = gens.open(target)
        finally:
            gens.close()
        try:
            index.set_metadata({**identity.as_metadata(), "previous": current or ""})
            wal.write_atomic(self.state_path, json.dumps({"checkpoint": str(checkpoint), "generation": target,
                                                          "checkpoint_sha256": identity.sha256}).encode())
            encoder = VideoEncoder(self.settings.model_copy(update={"checkpoint": checkpoint,
                                                                   "text_search": False}), files)
            encoder.text_encoder = self.active.current.encoder.text_encoder  # MiniLM: not the checkpoint's
            labelled = read_pending_labels(pending_labels_path(self.settings, target))
        except BaseException:
            index.close()  # `_fail` drops it
            raise
        with self._lock:
            self.target = ActiveGeneration.of(files, target, index, encoder)
            self._files = None  # the weights are loaded: their bytes are not kept
            self.done = {vid for vid in labelled if vid in index}  # from an interrupted run
        log.info("online reindex into %s with %s: %d videos already there", target, identity.describe(),
                 len(self.done))

    def _indexed(self) -> dict[int, VideoRecord]:
        return {v.video_id: v for v in self.catalog.videos("indexed")}

    def _step(self) -> bool:
        """Queue what the new generation lacks, or switch when it lacks nothing; True when finished.

        Reading every indexed video's record is O(videos) of Python under the GIL, and the driver wakes
        each time a video settles: so while jobs are in flight and the count of indexed videos has not
        changed since the last listing, nothing can be queued and nothing is read but that count (an
        upload indexed and a video deleted in between are caught at the latest by the listing before the
        switch, which `_switch` repeats under the catalog lock)."""
        count = self.catalog.count_by_status(("indexed",))["indexed"]
        with self._lock:
            if self.in_flight and count == self.total:
                return False
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
            self.broker.enqueue(IngestJob(0, v.video_id, str(v.extra["path"]), generation=self.target.generation))
        if idle and not self.failures:
            return self._switch()
        return False

    def _switch(self) -> bool:
        target = self.target
        with self.catalog.lock:
            indexed = set(self._indexed())
            if not indexed <= self.done:
                return False  # an upload was indexed meanwhile: it is queued by the next step
            for vid in self.done - indexed:  # deleted while the reindex ran
                target.index.delete_video(vid)
            gens = index_generations(self.settings, target.embed_dim)
            try:
                gens.switch(target.generation)
            finally:
                gens.close()
            with self._lock:  # the status says "switched" from the moment searches use the new generation
                old = self.active.swap(target)  # queries, uploads and the worker: the new index and model
                self.state = "switched"
                self.seconds = time.monotonic() - self.started
            finish_switch(self.settings, self.catalog, target.generation)
            self.catalog.reset_text_table()
        for callback in self.on_switch:
            callback()
        self.state_path.unlink(missing_ok=True)
        log.info("switched the index to generation %s (%s): %d videos, %d embedded, %.1f s of video in %.1f s",
                 target.generation, target.checkpoint.describe(), len(indexed), self.embedded, self.video_seconds,
                 self.seconds)
        stopped = self._stop.wait(SWITCH_GRACE_S)  # searches that began on the old generation finish first
        old.index.close()
        if not stopped:
            gens = index_generations(self.settings, old.index.dim)
            try:
                if old.generation and gens.exists(old.generation):
                    gens.drop(old.generation)
            finally:
                gens.close()
            log.info("dropped the previous index generation %s", old.generation)
        return True
