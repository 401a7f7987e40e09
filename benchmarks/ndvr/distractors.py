"""Build distractor videos for the NDVR database: footage that is relevant to no query.

    python -m benchmarks.ndvr.distractors --stills /work/media-stills --real /work/media \\
        --out /work/media/ndvr-distractors [--seed 0] [--stills-count 900] [--synth-seeds 1,2]

Three kinds, all short (2-6 s) and small (320 px wide), so that 1,000+ of them can be encoded on 2 cores:

* ``still``: an allowed still image given camera motion. Each image is fitted (aspect kept) onto a
  640x360 canvas of a random solid colour, then ffmpeg's ``zoompan`` moves a virtual camera over it:
  a zoom from z0 to z1 (1.0-1.6) and a pan between two random points, linear in time, 25 fps. Images
  come from ``--stills``: a folder holding the extracted Debian packages (``apt-get download`` +
  ``dpkg-deb -x`` of ``gnome-backgrounds``, ``desktop-base``, ``openclipart-png``, ``wesnoth-1.16-data``,
  into ``STILLS/root``) and the ``skimage/data`` images of the scikit-image wheel (``pip download
  --no-deps scikit-image``, unzipped into ``STILLS/skimage``). Only raster files (PNG, JPEG, WebP) whose
  short side is at least 200 px are used (wesnoth's small unit sprites are left out).
* ``synth``: ``drca synth`` videos of other seeds than the one the shipped checkpoint trained on (seed 0),
  re-encoded to 320 px wide.
* ``tail``: cuts of the long allowed video ``opencv-doc__vtest`` after the 30 s the benchmark's original
  keeps (the same fixed camera and street, other people: a hard distractor, not a copy).

Every distractor is H.264 (the build's encoding settings); byte-identical results (one image shipped
twice under the same file name) are kept once. Choices come from
``numpy.random.default_rng([seed, crc32(kind:source)])``. Output (``OUT``): ``videos/<id>.mp4``,
``distractors.tsv`` (id, kind, source, parameters as JSON) and ``distractors.json`` (counts, durations).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.ndvr.build import BuildConfig, _encode_args, _run_ffmpeg
from media.video import open_video
from training.data.synth import SynthConfig, generate

log = logging.getLogger(__name__)

RASTER = (".png", ".jpg", ".jpeg", ".webp")
#: (label, path under STILLS, at most this many images; None: all)
STILL_SOURCES: tuple[tuple[str, str, int | None], ...] = (
    ("gnome-backgrounds", "root/usr/share/backgrounds", None),
    ("desktop-base", "root/usr/share/desktop-base", None),
    ("skimage", "skimage/skimage/data", None),
    ("wesnoth", "root/usr/share/games/wesnoth", 400),
    ("openclipart", "root/usr/share/openclipart", None),  # fills up to --stills-count
)
MIN_SIDE = 200
CANVAS = (640, 360)
FPS = 25
TAIL_SOURCE = "opencv-doc__vtest"
TAIL_FROM_S = 30.0  # the benchmark keeps the first 30 s of it as an original


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    source: str
    params: dict
    args: list[str]  # ffmpeg arguments before the encoder's ("{canvas}": the composed still)
    image: Path | None = None  # a still: fitted onto its canvas colour first (``compose``)


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _usable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return min(im.size) >= MIN_SIDE
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def list_stills(stills: Path, count: int, seed: int) -> list[tuple[str, Path]]:
    """(source label, image) pairs, deterministic for a seed: every usable image of the small sources,
    a sample of wesnoth, then openclipart up to ``count``."""
    chosen: list[tuple[str, Path]] = []
    for label, rel, cap in STILL_SOURCES:
        root = stills / rel
        if not root.is_dir():
            log.warning("%s: missing, no %s stills", root, label)
            continue
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in RASTER and p.is_file())
        order = _rng(seed, f"order:{label}").permutation(len(files))
        room = count - len(chosen)
        limit = room if cap is None else min(cap, room)
        taken = 0
        for i in order:
            if taken >= limit:
                break
            if _usable(files[i]):
                chosen.append((label, files[i]))
                taken += 1
        log.info("%s: %d stills (%d raster files)", label, taken, len(files))
    return chosen


def still_job(label: str, path: Path, seed: int, index: int) -> Job:
    rng = _rng(seed, f"still:{label}:{path.name}")
    dur = float(rng.uniform(2.0, 6.0))
    n = max(2, round(dur * FPS))
    z0, z1 = (float(v) for v in rng.uniform(1.0, 1.6, 2))
    px0, py0, px1, py1 = (float(v) for v in rng.uniform(0.0, 1.0, 4))
    colour = "0x" + "".join(f"{int(c):02x}" for c in rng.integers(0, 256, 3))
    w, h = CANVAS
    out_w, out_h = (320, 180) if rng.random() < 0.5 else (320, 240)
    t = f"(on/{n - 1})"
    zoom = f"{z0:.4f}+({z1 - z0:.4f})*{t}"
    x = f"(iw-iw/zoom)*({px0:.4f}+({px1 - px0:.4f})*{t})"
    y = f"(ih-ih/zoom)*({py0:.4f}+({py1 - py0:.4f})*{t})"
    graph = f"zoompan=z='{zoom}':x='{x}':y='{y}':d=1:s={out_w}x{out_h}:fps={FPS},format=yuv420p"
    args = ["-loop", "1", "-framerate", str(FPS), "-t", f"{dur:.3f}", "-i", "{canvas}", "-vf", graph,
            "-frames:v", str(n)]
    params = {"duration_s": round(dur, 3), "zoom": [round(z0, 3), round(z1, 3)],
              "pan": [round(px0, 3), round(py0, 3), round(px1, 3), round(py1, 3)], "canvas": colour,
              "size": [out_w, out_h]}
    return Job(f"still-{label}-{index:04d}", "still", f"{label}:{path.name}", params, args, path)


def synth_jobs(synth_dirs: list[Path]) -> list[Job]:
    jobs = []
    for d in synth_dirs:
        for p in sorted(d.rglob("*.mp4")):
            vid = f"synth-{d.name}-{p.stem}"
            jobs.append(Job(vid, "synth", f"{d.name}/{p.relative_to(d).as_posix()}", {},
                            ["-i", str(p), "-vf", "scale=320:-2"]))
    return jobs


def tail_jobs(real: Path, seed: int, max_cuts: int = 24) -> list[Job]:
    src = next((p for p in sorted((real / "videos").glob(f"{TAIL_SOURCE}.*"))), None)
    if src is None:
        log.warning("%s not found under %s/videos: no tail cuts", TAIL_SOURCE, real)
        return []
    with open_video(src) as r:
        duration = r.info.duration
    rng = _rng(seed, f"tail:{TAIL_SOURCE}")
    jobs, t = [], TAIL_FROM_S
    while t + 2.0 <= duration and len(jobs) < max_cuts:
        dur = min(float(rng.uniform(2.0, 6.0)), duration - t)
        jobs.append(Job(f"tail-{TAIL_SOURCE}-{len(jobs):02d}", "tail", src.name,
                        {"start_s": round(t, 3), "duration_s": round(dur, 3)},
                        ["-ss", f"{t:.3f}", "-t", f"{dur:.3f}", "-i", str(src), "-vf", "scale=320:-2"]))
        t += dur
    return jobs


def compose(image: Path, colour: str, dst: Path) -> None:
    """The image fitted (aspect kept, alpha blended) onto a CANVAS of ``colour`` ("0xRRGGBB"), as PNG."""
    with Image.open(image) as im:
        im.draft("RGB", CANVAS)  # JPEG: decode at a reduced scale
        im = im.convert("RGBA")
        scale = min(CANVAS[0] / im.width, CANVAS[1] / im.height)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
        canvas = Image.new("RGBA", CANVAS, "#" + colour[2:])
        canvas.alpha_composite(im, ((CANVAS[0] - im.width) // 2, (CANVAS[1] - im.height) // 2))
        canvas.convert("RGB").save(dst)


def render(job: Job, out: Path, cfg: BuildConfig) -> None:
    dst = out / "videos" / f"{job.id}.mp4"
    if dst.exists():
        return
    tmp = dst.with_suffix(".partial.mp4")
    args = job.args
    if job.image is not None:
        canvas = dst.with_suffix(".canvas.png")
        compose(job.image, str(job.params["canvas"]), canvas)
        args = [str(canvas) if a == "{canvas}" else a for a in args]
    try:
        _run_ffmpeg(["-fflags", "+genpts", *args, *_encode_args(cfg.crf, cfg.preset), str(tmp)])
    finally:
        if job.image is not None:
            canvas.unlink(missing_ok=True)
    tmp.replace(dst)


def _distinct(jobs: list[Job], out: Path) -> tuple[list[Job], list[str]]:
    """Drop byte-identical videos (the same image shipped twice under one name gets the same motion):
    the service stores one video per content, so the database would silently hold fewer."""
    seen: set[str] = set()
    keep, dropped = [], []
    for j in jobs:
        path = out / "videos" / f"{j.id}.mp4"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            dropped.append(j.id)
            path.unlink()
            continue
        seen.add(digest)
        keep.append(j)
    return keep, dropped


def make_synth(out: Path, seeds: list[int], per_class: int) -> list[Path]:
    dirs = []
    for s in seeds:
        d = out / "synth-src" / f"seed{s}"
        if not (d / "videos").exists():
            generate(d, SynthConfig(videos_per_class=per_class, seed=s, min_seconds=2.0, max_seconds=6.0),
                     workers=1)
        dirs.append(d)
    return dirs


def build(stills: Path, real: Path, out: Path, seed: int, stills_count: int, synth_seeds: list[int],
          synth_per_class: int, workers: int) -> Path:
    (out / "videos").mkdir(parents=True, exist_ok=True)
    cfg = BuildConfig(seed=seed)
    jobs = [still_job(label, p, seed, i) for i, (label, p) in enumerate(list_stills(stills, stills_count, seed))]
    jobs += synth_jobs(make_synth(out, synth_seeds, synth_per_class))
    jobs += tail_jobs(real, seed)
    failed: list[dict[str, str]] = []

    def one(job: Job) -> Job | None:
        try:
            render(job, out, cfg)
            return job
        except (RuntimeError, OSError, ValueError) as e:  # ffmpeg or the image: recorded, left out
            failed.append({"id": job.id, "source": job.source, "error": str(e).splitlines()[-1][:300]})
            return None

    with ThreadPoolExecutor(workers) as pool:
        done = [j for j in tqdm(pool.map(one, jobs), total=len(jobs), desc="distractors", unit="video") if j]
    done, dropped = _distinct(done, out)
    return write_manifest(out, done, seed=seed, failed=failed, identical_dropped=dropped)


def write_manifest(out: Path, jobs: list, **extra: object) -> Path:
    """`out/distractors.tsv` (id, kind, source, parameters per video) and `out/distractors.json` (the count,
    the kinds, each video's duration and their sum, plus `extra`) for the rendered `jobs`; the json's path."""
    durations = {}
    for j in jobs:
        with open_video(out / "videos" / f"{j.id}.mp4") as r:
            durations[j.id] = round(r.info.duration, 3)
    (out / "distractors.tsv").write_text(
        "".join(f"{j.id}\t{j.kind}\t{j.source}\t{json.dumps(j.params, sort_keys=True)}\n" for j in jobs),
        encoding="utf-8")
    kinds: dict[str, int] = {}
    for j in jobs:
        kinds[j.kind] = kinds.get(j.kind, 0) + 1
    meta = {**extra, "count": len(jobs), "kinds": kinds, "video_seconds": round(sum(durations.values()), 3),
            "durations_s": durations}
    path = out / "distractors.json"
    path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Distractors:
    paths: dict[str, Path]
    durations: dict[str, float]
    kind: dict[str, str]


def load_distractors(root: str | Path) -> Distractors:
    root = Path(root)
    meta = json.loads((root / "distractors.json").read_text(encoding="utf-8"))
    kind = {}
    for line in (root / "distractors.tsv").read_text(encoding="utf-8").splitlines():
        vid, k, *_ = line.split("\t")
        kind[vid] = k
    paths = {vid: root / "videos" / f"{vid}.mp4" for vid in kind}
    return Distractors(paths, {k: float(v) for k, v in meta["durations_s"].items()}, kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stills", required=True, type=Path)
    parser.add_argument("--real", required=True, type=Path, help="directory written by `drca media fetch-real`")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stills-count", type=int, default=900)
    parser.add_argument("--synth-seeds", default="1,2")
    parser.add_argument("--synth-per-class", type=int, default=9)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds = [int(s) for s in args.synth_seeds.split(",") if s]
    if 0 in seeds:
        raise SystemExit("--synth-seeds: seed 0 is the shipped checkpoint's training data; pick others")
    path = build(args.stills, args.real, args.out, args.seed, args.stills_count, seeds, args.synth_per_class,
                 args.workers)
    meta = json.loads(path.read_text())
    print(f"{meta['count']} distractors {meta['kinds']}, {meta['video_seconds']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
