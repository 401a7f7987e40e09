"""benchmarks/index.py --backends and --reindex at a tiny size: the corpus, the brute-force truth, both
backends end to end (the JSON the script writes, exact FAISS at recall 1.0), and where a run stops."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

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

    def lite_fails(name, dim, workdir, *rest):
        if name == "milvus-lite":
            raise MemoryError("pretend Lite ran out")
        return real(name, dim, workdir, *rest)

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
    # every answer is the old generation's, then the new one's (the two checkpoints answer differently)
    assert on["one_generation"] and on["answers"]["other"] == 0, on


def _real_file(tmp_path, d: int = 16, videos: int = 4, segments: int = 5, noise: float = 0.05):
    """An `embed_videos`-like file: `videos` originals of `segments` segments (original view) and one
    near-duplicate copy of each (two views: the copy's own segments plus noise, and a mirrored view that is
    unrelated), with the .tsv naming the pairs. Returns (path, the real residuals of the pairs)."""
    rng = np.random.default_rng(11)
    rows, vecs, residuals = [], [], []
    for v in range(videos):
        orig = rng.standard_normal((segments, d)).astype(np.float32)
        orig /= np.linalg.norm(orig, axis=1, keepdims=True)
        for s in range(segments):
            rows.append((f"v{v}", f"v{v}.mp4", s, s, s + 1, "original", ""))
            vecs.append(orig[s])
        for s in range(segments):
            copy = orig[s] + noise * rng.standard_normal(d).astype(np.float32)
            copy /= np.linalg.norm(copy)
            other = rng.standard_normal(d).astype(np.float32)
            for view, x in (("original", copy), ("mirrored", other / np.linalg.norm(other))):
                rows.append((f"v{v}.copy", f"v{v}.copy.mp4", s, s, s + 1, view, f"v{v}"))
                vecs.append(x)
            residuals.append(copy - orig[s])
    path = tmp_path / "real.npy"
    np.save(path, np.array(vecs, dtype=np.float32))
    lines = ["\t".join(("video", "file", "segment", "start", "end", "view", "origins"))]
    lines += ["\t".join(map(str, r)) for r in rows]
    path.with_suffix(".tsv").write_text("\n".join(lines) + "\n")
    return path, np.array(residuals)


def test_real_embeddings_grow_by_their_near_duplicate_residuals(tmp_path):
    path, real = _real_file(tmp_path)
    found = bench.near_duplicate_residuals(np.load(path), path.with_suffix(".tsv"))
    # each copy segment is paired with its own original (its nearest), not with the unrelated view
    np.testing.assert_allclose(np.sort(np.linalg.norm(found, axis=1)), np.sort(np.linalg.norm(real, axis=1)),
                               atol=1e-6)
    model = bench.Residuals.fit(found)
    draws = model.draw(20_000, np.random.default_rng(0))
    np.testing.assert_allclose(draws.mean(0), found.mean(0), atol=0.01)
    total = ((found - found.mean(0)) ** 2).sum(1).mean() * len(found) / (len(found) - 1)
    assert np.isclose(((draws - draws.mean(0)) ** 2).sum(1).mean(), total, rtol=0.05)

    c = Corpus.make(2_000, 999, embeddings=str(path), mean_segments=10)
    assert c.dim == 16 and c.rows == 60 and c.residuals.pairs == 20
    x = np.concatenate([vec for _, _, vec in c.iter_videos()])
    again = np.concatenate([vec for _, _, vec in Corpus.make(2_000, 16, embeddings=str(path),
                                                             mean_segments=10).iter_videos()])
    assert x.shape == (2_000, 16) and np.array_equal(x, again)  # the same vectors in every process
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    base = np.load(path)
    np.testing.assert_allclose(x[:60], base / np.linalg.norm(base, axis=1, keepdims=True), atol=1e-6)
    # every grown row is a near-duplicate of a real row, about as near as the real copies are
    nearest = (x[60:] @ base.T).max(axis=1)
    real_cos = 1 - np.median(np.linalg.norm(real, axis=1)) ** 2 / 2
    assert np.median(nearest) > real_cos - 0.05 and nearest.min() > 0.5
    q = make_queries(c, 30, 4, 0.75, residual_scale=1.0)
    assert np.allclose(np.linalg.norm(q.vectors, axis=1), 1, atol=1e-5)
    # growing needs the pairs
    path.with_suffix(".tsv").rename(tmp_path / "gone.tsv")
    with pytest.raises(ValueError, match="no real.tsv"):
        Corpus.make(2_000, 16, embeddings=str(path))
    lines = (tmp_path / "gone.tsv").read_text().splitlines()
    path.with_suffix(".tsv").write_text("\n".join(ln.rsplit("\t", 1)[0] + "\t" for ln in lines[1:]) + "\n")
    path.with_suffix(".tsv").write_text(lines[0] + "\n" + path.with_suffix(".tsv").read_text())
    with pytest.raises(ValueError, match="names no near-duplicate pair"):
        Corpus.make(2_000, 16, embeddings=str(path))


def test_full_and_compact_widths_on_grown_real_embeddings(tmp_path):
    from safetensors.numpy import save_file

    from model.reduction import MEAN, PROJECTION, apply_reduction, fit_reduction

    path, _ = _real_file(tmp_path)
    fit = fit_reduction(np.load(path), 8, "pca")
    ckpt = tmp_path / "reduced"
    ckpt.mkdir()
    save_file({MEAN: fit.mean, PROJECTION: fit.projection}, str(ckpt / "model.safetensors"))
    compact = Corpus.make(600, 16, embeddings=str(path), mean_segments=10, reduction=str(ckpt))
    full = Corpus.make(600, 16, embeddings=str(path), mean_segments=10)
    assert compact.dim == 8 and compact.full_dim == 16
    np.testing.assert_allclose(compact.block(0)[1], apply_reduction(full.block(0)[1], fit.mean, fit.projection),
                               atol=1e-6)
    res = compare_backends(["faiss-flat", "faiss-ivf-sq8"], [600], dim=16, nq=15, mean_segments=10,
                           embeddings=str(path), isolate=False, reduction=str(ckpt), widths=("full", "compact"),
                           overrides={"faiss-ivf-sq8": ("nprobe=64",)})
    [size] = res["sizes"]
    assert res["dim"] == 16 and res["compact_dim"] == 8 and res["growth"]["residuals"]["pairs"] == 20
    assert set(size["backends"]) == {"faiss-flat", "faiss-ivf-sq8", "faiss-flat@8", "faiss-ivf-sq8@8"}
    for name, r in size["backends"].items():
        assert "error" not in r, (name, r)
        assert r["segments"] == 600 and r["peak_rss_mib"] > 0
    assert size["backends"]["faiss-flat"]["recall_at_10"] == size["backends"]["faiss-flat@8"]["recall_at_10"] == 1.0
    assert size["backends"]["faiss-ivf-sq8"]["kind"] == "ivf_sq8"
    assert size["backends"]["faiss-ivf-sq8"]["settings"]["nprobe"] == 64
    assert 0 <= size["backends"]["faiss-flat@8"]["recall_at_10_vs_full_width"] <= 1
    assert "recall_at_10_vs_full_width" not in size["backends"]["faiss-flat"]
    with pytest.raises(ValueError, match="needs --reduction"):
        compare_backends(["faiss-flat"], [100], dim=16, widths=("compact",), isolate=False)


def test_embed_videos_writes_every_view_and_the_near_duplicate_pairs(tmp_path):
    from benchmarks import embed_videos
    from tests.model.test_reduction import tiny_feature_checkpoint
    from tests.service.media import near_duplicate

    data = Path(__file__).parents[1] / "data"
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("tiger", "car"):
        (videos / f"{name}.mp4").write_bytes((data / f"{name}.mp4").read_bytes())
    near_duplicate(data / "tiger.mp4", videos / "tiger.copy.mp4")
    (videos / "broken.mp4").write_bytes(b"not a video")
    rel = tmp_path / "rel.json"
    rel.write_text(json.dumps({"tiger.copy": ["tiger"]}))
    ckpt = tiny_feature_checkpoint(tmp_path / "ck")
    out = tmp_path / "real.npy"
    embed_videos.main(["--videos", str(videos), "--relevance", str(rel), "--checkpoint", str(ckpt), "--out",
                       str(out), "--runtime", "torch"])
    x = np.load(out)
    rows = out.with_suffix(".tsv").read_text().splitlines()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert rows[0].split("\t") == list(embed_videos.COLUMNS) and len(rows) - 1 == len(x) == meta["rows"]
    assert x.shape[1] == 32 and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    table = [r.split("\t") for r in rows[1:]]
    assert {r[0] for r in table} == {"tiger", "car", "tiger.copy"}
    assert {r[5] for r in table} >= {"original", "mirrored"}  # every query view
    assert {r[6] for r in table if r[0] == "tiger.copy"} == {"tiger"} and {r[6] for r in table if r[0] != "tiger.copy"} == {""}
    assert list(meta["skipped"]) == [str(videos / "broken.mp4")] and meta["near_duplicate_videos"] == 1
    assert meta["checkpoint"]["sha256"] == hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert len(bench.near_duplicate_residuals(x, out.with_suffix(".tsv"))) == sum(
        1 for r in table if r[0] == "tiger.copy" and r[5] == "original")
    with pytest.raises(SystemExit, match="must end in .npy"):
        embed_videos.main(["--videos", str(videos), "--out", str(tmp_path / "x.txt")])
