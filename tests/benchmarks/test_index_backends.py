"""benchmarks/index.py --backends and --reindex at a tiny size: the corpus, the brute-force truth, both
backends end to end (the JSON the script writes, exact FAISS at recall 1.0), and where a run stops."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmarks import index as bench
from benchmarks.index import Corpus, compare_backends, exact_top_videos, make_queries, run_isolated

D = 32


def test_corpus_is_seeded_grouped_and_unit_norm():
    c = Corpus.make(500, D, seed=3, mean_segments=10)
    assert c.counts.sum() == 500 and (c.counts >= 1).all() and c.offsets[-1] == 500
    videos = list(c.iter_videos())
    assert [v for v, _, _ in videos] == list(range(c.videos))
    x = np.concatenate([vec for _, _, vec in videos])
    assert x.shape == (500, D) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    again = np.concatenate([vec for _, _, vec in Corpus.make(500, D, seed=3, mean_segments=10).iter_videos()])
    assert np.array_equal(x, again)  # the same vectors for every backend (and in every process)
    assert len(videos[1][1]) == len(videos[1][2]) == c.counts[1]


def test_exact_top_videos_is_brute_force():
    c = Corpus.make(400, D, seed=0, mean_segments=6)
    q = make_queries(c, 12, 4, 0.75)
    truth = exact_top_videos(c, q, 10)
    x = np.concatenate([vec for _, _, vec in c.iter_videos()])
    owner = np.repeat(np.arange(c.videos), c.counts)
    for i in range(len(q)):
        vecs, spans = q.get(i)
        assert len(spans) == len(vecs) <= 4
        best = (x @ vecs.T).max(axis=1)  # each stored segment's best query segment
        score = np.full(c.videos, -np.inf)
        np.maximum.at(score, owner, best)
        assert truth[i].tolist() == np.argsort(-score, kind="stable")[:10].tolist()


def test_both_backends_through_the_script(tmp_path, monkeypatch):
    """`main` with --backends (each run in its own process) writes the JSON: every figure per backend,
    exact FAISS finds the exact top 10."""
    out = tmp_path / "index_backends.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "benchmarks/index.py",
            "--backends",
            "faiss,milvus-lite",
            "--sizes",
            "500",
            "--dim",
            str(D),
            "--queries",
            "20",
            "--segments-per-video",
            "10",
            "--out",
            str(out),
        ],
    )
    bench.main()
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("python -m benchmarks.index --backends faiss,milvus-lite")
    assert {"cpu_model", "cpu_cores", "versions"} <= doc["environment"].keys()
    res = doc["results"]["backends"]
    assert res["dim"] == D and res["k"] == 10 and res["stopped"] == {}
    [size] = res["sizes"]
    assert size["n"] == 500 and set(size["backends"]) == {"faiss", "milvus-lite"}
    for name, r in size["backends"].items():
        assert "error" not in r, (name, r)
        for key in (
            "add_vectors_per_s",
            "add_call_p50_ms",
            "add_call_p99_ms",
            "query_p50_ms",
            "query_p99_ms",
            "qps",
            "recall_at_10",
            "peak_rss_mib",
            "index_rss_mib",
            "disk_mib",
        ):
            assert isinstance(r[key], int | float) and r[key] >= 0, (name, key, r)
        assert r["segments"] == 500 and r["query_p50_ms"] <= r["query_p99_ms"]
    assert size["backends"]["faiss"]["kind"] == "flat"  # the service's default below 200,000 segments
    assert size["backends"]["faiss"]["recall_at_10"] == 1.0
    assert size["backends"]["milvus-lite"]["kind"] == "hnsw"


def test_in_process_hnsw_too_and_a_failing_backend_stops_at_its_size(monkeypatch):
    real = bench.open_backend

    def lite_fails(name, dim, workdir):
        if name == "milvus-lite":
            raise MemoryError("pretend Lite ran out")
        return real(name, dim, workdir)

    monkeypatch.setattr(bench, "open_backend", lite_fails)
    res = compare_backends(
        ["faiss", "faiss-hnsw", "milvus-lite"], [500, 300], dim=D, nq=10, mean_segments=10, isolate=False
    )
    small, large = res["sizes"]  # in increasing size
    assert small["n"] == 300 and large["n"] == 500
    assert small["backends"]["faiss"]["recall_at_10"] == 1.0
    assert small["backends"]["faiss-hnsw"]["kind"] == "hnsw"
    assert small["backends"]["milvus-lite"]["error"] == "MemoryError: pretend Lite ran out"
    assert small["backends"]["milvus-lite"]["stage"] == "open"
    assert res["stopped"] == {
        "milvus-lite": {"size": 300, "error": "MemoryError: pretend Lite ran out", "stage": "open"}
    }
    assert large["backends"]["milvus-lite"] == {"skipped": "failed at 300 vectors"}
    assert "error" not in large["backends"]["faiss"]


def test_the_rss_guard_stops_a_run_and_says_so(tmp_path):
    c = Corpus.make(200, D)
    q = make_queries(c, 5, 4, 0.75)
    spec = {
        "backend": "faiss",
        "n": 200,
        "dim": D,
        "seed": 0,
        "mean_segments": 20,
        "embeddings": None,
        "workdir": str(tmp_path / "index"),
        "k": 10,
        "add_batch": 1,
        "warmup": 0,
        "threads": 1,
    }
    r = run_isolated(spec, q, exact_top_videos(c, q, 10), tmp_path, max_rss_bytes=1)
    assert r["error"].startswith("stopped: RSS") and "--max-rss-gb" in r["error"] and "progress" in r


def test_embeddings_file_instead_of_random(tmp_path):
    x = np.random.default_rng(5).standard_normal((300, D)).astype(np.float32)
    np.save(tmp_path / "e.npy", x)
    c = Corpus.make(250, 999, embeddings=str(tmp_path / "e.npy"), mean_segments=10)
    assert c.dim == D
    got = np.concatenate([vec for _, _, vec in c.iter_videos()])
    assert np.allclose(got, x[:250] / np.linalg.norm(x[:250], axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="fewer than the size"):
        Corpus.make(301, D, embeddings=str(tmp_path / "e.npy"))


@pytest.mark.slow
def test_reindex_offline_and_online(tmp_path):
    r = bench.measure_reindex(tmp_path, "faiss", videos=2, seconds=4, size=64, searches_before=5)
    assert "error" not in r, r
    assert r["offline"]["embedded"] == 2 and r["offline"]["video_s_per_s"] > 0
    on = r["online"]
    assert on["embedded"] == 2 and on["video_s_per_s"] > 0 and on["search_errors"] == 0
    assert on["search_before_searches"] == 5 and on["search_before_p50_ms"] > 0
