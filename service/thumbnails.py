"""Thumbnails: one JPEG frame of a stored video, rendered once and cached on disk.

A request for time `t` is rounded to the nearest 0.1 s (clamped to the video), so the cache holds at most
ten files per second of video: `data/thumbnails/<video_id>/<t * 10>.jpg`. The frame is decoded with the one
video decoding path (`media.video`) and encoded with Pillow. Deleting a video drops its folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from media.video import VideoLimits, open_video

log = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 320  # pixels; smaller frames are not enlarged
JPEG_QUALITY = 82
STEP_S = 0.1  # cache granularity


class ThumbnailCache:
    def __init__(self, root: Path, limits: VideoLimits, max_concurrent: int = 2) -> None:
        self.root = root
        self.limits = limits
        root.mkdir(parents=True, exist_ok=True)
        # Rendering decodes video: bound it, so a grid of fifty cards cannot start fifty decoders at once.
        self._renders = threading.BoundedSemaphore(max_concurrent)

    @staticmethod
    def step(t: float, duration: float | None) -> int:
        """`t` (seconds) as a cache key: tenths of a second, clamped to [0, duration]."""
        if duration is not None and duration > 0:
            t = min(t, duration)
        return max(0, round(t / STEP_S))

    def path_for(self, video_id: int, step: int) -> Path:
        return self.root / str(video_id) / f"{step}.jpg"

    def get(self, video_id: int, video_path: Path, t: float, duration: float | None) -> Path:
        """The cached JPEG for `t`, rendering it first if needed. Raises `VideoError` for bad files."""
        step = self.step(t, duration)
        path = self.path_for(video_id, step)
        if path.is_file():
            return path
        with self._renders:
            if path.is_file():  # rendered by another request while this one waited
                return path
            jpeg = self.render(video_path, step * STEP_S)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".thumb-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(jpeg)
                os.replace(tmp, path)  # atomic: a reader sees the whole file or none
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        log.debug("thumbnail of video %d at %.1f s rendered", video_id, step * STEP_S)
        return path

    def render(self, video_path: Path, t: float) -> bytes:
        """JPEG bytes of the frame shown at `t` seconds (the last frame starting at or before `t`)."""
        with open_video(video_path, self.limits) as reader:
            index = int(np.searchsorted(reader.frame_times, t, side="right")) - 1
            index = min(max(index, 0), reader.info.num_frames - 1)
            frame = reader.get_frames([index]).frames[0].numpy()  # uint8 (H, W, C) RGB, upright
        image = Image.fromarray(frame)
        if image.width > THUMBNAIL_WIDTH:
            height = max(1, round(image.height * THUMBNAIL_WIDTH / image.width))
            image = image.resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()

    def drop(self, video_id: int) -> None:
        """Forget every thumbnail of a video (called when it is deleted)."""
        shutil.rmtree(self.root / str(video_id), ignore_errors=True)

