"""Peak RSS growth of a real `drca serve` per accepted upload, for adversarial but accepted uploads.

    python -m benchmarks.upload_memory [--seconds 10] [--max-size 4096x2304] [--cases tall,narrow,...]
                                       [--shared-server] [--checkpoint DIR] [--out PATH]

The cases (`--cases`, comma-separated keys; default all), each a testsrc2 video of `--seconds` seconds at
25 frames/s (benchmarks/service.py's `make_video`):
- `tall`: 32x8192, uploaded and indexed (`POST /v1/videos`, then its job);
- `narrow`: 64x4000, indexed;
- `max`: `--max-size` (default the service's largest frame, 4096x2304), indexed;
- `max3`: three distinct `--max-size` videos uploaded at once, all indexed;
- `search-tall`: `POST /v1/search` with the 32x8192 file (a video query: decoded and embedded at once);
- `ordinary`: 320x240, indexed.
Each case runs against a fresh `drca serve` (the embedded service, default settings; the shipped checkpoint
unless --checkpoint; `--shared-server`: one server for every case, in the order given), after a warm-up
(one small upload indexed and one video query), so that what the first request loads is not counted. The
peak is the kernel's VmHWM for the server process, reset through /proc/<pid>/clear_refs just before the
case; the growth is that peak minus the RSS just before. The target: at most 300 MB of growth for every
accepted upload (a refused one is recorded with its status and error, and is not held to the target).

Writes benchmarks/results/upload_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks._env import write_result
from benchmarks.service import _status_kb, make_video
from model import SHIPPED_CHECKPOINT
from tests.procs import HttpServer

log = logging.getLogger("benchmarks.upload_memory")
TARGET_GROWTH_MB = 300.0


@dataclass(frozen=True)
class Case:
    key: str
    size: str
    route: str = "/v1/videos"  # or /v1/search: a video query
    at_once: int = 1

    @property
    def name(self) -> str:
        where = "search" if self.route == "/v1/search" else "upload"
        return f"{where} {self.size}" + (f" x{self.at_once} at once" if self.at_once > 1 else "")


def cases(max_size: str) -> list[Case]:
    return [Case("tall", "32x8192"), Case("narrow", "64x4000"), Case("max", max_size),
            Case("max3", max_size, at_once=3), Case("search-tall", "32x8192", route="/v1/search"),
            Case("ordinary", "320x240")]


class Videos:
    """The case videos, made once each: `i` picks distinct content (testsrc2 with another hue)."""

    def __init__(self, root: Path, seconds: float) -> None:
        self.root, self.seconds = root, seconds
        self.made: dict[tuple[str, int], Path] = {}

    def get(self, size: str, i: int) -> Path:
        if (size, i) not in self.made:
            log.info("generating a %s video of %g s (%d)", size, self.seconds, i)
            # make_video's source is testsrc2 for every i multiple of 8; the hue differs
            self.made[size, i] = make_video(self.root / size, 8 * i, self.seconds, size)
        return self.made[size, i]


async def _job_done(c: httpx.AsyncClient, job_id: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await c.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} not finished in {timeout_s} s")


async def send(c: httpx.AsyncClient, route: str, path: Path, timeout_s: float) -> dict:
    """One upload or query: its status, error code and (an upload) its job's outcome; `accepted` when it
    was indexed (upload) or answered (query)."""
    data = {"k": "5"} if route == "/v1/search" else {}
    r = await c.post(route, files={"file": (path.name, path.read_bytes(), "video/mp4")}, data=data)
    out: dict = {"file": path.name, "file_bytes": path.stat().st_size, "status": r.status_code}
    if r.status_code >= 400:
        out["error"] = r.json().get("error")
        out["accepted"] = False
        return out
    if route == "/v1/search":
        out["accepted"] = r.status_code == 200
        return out
    job = await _job_done(c, r.json()["job_id"], timeout_s)
    out.update(job_status=job["status"], job_error=job.get("error"), timings=job.get("timings"),
               accepted=job["status"] == "done")
    return out


async def _run(url: str, route: str, paths: list[Path], timeout_s: float) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as c:
        return list(await asyncio.gather(*(send(c, route, p, timeout_s) for p in paths)))


def measure_case(case: Case, url: str, pid: int, videos: Videos, timeout_s: float) -> dict:
    paths = [videos.get(case.size, i) for i in range(case.at_once)]
    before = _status_kb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    t0 = time.perf_counter()
    sent = asyncio.run(_run(url, case.route, paths, timeout_s))
    wall = time.perf_counter() - t0
    peak = _status_kb(pid, "VmHWM")
    growth = (peak - before) / 1024
    accepted = all(s["accepted"] for s in sent)
    return {"name": case.name, **asdict(case), "requests": sent, "accepted": accepted,
            "wall_s": round(wall, 2), "rss_before_mb": round(before / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
            "peak_growth_mb": round(growth, 1),
            "within_target": (growth <= TARGET_GROWTH_MB) if accepted else None}


def warm_up(url: str, videos: Videos, timeout_s: float) -> None:
    """What a server's first requests load (the model's first batch, the query path) before measuring."""
    small = videos.get("160x120", 0)
    for route in ("/v1/videos", "/v1/search"):
        sent = asyncio.run(_run(url, route, [small], timeout_s))
        if not sent[0]["accepted"]:
            raise SystemExit(f"the warm-up {route} was refused: {sent[0]}")


def start(checkpoint: Path, work: Path, n: int) -> HttpServer:
    server = HttpServer(["--checkpoint", str(checkpoint), "--data-dir", str(work / f"data-{n}")],
                        work / f"serve-{n}.log", {})
    server.start(timeout_s=300)
    return server


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each case video")
    ap.add_argument("--max-size", default="4096x2304", help="the largest frame the server accepts")
    ap.add_argument("--cases", help="comma-separated keys (default: all): "
                    + ", ".join(c.key for c in cases("WxH")))
    ap.add_argument("--shared-server", action="store_true", help="one server for every case (default: one each)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="longest wait for one case's requests and jobs")
    ap.add_argument("--checkpoint", type=Path, help="default: the shipped checkpoint")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    todo = cases(args.max_size)
    if args.cases:
        keys = [k.strip() for k in args.cases.split(",") if k.strip()]
        known = {c.key: c for c in todo}
        if not keys or any(k not in known for k in keys):
            ap.error(f"--cases: among {', '.join(known)}")
        todo = [known[k] for k in keys]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    checkpoint = args.checkpoint or SHIPPED_CHECKPOINT
    measured = []
    with tempfile.TemporaryDirectory(prefix="drca-bench-upload-memory-") as tmp:
        work = Path(tmp)
        videos = Videos(work / "videos", args.seconds)
        server: HttpServer | None = None
        try:
            for n, case in enumerate(todo):
                if server is None or not args.shared_server:
                    if server is not None:
                        server.stop()
                    server = start(checkpoint, work, n)
                    warm_up(server.url, videos, args.timeout)
                result = measure_case(case, server.url, server.proc.pid, videos, args.timeout)
                server.check_alive()
                log.info("%s: accepted %s, peak growth %.0f MB", case.name, result["accepted"], result["peak_growth_mb"])
                measured.append(result)
        finally:
            if server is not None:
                server.stop()
    held = [m for m in measured if m["accepted"]]
    results = {
        "checkpoint": str(checkpoint), "weights": "given" if args.checkpoint else "shipped",
        "video_seconds": args.seconds, "video_fps": 25, "max_size": args.max_size,
        "fresh_server_per_case": not args.shared_server,
        "warm_up": "one 160x120 upload indexed and one video query with it, on each server before measuring",
        "target_growth_mb": TARGET_GROWTH_MB,
        "cases": measured,
        "max_growth_mb_accepted": max((m["peak_growth_mb"] for m in held), default=None),
        "refused": [m["name"] for m in measured if not m["accepted"]],
        "met": all(m["within_target"] for m in held),
    }
    path = write_result("upload_memory", results, args.out)
    log.info("max growth %s MB over %d accepted cases (target %g MB); wrote %s",
             results["max_growth_mb_accepted"], len(held), TARGET_GROWTH_MB, path)
    return path


if __name__ == "__main__":
    main()
