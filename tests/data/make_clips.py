"""Re-create the real clips committed next to this file from a `drca media fetch-real` folder.

    python -m tests.data.make_clips /path/to/fetch-real-folder

Each clip is one allowed still image (held out from the distillation: `training/data/heldout.json`'s
rule), moved through a camera path (slow zoom and pan, `training.data.distill.camera_path`), 8 s at
8 fps, 224x224, H.264. `CLIPS` names the still (its sha256 is checked) and the object it shows.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from training.data.distill import MotionConfig, camera_path, load_still, render
from training.data.synth import encode_mp4

HERE = Path(__file__).parent
# clip file -> (still under <fetch-real>/images/, its sha256, the object it shows)
CLIPS = {
    "tiger.mp4": ("openclipart-png__0281014524_tiger_graig_ryan_smith_-_01.png",
                  "0281014524", "tiger"),
    "car.mp4": ("openclipart-png__0aa44a5f21_car_jamin_ellis_.png", "0aa44a5f21", "sports car"),
    "capitol.mp4": ("openclipart-png__2e60980787_us_capitol_building_cli_01.png", "2e60980787",
                    "domed building (the US Capitol)"),
    "sailboat.mp4": ("openclipart-png__0401404d47_sailboat_illustration_labels.png", "0401404d47",
                     "sailing boat"),
}
MOTION = MotionConfig(scale=(0.75, 1.0), max_zoom=1.25, max_pan=0.5, max_rotation=3.0)


def make(real_dir: Path) -> None:
    for name, (still, sha_prefix, _) in CLIPS.items():
        path = real_dir / "images" / still
        if not hashlib.sha256(path.read_bytes()).hexdigest().startswith(sha_prefix):
            raise SystemExit(f"{path}: not the expected image")
        img = load_still(path, 320)
        mats = camera_path(img.shape[-2], img.shape[-1], 64, MOTION, np.random.default_rng(0))
        frames = render(img, mats, 224).round().byte().permute(0, 2, 3, 1).numpy()
        encode_mp4(np.ascontiguousarray(frames), 8, HERE / name, crf=30)


if __name__ == "__main__":
    make(Path(sys.argv[1]))
