"""Generated test media: videos whose frames encode their own index, a table of bad inputs, and random
decoded frames with a stand-in input config for the preprocessing tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from media.video import ffmpeg_exe

BITS = 10  # frame indices up to 1023
BLOCK = 16  # each bit is a BLOCK x BLOCK black/white square: survives any sane encoder
CODE_W, CODE_H = BITS * BLOCK, 2 * BLOCK


def index_frame(i: int, width: int = CODE_W, height: int = CODE_H) -> np.ndarray:
    """uint8 (H, W, 3): bit b of ``i`` is the b-th block of the top row (white = 1)."""
    f = np.zeros((height, width, 3), np.uint8)
    for b in range(BITS):
        if (i >> b) & 1:
            f[:BLOCK, b * BLOCK : (b + 1) * BLOCK] = 255
    f[BLOCK:, : BLOCK * 2] = 255  # an asymmetric marker (bottom-left) to check orientation
    return f


def read_index(frame: np.ndarray) -> int:
    """Inverse of ``index_frame`` for an upright decoded frame (H, W, 3)."""
    lum = np.asarray(frame, dtype=np.float64).mean(-1)
    bits = [lum[:BLOCK, b * BLOCK : (b + 1) * BLOCK].mean() > 127 for b in range(BITS)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    head = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error"] + (
        ["-nostdin"] if stdin is None else []
    )
    subprocess.run(
        [*head, *args],
        input=stdin,
        check=True,
        capture_output=True,
    )


LOSSLESS_H264 = ("-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "32")


def write_index_video(
    path: Path, num_frames: int, fps: int = 25, codec: tuple[str, ...] = LOSSLESS_H264
) -> Path:
    """A video whose frame i shows the bar code of i (lossless H.264 by default)."""
    raw = b"".join(index_frame(i).tobytes() for i in range(num_frames))
    ffmpeg(
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{CODE_W}x{CODE_H}", "-r", str(fps), "-i", "pipe:0",
        *codec, str(path),
        stdin=raw,
    )  # fmt: skip
    return path


# VFR: frames 0..19 at 25 fps, then 10 fps (0.1 s apart).
def vfr_time(i: int) -> float:
    return i * 0.04 if i < 20 else 0.8 + (i - 20) * 0.1


def write_vfr_video(path: Path, num_frames: int = 40) -> Path:
    raw = b"".join(index_frame(i).tobytes() for i in range(num_frames))
    ffmpeg(
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{CODE_W}x{CODE_H}", "-r", "25", "-i", "pipe:0",
        "-vf", "settb=1/1000,setpts='if(lt(N,20),N*0.04,0.8+(N-20)*0.1)/TB'", "-fps_mode", "passthrough",
        "-video_track_timescale", "1000",
        "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path),
        stdin=raw,
    )  # fmt: skip
    return path


def lavfi(path: Path, src: str, *args: str) -> Path:
    ffmpeg("-f", "lavfi", "-i", src, *args, str(path))
    return path


@dataclass(frozen=True)
class Cfg:  # stands in for model.config.InputConfig (duck-typed)
    num_frames: int = 4
    img_size: int = 32
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)


def frames(t: int = 4, h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), generator=g, dtype=torch.uint8)
