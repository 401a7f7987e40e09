"""`SQLiteMetadataStore`: the `MetadataStore` protocol (`service.backends.store`) on SQLite (WAL), the embedded
service's store of video metadata and ingest jobs.

`SQLiteMetadataStore` keeps one connection per thread (SQLite connections must not be shared across
threads) in WAL mode, so readers never block the writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from service.backends.store import (
    JOB_TRANSITIONS,
    VIDEO_TRANSITIONS,
    DuplicateContent,
    InvalidTransition,
    JobRecord,
    Label,
    NotFound,
    VideoRecord,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    video_id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id TEXT UNIQUE,
    content_hash TEXT NOT NULL UNIQUE,
    source_name TEXT,
    duration REAL,
    labels TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS videos_status ON videos(status, video_id);
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id INTEGER NOT NULL REFERENCES videos(video_id),
    status TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    timings TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_video ON jobs(video_id);
"""


def _video(row: sqlite3.Row) -> VideoRecord:
    return VideoRecord(
        video_id=row["video_id"],
        content_hash=row["content_hash"],
        external_id=row["external_id"],
        source_name=row["source_name"],
        duration=row["duration"],
        labels=[Label(n, p) for n, p in json.loads(row["labels"])],
        status=row["status"],
        error=row["error"],
        created_at=row["created_at"],
        extra=json.loads(row["extra"]),
    )


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        row["job_id"],
        row["video_id"],
        row["status"],
        row["error"],
        row["created_at"],
        json.loads(row["timings"]),
    )


class SQLiteMetadataStore:
    """`MetadataStore` on one SQLite file in WAL mode, one connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    def create_video(
        self, content_hash, *, external_id=None, source_name=None, duration=None, extra=None
    ) -> VideoRecord:
        if len(content_hash) != 64 or any(ch not in "0123456789abcdef" for ch in content_hash):
            raise ValueError("content_hash must be a lowercase sha256 hex digest")
        try:
            with self._conn() as c:
                cur = c.execute(
                    "INSERT INTO videos (external_id, content_hash, source_name, duration, created_at, status, extra)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (external_id, content_hash, source_name, duration, time.time(), json.dumps(extra or {})),
                )
        except sqlite3.IntegrityError as exc:
            raise DuplicateContent(f"a video with this content hash or external id exists: {exc}") from None
        return self.get_video(cur.lastrowid)

    def get_video(self, video_id: int) -> VideoRecord:
        row = self._conn().execute("SELECT * FROM videos WHERE video_id = ?", (video_id,)).fetchone()
        if row is None:
            raise NotFound(f"no video {video_id}")
        return _video(row)

    def find_by_hash(self, content_hash: str) -> VideoRecord | None:
        row = self._conn().execute("SELECT * FROM videos WHERE content_hash = ?", (content_hash,)).fetchone()
        return _video(row) if row else None

    def find_by_external_id(self, external_id: str) -> VideoRecord | None:
        row = self._conn().execute("SELECT * FROM videos WHERE external_id = ?", (external_id,)).fetchone()
        return _video(row) if row else None

    def list_videos(self, *, offset=0, limit=50, status=None) -> list[VideoRecord]:
        if offset < 0 or not 0 < limit <= 1000:
            raise ValueError("need offset >= 0 and 0 < limit <= 1000")
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._conn().execute(
            f"SELECT * FROM videos {where} ORDER BY video_id LIMIT ? OFFSET ?", (*args, limit, offset)
        )
        return [_video(r) for r in rows]

    def count_videos(self, status=None) -> int:
        if status:
            return (
                self._conn().execute("SELECT COUNT(*) FROM videos WHERE status = ?", (status,)).fetchone()[0]
            )
        return self._conn().execute("SELECT COUNT(*) FROM videos").fetchone()[0]

    def set_status(self, video_id, status, error=None) -> VideoRecord:
        with self._conn() as c:
            row = c.execute("SELECT status FROM videos WHERE video_id = ?", (video_id,)).fetchone()
            if row is None:
                raise NotFound(f"no video {video_id}")
            if status not in VIDEO_TRANSITIONS[row["status"]]:
                raise InvalidTransition(f"video {video_id}: {row['status']} -> {status} is not allowed")
            c.execute("UPDATE videos SET status = ?, error = ? WHERE video_id = ?", (status, error, video_id))
        return self.get_video(video_id)

    def update_video(self, video_id, *, duration=None, labels=None, extra=None) -> VideoRecord:
        cur = self.get_video(video_id)
        with self._conn() as c:
            c.execute(
                "UPDATE videos SET duration = ?, labels = ?, extra = ? WHERE video_id = ?",
                (
                    cur.duration if duration is None else duration,
                    json.dumps([[lb.name, lb.prob] for lb in (cur.labels if labels is None else labels)]),
                    json.dumps({**cur.extra, **(extra or {})}),
                    video_id,
                ),
            )
        return self.get_video(video_id)

    def delete_video(self, video_id: int) -> None:
        with self._conn() as c:
            c.execute("DELETE FROM jobs WHERE video_id = ?", (video_id,))
            if c.execute("DELETE FROM videos WHERE video_id = ?", (video_id,)).rowcount == 0:
                raise NotFound(f"no video {video_id}")

    def create_job(self, video_id: int) -> JobRecord:
        self.get_video(video_id)
        with self._conn() as c:
            cur = c.execute(
                "INSERT INTO jobs (video_id, status, created_at) VALUES (?, 'queued', ?)",
                (video_id, time.time()),
            )
        return self.get_job(cur.lastrowid)

    def get_job(self, job_id: int) -> JobRecord:
        row = self._conn().execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return _job(row)

    def set_job_status(self, job_id, status, error=None, timings=None) -> JobRecord:
        with self._conn() as c:
            row = c.execute("SELECT status, timings FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}")
            if status not in JOB_TRANSITIONS[row["status"]]:
                raise InvalidTransition(f"job {job_id}: {row['status']} -> {status} is not allowed")
            merged = {**json.loads(row["timings"]), **(timings or {})}
            c.execute(
                "UPDATE jobs SET status = ?, error = ?, timings = ? WHERE job_id = ?",
                (status, error, json.dumps(merged), job_id),
            )
        return self.get_job(job_id)

    def jobs_for_video(self, video_id: int) -> list[JobRecord]:
        rows = self._conn().execute("SELECT * FROM jobs WHERE video_id = ? ORDER BY job_id", (video_id,))
        return [_job(r) for r in rows]

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
