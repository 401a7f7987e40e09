"""Border removal, the inner picture and query views (media.views), on generated clips."""

from __future__ import annotations

import subprocess
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from media.segments import view_clips
from media.video import ffmpeg_exe, open_video
from media.views import Box, active_box, crop, grey_normalised, inner_box, mirror
from model.config import InputConfig

H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p"]


def _render(path: Path, graph: str, *inputs: str) -> Path:
    cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-nostdin", *inputs,
           "-filter_complex", graph, "-map", "[out]", *H264, str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def _frames(path: Path, n: int = 16) -> torch.Tensor:
    with open_video(path) as r:
        idx = torch.linspace(0, r.info.num_frames - 1, n).round().long()
        return r.get_frames(idx).frames


SRC = "testsrc2=size=160x90:rate=10:duration=3"
# a smooth, slowly moving colour field (deterministic, unlike ffmpeg's `gradients`, whose geometry is random)
BACKGROUND = ("color=c=black:size=320x180:rate=10:duration=3,format=rgb24,"
              "geq=r='110+60*sin(X/50+T/2)':g='90+50*cos(Y/40-T/3)':b='120+40*sin((X+Y)/70)'")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("views")
    lavfi = ["-f", "lavfi", "-i"]
    return {
        "plain": _render(root / "plain.mp4", "[0:v]null[out]", *lavfi, SRC),
        # black bars above and below (the frame grows from 90 to 140 rows)
        "letterbox": _render(root / "letterbox.mp4", "[0:v]pad=160:140:0:24:black[out]", *lavfi, SRC),
        # grey bars left and right of a 4:3 picture
        "pillarbox": _render(root / "pillarbox.mp4", "[0:v]pad=200:90:20:0:0x808080[out]", *lavfi,
                             "testsrc2=size=120x90:rate=10:duration=3"),
        # the video at 40 % of its width, over a moving gradient of the full size
        "pip": _render(root / "pip.mp4", "[0:v]scale=128:72[s];[1:v][s]overlay=100:60:shortest=1[out]",
                       *lavfi, "testsrc2=size=320x180:rate=10:duration=3", *lavfi,
                       BACKGROUND),
        "gradient": _render(root / "gradient.mp4", "[0:v]null[out]", *lavfi,
                            BACKGROUND),
        "square_letterbox": _render(root / "sq.mp4", "[0:v]pad=96:140:0:22:black[out]", *lavfi,
                                    "testsrc2=size=96x96:rate=10:duration=3"),
        "flat": _render(root / "flat.mp4", "[0:v]null[out]", *lavfi, "color=c=0x336699:size=96x64:rate=10:d=2"),
    }


def _close(box: Box, expected: tuple[int, int, int, int], tol: int = 2) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box.as_list(), expected, strict=True))


def test_letterbox_is_removed(clips: dict[str, Path]) -> None:
    box = active_box(_frames(clips["letterbox"]))
    assert _close(box, (0, 24, 160, 90)), box


def test_pillarbox_with_a_grey_border_is_removed(clips: dict[str, Path]) -> None:
    box = active_box(_frames(clips["pillarbox"]))
    assert _close(box, (20, 0, 120, 90)), box


def test_no_border_and_flat_video_keep_the_whole_frame(clips: dict[str, Path]) -> None:
    assert active_box(_frames(clips["plain"])) == Box(0, 0, 160, 90)
    assert active_box(_frames(clips["flat"])) == Box(0, 0, 96, 64)  # all flat: not all border


def test_inner_picture_is_found(clips: dict[str, Path]) -> None:
    box = inner_box(_frames(clips["pip"]))
    assert box is not None and _close(box, (100, 60, 128, 72), tol=3), box
    assert inner_box(_frames(clips["gradient"])) is None  # the background alone
    assert inner_box(_frames(clips["flat"])) is None


def test_crop_and_mirror() -> None:
    frames = torch.arange(2 * 4 * 6 * 3, dtype=torch.uint8).reshape(2, 4, 6, 3)
    assert torch.equal(crop(frames, Box(1, 2, 3, 2)), frames[:, 2:4, 1:4])
    assert torch.equal(mirror(frames)[:, :, 0], frames[:, :, 5])
    assert torch.equal(mirror(mirror(frames)), frames)


def test_view_clips_embed_the_active_picture_in_every_view(clips: dict[str, Path]) -> None:
    inp = InputConfig(num_frames=4, img_size=32)
    with open_video(clips["letterbox"]) as r:
        vc = view_clips(r, inp, remove_borders=True, views=("original", "mirrored"))
    with open_video(clips["plain"]) as r:
        plain = view_clips(r, inp, remove_borders=True)
    assert vc.views == ["original", "mirrored"] * (len(vc.segments) // 2)
    assert _close(vc.boxes["original"], (0, 24, 160, 90)) and vc.frame_size == (160, 140)
    assert vc.clips.shape[1:] == (3, 4, 32, 32)
    # the letterboxed copy, borders removed, is the plain video's picture (up to re-encoding)
    assert (vc.clips[0] - plain.clips[0]).abs().mean() < 0.05
    # the mirrored view is the original's mirror image (a square picture: no centre-crop rounding)
    with open_video(clips["square_letterbox"]) as r:
        sq = view_clips(r, inp, remove_borders=True, views=("original", "mirrored"))
    assert _close(sq.boxes["mirrored"], (0, 22, 96, 96))
    assert (sq.clips[1] - sq.clips[0].flip(-1)).abs().max() < 1e-3 < (sq.clips[1] - sq.clips[0]).abs().max()
    with open_video(clips["letterbox"]) as r:
        kept = view_clips(r, inp, remove_borders=False)
    assert kept.boxes["original"] == Box(0, 0, 160, 140) and kept.views == ["original"] * len(kept.segments)


def test_inner_view_is_left_out_when_there_is_no_inner_picture(clips: dict[str, Path]) -> None:
    inp = InputConfig(num_frames=4, img_size=32)
    with open_video(clips["gradient"]) as r:
        vc = view_clips(r, inp, views=("original", "inner"))
    assert set(vc.views) == {"original"} and "inner" not in vc.boxes
    with open_video(clips["pip"]) as r:
        vc = view_clips(r, inp, views=("original", "inner"))
    assert set(vc.views) == {"original", "inner"} and _close(vc.boxes["inner"], (100, 60, 128, 72), tol=3)


def test_grey_normalised_is_invariant_to_grey_and_affine_brightness() -> None:
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 2, 16, 16, generator=g) * 2 - 1  # a preprocessed clip in [-1, 1]
    luma = (clip * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)).sum(0, keepdim=True)
    grey = luma.expand(3, -1, -1, -1)  # the same picture without colour
    brighter = 0.6 * clip + 0.2  # contrast and brightness: affine in every channel
    ref = grey_normalised(clip)
    assert ref.shape == clip.shape and torch.equal(ref[0], ref[2])
    assert torch.allclose(grey_normalised(grey), ref, atol=1e-5)
    assert torch.allclose(grey_normalised(brighter), ref, atol=1e-5)
    assert not torch.allclose(grey_normalised(clip.flip(-1)), ref, atol=1e-2)
    assert torch.equal(grey_normalised(torch.full((3, 1, 4, 4), 0.3)), torch.zeros(3, 1, 4, 4))  # flat


def test_boxes_of_frames_decoded_scaled_down_map_back_to_the_video(clips: dict[str, Path]) -> None:
    """Frames decoded at half size (`max_short_side`): the borders are found on them, and `video_boxes`
    gives the active picture in the video's own pixels."""
    from media.segments import plan_segments, plan_views

    inp = InputConfig(num_frames=4, img_size=32)
    with open_video(clips["letterbox"], max_short_side=70) as r:  # 160x140 -> 80x70
        plan, _ = plan_views(r, plan_segments(r, inp.num_frames), inp, remove_borders=True)
    assert plan.frame_size == (80, 70) and plan.video_size == (160, 140)
    assert _close(plan.boxes["original"], (0, 12, 80, 45))  # the scaler blurs the edge by a pixel
    assert _close(plan.video_boxes()["original"], (0, 24, 160, 90), tol=4)  # 2 decoded pixels
    assert plan.video_boxes()["original"].w == 160  # the whole width stays the whole width


def test_overlapping_windows_decode_each_frame_once_and_only_forward(tmp_path: Path) -> None:
    """A query's windows (8 s every 4 s): with a `FrameCarry` each frame is decoded once, every decode call
    starts after the frames already decoded (the decoder never seeks back to a keyframe), and the clips are
    exactly those of decoding each window on its own; in two calls (the worker's chunks) as in one."""
    from media.segments import FrameCarry, decode_segments, plan_segments, plan_views

    video = _render(tmp_path / "long.mp4", "[0:v]null[out]", "-f", "lavfi", "-i",
                    "testsrc2=size=96x64:rate=5:duration=21")
    inp = InputConfig(num_frames=8, img_size=32)
    with open_video(video) as r:
        segs = plan_segments(r, inp.num_frames, stride_s=4.0)
        assert [s.start_s for s in segs] == [0.0, 4.0, 8.0, 12.0, 13.0]
        plan, _ = plan_views(r, segs, inp, views=("original", "mirrored"))
        alone = torch.cat([decode_segments(r, [s], plan) for s in segs])
        asked: list[list[int]] = []
        real = r.get_frames

        def counting(indices):
            asked.append([int(i) for i in indices])
            return real(indices)

        r.get_frames = counting  # type: ignore[method-assign]
        carry = FrameCarry()
        got = torch.cat([decode_segments(r, segs[:2], plan, carry=carry),
                         decode_segments(r, segs[2:], plan, carry=carry)])
    assert torch.equal(got, alone)
    flat = [i for call in asked for i in call]
    assert len(flat) == len(set(flat)) == len({int(i) for s in segs for i in s.indices})
    assert all(max(a) < min(b) for a, b in pairwise(asked))  # forward only
