"""The service assembled from parts (service/roles/, service/backends/): every role on every backend from
the same builders, the checkpoint read once at start, an upload probed and planned once (its plan travels
with the job, also through Redis), and routes and search that take typed collaborators instead of reaching
through the runtime."""

from __future__ import annotations

import builtins
import io
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
from fastapi.testclient import TestClient

import media.segments as segments_module
import media.video as video_module
import service.encoding.encoder
import service.encoding.plan
from indexer import VideoIndex
from indexer.milvus_index import MilvusVideoIndex
from service.backends.local import ActiveIndex
from service.backends.redis.broker import RedisBroker
from service.backends.redis.reindex import RedisOnlineReindex
from service.backends.redis.streams import ChangeFollower, MilvusChangeLog, RedisVectorLog, VectorFollower
from service.broker import InProcessBroker
from service.encoding.encoder import VideoEncoder
from service.encoding.worker import EncoderWorker
from service.http.app import create_app
from service.reindex import OnlineReindex
from service.roles import Service, Worker, build_embedded, build_gateway, build_worker
from tests.procs import ROOT, MilvusLiteServer
from tests.service.conftest import make_settings, upload, wait_job
from tests.waiting import wait_until


@pytest.fixture()
def milvus(tmp_path: Path) -> Iterator[MilvusLiteServer]:
    server = MilvusLiteServer(tmp_path / "milvus")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _started(role: Service | Worker) -> Service | Worker:
    role.start()
    return role


def test_every_role_on_every_backend_from_the_same_parts(checkpoint, tmp_path, redis_server, milvus):
    """embedded and gateway on the local backend; gateway and worker on Redis with the vector stream and
    with one Milvus: each built by its builder, started, ready, and holding the parts its role needs."""
    local = make_settings(checkpoint, tmp_path / "local", text_search=False)
    embedded = _started(build_embedded(local))
    try:
        current = embedded.active.current
        assert isinstance(current.index, VideoIndex) and isinstance(current.encoder, VideoEncoder)
        assert isinstance(embedded.broker, InProcessBroker) and isinstance(embedded.catalog.index, ActiveIndex)
        assert isinstance(embedded.worker, EncoderWorker) and embedded.worker.active is embedded.active
        assert isinstance(embedded.reindex, OnlineReindex) and embedded.vectors.followers == ()
        assert embedded.search.active is embedded.active and embedded.catalog.broker is embedded.broker
        wait_until(embedded.ready, 10, "the embedded service ready")
        assert embedded.readiness()["worker_running"]
    finally:
        embedded.stop()

    gateway = _started(build_gateway(local))  # the same data dir: a gateway alone, no worker
    try:
        assert gateway.active.current.encoder is None and gateway.worker is None and gateway.reindex is None
        assert isinstance(gateway.active.current.index, VideoIndex) and isinstance(gateway.broker, InProcessBroker)
        assert gateway.ready() and not gateway.workers_running()
    finally:
        gateway.stop()

    stream = make_settings(checkpoint, tmp_path / "stream", text_search=False, redis_url=redis_server.url,
                           replica_index_dir=tmp_path / "replica")
    shared = make_settings(checkpoint, tmp_path / "shared", text_search=False, redis_url=redis_server.url,
                           redis_prefix="shared", index="milvus", milvus_uri=milvus.uri)
    for settings, index_type, writer_type, follower_type in (
            (stream, VideoIndex, RedisVectorLog, VectorFollower),
            (shared, MilvusVideoIndex, MilvusChangeLog, ChangeFollower)):
        worker = _started(build_worker(settings))
        gateway = _started(build_gateway(settings))
        try:
            assert isinstance(worker.active.current.encoder, VideoEncoder)
            assert isinstance(worker.broker, RedisBroker) and worker.catalog.broker is None  # it queues nothing
            assert isinstance(worker.catalog.index, writer_type) and worker.worker.active is worker.active
            assert worker.active.current.index is None if index_type is VideoIndex else \
                isinstance(worker.active.current.index, MilvusVideoIndex)  # it writes into the shared Milvus
            assert gateway.active.current.encoder is None and gateway.worker is None
            assert isinstance(gateway.reindex, RedisOnlineReindex)  # the deployment's, through the workers
            assert isinstance(gateway.active.current.index, index_type)
            assert isinstance(gateway.catalog.index, writer_type) and isinstance(gateway.broker, RedisBroker)
            assert [type(f) for f in gateway.vectors.followers] == [follower_type]
            wait_until(lambda g=gateway: g.ready() and g.workers_running(), 10, "the gateway ready, a worker seen")
            assert worker.alive
        finally:
            gateway.stop()
            worker.stop()


def _count_opens(monkeypatch: pytest.MonkeyPatch, directory: Path) -> Counter:
    """Every open of a file in `directory` from now on, by name: Python's (open, io.open, os.open, and so
    pathlib's reads) and safetensors' own (its Rust code opens files itself)."""
    directory = directory.resolve()
    opened: Counter = Counter()

    def note(path: object) -> None:
        if isinstance(path, str | bytes | os.PathLike):
            p = Path(os.fsdecode(path)).resolve()
            if p.parent == directory:
                opened[p.name] += 1

    def wrap(fn):
        def counted(path, *a, **kw):
            note(path)
            return fn(path, *a, **kw)
        return counted

    for module, name in ((builtins, "open"), (io, "open"), (os, "open")):
        monkeypatch.setattr(module, name, wrap(getattr(module, name)))
    # safetensors' functions that open a file, wherever they were imported to (`from safetensors import ...`)
    native = {id(fn): wrap(fn) for fn in (safetensors.safe_open, safetensors.torch.load_file)}
    for module in list(sys.modules.values()):
        for name, value in list(vars(module).items()) if module is not None else ():
            if id(value) in native and callable(value):
                monkeypatch.setattr(module, name, native[id(value)])
    return opened


def test_starting_the_embedded_service_reads_each_checkpoint_file_once(checkpoint, tmp_path, monkeypatch):
    settings = make_settings(checkpoint, tmp_path / "data", text_search=False)
    opened = _count_opens(monkeypatch, checkpoint)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 200
    assert opened == {"config.json": 1, "card.json": 1, "model.safetensors": 1}, opened


@pytest.fixture(params=["embedded", "redis"])
def uploads_to(request, checkpoint, tmp_path) -> Iterator[TestClient]:
    """An embedded service, or a Redis gateway with a worker in this process (the plan crosses Redis)."""
    if request.param == "embedded":
        with TestClient(create_app(make_settings(checkpoint, tmp_path / "data", text_search=False)),
                        raise_server_exceptions=False) as c:
            yield c
        return
    redis_server = request.getfixturevalue("redis_server")
    settings = make_settings(checkpoint, tmp_path / "data", text_search=False, redis_url=redis_server.url)
    worker = _started(build_worker(settings))
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            yield c
    finally:
        worker.stop()


def test_an_upload_is_probed_and_planned_once(uploads_to, media, monkeypatch):
    """The route probes the upload and plans its segments; the job carries the plan, so the worker opens
    the stored file on it without probing or planning it again."""
    probes: list[str] = []
    plans: list[str] = []
    real_probe, real_plan = video_module.probe_header, segments_module.plan_segments

    def probe(path, *a, **kw):
        probes.append(str(path))
        return real_probe(path, *a, **kw)

    def plan(reader, *a, **kw):
        plans.append(str(reader.path))
        return real_plan(reader, *a, **kw)

    monkeypatch.setattr(video_module, "probe_header", probe)
    for module in (service.encoding.plan, service.encoding.encoder):
        monkeypatch.setattr(module, "plan_segments", plan)
    r = upload(uploads_to, media["bars"])
    assert r.status_code == 202, r.text
    assert wait_job(uploads_to, r.json()["job_id"])["status"] == "done"
    assert len(probes) == 1 and len(plans) == 1, (probes, plans)


def test_routes_and_search_take_collaborators_not_reach_throughs():
    """No `rt.x.y` or `app.state.x.y` chains in the routes or the search service: they are given the
    catalog, the search service, the active generation and the settings (service/http/deps.py)."""
    chain = re.compile(r"\b(rt|app\.state)\.\w+\.\w+")
    files = [*sorted((ROOT / "service" / "http" / "routes").glob("*.py")), ROOT / "service" / "search.py"]
    found = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in files
             for i, line in enumerate(f.read_text().splitlines(), 1) if chain.search(line)]
    assert not found, "\n".join(found)
