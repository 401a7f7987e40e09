"""Scale-out fault tests: real `redis-server` (AOF), `drca serve --redis` gateways and `drca worker`
processes on loopback, killed with SIGKILL at awkward moments. Each test has its own Redis and data.

The kill -9 of a worker and of a gateway run on both index backends: FAISS replicas in each gateway fed
by the vector stream, and one shared Milvus (a `milvus-lite server` on loopback) that workers write and
gateways search; there each segment must be in Milvus exactly once (counted by primary key)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.backends.redis.broker import RedisLock
from service.backends.redis.store import RedisMetadataStore
from service.backends.redis.streams import RedisVectorLog
from service.catalog import Catalog
from service.storage import SpooledUpload, VideoStorage
from tests.commits import assert_committed_once, assert_milvus_rows_once, stream_commits
from tests.procs import ROOT, Gateway, MilvusLiteServer, RedisServer, Worker, start_all, wait_jobs
from tests.service.media import distinct_videos, tiny_checkpoint
from tests.waiting import wait_until

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
    """One Redis, gateways and workers sharing a data dir (uploads); each gateway has its own FAISS index,
    or (`backend="milvus"`) they all share one `milvus-lite server`."""

    def __init__(self, root: Path, checkpoint: Path, backend: str = "faiss") -> None:
        self.root, self.checkpoint, self.backend = root, checkpoint, backend
        self.data = root / "data"
        self.redis = RedisServer(root / "redis")
        self.procs: list = [self.redis]
        self.milvus: MilvusLiteServer | None = None
        self.index_env: dict[str, str] = {}
        if backend == "milvus":
            self.milvus = MilvusLiteServer(root / "milvus")
            self.procs.append(self.milvus)
            self.index_env = {"DRCA_INDEX": "milvus", "DRCA_MILVUS_URI": self.milvus.uri}

    def start(self) -> None:
        self.redis.start()
        if self.milvus is not None:
            self.milvus.start()

    def gateway(self, name: str, **settings: str) -> Gateway:
        g = Gateway(self.checkpoint, self.data, self.redis.url, self.root / f"index-{name}",
                    self.root / f"gateway-{name}.log", **{**FAST, **self.index_env, **settings})
        self.procs.append(g)
        return g

    def worker(self, name: str, **settings: str) -> Worker:
        w = Worker(self.checkpoint, self.data, self.redis.url, self.root / f"worker-{name}.log",
                   **{**FAST, **self.index_env, **settings})
        self.procs.append(w)
        return w

    def close(self) -> None:
        for p in reversed(self.procs):
            p.kill()


@pytest.fixture()
def cluster(request: pytest.FixtureRequest, tmp_path: Path, assets) -> Cluster:
    """A cluster on FAISS replicas, or on Milvus when parametrised `indirect` with "milvus"."""
    c = Cluster(tmp_path, assets[0], getattr(request, "param", "faiss"))
    c.start()
    yield c
    c.close()


BACKENDS = pytest.mark.parametrize("cluster", ["faiss", "milvus"], indirect=True)


def upload(c: httpx.Client, path: Path) -> httpx.Response:
    with open(path, "rb") as f:
        return c.post("/v1/videos", files={"file": (path.name, f, "video/mp4")})


def index_size(g: Gateway) -> int:
    return httpx.get(g.url + "/readyz", timeout=10).json()["videos"]


def wait_index(g: Gateway, n: int, timeout_s: float = 30) -> None:
    wait_until(lambda: index_size(g) == n, timeout_s, f"{n} videos in the index of {g.url}")


def assert_indexed_once(cluster: Cluster, g: Gateway, video_ids: list[int], rerun: set[int] = frozenset()) -> None:
    """Each video was committed exactly once (`rerun`: see `assert_committed_once`) to the vector stream
    (FAISS) or to Milvus (its change stream), and the index this gateway searches holds exactly these
    videos, each with the segments of its commit; in Milvus, each segment's row is there once."""
    milvus = cluster.backend == "milvus"
    commits = stream_commits(cluster.redis.client(), stream="changes" if milvus else "vectors")
    assert_committed_once(commits, video_ids, rerun)
    with g.client() as c:
        segs = {v: [[x["start"], x["end"]] for x in c.get(f"/v1/videos/{v}").json()["segments"]] for v in video_ids}
        metrics = c.get("/metrics").text
    for v in video_ids:
        assert segs[v] == commits[v][-1].segments.tolist(), (v, segs[v])
    if milvus:
        assert_milvus_rows_once(cluster.milvus.uri, {v: len(segs[v]) for v in video_ids})
    total = sum(len(s) for s in segs.values())
    assert f"drca_index_videos {float(len(video_ids))}" in metrics
    assert f"drca_index_segments {float(total)}" in metrics


@BACKENDS
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
        def mid_ingestion() -> bool:  # some videos indexed, some jobs held by worker a
            indexed = r.zcard("drca:videos:indexed")
            assert indexed < len(jobs), "worker a finished every job before the kill"
            return indexed >= 3 and bool(r.xpending_range("drca:jobs", "workers", "-", "+", 100,
                                                          consumername=a.name))

        wait_until(mid_ingestion, 60, "mid-ingestion", interval_s=0)
        a.kill()  # kill -9 in the middle
        # the entries a held when it died: the only jobs that may run twice (reclaimed by b)
        held = r.xpending_range("drca:jobs", "workers", "-", "+", 100, consumername=a.name)
        assert held and r.zcard("drca:videos:indexed") < len(jobs)
        rerun = set()
        for h in held:
            ((_, fields),) = r.xrange("drca:jobs", h["message_id"], h["message_id"])
            rerun.add(int(fields[b"video_id"]))
        b.proc.send_signal(signal.SIGCONT)
        finished = wait_jobs(c, jobs, timeout_s=120, procs=(gw, b))
    assert all(j["status"] == "done" for j in finished.values()), finished
    ids = [u.json()["video_id"] for u in ups]
    wait_index(gw, len(ids))
    assert_indexed_once(cluster, gw, ids, rerun=rerun)
    assert r.xlen("drca:jobs") == 0 and r.xlen("drca:jobs:dead") == 0
    assert r.xpending("drca:jobs", "workers")["pending"] == 0
    log_b = b.tail(1_000_000)
    for h in held:  # each job a held was taken over by b (a redelivery), not re-queued some other way
        assert f"reclaimed job entry {h['message_id'].decode()}" in log_b


def test_redis_restart_mid_ingestion_loses_no_acknowledged_upload(cluster, assets):
    videos = assets[1][:12]
    gw, w = cluster.gateway("a"), cluster.worker("a")
    start_all(gw, w)
    acked: dict[int, int] = {}  # job id -> video id, for every 202
    acked_videos: list[bool] = []  # per video, in upload order: was it acknowledged?

    def uploader() -> None:
        with gw.client(timeout_s=90) as c:
            for v in videos:
                try:
                    resp = upload(c, v)
                except httpx.HTTPError:
                    acked_videos.append(False)
                    continue
                if resp.status_code == 202:
                    acked[resp.json()["job_id"]] = resp.json()["video_id"]
                else:
                    assert resp.status_code == 503, resp.text  # Redis away too long: refused, never lost
                acked_videos.append(resp.status_code == 202)
                time.sleep(0.1)  # pacing, so that the restart lands between uploads

    t = threading.Thread(target=uploader)
    t.start()
    wait_until(lambda: len(acked) >= 4, 60, "4 uploads acknowledged")
    assert t.is_alive()  # uploads still coming
    cluster.redis.kill()  # kill -9 in the middle; AOF (appendfsync always) has every acknowledged write
    time.sleep(1.0)  # the outage itself (not a synchronisation): clients retry through it
    cluster.redis.start()
    t.join(180)
    assert not t.is_alive()
    with gw.client() as c:
        finished = wait_jobs(c, list(acked), timeout_s=120, procs=(gw, w))
    assert all(j["status"] == "done" for j in finished.values()), finished
    assert len(acked) >= 4
    wait_index(gw, len(acked))
    assert_indexed_once(cluster, gw, list(acked.values()))
    # a refused upload (503 or a dropped connection during the outage) was not acknowledged and left nothing
    # stuck: sent again, each one is accepted and indexed, and then every video is in the index once
    with gw.client() as c:
        again = [upload(c, v) for v, ok in zip(videos, acked_videos, strict=True) if not ok]
        assert all(u.status_code in (200, 202) for u in again), [u.text for u in again]
        finished = wait_jobs(c, [u.json()["job_id"] for u in again], timeout_s=120, procs=(gw, w))
    assert all(j["status"] == "done" for j in finished.values()), finished
    ids = sorted({*acked.values(), *(u.json()["video_id"] for u in again)})
    assert len(ids) == len(videos)
    wait_index(gw, len(videos))
    assert_indexed_once(cluster, gw, ids)


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
        # once the dead worker's heartbeat is stale (3 intervals), inference is refused at once
        wait_until(lambda: c.get("/readyz").json()["worker_running"] is False, 10, "worker gone stale")
        t0 = time.monotonic()
        with open(videos[1], "rb") as f:
            resp = c.post("/v1/search", files={"file": ("q.mp4", f)})
        assert resp.status_code == 503 and "no encoder worker is running" in resp.json()["error"]["message"]
        assert time.monotonic() - t0 < 1.5
        assert "drca_queue_depth 4.0" in c.get("/metrics").text
        w2 = cluster.worker("b")
        w2.start()
        finished = wait_jobs(c, [u.json()["job_id"] for u in ups], timeout_s=120, procs=(gw, w2))
        assert all(j["status"] == "done" for j in finished.values())
        assert "drca_queue_depth 0.0" in c.get("/metrics").text
        with open(videos[0], "rb") as f:
            hits = c.post("/v1/search", files={"file": ("q.mp4", f)}).json()["hits"]
        assert hits[0]["video_id"] == ups[0].json()["video_id"]


@BACKENDS
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
    # kill -9 while its follower is indexing the results: once g1 has indexed one, the worker is stopped
    # (SIGSTOP) so that no more results come until g1 is dead, however the machine schedules g1's follower
    wait_until(lambda: index_size(g1), 60, "g1 indexing", interval_s=0.005)
    w.proc.send_signal(signal.SIGSTOP)
    try:
        n = index_size(g1)
        assert n < len(ids), f"g1 indexed all {n} videos before the kill"
        g1.kill()
    finally:
        w.proc.send_signal(signal.SIGCONT)
    with g2.client() as c2:  # the other replica answers for jobs it never saw uploaded
        finished = wait_jobs(c2, jobs, timeout_s=120, procs=(g2, w))
        assert all(j["status"] == "done" for j in finished.values())
    g1.start()  # FAISS: same index directory, recovers what it had applied, then resumes from its cursor
    if cluster.backend == "faiss":
        reopened = re.findall(r"opened index .*: (\d+) videos", g1.tail(100_000))
        assert len(reopened) == 2 and n <= int(reopened[-1]) < len(ids), reopened
    else:  # Milvus: nothing of the index was in the gateway; it reconnects and finds every video there
        reopened = re.findall(r"opened Milvus collection \S+ at \S+: (\d+) videos", g1.tail(100_000))
        assert len(reopened) == 2 and int(reopened[0]) < len(ids) and int(reopened[-1]) == len(ids), reopened
        assert not (cluster.root / "index-one").exists()  # no index copy on the gateway's disk
    for g in (g1, g2):
        wait_index(g, len(ids))
        assert_indexed_once(cluster, g, ids)
    with g1.client() as c1, g2.client() as c2:
        q = {"json": {"video_id": ids[0], "k": 5}}
        h1, h2 = c1.post("/v1/search", **q).json()["hits"], c2.post("/v1/search", **q).json()["hits"]
        assert h1 == h2 and len(h1) == 5
        assert c2.delete(f"/v1/videos/{ids[1]}").status_code == 204
        wait_index(g1, len(ids) - 1)
        assert c1.get(f"/v1/videos/{ids[1]}").status_code == 404


def spool(path: Path, tmp_dir: Path) -> SpooledUpload:
    """A copy of `path` as the gateway spools an upload: in data_dir/tmp, with its sha256."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes()
    part = tmp_dir / f"upload-test-{path.stem}.part"
    part.write_bytes(data)
    return SpooledUpload(part, hashlib.sha256(data).hexdigest(), len(data), path.name)


def test_gateway_killed_mid_upload_acknowledges_nothing_and_blocks_nothing(cluster, assets):
    """The architecture table's "a gateway dies mid-upload", at each point the upload can be cut:

    1. mid-body (spooling to data_dir/tmp): no answer, no record; the restarted gateway removes the part
       file, and the same upload then succeeds;
    2. after the file was moved into place, before any record: the orphan file is reused by the next upload
       of the same content;
    3. after the records, before the job entry (`Catalog.register` without its enqueue): no 202 was sent, and
       the gateway's sweep queues the job, which is indexed once."""
    videos = assets[1][:3]
    gw, w = cluster.gateway("a"), cluster.worker("a")
    start_all(gw, w)
    tmp_dir, videos_dir = cluster.data / "tmp", cluster.data / "videos"
    r = cluster.redis.client()
    store = RedisMetadataStore(r, "drca")

    # 1. kill -9 while the body is streaming in
    data, boundary = videos[0].read_bytes(), "cut-here"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    body_len = len(head) + len(data) + len(f"\r\n--{boundary}--\r\n")
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    sock.sendall((f"POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
                  f"\r\nContent-Length: {body_len}\r\n\r\n").encode() + head + data[: len(data) // 2])
    parts = wait_until(lambda: [p for p in tmp_dir.glob("upload-*.part") if p.stat().st_size > 0], 30,
                       "the upload spooling")
    gw.kill()
    try:
        answer = sock.recv(4096)
    except ConnectionResetError:
        answer = b""
    assert answer == b"", answer  # no answer at all: nothing was acknowledged
    sock.close()
    assert all(p.exists() for p in parts) and store.count_videos() == 0
    gw.start()
    assert not any(p.exists() for p in parts)  # removed at start
    with gw.client() as c:
        first = upload(c, videos[0])
        assert first.status_code == 202 and first.json()["created"], first.text

        # 2. the file was moved into place, then the gateway died before writing any record
        orphan = VideoStorage(videos_dir).keep(spool(videos[1], tmp_dir))
        second = upload(c, videos[1])
        assert second.status_code == 202 and second.json()["created"], second.text
        assert list(videos_dir.rglob(f"{orphan.stem}.*")) == [orphan]  # the orphan is the stored file

        # 3. records written, then the gateway died before queueing the job: the same code up to the enqueue
        dying = Catalog(store, RedisVectorLog(r, "drca", 16), VideoStorage(videos_dir), broker=None,
                        lock=RedisLock(r, "drca:lock:catalog"))
        reg = dying.register(spool(videos[2], tmp_dir), 6.0, None, None)
        assert reg.job.status == "queued" and not r.hexists("drca:jobs:msg", reg.job.job_id)
        jobs = [first.json()["job_id"], second.json()["job_id"], reg.job.job_id]
        finished = wait_jobs(c, jobs, timeout_s=120, procs=(gw, w))
    assert all(j["status"] == "done" for j in finished.values()), finished
    assert f"queueing job {reg.job.job_id} of video {reg.video.video_id} (it had no stream entry)" in gw.tail(100_000)
    ids = [first.json()["video_id"], second.json()["video_id"], reg.video.video_id]
    wait_index(gw, len(ids))
    assert_indexed_once(cluster, gw, ids)


def test_catalog_lock_holder_killed_blocks_writes_until_the_lock_expires(cluster, assets):
    """The architecture table's "the catalog lock holder dies": a process holding the catalog lock is killed
    -9; catalog writes (an upload here) wait for the lock's expiry (10 s), then succeed."""
    gw = cluster.gateway("a")
    gw.start()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from service.backends.redis.broker import RedisLock, connect\n"
         f"RedisLock(connect({cluster.redis.url!r}), 'drca:lock:catalog').__enter__()\n"
         "print('held', flush=True)\ntime.sleep(600)\n"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        holder.kill()
        holder.wait(10)
        r = cluster.redis.client()
        left_s = r.pttl("drca:lock:catalog") / 1000
        assert 5 < left_s <= 10, left_s  # still held by the dead process
        t0 = time.monotonic()
        with gw.client() as c:
            resp = upload(c, assets[1][0])
        waited = time.monotonic() - t0
        assert resp.status_code == 202, resp.text
        assert left_s - 0.5 <= waited < left_s + 5, (left_s, waited)  # waited for the expiry, then went on
        assert RedisMetadataStore(r, "drca").count_videos() == 1
    finally:
        holder.kill()
        holder.wait(10)
