"""The online reindex of a Redis deployment, with real processes on loopback (a `redis-server`, `drca serve
--redis` gateways, `drca worker` workers; with Milvus, a `milvus-lite server`), on both index backends: FAISS
replicas in each gateway fed by the vector streams, and one shared Milvus.

While the workers re-embed every video with the new checkpoint, searches on every gateway answer 200 from
exactly one generation (the old answer until that gateway switches, the new one after, never back); a
worker or the gateway driving the reindex is killed -9 in the middle: every video ends in the new
generation (nothing lost), each committed there once (nothing embedded twice into it), the deployment
switches once and every gateway follows it once (service/backends/redis/reindex.py)."""

from __future__ import annotations

import json
import re
import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.commits import assert_committed_once, assert_milvus_rows_once, stream_commits
from tests.e2e.test_scaleout import Cluster, upload
from tests.procs import Gateway, start_all, wait_jobs
from tests.service.media import distinct_videos, tiny_checkpoint
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

NEW_CLASSES = ["alpha", "beta", "gamma", "delta", "epsilon"]
ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SWITCHED = "switched the deployment to generation"
SERVES = "this gateway serves generation"
VIDEOS = 8


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("scaleout-reindex")
    return (tiny_checkpoint(root / "ckpt" / "old"), tiny_checkpoint(root / "ckpt" / "new", NEW_CLASSES, seed=1),
            distinct_videos(root / "videos", VIDEOS, seconds=6, size=64))


@pytest.fixture()
def cluster(request: pytest.FixtureRequest, tmp_path: Path, assets) -> Cluster:
    c = Cluster(tmp_path, assets[0], request.param)
    c.start()
    yield c
    c.close()


BACKENDS = pytest.mark.parametrize("cluster", ["faiss", "milvus"], indirect=True)


def admin_env(assets) -> dict[str, str]:
    """Gateways and workers may read checkpoints from the checkpoints' directory; gateways take admin keys."""
    return {"DRCA_ADMIN_KEYS": json.dumps([ADMIN_KEY]), "DRCA_ADMIN_CHECKPOINT_DIRS": json.dumps([str(assets[1].parent)])}


def ingest(cluster: Cluster, g: Gateway, videos: list[Path], procs: tuple) -> list[int]:
    with g.client() as c:
        ups = [upload(c, v) for v in videos]
        assert all(u.status_code == 202 for u in ups), [u.text for u in ups]
        finished = wait_jobs(c, [u.json()["job_id"] for u in ups], timeout_s=120, procs=procs)
    assert all(j["status"] == "done" for j in finished.values()), finished
    return [u.json()["video_id"] for u in ups]


def status(g: Gateway) -> dict:
    return httpx.get(g.url + "/v1/admin/reindex", headers=ADMIN, timeout=10).json()


class Searcher(threading.Thread):
    """Searches by video id on each gateway in a loop, recording every answer per gateway."""

    def __init__(self, gateways: list[Gateway], query: dict) -> None:
        super().__init__(daemon=True)
        self.gateways, self.query = gateways, query
        self.answers: dict[str, list[tuple[int, object]]] = {g.url: [] for g in gateways}
        self.halt = threading.Event()

    def run(self) -> None:
        clients = {g.url: httpx.Client(base_url=g.url, timeout=30) for g in self.gateways}
        try:
            while not self.halt.is_set():
                for url, c in clients.items():
                    r = c.post("/v1/search", json=self.query)
                    self.answers[url].append((r.status_code, r.json()["hits"] if r.status_code == 200 else r.text))
        finally:
            for c in clients.values():
                c.close()


def search(g: Gateway, query: dict) -> list[dict]:
    r = httpx.post(g.url + "/v1/search", json=query, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def assert_one_generation(answers: list[tuple[int, object]], old: list[dict], new: list[dict]) -> None:
    """Every search answered 200 with the old generation's hits, then the new one's, never a mixture and
    never back."""
    assert old != new
    assert answers and all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
    kinds = ["old" if hits == old else "new" if hits == new else hits for _, hits in answers]
    assert all(k in ("old", "new") for k in kinds), [k for k in kinds if k not in ("old", "new")][:2]
    first_new = kinds.index("new") if "new" in kinds else len(kinds)
    assert "old" not in kinds[first_new:], "a search answered from the old generation after the new one"
    assert kinds.count("old") >= 1


def reembedded(logs: list[str]) -> list[int]:
    return [int(v) for text in logs for v in re.findall(r"video (\d+): \d+ segments re-embedded", text)]


def assert_switched_once(cluster: Cluster, gateways: list[Gateway], workers: list, ids: list[int], tag: str,
                         query: dict, new_hits: list[dict]) -> None:
    """One switch, each gateway serving the new generation (its own log says so once per process run), every
    video in it once, with the new checkpoint's labels; the previous generation dropped."""
    logs = [g.tail(10_000_000) for g in gateways]
    assert sum(text.count(SWITCHED) for text in logs) == 1, [text.count(SWITCHED) for text in logs]
    r = cluster.redis.client()
    logged = reembedded([w.tail(10_000_000) for w in workers])  # a worker killed -9 may not have logged its last
    assert len(logged) == len(set(logged)) and set(logged) <= set(ids), sorted(logged)
    for g in gateways:
        st = status(g)
        # `embedded` is counted in the same MULTI/EXEC as each commit: one per video means one commit each
        assert st["state"] == "switched" and st["done"] == st["videos"] == st["embedded"] == len(ids), st
        assert not st["failed"], st
        wait_until(lambda g=g: httpx.get(g.url + "/readyz").json()["videos"] == len(ids), 30, "every video there")
        assert search(g, query) == new_hits
        with g.client() as c:
            for v in ids:
                labels = c.get(f"/v1/videos/{v}").json()["labels"]
                assert labels and all(lb["name"] in NEW_CLASSES for lb in labels), (v, labels)
    if cluster.backend == "faiss":
        assert_committed_once(stream_commits(r, stream=f"vectors:{tag}"), ids)
        wait_until(lambda: not r.exists("drca:vectors"), 30, "the old generation's stream dropped")
        for g in gateways:  # each replica keeps only the new generation
            index_dir = Path(g.env["DRCA_REPLICA_INDEX_DIR"])
            wait_until(lambda d=index_dir: not d.exists(), 30, f"{index_dir} dropped")
            assert (index_dir.parent / f"{index_dir.name}.current").read_text().strip() == f"{index_dir.name}.{tag}"
    else:
        with gateways[0].client() as c:
            segs = {v: len(c.get(f"/v1/videos/{v}").json()["segments"]) for v in ids}
        assert_milvus_rows_once(cluster.milvus.uri, segs)  # the alias names the new collection

        def old_dropped() -> bool:
            from pymilvus import MilvusClient

            client = MilvusClient(uri=cluster.milvus.uri)
            try:
                return client.list_collections() == [f"segments_{tag}"]
            finally:
                client.close()

        wait_until(old_dropped, 30, "the old collection dropped")


def held_reindex_videos(r, consumer: str) -> set[int]:
    out = set()
    for h in r.xpending_range("drca:jobs", "workers", "-", "+", 100, consumername=consumer):
        for _, fields in r.xrange("drca:jobs", h["message_id"], h["message_id"]):  # none: acked meanwhile
            if b"generation" in fields:
                out.add(int(fields[b"video_id"]))
    return out


@BACKENDS
def test_worker_killed_mid_reindex_one_generation_per_search_each_video_once(cluster, assets):
    old, new, videos = assets
    env = admin_env(assets)
    g1, g2 = cluster.gateway("one", **env), cluster.gateway("two", **env)
    a = cluster.worker("a", DRCA_PREFETCH="4", DRCA_BATCH_SIZE="2", **env)
    b = cluster.worker("b", **env)
    start_all(g1, g2, a, b)
    b.proc.send_signal(signal.SIGSTOP)  # loaded and idle: worker a does the work until it is killed
    ids = ingest(cluster, g1, videos, (g1, g2, a))
    r = cluster.redis.client()
    for g in (g1, g2):
        wait_until(lambda g=g: httpx.get(g.url + "/readyz").json()["videos"] == len(ids), 30, "replicas caught up")
    query = {"video_id": ids[0], "k": 10}
    old_hits = search(g1, query)
    assert search(g2, query) == old_hits and len(old_hits) == len(ids) - 1
    searcher = Searcher([g1, g2], query)
    searcher.start()
    try:
        with g1.client() as c:
            resp = c.post("/v1/admin/reindex", json={"checkpoint": str(new)}, headers=ADMIN)
        assert resp.status_code == 202 and resp.json()["state"] == "running", resp.text
        tag = r.hget("drca:reindex", "tag").decode()

        def mid_reindex() -> bool:  # some videos re-embedded, some reindex jobs held by worker a
            done = r.scard("drca:reindex:done")
            assert done < len(ids), "worker a re-embedded every video before the kill"
            if done < 2:
                return False
            # frozen at once: a tiny model re-embeds the rest in the time between this check and a later
            # signal, so stop first, then look at what it holds; let it go on if it holds nothing now
            a.proc.send_signal(signal.SIGSTOP)
            if held_reindex_videos(r, a.name) and r.scard("drca:reindex:done") < len(ids):
                return True
            a.proc.send_signal(signal.SIGCONT)
            return False

        wait_until(mid_reindex, 60, "mid-reindex", interval_s=0)
        held = held_reindex_videos(r, a.name)  # frozen: what it holds now is what it dies with
        assert held and r.scard("drca:reindex:done") < len(ids)
        a.kill()
        b.proc.send_signal(signal.SIGCONT)  # takes the held jobs over once they are idle (2 s)
        wait_until(lambda: status(g2)["state"] in ("switched", "failed"), 120, "the switch", interval_s=0.1)
        assert status(g2)["state"] == "switched", status(g2)
        for g in (g1, g2):
            wait_until(lambda g=g: SERVES in g.tail(10_000_000), 60, f"{g.url} serving the new generation")
        new_hits = search(g1, query)
        n = {url: len(v) for url, v in searcher.answers.items()}
        wait_until(lambda: all(len(v) >= n[url] + 3 for url, v in searcher.answers.items()), 30, "searches after")
    finally:
        searcher.halt.set()
        searcher.join(30)
    for g in (g1, g2):
        assert_one_generation(searcher.answers[g.url], old_hits, new_hits)
        assert g.tail(10_000_000).count(SERVES) == 1
    log_b = b.tail(10_000_000)
    assert "reclaimed job entry" in log_b  # the held jobs were taken over, not queued again
    assert_switched_once(cluster, [g1, g2], [a, b], ids, tag, query, new_hits)
    # a worker started now with the old checkpoint is refused: the deployment serves the new one
    late = cluster.worker("late", **env)
    late.spawn()
    assert late.proc.wait(120) == 2 and "--checkpoint" in late.tail()


@BACKENDS
def test_driving_gateway_killed_mid_reindex_another_takes_over_one_switch(cluster, assets):
    old, new, videos = assets
    env = admin_env(assets)
    g1, g2 = cluster.gateway("one", **env), cluster.gateway("two", **env)
    w = cluster.worker("a", DRCA_BATCH_SIZE="1", DRCA_PREFETCH="1", DRCA_DECODE_THREADS="1", **env)
    start_all(g1, g2, w)
    ids = ingest(cluster, g1, videos, (g1, g2, w))
    r = cluster.redis.client()
    for g in (g1, g2):
        wait_until(lambda g=g: httpx.get(g.url + "/readyz").json()["videos"] == len(ids), 30, "replicas caught up")
    query = {"video_id": ids[0], "k": 10}
    old_hits = search(g1, query)
    with g1.client() as c:
        resp = c.post("/v1/admin/reindex", json={"checkpoint": str(new)}, headers=ADMIN)
    assert resp.status_code == 202, resp.text
    tag = r.hget("drca:reindex", "tag").decode()
    driver_name = wait_until(lambda: r.get("drca:reindex:driver"), 10, "a driver").decode()
    driver = next(g for g in (g1, g2) if driver_name.endswith(f"-{g.proc.pid}"))  # the lease names host-pid
    other = g2 if driver is g1 else g1
    searcher = Searcher([other], query)
    searcher.start()
    try:
        wait_until(lambda: r.scard("drca:reindex:done") >= 2, 60, "two videos re-embedded", interval_s=0)
        w.proc.send_signal(signal.SIGSTOP)  # the reindex cannot finish while the driver is away
        assert r.scard("drca:reindex:done") < len(ids), "every video re-embedded before the kill"
        driver.kill()  # kill -9 of the gateway driving the reindex
        def new_driver() -> bytes | None:  # the dead driver's lease runs out (3 s), then another takes it
            holder = r.get("drca:reindex:driver")
            return holder if holder is not None and holder.decode() != driver_name else None

        assert wait_until(new_driver, 10, "another driver").decode().endswith(f"-{other.proc.pid}")
        wait_until(lambda: "drives the online reindex" in other.tail(10_000_000), 10, "the other gateway driving")
        driver.start()  # restarted with the old checkpoint: it follows the reindex again
        w.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: status(other)["state"] in ("switched", "failed"), 120, "the switch", interval_s=0.1)
        assert status(other)["state"] == "switched", status(other)
        for g in (g1, g2):
            wait_until(lambda g=g: SERVES in g.tail(10_000_000), 60, f"{g.url} serving the new generation")
        new_hits = search(other, query)
        n = len(searcher.answers[other.url])
        wait_until(lambda: len(searcher.answers[other.url]) >= n + 3, 30, "searches after the switch")
    finally:
        searcher.halt.set()
        searcher.join(30)
    assert_one_generation(searcher.answers[other.url], old_hits, new_hits)
    assert other.tail(10_000_000).count(SERVES) == 1
    assert driver.tail(10_000_000).count(SERVES) == 1  # its second run only: its first was killed before
    assert_switched_once(cluster, [g1, g2], [w], ids, tag, query, new_hits)
    # and a gateway started now with the old checkpoint is refused; with the new one it serves at once
    late = cluster.gateway("late", **env)
    late.spawn()
    assert late.proc.wait(120) == 2 and "--checkpoint" in late.tail()
    fresh = cluster.gateway("fresh", DRCA_CHECKPOINT=str(new), **env)
    fresh.start()
    wait_until(lambda: httpx.get(fresh.url + "/readyz").json()["videos"] == len(ids), 30, "the new gateway filled")
    assert search(fresh, query) == new_hits
