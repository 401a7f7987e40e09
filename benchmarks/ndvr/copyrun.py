"""Run the copy-detection benchmark (``benchmarks.ndvr.copyset``) through the service, with its anchors.

    python -m benchmarks.ndvr.copyrun --set /work/media/ndvr-copy/heldout \\
        --distractors /work/media/ndvr-distractors --checkpoint model/checkpoints/drca-lite0 \\
        [--methods drca,stem,thumb,vpdq] [--fpr 0.01] [--calibration CALIB_RESULTS.json] \\
        [--setting KEY=VALUE ...] [--out benchmarks/results/ndvr_copy.json]

Database: the split's originals, then the NDVR distractors in the seeded order of ``benchmarks.ndvr.run``.
Queries: every query of the split, those with no copy in the index included.

* ``drca``: **the service itself**, in this process, as in ``benchmarks.ndvr.run``: every database video
  uploaded with ``POST /v1/videos`` and indexed by the embedded worker; every query sent once through
  ``POST /v1/search`` (multipart file, ``k=10``), whose hits give the service's own decision (``match``,
  on ``match_score``) and the copied spans (``spans``; a response without them falls back to the hit's
  one segment pair). Every database video's ``score`` (the raw cosine, the ranking) and ``match_score``
  (the score the service decides with: normalised against the checkpoint's background set when its card
  has one, else the score) come from the calls that route makes (``embed_video_query``, then
  ``video_query`` with k = the database size). The method's figures (pooled µAP, the threshold, the
  per-query ``top``/``source``) are on ``match_score``; the embeddings (the query's views, the indexed
  segments, the ``--background`` set's segments) give the score normalisations offline
  (``normalisations``: ``raw``, ``db_centred``, ``background``; ``benchmarks.ndvr.copymetrics``).
* ``stem``: the same service serving the anchor "the stem alone" (``benchmarks.anchors``).
* ``thumb``, ``vpdq``: the NDVR baselines (``benchmarks.ndvr.baselines``); vPDQ also with its own decision,
  Meta's: a match when at least 80 % of the query's hashes match (and 0 % of the target's).

Per method (and per normalisation): pooled µAP over every (query, database video) pair, mAP and R@1 of the
copy queries, mAP per chain family and per edit, the threshold at ``--fpr`` on this set and the rates
there, and, with ``--calibration`` (this command's JSON on the calibration split), the rates at the
thresholds chosen there. For the service: the rates of its own ``match`` (the shipped threshold) and the
span IoU of the excerpt queries in both videos.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks._env import RESULTS, write_result
from benchmarks.ndvr.copymetrics import (
    Rates,
    decision_rates,
    normalised_scores,
    pooled_micro_ap,
    rates_at,
    span_ious,
    threshold_at_fpr,
)
from benchmarks.ndvr.copyset import NOCOPY, CopySet, load_copyset
from benchmarks.ndvr.distractors import Distractors, load_distractors
from benchmarks.ndvr.metrics import evaluate
from benchmarks.ndvr.run import (
    SETTINGS_RECORDED,
    _ingest,
    _setting_value,
    checkpoint_files_sha256,
    database_order,
    describe_all,
    make_baseline,
    percentiles,
)

log = logging.getLogger(__name__)

METHODS = ("drca", "stem", "thumb", "vpdq")
#: Meta's vPDQ decision (python-threatexchange): query match percent >= 80, target (index) >= 0
VPDQ_QUERY_MATCH = 0.8
IOU_LOCATED = 0.5


@dataclass
class ServicePass:
    """What one pass through the service gave."""

    scores: np.ndarray  # (Q, N) the service's ranking scores (default aggregation), -inf: not returned
    match_scores: np.ndarray  # (Q, N) the service's match_score (what it decides with), -inf: not returned
    hits: list[list[dict]]  # per query, the hits of POST /v1/search as the API returns them
    query_views: list[list[np.ndarray]]  # per query, per view: (S, E) segment embeddings
    database: list[np.ndarray]  # per database video: its indexed (T, E) segments
    background: np.ndarray | None  # (B, E): the "original" view segments of the background set
    route_latency_s: list[float]
    ingest: dict[str, Any]
    settings: dict[str, Any]
    served_background: dict[str, Any] | None  # the checkpoint's background set the service normalised with


def embed_background(svc, videos: list[Path]) -> np.ndarray | None:
    """The ``original`` view's segment embeddings of ``videos``, as the service embeds a query (``svc``: its
    ``SearchService``), stacked (B, E); None without videos."""
    rows = []
    for p in tqdm(videos, desc="background", unit="video"):
        query = svc.embed_video_query(str(p))
        rows += [v.vectors for v in query.views if v.name == "original"]
    return np.concatenate(rows) if rows else None


def background_set(checkpoint: Path, videos: list[Path], torch_threads: int = 0) -> np.ndarray:
    """``embed_background`` of ``videos`` by the service started in this process on ``checkpoint``'s weights
    (a copy of it without a background set: the one its card may name is not needed, and may be stale)."""
    from fastapi.testclient import TestClient

    from model.checkpoint import CARD, CONFIG, WEIGHTS
    from service.http.app import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="drca-background-") as tmp:
        bare = Path(tmp) / "checkpoint"
        bare.mkdir()
        for name in (WEIGHTS, CONFIG):
            (bare / name).symlink_to((checkpoint / name).resolve())
        card = json.loads((checkpoint / CARD).read_text())
        card.pop("match", None)
        (bare / CARD).write_text(json.dumps(card))
        settings = Settings(checkpoint=bare, data_dir=Path(tmp) / "data", text_search=False, device="cpu",
                            torch_threads=torch_threads, allowed_hosts=["testserver"])
        app = create_app(settings)
        with TestClient(app):
            out = embed_background(app.state.service.search, videos)
    if out is None:
        raise SystemExit("the background set has no video")
    return out


def service_pass(checkpoint: Path, overrides: dict[str, Any], database: list[str], queries: list[str],
                 paths: dict[str, Path], seconds: float, background: list[Path] | None = None,
                 route_k: int = 10, torch_threads: int = 0) -> ServicePass:
    """Start the service in this process (``create_app``), index ``database``, send every query."""
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="drca-copy-") as tmp:
        settings = Settings(checkpoint=checkpoint, data_dir=Path(tmp), text_search=False, device="cpu",
                            torch_threads=torch_threads, allowed_hosts=["testserver"], **overrides)
        app = create_app(settings)
        with TestClient(app) as client:
            ids, ingest = _ingest(client, database, paths, seconds)
            svc = app.state.service.search
            col = {vid: j for j, vid in enumerate(database)}
            scores = np.full((len(queries), len(database)), -np.inf)
            match_scores = np.full((len(queries), len(database)), -np.inf)
            hits, views, route_s = [], [], []
            for qi, q in enumerate(tqdm(queries, desc="queries", unit="query")):
                t0 = time.perf_counter()
                with paths[q].open("rb") as f:
                    r = client.post("/v1/search", files={"file": (paths[q].name, f)}, data={"k": str(route_k)})
                route_s.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{q}: POST /v1/search -> {r.status_code} {r.text[:300]}")
                hits.append(r.json()["hits"])
                query = svc.embed_video_query(str(paths[q]))
                views.append([v.vectors for v in query.views])
                for m in svc.video_query(query, len(ids), None, set()):
                    scores[qi, col[ids[m.hit.video_id]]] = m.hit.score
                    match_scores[qi, col[ids[m.hit.video_id]]] = m.match_score
            served = svc.active.current.background
            served_bg = None if served is None else {"sha256": served.sha256, "top_n": served.top_n,
                                                     "segments": len(served.vectors)}
            index = svc.active.current.index
            by_ext = {ext: vid for vid, ext in ids.items()}
            db_vectors = []
            for d in database:
                stored = index.get(by_ext[d])
                db_vectors.append(np.asarray(stored.vectors) if stored is not None else np.zeros((0, 0)))
            bg = embed_background(svc, background) if background else None
    return ServicePass(scores, match_scores, hits, views, db_vectors, bg, route_s, ingest,
                       json.loads(settings.model_dump_json(include=SETTINGS_RECORDED)), served_bg)


# ------------------------------------------------------------------------------------- metrics
def relevance_matrix(cs: CopySet, queries: list[str], database: list[str]) -> np.ndarray:
    col = {d: j for j, d in enumerate(database)}
    rel = np.zeros((len(queries), len(database)), dtype=bool)
    for qi, q in enumerate(queries):
        for d in cs.bench.set.relevant.get(q, ()):
            if d in col:
                rel[qi, col[d]] = True
    return rel


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _rates(r: Rates) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(r).items()}


def copy_metrics(scores: np.ndarray, cs: CopySet, queries: list[str], database: list[str], fpr: float,
                 calibrated: float | None = None, kind_of: dict[str, str] | None = None) -> dict[str, Any]:
    """Every ranking and decision figure of one (Q, N) score matrix. With ``kind_of`` (a distractor's kind,
    ``benchmarks.ndvr.distractors``), also the pooled µAP with each kind's distractors left out of the
    database (``pooled_micro_ap_without``): which of them cost the pooled ranking most."""
    rel = relevance_matrix(cs, queries, database)
    copy = np.array([cs.kind(q) != NOCOPY for q in queries])
    family = {q: cs.queries[q]["family"] for q in queries}
    ranked = evaluate(scores[copy], [q for q, c in zip(queries, copy, strict=True) if c], database,
                      cs.bench.set.relevant, family)
    kinds: dict[str, list[float]] = {}
    edits: dict[str, list[float]] = {}
    for q, ap in ranked.per_query_ap.items():
        kinds.setdefault(cs.kind(q), []).append(ap)
        if cs.kind(q) == "chain":
            for e in cs.queries[q]["edits"]:
                edits.setdefault(e, []).append(ap)
    top = scores.max(axis=1) if scores.shape[1] else np.full(len(queries), -np.inf)
    source = np.where(rel, scores, -np.inf).max(axis=1) if scores.shape[1] else top
    no_copy_top, copy_source = top[~copy], source[copy]
    out: dict[str, Any] = {
        "pooled_micro_ap": pooled_micro_ap(scores, rel),
        "pooled_micro_ap_without": micro_ap_without(scores, rel, database, kind_of or {}),
        "map": ranked.map, "recall_at_1": ranked.recall_at_1,
        "map_by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds.items())},
        "per_family_map": ranked.per_transform_map,
        "per_family_recall_at_1": ranked.per_transform_recall_at_1,
        "per_edit_map": {e: float(np.mean(v)) for e, v in sorted(edits.items())},
        "num_copy_queries": int(copy.sum()), "num_no_copy_queries": int((~copy).sum()),
        "per_query": {q: {"top": _finite(top[i]), "source": _finite(source[i]) if copy[i] else None}
                      for i, q in enumerate(queries)},
    }
    if not np.isfinite(no_copy_top).any():  # no no-copy query (or none scored): no threshold to choose
        out["at_target"] = None
        return out
    t = threshold_at_fpr(no_copy_top, fpr)
    out["at_target"] = {"fpr_target": fpr, **_rates(rates_at(t, no_copy_top, copy_source)),
                        "fpr_by_no_copy_source": _by_source(cs, queries, copy, top, t)}
    if calibrated is not None:
        out["at_calibrated"] = {**_rates(rates_at(calibrated, no_copy_top, copy_source)),
                                "fpr_by_no_copy_source": _by_source(cs, queries, copy, top, calibrated)}
    return out


def micro_ap_without(scores: np.ndarray, rel: np.ndarray, database: list[str],
                     kind_of: dict[str, str]) -> dict[str, float]:
    """Kind -> the pooled µAP with the database videos of that kind (``kind_of``) left out."""
    out = {}
    for k in sorted(set(kind_of.values())):
        keep = np.array([kind_of.get(d) != k for d in database])
        if not keep.all():
            out[k] = pooled_micro_ap(scores[:, keep], rel[:, keep])
    return out


def _by_source(cs: CopySet, queries: list[str], copy: np.ndarray, top: np.ndarray, t: float) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for i, q in enumerate(queries):
        if not copy[i]:
            groups.setdefault(cs.queries[q]["nocopy_source"] or "?", []).append(bool(top[i] >= t))
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def service_decisions(cs: CopySet, queries: list[str], hits: list[list[dict]]) -> dict[str, Any] | None:
    """Rates of the service's own ``match`` flags (None when the response has no ``match``), and how many
    of the hits it marks as copies are not (``hits_marked``, ``hits_marked_wrong``: of every query, those of
    copy queries included, e.g. another video of the same scene marked beside the source)."""
    if not any("match" in h for hs in hits for h in hs):
        return None
    no_copy, copies = [], []
    marked = wrong = 0
    for q, hs in zip(queries, hits, strict=True):
        rel = cs.bench.set.relevant.get(q, frozenset())
        if cs.kind(q) == NOCOPY:
            no_copy.append(any(h.get("match") for h in hs))
        else:
            copies.append(any(h.get("match") and h.get("external_id") in rel for h in hs))
        flagged = [h for h in hs if h.get("match")]
        marked += len(flagged)
        wrong += sum(h.get("external_id") not in rel for h in flagged)
    return {**_rates(decision_rates(no_copy, copies)), "hits_marked": marked, "hits_marked_wrong": wrong}


def span_metrics(cs: CopySet, queries: list[str], hits: list[list[dict]]) -> dict[str, Any]:
    """Excerpt queries: is the top hit the source, and the IoU of its top span with the true spans in both
    videos (0 where the source is not the top hit)."""
    per: dict[str, dict[str, Any]] = {}
    for q, hs in zip(queries, hits, strict=True):
        span = cs.queries[q].get("span")
        if cs.kind(q) != "excerpt" or not span:
            continue
        rel = cs.bench.set.relevant.get(q, frozenset())
        top_is_source = bool(hs) and hs[0].get("external_id") in rel
        iq, idb = span_ious(hs[0], tuple(span["query"]), tuple(span["db"])) if top_is_source else (0.0, 0.0)
        per[q] = {"top_is_source": top_is_source, "iou_query": iq, "iou_db": idb,
                  "located": top_is_source and iq >= IOU_LOCATED and idb >= IOU_LOCATED,
                  "has_spans": bool(hs) and "spans" in hs[0]}
    if not per:
        return {"num_excerpt_queries": 0}
    v = list(per.values())
    return {"num_excerpt_queries": len(v), "iou_threshold": IOU_LOCATED,
            "located": float(np.mean([x["located"] for x in v])),
            "top_is_source": float(np.mean([x["top_is_source"] for x in v])),
            "mean_iou_query": float(np.mean([x["iou_query"] for x in v])),
            "mean_iou_db": float(np.mean([x["iou_db"] for x in v])),
            "spans_field": any(x["has_spans"] for x in v), "per_query": per}


def calibrated_thresholds(path: Path | None, fpr: float) -> dict[str, float]:
    """``method`` or ``method/normalisation`` -> the threshold chosen on the calibration split."""
    if path is None:
        return {}
    doc = json.loads(path.read_text())["results"]
    out = {}
    for name, m in doc["methods"].items():
        if (m.get("at_target") or {}).get("fpr_target") == fpr:
            out[name] = m["at_target"]["threshold"]
        for norm, n in m.get("normalisations", {}).items():
            if (n.get("at_target") or {}).get("fpr_target") == fpr:
                out[f"{name}/{norm}"] = n["at_target"]["threshold"]
    if not out:
        raise SystemExit(f"{path}: no threshold chosen at --fpr {fpr}")
    return out


def card_match(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint card's ``match`` entry, read from card.json (None when absent)."""
    card = checkpoint / "card.json" if checkpoint.is_dir() else None
    if card is None or not card.is_file():
        return None
    return json.loads(card.read_text()).get("match")


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", required=True, type=Path, help="a split written by benchmarks.ndvr.copyset")
    parser.add_argument("--distractors", type=Path, default=None, help="added to the database")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate of no-copy queries")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="this command's JSON on the calibration split: its thresholds are applied here")
    parser.add_argument("--background", type=Path, default=None,
                        help="background set (distractors format); default: the set's ../background")
    parser.add_argument("--background-top", type=int, default=5, help="n of the background normalisation")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0, help="order of the distractors")
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--label", default="", help="what the checkpoint is, recorded in the JSON")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/ndvr_copy.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("media.video", "httpx", "httpx2", "service", "indexer", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("media.video").setLevel(logging.ERROR)

    names = [m for m in args.methods.split(",") if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if {"drca", "stem"} & set(names) and args.checkpoint is None:
        raise SystemExit("--checkpoint is required for the drca and stem methods")
    if not 0.0 <= args.fpr < 1.0:
        raise SystemExit(f"--fpr {args.fpr}: must be in [0, 1)")
    try:
        cs = load_copyset(args.set)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    distractors: Distractors | None = load_distractors(args.distractors) if args.distractors else None
    bg_root = args.background or cs.background
    background = sorted(load_distractors(bg_root).paths.values()) if bg_root else None
    calib = calibrated_thresholds(args.calibration, args.fpr)
    bench = cs.bench
    paths = {**bench.paths, **(distractors.paths if distractors else {})}
    durations = {**bench.durations, **(distractors.durations if distractors else {})}
    db = database_order(bench, distractors, args.seed)
    queries = list(bench.set.queries)
    kinds = distractors.kind if distractors else None
    overrides = {k: _setting_value(v) for k, v in (kv.split("=", 1) for kv in args.setting)}
    db_seconds = sum(durations[v] for v in db)
    q_seconds = sum(durations[q] for q in queries)
    results: dict[str, Any] = {
        "set": str(args.set.resolve()), "split": cs.split,
        "distractors": str(args.distractors.resolve()) if args.distractors else None,
        "background": str(Path(bg_root).resolve()) if bg_root else None,
        "background_videos": len(background) if background else 0, "background_top": args.background_top,
        "num_database": len(db), "num_queries": len(queries),
        "num_copy_queries": len(cs.copy_queries), "num_no_copy_queries": len(cs.nocopy_queries),
        "database_video_seconds": round(db_seconds, 3), "query_video_seconds": round(q_seconds, 3),
        "fpr_target": args.fpr, "calibration": str(args.calibration) if args.calibration else None,
        "load_average_at_start": os.getloadavg(), "methods": {},
    }
    if args.checkpoint is not None:
        results["checkpoint"] = {"path": str(args.checkpoint.resolve()), "label": args.label,
                                 "sha256": checkpoint_files_sha256(args.checkpoint),
                                 "card_match": card_match(args.checkpoint)}
    for name in names:
        if name in ("drca", "stem"):
            results["methods"][name] = _service_method(name, args, overrides, cs, db, queries, paths, db_seconds,
                                                       background, calib, kinds)
            continue
        method = make_baseline(name)
        desc, timing = describe_all(method, db + queries, paths, db_seconds + q_seconds)
        sim = method.similarity([desc[q] for q in queries], [desc[d] for d in db])
        r = copy_metrics(sim, cs, queries, db, args.fpr, calib.get(name), kinds)
        if name == "vpdq":
            r["at_own_decision"] = {"rule": f"query match fraction >= {VPDQ_QUERY_MATCH}",
                                    **_rates(rates_at(VPDQ_QUERY_MATCH, *_split_scores(sim, cs, queries, db)))}
        results["methods"][name] = {**r, **timing}
    results["load_average_at_end"] = os.getloadavg()
    path = write_result("ndvr.copyrun", results, args.out or RESULTS / "ndvr_copy.json")
    print_tables(results)
    print(f"wrote {path}")
    return 0


def _split_scores(scores: np.ndarray, cs: CopySet, queries: list[str], db: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rel = relevance_matrix(cs, queries, db)
    copy = np.array([cs.kind(q) != NOCOPY for q in queries])
    top = scores.max(axis=1)
    source = np.where(rel, scores, -np.inf).max(axis=1)
    return top[~copy], source[copy]


def _service_method(name: str, args: argparse.Namespace, overrides: dict[str, Any], cs: CopySet, db: list[str],
                    queries: list[str], paths: dict[str, Path], db_seconds: float, background: list[Path] | None,
                    calib: dict[str, float], kinds: dict[str, str] | None = None) -> dict[str, Any]:
    checkpoint, tmp = args.checkpoint, None
    if name == "stem":
        from benchmarks.anchors import STEM_ALONE, stem_alone_checkpoint

        tmp = tempfile.TemporaryDirectory(prefix="drca-stem-")
        checkpoint = stem_alone_checkpoint(args.checkpoint, Path(tmp.name) / "ckpt")
    try:
        run = service_pass(checkpoint, overrides, db, queries, paths, db_seconds, background,
                           torch_threads=args.torch_threads)
    finally:
        if tmp is not None:
            tmp.cleanup()
    # the service's figures on the score it decides with (match_score: the raw score without a background set)
    r = {"score": "match_score", **copy_metrics(run.match_scores, cs, queries, db, args.fpr, calib.get(name), kinds)}
    for q, hs in zip(queries, run.hits, strict=True):  # the API's own top hit
        r["per_query"][q]["top_hit_score"] = hs[0]["score"] if hs else None
        r["per_query"][q]["top_hit_match_score"] = hs[0].get("match_score") if hs else None
    if name == "drca":
        r["at_shipped"] = service_decisions(cs, queries, run.hits)
        match = card_match(args.checkpoint)
        if match and match.get("min_score") is not None:
            r["at_card_threshold"] = _rates(rates_at(float(match["min_score"]),
                                                     *_split_scores(run.match_scores, cs, queries, db)))
    else:
        r["label"] = f"ANCHOR: {STEM_ALONE}"
    r["spans"] = span_metrics(cs, queries, run.hits)
    norms = normalised_scores(run.query_views, run.database, run.background, args.background_top)
    finite = np.isfinite(run.scores) & np.isfinite(norms["raw"])
    r["raw_vs_service_max_abs_diff"] = float(np.abs(run.scores - norms["raw"])[finite].max()) if finite.any() else None
    r["normalisations"] = {n: copy_metrics(s, cs, queries, db, args.fpr, calib.get(f"{name}/{n}"))
                           for n, s in norms.items()}
    for n in r["normalisations"].values():
        n.pop("per_query")
    r["service"] = {"settings": run.settings, "ingest": run.ingest, "background": run.served_background,
                    "route_latency": percentiles(run.route_latency_s)}
    return r


def print_tables(results: dict[str, Any]) -> None:
    def row(label: str, m: dict[str, Any]) -> str:
        t = m["at_target"] or {"threshold": float("nan"), "false_positive_rate": float("nan"),
                               "copy_recall": float("nan")}
        return (f"| {label} | {m['pooled_micro_ap']:.3f} | {m['map']:.3f} | {m['map_by_kind'].get('chain', float('nan')):.3f}"
                f" | {m['map_by_kind'].get('excerpt', float('nan')):.3f} | {t['threshold']:.4f} | "
                f"{t['false_positive_rate']:.3f} | {t['copy_recall']:.3f} |")

    print(f"\n{results['split']}: {results['num_copy_queries']} copy and {results['num_no_copy_queries']} no-copy "
          f"queries, {results['num_database']} database videos, thresholds at FPR {results['fpr_target']} on this set")
    print("| method | pooled µAP | mAP | chain mAP | excerpt mAP | threshold | FPR | copy recall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in results["methods"].items():
        print(row(name, m))
        for n, x in m.get("normalisations", {}).items():
            print(row(f"{name} / {n}", x))
    for name, m in results["methods"].items():
        if m.get("at_shipped"):
            s = m["at_shipped"]
            print(f"{name} at its shipped threshold: FPR {s['false_positive_rate']:.3f}, recall {s['copy_recall']:.3f}")
        if m.get("spans", {}).get("num_excerpt_queries"):
            s = m["spans"]
            print(f"{name} excerpts: located {s['located']:.3f}, top is source {s['top_is_source']:.3f}, "
                  f"IoU query {s['mean_iou_query']:.3f}, database {s['mean_iou_db']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
