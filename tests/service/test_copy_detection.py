"""Copy detection through the API on the shipped checkpoint and the real clips of tests/data: the match
decision (`match`, at the threshold of the checkpoint's card or the request's `min_score`) and the copied
spans located in both videos (`spans`).

Indexed: the four clips (8 s each) and `long`, 24 s of the sailboat, the tiger and the car one after the
other. Queries are edited copies, other indexed clips, and excerpts of `long` between other footage (the
Capitol clip before, 8 s of a generated Mandelbrot zoom after).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from media.video import ffmpeg_exe
from model import SHIPPED_CHECKPOINT
from model.checkpoint import read_config_and_card
from service.http.app import create_app
from service.settings import Settings
from tests.service.conftest import ingest
from tests.service.test_shipped_checkpoint import DATA, EDITS, _edited_copy

CLIPS = ["tiger.mp4", "car.mp4", "sailboat.mp4", "capitol.mp4"]
LONG = [("sailboat.mp4", 0, 8), ("tiger.mp4", 0, 8), ("car.mp4", 0, 8)]  # `long`: 24 s
MANDELBROT = "lavfi:mandelbrot=size=224x224:rate=8"
SEGMENT = 8.0  # the indexed segments: 8 s windows at 1 frame/s


def concat(parts: list[tuple[str | Path, float, float]], out: Path) -> Path:
    """(file or `lavfi:` source, start s, end s) one after the other, 224x224 at 8 fps, H.264."""
    args, chains = [], []
    for i, (src, a, b) in enumerate(parts):
        args += ["-f", "lavfi", "-i", str(src)[6:]] if str(src).startswith("lavfi:") else ["-i", str(src)]
        chains.append(f"[{i}:v]trim=start={a}:end={b},setpts=PTS-STARTPTS,scale=224:224,fps=8,format=yuv420p[v{i}]")
    chains.append("".join(f"[v{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=1:a=0[out]")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *args, "-filter_complex", ";".join(chains),
                    "-map", "[out]", "-c:v", "libx264", "-crf", "28", "-pix_fmt", "yuv420p", str(out)],
                   check=True, timeout=120)
    return out


def checkpoint_with_match(directory: Path, match: dict | None) -> Path:
    """A copy of the shipped checkpoint whose card has this `match` (None: none); the weights are linked."""
    directory.mkdir(parents=True)
    (directory / "model.safetensors").symlink_to(Path(SHIPPED_CHECKPOINT).resolve() / "model.safetensors")
    shutil.copy(Path(SHIPPED_CHECKPOINT) / "config.json", directory / "config.json")
    card = json.loads((Path(SHIPPED_CHECKPOINT) / "card.json").read_text())
    card.pop("match", None)
    if match is not None:
        card["match"] = match
    (directory / "card.json").write_text(json.dumps(card, indent=2))
    return directory


def service(checkpoint: Path, data_dir: Path) -> TestClient:
    settings = Settings(checkpoint=checkpoint, data_dir=data_dir, device="cpu", batch_size=8, torch_threads=2,
                        text_search=False, allowed_hosts=["testserver"])
    return TestClient(create_app(settings), raise_server_exceptions=False)


def search_file(client: TestClient, path: Path, **fields: str) -> dict:
    with open(path, "rb") as f:
        r = client.post("/v1/search", files={"file": (path.name, f, "video/mp4")}, data={"k": "10", **fields})
    assert r.status_code == 200, r.text
    return r.json()


def hit_of(body: dict, video_id: int) -> dict:
    return next(h for h in body["hits"] if h["video_id"] == video_id)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("copy-media")
    out = {"long": concat([(DATA / n, a, b) for n, a, b in LONG], root / "long.mp4")}
    for i, vf in enumerate(EDITS.values()):
        out[f"tiger-edit-{i}"] = _edited_copy(DATA / "tiger.mp4", vf, root / f"tiger-edit-{i}.mp4")
    return out


@pytest.fixture(scope="module")
def shipped(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict]]:
    """The service on the shipped checkpoint as it is (its card's threshold), with the clips and `long`."""
    with service(SHIPPED_CHECKPOINT, tmp_path_factory.mktemp("copy-data")) as c:
        ids = {name: ingest(c, DATA / name) for name in CLIPS}
        ids["long"] = ingest(c, media["long"])
        yield c, ids


def card_threshold() -> float:
    _, card = read_config_and_card(SHIPPED_CHECKPOINT)
    assert card.match is not None, "the shipped card has no match threshold"
    return card.match.min_score


@pytest.mark.slow
@pytest.mark.parametrize("edit", [
    0,
    # at the calibrated threshold (1 % of the calibration split's no-copy queries, on the background-normalised
    # match_score) the grey, downscaled copy inside a coloured frame ranks first but scores below it (a known
    # miss of the shipped model, docs/ndvr.md "Copy detection"); strict: a model that fixes it fails here
    pytest.param(1, marks=pytest.mark.xfail(strict=True, reason="below the calibrated threshold (a known miss)")),
])
def test_a_clip_and_its_edited_copy_match(shipped: tuple[TestClient, dict], media: dict[str, Path], edit: int) -> None:
    """The edited tiger is a copy of the tiger clip (one span: the whole of both) and of the tiger part of
    `long`; the other clips are only similar."""
    client, ids = shipped
    body = search_file(client, media[f"tiger-edit-{edit}"])
    assert body["match_threshold"]["min_score"] == card_threshold()
    assert body["match_threshold"]["source"] == "checkpoint"
    tiger = hit_of(body, ids["tiger.mp4"])
    assert body["hits"][0]["video_id"] in (ids["tiger.mp4"], ids["long"])
    assert tiger["match"] is True and tiger["score"] >= card_threshold()
    assert [(s["query_start"], s["query_end"], s["start"], s["end"]) for s in tiger["spans"]] == [(0.0, 8.0, 0.0, 8.0)]
    long = hit_of(body, ids["long"])
    assert long["match"] is True and len(long["spans"]) == 1
    span = long["spans"][0]
    assert abs(span["start"] - 8.0) <= SEGMENT and abs(span["end"] - 16.0) <= SEGMENT, span
    for other in ("car.mp4", "sailboat.mp4", "capitol.mp4"):
        h = hit_of(body, ids[other])
        assert h["match"] is False and h["spans"] == [], h


@pytest.mark.slow
def test_unrelated_real_clips_do_not_match(shipped: tuple[TestClient, dict]) -> None:
    """Each clip searched with its own indexed segments: none of the other three clips is a copy (`long`,
    which holds three of them, is)."""
    client, ids = shipped
    for name in CLIPS:
        r = client.post("/v1/search", json={"video_id": ids[name], "k": 10})
        assert r.status_code == 200, r.text
        by_id = {h["video_id"]: h for h in r.json()["hits"]}
        for other in CLIPS:
            if other != name:
                assert by_id[ids[other]]["match"] is False and by_id[ids[other]]["spans"] == [], (name, other)
        assert by_id[ids["long"]]["match"] is (name != "capitol.mp4"), name


@pytest.mark.slow
@pytest.mark.parametrize(("a", "b"), [
    (1.0, 7.0),
    # 4 s of the sailboat and 6 s of the tiger: at the calibrated threshold the tiger's windows fall below it
    # (the committed clips are stills with camera motion, like the background set, so their bias is high)
    # and the span is located on the sailboat's offset only; strict: fixing it fails here
    pytest.param(4.0, 14.0, marks=pytest.mark.xfail(strict=True, reason="located on one clip's offset only")),
])
def test_an_excerpt_inside_other_footage_is_located_in_both_videos(
        shipped: tuple[TestClient, dict], media: dict[str, Path], tmp_path: Path, a: float, b: float) -> None:
    """`long`'s a..b s (6 s of the sailboat; 4 s of it and 6 s of the tiger) between 8 s of the Capitol and
    8 s of a Mandelbrot zoom: the `long` hit is a copy with a span whose edges are within one segment of
    the truth (query 8..8 + (b - a) s, `long` a..b s), and that overlaps it by half or more in both."""
    client, ids = shipped
    query = concat([(DATA / "capitol.mp4", 0, 8), (media["long"], a, b), (MANDELBROT, 0, 8)], tmp_path / "q.mp4")
    truth_q, truth_v = (8.0, 8.0 + b - a), (a, b)
    hit = hit_of(search_file(client, query), ids["long"])
    assert hit["match"] is True, hit
    spans = [s for s in hit["spans"] if within(s, truth_q, truth_v, SEGMENT)]
    assert spans, (hit["spans"], truth_q, truth_v)
    assert any(iou((s["query_start"], s["query_end"]), truth_q) >= 0.5 and iou((s["start"], s["end"]), truth_v) >= 0.5
               for s in spans), (spans, truth_q, truth_v)


@pytest.mark.slow
def test_the_threshold_is_read_from_the_card(media: dict[str, Path], tmp_path: Path) -> None:
    """The same query, the same scores, on copies of the shipped checkpoint whose cards differ only in
    `match`, served in turn over one data directory: a threshold above the copy's score makes it only
    similar, one below makes it a copy, and a card without one makes nothing a copy unless the request
    sends `min_score`. The index made by the first is served by the others as it is: the card is not part
    of the checkpoint's identity (the weights' sha256)."""
    query = media["tiger-edit-0"]
    data = tmp_path / "data"
    results: dict[str, tuple[dict | None, dict]] = {}
    tiger = None
    for name, match in (("high", {"min_score": 0.999, "false_positive_rate": 0.001, "calibration": "test: high"}),
                        ("low", {"min_score": 0.5, "false_positive_rate": 0.2, "calibration": "test: low"}),
                        ("none", None)):
        with service(checkpoint_with_match(tmp_path / f"ckpt-{name}", match), data) as c:
            if tiger is None:
                tiger = ingest(c, DATA / "tiger.mp4")
            assert c.get(f"/v1/videos/{tiger}").json()["status"] == "indexed"
            body = search_file(c, query)
            results[name] = (body["match_threshold"], hit_of(body, tiger))
            if name == "none":
                body = search_file(c, query, min_score="0.5")
                results["request"] = (body["match_threshold"], hit_of(body, tiger))
    scores = {round(hit["score"], 4) for _, hit in results.values()}
    assert len(scores) == 1 and 0.5 < scores.pop() < 0.999  # the same query, the same score each time
    threshold, hit = results["high"]
    assert threshold == {"min_score": 0.999, "source": "checkpoint", "false_positive_rate": 0.001,
                         "calibration": "test: high"}
    assert hit["match"] is False and hit["spans"] == []
    threshold, hit = results["low"]
    assert threshold["min_score"] == 0.5 and threshold["calibration"] == "test: low"
    assert hit["match"] is True and len(hit["spans"]) == 1
    threshold, hit = results["none"]
    assert threshold is None and hit["match"] is False and hit["spans"] == []
    threshold, hit = results["request"]
    assert threshold == {"min_score": 0.5, "source": "request", "false_positive_rate": None, "calibration": None}
    assert hit["match"] is True and len(hit["spans"]) == 1


def within(span: dict, truth_q: tuple[float, float], truth_v: tuple[float, float], tol: float) -> bool:
    return (abs(span["query_start"] - truth_q[0]) <= tol and abs(span["query_end"] - truth_q[1]) <= tol
            and abs(span["start"] - truth_v[0]) <= tol and abs(span["end"] - truth_v[1]) <= tol)


def iou(x: tuple[float, float], y: tuple[float, float]) -> float:
    inter = max(0.0, min(x[1], y[1]) - max(x[0], y[0]))
    return inter / (max(x[1], y[1]) - min(x[0], y[0]))
