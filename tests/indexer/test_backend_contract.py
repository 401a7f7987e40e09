"""One contract, three backends: FAISS (`VideoIndex`), Milvus Lite in this process (a `.db` file) and
`milvus-lite server` on loopback, all through `SegmentIndex` / `IndexGenerations` and unchanged.

Add, upsert twice (no duplicates), replace with fewer segments, delete, search with exclusions (against
brute force), count, metadata, restart persistence (written by another process, read after it exited;
the server is restarted too), concurrent writers (refused or serialised, never lost or duplicated), and
the atomic switch between generations."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from indexer import FaissGenerations, IndexConfig, IndexGenerations, InvalidVectors, SegmentIndex, Span
from indexer.milvus_index import MilvusConfig, MilvusGenerations
from tests.indexer.backend_writer import open_index, video_vectors
from tests.procs import ROOT, MilvusLiteServer

D = 16
_names = itertools.count()


@dataclass
class Backend:
    name: str
    spec: dict  # what `tests.indexer.backend_writer` opens
    concurrent: str  # what a second writer process meets: "refused" or "serialised"
    generations: Callable[[], IndexGenerations]
    restart: Callable[[], None] = lambda: None  # between processes: the server restarts
    opened: list[SegmentIndex] = field(default_factory=list)

    def open(self) -> SegmentIndex:
        index = open_index(self.spec)
        self.opened.append(index)
        return index


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLiteServer]:
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["faiss", "milvus-lite", "milvus-server"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "faiss":
        path = tmp_path / "index"
        b = Backend("faiss", {"kind": "faiss", "path": str(path), "dim": D}, "refused",
                    lambda: FaissGenerations(tmp_path / "gens", IndexConfig(dim=D, snapshot_every=0)))
    elif request.param == "milvus-lite":
        uri = str(tmp_path / "milvus.db")
        b = Backend("milvus-lite", {"kind": "milvus", "uri": uri, "collection": "segments_t", "dim": D}, "refused",
                    lambda: MilvusGenerations(MilvusConfig(uri=uri, dim=D)))
    else:
        server: MilvusLiteServer = request.getfixturevalue("milvus_server")
        n = next(_names)  # the server outlives the test: fresh names for each

        def restart() -> None:
            server.stop()
            server.start()

        b = Backend("milvus-server", {"kind": "milvus", "uri": server.uri, "collection": f"segments_t{n}",
                                      "dim": D}, "serialised",
                    lambda: MilvusGenerations(MilvusConfig(uri=server.uri, dim=D, alias=f"segments{n}")), restart)
    yield b
    for index in b.opened:
        index.close()


def run_writer(spec: dict, first: int, n: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.indexer.backend_writer", json.dumps(spec), str(first),
                             str(n), *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def add_range(index: SegmentIndex, ids: range) -> int:
    """Add videos `ids`; the number of segments added."""
    total = 0
    for vid in ids:
        segs, vecs = video_vectors(vid, D)
        index.add_video(vid, segs, vecs)
        total += len(segs)
    return total


def assert_stored(index: SegmentIndex, vid: int) -> None:
    segs, vecs = video_vectors(vid, D)
    got = index.get(vid)
    assert got is not None, f"video {vid} missing"
    assert got.segments == segs
    np.testing.assert_allclose(got.vectors, vecs, atol=1e-6)


def brute_force(vectors: dict[int, np.ndarray], q: np.ndarray, k: int, aggregation: str,
                exclude: set[int]) -> list[tuple[int, float, int, int]]:
    """(video, score, query segment, video segment) of the exact top k."""
    out = []
    for vid, v in vectors.items():
        if vid in exclude:
            continue
        sims = q @ v.T
        qi, si = np.unravel_index(int(np.argmax(sims)), sims.shape)
        score = float(sims[qi, si]) if aggregation == "max" else float(sims.max(axis=1).mean())
        out.append((score, vid, int(qi), int(si)))
    out.sort(reverse=True)
    return [(vid, s, qi, si) for s, vid, qi, si in out[:k]]


def test_add_get_count(backend: Backend):
    index = backend.open()
    assert len(index) == 0 and index.count_segments() == 0 and index.get(1) is None
    segments = add_range(index, range(1, 31))
    assert len(index) == 30 and index.count_segments() == segments
    assert 7 in index and 31 not in index
    for vid in (1, 12, 30):
        assert_stored(index, vid)
    st = index.stats()
    assert (st.videos, st.segments) == (30, segments)
    with pytest.raises(InvalidVectors):
        index.add_video(40, [Span(0, 1)], np.full((1, D), np.nan, dtype=np.float32))
    assert 40 not in index and index.count_segments() == segments


def test_upsert_twice_leaves_no_duplicates(backend: Backend):
    index = backend.open()
    before = add_range(index, range(1, 11))
    segs, vecs = video_vectors(9, D)  # 5 segments
    index.add_video(9, segs, vecs)
    index.add_videos([(9, segs, vecs), (9, segs, vecs)])
    assert len(index) == 10 and index.count_segments() == before
    # replaced by fewer segments: every old one goes
    new = np.eye(D, dtype=np.float32)[:2]
    index.add_video(9, [Span(0, 1), Span(1, 2)], new)
    assert index.count_segments() == before - 5 + 2
    got = index.get(9)
    assert got.segments == [Span(0, 1), Span(1, 2)]
    np.testing.assert_allclose(got.vectors, new, atol=1e-6)
    old_vector = vecs[4]  # gone: searching for it does not find video 9's old segment 4
    hit = next(h for h in index.search(old_vector[None], k=10) if h.video_id == 9)
    assert hit.score < 0.999 and hit.segment in (Span(0, 1), Span(1, 2))


def test_delete(backend: Backend):
    index = backend.open()
    total = add_range(index, range(1, 11))
    assert index.delete_video(4) is True
    assert index.delete_video(4) is False and index.delete_video(99) is False
    assert 4 not in index and index.get(4) is None and len(index) == 9
    assert index.count_segments() == total - len(video_vectors(4, D)[0])
    _, vecs = video_vectors(4, D)
    assert all(h.video_id != 4 for h in index.search(vecs, k=10))


@pytest.mark.parametrize("aggregation", ["max", "chamfer"])
def test_search_with_exclusions_matches_brute_force(backend: Backend, aggregation: str):
    index = backend.open()
    ids = range(1, 61)
    add_range(index, ids)
    index.delete_video(17)
    vectors = {vid: video_vectors(vid, D)[1] for vid in ids if vid != 17}
    rng = np.random.default_rng(5)
    for trial in range(4):
        q = rng.standard_normal((3, D)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exclude = {int(x) for x in rng.choice(list(vectors), size=5, replace=False)} if trial % 2 else set()
        qsegs = [Span(10.0 + i, 11.0 + i) for i in range(3)]
        hits = index.search(q, k=5, query_segments=qsegs, aggregation=aggregation, exclude_ids=exclude)
        want = brute_force(vectors, q, 5, aggregation, exclude)
        assert [h.video_id for h in hits] == [w[0] for w in want]
        for h, (vid, score, qi, si) in zip(hits, want, strict=True):
            assert h.score == pytest.approx(score, abs=1e-5)
            assert h.query_segment == qsegs[qi] and h.segment == video_vectors(vid, D)[0][si]
    # min_score keeps only what reaches it
    _, own = video_vectors(20, D)
    hits = index.search(own[:1], k=10, min_score=0.999)
    assert [h.video_id for h in hits] == [20] and hits[0].query_segment is None


def test_restart_keeps_what_another_process_wrote(backend: Backend):
    proc = run_writer(backend.spec, 1, 12, "--delete", "5")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert out.split() == [w for vid in range(1, 13) for w in ("added", str(vid))]
    backend.restart()
    index = backend.open()
    assert len(index) == 11 and 5 not in index
    assert index.count_segments() == sum(len(video_vectors(v, D)[0]) for v in range(1, 13) if v != 5)
    for vid in (1, 6, 12):
        assert_stored(index, vid)
    assert index.metadata()["writer"] == "1"
    index.set_metadata({"checkpoint": "abc", "embed_dim": str(D)})
    assert index.metadata() == {"writer": "1", "checkpoint": "abc", "embed_dim": str(D)}


def test_concurrent_writers_are_refused_or_serialised(backend: Backend):
    index = backend.open()  # this process writes too, while two others try
    procs = [run_writer(backend.spec, first, 10) for first in (100, 200)]
    mine = add_range(index, range(1, 11))
    expected_segments = mine
    for first, proc in zip((100, 200), procs, strict=True):
        out, err = proc.communicate(timeout=180)
        ids = range(first, first + 10)
        if backend.concurrent == "refused":
            assert (proc.returncode, out.strip()) == (3, "LOCKED"), err[-2000:]
            assert not any(vid in index for vid in ids)
        else:
            assert proc.returncode == 0, err[-2000:]
            for vid in ids:
                assert_stored(index, vid)
            expected_segments += sum(len(video_vectors(v, D)[0]) for v in ids)
    for vid in range(1, 11):
        assert_stored(index, vid)
    assert index.count_segments() == expected_segments  # nothing lost, nothing twice


def test_generations_switch_atomically(backend: Backend):
    gens = backend.generations()
    try:
        first = gens.current() or gens.name_for("aaa")
        with gens.open(first) as old:
            add_range(old, range(1, 6))
        gens.switch(first)
        new_name = gens.name_for("bbb")
        assert not gens.exists(new_name)
        with gens.open(new_name) as new:
            add_range(new, range(100, 103))
        assert gens.current() == first  # building a generation does not make it current
        gens.switch(new_name)
        assert gens.current() == new_name
        gens.drop(first)
        assert not gens.exists(first)
        with pytest.raises(ValueError):
            gens.drop(new_name)
        with gens.open(gens.current()) as cur:
            assert len(cur) == 3 and 100 in cur and 1 not in cur
    finally:
        gens.close()


def _count_knn_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The segment k-NN sizes every search asks for from now on, in order (each backend's `neighbours`,
    seen through the shared `search_videos`)."""
    import indexer.index
    import indexer.milvus_index

    calls: list[int] = []
    real = indexer.index.search_videos

    def counting(q, k, qsegs, aggregation, min_score, exclude_ids, neighbours, videos, max_kk):
        def counted(kk: int):
            calls.append(kk)
            return neighbours(kk)

        return real(q, k, qsegs, aggregation, min_score, exclude_ids, counted, videos, max_kk)

    monkeypatch.setattr(indexer.index, "search_videos", counting)
    monkeypatch.setattr(indexer.milvus_index, "search_videos", counting)
    return calls


@pytest.mark.parametrize("aggregation", ["max", "chamfer"])
def test_search_widens_past_videos_that_flood_the_segment_knn(backend: Backend, aggregation: str,
                                                               monkeypatch: pytest.MonkeyPatch):
    """Two long videos close to the query (20 segments near each query segment) hold every one of the
    first k-NN's 32 segments: 2 distinct videos for k = 5, so the k-NN must widen before the other videos
    show; each video is returned once, in the brute-force order."""
    index = backend.open()
    rng = np.random.default_rng(11)
    q = rng.standard_normal((2, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    vectors = {}
    for vid in (500, 501):  # 40 segments each, every one nearer its query segment than any other video's
        x = q[np.arange(40) % 2] + 0.05 * rng.standard_normal((40, D)).astype(np.float32)
        vectors[vid] = x / np.linalg.norm(x, axis=1, keepdims=True)
        index.add_video(vid, [Span(float(i), float(i + 1)) for i in range(40)], vectors[vid])
    add_range(index, range(1, 31))
    vectors.update({vid: video_vectors(vid, D)[1] for vid in range(1, 31)})
    calls = _count_knn_calls(monkeypatch)
    hits = index.search(q, k=5, aggregation=aggregation)
    assert len(calls) > 1 and calls[0] == 32, calls  # the first k-NN alone could not answer
    want = brute_force(vectors, q, 5, aggregation, set())
    assert [h.video_id for h in hits] == [w[0] for w in want]  # each video once
    assert [h.score for h in hits] == pytest.approx([w[1] for w in want], abs=1e-5)
    assert {500, 501} < {h.video_id for h in hits}


class ClientSpy:
    """A `MilvusClient` that records which of its methods were called (with their arguments) and then
    calls them. Milvus Lite de-duplicates primary keys on `insert` as on `upsert`; a cluster does not, so
    on Lite only the calls tell them apart."""

    def __init__(self, client) -> None:
        self._client = client
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)

        return call


def test_milvus_writes_are_upserts_by_segment_key(tmp_path: Path):
    """Every write is an `upsert` whose rows carry the (video, segment) key: adding a video again (a job
    re-run, a reindex) replaces its rows on a cluster too, where an `insert` would keep both copies."""
    from indexer.milvus_index import MilvusVideoIndex, primary_key

    index = MilvusVideoIndex.open(MilvusConfig(uri=str(tmp_path / "milvus.db"), dim=D), "segments_t")
    try:
        spy = ClientSpy(index.client)
        index.client = spy
        add_range(index, range(1, 4))
        add_range(index, range(1, 4))  # the same videos again
        index.add_videos([(vid, *video_vectors(vid, D)) for vid in (2, 3)])
        writes = [(name, args, kwargs) for name, args, kwargs in spy.calls if name in ("insert", "upsert")]
        assert writes and {name for name, _, _ in writes} == {"upsert"}, [w[0] for w in writes]
        for _, args, kwargs in writes:
            rows = kwargs.get("data", args[1] if len(args) > 1 else None)
            assert [r["pk"] for r in rows] == [primary_key(r["video_id"], r["seg"]) for r in rows]
        assert index.count_segments() == sum(len(video_vectors(v, D)[0]) for v in range(1, 4))
    finally:
        index.close()


def test_milvus_write_is_one_upsert_and_one_flush_and_no_filter_scan(tmp_path: Path):
    """A job's write is its rows upserted, one flush, and one primary-key lookup per video for segments
    left from a longer earlier version (deleted only when there are some): no filtered query or delete,
    which would scan every unflushed row. A video replaced by a shorter one keeps no stale segment."""
    from indexer.milvus_index import MilvusVideoIndex

    index = MilvusVideoIndex.open(MilvusConfig(uri=str(tmp_path / "milvus.db"), dim=D), "segments_t")
    try:
        spy = ClientSpy(index.client)
        index.client = spy
        index.add_videos([(vid, *video_vectors(vid, D)) for vid in (4, 9)])  # 5 segments each
        assert [name for name, _, _ in spy.calls] == ["upsert", "flush", "get"]
        spy.calls.clear()
        segs, vecs = video_vectors(4, D)
        index.add_video(4, segs[:2], vecs[:2])  # replaced by its first 2 segments
        names = [name for name, _, _ in spy.calls]
        assert names[:3] == ["upsert", "flush", "get"] and "delete" in names and names[-1] == "flush", names
        assert index.get(4).segments == segs[:2] and index.count_segments() == 2 + 5
        assert_stored(index, 9)
        spy.calls.clear()
        assert index.delete_video(9)
        assert [name for name, _, _ in spy.calls][-1] == "flush" and 9 not in index
    finally:
        index.close()
    unflushed = MilvusVideoIndex.open(MilvusConfig(uri=str(tmp_path / "m2.db"), dim=D, flush_writes=False), "segs")
    try:
        spy = ClientSpy(unflushed.client)
        unflushed.client = spy
        add_range(unflushed, range(1, 4))
        assert "flush" not in {name for name, _, _ in spy.calls}
        assert_stored(unflushed, 3)
    finally:
        unflushed.close()


def test_milvus_refuses_more_segments_than_the_key_holds(tmp_path: Path):
    """The primary key keeps 14 bits for the segment: a video of 2**14 segments fits; one more would write
    segment 2**14 under the next video's segment-0 key, overwriting it. That is refused, nothing written."""
    from indexer.milvus_index import SEG_BITS, MilvusVideoIndex

    n = 1 << SEG_BITS
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((n + 1, D)).astype(np.float32)
    spans = [Span(float(i), float(i + 1)) for i in range(n + 1)]
    index = MilvusVideoIndex.open(MilvusConfig(uri=str(tmp_path / "milvus.db"), dim=D), "segments_t")
    try:
        add_range(index, [3, 5])  # the neighbours of videos 2 and 4 in key space
        with pytest.raises(InvalidVectors, match="segments"):
            index.add_video(2, spans, vecs)
        assert 2 not in index and index.count_segments() == sum(len(video_vectors(v, D)[0]) for v in (3, 5))
        assert_stored(index, 3)
        index.add_video(4, spans[:n], vecs[:n])  # exactly 2**14: the largest that fits
        assert index.get(4).segments == spans[:n]
        assert_stored(index, 3)
        assert_stored(index, 5)
    finally:
        index.close()


class FailingAlter(ClientSpy):
    """A client whose first `failures` property updates fail as a concurrent one can on Milvus Lite's server
    (`[Errno 2] No such file or directory`), after `before` (if any) ran: another process's update."""

    def __init__(self, client, failures: int, before=None) -> None:
        super().__init__(client)
        self.failures, self.before = failures, before

    def alter_collection_properties(self, *args, **kwargs):
        from pymilvus import MilvusException

        self.calls.append(("alter_collection_properties", args, kwargs))
        if self.failures:
            self.failures -= 1
            if self.before is not None:
                self.before()
            raise MilvusException(message="[Errno 2] No such file or directory")
        return self._client.alter_collection_properties(*args, **kwargs)


def test_milvus_metadata_written_by_several_processes_at_once(tmp_path: Path):
    """Gateways starting together on a new deployment write the same collection properties at once, and
    Milvus can fail one of the concurrent updates: it is tried again, and done when the properties already
    hold the values (another process wrote them); a failure that persists is raised."""
    from pymilvus import MilvusException

    from indexer.milvus_index import MilvusVideoIndex

    def alters(spy: ClientSpy) -> int:
        return sum(name == "alter_collection_properties" for name, _, _ in spy.calls)

    index = MilvusVideoIndex.open(MilvusConfig(uri=str(tmp_path / "milvus.db"), dim=D), "segments_t")
    real = index.client
    try:
        index.client = spy = FailingAlter(real, failures=1)
        index.set_metadata({"checkpoint": "a"})
        assert index.metadata()["checkpoint"] == "a" and alters(spy) == 2  # failed once, then written
        other = lambda: real.alter_collection_properties("segments_t", properties={"drca.checkpoint": "b"})  # noqa: E731
        index.client = spy = FailingAlter(real, failures=1, before=other)
        index.set_metadata({"checkpoint": "b"})  # another process wrote the same value: done
        assert index.metadata()["checkpoint"] == "b" and alters(spy) == 1
        index.client = FailingAlter(real, failures=99)
        with pytest.raises(MilvusException):
            index.set_metadata({"checkpoint": "c"})
        assert index.metadata()["checkpoint"] == "b"
    finally:
        index.client = real
        index.close()


class CreatedElsewhere(ClientSpy):
    """A client whose `create_collection` fails as Milvus Lite's server fails a second process's (`[Errno
    17] File exists`) while the first process's creation, run here on a thread, is not yet visible."""

    def __init__(self, client, delay_s: float) -> None:
        super().__init__(client)
        self.delay_s = delay_s
        self.other: threading.Thread | None = None

    def create_collection(self, *args, **kwargs):
        from pymilvus import MilvusException

        self.calls.append(("create_collection", args, kwargs))

        def other_process() -> None:
            time.sleep(self.delay_s)
            self._client.create_collection(*args, **kwargs)

        self.other = threading.Thread(target=other_process)
        self.other.start()
        raise MilvusException(message="[Errno 17] File exists")


def test_milvus_collection_created_by_another_process_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Processes starting together on a new deployment create the same collection at once: the one whose
    creation fails opens the collection once the other's creation is visible."""
    from indexer import milvus_index
    from indexer.milvus_index import MilvusVideoIndex

    spies: list[CreatedElsewhere] = []
    connect = milvus_index.connect

    def spied(cfg):
        spies.append(CreatedElsewhere(connect(cfg), delay_s=0.5))
        return spies[-1]

    monkeypatch.setattr(milvus_index, "connect", spied)
    index = MilvusVideoIndex.open(MilvusConfig(uri=str(tmp_path / "milvus.db"), dim=D), "segments_t")
    try:
        spies[0].other.join(10)
        index.add_video(1, [Span(0, 8)], np.ones((1, D), np.float32))
        assert len(index) == 1
    finally:
        index.close()
