"""A separate process writing to a segment index: the contract tests' second writer and their restart.

`python -m tests.indexer.backend_writer SPEC FIRST N [--delete ID]`: SPEC is JSON naming the backend
(`{"kind": "faiss", "path": DIR}` or `{"kind": "milvus", "uri": URI, "collection": NAME}`, plus `dim`).
Adds videos FIRST..FIRST+N-1 (`video_vectors` below), printing `added ID` after each returned, deletes
`--delete ID` if given, records `{"writer": FIRST}` as metadata, closes and exits 0; prints `LOCKED` and
exits 3 when the index is held by another process.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from indexer import IndexConfig, IndexLocked, SegmentIndex, Span, VideoIndex


def video_vectors(video_id: int, dim: int) -> tuple[list[Span], np.ndarray]:
    """Deterministic segments (1-5, by id) and unit vectors (S, dim) of one video."""
    rng = np.random.default_rng(video_id)
    n = 1 + video_id % 5
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return [Span(2.0 * i, 2.0 * i + 2.0) for i in range(n)], v / np.linalg.norm(v, axis=1, keepdims=True)


def open_index(spec: dict) -> SegmentIndex:
    if spec["kind"] == "faiss":
        return VideoIndex.open(spec["path"], IndexConfig(dim=spec["dim"], snapshot_every=0))
    from indexer.milvus_index import MilvusConfig, MilvusVideoIndex

    return MilvusVideoIndex.open(MilvusConfig(uri=spec["uri"], dim=spec["dim"]), spec["collection"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("first", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--delete", type=int)
    args = ap.parse_args()
    spec = json.loads(args.spec)
    try:
        index = open_index(spec)
    except IndexLocked:
        print("LOCKED", flush=True)
        return 3
    with index:
        for vid in range(args.first, args.first + args.n):
            index.add_video(vid, *video_vectors(vid, spec["dim"]))
            print(f"added {vid}", flush=True)
        if args.delete is not None:
            assert index.delete_video(args.delete)
        index.set_metadata({"writer": str(args.first)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
