"""Index commits per video, read from the durable record of the index: the indexer's log files
(embedded service) or the Redis `vectors` stream (scale-out). "Indexed exactly once" is checked by counting
these, not by looking at the index, which replaces a video's segments on every add and so can never show a
second commit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from indexer import wal


@dataclass(frozen=True)
class Commit:
    video_id: int
    segments: np.ndarray  # (S, 2) start/end seconds
    vectors: np.ndarray  # (S, D) as written (L2-normalised)


def wal_commits(index_dir: Path) -> dict[int, list[Commit]]:
    """Every add record in the index's log files, per video, in log order. Refuses a directory with a
    snapshot: the logs before it were pruned, so the count would be incomplete."""
    assert not wal.list_snapshots(index_dir), f"{index_dir} has snapshots: its logs no longer hold every commit"
    out: dict[int, list[Commit]] = {}
    for _first, path in wal.list_logs(index_dir):
        records, _valid, _size = wal.read_log(path)
        for rec in records:
            if isinstance(rec, wal.AddRecord):
                out.setdefault(rec.video_id, []).append(Commit(rec.video_id, rec.segments, rec.vectors))
    return out


def stream_commits(client: redis.Redis, prefix: str = "drca", stream: str = "vectors") -> dict[int, list[Commit]]:
    """Every `add` entry of the scale-out vector stream (never trimmed), per video, in stream order. With
    `stream="changes"` (scale-out on Milvus: each write into Milvus, announced without its vectors) the
    commits have `vectors` None."""
    out: dict[int, list[Commit]] = {}
    for _entry, f in client.xrange(f"{prefix}:{stream}"):
        if f[b"op"] != b"add":
            continue
        vid = int(f[b"video_id"])
        segs = np.array(json.loads(f[b"segments"]), dtype=np.float64).reshape(-1, 2)
        vecs = np.frombuffer(f[b"vectors"], dtype="<f4").reshape(len(segs), -1) if b"vectors" in f else None
        out.setdefault(vid, []).append(Commit(vid, segs, vecs))
    return out


def assert_milvus_rows_once(uri: str, segments: dict[int, int], alias: str = "segments") -> None:
    """Milvus (the collection behind `alias`) holds exactly the rows of these videos, each segment once:
    the primary keys read back are exactly {(video, seg)} for seg < segments[video], and `count(*)` (strong)
    equals their number, so no key is there twice."""
    from pymilvus import MilvusClient

    from indexer.milvus_index import MAX_TOPK, primary_key

    client = MilvusClient(uri=uri)
    try:
        rows = client.query(alias, filter="pk >= 0", output_fields=["pk", "video_id", "seg"], limit=MAX_TOPK,
                            consistency_level="Strong")
        (count,) = client.query(alias, filter="", output_fields=["count(*)"], consistency_level="Strong")
    finally:
        client.close()
    pks = [int(r["pk"]) for r in rows]
    expected = {primary_key(v, i) for v, n in segments.items() for i in range(n)}
    assert len(pks) == len(set(pks)), "a primary key was read back twice"
    assert set(pks) == expected, (f"unexpected rows {sorted(set(pks) - expected)[:5]}, "
                                  f"missing rows {sorted(expected - set(pks))[:5]}")
    assert int(count["count(*)"]) == len(expected), (count, len(expected))


def assert_committed_once(commits: dict[int, list[Commit]], video_ids: list[int],
                          rerun: set[int] = frozenset()) -> None:
    """Exactly the given videos were committed, each exactly once; a video in `rerun` (its job was reclaimed
    from a worker that died) may have been committed a second time, and then with the same segments and
    vectors: the idempotent re-run of the same job, which every index applies as an upsert."""
    assert set(commits) == set(video_ids), (
        f"committed {sorted(set(commits) - set(video_ids))} unexpectedly, "
        f"never committed {sorted(set(video_ids) - set(commits))}")
    for vid in video_ids:
        got = commits[vid]
        if vid not in rerun:
            assert len(got) == 1, f"video {vid} committed {len(got)} times (no worker died for it)"
            continue
        assert len(got) in (1, 2), f"video {vid} committed {len(got)} times (one reclaim at most)"
        for again in got[1:]:
            np.testing.assert_array_equal(again.segments, got[0].segments)
            if again.vectors is None:  # Milvus: the rows themselves are counted by primary key
                continue
            np.testing.assert_allclose(again.vectors, got[0].vectors, atol=1e-5,
                                       err_msg=f"video {vid}: the re-run committed different vectors")
