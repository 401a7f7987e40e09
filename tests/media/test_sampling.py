"""Samplers: exact indices (mmaction arithmetic), checked on a video whose frames encode their index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media.sampling import SampleFrames, fixed_segments, frame_timeline, uniform_sample
from media.video import open_video
from tests.media.media import read_index


def decoded_indices(path: Path, indices: np.ndarray) -> list[int]:
    clip = open_video(path).get_frames(indices)
    return [read_index(f) for f in clip.frames.numpy()]


# ----------------------------------------------------------------------------- SampleFrames
def test_sample_frames_test_mode_8x32x1_exact(index_video: Path) -> None:
    s = SampleFrames(clip_len=8, frame_interval=32, num_clips=1, test_mode=True)
    sample = s(300, 25.0)
    # avg_interval = (300 - 256 + 1) / 1 = 45 -> offset int(22.5) = 22
    expected = [22 + 32 * k for k in range(8)]
    assert sample.indices.tolist() == expected
    np.testing.assert_allclose(sample.timestamps, np.array(expected) / 25.0)
    assert decoded_indices(index_video, sample.indices) == expected


def test_sample_frames_test_mode_multi_clip() -> None:
    s = SampleFrames(clip_len=2, frame_interval=4, num_clips=3, test_mode=True)
    # ori = 8, avg = (100 - 8 + 1) / 3 = 31 -> offsets int(15.5), int(46.5), int(77.5)
    assert s.frame_indices(100).tolist() == [15, 19, 46, 50, 77, 81]


def test_sample_frames_short_video_loops(short_index_video: Path) -> None:
    # 100 frames < 8 * 32: test offset 0, out-of-bound indices wrap (mmaction 'loop').
    s = SampleFrames(8, 32, 1, test_mode=True)
    expected = [0, 32, 64, 96, 28, 60, 92, 24]
    assert s.frame_indices(100).tolist() == expected
    assert decoded_indices(short_index_video, s.frame_indices(100)) == expected


def test_sample_frames_repeat_last() -> None:
    s = SampleFrames(8, 32, 1, test_mode=True, out_of_bound_opt="repeat_last")
    assert s.frame_indices(100).tolist() == [0, 32, 64, 96, 96, 96, 96, 96]


def test_sample_frames_train_mode_offsets_in_range(index_video: Path) -> None:
    s = SampleFrames(8, 32, 1, test_mode=False)
    rng = np.random.default_rng(0)
    offsets = {int(s.clip_offsets(300, rng)[0]) for _ in range(400)}
    # avg_interval = 45: offset uniform in [0, 45)
    assert min(offsets) == 0 and max(offsets) == 44 and len(offsets) > 30
    idx = s.frame_indices(300, np.random.default_rng(1))
    assert np.all(np.diff(idx) == 32)
    assert decoded_indices(index_video, idx) == idx.tolist()


def test_sample_frames_train_mode_seeded_and_multi_clip() -> None:
    s = SampleFrames(4, 2, num_clips=3, test_mode=False)
    a = s.frame_indices(60, np.random.default_rng(7))
    b = s.frame_indices(60, np.random.default_rng(7))
    assert a.tolist() == b.tolist()
    offsets = a.reshape(3, 4)[:, 0]
    # avg_interval = (60 - 8 + 1) // 3 = 17: clip k starts in [17k, 17k + 17)
    for k, off in enumerate(offsets):
        assert 17 * k <= off < 17 * k + 17


def test_sample_frames_train_mode_short_branches() -> None:
    # num_frames > max(num_clips, ori_clip_len) but avg_interval == 0: sorted random offsets
    s = SampleFrames(clip_len=4, frame_interval=2, num_clips=5, test_mode=False)
    off = s.clip_offsets(10, np.random.default_rng(0))  # ori 8, avg (10-8+1)//5 = 0, 10 > 8
    assert np.all(np.diff(off) >= 0) and off.max() <= 2
    # avg_interval == 0 and num_frames <= ori: evenly spaced by ratio
    s2 = SampleFrames(clip_len=4, frame_interval=2, num_clips=2, test_mode=False)
    assert s2.clip_offsets(8, np.random.default_rng(0)).tolist() == [0, 0]  # ratio (8-8+1)/2=0.5 -> round
    # avg_interval < 0: zeros, indices loop
    s3 = SampleFrames(clip_len=8, frame_interval=4, num_clips=1, test_mode=False)
    assert s3.frame_indices(5, np.random.default_rng(0)).tolist() == [0, 4, 3, 2, 1, 0, 4, 3]


def test_sample_frames_rejects_bad_args() -> None:
    with pytest.raises(ValueError):
        SampleFrames(0)
    with pytest.raises(ValueError):
        SampleFrames(8).frame_indices(0)


# --------------------------------------------------------------------------------- uniform
def test_uniform_test_mode_middles(index_video: Path) -> None:
    s = uniform_sample(300, 25.0, num_segments=8, test_mode=True)
    # segment length 37.5: middles at 18.75, 56.25, ... -> floor
    expected = [int((k + 0.5) * 37.5) for k in range(8)]
    assert s.indices.tolist() == expected == [18, 56, 93, 131, 168, 206, 243, 281]
    assert decoded_indices(index_video, s.indices) == expected


def test_uniform_train_mode_one_per_segment() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        idx = uniform_sample(300, 25.0, 8, test_mode=False, rng=rng).indices
        for k, i in enumerate(idx):
            assert k * 300 // 8 <= i < (k + 1) * 300 // 8


def test_uniform_short_video_repeats_sorted() -> None:
    idx = uniform_sample(3, 25.0, 8, test_mode=True).indices
    assert idx.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


# -------------------------------------------------------------------------------- segments
def test_fixed_segments_one_fps_eight_frames(index_video: Path) -> None:
    segs = fixed_segments(300, 25.0, window_s=8, stride_s=8, frames_per_segment=8)
    # 12 s: [0, 8) and a tail window moved back to end at 12 s: [4, 12)
    assert [(s.start_s, s.end_s) for s in segs] == [(0.0, 8.0), (4.0, 12.0)]
    # frames at the half seconds: t = 0.5, 1.5, ... -> index floor(25 t)
    assert segs[0].indices.tolist() == [12, 37, 62, 87, 112, 137, 162, 187]
    assert segs[1].indices.tolist() == [112, 137, 162, 187, 212, 237, 262, 287]
    np.testing.assert_allclose(segs[1].timestamps, segs[1].indices / 25.0)
    assert decoded_indices(index_video, segs[1].indices) == segs[1].indices.tolist()


def test_fixed_segments_exact_multiple_and_overlap() -> None:
    segs = fixed_segments(400, 25.0, window_s=8, stride_s=8, frames_per_segment=8)  # 16 s
    assert [(s.start_s, s.end_s) for s in segs] == [(0.0, 8.0), (8.0, 16.0)]
    segs = fixed_segments(400, 25.0, window_s=8, stride_s=4, frames_per_segment=4)
    assert [(s.start_s, s.end_s) for s in segs] == [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0)]


def test_an_overlapping_tail_window_within_one_frame_interval_is_left_out() -> None:
    """Query windows (8 s every 4 s, 1 fps): an 8.1 s video is one window, not a second one 0.1 s later that
    samples nearly the same moments; a tail a whole frame interval on is still added. Back-to-back windows
    (indexed videos, no `min_tail_shift_s`) keep every tail."""
    def spans(n: int, stride: float, shift: float) -> list[tuple[float, float]]:
        segs = fixed_segments(n, 10.0, window_s=8, stride_s=stride, frames_per_segment=8, min_tail_shift_s=shift)
        return [(round(s.start_s, 3), round(s.end_s, 3)) for s in segs]

    assert spans(81, 4, 1.0) == [(0.0, 8.0)]  # 8.1 s
    assert spans(81, 4, 0.0) == [(0.0, 8.0), (0.1, 8.1)]
    assert spans(90, 4, 1.0) == [(0.0, 8.0), (1.0, 9.0)]  # 9 s: the tail is a frame interval on
    assert spans(125, 4, 1.0) == [(0.0, 8.0), (4.0, 12.0)]  # 12.5 s: a tail at 4.5 s is 0.5 s after 4 s
    assert spans(81, 8, 0.0) == [(0.0, 8.0), (0.1, 8.1)]


def test_fixed_segments_short_video_one_segment() -> None:
    segs = fixed_segments(50, 25.0, window_s=8, stride_s=8, frames_per_segment=8)  # 2 s
    assert len(segs) == 1
    assert (segs[0].start_s, segs[0].end_s) == (0.0, 2.0)
    # spread over the whole 2 s: t = 0.125, 0.375, ... -> floor(25 t)
    assert segs[0].indices.tolist() == [3, 9, 15, 21, 28, 34, 40, 46]
    assert fixed_segments(1, 25.0)[0].indices.tolist() == [0] * 8


def test_fixed_segments_use_real_frame_times() -> None:
    # VFR: 10 frames at 0.1 s then 10 at 1 s: the window maps seconds to the frame on screen.
    times = np.concatenate([np.arange(10) * 0.1, 1.0 + np.arange(10) * 1.0])
    segs = fixed_segments(20, 0.0, window_s=4, stride_s=4, frames_per_segment=4, frame_times=times)
    assert segs[0].indices.tolist() == [5, 10, 11, 12]  # t = 0.5, 1.5, 2.5, 3.5
    np.testing.assert_allclose(segs[0].timestamps, times[[5, 10, 11, 12]])
    with pytest.raises(ValueError):
        frame_timeline(3, 25.0, np.zeros(4))
