"""Batch ingestion client (`drca ingest`): upload a folder or a list of files to a running server.

Resumable: each file is hashed locally first, and files whose content the server already has
`indexed` are skipped without uploading. Uploads run with bounded concurrency; each waits for its job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from media.video import has_video_extension
from model.digest import sha256_file

LIST_SUFFIXES = {".txt", ".lst", ".list"}


class IngestInputError(ValueError):
    """The PATH|LIST argument names nothing usable."""


@dataclass
class IngestSummary:
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def collect_files(target: Path) -> list[Path]:
    """A folder (recursively, files with a video extension, sorted) or a list file (one path a line,
    relative to the list's folder; blank lines and `#` comments ignored)."""
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file() and has_video_extension(p))
    if target.is_file() and target.suffix.lower() in LIST_SUFFIXES:
        out = []
        for line in target.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                out.append(p if p.is_absolute() else target.parent / p)
        return out
    if target.is_file():
        return [target]
    raise IngestInputError(f"{target}: no such file or folder")


def _reason(r: httpx.Response) -> str:
    try:
        return f"HTTP {r.status_code}: {r.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {r.text[:200]}"


async def _one(client: httpx.AsyncClient, path: Path, poll_s: float, job_timeout_s: float) -> tuple[str, str]:
    """-> ("ingested" | "skipped" | "failed", reason)."""
    if not path.is_file():
        return "failed", "no such file"
    sha = await asyncio.to_thread(sha256_file, path)
    r = await client.get("/v1/videos", params={"sha256": sha, "limit": 1})
    if r.status_code != 200:
        return "failed", _reason(r)
    found = r.json()["videos"]
    if found and found[0]["status"] == "indexed":
        return "skipped", "already indexed"
    with open(path, "rb") as f:
        r = await client.post("/v1/videos", files={"file": (path.name, f, "application/octet-stream")})
    if r.status_code not in (200, 202):
        return "failed", _reason(r)
    job_id = r.json()["job_id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + job_timeout_s
    while loop.time() < deadline:
        r = await client.get(f"/v1/jobs/{job_id}")
        if r.status_code != 200:
            return "failed", _reason(r)
        job = r.json()
        if job["status"] == "done":
            return "ingested", ""
        if job["status"] == "failed":
            return "failed", job.get("error") or "ingestion failed"
        await asyncio.sleep(poll_s)
    return "failed", f"job {job_id} not finished after {job_timeout_s:g} s"


async def ingest_files(
    files: list[Path], server: str, concurrency: int = 4, api_key: str | None = None,
    job_timeout_s: float = 3600.0, poll_s: float = 0.25, on_done: Callable[[Path, str], None] | None = None,
) -> IngestSummary:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    summary = IngestSummary()
    sem = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(60.0, read=600.0)
    async with httpx.AsyncClient(base_url=server.rstrip("/"), headers=headers, timeout=timeout) as client:

        async def run(path: Path) -> None:
            async with sem:
                try:
                    outcome, reason = await _one(client, path, poll_s, job_timeout_s)
                except httpx.HTTPError as e:
                    outcome, reason = "failed", f"{type(e).__name__}: {e}"
            if outcome == "ingested":
                summary.ingested.append(str(path))
            elif outcome == "skipped":
                summary.skipped.append(str(path))
            else:
                summary.failed.append((str(path), reason))
            if on_done:
                on_done(path, outcome)

        await asyncio.gather(*(run(p) for p in files))
    return summary
