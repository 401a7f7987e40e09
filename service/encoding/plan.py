"""An upload's segment plan: made once, by the gateway's route that validates the upload, and carried by
its ingest job to the worker (in process, or in the Redis job entry), which opens the stored file on it
without probing the header or planning the segments again.

A plan is for one model clip length and one `segment_fps`: a worker whose encoder differs (an online
reindex switched the model while the job waited), or a job without a plan (re-queued after a restart,
a reindex job), probes and plans the file itself.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.sampling import Segment
from media.segments import plan_segments
from media.video import HeaderProbe, StreamHeader, VideoTooLong, open_video
from service.errors import VideoTooSparse
from service.settings import Settings


@dataclass(frozen=True)
class VideoPlan:
    probe: HeaderProbe  # the container header the route probed and checked against the limits
    segments: tuple[Segment, ...]  # the retrieval protocol's segments (frame indices and times)
    duration: float
    num_frames: int  # the model's clip length the segments were planned for
    segment_fps: float

    def fits(self, num_frames: int, segment_fps: float) -> bool:
        """Whether the plan was made for this clip length and frame rate."""
        return self.num_frames == num_frames and self.segment_fps == segment_fps

    def to_json(self) -> str:
        return json.dumps({
            "probe": dataclasses.asdict(self.probe),
            "segments": [[s.start_s, s.end_s, s.indices.tolist(), s.timestamps.tolist()] for s in self.segments],
            "duration": self.duration, "num_frames": self.num_frames, "segment_fps": self.segment_fps,
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> VideoPlan:
        """The plan back from `to_json`; ValueError, KeyError or TypeError when it is not one."""
        d = json.loads(text)
        probe = dict(d["probe"])
        probe["streams"] = tuple(StreamHeader(**st) for st in probe.get("streams", ()))
        segments = tuple(Segment(float(a), float(b), np.asarray(idx, dtype=np.int64), np.asarray(ts, dtype=np.float64))
                         for a, b, idx, ts in d["segments"])
        return cls(HeaderProbe(**probe), segments, float(d["duration"]), int(d["num_frames"]), float(d["segment_fps"]))


def check_segment_count(n: int, settings: Settings, file_bytes: int) -> None:
    """The cost bound of one video (indexed or query), checked from its segment plan before any frame is
    decoded: `max_segments` per video (the worker's time and the index size per video), and at least
    `min_bytes_per_segment` bytes of file per segment (so a few KB cannot buy minutes of worker time)."""
    if n > settings.max_segments:
        raise VideoTooLong(f"the video has {n} segments (at {settings.segment_fps:g} frames/s), above the limit "
                           f"of {settings.max_segments} segments per video")
    per = settings.min_bytes_per_segment
    if per and n * per > file_bytes:
        raise VideoTooSparse(
            f"the video has {n} segments (at {settings.segment_fps:g} frames/s) in a file of only {file_bytes} "
            f"bytes; this server embeds at most one segment per {per} bytes of file ({file_bytes // per} for "
            "this one): re-encode it at 1 frame/s or more, or cut it")


def plan_video(path: str | Path, size: int, settings: Settings, num_frames: int) -> VideoPlan:
    """Probe and open the file with the service's limits (pixels, duration), plan its segments and check
    them (`max_segments`, `min_bytes_per_segment`): `VideoError` for bad input."""
    with open_video(path, settings.video_limits) as reader:
        segments = plan_segments(reader, num_frames, settings.segment_fps)
        check_segment_count(len(segments), settings, size)
        return VideoPlan(reader.probe, tuple(segments), reader.info.duration, num_frames, settings.segment_fps)
