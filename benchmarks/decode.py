"""Decode throughput of the one video path (``media.video``): what an ingest or a query pays.

For each file: the standard classification clip (``SampleFrames(8, 32, 1, test_mode=True)``) and the
retrieval segments (1 frame per second, 8-frame segments: ``fixed_segments(window_s=8, stride_s=8,
frames_per_segment=8)``), each timed end to end from a fresh ``open_video`` (header probe + decord open
+ seek/decode of only the sampled frames), plus a sequential full decode for reference and the
``preprocess`` cost of the 8-frame clip to 224x224. Reported: decoded frames/s and seconds of video/s
(video duration / wall time: how fast a library of that kind of video is ingested on one core).

    python -m benchmarks.decode [FILES...] [--media-dir DIR] [--repeats N] [--out PATH]

Without FILES it uses every video under ``--media-dir`` (``drca media fetch-real`` output).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._env import write_result
from media.sampling import SampleFrames, fixed_segments
from media.transforms import preprocess
from media.video import open_video

log = logging.getLogger("benchmarks.decode")

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm"}


class _Input:
    img_size = 224
    mean = (127.5, 127.5, 127.5)
    std = (127.5, 127.5, 127.5)


def _median_time(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    fn()  # warm-up (page cache, lazy imports)
    times, frames = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), frames


def bench_file(path: Path, repeats: int, threads: int = 1) -> dict[str, Any]:
    with open_video(path, num_threads=threads) as r:
        info = r.info
    clip_sampler = SampleFrames(clip_len=8, frame_interval=32, num_clips=1, test_mode=True)

    def open_only() -> int:
        open_video(path, num_threads=threads).close()
        return 0

    def clip() -> int:
        with open_video(path, num_threads=threads) as r:
            s = clip_sampler(r.info.num_frames, r.info.fps, frame_times=r.frame_times)
            return int(r.get_frames(s.indices).frames.shape[0])

    def segments() -> int:
        with open_video(path, num_threads=threads) as r:
            segs = fixed_segments(r.info.num_frames, r.info.fps, 8.0, 8.0, 8, frame_times=r.frame_times)
            n = 0
            for seg in segs:  # one get_batch per segment, as the ingest worker does
                n += int(r.get_frames(seg.indices).frames.shape[0])
            return n

    def full() -> int:
        with open_video(path, num_threads=threads) as r:
            n, step = 0, 32
            for a in range(0, r.info.num_frames, step):
                n += int(r.get_frames(range(a, min(a + step, r.info.num_frames))).frames.shape[0])
            return n

    with open_video(path, num_threads=threads) as r:
        frames8 = r.get_frames(clip_sampler.frame_indices(r.info.num_frames)).frames

    def prep() -> int:
        preprocess(frames8, _Input())
        return 8

    out: dict[str, Any] = {
        "file": path.name,
        "info": {
            "width": info.width,
            "height": info.height,
            "fps": round(info.fps, 3),
            "num_frames": info.num_frames,
            "duration_s": round(info.duration, 3),
            "codec": info.codec,
        },
    }
    t_open, _ = _median_time(open_only, repeats)
    out["open_ms"] = round(t_open * 1e3, 2)
    for name, fn, reps in (
        ("clip_8x32x1", clip, repeats),
        ("segments_1fps_8f", segments, repeats),
        ("full_decode", full, max(1, repeats // 3)),
    ):
        t, n = _median_time(fn, reps)
        out[name] = {
            "seconds": round(t, 4),
            "frames": n,
            "frames_per_s": round(n / t, 1),
            "video_seconds_per_s": round(info.duration / t, 1),
        }
        log.info("%s %s: %.1f frames/s, %.1f s of video/s", path.name, name, n / t, info.duration / t)
    t, _ = _median_time(prep, repeats)
    out["preprocess_8f_224_ms"] = round(t * 1e3, 2)
    return out


def find_media(media_dir: Path) -> list[Path]:
    return sorted(p for p in media_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--media-dir", type=Path, default=Path("data/real"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for preprocess")
    ap.add_argument("--decode-threads", type=int, default=1, help="decoder threads (0: FFmpeg picks)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("media.video").setLevel(logging.ERROR)  # per-open warnings would flood
    torch.set_num_threads(args.threads)
    files = args.files or find_media(args.media_dir)
    if not files:
        raise SystemExit(f"no video files given and none under {args.media_dir}")
    results = {
        "repeats": args.repeats,
        "torch_threads": args.threads,
        "decode_threads": args.decode_threads,
        "files": [],
    }
    for f in files:
        results["files"].append(bench_file(f, args.repeats, args.decode_threads))
    path = write_result("decode", results, args.out)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
