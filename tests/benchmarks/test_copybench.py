"""The copy-detection benchmark: its metrics (pooled µAP, decision rates, the threshold choice, span IoU,
the score normalisations), and a smoke run of the set builder, the runner and the calibration on generated
media (lavfi sources and random still images; nothing is downloaded)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ndvr import copyset
from benchmarks.ndvr.copymetrics import (
    hit_spans,
    interval_iou,
    normalised_scores,
    pooled_micro_ap,
    rates_at,
    span_ious,
    threshold_at_fpr,
)

# ------------------------------------------------------------------------------------- pooled µAP


def test_pooled_micro_ap_hand_computed() -> None:
    scores = np.array([[0.9, 0.2],  # copy of video 0
                       [0.5, 0.7],  # copy of video 1
                       [0.8, 0.6]])  # no copy in the index
    rel = np.array([[True, False], [False, True], [False, False]])
    # pooled ranking: 0.9 T, 0.8 F, 0.7 T, 0.6 F, 0.5 F, 0.2 F -> (1/1 + 2/3) / 2
    assert pooled_micro_ap(scores, rel) == pytest.approx((1 + 2 / 3) / 2)
    # each copy query alone ranks its source first: only the pooling sees the no-copy query's 0.8
    without = pooled_micro_ap(scores[:2], rel[:2])
    assert without == pytest.approx(1.0)


def test_pooled_micro_ap_ties_and_unreturned_pairs() -> None:
    # a tie between a true and a false pair: the false one ranks first -> 1/2
    assert pooled_micro_ap(np.array([[0.5], [0.5]]), np.array([[True], [False]])) == pytest.approx(0.5)
    # a true pair never returned (-inf) is last of the 4 pairs: (1/1 + 2/4) / 2
    scores = np.array([[0.9, 0.1], [-np.inf, 0.3]])
    rel = np.array([[True, False], [True, False]])
    assert pooled_micro_ap(scores, rel) == pytest.approx((1 + 2 / 4) / 2)
    assert math.isnan(pooled_micro_ap(scores, np.zeros_like(rel)))
    with pytest.raises(ValueError):
        pooled_micro_ap(scores, rel[:1])


def test_pooled_micro_ap_without_each_distractor_kind_hand_computed() -> None:
    from benchmarks.ndvr.copyrun import micro_ap_without

    database = ["src0", "src1", "cut-a", "still-b"]
    kind_of = {"cut-a": "tail", "still-b": "still"}
    scores = np.array([[0.9, 0.2, 0.95, 0.1],  # copy of src0; the cut of the same scene scores above it
                       [0.5, 0.7, 0.3, 0.6]])  # copy of src1
    rel = np.array([[True, False, False, False], [False, True, False, False]])
    # all: 0.95 F, 0.9 T, 0.7 T, 0.6 F ... -> (1/2 + 2/3) / 2
    assert pooled_micro_ap(scores, rel) == pytest.approx((1 / 2 + 2 / 3) / 2)
    out = micro_ap_without(scores, rel, database, kind_of)
    assert set(out) == {"tail", "still"}
    assert out["tail"] == pytest.approx(1.0)  # 0.9 T, 0.7 T first
    assert out["still"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # the cut's 0.95 still ranks first
    assert micro_ap_without(scores, rel, database, {}) == {}


# ------------------------------------------------------------------------------------- threshold


def test_threshold_at_fpr_hand_computed() -> None:
    tops = [0.9, 0.5, 0.3, 0.1]
    # 25 % of 4 = 1 may match: the threshold is the first grid point above the 2nd highest (0.5)
    assert threshold_at_fpr(tops, 0.25) == 0.5001
    # under 1 allowed (1 % of 4): above the highest
    assert threshold_at_fpr(tops, 0.01) == 0.9001
    assert threshold_at_fpr(tops, 0.0) == 0.9001
    assert threshold_at_fpr([0.41235, 0.2], 0.0) == 0.4124
    assert threshold_at_fpr([-0.2], 0.0) == -0.1999
    # 100 no-copy queries at 1 %: the highest may match, the second may not
    many = list(np.linspace(0.0, 0.99, 100))
    t = threshold_at_fpr(many, 0.01)
    assert 0.98 < t <= 0.9801 and rates_at(t, many, []).false_positives == 1
    with pytest.raises(ValueError):
        threshold_at_fpr(tops, 1.0)
    with pytest.raises(ValueError):
        threshold_at_fpr([], 0.01)


def test_rates_at_threshold() -> None:
    r = rates_at(0.5, no_copy_top=[0.6, 0.4, 0.5, 0.1], copy_source=[0.7, 0.49, 0.5])
    # ">=": 0.6 and 0.5 fire among the no-copy queries; 0.7 and 0.5 of the copies match
    assert (r.false_positives, r.no_copy_queries, r.false_positive_rate) == (2, 4, 0.5)
    assert (r.copies_matched, r.copy_queries) == (2, 3) and r.copy_recall == pytest.approx(2 / 3)
    # the threshold chosen at a rate keeps that rate on the same scores
    tops = np.random.default_rng(0).uniform(0, 1, 300)
    t = threshold_at_fpr(tops, 0.01)
    assert rates_at(t, tops, []).false_positives == 3 and rates_at(t - 1e-4, tops, []).false_positives > 3


# ------------------------------------------------------------------------------------- spans


def test_interval_iou() -> None:
    assert interval_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert interval_iou((0, 10), (0, 10)) == 1.0
    assert interval_iou((0, 4), (6, 9)) == 0.0
    assert interval_iou((0, 4), None) == 0.0
    assert interval_iou((None, None), (0, 1)) == 0.0


def test_span_ious_from_spans_or_the_segment_pair() -> None:
    hit = {"score": 0.8, "start": 10.0, "end": 18.0, "query_start": 0.0, "query_end": 8.0,
           "spans": [{"query_start": 20.0, "query_end": 30.0, "start": 40.0, "end": 50.0, "score": 0.6},
                     {"query_start": 4.0, "query_end": 12.0, "start": 14.0, "end": 22.0, "score": 0.9}]}
    # the highest-scoring span is used
    assert span_ious(hit, (4.0, 12.0), (14.0, 22.0)) == (1.0, 1.0)
    # no "spans" field: the hit's one segment pair
    old = {k: v for k, v in hit.items() if k != "spans"}
    assert hit_spans(old) == [{"query_start": 0.0, "query_end": 8.0, "start": 10.0, "end": 18.0, "score": 0.8}]
    q, d = span_ious(old, (4.0, 12.0), (14.0, 22.0))
    assert q == pytest.approx(4 / 12) and d == pytest.approx(4 / 12)


# ------------------------------------------------------------------------------------- normalisations


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_normalised_scores_hand_computed() -> None:
    db = [_unit([1, 0]), _unit([0, 1], [1, 1])]
    query = [[_unit([1, 0])], [_unit([0, 1]), _unit([1, 0])]]  # query 1 has two views: the best one counts
    bg = _unit([1, 0], [1, 1], [0, 1])
    out = normalised_scores(query, db, bg, top_n=2)
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(out["raw"], [[1, s], [1, 1]], atol=1e-6)
    # background: the query segment [1, 0] has top-2 background cosines 1 and s -> bias (1 + s) / 2
    b = (1 + s) / 2
    np.testing.assert_allclose(out["background"][0], [1 - b, s - b], atol=1e-6)
    # db_centred: the mean segment m = mean([1,0], [0,1], [s,s]) subtracted, rows renormalised
    m = np.mean(np.concatenate(db), axis=0)

    def c(v: np.ndarray) -> np.ndarray:
        v = v - m
        return v / np.linalg.norm(v)

    q0 = c(query[0][0][0])
    np.testing.assert_allclose(out["db_centred"][0], [q0 @ c(db[0][0]), max(q0 @ c(db[1][0]), q0 @ c(db[1][1]))],
                               atol=1e-6)
    assert set(normalised_scores(query, db)) == {"raw", "db_centred"}  # no background set


# ------------------------------------------------------------------------------------- builder and runner


def _ffmpeg(*args: str) -> None:
    from benchmarks.ndvr.build import _run_ffmpeg

    _run_ffmpeg(list(args))


TINY = copyset.CopySetConfig(seed=1, nocopy_real=1, excerpts_per_source=2, excerpt_s=(1.0, 2.0),
                             host_side_s=(0.5, 1.5), shot_s=(0.6, 1.2), nocopy_stills=2, background=2,
                             max_width=96, preset="ultrafast")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four generated "real" videos (4 s, two packages) and 40 random still images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("copysrc")
    videos = root / "real" / "videos"
    videos.mkdir(parents=True)
    for name, src in {"gen__bars": "smptebars=size=96x64:rate=10:duration=4",
                      "gen__mandel": "mandelbrot=size=96x64:rate=10,trim=duration=4",
                      "gen__life": "life=size=96x64:rate=10:mold=10:ratio=0.5:seed=7,trim=duration=4",
                      "other__test": "testsrc2=size=96x64:rate=10:duration=4"}.items():
        _ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                str(videos / f"{name}.mp4"))
    data = root / "stills" / "skimage" / "skimage" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(data / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_copyset(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("copyset") / "out"
    copyset.build(sources / "real", sources / "stills", out, TINY, workers=2)
    return out


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.mp4"))}


@pytest.mark.slow
def test_copyset_splits_spans_and_determinism(tiny_copyset: Path, sources: Path, tmp_path: Path) -> None:
    from media.video import open_video

    meta = json.loads((tiny_copyset / "copyset.json").read_text())
    assert sorted(set(meta["splits"].values())) == ["calib", "heldout"]
    # both packages are dealt to both splits
    for pkg in ("gen", "other"):
        assert len({s for h, s in meta["splits"].items() if h.startswith(pkg)}) >= 1
    sets = {s: copyset.load_copyset(tiny_copyset / s) for s in copyset.SPLITS}
    used = {}
    for name, cs in sets.items():
        sources_here = {q["source"] for q in cs.queries.values() if q["source"]}
        assert sources_here == {h for h, s in meta["splits"].items() if s == name}
        used[name] = sources_here
        kinds = {q["kind"] for q in cs.queries.values()}
        assert kinds == {"chain", "excerpt", "nocopy"}
        # a no-copy query has no relevant video and its footage is not in the database
        for q in cs.nocopy_queries:
            assert cs.bench.set.relevant[q] == frozenset()
            assert cs.queries[q]["source"] not in cs.bench.set.database
        assert all(len(cs.queries[q]["edits"]) in (2, 3) for q in cs.copy_queries if cs.kind(q) == "chain")
    assert not used["calib"] & used["heldout"]  # disjoint source videos

    # an excerpt of animated footage sits where the manifest says, in both videos
    checked = 0
    for cs in sets.values():
        for q in cs.copy_queries:
            entry = cs.queries[q]
            if cs.kind(q) != "excerpt" or entry["edits"] or entry["source"] == "gen__bars":
                continue
            (q0, q1), (d0, _) = entry["span"]["query"], entry["span"]["db"]
            with open_video(cs.bench.paths[q]) as r:
                assert r.info.duration == pytest.approx(cs.bench.durations[q], abs=1e-3)
                qt, qf = r.frame_times, r.get_frames(np.arange(r.info.num_frames)).frames.numpy().astype(float)
            with open_video(cs.bench.paths[entry["source"]]) as r:
                dt, df = r.frame_times, r.get_frames(np.arange(r.info.num_frames)).frames.numpy().astype(float)
            for offset in (0.25, (q1 - q0) / 2, q1 - q0 - 0.25):
                frame = qf[np.searchsorted(qt, q0 + offset)]
                best = int(np.argmin([np.abs(frame - f).mean() for f in df]))
                assert abs(dt[best] - (d0 + offset)) <= 0.21, (q, offset, dt[best], d0 + offset)
            before = qf[np.searchsorted(qt, q0 - 0.2)]  # host footage, not the original
            assert min(np.abs(before - f).mean() for f in df) > 20
            checked += 1
    assert checked >= 1

    # the same seed gives the same bytes; another seed other parameters
    again = tmp_path / "again"
    copyset.build(sources / "real", sources / "stills", again, TINY, workers=2)
    assert _digests(again) == _digests(tiny_copyset)
    other = copyset.CopySetConfig(**{**TINY.__dict__, "seed": 2})
    cfg_q = "gen__mandel.rotate+noise"
    a = copyset.chain(("rotate", "noise"), copyset.Frame(96, 64), copyset._rng(TINY.seed, f"chain:x:{cfg_q}"))
    b = copyset.chain(("rotate", "noise"), copyset.Frame(96, 64), copyset._rng(other.seed, f"chain:x:{cfg_q}"))
    assert a != b


@pytest.mark.slow
def test_copyrun_and_calibrate_end_to_end(tiny_copyset: Path, tmp_path: Path) -> None:
    """copyrun with the tiny random checkpoint of the service tests (its numbers mean nothing) on the
    calibration split, then calibrate from its JSON: the card gets the threshold of the no-copy scores."""
    from benchmarks.ndvr import calibrate, copyrun
    from tests.service.media import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "copy.json"
    split = tiny_copyset / "calib"
    assert copyrun.main(["--set", str(split), "--checkpoint", str(ckpt), "--methods", "drca,thumb",
                         "--fpr", "0.2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    cs = copyset.load_copyset(split)
    assert res["num_queries"] == len(cs.bench.set.queries) and res["background_videos"] == 2
    drca = res["methods"]["drca"]
    assert 0.0 <= drca["pooled_micro_ap"] <= 1.0 and set(drca["normalisations"]) == {"raw", "db_centred",
                                                                                      "background"}
    # the raw normalisation recomputed from the embeddings is the service's own score
    assert drca["raw_vs_service_max_abs_diff"] < 1e-4
    assert drca["normalisations"]["raw"]["pooled_micro_ap"] == pytest.approx(drca["pooled_micro_ap"], abs=1e-6)
    assert set(drca["per_family_map"]) == {copyset.family_name(f) for f in copyset.FAMILIES} | {"excerpt"}
    assert drca["spans"]["num_excerpt_queries"] == sum(cs.kind(q) == "excerpt" for q in cs.bench.set.queries)
    nocopy_tops = [drca["per_query"][q]["top"] for q in cs.nocopy_queries]
    assert drca["at_target"]["threshold"] == threshold_at_fpr(nocopy_tops, 0.2)
    assert drca["at_target"]["false_positive_rate"] <= 0.2
    assert "thumb" in res["methods"]

    card = ckpt / "card.json"
    before = json.loads(card.read_text())
    assert calibrate.main(["--checkpoint", str(ckpt), "--set", str(split), "--results", str(out),
                           "--fpr", "0.2", "--out", str(tmp_path / "cal.json")]) == 0
    after = json.loads(card.read_text())
    assert after["match"]["min_score"] == drca["at_target"]["threshold"]
    assert after["match"]["false_positive_rate"] == 0.2
    assert "benchmarks.ndvr.calibrate" in after["match"]["calibration"] and "\n" not in after["match"]["calibration"]
    assert {k: v for k, v in after.items() if k != "match"} == {k: v for k, v in before.items() if k != "match"}
    # the next run reads the threshold from the card
    assert copyrun.main(["--set", str(split), "--checkpoint", str(ckpt), "--methods", "drca", "--fpr", "0.2",
                         "--calibration", str(out), "--out", str(out.with_name("again.json"))]) == 0
    again = json.loads(out.with_name("again.json").read_text())["results"]
    assert again["checkpoint"]["card_match"]["min_score"] == after["match"]["min_score"]
    assert again["methods"]["drca"]["at_card_threshold"]["false_positive_rate"] <= 0.2
    assert again["methods"]["drca"]["at_calibrated"]["threshold"] == after["match"]["min_score"]
    # a results file of another split is refused
    with pytest.raises(SystemExit):
        calibrate.main(["--checkpoint", str(ckpt), "--set", str(tiny_copyset / "heldout"), "--results", str(out)])

    # --background: the split's background set embedded by these weights and written into the checkpoint,
    # then the threshold chosen on the match scores it gives
    from model.digest import sha256_file

    with pytest.raises(SystemExit, match="exclude"):
        calibrate.main(["--checkpoint", str(ckpt), "--set", str(split), "--results", str(out),
                        "--background", str(cs.background)])
    assert calibrate.main(["--checkpoint", str(ckpt), "--set", str(split), "--background", str(cs.background),
                           "--fpr", "0.2", "--out", str(tmp_path / "cal-bg.json")]) == 0
    match = json.loads(card.read_text())["match"]
    bg = match["background"]
    assert bg["sha256"] == sha256_file(ckpt / "background.safetensors") and bg["videos"] == 2
    assert bg["weights_sha256"] == sha256_file(ckpt / "model.safetensors") and bg["top_n"] == 5
    assert match["false_positive_rate"] == 0.2 and "--background" in match["calibration"]
    # results measured without that background are refused; a run with it gives the same threshold
    with pytest.raises(SystemExit, match="background set"):
        calibrate.main(["--checkpoint", str(ckpt), "--set", str(split), "--results", str(out), "--dry-run"])
    bg_out = tmp_path / "copy-bg.json"
    assert copyrun.main(["--set", str(split), "--checkpoint", str(ckpt), "--methods", "drca", "--fpr", "0.2",
                         "--out", str(bg_out)]) == 0
    drca = json.loads(bg_out.read_text())["results"]["methods"]["drca"]
    assert drca["score"] == "match_score" and drca["service"]["background"]["sha256"] == bg["sha256"]
    for q, p in drca["per_query"].items():
        assert p["top_hit_match_score"] is not None and p["top_hit_match_score"] <= p["top"] + 1e-6, q
    assert drca["normalisations"]["raw"]["pooled_micro_ap"] != drca["pooled_micro_ap"]  # on match_score now
    assert calibrate.main(["--checkpoint", str(ckpt), "--set", str(split), "--results", str(bg_out), "--fpr", "0.2",
                           "--dry-run", "--out", str(tmp_path / "cal-bg2.json")]) == 0
    again = json.loads((tmp_path / "cal-bg2.json").read_text())["results"]
    assert again["threshold"] == match["min_score"] and again["match"]["background"] == bg


def test_service_decisions_count_the_hits_wrongly_marked_as_copies() -> None:
    from types import SimpleNamespace

    from benchmarks.ndvr.copyrun import service_decisions

    relevant = {"q-copy": frozenset({"src"}), "q-none": frozenset()}
    cs = SimpleNamespace(bench=SimpleNamespace(set=SimpleNamespace(relevant=relevant)),
                         kind=lambda q: "chain" if q == "q-copy" else copyset.NOCOPY)
    hits = [[{"external_id": "src", "match": True}, {"external_id": "same-scene", "match": True},
             {"external_id": "same-scene-2", "match": True}, {"external_id": "other", "match": False}],
            [{"external_id": "other", "match": False}]]
    out = service_decisions(cs, ["q-copy", "q-none"], hits)
    assert out["copy_recall"] == 1.0 and out["false_positive_rate"] == 0.0  # the query-level rates miss it
    assert (out["hits_marked"], out["hits_marked_wrong"]) == (3, 2)
    assert service_decisions(cs, ["q-copy"], [[{"external_id": "src"}]]) is None  # no match field
