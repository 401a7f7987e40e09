"""`VideoIndex`: per-segment vectors in FAISS, aggregated per video, durable through `indexer.wal`.

Ids: callers own stable int64 video ids. Every segment gets an internal int64 segment id from a
monotonic counter (never reused, so an upsert or an HNSW tombstone can never collide with a live
segment); `_owner[sid] = (video_id, seg_no)` maps FAISS hits back. Segment ids are not persisted: they
are reassigned when the index is rebuilt from the durable state at open.

Search is exact over what the k-NN returns: candidate videos are re-scored with their stored vectors,
and the segment k-NN is expanded (doubled) until no unseen video can beat the k-th returned one (see
docs/indexer.md for the bound). A readers-writer lock guards the state: searches run concurrently with each
other, writes are exclusive, so a search sees a video completely or not at all. Index (re)builds run on a background thread and are swapped in under the lock, with the writes
made during the build replayed onto the new index first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from indexer import faiss_index, wal
from indexer.errors import DamagedIndex, IndexClosed, IndexLocked, InvalidVectors
from indexer.faiss_index import ConcreteKind, IndexConfig

log = logging.getLogger(__name__)

Aggregation = Literal["max", "chamfer"]
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class Span:
    """The time span (seconds) of one stored vector: what a hit points back to."""

    start: float  # seconds
    end: float


@dataclass(frozen=True)
class VideoHit:
    video_id: int
    score: float
    segment: Span  # the matched segment of the indexed video (best pair)
    query_segment: Span | None  # the query segment of that pair (None when the query had none)


@dataclass(frozen=True)
class StoredVideo:
    video_id: int
    segments: list[Span]
    vectors: np.ndarray  # (S, D) float32, L2-normalised


@dataclass(frozen=True)
class IndexStats:
    videos: int
    segments: int
    kind: str  # FAISS: a ConcreteKind; Milvus: its index type
    tombstones: int
    last_seq: int
    rebuilding: bool


@dataclass(frozen=True)
class _Video:
    segments: np.ndarray  # (S, 2) float64
    vectors: np.ndarray  # (S, D) float32 normalised
    sids: np.ndarray  # (S,) int64


def normalise(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != dim or v.shape[0] == 0:
        raise InvalidVectors(f"{what} must have shape (N>0, {dim}), got {tuple(np.shape(vectors))}")
    if not np.issubdtype(v.dtype, np.floating):
        raise InvalidVectors(f"{what} must be floating point, got {v.dtype}")
    v = v.astype(np.float32)
    if not np.isfinite(v).all():
        raise InvalidVectors(f"{what} contain NaN or infinity")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidVectors(f"{what} contain an all-zero vector")
    return np.ascontiguousarray(v / norms)


def spans_array(segments: list[Span], n: int, what: str = "segments") -> np.ndarray:
    if len(segments) != n:
        raise InvalidVectors(f"{len(segments)} {what} for {n} vectors")
    arr = np.array([[s.start, s.end] for s in segments], dtype=np.float64).reshape(n, 2)
    if not np.isfinite(arr).all() or (arr[:, 0] < 0).any() or (arr[:, 1] < arr[:, 0]).any():
        raise InvalidVectors(f"{what} need finite 0 <= start <= end seconds")
    return arr


def read_metadata(directory: Path) -> dict[str, str]:
    """The metadata recorded in an index directory, without opening the index ({} if none); `DamagedIndex`
    when the file is not the JSON object of strings `set_metadata` writes."""
    path = Path(directory) / METADATA_FILE
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise DamagedIndex(f"{path} cannot be read as the index metadata ({str(e)[:120]})") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise DamagedIndex(f"{path} is not the index metadata (a JSON object of strings)")
    return meta


def _check_id(video_id: int) -> int:
    if isinstance(video_id, bool) or not isinstance(video_id, int | np.integer):
        raise InvalidVectors(f"video id must be an int, got {type(video_id).__name__}")
    if not -(2**63) <= int(video_id) < 2**63:
        raise InvalidVectors(f"video id {video_id} does not fit in 64 bits")
    return int(video_id)


class ReadWriteLock:
    """Many concurrent readers (searches) or one writer; waiting writers go first. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self, exclusive: bool = False) -> Iterator[None]:
        if exclusive:  # e.g. GPU indexes, which are not safe for concurrent searches
            with self.write():
                yield
            return
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VideoIndex:
    """Segment vectors of videos, searchable per video; every acknowledged write survives kill -9."""

    def __init__(self, directory: Path, config: IndexConfig) -> None:
        self.directory = directory
        self.config = config
        self._lock = ReadWriteLock()
        self._snapshot_lock = threading.Lock()
        self._videos: dict[int, _Video] = {}
        self._owner: dict[int, tuple[int, int]] = {}
        self._next_sid = 0
        self._tombstones: set[int] = set()
        self._kind: ConcreteKind = "flat"
        self._trained_n = 0
        self._index: faiss.Index = faiss_index.build(
            "flat", config, np.empty((0, config.dim), np.float32), np.empty(0, np.int64)
        )
        self._pending: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None
        self._rebuild_thread: threading.Thread | None = None
        self._snapshot_thread: threading.Thread | None = None
        self._seq = 0
        self._since_snapshot = 0
        self._closed = False
        self._wal: wal.WriteAheadLog | None = None
        self._lock_file = None

    # --- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | Path, config: IndexConfig) -> VideoIndex:
        """Open (creating if needed) the index in `directory`: recover, build the index, start the log."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self = cls(directory, config)
        self._lock_file = open(directory / "LOCK", "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise IndexLocked(f"{directory} is already open in another VideoIndex or process") from None
        try:
            state = wal.recover(directory, config.dim, config.allow_empty_recovery)
            for vid, rec in state.videos.items():
                self._store(vid, rec.segments, rec.vectors)
            self._seq = state.seq
            n = len(self._owner)
            kind = faiss_index.concrete_kind(config, n)
            if n < faiss_index.min_train_size(config, kind, n):
                kind = "flat"
            vecs, sids = self._live_arrays()
            self._index = faiss_index.build(kind, config, vecs, sids)
            self._kind, self._trained_n = kind, n
            self._wal = wal.WriteAheadLog(directory, self._seq + 1, config.fsync)
            log.info(
                "opened index %s: %d videos, %d segments, kind %s, seq %d",
                directory,
                len(self._videos),
                n,
                kind,
                self._seq,
            )
            if state.dropped:
                self.snapshot()
        except BaseException:
            self._release_files()
            raise
        self._maybe_rebuild()
        return self

    def close(self) -> None:
        """Wait for background work, write a snapshot, close the log."""
        if self._closed:
            return
        for t in (self._rebuild_thread, self._snapshot_thread):
            if t is not None:
                t.join()
        if self._since_snapshot:
            self.snapshot()
        with self._lock.write():
            self._closed = True
            self._release_files()

    def _release_files(self) -> None:
        if self._wal is not None:
            self._wal.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def __enter__(self) -> VideoIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ------------------------------------------------------------------------------------

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None:
        """Add (or replace, atomically) a video's segments. Returns once the write is durable."""
        self.add_videos([(video_id, segments, vectors)])

    def add_videos(self, items: list[tuple[int, list[Span], np.ndarray]]) -> None:
        """Add several videos with one fsync (group commit). All are validated before anything is
        written; each video is still its own log record, and all are durable when this returns."""
        checked = []
        for video_id, segments, vectors in items:
            vid = _check_id(video_id)
            vecs = normalise(vectors, self.config.dim)
            checked.append((vid, spans_array(segments, len(vecs)), vecs))
        if not checked:
            return
        with self._lock.write():
            self._check_open()
            first = self._seq + 1
            self._wal.append(
                [wal.AddRecord(first + i, vid, segs, vecs) for i, (vid, segs, vecs) in enumerate(checked)]
            )
            self._seq = first + len(checked) - 1
            for vid, segs, vecs in checked:
                self._remove(vid)
                sids = self._store(vid, segs, vecs)
                self._index_add(vecs, sids)
                self._since_snapshot += 1
            self._after_write()

    def delete_video(self, video_id: int) -> bool:
        """Delete a video and all its segments; False if it was not there. Durable on return."""
        vid = _check_id(video_id)
        with self._lock.write():
            self._check_open()
            if vid not in self._videos:
                return False
            seq = self._seq + 1
            self._wal.append([wal.DeleteRecord(seq, vid)])
            self._seq = seq
            self._remove(vid)
            self._since_snapshot += 1
            self._after_write()
            return True

    def _store(self, vid: int, segs: np.ndarray, vecs: np.ndarray) -> np.ndarray:
        sids = np.arange(self._next_sid, self._next_sid + len(vecs), dtype=np.int64)
        self._next_sid += len(vecs)
        self._videos[vid] = _Video(segs, vecs, sids)
        for i, sid in enumerate(sids.tolist()):
            self._owner[sid] = (vid, i)
        return sids

    def _remove(self, vid: int) -> None:
        old = self._videos.pop(vid, None)
        if old is None:
            return
        for sid in old.sids.tolist():
            del self._owner[sid]
        if faiss_index.supports_remove(self._kind, self._index):
            self._index.remove_ids(old.sids)
        else:
            self._tombstones.update(old.sids.tolist())
        if self._pending is not None:
            self._pending.append(("remove", old.sids, None))

    def _index_add(self, vecs: np.ndarray, sids: np.ndarray) -> None:
        self._index.add_with_ids(vecs, sids)
        if self._pending is not None:
            self._pending.append(("add", sids, vecs))

    def _after_write(self) -> None:
        every = self.config.snapshot_every
        if every and self._since_snapshot >= every and self._snapshot_thread is None:
            self._snapshot_thread = threading.Thread(
                target=self._background_snapshot, name="index-snapshot", daemon=True
            )
            self._snapshot_thread.start()
        self._maybe_rebuild()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosed("the index is closed")

    # --- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> Path:
        """Write a snapshot of the current state, start a new log after it, prune old files."""
        with self._snapshot_lock:
            with self._lock.write():
                self._check_open()
                seq = self._seq
                videos = [(vid, v.segments, v.vectors) for vid, v in self._videos.items()]
                self._wal.rotate(seq + 1)
                self._since_snapshot = 0
            path = wal.write_snapshot(self.directory, seq, self.config.dim, videos, self.config.fsync)
            wal.prune(self.directory)
            log.info("snapshot %s: %d videos", path.name, len(videos))
            return path

    def _background_snapshot(self) -> None:
        try:
            self.snapshot()
        except Exception:  # logged; the log still holds every record, so nothing is lost
            log.exception("background snapshot failed")
        finally:
            self._snapshot_thread = None

    # --- rebuilds ----------------------------------------------------------------------------------

    def _target_kind(self) -> ConcreteKind | None:
        n = len(self._owner)
        kind = faiss_index.concrete_kind(self.config, n)
        if n < faiss_index.min_train_size(self.config, kind, n):
            return None
        if kind != self._kind:
            return kind
        if kind in faiss_index.IVF_KINDS and n >= self._trained_n * self.config.retrain_growth:
            return kind
        total = self._index.ntotal
        if self._tombstones and len(self._tombstones) > self.config.max_tombstone_fraction * total:
            return kind
        return None

    def _maybe_rebuild(self) -> None:
        if self._rebuild_thread is not None:
            return
        kind = self._target_kind()
        if kind is None:
            return
        self._pending = []
        vecs, sids = self._live_arrays()
        self._rebuild_thread = threading.Thread(
            target=self._rebuild, args=(kind, vecs, sids), name="index-rebuild", daemon=True
        )
        self._rebuild_thread.start()

    def rebuild(self, wait: bool = True) -> None:
        """Rebuild now if the configuration calls for it (kind change, retrain, compaction)."""
        with self._lock.write():
            self._maybe_rebuild()
            t = self._rebuild_thread
        if wait and t is not None:
            t.join()

    def wait_for_rebuild(self) -> None:
        """Block until no background rebuild is running (including ones chained after a swap)."""
        while (t := self._rebuild_thread) is not None:
            t.join()

    def _rebuild(self, kind: ConcreteKind, vecs: np.ndarray, sids: np.ndarray) -> None:
        try:
            log.info("building %s index over %d segments in the background", kind, len(sids))
            new = faiss_index.build(kind, self.config, vecs, sids)
            with self._lock.write():
                tomb: set[int] = set()
                for op, ids, v in self._pending or []:
                    if op == "add":
                        new.add_with_ids(v, ids)
                    elif faiss_index.supports_remove(kind, new):
                        new.remove_ids(ids)
                    else:
                        tomb.update(ids.tolist())
                self._index, self._kind, self._tombstones = new, kind, tomb
                self._trained_n = len(sids)
                self._pending = None
                self._rebuild_thread = None
                log.info("swapped in the %s index (%d segments)", kind, new.ntotal)
                self._maybe_rebuild()  # writes during the build may call for another (e.g. tombstones)
        except Exception:
            log.exception("index rebuild failed; searching the previous index")
            with self._lock.write():
                self._pending = None
                self._rebuild_thread = None

    def _live_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._videos:
            return np.empty((0, self.config.dim), np.float32), np.empty(0, np.int64)
        vs = list(self._videos.values())
        return np.concatenate([v.vectors for v in vs]), np.concatenate([v.sids for v in vs])

    # --- reads -------------------------------------------------------------------------------------

    def get(self, video_id: int) -> StoredVideo | None:
        with self._lock.read():
            v = self._videos.get(_check_id(video_id))
        if v is None:
            return None
        return StoredVideo(
            int(video_id), [Span(float(a), float(b)) for a, b in v.segments], v.vectors.copy()
        )

    @property
    def dim(self) -> int:
        return self.config.dim

    def __len__(self) -> int:
        return len(self._videos)

    def count_segments(self) -> int:
        """Stored segment vectors (live ones: deleted and replaced segments do not count)."""
        with self._lock.read():
            return len(self._owner)

    def metadata(self) -> dict[str, str]:
        """What the owner recorded about these vectors (`set_metadata`), e.g. the model that made them."""
        return read_metadata(self.directory)

    def set_metadata(self, values: dict[str, str]) -> None:
        """Merge `values` into the recorded metadata; durable (fsync'd, atomically replaced) on return."""
        with self._lock.write():
            self._check_open()
            merged = {**self.metadata(), **{str(k): str(v) for k, v in values.items()}}
            wal.write_atomic(self.directory / METADATA_FILE, json.dumps(merged, sort_keys=True).encode())

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._videos

    def stats(self) -> IndexStats:
        with self._lock.read():
            return IndexStats(
                len(self._videos),
                len(self._owner),
                self._kind,
                len(self._tombstones),
                self._seq,
                self._rebuild_thread is not None,
            )

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        query_segments: list[Span] | None = None,
        aggregation: Aggregation = "max",
        min_score: float | None = None,
        exclude_ids: set[int] | frozenset[int] = frozenset(),
    ) -> list[VideoHit]:
        """Top-k videos for the query segments `queries` (Q, D), best first.

        `max`: a video scores its best (query segment, video segment) pair. `chamfer`: the mean over
        query segments of each one's best match in the video (FIVR). The returned segment pair is the
        best-scoring pair either way.
        """
        if k <= 0:
            raise InvalidVectors(f"k must be positive, got {k}")
        if aggregation not in ("max", "chamfer"):
            raise InvalidVectors(f"unknown aggregation {aggregation!r}")
        q = normalise(queries, self.config.dim, "queries")
        qsegs = (
            spans_array(query_segments, len(q), "query segments") if query_segments is not None else None
        )
        with self._lock.read(exclusive=faiss_index.on_gpu(self._index)):
            self._check_open()
            return self._search_locked(q, k, qsegs, aggregation, min_score, exclude_ids)

    def _search_locked(self, q, k, qsegs, aggregation, min_score, exclude_ids) -> list[VideoHit]:
        ntotal = self._index.ntotal
        if ntotal == 0:
            return []

        def neighbours(kk: int) -> SegmentNeighbours:
            dist, ids = faiss_index.search(self._index, self._kind, self.config, q, kk)
            sids, where = np.unique(ids, return_inverse=True)
            # no owner: padding (-1), or a deleted (tombstoned) segment
            owned = [self._owner.get(sid) for sid in sids.tolist()]
            owners = np.array([o[0] if o else -1 for o in owned], dtype=np.int64)[where].reshape(ids.shape)
            live = np.array([o is not None for o in owned], dtype=bool)[where].reshape(ids.shape)
            exhausted = kk >= ntotal or bool((ids[:, -1] < 0).any())
            return SegmentNeighbours(dist, owners, live, exhausted)

        def videos(ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
            return {vid: (self._videos[vid].segments, self._videos[vid].vectors) for vid in ids}

        return search_videos(q, k, qsegs, aggregation, min_score, exclude_ids, neighbours, videos, ntotal)


@dataclass(frozen=True)
class SegmentNeighbours:
    """One round of the segment k-NN: for each query segment, its `kk` nearest stored segments."""

    scores: np.ndarray  # (Q, kk) float similarities, best first in each row
    video_ids: np.ndarray  # (Q, kk) int64: the video each neighbour belongs to
    live: np.ndarray  # (Q, kk) bool: False for padding (fewer found) and deleted segments
    exhausted: bool  # every stored segment was a candidate: nothing unseen is left


def search_videos(
    q: np.ndarray,
    k: int,
    qsegs: np.ndarray | None,
    aggregation: Aggregation,
    min_score: float | None,
    exclude_ids: set[int] | frozenset[int],
    neighbours: Callable[[int], SegmentNeighbours],
    videos: Callable[[list[int]], dict[int, tuple[np.ndarray, np.ndarray]]],
    max_kk: int,
) -> list[VideoHit]:
    """Per-video search over any segment k-NN (docs/indexer.md, "aggregation and k expansion").

    `q` (Q, D) normalised query segments; `neighbours(kk)` the k-NN of every query segment; `videos(ids)`
    each candidate's stored (segments (S, 2), vectors (S, D)) (a video deleted meanwhile is left out);
    `max_kk` the largest k-NN the backend can answer. Every candidate is re-scored exactly, and the
    k-NN doubles until no unseen video can beat the k-th returned one."""
    floor = -np.inf if min_score is None else float(min_score)
    kk = min(max_kk, max(4 * k, 32))
    scored: dict[int, tuple[float, int, int]] = {}
    spans: dict[int, np.ndarray] = {}
    while True:
        found = neighbours(kk)
        new = [
            vid
            for vid in np.unique(found.video_ids[found.live]).tolist()
            if vid not in scored and vid not in exclude_ids
        ]
        for vid, (segs, vecs) in videos(new).items():
            scored[vid] = _rescore(q, vecs, aggregation)
            spans[vid] = segs
        ranked = sorted(((s, vid) for vid, (s, _, _) in scored.items() if s >= floor), reverse=True)
        if found.exhausted:
            break
        if kk >= max_kk:
            log.warning("segment k-NN stopped at its limit of %d neighbours: the top %d may be approximate", kk, k)
            break
        # No unseen video can score above `bound`: each of its pairs is below every query's last hit.
        last = found.scores[:, -1]
        bound = float(last.max() if aggregation == "max" else last.mean())
        threshold = ranked[k - 1][0] if len(ranked) >= k else floor
        if bound <= threshold:
            break
        kk = min(max_kk, kk * 2)
    hits = []
    for score, vid in ranked[:k]:
        _, qi, si = scored[vid]
        seg = spans[vid][si]
        qseg = Span(float(qsegs[qi, 0]), float(qsegs[qi, 1])) if qsegs is not None else None
        hits.append(VideoHit(vid, float(score), Span(float(seg[0]), float(seg[1])), qseg))
    return hits


def _rescore(q: np.ndarray, vectors: np.ndarray, aggregation: Aggregation) -> tuple[float, int, int]:
    sims = q @ vectors.T  # (Q, S)
    qi, si = np.unravel_index(int(np.argmax(sims)), sims.shape)
    score = float(sims[qi, si]) if aggregation == "max" else float(sims.max(axis=1).mean())
    return score, int(qi), int(si)
