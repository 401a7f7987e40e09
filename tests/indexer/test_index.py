"""VideoIndex semantics: add/search/delete/upsert per kind, aggregation, k expansion, concurrency."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

import indexer.index as index_module
from indexer import IndexConfig, InvalidVectors, Span, VideoIndex

D = 16
KINDS = ["flat", "ivf_flat", "ivf_pq", "hnsw"]


def config(kind: str, **kw) -> IndexConfig:
    return IndexConfig(
        dim=D, kind=kind, nlist=4, nprobe=4, pq_m=4, pq_nbits=4, fsync=False, snapshot_every=0, **kw
    )


def segs(n: int) -> list[Span]:
    return [Span(float(i), float(i + 1)) for i in range(n)]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=KINDS)
def filled(request, tmp_path):
    """An index of `kind` with 100 videos x 3 segments, trained (rebuild finished)."""
    rng = np.random.default_rng(1)
    idx = VideoIndex.open(tmp_path, config(request.param))
    vecs = {v: unit(rng, 3) for v in range(100)}
    for v, x in vecs.items():
        idx.add_video(v, segs(3), x)
    idx.rebuild(wait=True)
    idx.wait_for_rebuild()
    yield idx, vecs, request.param
    idx.close()


def test_kind_after_training(filled):
    idx, _, kind = filled
    assert idx.stats().kind == kind
    assert len(idx) == 100 and idx.stats().segments == 300


def test_search_finds_own_segment(filled):
    idx, vecs, _ = filled
    for v in (0, 17, 99):
        hits = idx.search(vecs[v][1:2], k=1, query_segments=[Span(5, 6)])
        assert hits[0].video_id == v
        assert hits[0].segment == Span(1.0, 2.0) and hits[0].query_segment == Span(5, 6)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_delete_and_upsert(filled, tmp_path):
    idx, vecs, kind = filled
    assert idx.delete_video(5) is True
    assert idx.delete_video(5) is False
    assert idx.get(5) is None
    assert all(h.video_id != 5 for h in idx.search(vecs[5], k=100))
    new = unit(np.random.default_rng(7), 2)
    idx.add_video(6, [Span(10, 12), Span(12, 14)], new)  # upsert: replaces all 3 segments
    got = idx.get(6)
    assert got is not None and got.segments == [Span(10, 12), Span(12, 14)]
    assert idx.stats().segments == 300 - 3 - 1
    assert all(h.video_id != 6 for h in idx.search(vecs[6], k=100) if h.score > 0.999)
    assert idx.search(new[1], k=1)[0].video_id == 6
    if kind == "hnsw":
        assert idx.stats().tombstones == 6  # HNSW cannot remove: deleted segments are tombstones
    idx.close()
    again = VideoIndex.open(tmp_path, idx.config)
    assert len(again) == 99 and again.get(5) is None and again.get(6).segments == got.segments
    again.close()


def test_exclude_and_min_score(filled):
    idx, vecs, _ = filled
    full = idx.search(vecs[3][0], k=50)
    assert full[0].video_id == 3 and len({round(h.score, 6) for h in full[:4]}) == 4
    hits = idx.search(vecs[3][0], k=5, exclude_ids={3})
    assert [h.video_id for h in hits] == [h.video_id for h in full if h.video_id != 3][:5]  # the next five
    threshold = (full[2].score + full[3].score) / 2
    above = idx.search(vecs[3][0], k=50, min_score=threshold)
    assert [h.video_id for h in above] == [h.video_id for h in full[:3]]  # exactly those above it
    assert idx.search(vecs[3][0], k=50, min_score=1.01) == []


def test_hnsw_compacts_tombstones(tmp_path):
    idx = VideoIndex.open(tmp_path, config("hnsw", max_tombstone_fraction=0.1))
    rng = np.random.default_rng(2)
    for v in range(40):
        idx.add_video(v, segs(2), unit(rng, 2))
    for v in range(10):
        idx.delete_video(v)
    idx.wait_for_rebuild()
    st = idx.stats()
    assert st.tombstones < 10 and st.segments == 60
    assert {h.video_id for h in idx.search(unit(rng, 3), k=100)} == set(range(10, 40))
    idx.close()


def test_aggregation_max_vs_chamfer(tmp_path):
    """Hand-made vectors: A matches one query segment perfectly, B matches both well."""
    e = np.eye(D, dtype=np.float32)
    q = np.stack([e[0], e[1]])
    idx = VideoIndex.open(tmp_path, config("flat"))
    idx.add_video(1, [Span(0, 2), Span(2, 4)], np.stack([e[0], e[5]]))  # max 1.0, chamfer 0.5
    b = np.stack([e[0] + 0.6 * e[1], e[1] + 0.6 * e[0]])
    idx.add_video(2, [Span(10, 11), Span(11, 12)], b)  # each ~0.857: chamfer 0.857
    qs = [Span(0, 1), Span(1, 2)]
    mx = idx.search(q, k=2, query_segments=qs, aggregation="max")
    assert [h.video_id for h in mx] == [1, 2]
    assert (
        mx[0].score == pytest.approx(1.0) and mx[0].segment == Span(0, 2) and mx[0].query_segment == qs[0]
    )
    ch = idx.search(q, k=2, query_segments=qs, aggregation="chamfer")
    assert [h.video_id for h in ch] == [2, 1]
    assert ch[0].score == pytest.approx(1 / np.sqrt(1.36), abs=1e-5)
    assert ch[1].score == pytest.approx(0.5, abs=1e-5)
    idx.close()


def brute_force(vecs: dict[int, np.ndarray], q: np.ndarray, agg: str) -> list[tuple[int, float]]:
    out = []
    for v, x in vecs.items():
        sims = q @ x.T
        out.append((v, float(sims.max() if agg == "max" else sims.max(axis=1).mean())))
    return sorted(out, key=lambda t: -t[1])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("agg", ["max", "chamfer"])
def test_k_expansion_matches_brute_force(tmp_path, monkeypatch, seed, agg):
    """Flat index: fewer than k long videos close to the query hold every segment of the first k-NN of
    each query segment (max(4k, 32) segments), so the k-NN must widen (more than one call) before the other videos show;
    the expanded k-NN + re-scoring returns exactly the brute-force top videos, each once."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 15))
    first = max(4 * k, 32)  # the first k-NN's size (`search_videos`)
    q = unit(rng, int(rng.integers(1, 5)))
    flood = set(rng.choice(30, size=int(rng.integers(1, k)), replace=False).tolist())
    idx = VideoIndex.open(tmp_path, config("flat"))
    vecs = {}
    for v in range(int(rng.integers(30, 120))):
        if v in flood:  # `first` segments near each query segment, nearer to it than any random one
            x = np.repeat(q, first, axis=0)
            x += 0.05 * rng.standard_normal(x.shape).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        else:  # skewed segment counts
            x = unit(rng, int(rng.choice([1, 2, 40])))
        vecs[v] = x
        idx.add_video(v, segs(len(x)), x)
    calls = []
    real = index_module.search_videos

    def counting(q, k, qsegs, aggregation, min_score, exclude_ids, neighbours, videos, max_kk):
        def counted(kk):
            calls.append(kk)
            return neighbours(kk)

        return real(q, k, qsegs, aggregation, min_score, exclude_ids, counted, videos, max_kk)

    monkeypatch.setattr(index_module, "search_videos", counting)
    got = idx.search(q, k=k, aggregation=agg)
    assert len(calls) > 1 and calls[0] == first, calls
    assert len({h.video_id for h in got}) == len(got) == k  # each video once
    want = brute_force(vecs, q, agg)[: k + 1]
    assert [h.score for h in got] == pytest.approx([s for _, s in want[:k]], abs=1e-5)
    tied = any(a - b < 1e-5 for (_, a), (_, b) in itertools.pairwise(want))  # float32 vs float64 order
    assert [h.video_id for h in got] == [v for v, _ in want[:k]] or tied
    assert flood < {h.video_id for h in got}
    idx.close()


def test_bad_input_is_a_typed_error(tmp_path):
    idx = VideoIndex.open(tmp_path, config("flat"))
    with pytest.raises(InvalidVectors):
        idx.add_video(1, segs(2), np.ones((2, D + 1)))
    with pytest.raises(InvalidVectors):
        idx.add_video(1, segs(1), np.ones((2, D)))
    with pytest.raises(InvalidVectors):
        idx.add_video(1, segs(1), np.full((1, D), np.nan))
    with pytest.raises(InvalidVectors):
        idx.add_video(1, [Span(3, 2)], np.ones((1, D)))
    with pytest.raises(InvalidVectors):
        idx.search(np.zeros((1, D)))
    with pytest.raises(InvalidVectors):
        idx.search(np.ones((1, D)), k=0)
    assert len(idx) == 0 and idx.search(np.ones((1, D))) == []
    idx.close()


def test_searches_concurrent_with_adds_and_rebuilds(tmp_path):
    """Readers never see a half-added video nor an exception while writers add, upsert and delete
    and the index switches from flat to IVF in the background."""
    idx = VideoIndex.open(tmp_path, config("auto", auto_threshold=200, auto_kind="ivf_flat"))
    rng = np.random.default_rng(3)
    base = unit(rng, 1)[0]
    errors: list[BaseException] = []
    stop = threading.Event()

    def video(v: int) -> np.ndarray:
        # Every segment of video v is the same direction + tiny noise: all its segments share a score.
        r = np.random.default_rng(v)
        return base + 0.05 * r.standard_normal((4, D)).astype(np.float32)

    def writer() -> None:
        try:
            for v in range(300):
                idx.add_video(v, segs(4), video(v))
                if v % 7 == 0:
                    idx.add_video(v // 2, segs(4), video(v // 2))  # upsert
                if v % 11 == 0:
                    idx.delete_video(v // 3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                for h in idx.search(base[None], k=20):
                    got = idx.get(h.video_id)
                    # A video is either whole (4 segments) or absent (deleted since), never partial.
                    assert got is None or len(got.segments) == 4
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    idx.wait_for_rebuild()
    assert not errors, errors
    assert idx.stats().kind == "ivf_flat"
    live = set(range(300)) - {v // 3 for v in range(300) if v % 11 == 0}
    assert set(idx._videos) == live  # noqa: SLF001 - the authoritative state
    # Writes made while the IVF index was being built were replayed onto it: nothing lost, no leftovers.
    assert idx._index.ntotal == idx.stats().segments == 4 * len(live)  # noqa: SLF001
    hits = idx.search(base[None], k=len(live) + 5)
    assert len({h.video_id for h in hits}) == len(hits) == len(live)
    idx.close()
