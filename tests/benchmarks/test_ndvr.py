"""The NDVR benchmark: metrics, the build script's output format, the baselines, and one end-to-end run.

Generated media only (lavfi sources); nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ndvr import build as ndvr_build
from benchmarks.ndvr.baselines import (
    ThumbnailMethod,
    chamfer_matrix,
    hamming,
    hashes_to_bits,
    query_match_fraction,
)
from benchmarks.ndvr.metrics import average_precision, evaluate, hit_at_1
from media.video import open_video
from training.data.retrieval_sets import load_near_duplicate

# ------------------------------------------------------------------------------------- metrics


def test_average_precision_hand_computed() -> None:
    # ranking R N R N R: precision at the hits 1/1, 2/3, 3/5
    assert average_precision([5, 4, 3, 2, 1], [True, False, True, False, True]) == pytest.approx(
        (1 + 2 / 3 + 3 / 5) / 3
    )
    assert average_precision([3, 2, 1], [False, False, True]) == pytest.approx(1 / 3)
    assert math.isnan(average_precision([1.0, 2.0], [False, False]))


def test_ties_are_broken_pessimistically() -> None:
    # all equal: the relevant video goes after the two non-relevant ones
    assert average_precision([0.0, 0.0, 0.0], [True, False, False]) == pytest.approx(1 / 3)
    assert hit_at_1([0.0, 0.0, 0.0], [True, False, False]) == 0.0
    # a strictly higher score still wins
    assert hit_at_1([0.5, 0.0, 0.0], [True, False, False]) == 1.0
    # a tie between the relevant video and one other, below a third
    assert average_precision([0.9, 0.5, 0.5], [False, True, False]) == pytest.approx(1 / 3)


def test_evaluate_per_transform() -> None:
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # q1 (flip) -> a first: AP 1
            [0.3, 0.8, 0.1],  # q2 (flip) -> c relevant at rank 3: AP 1/3
            [0.2, 0.1, 0.7],  # q3 (blur) -> relevant b and c: c rank 1, b rank 3: (1 + 2/3) / 2
        ]
    )
    res = evaluate(
        sim,
        ["q1", "q2", "q3"],
        ["a", "b", "c"],
        {"q1": {"a"}, "q2": {"c"}, "q3": {"b", "c"}},
        {"q1": "flip", "q2": "flip", "q3": "blur"},
    )
    assert res.per_transform_map["flip"] == pytest.approx((1 + 1 / 3) / 2)
    assert res.per_transform_map["blur"] == pytest.approx((1 + 2 / 3) / 2)
    assert res.map == pytest.approx((1 + 1 / 3 + 5 / 6) / 3)
    assert res.recall_at_1 == pytest.approx(2 / 3)
    assert res.per_transform_recall_at_1 == {"blur": 1.0, "flip": 0.5}
    with pytest.raises(ValueError):
        evaluate(sim[:2], ["q1", "q2", "q3"], ["a", "b", "c"], {}, {})


def test_chamfer_matrix() -> None:
    e = np.eye(3, dtype=np.float32)
    q = [e[[0, 1]]]  # two rows: x and y
    db = [e[[0]], e[[0, 1]], e[[2]]]
    # video 0: best for x is 1, for y is 0 -> 0.5; video 1: 1; video 2: 0
    np.testing.assert_allclose(chamfer_matrix(q, db), [[0.5, 1.0, 0.0]])


def test_chamfer_matrix_agrees_with_training_metrics() -> None:
    import torch

    from training.metrics import chamfer_matrix as training_chamfer

    rng = np.random.default_rng(0)

    def rows(n: int) -> np.ndarray:
        x = rng.standard_normal((n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    q, db = [rows(3), rows(1)], [rows(2), rows(5), rows(1)]
    expected = training_chamfer([torch.from_numpy(x) for x in q], [torch.from_numpy(x) for x in db])
    np.testing.assert_allclose(chamfer_matrix(q, db), expected, rtol=1e-5, atol=1e-6)


def test_query_match_fraction_and_hamming() -> None:
    zero = "0" * 64
    near = "0" * 56 + "ffffffff"  # 32 bits set: not within 31
    close = "0" * 57 + "fffffff"  # 28 bits set: within 31
    bits = hashes_to_bits([zero, near, close])
    assert bits.shape == (3, 256)
    np.testing.assert_array_equal(hamming(bits[:1].astype(np.float32), bits.astype(np.float32)), [[0, 32, 28]])
    q = [hashes_to_bits([zero, "f" * 64])]
    db = [hashes_to_bits([near]), hashes_to_bits([close]), hashes_to_bits([]), hashes_to_bits([zero, "f" * 64])]
    # the all-ones query hash matches nothing but itself; the zero hash matches `close` (28 <= 31)
    np.testing.assert_allclose(query_match_fraction(q, db), [[0.0, 0.5, 0.0, 1.0]])
    np.testing.assert_allclose(query_match_fraction([hashes_to_bits([])], db), [[0, 0, 0, 0]])


# ------------------------------------------------------------------------------------- build


def _ffmpeg(*args: str) -> None:
    ndvr_build._run_ffmpeg(list(args))


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated "real" videos (and one too short), a benchmark with three transforms."""
    root = tmp_path_factory.mktemp("ndvr")
    videos = root / "real" / "videos"
    videos.mkdir(parents=True)
    sources = {
        "gen__bars": "smptebars=size=96x64:rate=10:duration=3",
        "gen__mandel": "mandelbrot=size=96x64:rate=10,trim=duration=3",
        "gen__life": "life=size=96x64:rate=10:mold=10:ratio=0.5:seed=7,trim=duration=3",
        "gen__short": "testsrc2=size=96x64:rate=10:duration=1",
    }
    for name, src in sources.items():
        _ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                str(videos / f"{name}.mp4"))
    cfg = ndvr_build.BuildConfig(seed=3, max_seconds=2.5, preset="ultrafast")
    ndvr_build.build(root / "real", root / "bench", cfg, transforms=("reencode_lq", "hflip", "subclip"))
    return root / "bench"


def test_build_writes_a_loadable_benchmark(tiny_bench: Path) -> None:
    nd = load_near_duplicate(tiny_bench / "queries.txt", tiny_bench / "database.txt", tiny_bench / "relevance.json")
    assert sorted(nd.database) == ["gen__bars", "gen__life", "gen__mandel"]  # gen__short: under 2 s
    assert len(nd.queries) == 9
    assert all(nd.relevant[q] == frozenset({q.split(".")[0]}) for q in nd.queries)
    bench = ndvr_build.load_benchmark(tiny_bench)
    assert sorted(set(bench.transform.values())) == ["hflip", "reencode_lq", "subclip"]
    assert all(bench.paths[v].is_file() for v in (*nd.queries, *nd.database))
    meta = json.loads((tiny_bench / "ndvr.json").read_text())
    assert meta["skipped"][0]["id"] == "gen__short"
    # 3 s originals are cut to max_seconds (2.5 s) and re-encoded; the sub-clip is 40-60 % of that
    assert all(o["cut"] for o in meta["originals"])
    assert bench.durations["gen__bars"] == pytest.approx(2.5, abs=0.11)
    assert 0.9 <= bench.durations["gen__bars.subclip"] <= 1.6
    with open_video(bench.paths["gen__bars.hflip"]) as r:
        assert (r.info.width, r.info.height) == (96, 64)


def test_transform_parameters_are_deterministic() -> None:
    o = ndvr_build.Original("x", Path("x.mp4"), 10.0, 25.0, 320, 240)
    cfg = ndvr_build.BuildConfig(seed=0)
    for i, (name, fn) in enumerate(ndvr_build.TRANSFORMS.items()):
        a = fn(o, ndvr_build.transform_rng(0, "x", i), cfg)
        b = fn(o, ndvr_build.transform_rng(0, "x", i), cfg)
        assert (a.graph, a.params) == (b.graph, b.params), name
    c = ndvr_build._center_crop(o, ndvr_build.transform_rng(1, "x", 2), cfg)
    d = ndvr_build._center_crop(o, ndvr_build.transform_rng(0, "x", 2), cfg)
    assert c.params != d.params


def test_thumbnail_baseline_ranks_the_reencode_first(tiny_bench: Path) -> None:
    bench = ndvr_build.load_benchmark(tiny_bench)
    nd = bench.set
    thumb = ThumbnailMethod()
    desc = {v: thumb.describe(bench.paths[v]) for v in (*nd.queries, *nd.database)}
    assert desc["gen__bars"].shape == (16, 256)
    np.testing.assert_allclose(np.linalg.norm(desc["gen__bars"], axis=1), 1.0, rtol=1e-5)
    sim = thumb.similarity([desc[q] for q in nd.queries], [desc[d] for d in nd.database])
    res = evaluate(sim, nd.queries, nd.database, nd.relevant, bench.transform)
    assert res.per_transform_recall_at_1["reencode_lq"] == 1.0


@pytest.fixture(scope="module")
def tiny_distractors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated stills given camera motion (no synth seeds, no long real video to cut)."""
    from PIL import Image

    from benchmarks.ndvr import distractors

    root = tmp_path_factory.mktemp("distractors")
    data = root / "stills" / "skimage" / "skimage" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(data / f"img{i}.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(data / "small.png")  # under MIN_SIDE: left out
    distractors.build(root / "stills", root / "real", root / "out", seed=0, stills_count=10, synth_seeds=[],
                      synth_per_class=1, workers=1)
    return root / "out"


def test_distractors_are_built_and_loadable(tiny_distractors: Path) -> None:
    from benchmarks.ndvr.distractors import load_distractors

    d = load_distractors(tiny_distractors)
    assert sorted(d.kind.values()) == ["still", "still"]
    for vid, path in d.paths.items():
        with open_video(path) as r:
            assert r.info.width == 320 and r.info.height in (180, 240)
            assert 2.0 <= r.info.duration <= 6.1 and d.durations[vid] == pytest.approx(r.info.duration, abs=1e-3)


def test_run_end_to_end(tiny_bench: Path, tiny_distractors: Path, tmp_path: Path) -> None:
    """run.py with the tiny random checkpoint of the service tests (its numbers mean nothing): the service
    path (upload + index + search), both aggregations, two database sizes, the baselines."""
    from benchmarks.ndvr import run
    from tests.service.media import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    methods = "drca,thumb" + (",vpdq" if _has_vpdq() else "")
    out = tmp_path / "ndvr.json"
    assert run.main(["--bench", str(tiny_bench), "--distractors", str(tiny_distractors), "--checkpoint", str(ckpt),
                     "--methods", methods, "--sizes", "3,all", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("python -m benchmarks.ndvr.run")
    res = doc["results"]
    assert res["num_queries"] == 9 and res["num_database"] == 5 and res["sizes"] == [3, 5]
    assert res["distractor_kinds"] == {"still": 2}
    assert "model.safetensors" in res["checkpoint"]["sha256"]
    names = ["drca_max", "drca_chamfer", *methods.split(",")[1:]]
    assert sorted(res["methods"]) == sorted(names)
    assert res["methods"]["drca_max"]["default"] and not res["methods"]["drca_chamfer"]["default"]
    for name in names:
        for n in ("3", "5"):
            m = res["methods"][name]["by_size"][n]
            assert 0.0 <= m["map"] <= 1.0 and 0.0 <= m["recall_at_1"] <= 1.0
            assert set(m["per_transform_map"]) == {"hflip", "reencode_lq", "subclip"}
        assert "per_query_ap" in res["methods"][name]["by_size"]["5"]
    svc = res["service"]
    assert svc["settings"]["aggregation"] == "max" and svc["settings"]["remove_borders"] is True
    assert svc["ingest"]["videos"] == 5 and svc["ingest"]["video_s_per_s"] > 0
    assert svc["route_latency"]["n"] == 9 and svc["route_latency"]["p50_ms"] > 0
    assert res["methods"]["thumb"]["throughput_video_s_per_s"] > 0


def _has_vpdq() -> bool:
    try:
        import vpdq  # noqa: F401
    except ImportError:
        return False
    return True


VPDQ_MISSING = ("vpdq is not installed: pip install -e '.[bench]' (it builds from source: a C++ toolchain, "
                "pkg-config and the FFmpeg development packages, docs/ndvr.md \"vPDQ install\")")


VPDQ_REQUIRED = os.environ.get("DRCA_REQUIRE_VPDQ") == "1"  # set by .ci/run, which installs the bench extra


@pytest.mark.skipif(not VPDQ_REQUIRED and not _has_vpdq(), reason=VPDQ_MISSING)
def test_vpdq_matches_a_reencode(tiny_bench: Path) -> None:
    """Skipped where the bench extra is missing, except in CI (.ci/run installs it and sets
    DRCA_REQUIRE_VPDQ=1), where a missing vpdq is a failure rather than a silent skip."""
    if not _has_vpdq():
        pytest.fail(f"DRCA_REQUIRE_VPDQ=1 and {VPDQ_MISSING}")
    from benchmarks.ndvr.baselines import VPDQMethod

    bench = ndvr_build.load_benchmark(tiny_bench)
    m = VPDQMethod()
    q = m.describe(bench.paths["gen__bars.reencode_lq"])
    db = [m.describe(bench.paths[d]) for d in bench.set.database]
    assert q.shape[1] == 256 and q.dtype == np.uint8
    sim = m.similarity([q], db)[0]
    assert sim[list(bench.set.database).index("gen__bars")] == 1.0
