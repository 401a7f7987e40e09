"""The one video decoding path: probe the header, refuse what we must not decode, then decode with decord.

Every file goes through two stages:

1. ``probe``: the bundled ffmpeg binary (``imageio_ffmpeg.get_ffmpeg_exe()``) reads the container header
   in a child process with a timeout. Nothing is decoded by us yet, so garbage cannot crash or hang this
   process, and the limits (file bytes, pixels per frame, duration) are enforced before a single frame
   is allocated: a 16000x16000 "decompression bomb" is refused here. For H.264, H.265, AV1 and MPEG-2 the
   stream's own parameter sets are read too (``scan_picture_sizes``, still without decoding), so a stream
   that starts small and switches to a huge size mid-way is refused as well.
2. ``decord``: opened only once the probe has said "this is a video stream of an acceptable size";
   ``get_frames`` seeks and decodes only the requested frames (``get_batch``).

``max_short_side`` (`open_video`): frames whose short side is larger are scaled down by the decoder itself
(decord's ``width``/``height``, FFmpeg's scaler) to that short side, the aspect ratio kept, so a 4K upload's
frames never exist at full size in our memory (`VideoReader.frame_size`, `VideoReader.scale`). The limits
(pixels per frame) still apply to the stream's own size; frames at or below the short side are decoded
exactly as without it.

Timestamps are decord's real presentation times (correct for variable frame rate), and frames come out
upright: decord 0.6 applies the display rotation itself; if a build does not (the decoded size is the
coded size although the header says 90/270 degrees), we rotate with torch.

torch is imported where frames become tensors (``VideoReader.get_frames``), so that the limits, the probe
and ``VIDEO_EXTENSIONS`` load without it: the settings and the ingestion client use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import subprocess
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- errors
class VideoError(ValueError):
    """Base of every bad-input error. ``reason`` is a short sentence fit for an HTTP 4xx body."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


class EmptyVideo(VideoError):
    """Zero bytes, zero frames or zero duration."""


class VideoDecodeError(VideoError):
    """Corrupt, truncated, not a media file, or a codec we cannot decode."""


class NoVideoStream(VideoError):
    """A media file without a video stream (audio only) or a still image."""


class VideoTooLarge(VideoError):
    """Too many pixels per frame or too many bytes; refused before decoding."""


class VideoTooLong(VideoError):
    """Longer than ``VideoLimits.max_duration_s``."""


class VideoUnavailable(VideoError):
    """The file does not exist, vanished, or changed while it was being read."""


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class VideoLimits:
    """What we agree to decode. Every default lives here."""

    max_pixels: int = 4096 * 2304  # per frame (width x height): a bit above 4K UHD
    max_duration_s: float = 4 * 3600.0
    max_file_bytes: int = 4 * 1024**3
    max_frames: int = 2_000_000
    max_clip_bytes: int = 2 * 1024**3  # decoded bytes one get_frames call may allocate
    probe_timeout_s: float = 10.0


DEFAULT_LIMITS = VideoLimits()

#: The file extensions of the video containers that this path opens (ffmpeg's probe, then decord), lower
#: case without the dot: the files `drca ingest` and training collect from a folder, and the names the
#: service stores uploads under. A file is still judged by its content; the extension only picks files.
VIDEO_EXTENSIONS = frozenset({
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "mts", "flv", "3gp", "ogv", "ogg", "wmv",
    "asf", "dv", "vob",
})


def has_video_extension(path: str | Path) -> bool:
    """Whether the file name ends in one of ``VIDEO_EXTENSIONS`` (in any case)."""
    return Path(path).suffix.lower().lstrip(".") in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What the header and the frame index say. ``width``/``height`` are the upright (displayed) size."""

    duration: float  # seconds, from the first frame's start to the last frame's end
    fps: float  # average frame rate
    num_frames: int
    width: int
    height: int
    rotation: int = 0  # display rotation in degrees counter-clockwise (0, 90, 180, 270)
    codec: str | None = None
    variable_frame_rate: bool = False


@dataclass(frozen=True)
class Clip:
    frames: torch.Tensor  # uint8 (T, H, W, C) RGB, upright
    timestamps: torch.Tensor  # float64 (T,) presentation time of each frame, seconds
    indices: torch.Tensor  # int64 (T,) frame indices that were decoded


# ------------------------------------------------------------------------------------------ probe
@dataclass(frozen=True)
class StreamHeader:
    """One video stream of the ``ffmpeg -i`` header."""

    codec: str
    width: int  # coded size, before rotation
    height: int
    rotation: int


@dataclass(frozen=True)
class HeaderProbe:
    """Parsed ``ffmpeg -i`` header: the first video stream's fields, and every video stream in ``streams``
    (the decoder may pick another one than the first, so the limits are checked on all of them)."""

    container: str
    codec: str
    width: int  # coded size, before rotation
    height: int
    rotation: int
    duration: float | None
    fps: float | None
    streams: tuple[StreamHeader, ...] = ()

    def with_stream(self, st: StreamHeader) -> HeaderProbe:
        return dataclasses.replace(self, codec=st.codec, width=st.width, height=st.height, rotation=st.rotation)


_IMAGE_CONTAINERS = ("_pipe", "image2", "gif", "apng", "webp")
# Demuxers that open *other* files or URLs named inside the input (a playlist could make us read any
# local file): never accepted, whatever the extension.
_REFERENCE_CONTAINERS = {"hls", "applehttp", "concat", "dash", "tee", "sdp", "rtsp", "rtp", "mpegtsraw"}
_RE_INPUT = re.compile(r"^Input #0, ([^ ]+), from", re.M)
_RE_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_RE_VIDEO = re.compile(r"Stream #0:\d+[^:]*: Video: ([^\s,]+)(.*)")
_RE_SIZE = re.compile(r"[ ,](\d{1,6})x(\d{1,6})[ ,\[]")
_RE_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_RE_ROT = re.compile(r"(?:rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+))")


@cache
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def probe_header(path: Path, timeout_s: float = DEFAULT_LIMITS.probe_timeout_s) -> HeaderProbe:
    """Read the container header with ``ffmpeg -i`` in a child process (no decoding by us)."""
    try:
        proc = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise VideoDecodeError(f"reading the header took longer than {timeout_s:g} s") from e
    text = proc.stderr.decode("utf-8", "replace")
    if not path.exists():
        raise VideoUnavailable("the file vanished while it was being read")
    m_input = _RE_INPUT.search(text)
    if m_input is None:
        raise VideoDecodeError("not a recognised video file (corrupt, truncated or not a media container)")
    container = m_input.group(1)
    if set(container.split(",")) & _REFERENCE_CONTAINERS:
        raise VideoDecodeError(
            f"{container} playlists/references are not accepted; send the media file itself"
        )
    videos = list(_RE_VIDEO.finditer(text))
    m_video = videos[0] if videos else None
    if m_video is None:
        if " Audio: " in text:
            raise NoVideoStream("the file has no video stream (audio only)")
        if "Stream #0" not in text:
            raise EmptyVideo("the file contains no streams (zero frames)")
        raise NoVideoStream("the file has no video stream")
    codec, rest = m_video.group(1), m_video.group(2)
    if any(container.endswith(k) or container == k for k in _IMAGE_CONTAINERS):
        if container in ("gif", "apng", "webp"):  # may well be animated: say what to do instead
            raise NoVideoStream(f"an image file ({container}), not a video: animated GIF, APNG and WebP images "
                                "are not accepted; convert it to a video file (e.g. MP4)")
        raise NoVideoStream(f"a still image ({codec}), not a video")
    streams = tuple(_stream_header(text, m) for m in videos)
    duration = None
    if m_dur := _RE_DURATION.search(text):
        duration = int(m_dur.group(1)) * 3600 + int(m_dur.group(2)) * 60 + float(m_dur.group(3))
    fps = None
    if m_fps := _RE_FPS.search(rest):
        fps = float(m_fps.group(1)) * (1000 if m_fps.group(2) else 1)
    first = streams[0]
    return HeaderProbe(container, codec, first.width, first.height, first.rotation, duration, fps, streams)


def _stream_header(text: str, m_video: re.Match) -> StreamHeader:
    codec, rest = m_video.group(1), m_video.group(2)
    m_size = _RE_SIZE.search(rest + " ")
    if m_size is None:
        raise VideoDecodeError(f"the video stream ({codec}) has no frame size; the file is probably corrupt")
    # The rotation lines follow the video stream line (side data / metadata of that stream).
    after = text[m_video.end() :]
    nxt = re.search(r"Stream #0:\d+", after)
    stream_block = after[: nxt.start()] if nxt else after
    rotation = 0
    if m_rot := _RE_ROT.search(stream_block):
        rotation = int(round(float(m_rot.group(1) or m_rot.group(2)))) % 360
    return StreamHeader(codec, int(m_size.group(1)), int(m_size.group(2)), rotation)


def _check_header(probe: HeaderProbe, limits: VideoLimits) -> None:
    """Every video stream, not only the first: the decoder picks its own (usually the largest)."""
    for i, st in enumerate(probe.streams or (StreamHeader(probe.codec, probe.width, probe.height, probe.rotation),)):
        which = f"video stream {i + 1} of {len(probe.streams)}: " if len(probe.streams) > 1 else ""
        if st.width <= 0 or st.height <= 0:
            raise EmptyVideo(f"{which}the video stream has an empty frame size {st.width}x{st.height}")
        pixels = st.width * st.height
        if pixels > limits.max_pixels:
            raise VideoTooLarge(
                f"{which}frame size {st.width}x{st.height} ({pixels} pixels) is above the limit of "
                f"{limits.max_pixels} pixels per frame"
            )
    if probe.duration is not None and probe.duration > limits.max_duration_s:
        raise VideoTooLong(
            f"duration {probe.duration:.1f} s is above the limit of {limits.max_duration_s:g} s"
        )


#: Codecs whose every picture size is set by a parameter set that FFmpeg's `trace_headers` can read without
#: decoding: codec -> (`filter_units` NAL/OBU/start-code types of those sets, how to read a size from them).
_PARAMETER_SETS: dict[str, str] = {
    "h264": "7",  # sequence parameter set
    "hevc": "33",  # sequence parameter set
    "av1": "1",  # sequence header OBU (its max_frame_width/height bound every frame of the sequence)
    "mpeg2video": "179",  # sequence header (0xB3)
}
_RE_TRACE = re.compile(r"\]\s+\d+\s+(\w+)\s+[01]+ = (\d+)")


def _sizes_from_trace(codec: str, text: str) -> list[tuple[int, int]]:
    """The picture sizes (width, height) that the parameter sets in `trace_headers` output declare."""
    sizes: list[tuple[int, int]] = []
    f: dict[str, int] = {}

    def close() -> None:
        if codec == "h264" and "pic_width_in_mbs_minus1" in f:
            field_mult = 2 - f.get("frame_mbs_only_flag", 1)
            chroma = f.get("chroma_format_idc", 1)
            unit_x = 2 if chroma in (1, 2) else 1
            unit_y = (2 if chroma == 1 else 1) * field_mult
            w = (f["pic_width_in_mbs_minus1"] + 1) * 16
            h = (f["pic_height_in_map_units_minus1"] + 1) * 16 * field_mult
            w -= unit_x * (f.get("frame_crop_left_offset", 0) + f.get("frame_crop_right_offset", 0))
            h -= unit_y * (f.get("frame_crop_top_offset", 0) + f.get("frame_crop_bottom_offset", 0))
            sizes.append((w, h))
        elif codec == "hevc" and "pic_width_in_luma_samples" in f:
            sizes.append((f["pic_width_in_luma_samples"], f.get("pic_height_in_luma_samples", 0)))
        elif codec == "av1" and "max_frame_width_minus_1" in f:
            sizes.append((f["max_frame_width_minus_1"] + 1, f.get("max_frame_height_minus_1", 0) + 1))
        elif codec == "mpeg2video" and "horizontal_size_value" in f:
            sizes.append((f["horizontal_size_value"] | f.get("horizontal_size_extension", 0) << 12,
                          f.get("vertical_size_value", 0) | f.get("vertical_size_extension", 0) << 12))
        f.clear()

    starts = {"h264": "profile_idc", "hevc": "sps_video_parameter_set_id", "av1": "seq_profile",
              "mpeg2video": "horizontal_size_value"}
    for m in _RE_TRACE.finditer(text):
        name, value = m.group(1), int(m.group(2))
        if name == starts[codec]:
            close()
        f[name] = value
    close()
    return sizes


def scan_picture_sizes(path: Path, codec: str, timeout_s: float) -> list[tuple[int, int]] | None:
    """Every picture size the video streams' parameter sets declare, read by the bundled ffmpeg in a child
    process from the bitstream (`filter_units` keeps only the parameter sets, `trace_headers` prints them;
    nothing is decoded). A stream can switch to another size mid-way with a new parameter set, which the
    container header never shows. None for a codec this cannot read (see `_PARAMETER_SETS`)."""
    types = _PARAMETER_SETS.get(codec)
    if types is None:
        return None
    try:
        proc = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v", "-c", "copy",
             "-bsf:v", f"filter_units=pass_types={types},trace_headers", "-f", "null", "-"],
            capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise VideoDecodeError(f"reading the stream headers took longer than {timeout_s:g} s") from e
    return _sizes_from_trace(codec, proc.stderr.decode("utf-8", "replace"))


def _check_parameter_sets(path: Path, probe: HeaderProbe, limits: VideoLimits) -> None:
    """The pixel limit for every picture of the stream, not only the first (a stream that starts at 64x48
    and switches to 8192x8192 passes the header check)."""
    for codec in sorted({st.codec for st in probe.streams} or {probe.codec}):
        for w, h in scan_picture_sizes(path, codec, limits.probe_timeout_s) or ():
            if w * h > limits.max_pixels:
                raise VideoTooLarge(
                    f"the {codec} stream switches to a frame size of {w}x{h} ({w * h} pixels) mid-way, above "
                    f"the limit of {limits.max_pixels} pixels per frame")


# ----------------------------------------------------------------------------------------- reader
class VideoReader:
    """An opened, validated video. Use ``open_video`` to build one. Not thread-safe (decord is not)."""

    def __init__(
        self,
        path: Path,
        probe: HeaderProbe,
        limits: VideoLimits,
        source: str,
        tmp: bool,
        stat: tuple[int, int, int] | None,
        num_threads: int = 1,
        max_short_side: int | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self.limits = limits
        self._probe = probe
        self._stat = stat  # (inode, size, mtime) before probing: any change later means "changed under us"
        self._num_threads = num_threads
        if tmp:  # a temporary copy of uploaded bytes: removed with the reader
            self._finalizer = weakref.finalize(self, _unlink_quiet, path)
        # Several streams of different sizes: decord picks one itself, found by decoding at full size
        # (`_decoded_stream`); the scaled decoder is opened once it is known.
        one_size = len({(st.width, st.height) for st in probe.streams}) < 2
        scaled = decoded_size(*_upright_size(probe), max_short_side) if one_size else None
        try:
            self._vr = self._open_decoder(scaled)
            num_frames = len(self._vr)
            fps = float(self._vr.get_avg_fps()) if num_frames else 0.0
            ts = np.asarray(self._vr.get_frame_timestamp(np.arange(num_frames)), dtype=np.float64)
        except Exception as e:  # decord raises DECORDError / RuntimeError with C++ traces
            raise self._decode_error(
                f"cannot decode the {probe.codec} video stream (unsupported codec or corrupt file)", e
            ) from e
        if num_frames == 0:
            raise EmptyVideo("the video stream has no frames", source)
        if num_frames > limits.max_frames:
            raise VideoTooLong(f"{num_frames} frames is above the limit of {limits.max_frames}", source)
        ts = ts.reshape(num_frames, 2)
        if _timestamps_valid(ts):
            self.frame_times: np.ndarray = ts[:, 0] - ts[0, 0]  # float64 (N,) frame start, seconds
            duration = float(ts[-1, 1] - ts[0, 0])
            vfr = _is_vfr(self.frame_times)
            self._seekable = True
        else:
            # Some containers (AVI with B-frames, raw streams) carry no usable presentation times:
            # fall back to a constant rate rather than report garbage. decord's seeks are then
            # off by up to a GOP (tested), so such files are decoded sequentially.
            if fps <= 0:
                raise EmptyVideo("the video has no frame rate and no timestamps", source)
            log.warning("%s: unusable frame timestamps, assuming a constant %.3f fps", source, fps)
            self.frame_times = np.arange(num_frames, dtype=np.float64) / fps
            duration = num_frames / fps
            vfr = False
            self._seekable = False
        if not duration > 0:
            raise EmptyVideo("the video has zero duration", source)
        if duration > limits.max_duration_s:
            raise VideoTooLong(
                f"duration {duration:.1f} s is above the limit of {limits.max_duration_s:g} s", source
            )
        if fps <= 0:
            fps = num_frames / duration
        probe = self._probe = self._decoded_stream(probe)
        rot = probe.rotation
        w, h = _upright_size(probe)
        if not one_size and (scaled := decoded_size(w, h, max_short_side)) is not None:
            try:
                self._vr = self._open_decoder(scaled)
            except Exception as e:
                raise self._decode_error(f"cannot decode the {probe.codec} video stream scaled down", e) from e
        #: (width, height) of the upright frames `get_frames` returns: the video's own size, or smaller when
        #: the decoder scales it down (`max_short_side`); `scale` is their width over the video's width.
        self.frame_size: tuple[int, int] = scaled or (w, h)
        self.info = VideoInfo(
            duration=duration,
            fps=fps,
            num_frames=num_frames,
            width=w,
            height=h,
            rotation=rot,
            codec=probe.codec,
            variable_frame_rate=vfr,
        )

    def _open_decoder(self, size: tuple[int, int] | None):  # -> decord.VideoReader
        """decord on the file, scaling every frame to `size` when given. decord 0.6 scales after its display
        rotation: `size` is the upright (width, height) (tested with rotated files)."""
        import decord

        w, h = size or (-1, -1)
        return decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self._num_threads, width=w,
                                  height=h)

    @property
    def scale(self) -> float:
        """Decoded frame width over the video's own width (1.0 unless the decoder scales frames down)."""
        return self.frame_size[0] / self.info.width

    def _decoded_stream(self, probe: HeaderProbe) -> HeaderProbe:
        """The header of the stream decord decodes. With several video streams of different sizes it
        picks one itself (by bitrate, not order): decode the first frame (every stream passed the
        limits) and take the stream whose size it has."""
        sizes = {(st.width, st.height) for st in probe.streams}
        if len(sizes) < 2:
            return probe
        try:
            h, w = self._vr.get_batch([0]).shape[1:3]
        except Exception as e:
            raise self._decode_error("cannot decode the first frame", e) from e
        for st in probe.streams:
            if (w, h) in ((st.width, st.height), (st.height, st.width)):
                return probe.with_stream(st)
        raise VideoDecodeError(f"decoded frames are {w}x{h}, which no video stream of the header has", self.source)

    def _decode_error(self, what: str, e: BaseException) -> VideoError:
        if _stat_key(self.path) != self._stat:
            return VideoUnavailable("the file vanished or changed while it was being read", self.source)
        # decord's message carries C++ source paths and temp-file names: log it, keep the reason clean.
        log.info("%s: %s: %s", self.source, what, str(e).strip()[-500:] or type(e).__name__)
        return VideoDecodeError(what, self.source)

    @property
    def probe(self) -> HeaderProbe:
        """The header of the stream this reader decodes (checked against the limits when it was opened)."""
        return self._probe

    def __len__(self) -> int:
        return self.info.num_frames

    def get_frames(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> Clip:
        """Decode exactly these frames (seek + decode, in the given order, repeats allowed)."""
        import torch

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("get_frames needs at least one index")
        n = self.info.num_frames
        if idx.min() < 0 or idx.max() >= n:
            raise IndexError(f"frame index out of range [0, {n}): {idx.min()}..{idx.max()}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        fw, fh = self.frame_size
        nbytes = uniq.size * fw * fh * 3
        if nbytes > self.limits.max_clip_bytes:
            raise VideoTooLarge(
                f"{uniq.size} frames of {fw}x{fh} need {nbytes} bytes, above the "
                f"limit of {self.limits.max_clip_bytes} bytes per request",
                self.source,
            )
        if _stat_key(self.path) != self._stat:
            raise VideoUnavailable("the file vanished or changed while it was being read", self.source)
        # decord decodes each distinct frame once; duplicate/unsorted requests are mapped back.
        try:
            batch = self._decode(uniq)
        except Exception as e:
            raise self._decode_error("decoding failed", e) from e
        frames = torch.from_numpy(batch)  # (T, H, W, C)
        if uniq.size != idx.size or (inverse != np.arange(idx.size)).any():  # else no copy (a 4K frame is 28 MB)
            frames = frames[torch.from_numpy(inverse)]
        frames = self._upright(frames)
        times = torch.from_numpy(self.frame_times[idx].copy())
        return Clip(frames=frames, timestamps=times, indices=torch.from_numpy(idx))

    def _decode(self, uniq: np.ndarray) -> np.ndarray:
        """uint8 (len(uniq), H, W, C) for sorted unique indices."""
        if self._seekable:
            return self._vr.get_batch(uniq.tolist()).asnumpy()
        # Without timestamps: read consecutive chunks from the start, keep the wanted frames.
        chunk = 16
        self._vr.seek(0)
        out = []
        for a in range(0, int(uniq[-1]) + 1, chunk):
            b = min(a + chunk, int(uniq[-1]) + 1)
            want = uniq[(uniq >= a) & (uniq < b)]
            frames = self._vr.get_batch(list(range(a, b))).asnumpy()
            if want.size:
                out.append(frames[want - a])
        return np.concatenate(out)

    def _upright(self, frames: torch.Tensor) -> torch.Tensor:
        import torch

        h, w = frames.shape[1], frames.shape[2]
        fw, fh = self.frame_size
        if (w, h) == (fw, fh):
            return frames  # already upright (decord applied the rotation, or there is none)
        if (h, w) == (fw, fh) and self.info.rotation in (90, 270):
            # display rotation is counter-clockwise; rot90 with k>0 rotates from the first towards the
            # second given dim, i.e. counter-clockwise for (H, W) images.
            return torch.rot90(frames, k=self.info.rotation // 90, dims=(1, 2)).contiguous()
        raise VideoDecodeError(
            f"decoded frames are {w}x{h}, expected {fw}x{fh}", self.source
        )

    def close(self) -> None:
        self._vr = None
        fin = getattr(self, "_finalizer", None)
        if fin is not None:
            fin()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _upright_size(probe: HeaderProbe) -> tuple[int, int]:
    """(width, height) of the stream's frames as displayed (its display rotation applied)."""
    return (probe.height, probe.width) if probe.rotation in (90, 270) else (probe.width, probe.height)


def decoded_size(width: int, height: int, max_short_side: int | None) -> tuple[int, int] | None:
    """(width, height) to decode a `width` x `height` frame at so that its short side is `max_short_side`,
    the aspect ratio kept (the long side rounded); None when the frame is not larger than that (decoded
    as it is)."""
    if max_short_side is None or min(width, height) <= max_short_side:
        return None
    if width <= height:
        return max_short_side, max(max_short_side, round(height * max_short_side / width))
    return max(max_short_side, round(width * max_short_side / height)), max_short_side


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _timestamps_valid(ts: np.ndarray) -> bool:
    """(N, 2) start/end seconds: finite, non-negative start, strictly increasing starts."""
    if not np.all(np.isfinite(ts)) or ts[0, 0] < -1.0 or ts[-1, 1] < ts[-1, 0]:
        return False
    return ts.shape[0] < 2 or bool(np.all(np.diff(ts[:, 0]) > 0))


def _is_vfr(frame_times: np.ndarray, tolerance: float = 0.02) -> bool:
    """True when frame durations vary by more than ``tolerance`` (relative) around their median."""
    if frame_times.size < 3:
        return False
    d = np.diff(frame_times)
    med = float(np.median(d))
    if med <= 0:
        return True
    return bool(np.max(np.abs(d - med)) > tolerance * med + 1e-6)


def open_video(
    src: str | Path | bytes, limits: VideoLimits | None = None, num_threads: int = 1,
    max_short_side: int | None = None,
) -> VideoReader:
    """Validate and open a video from a path or from its bytes.

    ``num_threads``: decoder threads (1 suits many worker processes; 0 lets FFmpeg pick).
    ``max_short_side``: frames with a larger short side are decoded scaled down to it (module docstring).

    Raises a ``VideoError`` subclass for every bad input; never lets the decoder see a file that failed
    the header checks.
    """
    limits = limits or DEFAULT_LIMITS
    tmp = False
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
        source = "<bytes>"
        if not data:
            raise EmptyVideo("the upload is empty (0 bytes)", source)
        if len(data) > limits.max_file_bytes:
            raise VideoTooLarge(
                f"{len(data)} bytes is above the limit of {limits.max_file_bytes} bytes", source
            )
        fd, name = tempfile.mkstemp(prefix="drca-video-", suffix=".bin")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        path, tmp = Path(name), True
    else:
        path = Path(src)
        source = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise VideoUnavailable("no such file", source) from e
        except OSError as e:
            raise VideoUnavailable(f"cannot read the file ({e.strerror})", source) from e
        if not path.is_file():
            raise VideoUnavailable("not a regular file", source)
        if size == 0:
            raise EmptyVideo("the file is empty (0 bytes)", source)
        if size > limits.max_file_bytes:
            raise VideoTooLarge(f"{size} bytes is above the limit of {limits.max_file_bytes} bytes", source)
    stat = _stat_key(path)
    try:
        try:
            probe = probe_header(path, limits.probe_timeout_s)
            _check_header(probe, limits)
            _check_parameter_sets(path, probe, limits)
        except VideoError as e:
            e.source = source
            e.args = (f"{source}: {e.reason}",)
            raise
        return VideoReader(path, probe, limits, source, tmp, stat, num_threads, max_short_side)
    except BaseException:
        if tmp:
            _unlink_quiet(path)
        raise


def reopen_video(path: str | Path, probe: HeaderProbe, limits: VideoLimits | None = None,
                 num_threads: int = 1, max_short_side: int | None = None) -> VideoReader:
    """Open a video that `open_video` already validated, on the header it probed then (`VideoReader.probe`):
    the header is neither read nor checked again. For a stored file whose content cannot change (the
    service's uploads are content-addressed); anything else goes through `open_video`."""
    path = Path(path)
    if not path.is_file():
        raise VideoUnavailable("no such file", str(path))
    return VideoReader(path, probe, limits or DEFAULT_LIMITS, str(path), False, _stat_key(path), num_threads,
                       max_short_side)
