"""Files with several video streams (the decoder picks its own), and animated images (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from media.video import NoVideoStream, VideoLimits, VideoTooLarge, open_video, probe_header
from tests.media.media import ffmpeg, lavfi

H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("streams")
    small = lavfi(d / "small.mp4", "testsrc2=size=64x48:rate=10:duration=2", *H264)
    big = lavfi(d / "big.mp4", "testsrc2=size=640x480:rate=10:duration=2", *H264)
    out = {"small": small, "big": big}
    for name, first, second in (("small_big", small, big), ("big_small", big, small)):
        out[name] = d / f"{name}.mp4"
        ffmpeg("-i", str(first), "-i", str(second), "-map", "0:v", "-map", "1:v", "-c", "copy", str(out[name]))
    out["gif"] = lavfi(d / "anim.gif", "testsrc2=size=64x48:rate=10:duration=1")
    return out


@pytest.mark.parametrize("name", ["small_big", "big_small"])
def test_every_video_stream_is_checked_against_the_pixel_limit(streams, name):
    """The probe used to check the first stream only, while decord decodes the larger one."""
    with pytest.raises(VideoTooLarge, match="640x480"):
        open_video(streams[name], VideoLimits(max_pixels=100 * 100))
    assert len(probe_header(streams[name]).streams) == 2


def test_the_decoded_stream_is_the_one_described(streams):
    """Both streams pass the limits: `info` (and the memory bound of `get_frames`) is the decoded one's."""
    with open_video(streams["small_big"], VideoLimits(max_pixels=640 * 480)) as reader:
        frame = reader.get_frames([0]).frames[0]
        assert (reader.info.width, reader.info.height) == (frame.shape[1], frame.shape[0])
    with open_video(streams["small"], VideoLimits(max_pixels=640 * 480)) as reader:
        assert (reader.info.width, reader.info.height) == (64, 48)  # one stream: as before


def test_an_animated_gif_is_not_called_a_still_image(streams):
    with pytest.raises(NoVideoStream) as e:
        open_video(streams["gif"])
    assert "still image" not in e.value.reason and "animated" in e.value.reason
