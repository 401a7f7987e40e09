import hashlib
import json
from pathlib import Path

import decord
import numpy as np
import pytest

from training.data.annotations import load_video_list
from training.data.synth import (
    CLASS_TABLE,
    Motion,
    SynthConfig,
    SynthError,
    VideoSpec,
    generate,
    render_video,
)

TINY = SynthConfig(num_classes=2, videos_per_class=2, seed=3, width=64, height=48, min_seconds=1, max_seconds=1)


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    generate(out, TINY, workers=1)
    return out


def test_same_seed_same_bytes(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "b"
    generate(again, TINY, workers=2)  # the worker count must not matter
    assert _digest(tiny) == _digest(again)
    other = tmp_path / "c"
    generate(other, SynthConfig(**{**TINY.__dict__, "seed": 4}), workers=1)
    assert _digest(other)["videos/square_right_0000.mp4"] != _digest(tiny)["videos/square_right_0000.mp4"]


def test_videos_decode_to_expected_frames(tiny: Path) -> None:
    videos = sorted((tiny / "videos").glob("*.mp4"))
    assert len(videos) == 4
    for path in videos:
        vr = decord.VideoReader(str(path))
        assert len(vr) == 25
        assert vr[0].shape == (48, 64, 3)
        assert abs(vr.get_avg_fps() - 25) < 1e-6


def test_annotations_splits_and_captions(tiny: Path) -> None:
    assert (tiny / "classes.txt").read_text().split() == ["square_right", "square_left"]
    splits = {name: load_video_list(tiny / f"{name}.txt", data_prefix=tiny) for name in ("train", "val", "test")}
    assert sorted(r.path.name for recs in splits.values() for r in recs) == sorted(
        p.name for p in (tiny / "videos").glob("*.mp4")
    )
    for recs in (splits["train"], splits["test"]):  # stratified: every class in both
        assert sorted(r.label for r in recs) == [0, 1]
    assert all(r.path.exists() for recs in splits.values() for r in recs)
    rows = [json.loads(line) for line in (tiny / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {row["video"] for row in rows} == {
        f"videos/{p.name}" for p in (tiny / "videos").glob("*.mp4")
    }
    for row in rows:
        assert row["class"].split("_")[0] in row["caption"]
        assert ("left to right" if row["label"] == 0 else "right to left") in row["caption"]


def test_class_table_pairs_opposite_motions() -> None:
    opposite = {
        Motion.RIGHT: Motion.LEFT, Motion.UP: Motion.DOWN,
        Motion.CLOCKWISE: Motion.ANTICLOCKWISE, Motion.GROW: Motion.SHRINK,
    }
    opposite |= {v: k for k, v in opposite.items()}
    table = set(CLASS_TABLE)
    assert len(table) == len(CLASS_TABLE)
    for shape, motion in CLASS_TABLE:
        assert (shape, opposite[motion]) in table
    default = CLASS_TABLE[: SynthConfig().num_classes]
    for shape, motion in default:  # in the default set every shape and every motion appears more than once
        assert sum(s == shape for s, _ in default) > 1 and sum(m == motion for _, m in default) > 1


def test_motion_is_visible_between_sampled_frames() -> None:
    cfg = SynthConfig(num_classes=2, width=160, height=120, min_seconds=3, max_seconds=3, seed=0)
    frames, _ = render_video(cfg, VideoSpec(label=0, index=0, file="x.mp4"))
    idx = np.linspace(0, len(frames) - 1, 8).astype(int)
    diffs = [np.abs(frames[b].astype(int) - frames[a].astype(int)).mean() for a, b in zip(idx, idx[1:], strict=False)]
    assert min(diffs) > 1.0


def test_bad_config_and_non_empty_output(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="num_classes"):
        SynthConfig(num_classes=1000)
    with pytest.raises(SynthError, match="even"):
        SynthConfig(width=63)
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(SynthError, match="not empty"):
        generate(tmp_path, TINY)
    assert (tmp_path / "x").read_text() == "keep me"
