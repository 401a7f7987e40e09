"""Build the copy-detection benchmark: chained edits, excerpts inside unrelated footage with their true
spans, and queries with no copy in the index; a calibration split and a held-out split whose source
videos are disjoint.

    python -m benchmarks.ndvr.copyset --real /work/media/real --stills /work/media-stills \\
        --distractors /work/media/ndvr-distractors --out /work/media/ndvr-copy [--seed 0]

Sources are the NDVR benchmark's (``benchmarks.ndvr.build``): the allowed real videos of ``--real`` as
originals (the same cut to 30 s and the same duplicate groups), and the allowed still images of
``--stills`` (``benchmarks.ndvr.distractors``) for unrelated footage. Images the distractors of
``--distractors`` already show are left out, so no query or host shot shows a database picture.

**Splits.** The duplicate-group heads (the footage) are dealt to ``calib`` and ``heldout`` in a seeded
order, package by package, so both splits get some of every package; a group's members follow its head.
Each split keeps ``nocopy_real`` heads (not in a group) out of its database: their edits are queries with
no copy in the index. Each split's database holds its other originals (the runner adds the distractors).
Images are dealt to the background set, then to ``calib``, then to ``heldout``; each is used once.

**Queries** (ids ``<head>.<family>`` and so on; every one H.264 crf 23 unless its edits say):

* ``chain``: one query per copy head and chain family (``FAMILIES``: two or three edits at once, e.g. crop +
  colour + a low-quality re-encode, rotation + noise, blur chains, a tilted "screen recording").
* ``excerpt``: ``excerpts_per_source`` per copy head that lasts long enough (groups left out: their members'
  timelines differ): 6-12 s of the original inside unrelated footage (shots of still images given camera
  motion), at 25 fps. The manifest records the true spans, ``query`` (seconds in the query) and ``db``
  (seconds in the database video). The odd-numbered excerpts also get a chain family over the whole query.
* ``nocopy`` (relevant to nothing): the ``nocopy_real`` heads with every family and a plain re-encode
  (``real``); each excerpt's host footage alone, with the same edits (``host``); ``nocopy_stills`` queries of
  1-3 still shots with a random family or none (``still``).

A **background set** (``OUT/background``, the distractors' format and motion) of ``background`` still
videos, in neither split, serves the background score normalisation (``benchmarks.ndvr.copymetrics``).

Parameters come from ``numpy.random.default_rng([seed, crc32(key)])`` per query, so a query does not depend
on which others are built. Output::

    OUT/copyset.json                 configuration, ffmpeg, the split of every head, the image deal
    OUT/background/                  videos/<id>.mp4, distractors.tsv, distractors.json (load_distractors)
    OUT/<split>/                     one set per split, loadable by benchmarks.ndvr.build.load_benchmark:
        database/ queries/ queries.txt database.txt relevance.json ("q": [] for a no-copy query)
        transforms.tsv               query, family ("nocopy" for a no-copy query), source, parameters
        paths.tsv ndvr.json          paths and durations
        copyset.json                 every query: kind, family, edits, source, relevant, spans, parameters

Load a split with :func:`load_copyset`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.ndvr.build import (
    Benchmark,
    BuildConfig,
    Original,
    _database_copy,
    _encode_args,
    _groups,
    _run_ffmpeg,
    ffmpeg_version,
    find_originals,
    load_benchmark,
)
from benchmarks.ndvr.distractors import (
    RASTER,
    STILL_SOURCES,
    _usable,
    compose,
    render,
    still_job,
    write_manifest,
)
from media.video import open_video
from training.data.retrieval_sets import write_id_list, write_relevance

log = logging.getLogger(__name__)

SPLITS = ("calib", "heldout")
NOCOPY = "nocopy"


@dataclass(frozen=True)
class CopySetConfig:
    seed: int = 0
    max_seconds: float = 30.0  # originals cut to their first max_seconds, as in the NDVR set
    nocopy_real: int = 2  # heads per split kept out of the database (their edits have no copy)
    excerpts_per_source: int = 2
    excerpt_s: tuple[float, float] = (6.0, 12.0)
    host_side_s: tuple[float, float] = (2.0, 14.0)  # unrelated footage before and after the excerpt
    shot_s: tuple[float, float] = (3.0, 7.0)  # one still shot of the host footage
    nocopy_stills: int = 200  # per split
    background: int = 200
    fps: int = 25  # of composed queries (excerpts, hosts, stills)
    max_width: int = 640  # composed queries: the original's size, at most this wide
    crf: int = 23
    preset: str = "veryfast"

    def build_config(self) -> BuildConfig:
        return BuildConfig(seed=self.seed, max_seconds=self.max_seconds, crf=self.crf, preset=self.preset)


# ------------------------------------------------------------------------------------- edits
@dataclass
class Frame:
    """The picture size as the chain goes (so an edit can size itself), and the chain's encoder quality."""

    w: int
    h: int
    crf: int | None = None


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


EditFn = Callable[[Frame, np.random.Generator], tuple[str | None, dict]]


def _crop(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    kw, kh = (float(v) for v in rng.uniform(0.6, 0.85, 2))
    x, y = float(rng.uniform(0, 1 - kw)), float(rng.uniform(0, 1 - kh))
    w, h = _even(f.w * kw), _even(f.h * kh)
    f.w, f.h = w, h
    return f"crop={w}:{h}:iw*{x:.3f}:ih*{y:.3f}", {"w": round(kw, 3), "h": round(kh, 3), "x": round(x, 3),
                                                     "y": round(y, 3)}


def _color(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    p = {"brightness": round(_sign(rng) * float(rng.uniform(0.05, 0.15)), 3),
         "contrast": round(float(rng.uniform(0.7, 1.3)), 2), "saturation": round(float(rng.uniform(0.5, 1.8)), 2),
         "gamma": round(float(rng.uniform(0.7, 1.4)), 2)}
    return "eq=" + ":".join(f"{k}={v}" for k, v in p.items()), p


def _hue(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    p = {"hue_deg": round(_sign(rng) * float(rng.uniform(40, 150)), 1), "saturation": round(float(rng.uniform(0.6, 1.5)), 2)}
    return f"hue=h={p['hue_deg']}:s={p['saturation']}", p


def _rotate(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    deg = round(_sign(rng) * float(rng.uniform(4, 15)), 2)
    return f"rotate=a={math.radians(deg):.5f}:c=black", {"deg": deg}


def _noise(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    p = {"strength": int(rng.integers(12, 29)), "seed": int(rng.integers(1, 2**31 - 1))}
    return f"noise=alls={p['strength']}:allf=t+u:all_seed={p['seed']}", p


def _hflip(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    return "hflip", {}


def _blur(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    sigma = round(min(f.w, f.h) * float(rng.uniform(0.012, 0.025)), 2)
    return f"gblur=sigma={sigma}", {"sigma_px": sigma}


def _downscale(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    k = float(rng.uniform(0.3, 0.5))
    w = max(32, _even(f.w * k))
    f.h, f.w = _even(f.h * w / f.w), w
    return f"scale={w}:{f.h}:flags=area", {"scale": round(k, 3), "width": w}


def _border(f: Frame, rng: np.random.Generator) -> tuple[str, dict]:
    b = float(rng.uniform(0.06, 0.15))
    colour = "0x" + "".join(f"{int(v):02x}" for v in rng.integers(0, 64, 3))
    w, h = _even(f.w * (1 + 2 * b)), _even(f.h * (1 + 2 * b))
    f.w, f.h = w, h
    return f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color={colour}", {"fraction": round(b, 3), "color": colour}


def _reencode_lq(f: Frame, rng: np.random.Generator) -> tuple[None, dict]:
    f.crf = int(rng.integers(34, 41))
    return None, {"crf": f.crf}


#: Edit name -> filter builder. Each draws its parameters from the query's generator.
EDITS: dict[str, EditFn] = {
    "crop": _crop, "color": _color, "hue": _hue, "rotate": _rotate, "noise": _noise, "hflip": _hflip,
    "blur": _blur, "downscale": _downscale, "border": _border, "reencode_lq": _reencode_lq,
}

#: Chain families: two or three edits at once, applied in this order. The name lists them.
FAMILIES: tuple[tuple[str, ...], ...] = (
    ("crop", "color", "reencode_lq"),
    ("rotate", "noise"),
    ("hue", "noise", "hflip"),
    ("blur", "downscale", "reencode_lq"),
    ("blur", "color", "noise"),
    ("border", "rotate", "color"),  # a tilted screen recording
)


def family_name(edits: tuple[str, ...]) -> str:
    return "+".join(edits)


def chain(edits: tuple[str, ...], frame: Frame, rng: np.random.Generator) -> tuple[str, list[dict]]:
    """The filter chain of ``edits`` ("null" for none) and their parameters; ``frame`` follows the sizes."""
    filters, params = [], []
    for name in edits:
        flt, p = EDITS[name](frame, rng)
        if flt:
            filters.append(flt)
        params.append({"edit": name, **p})
    return ",".join(filters) or "null", params


# ------------------------------------------------------------------------------------- rendering
@dataclass
class Shot:
    """A still image given camera motion (the distractors' zoompan) for ``frames`` frames."""

    label: str
    image: Path
    frames: int
    params: dict


def make_shot(label: str, image: Path, frames: int, rng: np.random.Generator) -> Shot:
    z0, z1 = (float(v) for v in rng.uniform(1.0, 1.6, 2))
    pan = [float(v) for v in rng.uniform(0.0, 1.0, 4)]
    colour = "0x" + "".join(f"{int(c):02x}" for c in rng.integers(0, 256, 3))
    return Shot(label, image, frames, {"image": f"{label}:{image.name}", "frames": frames, "canvas": colour,
                                       "zoom": [round(z0, 3), round(z1, 3)], "pan": [round(p, 3) for p in pan]})


def _shot_input(shot: Shot, canvas: Path, fps: int) -> list[str]:
    return ["-loop", "1", "-framerate", str(fps), "-t", f"{shot.frames / fps:.4f}", "-i", str(canvas)]


def _shot_filter(shot: Shot, w: int, h: int, fps: int) -> str:
    p, n = shot.params, max(2, shot.frames)
    t = f"(on/{n - 1})"
    z0, z1 = p["zoom"]
    x0, y0, x1, y1 = p["pan"]
    return (f"zoompan=z='{z0:.4f}+({z1 - z0:.4f})*{t}':x='(iw-iw/zoom)*({x0:.4f}+({x1 - x0:.4f})*{t})'"
            f":y='(ih-ih/zoom)*({y0:.4f}+({y1 - y0:.4f})*{t})':d=1:s={w}x{h}:fps={fps},"
            f"trim=end_frame={shot.frames},setsar=1,format=yuv420p")


@dataclass
class Job:
    """One query: inputs (a video and/or still shots), the composition, then the chain of edits."""

    qid: str
    video: Path | None = None  # input 0 when set
    trim: tuple[float, float] | None = None  # (start, duration) of the video, when it is an excerpt
    before: list[Shot] = field(default_factory=list)  # shots before the video (or all shots: no video)
    after: list[Shot] = field(default_factory=list)
    size: tuple[int, int] | None = None  # composed queries: the output size
    chain: str = "null"
    crf: int | None = None


def render_job(job: Job, dst: Path, cfg: CopySetConfig) -> None:
    """Render with one ffmpeg call (the composition, the chain, even size, H.264); files already there are
    kept (a build resumes)."""
    if dst.exists():
        return
    tmp = dst.with_suffix(".partial.mp4")
    with tempfile.TemporaryDirectory(prefix="copyset-") as canvases:
        inputs: list[str] = []
        parts: list[str] = []
        labels: list[str] = []
        n = 0
        if job.video is not None:
            inputs += ["-fflags", "+genpts", "-i", str(job.video)]
            n = 1
            if job.trim is None:
                parts.append("[0:v]null[v]")
            else:
                w, h = job.size or (0, 0)
                start, dur = job.trim
                parts.append(f"[0:v]trim=start={start:.4f}:duration={dur:.4f},setpts=PTS-STARTPTS,fps={cfg.fps},"
                             f"scale={w}:{h},setsar=1,format=yuv420p[v]")
        for i, shot in enumerate([*job.before, *job.after]):
            canvas = Path(canvases) / f"{i}.png"
            compose(shot.image, str(shot.params["canvas"]), canvas)
            inputs += _shot_input(shot, canvas, cfg.fps)
            w, h = job.size or (0, 0)
            parts.append(f"[{n}:v]{_shot_filter(shot, w, h, cfg.fps)}[s{i}]")
            n += 1
        labels = [f"[s{i}]" for i in range(len(job.before))]
        if job.video is not None:
            labels.append("[v]")
        labels += [f"[s{i}]" for i in range(len(job.before), len(job.before) + len(job.after))]
        if len(labels) > 1:
            parts.append(f"{''.join(labels)}concat=n={len(labels)}:v=1:a=0[c]")
        else:
            parts.append(f"{labels[0]}null[c]")
        parts.append(f"[c]{job.chain},scale=trunc(iw/2)*2:trunc(ih/2)*2,setsar=1[out]")
        _run_ffmpeg([*inputs, "-filter_complex", ";".join(parts), "-map", "[out]",
                     *_encode_args(job.crf or cfg.crf, cfg.preset), str(tmp)])
    tmp.replace(dst)


# ------------------------------------------------------------------------------------- sources
def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def package(head: str) -> str:
    return head.split("__", 1)[0]


def deal_splits(heads: list[str], seed: int) -> dict[str, str]:
    """head -> split: heads shuffled within their package, packages in a seeded order, then dealt
    alternately (the deal runs on across packages, so the split sizes differ by at most one)."""
    by_pkg: dict[str, list[str]] = {}
    for h in sorted(heads):
        by_pkg.setdefault(package(h), []).append(h)
    rng = _rng(seed, "splits")
    order = [h for pkg in sorted(by_pkg) for h in (by_pkg[pkg][i] for i in rng.permutation(len(by_pkg[pkg])))]
    return {h: SPLITS[i % 2] for i, h in enumerate(order)}


def used_images(distractors: Path | None) -> set[str]:
    """``label:file name`` of every still the distractors show (``distractors.tsv``)."""
    if distractors is None:
        return set()
    out = set()
    for line in (distractors / "distractors.tsv").read_text(encoding="utf-8").splitlines():
        _, kind, source, *_ = line.split("\t")
        if kind == "still":
            out.add(source)
    return out


def image_pool(stills: Path, exclude: set[str], seed: int) -> Iterator[tuple[str, Path]]:
    """Usable (label, image) pairs of every still source in a seeded order, leaving out ``exclude``."""
    files: list[tuple[str, Path]] = []
    for label, rel, _ in STILL_SOURCES:
        root = stills / rel
        if root.is_dir():
            files += [(label, p) for p in sorted(root.rglob("*")) if p.suffix.lower() in RASTER and p.is_file()]
    for i in _rng(seed, "images").permutation(len(files)):
        label, path = files[i]
        if f"{label}:{path.name}" not in exclude and _usable(path):
            yield label, path


class Images:
    """Deals images from the pool, each once, and records who got it."""

    def __init__(self, pool: Iterator[tuple[str, Path]]) -> None:
        self.pool = pool
        self.dealt: dict[str, int] = {}

    def take(self, who: str) -> tuple[str, Path]:
        try:
            item = next(self.pool)
        except StopIteration:
            raise RuntimeError("the still sources have run out of unused images") from None
        self.dealt[who] = self.dealt.get(who, 0) + 1
        return item


# ------------------------------------------------------------------------------------- one split
@dataclass
class Query:
    id: str
    kind: str  # chain | excerpt | nocopy
    family: str  # the chain family, "excerpt", or "plain"
    edits: list[str]
    source: str | None  # the original (copy queries; the real no-copy head)
    relevant: list[str]
    nocopy_source: str | None = None  # real | host | still
    span: dict[str, list[float]] | None = None  # excerpt: {"query": [s, e], "db": [s, e]}
    params: dict = field(default_factory=dict)


def _composed_size(o: Original, cfg: CopySetConfig) -> tuple[int, int]:
    w = min(o.width, cfg.max_width)
    return _even(w), _even(o.height * w / o.width)


def _shots(total_frames: int, who: str, images: Images, rng: np.random.Generator,
           cfg: CopySetConfig) -> list[Shot]:
    """Shots of shot_s seconds until ``total_frames`` (the last one cut to fit, at least half a second)."""
    out: list[Shot] = []
    left = total_frames
    while left > 0:
        n = int(round(float(rng.uniform(*cfg.shot_s)) * cfg.fps))
        n = left if left - n < cfg.fps // 2 else min(n, left)
        out.append(make_shot(*images.take(who), n, rng))
        left -= n
    return out


def choose_nocopy_heads(split: str, heads: list[str], groups: dict[str, list[str]],
                        cfg: CopySetConfig) -> list[str]:
    """The split's heads kept out of its database (not in a duplicate group): sources of no-copy queries."""
    singles = [h for h in heads if len(groups[h]) == 1]
    order = _rng(cfg.seed, f"nocopy-real:{split}").permutation(len(singles))
    return sorted(singles[i] for i in order[: cfg.nocopy_real])


def plan_split(split: str, heads: list[str], nocopy_heads: list[str], groups: dict[str, list[str]],
               originals: dict[str, Original], images: Images, cfg: CopySetConfig
               ) -> tuple[list[Query], list[Job], list[str]]:
    """The queries and render jobs of one split, and its database (ids)."""
    copy_heads = [h for h in heads if h not in nocopy_heads]
    database = [m for h in copy_heads for m in groups[h]]
    queries: list[Query] = []
    jobs: list[Job] = []
    fams = [*FAMILIES]

    def chained(qid: str, o: Original, edits: tuple[str, ...], key: str) -> tuple[Job, list[dict]]:
        frame = Frame(o.width, o.height)
        flt, params = chain(edits, frame, _rng(cfg.seed, key))
        return Job(qid, video=o.source_path, chain=flt, crf=frame.crf), params

    for head in heads:  # chained edits of every head (no copy in the index for the held-out heads)
        o = originals[head]
        copy = head in copy_heads
        plain: list[tuple[str, ...]] = [] if copy else [()]
        for edits in [*fams, *plain]:
            fam = family_name(edits) or "plain"
            qid = f"{head}.{fam}"
            job, params = chained(qid, o, edits, f"chain:{head}:{fam}")
            jobs.append(job)
            queries.append(Query(qid, "chain" if copy else NOCOPY, fam, list(edits), head,
                                 groups[head] if copy else [], None if copy else "real", params={"edits": params}))

    for head in copy_heads:  # excerpts inside unrelated footage, and that footage alone
        o = originals[head]
        if len(groups[head]) > 1 or o.duration < cfg.excerpt_s[0] + 0.2:
            continue
        for i in range(cfg.excerpts_per_source):
            r = _rng(cfg.seed, f"excerpt:{head}:{i}")
            length = float(r.uniform(cfg.excerpt_s[0], min(cfg.excerpt_s[1], o.duration - 0.1)))
            length = round(length * cfg.fps) / cfg.fps
            start = round(float(r.uniform(0, o.duration - length)), 3)
            size = _composed_size(o, cfg)
            before = _shots(int(round(float(r.uniform(*cfg.host_side_s)) * cfg.fps)), split, images, r, cfg)
            after = _shots(int(round(float(r.uniform(*cfg.host_side_s)) * cfg.fps)), split, images, r, cfg)
            edits: tuple[str, ...] = fams[int(r.integers(len(fams)))] if i % 2 else ()
            frame = Frame(*size)
            flt, params = chain(edits, frame, r)
            q0 = sum(s.frames for s in before) / cfg.fps
            qid = f"{head}.excerpt{i}"
            jobs.append(Job(qid, video=o.source_path, trim=(start, length), before=before, after=after, size=size,
                            chain=flt, crf=frame.crf))
            queries.append(Query(
                qid, "excerpt", "excerpt", list(edits), head, groups[head],
                span={"query": [round(q0, 3), round(q0 + length, 3)], "db": [start, round(start + length, 3)]},
                params={"size": list(size), "excerpt_s": length, "edits": params,
                        "shots_before": [s.params for s in before], "shots_after": [s.params for s in after]}))
            host = f"{qid}.host"
            jobs.append(Job(host, before=before + after, size=size, chain=flt, crf=frame.crf))
            queries.append(Query(host, NOCOPY, family_name(edits) or "plain", list(edits), None, [], "host",
                                 params={"host_of": qid}))

    sizes = ((320, 180), (480, 270), (640, 360), (320, 240), (640, 480))
    for k in range(cfg.nocopy_stills):  # still shots with a random family or none
        r = _rng(cfg.seed, f"nocopy-still:{split}:{k}")
        size = sizes[int(r.integers(len(sizes)))]
        shots = [make_shot(*images.take(split), int(round(float(r.uniform(*cfg.shot_s)) * cfg.fps)), r)
                 for _ in range(int(r.integers(1, 4)))]
        pick = int(r.integers(len(fams) + 1))
        edits = fams[pick] if pick < len(fams) else ()
        frame = Frame(*size)
        flt, params = chain(edits, frame, r)
        qid = f"nocopy-still-{split}-{k:04d}"
        jobs.append(Job(qid, before=shots, size=size, chain=flt, crf=frame.crf))
        queries.append(Query(qid, NOCOPY, family_name(edits) or "plain", list(edits), None, [], "still",
                             params={"size": list(size), "edits": params, "shots": [s.params for s in shots]}))
    return queries, jobs, database


def _write_split(out: Path, split: str, queries: list[Query], database: list[str],
                 originals: dict[str, Original], nocopy_heads: list[str], cfg: CopySetConfig,
                 durations: dict[str, float]) -> None:
    write_id_list(out / "queries.txt", [q.id for q in queries])
    write_id_list(out / "database.txt", database)
    write_relevance(out / "relevance.json", {q.id: q.relevant for q in queries})
    (out / "transforms.tsv").write_text("".join(
        f"{q.id}\t{q.family if q.kind != NOCOPY else NOCOPY}\t{q.source or '-'}\t{json.dumps(q.params, sort_keys=True)}\n"
        for q in queries), encoding="utf-8")
    paths = [(d, originals[d].source_path.relative_to(out).as_posix()) for d in database]
    paths += [(q.id, f"queries/{q.id}.mp4") for q in queries]
    (out / "paths.tsv").write_text("".join(f"{i}\t{p}\n" for i, p in paths), encoding="utf-8")
    (out / "ndvr.json").write_text(json.dumps({
        "config": asdict(cfg), "num_queries": len(queries), "num_database": len(database),
        "durations_s": {k: round(v, 3) for k, v in durations.items()}}, indent=1) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for q in queries:
        key = q.kind if q.kind != NOCOPY else f"nocopy_{q.nocopy_source}"
        counts[key] = counts.get(key, 0) + 1
    (out / "copyset.json").write_text(json.dumps({
        "split": split, "seed": cfg.seed, "config": asdict(cfg), "counts": counts,
        "database": database, "nocopy_heads": nocopy_heads, "families": [family_name(f) for f in FAMILIES],
        "queries": {q.id: asdict(q) for q in queries}}, indent=1) + "\n", encoding="utf-8")


def build(real: Path, stills: Path, out: Path, cfg: CopySetConfig = CopySetConfig(),
          distractors: Path | None = None, workers: int = 2) -> Path:
    """Build both splits and the background set into ``out``; returns ``out/copyset.json``."""
    bcfg = cfg.build_config()
    found, skipped = find_originals(real, bcfg)
    if not found:
        raise RuntimeError(f"{real}: no usable videos")
    groups = _groups([o.id for o in found])
    split_of = deal_splits(list(groups), cfg.seed)
    images = Images(image_pool(stills, used_images(distractors), cfg.seed))

    bg = out / "background"
    (bg / "videos").mkdir(parents=True, exist_ok=True)
    bg_jobs = [replace(j, id=f"background-{j.id}") for j in
               (still_job(label, p, cfg.seed, i) for i, (label, p) in
                enumerate(images.take("background") for _ in range(cfg.background)))]

    plans = {}
    for split in SPLITS:
        heads = [h for h in groups if split_of[h] == split]
        nocopy = choose_nocopy_heads(split, heads, groups, cfg)
        sdir = out / split
        for d in ("database", "queries", "nocopy/database"):
            (sdir / d).mkdir(parents=True, exist_ok=True)
        members = {m for h in heads for m in groups[h]}
        # the held-out heads go to nocopy/database: sources of queries, never indexed
        originals = {o.id: _database_copy(o, sdir / "nocopy" if o.id in nocopy else sdir, bcfg)
                     for o in found if o.id in members}
        queries, jobs, database = plan_split(split, heads, nocopy, groups, originals, images, cfg)
        plans[split] = (queries, jobs, database, originals)

    def run(item: tuple[Path, Job]) -> None:
        render_job(item[1], item[0] / "queries" / f"{item[1].qid}.mp4", cfg)

    work = [(out / split, j) for split in SPLITS for j in plans[split][1]]
    with ThreadPoolExecutor(workers) as pool:
        list(tqdm(pool.map(run, work), total=len(work), desc="queries", unit="video"))
        list(tqdm(pool.map(lambda j: render(j, bg, bcfg), bg_jobs), total=len(bg_jobs), desc="background",
                  unit="video"))
    write_manifest(bg, bg_jobs)

    summary: dict[str, object] = {}
    for split in SPLITS:
        queries, _, database, originals = plans[split]
        sdir = out / split
        durations = {d: originals[d].duration for d in database}
        for q in queries:
            with open_video(sdir / "queries" / f"{q.id}.mp4") as r:
                durations[q.id] = r.info.duration
        nocopy_heads = sorted({q.source for q in queries if q.nocopy_source == "real" and q.source})
        _write_split(sdir, split, queries, database, originals, nocopy_heads, cfg, durations)
        summary[split] = json.loads((sdir / "copyset.json").read_text())["counts"]
    path = out / "copyset.json"
    path.write_text(json.dumps({
        "config": asdict(cfg), "ffmpeg": ffmpeg_version(), "real": str(real), "stills": str(stills),
        "distractors": str(distractors) if distractors else None, "splits": dict(sorted(split_of.items())),
        "groups": [g for g in groups.values() if len(g) > 1], "skipped": skipped, "counts": summary,
        "images_dealt": images.dealt, "families": [family_name(f) for f in FAMILIES]}, indent=1) + "\n",
        encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class CopySet:
    root: Path
    split: str
    bench: Benchmark  # queries, database, relevance, paths, durations (benchmarks.ndvr.build)
    queries: dict[str, dict]  # query id -> the manifest's entry (kind, family, edits, source, span, ...)
    background: Path | None  # the background set (distractors format), when built

    def kind(self, qid: str) -> str:
        return self.queries[qid]["kind"]

    @property
    def copy_queries(self) -> list[str]:
        return [q for q in self.bench.set.queries if self.kind(q) != NOCOPY]

    @property
    def nocopy_queries(self) -> list[str]:
        return [q for q in self.bench.set.queries if self.kind(q) == NOCOPY]


def load_copyset(root: str | Path) -> CopySet:
    root = Path(root)
    manifest = root / "copyset.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{root}: no copyset.json (build it with python -m benchmarks.ndvr.copyset)")
    meta = json.loads(manifest.read_text(encoding="utf-8"))
    bench = load_benchmark(root)
    missing = [q for q in bench.set.queries if q not in meta["queries"]]
    if missing:
        raise ValueError(f"{manifest}: no entry for {missing[:3]}")
    bg = root.parent / "background"
    return CopySet(root, meta["split"], bench, meta["queries"], bg if (bg / "distractors.json").is_file() else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, type=Path, help="directory written by `drca media fetch-real`")
    parser.add_argument("--stills", required=True, type=Path, help="the still sources (docs/ndvr.md, Distractors)")
    parser.add_argument("--distractors", type=Path, default=None,
                        help="the NDVR distractors: images they show are not used again")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nocopy-stills", type=int, default=CopySetConfig.nocopy_stills, help="per split")
    parser.add_argument("--background", type=int, default=CopySetConfig.background)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for p, what in ((args.real, "--real"), (args.stills, "--stills")):
        if not p.is_dir():
            raise SystemExit(f"{what} {p}: not a directory")
    if args.distractors is not None and not (args.distractors / "distractors.tsv").is_file():
        raise SystemExit(f"--distractors {args.distractors}: no distractors.tsv")
    cfg = CopySetConfig(seed=args.seed, nocopy_stills=args.nocopy_stills, background=args.background)
    path = build(args.real, args.stills, args.out, cfg, args.distractors, args.workers)
    meta = json.loads(path.read_text())
    print(f"{json.dumps(meta['counts'])} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
