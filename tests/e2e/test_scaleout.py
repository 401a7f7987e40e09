"""Scale-out fault tests: real `redis-server` (AOF), `drca serve --redis` gateways and `drca worker`
processes on loopback, killed with SIGKILL at awkward moments. Each test has its own Redis and data."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.procs import Gateway, RedisServer, Worker, start_all, wait_jobs
from tests.service.media import distinct_videos, tiny_checkpoint

pytestmark = pytest.mark.slow

# Short fault timings; no MiniLM (text search through Redis is tested in tests/service/test_redis.py), so
# that processes start in seconds.
FAST = {"DRCA_RECLAIM_IDLE_S": "2", "DRCA_WORKER_HEARTBEAT_S": "0.5", "DRCA_INFERENCE_TIMEOUT_S": "3",
        "DRCA_TEXT_SEARCH": "false"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("scaleout")
    return tiny_checkpoint(root / "ckpt"), distinct_videos(root / "videos", 20, seconds=6)


class Cluster:
    """One Redis, gateways and workers sharing a data dir (uploads); each gateway has its own index."""

    def __init__(self, root: Path, checkpoint: Path) -> None:
        self.root, self.checkpoint = root, checkpoint
        self.data = root / "data"
        self.redis = RedisServer(root / "redis")
        self.procs: list = [self.redis]

    def gateway(self, name: str, **settings: str) -> Gateway:
        g = Gateway(self.checkpoint, self.data, self.redis.url, self.root / f"index-{name}",
                    self.root / f"gateway-{name}.log", **{**FAST, **settings})
        self.procs.append(g)
        return g

    def worker(self, name: str, **settings: str) -> Worker:
        w = Worker(self.checkpoint, self.data, self.redis.url, self.root / f"worker-{name}.log",
                   **{**FAST, **settings})
        self.procs.append(w)
        return w

    def close(self) -> None:
        for p in reversed(self.procs):
            p.kill()


@pytest.fixture()
def cluster(tmp_path: Path, assets) -> Cluster:
    c = Cluster(tmp_path, assets[0])
    c.redis.start()
    yield c
    c.close()


def upload(c: httpx.Client, path: Path) -> httpx.Response:
    with open(path, "rb") as f:
        return c.post("/v1/videos", files={"file": (path.name, f, "video/mp4")})


def index_size(g: Gateway) -> int:
    return httpx.get(g.url + "/readyz", timeout=10).json()["videos"]


def wait_index(g: Gateway, n: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while index_size(g) != n:
        assert time.monotonic() < deadline, f"{g.url} index has {index_size(g)} videos, expected {n}"
        time.sleep(0.1)


def assert_indexed_once(g: Gateway, video_ids: list[int]) -> None:
    """Every video is in this replica's index with its segments exactly once, and nothing else is."""
    with g.client() as c:
        segs = {v: c.get(f"/v1/videos/{v}").json()["segments"] for v in video_ids}
        metrics = c.get("/metrics").text
    assert all(s and len({(x["start"], x["end"]) for x in s}) == len(s) for s in segs.values()), segs
    total = sum(len(s) for s in segs.values())
    assert f"drca_index_videos {float(len(video_ids))}" in metrics
    assert f"drca_index_segments {float(total)}" in metrics


def test_killed_worker_jobs_finish_on_a_second_worker_exactly_once(cluster, assets):
    videos = assets[1]
    gw, a, b = cluster.gateway("a"), cluster.worker("a", DRCA_PREFETCH="4", DRCA_BATCH_SIZE="2"), cluster.worker("b")
    start_all(gw, a, b)
    b.proc.send_signal(signal.SIGSTOP)  # loaded, idle and holding nothing: the second worker waits
    r = cluster.redis.client()
    with gw.client() as c:
        ups = [upload(c, v) for v in videos]
        assert all(u.status_code == 202 for u in ups), [u.text for u in ups]
        jobs = [u.json()["job_id"] for u in ups]
        deadline = time.monotonic() + 60
        while True:  # kill -9 worker a in the middle: some videos indexed, some jobs held by it
            held = r.xpending_range("drca:jobs", "workers", "-", "+", 100, consumername=a.name)
            indexed = r.zcard("drca:videos:indexed")
            if indexed >= 3 and held:
                a.kill()
                break
            assert time.monotonic() < deadline and indexed < len(jobs), f"indexed {indexed}, held {len(held)}"
        assert r.xpending_range("drca:jobs", "workers", "-", "+", 100, consumername=a.name)
        assert r.zcard("drca:videos:indexed") < len(jobs)
        b.proc.send_signal(signal.SIGCONT)
        finished = wait_jobs(c, jobs, timeout_s=120, procs=(gw, b))
    assert all(j["status"] == "done" for j in finished.values()), finished
    ids = [u.json()["video_id"] for u in ups]
    wait_index(gw, len(ids))
    assert_indexed_once(gw, ids)
    assert r.xlen("drca:jobs") == 0 and r.xlen("drca:jobs:dead") == 0
    assert r.xpending("drca:jobs", "workers")["pending"] == 0
    assert "reclaimed job entry" in b.tail(100_000)


def test_redis_restart_mid_ingestion_loses_no_acknowledged_upload(cluster, assets):
    videos = assets[1][:12]
    gw, w = cluster.gateway("a"), cluster.worker("a")
    start_all(gw, w)
    acked: dict[int, int] = {}  # job id -> video id, for every 202
    refused: list[int] = []

    def uploader() -> None:
        with gw.client(timeout_s=90) as c:
            for v in videos:
                try:
                    resp = upload(c, v)
                except httpx.HTTPError:
                    refused.append(-1)
                    continue
                if resp.status_code == 202:
                    acked[resp.json()["job_id"]] = resp.json()["video_id"]
                else:
                    assert resp.status_code == 503, resp.text  # Redis away too long: refused, never lost
                    refused.append(resp.status_code)
                time.sleep(0.1)

    t = threading.Thread(target=uploader)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert t.is_alive()  # uploads still coming
    cluster.redis.kill()  # kill -9 in the middle; AOF (appendfsync always) has every acknowledged write
    time.sleep(1.0)
    cluster.redis.start()
    t.join(180)
    assert not t.is_alive()
    with gw.client() as c:
        finished = wait_jobs(c, list(acked), timeout_s=120, procs=(gw, w))
    assert all(j["status"] == "done" for j in finished.values()), finished
    assert len(acked) + len(refused) == len(videos) and len(acked) >= 4
    wait_index(gw, len(acked))
    assert_indexed_once(gw, list(acked.values()))


def test_no_workers_queues_uploads_503s_inference_then_drains(cluster, assets):
    videos = assets[1][:4]
    gw, w = cluster.gateway("a"), cluster.worker("a")
    start_all(gw, w)
    w.kill()  # every worker gone (its last heartbeat still looks fresh for 1.5 s)
    with gw.client() as c:
        for route in ("/v1/search", "/v1/classify"):
            t0 = time.monotonic()
            with open(videos[0], "rb") as f:
                resp = c.post(route, files={"file": ("q.mp4", f)})
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "worker_unavailable", resp.text
            assert time.monotonic() - t0 < 3 + 2  # within the inference timeout (3 s), never a hang
        ups = [upload(c, v) for v in videos]
        assert [u.status_code for u in ups] == [202] * len(videos)
        assert all(u.json()["status"] == "queued" for u in ups)
        time.sleep(2.0)  # the dead worker's heartbeat is now stale: refused at once
        t0 = time.monotonic()
        with open(videos[1], "rb") as f:
            resp = c.post("/v1/search", files={"file": ("q.mp4", f)})
        assert resp.status_code == 503 and "no encoder worker is running" in resp.json()["error"]["message"]
        assert time.monotonic() - t0 < 1.5
        assert c.get("/readyz").json()["worker_running"] is False
        assert "drca_queue_depth 4.0" in c.get("/metrics").text
        w2 = cluster.worker("b")
        w2.start()
        finished = wait_jobs(c, [u.json()["job_id"] for u in ups], timeout_s=120, procs=(gw, w2))
        assert all(j["status"] == "done" for j in finished.values())
        assert "drca_queue_depth 0.0" in c.get("/metrics").text
        with open(videos[0], "rb") as f:
            hits = c.post("/v1/search", files={"file": ("q.mp4", f)}).json()["hits"]
        assert hits[0]["video_id"] == ups[0].json()["video_id"]


def test_killed_gateway_restarts_without_losing_videos_and_replicas_agree(cluster, assets):
    videos = assets[1]
    g1, g2 = cluster.gateway("one"), cluster.gateway("two")
    w = cluster.worker("a", DRCA_BATCH_SIZE="1", DRCA_PREFETCH="1", DRCA_DECODE_THREADS="1")
    start_all(g1, g2, w)
    with g1.client() as c1:
        ups = [upload(c1, v) for v in videos]
    assert all(u.status_code == 202 for u in ups)
    jobs = [u.json()["job_id"] for u in ups]
    ids = [u.json()["video_id"] for u in ups]
    deadline = time.monotonic() + 60
    while not 0 < (n := index_size(g1)) < len(ids):  # kill -9 while its follower is indexing the results
        assert time.monotonic() < deadline and n < len(ids), f"index of g1 has {n} videos"
        time.sleep(0.005)
    g1.kill()
    with g2.client() as c2:  # the other replica answers for jobs it never saw uploaded
        finished = wait_jobs(c2, jobs, timeout_s=120, procs=(g2, w))
        assert all(j["status"] == "done" for j in finished.values())
    g1.start()  # same index directory: recovers what it had applied, then resumes from its cursor
    reopened = re.findall(r"opened index .*: (\d+) videos", g1.tail(100_000))
    assert len(reopened) == 2 and n <= int(reopened[-1]) < len(ids), reopened
    for g in (g1, g2):
        wait_index(g, len(ids))
        assert_indexed_once(g, ids)
    with g1.client() as c1, g2.client() as c2:
        q = {"json": {"video_id": ids[0], "k": 5}}
        h1, h2 = c1.post("/v1/search", **q).json()["hits"], c2.post("/v1/search", **q).json()["hits"]
        assert h1 == h2 and len(h1) == 5
        assert c2.delete(f"/v1/videos/{ids[1]}").status_code == 204
        wait_index(g1, len(ids) - 1)
        assert c1.get(f"/v1/videos/{ids[1]}").status_code == 404
