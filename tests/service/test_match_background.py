"""The match score: a video hit's best pair's cosine less its query segment's bias against the checkpoint's
background set (`background.safetensors`, described in the card's match entry), the score the copy decision
and the spans are taken on, and what `min_score` filters; the ranking and `score` stay the raw cosine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file

from benchmarks.ndvr.calibrate import write_background, write_card_match
from benchmarks.ndvr.copyrun import background_set
from model.checkpoint import CheckpointError, read_checkpoint
from service.active import read_serving_checkpoint
from service.http.app import create_app
from service.spans import background_bias, copy_spans
from tests.procs import ROOT, free_port
from tests.service.conftest import ingest, make_settings
from tests.service.media import distinct_videos, tiny_checkpoint

TOP_N = 2


def test_background_bias_hand_computed() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    bg = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    # q0's cosines 1, 0.6, 0 -> top 2: (1 + 0.6) / 2; q1's 0, 0.8, 1 -> (1 + 0.8) / 2
    assert background_bias(q, bg, 2) == pytest.approx([0.8, 0.9])
    assert background_bias(q, bg, 1) == pytest.approx([1.0, 1.0])
    assert background_bias(q, bg, 10) == pytest.approx([1.6 / 3, 1.8 / 3])  # more than B: all of them
    with pytest.raises(ValueError):
        background_bias(q, bg[:0], 2)
    # spans are found on the same bias-adjusted pair scores: a pair at cosine 1 less a bias of 0.8 is 0.2
    segs = [(0.0, 8.0), (8.0, 16.0)]
    spans = copy_spans(q, segs, q, segs, 0.15, query_bias=np.array([0.8, 0.9]))
    assert [(s.query_start, s.start) for s in spans] == [(0.0, 0.0)] and spans[0].score == pytest.approx(0.2)
    assert copy_spans(q, segs, q, segs, 0.25, query_bias=np.array([0.8, 0.9])) == []
    assert len(copy_spans(q, segs, q, segs, 0.25)) == 1  # without a bias both pairs reach it


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("bg-videos")
    made = distinct_videos(root, 7, seconds=9, size=64)
    return {"indexed": made[:4], "background": made[4:]}


@pytest.fixture(scope="module")
def with_background(videos, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint whose card has a threshold and a background set of three unindexed videos, embedded
    by its own weights (as `benchmarks.ndvr.calibrate --background` does)."""
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("bg-ckpt") / "tiny")
    vectors = background_set(ckpt, videos["background"], torch_threads=1)
    entry = write_background(ckpt, vectors, TOP_N, "three generated videos (tests)", len(videos["background"]))
    write_card_match(ckpt, {"min_score": 1.0, "false_positive_rate": None, "calibration": "provisional",
                            "background": entry})
    return ckpt


def served(ckpt: Path, data: Path):
    # query_views=[]: a query is embedded in one view, as stored
    return TestClient(create_app(make_settings(ckpt, data, query_views=[], text_search=False)),
                      raise_server_exceptions=False)


def set_card_threshold(ckpt: Path, min_score: float) -> None:
    match = json.loads((ckpt / "card.json").read_text())["match"]
    write_card_match(ckpt, {**match, "min_score": min_score})


def expected(c: TestClient, ckpt: Path, query: int, ids: list[int]) -> dict[int, tuple[float, float]]:
    """Per other video: (the best pair's cosine, the best pair's cosine less its query segment's bias),
    from the stored vectors and the background file, by hand."""
    index = c.app.state.service.active.current.index
    bg = load_file(str(ckpt / "background.safetensors"))["segments"]
    q = index.get(query).vectors
    cos_bg = q @ bg.T  # (S, B)
    bias = np.sort(cos_bg, axis=1)[:, ::-1][:, :TOP_N].mean(axis=1)
    out = {}
    for v in ids:
        if v != query:
            sims = q @ index.get(v).vectors.T
            out[v] = (float(sims.max()), float((sims - bias[:, None]).max()))
    return out


def search(c: TestClient, **body) -> dict:
    r = c.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_match_score_is_the_score_less_the_bias_and_decides(with_background, videos, tmp_path) -> None:
    ckpt, data = with_background, tmp_path / "data"
    with served(ckpt, data) as c:
        assert c.app.state.service.active.current.background is not None
        ids = [ingest(c, v) for v in videos["indexed"]]
        want = expected(c, ckpt, ids[0], ids)
        body = search(c, video_id=ids[0], k=len(ids))
        hits = body["hits"]
        # the ranking and `score`: the raw cosine; `match_score`: less the bias
        assert [h["video_id"] for h in hits] == sorted(want, key=lambda v: -want[v][0])
        for h in hits:
            assert h["score"] == pytest.approx(want[h["video_id"]][0], abs=2e-6)
            assert h["match_score"] == pytest.approx(want[h["video_id"]][1], abs=2e-6)
            assert h["match_score"] < h["score"] - 1e-3  # the bias is not zero here
        assert body["match_threshold"]["min_score"] == 1.0 and not any(h["match"] for h in hits)
    # a card threshold between the best match_score and its hit's score: on the raw score it would be a copy
    top = max(hits, key=lambda h: h["match_score"])
    threshold = round((top["match_score"] + top["score"]) / 2, 6)
    assert top["match_score"] < threshold <= top["score"]
    set_card_threshold(ckpt, threshold)
    with served(ckpt, data) as c:  # the same index: the card is not part of the checkpoint's identity
        body = search(c, video_id=ids[0], k=len(ids))
        assert body["match_threshold"]["min_score"] == threshold
        assert not any(h["match"] for h in body["hits"]) and any(h["score"] >= threshold for h in body["hits"])
    # the median match score as the threshold: the hits at or above it are copies, with spans on that scale
    low = round(sorted(h["match_score"] for h in hits)[len(hits) // 2] - 1e-5, 6)  # clear of the rounding
    set_card_threshold(ckpt, low)
    with served(ckpt, data) as c:
        hits = search(c, video_id=ids[0], k=len(ids))["hits"]
        copies = [h for h in hits if h["match"]]
        assert copies and len(copies) == sum(h["match_score"] >= low for h in hits)
        for h in copies:
            assert h["spans"] and max(s["score"] for s in h["spans"]) == pytest.approx(h["match_score"], abs=1e-5)
    set_card_threshold(ckpt, 1.0)


def test_min_score_applies_to_the_match_score(with_background, videos, tmp_path) -> None:
    with served(with_background, tmp_path / "data") as c:
        ids = [ingest(c, v) for v in videos["indexed"]]
        full = search(c, video_id=ids[0], k=len(ids))["hits"]
        by_match = sorted(full, key=lambda h: -h["match_score"])
        t = (by_match[0]["match_score"] + by_match[1]["match_score"]) / 2
        assert by_match[1]["score"] >= t  # filtered on `score`, the second would stay
        body = search(c, video_id=ids[0], k=len(ids), min_score=t)
        assert body["match_threshold"]["source"] == "request"
        assert [h["video_id"] for h in body["hits"]] == [by_match[0]["video_id"]]
        assert body["hits"][0]["match"] is True
        # the same through a file query (the stored video's own file finds itself first: excluded)
        with open(videos["indexed"][0], "rb") as f:
            r = c.post("/v1/search", files={"file": ("q.mp4", f, "video/mp4")},
                       data={"k": str(len(ids)), "min_score": str(t), "exclude_ids": str(ids[0])})
        assert r.status_code == 200 and all(h["match_score"] >= t for h in r.json()["hits"])


def test_without_a_background_match_score_is_the_score(checkpoint, videos, tmp_path) -> None:
    with served(checkpoint, tmp_path / "data") as c:
        assert c.app.state.service.active.current.background is None
        ids = [ingest(c, v) for v in videos["indexed"][:3]]
        hits = search(c, video_id=ids[0], k=3)["hits"]
        assert hits and all(h["match_score"] == h["score"] for h in hits)


def test_a_background_of_other_weights_or_another_file_is_refused(with_background, tmp_path) -> None:
    other = tiny_checkpoint(tmp_path / "other", seed=1)  # the same shapes, other weights
    shutil.copy(with_background / "background.safetensors", other)
    card = json.loads((other / "card.json").read_text())
    card["match"] = json.loads((with_background / "card.json").read_text())["match"]
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="embedded by other weights") as e:
        read_serving_checkpoint(other, weights=False)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="embedded by other weights"), served(other, tmp_path / "d1"):
        pass
    # `drca serve`: exit 2 with one line
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DRCA_DATA_DIR": str(tmp_path / "d2"), "DRCA_DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--checkpoint", str(other), "--port",
                           str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "embedded by other weights" in lines[0], proc.stderr[-3000:]

    # its own weights, but the file changed since the card was written
    same = tmp_path / "same"
    shutil.copytree(with_background, same)
    data = bytearray((same / "background.safetensors").read_bytes())
    data[-1] ^= 0x01
    (same / "background.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="has sha256 .* the card says"):
        read_checkpoint(same, weights=False)
    (same / "background.safetensors").unlink()
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(same, weights=False)
