"""Calibrate the service's match threshold and write it into the checkpoint card.

    python -m benchmarks.ndvr.calibrate --checkpoint model/checkpoints/drca-lite0 \\
        --set /work/media/ndvr-copy/calib --distractors /work/media/ndvr-distractors --fpr 0.01 \\
        [--background /work/media/ndvr-copy/background [--background-top 5]] \\
        [--results benchmarks/results/ndvr_copy_calib.json] [--dry-run]

``--background DIR`` (a background set in the distractors format: videos that are neither indexed nor
queried) first embeds the videos of ``DIR`` as the service embeds a query (``copyrun.background_set``:
every segment of the ``original`` view), writes them into the checkpoint directory as
``background.safetensors`` (tensor ``segments``, (B, E) float32) and describes them in the card's match
entry (``"background": {"file", "sha256", "weights_sha256", "top_n", "videos", "source"}``); the service
then normalises every hit's score against it (``match_score``, service/search.py). Only then is the
threshold chosen, on ``match_score``.

The threshold is chosen on the calibration split of the copy benchmark (``benchmarks.ndvr.copyset``) from
the service's own ``match_score`` (its default settings; ``--setting`` records a change; the raw score when
the card has no background set): the smallest score (``1e-4`` grid) at which at most ``floor(fpr * n)`` of
the split's ``n`` queries with no copy in the index have any database video at or above it
(``benchmarks.ndvr.copymetrics.threshold_at_fpr``). The scores come from a pass through the service
(upload, index, ``POST /v1/search``, as ``benchmarks.ndvr.copyrun`` does), or, with ``--results``, from
``copyrun``'s JSON on the same split, the same weights and the card's background set (the per-query top
match scores it records), which saves the pass.

The card's ``match`` entry becomes ``{"min_score": T, "false_positive_rate": FPR, "calibration": "<the
set and this command, one line>", "background": {...}}`` (``card.json`` rewritten in place, every other key
kept; the background entry is the card's, or the new one of ``--background``). ``--dry-run`` only prints
it and leaves the checkpoint alone (a ``--background`` is then written to a temporary copy, which the
pass serves). The figures go to ``benchmarks/results/ndvr_copy_calibration.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._env import RESULTS, write_result
from benchmarks.ndvr.copymetrics import rates_at, threshold_at_fpr
from benchmarks.ndvr.copyset import NOCOPY, CopySet, load_copyset

log = logging.getLogger(__name__)

CARD = "card.json"
BACKGROUND = "background.safetensors"  # model.checkpoint.BACKGROUND (that module imports torch)


def card_background(checkpoint: Path) -> dict[str, Any] | None:
    """The card's background entry (None: none)."""
    return (json.loads((checkpoint / CARD).read_text()).get("match") or {}).get("background")


def scores_from_results(path: Path, cs: CopySet, checkpoint: Path) -> tuple[dict[str, float | None], dict]:
    """Each query's top score and its source's score (``copyrun``'s ``per_query`` of the service), after
    checking that the JSON is of this split and of these weights."""
    from benchmarks.ndvr.run import checkpoint_files_sha256

    doc = json.loads(path.read_text())["results"]
    if Path(doc["set"]).resolve() != cs.root.resolve():
        raise SystemExit(f"--results {path} is of {doc['set']}, not of --set {cs.root}")
    ours = (CARD, BACKGROUND)  # checked below: the background by the sha256 the service served
    mine = {k: v for k, v in checkpoint_files_sha256(checkpoint).items() if k not in ours}
    theirs = {k: v for k, v in doc.get("checkpoint", {}).get("sha256", {}).items() if k not in ours}
    if mine != theirs:
        raise SystemExit(f"--results {path} was measured with other weights than --checkpoint {checkpoint}")
    drca = doc["methods"].get("drca")
    if drca is None or "per_query" not in drca:
        raise SystemExit(f"--results {path} has no service scores (run copyrun with --methods drca)")
    bg = card_background(checkpoint)
    if bg is not None and drca.get("score") != "match_score":
        raise SystemExit(f"--results {path} holds raw scores, not match scores (copyrun before match_score); "
                         "run copyrun again")
    served = (drca.get("service", {}).get("background") or {}).get("sha256")
    if served != (bg or {}).get("sha256"):
        raise SystemExit(f"--results {path} was measured with background set {served or 'none'}, the card of "
                         f"--checkpoint {checkpoint} has {(bg or {}).get('sha256') or 'none'}; run copyrun again")
    missing = [q for q in cs.bench.set.queries if q not in drca["per_query"]]
    if missing:
        raise SystemExit(f"--results {path} lacks queries of the set, e.g. {missing[:3]}")
    return drca["per_query"], {"source": str(path), "database": doc["num_database"],
                               "settings": drca.get("service", {}).get("settings")}


def scores_from_service(cs: CopySet, checkpoint: Path, distractors: Path | None, overrides: dict[str, Any],
                        seed: int) -> tuple[dict[str, dict[str, float | None]], dict]:
    """A pass through the service (``copyrun.service_pass``); per query its top and its source's match score."""
    from benchmarks.ndvr.copyrun import relevance_matrix, service_pass
    from benchmarks.ndvr.distractors import load_distractors
    from benchmarks.ndvr.run import database_order

    d = load_distractors(distractors) if distractors else None
    paths = {**cs.bench.paths, **(d.paths if d else {})}
    durations = {**cs.bench.durations, **(d.durations if d else {})}
    db = database_order(cs.bench, d, seed)
    queries = list(cs.bench.set.queries)
    run = service_pass(checkpoint, overrides, db, queries, paths, sum(durations[v] for v in db))
    rel = relevance_matrix(cs, queries, db)
    top = run.match_scores.max(axis=1)
    source = np.where(rel, run.match_scores, -np.inf).max(axis=1)
    per = {q: {"top": float(top[i]) if np.isfinite(top[i]) else None,
               "source": float(source[i]) if rel[i].any() and np.isfinite(source[i]) else None}
           for i, q in enumerate(queries)}
    return per, {"source": "service pass", "database": len(db), "settings": run.settings,
                 "background": run.served_background}


def write_background(checkpoint: Path, vectors: np.ndarray, top_n: int, source: str, videos: int) -> dict[str, Any]:
    """``vectors`` (B, E) written to ``checkpoint/background.safetensors`` (atomically); its card entry."""
    from safetensors.numpy import save_file

    from model.digest import sha256_file

    rows = np.asarray(vectors, dtype=np.float32)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    out = checkpoint / BACKGROUND
    tmp = out.with_name(out.name + ".partial")
    save_file({"segments": np.ascontiguousarray(rows)}, str(tmp), metadata={"format": "drca-background"})
    tmp.replace(out)
    return {"file": BACKGROUND, "sha256": sha256_file(out), "weights_sha256": sha256_file(checkpoint / "model.safetensors"),
            "top_n": top_n, "videos": videos, "source": source}


def stage_checkpoint(checkpoint: Path, into: Path) -> Path:
    """A copy of ``checkpoint`` to write into (``--dry-run``): its weights and config linked, its card copied."""
    into.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if f.is_file() and f.name not in (CARD, BACKGROUND):
            (into / f.name).symlink_to(f.resolve())
    (into / CARD).write_text((checkpoint / CARD).read_text())
    return into


def install_background(checkpoint: Path, background: Path, top_n: int, torch_threads: int) -> dict[str, Any]:
    """Embed the background set ``background`` (distractors format) with ``checkpoint``'s weights, write it
    and its entry into the checkpoint (the threshold marked provisional until it is chosen on match scores)."""
    from benchmarks.ndvr.copyrun import background_set
    from benchmarks.ndvr.distractors import load_distractors

    try:
        videos = sorted(load_distractors(background).paths.values())
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--background {background}: {e}") from None
    vectors = background_set(checkpoint, videos, torch_threads)
    source = (f"{len(videos)} videos of {background.resolve()}, every segment of the original view, embedded "
              "by python -m benchmarks.ndvr.calibrate --background")
    entry = write_background(checkpoint, vectors, top_n, source, len(videos))
    match = json.loads((checkpoint / CARD).read_text()).get("match") or {}
    write_card_match(checkpoint, {"min_score": match.get("min_score", 1.0), "false_positive_rate": None,
                                  "calibration": "provisional: a new background set, the threshold is not yet "
                                                 "chosen on its match scores", "background": entry})
    log.info("background set: %d segments of %d videos -> %s (sha256 %s)", len(vectors), len(videos),
             checkpoint / BACKGROUND, entry["sha256"][:12])
    return entry


def calibrate(per_query: dict[str, dict[str, float | None]], cs: CopySet, fpr: float) -> dict[str, Any]:
    """The threshold at ``fpr`` of the split's no-copy queries, and the rates there."""
    nocopy = [q for q in cs.bench.set.queries if cs.kind(q) == NOCOPY]
    copies = [q for q in cs.bench.set.queries if cs.kind(q) != NOCOPY]
    if not nocopy:
        raise SystemExit(f"{cs.root}: no query without a copy in the index; it cannot calibrate")

    def value(x: float | None) -> float:
        return -np.inf if x is None else float(x)

    tops = [value(per_query[q]["top"]) for q in nocopy]
    sources = [value(per_query[q]["source"]) for q in copies]
    t = threshold_at_fpr(tops, fpr)
    r = rates_at(t, tops, sources)
    return {"threshold": t, "fpr_target": fpr, "false_positive_rate": r.false_positive_rate,
            "false_positives": r.false_positives, "no_copy_queries": r.no_copy_queries,
            "copy_recall": r.copy_recall, "copy_queries": r.copy_queries,
            "highest_no_copy_score": max(tops), "lowest_copy_source_score": min(sources) if sources else None}


def write_card_match(checkpoint: Path, entry: dict[str, Any]) -> Path:
    """Set ``match`` in the checkpoint's card.json (every other key kept), atomically; the card must still
    load."""
    from model.checkpoint import read_config_and_card

    card = checkpoint / CARD
    doc = json.loads(card.read_text())
    doc["match"] = entry
    tmp = card.with_suffix(".json.partial")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(card)
    read_config_and_card(checkpoint)  # raises if the card no longer parses
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (its card is written)")
    parser.add_argument("--set", required=True, type=Path, help="the calibration split (benchmarks.ndvr.copyset)")
    parser.add_argument("--distractors", type=Path, default=None, help="added to the database")
    parser.add_argument("--fpr", type=float, default=0.01,
                        help="share of no-copy queries allowed to return a match (default 0.01)")
    parser.add_argument("--results", type=Path, default=None,
                        help="copyrun's JSON on this split with these weights and the card's background set: "
                             "its scores, instead of a pass")
    parser.add_argument("--background", type=Path, default=None,
                        help="a background set (distractors format): embedded and written into the checkpoint "
                             "before the threshold is chosen on the match scores it gives")
    parser.add_argument("--background-top", type=int, default=5, help="top_n of the background bias (default 5)")
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0, help="order of the distractors")
    parser.add_argument("--dry-run", action="store_true", help="print the entry, leave the card alone")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/ndvr_copy_calibration.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("media.video", "httpx", "httpx2", "service", "indexer", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not 0.0 <= args.fpr < 1.0:
        raise SystemExit(f"--fpr {args.fpr}: must be in [0, 1)")
    if not (args.checkpoint / CARD).is_file():
        raise SystemExit(f"--checkpoint {args.checkpoint}: no {CARD} (a checkpoint directory is needed)")
    if args.background is not None and args.results is not None:
        raise SystemExit("--background and --results exclude each other (a new background set needs a new pass)")
    if not 1 <= args.background_top <= 1000:
        raise SystemExit(f"--background-top {args.background_top}: must be in [1, 1000]")
    try:
        cs = load_copyset(args.set)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    staging = tempfile.TemporaryDirectory(prefix="drca-calibrate-") if args.dry_run and args.background else None
    checkpoint = stage_checkpoint(args.checkpoint, Path(staging.name) / "ckpt") if staging else args.checkpoint
    try:
        if args.background is not None:  # first: the threshold is chosen on the match scores it gives
            install_background(checkpoint, args.background, args.background_top, args.torch_threads)
        if args.results is not None:
            if args.setting:
                raise SystemExit("--setting and --results exclude each other (the results hold their settings)")
            per_query, origin = scores_from_results(args.results, cs, checkpoint)
        else:
            from benchmarks.ndvr.run import _setting_value

            overrides = {k: _setting_value(v) for k, v in (kv.split("=", 1) for kv in args.setting)}
            per_query, origin = scores_from_service(cs, checkpoint, args.distractors, overrides, args.seed)
        background = card_background(checkpoint)
    finally:
        if staging is not None:
            staging.cleanup()
    res = calibrate(per_query, cs, args.fpr)
    command = "python -m benchmarks.ndvr.calibrate " + shlex.join(sys.argv[1:] if argv is None else argv)
    line = (f"{cs.split} split of the copy benchmark ({cs.root}): at this score {res['false_positives']} of "
            f"{res['no_copy_queries']} no-copy queries and {res['copy_recall']:.3f} of {res['copy_queries']} copies "
            f"match, against {origin['database']} videos; {command}")
    entry = {"min_score": res["threshold"], "false_positive_rate": args.fpr, "calibration": line}
    if background is not None:
        entry["background"] = background
    print(json.dumps({"match": entry}, indent=2, ensure_ascii=False))
    if not args.dry_run:
        card = write_card_match(args.checkpoint, entry)
        print(f"wrote match into {card}")
    path = write_result("ndvr.calibrate", {"set": str(args.set.resolve()), "split": cs.split,
                                           "checkpoint": str(args.checkpoint.resolve()), "scores": origin,
                                           "card_written": not args.dry_run, "match": entry, **res},
                        args.out or RESULTS / "ndvr_copy_calibration.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
