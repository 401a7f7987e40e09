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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer import SegmentIndex
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
