"""Thumbnails: one JPEG frame of a stored video, rendered once and cached on disk, within a size cap.

A request for time `t` is rounded to the nearest second (clamped to the video), so one video has at
most one file per second: `data/thumbnails/<video_id>/<seconds>s.jpg`. The whole cache is capped at
`max_bytes` (setting `thumbnail_cache_bytes`): past it, the least recently used files are deleted. The
frame is decoded with the one video decoding path (`media.video`) and encoded with Pillow.
Deleting a video drops its folder.

The cache's book of files and their last use lives in this process (rebuilt from the folder at start,
oldest first by modification time); with several gateway processes on one data directory, each keeps
its own files under the cap, and a file another process evicted is simply rendered again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from media.video import VideoLimits, open_video

log = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 320  # pixels; smaller frames are not enlarged
THUMBNAIL_HEIGHT = 320  # a frame taller than wide (down to 32x8192) is bounded by its height
JPEG_QUALITY = 82
STEP_S = 1.0  # cache granularity: one file per second of video, at most
DEFAULT_MAX_BYTES = 256 * 1024**2
_NAME = re.compile(r"^\d+s\.jpg$")


class ThumbnailCache:
    def __init__(self, root: Path, limits: VideoLimits, max_concurrent: int = 2,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.limits = limits
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        # Rendering decodes video: bound it, so a grid of fifty cards cannot start fifty decoders at once.
        self._renders = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._lru: OrderedDict[Path, int] = OrderedDict()  # file -> bytes, least recently used first
        self._bytes = 0
        self._load()

    def _load(self) -> None:
        """Book the files already on disk (oldest first); delete what is not a cache file of this layout."""
        found: list[tuple[float, Path, int]] = []
        for d in self.root.iterdir():
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.is_file() and _NAME.match(f.name):
                    st = f.stat()
                    found.append((st.st_mtime, f, st.st_size))
                elif f.is_dir():  # not ours
                    shutil.rmtree(f, ignore_errors=True)
                else:  # an older layout, or a render interrupted by a crash
                    f.unlink(missing_ok=True)
        with self._lock:
            for _, f, size in sorted(found):
                self._lru[f] = size
                self._bytes += size
            self._evict()

    @staticmethod
    def step(t: float, duration: float | None) -> int:
        """`t` (seconds) as a cache key: whole seconds, clamped to [0, duration]."""
        if duration is not None and duration > 0:
            t = min(t, duration)
        return max(0, round(t / STEP_S))

    def path_for(self, video_id: int, step: int) -> Path:
        return self.root / str(video_id) / f"{step}s.jpg"

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def get(self, video_id: int, video_path: Path, t: float, duration: float | None) -> bytes:
        """The JPEG for `t`, rendering (and caching) it first if needed. Raises `VideoError` for bad files."""
        step = self.step(t, duration)
        path = self.path_for(video_id, step)
        if (jpeg := self._read(path)) is not None:
            return jpeg
        with self._renders:
            if (jpeg := self._read(path)) is not None:  # rendered by another request while this one waited
                return jpeg
            jpeg = self.render(video_path, step * STEP_S)
            self._store(path, jpeg)
        log.debug("thumbnail of video %d at %d s rendered", video_id, step)
        return jpeg

    def _read(self, path: Path) -> bytes | None:
        with self._lock:
            if path not in self._lru:
                return None
            self._lru.move_to_end(path)
        try:
            return path.read_bytes()
        except FileNotFoundError:  # evicted by another process, or its video was just deleted
            self._forget(path)
            return None

    def _store(self, path: Path, jpeg: bytes) -> None:
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
        with self._lock:
            self._bytes += len(jpeg) - self._lru.pop(path, 0)
            self._lru[path] = len(jpeg)
            self._evict()

    def _evict(self) -> None:
        """Delete least recently used files until the cache is within `max_bytes` (lock held)."""
        while self._bytes > self.max_bytes and self._lru:
            old, size = self._lru.popitem(last=False)
            self._bytes -= size
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._bytes -= self._lru.pop(path, 0)

    def render(self, video_path: Path, t: float) -> bytes:
        """JPEG bytes of the frame shown at `t` seconds (the last frame starting at or before `t`)."""
        with open_video(video_path, self.limits) as reader:
            index = int(np.searchsorted(reader.frame_times, t, side="right")) - 1
            index = min(max(index, 0), reader.info.num_frames - 1)
            frame = reader.get_frames([index]).frames[0].numpy()  # uint8 (H, W, C) RGB, upright
        image = Image.fromarray(frame)
        scale = min(THUMBNAIL_WIDTH / image.width, THUMBNAIL_HEIGHT / image.height)
        if scale < 1:  # fits in THUMBNAIL_WIDTH x THUMBNAIL_HEIGHT, its aspect ratio kept
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()

    def drop(self, video_id: int) -> None:
        """Forget every thumbnail of a video (called when it is deleted)."""
        folder = self.root / str(video_id)
        with self._lock:
            for path in [p for p in self._lru if p.parent == folder]:
                self._bytes -= self._lru.pop(path)
        shutil.rmtree(folder, ignore_errors=True)
