"""The scale-out pieces against a real redis-server (a fresh one per test, on loopback): the Redis
metadata store, the broker (reclaim, dead letters, synchronous requests with a timeout), the rate
limiter, and a Redis-mode gateway with an in-process worker runtime."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer import Span
from indexer.milvus_index import MilvusVideoIndex
from service.backends.redis.broker import RedisBroker, RedisLock, connect, decode_reply, encode_reply
from service.backends.redis.store import RedisMetadataStore
from service.backends.redis.streams import MilvusChangeLog, RedisVectorLog, VectorFollower
from service.backends.store import DuplicateContent, InvalidTransition, NotFound
from service.broker import InferenceRequest, InferenceResult, IngestJob
from service.catalog import Catalog
from service.errors import ServiceError, WorkerUnavailable
from service.http.app import create_app
from service.roles import build_worker
from service.storage import VideoStorage
from tests.commits import assert_milvus_rows_once
from tests.procs import MilvusLiteServer
from tests.service.conftest import make_settings, upload, wait_job
from tests.waiting import stays, wait_until

SHA = "ab" * 32


def test_store_keeps_records_statuses_and_jobs(redis_server):
    st = RedisMetadataStore(connect(redis_server.url), "t")
    v = st.create_video(SHA, external_id="ext-1", source_name="a.mp4", duration=3.0, extra={"path": "/x"})
    with pytest.raises(DuplicateContent):
        st.create_video(SHA)
    with pytest.raises(DuplicateContent):
        st.create_video("cd" * 32, external_id="ext-1")
    assert st.find_by_hash(SHA) == v and st.find_by_external_id("ext-1") == v
    assert st.get_video(v.video_id).extra == {"path": "/x"}
    job = st.create_job(v.video_id)
    assert (job.status, st.count_videos("pending")) == ("queued", 1)
    st.set_status(v.video_id, "processing")
    with pytest.raises(InvalidTransition):
        st.set_status(v.video_id, "pending")
    st.set_job_status(job.job_id, "running", timings={"a": 1.0})
    st.update_video(v.video_id, duration=4.0, extra={"segments": 2})
    done = st.set_job_status(job.job_id, "done", timings={"b": 2.0})
    assert done.timings == {"a": 1.0, "b": 2.0}
    assert st.get_video(v.video_id).extra == {"path": "/x", "segments": 2}
    assert [x.video_id for x in st.list_videos(status="processing")] == [v.video_id]
    assert st.count_videos("pending") == 0 and st.count_videos() == 1
    w = st.create_video("cd" * 32)
    assert [x.video_id for x in st.list_videos(offset=1, limit=5)] == [w.video_id]
    st.delete_video(v.video_id)
    with pytest.raises(NotFound):
        st.get_job(job.job_id)
    assert st.find_by_hash(SHA) is None and st.count_videos() == 1 and st.jobs_for_video(v.video_id) == []


def test_reply_encoding_round_trip():
    res = InferenceResult(probs=np.arange(3, dtype=np.float32), vectors=np.eye(2, 4, dtype=np.float32),
                          segments=[Span(0.0, 4.0), Span(4.0, 6.5)], duration=6.5)
    back = decode_reply(encode_reply(res, None))
    assert back.probs.tolist() == [0, 1, 2] and back.vectors.shape == (2, 4) and back.segments[1].end == 6.5
    assert back.sentence is None and back.duration == 6.5
    with pytest.raises(ServiceError) as e:
        decode_reply(encode_reply(None, ServiceError("bad video", status=422, code="undecodable_video")))
    assert (e.value.status, e.value.code, e.value.message) == (422, "undecodable_video", "bad video")


def test_dead_worker_jobs_are_reclaimed_then_dead_lettered(redis_server, tmp_path):
    settings = make_settings(tmp_path, tmp_path, redis_url=redis_server.url, reclaim_idle_s=0.2, max_attempts=2)
    client = connect(redis_server.url)
    store = RedisMetadataStore(client, settings.redis_prefix)
    catalog = Catalog(store, RedisVectorLog(client, settings.redis_prefix, 16), VideoStorage(tmp_path / "videos"),
                      lock=RedisLock(client, f"{settings.redis_prefix}:lock:catalog"))
    video = store.create_video(SHA, extra={"path": "/v.mp4"})
    job = store.create_job(video.video_id)
    brokers = [RedisBroker(client, settings, name=f"w{i}", on_dead_letter=lambda j, r: catalog.fail(j, r, {}))
               for i in range(3)]
    brokers[0].enqueue(catalog.job_for(video, job))
    first = brokers[0].take(timeout_s=1)  # w0 takes it and dies (never acks, no heartbeat)
    assert isinstance(first, IngestJob) and first.attempt == 1 and brokers[0].queue_depth() == 1
    assert catalog.start(first)
    assert brokers[1].take(timeout_s=0.1) is None  # not idle long enough yet
    second = wait_until(lambda: brokers[1].take(timeout_s=0.1), 10, "taken over by w1")
    assert (second.job_id, second.attempt) == (job.job_id, 2)  # w1 took it over, and dies too
    assert catalog.start(second)  # a redelivery of a running job is taken over

    def third_delivery() -> bool:
        assert brokers[2].take(timeout_s=0.1) is None  # > max_attempts: dead letter, never handed out
        return store.get_job(job.job_id).status == "failed"

    wait_until(third_delivery, 10, "dead-lettered on the third delivery")
    failed = store.get_job(job.job_id)
    assert failed.status == "failed" and "after 2 attempts" in failed.error
    assert store.get_video(video.video_id).status == "failed"
    (entry,) = client.xrange(f"{settings.redis_prefix}:jobs:dead")
    assert entry[1][b"job_id"] == str(job.job_id).encode() and entry[1][b"attempts"] == b"2"
    assert brokers[2].queue_depth() == 0 and not client.hexists(f"{settings.redis_prefix}:jobs:msg", job.job_id)


def test_live_worker_keeps_its_jobs(redis_server, tmp_path):
    """A slow but alive worker's heartbeat keeps its job from being taken over."""
    settings = make_settings(tmp_path, tmp_path, redis_url=redis_server.url, reclaim_idle_s=0.3,
                             worker_heartbeat_s=0.1)
    client = connect(redis_server.url)
    a, b = RedisBroker(client, settings, name="a"), RedisBroker(client, settings, name="b")
    a.register_worker()
    try:
        a.enqueue(IngestJob(1, 1, "/v.mp4"))
        job = a.take(timeout_s=1)
        # for 5 reclaim intervals b finds nothing to take over, and a's heartbeat keeps the entry fresh
        stays(lambda: b.take(timeout_s=0.05) is None, 5 * settings.reclaim_idle_s, "held by a")
        (held,) = client.xpending_range(f"{settings.redis_prefix}:jobs", "workers", "-", "+", 10)
        assert held["consumer"] == b"a"
        a.ack(job)
        assert a.queue_depth() == 0
    finally:
        a.unregister_worker()
    assert a.workers_alive() == 0


def test_infer_needs_a_live_worker_and_times_out(redis_server, tmp_path):
    settings = make_settings(tmp_path, tmp_path, redis_url=redis_server.url, worker_heartbeat_s=0.2)
    client = connect(redis_server.url)
    gateway, worker = RedisBroker(client, settings, name="gw"), RedisBroker(client, settings, name="w")
    t0 = time.monotonic()
    with pytest.raises(WorkerUnavailable, match="no encoder worker is running"):
        gateway.infer(InferenceRequest("embed_text", texts=("a",)), timeout_s=5)
    assert time.monotonic() - t0 < 1
    worker.register_worker()  # alive, but never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(WorkerUnavailable, match="within 0.5 s"):
            gateway.infer(InferenceRequest("embed_text", texts=("a",)), timeout_s=0.5)
        assert 0.4 < time.monotonic() - t0 < 2
        assert client.llen(f"{settings.redis_prefix}:requests") == 0  # withdrawn: no late work

        def serve_one() -> None:
            task = worker.take(timeout_s=5)
            worker.reply(task, InferenceResult(sentence=np.ones((1, 3), np.float32)))

        t = threading.Thread(target=serve_one)
        t.start()
        res = gateway.infer(InferenceRequest("embed_text", texts=("a",)), timeout_s=5)
        t.join()
        assert res.sentence.tolist() == [[1, 1, 1]]
    finally:
        worker.unregister_worker()


@pytest.fixture(params=["faiss", "milvus"])
def redis_service(request, redis_server, checkpoint, tmp_path):
    """A Redis-mode gateway (TestClient) and a worker runtime in this process, sharing the data dir; the
    index is a FAISS replica in the gateway, or one Milvus (`milvus-lite server` on loopback) that the
    worker writes and the gateway searches."""
    backend: dict = {"replica_index_dir": tmp_path / "index-gw"}
    milvus = None
    if request.param == "milvus":
        milvus = MilvusLiteServer(tmp_path / "milvus")
        milvus.start()
        backend = {"index": "milvus", "milvus_uri": milvus.uri}
    settings = make_settings(checkpoint, tmp_path / "data", redis_url=redis_server.url, inference_timeout_s=10,
                             **backend)
    worker = build_worker(settings)
    worker.start()
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            yield c, worker, milvus
    finally:
        worker.stop()
        if milvus is not None:
            milvus.kill()


def test_gateway_and_worker_through_redis(redis_service, media):
    c, worker, milvus = redis_service
    rt = c.app.state.service
    if milvus is not None:  # the gateway holds no index copy: it searches the Milvus the worker writes
        assert type(rt.active.current.index) is MilvusVideoIndex
        assert not any(isinstance(f, VectorFollower) for f in rt.vectors.followers)
        assert type(worker.catalog.index) is MilvusChangeLog
    # a text query before the upload builds this gateway's text table; the video reaches it through the stream
    assert c.post("/v1/search", json={"text": "colour bars", "k": 3}).json()["hits"] == []
    r = upload(c, media["bars"], external_id="bars", metadata='{"title": "colour bars"}')
    assert r.status_code == 202, r.text
    assert wait_job(c, r.json()["job_id"])["status"] == "done"
    vid = r.json()["video_id"]
    # this replica's index follows the vector stream (milliseconds); Milvus has it already
    wait_until(lambda: c.get("/readyz").json()["videos"] >= 1, 5, "in this replica's index")
    segments = c.get(f"/v1/videos/{vid}").json()["segments"]
    assert segments
    if milvus is not None:
        assert_milvus_rows_once(milvus.uri, {vid: len(segments)})
    with open(media["bars_copy"], "rb") as f:
        hits = c.post("/v1/search", files={"file": ("q.mp4", f)}, data={"k": "3"}).json()["hits"]
    assert hits[0]["video_id"] == vid

    def text_hit() -> bool:
        text = c.post("/v1/search", json={"text": "colour bars", "k": 3})
        assert text.status_code == 200, text.text
        return bool(text.json()["hits"]) and text.json()["hits"][0]["video_id"] == vid

    wait_until(text_hit, 5, "the video in this gateway's text table")
    with open(media["mandel"], "rb") as f:
        assert len(c.post("/v1/classify", files={"file": ("m.mp4", f)}).json()["labels"]) == 5
    # bad input is still 4xx JSON: a corrupt upload fails validation before anything is queued
    bad = upload(c, media["corrupt"])
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "undecodable_video"
    ready = c.get("/readyz").json()
    assert ready["ready"] and ready["worker_running"], ready
    assert c.delete(f"/v1/videos/{vid}").status_code == 204
    assert c.get("/readyz").json()["videos"] == 0  # the delete is applied here before the 204
    assert c.post("/v1/search", json={"text": "colour bars", "k": 3}).json()["hits"] == []
    if milvus is not None:
        assert_milvus_rows_once(milvus.uri, {})

    # the text table (built above) follows videos that another process indexes and deletes: its
    # metadata term is in the score, the same as from a table rebuilt from the store
    other = upload(c, media["mandel"], metadata='{"title": "a fractal zoom"}')
    assert wait_job(c, other.json()["job_id"])["status"] == "done"
    oid = other.json()["video_id"]
    table = rt.catalog.text_table()
    wait_until(lambda: len(table) == 1 and table.video_ids[table.video_ids >= 0].tolist() == [oid], 5,
               "the second video in the text table")
    followed = c.post("/v1/search", json={"text": "a fractal zoom", "k": 3}).json()["hits"]
    rt.catalog.reset_text_table()
    rebuilt = c.post("/v1/search", json={"text": "a fractal zoom", "k": 3}).json()["hits"]
    assert followed == rebuilt and followed[0]["video_id"] == oid
    table = rt.catalog.text_table()
    worker.catalog.delete(oid)  # as another gateway would
    wait_until(lambda: len(table) == 0, 5, "the delete followed by this gateway's text table")
    assert c.post("/v1/search", json={"text": "a fractal zoom", "k": 3}).json()["hits"] == []
    assert c.get("/readyz").json()["videos"] == 0


def test_rate_limit_is_per_key_with_retry_after(redis_server, checkpoint, tmp_path):
    settings = make_settings(checkpoint, tmp_path / "data", redis_url=redis_server.url, rate_limit_per_s=0.5,
                             rate_limit_burst=2, api_keys=["key-a", "key-b"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        a = {"Authorization": "Bearer key-a"}
        assert [c.get("/v1/videos", headers=a).status_code for _ in range(2)] == [200, 200]
        r = c.get("/v1/videos", headers=a)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 2
        assert c.get("/v1/videos", headers={"Authorization": "Bearer key-b"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # operations endpoints are not limited


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "not-a-redis-url"])
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_unusable_redis_url_exits_2_at_start(command, url, checkpoint):
    from typer.testing import CliRunner

    from cli.main import app

    r = CliRunner().invoke(app, [command, "--redis", url, "--checkpoint", str(checkpoint)])
    assert r.exit_code == 2, r.output
    assert "cannot use Redis" in r.output


def test_worker_health_check(redis_server, checkpoint, tmp_path):
    """`drca worker --check` (the image's healthcheck): 0 while a worker on this host beats, else 1."""
    import os
    import socket

    from typer.testing import CliRunner

    from cli.main import app

    args = ["worker", "--check", "--redis", redis_server.url, "--checkpoint", str(checkpoint)]
    assert CliRunner().invoke(app, args).exit_code == 1
    settings = make_settings(checkpoint, tmp_path, redis_url=redis_server.url)
    beat = RedisBroker(connect(redis_server.url), settings, name=f"{socket.gethostname()}-{os.getpid()}")
    beat.register_worker()
    try:
        assert CliRunner().invoke(app, args).exit_code == 0
    finally:
        beat.unregister_worker()
    assert CliRunner().invoke(app, args).exit_code == 1
