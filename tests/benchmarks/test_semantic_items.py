"""The semantic benchmark's held-out set (benchmarks/semantic_items.json, the `set_queries` of
benchmarks/semantic_queries.json): checked for internal consistency, with no media; the exact chance
figures; the still-to-clip rendering on a made-up picture."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks.semantic import (
    CLIP_FPS,
    CLIP_SECONDS,
    CLIP_SIZE,
    ITEMS,
    QUERIES,
    chance_metrics,
    expected_chance,
    load_items,
    load_queries,
    load_set_queries,
    still_clip,
)
from training.data.distill import is_heldout_image, load_split

ALLOWED_SOURCES = {"openclipart-png", "wesnoth-1.16-data", "desktop-base", "gnome-backgrounds", "scikit-image"}


@pytest.fixture(scope="module")
def stills() -> list[dict[str, str]]:
    return load_items(ITEMS)


@pytest.fixture(scope="module")
def heldout_videos() -> list[str]:
    videos, _ = load_queries(QUERIES)
    names = load_split().heldout_videos
    out = sorted(f for f in videos if Path(f).name in names)
    assert len(out) == len(names) == 7, "every held-out video of the split is in the queries file"
    return out


def test_the_stills_are_at_least_50_held_out_allowed_pictures(stills):
    fraction = load_split().image_fraction
    assert len(stills) >= 50
    assert json.loads(ITEMS.read_text())["about"]  # how they were chosen, said in the file
    for st in stills:
        m = re.fullmatch(r"images/([\w.+-]+?)__([0-9a-f]{10})_[\w.+'()-]+\.(png|jpg|jpeg|webp|svg)", st["file"])
        assert m, st["file"]
        assert m.group(1) == st["source"] and st["source"] in ALLOWED_SOURCES, st["file"]
        assert re.fullmatch(r"[0-9a-f]{64}", st["sha256"]) and st["sha256"].startswith(m.group(2)), st["file"]
        assert is_heldout_image(st["sha256"], fraction), f"{st['file']} is not held out"
        assert len(st["description"].split()) >= 2


def test_the_set_sentences_cover_the_set(stills, heldout_videos):
    items = {st["file"] for st in stills} | set(heldout_videos)
    assert len(items) == len(stills) + len(heldout_videos) >= 57  # 50 stills at least, and the 7 videos
    queries = load_set_queries(QUERIES, items)
    assert len(queries) >= 30
    assert len({q["text"].lower() for q in queries}) == len(queries)
    assert not {q["id"] for q in queries} & {q["id"] for q in load_queries(QUERIES)[1]}, "ids shared with the video queries"
    judged = set().union(*(q["relevant"] for q in queries))
    assert len(judged) >= 50, "the sentences are about at least 50 held-out items"
    assert judged & set(heldout_videos), "some sentences are about the held-out videos"
    for q in queries:
        assert len(set(q["relevant"])) == len(q["relevant"]), q["id"]
    assert json.loads(QUERIES.read_text())["set_about"]


def test_a_relevant_item_outside_the_set_is_refused(tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text(json.dumps({"set_queries": [{"id": "s1", "text": "a cat", "relevant": ["images/x__0123456789_cat.png"]}]}))
    with pytest.raises(SystemExit, match="unknown"):
        load_set_queries(bad, {"images/y__0123456789_dog.png"})


def test_expected_chance_by_hand_and_against_random_rankings():
    gallery = list("abcdefghij")
    one = expected_chance({"q": {"a"}}, gallery)
    assert one["R@1"] == pytest.approx(0.1) and one["R@5"] == pytest.approx(0.5)
    assert one["mAP"] == pytest.approx(sum(1 / p for p in range(1, 11)) / 10)
    assert expected_chance({"q": set(gallery)}, gallery)["mAP"] == pytest.approx(1.0)
    relevant = {"q1": {"a"}, "q2": {"b", "c", "d"}, "q3": {"e", "zzz"}, "q4": {"zzz"}}
    exact = expected_chance(relevant, gallery)
    assert exact["queries"] == 3
    mc = chance_metrics(relevant, gallery, draws=3000, seed=1)
    for k in ("R@1", "R@5", "mAP"):
        assert exact[k] == pytest.approx(mc[k], abs=0.02), k
    with pytest.raises(ValueError, match="no query"):
        expected_chance({"q": {"zzz"}}, gallery)


def test_a_still_becomes_the_same_moving_clip_every_time(tmp_path):
    from PIL import Image

    from media.video import open_video

    rng = np.random.default_rng(0)
    src = tmp_path / "still.png"
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(src)
    a = still_clip(src, "ab" * 32, tmp_path / "a.mp4")
    b = still_clip(src, "ab" * 32, tmp_path / "b.mp4")
    assert a.read_bytes() == b.read_bytes()
    with open_video(a) as reader:
        n = len(reader)
        frames = reader.get_frames([0, n - 1]).frames.numpy().astype(np.int16)
    assert n == CLIP_FPS * CLIP_SECONDS and frames.shape[1:3] == (CLIP_SIZE, CLIP_SIZE)
    assert np.abs(frames[0] - frames[1]).mean() > 5, "the camera moves"
