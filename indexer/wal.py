"""Durability: an append-only, checksummed, fsync'd log of add/delete records plus atomic snapshots.

Framing (log and snapshot alike): `<u32 length><u32 crc32(payload)><payload>`, little endian.
Record payload: `<u8 op><u64 seq><i64 video_id>` then, for an add, `<u32 S><u32 D>`, the segments
(S, 2) float64 and the vectors (S, D) float32. One add of S segments is ONE record, so it is either
replayed whole or not at all.

Files in the index directory:
- `log-<first seq>.wal`: records with seq >= first seq, strictly increasing by one.
- `snapshot-<seq>.snap`: a header frame (`DRCASNAP`, seq, video count, dim), one add frame per video,
  an end frame with the count. Written to `.tmp`, fsync'd, renamed, directory fsync'd.

Recovery = newest valid snapshot + replay of every log record after its seq. Replay is idempotent: an
add replaces the video (upsert), a delete of a missing video is a no-op, records at or below the
snapshot's seq are skipped.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.errors import RecoveryError

log = logging.getLogger(__name__)

OP_ADD, OP_DELETE = 1, 2
_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<BQq")
_ADD = struct.Struct("<II")
_SNAP_MAGIC = b"DRCASNAP"
_SNAP_HEAD = struct.Struct("<QQI")
_END_MAGIC = b"DRCAEND!"
_LOG_RE = re.compile(r"^log-(\d{20})\.wal$")
_SNAP_RE = re.compile(r"^snapshot-(\d{20})\.snap$")
MAX_RECORD = 1 << 31


class CorruptFile(Exception):
    """A snapshot failed its checksums or structure (internal: recovery falls back)."""


@dataclass(frozen=True)
class AddRecord:
    seq: int
    video_id: int
    segments: np.ndarray  # (S, 2) float64 start/end seconds
    vectors: np.ndarray  # (S, D) float32, L2-normalised


@dataclass(frozen=True)
class DeleteRecord:
    seq: int
    video_id: int


Record = AddRecord | DeleteRecord


def encode(rec: Record) -> bytes:
    if isinstance(rec, AddRecord):
        s, d = rec.vectors.shape
        payload = b"".join(
            (
                _HEAD.pack(OP_ADD, rec.seq, rec.video_id),
                _ADD.pack(s, d),
                np.ascontiguousarray(rec.segments, dtype="<f8").tobytes(),
                np.ascontiguousarray(rec.vectors, dtype="<f4").tobytes(),
            )
        )
    else:
        payload = _HEAD.pack(OP_DELETE, rec.seq, rec.video_id)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Record:
    op, seq, vid = _HEAD.unpack_from(payload)
    if op == OP_DELETE and len(payload) == _HEAD.size:
        return DeleteRecord(seq, vid)
    if op != OP_ADD:
        raise ValueError(f"unknown record op {op}")
    s, d = _ADD.unpack_from(payload, _HEAD.size)
    off = _HEAD.size + _ADD.size
    if len(payload) != off + 16 * s + 4 * s * d:
        raise ValueError("record length does not match its shape")
    segs = np.frombuffer(payload, "<f8", 2 * s, off).reshape(s, 2).astype(np.float64)
    vecs = np.frombuffer(payload, "<f4", s * d, off + 16 * s).reshape(s, d).astype(np.float32)
    return AddRecord(seq, vid, segs, vecs)


def _frames(data: bytes) -> Iterator[tuple[bytes, int]]:
    """Valid frames in `data` as (payload, end offset); stops at the first torn or corrupt frame."""
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        if length > MAX_RECORD or start + length > len(data):
            return
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            return
        pos = start + length
        yield payload, pos


def read_log(path: Path) -> tuple[list[Record], int, int]:
    """Records of one log file, the number of valid bytes, and the file size."""
    data = path.read_bytes()
    records: list[Record] = []
    valid = 0
    for payload, end in _frames(data):
        try:
            records.append(decode(payload))
        except (ValueError, struct.error):
            break
        valid = end
    return records, valid, len(data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: written to `<path>.tmp`, fsync'd, renamed, directory fsync'd."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def log_path(directory: Path, first_seq: int) -> Path:
    return directory / f"log-{first_seq:020d}.wal"


def snapshot_path(directory: Path, seq: int) -> Path:
    return directory / f"snapshot-{seq:020d}.snap"


def list_logs(directory: Path) -> list[tuple[int, Path]]:
    return sorted((int(m[1]), p) for p in directory.iterdir() if (m := _LOG_RE.match(p.name)))


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    return sorted((int(m[1]), p) for p in directory.iterdir() if (m := _SNAP_RE.match(p.name)))


class WriteAheadLog:
    """Appends records to the current log file; `append` returns only once the record is durable."""

    def __init__(self, directory: Path, first_seq: int, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self._file = None
        self.rotate(first_seq)

    def rotate(self, first_seq: int) -> None:
        """Close the current file and append to `log-<first_seq>.wal` from now on."""
        self.close()
        path = log_path(self.directory, first_seq)
        self._file = open(path, "ab")  # noqa: SIM115 - lives as long as the log
        if self.fsync:
            os.fsync(self._file.fileno())
            _fsync_dir(self.directory)
        self.path = path

    def append(self, records: Iterable[Record]) -> None:
        """Write records (one group: one fsync) and make them durable before returning."""
        assert self._file is not None
        self._file.write(b"".join(encode(r) for r in records))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_snapshot(
    directory: Path,
    seq: int,
    dim: int,
    videos: Iterable[tuple[int, np.ndarray, np.ndarray]],
    fsync: bool = True,
) -> Path:
    """Atomically write a snapshot of `videos` (video_id, segments, vectors) at log position `seq`."""
    videos = list(videos)
    final = snapshot_path(directory, seq)
    tmp = final.with_suffix(".snap.tmp")
    with open(tmp, "wb") as f:
        head = _SNAP_MAGIC + _SNAP_HEAD.pack(seq, len(videos), dim)
        f.write(_FRAME.pack(len(head), zlib.crc32(head)) + head)
        for vid, segs, vecs in videos:
            f.write(encode(AddRecord(seq, vid, segs, vecs)))
        end = _END_MAGIC + struct.pack("<Q", len(videos))
        f.write(_FRAME.pack(len(end), zlib.crc32(end)) + end)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    if fsync:
        _fsync_dir(directory)
    return final


def read_snapshot(path: Path, dim: int) -> tuple[int, list[AddRecord]]:
    data = path.read_bytes()
    frames = _frames(data)
    try:
        head, _ = next(frames)
    except StopIteration:
        raise CorruptFile(f"{path.name}: no valid header") from None
    if not head.startswith(_SNAP_MAGIC) or len(head) != len(_SNAP_MAGIC) + _SNAP_HEAD.size:
        raise CorruptFile(f"{path.name}: bad header")
    seq, count, sdim = _SNAP_HEAD.unpack_from(head, len(_SNAP_MAGIC))
    if sdim != dim:
        raise RecoveryError(f"{path.name} holds {sdim}-d vectors but the index is configured for {dim}-d")
    videos: list[AddRecord] = []
    end_ok = False
    last = 0
    for payload, pos in frames:
        last = pos
        if payload.startswith(_END_MAGIC):
            end_ok = struct.unpack_from("<Q", payload, len(_END_MAGIC))[0] == count
            break
        try:
            rec = decode(payload)
        except (ValueError, struct.error) as exc:
            raise CorruptFile(f"{path.name}: undecodable record") from exc
        if not isinstance(rec, AddRecord):
            raise CorruptFile(f"{path.name}: unexpected record")
        videos.append(rec)
    if not end_ok or len(videos) != count or last != len(data):
        raise CorruptFile(f"{path.name}: truncated or corrupt ({len(videos)}/{count} videos readable)")
    return seq, videos


@dataclass
class Recovered:
    seq: int = 0  # last applied record
    videos: dict[int, AddRecord] = field(default_factory=dict)
    dropped: bool = False  # something was dropped: the caller should snapshot at once
    snapshot_seq: int = 0


def recover(directory: Path, dim: int, allow_empty: bool = False) -> Recovered:
    """Newest valid snapshot + log replay. Torn/corrupt log tails are truncated (with a warning)."""
    for tmp in directory.glob("*.tmp"):
        tmp.unlink()
    snaps = list_snapshots(directory)
    logs = list_logs(directory)
    state = Recovered()
    corrupt: list[Path] = []
    found = False
    for _seq, path in reversed(snaps):
        try:
            seq, videos = read_snapshot(path, dim)
        except CorruptFile as exc:
            log.warning("skipping corrupt snapshot, falling back to older data: %s", exc)
            corrupt.append(path)
            state.dropped = True
            continue
        state.seq = state.snapshot_seq = seq
        state.videos = {r.video_id: r for r in videos}
        found = True
        break
    # Without a snapshot, the logs are a complete history only if they start at record 1.
    have_base = found or (not snaps and not logs) or (bool(logs) and logs[0][0] == 1)
    if not have_base:
        if not allow_empty:
            raise RecoveryError(
                f"no valid snapshot in {directory} and the logs do not reach back to the first record; "
                "refusing to start with missing data (set allow_empty_recovery to override)"
            )
        log.warning("no valid snapshot in %s: replaying whatever the logs hold", directory)
    stop = False
    for i, (_first, path) in enumerate(logs):
        if stop:
            bad = path.with_name(path.name + ".dropped")
            log.warning("log %s follows a corrupt record; moved aside to %s", path.name, bad.name)
            os.replace(path, bad)
            continue
        records, valid, size = read_log(path)
        for rec in records:
            if rec.seq <= state.seq:
                continue
            if rec.seq != state.seq + 1 and have_base:
                msg = f"{path.name}: record {rec.seq} follows {state.seq}; records are missing"
                if not allow_empty:
                    raise RecoveryError(msg)
                log.warning("%s", msg)
            state.seq = rec.seq
            if isinstance(rec, AddRecord):
                state.videos[rec.video_id] = rec
            else:
                state.videos.pop(rec.video_id, None)
        if valid < size:
            log.warning(
                "log %s: dropped %d corrupt or torn trailing bytes after %d valid records%s",
                path.name,
                size - valid,
                len(records),
                "" if i == len(logs) - 1 else " (later logs are moved aside)",
            )
            with open(path, "r+b") as f:
                f.truncate(valid)
                f.flush()
                os.fsync(f.fileno())
            state.dropped = True
            stop = True
    if not have_base:
        # Explicitly allowed partial recovery: continue numbering after everything seen on disk, so
        # the next snapshot and log never collide with the files that were there.
        state.seq = max([state.seq] + [seq for seq, _ in snaps])
    for path in corrupt:  # only once recovery succeeded: a failed open leaves the files untouched
        aside = path.with_name(path.name + ".corrupt")
        log.warning("moved corrupt snapshot %s aside to %s", path.name, aside.name)
        os.replace(path, aside)
    return state


def prune(directory: Path, keep_snapshots: int = 2) -> None:
    """Delete all but the newest `keep_snapshots` snapshots and logs wholly older than the oldest kept."""
    snaps = list_snapshots(directory)
    if not snaps:
        return
    for _seq, path in snaps[:-keep_snapshots]:
        path.unlink(missing_ok=True)
    oldest = snaps[-keep_snapshots:][0][0]
    logs = list_logs(directory)
    for (_first, path), nxt in zip(logs, logs[1:], strict=False):
        if nxt[0] - 1 <= oldest:  # every record in `path` is <= oldest kept snapshot
            path.unlink(missing_ok=True)
