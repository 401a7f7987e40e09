"""`MilvusVideoIndex`: the segment vectors in Milvus, through `pymilvus.MilvusClient`.

One code path for every Milvus: a Milvus Lite file (`./data/milvus.db`, one process at a time), a
`milvus-lite server` (`http://127.0.0.1:19530`, several processes) or a Milvus cluster
(`http://host:19530`); only the URI changes. The mapping (docs/indexer.md, "Milvus"):

- one collection per generation, `segments_<tag>`, reached through the alias `segments` (the switch to a
  new generation is one `alter_alias`); fields `pk` (INT64, primary: `video_id << 14 | seg`), `video_id`
  (INT64, INVERTED index), `seg` (the segment's number in its video), `start`/`end` (seconds) and
  `vector` (FLOAT_VECTOR, inner product on L2-normalised vectors);
- writes are always `upsert`, never `insert`: a cluster does not de-duplicate primary keys (Lite does,
  so a test on Lite cannot catch an `insert`). Replacing a video with fewer segments also deletes its
  segments past the new count: a video's segments are always 0..n-1 (every write covers them all), so
  one primary-key lookup of segment n per video finds whether any are left (a key lookup stays cheap
  where a filter scans every row not yet flushed);
- one write call (`add_videos`, the rows of a job, or of a run of jobs on a replica; `delete_video`) is
  one `flush` (`flush_writes`): Milvus scans unflushed ("growing") rows on every filtered query, count
  and search, at a cost that grows with them (on Lite, about a second per query past a few thousand
  1280-d rows); flushed, they are sealed and indexed. A cluster that rate-limits flushes
  (`quotaAndLimits.flushRate`) can turn it off (`DRCA_MILVUS_FLUSH_WRITES=false`) and leave sealing to
  Milvus;
- delete by an inline `video_id` filter, re-run until a strong count finds none left;
- counts with `count(*)` at strong consistency (collection statistics count deleted rows until
  compaction); every filter is written inline (Lite rejects filter templates);
- HNSW or IVF_FLAT only (on Lite, DISKANN, IVF_PQ and SCANN silently fall back to a scan).

Search is the FAISS index's: `indexer.index.search_videos` re-scores every candidate video from its
stored vectors and widens the segment k-NN until no unseen video can beat the k-th (exclusions are
pushed into the k-NN filter), so the same vectors give the same hits.
"""

from __future__ import annotations

import fcntl
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from indexer.errors import IncompatibleIndex, IndexClosed, IndexLocked, InvalidVectors
from indexer.index import (
    Aggregation,
    IndexStats,
    SegmentNeighbours,
    Span,
    StoredVideo,
    VideoHit,
    _check_id,
    normalise,
    search_videos,
    spans_array,
)

log = logging.getLogger(__name__)

SEG_BITS = 14  # segments per video < 16,384 (the service allows 2,048); video ids < 2**49
MAX_TOPK = 16_384  # Milvus's largest `limit` (top-k) and query result window
_UPSERT_ROWS = 2_000  # rows per upsert call (well under the gRPC message limit at 4 KiB a row)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_META = "drca."  # collection properties that carry `metadata()`


@dataclass(frozen=True)
class MilvusConfig:
    """Every knob of the Milvus backend, with its default, in one place."""

    uri: str  # a Milvus Lite file (`./data/milvus.db`) or `http://host:19530`
    dim: int = 256
    alias: str = "segments"  # what searches name; each generation is a collection `<alias>_<tag>`
    token: str = ""  # `user:password` or an API key, for a secured cluster
    index_type: Literal["HNSW", "IVF_FLAT"] = "HNSW"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 96  # raised to at least the k-NN size asked of it
    nlist: int = 1024
    nprobe: int = 32
    timeout_s: float = 30.0  # per call
    delete_retries: int = 5
    flush_writes: bool = True  # one flush per write call (module docstring)

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.index_type not in ("HNSW", "IVF_FLAT"):
            raise ValueError(f"index_type must be HNSW or IVF_FLAT, got {self.index_type!r} (Milvus Lite "
                             "answers other types with a full scan, silently)")
        if not _NAME.match(self.alias):
            raise ValueError(f"alias {self.alias!r} is not a Milvus collection name")


def primary_key(video_id: int, seg: int) -> int:
    """The segment's INT64 primary key: the same video and segment number always give the same key."""
    return (video_id << SEG_BITS) | seg


_LITE_LOG = "milvus_lite.server_manager"  # logs a failed start of a Lite file with its whole traceback


class _HeldBack(logging.Filter):
    """Holds back the records one thread logs (the others pass), to be dropped or handed on later."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        self.records.append(record)
        return False


def connect(cfg: MilvusConfig) -> MilvusClient:
    """A client for `cfg.uri`; `IndexLocked` when another process holds the Milvus Lite file (one line: the
    traceback Milvus Lite logs for it is dropped; whatever else it logs meanwhile is passed on)."""
    lite_log = logging.getLogger(_LITE_LOG)
    held = _HeldBack()
    lite_log.addFilter(held)
    locked = False
    try:
        return MilvusClient(uri=cfg.uri, token=cfg.token, timeout=cfg.timeout_s)
    except MilvusException:
        locked = cfg.uri.endswith(".db") and _lite_file_locked(Path(cfg.uri))
        if locked:
            raise IndexLocked(f"{cfg.uri} is open in another process (Milvus Lite holds one process per "
                              "file; run `milvus-lite server` for several)") from None
        raise
    finally:
        lite_log.removeFilter(held)
        if not locked:
            for record in held.records:
                lite_log.handle(record)


def _lite_file_locked(path: Path) -> bool:
    """Whether another process holds the Milvus Lite data directory's LOCK (pymilvus only says that
    opening failed). Asked only after our own open failed, so this process does not hold it."""
    lock = path / "LOCK"
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


class MilvusVideoIndex:
    """Segment vectors in one Milvus collection, searchable per video (the `SegmentIndex` contract)."""

    def __init__(self, client: MilvusClient, collection: str, cfg: MilvusConfig) -> None:
        self.client = client
        self.collection = collection
        self.config = cfg
        self._write_lock = threading.Lock()  # one write at a time from this process
        self._closed = False

    @classmethod
    def open(cls, cfg: MilvusConfig, collection: str) -> MilvusVideoIndex:
        """Open (creating it if needed) `collection` and load it for search."""
        if not _NAME.match(collection):
            raise ValueError(f"{collection!r} is not a Milvus collection name")
        client = connect(cfg)
        try:
            if client.has_collection(collection):
                dim = _vector_dim(client.describe_collection(collection))
                if dim != cfg.dim:
                    raise IncompatibleIndex(f"Milvus collection {collection} holds {dim}-d vectors, "
                                            f"configured for {cfg.dim}-d")
            else:
                try:
                    _create(client, collection, cfg)
                except MilvusException:
                    # another process is creating it (several start at once on a new deployment): Milvus
                    # Lite's server fails the second creation (EEXIST) before the first one is visible
                    if not _appears(client, collection):
                        raise
            client.load_collection(collection)
        except BaseException:
            client.close()
            raise
        self = cls(client, collection, cfg)
        log.info("opened Milvus collection %s at %s: %d videos, %d segments", collection, cfg.uri,
                 len(self), self.count_segments())
        return self

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> MilvusVideoIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dim(self) -> int:
        return self.config.dim

    # --- writes ------------------------------------------------------------------------------------

    def add_video(self, video_id: int, segments: list[Span], vectors: np.ndarray) -> None:
        """Add or replace a video's segments (an upsert by primary key)."""
        self.add_videos([(video_id, segments, vectors)])

    def add_videos(self, items: list[tuple[int, list[Span], np.ndarray]]) -> None:
        """Upsert several videos; every item is validated before anything is written."""
        rows: list[dict] = []
        counts: dict[int, int] = {}
        for video_id, segments, vectors in items:
            vid = _check_id(video_id)
            vecs = normalise(vectors, self.dim)
            segs = spans_array(segments, len(vecs))
            if len(vecs) > 1 << SEG_BITS:
                raise InvalidVectors(f"{len(vecs)} segments in one video, at most {1 << SEG_BITS}")
            if not 0 <= vid < 1 << (63 - SEG_BITS):
                raise InvalidVectors(f"video id {vid} is outside 0..2**{63 - SEG_BITS} (the Milvus key)")
            counts[vid] = len(vecs)
            rows += [{"pk": primary_key(vid, i), "video_id": vid, "seg": i, "start": float(a), "end": float(b),
                      "vector": v} for i, ((a, b), v) in enumerate(zip(segs.tolist(), vecs.tolist(), strict=True))]
        if not rows:
            return
        with self._write_lock:
            self._check_open()
            for i in range(0, len(rows), _UPSERT_ROWS):
                self.client.upsert(self.collection, rows[i : i + _UPSERT_ROWS])
            self._flush()
            # a replaced video that had more segments: drop the ones past its new count. Segments are
            # 0..n-1, so a video has stale rows exactly when its segment n is stored (one key lookup each)
            after = [primary_key(vid, n) for vid, n in counts.items() if n < 1 << SEG_BITS]
            got = self.client.get(self.collection, ids=after, output_fields=["video_id"]) if after else []
            found = {int(r["video_id"]) for r in got} & counts.keys()
            if found:
                self._delete_until_gone(" or ".join(f"(video_id == {vid} and seg >= {counts[vid]})" for vid in found))
                self._flush()

    def delete_video(self, video_id: int) -> bool:
        """Delete every segment of the video; False if it had none."""
        vid = _check_id(video_id)
        with self._write_lock:
            self._check_open()
            if not self._count(f"video_id == {vid}"):
                return False
            self._delete_until_gone(f"video_id == {vid}")
            self._flush()
            return True

    def _flush(self) -> None:
        if self.config.flush_writes:
            self.client.flush(self.collection)

    def _delete_until_gone(self, expr: str) -> None:
        """Delete by filter, re-run (with back-off) until a strong count finds nothing matching."""
        for attempt in range(self.config.delete_retries):
            try:
                self.client.delete(self.collection, filter=expr)
                if not self._count(expr):
                    return
            except MilvusException as e:
                log.warning("Milvus delete %r failed (%s); re-running", expr, e)
            time.sleep(0.05 * 2**attempt)
        raise MilvusException(message=f"rows matching {expr!r} still present after "
                                      f"{self.config.delete_retries} deletes")

    # --- reads -------------------------------------------------------------------------------------

    def _count(self, expr: str = "") -> int:
        res = self.client.query(self.collection, filter=expr, output_fields=["count(*)"],
                                consistency_level="Strong")
        return int(res[0]["count(*)"])

    def __len__(self) -> int:
        """Videos stored (each has a segment 0)."""
        self._check_open()
        return self._count("seg == 0")

    def __contains__(self, video_id: object) -> bool:
        if isinstance(video_id, bool) or not isinstance(video_id, int | np.integer):
            return False
        return bool(self._count(f"video_id == {int(video_id)} and seg == 0"))

    def count_segments(self) -> int:
        self._check_open()
        return self._count()

    def stats(self) -> IndexStats:
        return IndexStats(len(self), self.count_segments(), self.config.index_type.lower(), 0, 0, False)

    def get(self, video_id: int) -> StoredVideo | None:
        vid = _check_id(video_id)
        got = self._videos([vid]).get(vid)
        if got is None:
            return None
        segs, vecs = got
        return StoredVideo(vid, [Span(float(a), float(b)) for a, b in segs], vecs)

    def _videos(self, ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Each video's (segments (S, 2) float64, vectors (S, D) float32) in segment order."""
        self._check_open()
        if not ids:
            return {}
        rows = self.client.query(self.collection, filter=f"video_id in {list(map(int, ids))}",
                                 output_fields=["video_id", "seg", "start", "end", "vector"], limit=MAX_TOPK,
                                 consistency_level="Strong")
        if len(rows) >= MAX_TOPK and len(ids) > 1:  # the result window is full: ask in halves
            half = len(ids) // 2
            return {**self._videos(ids[:half]), **self._videos(ids[half:])}
        by_video: dict[int, list[dict]] = {}
        for r in rows:
            by_video.setdefault(int(r["video_id"]), []).append(r)
        out = {}
        for vid, rs in by_video.items():
            rs.sort(key=lambda r: r["seg"])
            segs = np.array([[r["start"], r["end"]] for r in rs], dtype=np.float64)
            out[vid] = (segs, np.asarray([r["vector"] for r in rs], dtype=np.float32))
        return out

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        query_segments: list[Span] | None = None,
        aggregation: Aggregation = "max",
        min_score: float | None = None,
        exclude_ids: set[int] | frozenset[int] = frozenset(),
    ) -> list[VideoHit]:
        """Top-k videos for the query segments, best first: exactly `VideoIndex.search`'s semantics."""
        if k <= 0:
            raise InvalidVectors(f"k must be positive, got {k}")
        if aggregation not in ("max", "chamfer"):
            raise InvalidVectors(f"unknown aggregation {aggregation!r}")
        q = normalise(queries, self.dim, "queries")
        qsegs = spans_array(query_segments, len(q), "query segments") if query_segments is not None else None
        self._check_open()
        excluded = sorted(int(v) for v in exclude_ids)
        expr = f"video_id not in {excluded}" if excluded else ""

        def neighbours(kk: int) -> SegmentNeighbours:
            params = ({"ef": max(self.config.ef_search, kk)} if self.config.index_type == "HNSW"
                      else {"nprobe": self.config.nprobe})
            res = self.client.search(self.collection, data=[row.tolist() for row in q], limit=kk, filter=expr,
                                     output_fields=["video_id"], consistency_level="Strong",
                                     search_params={"metric_type": "IP", "params": params})
            scores = np.full((len(q), kk), -np.inf, dtype=np.float32)
            owners = np.full((len(q), kk), -1, dtype=np.int64)
            live = np.zeros((len(q), kk), dtype=bool)
            for i, row in enumerate(res):
                for j, hit in enumerate(row):
                    scores[i, j], owners[i, j], live[i, j] = hit["distance"], hit["entity"]["video_id"], True
            exhausted = any(len(row) < kk for row in res)  # fewer than asked: every segment was returned
            return SegmentNeighbours(scores, owners, live, exhausted)

        return search_videos(q, k, qsegs, aggregation, min_score, frozenset(excluded), neighbours, self._videos,
                             MAX_TOPK)

    # --- metadata ----------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        return _metadata(self.client, self.collection)

    def set_metadata(self, values: dict[str, str]) -> None:
        """Write `values` into the collection's properties. Several processes starting at once on a new
        deployment write the same values together, and Milvus (Lite's server, at least) can fail one of
        the concurrent alterations: it is retried, and done as soon as the properties hold the values."""
        self._check_open()
        want = {str(k): str(v) for k, v in values.items()}
        for attempt in range(_ALTER_ATTEMPTS):
            try:
                self.client.alter_collection_properties(
                    self.collection, properties={_META + k: v for k, v in want.items()})
                return
            except MilvusException:
                if all(self.metadata().get(k) == v for k, v in want.items()):
                    return  # another process wrote the same values meanwhile
                if attempt == _ALTER_ATTEMPTS - 1:
                    raise
                log.warning("altering Milvus collection %s failed; trying again", self.collection)
                time.sleep(0.1 * (attempt + 1))

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosed("the index is closed")


class MilvusGenerations:
    """The generations of one Milvus deployment: collections `<alias>_<tag>`; the alias names the current
    one, and `switch` moves it in one call (searches go from one generation to the next, never between)."""

    def __init__(self, cfg: MilvusConfig) -> None:
        self.config = cfg
        self.client = connect(cfg)

    def current(self) -> str | None:
        try:
            return self.client.describe_alias(self.config.alias)["collection_name"]
        except MilvusException as e:
            if "does not exist" in str(e):
                return None
            raise

    def name_for(self, tag: str) -> str:
        return f"{self.config.alias}_{tag}"

    def exists(self, name: str) -> bool:
        return self.client.has_collection(name)

    def metadata(self, name: str) -> dict[str, str]:
        return _metadata(self.client, name) if self.client.has_collection(name) else {}

    def open(self, name: str) -> MilvusVideoIndex:
        return MilvusVideoIndex.open(self.config, name)

    def switch(self, name: str) -> None:
        if not self.client.has_collection(name):
            raise ValueError(f"no Milvus collection {name}")
        if self.current() is None:
            try:
                self.client.create_alias(name, self.config.alias)
            except MilvusException:
                if self.current() is None:
                    raise
                self.client.alter_alias(name, self.config.alias)  # another process created it meanwhile
        else:
            self.client.alter_alias(name, self.config.alias)
        log.info("Milvus alias %s now names %s", self.config.alias, name)

    def drop(self, name: str) -> None:
        if name == self.current():
            raise ValueError(f"{name} is the current generation")
        if self.client.has_collection(name):
            self.client.drop_collection(name)

    def close(self) -> None:
        self.client.close()


#: tries of a collection's properties update before it fails (`MilvusVideoIndex.set_metadata`)
_ALTER_ATTEMPTS = 4
#: how long a collection whose creation failed is waited for, created by another process (`MilvusVideoIndex.open`)
_CREATE_WAIT_S = 10.0


def _appears(client: MilvusClient, collection: str) -> bool:
    """Whether `collection` exists within `_CREATE_WAIT_S` (another process's creation finishing)."""
    deadline = time.monotonic() + _CREATE_WAIT_S
    while not client.has_collection(collection):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _create(client: MilvusClient, collection: str, cfg: MilvusConfig) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("video_id", DataType.INT64)
    schema.add_field("seg", DataType.INT32)
    schema.add_field("start", DataType.DOUBLE)
    schema.add_field("end", DataType.DOUBLE)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=cfg.dim)
    index = client.prepare_index_params()
    if cfg.index_type == "HNSW":
        params = {"M": cfg.hnsw_m, "efConstruction": cfg.ef_construction}
    else:
        params = {"nlist": cfg.nlist}
    index.add_index("vector", index_type=cfg.index_type, metric_type="IP", params=params)
    index.add_index("video_id", index_type="INVERTED")
    client.create_collection(collection, schema=schema, index_params=index, consistency_level="Strong")
    log.info("created Milvus collection %s (%d-d, %s)", collection, cfg.dim, cfg.index_type)


def _metadata(client: MilvusClient, collection: str) -> dict[str, str]:
    props = client.describe_collection(collection).get("properties") or {}
    return {k[len(_META):]: str(v) for k, v in props.items() if k.startswith(_META)}


def _vector_dim(desc: dict) -> int:
    for f in desc["fields"]:
        if f["name"] == "vector":
            return int(f["params"]["dim"])
    raise IncompatibleIndex(f"Milvus collection {desc.get('collection_name')} has no `vector` field")
