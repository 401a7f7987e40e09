"""Durability: kill -9 at random points, torn and corrupt log tails, corrupt snapshots."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer import IndexConfig, IndexLocked, InvalidVectors, RecoveryError, VideoIndex, wal
from tests.indexer import crash_writer

D = 8
CFG = IndexConfig(dim=D, kind="flat", snapshot_every=0)


def add(idx: VideoIndex, vids) -> None:
    for v in vids:
        idx.add_video(v, *crash_writer.video(v))


def crash(idx: VideoIndex) -> None:
    """Simulate kill -9: drop the object without close() (no final snapshot); the log is on disk."""
    idx._release_files()  # noqa: SLF001 - file handles and the directory lock only, as the OS would


def assert_intact(idx: VideoIndex, vids) -> None:
    for v in vids:
        got = idx.get(v)
        segments, vecs = crash_writer.video(v)
        assert got is not None, f"video {v} lost"
        assert got.segments == segments
        np.testing.assert_allclose(got.vectors, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), rtol=1e-6)


def test_record_roundtrip():
    segs = np.array([[0.0, 1.5], [1.5, 3.0]])
    vecs = np.arange(2 * D, dtype=np.float32).reshape(2, D)
    rec = wal.decode(wal.encode(wal.AddRecord(9, -5, segs, vecs))[8:])
    assert rec.seq == 9 and rec.video_id == -5
    np.testing.assert_array_equal(rec.segments, segs)
    np.testing.assert_array_equal(rec.vectors, vecs)
    assert wal.decode(wal.encode(wal.DeleteRecord(3, 2**62))[8:]) == wal.DeleteRecord(3, 2**62)


def test_reopen_after_clean_close(tmp_path):
    idx = VideoIndex.open(tmp_path, CFG)
    add(idx, range(10))
    idx.delete_video(3)
    idx.close()
    again = VideoIndex.open(tmp_path, CFG)
    assert len(again) == 9 and again.get(3) is None
    assert_intact(again, [v for v in range(10) if v != 3])
    again.close()


def test_group_commit_is_all_or_nothing_and_durable(tmp_path):
    idx = VideoIndex.open(tmp_path, CFG)
    with pytest.raises(InvalidVectors):
        idx.add_videos([(v, *crash_writer.video(v)) for v in range(3)] + [(9, [], np.ones((1, D)))])
    assert len(idx) == 0 and idx.stats().last_seq == 0  # validated before anything was written
    idx.add_videos([(v, *crash_writer.video(v)) for v in range(3)] + [(1, *crash_writer.video(1))])
    crash(idx)
    again = VideoIndex.open(tmp_path, CFG)
    assert len(again) == 3 and again.stats().last_seq == 4 and again.stats().segments == 1 + 2 + 3
    assert_intact(again, range(3))
    again.close()


@pytest.mark.parametrize("cut", [1, 5, 30])
def test_truncated_log_tail(tmp_path, caplog, cut):
    idx = VideoIndex.open(tmp_path, CFG)
    add(idx, range(6))
    crash(idx)
    (log_file,) = tmp_path.glob("log-*.wal")
    with open(log_file, "r+b") as f:
        f.truncate(log_file.stat().st_size - cut)  # a torn final record
    with caplog.at_level(logging.WARNING):
        again = VideoIndex.open(tmp_path, CFG)
    assert "dropped" in caplog.text
    assert len(again) == 5 and again.get(5) is None
    assert_intact(again, range(5))
    add(again, [5, 6])  # the log continues cleanly after the cut
    crash(again)
    third = VideoIndex.open(tmp_path, CFG)
    assert len(third) == 7
    assert_intact(third, range(7))
    third.close()


def test_corrupt_record_in_the_middle(tmp_path, caplog):
    idx = VideoIndex.open(tmp_path, CFG)
    add(idx, range(6))
    crash(idx)
    (log_file,) = tmp_path.glob("log-*.wal")
    data = bytearray(log_file.read_bytes())
    recs, _, _ = wal.read_log(log_file)
    offset = sum(len(wal.encode(r)) for r in recs[:3]) + 20  # inside the 4th record's payload
    data[offset] ^= 0xFF
    log_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = VideoIndex.open(tmp_path, CFG)
    assert "dropped" in caplog.text
    assert sorted(again._videos) == [0, 1, 2]  # noqa: SLF001
    again.close()


def test_corrupt_snapshot_falls_back_to_older(tmp_path, caplog):
    idx = VideoIndex.open(tmp_path, CFG)
    add(idx, range(5))
    idx.snapshot()
    add(idx, range(5, 10))
    newest = idx.snapshot()
    add(idx, [10])
    crash(idx)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = VideoIndex.open(tmp_path, CFG)
    assert "corrupt snapshot" in caplog.text
    assert len(again) == 11
    assert_intact(again, range(11))
    again.close()


def test_nothing_valid_raises_unless_allowed(tmp_path):
    idx = VideoIndex.open(tmp_path, CFG)
    add(idx, range(3))
    snap = idx.snapshot()  # the only snapshot; logs before it are pruned
    crash(idx)
    snap.write_bytes(snap.read_bytes()[:-3])
    for _ in range(2):  # a failed open leaves the files as they were: it keeps failing, never empty
        with pytest.raises(RecoveryError):
            VideoIndex.open(tmp_path, CFG)
        assert snap.exists()
    allowed = VideoIndex.open(
        tmp_path, IndexConfig(dim=D, kind="flat", snapshot_every=0, allow_empty_recovery=True)
    )
    assert len(allowed) == 0
    add(allowed, [7])
    crash(allowed)
    assert sorted(VideoIndex.open(tmp_path, CFG)._videos) == [7]  # noqa: SLF001 - consistent afterwards


def test_second_open_of_the_same_directory_is_refused(tmp_path):
    idx = VideoIndex.open(tmp_path, CFG)
    with pytest.raises(IndexLocked):
        VideoIndex.open(tmp_path, CFG)
    idx.close()
    VideoIndex.open(tmp_path, CFG).close()


def test_corrupt_only_snapshot_without_logs_is_refused(tmp_path):
    idx = VideoIndex.open(tmp_path, CFG)
    add(idx, range(3))
    idx.close()  # snapshot + rotation; no records after it
    for p in tmp_path.glob("log-*.wal"):
        p.unlink()
    (snap,) = tmp_path.glob("snapshot-*.snap")
    snap.write_bytes(b"\0" * 100)
    with pytest.raises(RecoveryError):
        VideoIndex.open(tmp_path, CFG)


def test_wrong_dimension_is_refused(tmp_path):
    idx = VideoIndex.open(tmp_path, CFG)
    add(idx, range(2))
    idx.close()
    with pytest.raises(RecoveryError):
        VideoIndex.open(tmp_path, IndexConfig(dim=D * 2, kind="flat"))


def test_snapshots_rotate_and_prune_logs(tmp_path):
    idx = VideoIndex.open(tmp_path, CFG)
    for r in range(4):
        add(idx, range(r * 3, r * 3 + 3))
        idx.snapshot()
    assert len(list(tmp_path.glob("snapshot-*.snap"))) == 2
    assert len(list(tmp_path.glob("log-*.wal"))) <= 2
    idx.close()
    again = VideoIndex.open(tmp_path, CFG)
    assert_intact(again, range(12))
    again.close()


@pytest.mark.slow
def test_kill_dash_nine_never_loses_an_acknowledged_add(tmp_path):
    """>= 20 rounds: a writer process is SIGKILLed at a random moment; every id it printed (i.e. every
    add that returned) is present exactly once and complete after recovery."""
    rng = random.Random(1234)
    acked: list[int] = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for rnd in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.indexer.crash_writer", str(tmp_path), str(rnd * 100_000)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        first = proc.stdout.readline()  # the writer is running
        assert first, "crash writer died before acknowledging anything"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        acked += [int(x) for x in (first + rest).split()]
    assert len(acked) == len(set(acked)) >= 20
    # committed once: the writer adds each id once, so no log holds two add records of one id (a recovery
    # that replayed or re-appended records would); the logs left after pruning still span the later rounds
    added = [rec.video_id for _, path in wal.list_logs(tmp_path) for rec in wal.read_log(path)[0]
             if isinstance(rec, wal.AddRecord)]
    assert added and len(added) == len(set(added))
    idx = VideoIndex.open(tmp_path, crash_writer.CONFIG)
    assert_intact(idx, acked)
    # indexed once: FAISS holds exactly the stored segments, none twice
    assert idx._index.ntotal == sum(len(idx.get(v).segments) for v in idx._videos)  # noqa: SLF001
    # anything beyond the acknowledged ids is at most the one add in flight per round
    assert len(set(idx._videos) - set(acked)) <= 20  # noqa: SLF001
    idx.close()
