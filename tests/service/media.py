"""Generated media and a tiny checkpoint for the service and end-to-end tests."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import torch

from media.video import ffmpeg_exe
from model.checkpoint import ModelCard, save_checkpoint
from model.config import BackboneConfig, DRCAConfig, HeadConfig, InputConfig
from model.drca import DRCA
from model.text import MINILM_DIM, TextHead

CLASS_NAMES = ["playing guitar", "riding a bike", "cooking", "swimming", "dancing"]

# Distinct lavfi sources, one video each (3 s, 96x96, 10 fps).
SOURCES = {
    "bars": "smptebars=size=96x96:rate=10:duration=3",
    "testsrc": "testsrc2=size=96x96:rate=10:duration=3",
    "mandel": "mandelbrot=size=96x96:rate=10,trim=duration=3",
    "life": "life=size=96x96:rate=10:mold=10:ratio=0.5:seed=7,trim=duration=3",
    "rgb": "rgbtestsrc=size=96x96:rate=10:duration=3",
}


def tiny_checkpoint(path: Path, class_names: list[str] = CLASS_NAMES, seed: int = 0, embed_dim: int = 16) -> Path:
    """A randomly initialised 2-layer DRCA (32x32, 4 frames, 16-d embeddings unless `embed_dim`) with a text
    head; another `seed` gives another checkpoint of the same shape."""
    torch.manual_seed(seed)
    cfg = DRCAConfig(
        name="tiny-service",
        input=InputConfig(num_frames=4, img_size=32),
        backbone=BackboneConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path=0.0,
                                comp_insert_layer=1, num_saliency=2, num_samples=20, sigma=0.05, sal_ref_heads=2),
        head=HeadConfig(num_classes=len(class_names), embed_dim=embed_dim),
    )
    model = DRCA(cfg).eval()
    card = ModelCard(preset="tiny-service", class_names=list(class_names), training_data="none (random init, tests only)")
    return save_checkpoint(path, model, card, text_head=TextHead(MINILM_DIM, embed_dim).eval())


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-nostdin", *args],
                   check=True, capture_output=True)


H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


def lavfi_video(path: Path, src: str, *extra: str) -> Path:
    ffmpeg("-f", "lavfi", "-i", src, *extra, *H264, str(path))
    return path


def near_duplicate(src: Path, dst: Path) -> Path:
    """Re-encoded (other quality), cropped (90% centre) and rescaled copy of `src`."""
    ffmpeg("-i", str(src), "-vf", "crop=iw*0.9:ih*0.9,scale=112:112", "-c:v", "libx264", "-crf", "32",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(dst))
    return dst


def make_media(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = {name: lavfi_video(root / f"{name}.mp4", src) for name, src in SOURCES.items()}
    out["bars_copy"] = near_duplicate(out["bars"], root / "bars_copy.mp4")
    out["testsrc_copy"] = near_duplicate(out["testsrc"], root / "testsrc_copy.mp4")
    out["long"] = lavfi_video(root / "long.mp4", "testsrc2=size=64x64:rate=5:duration=14")
    out["large"] = lavfi_video(root / "large.mp4", "testsrc2=size=640x480:rate=5:duration=1")
    out["two_segments"] = lavfi_video(root / "two.mp4", "mandelbrot=size=64x64:rate=5,trim=duration=7")
    audio = root / "audio.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(audio))
    out["audio"] = audio
    (root / "empty.mp4").write_bytes(b"")
    out["empty"] = root / "empty.mp4"
    good = out["bars"].read_bytes()
    (root / "corrupt.mp4").write_bytes(good[:48] + bytes(range(256)) * 20)
    out["corrupt"] = root / "corrupt.mp4"
    out["bad_frames"] = undecodable_frames(root / "bad_frames.mp4")
    (root / "notes.txt").write_text("this is not a video\n" * 50)
    out["text"] = root / "notes.txt"
    return out


def undecodable_frames(path: Path) -> Path:
    """A file that passes the upload probe (its header, with the index at the front, is intact) but fails
    in the worker: the frame data after the first 30 % is overwritten with seeded random bytes."""
    src = lavfi_video(path.with_name(path.stem + "_src.mp4"), "testsrc2=size=96x96:rate=10:duration=8",
                      "-movflags", "+faststart")
    data = bytearray(src.read_bytes())
    src.unlink()
    start = data.index(b"mdat") + 4
    start += (len(data) - start) * 3 // 10
    data[start:] = random.Random(0).randbytes(len(data) - start)
    path.write_bytes(bytes(data))
    return path


def distinct_videos(root: Path, n: int, seconds: int = 6, size: int = 96) -> list[Path]:
    """`n` videos with different content (Game of Life, one seed each), `seconds` long at 10 fps."""
    root.mkdir(parents=True, exist_ok=True)
    return [lavfi_video(root / f"life{i:03d}.mp4",
                        f"life=size={size}x{size}:rate=10:mold=10:ratio=0.5:seed={i + 1},trim=duration={seconds}")
            for i in range(n)]
