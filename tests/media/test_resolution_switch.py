"""Issue 22, F1: the pixel limit holds for every picture of a stream, not only the size in its first header."""

from __future__ import annotations

from pathlib import Path

import pytest

from media.video import VideoLimits, VideoTooLarge, open_video, scan_picture_sizes
from tests.service.media import ffmpeg

# codec -> (encoder options that repeat the parameter sets in-band, raw elementary-stream format)
CODECS = {
    "h264": (["-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "repeat-headers=1", "-pix_fmt", "yuv420p"],
             "h264"),
    "hevc": (["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=none:repeat-headers=1",
              "-pix_fmt", "yuv420p"], "hevc"),
    "mpeg2video": (["-c:v", "mpeg2video"], "mpeg2video"),
}


def switching_video(root: Path, codec: str, big: str = "640x480") -> Path:
    """64x48 for 2 s, then `big` (the issue's reproduction, at a size above the test limit but cheap)."""
    opts, fmt = CODECS[codec]
    rate = 25 if codec == "mpeg2video" else 5  # MPEG-2 knows standard frame rates only
    parts = []
    for i, (src, seconds) in enumerate(((f"testsrc=size=64x48:rate={rate}", 2),
                                         (f"color=c=green:size={big}:rate={rate}", 1))):
        part = root / f"{codec}-{i}.raw"
        ffmpeg("-f", "lavfi", "-i", src, "-t", str(seconds), *opts, "-f", fmt, str(part))
        parts.append(part.read_bytes())
    joined = root / f"{codec}.raw"
    joined.write_bytes(b"".join(parts))
    out = root / f"switch-{codec}.{'mpg' if codec == 'mpeg2video' else 'mp4'}"
    demuxer = "mpegvideo" if codec == "mpeg2video" else fmt
    ffmpeg("-fflags", "+genpts", "-r", str(rate), "-f", demuxer, "-i", str(joined), "-c", "copy", str(out))
    return out


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_stream_that_switches_to_a_larger_size_is_refused(tmp_path, codec):
    video = switching_video(tmp_path, codec)
    assert (640, 480) in scan_picture_sizes(video, codec, 30)
    limits = VideoLimits(max_pixels=320 * 240)
    with pytest.raises(VideoTooLarge, match="640x480"):
        open_video(video, limits)
    with open_video(video, VideoLimits(max_pixels=640 * 480)) as reader:  # within the limit: opens as before
        assert reader.info.width == 64


def test_cropped_h264_reports_its_display_size(tmp_path):
    video = tmp_path / "hd.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=1920x1080:rate=5", "-t", "0.4", "-c:v", "libx264", "-preset",
           "ultrafast", str(video))
    assert scan_picture_sizes(video, "h264", 30) == [(1920, 1080)]  # coded 1920x1088, cropped
