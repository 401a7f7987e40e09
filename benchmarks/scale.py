"""Scale-out on loopback: ingest throughput with 1 worker against 2, and search QPS with 1 gateway
replica against 2. Real processes: a `redis-server` (AOF, appendfsync always), `drca serve --redis`
gateways and `drca worker --redis` workers (tests/procs.py starts them).

    python -m benchmarks.scale [--videos 48] [--seconds 8] [--size 320x240] [--torch-threads 1]
                               [--rounds 3] [--search-seconds 10] [--concurrency 8]

- ingest: for each worker count, a fresh Redis and data dir, one gateway; upload every video (4 in
  flight) and wait until every job is done. Rate = videos / (first upload -> last job done). `--rounds`
  rounds, alternating 1 and 2 workers; the ratio is of the medians.
- search: after the last 2-worker round (its index populated), `POST /v1/search {"video_id", "k": 10}`
  ("more like this": an index lookup in the gateway, no worker) at `--concurrency` for
  `--search-seconds`, against one replica, then spread round-robin over two replicas (the second
  follows the vector stream into its own index). QPS and latency percentiles.
Every process here, the load generator included, shares the machine's cores: on a 2-core machine two
workers cannot be twice as fast as one, and the JSON says what the machine was. The checkpoint is the
shipped one if present, else a randomly initialised drca-cpu-112 (speed does not depend on the weights).
Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._env import write_result
from benchmarks.service import make_videos, random_checkpoint
from model import SHIPPED_CHECKPOINT
from tests.procs import Gateway, RedisServer, Worker, start_all, wait_jobs

log = logging.getLogger("benchmarks.scale")


async def upload_all(url: str, videos: list[Path], concurrency: int = 4) -> list[int]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        async def one(p: Path) -> int:
            async with sem:
                with open(p, "rb") as f:
                    r = await c.post("/v1/videos", files={"file": (p.name, f.read(), "video/mp4")})
                r.raise_for_status()
                return r.json()["job_id"]

        return await asyncio.gather(*(one(p) for p in videos))


def ingest_round(root: Path, checkpoint: Path, videos: list[Path], workers: int, threads: int) -> dict:
    redis = RedisServer(root / "redis")
    redis.start()
    settings = {"DRCA_TORCH_THREADS": str(threads), "DRCA_TEXT_SEARCH": "false"}
    gw = Gateway(checkpoint, root / "data", redis.url, root / "index-1", root / "gateway-1.log", **settings)
    ws = [Worker(checkpoint, root / "data", redis.url, root / f"worker-{i}.log", **settings) for i in range(workers)]
    procs = [redis, gw, *ws]
    try:
        start_all(gw, *ws)
        t0 = time.perf_counter()
        jobs = asyncio.run(upload_all(gw.url, videos))
        with gw.client() as c:
            states = wait_jobs(c, jobs, timeout_s=3600, procs=(gw, *ws))
        dt = time.perf_counter() - t0
        failed = [j for j in states.values() if j["status"] != "done"]
        if failed:
            raise SystemExit(f"{len(failed)} jobs failed, e.g. {failed[0]}")
        out = {"workers": workers, "videos": len(videos), "seconds": round(dt, 3),
               "videos_per_s": round(len(videos) / dt, 4)}
        log.info("ingest with %d worker(s): %s", workers, out)
        return out | {"_procs": procs, "_gateway": gw, "_redis": redis}
    except BaseException:
        for p in reversed(procs):
            p.kill()
        raise


async def search_load(urls: list[str], video_ids: list[int], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    targets = itertools.cycle(urls)
    queries = itertools.cycle(video_ids)
    clients = {u: httpx.AsyncClient(base_url=u, timeout=30,
                                    limits=httpx.Limits(max_connections=concurrency)) for u in urls}
    stop = time.perf_counter() + seconds

    async def client_loop() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            url, vid = next(targets), next(queries)
            t0 = time.perf_counter()
            r = await clients[url].post("/v1/search", json={"video_id": vid, "k": 10})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    for c in clients.values():
        await c.aclose()
    lat = sorted(latencies)
    return {"replicas": len(urls), "concurrency": concurrency, "requests": len(lat), "errors": errors,
            "seconds": round(dt, 3), "qps": round(len(lat) / dt, 2),
            "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each generated video")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per worker")
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds per worker count (median)")
    ap.add_argument("--search-seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="drca-bench-scale-") as tmp:
        root = Path(tmp)
        if (SHIPPED_CHECKPOINT / "config.json").exists():
            checkpoint, weights = SHIPPED_CHECKPOINT, "shipped drca-cpu"
        else:
            checkpoint, weights = random_checkpoint(root / "ckpt"), "random drca-cpu-112 (10 classes)"
        videos = make_videos(root / "videos", args.videos, args.seconds, args.size)
        ingest: dict[int, list[dict]] = {1: [], 2: []}
        for rnd in range(args.rounds):  # alternating, so drifting load on a shared machine hits both
            for workers in (1, 2):
                r = ingest_round(root / f"ingest-{rnd}-{workers}", checkpoint, videos, workers, args.torch_threads)
                procs, gw, redis = r.pop("_procs"), r.pop("_gateway"), r.pop("_redis")
                ingest[workers].append(r)
                if workers == 1 or rnd < args.rounds - 1:
                    for p in reversed(procs):
                        p.stop()
        try:  # search: the last populated 2-worker deployment, 1 replica then 2
            for w in procs[2:]:
                w.stop()  # video_id queries need no worker; keep the cores for the gateways
            g2 = Gateway(checkpoint, root / f"ingest-{args.rounds - 1}-2" / "data", redis.url,
                         root / "index-2", root / "gateway-2.log", DRCA_TEXT_SEARCH="false")
            g2.start()
            procs.append(g2)
            with gw.client() as c:
                ids = [v["video_id"] for v in c.get("/v1/videos", params={"limit": 1000}).json()["videos"]]
            deadline = time.monotonic() + 60
            while httpx.get(g2.url + "/readyz").json()["videos"] < len(ids):
                if time.monotonic() > deadline:
                    raise SystemExit("the second replica did not catch up with the vector stream")
                time.sleep(0.1)
            search = [asyncio.run(search_load(urls, ids, args.concurrency, args.search_seconds))
                      for urls in ([gw.url], [gw.url, g2.url])]
            for s in search:
                log.info("search: %s", s)
        finally:
            for p in reversed(procs):
                p.stop()

    median = {w: statistics.median(r["videos_per_s"] for r in rs) for w, rs in ingest.items()}
    results = {
        "weights": weights,
        "videos": args.videos, "video_seconds_each": args.seconds, "video_size": args.size,
        "worker_settings": {"torch_threads": args.torch_threads, "device": "cpu", "text_search": False},
        "ingest_rounds": {f"{w}_workers": rs for w, rs in ingest.items()},
        "ingest_median_videos_per_s": {f"{w}_workers": round(v, 4) for w, v in median.items()},
        "ingest_ratio_2_to_1_workers": round(median[2] / median[1], 3),
        "search": search,
        "search_qps_ratio_2_to_1_replicas": round(search[1]["qps"] / search[0]["qps"], 3),
        "note": "all processes and the load generator share this machine's cores",
    }
    path = write_result("scale", results, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
