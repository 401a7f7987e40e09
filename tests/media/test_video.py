"""The reader: good media decodes exactly; every bad input is a typed VideoError, fast, never a crash."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from media import video as video_mod
from media.video import (
    EmptyVideo,
    NoVideoStream,
    VideoDecodeError,
    VideoError,
    VideoLimits,
    VideoTooLarge,
    VideoTooLong,
    VideoUnavailable,
    ffmpeg_exe,
    open_video,
)
from tests.media.media import (
    CODE_H,
    CODE_W,
    ffmpeg,
    lavfi,
    read_index,
    write_index_video,
    write_vfr_video,
)

# Every case must finish in < 2 s (media are generated in fixtures, outside the timed part).
fast = pytest.mark.timeout(2, func_only=True)


# ------------------------------------------------------------------------------- bad media
def _empty(d: Path) -> Path:
    p = d / "empty.mp4"
    p.write_bytes(b"")
    return p


def _truncated(d: Path) -> Path:
    src = write_index_video(d / "full.mp4", 50)  # moov at the end: cutting it loses the index
    p = d / "truncated.mp4"
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return p


def _truncated_faststart(d: Path) -> Path:
    src = lavfi(d / "fs.mp4", "testsrc=size=320x240:rate=25", "-t", "4", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", "-movflags", "+faststart")  # fmt: skip
    p = d / "truncated_faststart.mp4"
    p.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    return p


def _garbage(d: Path) -> Path:
    p = d / "garbage.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    return p


def _garbage_with_mp4_magic(d: Path) -> Path:
    p = d / "fake.mp4"
    head = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
    p.write_bytes(head + np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    return p


def _text(d: Path) -> Path:
    p = d / "notes.mp4"
    p.write_text("this is not a video\n" * 100)
    return p


def _png(d: Path) -> Path:
    return lavfi(d / "image.png", "testsrc=size=64x48", "-frames:v", "1")


def _audio_only(d: Path) -> Path:
    return lavfi(d / "audio.m4a", "sine=frequency=440:duration=1", "-c:a", "aac")


def _audio_only_mp4(d: Path) -> Path:
    return lavfi(d / "audio.mp4", "sine=frequency=440:duration=1", "-c:a", "aac")


def _zero_frames(d: Path) -> Path:
    return lavfi(d / "zero.mp4", "testsrc=size=64x48:rate=25", "-frames:v", "0", "-c:v", "libx264")


def _av1(d: Path) -> Path:  # decord 0.6 has no AV1 decoder
    return lavfi(d / "av1.mkv", "testsrc=size=64x64:rate=10", "-t", "0.3", "-c:v", "libaom-av1",
                 "-cpu-used", "8")  # fmt: skip


def _bomb(d: Path) -> Path:  # 16000x16000 single mjpeg frame: 1.5 MB file, 768 MB decoded
    return lavfi(d / "bomb.mp4", "color=c=red:size=16000x16000", "-frames:v", "1", "-c:v", "mjpeg",
                 "-q:v", "31")  # fmt: skip


def _hls_playlist(d: Path) -> Path:  # names another local file: must not be followed
    target = write_index_video(d / "target.mp4", 10)
    p = d / "playlist.m3u8"
    p.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{target}\n#EXT-X-ENDLIST\n")
    return p


BAD_CASES: list[tuple[str, Callable[[Path], Path], type[VideoError]]] = [
    ("empty", _empty, EmptyVideo),
    ("truncated", _truncated, VideoDecodeError),
    ("truncated_faststart", _truncated_faststart, VideoDecodeError),
    ("garbage", _garbage, VideoDecodeError),
    ("garbage_mp4_magic", _garbage_with_mp4_magic, VideoDecodeError),
    ("text", _text, VideoDecodeError),
    ("png_image", _png, NoVideoStream),
    ("audio_only_m4a", _audio_only, NoVideoStream),
    ("audio_only_mp4", _audio_only_mp4, NoVideoStream),
    ("zero_frames", _zero_frames, EmptyVideo),
    ("unsupported_codec_av1", _av1, VideoDecodeError),
    ("decompression_bomb", _bomb, VideoTooLarge),
    ("hls_playlist_local_file", _hls_playlist, VideoDecodeError),
]


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    return {name: make(d) for name, make, _ in BAD_CASES}


@fast
@pytest.mark.parametrize(("name", "error"), [(n, e) for n, _, e in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_a_typed_error(
    bad_media: dict[str, Path],
    name: str,
    error: type[VideoError],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where uploads are spooled
    path = bad_media[name]
    with pytest.raises(error) as exc:
        r = open_video(path)
        r.get_frames([0, len(r) - 1])  # a lenient container must still fail on decoding
    assert isinstance(exc.value, ValueError)
    assert exc.value.reason and "\n" not in exc.value.reason
    assert ".cc:" not in exc.value.reason and "/tmp" not in exc.value.reason  # no decoder internals
    assert str(path) in str(exc.value)
    # The same bytes as an upload give the same error class.
    if path.stat().st_size:
        with pytest.raises(error):
            r = open_video(path.read_bytes())
            r.get_frames([0, len(r) - 1])
        assert list(tmp_path.iterdir()) == []  # the spooled upload was removed


@fast
def test_bomb_refused_before_decoding(bad_media: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import decord

    def no_decode(*a: object, **k: object) -> None:
        raise AssertionError("decord must not be opened for a refused file")

    monkeypatch.setattr(decord, "VideoReader", no_decode)
    with pytest.raises(VideoTooLarge, match="16000x16000"):
        open_video(bad_media["decompression_bomb"])


@fast
def test_missing_file_and_empty_bytes(tmp_path: Path) -> None:
    with pytest.raises(VideoUnavailable):
        open_video(tmp_path / "nope.mp4")
    with pytest.raises(VideoUnavailable):
        open_video(tmp_path)  # a directory
    with pytest.raises(EmptyVideo):
        open_video(b"")


@pytest.fixture(scope="module")
def good_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_index_video(tmp_path_factory.mktemp("good") / "good.mp4", 100)


@fast
def test_too_long_and_too_big_limits(good_video: Path) -> None:
    with pytest.raises(VideoTooLong, match="above the limit of 2 s"):
        open_video(good_video, VideoLimits(max_duration_s=2.0))
    with pytest.raises(VideoTooLarge, match="pixels"):
        open_video(good_video, VideoLimits(max_pixels=CODE_W * CODE_H - 1))
    with pytest.raises(VideoTooLarge, match="bytes"):
        open_video(good_video, VideoLimits(max_file_bytes=100))
    with pytest.raises(VideoTooLarge, match="bytes"):
        open_video(good_video.read_bytes(), VideoLimits(max_file_bytes=100))
    with pytest.raises(VideoTooLong, match="frames"):
        open_video(good_video, VideoLimits(max_frames=50))
    r = open_video(good_video, VideoLimits(max_clip_bytes=CODE_W * CODE_H * 3 * 4))
    assert r.get_frames([1, 2, 3, 4, 4, 4]).frames.shape[0] == 6  # 4 distinct frames: within the limit
    with pytest.raises(VideoTooLarge, match="per request"):
        r.get_frames(range(5))


@fast
def test_deleted_while_reading(good_video: Path, tmp_path: Path) -> None:
    p = tmp_path / "v.mp4"
    p.write_bytes(good_video.read_bytes())
    r = open_video(p)
    assert read_index(r.get_frames([5]).frames[0].numpy()) == 5
    p.unlink()
    with pytest.raises(VideoUnavailable, match="vanished"):
        r.get_frames([10, 20])


@fast
def test_truncated_while_reading(good_video: Path, tmp_path: Path) -> None:
    p = tmp_path / "v.mp4"
    p.write_bytes(good_video.read_bytes())
    r = open_video(p)
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 3)
    with pytest.raises(VideoUnavailable):
        r.get_frames(list(range(0, 100, 7)))


@fast
def test_vanishes_between_probe_and_decode(
    good_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "v.mp4"
    p.write_bytes(good_video.read_bytes())
    real_probe = video_mod.probe_header

    def probe_then_delete(path: Path, timeout_s: float) -> video_mod.HeaderProbe:
        out = real_probe(path, timeout_s)
        path.unlink()
        return out

    monkeypatch.setattr(video_mod, "probe_header", probe_then_delete)
    with pytest.raises(VideoUnavailable):
        open_video(p)


@fast
def test_probe_timeout_is_a_typed_error(good_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*a: object, **k: object) -> None:
        raise subprocess.TimeoutExpired(cmd="ffmpeg", timeout=0.1)

    monkeypatch.setattr(video_mod.subprocess, "run", hang)
    with pytest.raises(VideoDecodeError, match="longer than"):
        open_video(good_video, VideoLimits(probe_timeout_s=0.1))


# ------------------------------------------------------------------------------ good media
@fast
def test_info_frames_and_timestamps(good_video: Path) -> None:
    with open_video(good_video) as r:
        info = r.info
        assert (info.num_frames, info.width, info.height, info.fps) == (100, CODE_W, CODE_H, 25.0)
        assert info.duration == pytest.approx(4.0)
        assert info.codec == "h264" and info.rotation == 0 and not info.variable_frame_rate
        idx = [99, 0, 50, 50, 3]  # unsorted with a repeat
        clip = r.get_frames(idx)
        assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (5, CODE_H, CODE_W, 3)
        assert [read_index(f) for f in clip.frames.numpy()] == idx
        np.testing.assert_allclose(clip.timestamps.numpy(), np.array(idx) / 25.0, atol=1e-5)
        with pytest.raises(IndexError):
            r.get_frames([100])


@fast
def test_open_from_bytes_cleans_up(good_video: Path) -> None:
    r = open_video(good_video.read_bytes())
    tmp = r.path
    assert tmp.exists() and read_index(r.get_frames([42]).frames[0].numpy()) == 42
    r.close()
    assert not tmp.exists()


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    p = write_vfr_video(tmp_path_factory.mktemp("vfr") / "vfr.mp4", 40)
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(p), "-vf", "showinfo",
                          "-f", "null", "-"], capture_output=True, text=True, check=True).stderr  # fmt: skip
    pts = [float(t) for t in re.findall(r"pts_time:([\d.]+)", out)]
    return p, pts


@fast
def test_variable_frame_rate_real_timestamps(vfr_video: tuple[Path, list[float]]) -> None:
    path, pts = vfr_video
    r = open_video(path)
    assert r.info.variable_frame_rate and r.info.num_frames == len(pts) == 40
    idx = list(range(0, 40, 3))
    clip = r.get_frames(idx)
    assert [read_index(f) for f in clip.frames.numpy()] == idx
    np.testing.assert_allclose(clip.timestamps.numpy(), [pts[i] for i in idx], atol=1e-3)
    # the second half is much sparser than index / avg_fps would claim
    assert clip.timestamps[-1] > 2.5 and 39 / r.info.fps < 2.7


@pytest.fixture(scope="module")
def rotated(good_video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("rot")
    out = {}
    for deg in (90, 180, 270):
        p = d / f"rot{deg}.mp4"
        ffmpeg("-display_rotation", str(deg), "-i", str(good_video), "-c", "copy", str(p))
        out[deg] = p
    return out


@fast
@pytest.mark.parametrize("deg", [90, 180, 270])
def test_rotation_flag_gives_upright_frames(rotated: dict[int, Path], deg: int) -> None:
    r = open_video(rotated[deg])
    assert r.info.rotation == deg
    clip = r.get_frames([37])
    frame = clip.frames[0].numpy()
    # undo the display rotation (counter-clockwise) and read the coded frame's bar code
    coded = np.rot90(frame, k=-deg // 90)
    assert coded.shape[:2] == (CODE_H, CODE_W)
    assert read_index(coded) == 37
    # and the reported size is the displayed one
    assert (frame.shape[1], frame.shape[0]) == (r.info.width, r.info.height)
    ref = subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(rotated[deg]),
                          "-vf", r"select=eq(n\,37)", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"], capture_output=True, check=True).stdout  # fmt: skip
    np.testing.assert_array_equal(np.frombuffer(ref, np.uint8).reshape(frame.shape), frame)


def test_manual_rotation_when_decoder_ignores_it(
    rotated: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decord build that ignores the display matrix: frames come coded-size; we rotate with torch."""
    r = open_video(rotated[90])
    upright = r.get_frames([7]).frames
    coded = np.ascontiguousarray(np.rot90(upright.numpy(), k=-1, axes=(1, 2)))
    assert torch.equal(r._upright(torch.from_numpy(coded)), upright)


# -------------------------------------------------------------------------- crash isolation
@pytest.mark.slow
def test_bad_inputs_never_crash_the_process(bad_media: dict[str, Path]) -> None:
    """Run every bad case in a child process: a C-level crash (segfault/abort) would show as rc < 0."""
    code = (
        "import sys\n"
        "from media.video import open_video, VideoError\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        r = open_video(p); r.get_frames(list(range(len(r))))\n"
        "        print('OK', p)\n"
        "    except VideoError as e:\n"
        "        print(type(e).__name__, p)\n"
    )
    paths = [str(p) for p in bad_media.values()]
    proc = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[3], env={**os.environ})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    kinds = [ln.split(" ")[0] for ln in proc.stdout.splitlines()]
    assert len(kinds) == len(paths)
    assert set(kinds) <= {"EmptyVideo", "VideoDecodeError", "NoVideoStream", "VideoTooLarge"}, proc.stdout


@pytest.fixture(scope="module")
def avi_bframes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MPEG-4 part 2 in AVI with B-frames: the demuxer gives no presentation times (like real XviD files)."""
    return write_index_video(
        tmp_path_factory.mktemp("avi") / "bframes.avi", 50, codec=("-c:v", "mpeg4", "-q:v", "2", "-bf", "2")
    )


@fast
def test_container_without_timestamps_falls_back_to_constant_rate(avi_bframes: Path) -> None:
    r = open_video(avi_bframes)
    assert r.info.num_frames == 50 and r.info.duration == pytest.approx(2.0)
    assert not r.info.variable_frame_rate
    idx = [0, 1, 2, 3, 17, 49]
    clip = r.get_frames(idx)
    assert [read_index(f) for f in clip.frames.numpy()] == idx
    np.testing.assert_allclose(clip.timestamps.numpy(), np.array(idx) / 25.0)


# ------------------------------------------------------------------- large frames, decoded scaled down
@pytest.fixture(scope="module")
def hd_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lavfi(tmp_path_factory.mktemp("hd") / "hd.mp4", "testsrc2=size=1280x720:rate=8:duration=2",
                 "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p")


def test_large_frames_are_decoded_scaled_down(hd_video: Path) -> None:
    """Frames whose short side is above `decode_short_side(img_size)` come out of the decoder at that short
    side (aspect kept): 9x fewer bytes per frame here, and the model's clips are nearly the full decode's."""
    from media.transforms import decode_short_side, preprocess
    from tests.media.media import Cfg

    cfg = Cfg(num_frames=4, img_size=112)
    short = decode_short_side(cfg.img_size)
    assert short == 224
    idx = [0, 3, 5, 9]
    with open_video(hd_video) as full, open_video(hd_video, max_short_side=short) as small:
        assert (small.info.width, small.info.height) == (1280, 720)  # the video's own size stays reported
        assert small.frame_size == (398, 224) and small.scale == pytest.approx(398 / 1280)
        a, b = full.get_frames(idx).frames, small.get_frames(idx).frames
        assert tuple(a.shape) == (4, 720, 1280, 3) and tuple(b.shape) == (4, 224, 398, 3)
        assert a.numel() > 9 * b.numel()
        x, y = preprocess(a, cfg).flatten(), preprocess(b, cfg).flatten()
        assert torch.nn.functional.cosine_similarity(x, y, dim=0) > 0.99
    # the per-request byte limit counts the decoded frames: 4 full frames would be refused
    limits = VideoLimits(max_clip_bytes=4 * 398 * 224 * 3)
    with open_video(hd_video, limits, max_short_side=short) as small:
        assert small.get_frames(idx).frames.shape[0] == 4
    with open_video(hd_video, limits) as full, pytest.raises(VideoTooLarge, match="1280x720"):
        full.get_frames(idx)


def test_ordinary_frames_are_decoded_as_they_are(tmp_path: Path) -> None:
    """A 320x240 video (short side <= 2x a 224 model's input) decodes bit-identically with the cap."""
    from media.transforms import decode_short_side

    p = lavfi(tmp_path / "sd.mp4", "testsrc2=size=320x240:rate=8:duration=2", "-pix_fmt", "yuv420p")
    with open_video(p) as plain, open_video(p, max_short_side=decode_short_side(224)) as capped:
        assert capped.frame_size == (320, 240) and capped.scale == 1.0
        assert torch.equal(plain.get_frames([0, 7, 3]).frames, capped.get_frames([0, 7, 3]).frames)


def test_rotated_large_frames_are_scaled_then_upright(hd_video: Path, tmp_path: Path) -> None:
    p = tmp_path / "rot90.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(hd_video), "-c", "copy", str(p))
    with open_video(p, max_short_side=224) as r, open_video(hd_video, max_short_side=224) as ref:
        assert (r.info.width, r.info.height) == (720, 1280) and r.frame_size == (224, 398)
        frame = r.get_frames([5]).frames[0]
        assert tuple(frame.shape) == (398, 224, 3)
        coded = torch.from_numpy(np.ascontiguousarray(np.rot90(frame.numpy(), k=-1)))
        # decord scales the rotated picture (not the coded one): the same picture up to resampling
        assert (coded.float() - ref.get_frames([5]).frames[0].float()).abs().mean() < 5


def test_two_streams_large_one_decoded_scaled_down(tmp_path: Path) -> None:
    """decord picks the stream itself (the 1280x720 one here): it is found at full size, then reopened
    scaled down."""
    small = lavfi(tmp_path / "small.mp4", "testsrc2=size=96x96:rate=8:duration=3", "-pix_fmt", "yuv420p")
    two = tmp_path / "two.mp4"
    large = lavfi(tmp_path / "large.mp4", "testsrc2=size=1280x720:rate=8:duration=3", "-pix_fmt", "yuv420p")
    ffmpeg("-i", str(small), "-i", str(large), "-map", "0:v", "-map", "1:v", "-c", "copy", str(two))
    with open_video(two, max_short_side=224) as r:
        # whichever stream decord picked, its frames come out at the size `frame_size` promises
        full, expected = (r.info.width, r.info.height), {(1280, 720): (398, 224), (96, 96): (96, 96)}
        assert r.frame_size == expected[full]
        assert tuple(r.get_frames([1, 2]).frames.shape) == (2, r.frame_size[1], r.frame_size[0], 3)
        picked_large = full == (1280, 720)
    if not picked_large:
        pytest.skip("decord picked the small stream of this file: the reopen path was not exercised")
